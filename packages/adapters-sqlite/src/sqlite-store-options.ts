import type { Clock, ProgressError } from '@finishline/core';
import { systemClock } from '@finishline/core';
import { invalidOption } from '@finishline/core/internal';
import type { SqliteDatabase } from './sqlite-driver.js';

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
   * `ManualClock.now`. All processes sharing a file should use the same clock source.
   * @default systemClock (`Date.now`)
   */
  clock?: Clock;
  /**
   * Durability of each commit; see {@link SqliteSynchronous}. `normal` loses nothing when the process
   * dies, only (possibly) the last commits when the machine does.
   * @default 'normal'
   */
  synchronous?: SqliteSynchronous;
  /**
   * How long a write waits for another connection's write lock before failing with `store_unavailable`,
   * in milliseconds. better-sqlite3 waits synchronously: keep other writers' transactions short.
   * @default 5000
   */
  busyTimeoutMs?: number;
  /**
   * How often to poll `PRAGMA data_version` for commits by other processes (or other stores in this
   * process) on the same file, in milliseconds; their events are then published on `changes`. `0` turns
   * polling off. In-memory databases are never polled: no other connection can write to them.
   * @default 50
   */
  dataVersionPollMs?: number;
  /**
   * Most appends committed in one transaction. Appends queued beyond it are committed in the next
   * transaction, one event-loop turn later, so a flood cannot block the loop for long.
   * @default 1000
   */
  maxBatchSize?: number;
  /**
   * Receives what a change listener throws and what goes wrong while polling for other processes'
   * commits (the store keeps working either way). Use it to log.
   * @default ignores the error
   */
  onError?: (error: unknown) => void;
}

/** The defaults of {@link SqliteProgressStoreOptions}, merged once at construction. */
export const SQLITE_STORE_DEFAULTS: Readonly<Required<Omit<SqliteProgressStoreOptions, 'database'>>> =
  Object.freeze({
    clock: systemClock,
    synchronous: 'normal',
    busyTimeoutMs: 5000,
    dataVersionPollMs: 50,
    maxBatchSize: 1000,
    onError: () => {},
  });

/** Options with every default applied and checked. */
export type ResolvedSqliteStoreOptions = Required<SqliteProgressStoreOptions>;

const OPTION_NAMES: ReadonlySet<string> = new Set(['database', ...Object.keys(SQLITE_STORE_DEFAULTS)]);
const SYNCHRONOUS: ReadonlySet<string> = new Set(['normal', 'full', 'extra']);

function invalid(message: string): ProgressError {
  return invalidOption('SqliteProgressStore', message);
}

function checkInteger(name: string, value: number, min: number, max: number): void {
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw invalid(`${name} must be an integer from ${min} to ${max}, got ${String(value)}`);
  }
}

/**
 * Merges `options` over {@link SQLITE_STORE_DEFAULTS} and validates the result.
 *
 * @throws ProgressError `invalid_input` naming the first bad option.
 */
export function resolveSqliteStoreOptions(options: SqliteProgressStoreOptions): ResolvedSqliteStoreOptions {
  if (typeof options !== 'object' || options === null) throw invalid('options must be an object');
  for (const name of Object.keys(options)) {
    if (!OPTION_NAMES.has(name)) throw invalid(`unknown option "${name}"`);
  }
  const defined = Object.fromEntries(Object.entries(options).filter(([, value]) => value !== undefined));
  const resolved = { ...SQLITE_STORE_DEFAULTS, ...defined } as ResolvedSqliteStoreOptions;
  const { database } = resolved;
  if (typeof database === 'string') {
    if (database === '' || database.includes('\0')) throw invalid('database must be a non-empty path');
  } else if (typeof database !== 'object' || database === null || typeof database.prepare !== 'function') {
    throw invalid('database must be a file path or a better-sqlite3 Database');
  }
  if (typeof resolved.clock !== 'function') throw invalid('clock must be a function');
  if (typeof resolved.onError !== 'function') throw invalid('onError must be a function');
  if (!SYNCHRONOUS.has(resolved.synchronous)) {
    throw invalid(`synchronous must be 'normal', 'full' or 'extra', got ${String(resolved.synchronous)}`);
  }
  checkInteger('busyTimeoutMs', resolved.busyTimeoutMs, 0, 2_147_483_647);
  checkInteger('dataVersionPollMs', resolved.dataVersionPollMs, 0, 3_600_000);
  checkInteger('maxBatchSize', resolved.maxBatchSize, 1, 100_000);
  return resolved;
}
