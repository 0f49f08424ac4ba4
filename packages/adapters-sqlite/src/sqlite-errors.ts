import { ErrorCode, ProgressError } from '@finishline/core';

/**
 * Maps what better-sqlite3 throws to Finishline's error codes (busy and I/O become `store_unavailable`).
 *
 * @module
 */

/**
 * SQLite result codes after which the same call may succeed later: the database is busy or unreachable,
 * or the file at its path is not a database (NOTADB: a wrong path or another tool's file, to be fixed by
 * someone, as a missing directory is; `internal` said it was Finishline's bug).
 */
const TRANSIENT = /^SQLITE_(BUSY|LOCKED|IOERR|FULL|CANTOPEN|READONLY|PROTOCOL|NOMEM|INTERRUPT|NOTADB)/;

/**
 * Turns whatever a SQLite call threw into a {@link ProgressError}: ProgressErrors pass through; busy,
 * locked, I/O and open failures (a file that is not a database included) become `store_unavailable`; a
 * closed connection becomes `store_unavailable` too; anything else `internal`. The original error is kept
 * as `cause`.
 */
export function toProgressError(error: unknown, action: string): ProgressError {
  if (error instanceof ProgressError) return error;
  const code = (error as { code?: unknown } | null)?.code;
  const message = error instanceof Error ? error.message : String(error);
  if (typeof code === 'string' && TRANSIENT.test(code)) {
    return new ProgressError(ErrorCode.StoreUnavailable, `SQLite failed to ${action}: ${message}`, {
      cause: error,
    });
  }
  if (isConnectionClosed(error)) {
    return new ProgressError(ErrorCode.StoreUnavailable, `SQLite failed to ${action}: ${message}`, {
      cause: error,
    });
  }
  return new ProgressError(ErrorCode.Internal, `SQLite failed to ${action}: ${message}`, { cause: error });
}

/**
 * Whether `error` is SQLite's refusal of a row a write breaks a constraint with (`SQLITE_CONSTRAINT` and
 * its extended codes): what a task row damaged by hand makes an append or an interruption fail with (a
 * `seq` behind its log: the next event collides with one the log holds). Writing the other tasks without
 * that one can succeed.
 */
export function isRowRefusal(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' && code.startsWith('SQLITE_CONSTRAINT');
}

/** Whether `error` is better-sqlite3's refusal of a call on a connection that was closed. */
export function isConnectionClosed(error: unknown): boolean {
  return error instanceof TypeError && /database connection is not open/i.test(error.message);
}
