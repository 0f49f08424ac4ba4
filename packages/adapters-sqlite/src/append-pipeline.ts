import type { AppendInput, AppendResult, Clock, Task } from '@finishline/core';
import { ErrorCode, isTerminalType, ProgressError } from '@finishline/core';
import {
  assertLeaseOwner,
  assertRun,
  planAppend,
  storeClosed,
  taskNotFound,
} from '@finishline/core/internal';
import { GroupCommitQueue } from './group-commit.js';
import type { TaskRow } from './row-codec.js';
import { pushEventValues, rowToTask, runningTaskToRow, taskToRow } from './row-codec.js';
import type { RunningTaskCache } from './running-task-cache.js';
import type { ChangePublisher, TransactionLog } from './sqlite-change-feed.js';
import { isRowRefusal, toProgressError } from './sqlite-errors.js';
import type { SqliteStatements } from './sqlite-statements.js';
import { EVENT_INSERT_ROWS } from './sqlite-statements.js';
import { isBusy } from './write-lock.js';
import type { WriteTransactions } from './write-transaction.js';

/**
 * The SQLite append pipeline: appends issued in the same event-loop turn are committed in one
 * transaction (group commit), each planned by the shared `planAppend` in call order, so a task's seq
 * stays gap-free; an append that is rejected (unknown task, task already finished) rejects only its own
 * promise. Running tasks' rows are kept between batches ({@link RunningTaskCache}).
 *
 * @module
 */

/** An append waiting for its batch. */
interface PendingAppend {
  taskId: string;
  input: AppendInput;
  /** The run the append is fenced to (see `RunFence`), checked on the batch's row of the task. */
  run: number | undefined;
  /** The lease owner the append is fenced to (see `RunFence.owner`), checked on that row too. */
  owner: string | undefined;
  resolve: (result: AppendResult) => void;
  reject: (error: ProgressError) => void;
}

/** Options of {@link AppendPipeline}. */
export interface AppendPipelineOptions {
  statements: SqliteStatements;
  transactions: WriteTransactions;
  cache: RunningTaskCache;
  publisher: ChangePublisher;
  clock: Clock;
  maxBatchSize: number;
}

/** What a batch's transaction committed: each append's outcome, and each task's row as it left it. */
interface WrittenBatch {
  /** Per append of the batch, in its order. */
  outcomes: (AppendResult | ProgressError)[];
  /** Per task of the batch: its row after the batch, or why none of its appends went in. */
  tasks: Map<string, Task | ProgressError>;
}

/** Queues appends and commits them batch by batch. */
export class AppendPipeline {
  readonly #q: SqliteStatements;
  readonly #transactions: WriteTransactions;
  readonly #cache: RunningTaskCache;
  readonly #publisher: ChangePublisher;
  readonly #clock: Clock;
  readonly #queue: GroupCommitQueue<PendingAppend>;
  /**
   * The next batch follows a wait for a backlog's paging (see {@link #commit}): it reads what came since
   * under the write lock, however much, rather than wait again (another process committing back to back
   * could keep it waiting for ever).
   */
  #backlogPaged = false;

  constructor(options: AppendPipelineOptions) {
    this.#q = options.statements;
    this.#transactions = options.transactions;
    this.#cache = options.cache;
    this.#publisher = options.publisher;
    this.#clock = options.clock;
    this.#queue = new GroupCommitQueue<PendingAppend>({
      maxBatchSize: options.maxBatchSize,
      timing: 'immediate',
      commit: (batch, urgent) => this.#commit(batch, urgent),
      // Out of the commit, so that a listener's flush (a read, a write, close()) commits what is queued.
      afterCommit: () => this.#publisher.drain(),
    });
  }

  /** Queues a parsed append (the parse copied its JSON values); settles once its batch committed or failed. */
  enqueue(
    taskId: string,
    input: AppendInput,
    run: number | undefined,
    owner: string | undefined,
  ): Promise<AppendResult> {
    return new Promise((resolve, reject) =>
      this.#queue.enqueue({ taskId, input, run, owner, resolve, reject }),
    );
  }

  /** Commits every queued append now, so a later operation sees them. */
  flush(): void {
    this.#queue.flush();
  }

  /** Cancels the scheduled commit and rejects what is still queued (`closed`); call `flush()` first. */
  close(): void {
    this.#queue.cancel();
    // Nothing, after a flush: the store refuses appends once closed, and listeners run outside commits.
    for (const entry of this.#queue.clear()) entry.reject(storeClosed());
  }

  /**
   * Commits one batch of appends and settles each one. Never throws. Unless `urgent` (a flush: a read or a
   * close that must see the appends), a batch that meets a backlog of other connections' commits (more
   * than a page of them, or a poll paging them) returns `false`, settling nothing: the publisher pages
   * the backlog a turn at a time, and the queue commits the batch again once it did (its events published
   * after the backlog's, as a write transaction publishes other connections' events before its own). A
   * flush meanwhile (a read, an ack, a close: what must see the appends) commits it at once, reading the
   * rest of the backlog in its turn.
   */
  #commit(batch: PendingAppend[], urgent: boolean): boolean {
    const mayWait = !urgent && !this.#backlogPaged;
    this.#backlogPaged = false;
    let written: WrittenBatch | undefined;
    try {
      if (mayWait) {
        written = this.#transactions.runAfterBacklog((log) =>
          this.#writeBatch(batch, 'together', log),
        )?.result;
        if (written === undefined) {
          this.#publisher.pageBacklog(() => {
            // Unless a flush committed the batch meanwhile.
            this.#backlogPaged = this.#queue.size > 0;
            this.#queue.resume();
          });
          return false;
        }
      } else {
        written = this.#write(batch, 'together');
      }
    } catch (error) {
      // The transaction rolled back: nothing of the batch was written. A task row that refused its writes
      // (damaged by hand: a seq behind its log, whose next event collides with one the log holds) failed
      // the whole batch, and every batch its task's appends went into, with the appends of every other task
      // in them: written again task by task, its appends fail alone.
      let failure = error;
      if (batch.length > 1 && isRowRefusal(error)) {
        try {
          written = this.#write(batch, 'taskByTask');
        } catch (again) {
          failure = again;
        }
      }
      if (written === undefined) {
        const rejection = toProgressError(failure, 'commit appends');
        for (const entry of batch) entry.reject(rejection);
        // The write lock stayed held for busyTimeoutMs: the appends queued behind the batch were queued
        // before that wait (no code ran during it) and fail with it. Each batch waited its own
        // busyTimeoutMs, and a flush (a read, close()) commits them all in one event-loop turn: 5,000
        // appends queued behind a lock another process held blocked the loop for five waits (25 s by
        // default) instead of one.
        if (isBusy(failure)) for (const entry of this.#queue.clear()) entry.reject(rejection);
        return true;
      }
    }
    const { outcomes, tasks } = written;
    // Committed: these rows are the tasks' state now. A copy, since the callers get the planned rows.
    for (const task of tasks.values()) if (!(task instanceof ProgressError)) this.#cache.keep({ ...task });
    // Published once the queue is out of the commit (its `afterCommit`), the listeners' calls in order.
    for (let index = 0; index < batch.length; index++) {
      const outcome = outcomes[index]!;
      const entry = batch[index]!;
      if (outcome instanceof ProgressError) entry.reject(outcome);
      else entry.resolve(outcome);
    }
    return true;
  }

  /**
   * Plans and writes one batch in one transaction: `together` in one go; `taskByTask` each task's appends
   * under a savepoint of their own, so that a row that refuses them fails its task's appends alone.
   */
  #write(batch: readonly PendingAppend[], mode: 'together' | 'taskByTask'): WrittenBatch {
    return this.#transactions.run((log) => this.#writeBatch(batch, mode, log));
  }

  /** The work of {@link #write}'s transaction. */
  #writeBatch(
    batch: readonly PendingAppend[],
    mode: 'together' | 'taskByTask',
    log: TransactionLog,
  ): WrittenBatch {
    const now = this.#clock();
    const outcomes: (AppendResult | ProgressError)[] = new Array(batch.length);
    // The batch's view of each task: loaded once, then advanced by each planned append.
    const tasks = this.#loadBatchTasks(batch);
    const planned: AppendResult[] = [];
    for (let index = 0; index < batch.length; index++) {
      const { taskId, input, run, owner } = batch[index]!;
      const task = tasks.get(taskId)!;
      if (task instanceof ProgressError) {
        outcomes[index] = task;
        continue;
      }
      try {
        assertRun(task, run);
        assertLeaseOwner(task, owner);
        const result = planAppend(task, input, now);
        tasks.set(taskId, result.task);
        planned.push(result);
        outcomes[index] = result;
      } catch (error) {
        outcomes[index] = toProgressError(error, 'append');
      }
    }
    if (mode === 'together') writeAppends(this.#q, planned, log);
    else this.#writeTaskByTask(batch, planned, { outcomes, tasks }, log);
    return { outcomes, tasks };
  }

  /**
   * Writes each task's planned appends under a savepoint of their own; a task whose row refuses them
   * (see `isRowRefusal`) has them undone, and its row in `written.tasks` (then not remembered) and the
   * outcomes of its appends from its first planned one on become its error: those after it were judged on
   * rows that were not written (an append after a refused terminal one is not `task_finished`).
   */
  #writeTaskByTask(
    batch: readonly PendingAppend[],
    planned: readonly AppendResult[],
    written: WrittenBatch,
    log: TransactionLog,
  ): void {
    const byTask = new Map<string, AppendResult[]>();
    for (const result of planned) {
      const results = byTask.get(result.task.id);
      if (results === undefined) byTask.set(result.task.id, [result]);
      else results.push(result);
    }
    for (const [taskId, results] of byTask) {
      const refusal = writeAppendsOrRefusal(this.#q, results, log);
      if (refusal === undefined) continue;
      const error = damagedRowError(taskId, refusal, 'its appends were refused');
      written.tasks.set(taskId, error);
      const first = written.outcomes.indexOf(results[0]!);
      for (let index = first; index < batch.length; index++)
        if (batch[index]!.taskId === taskId) written.outcomes[index] = error;
    }
  }

  /**
   * The rows of every task a batch appends to, read in one statement (a batch spread over many tasks
   * would otherwise pay one call per task). A missing or damaged row becomes that task's error.
   */
  #loadBatchTasks(batch: readonly PendingAppend[]): Map<string, Task | ProgressError> {
    const tasks = new Map<string, Task | ProgressError>();
    const ids = new Set<string>();
    for (const { taskId } of batch) {
      if (tasks.has(taskId) || ids.has(taskId)) continue;
      // Planning copies the row before changing it, so a cached row is never modified in place.
      const cached = this.#cache.get(taskId);
      if (cached !== undefined) tasks.set(taskId, cached);
      else ids.add(taskId);
    }
    if (ids.size === 0) return tasks;
    const rows =
      ids.size === 1
        ? [this.#q.selectTask.get({ id: ids.values().next().value })]
        : this.#q.selectTasks.all({ ids: JSON.stringify([...ids]) });
    for (const row of rows) {
      if (row === undefined) continue;
      const id = String((row as TaskRow).id);
      try {
        tasks.set(id, rowToTask(row as TaskRow));
      } catch (error) {
        tasks.set(id, toProgressError(error, 'read a task'));
      }
    }
    // Errors capture a stack trace: build them only for the ids that are really missing.
    for (const id of ids) if (!tasks.has(id)) tasks.set(id, taskNotFound(id));
    return tasks;
  }
}

/** Whether the `EVENT_INSERT_ROWS` results from `start` exist and are all of one task. */
function sameTaskRun(results: readonly AppendResult[], start: number): boolean {
  const end = start + EVENT_INSERT_ROWS;
  if (end > results.length) return false;
  const taskId = results[start]!.event.taskId;
  for (let row = start + 1; row < end; row++) if (results[row]!.event.taskId !== taskId) return false;
  return true;
}

/**
 * Inserts the events of `results` in order and writes each touched task's final row once, inside the
 * caller's transaction (appends, and the lease reaper's interruptions).
 */
export function writeAppends(
  q: SqliteStatements,
  results: readonly AppendResult[],
  log: TransactionLog,
): void {
  if (results.length === 0) return;
  const finalTasks = new Map<string, Task>();
  const { insertEvents, insertEvent } = q;
  const values: unknown[] = [];
  const markBefore = log.lastEventId;
  let lastId = markBefore;
  let index = 0;
  while (index < results.length) {
    values.length = 0;
    // A run of one task's events goes in multi-row statements: its rows land side by side in the
    // (task_id, seq) index, and 32 rows per statement cost about a third of 32 statements. Rows of
    // different tasks go one by one: there a 32-row statement cost about 1 µs more per row than single
    // rows (better-sqlite3 12, 7 December 2026; see docs/benchmarks-history.md, session 45).
    if (sameTaskRun(results, index)) {
      for (let row = index; row < index + EVENT_INSERT_ROWS; row++)
        pushEventValues(values, results[row]!.event);
      lastId = Number(insertEvents.run(values).lastInsertRowid);
      index += EVENT_INSERT_ROWS;
    } else {
      pushEventValues(values, results[index]!.event);
      lastId = Number(insertEvent.run(values).lastInsertRowid);
      index++;
    }
  }
  for (const { event, task } of results) {
    finalTasks.set(task.id, task);
    // With its run (see `TaskChange.run`), which the task at hand has; other connections' commits,
    // caught up from the events table, go without one.
    log.changes.push(
      Object.freeze({
        taskId: event.taskId,
        seq: event.seq,
        terminal: isTerminalType(event.type),
        run: task.createdAt,
      }),
    );
  }
  for (const task of finalTasks.values()) {
    // Once per task of the batch; a task still running is bound from the columns an append changes.
    const { changes } =
      task.status === 'running'
        ? q.updateRunningTaskAfterAppend.run(runningTaskToRow(task))
        : q.updateTaskAfterAppend.run(taskToRow(task));
    // The row was loaded (or remembered) running in this transaction; anything else is a bug, not data.
    if (Number(changes) !== 1) throw new ProgressError(ErrorCode.Internal, `Task ${task.id} was not updated`);
  }
  // One transaction's ids are consecutive and, within one run of ids, all above the mark.
  if (lastId - results.length < markBefore) log.idsWentBack = true;
  log.lastEventId = lastId;
  // A copy: the caller gets the event and may change it, which would look like a restore.
  const { taskId, seq, time } = results[results.length - 1]!.event;
  log.lastEvent = { taskId, seq, time };
}

/**
 * {@link writeAppends} under a savepoint: when a row refuses the write (`isRowRefusal`: a task row damaged by
 * hand, whose `seq` fell behind its log), the write is undone alone, `log` is left as it was, and the
 * refusal is returned for the caller to fail that task's writes; the transaction goes on. Any other failure
 * throws (and fails the transaction).
 */
export function writeAppendsOrRefusal(
  q: SqliteStatements,
  results: readonly AppendResult[],
  log: TransactionLog,
): unknown {
  const before = { ...log, changes: log.changes.length };
  q.savepoint.run();
  try {
    writeAppends(q, results, log);
  } catch (error) {
    if (!isRowRefusal(error)) throw error;
    q.rollbackToSavepoint.run();
    q.releaseSavepoint.run();
    log.changes.length = before.changes;
    log.lastEventId = before.lastEventId;
    log.lastEvent = before.lastEvent;
    log.idsWentBack = before.idsWentBack;
    return error;
  }
  q.releaseSavepoint.run();
  return undefined;
}

/** The error of a task whose row refused a write (see {@link writeAppendsOrRefusal}): `what` happened. */
export function damagedRowError(taskId: string, refusal: unknown, what: string): ProgressError {
  const reason = refusal instanceof Error ? refusal.message : String(refusal);
  return new ProgressError(
    ErrorCode.Internal,
    `Task ${taskId}: ${what} (${reason}); its row looks damaged (written by hand? its seq behind its log), so it takes no event until repaired`,
    { cause: refusal, taskId },
  );
}
