import type { Task, TaskEvent, TaskStatus } from '../model.js';
import type { ChangeFeed } from './change-feed.js';
import type { AppendInput, CreateTaskInput } from './inputs.js';
import type { AppendResult } from './task-transitions.js';

/**
 * The `ProgressStore` contract every store implements, with its query and option types.
 *
 * @module
 */

/** What {@link ProgressStore.listTasks} filters on. */
export interface ListTasksQuery {
  /** Only this principal's tasks. */
  owner: string;
  /** Only these statuses; all when omitted (an empty array matches nothing). */
  statuses?: readonly TaskStatus[];
  /** At most this many, newest first. @default 50 (larger values are clamped to 1000) */
  limit?: number;
}

/**
 * The run a write is meant for: `append`, `ack`, `renewLease` and `releaseLease` accept it as their last
 * argument. A task id can be taken again once retention purged its task (applications choose ids, e.g. a
 * retried job), and a writer that slept through that — a process frozen past its lease, a job that kept
 * running after its lease was lost — would otherwise write into the new task. With `run`, a store refuses
 * the write with `task_not_found` when the id's task is another run: the task it was meant for is gone.
 * Without it, the write goes to whatever task has the id (the behaviour before fences, and that of a store
 * that ignores the option: such a store gives no fencing).
 */
export interface RunFence {
  /**
   * The `createdAt` of the task the caller writes to, as `createTask` (or a read) returned it. A run is
   * told apart by its `createdAt` alone. Retention never purges a task in the millisecond it was created
   * (of the clock `createdAt` comes from), so a run created after the purge of the one before it has a
   * later `createdAt`; two runs of one id share it only if that clock stepped back (or replicas' clocks
   * disagree) onto the first run's millisecond. Until 6 December 2026 a task created, ended by someone
   * else, purged with `olderThanMs: 0` and created again within one millisecond shared it, and a writer
   * of the first run wrote into the second. An integer ≥ 0, else `invalid_input`.
   */
  run?: number;
  /**
   * `append` only: the lease owner the caller writes as. The store refuses the append with `lease_held`
   * when the task is running and another owner holds its lease, i.e. took it over with `renewLease` once
   * it expired: the caller lost the task, and the new holder is its only writer. An expired lease nobody
   * took over, or no lease, does not refuse it. Checked on the row the append locks, with `run`. Without
   * it, anyone's append goes in (cancels from elsewhere, reapers), and a worker whose lease was taken over
   * writes into the task beside its new holder (the behaviour before 6 December 2026). An id (see
   * `ID_PATTERN`), else `invalid_input`; `renewLease` and `releaseLease` take their owner as an argument
   * and ignore this one, and `ack` (whose watcher holds no lease) ignores it too.
   */
  owner?: string;
}

/** What {@link ProgressStore.reapExpiredLeases} accepts. */
export interface ReapOptions {
  /** At most this many tasks per call. @default 100 (larger values are clamped to 1000) */
  limit?: number | undefined;
}

/** What {@link ProgressStore.purgeFinished} accepts. */
export interface PurgeOptions {
  /**
   * Delete terminal tasks whose `finishedAt` is at least this many milliseconds in the past. `0` takes
   * every terminal task but those created in the current millisecond, left to a later call (see
   * {@link RunFence}).
   */
  olderThanMs: number;
  /**
   * At most this many tasks (with all their events) per call. A store may take fewer while more are due
   * (the SQLite and Postgres stores stop once their events pass 10,000): a count below `limit` does not
   * mean none is left, so call on a schedule rather than until a short count.
   * @default 500 (larger values are clamped to 5000)
   */
  limit?: number | undefined;
}

/**
 * The storage seam: tasks, their event logs, acks, leases, retention and a change feed. Every method
 * validates its arguments and rejects with a {@link ProgressError} (`invalid_input`, `task_not_found`,
 * `task_finished`, `lease_held`, `store_unavailable`, `closed`); none throws synchronously. An argument
 * whose reading throws (a getter, a Proxy trap) is `invalid_input` too, with the thrown error as `cause`. Stores validate
 * with the shared parsers of `inputs.ts` and change tasks only through the shared transitions of
 * `task-transitions.ts`, so they agree to the field.
 *
 * Rules every store follows the same way:
 * - **Limits.** A `limit` argument is optional (the default in {@link STORE_DEFAULTS} applies); when given
 *   it must be an integer ≥ 1 (else `invalid_input`), and a value above the method's maximum is *clamped*
 *   to that maximum, never rejected: callers page on (by `afterSeq`, or by calling again) exactly as they
 *   would after a short page. `latestSeqs` is the exception: more than `maxLatestSeqsIds` ids reject with
 *   `invalid_input`, because silently dropping ids would hide tasks from the caller.
 * - **Order.** Ids compare by UTF-16 code unit (binary order, `COLLATE "C"` in SQL; ids are ASCII, see
 *   `ID_PATTERN`), never by a locale collation. `listTasks`: `createdAt` descending, then id descending.
 *   `reapExpiredLeases`: `leaseExpiresAt` ascending. `purgeFinished`: `finishedAt` ascending.
 * - **Copies.** Returned objects belong to the caller: mutating them never changes the store, and the
 *   store keeps no reference to its inputs.
 * - **Time.** Every timestamp (`createdAt`, event `time`, lease expiry, retention age) comes from the
 *   store's injected `Clock`; a store shared by replicas may take lease times and `createdAt` from its
 *   database's clock when no clock was injected (the Postgres store does: see its `clock` option). A call
 *   that reads a clock which returns no time (`NaN`, a negative number) or throws rejects with `internal`.
 * - **Close.** `close()` may be called more than once; after the first call every other method rejects
 *   with `closed`.
 *
 * The contract, checked for every implementation by `describeProgressStoreContract` from
 * `@finishline/core/testing`:
 * - `append` assigns `seq = previous + 1` atomically with the snapshot update, even under concurrent
 *   appends from several callers or processes: a task's log is 1..n with no gap.
 * - A task has at most one terminal event and nothing after it; appending after it rejects with
 *   `task_finished`.
 * - Each committed event is published on `changes` once, after the commit is durable and in commit
 *   order for a task (a cross-process feed that reconnects may republish what it missed; see `ChangeFeed`).
 * - `ack` is cumulative and monotonic: `ackedSeq` never decreases.
 * - A write fenced to a run (`append`, `ack`, `renewLease`, `releaseLease` with {@link RunFence}) of an id
 *   whose task is another run changes nothing and rejects with `task_not_found`, also within a batch.
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
  /** Publishes every committed event as a `TaskChange`. */
  readonly changes: ChangeFeed;

  /** Creates a running task at seq 0. Rejects with `invalid_input` if the id is taken. */
  createTask(input: CreateTaskInput): Promise<Task>;

  /** The task row, or `undefined` when there is none. */
  getTask(taskId: string): Promise<Task | undefined>;

  /**
   * A principal's tasks, newest first (by `createdAt`, then id, both descending), at most `limit`.
   * Rejects with `invalid_input` for a bad query.
   */
  listTasks(query: ListTasksQuery): Promise<Task[]>;

  /**
   * Appends one event and updates the snapshot in the same transaction. With `options.run` (see
   * {@link RunFence}), rejects with `task_not_found` when the id's task is another run, and with
   * `options.owner`, with `lease_held` when another owner holds the running task's lease, both checked on
   * the row the append locks (no extra read).
   */
  append(taskId: string, input: AppendInput, options?: RunFence): Promise<AppendResult>;

  /**
   * Events with `seq > afterSeq`, in seq order, at most `limit` (default 1000, larger values clamped to
   * 10,000); `[]` when `afterSeq >= seq`.
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
   * (`max(previous, seq)`). Rejects with `invalid_input` when `seq` exceeds the task's seq. Works on
   * ended tasks too: the terminal event is acknowledged like any other. With `options.run` (see
   * {@link RunFence}), rejects with `task_not_found` (before any seq check) and records nothing when the
   * id's task is another run: a watcher's ack of a purged run would otherwise mark the events of the task
   * that took its id processed, though none of that task's watchers processed them. Checked on the row the
   * ack updates (no extra read); `options.owner` is ignored.
   */
  ack(taskId: string, seq: number, options?: RunFence): Promise<number>;

  /**
   * Takes or renews the lease on a running task for `ttlMs` from now. Another owner may take it only once
   * it expired. Rejects with `lease_held` or `task_finished`, and with `task_not_found` when the task is
   * not of `options.run` ({@link RunFence}): one process's lease owner id is the same for every run, so
   * without the fence a renewal meant for a purged run would keep the new run's lease alive.
   */
  renewLease(taskId: string, owner: string, ttlMs: number, options?: RunFence): Promise<Task>;

  /**
   * Drops `owner`'s lease (no-op if another owner holds it or the task ended). Rejects with
   * `task_not_found` for an unknown task, and for a task not of `options.run` ({@link RunFence}).
   */
  releaseLease(taskId: string, owner: string, options?: RunFence): Promise<void>;

  /**
   * Ends every running task whose lease expired (`leaseExpiresAt <= now`) with one `interrupted` event
   * whose reason is `leaseExpiredReason(task)`, each exactly once across concurrent reapers, oldest expiry
   * first, at most `limit` per call. Returns the appended events; tasks without a lease are never reaped.
   */
  reapExpiredLeases(options?: ReapOptions): Promise<AppendResult[]>;

  /**
   * Deletes terminal tasks (and their events) whose `finishedAt <= now - olderThanMs`, oldest first, at
   * most `limit` per call; running tasks are never deleted, nor tasks whose `createdAt` is not before
   * `now`'s millisecond (an id taken again after the purge must be a later run, see {@link RunFence}).
   * Returns how many tasks went.
   */
  purgeFinished(options: PurgeOptions): Promise<number>;

  /**
   * The store's epoch: an id (see `ID_PATTERN`) created with the store's schema (or, for a store in
   * memory, with the store), replaced by {@link ProgressStore.renewEpoch}. Seqs are comparable only
   * within one epoch: watchers holding a cursor of another epoch start over. Optional so that stores
   * written before protocol version 2 keep working; without it a server reports no epoch.
   */
  getEpoch?(): Promise<string>;

  /**
   * Replaces the epoch with a new one and returns it: call it after restoring the store from a backup
   * (or any reset that rewrites seqs), so that every watcher starts over instead of trusting its cursor.
   */
  renewEpoch?(): Promise<string>;

  /**
   * Releases what the store opened (never the caller's clients). Later calls of the other methods reject
   * with `closed`; calling `close` again resolves.
   */
  close(): Promise<void>;
}

// Kept in their own module so that input validation can read them without importing this one.
export { STORE_DEFAULTS } from './store-defaults.js';
