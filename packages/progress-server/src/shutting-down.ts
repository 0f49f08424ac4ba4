/**
 * The error of work refused because the server is shutting down.
 *
 * @module
 */
import { ErrorCode, ProgressError } from '@finishline/core';

/**
 * A new `closed` error for work the server refuses once `close()` began: a task created, a stream
 * started, a store read waiting its turn. New each time: a thrown error carries its own stack.
 */
export function shuttingDown(): ProgressError {
  return new ProgressError(ErrorCode.Closed, 'The server is shutting down');
}
