import type { ErrorCode } from '../codes.js';
import type { Task, TaskEvent } from '../model.js';
import { isTerminalEvent } from '../model.js';
import type { TaskChange } from '../store/change-feed.js';
import type { CreateTaskInput } from '../store/inputs.js';
import type { ProgressStore } from '../store/progress-store.js';
import type { ManualClock } from './manual-clock.js';

/**
 * Store contract: the harness types and the assertion helpers the parts share.
 *
 * @module
 */

/**
 * Internal helpers of the store contract suite. Failure messages name the call that misbehaved and what
 * came back, so a red adapter run says what broke without a debugger.
 */

/**
 * One store under test, fresh and empty. The contract suite builds one per test (and one per run of the
 * model-based test) and closes it afterwards.
 */
export interface ProgressStoreHarness {
  /** The store under test. It must be built with `clock.now` as its clock and hold no tasks. */
  store: ProgressStore;
  /** Drives the store's time; tests advance it to expire leases and age finished tasks. */
  clock: ManualClock;
  /**
   * Releases everything the harness opened (the store, a database, a temp file). Called once per
   * harness, possibly after the test already closed the store, so it must tolerate that.
   */
  close(): Promise<void>;
}

/** Builds a fresh {@link ProgressStoreHarness}. */
export type ProgressStoreHarnessFactory = () => Promise<ProgressStoreHarness>;

/** What every section of the suite gets: the running test's store and clock, and the suite options. */
export interface ContractContext {
  readonly store: ProgressStore;
  readonly clock: ManualClock;
  readonly options: { readonly numRuns: number; readonly concurrency: number };
}

/** The principal most tests use. */
export const OWNER = 'alice';
/** The kind most tests use. */
export const KIND = 'batch_taint';

/** A valid task input; `overrides` win. */
export function taskInput(overrides: Partial<CreateTaskInput> = {}): CreateTaskInput {
  return { owner: OWNER, kind: KIND, ...overrides };
}

/** Passes a deliberately ill-typed value where the signature wants something else. */
export function bad<T>(value: unknown): T {
  return value as T;
}

/** A short, readable rendering of any value for messages. */
export function show(value: unknown): string {
  if (value instanceof Error) {
    const code = (value as { code?: unknown }).code;
    return `${value.name}${code === undefined ? '' : `(${String(code)})`}: ${value.message}`;
  }
  if (typeof value === 'string') return JSON.stringify(value.length > 60 ? `${value.slice(0, 60)}…` : value);
  if (typeof value === 'number' || value === undefined || typeof value === 'bigint') return String(value);
  try {
    const json = JSON.stringify(value);
    return json.length > 200 ? `${json.slice(0, 200)}…` : json;
  } catch {
    return String(value);
  }
}

/**
 * True for a `ProgressError` with `code`. Checked by shape, not `instanceof`: an adapter may load core
 * through another bundle (ESM vs CJS) whose `ProgressError` is a different class object.
 */
export function hasErrorCode(error: unknown, code: ErrorCode): boolean {
  return (
    error instanceof Error && error.name === 'ProgressError' && (error as { code?: unknown }).code === code
  );
}

/**
 * Calls `action` and asserts that it returns a promise that rejects with a `ProgressError` of `code`.
 * A synchronous throw fails too: store methods must always return a promise.
 */
export async function expectRejection(
  what: string,
  code: ErrorCode,
  action: () => Promise<unknown>,
): Promise<void> {
  let promise: Promise<unknown>;
  try {
    promise = action();
  } catch (error) {
    throw new Error(
      `${what}: threw synchronously (${show(error)}); store methods must return a rejected promise`,
    );
  }
  let value: unknown;
  try {
    value = await promise;
  } catch (error) {
    if (hasErrorCode(error, code)) return;
    throw new Error(`${what}: expected a rejection with ProgressError "${code}", got ${show(error)}`, {
      cause: error,
    });
  }
  throw new Error(
    `${what}: expected a rejection with ProgressError "${code}", but it resolved with ${show(value)}`,
  );
}

/** Asserts that a settled result is a rejection with `code`. */
export function expectRejected(what: string, code: ErrorCode, result: PromiseSettledResult<unknown>): void {
  if (result.status === 'fulfilled') {
    throw new Error(
      `${what}: expected a rejection with "${code}", but it resolved with ${show(result.value)}`,
    );
  }
  if (!hasErrorCode(result.reason, code)) {
    throw new Error(`${what}: expected a rejection with "${code}", got ${show(result.reason)}`, {
      cause: result.reason,
    });
  }
}

/** Unwraps a fulfilled result or fails with the reason. */
export function fulfilled<T>(what: string, result: PromiseSettledResult<T>): T {
  if (result.status === 'rejected') {
    throw new Error(`${what}: expected success, got ${show(result.reason)}`, { cause: result.reason });
  }
  return result.value;
}

/** Upper bound of every wait in the suite. Waits end as soon as their condition holds. */
export const WAIT_LIMIT_MS = 5000;

/**
 * Waits until `condition()` holds, checking every few milliseconds, for at most {@link WAIT_LIMIT_MS}.
 * For effects a store may deliver asynchronously (a change feed fed by Postgres `NOTIFY`); for the
 * memory store the condition already holds and no time passes.
 */
export async function eventually(what: string, condition: () => boolean): Promise<void> {
  const deadline = Date.now() + WAIT_LIMIT_MS;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`${what}: still not true after ${WAIT_LIMIT_MS} ms`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** Records the changes a store publishes. */
export class ChangeRecorder {
  readonly changes: TaskChange[] = [];
  readonly stop: () => void;

  constructor(store: ProgressStore) {
    this.stop = store.changes.subscribe((change) => {
      this.changes.push({ taskId: change.taskId, seq: change.seq, terminal: change.terminal });
    });
  }

  /** The changes of one task, in arrival order. */
  of(taskId: string): TaskChange[] {
    return this.changes.filter((change) => change.taskId === taskId);
  }

  /** True once a change for `taskId` at `seq` arrived. */
  has(taskId: string, seq: number): boolean {
    return this.changes.some((change) => change.taskId === taskId && change.seq === seq);
  }

  /** Waits (boundedly) for the change of `taskId` at `seq`. */
  async waitFor(taskId: string, seq: number): Promise<void> {
    await eventually(`a change for task ${taskId} at seq ${seq}`, () => this.has(taskId, seq));
  }
}

/** The change each event should produce. */
export function changeOf(event: TaskEvent): TaskChange {
  return { taskId: event.taskId, seq: event.seq, terminal: isTerminalEvent(event) };
}

/** Creates `count` tasks for `owner`, `concurrency` at a time; returns them in creation order. */
export async function createMany(
  store: ProgressStore,
  count: number,
  options: { owner: string; prefix: string; concurrency: number },
): Promise<Task[]> {
  const created: Task[] = [];
  for (let start = 0; start < count; start += options.concurrency) {
    const batch: Promise<Task>[] = [];
    for (let i = start; i < Math.min(count, start + options.concurrency); i++) {
      batch.push(
        store.createTask({
          id: `${options.prefix}-${String(i).padStart(5, '0')}`,
          owner: options.owner,
          kind: KIND,
        }),
      );
    }
    created.push(...(await Promise.all(batch)));
  }
  return created;
}

/** Binary (code unit) comparison, the id order the contract requires. */
export { compareIds } from '../store/store-errors.js';

/** Seqs of a list of events. */
export function seqsOf(events: readonly { seq: number }[]): number[] {
  return events.map((event) => event.seq);
}

/** `[from, from + 1, …, to]` (empty when `to < from`). */
export function range(from: number, to: number): number[] {
  const values: number[] = [];
  for (let value = from; value <= to; value++) values.push(value);
  return values;
}

/** A task as returned by the store, fetched by id; fails if it is gone. */
export async function mustGet(store: ProgressStore, taskId: string): Promise<Task> {
  const task = await store.getTask(taskId);
  if (task === undefined)
    throw new Error(`getTask(${taskId}) returned undefined for a task that should exist`);
  return task;
}
