import type { ClientFrame, HelloFrame, ServerFrame } from '@finishline/core';
import {
  CloseCode,
  ErrorCode,
  FATAL_CLOSE_CODES,
  PROTOCOL_NAME,
  PROTOCOL_NAME_V1,
  PROTOCOL_VERSION,
  ProgressError,
} from '@finishline/core';
import { backoffDelayMs, decodeServerFrame, encodeFrame } from '@finishline/core/internal';
import type { ResolvedOptions, WebSocketLike } from './options.js';
import { Timeout, type TimerSet } from './timers.js';

/**
 * The socket's lifecycle: lazy connect, authentication, the heartbeat watchdog, reconnects with
 * full-jitter backoff, and the fatal close codes that end it all.
 *
 * @module
 */

/**
 * The client's connection state:
 * - `idle`: no socket and none needed (no unfinished watch);
 * - `connecting`: the first socket is opening;
 * - `open`: the server said `hello`; watches are subscribed;
 * - `reconnecting`: the socket was lost; waiting for the backoff delay or opening a new one;
 * - `closed`: `close()` was called, or the server refused the client for good (a fatal close code).
 */
export type ConnectionState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';

/** The payload of the client's `state` event. */
export interface StateChange {
  state: ConnectionState;
  /** Why, for logs: `watch`, `hello`, `closed by server (1001)`, `heartbeat timeout`, … */
  reason: string;
  /** The close code of the socket that was lost, if any. */
  closeCode?: number;
  /** For `reconnecting` after a loss: the backoff delay before the next attempt. */
  delayMs?: number;
  /** For a fatal `closed`: the error every watch ended with. */
  error?: ProgressError;
}

/** What the connection reports to its owner. @internal */
export interface ConnectionHandler {
  /** A socket is ready (after `hello`): subscribe. */
  onHello(hello: HelloFrame): void;
  /** Any frame but `hello`. */
  onFrame(frame: ServerFrame): void;
  /** The ready socket was lost; a reconnect follows if {@link wantsSocket}. */
  onDown(): void;
  /** The server closed with a fatal code: nothing will work with these credentials. */
  onFatal(error: ProgressError): void;
  /** Connection attempts keep failing: serve the watches over HTTP meanwhile. */
  onUnreachable(): void;
  onState(change: StateChange): void;
  /** A recoverable problem (an invalid frame, a token provider that threw), for the `error` event. */
  onError(error: ProgressError): void;
  /** True while some watch needs a socket. */
  wantsSocket(): boolean;
}

const OPEN = 1;
/** Newest first: a server selects the newest it speaks, an older one still finds version 1. */
const OFFERED_PROTOCOLS = [PROTOCOL_NAME, PROTOCOL_NAME_V1];
const CLOSED = 3;
const noop = (): void => undefined;

const FATAL_ERRORS: Readonly<Record<number, ErrorCode>> = {
  [CloseCode.Unauthenticated]: ErrorCode.Unauthenticated,
  [CloseCode.UnsupportedProtocol]: ErrorCode.UnsupportedProtocol,
  [CloseCode.ForbiddenOrigin]: ErrorCode.Forbidden,
};

/** @internal */
export class Connection {
  readonly #o: ResolvedOptions;
  readonly #handler: ConnectionHandler;
  /**
   * The one deadline of the current socket: the connect timeout, a ping's deadline, or the heartbeat
   * watchdog. Set through {@link #deadline} (or cleared through {@link #noDeadline}), never directly,
   * so `#watchingHeartbeat` stays true.
   */
  readonly #liveness: Timeout;
  /** The deadline is the heartbeat watchdog, which frames push back through `#lastFrameAt`. */
  #watchingHeartbeat = false;
  /** When the ready socket last delivered a frame (clock ms). */
  #lastFrameAt = 0;
  readonly #reconnect: Timeout;
  #socket: WebSocketLike | undefined;
  #ready = false;
  #state: ConnectionState = 'idle';
  /** Reconnects since the last stable connection: the backoff exponent. */
  #failures = 0;
  /** The quick first retry was spent since the last stable connection (so flapping backs off). */
  #quickRetryUsed = false;
  /** The current socket's `hello` asked for this spread of the first retry after a loss. */
  #serverFirstDelayMs = 0;
  /** The socket that was just lost had said `hello`: its loss may be retried quickly. */
  #lostReady = false;
  /** Attempts since the last `hello`: when HTTP takes over. */
  #unreachable = 0;
  /** A socket was closed for an expired credential and no `hello` came since: the next one is fatal. */
  #retriedExpiredToken = false;
  #readyAt = 0;
  #heartbeatTimeoutMs = 0;
  /** The close code an upgrade refused with HTTP 401/403 stands for. */
  #refusedWith: number | undefined;
  /** Why the current attempt failed, as far as the WebSocket implementation tells. */
  #attemptFailure: AttemptFailure | undefined;

  constructor(options: ResolvedOptions, timers: TimerSet, handler: ConnectionHandler) {
    this.#o = options;
    this.#handler = handler;
    this.#liveness = new Timeout(timers);
    this.#reconnect = new Timeout(timers);
  }

  get state(): ConnectionState {
    return this.#state;
  }

  /** True after `hello` on the current socket. */
  get ready(): boolean {
    return this.#ready;
  }

  /**
   * Renews the credential of the open socket without reconnecting (protocol version 2): calls the token
   * function and sends an `auth` frame; the server answers with a new `hello`. Resolves `false` when
   * there is no open version-2 socket or no token function (the next connection uses a fresh token
   * anyway).
   */
  async renewToken(): Promise<boolean> {
    const token = this.#o.token;
    const socket = this.#socket;
    if (typeof token !== 'function' || socket === undefined || !this.#ready) return false;
    if (socket.protocol === PROTOCOL_NAME_V1) return false;
    const credential = await token();
    if (socket !== this.#socket || socket.readyState !== OPEN) return false;
    socket.send(encodeFrame({ type: 'auth', token: credential, protocol: PROTOCOL_VERSION }));
    return true;
  }

  /** Opens a socket if there is none and none is scheduled (connect lazily, on the first watch). */
  ensure(reason: string): void {
    if (this.#state === 'idle') this.#connect(reason);
  }

  /** Sends a frame on the ready socket; false when there is none (the reconnect will resend state). */
  send(frame: ClientFrame): boolean {
    const socket = this.#socket;
    if (!this.#ready || socket === undefined || socket.readyState !== OPEN) return false;
    try {
      socket.send(encodeFrame(frame));
      return true;
    } catch {
      return false;
    }
  }

  /** Drops the socket and opens a new one at once (the 100% watchdog suspects this replica). */
  reconnectNow(reason: string): void {
    if (this.#state === 'closed') return;
    if (this.#socket !== undefined && !this.#ready) return; // already opening a fresh one
    this.#drop(CloseCode.Normal, reason);
    this.#down();
    this.#connect(reason);
  }

  /**
   * The socket may have died unseen (the page woke, the network came back). A ready socket must answer
   * a ping within `deadlineMs` (any frame will do) or it is replaced at once; a reconnect waiting out
   * its backoff goes now, since the cause of the failures may be what just ended. True when the socket
   * is ready, so the caller can resync over it.
   */
  check(reason: string, deadlineMs: number): boolean {
    if (this.#state === 'closed' || this.#state === 'idle') return false;
    if (this.#ready) {
      this.send({ type: 'ping' });
      this.#deadline(deadlineMs, () => {
        this.#drop(CloseCode.HeartbeatTimeout, `no answer after ${reason}`);
        this.#down();
        this.#connect(reason);
      });
      return true;
    }
    if (this.#reconnect.pending) this.#connect(reason);
    return false;
  }

  /** Closes for good; resolves once the socket reported its close. */
  close(): Promise<void> {
    const socket = this.#socket;
    this.#socket = undefined;
    this.#ready = false;
    this.#noDeadline();
    this.#reconnect.clear();
    this.#setState({ state: 'closed', reason: 'client closed' });
    if (socket === undefined || socket.readyState === CLOSED) return Promise.resolve();
    return new Promise<void>((resolve) => {
      socket.onopen = null;
      socket.onmessage = null;
      socket.onerror = noop;
      socket.onclose = () => resolve();
      try {
        socket.close(CloseCode.Normal, 'client closed');
      } catch {
        resolve();
      }
    });
  }

  #deadline(delayMs: number, callback: () => void): void {
    this.#watchingHeartbeat = false;
    this.#liveness.set(delayMs, callback);
  }

  #noDeadline(): void {
    this.#watchingHeartbeat = false;
    this.#liveness.clear();
  }

  /** Fires `heartbeatTimeoutMs` after the latest frame, re-arming itself for what is left until then. */
  #watchHeartbeat(delayMs: number): void {
    this.#watchingHeartbeat = true;
    this.#liveness.set(delayMs, () => {
      this.#watchingHeartbeat = false;
      const left = this.#lastFrameAt + this.#heartbeatTimeoutMs - this.#o.clock();
      if (left > 0) this.#watchHeartbeat(left);
      else this.#timeout('heartbeat timeout');
    });
  }

  /** Reports a state change; `again` reports a repeated state too (a new reconnect delay). */
  #setState(change: StateChange, again = false): void {
    if ((this.#state === change.state && !again) || this.#state === 'closed') return;
    this.#state = change.state;
    this.#handler.onState(change);
  }

  #connect(reason: string): void {
    this.#reconnect.clear();
    if (this.#state === 'closed') return;
    if (!this.#handler.wantsSocket()) {
      this.#setState({ state: 'idle', reason: 'no unfinished watch' });
      return;
    }
    this.#setState({ state: this.#state === 'idle' ? 'connecting' : 'reconnecting', reason });
    let socket: WebSocketLike;
    try {
      const headers = { ...this.#o.headers };
      // The third argument only where there are headers: browsers' WebSocket takes two.
      socket =
        Object.keys(headers).length > 0
          ? new this.#o.WebSocket(this.#o.url, OFFERED_PROTOCOLS, { headers })
          : new this.#o.WebSocket(this.#o.url, OFFERED_PROTOCOLS);
    } catch (cause) {
      this.#handler.onError(new ProgressError(ErrorCode.Internal, 'Could not create a WebSocket', { cause }));
      this.#lost('could not create a socket', undefined);
      return;
    }
    this.#socket = socket;
    this.#ready = false;
    this.#attemptFailure = undefined;
    this.#deadline(this.#o.connectTimeoutMs, () => {
      this.#attemptFailure = {
        detail: `no hello from the server within connectTimeoutMs (${this.#o.connectTimeoutMs} ms)`,
      };
      this.#timeout('connect timeout');
    });
    socket.onopen = () => {
      void this.#authenticate(socket);
    };
    socket.onmessage = (event: { data: unknown }) => this.#message(socket, event.data);
    socket.onclose = (event: { code: number; reason: string }) =>
      this.#closed(socket, event.code, event.reason);
    // An `error` is always followed by a `close`; a listener is still needed, or `ws` throws it. `ws`
    // says why an upgrade was refused (browsers never do): 401 and 403 are as fatal as 4001 and 4003.
    socket.onerror = (event: { message?: unknown; error?: unknown }) => {
      if (socket !== this.#socket) return;
      const failure = describeSocketError(event);
      if (failure.status === 401 || failure.status === 403)
        this.#refusedWith = failure.status === 401 ? 4001 : 4003;
      if (this.#ready) return;
      this.#attemptFailure = failure;
      // Node's built-in WebSocket (undici) may fire `error` without a `close` when the upgrade is
      // refused: without this the attempt would only end at connectTimeoutMs.
      this.#deadline(0, () => this.#closed(socket, 1006, ''));
    };
  }

  async #authenticate(socket: WebSocketLike): Promise<void> {
    const token = this.#o.token;
    if (token === undefined) return;
    let credential: string;
    try {
      credential = typeof token === 'function' ? await token() : token;
    } catch (cause) {
      if (socket !== this.#socket) return;
      this.#handler.onError(
        new ProgressError(ErrorCode.Unauthenticated, 'The token provider failed', { cause }),
      );
      this.#drop(CloseCode.Normal, 'token provider failed');
      this.#lost('token provider failed', undefined);
      return;
    }
    if (socket !== this.#socket || socket.readyState !== OPEN) return;
    try {
      // The version of the subprotocol the server selected (an older server selects version 1).
      const protocol = socket.protocol === PROTOCOL_NAME_V1 ? 1 : PROTOCOL_VERSION;
      socket.send(encodeFrame({ type: 'auth', token: credential, protocol }));
    } catch {
      // The socket is closing: its close event takes over.
    }
  }

  #message(socket: WebSocketLike, data: unknown): void {
    if (socket !== this.#socket) return;
    if (this.#ready) {
      // Every frame pushes the heartbeat deadline back: noted here, checked when the timer fires, so a
      // busy socket costs no timer per frame. Any frame also answers a pending ping.
      this.#lastFrameAt = this.#o.clock();
      if (!this.#watchingHeartbeat) this.#watchHeartbeat(this.#heartbeatTimeoutMs);
    }
    const decoded = decodeServerFrame(data);
    if (!decoded.ok) {
      const error = decoded.error;
      if (error.code === ErrorCode.UnsupportedProtocol) {
        // A hello in another version: reconnecting would only meet the same server again. (4002, not
        // 1002: browsers only let a page close with 1000 or 3000-4999.)
        this.#drop(CloseCode.UnsupportedProtocol, 'unsupported protocol');
        this.#fatal(error, 'unsupported protocol', undefined);
        return;
      }
      this.#handler.onError(
        error.taskId === undefined && error.code === ErrorCode.InvalidFrame
          ? new ProgressError(error.code, error.message, { cause: error, ...taskIdOf(data) })
          : error,
      );
      return;
    }
    const frame = decoded.frame;
    if (frame.type !== 'hello') {
      this.#handler.onFrame(frame);
      return;
    }
    if (this.#ready) return;
    this.#ready = true;
    this.#readyAt = this.#o.clock();
    this.#unreachable = 0;
    this.#retriedExpiredToken = false;
    this.#serverFirstDelayMs = frame.reconnectDelayMs ?? 0;
    this.#heartbeatTimeoutMs =
      this.#o.heartbeatTimeoutMs ?? 2 * frame.heartbeatIntervalMs + this.#o.heartbeatMarginMs;
    this.#lastFrameAt = this.#readyAt;
    this.#watchHeartbeat(this.#heartbeatTimeoutMs);
    this.#setState({ state: 'open', reason: `hello from ${frame.serverId}` });
    this.#handler.onHello(frame);
  }

  #closed(socket: WebSocketLike, closeCode: number, reason: string): void {
    if (socket !== this.#socket) return;
    const code = this.#refusedWith ?? closeCode;
    this.#refusedWith = undefined;
    const why = `closed by server (${code}${reason === '' ? '' : `: ${reason}`})`;
    if (code === CloseCode.TokenExpired) {
      this.#tokenExpired(why, code);
      return;
    }
    if (!this.#ready && this.#attemptFailure === undefined) {
      this.#attemptFailure = {
        detail:
          code === 1006
            ? 'the socket closed (1006) before the server said hello; this WebSocket implementation does not ' +
              'say why (browsers never do): check the scheme (ws:// for plain HTTP), host, port and path, and ' +
              "the server's allowedOrigins"
            : `the server closed the socket before its hello (${code}${reason === '' ? '' : `: ${reason}`})`,
      };
    }
    const fatal = FATAL_ERRORS[code];
    if (fatal !== undefined && FATAL_CLOSE_CODES.has(code)) {
      this.#socket = undefined;
      // A refused upgrade says more than the close code it stands for (which status, and what to check).
      const refused = this.#attemptFailure?.status === undefined ? why : this.#attemptFailure.detail;
      this.#fatal(new ProgressError(fatal, `The server refused the client: ${refused}`), why, code);
      return;
    }
    // A client closed for flooding waits longer: the same pace would only get it closed again.
    if (code === CloseCode.RateLimited) this.#failures += 2;
    this.#lost(why, code);
  }

  /**
   * The server ended the socket because its credential expired: reconnect at once, which fetches a
   * fresh credential from the token function. Once only: a second expiry before any `hello` means the
   * token function hands out expired credentials, and retrying cannot help.
   */
  #tokenExpired(why: string, code: number): void {
    this.#socket = undefined;
    if (this.#retriedExpiredToken) {
      this.#fatal(
        new ProgressError(ErrorCode.TokenExpired, `The credential expired again: ${why}`),
        why,
        code,
      );
      return;
    }
    this.#retriedExpiredToken = true;
    if (this.#ready) this.#down();
    this.#noDeadline();
    if (this.#state === 'closed') return;
    this.#setState({ state: 'reconnecting', reason: why, closeCode: code, delayMs: 0 }, true);
    this.#connect('token expired');
  }

  #fatal(error: ProgressError, reason: string, closeCode: number | undefined): void {
    this.#ready = false;
    this.#noDeadline();
    this.#setState({ state: 'closed', reason, error, ...(closeCode === undefined ? {} : { closeCode }) });
    this.#handler.onFatal(error);
  }

  /** The current socket said nothing for too long: give up on it with 4010. */
  #timeout(reason: string): void {
    this.#drop(CloseCode.HeartbeatTimeout, reason);
    this.#lost(reason, CloseCode.HeartbeatTimeout);
  }

  /** Detaches and closes the current socket without waiting for its close handshake. */
  #drop(code: number, reason: string): void {
    const socket = this.#socket;
    if (socket === undefined) return;
    this.#socket = undefined;
    socket.onopen = null;
    socket.onmessage = null;
    socket.onclose = null;
    socket.onerror = noop;
    try {
      socket.close(code, reason);
    } catch {
      // Already closing.
    }
  }

  /** Bookkeeping when a ready socket goes away. */
  #down(): void {
    if (!this.#ready) return;
    this.#ready = false;
    this.#noDeadline();
    // A connection that stayed up long enough proves the server healthy: start the backoff over.
    if (this.#o.clock() - this.#readyAt >= this.#o.stableConnectionMs) {
      this.#failures = 0;
      this.#quickRetryUsed = false;
    }
    this.#lostReady = true;
    this.#handler.onDown();
  }

  /** The current socket is gone (or never opened): schedule the next attempt. */
  #lost(reason: string, closeCode: number | undefined): void {
    this.#socket = undefined;
    const attemptFailed = !this.#ready;
    this.#lostReady = false;
    if (this.#ready) this.#down();
    else this.#unreachable++;
    this.#noDeadline();
    const failure = this.#attemptFailure ?? { detail: reason };
    this.#attemptFailure = undefined;
    if (this.#state === 'closed') return;
    if (!this.#handler.wantsSocket()) {
      this.#setState({ state: 'idle', reason });
      return;
    }
    const threshold = this.#o.httpFallbackAfterAttempts;
    if (threshold > 0 && this.#unreachable >= threshold) this.#handler.onUnreachable();
    const delayMs = this.#nextDelayMs();
    const errorAfter = this.#o.errorAfterAttempts;
    if (attemptFailed && errorAfter > 0 && this.#unreachable >= errorAfter) {
      this.#handler.onError(
        new ProgressError(
          ErrorCode.Unreachable,
          `ProgressClient: cannot connect to ${this.#o.url} (${this.#unreachable} failed attempts in a row): ` +
            `${failure.detail}. Retrying in ${Math.round(delayMs)} ms.`,
          failure.cause === undefined ? {} : { cause: failure.cause },
        ),
      );
    }
    this.#setState(
      { state: 'reconnecting', reason, ...(closeCode === undefined ? {} : { closeCode }), delayMs },
      true,
    );
    this.#reconnect.set(delayMs, () => this.#connect('reconnect'));
  }

  /**
   * The first loss of a healthy connection is retried at once, within a small jitter (the server's hint
   * when it asks for more, so a replica's whole crowd does not land in the same instant); the
   * exponential backoff only grows over attempts that failed (or connections that did not stay up).
   */
  #nextDelayMs(): number {
    if (this.#lostReady && this.#failures === 0 && !this.#quickRetryUsed) {
      this.#quickRetryUsed = true;
      const ceiling = Math.min(
        this.#o.reconnect.maxDelayMs,
        Math.max(this.#o.reconnectFirstDelayMs, this.#serverFirstDelayMs),
      );
      return backoffDelayMs(0, { initialDelayMs: ceiling, maxDelayMs: ceiling }, this.#o.random);
    }
    const delayMs = backoffDelayMs(this.#failures, this.#o.reconnect, this.#o.random);
    this.#failures++;
    return delayMs;
  }
}

/** Why one connection attempt failed. */
interface AttemptFailure {
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
 */
function describeSocketError(event: { message?: unknown; error?: unknown }): AttemptFailure {
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
 * The task an undecodable frame was about, if it can be told, so the client can resync that task: the
 * lost frame may have been one of its events.
 */
function taskIdOf(data: unknown): { taskId?: string } {
  try {
    const frame = JSON.parse(String(data)) as { event?: { taskId?: unknown }; task?: { id?: unknown } };
    const taskId = frame.event?.taskId ?? frame.task?.id;
    return typeof taskId === 'string' ? { taskId } : {};
  } catch {
    return {};
  }
}
