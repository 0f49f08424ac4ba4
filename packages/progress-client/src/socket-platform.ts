/**
 * What only Node's WebSocket implementations need: reading what `ws` tells about a failure (the HTTP
 * status of a refused upgrade, the network error with its `code`), refusing headers to Node's built-in
 * WebSocket (which cannot send them), and decoding frames handed over as bytes. A browser tells nothing
 * of the kind, sends no headers and hands a binary frame over as a `Blob`, so browser builds use
 * socket-platform.browser.ts instead (the package's `browser` export condition): the same functions
 * without the parts only Node reaches, which keeps them out of a page's bundle.
 *
 * @module
 */
import { decodeFrameWith } from '@finishline/core/internal';
import { type AttemptFailure, unexplainedFailure } from './connect-errors.js';
import { checkServerFrame } from './frame-check.js';

/**
 * Decodes what the socket's `message` event carries: a string, or with some implementations UTF-8 bytes
 * (the protocol lets a receiver accept JSON in a binary frame).
 *
 * @internal
 */
export const decodeSocketData = (data: unknown): ReturnType<typeof checkServerFrame> =>
  decodeFrameWith(data, undefined, checkServerFrame);

/** TLS error codes of Node (OpenSSL's `ERR_SSL_*` and the certificate checks). */
const TLS_CODE = /^(ERR_SSL_|ERR_TLS_|EPROTO$|CERT_|DEPTH_ZERO_|SELF_SIGNED_|UNABLE_TO_(GET|VERIFY)_)/;

/**
 * Reads what a WebSocket implementation says about a failed attempt (its `error` event): `ws` gives the
 * HTTP status of a refused upgrade in its message and the network error (with its `code`) in `error`;
 * browsers and Node's built-in WebSocket say nothing useful.
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
  return unexplainedFailure(message, error);
}

/**
 * Why `impl` cannot be used with upgrade headers named `headerNames`, or `undefined` when it can: Node's
 * own `WebSocket` (undici: global from Node 22, behind `--experimental-websocket` in Node 20) ignores the
 * third constructor argument and so never sends `headers`. `ws` is told apart by its static `Server`; a
 * browser has a `document`.
 *
 * @internal
 */
export function headersProblem(
  impl: new (...args: never[]) => unknown,
  headerNames: string[],
): string | undefined {
  const g = globalThis as {
    process?: { versions?: { node?: string } };
    document?: unknown;
    WebSocket?: unknown;
  };
  const builtin =
    typeof g.process?.versions?.node === 'string' &&
    g.document === undefined &&
    impl === g.WebSocket &&
    !('Server' in impl);
  if (!builtin || headerNames.length === 0) return undefined;
  return (
    `Node's built-in WebSocket cannot send upgrade headers (${headerNames.join(', ')}): ` +
    'pass `WebSocket` from the "ws" package (npm install ws), or authenticate with the `token` option ' +
    '(sent in the first frame)'
  );
}
