import type { PostgresPool } from 'kysely';
import type { PgPool } from './postgres-store-options.js';

/**
 * The caller's `pg` pool wrapped for kysely: never ended by the store, every client guarded against `error`
 * crashes.
 *
 * @module
 */

/**
 * The clients that have the listener, whichever store added it: one per client, not one per store that
 * used it (stores opened one after another on one pool added a listener each, and Node warned of a leak).
 */
const GUARDED = new WeakSet<object>();

/**
 * The caller's pool as kysely sees it. `end` does nothing: the pool is the caller's, whatever happens to
 * the Kysely instance. And each client gets an `error` listener while the store holds it: a pg client
 * whose connection dies between two queries of a transaction emits `error`, which without a listener
 * crashes the process; with one, the failure still reaches the store, as the rejection of the
 * transaction's next query (`store_unavailable`), and the pool discards the client on release.
 */
export function guardedPool(pool: PgPool): PostgresPool {
  return {
    async connect() {
      const client = await pool.connect();
      const emitter = client as unknown as { on?: (event: 'error', listener: () => void) => unknown };
      if (!GUARDED.has(client) && typeof emitter.on === 'function') {
        GUARDED.add(client);
        emitter.on('error', () => {});
      }
      return client;
    },
    async end() {},
  };
}
