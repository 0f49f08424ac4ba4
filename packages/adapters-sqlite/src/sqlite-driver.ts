/**
 * The parts of better-sqlite3 the store calls, described structurally (as kysely describes its drivers)
 * so that neither the store's types nor its callers are tied to one better-sqlite3 version. A
 * better-sqlite3 `Database` satisfies {@link SqliteDatabase} as it is; so does a thin wrapper, which is
 * how the tests count transactions.
 *
 * @module
 */

/** What `Statement.run` returns. */
export interface SqliteRunResult {
  /** Rows inserted, updated or deleted. */
  changes: number | bigint;
  /** Rowid of the last inserted row. */
  lastInsertRowid: number | bigint;
}

/**
 * A prepared statement. The store always passes its positional parameters as one array, which
 * better-sqlite3 binds in order, and calls no other method.
 */
export interface SqliteStatement {
  /** Executes a statement that returns no rows. */
  run(...parameters: unknown[]): SqliteRunResult;
  /** The first row, or `undefined`. */
  get(...parameters: unknown[]): unknown;
  /** Every row. */
  all(...parameters: unknown[]): unknown[];
}

/**
 * A synchronous SQLite connection, for example `new Database(path)` from better-sqlite3.
 *
 * @example
 * ```ts
 * import Database from 'better-sqlite3';
 * import { SqliteProgressStore } from '@finishline/sqlite';
 *
 * const database = new Database('progress.db');
 * const store = new SqliteProgressStore({ database });
 * // …
 * await store.close(); // leaves `database` open: the store closes only what it opened
 * database.close();
 * ```
 */
export interface SqliteDatabase {
  /** Compiles one SQL statement. */
  prepare(sql: string): SqliteStatement;
  /** Closes the connection. Called only on databases the store opened itself. */
  close(): unknown;
  /**
   * True for an in-memory database. No other connection can write to one, so the store does not poll
   * it for other processes' commits. Treated as `false` when absent.
   */
  readonly memory?: boolean;
}
