import type { TaskView } from '@finishline/core';
import { ErrorCode, ProgressError } from '@finishline/core';
import { decodeServerFrame } from '@finishline/core/internal';

/**
 * Cursor persistence: what lets a page reload resume a watch from its last seq instead of starting over.
 * The client saves the task's view (a `TaskView`, whose `seq` is the cursor) when it acknowledges, and
 * removes it once the task's terminal event is delivered and acknowledged.
 *
 * @module
 */

/**
 * Where the client keeps cursors. Implementations should not throw: persistence is best effort, and a
 * full or disabled storage only costs the resume after a reload. Whatever `load` returns is validated by
 * the client, so a tampered or outdated entry is ignored, never trusted.
 *
 * @example
 * ```ts
 * const client = new ProgressClient({ url, persistence: new MemoryCursorStorage() });
 * ```
 */
export interface CursorStorage {
  /** The saved view of `taskId`, or `undefined`. */
  load(taskId: string): unknown;
  /**
   * Saves (replaces) the view of `task.id`, with the store epoch its seq belongs to when known. `load`
   * must return what was saved: the view's fields, plus `epoch` when one was given. A storage that drops
   * the epoch still works: its cursors are trusted in any epoch, and the server's reset of a cursor
   * ahead of the task still applies.
   */
  save(task: TaskView, epoch?: string): void;
  /** Forgets `taskId`. */
  remove(taskId: string): void;
}

/** A {@link CursorStorage} in memory: survives a client, not a page reload. Useful in tests and Node. */
export class MemoryCursorStorage implements CursorStorage {
  readonly #entries = new Map<string, string>();

  /** Number of saved cursors. */
  get size(): number {
    return this.#entries.size;
  }

  load(taskId: string): unknown {
    const text = this.#entries.get(taskId);
    return text === undefined ? undefined : JSON.parse(text);
  }

  save(task: TaskView, epoch?: string): void {
    // A copy, so later changes to the caller's object cannot alter what was saved.
    this.#entries.set(task.id, JSON.stringify(withEpoch(task, epoch)));
  }

  remove(taskId: string): void {
    this.#entries.delete(taskId);
  }
}

/** The part of the Web Storage API that {@link WebStorageCursorStorage} uses. */
export interface WebStorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/**
 * A {@link CursorStorage} over Web Storage (`sessionStorage` by default in the client): one JSON entry per
 * task under `keyPrefix + taskId`. sessionStorage is per tab, which is what a resume needs: two tabs
 * watching one task keep separate cursors.
 */
export class WebStorageCursorStorage implements CursorStorage {
  readonly #storage: WebStorageLike;
  readonly #prefix: string;

  /**
   * @param storage - `sessionStorage`, `localStorage` or anything with the same three methods.
   * @param keyPrefix - prepended to the task id to form the key.
   */
  constructor(storage: WebStorageLike, keyPrefix = 'finishline:') {
    this.#storage = storage;
    this.#prefix = keyPrefix;
  }

  load(taskId: string): unknown {
    try {
      const text = this.#storage.getItem(this.#prefix + taskId);
      return text === null ? undefined : JSON.parse(text);
    } catch {
      // Storage disabled (Safari private mode, a sandboxed iframe) or a corrupt entry: start over.
      return undefined;
    }
  }

  save(task: TaskView, epoch?: string): void {
    try {
      this.#storage.setItem(this.#prefix + task.id, JSON.stringify(withEpoch(task, epoch)));
    } catch {
      // Quota exceeded or storage disabled: the only loss is the resume after a reload.
    }
  }

  remove(taskId: string): void {
    try {
      this.#storage.removeItem(this.#prefix + taskId);
    } catch {
      // As in save().
    }
  }
}

/**
 * The `sessionStorage` cursor storage of the current page.
 *
 * @throws ProgressError `invalid_input` where there is no `sessionStorage` (Node, a worker).
 */
export function sessionCursorStorage(keyPrefix?: string): WebStorageCursorStorage {
  const storage = (globalThis as { sessionStorage?: WebStorageLike }).sessionStorage;
  if (storage === undefined) {
    throw new ProgressError(
      ErrorCode.InvalidInput,
      "ProgressClient: persistence 'session' needs globalThis.sessionStorage; pass a CursorStorage instead",
    );
  }
  return new WebStorageCursorStorage(storage, keyPrefix);
}

function withEpoch(task: TaskView, epoch: string | undefined): TaskView | (TaskView & { epoch: string }) {
  return epoch === undefined ? task : { ...task, epoch };
}

/** A view read back from a {@link CursorStorage}, with the epoch of its seq when one was saved. */
export interface StoredTask {
  task: TaskView;
  epoch: string | undefined;
}

/**
 * The saved view of `taskId` if it is a valid snapshot of that task, else `undefined`. Validated with
 * the protocol's own snapshot schema (epoch included), so a restored view is exactly as trustworthy as
 * a received one.
 *
 * @internal
 */
export function readStoredTask(storage: CursorStorage, taskId: string): StoredTask | undefined {
  let stored: unknown;
  try {
    stored = storage.load(taskId);
  } catch {
    return undefined;
  }
  if (typeof stored !== 'object' || stored === null) return undefined;
  let text: string;
  try {
    // Views saved before epochs have none: they decode as before.
    const { epoch, ...task } = stored as { epoch?: unknown };
    text = JSON.stringify({ type: 'snapshot', task, ...(epoch === undefined ? {} : { epoch }) });
  } catch {
    return undefined;
  }
  const decoded = decodeServerFrame(text);
  if (!decoded.ok || decoded.frame.type !== 'snapshot' || decoded.frame.task.id !== taskId) return undefined;
  return { task: decoded.frame.task, epoch: decoded.frame.epoch };
}
