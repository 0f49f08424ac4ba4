/**
 * What a client is told of an error the server met while serving it.
 *
 * @module
 */
import type { ProgressError } from '@finishline/core';
import { ErrorCode } from '@finishline/core';

/**
 * The error's message, except for a store failure or an internal error: those carry the store's or the
 * driver's own words (a Postgres adapter's `connect ECONNREFUSED 10.0.3.4:5432`, `password authentication
 * failed for user "…"`, a file path of SQLite), which name the database's address, user and files to any
 * authenticated client. The caller logs the error; the client gets its code and a fixed message.
 */
export function clientMessage(error: ProgressError): string {
  if (error.code === ErrorCode.StoreUnavailable) return 'The store is unavailable; try again';
  if (error.code === ErrorCode.Internal) return 'Internal error';
  return error.message;
}
