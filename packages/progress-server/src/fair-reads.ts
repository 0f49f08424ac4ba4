/** One queued read. */
interface Job {
  readonly read: () => Promise<unknown>;
  readonly resolve: (value: unknown) => void;
  readonly reject: (error: unknown) => void;
}

/** The reads of one principal. */
interface Lane {
  readonly queue: Job[];
  active: number;
}

/**
 * Schedules the store reads that sockets make for their own subscriptions (the task load of a
 * subscribe, catch-up reads) so that one principal cannot crowd out the others:
 *
 * - at most `maxConcurrent` such reads are in flight at once, all principals together, which leaves
 *   the store's pool (Postgres) free for appends and for the hub's live reads, which do not queue here;
 * - at most `maxPerPrincipal` of them belong to one principal;
 * - principals take turns (round-robin), and reads start in batches once per event-loop turn
 *   (`setImmediate`), so a synchronous store (SQLite) cannot monopolise the loop either.
 *
 * A principal with 1,000 subscriptions resubscribing as fast as its rate limit allows thus waits for
 * its own reads; another principal's read waits for at most one batch.
 */
export class FairReads {
  readonly #maxConcurrent: number;
  readonly #maxPerPrincipal: number;
  /** Lanes with work, in turn order (a `Map` iterates in insertion order; a served lane moves last). */
  readonly #lanes = new Map<string, Lane>();
  #active = 0;
  #scheduled: NodeJS.Immediate | undefined;
  #closed = false;

  constructor(options: { maxConcurrent: number; maxPerPrincipal: number }) {
    this.#maxConcurrent = options.maxConcurrent;
    this.#maxPerPrincipal = options.maxPerPrincipal;
  }

  /** Reads waiting for their turn, all principals together. */
  get queued(): number {
    let total = 0;
    for (const lane of this.#lanes.values()) total += lane.queue.length;
    return total;
  }

  /** Runs `read` on behalf of `principalId` when its turn comes; settles as `read` does. */
  run<T>(principalId: string, read: () => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      let lane = this.#lanes.get(principalId);
      if (lane === undefined) {
        lane = { queue: [], active: 0 };
        this.#lanes.set(principalId, lane);
      }
      lane.queue.push({ read, resolve: resolve as (value: unknown) => void, reject });
      this.#schedule();
    });
  }

  /** Stops starting reads; queued ones are rejected by their callers' staleness checks, never run. */
  close(): void {
    this.#closed = true;
    if (this.#scheduled !== undefined) clearImmediate(this.#scheduled);
    this.#scheduled = undefined;
  }

  #schedule(): void {
    if (this.#scheduled !== undefined || this.#closed) return;
    this.#scheduled = setImmediate(() => {
      this.#scheduled = undefined;
      this.#startBatch();
    });
  }

  /** Starts reads in turn order until the global or every lane's limit is reached. */
  #startBatch(): void {
    let progressed = true;
    while (this.#active < this.#maxConcurrent && progressed) {
      progressed = false;
      for (const [principalId, lane] of [...this.#lanes]) {
        if (this.#active >= this.#maxConcurrent) break;
        if (lane.queue.length === 0) {
          if (lane.active === 0) this.#lanes.delete(principalId);
          continue;
        }
        if (lane.active >= this.#maxPerPrincipal) continue;
        const job = lane.queue.shift() as Job;
        // Served: to the back of the turn order.
        this.#lanes.delete(principalId);
        this.#lanes.set(principalId, lane);
        this.#start(principalId, lane, job);
        progressed = true;
      }
    }
  }

  #start(principalId: string, lane: Lane, job: Job): void {
    this.#active += 1;
    lane.active += 1;
    let reading: Promise<unknown>;
    try {
      reading = job.read();
    } catch (error) {
      reading = Promise.reject(error);
    }
    reading.then(job.resolve, job.reject).finally(() => {
      this.#active -= 1;
      lane.active -= 1;
      if (lane.active === 0 && lane.queue.length === 0 && this.#lanes.get(principalId) === lane) {
        this.#lanes.delete(principalId);
      }
      // The next batch starts on the next turn of the loop, after pending I/O (appends, live events).
      if (this.#lanes.size > 0) this.#schedule();
    });
  }
}
