import type { SqliteDatabase } from './sqlite-driver.js';

/**
 * Taking SQLite's write lock (`BEGIN IMMEDIATE`) beside other connections that write: every write of the
 * store goes through {@link beginImmediate}, its write transactions, its migrations and its renewal of the
 * epoch after a restore alike.
 *
 * @module
 */

/**
 * How long `BEGIN IMMEDIATE` sleeps between two looks at a write lock another connection holds, in
 * milliseconds. SQLite's own busy handler looks after 1, 2, 5, 10 … then every 100 ms, some 60 times in
 * the default 5 s: a process that commits back to back (an append loop) holds the lock at nearly every one
 * of those instants, and another process's write failed with "database is locked" although the lock was
 * free between each of the first one's commits. Looking every millisecond, a waiter lands in one of those
 * gaps.
 */
export const WRITE_LOCK_POLL_MS = 1;

/** Sleeps the thread: the wait is synchronous, as SQLite's busy handler is. */
const sleeper = new Int32Array(new SharedArrayBuffer(4));

/** Whether `error` is SQLite's refusal of a lock another connection holds (`SQLITE_BUSY` and extended codes). */
export function isBusy(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^SQLITE_BUSY(_|$)/.test(code);
}

/**
 * Runs one statement that returns a row or none, prepared anew: SQLite applies `PRAGMA busy_timeout = N`
 * when it compiles it, so a prepared one run again changes nothing. better-sqlite3's `exec` when there is
 * one (a fifth of the cost), `prepare` otherwise (a wrapper).
 */
function execute(database: SqliteDatabase, text: string): void {
  const exec = (database as { exec?: unknown }).exec;
  if (typeof exec === 'function') exec.call(database, text);
  else database.prepare(text).get();
}

/**
 * Runs `begin` (a `BEGIN IMMEDIATE`), waiting up to `busyTimeoutMs` for another connection's write lock by
 * looking at it every {@link WRITE_LOCK_POLL_MS} (see there why not with SQLite's busy handler, which is
 * off meanwhile). The connection's `busy_timeout` (`busyTimeoutMs`) is back when this returns or throws,
 * and a transaction begun is rolled back if it cannot be put back.
 */
export function beginImmediate(database: SqliteDatabase, begin: () => void, busyTimeoutMs: number): void {
  if (busyTimeoutMs === 0) {
    begin();
    return;
  }
  // A validated integer (see the options): PRAGMA arguments cannot be bound.
  const busyWait = `PRAGMA busy_timeout = ${Math.trunc(busyTimeoutMs)}`;
  execute(database, 'PRAGMA busy_timeout = 0');
  try {
    let deadline: number | undefined;
    for (;;) {
      try {
        begin();
        break;
      } catch (error) {
        if (!isBusy(error)) throw error;
        const now = performance.now();
        deadline ??= now + busyTimeoutMs;
        if (now >= deadline) throw error;
        Atomics.wait(sleeper, 0, 0, Math.min(WRITE_LOCK_POLL_MS, deadline - now));
      }
    }
  } catch (error) {
    try {
      execute(database, busyWait);
    } catch {
      // The error to report is the one of BEGIN.
    }
    throw error;
  }
  try {
    execute(database, busyWait);
  } catch (error) {
    rollbackQuietly(database);
    throw error;
  }
}

/** Rolls back the open transaction, if any; a failed rollback must not hide the original error. */
export function rollbackQuietly(database: SqliteDatabase): void {
  try {
    database.prepare('ROLLBACK').run();
  } catch {
    // No transaction was open (SQLite already rolled it back) — nothing to undo.
  }
}
