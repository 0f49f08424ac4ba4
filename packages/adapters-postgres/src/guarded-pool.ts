import type { PostgresPool, PostgresPoolClient } from 'kysely';
import type { PgPool } from './postgres-store-options.js';
import { preparedStatementName } from './prepared-statement.js';

/**
 * The caller's `pg` pool wrapped for kysely: never ended by the store, every client guarded against `error`
 * crashes, and (unless turned off) the store's prepared statements run by name.
 *
 * @module
 */

/**
 * The clients that have the listener, whichever store added it: one per client, not one per store that
 * used it (stores opened one after another on one pool added a listener each, and Node warned of a leak).
 */
const GUARDED = new WeakSet<object>();

/** A `pg` pool client: kysely's view of it, plus `query` with a named statement's config. */
type PgPoolClient = PostgresPoolClient & {
  query(config: {
    name: string;
    text: string;
    values: readonly unknown[];
  }): ReturnType<PostgresPoolClient['query']>;
};

/**
 * A pool client as kysely sees it, which runs the store's prepared statements (`prepared-statement.ts`)
 * by name: `pg` then sends a statement's text once per connection, and Postgres plans it once. One per
 * client, kept as long as the client, so kysely (which keys its connections by client) keeps one too.
 */
const NAMING = new WeakMap<object, PostgresPoolClient>();

function namingClient(client: PgPoolClient): PostgresPoolClient {
  let named = NAMING.get(client);
  if (named === undefined) {
    const query = (text: unknown, values?: readonly unknown[]) => {
      const name = typeof text === 'string' ? preparedStatementName(text) : undefined;
      if (name !== undefined) return client.query({ name, text: text as string, values: values ?? [] });
      return (client.query as (text: unknown, values?: readonly unknown[]) => unknown)(text, values);
    };
    named = {
      query: query as PostgresPoolClient['query'],
      release: (destroy?: boolean) => client.release(destroy),
    };
    NAMING.set(client, named);
  }
  return named;
}

/**
 * The caller's pool as kysely sees it. `end` does nothing: the pool is the caller's, whatever happens to
 * the Kysely instance. And each client gets an `error` listener while the store holds it: a pg client
 * whose connection dies between two queries of a transaction emits `error`, which without a listener
 * crashes the process; with one, the failure still reaches the store, as the rejection of the
 * transaction's next query (`store_unavailable`), and the pool discards the client on release.
 */
export function guardedPool(pool: PgPool, options: { preparedStatements: boolean }): PostgresPool {
  return {
    async connect() {
      const client = await pool.connect();
      const emitter = client as unknown as { on?: (event: 'error', listener: () => void) => unknown };
      if (!GUARDED.has(client) && typeof emitter.on === 'function') {
        GUARDED.add(client);
        emitter.on('error', () => {});
      }
      return options.preparedStatements ? namingClient(client as PgPoolClient) : client;
    },
    async end() {},
  };
}
