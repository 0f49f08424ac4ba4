import type { Clock } from '../clock.js';
import { ErrorCode } from '../codes.js';
import type { Task, TaskEvent } from '../model.js';
import { isTerminalEvent } from '../model.js';
import { defaultsOf, func, resolveOptions } from '../options.js';
import { ProgressError } from '../progress-error.js';
import type { ChangeFeed } from './change-feed.js';
import { LocalChangeFeed } from './change-feed.js';
import type { AppendInput, CreateTaskInput } from './inputs.js';
import {
  assertCount,
  assertId,
  assertTaskId,
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
} from './inputs.js';
import type { ListTasksQuery, ProgressStore, PurgeOptions, ReapOptions, RunFence } from './progress-store.js';
import { storeClockOption } from './store-clock.js';
import { compareIds, storeClosed, taskAlreadyExists, taskNotFound } from './store-errors.js';
import type { AppendResult } from './task-transitions.js';
import {
  assertLeaseOwner,
  assertRun,
  isLeaseExpired,
  isPurgeable,
  leaseExpiredReason,
  newTask,
  planAppend,
  planLease,
} from './task-transitions.js';

/**
 * `MemoryProgressStore`: the in-process store for tests and single-process apps.
 *
 * @module
 */

/** Options for {@link MemoryProgressStore}. */
export interface MemoryProgressStoreOptions {
  /**
   * Source of every timestamp (creation, events, lease expiry, retention age). Tests pass
   * `ManualClock.now` to drive leases without sleeping. Read in whole milliseconds: a fraction is
   * dropped, and a value that is no time (`NaN`, negative), or a throw, rejects the call with `internal`.
   * @default systemClock (`Date.now`)
   */
  clock?: Clock | undefined;
  /**
   * Receives what a change listener throws (or its promise rejects with). Listeners must not throw;
   * this hook exists so a faulty one can be logged instead of breaking appends.
   * @default ignores the error
   */
  onListenerError?: ((error: unknown) => void) | undefined;
}

const MEMORY_STORE_OPTIONS = {
  // Read in whole milliseconds (see wholeMillisecondClock).
  clock: /* @__PURE__ */ storeClockOption(),
  onListenerError: /* @__PURE__ */ func<(error: unknown) => void>(() => {}),
};

/** The defaults of {@link MemoryProgressStoreOptions}. */
export const MEMORY_PROGRESS_STORE_DEFAULTS: {
  readonly [K in keyof MemoryProgressStoreOptions]-?: Exclude<MemoryProgressStoreOptions[K], undefined>;
} = /* @__PURE__ */ Object.freeze(/* @__PURE__ */ defaultsOf(MEMORY_STORE_OPTIONS));

interface Entry {
  task: Task;
  /** `events[i].seq === i + 1`. */
  events: TaskEvent[];
}

/**
 * Deep copy. Callers own what they get back and what they passed in, so the store keeps its own copies:
 * mutating a returned object (or an input after the call) never changes the store.
 */
function copy<T>(value: T): T {
  return structuredClone(value);
}

/**
 * The reference {@link ProgressStore}: everything in one process's memory, lost on exit. Use it in tests
 * and single-process deployments that do not need durability; it passes the same contract suite as the
 * SQLite and Postgres stores, and its behaviour is the one they copy.
 *
 * Every method runs to completion without yielding between reading and writing a task, so each call is
 * atomic; changes are published synchronously, after the state is updated (an append made by a listener
 * is published once every listener had the change it is handling, so each sees commit order).
 *
 * @example
 * ```ts
 * const store = new MemoryProgressStore();
 * const stop = store.changes.subscribe(({ taskId, seq }) => wake(taskId, seq));
 * const task = await store.createTask({ owner: 'alice', kind: 'batch_taint', total: 1 });
 * await store.append(task.id, { type: 'item', key: 'node-1', ok: true });
 * await store.append(task.id, { type: 'completed' });
 * stop();
 * ```
 */
export class MemoryProgressStore implements ProgressStore {
  readonly #clock: Clock;
  readonly #changes: LocalChangeFeed;
  readonly #tasks = new Map<string, Entry>();
  /** A new store is a new epoch: what a process restart loses, no cursor may skip over. */
  #epoch: string = globalThis.crypto.randomUUID();
  #closed = false;

  /** @throws ProgressError `invalid_input` for bad options. */
  constructor(options: MemoryProgressStoreOptions = {}) {
    const resolved = resolveOptions('MemoryProgressStore', MEMORY_STORE_OPTIONS, options);
    this.#clock = resolved.clock;
    this.#changes = new LocalChangeFeed(resolved.onListenerError);
  }

  get changes(): ChangeFeed {
    return this.#changes;
  }

  async createTask(input: CreateTaskInput): Promise<Task> {
    this.#assertOpen();
    const parsed = parseCreateTaskInput(input);
    const id = parsed.id ?? globalThis.crypto.randomUUID();
    if (this.#tasks.has(id)) {
      throw taskAlreadyExists(id);
    }
    const task = newTask({ ...parsed, id }, this.#clock());
    this.#tasks.set(id, { task: copy(task), events: [] });
    return task;
  }

  async getTask(taskId: string): Promise<Task | undefined> {
    this.#assertOpen();
    assertTaskId(taskId);
    const entry = this.#tasks.get(taskId);
    return entry === undefined ? undefined : copy(entry.task);
  }

  async listTasks(query: ListTasksQuery): Promise<Task[]> {
    this.#assertOpen();
    const { owner, statuses, limit } = parseListTasksQuery(query);
    const matches: Task[] = [];
    for (const { task } of this.#tasks.values()) {
      if (task.owner === owner && (statuses === undefined || statuses.includes(task.status)))
        matches.push(task);
    }
    matches.sort((a, b) => b.createdAt - a.createdAt || compareIds(b.id, a.id));
    return matches.slice(0, limit).map((value) => copy(value));
  }

  async append(taskId: string, input: AppendInput, options?: RunFence): Promise<AppendResult> {
    this.#assertOpen();
    assertTaskId(taskId);
    const parsed = parseAppendInput(input);
    const run = parseRunFence(options);
    const owner = parseFenceOwner(options);
    const entry = this.#entry(taskId);
    assertRun(entry.task, run);
    assertLeaseOwner(entry.task, owner);
    return this.#commit(entry, parsed);
  }

  async readEvents(taskId: string, afterSeq: number, limit?: number): Promise<TaskEvent[]> {
    this.#assertOpen();
    assertTaskId(taskId);
    assertCount(afterSeq, 'afterSeq');
    const resolvedLimit = parseReadLimit(limit);
    const { events } = this.#entry(taskId);
    return events.slice(afterSeq, afterSeq + resolvedLimit).map((value) => copy(value));
  }

  async latestSeqs(taskIds: readonly string[]): Promise<Map<string, number>> {
    this.#assertOpen();
    const seqs = new Map<string, number>();
    for (const taskId of parseTaskIds(taskIds)) {
      const entry = this.#tasks.get(taskId);
      if (entry !== undefined) seqs.set(taskId, entry.task.seq);
    }
    return seqs;
  }

  async ack(taskId: string, seq: number, options?: RunFence): Promise<number> {
    this.#assertOpen();
    assertTaskId(taskId);
    assertCount(seq, 'seq');
    const run = parseRunFence(options);
    const entry = this.#entry(taskId);
    assertRun(entry.task, run);
    if (seq > entry.task.seq) {
      throw new ProgressError(
        ErrorCode.InvalidInput,
        `Cannot ack seq ${seq} of task ${taskId}: its latest seq is ${entry.task.seq}`,
        { taskId },
      );
    }
    entry.task.ackedSeq = Math.max(entry.task.ackedSeq, seq);
    return entry.task.ackedSeq;
  }

  async renewLease(taskId: string, owner: string, ttlMs: number, options?: RunFence): Promise<Task> {
    this.#assertOpen();
    assertTaskId(taskId);
    const lease = parseLeaseInput({ owner, ttlMs });
    const run = parseRunFence(options);
    const entry = this.#entry(taskId);
    assertRun(entry.task, run);
    entry.task = planLease(entry.task, lease.owner, lease.ttlMs, this.#clock());
    return copy(entry.task);
  }

  async releaseLease(taskId: string, owner: string, options?: RunFence): Promise<void> {
    this.#assertOpen();
    assertTaskId(taskId);
    assertId(owner, 'lease owner');
    const run = parseRunFence(options);
    const { task } = this.#entry(taskId);
    assertRun(task, run);
    // Ended tasks already dropped their lease; another owner's lease is not ours to drop.
    if (task.status === 'running' && task.leaseOwner === owner) {
      task.leaseOwner = null;
      task.leaseExpiresAt = null;
    }
  }

  async reapExpiredLeases(options?: ReapOptions): Promise<AppendResult[]> {
    this.#assertOpen();
    const { limit } = parseReapOptions(options);
    const now = this.#clock();
    const expired = [...this.#tasks.values()]
      .filter((entry) => isLeaseExpired(entry.task, now))
      .sort(
        (a, b) =>
          (a.task.leaseExpiresAt ?? 0) - (b.task.leaseExpiresAt ?? 0) || compareIds(a.task.id, b.task.id),
      )
      .slice(0, limit);
    const results: AppendResult[] = [];
    for (const entry of expired) {
      // A change listener runs inside each commit and may have ended (or renewed) a task further down the
      // list: a task whose lease is no longer expired is left alone, as a store reaping in one transaction
      // would have found it, instead of rejecting the whole call with what was already reaped.
      if (!isLeaseExpired(entry.task, now) || this.#tasks.get(entry.task.id) !== entry) continue;
      // At `now`, the reading the leases were found expired by: read again per task, a clock that threw on
      // a later read rejected the call after the first tasks were reaped (the SQLite and Postgres stores
      // reap at one reading, in one transaction).
      results.push(this.#commit(entry, { type: 'interrupted', reason: leaseExpiredReason(entry.task) }, now));
    }
    return results;
  }

  async purgeFinished(options: PurgeOptions): Promise<number> {
    this.#assertOpen();
    const { olderThanMs, limit } = parsePurgeOptions(options);
    const now = this.#clock();
    const cutoff = now - olderThanMs;
    const old = [...this.#tasks.values()]
      .map((entry) => entry.task)
      .filter((task) => isPurgeable(task, cutoff, now))
      .sort((a, b) => (a.finishedAt ?? 0) - (b.finishedAt ?? 0) || compareIds(a.id, b.id))
      .slice(0, limit);
    for (const task of old) this.#tasks.delete(task.id);
    return old.length;
  }

  async getEpoch(): Promise<string> {
    this.#assertOpen();
    return this.#epoch;
  }

  async renewEpoch(): Promise<string> {
    this.#assertOpen();
    this.#epoch = globalThis.crypto.randomUUID();
    this.#changes.publishEpochRenewed();
    return this.#epoch;
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#tasks.clear();
  }

  /** Applies a validated input through the shared transition, then publishes the change. */
  #commit(entry: Entry, input: AppendInput, now = this.#clock()): AppendResult {
    const planned = planAppend(entry.task, input, now);
    // Copy before storing: `planned` may reference the caller's `result`/`detail` objects.
    entry.task = copy(planned.task);
    entry.events.push(copy(planned.event));
    // With its run (see `TaskChange.run`), as the SQLite and Postgres stores stamp their own appends: a
    // server tells a re-created id's new run from the one it follows by it.
    this.#changes.publish(
      Object.freeze({
        taskId: planned.event.taskId,
        seq: planned.event.seq,
        terminal: isTerminalEvent(planned.event),
        run: planned.task.createdAt,
      }),
    );
    return { event: copy(planned.event), task: copy(planned.task) };
  }

  #entry(taskId: string): Entry {
    const entry = this.#tasks.get(taskId);
    if (entry === undefined) {
      throw taskNotFound(taskId);
    }
    return entry;
  }

  #assertOpen(): void {
    if (this.#closed) throw storeClosed();
  }
}
