import { ErrorCode, ProgressError } from '@finishline/core';

/**
 * The errors the client's connection reports, worded. Mostly what it can tell about a failed connection
 * attempt, for the `unreachable` error: the WebSocket implementation's error read into a cause and a hint
 * of what to check, the text for a socket closed before the server's `hello`, and the error itself; and
 * the error of a frame that could not be decoded, naming its task when it can be told.
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

/** TLS error codes of Node (OpenSSL's `ERR_SSL_*` and the certificate checks). */
const TLS_CODE = /^(ERR_SSL_|ERR_TLS_|EPROTO$|CERT_|DEPTH_ZERO_|SELF_SIGNED_|UNABLE_TO_(GET|VERIFY)_)/;

/**
 * Reads what a WebSocket implementation says about a failed attempt: `ws` gives the HTTP status of a
 * refused upgrade in its message and the network error (with its `code`) in `error`; browsers and
 * Node's built-in WebSocket say nothing useful.
 *
 * @internal
 */
export function describeSocketError(event: { message?: unknown; error?: unknown }): AttemptFailure {
  const error = event?.error instanceof Error ? event.error : undefined;
  const message = String(event?.message ?? error?.message ?? '');
  const status = /Unexpected server response: (\d{3})\b/.exec(message)?.[1];
  if (status !== undefined) {
    const hint =
      status === '404'
        ? " (check the URL's path: it must be the server's `path`, /progress by default)"
        : status === '403'
          ? " (the Origin is not in the server's allowedOrigins: behind a dev proxy, add the page's origin)"
          : status === '401'
            ? ' (no valid credentials at the upgrade)'
            : '';
    return {
      detail: `the server answered the WebSocket upgrade with HTTP ${status}${hint}`,
      status: Number(status),
      cause: error ?? new Error(message),
    };
  }
  const code = (error as { code?: unknown } | undefined)?.code;
  if (typeof code === 'string') {
    if (code === 'ECONNREFUSED')
      return {
        detail: 'connection refused (ECONNREFUSED): nothing listens on that host and port',
        cause: error,
      };
    if (code === 'ENOTFOUND' || code === 'EAI_AGAIN')
      return { detail: `DNS lookup failed (${code}): check the host name`, cause: error };
    if (TLS_CODE.test(code))
      return {
        detail: `TLS handshake failed (${code}): a wss:// URL needs an HTTPS server; use ws:// (or a relative URL) for plain HTTP`,
        cause: error,
      };
    return { detail: `network error (${code}): ${error?.message ?? ''}`, cause: error };
  }
  return {
    detail:
      message === ''
        ? 'the WebSocket failed before the server said hello; this implementation does not say why ' +
          "(browsers never do): check the scheme (ws:// for plain HTTP), host, port and path, and the server's allowedOrigins"
        : `the WebSocket failed: ${message}`,
    ...(error === undefined ? {} : { cause: error }),
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
    `ProgressClient: cannot connect to ${url} (${attempts} failed attempts in a row): ` +
      `${failure.detail}. Retrying in ${Math.round(delayMs)} ms.`,
    failure.cause === undefined ? {} : { cause: failure.cause },
  );
}

/**
 * The error reported for a frame that could not be decoded: an invalid frame names the task it was
 * about, if it can be told, so the client can resync that task (the lost frame may have been one of its
 * events).
 *
 * @internal
 */
export function frameError(error: ProgressError, data: unknown): ProgressError {
  return error.taskId === undefined && error.code === ErrorCode.InvalidFrame
    ? new ProgressError(error.code, error.message, { cause: error, ...taskIdOf(data) })
    : error;
}

function taskIdOf(data: unknown): { taskId?: string } {
  try {
    const frame = JSON.parse(String(data)) as { event?: { taskId?: unknown }; task?: { id?: unknown } };
    const taskId = frame.event?.taskId ?? frame.task?.id;
    return typeof taskId === 'string' ? { taskId } : {};
  } catch {
    return {};
  }
}
