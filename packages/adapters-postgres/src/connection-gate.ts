import { storeClosed } from '@finishline/core/internal';
import type { Kysely } from 'kysely';

/**
 * Every call of the store takes its connection through a gate that `close()` shuts once it is done. With
 * `db` the store cannot reach the caller's pool (as `destroyHeld` does a pool it was given): when every
 * connection was held (the caller's own long transactions, a pool smaller than the store's concurrency), a
 * call waiting for one never settled once `close()` had returned, and ran whenever a connection came back,
 * long after the store closed (an append or a `createTask` committed then).
 *
 * @module
 */

/** Runs calls on a connection of their own, or rejects them with `closed` if shut before they got one. */
export class ConnectionGate {
  /** What ends each wait for a connection still running. */
  readonly #waiting = new Set<(error: Error) => void>();
  /** The writes not settled yet, waiting for their connection or on it (see {@link writesSettled}). */
  readonly #writes = new Set<Promise<unknown>>();
  #shut = false;

  /**
   * Runs `work`, a write, on one connection of `db` (a transaction inside it uses that connection).
   * Rejects with `closed`, nothing sent, once {@link shut} while it waits for the connection; the
   * connection, if one comes later, goes back at once. {@link writesSettled} waits for it.
   */
  run<D, T>(db: Kysely<D>, work: (connection: Kysely<D>) => Promise<T>): Promise<T> {
    const running = this.read(db, work);
    const settled: Promise<unknown> = running.then(
      () => this.#writes.delete(settled),
      () => this.#writes.delete(settled),
    );
    this.#writes.add(settled);
    return running;
  }

  /** As {@link run}, for `work` that writes nothing: {@link writesSettled} does not wait for it. */
  read<D, T>(db: Kysely<D>, work: (connection: Kysely<D>) => Promise<T>): Promise<T> {
    if (this.#shut) return Promise.reject(storeClosed());
    return new Promise<T>((resolve, reject) => {
      this.#waiting.add(reject);
      db.connection()
        .execute((connection) => {
          // Shut while waiting: the caller was told `closed`, so nothing is sent.
          if (!this.#waiting.delete(reject)) return Promise.reject(storeClosed());
          return work(connection);
        })
        .then(resolve, (error: unknown) => {
          this.#waiting.delete(reject);
          reject(error);
        });
    });
  }

  /** Settles once every write run so far (and any run meanwhile) has settled, whether or not it failed. */
  async writesSettled(): Promise<void> {
    while (this.#writes.size > 0) await Promise.all(this.#writes);
  }

  /** Rejects with `closed` the runs still waiting for a connection, and every later one. */
  shut(): void {
    this.#shut = true;
    const closed = storeClosed();
    for (const stop of this.#waiting) stop(closed);
    this.#waiting.clear();
  }
}
