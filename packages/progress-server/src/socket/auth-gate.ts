/**
 * The authentication gate of one socket: the first `auth` frame (with the frames pipelined behind it),
 * token renewal on an open socket (protocol 2), and the end of the socket when its credential expires.
 * It owns the socket's principal.
 *
 * @module
 */

import type { IncomingMessage } from 'node:http';
import type { ClientFrame, ProtocolVersion } from '@finishline/core';
import { CloseCode, ErrorCode } from '@finishline/core';
import type { DecodeResult } from '@finishline/core/internal';
import { AuthRateLimited } from '../address-auth-limits.js';
import { credentialExpired, type Principal } from '../auth.js';
import type { Authenticator } from '../authenticator.js';
import { FIRST_EPOCH_READ_WAIT_MS } from '../hub/store-epoch.js';
import type { ProgressLogger } from '../logger.js';
import { describeError } from '../logger.js';
import type { ServerMetrics } from '../metrics.js';
import type { ResolvedServerOptions } from '../options.js';
import { waitAtMost } from '../wait.js';
import type { SocketWriter } from './socket-writer.js';

/** The life of a socket, as its connection tracks it. */
export type SocketState = 'authenticating' | 'open' | 'closing' | 'closed';

/** What the gate needs from its connection. */
export interface GateHost<P extends Principal> {
  readonly connectionId: number;
  readonly request: IncomingMessage;
  readonly version: ProtocolVersion;
  readonly options: ResolvedServerOptions<P>;
  readonly auth: Authenticator<P>;
  readonly metrics: ServerMetrics;
  readonly logger: ProgressLogger;
  readonly writer: SocketWriter;
  state(): SocketState;
  /** Opens the socket for `principal` (caps, `hello`); `false` when it was refused and is closing. */
  open(principal: P): boolean;
  /** What the socket's `hello` must wait for (the server's first read of the store's epoch), if anything. */
  helloReady(): Promise<void> | undefined;
  /** Handles a frame that waited for the first `auth` frame's check, or for the `hello` (see `helloReady`). */
  replay(frame: DecodeResult<ClientFrame>): void;
  /**
   * Takes a token of the socket's frame budget for a renewal that arrived over it, waiting for the budget
   * to refill; `false` once `wanted` says the renewal is no longer to be checked (see `FrameBudget.waitForToken`).
   */
  payRenewal(wanted: () => boolean): Promise<boolean>;
  /** The credential was renewed for the same principal: answer `hello` and re-check subscriptions. */
  renewed(principal: P): void;
  close(code: number, reason: string): void;
  /** Runs a callback so that nothing it throws reaches `ws`. */
  guard(fn: () => void): void;
}

/**
 * Most bytes of frames held behind an `auth` frame while its token is checked (their encoded sizes
 * summed), besides the count bound (`rateLimitBurst`). Counted alone, 200 frames of up to `maxPayloadBytes`
 * each (`auth` frames of 8 KiB tokens: 1.6 MB, security review of 6 December 2026) were held per socket
 * that had not authenticated, times the sockets an address may hold open unauthenticated. 64 KiB holds the
 * 200 pipelined `subscribe` frames the protocol allows even with ids at their length limits, when their
 * request ids are printable ASCII (112 of the largest, 580 bytes, whose every id character is escaped:
 * docs/protocol.md says so); more closes with 1008, as too many frames do.
 */
export const MAX_PENDING_BYTES_BEFORE_AUTH = 64 * 1024;

/**
 * A renewal's wait for a frame-budget token failed (see `GateHost.payRenewal`): a server fault, as a hook
 * that throws is, but none of the hook's.
 */
class RenewalBudgetFailed extends Error {
  constructor(cause: unknown) {
    super("waiting for a renewal's frame budget token failed", { cause });
    this.name = 'RenewalBudgetFailed';
  }
}

/** setTimeout takes at most 2^31 - 1 ms; a later expiry is re-armed when that fires. */
const MAX_TIMER_MS = 2_147_483_647;

/** Authentication of one socket, from its first frame to its credential's expiry. */
export class AuthGate<P extends Principal> {
  readonly #host: GateHost<P>;
  /** Frames that arrived while an `auth` frame was being checked; replayed once it succeeds. */
  readonly #pending: DecodeResult<ClientFrame>[] = [];
  /** The encoded bytes of {@link #pending}'s frames (see {@link MAX_PENDING_BYTES_BEFORE_AUTH}). */
  #pendingBytes = 0;
  #principal: P | undefined;
  #checking = false;
  /**
   * The token of a renewal that arrived while another `auth` frame was being checked: checked next. Only
   * the newest waits (each paid its frame's rate-limit token), so at most one token is held.
   */
  #nextRenewal: { token: string; paid: boolean } | undefined;
  /** Counts the token checks: an answer of one given up on (see {@link renew}) is no answer any more. */
  #checks = 0;
  /** Gives up on a renewal's token check after `upgradeTimeoutMs` (see {@link renew}). */
  #renewalTimer: NodeJS.Timeout | undefined;
  #authTimer: NodeJS.Timeout | undefined;
  /** Ends the socket when its principal's credential expires (`Principal.expiresAt`). */
  #expiryTimer: NodeJS.Timeout | undefined;
  /** The socket ended because its credential expired (see {@link expired}). */
  #endedByExpiry = false;

  constructor(host: GateHost<P>) {
    this.#host = host;
  }

  /** The authenticated principal, once there is one. */
  get principal(): P | undefined {
    return this.#principal;
  }

  /**
   * Starts the gate: a socket authenticated at the upgrade opens at once; any other must send an `auth`
   * frame, and have its token checked, within `authTimeoutMs` (the deadline also bounds a token hook that
   * never answers: no other timer does).
   */
  begin(principal: P | undefined): void {
    if (principal !== undefined) {
      this.#admitWhenReady(principal);
      return;
    }
    const timer = setTimeout(
      // Judged after the event loop's next poll phase, as the liveness tick is: after a stall of the
      // process longer than `authTimeoutMs` the timers phase runs before the poll phase reads what arrived
      // meanwhile, and every socket whose `auth` frame came in during the stall was closed 4004 unread.
      () =>
        setImmediate(() => {
          if (this.#authTimer !== timer) return; // admitted (or closing) meanwhile
          // Its reason tells an `auth` frame that came in time but whose check is still running (a slow
          // token hook) from one that never came: both were 'no auth frame in time', which sent whoever
          // read it looking for a client that did not send its frame.
          const reason = this.#checking ? 'auth frame not checked in time' : 'no auth frame in time';
          this.#host.guard(() => this.#host.close(CloseCode.AuthTimeout, reason));
        }),
      this.#host.options.authTimeoutMs,
    );
    timer.unref();
    this.#authTimer = timer;
  }

  /** A frame on a socket that is not authenticated yet; `bytes` is its encoded size. */
  beforeAuth(decoded: DecodeResult<ClientFrame>, bytes: number): void {
    if (this.#checking) {
      // A client may pipeline its subscribes behind the auth frame; keep a bounded number of them, of a
      // bounded size together.
      if (
        this.#pending.length >= this.#host.options.rateLimitBurst ||
        this.#pendingBytes + bytes > MAX_PENDING_BYTES_BEFORE_AUTH
      ) {
        this.#host.close(CloseCode.PolicyViolation, 'too many frames before authentication completed');
        return;
      }
      this.#pending.push(decoded);
      this.#pendingBytes += bytes;
      return;
    }
    if (!decoded.ok && decoded.error.code === ErrorCode.UnsupportedProtocol) {
      this.refuse(ErrorCode.UnsupportedProtocol, CloseCode.UnsupportedProtocol, decoded.error.message);
      return;
    }
    if (!decoded.ok || decoded.frame.type !== 'auth') {
      this.refuse(
        ErrorCode.Unauthenticated,
        CloseCode.Unauthenticated,
        'Authenticate first: the first frame must be a valid auth frame',
      );
      return;
    }
    const { token } = decoded.frame;
    const lookup = () => this.#host.auth.fromToken(token, this.#host.request);
    this.#check(lookup, (principal) => {
      if (this.#host.state() !== 'authenticating') return;
      if (principal === undefined) {
        this.refuse(ErrorCode.Unauthenticated, CloseCode.Unauthenticated, 'Invalid credentials');
        return;
      }
      this.#admitWhenReady(principal);
    });
  }

  /**
   * Protocol version 2: an `auth` frame on an open socket renews its credential. The new one must stand
   * for the same principal; every subscription's authorization is checked again with it, and a task it
   * may no longer watch is dropped with the subscribe's refusal. Answered with a new `hello`. A renewal
   * that arrives while one is being checked is checked after it, so the newest credential is the one
   * in force (several tabs sharing one socket may renew at once); one superseded while waiting is not.
   * A token hook that has not answered within `upgradeTimeoutMs` (its bound on an upgrade, an HTTP
   * request and a subscribe's `authorize`) is given up on: `timeout`, the socket keeps its credential, and
   * the next renewal is checked. Unbounded, one hung call (an auth backend down) held every later renewal
   * behind it for ever, and the socket ended at its credential's expiry however often the client renewed.
   *
   * `paid`: the frame took its rate-limit token. One that arrived over the frame budget is not dropped
   * but waits for a token before its check (within the same `upgradeTimeoutMs`): an `auth` carries no
   * `id`, so its `rate_limited` named nothing, the same error as a refused `ack` or `ping`; the client
   * could not tell its renewal was refused, and a tab-sharing leader took the next renewal's `hello` for
   * its answer, putting in force a token the server never checked. At most two wait, as above.
   */
  renew(token: string, paid = true): void {
    if (this.#checking) {
      this.#nextRenewal = { token, paid };
      return;
    }
    // The number `#check` gives this check (read by `lookup` before `#check` returns).
    const mine = this.#checks + 1;
    // Not refused for the address's failed attempts, only charged when it fails (see `fromRenewal`).
    const lookup = async (): Promise<P | undefined> => {
      // No hook runs for a renewal given up on (its `timeout` sent) or a socket that closed meanwhile.
      const wanted = () => this.#checks === mine && this.#host.state() === 'open';
      if (!paid) {
        let took: boolean;
        try {
          took = await this.#host.payRenewal(wanted);
        } catch (error) {
          // The budget reads the server's clock: told apart from the hook's failure (see `#check`).
          throw new RenewalBudgetFailed(error);
        }
        if (!took) return undefined;
      }
      return this.#host.auth.fromRenewal(token, this.#host.request);
    };
    const check = this.#check(lookup, (principal) => {
      if (this.#host.state() !== 'open') return;
      if (principal === undefined || principal.id !== (this.#principal as P).id) {
        this.refuse(
          ErrorCode.Unauthenticated,
          CloseCode.Unauthenticated,
          principal === undefined ? 'Invalid credentials' : 'auth must keep the principal of the socket',
        );
        return;
      }
      if (this.#expired(principal)) {
        this.#expire();
        return;
      }
      this.#principal = principal;
      this.#armExpiry(principal);
      this.#host.renewed(principal);
      this.#renewNext();
    });
    this.#renewalTimer = setTimeout(
      () =>
        this.#host.guard(() => {
          if (this.#checks !== check) return; // answered meanwhile
          this.#checks++;
          this.#checking = false;
          this.#renewalTimer = undefined;
          // Counted as the HTTP API's 504 of the same hook is.
          this.#host.metrics.handlerErrors.inc();
          this.#host.logger.warn(
            { connection: this.#host.connectionId },
            'authenticateToken hook did not answer a renewal within upgradeTimeoutMs; answering timeout',
          );
          this.#host.writer.sendError(
            ErrorCode.Timeout,
            'The check of the renewed credential did not answer in time; the socket keeps its credential',
            {},
          );
          this.#renewNext();
        }),
      this.#host.options.upgradeTimeoutMs,
    );
    this.#renewalTimer.unref();
  }

  /** Checks the renewal that waited for the one just answered, if any. */
  #renewNext(): void {
    const next = this.#nextRenewal;
    this.#nextRenewal = undefined;
    if (next !== undefined && this.#host.state() === 'open') this.renew(next.token, next.paid);
  }

  /**
   * Whether the socket's credential is still in force; once it expired, the socket ends (4011, as at its
   * expiry timer) and `false`. Asked before anything of a task goes out: the timer alone let a
   * subscribe whose `authorize` (or task read) outlasted the credential send its snapshot after the
   * expiry, and a renewal's re-check its held events, whenever the answer came before the timer ran (a
   * busy event loop fires it late; a clock of the application's runs apart from it).
   */
  inForce(): boolean {
    const principal = this.#principal;
    if (principal === undefined || !this.#expired(principal)) return true;
    this.#expire();
    return false;
  }

  /**
   * The socket is closing, or closed, because its credential expired: a frame that arrives now was received
   * after the expiry, and has no effect (not even an ack, which one crossing any other close keeps).
   */
  get expired(): boolean {
    return this.#endedByExpiry;
  }

  /** Ends the socket: an `error` frame saying why, then the matching close code. */
  refuse(code: ErrorCode, closeCode: number, message: string): void {
    this.#host.metrics.framesRejected.inc({ code });
    this.#host.writer.sendError(code, message, {});
    this.#host.close(closeCode, message);
  }

  /** The socket is closing: no auth frame is awaited, and no renewal answered, any more. */
  stopWaiting(): void {
    if (this.#authTimer !== undefined) clearTimeout(this.#authTimer);
    this.#authTimer = undefined;
    if (this.#renewalTimer !== undefined) clearTimeout(this.#renewalTimer);
    this.#renewalTimer = undefined;
  }

  /** The socket closed: every timer is cleared and waiting frames are dropped. */
  stop(): void {
    this.stopWaiting();
    if (this.#expiryTimer !== undefined) clearTimeout(this.#expiryTimer);
    this.#expiryTimer = undefined;
    this.#pending.length = 0;
    this.#pendingBytes = 0;
    this.#nextRenewal = undefined;
  }

  /**
   * Checks a token with the application's hook (`lookup`), one check at a time. A hook that throws is a
   * server fault, whether at the first frame or at a renewal: logged, counted, and the socket closes 1011.
   * Returns the check's number: once {@link #checks} moved past it, its answer is dropped.
   */
  #check(lookup: () => Promise<P | undefined>, then: (principal: P | undefined) => void): number {
    this.#checking = true;
    const check = ++this.#checks;
    const answered = (): boolean => {
      if (this.#checks !== check) return false;
      this.#checking = false;
      if (this.#renewalTimer !== undefined) clearTimeout(this.#renewalTimer);
      this.#renewalTimer = undefined;
      return true;
    };
    lookup().then(
      (principal) =>
        this.#host.guard(() => {
          if (answered()) then(principal);
        }),
      (error: unknown) =>
        this.#host.guard(() => {
          if (!answered()) return;
          if (error instanceof AuthRateLimited) {
            // The address is out of authentication attempts: no hook ran. 4008 makes the client back off.
            // (A first `auth` frame only: a renewal is not refused for it.)
            this.refuse(ErrorCode.RateLimited, CloseCode.RateLimited, error.message);
            return;
          }
          this.#host.metrics.handlerErrors.inc();
          // No hook ran when the wait for a frame-budget token failed (the server's clock threw): logged as
          // the hook's failure, it sent whoever read it after the auth backend.
          const budget = error instanceof RenewalBudgetFailed;
          this.#host.logger.error(
            { err: describeError(budget ? error.cause : error), connection: this.#host.connectionId },
            budget
              ? "waiting for a renewal's frame budget token failed (the server's clock threw)"
              : 'authenticateToken hook threw',
          );
          this.#host.close(CloseCode.InternalError, 'authentication failed');
        }),
    );
    return check;
  }

  /**
   * Admits `principal` once its `hello` can carry the store's epoch, then handles the frames held until
   * then. Sent without it (the server's first read still under way), the `hello` of a version-2 socket
   * told a client holding cursors of an older epoch (the store restored across the server's restart,
   * the clients reconnecting to it at once) nothing, and it resumed them in another history. Frames that
   * arrive meanwhile are held, as behind an `auth` frame.
   */
  #admitWhenReady(principal: P): void {
    this.stopWaiting();
    const admit = () => {
      this.#admit(principal);
      this.#pendingBytes = 0;
      for (const pending of this.#pending.splice(0)) {
        if (this.#host.state() !== 'open') break;
        this.#host.replay(pending);
      }
    };
    const ready = this.#host.helloReady();
    if (ready === undefined) {
      admit();
      return;
    }
    this.#checking = true;
    void waitAtMost(ready, FIRST_EPOCH_READ_WAIT_MS).then(() =>
      this.#host.guard(() => {
        this.#checking = false;
        if (this.#host.state() === 'authenticating') admit();
      }),
    );
  }

  #admit(principal: P): void {
    if (this.#expired(principal)) {
      this.#expire();
      return;
    }
    // Set before opening: the server's `onAuthenticated` and the `hello` may read it.
    this.#principal = principal;
    if (!this.#host.open(principal)) {
      this.#principal = undefined;
      return;
    }
    this.#armExpiry(principal);
  }

  /**
   * Whether `principal`'s credential expired; true, counted and logged, when the clock throws (one that
   * returned NaN once): the socket ends as at an expiry (4011), and the client reconnects with a fresh
   * credential. Thrown on, from the expiry's timer it left the timer unarmed: the credential's expiry was
   * never enforced on that socket again.
   */
  #expired(principal: P): boolean {
    if (principal.expiresAt === undefined) return false;
    let now: number;
    try {
      now = this.#host.options.clock();
    } catch (error) {
      this.#host.metrics.handlerErrors.inc();
      this.#host.logger.error(
        { err: describeError(error), connection: this.#host.connectionId },
        "reading the clock for a credential's expiry failed; taken as expired",
      );
      return true;
    }
    return credentialExpired(principal, now);
  }

  /** (Re)sets the timer that ends the socket when its credential expires. */
  #armExpiry(principal: P): void {
    if (this.#expiryTimer !== undefined) clearTimeout(this.#expiryTimer);
    this.#expiryTimer = undefined;
    if (principal.expiresAt === undefined) return;
    let now: number;
    try {
      now = this.#host.options.clock();
    } catch {
      // Checked at once instead, by the timer below (see #expired).
      now = Number.POSITIVE_INFINITY;
    }
    const delayMs = Math.min(Math.max(0, principal.expiresAt - now), MAX_TIMER_MS);
    this.#expiryTimer = setTimeout(
      () =>
        this.#host.guard(() => {
          this.#expiryTimer = undefined;
          if (this.#host.state() !== 'open' || this.#principal !== principal) return;
          if (this.#expired(principal)) this.#expire();
          else this.#armExpiry(principal);
        }),
      delayMs,
    );
    this.#expiryTimer.unref();
  }

  /**
   * The credential expired: `token_expired` (version 1 does not know the code: `unauthenticated`) and
   * close 4011, which a client answers by fetching a fresh credential and reconnecting.
   */
  #expire(): void {
    this.#endedByExpiry = true;
    const code = this.#host.version >= 2 ? ErrorCode.TokenExpired : ErrorCode.Unauthenticated;
    this.refuse(code, CloseCode.TokenExpired, 'The credential expired; reconnect with a fresh one');
  }
}
