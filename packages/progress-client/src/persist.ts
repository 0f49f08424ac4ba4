import type { TaskView } from '@finishline/core';
import { ErrorCode, ProgressError } from '@finishline/core';
import {
  bindCursors,
  type CursorPersistence,
  type CursorStorage,
  type ServerCursors,
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
export { cursorKey } from './cursor-storage.js';

/**
 * Binds your own {@link CursorStorage} for the client's `persistence` option: what it loads is validated
 * as the built-in storages' is (a tampered, outdated or foreign entry is ignored, never trusted).
 *
 * @param scope - what tells this client's cursors from those of other clients sharing the storage.
 *   Default: each client's resolved `url` without its query string (where a `tokenQueryParam` token
 *   would be: no key holds it), so the clients of two servers on one page keep two cursors of tasks that
 *   share an id, and a reload of the page finds each client's own again. Give one when the URL changes
 *   between loads of the page for the same store (one host per replica), or when its query string picks
 *   the store; clients given one scope must be clients of one store.
 * @throws ProgressError `invalid_input` when `storage` lacks `load`, `save` or `remove`.
 *
 * @example
 * ```ts
 * import { ProgressClient } from '@finishline/client';
 * import { type CursorStorage, persistCursors, sessionCursorStorage } from '@finishline/client/persist';
 *
 * declare const myStorage: CursorStorage; // load, save, remove: synchronous, over localStorage, say
 * declare function pickReplica(): number;
 * const client = new ProgressClient({ url: '/progress', persistence: persistCursors(myStorage) });
 * // One scope for the replicas' own URLs, which differ from one load of the page to the next:
 * const replica = new ProgressClient({
 *   url: `wss://replica-${pickReplica()}.example.com/progress`,
 *   persistence: persistCursors(sessionCursorStorage(), 'orders'),
 * });
 * ```
 */
export function persistCursors(storage: CursorStorage, scope?: string): CursorPersistence {
  needs(storage, ['load', 'save', 'remove'], 'persistCursors: storage');
  return { forServer: (server) => bindCursors(storage, scope ?? urlScope(server)) };
}

/**
 * Refuses a storage without the methods it must have (`undefined` from a misspelt global, a Map): every
 * call of theirs is caught as a failing storage's is, so it would have persisted nothing, without a word.
 */
function needs(value: unknown, methods: string[], where: string): void {
  for (const name of methods)
    if (typeof (value as Record<string, unknown> | null)?.[name] !== 'function')
      throw new ProgressError(ErrorCode.InvalidInput, `${where} must have a ${name}() method`);
}

/**
 * The default scope of a client's cursors: its resolved URL without the query string (and fragment). A
 * server set up with `tokenQueryParam` takes the access token there (`wss://…/progress?access_token=…`):
 * kept in the scope, the token was written into the key of every cursor, where any script of the origin
 * reads it and where it stayed after it expired, and the next load of the page, with a renewed token,
 * found none of the cursors saved under the old one (each left behind until the tab closed).
 */
function urlScope(server: string): string {
  return server.replace(/[?#].*/s, '');
}

/**
 * What makes each storage of this entry a {@link CursorPersistence} as it is: each client reads and saves
 * its cursors under its own URL, validated, over the storage's own `load`, `save` and `remove`.
 */
abstract class ValidatedCursorStorage implements CursorStorage, CursorPersistence {
  abstract load(key: string): unknown;
  abstract save(entry: TaskView, epoch?: string): void;
  abstract remove(key: string): void;

  /** @internal */
  forServer(server: string): ServerCursors {
    return bindCursors(this, urlScope(server));
  }
}

/** A {@link CursorStorage} in memory: survives a client, not a page reload. Useful in tests and Node. */
export class MemoryCursorStorage extends ValidatedCursorStorage {
  readonly #entries = new Map<string, string>();

  /** Number of saved cursors. */
  get size(): number {
    return this.#entries.size;
  }

  load(key: string): unknown {
    const text = this.#entries.get(key);
    return text === undefined ? undefined : JSON.parse(text);
  }

  save(entry: TaskView, epoch?: string): void {
    // A copy, so later changes to the caller's object cannot alter what was saved.
    this.#entries.set(entry.id, JSON.stringify(withEpoch(entry, epoch)));
  }

  remove(key: string): void {
    this.#entries.delete(key);
  }
}

/** The part of the Web Storage API that {@link WebStorageCursorStorage} uses. */
export interface WebStorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
  /** Number of keys; with {@link key}, what lets {@link WebStorageCursorStorage} sweep its entries. */
  readonly length?: number;
  /** The key at `index`, or `null`. */
  key?(index: number): string | null;
}

/**
 * A {@link CursorStorage} over Web Storage (`sessionStorage` from {@link sessionCursorStorage}): one JSON entry per
 * task and client under `keyPrefix + key` (`finishline:taint-42 wss://example.com/progress`, see
 * {@link cursorKey}). sessionStorage is per tab, which is what a resume needs: two tabs watching one task
 * keep separate cursors.
 *
 * The entries are swept (where the storage has `length` and `key()`, as Web Storage does): at its first
 * save, the storage keeps the `maxEntries` most recently updated of its entries (by the task's
 * `updatedAt`) and removes the others; a write the storage refuses (its quota full) removes the older
 * half of them and is tried once more. An entry removed costs only its resume: that watch starts from a
 * snapshot of the task. Entries a watch left behind (the page reloaded and never watched that id again)
 * added up for ever over `localStorage`, until every write threw and new cursors were lost.
 */
export class WebStorageCursorStorage extends ValidatedCursorStorage {
  readonly #storage: WebStorageLike;
  readonly #prefix: string;
  readonly #max: number;
  #swept = false;

  /**
   * @param storage - `sessionStorage`, `localStorage` or anything with the same three methods.
   * @param keyPrefix - prepended to each entry's key (see {@link cursorKey}).
   * @param maxEntries - how many entries the sweep at the first save keeps: an integer >= 0, or
   *   `Infinity` (never swept). Default 1,000.
   * @throws ProgressError `invalid_input` when `storage` lacks `getItem`, `setItem` or `removeItem`, or
   *   `maxEntries` is not an integer >= 0 (or `Infinity`).
   */
  constructor(storage: WebStorageLike, keyPrefix = 'finishline:', maxEntries = 1000) {
    super();
    needs(storage, ['getItem', 'setItem', 'removeItem'], 'WebStorageCursorStorage: storage');
    // Checked here, not at the first save: a negative or fractional count made that save's sweep read
    // past its entries and throw (caught as a failing storage's error: the save lost without a word), and
    // NaN never swept.
    if (!(maxEntries >= 0 && (Number.isSafeInteger(maxEntries) || maxEntries === Infinity)))
      throw new ProgressError(
        ErrorCode.InvalidInput,
        `WebStorageCursorStorage: maxEntries must be an integer >= 0 (or Infinity), got ${String(maxEntries)}`,
      );
    this.#storage = storage;
    this.#prefix = keyPrefix;
    this.#max = maxEntries;
  }

  load(key: string): unknown {
    try {
      const text = this.#storage.getItem(this.#prefix + key);
      return text === null ? undefined : JSON.parse(text);
    } catch {
      // Storage disabled (Safari private mode, a sandboxed iframe) or a corrupt entry: start over.
      return undefined;
    }
  }

  save(entry: TaskView, epoch?: string): void {
    const storage = this.#storage;
    const key = this.#prefix + entry.id;
    const text = JSON.stringify(withEpoch(entry, epoch));
    try {
      if (!this.#swept) {
        this.#swept = true;
        this.#sweep(this.#max);
      }
      try {
        storage.setItem(key, text);
      } catch {
        this.#sweep();
        storage.setItem(key, text);
      }
    } catch {
      // Quota exceeded even so, or storage disabled: the only loss is the resume after a reload.
    }
  }

  /**
   * Removes all but the `keep` most recently updated entries of this storage (by default half of them):
   * those under its prefix whose `id` is their key, so no other entry of the storage is touched.
   */
  #sweep(keep?: number): void {
    const storage = this.#storage;
    const entries: [number, string][] = [];
    for (let index = storage.length ?? 0; index-- > 0; ) {
      const key = storage.key?.(index);
      if (!key?.startsWith(this.#prefix)) continue;
      try {
        const entry = JSON.parse(storage.getItem(key) as string);
        if (entry.id === key.slice(this.#prefix.length)) entries.push([+entry.updatedAt || 0, key]);
      } catch {
        // Not one of ours.
      }
    }
    entries.sort((a, b) => a[0] - b[0]);
    for (let count = entries.length - (keep ?? entries.length >> 1); count-- > 0; )
      storage.removeItem((entries[count] as [number, string])[1]);
  }

  remove(key: string): void {
    try {
      this.#storage.removeItem(this.#prefix + key);
    } catch {
      // As in save().
    }
  }
}

/**
 * The `sessionStorage` cursor storage of the current page: what `persistence` wants in a browser, so a
 * reload resumes each watch from its cursor.
 *
 * @param keyPrefix - prepended to each entry's key (see {@link cursorKey}). Default `'finishline:'`.
 * @throws ProgressError `invalid_input` where there is no `sessionStorage` (Node, a worker). Where the
 *   page may not read it (a sandboxed frame, storage blocked), the storage keeps nothing instead.
 *
 * @example
 * ```ts
 * import { sessionCursorStorage } from '@finishline/client/persist';
 *
 * const client = new ProgressClient({ url: '/progress', persistence: sessionCursorStorage() });
 * ```
 */
export function sessionCursorStorage(keyPrefix?: string): WebStorageCursorStorage {
  const scope = globalThis as { sessionStorage?: WebStorageLike };
  let storage: WebStorageLike | undefined;
  try {
    storage = scope.sessionStorage;
  } catch {
    // The getter itself throws a SecurityError where the page may not use storage (a sandboxed frame, an
    // embedded page whose storage the browser blocks). Persistence is best effort: no resume after a
    // reload, as when the storage refuses a write. Asked again at each use (the storage's own `catch`
    // takes the refusal), in case the page is granted access later; a throw here failed the page's client.
    const session = (): WebStorageLike => scope.sessionStorage as WebStorageLike;
    storage = {
      getItem: (key) => session().getItem(key),
      setItem: (key, value) => session().setItem(key, value),
      removeItem: (key) => session().removeItem(key),
    };
  }
  if (storage === undefined) {
    throw new ProgressError(
      ErrorCode.InvalidInput,
      'sessionCursorStorage() needs globalThis.sessionStorage (absent in Node and workers); pass another CursorStorage',
    );
  }
  return new WebStorageCursorStorage(storage, keyPrefix);
}

function withEpoch(entry: TaskView, epoch: string | undefined): TaskView | (TaskView & { epoch: string }) {
  return epoch === undefined ? entry : { ...entry, epoch };
}
