import type { Task } from '@finishline/core';

/**
 * The rows of running tasks as this store's last append batches left them, so the next batch need not
 * read them back. They are valid only while nothing else wrote: the write transaction compares the
 * database's write mark (`total_changes()` and `data_version`) with the one this store's last commit
 * left, under the write lock, and forgets every row when they differ.
 *
 * @module
 */

/**
 * The most running tasks whose rows the store keeps in memory between append batches; past it the
 * least recently written are dropped (and read again when next appended to).
 */
const TASK_CACHE_CAPACITY = 10_000;

/** Running tasks' rows, valid for one write mark. */
export class RunningTaskCache {
  readonly #tasks = new Map<string, Task>();
  /** The write mark right after this store's last commit; `undefined` when unknown. */
  #writeMark: string | undefined;

  /** The remembered row of `taskId`. Planning copies a row before changing it, so it is never modified. */
  get(taskId: string): Task | undefined {
    return this.#tasks.get(taskId);
  }

  /** Drops `taskId`'s row: the caller is about to change it outside an append. */
  forget(taskId: string): void {
    this.#tasks.delete(taskId);
  }

  /** Keeps `task` (a running task's row as just committed) for the next batch. */
  keep(task: Task): void {
    this.#tasks.delete(task.id);
    if (task.status !== 'running') return;
    this.#tasks.set(task.id, task);
    if (this.#tasks.size > TASK_CACHE_CAPACITY) {
      const oldest = this.#tasks.keys().next();
      if (oldest.done !== true) this.#tasks.delete(oldest.value);
    }
  }

  /**
   * Called inside a write transaction with the current write mark: anything written since this store's
   * last commit (another connection, or this connection used directly or by `createTask`) may have
   * changed remembered rows, so they are all forgotten. Returns whether nothing else wrote.
   */
  validate(writeMark: string): boolean {
    if (writeMark === this.#writeMark) return true;
    this.#tasks.clear();
    return false;
  }

  /** Records the write mark this store's commit just left. */
  committed(writeMark: string): void {
    this.#writeMark = writeMark;
  }

  /** Forgets everything, after a rollback: what was planned in it may already be here. */
  reset(): void {
    this.#tasks.clear();
    this.#writeMark = undefined;
  }
}
