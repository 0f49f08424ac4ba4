import type { TaskView, WatchView } from '@finishline/core';
import { decodeServerText } from './frame-check.js';

/**
 * Cursor persistence: what lets a page reload resume a watch from its last seq instead of starting over.
 * The client saves the task's view (a `TaskView`, whose `seq` is the cursor) when it acknowledges, under a
 * key of the task id and the client's scope (its server's URL without the query string unless given), and
 * removes it once the watch has the task's end (acknowledged or not) or its last handle closed. The
 * storages, and the reading
 * back and saving below, are part of `@finishline/client/persist` (persist.ts), so pages that do not
 * persist do not load them: the core entry only knows the {@link CursorPersistence} seam.
 *
 * @module
 */

/**
 * Where the client keeps cursors: entries by key. A key is the task's id and the client's scope (by default
 * the server's URL without its query string, see {@link cursorKey}), so the clients of two servers on one page never read each
 * other's cursor of two tasks that share an id. Implementations should not throw: persistence is best
 * effort, and a full or disabled storage only costs the resume after a reload (a `load`, `save` or
 * `remove` that throws anyway is caught, and costs no more than that). Whatever `load` returns
 * is validated before use, so a tampered, outdated or foreign entry is ignored, never trusted. The
 * storages of `@finishline/client/persist` can be passed as `persistence` as they are; bind your own
 * implementation with `persistCursors(storage)` from that entry.
 *
 * @example
 * ```ts
 * import { sessionCursorStorage } from '@finishline/client/persist';
 *
 * const client = new ProgressClient({ url, persistence: sessionCursorStorage() });
 * ```
 */
export interface CursorStorage {
  /**
   * The entry saved under `key`, or `undefined`. Synchronous: the client reads it when a watch starts. A
   * promise (an `async` load over IndexedDB) is an invalid entry, ignored like any other (its rejection
   * too), so no watch resumes; read an asynchronous store into memory before creating the client, and load from there.
   */
  load(key: string): unknown;
  /**
   * Saves (replaces) an entry under its key, which is `entry.id` — the task's id with the client's scope
   * (see {@link cursorKey}), not the bare task id — with the store epoch its seq belongs to when known.
   * `load` must return what was saved: the entry's fields, plus `epoch` when one was given. A storage
   * that drops the epoch still works: its cursors are trusted in any epoch, and the server's reset of a
   * cursor ahead of the task still applies. A promise it returns (an `async` write) is not waited for,
   * and its rejection costs only the resume, as a throw does; likewise for `remove`.
   */
  save(entry: TaskView, epoch?: string): void;
  /** Forgets the entry under `key`. */
  remove(key: string): void;
}

/**
 * What the client's `persistence` option takes: a {@link CursorStorage} bound by
 * `@finishline/client/persist` (its storages, such as `sessionCursorStorage()`, or
 * `persistCursors(storage)` for your own), which validates what it reads back.
 */
export interface CursorPersistence {
  /**
   * @internal The cursors of one client, under its scope: the one given to `persistCursors`, else
   * `server`, the client's resolved `url`.
   */
  forServer(server: string): ServerCursors;
}

/** The cursors of one client, by task id. @internal */
export interface ServerCursors {
  /** The saved view of `taskId` if it is a valid snapshot of that task still running, saved under this scope. */
  restore(taskId: string): StoredTask | undefined;
  /** Saves a watch's view with its epoch; false when there is nothing to save yet. */
  saveView(view: WatchView, epoch: string | undefined): boolean;
  /** Forgets `taskId`. */
  remove(taskId: string): void;
}

/** A view read back from a {@link CursorStorage}, with the epoch of its seq when one was saved. */
export interface StoredTask {
  task: TaskView;
  epoch: string | undefined;
}

/**
 * The key a task's cursor is kept under: the task id, a space, the client's scope. Task ids contain no
 * space (`ID_PATTERN`), so the key names one pair; and keys of earlier versions (the bare task id) are
 * never read back as one, since those entries do not say which server their seq came from.
 *
 * @example
 * ```ts
 * cursorKey('taint-42', 'wss://example.com/progress'); // 'taint-42 wss://example.com/progress'
 * ```
 */
export function cursorKey(taskId: string, scope: string): string {
  return `${taskId} ${scope}`;
}

/**
 * The cursors of `storage` under `scope`, validated as they are read back.
 *
 * @internal
 */
export function bindCursors(storage: CursorStorage, scope: string): ServerCursors {
  return {
    restore: (taskId) => readStoredTask(storage, taskId, cursorKey(taskId, scope)),
    // A storage of the page's own that throws anyway (a full quota) costs only the resume, as a refused
    // load does: thrown here, it came out of the client's ack step, and the ack, the unsubscribe after a
    // terminal one, and a watch's close() were never done (the socket's message handler threw instead).
    saveView: (view, epoch) => {
      try {
        return saveView(storage, cursorKey(view.taskId, scope), view, epoch);
      } catch {
        return false;
      }
    },
    remove: (taskId) => {
      try {
        quiet(storage.remove(cursorKey(taskId, scope)));
      } catch {
        // As in saveView: the entry stays, and a later watch of the id resumes from it (see acks.ts).
      }
    },
  };
}

/**
 * The entry under `key` if it is a valid snapshot of `taskId` still running, saved under that key, else
 * `undefined`.
 * Validated with the protocol's own snapshot schema (epoch included), so a restored view is exactly as
 * trustworthy as a received one.
 *
 * @internal
 */
export function readStoredTask(storage: CursorStorage, taskId: string, key: string): StoredTask | undefined {
  let stored: unknown;
  try {
    stored = quiet(storage.load(key));
  } catch {
    return undefined;
  }
  if (typeof stored !== 'object' || stored === null) return undefined;
  let text: string;
  try {
    // Views saved before epochs have none: they decode as before. The id is the key: a storage that
    // ignores keys (one entry per task id) returns another scope's entry, which this check refuses.
    const { epoch, id, ...task } = stored as { epoch?: unknown; id?: unknown };
    if (id !== key) return undefined;
    text = JSON.stringify({
      type: 'snapshot',
      task: { ...task, id: taskId },
      ...(epoch === undefined ? {} : { epoch }),
    });
  } catch {
    return undefined;
  }
  const decoded = decodeServerText(text);
  // Nor an entry that holds an end: it names no run of the id (see acks.ts, which saves none), and
  // restored, the watch showed that end at once, asking the server nothing, and stayed finished through the
  // reset snapshot of a new run (the id purged and created again, the store restored). Clients of 3 to 5
  // December 2026 saved them, as may a storage of the page's own.
  if (!decoded.ok || decoded.frame.type !== 'snapshot' || decoded.frame.task.status !== 'running')
    return undefined;
  return { task: decoded.frame.task, epoch: decoded.frame.epoch };
}

/**
 * Saves a watch's view under `key` as the entry a storage keeps (a `TaskView` whose `id` is the key);
 * false (nothing saved) before the task's kind is known.
 *
 * @internal
 */
export function saveView(
  storage: CursorStorage,
  key: string,
  view: WatchView,
  epoch: string | undefined,
): boolean {
  const { progress, kind } = view;
  if (progress === null || kind === null) return false;
  quiet(
    storage.save(
      {
        id: key,
        kind,
        status: view.status,
        ...progress,
        result: view.result,
        error: view.error,
        seq: view.seq,
        // Not tracked by the cursor; nothing in the client reads it back.
        createdAt: view.updatedAt ?? 0,
        updatedAt: view.updatedAt ?? 0,
        finishedAt: view.finishedAt,
      },
      epoch,
    ),
  );
  return true;
}

/**
 * A storage's answer, with the rejection of a promise from an `async` one (IndexedDB) handled: left
 * unhandled, a failed write (a full quota) or read ended a Node process (an unhandled rejection).
 */
function quiet(value: unknown): unknown {
  if (typeof (value as PromiseLike<unknown> | null)?.then === 'function')
    (value as PromiseLike<unknown>).then(undefined, () => {});
  return value;
}
