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
}

/**
 * A {@link CursorStorage} over Web Storage (`sessionStorage` from {@link sessionCursorStorage}): one JSON entry per
 * task and client under `keyPrefix + key` (`finishline:taint-42 wss://example.com/progress`, see
 * {@link cursorKey}). sessionStorage is per tab, which is what a resume needs: two tabs watching one task
 * keep separate cursors.
 */
export class WebStorageCursorStorage extends ValidatedCursorStorage {
  readonly #storage: WebStorageLike;
  readonly #prefix: string;

  /**
   * @param storage - `sessionStorage`, `localStorage` or anything with the same three methods.
   * @param keyPrefix - prepended to each entry's key (see {@link cursorKey}).
   * @throws ProgressError `invalid_input` when `storage` lacks `getItem`, `setItem` or `removeItem`.
   */
  constructor(storage: WebStorageLike, keyPrefix = 'finishline:') {
    super();
    needs(storage, ['getItem', 'setItem', 'removeItem'], 'WebStorageCursorStorage: storage');
    this.#storage = storage;
    this.#prefix = keyPrefix;
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
    try {
      this.#storage.setItem(this.#prefix + entry.id, JSON.stringify(withEpoch(entry, epoch)));
    } catch {
      // Quota exceeded or storage disabled: the only loss is the resume after a reload.
    }
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
