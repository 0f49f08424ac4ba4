import type { ClientFrame } from '@finishline/core';
import {
  ErrorCode,
  PROTOCOL_NAME,
  PROTOCOL_NAME_V1,
  PROTOCOL_VERSION,
  ProgressError,
} from '@finishline/core';
import {
  CLOSE_AUTH_TIMEOUT,
  CLOSE_FORBIDDEN_ORIGIN,
  CLOSE_HEARTBEAT_TIMEOUT,
  CLOSE_NORMAL,
  CLOSE_RATE_LIMITED,
  CLOSE_TOKEN_EXPIRED,
  CLOSE_UNAUTHENTICATED,
  CLOSE_UNSUPPORTED_PROTOCOL,
  MAX_TOKEN_LENGTH,
} from '@finishline/core/internal';
import { type AttemptFailure, describeEarlyClose, unreachableError } from './connect-errors.js';
import type { ConnectionHandler, ConnectionState, StateChange } from './connection-state.js';
import { Liveness } from './liveness.js';
import type { ResolvedOptions, WebSocketLike } from './options.js';
import { ReconnectPacing } from './reconnect-pacing.js';
import { batchSends, bindClose, decodeSocketData, describeSocketError } from './socket-platform.js';
import { MAX_DELAY_MS, noop, Timeout, type TimerSet } from './timers.js';

/**
 * The socket's lifecycle: lazy connect, authentication, what ends a socket (its deadline in
 * `liveness.ts`, a close, an expired credential) and what follows (a reconnect paced by
 * `reconnect-pacing.ts`, or the fatal close codes that end it all). Why an attempt failed is worded in
 * `connect-errors.ts`.
 *
 * @module
 */

const OPEN = 1;
/** Newest first: a server selects the newest it speaks, an older one still finds version 1. */
const OFFERED_PROTOCOLS = [PROTOCOL_NAME, PROTOCOL_NAME_V1];
const CLOSED = 3;

/**
 * The error each of core's `FATAL_CLOSE_CODES` ends the client with (a test checks that the keys are
 * exactly that set), so a close code is fatal when it has an entry here.
 *
 * @internal
 */
export const FATAL_ERRORS: Readonly<Record<number, ErrorCode>> = {
  [CLOSE_UNAUTHENTICATED]: ErrorCode.Unauthenticated,
  [CLOSE_UNSUPPORTED_PROTOCOL]: ErrorCode.UnsupportedProtocol,
  [CLOSE_FORBIDDEN_ORIGIN]: ErrorCode.Forbidden,
};

/** @internal */
export class Connection {
  readonly #o: ResolvedOptions;
  readonly #handler: ConnectionHandler;
  /** The one deadline of the current socket: connect timeout, a ping's deadline, or heartbeat watchdog. */
  readonly #liveness: Liveness;
  readonly #reconnect: Timeout;
  readonly #pacing: ReconnectPacing;
  #socket: WebSocketLike | undefined;
  #ready = false;
  #state: ConnectionState = 'idle';
  /** Attempts since the last `hello`: when HTTP takes over. */
  #unreachable = 0;
  /** A socket was closed for an expired credential and no `hello` came since: the next one is fatal. */
  #retriedExpiredToken: boolean | undefined;
  /** When the client last reconnected at once for an expired credential (clock ms); none yet: NaN below. */
  #expiredAt: number | undefined;
  /** Why the current attempt failed, as far as the WebSocket implementation tells. */
  #attemptFailure: AttemptFailure | undefined;
  /** The socket whose `auth` frame waits for the token function (to say so when its attempt times out). */
  #awaitingToken: WebSocketLike | undefined;
  /** The last renewal asked for: the next waits for it (see `renewToken`). */
  #renewal = Promise.resolve(false);

  constructor(options: ResolvedOptions, timers: TimerSet, handler: ConnectionHandler) {
    this.#o = options;
    this.#handler = handler;
    this.#liveness = new Liveness(timers, options, () => this.#timeout('heartbeat timeout'));
    this.#reconnect = new Timeout(timers);
    this.#pacing = new ReconnectPacing(options);
  }

  get state(): ConnectionState {
    return this.#state;
  }

  /**
   * Renews the credential of the open socket without reconnecting (protocol version 2): calls the token
   * function and sends an `auth` frame; the server answers with a new `hello`. Resolves `false` when
   * there is no open version-2 socket or no token function (the next connection uses a fresh token
   * anyway), and when the token function fails, returns no credential (see `credentialOf`) or returns
   * nothing within `connectTimeoutMs`: that is reported as an `unauthenticated` error, and the
   * socket keeps its current credential (if it expires, the server's 4011 starts the usual fresh-token
   * reconnect). Never rejects: callers fire and forget it from a token-refresh hook. A call made while
   * another is under way waits for it, then calls the token function itself: called at once, both called
   * it together and each sent what it got when it got it, so an older token answered last was left in force.
   * (`#renew` never rejects: the next one always runs.)
   */
  readonly renewToken = (): Promise<boolean> => (this.#renewal = this.#renewal.then(() => this.#renew()));

  async #renew(): Promise<boolean> {
    const token = this.#o.token;
    const socket = this.#socket;
    if (typeof token !== 'function' || socket === undefined || !this.#ready) return false;
    if (socket.protocol === PROTOCOL_NAME_V1) return false;
    let credential: string;
    try {
      // A token function that never returned (a refresh request nobody answers) left this pending for
      // good, and whoever awaited it: it has connectTimeoutMs, as a connect's call has. On the timer
      // functions, not the client's timers, which close() clears: the wait ends after a close too.
      // What is no credential fails as a throw: sent, the server closed the socket with 4001, fatal.
      credential = credentialOf(
        await new Promise<unknown>((resolve, reject) => {
          const { timers } = this.#o;
          // At most 2^31 - 1 ms: the timer functions fire a longer delay at once (renewToken() gave up at once).
          const handle = timers.setTimeout(reject, Math.min(this.#o.connectTimeoutMs, MAX_DELAY_MS));
          // Not holding a Node process after close(): while the client is open, its socket keeps it alive.
          (handle as { unref?(): void }).unref?.();
          // (Called from a then: what it throws, or a credential it returns as is, takes the same path.)
          Promise.resolve()
            .then(token)
            .then(resolve, reject)
            .finally(() => timers.clearTimeout(handle));
        }),
      );
    } catch (cause) {
      if (this.#state !== 'closed') {
        this.#handler.onError(tokenProviderFailed(cause));
      }
      return false;
    }
    // (A socket going meanwhile: the reconnect authenticates with a fresh token.)
    return this.#sendOn(socket, { type: 'auth', token: credential, protocol: PROTOCOL_VERSION });
  }

  /** Opens a socket if there is none and none is scheduled (connect lazily, on the first watch). */
  ensure(reason: string): void {
    if (this.#state === 'idle') this.#connect(reason);
  }

  /** Sends a frame on the ready socket; false when there is none (the reconnect will resend state). */
  send(frame: ClientFrame): boolean {
    return this.#ready && this.#sendOn(this.#socket, frame);
  }

  /** Sends on `socket` while it is the current one and open; false otherwise, or when the send throws. */
  #sendOn(socket: WebSocketLike | undefined, frame: ClientFrame): boolean {
    if (socket !== this.#socket || socket?.readyState !== OPEN) return false;
    try {
      socket.send(JSON.stringify(frame));
      return true;
    } catch {
      return false; // the socket is going: its close takes over
    }
  }

  /** Runs `run`; the frames it sends leave in one write where the socket allows it (`batchSends`). */
  batch(run: () => void): void {
    const socket = this.#socket;
    if (socket === undefined) run();
    else batchSends(socket, run);
  }

  /** Drops the socket and opens a new one at once (the 100% watchdog suspects this replica). */
  reconnectNow(reason: string): void {
    if (this.#state === 'closed') return;
    if (this.#socket !== undefined && !this.#ready) return; // already opening a fresh one
    this.#drop(CLOSE_NORMAL, reason);
    this.#down();
    this.#connect(reason);
  }

  /**
   * The socket may have died unseen (the page woke, the network came back). A ready socket must answer
   * a ping within `deadlineMs` (any frame will do) or it is replaced at once; a reconnect waiting out
   * its backoff goes now, since the cause of the failures may be what just ended. True when the socket
   * is ready and checked now, so the caller can resync over it. One wake often fires two or three events
   * (visibilitychange with pageshow or online, a clock jump seen meanwhile): while the ping of one is
   * unanswered, the others are the same wake, and add neither a ping nor a resync.
   */
  check(reason: string, deadlineMs: number): boolean {
    // (Idle or closed, neither holds: no socket is ready, no reconnect waits.)
    if (this.#ready) {
      if (!this.#liveness.watching) return false;
      this.send({ type: 'ping' });
      this.#liveness.deadline(deadlineMs, () => {
        this.#drop(CLOSE_HEARTBEAT_TIMEOUT, `no answer after ${reason}`);
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
    this.#ready = false;
    this.#liveness.clear();
    this.#reconnect.clear();
    this.#setState({ state: 'closed', reason: 'client closed' });
    return new Promise<void>((resolve) => {
      if (!this.#drop(CLOSE_NORMAL, 'client closed', () => resolve())) resolve();
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
    if (!this.#handler.wantsSocket()) {
      this.#setState({ state: 'idle', reason: 'no unfinished watch' });
      return;
    }
    this.#setState({ state: this.#state === 'idle' ? 'connecting' : 'reconnecting', reason });
    // Closed before, or by a listener of that change: no socket (one was opened after close() and kept).
    if (this.#state === 'closed') return;
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
    this.#liveness.deadline(this.#o.connectTimeoutMs, () => {
      // A token function that never returned kept the auth frame from going out: the server had nothing
      // to answer, and "no hello" sent the reader to the network and the server instead.
      this.#attemptFailure = {
        detail: `${this.#awaitingToken === socket ? 'the token function returned no credential' : 'no hello from the server'} within connectTimeoutMs (${this.#o.connectTimeoutMs} ms)`,
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
    // says why an upgrade was refused (browsers never do): the status, kept with the attempt's failure,
    // makes 401 and 403 as fatal as 4001 and 4003 when the socket closes (see `#closed`).
    socket.onerror = (event: { message?: unknown; error?: unknown }) => {
      if (socket !== this.#socket || this.#ready) return;
      this.#attemptFailure = describeSocketError(event);
      // Node's built-in WebSocket (undici) may fire `error` without a `close` when the upgrade is
      // refused: without this the attempt would only end at connectTimeoutMs.
      this.#liveness.deadline(0, () => this.#closed(socket, 1006, ''));
    };
  }

  async #authenticate(socket: WebSocketLike): Promise<void> {
    const token = this.#o.token;
    if (token === undefined) return;
    let credential: string;
    try {
      this.#awaitingToken = socket;
      // (A static token is awaited too: one tick later, one expression less.)
      credential = credentialOf(await (typeof token === 'function' ? token() : token));
    } catch (cause) {
      if (this.#awaitingToken === socket) this.#awaitingToken = undefined;
      if (socket !== this.#socket) return;
      this.#handler.onError(tokenProviderFailed(cause));
      this.#drop(CLOSE_NORMAL, 'token provider failed');
      this.#lost('token provider failed', undefined);
      return;
    }
    if (this.#awaitingToken === socket) this.#awaitingToken = undefined;
    // The version of the subprotocol the server selected (an older server selects version 1).
    const protocol = socket.protocol === PROTOCOL_NAME_V1 ? 1 : PROTOCOL_VERSION;
    this.#sendOn(socket, { type: 'auth', token: credential, protocol });
  }

  #message(socket: WebSocketLike, data: unknown): void {
    if (socket !== this.#socket) return;
    // Every frame pushes the heartbeat deadline back (and answers a pending ping).
    if (this.#ready) this.#liveness.frame();
    const decoded = decodeSocketData(data);
    if (!decoded.ok) {
      const error = decoded.error;
      if (error.code === ErrorCode.UnsupportedProtocol) {
        // A hello in another version: reconnecting would only meet the same server again. (4002, not
        // 1002: browsers only let a page close with 1000 or 3000-4999.)
        this.#drop(CLOSE_UNSUPPORTED_PROTOCOL, 'unsupported protocol');
        this.#fatal(error, 'unsupported protocol', undefined);
        return;
      }
      this.#handler.onError(error);
      return;
    }
    const frame = decoded.frame;
    if (frame.type !== 'hello') {
      this.#handler.onFrame(frame);
      return;
    }
    if (this.#ready) return;
    this.#ready = true;
    const now = this.#o.clock();
    this.#unreachable = 0;
    this.#retriedExpiredToken = false;
    this.#pacing.ready(now, frame.reconnectDelayMs ?? 0);
    this.#liveness.watch(
      now,
      // At most 5 minutes of interval: a larger one (a misconfigured or broken server's) put the deadline
      // weeks away, and a dead socket left its watches hanging.
      this.#o.heartbeatTimeoutMs ??
        2 * Math.min(frame.heartbeatIntervalMs, 300_000) + this.#o.heartbeatMarginMs,
    );
    this.#setState({ state: 'open', reason: `hello from ${frame.serverId}` });
    this.#handler.onHello(frame);
  }

  #closed(socket: WebSocketLike, closeCode: number, reason: string): void {
    if (socket !== this.#socket) return;
    // An upgrade refused with HTTP 401/403 (only before `hello`, where `onerror` keeps the status).
    const status = this.#attemptFailure?.status;
    const code = status === 401 ? 4001 : status === 403 ? 4003 : closeCode;
    const why = `closed by server (${code}${reason === '' ? '' : `: ${reason}`})`;
    if (code === CLOSE_TOKEN_EXPIRED) {
      this.#tokenExpired(why, code);
      return;
    }
    if (!this.#ready && this.#attemptFailure === undefined)
      this.#attemptFailure = describeEarlyClose(code, reason);
    // The server waited for an auth frame a client without a token never sends: retrying cannot help.
    const fatal =
      code === CLOSE_AUTH_TIMEOUT && !this.#ready && this.#o.token === undefined
        ? ErrorCode.Unauthenticated
        : FATAL_ERRORS[code];
    if (fatal !== undefined) {
      this.#socket = undefined;
      // A refused upgrade says more than the close code it stands for (which status, and what to check).
      const refused = this.#attemptFailure?.status === undefined ? why : this.#attemptFailure.detail;
      this.#fatal(new ProgressError(fatal, `The server refused the client: ${refused}`), why, code);
      return;
    }
    // A client closed for flooding waits longer: the same pace would only get it closed again.
    if (code === CLOSE_RATE_LIMITED) this.#pacing.slowDown();
    this.#lost(why, code);
  }

  /**
   * The server ended the socket because its credential expired: reconnect at once, which fetches a
   * fresh credential from the token function. Once only: a second expiry before any `hello` means the
   * token function hands out expired credentials, and retrying cannot help. At once only
   * `reconnect.maxDelayMs` or more after the last reconnect at once for an expiry: one sooner waits as a
   * failed attempt does, the backoff growing while expiries keep coming that soon. (A server that says
   * `hello` and closes with 4011 at once was reconnected to at once for ever, 82 connections a second: each
   * `hello` allowed the next immediate retry. Until 6 December 2026 one that closed with 4011 a second or
   * two after each `hello` still was, every second or two: each socket up `stableConnectionMs` allowed the
   * next.)
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
    const now = this.#o.clock();
    // (None yet: NaN, not below.)
    const atOnce = !(now - (this.#expiredAt as number) < this.#o.reconnect.maxDelayMs);
    if (atOnce) this.#expiredAt = now;
    // Paced, the socket is taken for one just up (until the next `hello` says when): the backoff is not
    // started over for its second or two up, as for a socket that stayed up, and the waits grow.
    else this.#pacing.ready(now, 0);
    this.#lost(why, code, atOnce);
  }

  #fatal(error: ProgressError, reason: string, closeCode: number | undefined): void {
    this.#ready = false;
    this.#liveness.clear();
    this.#setState({ state: 'closed', reason, error, ...(closeCode === undefined ? {} : { closeCode }) });
    this.#handler.onFatal(error);
  }

  /** The current socket said nothing for too long: give up on it with 4010. */
  #timeout(reason: string): void {
    this.#drop(CLOSE_HEARTBEAT_TIMEOUT, reason);
    this.#lost(reason, CLOSE_HEARTBEAT_TIMEOUT);
  }

  /**
   * Detaches and closes the current socket without waiting for its close handshake (`onclose` is told
   * when it ends); false when there was none to close. One path for a drop and for `close()`, so that
   * both bound the handshake (see `bindClose`): a socket dropped for its silence is a frozen server's.
   */
  #drop(code: number, reason: string, onclose: (() => void) | null = null): boolean {
    const socket = this.#socket;
    this.#socket = undefined;
    if (socket === undefined || socket.readyState === CLOSED) return false;
    socket.onopen = null;
    socket.onmessage = null;
    socket.onclose = onclose;
    socket.onerror = noop;
    try {
      socket.close(code, reason);
      bindClose(socket);
      return true;
    } catch {
      return false; // Already closing.
    }
  }

  /** Bookkeeping when a ready socket goes away. */
  #down(): void {
    if (!this.#ready) return;
    this.#ready = false;
    this.#liveness.clear();
    this.#pacing.down();
    this.#handler.onDown();
  }

  /**
   * The current socket is gone (or never opened): schedule the next attempt; after an expired credential,
   * at once (`expiredAtOnce`) or as after a failed attempt (`false`), even when the socket said `hello`.
   */
  #lost(reason: string, closeCode: number | undefined, expiredAtOnce?: boolean): void {
    this.#socket = undefined;
    // The loss of a ready socket may be retried quickly; a failed attempt counts towards HTTP and the error.
    const attemptFailed = !this.#ready;
    if (this.#ready) this.#down();
    else this.#unreachable++;
    this.#liveness.clear();
    const failure = this.#attemptFailure ?? { detail: reason };
    this.#attemptFailure = undefined;
    if (this.#state === 'closed') return;
    if (!this.#handler.wantsSocket()) {
      this.#setState({ state: 'idle', reason });
      return;
    }
    const threshold = this.#o.httpFallbackAfterAttempts;
    if (threshold > 0 && this.#unreachable >= threshold) this.#handler.onUnreachable();
    // (An expired credential not reconnected at once is paced as a failed attempt: `false`.)
    const delayMs = expiredAtOnce ? 0 : this.#pacing.nextDelayMs(expiredAtOnce ?? !attemptFailed);
    const errorAfter = this.#o.errorAfterAttempts;
    if (attemptFailed && errorAfter > 0 && this.#unreachable >= errorAfter) {
      this.#handler.onError(unreachableError(this.#o.url, this.#unreachable, failure, delayMs));
    }
    this.#setState(
      { state: 'reconnecting', reason, ...(closeCode === undefined ? {} : { closeCode }), delayMs },
      true,
    );
    this.#reconnect.set(delayMs, () => this.#connect('reconnect'));
  }
}

/**
 * `value` when an `auth` frame can carry it (a string of 1 to `LIMITS.maxTokenLength` characters); anything
 * else is thrown, so that it fails as a token function that throws: `undefined` from a function called
 * before the login that sets the token, an object, `''`, an over-long string. Sent as it was, it made an
 * `auth` frame the server refuses with 4001, which ends the client for good (every watch rejected
 * `unauthenticated`, for a credential nobody had refused); in a renewal, on a socket whose credential was
 * still valid; over HTTP and SSE, a request without it that the server refuses with 401, which closes the
 * client too. An over-long string is thrown as its length: it is a credential all the same, and what is
 * thrown becomes the `cause` of an error the application logs.
 *
 * @internal
 */
export function credentialOf(value: unknown): string {
  if (typeof value !== 'string' || !value) throw value;
  if (value.length > MAX_TOKEN_LENGTH) throw value.length;
  return value;
}

/**
 * The token function threw or rejected, or returned no credential: `cause` is what it threw or returned
 * (see {@link credentialOf}).
 */
export function tokenProviderFailed(cause: unknown): ProgressError {
  return new ProgressError(ErrorCode.Unauthenticated, 'The token provider failed', { cause });
}
