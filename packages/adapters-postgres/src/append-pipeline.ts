import type { AppendInput, AppendResult, Clock, Task, TaskChange, TaskEvent } from '@finishline/core';
import { ErrorCode, isProgressError, isTerminalType, ProgressError } from '@finishline/core';
import { compareIds, planAppend, taskNotFound } from '@finishline/core/internal';
import { type Kysely, type RawBuilder, sql, type Transaction } from 'kysely';
import {
  type ChangeNotice,
  encodeChangeNotices,
  encodeEvent,
  frozenEvent,
  MAX_CHANGE_ENTRY_BYTES,
  NOTIFY_EVENTS_PAYLOAD_BUDGET_BYTES,
  NOTIFY_PAYLOAD_BUDGET_BYTES,
  PG_NOTIFY_PAYLOAD_LIMIT_BYTES,
} from './notify-payload.js';
import { isDataException, toProgressError } from './pg-errors.js';
import { detached, jsonCopy, type TaskRow, taskColumns, taskRecord, toTask } from './row-codec.js';
import type { ProgressDatabase } from './schema.js';

/**
 * The append pipeline (group commit): appends that arrive while a transaction is in flight are
 * committed together by the next one, in call order per task. Each transaction locks its tasks' rows
 * (`SELECT … FOR UPDATE`, in id order), plans the events with the shared pure transitions, and writes
 * the snapshots, the events and a `pg_notify` in one statement, so a task's `seq` is gap-free under any
 * number of writers in any number of processes.
 *
 * @module
 */

// Refuse to load if a payload could ever reach Postgres's limit: an oversized one would fail its transaction.
if (
  MAX_CHANGE_ENTRY_BYTES + 2 > NOTIFY_PAYLOAD_BUDGET_BYTES ||
  NOTIFY_PAYLOAD_BUDGET_BYTES * 4 > PG_NOTIFY_PAYLOAD_LIMIT_BYTES ||
  NOTIFY_EVENTS_PAYLOAD_BUDGET_BYTES >= PG_NOTIFY_PAYLOAD_LIMIT_BYTES
) {
  throw new ProgressError(ErrorCode.Internal, 'NOTIFY payloads could come near the 8000-byte limit');
}

/** Where appends are written: the schema's tables and its `NOTIFY` channel. */
export interface AppendTarget {
  tasks: RawBuilder<unknown>;
  events: RawBuilder<unknown>;
  channel: string;
}

/** Counters of the append pipeline since the store opened. */
export interface AppendStats {
  /** Appends committed (events written), reaped interruptions included. */
  appends: number;
  /** Append transactions committed. */
  batches: number;
  /** Most appends committed by one transaction. */
  largestBatch: number;
  /** Append transactions that failed (their appends rejected, or retried one by one after a data error). */
  failedBatches: number;
}

/** An append waiting for (or in) a group-commit transaction. */
interface PendingAppend {
  taskId: string;
  input: AppendInput;
  resolve: (result: AppendResult) => void;
  reject: (error: unknown) => void;
}

/** What {@link AppendPipeline} needs. */
export interface AppendPipelineOptions {
  db: Kysely<ProgressDatabase>;
  target: AppendTarget;
  clock: Clock;
  /** Most appends per transaction. */
  maxBatchSize: number;
  /** Most append transactions in flight at once. */
  maxConcurrentBatches: number;
  /** Called once per committed event, right after its transaction committed. */
  publish: (change: TaskChange) => void;
}

/**
 * Writes planned appends: the final row of each task, every event, and notifications of which tasks
 * gained which seqs, with the events when they fit (see `notify-payload.ts`) — one statement, inside the
 * caller's transaction, so the notifications are sent if and only if the appends commit. Returns the
 * changes to publish once the transaction committed, in the order of `events`, each with its event.
 */
export async function writeAppends(
  trx: Transaction<ProgressDatabase>,
  target: AppendTarget,
  tasks: Task[],
  events: TaskEvent[],
): Promise<TaskChange[]> {
  const notices = new Map<string, ChangeNotice & { events: TaskEvent[] }>();
  // Each body is serialized once, for the events table, the notification and the published change alike.
  const bodies = new Map<TaskEvent, string>();
  const rows: string[] = [];
  const changes: TaskChange[] = [];
  for (const event of events) {
    const { taskId, seq, type, time, ...body } = event;
    const bodyJson = JSON.stringify(body);
    bodies.set(event, bodyJson);
    rows.push(
      `{"task_id":${JSON.stringify(taskId)},"seq":${seq},"type":${JSON.stringify(type)},"time":${time},"body":${bodyJson}}`,
    );
    const terminal = isTerminalType(type);
    changes.push(committedChange(taskId, seq, terminal, type, time, bodyJson));
    const notice = notices.get(taskId);
    if (notice === undefined) {
      notices.set(taskId, { taskId, firstSeq: seq, seq, terminal, events: [event] });
    } else {
      notice.seq = seq;
      notice.terminal = terminal;
      notice.events.push(event);
    }
  }
  const payloads = encodeChangeNotices([...notices.values()], (event) =>
    encodeEvent(event, bodies.get(event)),
  );
  // Rows travel as one JSON document each for tasks and events: one serialization in JS, one parse in
  // Postgres, instead of a text[] of JSON strings that both sides escape and unescape element by element.
  await sql`
    WITH updated AS (
      UPDATE ${target.tasks} AS t SET
        status = v.status, total = v.total, done = v.done, succeeded = v.succeeded, failed = v.failed,
        current = v.current, message = v.message, result = v.result, error_code = v.error_code,
        error_message = v.error_message, seq = v.seq, updated_at = v.updated_at, finished_at = v.finished_at,
        lease_owner = v.lease_owner, lease_expires_at = v.lease_expires_at
      FROM json_to_recordset(${JSON.stringify(tasks.map(taskRecord))}::json) AS v(
        id text, status text, total int8, done int8, succeeded int8, failed int8, current text, message text,
        result json, error_code text, error_message text, seq int8, updated_at int8, finished_at int8,
        lease_owner text, lease_expires_at int8)
      -- The id list lets the planner reach the rows by primary key whatever it guesses of the JSON.
      WHERE t.id = v.id AND t.id = ANY(${tasks.map((task) => task.id)}::text[])
    ), inserted AS (
      INSERT INTO ${target.events} (task_id, seq, type, time, body)
      SELECT task_id, seq, type, time, body
      FROM json_to_recordset(${`[${rows.join(',')}]`}::json)
        AS e(task_id text, seq int8, type text, time int8, body json)
    )
    -- Payloads as one JSON array: JSON.stringify escapes them natively, where a text[] is escaped in JS.
    SELECT pg_notify(${target.channel}, payload)
    FROM json_array_elements_text(${JSON.stringify(payloads)}::json) AS payload`.execute(trx);
  return changes;
}

/**
 * The change of a committed event. Its `events` are built on first read, from the text the table
 * stores (a fresh, frozen copy: what any other replica rebuilds from the notification): a store with no
 * subscriber that reads them, like a writer-only process, never pays for the copy.
 */
function committedChange(
  taskId: string,
  seq: number,
  terminal: boolean,
  type: string,
  time: number,
  bodyJson: string,
): TaskChange {
  let events: readonly TaskEvent[] | undefined;
  return Object.freeze({
    taskId,
    seq,
    terminal,
    get events(): readonly TaskEvent[] {
      events ??= Object.freeze([
        frozenEvent(taskId, seq, type, time, JSON.parse(bodyJson) as Record<string, unknown>),
      ]);
      return events;
    },
  });
}

/** Queues appends and commits them in batches; see the module documentation. */
export class AppendPipeline {
  readonly #options: AppendPipelineOptions;
  readonly #queue: PendingAppend[] = [];
  readonly #busyTasks = new Set<string>();
  readonly #idleWaiters: (() => void)[] = [];
  readonly #minConcurrentBatch: number;
  readonly #stats: AppendStats = { appends: 0, batches: 0, largestBatch: 0, failedBatches: 0 };
  #activeBatches = 0;
  #flushScheduled = false;

  constructor(options: AppendPipelineOptions) {
    this.#options = options;
    this.#minConcurrentBatch = Math.ceil(options.maxBatchSize / 4);
  }

  stats(): AppendStats {
    return { ...this.#stats };
  }

  /** Queues a validated append; the promise settles once its transaction committed or failed. */
  enqueue(taskId: string, input: AppendInput): Promise<AppendResult> {
    return new Promise<AppendResult>((resolve, reject) => {
      this.#queue.push({ taskId, input, resolve, reject });
      this.#scheduleFlush();
    });
  }

  /** Counts and publishes appends another transaction committed (the reaper's interruptions). */
  committedElsewhere(changes: readonly TaskChange[]): void {
    this.#stats.appends += changes.length;
    for (const change of changes) this.#options.publish(change);
  }

  /** Resolves once every queued append has been committed or rejected. */
  async whenIdle(): Promise<void> {
    if (this.#activeBatches === 0 && this.#queue.length === 0) return;
    await new Promise<void>((resolve) => this.#idleWaiters.push(resolve));
  }

  #scheduleFlush(): void {
    if (this.#flushScheduled) return;
    this.#flushScheduled = true;
    // A microtask later: appends issued in the same synchronous run join one transaction.
    queueMicrotask(() => {
      this.#flushScheduled = false;
      this.#flush();
    });
  }

  #flush(): void {
    while (this.#activeBatches < this.#options.maxConcurrentBatches && this.#queue.length > 0) {
      // A second transaction in flight pays off only when it has enough to carry; otherwise the appends
      // wait for the running one to finish and go together (measured: larger batches beat more of them).
      if (this.#activeBatches > 0 && this.#queue.length < this.#minConcurrentBatch) break;
      const batch = this.#takeBatch();
      if (batch.length === 0) break;
      const taskIds = new Set(batch.map((entry) => entry.taskId));
      for (const taskId of taskIds) this.#busyTasks.add(taskId);
      this.#activeBatches += 1;
      void this.#commitBatch(batch).finally(() => {
        this.#activeBatches -= 1;
        for (const taskId of taskIds) this.#busyTasks.delete(taskId);
        this.#flush();
        if (this.#activeBatches === 0 && this.#queue.length === 0) {
          for (const wake of this.#idleWaiters.splice(0)) wake();
        }
      });
    }
  }

  /**
   * Takes the next batch from the queue, in order, skipping tasks that are in a transaction already:
   * their appends wait for it, so one task's appends commit in call order.
   */
  #takeBatch(): PendingAppend[] {
    const batch: PendingAppend[] = [];
    const kept: PendingAppend[] = [];
    for (const entry of this.#queue) {
      if (batch.length < this.#options.maxBatchSize && !this.#busyTasks.has(entry.taskId)) batch.push(entry);
      else kept.push(entry);
    }
    // Once the batch is full, later appends of a task in it must wait too: they stay behind, in order.
    this.#queue.splice(0, this.#queue.length, ...kept);
    return batch;
  }

  /** Commits a batch of appends in one transaction; settles every append's promise. Never rejects. */
  async #commitBatch(batch: PendingAppend[]): Promise<void> {
    const { db, target, clock, publish } = this.#options;
    const now = clock();
    const taskIds = [...new Set(batch.map((entry) => entry.taskId))].sort(compareIds);
    let outcomes: (AppendResult | ProgressError)[];
    let changes: TaskChange[] = [];
    try {
      outcomes = await db.transaction().execute(async (trx) => {
        // Locks in id order, so two batches (in any processes) never wait for each other in a cycle.
        const { rows } = await sql<TaskRow>`
          SELECT ${taskColumns} FROM ${target.tasks}
          WHERE id = ANY(${taskIds}::text[])
          ORDER BY id
          FOR UPDATE`.execute(trx);
        const tasks = new Map(rows.map((row) => [row.id, toTask(row)]));
        const changed = new Map<string, Task>();
        const planned: TaskEvent[] = [];
        const results: (AppendResult | ProgressError)[] = [];
        for (const { taskId, input } of batch) {
          const task = tasks.get(taskId);
          if (task === undefined) {
            results.push(taskNotFound(taskId));
            continue;
          }
          try {
            const next = planAppend(task, input, now);
            tasks.set(taskId, next.task);
            changed.set(taskId, next.task);
            planned.push(next.event);
            // Returned objects must not share the caller's `detail`/`result` objects.
            results.push({
              event: detached(next.event),
              task: { ...next.task, result: jsonCopy(next.task.result) },
            });
          } catch (error) {
            if (!isProgressError(error)) throw error;
            results.push(error);
          }
        }
        if (planned.length > 0) changes = await writeAppends(trx, target, [...changed.values()], planned);
        return results;
      });
    } catch (error) {
      this.#stats.failedBatches += 1;
      if (batch.length > 1 && isDataException(error)) {
        // One append carried a value Postgres refuses; commit the others and let that one fail alone.
        for (const entry of batch) await this.#commitBatch([entry]);
        return;
      }
      const failure = toProgressError(error, 'append');
      for (const entry of batch) entry.reject(failure);
      return;
    }
    const committed = changes.length;
    for (const change of changes) publish(change);
    if (committed > 0) {
      this.#stats.appends += committed;
      this.#stats.batches += 1;
      this.#stats.largestBatch = Math.max(this.#stats.largestBatch, committed);
    }
    outcomes.forEach((outcome, index) => {
      const entry = batch[index];
      if (entry === undefined) return;
      if (isProgressError(outcome)) entry.reject(outcome);
      else entry.resolve(outcome);
    });
  }
}
