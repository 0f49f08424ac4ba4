import type { Clock } from '@finishline/core';
import type { ResolvedOptionsOf } from '@finishline/core/internal';
import {
  defaultsOf,
  func,
  integer,
  ofType,
  oneOf,
  required,
  resolveOptions,
  storeClockOption,
} from '@finishline/core/internal';
import type { SqliteDatabase } from './sqlite-driver.js';

/**
 * The SQLite store's options: the public interface carries their documentation, one table their
 * defaults and checks (the options toolkit of `@finishline/core/internal`).
 *
 * @module
 */

/**
 * SQLite's `synchronous` setting in WAL mode — what a commit survives:
 * - `normal`: a commit survives the process crashing (it is in the WAL, handed to the OS), but an OS
 *   crash or power loss may undo the last transactions before the next checkpoint. The database is
 *   never corrupted. No fsync per commit.
 * - `full`: the WAL is fsynced at every commit, so a commit also survives power loss. Group commit pays
 *   that fsync once per batch, not per append.
 * - `extra`: like `full`, and also syncs the directory after the WAL is reset.
 */
export type SqliteSynchronous = 'normal' | 'full' | 'extra';

/** Where the store's WAL checkpoints run; see {@link SqliteProgressStoreOptions.checkpoints}. */
export type SqliteCheckpoints = 'background' | 'inline';

/** Options of {@link SqliteProgressStore}. */
export interface SqliteProgressStoreOptions {
  /**
   * A file path (or `':memory:'`), which the store opens with better-sqlite3 and closes in `close()`;
   * or a better-sqlite3 `Database` you opened, which the store configures (WAL, `synchronous`,
   * `busy_timeout`) and migrates but never closes. Required.
   */
  database: string | SqliteDatabase;
  /**
   * Source of every timestamp (creation, events, lease expiry, retention age). Tests pass
   * `ManualClock.now`. All processes sharing a file should use the same clock source. Read in whole
   * milliseconds: a fraction is dropped, and a value that is no time (`NaN`, negative), or a throw,
   * rejects the call with `internal`.
   * @default systemClock (`Date.now`)
   */
  clock?: Clock | undefined;
  /**
   * Durability of each commit; see {@link SqliteSynchronous}. `normal` loses nothing when the process
   * dies, only (possibly) the last commits when the machine does.
   * @default 'normal'
   */
  synchronous?: SqliteSynchronous | undefined;
  /**
   * How long a write waits for another connection's write lock before failing with `store_unavailable`,
   * in milliseconds. better-sqlite3 waits synchronously: keep other writers' transactions short.
   * @default 5000
   */
  busyTimeoutMs?: number | undefined;
  /**
   * How often to poll `PRAGMA data_version` for commits by other processes (or other stores in this
   * process) on the same file, in milliseconds; their events are then published on `changes`. `0` turns
   * polling off. In-memory databases are never polled: no other connection can write to them.
   * @default 50
   */
  dataVersionPollMs?: number | undefined;
  /**
   * Most appends committed in one transaction. Appends queued beyond it are committed in the next
   * transaction, one event-loop turn later, so a flood cannot block the loop for long.
   * @default 1000
   */
  maxBatchSize?: number | undefined;
  /**
   * Where WAL checkpoints run (copying the WAL back into the database file):
   * - `'background'`: on a worker thread with its own connection, once the store's commits changed
   *   1,000 rows since the last one, at most every 20 ms (`PRAGMA wal_checkpoint(PASSIVE)`, which blocks
   *   neither the store's reads nor its writes), followed by a `TRUNCATE` one (waiting at most 200 ms, writers
   *   held back meanwhile) once the WAL holds 10,000 pages, which other processes' reads and writes can keep
   *   passive ones from starting over; the thread starts with the first checkpoint. The store's commits then never stall the event loop for a
   *   checkpoint; measured with 1,000 tasks appending at once, 105–117k appends/s against 86–92k
   *   inline (see the README). The store's connection keeps `wal_autocheckpoint` at 10,000 pages as a safety net, and
   *   goes back to checkpointing inline (reported on `onError`, once per streak of failures) if the worker
   *   fails, until a new worker, started by a checkpoint at least 1 s later (doubling to 5 min while they
   *   keep failing), runs again.
   * - `'inline'`: in the commit that takes the WAL past SQLite's `wal_autocheckpoint` (1,000 pages),
   *   on the event loop, as SQLite does by default.
   * A database in memory has no WAL; a temporary one (`''`) cannot be opened by a second connection:
   * both are checkpointed inline whatever this says.
   * @default 'background'
   */
  checkpoints?: SqliteCheckpoints | undefined;
  /**
   * Receives what a change listener throws (or its promise rejects with), what goes wrong while polling
   * for other processes' commits (once per streak of failed polls: again only after a poll succeeded),
   * the background checkpoint worker's failures, a task row the lease reaper could not read or interrupt
   * (its `seq` behind its log: it drops that row's expired lease; `internal`, with its `taskId`), and a task row `listTasks` could not read (it
   * leaves the row out of its lists, reported once per store); the store keeps working either way. Use it to
   * log. It is called from timers and a worker thread's listeners, where nothing could catch a throw but
   * the process's `uncaughtException`: what it throws is caught instead, the first time reported as a
   * process warning (`process.emitWarning`, code `FINISHLINE_SQLITE_ON_ERROR_THREW`, with the error it
   * was reporting), later times dropped.
   * @default ignores the error
   */
  onError?: ((error: unknown) => void) | undefined;
}

/** One description per option of {@link SqliteProgressStoreOptions}: its default and its check. */
const SQLITE_STORE_OPTIONS = {
  database: required(
    ofType<string | SqliteDatabase>('a non-empty path or a better-sqlite3 Database', (value) =>
      typeof value === 'string'
        ? value !== '' && !value.includes('\0')
        : typeof value === 'object' &&
          value !== null &&
          typeof (value as SqliteDatabase).prepare === 'function',
    ),
  ),
  // Read in whole milliseconds (see wholeMillisecondClock).
  clock: storeClockOption(),
  synchronous: oneOf<SqliteSynchronous>('normal', ['normal', 'full', 'extra']),
  busyTimeoutMs: integer(5000, 0, 2_147_483_647),
  dataVersionPollMs: integer(50, 0, 3_600_000),
  maxBatchSize: integer(1000, 1, 100_000),
  checkpoints: oneOf<SqliteCheckpoints>('background', ['background', 'inline']),
  onError: func<(error: unknown) => void>(() => {}),
} satisfies { [K in keyof Required<SqliteProgressStoreOptions>]: unknown };

/** The defaults of {@link SqliteProgressStoreOptions}, merged once at construction. */
export const SQLITE_STORE_DEFAULTS: {
  readonly [K in Exclude<keyof SqliteProgressStoreOptions, 'database'>]-?: Exclude<
    SqliteProgressStoreOptions[K],
    undefined
  >;
} = (({ database: _, ...defaults }) => Object.freeze(defaults))(defaultsOf(SQLITE_STORE_OPTIONS));

/** Options with every default applied and checked. */
export type ResolvedSqliteStoreOptions = ResolvedOptionsOf<typeof SQLITE_STORE_OPTIONS>;

/**
 * Merges `options` over {@link SQLITE_STORE_DEFAULTS} and validates the result.
 *
 * @throws ProgressError `invalid_input` naming the first bad option.
 */
export function resolveSqliteStoreOptions(options: SqliteProgressStoreOptions): ResolvedSqliteStoreOptions {
  return resolveOptions('SqliteProgressStore', SQLITE_STORE_OPTIONS, options);
}
