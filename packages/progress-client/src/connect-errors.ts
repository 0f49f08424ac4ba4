import { ErrorCode, ProgressError } from '@finishline/core';

/**
 * The errors the client's connection reports, worded: the text for a socket closed before the server's
 * `hello` and the `unreachable` error (what the WebSocket implementation's own error tells is read in
 * socket-platform.ts); and the error of a frame that could not be decoded, naming its task when it can
 * be told.
 *
 * @module
 */

/** Why one connection attempt failed. @internal */
export interface AttemptFailure {
  /** For the error message: what happened and, where it can be told, what to check. */
  detail: string;
  /** The HTTP status a refused upgrade was answered with. */
  status?: number;
  /** The WebSocket implementation's own error. */
  cause?: unknown;
}

/**
 * A failed attempt the implementation gave no reason for that the client can read: its message if it
 * has one, else what to check.
 *
 * @internal
 */
export function unexplainedFailure(message: string, error: Error | undefined): AttemptFailure {
  return {
    detail:
      message === ''
        ? 'the WebSocket failed before the server said hello; this implementation does not say why ' +
          "(browsers never do): check the scheme (ws:// for plain HTTP), host, port and path, and the server's allowedOrigins"
        : `the WebSocket failed: ${message}`,
    cause: error,
  };
}

/**
 * The socket closed before the server's `hello` and the implementation said nothing else: what the close
 * code tells (1006 tells nothing, so the message lists what to check).
 *
 * @internal
 */
export function describeEarlyClose(code: number, reason: string): AttemptFailure {
  return {
    detail:
      code === 1006
        ? 'the socket closed (1006) before the server said hello; this WebSocket implementation does not ' +
          'say why (browsers never do): check the scheme (ws:// for plain HTTP), host, port and path, and ' +
          "the server's allowedOrigins"
        : `the server closed the socket before its hello (${code}${reason === '' ? '' : `: ${reason}`})`,
  };
}

/**
 * The `unreachable` error of `attempts` failed attempts in a row, the latest failing with `failure`.
 *
 * @internal
 */
export function unreachableError(
  url: string,
  attempts: number,
  failure: AttemptFailure,
  delayMs: number,
): ProgressError {
  return new ProgressError(
    ErrorCode.Unreachable,
    // Without its query string: a server's `tokenQueryParam` takes the access token there, and this
    // message goes to the application's logs.
    `ProgressClient: cannot connect to ${url.split('?', 1)} (${attempts} failed attempts in a row): ` +
      `${failure.detail}. Retrying in ${Math.round(delayMs)} ms.`,
    // (ProgressError leaves out a cause that is undefined.)
    failure,
  );
}
