/**
 * The store's epoch as this replica last read it, announced in `hello` and snapshots.
 *
 * @module
 */
import type { ProgressStore } from '@finishline/core';
import type { ProgressLogger } from '../logger.js';
import { describeError } from '../logger.js';

/**
 * The store's epoch as this replica last read it. Read at start and again on every heartbeat tick, so a
 * store renewed under a running server (`renewEpoch` after a restore) is announced within one interval.
 * `undefined` until the first read, or for a store without epochs: `hello` then carries none.
 */
export class StoreEpoch {
  readonly #store: ProgressStore;
  readonly #logger: ProgressLogger;
  #current: string | undefined;
  #reading = false;

  constructor(store: ProgressStore, logger: ProgressLogger) {
    this.#store = store;
    this.#logger = logger;
  }

  /** The last epoch read. */
  get current(): string | undefined {
    return this.#current;
  }

  /** Reads the epoch again (one read at a time; a failure keeps the previous value and is logged). */
  async refresh(): Promise<void> {
    if (this.#reading || this.#store.getEpoch === undefined) return;
    this.#reading = true;
    try {
      this.#current = await this.#store.getEpoch();
    } catch (error) {
      this.#logger.debug({ err: describeError(error) }, 'reading the store epoch failed');
    } finally {
      this.#reading = false;
    }
  }
}
