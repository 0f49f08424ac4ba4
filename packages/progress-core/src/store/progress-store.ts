import type { Task, TaskEvent, TaskStatus } from '../model.js';
import type { ChangeFeed } from './change-feed.js';
import type { AppendInput, CreateTaskInput } from './inputs.js';
import type { AppendResult } from './task-transitions.js';

/** What {@link ProgressStore.listTasks} filters on. */
export interface ListTasksQuery {
  /** Only this principal's tasks. */
  owner: string;
  /** Only these statuses; all when omitted. */
  statuses?: readonly TaskStatus[];
  /** At most this many, newest first. @default 50 (at most 1000) */
  limit?: number;
}

/** What {@link ProgressStore.reapExpiredLeases} accepts. */
export interface ReapOptions {
  /** At most this many tasks per call. @default 100 */
  limit?: number;
}

/** What {@link ProgressStore.purgeFinished} accepts. */
export interface PurgeOptions {
  /** Delete terminal tasks whose `finishedAt` is at least this many milliseconds in the past. */
  olderThanMs: number;
  /** At most this many tasks (with all their events) per call. @default 500 */
  limit?: number;
}

/**
 * The storage seam: tasks, their event logs, acks, leases, retention and a change feed. Every method
 * validates its arguments and rejects with a {@link ProgressError} (`invalid_input`, `task_not_found`,
 * `task_finished`, `lease_held`, `store_unavailable`, `closed`); none throws synchronously.
 *
 * The contract, checked for every implementation by `describeProgressStoreContract` from
 * `@finishline/core/testing`:
 * - `append` assigns `seq = previous + 1` atomically with the snapshot update, even under concurrent
 *   appends from several callers or processes: a task's log is 1..n with no gap.
 * - A task has at most one terminal event and nothing after it; appending after it rejects with
 *   `task_finished`.
 * - Each committed event is published on `changes` (after the commit is durable).
 * - `ack` is cumulative and monotonic: `ackedSeq` never decreases.
 * - `reapExpiredLeases` turns each running task whose lease expired into exactly one `interrupted`
 *   event, even when several replicas reap at the same time.
 *
 * @example
 * ```ts
 * const store = new MemoryProgressStore();
 * const task = await store.createTask({ owner: 'alice', kind: 'batch_taint', total: 2 });
 * await store.append(task.id, { type: 'item', key: 'node-1', ok: true });
 * await store.append(task.id, { type: 'item', key: 'node-2', ok: false, error: 'conflict' });
 * const { event } = await store.append(task.id, { type: 'completed' });
 * event.seq; // 3
 * ```
 */
export interface ProgressStore {
  /** Publishes every committed event as a {@link TaskChange}. */
  readonly changes: ChangeFeed;

  /** Creates a running task at seq 0. Rejects with `invalid_input` if the id is taken. */
  createTask(input: CreateTaskInput): Promise<Task>;

  /** The task row, or `undefined` when there is none. */
  getTask(taskId: string): Promise<Task | undefined>;

  /** A principal's tasks, newest first (by `createdAt`, then id). */
  listTasks(query: ListTasksQuery): Promise<Task[]>;

  /** Appends one event and updates the snapshot in the same transaction. */
  append(taskId: string, input: AppendInput): Promise<AppendResult>;

  /**
   * Events with `seq > afterSeq`, in seq order, at most `limit` (default 1000, at most 10,000).
   * Rejects with `task_not_found` for an unknown task.
   */
  readEvents(taskId: string, afterSeq: number, limit?: number): Promise<TaskEvent[]>;

  /**
   * The latest seq of each known task among `taskIds` (unknown ids are absent from the map). One query:
   * servers call it for the safety-net poll and heartbeats. At most 1000 ids per call.
   */
  latestSeqs(taskIds: readonly string[]): Promise<Map<string, number>>;

  /**
   * Records that a watcher processed every event up to `seq`. Returns the new `ackedSeq`
   * (`max(previous, seq)`). Rejects with `invalid_input` when `seq` exceeds the task's seq.
   */
  ack(taskId: string, seq: number): Promise<number>;

  /**
   * Takes or renews the lease on a running task for `ttlMs` from now. Another owner may take it only once
   * it expired. Rejects with `lease_held` or `task_finished`.
   */
  renewLease(taskId: string, owner: string, ttlMs: number): Promise<Task>;

  /** Drops `owner`'s lease (no-op if another owner holds it or the task ended). */
  releaseLease(taskId: string, owner: string): Promise<void>;

  /**
   * Ends every running task whose lease expired with an `interrupted` event, each exactly once across
   * concurrent reapers. Returns the appended events.
   */
  reapExpiredLeases(options?: ReapOptions): Promise<AppendResult[]>;

  /** Deletes terminal tasks (and their events) finished long enough ago. Returns how many tasks went. */
  purgeFinished(options: PurgeOptions): Promise<number>;

  /** Releases what the store opened (never the caller's clients). Later calls reject with `closed`. */
  close(): Promise<void>;
}

/** Defaults shared by every store, so their behaviour does not drift. */
export const STORE_DEFAULTS = Object.freeze({
  /** {@link ListTasksQuery.limit} */
  listLimit: 50,
  maxListLimit: 1000,
  /** {@link ProgressStore.readEvents} `limit` */
  readLimit: 1000,
  maxReadLimit: 10_000,
  /** {@link ReapOptions.limit} */
  reapLimit: 100,
  /** {@link PurgeOptions.limit} */
  purgeLimit: 500,
  /** Largest `taskIds` array for {@link ProgressStore.latestSeqs}. */
  maxLatestSeqsIds: 1000,
});
