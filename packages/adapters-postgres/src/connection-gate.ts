import { storeClosed } from '@finishline/core/internal';
import type { Kysely } from 'kysely';

/**
 * The store's writes take their connection through a gate that `close()` can shut while they still wait for
 * one. With `db` the store cannot reach the caller's pool (as `destroyHeld` does a pool it was given): when
 * every connection was held (the caller's own long transactions, a pool smaller than the store's
 * concurrency), an append waiting for one never settled once `close()` had returned, and was committed
 * whenever a connection came back, long after the store closed.
 *
 * @module
 */

/** Runs writes on a connection of their own, or rejects them with `closed` if shut before they got one. */
export class ConnectionGate {
  /** What ends each wait for a connection still running. */
  readonly #waiting = new Set<(error: Error) => void>();
  #shut = false;

  /**
   * Runs `work` on one connection of `db` (a transaction inside it uses that connection). Rejects with
   * `closed`, nothing sent, once {@link shut} while it waits for the connection; the connection, if one
   * comes later, goes back at once.
   */
  run<D, T>(db: Kysely<D>, work: (connection: Kysely<D>) => Promise<T>): Promise<T> {
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

  /** Rejects with `closed` the runs still waiting for a connection, and every later one. */
  shut(): void {
    this.#shut = true;
    const closed = storeClosed();
    for (const stop of this.#waiting) stop(closed);
    this.#waiting.clear();
  }
}
