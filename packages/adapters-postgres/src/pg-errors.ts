import { ErrorCode, isProgressError, ProgressError } from '@finishline/core';

/**
 * Maps what the driver throws to the store's typed errors. A `ProgressError` passes through; a value
 * Postgres refused (SQLSTATE class 22, "data exception", for example a NUL character in a text column) is
 * the caller's `invalid_input`; everything else — refused connections, terminated backends, pool
 * timeouts, deadlocks — is `store_unavailable` with the original error as `cause`, so callers can retry.
 *
 * @module
 */

/** The part of a `pg` `DatabaseError` this module reads. */
interface PgDatabaseErrorLike {
  /** The five-character SQLSTATE. */
  code: string;
  /** Present on errors the server reported (absent on socket errors such as `ECONNREFUSED`). */
  severity: string;
  message: string;
}

/** True for an error the Postgres server reported, as opposed to a network or driver failure. */
export function isDatabaseError(error: unknown): error is PgDatabaseErrorLike {
  if (typeof error !== 'object' || error === null) return false;
  const record = error as Record<string, unknown>;
  return (
    typeof record.code === 'string' &&
    /^[0-9A-Z]{5}$/.test(record.code) &&
    typeof record.severity === 'string'
  );
}

/** True when Postgres rejected a value (SQLSTATE class 22): retrying the same input cannot succeed. */
export function isDataException(error: unknown): boolean {
  return isDatabaseError(error) && error.code.startsWith('22');
}

/** Converts anything thrown by a database call into a {@link ProgressError}. */
export function toProgressError(error: unknown, what: string, taskId?: string): ProgressError {
  if (isProgressError(error)) return error;
  const options = taskId === undefined ? { cause: error } : { cause: error, taskId };
  const detail = error instanceof Error ? error.message : String(error);
  if (isDataException(error)) {
    return new ProgressError(
      ErrorCode.InvalidInput,
      `${what}: Postgres rejected a value (${detail})`,
      options,
    );
  }
  return new ProgressError(ErrorCode.StoreUnavailable, `${what}: ${detail}`, options);
}
