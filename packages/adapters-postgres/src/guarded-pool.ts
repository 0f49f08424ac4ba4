import { storeClosed } from '@finishline/core/internal';
import type { PostgresPool, PostgresPoolClient } from 'kysely';
import { endsConnection } from './pg-errors.js';
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

/**
 * A pool client as kysely sees it, when statements are not named: one per client, as {@link namingClient}
 * is, whose `release` goes through the client's {@link HELD_BY} entry like the naming one's.
 */
const PLAIN = new WeakMap<object, PostgresPoolClient>();

/**
 * The set of checked-out clients of the guarded pool that checked each client out last: its `release`
 * takes the client out of it. Keyed by client, as the wrappers above are (kysely keeps one connection per
 * wrapper), so stores that share a pool each know only what they hold.
 */
const HELD_BY = new WeakMap<object, Set<PgPoolClient>>();

/** pg-pool's `acquire` event: a client handed out, emitted before the `connect` it answers resolves. */
interface AcquireEvents {
  on(event: 'acquire', listener: (client: unknown) => void): unknown;
  removeListener(event: 'acquire', listener: (client: unknown) => void): unknown;
}

/** Gives `client` the `error` listener (see {@link guardedPool}), once. */
function guard(client: unknown): void {
  const emitter = client as { on?: (event: 'error', listener: () => void) => unknown } | null;
  if (typeof emitter?.on !== 'function' || GUARDED.has(emitter)) return;
  GUARDED.add(emitter);
  emitter.on('error', () => {});
}

/**
 * The checked-out clients whose last statement failed in a way that ends (or may have ended) their
 * connection ({@link endsConnection}), with that failure: released with it, so the pool discards them.
 */
const DEAD = new WeakMap<object, Error | true>();

/** `client.query`'s `result`, a failure of which that ends the connection marks the client dead. */
function watched<T>(client: PgPoolClient, result: T): T {
  if (typeof (result as { then?: unknown } | null)?.then === 'function') {
    (result as unknown as Promise<unknown>).then(undefined, (error: unknown) => {
      if (endsConnection(error)) DEAD.set(client, error instanceof Error ? error : true);
    });
  }
  return result;
}

function release(client: PgPoolClient, destroy?: boolean): void {
  HELD_BY.get(client)?.delete(client);
  const dead = DEAD.get(client);
  DEAD.delete(client);
  if (dead === undefined || destroy === true) client.release(destroy);
  // pg-pool discards a client released with an error (its type: `release(err?: Error | boolean)`).
  else (client.release as (error: Error | true) => void)(dead);
}

function namingClient(client: PgPoolClient): PostgresPoolClient {
  let named = NAMING.get(client);
  if (named === undefined) {
    const query = (text: unknown, values?: readonly unknown[]) => {
      const name = typeof text === 'string' ? preparedStatementName(text) : undefined;
      if (name !== undefined) {
        return watched(client, client.query({ name, text: text as string, values: values ?? [] }));
      }
      return watched(
        client,
        (client.query as (text: unknown, values?: readonly unknown[]) => unknown)(text, values),
      );
    };
    named = {
      query: query as PostgresPoolClient['query'],
      release: (destroy?: boolean) => release(client, destroy),
    };
    NAMING.set(client, named);
  }
  return named;
}

function plainClient(client: PgPoolClient): PostgresPoolClient {
  let plain = PLAIN.get(client);
  if (plain === undefined) {
    plain = {
      query: ((...args: unknown[]) =>
        watched(
          client,
          (client.query as (...args: unknown[]) => unknown)(...args),
        )) as PostgresPoolClient['query'],
      release: (destroy?: boolean) => release(client, destroy),
    };
    PLAIN.set(client, plain);
  }
  return plain;
}

/** The caller's pool as the store uses it (see {@link guardedPool}). */
export interface GuardedPool extends PostgresPool {
  /**
   * Destroys the sockets of the clients the store has checked out and not released (its statements in
   * flight), as `bounded-end.ts` does a listener's: each statement on them fails at once, and the pool
   * discards the client when the store releases it. Returns how many. Clients the store does not hold,
   * idle in the pool or another user's, are not touched. A `connect` of the store still waiting for a client
   * (a new connection to a database that does not answer, with no `connectionTimeoutMillis`) rejects with
   * `closed`, nothing sent; the client it gets later goes back to the pool.
   */
  destroyHeld(): number;
}

/**
 * The caller's pool as kysely sees it. `end` does nothing: the pool is the caller's, whatever happens to
 * the Kysely instance. And each client gets an `error` listener while the store holds it: a pg client
 * whose connection dies between two queries of a transaction emits `error`, which without a listener
 * crashes the process; with one, the failure still reaches the store, as the rejection of the
 * transaction's next query (`store_unavailable`), and the pool discards the client on release.
 *
 * The listener is added when pg-pool hands the client out (its `acquire` event, while a `connect` of the
 * store waits), not once `connect` resolves: pg-pool takes its own listener off a new client before it
 * resolves, and pg parses all that one socket read brought before a promise continues, so a backend
 * terminated just after it reported ready (a server restart, a failover, `pg_terminate_backend` of a
 * connection being opened) sent its FATAL in the read that carried ReadyForQuery, and the `error` it
 * emitted, with no listener on the client, crashed the process. A client the pool hands to another of its
 * users meanwhile gets the listener too, as every client the store has used keeps it.
 */
export function guardedPool(pool: PgPool, options: { preparedStatements: boolean }): GuardedPool {
  const held = new Set<PgPoolClient>();
  const events = pool as unknown as Partial<AcquireEvents>;
  const acquireEvents =
    typeof events.on === 'function' && typeof events.removeListener === 'function'
      ? (events as AcquireEvents)
      : undefined;
  let connecting = 0;
  // The connects still waiting for a client, each with what ends its wait (see destroyHeld).
  const waiting = new Set<(error: Error) => void>();
  return {
    async connect() {
      if (acquireEvents !== undefined && connecting++ === 0) acquireEvents.on('acquire', guard);
      const connected = pool.connect() as Promise<PgPoolClient>;
      // The listener stays until pg-pool answers, even a connect destroyHeld gave up on: the client it hands
      // out then needs it as much.
      const answered = () => {
        if (acquireEvents !== undefined && --connecting === 0) acquireEvents.removeListener('acquire', guard);
      };
      connected.then(answered, answered);
      let stop: ((error: Error) => void) | undefined;
      const stopped = new Promise<never>((_, reject) => {
        stop = reject;
      });
      waiting.add(stop as (error: Error) => void);
      let client: PgPoolClient;
      try {
        client = await Promise.race([connected, stopped]);
      } catch (error) {
        // Given up by destroyHeld: the client, if one comes, is not the store's to use.
        connected.then(
          (late) => {
            guard(late);
            late.release();
          },
          () => {},
        );
        throw error;
      } finally {
        waiting.delete(stop as (error: Error) => void);
      }
      guard(client);
      held.add(client);
      HELD_BY.set(client, held);
      return options.preparedStatements ? namingClient(client) : plainClient(client);
    },
    async end() {},
    destroyHeld() {
      // A statement waiting for its connection has sent nothing: it ends now, with `closed`, rather than when
      // (if ever) the database it would wait on answers.
      for (const stop of waiting) stop(storeClosed());
      waiting.clear();
      let destroyed = 0;
      for (const client of held) {
        const stream = (client as { connection?: { stream?: { destroy(): unknown } } }).connection?.stream;
        if (stream === undefined) continue;
        stream.destroy();
        destroyed += 1;
      }
      return destroyed;
    },
  };
}
