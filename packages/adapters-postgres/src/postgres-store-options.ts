import type { Clock } from '@finishline/core';
import { ErrorCode, ProgressError } from '@finishline/core';
import type { BackoffOptions, OptionSpec, ResolvedOptionsOf } from '@finishline/core/internal';
import {
  backoffOption,
  boolean,
  defaultsOf,
  func,
  integer,
  invalidOption,
  ofType,
  option,
  refine,
  requireNumber,
  resolveOptions,
  storeClockOption,
} from '@finishline/core/internal';
import type { Kysely, PostgresPool } from 'kysely';
import { DATABASE_CLOCK, type LeaseClock } from './lease-statements.js';
import type { PgListenClient } from './listen-connection.js';
import { isSchemaName, SCHEMA_RULE } from './migrations.js';

/**
 * The Postgres store's options: the public interface carries their documentation, one table their
 * defaults and checks (the options toolkit of `@finishline/core/internal`), and the `LISTEN` client
 * factory derived from them.
 *
 * @module
 */

/**
 * The part of a `pg.Pool` the store uses: kysely's `PostgresPool` (`connect`, `end` — the store never
 * calls `end`), plus what it reads to build its dedicated `LISTEN` client the way the pool builds its
 * own: the pool's `options` and its `Client` class (both present on every `pg.Pool`).
 */
export interface PgPool extends PostgresPool {
  readonly options?: object;
  readonly Client?: new (config: object) => PgListenClient;
}

/**
 * Where the `LISTEN` connection comes from: a connection string or a `pg.Client` config (the store
 * creates a `pg.Client` with it for each (re)connect), or a factory returning a new, unconnected client.
 */
export type ListenClientSource =
  | string
  | Readonly<Record<string, unknown>>
  | (() => PgListenClient | Promise<PgListenClient>);

/** Options of `PostgresProgressStore.open`. Give exactly one of `pool` and `db`. */
export interface PostgresProgressStoreOptions {
  /**
   * The caller's `pg.Pool`. The store builds a Kysely with `PostgresDialect` on it, and never ends it.
   * @default undefined (then `db` is required)
   */
  pool?: PgPool | undefined;
  /**
   * A Kysely instance on Postgres to use instead of `pool`. The store never destroys it, and runs its
   * statements without the instance's plugins (`withoutPlugins()`). With `db`, the store cannot see the
   * pool's settings, so `listenClient` is required, nor its clients: the `error` listener a client needs
   * while it is checked out (pg-pool takes its own off; a backend that ends then emits `error`, which with no
   * listener ends the process) is yours to add, `pool.on('connect', (client) => client.on('error', …))`.
   * With `pool`, the store adds it. Nor can it release as broken a client whose connection the server ended
   * during a statement (`pg_terminate_backend`, a fast shutdown), as it does with `pool`: pg marks it dead only
   * once it reads the socket's close, and the next statement that draws it before that fails too: the store
   * reads again, but a write fails (`store_unavailable`, safe to retry: that failure gets it discarded).
   * @default undefined (then `pool` is required)
   */
  // biome-ignore lint/suspicious/noExplicitAny: any database type; the store only uses its own schema.
  db?: Kysely<any> | undefined;
  /**
   * The schema holding the store's tables; also names its `NOTIFY` channel (`<schema>_changes`).
   * 1–48 lower-case letters, digits and `_`, starting with a letter or `_`, not `pg_…`.
   * @default 'finishline'
   */
  schema?: string | undefined;
  /**
   * Create or upgrade the schema when opening (safe with several replicas opening at once). Turn it off
   * when migrations run as a deployment step (`migrateProgressSchema`).
   * @default true
   */
  migrate?: boolean | undefined;
  /**
   * Source of every timestamp the store writes (creation, events, retention age), and, when given, of lease
   * times too. Read in whole milliseconds (`bigint` columns): a fraction is dropped, and a value that is no
   * time (`NaN`, a negative number), or a throw, rejects the call with `internal`.
   *
   * Without it, lease times (the expiry a creation or a renewal writes, and the time the reaper finds a
   * lease expired at) and a task's `createdAt` (its run, see `RunFence`) come from the database's clock
   * (`clock_timestamp()`), the one clock every replica shares: a replica whose own clock runs ahead would
   * otherwise reap the running tasks of healthy replicas, and one whose clock runs behind would write
   * leases that are already expired for the others, and create a purged task id again as an older run.
   * Given (tests drive leases with a manual clock), it is trusted for those as well.
   * @default systemClock (`Date.now`); lease times and `createdAt` from the database's clock
   */
  clock?: Clock | undefined;
  /**
   * Where the dedicated `LISTEN` connection comes from.
   * A config's `query_timeout` is left out, and the connection turns its session's `statement_timeout`
   * and `transaction_timeout` (Postgres 17+) off: it bounds each of its statements itself, and a re-read
   * after a long outage may take longer than a pool's timeout allows. It turns `idle_session_timeout`
   * (Postgres 14+) off too: it is idle between barriers by design, and a barrier that goes unanswered is how
   * it finds a dead connection.
   * @default a new client of the pool's own `Client` class with the pool's options (plus
   * `application_name: 'finishline-listen'` and `keepAlive: true` unless the options set them)
   */
  listenClient?: ListenClientSource | undefined;
  /**
   * Interval of the safety-net poll, which asks about followed tasks only, in milliseconds.
   * @default 500
   */
  pollIntervalMs?: number | undefined;
  /**
   * How often the `LISTEN` connection advances its high-water mark (one tiny query and a self-addressed
   * notification), in milliseconds. Shorter means a smaller re-read after a reconnect. The same query is
   * a liveness check: unanswered for 5 intervals (at least 1 s), the connection is replaced. Each statement
   * of a (re)connect's re-read unanswered for 30 intervals (at least 3 s; once more as long per failed
   * attempt since the last success, up to 10 times as long) likewise.
   * @default 1000
   */
  watermarkIntervalMs?: number | undefined;
  /**
   * How long the connect of the `LISTEN` connection (TCP, TLS, authentication), its `LISTEN` statement and
   * a `listenClient` factory's promise may each go unanswered, in milliseconds, before the attempt is given up: `open()` then rejects with
   * `store_unavailable` (a black-holed or unreachable host), and a reconnect is retried after its backoff,
   * with once more as long per failed attempt since the last success, up to 10 times as long. As long as
   * a client's default `connectTimeoutMs`, and independent of `watermarkIntervalMs`.
   * @default 10000
   */
  listenConnectTimeoutMs?: number | undefined;
  /**
   * How long `close()` waits for the appends, acks and lease renewals already sent to the database, and
   * the other writes called before it (`createTask`, `releaseLease`, the reaper, purges), in milliseconds.
   * A database that stopped answering (its host frozen, a network that drops every packet) never answers
   * them, and `close()`, with a server's graceful shutdown, waited until TCP gave up (about 15 minutes on
   * Linux; for ever with a frozen process, whose kernel still acknowledges). Past it the sockets of the pool
   * clients the store holds are destroyed: their statements fail (`store_unavailable`; an append among them
   * may or may not have been committed), and the pool discards those clients; appends not sent yet (queued
   * behind those) and every call waiting for a new connection to that database reject with `closed`,
   * nothing of them written. No other client of the pool is touched. With `db` (a Kysely instance) the
   * store cannot reach its connections: `close()` stops waiting, and those statements settle when the
   * database answers; every call still waiting for a connection of its pool (reads too) rejects with
   * `closed`, nothing of it written.
   * @default 5000
   */
  closeTimeoutMs?: number | undefined;
  /**
   * Backoff of the `LISTEN` connection's reconnects (full jitter). `maxDelayMs` is at most 2^31 - 1 (about
   * 24.8 days, the longest a timer waits).
   * @default { initialDelayMs: 250, maxDelayMs: 10000, multiplier: 2 }
   */
  reconnect?: BackoffOptions | undefined;
  /**
   * Most appends committed in one transaction (group commit: appends that arrive while a transaction is
   * in flight are committed together by the next one); also the most lease renewals per transaction and
   * the most `getTask` calls per statement.
   * @default 500
   */
  maxBatchSize?: number | undefined;
  /**
   * Most append transactions in flight at once (each holds a pool connection). A transaction beyond the
   * first starts only with at least a quarter of `maxBatchSize` appends waiting, or once they waited
   * 100 ms (the one in flight may be slow). A row another transaction holds (an append of a replica frozen
   * before its COMMIT) is waited for at most 500 ms, by a transaction of that task's appends alone, which
   * are then tried again, 50 ms later doubling to a second, while the other tasks' go on. Appends to one
   * task never run in two at once, so their order is the order of the calls.
   * @default 2
   */
  maxConcurrentBatches?: number | undefined;
  /**
   * Most acks written by one statement. Acks that arrive in the same tick (and while an ack statement
   * is in flight) are written together, one statement at a time, so acks take one pool connection and
   * lock their task rows in the same order as append transactions.
   * @default 1000
   */
  maxAckBatchSize?: number | undefined;
  /**
   * Run the store's frequent statements (appends, acks, task and event reads) as named prepared
   * statements on the pool's connections: Postgres parses and plans each once per connection instead of
   * on every call, which halves an append's round trip. Set `false` behind a pooler that hands one
   * session's statements to several server connections without tracking prepared statements (PgBouncer
   * in transaction mode before 1.21, or with `max_prepared_statements = 0`), and if your own code runs
   * `DEALLOCATE ALL` or `DISCARD ALL` on the pool's connections. With `db` instead of `pool` the store does
   * not own the connections and never prepares: this option is then ignored.
   * @default true
   */
  preparedStatements?: boolean | undefined;
  /**
   * Receives background failures: a lost `LISTEN` connection (each failed reconnect too, after its
   * backoff), a failed safety-net poll (once per streak of failed polls: again only after a poll read;
   * `changes.stats().pollErrors` counts every one). The store keeps working
   * (reconnecting, polling again); this hook is for logs and alerts. Also receives, once each, the rows
   * `reapExpiredLeases` could not interrupt (damaged by hand, e.g. a `seq` behind the task's log), whose
   * expired lease it dropped instead (`internal`, with the `taskId`); the rows `listTasks` could not
   * read (an `int8` above 2^53, say), which it leaves out of its lists (reported once per store), and
   * likewise those whose `seq` `latestSeqs`, the safety-net poll or the change feed's re-read could not
   * read, which they leave out; and the
   * renewal of the store's epoch after the change feed noticed the database lost commits (a task ended at
   * a seq already published as running: a failover to a standby that lacked them; `internal`, with the
   * `taskId`).
   * @default ignores the error
   */
  onError?: ((error: ProgressError) => void) | undefined;
  /**
   * Receives what a change listener throws (or its promise rejects with). Listeners must not throw;
   * this hook exists so a faulty one can be logged instead of disturbing others.
   * @default ignores the error
   */
  onListenerError?: ((error: unknown) => void) | undefined;
}

/**
 * An object option that refuses a string without repeating it: the string is most likely the connection
 * string (`pool: process.env.DATABASE_URL`), and the error, logged at startup, carried its password.
 */
function notAString<T>(expected: string, spec: OptionSpec<T | undefined>): OptionSpec<T | undefined> {
  return {
    ...spec,
    read(value, where) {
      if (typeof value === 'string') {
        throw new ProgressError(
          ErrorCode.InvalidInput,
          `${where} must be ${expected}, got a string (not repeated: a connection string carries its password)`,
        );
      }
      return spec.read(value, where);
    },
  };
}

/** One description per option of {@link PostgresProgressStoreOptions}: its default and its check. */
const POSTGRES_STORE_OPTIONS = {
  pool: notAString(
    'a pg.Pool',
    ofType<PgPool>(
      'a pg.Pool',
      (value) =>
        typeof value === 'object' && value !== null && typeof (value as PgPool).connect === 'function',
    ),
  ),
  db: notAString(
    'a Kysely instance',
    // biome-ignore lint/suspicious/noExplicitAny: see PostgresProgressStoreOptions.db
    ofType<Kysely<any>>(
      'a Kysely instance',
      (value) =>
        typeof value === 'object' &&
        value !== null &&
        typeof (value as { transaction?: unknown }).transaction === 'function',
    ),
  ),
  schema: option<string>('finishline', SCHEMA_RULE, isSchemaName),
  migrate: boolean(true),
  // Read in whole milliseconds (see wholeMillisecondClock).
  clock: storeClockOption(),
  listenClient: ofType<ListenClientSource>(
    'a connection string, a pg.Client config or a factory',
    (value) =>
      typeof value === 'string' ||
      typeof value === 'function' ||
      (typeof value === 'object' && value !== null),
  ),
  pollIntervalMs: integer(500, 1, 3_600_000),
  watermarkIntervalMs: integer(1000, 1, 3_600_000),
  listenConnectTimeoutMs: integer(10_000, 1, 3_600_000),
  closeTimeoutMs: integer(5_000, 1, 3_600_000),
  // Its delays go to setTimeout, which fires a longer one than 2^31 - 1 ms after 1 ms: a larger maxDelayMs
  // reconnected in a loop once the backoff grew past it (initialDelayMs is at most maxDelayMs).
  reconnect: refine(
    backoffOption({ initialDelayMs: 250, maxDelayMs: 10_000, multiplier: 2 }),
    (value, where) => {
      requireNumber(`${where}.maxDelayMs`, value.maxDelayMs, { min: 0, max: 2_147_483_647 });
      return value;
    },
  ),
  maxBatchSize: integer(500, 1, 10_000),
  maxConcurrentBatches: integer(2, 1, 64),
  maxAckBatchSize: integer(1000, 1, 10_000),
  preparedStatements: boolean(true),
  onError: func<(error: ProgressError) => void>(() => {}),
  onListenerError: func<(error: unknown) => void>(() => {}),
} satisfies { [K in keyof Required<PostgresProgressStoreOptions>]: unknown };

/** The defaults of {@link PostgresProgressStoreOptions}. */
export const POSTGRES_STORE_DEFAULTS = Object.freeze(defaultsOf(POSTGRES_STORE_OPTIONS));

/** The options after merging the defaults and checking them. */
export type ResolvedStoreOptions = Omit<ResolvedOptionsOf<typeof POSTGRES_STORE_OPTIONS>, 'listenClient'> & {
  /** Where lease times and `createdAt` come from: the caller's `clock`, or the database's when none was given. */
  leaseClock: LeaseClock;
  createListenClient: () => PgListenClient | Promise<PgListenClient>;
};

type ClientClass = new (config: object) => PgListenClient;

async function importPgClient(): Promise<ClientClass> {
  const module = (await import('pg')) as unknown as {
    default?: { Client?: ClientClass };
    Client?: ClientClass;
  };
  const Client = module.default?.Client ?? module.Client;
  if (Client === undefined) throw invalidOption('PostgresProgressStore', 'the pg module has no Client class');
  return Client;
}

function listenClientFactory(
  source: ListenClientSource | undefined,
  pool: PgPool | undefined,
): () => PgListenClient | Promise<PgListenClient> {
  if (typeof source === 'function') return source;
  // TCP keepalive so that the OS notices a dead peer; the barrier watchdog catches what it does not. Without
  // pg's client-side query_timeout (a pool's, often): it cut a re-read that took longer at every attempt,
  // and the listener stayed down for good. The connection bounds each of its statements itself.
  const withName = (config: object) => {
    const { query_timeout: _queryTimeout, ...rest } = config as { query_timeout?: unknown };
    return { application_name: 'finishline-listen', keepAlive: true, ...rest };
  };
  if (source === undefined) {
    const Client = pool?.Client;
    const config = pool?.options;
    if (typeof Client !== 'function' || typeof config !== 'object' || config === null) {
      throw invalidOption(
        'PostgresProgressStore',
        pool === undefined
          ? 'listenClient is required with db (the store cannot see the connection settings)'
          : 'cannot derive a LISTEN client from this pool (no Client or options); pass listenClient',
      );
    }
    return () => new Client(withName(config));
  }
  if (typeof source !== 'string' && (typeof source !== 'object' || source === null)) {
    throw invalidOption(
      'PostgresProgressStore',
      'listenClient must be a connection string, a pg.Client config or a factory',
    );
  }
  const config = typeof source === 'string' ? { connectionString: source } : source;
  const PoolClient = pool?.Client;
  return async () => {
    const Client = typeof PoolClient === 'function' ? PoolClient : await importPgClient();
    return new Client(withName(config));
  };
}

/** pg's connection settings, which a caller may pass to the store instead of a pool. */
const PG_SETTINGS = ['connectionString', 'host', 'port', 'user', 'password', 'database'] as const;

/**
 * Merges {@link POSTGRES_STORE_DEFAULTS} into `options` and validates the result.
 *
 * @throws ProgressError `invalid_input` naming the offending option.
 */
export function resolveStoreOptions(options: PostgresProgressStoreOptions): ResolvedStoreOptions {
  if (typeof options !== 'object' || options === null)
    throw invalidOption('PostgresProgressStore', 'options must be an object');
  // A pg connection setting is the usual first try (`open({ connectionString })`), and the nearest option
  // name to it (`reconnect`, `db`) pointed the wrong way: the store takes a pool, never builds one.
  let setting: string | undefined;
  try {
    setting = PG_SETTINGS.find((key) => Object.hasOwn(options, key));
  } catch {
    // A Proxy whose trap throws (or one revoked): resolveOptions reads the object again and refuses it
    // with invalid_input (here, its error rejected open() without a code).
  }
  if (setting !== undefined)
    throw invalidOption(
      'PostgresProgressStore',
      `unknown option "${setting}": the store takes a pool, not its settings: \`pool: new pg.Pool({ ${setting}: … })\``,
    );
  const { listenClient, ...resolved } = resolveOptions(
    'PostgresProgressStore',
    POSTGRES_STORE_OPTIONS,
    options,
  );
  if ((resolved.pool === undefined) === (resolved.db === undefined))
    throw invalidOption('PostgresProgressStore', 'give exactly one of pool and db');
  return {
    ...resolved,
    // See `clock`: a clock of the caller's is trusted for leases and runs; otherwise they use the database's.
    leaseClock: options.clock === undefined ? DATABASE_CLOCK : resolved.clock,
    createListenClient: listenClientFactory(listenClient, resolved.pool),
  };
}
