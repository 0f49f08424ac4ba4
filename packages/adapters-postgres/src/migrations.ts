import { ErrorCode, ProgressError } from '@finishline/core';
import { option, resolveOptions } from '@finishline/core/internal';
import {
  type DatabaseIntrospector,
  type DialectAdapter,
  Kysely,
  type Migration,
  type MigrationProvider,
  type MigrationResult,
  Migrator,
  PostgresDialect,
  type RawBuilder,
  sql,
  type Transaction,
} from 'kysely';
import { guardedPool } from './guarded-pool.js';
import { lockingTransaction } from './locking-transaction.js';
import { isDatabaseError } from './pg-errors.js';
import type { PgPool } from './postgres-store-options.js';
import { assertStorableEncoding } from './task-statements.js';

/**
 * Versioned migrations of the store's schema, applied with kysely's `Migrator` (one transaction, an
 * advisory lock so replicas starting together do not race, and a record of each applied version in
 * `<schema>.migrations`). A migration, once published, is never edited: changes come as new versions.
 *
 * @module
 */

/**
 * What a schema name may look like: lower-case letters, digits and `_`, starting with a letter or `_`,
 * at most 48 characters (so the derived channel name stays under Postgres's 63-byte identifier limit),
 * and not `pg_…` (reserved by Postgres). The schema name is the only identifier the store puts into SQL
 * text, which is why it is this strict.
 */
export const SCHEMA_NAME_PATTERN = /^[a-z_][a-z0-9_]{0,47}$/;

/** Throws `invalid_input` unless `schema` matches {@link SCHEMA_NAME_PATTERN} and is not `pg_…`. */
export function assertSchemaName(schema: unknown): asserts schema is string {
  if (!isSchemaName(schema)) {
    throw new ProgressError(
      ErrorCode.InvalidInput,
      `Invalid schema name ${JSON.stringify(schema)}: use ${SCHEMA_RULE}`,
    );
  }
}

/** What a schema name must be, for messages. */
export const SCHEMA_RULE = '1-48 lower-case letters, digits and _, starting with a letter or _, not pg_';

/** True for a schema name the store accepts (see {@link SCHEMA_RULE}). */
export function isSchemaName(schema: unknown): schema is string {
  return typeof schema === 'string' && SCHEMA_NAME_PATTERN.test(schema) && !schema.startsWith('pg_');
}

/**
 * The `LISTEN`/`NOTIFY` channel of a schema's change feed. Derived from the schema so that two stores in
 * one database (for example one schema per environment) never hear each other.
 */
export function changeChannel(schema: string): string {
  assertSchemaName(schema);
  return `${schema}_changes`;
}

/** The table in which applied migrations are recorded (inside the store's schema). */
export const MIGRATION_TABLE = 'migrations';
/** The lock table kysely's migrator needs beside it. */
export const MIGRATION_LOCK_TABLE = 'migrations_lock';

function migrationsFor(schema: string): Record<string, Migration> {
  const table = (name: string) => sql.id(schema, name);
  return {
    '0001_initial': {
      async up(db: Kysely<unknown>): Promise<void> {
        // Ids compare bytewise (COLLATE "C"): the binary order every store sorts ids by, and cheaper.
        // fillfactor leaves room on each page so the frequent progress updates stay HOT (no index
        // writes): none of the columns they touch is indexed.
        await sql`
          CREATE TABLE ${table('tasks')} (
            id text COLLATE "C" PRIMARY KEY,
            owner text COLLATE "C" NOT NULL,
            kind text NOT NULL,
            status text NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'cancelled', 'interrupted')),
            total int8 CHECK (total >= 0),
            done int8 NOT NULL CHECK (done >= 0),
            succeeded int8 NOT NULL CHECK (succeeded >= 0),
            failed int8 NOT NULL CHECK (failed >= 0),
            current text,
            message text,
            result json,
            error_code text,
            error_message text,
            seq int8 NOT NULL CHECK (seq >= 0),
            acked_seq int8 NOT NULL CHECK (acked_seq >= 0 AND acked_seq <= seq),
            created_at int8 NOT NULL,
            updated_at int8 NOT NULL,
            finished_at int8,
            lease_owner text,
            lease_expires_at int8
          ) WITH (fillfactor = 80)`.execute(db);
        await sql`CREATE INDEX tasks_owner_created_idx ON ${table('tasks')} (owner, created_at DESC, id DESC)`.execute(
          db,
        );
        await sql`
          CREATE INDEX tasks_lease_expiry_idx ON ${table('tasks')} (lease_expires_at)
          WHERE status = 'running' AND lease_expires_at IS NOT NULL`.execute(db);
        await sql`
          CREATE INDEX tasks_finished_idx ON ${table('tasks')} (finished_at)
          WHERE finished_at IS NOT NULL`.execute(db);
        // No foreign key to tasks: it would run one referential-integrity trigger per inserted event,
        // a large share of the append cost. Events are only written by the store in the transaction
        // that locks and updates their task, and retention deletes them before the task.
        await sql`
          CREATE TABLE ${table('events')} (
            task_id text COLLATE "C" NOT NULL,
            seq int8 NOT NULL CHECK (seq >= 1),
            type text NOT NULL CHECK (type IN ('progress', 'item', 'completed', 'failed', 'cancelled', 'interrupted')),
            time int8 NOT NULL,
            body json NOT NULL,
            xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
            PRIMARY KEY (task_id, seq)
          )`.execute(db);
        await sql`CREATE INDEX events_xid_idx ON ${table('events')} (xid)`.execute(db);
        await sql`
          CREATE VIEW ${table('unprocessed_events')} AS
          SELECT e.task_id, e.seq, e.type, to_timestamp(e.time / 1000.0) AS time,
                 t.owner, t.kind, t.status AS task_status, t.acked_seq, e.body
          FROM ${table('events')} e
          JOIN ${table('tasks')} t ON t.id = e.task_id
          WHERE e.seq > t.acked_seq`.execute(db);
        await sql`
          COMMENT ON VIEW ${table('unprocessed_events')} IS
          'Events no watcher has acknowledged yet (seq > the task''s acked_seq). Acks are cumulative.'`.execute(
          db,
        );
        await sql`
          COMMENT ON COLUMN ${table('events')}.xid IS
          'Writing transaction id; the change feed re-reads from a snapshot xmin after reconnecting.'`.execute(
          db,
        );
      },
    },
    '0002_meta_epoch': {
      async up(db: Kysely<unknown>): Promise<void> {
        // The epoch is born with the schema: seqs of another schema (or of a schema recreated from
        // scratch) mean nothing here. renewEpoch() replaces it after a restore.
        await sql`
          CREATE TABLE ${table('meta')} (
            key text COLLATE "C" PRIMARY KEY,
            value text NOT NULL
          )`.execute(db);
        await sql`
          INSERT INTO ${table('meta')} (key, value)
          VALUES ('epoch', md5(random()::text || clock_timestamp()::text || pg_backend_pid()::text))`.execute(
          db,
        );
      },
    },
    '0003_purged': {
      async up(db: Kysely<unknown>): Promise<void> {
        // A record of each task retention deleted, with the deleting transaction's id: a purge notice is
        // lost with a LISTEN connection that is down, like any notification, and the re-read after the
        // reconnect finds the purges past its mark here (see `listen-connection.ts`). Kept for an hour
        // (`PURGED_RECORD_MS` in `task-statements.ts`); `purged_horizon` in meta is the highest xid of a
        // record deleted since, so a re-read from below it knows it may have missed one.
        await sql`
          CREATE TABLE ${table('purged')} (
            task_id text COLLATE "C" NOT NULL,
            xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
            purged_at int8 NOT NULL,
            -- One purge deletes an id once. A key also gives the table a replica identity: without one, a
            -- publication that includes it (FOR ALL TABLES, CDC tools) makes every DELETE from it fail, and
            -- with it the whole purge statement. The re-read's range scan (xid >= mark) uses it too.
            PRIMARY KEY (xid, task_id)
          )`.execute(db);
        // The expiry of records (purged_at <= now - an hour, oldest first; see `purgeFinished` in
        // `task-statements.ts`), which every purge runs: without it, a scan and sort of the whole table.
        await sql`CREATE INDEX purged_purged_at_idx ON ${table('purged')} (purged_at)`.execute(db);
        await sql`INSERT INTO ${table('meta')} (key, value) VALUES ('purged_horizon', '0')`.execute(db);
      },
    },
  };
}

/** The migration names this version of the package knows, in order. */
export const MIGRATION_NAMES: readonly string[] = Object.freeze(
  Object.keys(migrationsFor('finishline')).sort(),
);

/** Options of {@link migrateProgressSchema}. */
export interface MigrateOptions {
  /** The schema to create or upgrade. @default 'finishline' */
  schema?: string | undefined;
}

const MIGRATE_OPTIONS = {
  // Checked by assertSchemaName, which names the rule.
  schema: option<unknown>('finishline', 'a schema name', () => true),
} satisfies { [K in keyof Required<MigrateOptions>]: unknown };

/**
 * Creates `schema` if needed and applies every migration it lacks, in one transaction. Safe to call
 * from several replicas at once: one waits for another's migration up to an hour, whatever the session's
 * `statement_timeout` or `transaction_timeout`. Returns the names of the migrations it applied (empty when
 * up to date).
 *
 * Give it your `pg.Pool` rather than a Kysely instance on it where you can: each client it uses then gets an
 * `error` listener, as the store's own clients do (`guarded-pool.ts`). pg-pool takes its listener off a
 * client it hands out, and a client whose backend ends while it is out (`pg_terminate_backend`, a server
 * restart, a failover: the migration may wait an hour for another replica's lock) emits `error`, which
 * with no listener ends the process; with one, the migration rejects with `store_unavailable`. A Kysely
 * instance does not show its clients: with one, its pool's clients need that listener from you
 * (`pool.on('connect', (client) => client.on('error', …))`). Either way, the pool's own `error` listener is
 * yours to add (pg-pool emits an idle client's failure on the pool).
 *
 * @throws ProgressError `invalid_input` for a bad schema name, or a `target` that is neither a Kysely
 * instance nor a pool; `store_unavailable` (with the cause) when the database fails or already holds a
 * migration this package does not know (a newer version ran); `store_unavailable`, nothing created, when the
 * database's encoding is not UTF-8 (or `SQL_ASCII`), which every store refuses at `open()`.
 *
 * @example
 * ```ts
 * import pg from 'pg';
 * import { migrateProgressSchema } from '@finishline/postgres';
 *
 * const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL });
 * pool.on('error', (error) => console.error('idle pg client failed', error));
 * await migrateProgressSchema(pool, { schema: 'finishline' });
 * ```
 */
export async function migrateProgressSchema(
  target: Kysely<unknown> | PgPool,
  options: MigrateOptions = {},
): Promise<string[]> {
  // Unknown keys refused, naming the nearest: `{ schemaName: 'tenant_a' }` migrated `finishline` instead.
  const { schema } = resolveOptions('migrateProgressSchema', MIGRATE_OPTIONS, options);
  assertSchemaName(schema);
  // A Kysely instance has transaction(); a pool (pg's, or kysely's PostgresPool shape) has connect() only.
  // (Optional chaining: `null` or `undefined`, a JavaScript caller's pool not made yet, is refused below.)
  if (typeof (target as Partial<Kysely<unknown>> | null | undefined)?.transaction === 'function')
    return migrate(target as Kysely<unknown>, schema);
  if (typeof (target as Partial<PgPool> | null | undefined)?.connect !== 'function') {
    throw new ProgressError(
      ErrorCode.InvalidInput,
      'migrateProgressSchema: give a Kysely instance on Postgres or a pg.Pool',
    );
  }
  // The store's wrapper: guarded clients, and end() does nothing, so destroy() leaves the caller's pool open.
  const db = new Kysely<unknown>({
    dialect: new PostgresDialect({ pool: guardedPool(target as PgPool, { preparedStatements: false }) }),
  });
  try {
    return await migrate(db, schema);
  } finally {
    await db.destroy();
  }
}

/** {@link migrateProgressSchema} on `db`. */
async function migrate(db: Kysely<unknown>, schema: string): Promise<string[]> {
  const migrations = migrationsFor(schema);
  const provider: MigrationProvider = { getMigrations: async () => migrations };
  const run = async (trx: Transaction<unknown>) => {
    // The lock replicas migrating at once queue on, held until this transaction ends. Kysely's Migrator
    // took a session-level lock in one autocommit statement and released it in another: behind a
    // transaction-mode pooler (PgBouncer), the release ran on another server connection, and the lock
    // stayed held by the first one for as long as that lived (the next replica's open() waited up to an
    // hour for it). Waits at most as long as the Migrator's did: bounded by that lock_timeout alone, not by
    // the session's statement_timeout (the pool's, meant for queries), which failed a replica's open() as
    // soon as another's migration took longer than it. Turned off for the wait, in a statement of its own (a
    // statement's timeout is armed as it starts), then set back for the migrations' statements. Likewise the
    // session's transaction_timeout (Postgres 17; read from pg_settings, so an older server, which has no such
    // setting, sets nothing rather than failing), which ended the session of a replica that waited longer
    // than it; off for the whole transaction (its statements are a migration's few DDL statements).
    // The database's encoding too, refused before anything is created (see assertStorableEncoding).
    const { rows } = await sql<{ timeout: string; encoding: string }>`
      SELECT current_setting('statement_timeout') AS timeout,
             current_setting('server_encoding') AS encoding,
             set_config('statement_timeout', '0', true), set_config('lock_timeout', '3600000', true),
             (SELECT count(set_config(name, '0', true)) FROM pg_catalog.pg_settings
              WHERE name = 'transaction_timeout') AS transaction_timeout`.execute(trx);
    assertStorableEncoding(rows[0]?.encoding, 'migrateProgressSchema');
    await sql`SELECT pg_advisory_xact_lock(${sql.lit(MIGRATION_LOCK_ID)})`.execute(trx);
    await sql`SELECT set_config('statement_timeout', ${rows[0]?.timeout ?? '0'}, true)`.execute(trx);
    const migrator = new Migrator({
      db: migratorView(trx, schema),
      provider,
      migrationTableSchema: schema,
      migrationTableName: MIGRATION_TABLE,
      migrationLockTableName: MIGRATION_LOCK_TABLE,
      // The transaction is this one, whose lock already serializes the replicas.
      disableTransactions: true,
    });
    const { error, results } = await migrator.migrateToLatest();
    if (error !== undefined) throw error;
    return results ?? [];
  };
  let results: MigrationResult[];
  try {
    // READ COMMITTED whatever the session's default: a replica that waited for the lock must see the
    // migrations the one before it committed meanwhile, which a snapshot taken at the lock's statement hides.
    results = await lockingTransaction(db).execute(run);
  } catch (error) {
    // The encoding's refusal as it is: its message is the one open() gives.
    if (error instanceof ProgressError) throw error;
    throw new ProgressError(
      ErrorCode.StoreUnavailable,
      `Migrating schema ${schema} failed: ${error instanceof Error ? error.message : String(error)}`,
      { cause: error },
    );
  }
  return results.filter((result) => result.status === 'Success').map((result) => result.migrationName);
}

/** The SQLSTATE of a statement sent in a transaction that failed (`current transaction is aborted`). */
const IN_FAILED_SQL_TRANSACTION = '25P02';

/** The advisory lock of {@link migrateProgressSchema} (kysely's Migrator's, so that versions before agree). */
const MIGRATION_LOCK_ID = 3853314791062309107n;

/**
 * `trx` as kysely's `Migrator` gets it: with an introspector that looks at `schema` alone, which is all the
 * Migrator asks it about (does the schema exist, do its migration tables). Kysely's own lists every table of
 * the database with, for each column, `pg_get_serial_sequence` of its table's name, which looks the name up
 * again outside the query's snapshot: a schema or table that another session dropped meanwhile (another
 * tenant's, another test's) failed it with "schema … does not exist", and `open()` with it. Its
 * `connection()` is the transaction itself (the Migrator asks for one; a kysely transaction refuses), and
 * its adapter takes no lock of its own: the transaction holds {@link MIGRATION_LOCK_ID} already.
 */
function migratorView(trx: Transaction<unknown>, schema: string): Kysely<unknown> {
  const plain = trx.withoutPlugins();
  // Asked whether a schema or table exists after its CREATE failed, in the failed transaction: the
  // question fails too ("current transaction is aborted"), and its error replaced the CREATE's (a
  // permission refused) in what the Migrator reports. Answered "none", the Migrator reports the CREATE's.
  const names = async (query: RawBuilder<{ name: string }>) => {
    try {
      return (await query.execute(plain)).rows;
    } catch (error) {
      if (isDatabaseError(error) && error.code === IN_FAILED_SQL_TRANSACTION) return [];
      throw error;
    }
  };
  const introspection: DatabaseIntrospector = {
    getSchemas: () =>
      names(sql`SELECT nspname AS name FROM pg_catalog.pg_namespace WHERE nspname = ${schema}`),
    async getTables() {
      const rows = await names(
        sql`SELECT tablename AS name FROM pg_catalog.pg_tables WHERE schemaname = ${schema}`,
      );
      return rows.map(({ name }) => ({ name, schema, isView: false, columns: [] }));
    },
    async getMetadata() {
      return { tables: await this.getTables() };
    },
  };
  const executor = trx.getExecutor();
  const adapter: DialectAdapter = Object.create(executor.adapter, {
    acquireMigrationLock: { value: async () => {} },
    releaseMigrationLock: { value: async () => {} },
  });
  const view: Kysely<unknown> = new Proxy(trx, {
    get(target, property) {
      if (property === 'introspection') return introspection;
      if (property === 'connection')
        return () => ({ execute: (run: (db: Kysely<unknown>) => unknown) => run(view) });
      if (property === 'getExecutor') {
        return () =>
          new Proxy(executor, {
            get(inner, key) {
              if (key === 'adapter') return adapter;
              const value: unknown = Reflect.get(inner, key, inner);
              return typeof value === 'function' ? value.bind(inner) : value;
            },
          });
      }
      const value: unknown = Reflect.get(target, property, target);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
  return view;
}
