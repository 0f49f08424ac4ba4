import { ErrorCode, isProgressError, ProgressError } from '@finishline/core';

/**
 * Maps what the driver throws to the store's typed errors. A `ProgressError` passes through; a value
 * Postgres refused (SQLSTATE class 22, "data exception", for example a NUL character in a text column) is
 * the caller's `invalid_input`; everything else — refused connections, terminated backends, pool
 * timeouts, deadlocks — is `store_unavailable` with the original error as `cause`, so callers can retry
 * (with a hint to `preparedStatements: false` when the connection lost the store's prepared statements).
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

/**
 * Whether a statement's failure leaves its connection unusable: a server error that ends the session (class
 * 08, connection exception; class 57P, the backend terminated, crashed, shutting down, its database dropped,
 * idle too long; or severity FATAL or PANIC), or a failure of the driver rather than the server (the socket
 * dropped, or `query_timeout` gave up on a statement that may still run on the connection). A backend ended so
 * sends its FATAL before its socket closes, and pg fails the statement on the FATAL but marks the client dead
 * only once it reads the close, which comes in a later read: released in between, as kysely releases a client
 * after a failed autocommit statement, the client went back to the pool as healthy, and the next `connect`
 * (the store's wait for the failed append's rows, `AppendPipeline.#settleUnknown`, asks at once) drew the dead
 * connection again and failed without reaching the database. The store's own pool (`guarded-pool.ts`) releases
 * such a client as broken; a pool behind the caller's Kysely instance (the `db` option) cannot be told.
 */
export function endsConnection(error: unknown): boolean {
  if (!isDatabaseError(error)) return true;
  return (
    error.code.startsWith('08') ||
    error.code.startsWith('57P') ||
    error.severity === 'FATAL' ||
    error.severity === 'PANIC'
  );
}

/**
 * Whether a statement failed because its connection was dead, not because the database did not answer: the
 * server ended its session (57P01 terminated, 57P02 after a crash, 57P05 `idle_session_timeout`), or the
 * driver found its socket closed. Not `query_timeout`, which a database too slow to answer in time would
 * meet again, nor a refused connect (authentication, too many connections, a database dropped).
 */
function foundDeadConnection(error: unknown): boolean {
  if (isDatabaseError(error)) return /^57P0[125]$/.test(error.code);
  const { code, message } = (error ?? {}) as { code?: unknown; message?: unknown };
  return (
    code === 'ECONNRESET' ||
    code === 'EPIPE' ||
    message === 'Connection terminated unexpectedly' ||
    message === 'Client has encountered a connection error and is not queryable'
  );
}

/** How many times {@link readOnLiveConnection} runs a read whose connection turned out dead. */
const READ_TRIES = 3;

/**
 * Runs `read`, a statement that writes nothing, again when its connection turned out dead
 * ({@link foundDeadConnection}), {@link READ_TRIES} times at most. A backend the server ended (`pg_terminate_backend`,
 * `idle_session_timeout`, a failover) sends its FATAL before it closes its socket, and pg marks the client dead
 * only once it reads the close: a read sent on it meanwhile fails; the same read on a live connection does
 * not. The store's own pool releases such a client as broken (`guarded-pool.ts`), so the next try draws
 * another; a pool behind the caller's Kysely instance takes it back as healthy and hands it out first again
 * (its newest idle client), where that try fails on the closed socket, which marks it dead, and the third
 * draws a live one. A database that refuses connections fails every try at once. Not once `closed()`: the
 * store's `close()` destroys the connections it holds past `closeTimeoutMs` (a database that stopped answering),
 * and a read it cut so, sent again, waited on that database once more, on a pool the caller may be ending.
 */
export async function readOnLiveConnection<T>(read: () => Promise<T>, closed: () => boolean): Promise<T> {
  for (let tries = 1; ; tries += 1) {
    try {
      return await read();
    } catch (error) {
      if (tries >= READ_TRIES || !foundDeadConnection(error) || closed()) throw error;
    }
  }
}

/** True when Postgres rejected a value (SQLSTATE class 22): retrying the same input cannot succeed. */
export function isDataException(error: unknown): boolean {
  return isDatabaseError(error) && error.code.startsWith('22');
}

/**
 * True when one row or value of a statement made it fail, not the database or the connection: a value
 * Postgres refuses (class 22), or a constraint the write breaks (class 23; with the task rows locked, only a
 * row damaged by hand does: a `seq` behind its log makes the next event collide with one the log holds).
 * Retrying the statement without that row can succeed.
 */
export function isRowRefusal(error: unknown): boolean {
  return isDatabaseError(error) && (error.code.startsWith('22') || error.code.startsWith('23'));
}

/**
 * True for a serialization failure (SQLSTATE 40001): nothing of the statement was written. An autocommit
 * statement of the store meets one only at a session default stricter than `READ COMMITTED` (see
 * `locking-transaction.ts`), when a row it locks changed after the statement began.
 */
export function isSerializationFailure(error: unknown): boolean {
  return isDatabaseError(error) && error.code === '40001';
}

/** The SQLSTATE of `lock_timeout` (lock_not_available). */
export const LOCK_NOT_AVAILABLE = '55P03';

/**
 * SQLSTATEs of a named prepared statement that the connection does not have (26000) or already has under
 * that name (42P05): what a pooler in transaction mode that does not track prepared statements produces,
 * or a `DEALLOCATE ALL` / `DISCARD ALL` run on the pool's connections.
 */
const LOST_PREPARED_STATEMENT = new Set(['26000', '42P05']);

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
  if (isDatabaseError(error) && LOST_PREPARED_STATEMENT.has(error.code)) {
    return new ProgressError(
      ErrorCode.StoreUnavailable,
      `${what}: ${detail}. The store runs its frequent statements as named prepared statements; a pooler in transaction mode that does not track them (PgBouncer before 1.21), or DEALLOCATE ALL / DISCARD ALL on the pool's connections, loses them: open the store with preparedStatements: false`,
      options,
    );
  }
  return new ProgressError(ErrorCode.StoreUnavailable, `${what}: ${detail}`, options);
}
