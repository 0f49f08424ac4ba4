/**
 * Group commit: entries queued during one turn of the event loop are committed together, in one
 * transaction, in the order they were queued. One commit per batch instead of per append is what lets
 * SQLite take ~10⁵ appends/s: the per-transaction cost (locking, the WAL frame write, an fsync with
 * `synchronous = FULL`) is paid once for the whole batch.
 *
 * @module
 */

/** When a batch is committed after its first entry arrives. */
export type FlushTiming = 'microtask' | 'immediate';

/** Options of {@link GroupCommitQueue}. */
export interface GroupCommitOptions<T> {
  /** Most entries per batch; the rest wait for the next batch, scheduled right after. */
  maxBatchSize: number;
  /**
   * `immediate` (`setImmediate`) gathers everything queued until pending I/O callbacks ran, including
   * appends issued from other promise continuations; `microtask` commits sooner but gathers only what
   * was queued synchronously.
   */
  timing: FlushTiming;
  /**
   * Commits one batch, settles each entry and returns `true`. Must not throw: it owns the entries'
   * promises. Called by `flush()` with `urgent` true; otherwise it may return `false` instead, settling
   * nothing: the batch
   * goes back to the head of the queue, and no scheduled commit runs until `resume()` (a `flush()` still
   * commits everything, urgently).
   */
  commit: (batch: T[], urgent: boolean) => boolean;
  /**
   * Runs after each commit, once the queue is out of it: where the committed changes are published. A
   * change listener run inside `commit` found `flush()` a no-op, so its read or write skipped the appends
   * queued before it, and its `close()` rejected them (`closed`); run here, its `flush()` commits them.
   */
  afterCommit?: () => void;
}

/**
 * A queue that commits its entries in batches, never more than once per entry and always in order.
 * `flush()` commits synchronously what is queued, so a read or a close can first make every earlier
 * write visible.
 */
export class GroupCommitQueue<T> {
  readonly #maxBatchSize: number;
  readonly #timing: FlushTiming;
  readonly #commit: (batch: T[], urgent: boolean) => boolean;
  readonly #afterCommit: (() => void) | undefined;
  #queue: T[] = [];
  /** Index of the first entry not yet taken; the array is compacted lazily to keep batching O(n). */
  #head = 0;
  #immediate: ReturnType<typeof setImmediate> | undefined;
  #microtaskPending = false;
  #committing = false;
  /** A commit returned `false`: scheduled commits wait for `resume()`. */
  #paused = false;

  constructor(options: GroupCommitOptions<T>) {
    this.#maxBatchSize = options.maxBatchSize;
    this.#timing = options.timing;
    this.#commit = options.commit;
    this.#afterCommit = options.afterCommit;
  }

  /** Entries waiting for a commit. */
  get size(): number {
    return this.#queue.length - this.#head;
  }

  /** Queues `entry` and makes sure a commit is scheduled. */
  enqueue(entry: T): void {
    this.#queue.push(entry);
    this.#schedule();
  }

  /**
   * Commits everything queued now, batch by batch. A no-op while a commit is already running (called from
   * inside `commit`): that commit's caller takes the rest afterwards. From `afterCommit` it commits.
   */
  flush(): void {
    while (this.size > 0 && !this.#committing) this.#commitOne(true);
  }

  /** Lets scheduled commits run again after a commit returned `false`, the first in a later turn. */
  resume(): void {
    this.#paused = false;
    if (this.size > 0) this.#schedule();
  }

  /** Removes and returns the entries still queued, for their owner to settle (on close). */
  clear(): T[] {
    const rest = this.#queue.slice(this.#head);
    this.#queue = [];
    this.#head = 0;
    return rest;
  }

  /** Cancels the scheduled commit. Entries still queued stay queued; call `flush()` first. */
  cancel(): void {
    if (this.#immediate !== undefined) clearImmediate(this.#immediate);
    this.#immediate = undefined;
    this.#microtaskPending = false;
  }

  #schedule(): void {
    if (this.#immediate !== undefined || this.#microtaskPending) return;
    if (this.#timing === 'microtask') {
      this.#microtaskPending = true;
      queueMicrotask(() => {
        if (!this.#microtaskPending) return;
        this.#microtaskPending = false;
        this.#onScheduled();
      });
    } else {
      this.#immediate = setImmediate(() => {
        this.#immediate = undefined;
        this.#onScheduled();
      });
    }
  }

  #onScheduled(): void {
    if (this.#committing || this.#paused || this.size === 0) return;
    this.#commitOne(false);
    // Leave the event loop a turn between batches so I/O and timers are not starved by a flood.
    if (this.size > 0 && !this.#paused && this.#immediate === undefined) {
      this.#immediate = setImmediate(() => {
        this.#immediate = undefined;
        this.#onScheduled();
      });
    }
  }

  #commitOne(urgent: boolean): void {
    let batch: T[];
    if (this.#head === 0 && this.#queue.length <= this.#maxBatchSize) {
      batch = this.#queue;
      this.#queue = [];
    } else {
      batch = this.#queue.slice(this.#head, this.#head + this.#maxBatchSize);
      this.#head += batch.length;
      if (this.#head === this.#queue.length) {
        this.#queue = [];
        this.#head = 0;
      } else if (this.#head * 2 > this.#queue.length) {
        // Drop the taken half so entries that keep arriving during a flood do not pin the old ones.
        this.#queue = this.#queue.slice(this.#head);
        this.#head = 0;
      }
    }
    this.#committing = true;
    let committed = true;
    try {
      committed = this.#commit(batch, urgent);
    } finally {
      this.#committing = false;
    }
    if (committed === false) {
      // Back at the head, before what was queued meanwhile: entries are committed in the order queued.
      this.#queue = batch.concat(this.#queue.slice(this.#head));
      this.#head = 0;
      this.#paused = true;
    }
    this.#afterCommit?.();
  }
}
