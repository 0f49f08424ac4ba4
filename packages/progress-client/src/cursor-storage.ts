import type { TaskView, WatchView } from '@finishline/core';
import { decodeServerText } from './frame-check.js';

/**
 * Cursor persistence: what lets a page reload resume a watch from its last seq instead of starting over.
 * The client saves the task's view (a `TaskView`, whose `seq` is the cursor) when it acknowledges, and
 * removes it once the task's terminal event is delivered and acknowledged. The storages, and the reading
 * back and saving below, are part of `@finishline/client/persist` (persist.ts), so pages that do not
 * persist do not load them: the core entry only knows the {@link CursorPersistence} seam.
 *
 * @module
 */

/**
 * Where the client keeps cursors. Implementations should not throw: persistence is best effort, and a
 * full or disabled storage only costs the resume after a reload. Whatever `load` returns is validated
 * before use, so a tampered or outdated entry is ignored, never trusted. The storages of
 * `@finishline/client/persist` can be passed as `persistence` as they are; bind your own implementation
 * with `persistCursors(storage)` from that entry.
 *
 * @example
 * ```ts
 * import { sessionCursorStorage } from '@finishline/client/persist';
 *
 * const client = new ProgressClient({ url, persistence: sessionCursorStorage() });
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

/**
 * What the client's `persistence` option takes: a {@link CursorStorage} bound by
 * `@finishline/client/persist` (its storages, such as `sessionCursorStorage()`, or
 * `persistCursors(storage)` for your own), which validates what it reads back.
 */
export interface CursorPersistence {
  /** @internal The saved view of `taskId` if it is a valid snapshot of that task. */
  restore(taskId: string): StoredTask | undefined;
  /** @internal Saves a watch's view with its epoch; false when there is nothing to save yet. */
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
  const decoded = decodeServerText(text);
  if (!decoded.ok || decoded.frame.type !== 'snapshot' || decoded.frame.task.id !== taskId) return undefined;
  return { task: decoded.frame.task, epoch: decoded.frame.epoch };
}

/**
 * Saves a watch's view as the `TaskView` a storage keeps; false (nothing saved) before the task's kind is
 * known.
 *
 * @internal
 */
export function saveView(storage: CursorStorage, view: WatchView, epoch: string | undefined): boolean {
  const { progress, kind } = view;
  if (progress === null || kind === null) return false;
  storage.save(
    {
      id: view.taskId,
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
  );
  return true;
}
