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

/**
 * Runs `run`, whose sends on `socket` leave in one write to the network where the implementation allows
 * it: `ws` keeps its TCP socket in `_socket`, and corking that turns the frames sent meanwhile into one
 * `writev` instead of one each (the terminal ack and the unsubscribe after it; the subscribes after a
 * `hello`). On loopback each write also runs the receiver's TCP path, charged to the writer. Any other
 * implementation just runs `run`.
 *
 * @internal
 */
export function batchSends(socket: object, run: () => void): void {
  const tcp = (socket as { _socket?: { cork?: unknown; uncork?: unknown } })._socket;
  if (typeof tcp?.cork !== 'function' || typeof tcp.uncork !== 'function') {
    run();
    return;
  }
  (tcp.cork as () => void).call(tcp);
  try {
    run();
  } finally {
    (tcp.uncork as () => void).call(tcp);
  }
}

/**
 * How long `bindClose` lets a `ws` socket wait for the server's answering close frame before ending
 * it: a server that answers does so within a round trip, and ws's own wait (`closeTimeout`) is 30 s.
 */
export const CLOSE_GRACE_MS = 1000;

/**
 * Bounds the close handshake of `socket`, just closed. `ws` waits up to 30 s for the server's answering
 * close frame, its TCP socket keeping the process alive: a server that stopped reading (a frozen replica)
 * held `ProgressClient.close()` and the process that long. Past {@link CLOSE_GRACE_MS} a `ws` socket is
 * ended (`terminate()`, which reports the close at once). Node's built-in WebSocket (undici) has no
 * `terminate()` and no limit of its own: it waited for that frame for ever, and `close()` never resolved
 * (nor did the process exit) until 7 December 2026. Its TCP socket, which its response holds (under a
 * symbol), is destroyed instead, which reports the close (1006). Other implementations close as they do.
 *
 * @internal
 */
export function bindClose(socket: object): void {
  const ws = socket as {
    terminate?: () => void;
    once?: (event: 'close', listener: () => void) => unknown;
    addEventListener?: (event: 'close', listener: () => void) => unknown;
  };
  let end = ws.terminate;
  let onClose = ws.once;
  if (typeof end !== 'function' || typeof onClose !== 'function') {
    const held = socket as Record<symbol, { socket?: { destroy?: unknown } } | undefined>;
    const tcp = Object.getOwnPropertySymbols(socket)
      .map((key) => held[key]?.socket)
      .find((candidate) => typeof candidate?.destroy === 'function');
    if (tcp === undefined || typeof ws.addEventListener !== 'function') return;
    end = () => (tcp.destroy as () => void).call(tcp);
    onClose = ws.addEventListener;
  }
  const timer = setTimeout(() => end.call(ws), CLOSE_GRACE_MS);
  onClose.call(ws, 'close', () => clearTimeout(timer));
}

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
