import { ErrorCode, ProgressError } from '@finishline/core';
import type { Compilable, Kysely } from 'kysely';
import { sql } from 'kysely';
import { PreparedQuery, param } from './query-builder.js';
import type { SqliteSchema } from './schema.js';
import { TABLES } from './schema.js';
import type { SqliteDatabase } from './sqlite-driver.js';
import { beginImmediate, rollbackQuietly } from './write-lock.js';

/**
 * Versioned schema migrations. The schema is created only here: each migration runs once, in order,
 * inside the transaction that records it in `finishline_migrations`, so a crash mid-migration leaves the
 * previous version intact and two processes opening a new file at once apply each migration once
 * (`BEGIN IMMEDIATE` makes the second wait, then it finds the versions recorded). A database already at
 * the current version is only read, without the write lock: opening a store must not wait for (and,
 * past `busyTimeoutMs`, fail behind) another connection's long write when there is nothing to migrate.
 *
 * A migration, once released, never changes; a schema change is a new version.
 *
 * @module
 */

/** One schema version. */
export interface Migration {
  /** 1, 2, 3 … with no gap. */
  readonly version: number;
  /** snake_case, for the migrations table and for humans. */
  readonly name: string;
  /** The DDL statements, built with kysely's schema builder (no values: DDL takes no parameters). */
  statements(builder: Kysely<SqliteSchema>): Compilable[];
}

/** Every migration of the store, oldest first. */
export const MIGRATIONS: readonly Migration[] = Object.freeze([
  {
    version: 1,
    name: 'create_tasks_and_events',
    statements: (builder) => [
      builder.schema
        .createTable(TABLES.tasks)
        .addColumn('id', 'text', (column) => column.primaryKey().notNull())
        .addColumn('owner', 'text', (column) => column.notNull())
        .addColumn('kind', 'text', (column) => column.notNull())
        .addColumn('status', 'text', (column) => column.notNull())
        .addColumn('total', 'integer')
        .addColumn('done', 'integer', (column) => column.notNull())
        .addColumn('succeeded', 'integer', (column) => column.notNull())
        .addColumn('failed', 'integer', (column) => column.notNull())
        .addColumn('current', 'text')
        .addColumn('message', 'text')
        .addColumn('result', 'text')
        .addColumn('error_code', 'text')
        .addColumn('error_message', 'text')
        .addColumn('seq', 'integer', (column) => column.notNull())
        .addColumn('acked_seq', 'integer', (column) => column.notNull())
        .addColumn('created_at', 'integer', (column) => column.notNull())
        .addColumn('updated_at', 'integer', (column) => column.notNull())
        .addColumn('finished_at', 'integer')
        .addColumn('lease_owner', 'text')
        .addColumn('lease_expires_at', 'integer'),
      // listTasks: one owner's tasks, newest first.
      builder.schema
        .createIndex('finishline_tasks_owner_created')
        .on(TABLES.tasks)
        .columns(['owner', 'created_at desc', 'id desc']),
      // reapExpiredLeases: only running tasks under a lease, oldest expiry first.
      builder.schema
        .createIndex('finishline_tasks_lease_expiry')
        .on(TABLES.tasks)
        .columns(['lease_expires_at', 'id'])
        .where(sql.ref('status'), '=', 'running')
        .where('lease_expires_at', 'is not', null),
      // purgeFinished: only ended tasks, oldest first.
      builder.schema
        .createIndex('finishline_tasks_finished')
        .on(TABLES.tasks)
        .columns(['finished_at', 'id'])
        .where(sql.ref('status'), '<>', 'running'),
      builder.schema
        .createTable(TABLES.events)
        // AUTOINCREMENT: ids are never reused, even after retention deleted the newest rows, so the
        // cross-process high-water mark can never skip a row.
        .addColumn('id', 'integer', (column) => column.primaryKey().autoIncrement())
        .addColumn('task_id', 'text', (column) => column.notNull())
        .addColumn('seq', 'integer', (column) => column.notNull())
        .addColumn('type', 'text', (column) => column.notNull())
        .addColumn('time', 'integer', (column) => column.notNull())
        .addColumn('total', 'integer')
        .addColumn('done', 'integer', (column) => column.notNull())
        .addColumn('succeeded', 'integer', (column) => column.notNull())
        .addColumn('failed', 'integer', (column) => column.notNull())
        .addColumn('current', 'text')
        .addColumn('message', 'text')
        .addColumn('payload', 'text')
        // Also the index of readEvents, and a last line of defence: a second event with the same seq
        // fails the transaction instead of corrupting the log.
        .addUniqueConstraint('finishline_events_task_seq', ['task_id', 'seq']),
    ],
  },
  {
    version: 2,
    name: 'create_operator_views',
    statements: (builder) => [
      builder.schema.createView(TABLES.eventLog).as(
        builder
          .selectFrom(`${TABLES.events} as e`)
          .innerJoin(`${TABLES.tasks} as t`, 't.id', 'e.task_id')
          .select((eb) => [
            'e.task_id',
            'e.seq',
            'e.type',
            'e.time',
            eb('e.seq', '<=', eb.ref('t.acked_seq')).as('processed'),
            't.owner',
            't.kind',
            't.status as task_status',
            't.acked_seq',
            'e.payload',
          ]),
      ),
      builder.schema
        .createView(TABLES.unprocessedEvents)
        .as(
          builder
            .selectFrom(`${TABLES.events} as e`)
            .innerJoin(`${TABLES.tasks} as t`, 't.id', 'e.task_id')
            .select([
              'e.task_id',
              'e.seq',
              'e.type',
              'e.time',
              't.owner',
              't.kind',
              't.status as task_status',
              't.acked_seq',
              'e.payload',
            ])
            .whereRef('e.seq', '>', 't.acked_seq'),
        ),
    ],
  },
  {
    version: 3,
    name: 'create_meta_with_epoch',
    // The epoch is born with the schema: a new database file is a new epoch, and seqs of another file
    // mean nothing here. randomblob() keeps the DDL free of parameters.
    statements: (builder) => [
      builder.schema
        .createTable(TABLES.meta)
        .addColumn('key', 'text', (column) => column.primaryKey().notNull())
        .addColumn('value', 'text', (column) => column.notNull()),
      builder
        .insertInto(TABLES.meta)
        .values({ key: sql.lit('epoch'), value: sql<string>`lower(hex(randomblob(16)))` }),
    ],
  },
]);

/** The schema version this release creates. */
export const SQLITE_SCHEMA_VERSION: number = MIGRATIONS.length;

/**
 * Brings the database to {@link SQLITE_SCHEMA_VERSION}; returns the versions it applied.
 *
 * @throws ProgressError `store_unavailable` when the database was migrated by a newer release (its
 * schema is unknown to this one), `internal` when the recorded versions are not 1..n.
 */
export function migrate(
  database: SqliteDatabase,
  builder: Kysely<SqliteSchema>,
  options: { now: number; busyTimeoutMs?: number; migrations?: readonly Migration[] },
): number[] {
  const migrations = options.migrations ?? MIGRATIONS;
  // A plain read (in WAL it never waits for a writer): when nothing is pending, no write lock is taken.
  // Stale by the time the transaction below starts, so it decides only whether to start one.
  if (pendingMigrations(database, builder, migrations).length === 0) return [];
  const run = (query: Compilable) => new PreparedQuery(database, query, []).run();
  const begin = database.prepare('BEGIN IMMEDIATE');
  const commit = database.prepare('COMMIT');
  // Waits for another process's write lock as the store's write transactions do: SQLite's busy handler
  // gave up beside a process that commits back to back.
  beginImmediate(database, () => begin.run(), options.busyTimeoutMs ?? 0);
  try {
    run(
      builder.schema
        .createTable(TABLES.migrations)
        .ifNotExists()
        .addColumn('version', 'integer', (column) => column.primaryKey().notNull())
        .addColumn('name', 'text', (column) => column.notNull())
        .addColumn('applied_at', 'integer', (column) => column.notNull()),
    );
    // Read again under the write lock: another process may have migrated since the read above.
    const pending = pendingMigrations(database, builder, migrations);
    const record = new PreparedQuery(
      database,
      builder
        .insertInto(TABLES.migrations)
        .values({ version: param('version'), name: param('name'), applied_at: param('appliedAt') }),
      ['version', 'name', 'appliedAt'],
    );
    const done: number[] = [];
    for (const migration of pending) {
      for (const statement of migration.statements(builder)) run(statement);
      record.run({ version: migration.version, name: migration.name, appliedAt: options.now });
      done.push(migration.version);
    }
    commit.run();
    return done;
  } catch (error) {
    rollbackQuietly(database);
    throw error;
  }
}

/**
 * The migrations the database lacks, from its `finishline_migrations` table (all of them when there is
 * none yet).
 *
 * @throws ProgressError as {@link migrate}.
 */
function pendingMigrations(
  database: SqliteDatabase,
  builder: Kysely<SqliteSchema>,
  migrations: readonly Migration[],
): readonly Migration[] {
  // sqlite_master is not in the kysely schema; the query is constant text with bound names.
  const table = database
    .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?")
    .get(TABLES.migrations);
  if (table === undefined) return migrations;
  const rows = new PreparedQuery(
    database,
    builder.selectFrom(TABLES.migrations).select('version').orderBy('version'),
    [],
  ).all() as { version: number | bigint }[];
  const applied = rows.map((row) => Number(row.version));
  if (applied.some((version, index) => version !== index + 1)) {
    throw new ProgressError(
      ErrorCode.Internal,
      `The ${TABLES.migrations} table records versions [${applied}], expected 1..n without gaps`,
    );
  }
  if (applied.length > migrations.length) {
    throw new ProgressError(
      ErrorCode.StoreUnavailable,
      `The database has schema version ${applied.length}, newer than the ${migrations.length} this ` +
        '@finishline/sqlite knows; upgrade the package',
    );
  }
  return migrations.slice(applied.length);
}
