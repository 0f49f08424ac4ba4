import { storeClosed } from '@finishline/core/internal';

/**
 * Gathers the calls of one event-loop I/O phase into one database round trip: acks (one per incoming
 * message, from every watcher of every task), lease renewals (one per running task, all due at the
 * same tick) and task reads (one per subscribe: a reconnect storm brings thousands at once, many of one
 * task) would otherwise take a statement, and a pool connection, each. Writes go one batch at a time,
 * so a batcher holds at most one connection and its statements lock rows in one order; calls that arrive
 * meanwhile go in the next batch. Reads, which lock nothing, may run several batches at once
 * (`maxInFlight`), so a slow one does not hold up the calls of the next ticks.
 *
 * @module
 */

/** A call waiting for (or in) a batch. */
export interface BatchedCall<I, O> {
  readonly input: I;
  resolve(output: O): void;
  reject(error: unknown): void;
}

/**
 * Batches calls into one write per event-loop turn. `write` settles every call of its batch and never
 * rejects (a failure is each call's rejection).
 */
export class StatementBatcher<I, O> {
  readonly #write: (batch: BatchedCall<I, O>[]) => Promise<void>;
  readonly #maxBatchSize: number;
  readonly #maxInFlight: number;
  readonly #queue: BatchedCall<I, O>[] = [];
  readonly #inFlight = new Set<Promise<void>>();
  #flushTimer: ReturnType<typeof setImmediate> | undefined;
  #closed = false;
  #batches = 0;

  /** `maxInFlight`: batches written at once (1 for writes, which must lock rows in one order). */
  constructor(write: (batch: BatchedCall<I, O>[]) => Promise<void>, maxBatchSize: number, maxInFlight = 1) {
    this.#write = write;
    this.#maxBatchSize = maxBatchSize;
    this.#maxInFlight = maxInFlight;
  }

  /** Batches sent to the database, whether their statement succeeded or failed (a round-trip count). */
  get batches(): number {
    return this.#batches;
  }

  /** Queues a validated call; settles once its batch was written. */
  enqueue(input: I): Promise<O> {
    // After close nothing is written (its flush would run a statement on a pool the caller may have ended).
    if (this.#closed) return Promise.reject(storeClosed());
    return new Promise<O>((resolve, reject) => {
      this.#queue.push({ input, resolve, reject });
      this.#scheduleFlush();
    });
  }

  /** Rejects the calls not yet written with `closed` and waits for the batches in flight. */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.#flushTimer !== undefined) clearImmediate(this.#flushTimer);
    this.#flushTimer = undefined;
    const closed = storeClosed();
    for (const call of this.#queue.splice(0)) call.reject(closed);
    await Promise.all(this.#inFlight);
  }

  #scheduleFlush(): void {
    if (this.#flushTimer !== undefined || this.#inFlight.size >= this.#maxInFlight) return;
    // setImmediate rather than a microtask: the calls made while handling one I/O phase (the acks read
    // from the sockets, the renewals of one timer) join one batch.
    this.#flushTimer = setImmediate(() => {
      this.#flushTimer = undefined;
      this.#flush();
    });
  }

  /**
   * Writes queued calls in as many batches as there are free slots: a burst larger than one batch (a
   * reconnect storm's subscribes) fills every slot a read batcher has, not one (the rest then waited for
   * the first batch's round trip, batch after batch, with the other slots idle).
   */
  #flush(): void {
    while (this.#inFlight.size < this.#maxInFlight && this.#queue.length > 0) this.#writeBatch();
  }

  #writeBatch(): void {
    const batch = this.#queue.splice(0, this.#maxBatchSize);
    this.#batches += 1;
    const written: Promise<void> = this.#write(batch)
      // `write` settles its calls and never rejects; if a bug made it reject, its calls would never settle
      // (a caller waiting for ever) and the rejection, unhandled, would take the process down. Settling an
      // already settled call does nothing.
      .catch((error: unknown) => {
        for (const call of batch) call.reject(error);
      })
      .finally(() => {
        this.#inFlight.delete(written);
        if (!this.#closed) this.#flush();
      });
    this.#inFlight.add(written);
  }
}
