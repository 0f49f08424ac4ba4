import { ErrorCode, ProgressError } from '@finishline/core';
import BetterSqlite3 from 'better-sqlite3';
import type { Kysely } from 'kysely';
import { sql } from 'kysely';
import { PreparedQuery } from './query-builder.js';
import type { SqliteSchema } from './schema.js';
import { TABLES } from './schema.js';
import type { SqliteDatabase } from './sqlite-driver.js';
import { toProgressError } from './sqlite-errors.js';
import type { SqliteSynchronous } from './sqlite-store-options.js';

/**
 * Opening and configuring the SQLite store's connection: the file, WAL, `synchronous` and
 * `busy_timeout`.
 *
 * @module
 */

const SYNCHRONOUS_PRAGMA: Readonly<Record<SqliteSynchronous, string>> = Object.freeze({
  normal: 'PRAGMA synchronous = NORMAL',
  full: 'PRAGMA synchronous = FULL',
  extra: 'PRAGMA synchronous = EXTRA',
});

/** Opens the database file; a file that cannot be opened is `store_unavailable`. */
export function openDatabase(path: string, busyTimeoutMs: number): SqliteDatabase {
  try {
    return new BetterSqlite3(path, { timeout: busyTimeoutMs });
  } catch (error) {
    // better-sqlite3 reports a missing directory as a TypeError without a SQLite code.
    throw new ProgressError(
      ErrorCode.StoreUnavailable,
      `Cannot open SQLite database ${JSON.stringify(path)}: ${error instanceof Error ? error.message : String(error)}`,
      { cause: error },
    );
  }
}

/**
 * What a failure to configure or migrate the database the store opened at `path` throws: its typed
 * error (see `toProgressError`), the message naming the file and SQLite's result code. Without them, a
 * process with several databases, or an operator reading a log, learned only "file is not a database",
 * "database is locked" or "attempt to write a readonly database" (a directory SQLite cannot create the
 * WAL's files in). `path` is `undefined` for a connection the caller passed, whose file the caller knows.
 */
export function openFailure(error: unknown, path: string | undefined): ProgressError {
  const typed = toProgressError(error, 'open the database');
  if (path === undefined) return typed;
  let reason = error instanceof Error ? error.message : String(error);
  if (!(error instanceof ProgressError)) {
    const code = (error as { code?: unknown } | null)?.code;
    if (code === 'SQLITE_READONLY_DIRECTORY') {
      reason = `its directory is not writable, and SQLite creates the -wal and -shm files beside the database (${code})`;
    } else if (typeof code === 'string') {
      reason = `${reason} (${code})`;
    }
  }
  return new ProgressError(typed.code, `Cannot open SQLite database ${JSON.stringify(path)}: ${reason}`, {
    cause: error,
  });
}

/** Sets the busy timeout, WAL (for a file) and `synchronous` on the store's connection. */
export function configureDatabase(
  database: SqliteDatabase,
  builder: Kysely<SqliteSchema>,
  options: { synchronous: SqliteSynchronous; busyTimeoutMs: number },
): void {
  // PRAGMA arguments cannot be bound: the timeout is a validated integer rendered by kysely's literal
  // compiler, the other settings constant text.
  database.prepare(sql`PRAGMA busy_timeout = ${sql.lit(options.busyTimeoutMs)}`.compile(builder).sql).get();
  if (database.memory !== true) {
    const row = database.prepare('PRAGMA journal_mode = WAL').get() as { journal_mode?: string } | undefined;
    if (row?.journal_mode?.toLowerCase() !== 'wal') {
      throw new ProgressError(
        ErrorCode.StoreUnavailable,
        `SQLite refused WAL mode (journal_mode is ${String(row?.journal_mode)})`,
      );
    }
  }
  database.prepare(SYNCHRONOUS_PRAGMA[options.synchronous]).run();
}

/**
 * Refuses a connection that cannot write: a file SQLite opened read-only (it does so silently when the
 * file is not writable by the process: its permissions, a read-only mount), or a connection the caller
 * opened read-only or set `query_only`. A file already at the current schema needs no write to open, so
 * such a store opened, served reads, and failed every write with `store_unavailable`, the retryable
 * outage, for as long as it ran. Run after the migrations: the probe updates `finishline_meta`.
 *
 * The probe is a write that changes no row: SQLite refuses it on a read-only connection before it looks at
 * the write lock, and otherwise commits nothing (no WAL frame, no other connection's `data_version`
 * moved). `BEGIN IMMEDIATE` is no probe: on a read-only file it takes a read transaction and succeeds.
 * With `busy_timeout` 0 it never waits for another connection's write lock: held, it fails busy, which
 * only a connection that may write gets (opening a file at the current schema must not wait for the
 * lock, see `migrate`). Any failure but a refusal is left to the store's writes.
 */
export function assertWritable(
  database: SqliteDatabase,
  builder: Kysely<SqliteSchema>,
  busyTimeoutMs: number,
): void {
  const probe = new PreparedQuery(
    database,
    builder.updateTable(TABLES.meta).set({ value: sql<string>`value` }).where(sql<boolean>`0`),
    [],
  );
  database.prepare('PRAGMA busy_timeout = 0').get();
  try {
    probe.run();
  } catch (error) {
    const code = (error as { code?: unknown } | null)?.code;
    if (typeof code === 'string' && code.startsWith('SQLITE_READONLY')) {
      throw new ProgressError(
        ErrorCode.StoreUnavailable,
        `The connection cannot write (${code}: ${error instanceof Error ? error.message : String(error)}): the file is not writable by this process (its permissions, a read-only mount), or the connection was opened read-only or with query_only`,
        { cause: error },
      );
    }
  } finally {
    // A validated integer, as in configureDatabase.
    database.prepare(sql`PRAGMA busy_timeout = ${sql.lit(busyTimeoutMs)}`.compile(builder).sql).get();
  }
}
