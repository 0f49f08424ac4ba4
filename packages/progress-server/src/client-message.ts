/**
 * What a client is told of an error the server met while serving it.
 *
 * @module
 */
import type { ProgressError } from '@finishline/core';
import { ErrorCode } from '@finishline/core';

/** The fixed message of a `store_unavailable` answer. */
const STORE_UNAVAILABLE_MESSAGE = 'The store is unavailable; try again';

/**
 * Whether `error`, met in a store call made for a client, is the store's failure (logged and counted in
 * `store_errors_total`) rather than an answer about the request (`invalid_input`, `task_not_found`, …).
 * `closed` is one: the store was closed under the running server (an application closing it before the
 * server at shutdown), which the client can do nothing about but retry, elsewhere.
 */
export function isStoreFailure(error: ProgressError): boolean {
  return (
    error.code === ErrorCode.StoreUnavailable ||
    error.code === ErrorCode.Internal ||
    error.code === ErrorCode.Closed
  );
}

/**
 * The code and message a client gets for `error`. Store failures and internal errors carry the store's or
 * the driver's own words (a Postgres adapter's `connect ECONNREFUSED 10.0.3.4:5432`, `password
 * authentication failed for user "…"`, a file path of SQLite), which name the database's address, user
 * and files to any authenticated client: the caller logs the error, and the client gets its code and a
 * fixed message. A store's `closed` is answered `store_unavailable`: `closed` on the wire means the server
 * itself is shutting down (docs/protocol.md: never in `error` frames; the HTTP 503 of a shutdown), which
 * the server answers itself before any store call. Any other code is the caller's answer, kept as it is.
 */
export function clientError(error: ProgressError): { code: ErrorCode; message: string } {
  if (error.code === ErrorCode.StoreUnavailable || error.code === ErrorCode.Closed) {
    return { code: ErrorCode.StoreUnavailable, message: STORE_UNAVAILABLE_MESSAGE };
  }
  if (error.code === ErrorCode.Internal) return { code: ErrorCode.Internal, message: 'Internal error' };
  return { code: error.code, message: error.message };
}
