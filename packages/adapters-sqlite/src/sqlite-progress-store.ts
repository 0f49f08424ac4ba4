import type {
  AppendInput,
  AppendResult,
  ChangeFeed,
  Clock,
  CreateTaskInput,
  ListTasksQuery,
  ProgressStore,
  PurgeOptions,
  ReapOptions,
  RunFence,
  Task,
  TaskEvent,
} from '@finishline/core';
import { ErrorCode, ProgressError } from '@finishline/core';
import {
  assertCount,
  assertId,
  assertRun,
  assertTaskId,
  newTask,
  parseAppendInput,
  parseCreateTaskInput,
  parseFenceOwner,
  parseLeaseInput,
  parseListTasksQuery,
  parsePurgeOptions,
  parseReadLimit,
  parseReapOptions,
  parseRunFence,
  parseTaskIds,
  storeClosed,
  taskAlreadyExists,
  taskNotFound,
} from '@finishline/core/internal';
import { AppendPipeline } from './append-pipeline.js';
import { BackgroundCheckpoints, type CheckpointStats } from './background-checkpoints.js';
import { guardOnError } from './error-reporter.js';
import type { LeaseContext } from './lease-statements.js';
import { reapExpiredLeases, releaseLease, renewLease } from './lease-statements.js';
import { migrate } from './migrations.js';
import { assertWritable, configureDatabase, openDatabase, openFailure } from './open-database.js';
import { createQueryBuilder } from './query-builder.js';
import type { EventRow, TaskRow } from './row-codec.js';
import { rowToEvent, rowToTask, taskToRow } from './row-codec.js';
import { RunningTaskCache } from './running-task-cache.js';
import { ChangePublisher } from './sqlite-change-feed.js';
import type { SqliteDatabase } from './sqlite-driver.js';
import { toProgressError } from './sqlite-errors.js';
import type { SqliteStatements } from './sqlite-statements.js';
import { loadTask, prepareStatements, requireTask } from './sqlite-statements.js';
import type { SqliteProgressStoreOptions } from './sqlite-store-options.js';
import { resolveSqliteStoreOptions } from './sqlite-store-options.js';
import { WriteTransactions } from './write-transaction.js';

/**
 * The SQLite `ProgressStore`: opening, the store methods, and the wiring of its append pipeline, lease
 * statements and change feed.
 *
 * @module
 */

/** The most damaged rows a store remembers having reported from `listTasks` (then it forgets them all). */
const REPORTED_ROWS_MAX = 1000;

/**
 * The events one `purgeFinished` call deletes, at most, but for its first task. A purge is one write
 * transaction on a synchronous driver: while it deletes, no other write reaches the file and this process's
 * event loop (its sockets, heartbeats, lease renewals) waits. 500 tasks of 400 events took 0.66 s, the
 * event loop held the whole time; at the default limit of 500 tasks and a few thousand events each, several
 * seconds. 10,000 events is some 30 ms; a call that stops early leaves the rest to the next.
 */
export const PURGE_EVENT_BUDGET = 10_000;

/** The oldest tasks of `found` whose events fit {@link PURGE_EVENT_BUDGET}, and always the first. */
function withinEventBudget<T extends { seq: number | bigint }>(found: readonly T[]): T[] {
  let events = 0;
  let taken = 0;
  for (const row of found) {
    events += Number(row.seq);
    if (taken > 0 && events > PURGE_EVENT_BUDGET) break;
    taken++;
  }
  return found.slice(0, taken);
}

/**
 * A {@link ProgressStore} on SQLite (better-sqlite3, WAL), for one machine: one process, or several
 * processes sharing a database file.
 *
 * - **Group commit.** Appends issued in the same event-loop turn are committed in one transaction, each
 *   planned by the shared `planAppend` in call order, so a task's seq stays gap-free; an append that is
 *   rejected (unknown task, task already finished) rejects only its own promise. See `append-pipeline.ts`.
 * - **Call order.** Every other method first commits the appends queued before it, so operations take
 *   effect in the order they were called, as with the in-memory store; a read sees every earlier write.
 * - **Change feed.** Local commits are published right after they commit. Commits by other connections
 *   to the same file are found by polling `PRAGMA data_version` and read from the event log past a
 *   high-water mark (the `AUTOINCREMENT` event id, which SQLite's single writer makes commit order), so
 *   every event, from any process, is published once and in order. A file restored from an older
 *   backup under the store takes the ids back below the mark: the feed notices it (a poll, or its own
 *   append) and publishes every task's latest seq once, and `changes.forgetSeqs()` (called by a server
 *   that read the renewed epoch) drops what was not published yet and moves the mark to the restored
 *   file. See `sqlite-change-feed.ts`.
 * - **Leases.** Reaping reads and interrupts expired tasks inside one `BEGIN IMMEDIATE` transaction;
 *   SQLite serializes writers, so two stores on one file never interrupt a task twice. See
 *   `lease-statements.ts`.
 *
 * better-sqlite3 is synchronous: each method does its SQLite work before returning its promise.
 *
 * @example
 * ```ts
 * import { SqliteProgressStore } from '@finishline/sqlite';
 *
 * const store = new SqliteProgressStore({ database: 'progress.db' });
 * const task = await store.createTask({ owner: 'alice', kind: 'batch_taint', total: 1 });
 * await store.append(task.id, { type: 'item', key: 'node-1', ok: true });
 * await store.append(task.id, { type: 'completed' });
 * await store.close();
 * ```
 */
export class SqliteProgressStore implements ProgressStore {
  readonly #database: SqliteDatabase;
  readonly #ownsDatabase: boolean;
  readonly #clock: Clock;
  readonly #q: SqliteStatements;
  readonly #publisher: ChangePublisher;
  readonly #cache = new RunningTaskCache();
  readonly #transactions: WriteTransactions;
  readonly #appends: AppendPipeline;
  readonly #leases: LeaseContext;
  /** The worker that checkpoints the WAL, when `checkpoints` is `'background'` and the database is a file. */
  readonly #checkpoints: BackgroundCheckpoints | undefined;
  /** The caller's `onError`, guarded (see `guardOnError`). */
  readonly #onError: (error: unknown) => void;
  /** The damaged rows `listTasks` skipped and reported, each once (cleared at {@link REPORTED_ROWS_MAX}). */
  readonly #reportedRows = new Set<string>();
  #closed = false;
  /** What close() returns, every time it is called. */
  #closing: Promise<void> | undefined;

  /**
   * Opens (or adopts) the database, configures it (WAL, `synchronous`, `busy_timeout`), applies pending
   * migrations and starts watching for other processes' commits.
   *
   * @throws ProgressError `invalid_input` for bad options, `store_unavailable` when the database cannot
   * be opened or migrated, or the connection cannot write (a file the process may not write, a connection
   * opened read-only).
   */
  constructor(options: SqliteProgressStoreOptions) {
    const resolved = resolveSqliteStoreOptions(options);
    // Every report goes through it: most come from timers and listeners, where a throw ended the process.
    const onError = guardOnError(resolved.onError);
    this.#onError = onError;
    this.#clock = resolved.clock;
    this.#ownsDatabase = typeof resolved.database === 'string';
    const database =
      typeof resolved.database === 'string'
        ? openDatabase(resolved.database, resolved.busyTimeoutMs)
        : resolved.database;
    let publisher: ChangePublisher | undefined;
    try {
      const builder = createQueryBuilder();
      configureDatabase(database, builder, {
        synchronous: resolved.synchronous,
        busyTimeoutMs: resolved.busyTimeoutMs,
      });
      migrate(database, builder, { now: this.#clock(), busyTimeoutMs: resolved.busyTimeoutMs });
      if (database.memory !== true) assertWritable(database, builder, resolved.busyTimeoutMs);
      this.#q = prepareStatements(database, builder);
      publisher = new ChangePublisher({
        statements: this.#q,
        // An in-memory database has no other connections to watch.
        dataVersionPollMs: database.memory === true ? 0 : resolved.dataVersionPollMs,
        onListenerError: onError,
        onPollError: (error) => onError(toProgressError(error, 'poll for other connections’ commits')),
        // Set by the time a poll runs (a timer's callback, after the constructor).
        onPolledCommit: () => this.#transactions.othersWrote(),
        // Set by the time a renewal runs (after a commit or a poll, after the constructor).
        writeAlone: (work) => this.#transactions.runAlone(work),
      });
      this.#checkpoints =
        resolved.checkpoints === 'background'
          ? BackgroundCheckpoints.start({ database, onError })
          : undefined;
      this.#publisher = publisher;
    } catch (error) {
      // The feed may already poll for other connections' commits: left running, it would read a closed
      // database and report that on every tick.
      publisher?.stop();
      if (this.#ownsDatabase) database.close();
      throw openFailure(error, typeof resolved.database === 'string' ? resolved.database : undefined);
    }
    this.#database = database;
    this.#transactions = new WriteTransactions({
      database,
      busyTimeoutMs: resolved.busyTimeoutMs,
      statements: this.#q,
      cache: this.#cache,
      publisher: this.#publisher,
      onCommitted: this.#checkpoints?.committed.bind(this.#checkpoints),
    });
    this.#appends = new AppendPipeline({
      statements: this.#q,
      transactions: this.#transactions,
      cache: this.#cache,
      publisher: this.#publisher,
      clock: this.#clock,
      maxBatchSize: resolved.maxBatchSize,
    });
    this.#leases = {
      statements: this.#q,
      transactions: this.#transactions,
      cache: this.#cache,
      clock: this.#clock,
      onError,
    };
  }

  /**
   * Every committed event, this process's and (when polling) other processes' on the same file.
   * `forgetSeqs()` (after a restore and `renewEpoch()`): nothing committed before the call is published
   * after it, and every commit after it is, even when the restore took the event ids back.
   */
  get changes(): ChangeFeed {
    return this.#publisher.feed;
  }

  createTask(input: CreateTaskInput): Promise<Task> {
    return this.#call('create a task', () => {
      const parsed = parseCreateTaskInput(input);
      this.#appends.flush();
      const id = parsed.id ?? globalThis.crypto.randomUUID();
      this.#cache.forget(id);
      // A write transaction, not an insert on its own: it waits for another process's write lock as
      // appends do (see `WriteTransactions`), where SQLite's busy handler gave up beside a process that
      // commits back to back. The clock is read once the lock is held, as every other write reads it: read
      // before the wait (up to busyTimeoutMs), a lease shorter than the wait was created already expired,
      // for the next reap to interrupt, and a run (`createdAt`) could be one a purge that held the lock
      // meanwhile had just deleted (see `isPurgeable`).
      const task = this.#transactions.run(
        () => {
          const created = newTask({ ...parsed, id }, this.#clock());
          return Number(this.#q.insertTask.run(taskToRow(created)).changes) > 0 ? created : undefined;
        },
        { changeless: true },
      );
      if (task === undefined) throw taskAlreadyExists(id);
      return task;
    });
  }

  getTask(taskId: string): Promise<Task | undefined> {
    return this.#call('read a task', () => {
      assertTaskId(taskId);
      this.#appends.flush();
      return loadTask(this.#q, taskId);
    });
  }

  getEpoch(): Promise<string> {
    return this.#call('read the epoch', () => this.#readEpoch());
  }

  renewEpoch(): Promise<string> {
    return this.#call('renew the epoch', () => {
      // The appends called before the renewal are of the old epoch: committed after it, a server that
      // heard the renewal took their changes for the new epoch's (and call order says they come first).
      this.#appends.flush();
      // A write transaction: it waits for another process's write lock as appends do (see
      // `WriteTransactions`). The other connections' commits it finds first are of the old epoch too:
      // published before the renewal.
      const epoch = this.#transactions.run(() => {
        this.#q.updateEpoch.run();
        return this.#readEpoch();
      });
      this.#publisher.drain();
      this.#publisher.epochRenewed(epoch);
      return epoch;
    });
  }

  listTasks(query: ListTasksQuery): Promise<Task[]> {
    return this.#call('list tasks', () => {
      const { owner, statuses, limit } = parseListTasksQuery(query);
      this.#appends.flush();
      if (statuses !== undefined && statuses.length === 0) return [];
      const damaged = new Map<string, unknown>();
      let tasks: Task[] = [];
      // A damaged row is skipped, not the whole list: one row edited by hand denied its owner every list.
      // Its place goes to the next task, so the list still holds the `limit` newest readable tasks: the
      // query is run again for as many more rows as it skipped (the rows read before come again, first).
      // Each run that skipped reads more rows than the last, so the loop ends once the owner's rows do.
      for (let read = limit; ; ) {
        const rows =
          statuses === undefined
            ? this.#q.listTasks.all({ owner, limit: read })
            : this.#q.listTasksByStatus.all({ owner, statuses: JSON.stringify(statuses), limit: read });
        tasks = [];
        for (const row of rows) {
          try {
            tasks.push(rowToTask(row as TaskRow));
          } catch (error) {
            damaged.set(String((row as TaskRow).id), error);
          }
        }
        if (tasks.length >= limit || rows.length < read) break;
        read = limit + (rows.length - tasks.length);
      }
      for (const [taskId, error] of damaged) this.#reportSkippedRow(taskId, error);
      return tasks.slice(0, limit);
    });
  }

  /**
   * Reports a damaged row `listTasks` skipped, once per row and store: a list asked for every few seconds
   * must not flood the log with the same row.
   */
  #reportSkippedRow(taskId: string, error: unknown): void {
    if (this.#reportedRows.has(taskId)) return;
    if (this.#reportedRows.size >= REPORTED_ROWS_MAX) this.#reportedRows.clear();
    this.#reportedRows.add(taskId);
    this.#onError(
      new ProgressError(
        ErrorCode.Internal,
        `${error instanceof Error ? error.message : String(error)}; listTasks left the task out of its lists (getTask and readEvents of it fail with this error) until the row is repaired or purged`,
        { cause: error, taskId },
      ),
    );
  }

  append(taskId: string, input: AppendInput, options?: RunFence): Promise<AppendResult> {
    let parsed: AppendInput;
    let run: number | undefined;
    let owner: string | undefined;
    try {
      this.#assertOpen();
      assertTaskId(taskId);
      // The parse copies `detail` and `result`: the caller may change its objects once we return.
      parsed = parseAppendInput(input);
      run = parseRunFence(options);
      owner = parseFenceOwner(options);
    } catch (error) {
      return Promise.reject(toProgressError(error, 'append'));
    }
    return this.#appends.enqueue(taskId, parsed, run, owner);
  }

  readEvents(taskId: string, afterSeq: number, limit?: number): Promise<TaskEvent[]> {
    return this.#call('read events', () => {
      assertTaskId(taskId);
      assertCount(afterSeq, 'afterSeq');
      const resolvedLimit = parseReadLimit(limit);
      this.#appends.flush();
      const rows = this.#q.selectEvents.all({ taskId, afterSeq, limit: resolvedLimit });
      if (rows.length === 0 && this.#q.selectTask.get({ id: taskId }) === undefined)
        throw taskNotFound(taskId);
      return rows.map((row) => rowToEvent(row as EventRow));
    });
  }

  latestSeqs(taskIds: readonly string[]): Promise<Map<string, number>> {
    return this.#call('read latest seqs', () => {
      const ids = parseTaskIds(taskIds);
      this.#appends.flush();
      const seqs = new Map<string, number>();
      if (ids.length === 0) return seqs;
      for (const row of this.#q.latestSeqs.all({ ids: JSON.stringify(ids) }) as Pick<
        TaskRow,
        'id' | 'seq'
      >[]) {
        seqs.set(String(row.id), Number(row.seq));
      }
      return seqs;
    });
  }

  ack(taskId: string, seq: number, options?: RunFence): Promise<number> {
    return this.#call('record an ack', () => {
      assertTaskId(taskId);
      assertCount(seq, 'seq');
      const run = parseRunFence(options);
      this.#appends.flush();
      return this.#transactions.run(
        () => {
          const task = requireTask(this.#q, taskId);
          assertRun(task, run);
          if (seq > task.seq) {
            throw new ProgressError(
              ErrorCode.InvalidInput,
              `Cannot ack seq ${seq} of task ${taskId}: its latest seq is ${task.seq}`,
              { taskId },
            );
          }
          if (seq <= task.ackedSeq) return task.ackedSeq;
          this.#cache.forget(taskId);
          this.#q.updateAckedSeq.run({ id: taskId, ackedSeq: seq });
          return seq;
        },
        { changeless: true },
      );
    });
  }

  renewLease(taskId: string, owner: string, ttlMs: number, options?: RunFence): Promise<Task> {
    return this.#call('renew a lease', () => {
      assertTaskId(taskId);
      const lease = parseLeaseInput({ owner, ttlMs });
      const run = parseRunFence(options);
      this.#appends.flush();
      return renewLease(this.#leases, { taskId, owner: lease.owner, ttlMs: lease.ttlMs, run });
    });
  }

  releaseLease(taskId: string, owner: string, options?: RunFence): Promise<void> {
    return this.#call('release a lease', () => {
      assertTaskId(taskId);
      assertId(owner, 'lease owner');
      const run = parseRunFence(options);
      this.#appends.flush();
      releaseLease(this.#leases, taskId, owner, run);
    });
  }

  reapExpiredLeases(options?: ReapOptions): Promise<AppendResult[]> {
    return this.#call('reap expired leases', () => {
      const { limit } = parseReapOptions(options);
      this.#appends.flush();
      return reapExpiredLeases(this.#leases, limit);
    });
  }

  purgeFinished(options: PurgeOptions): Promise<number> {
    return this.#call('purge finished tasks', () => {
      const { olderThanMs, limit } = parsePurgeOptions(options);
      this.#appends.flush();
      return this.#transactions.run(() => {
        const now = this.#clock();
        const found = this.#q.finishedBefore.all({ cutoff: now - olderThanMs, now, limit }) as Pick<
          TaskRow,
          'id' | 'seq'
        >[];
        const rows = withinEventBudget(found);
        if (rows.length === 0) return 0;
        for (const row of rows) this.#cache.forget(String(row.id));
        const ids = JSON.stringify(rows.map((row) => row.id));
        this.#q.deleteEventsOfTasks.run({ ids });
        this.#q.deleteTasks.run({ ids });
        return rows.length;
      });
    });
  }

  /**
   * Commits queued appends, stops polling and closes the database if the store opened it; resolves once
   * the checkpoint worker exited. Safe to call more than once: every call returns the first one's
   * promise (a later call resolved at once, while the worker still held the file open).
   */
  close(): Promise<void> {
    if (this.#closing !== undefined) return this.#closing;
    try {
      this.#appends.flush();
    } finally {
      // A change listener may have called close() during the flush: that call did the rest.
      this.#closing ??= this.#shutDown();
    }
    return this.#closing;
  }

  /** Everything close() does after the flush; resolves once the checkpoint worker exited. */
  #shutDown(): Promise<void> {
    this.#closed = true;
    this.#appends.close();
    this.#publisher.stop();
    const stopped = this.#checkpoints?.stop() ?? Promise.resolve();
    if (this.#ownsDatabase) this.#database.close();
    return stopped;
  }

  /**
   * What the background checkpoints did since the store opened (see the `checkpoints` option);
   * `undefined` when the store checkpoints inline (`checkpoints: 'inline'`, or a database in memory).
   */
  checkpointStats(): CheckpointStats | undefined {
    return this.#checkpoints?.stats;
  }

  /**
   * Runs `work` now (better-sqlite3 is synchronous), publishes what it committed, and maps whatever it
   * throws to a ProgressError. A write transaction reads other connections' commits first, whatever it
   * writes (an ack, a lease, a purge): left in the outbox, they waited for the next append or poll, and
   * with polling off for ever. (Those it reads are published here; one that publishes nothing of its own
   * reads none while a poll publishes a backlog page by page, which then does: see `WriteTransactions.run`;
   * an append batch waits for that paging: see `AppendPipeline`.)
   */
  #call<T>(action: string, work: () => T): Promise<T> {
    try {
      this.#assertOpen();
      const result = work();
      this.#publisher.drain();
      return Promise.resolve(result);
    } catch (error) {
      // A change listener closed the store during the call's flush, and the call met the closed database:
      // `closed`, not the `store_unavailable` (a retryable outage) that "database connection is not open" is.
      return Promise.reject(this.#closed ? storeClosed() : toProgressError(error, action));
    }
  }

  #assertOpen(): void {
    if (this.#closed) throw storeClosed();
  }

  #readEpoch(): string {
    const row = this.#q.selectEpoch.get() as { value: string } | undefined;
    // Migration 3 inserts the row; a database without it was altered by hand.
    if (row === undefined) throw new ProgressError(ErrorCode.Internal, 'The store has no epoch row');
    return row.value;
  }
}
