import type { TaskView, WatchView } from '@finishline/core';
import { ErrorCode, ProgressError } from '@finishline/core';
import {
  type CursorPersistence,
  type CursorStorage,
  readStoredTask,
  type StoredTask,
  saveView,
} from './cursor-storage.js';

/**
 * `@finishline/client/persist`: the cursor storages, for the client's `persistence` option — a separate
 * entry, so pages that do not persist cursors do not load them. Whatever a storage returns is read back
 * and validated here (cursor-storage.ts) before the client uses it; the storages only keep it. Your own
 * {@link CursorStorage} gets the same through {@link persistCursors}.
 *
 * @example
 * ```ts
 * import { ProgressClient } from '@finishline/client';
 * import { sessionCursorStorage } from '@finishline/client/persist';
 *
 * const client = new ProgressClient({ url: '/progress', persistence: sessionCursorStorage() });
 * ```
 *
 * @module
 */

export type { CursorPersistence, CursorStorage } from './cursor-storage.js';

/**
 * Binds your own {@link CursorStorage} for the client's `persistence` option: what it loads is validated
 * as the built-in storages' is (a tampered or outdated entry is ignored, never trusted).
 *
 * @example
 * ```ts
 * import { ProgressClient } from '@finishline/client';
 * import { type CursorStorage, persistCursors } from '@finishline/client/persist';
 *
 * declare const myStorage: CursorStorage; // load, save, remove: over IndexedDB, say
 * const client = new ProgressClient({ url: '/progress', persistence: persistCursors(myStorage) });
 * ```
 */
export function persistCursors(storage: CursorStorage): CursorPersistence {
  return {
    restore: (taskId) => readStoredTask(storage, taskId),
    saveView: (view, epoch) => saveView(storage, view, epoch),
    remove: (taskId) => storage.remove(taskId),
  };
}

/**
 * What makes each storage of this entry a {@link CursorPersistence} as it is: reading back and validating,
 * and saving a watch's view, over the storage's own `load`, `save` and `remove`.
 */
abstract class ValidatedCursorStorage implements CursorStorage, CursorPersistence {
  abstract load(taskId: string): unknown;
  abstract save(task: TaskView, epoch?: string): void;
  abstract remove(taskId: string): void;

  /** @internal */
  restore(taskId: string): StoredTask | undefined {
    return readStoredTask(this, taskId);
  }

  /** @internal */
  saveView(view: WatchView, epoch: string | undefined): boolean {
    return saveView(this, view, epoch);
  }
}

/** A {@link CursorStorage} in memory: survives a client, not a page reload. Useful in tests and Node. */
export class MemoryCursorStorage extends ValidatedCursorStorage {
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
 * A {@link CursorStorage} over Web Storage (`sessionStorage` from {@link sessionCursorStorage}): one JSON entry per
 * task under `keyPrefix + taskId`. sessionStorage is per tab, which is what a resume needs: two tabs
 * watching one task keep separate cursors.
 */
export class WebStorageCursorStorage extends ValidatedCursorStorage {
  readonly #storage: WebStorageLike;
  readonly #prefix: string;

  /**
   * @param storage - `sessionStorage`, `localStorage` or anything with the same three methods.
   * @param keyPrefix - prepended to the task id to form the key.
   */
  constructor(storage: WebStorageLike, keyPrefix = 'finishline:') {
    super();
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
 * The `sessionStorage` cursor storage of the current page: what `persistence` wants in a browser, so a
 * reload resumes each watch from its cursor.
 *
 * @param keyPrefix - prepended to the task id to form the key. Default `'finishline:'`.
 * @throws ProgressError `invalid_input` where there is no `sessionStorage` (Node, a worker).
 *
 * @example
 * ```ts
 * import { sessionCursorStorage } from '@finishline/client/persist';
 *
 * const client = new ProgressClient({ url: '/progress', persistence: sessionCursorStorage() });
 * ```
 */
export function sessionCursorStorage(keyPrefix?: string): WebStorageCursorStorage {
  const storage = (globalThis as { sessionStorage?: WebStorageLike }).sessionStorage;
  if (storage === undefined) {
    throw new ProgressError(
      ErrorCode.InvalidInput,
      'sessionCursorStorage() needs globalThis.sessionStorage (absent in Node and workers); pass another CursorStorage',
    );
  }
  return new WebStorageCursorStorage(storage, keyPrefix);
}

function withEpoch(task: TaskView, epoch: string | undefined): TaskView | (TaskView & { epoch: string }) {
  return epoch === undefined ? task : { ...task, epoch };
}
