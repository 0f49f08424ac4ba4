/**
 * The store's epoch as this replica last read it, announced in `hello` and snapshots.
 *
 * @module
 */
import type { ProgressStore } from '@finishline/core';
import type { ProgressLogger } from '../logger.js';
import { describeError } from '../logger.js';

/**
 * Longest wait of an answer that carries the epoch for a read of it: a socket's `hello` for the server's
 * first read (then it goes without one), the HTTP task routes and an event stream's start for a read after
 * their data (then they carry the epoch last read, or none). A read this slow is a store in
 * trouble, and the client gives up on a socket without `hello` after its `connectTimeoutMs` (10 s by
 * default).
 */
export const FIRST_EPOCH_READ_WAIT_MS = 2000;

/**
 * The store's epoch as this replica last read it. Read at start, by the HTTP task answers (`reread`), and
 * again on every heartbeat tick, so a
 * store renewed under a running server (`renewEpoch` after a restore) is noticed within one interval:
 * `onRenewed` is then called, once per change, for the server to drop what it knows of the old epoch's
 * seqs. `undefined` until the first read, or for a store without epochs: `hello` then carries none.
 */
export class StoreEpoch {
  readonly #store: ProgressStore;
  readonly #logger: ProgressLogger;
  readonly #onRenewed: (epoch: string) => void;
  #current: string | undefined;
  /** The read in progress. */
  #reading: Promise<void> | undefined;
  /**
   * The read that follows {@link #reading}, once a refresh was asked while it ran: that read may have
   * started before the change it was asked for (a store restored while the tick's read was in flight).
   * Every refresh asked during one read waits for this one, not for the reads to stop: each HTTP task
   * answer asks for one, and under steady traffic (a request during every read) they never stopped, so
   * every answer waited out {@link FIRST_EPOCH_READ_WAIT_MS}.
   */
  #next: Promise<void> | undefined;
  #closed = false;
  /** Resolved by {@link close}: ends the waits on {@link firstRead}, and their timers with them. */
  readonly #closing: Promise<void>;
  #endWaits: () => void = () => {};

  constructor(store: ProgressStore, logger: ProgressLogger, onRenewed: (epoch: string) => void = () => {}) {
    this.#store = store;
    this.#logger = logger;
    this.#onRenewed = onRenewed;
    this.#closing = new Promise((resolve) => {
      this.#endWaits = resolve;
    });
  }

  /** The last epoch read. */
  get current(): string | undefined {
    return this.#current;
  }

  /**
   * The read under way while no epoch is known (the server's first, or the next after it failed), which a
   * `hello` waits for so as to carry the epoch; `undefined` when there is none to wait for. It settles
   * at {@link close} too: a read that hangs (a store in trouble) held each waiting answer's timer
   * ({@link FIRST_EPOCH_READ_WAIT_MS}) past the server's `close()`.
   */
  get firstRead(): Promise<void> | undefined {
    const reading = this.#current === undefined ? (this.#next ?? this.#reading) : undefined;
    return reading === undefined ? undefined : Promise.race([reading, this.#closing]);
  }

  /**
   * Reads the epoch again: one read at a time, and the refreshes asked during a read share one read
   * started after it. A failure keeps the previous value and is logged. Resolves once a read started
   * after this call ended (or none will start: closed).
   */
  refresh(): Promise<void> {
    if (this.#closed || this.#store.getEpoch === undefined) return Promise.resolve();
    const reading = this.#reading;
    if (reading === undefined) return this.#startRead();
    const readNext = (): Promise<void> | undefined => {
      this.#next = undefined;
      if (this.#closed) return;
      // One started since by a refresh that found none under way (after this one's began) serves too.
      return this.#reading ?? this.#startRead();
    };
    // After a read that failed too (a renewal's listener threw): the next one is still read.
    this.#next ??= reading.then(readNext, readNext);
    return this.#next;
  }

  /**
   * A read started after this call (see {@link refresh}), for an answer that labels with the epoch what it
   * read from the store just before: {@link current} alone may be older than that data (a renewal by another
   * replica whose notice has not arrived, or that no feed tells). Settles at {@link close} too.
   */
  reread(): Promise<void> {
    return Promise.race([this.refresh(), this.#closing]);
  }

  /** No read starts any more (the server is closing, its store may close next). */
  close(): void {
    this.#closed = true;
    this.#endWaits();
  }

  #startRead(): Promise<void> {
    const reading: Promise<void> = this.#readOnce().finally(() => {
      if (this.#reading === reading) this.#reading = undefined;
    });
    this.#reading = reading;
    return reading;
  }

  async #readOnce(): Promise<void> {
    const previous = this.#current;
    try {
      this.#current = (await this.#store.getEpoch?.()) ?? this.#current;
    } catch (error) {
      this.#logger.debug({ err: describeError(error) }, 'reading the store epoch failed');
    }
    // The first read is no change: a server starts with the store's epoch, whatever it is.
    if (previous !== undefined && this.#current !== undefined && this.#current !== previous) {
      this.#logger.info({ previous, epoch: this.#current }, 'the store epoch changed; watchers start over');
      this.#onRenewed(this.#current);
    }
  }
}
