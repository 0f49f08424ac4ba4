import type { Task } from '@finishline/core';

/**
 * The rows of running tasks as this store's append pipeline last committed them, so that the next batch
 * of appends to them can be planned without the locking read (see `writeAppendsIfUnchanged`, which
 * writes only if the rows are still these). A row is only a guess: whatever else happens to it (another
 * writer, the reaper, a purge) is caught by that check, never trusted from here. Ended tasks are not kept
 * (nothing can be appended to them); beyond `capacity` rows the least recently written go first.
 *
 * @module
 */
export class LastWrittenRows {
  readonly #capacity: number;
  /** Insertion order is recency: a row written again moves to the end. */
  readonly #rows = new Map<string, Task>();

  constructor(capacity: number) {
    this.#capacity = capacity;
  }

  get size(): number {
    return this.#rows.size;
  }

  get(taskId: string): Task | undefined {
    return this.#rows.get(taskId);
  }

  /** The row `task` was just committed: keep it while the task runs, drop it once it ended. */
  remember(task: Task): void {
    this.#rows.delete(task.id);
    if (task.status !== 'running') return;
    this.#rows.set(task.id, task);
    if (this.#rows.size > this.#capacity) {
      const oldest = this.#rows.keys().next().value;
      if (oldest !== undefined) this.#rows.delete(oldest);
    }
  }

  delete(taskId: string): void {
    this.#rows.delete(taskId);
  }
}
