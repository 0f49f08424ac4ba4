import type { IncomingMessage } from 'node:http';
import type {
  AckFrame,
  ClientFrame,
  ProtocolVersion,
  ServerFrame,
  SubscribeFrame,
  TaskEvent,
  TaskView,
  Unsubscribe,
} from '@finishline/core';
import { CloseCode, ErrorCode, isProgressError, isTerminalType, LIMITS, toTaskView } from '@finishline/core';
import type { DecodeResult, OutgoingEntry } from '@finishline/core/internal';
import { decodeClientFrame, encodeFrame, SendQueue, TerminalRetryTracker } from '@finishline/core/internal';
import WebSocket from 'ws';
import type { AckWriter } from '../hub/ack-writer.js';
import type { Principal } from '../auth.js';
import type { Authenticator } from '../authenticator.js';
import { eventFrameText } from './event-frame-text.js';
import type { FairReads } from '../hub/fair-reads.js';
import type { ProgressLogger } from '../logger.js';
import { describeError } from '../logger.js';
import type { ServerMetrics } from '../metrics.js';
import type { ResolvedServerOptions } from '../options.js';
import type { PrincipalLimits } from '../principal-limits.js';
import { versionOfSubprotocol } from './protocol-version.js';
import { TokenBucket } from './rate-limiter.js';
import type { StoreEpoch } from '../hub/store-epoch.js';
import type { TaskHub } from '../hub/task-hub.js';
import { taskNotFoundMessage } from '../tasks/task-not-found.js';
import { delay, waitAtMost } from '../wait.js';

/** What a connection needs from its server. */
export interface ConnectionContext<P extends Principal> {
  readonly options: ResolvedServerOptions<P>;
  readonly auth: Authenticator<P>;
  readonly hub: TaskHub;
  readonly acks: AckWriter;
  readonly metrics: ServerMetrics;
  readonly logger: ProgressLogger;
  /** Per-principal socket and subscription counts, shared by the server's connections. */
  readonly limits: PrincipalLimits;
  /** The fair scheduler of subscription reads, shared by the server's connections. */
  readonly reads: FairReads;
  /** The store's epoch, announced in `hello` and snapshots to version-2 sockets. */
  readonly epoch: StoreEpoch;
  /** Number of open connections of the server (for the reconnect hint in `hello`). */
  socketCount(): number;
  /** Called once, when the socket has closed and the connection released everything. */
  onClose(connection: Connection<P>): void;
  /** Called once, when the socket has a principal (at once, or after its `auth` frame). */
  onAuthenticated?(connection: Connection<P>): void;
}

/** One followed task on one socket. */
interface Subscription {
  readonly taskId: string;
  /** Bumped by every resubscribe and by removal: async work started under an older value is stale. */
  generation: number;
  removed: boolean;
  /** Loaded and caught up: live events from the hub are taken. */
  ready: boolean;
  /**
   * The principal may watch the task and it is loaded. Until then no frame of this subscription acts:
   * an ack is only remembered (its highest seq) and applied once this turns true.
   */
  authorized: boolean;
  /** Highest seq acknowledged while the subscription was not yet authorized. */
  pendingAck: number;
  /** Highest seq queued to this socket (event or snapshot). */
  cursor: number;
  /** Highest seq the client may acknowledge: what it was sent, or what it said it had. */
  ackable: number;
  /**
   * Highest seq written to this socket for this task, across resubscribes. A resubscribe resets
   * `ackable`, but frames of the previous stream may still be in flight to the client, which cannot
   * tell them from the answer to its new subscribe; acking them is legitimate (they were sent here).
   */
  written: number;
  /** Highest seq the client acknowledged. */
  acked: number;
  /** The `afterSeq` of the subscribe: the client already has everything up to it. */
  claimed: number;
  /** The terminal event (or terminal snapshot) is queued: nothing can follow it. */
  terminalQueued: boolean;
  terminalSeq: number | undefined;
  /** The encoded terminal frame, re-sent until acknowledged. */
  terminalFrame: string | undefined;
  /** Clock time of the first send of the terminal frame, for the push→ack latency. */
  terminalSentAt: number | undefined;
  terminalAcked: boolean;
  unfollow: Unsubscribe | undefined;
  /** Retry of a failed catch-up read. */
  retryTimer: NodeJS.Timeout | undefined;
}

type State = 'authenticating' | 'open' | 'closing' | 'closed';

/** Longest close reason RFC 6455 allows (123 bytes); ours are ASCII. */
const MAX_CLOSE_REASON = 123;
/** How long a peer gets to complete the closing handshake before the socket is destroyed. */
const CLOSE_GRACE_MS = 2000;
/** A rate-limit violation streak ends after this long without a refused frame. */
const VIOLATION_STREAK_MS = 1000;

let nextConnectionId = 1;

/**
 * One WebSocket: its authentication state, rate limit, subscriptions, send queue, terminal retries and
 * liveness. Everything that happens on it is confined to it: a handler that fails logs, counts, answers
 * with an `error` frame or closes this socket, and never throws into `ws` or touches other sockets.
 */
export class Connection<P extends Principal> {
  /** Process-unique id, for logs. */
  readonly id = nextConnectionId++;
  readonly #ws: WebSocket;
  readonly #request: IncomingMessage;
  readonly #ctx: ConnectionContext<P>;
  readonly #options: ResolvedServerOptions<P>;
  readonly #queue = new SendQueue();
  readonly #retries: TerminalRetryTracker;
  readonly #bucket: TokenBucket;
  readonly #subs = new Map<string, Subscription>();
  /** Tasks this socket unsubscribed from lately: a late ack of theirs is expected, not an error. */
  readonly #unfollowed = new Set<string>();
  /** The protocol version of this socket, from the subprotocol selected at the upgrade. */
  readonly #version: ProtocolVersion;
  /** Frames that arrived while an `auth` frame was being checked; replayed once it succeeds. */
  readonly #pendingFrames: DecodeResult<ClientFrame>[] = [];
  #state: State;
  #principal: P | undefined;
  /** This socket counts against its principal's socket cap (released on close). */
  #countedSocket = false;
  #authChecking = false;
  #authTimer: NodeJS.Timeout | undefined;
  /** Ends the socket when its principal's credential expires (`Principal.expiresAt`). */
  #expiryTimer: NodeJS.Timeout | undefined;
  #retryTimer: NodeJS.Timeout | undefined;
  #retryDueAt: number | undefined;
  #drainTimer: NodeJS.Timeout | undefined;
  #closeTimer: NodeJS.Timeout | undefined;
  #congested = false;
  #alive = true;
  #invalidFrames = 0;
  #violations = 0;
  #lastViolationAt = Number.NEGATIVE_INFINITY;
  readonly #closed: Promise<void>;
  #resolveClosed: () => void = () => {};

  /**
   * @param socket - the accepted socket, its upgrade request, and the principal established at the
   *   upgrade (`undefined` when the socket must authenticate with a first `auth` frame).
   */
  constructor(
    socket: { ws: WebSocket; request: IncomingMessage; principal: P | undefined },
    ctx: ConnectionContext<P>,
  ) {
    const { ws, request, principal } = socket;
    this.#ws = ws;
    this.#request = request;
    this.#ctx = ctx;
    this.#options = ctx.options;
    this.#version = versionOfSubprotocol(ws.protocol);
    this.#retries = new TerminalRetryTracker(this.#options.clock, this.#options.terminalRetry);
    this.#bucket = new TokenBucket({
      capacity: this.#options.rateLimitBurst,
      refillPerSecond: this.#options.rateLimitPerSecond,
      clock: this.#options.clock,
    });
    this.#closed = new Promise((resolve) => {
      this.#resolveClosed = resolve;
    });
    this.#state = 'authenticating';
    ctx.metrics.sockets.inc();

    ws.on('message', (data) => this.#guard(() => this.#onMessage(data)));
    ws.on('pong', () => {
      this.#alive = true;
    });
    ws.on('error', (error) => {
      this.#ctx.logger.debug({ err: describeError(error), connection: this.id }, 'socket error');
    });
    ws.on('close', () => this.#guard(() => this.#onClose()));

    if (principal !== undefined) {
      this.#open(principal);
    } else {
      this.#authTimer = setTimeout(
        () => this.#guard(() => this.close(CloseCode.AuthTimeout, 'no auth frame in time')),
        this.#options.authTimeoutMs,
      );
      this.#authTimer.unref();
    }
  }

  /** The authenticated principal, once there is one. */
  get principal(): P | undefined {
    return this.#principal;
  }

  /** Number of tasks this socket follows. */
  get subscriptionCount(): number {
    return this.#subs.size;
  }

  /** Resolves once the socket closed and everything was released. */
  get closed(): Promise<void> {
    return this.#closed;
  }

  /**
   * Periodic liveness work, called by the server every `heartbeatIntervalMs`: terminate a socket that did
   * not answer the previous ping, ping again, and send a heartbeat frame.
   */
  tick(): void {
    this.#guard(() => {
      if (this.#state !== 'open' || this.#ws.readyState !== WebSocket.OPEN) return;
      if (!this.#alive) {
        this.#ctx.logger.info(
          { connection: this.id },
          'no pong within a heartbeat interval; terminating socket',
        );
        this.#ws.terminate();
        return;
      }
      this.#alive = false;
      this.#ws.ping();
      // Only when everything queued went out, with the seq of the last frame sent per task: a client that
      // sees a seq above its cursor really lost a frame (no false alarm while a backlog drains or a
      // commit is still being read).
      if (this.#queue.size > 0 || this.#drainTimer !== undefined) return;
      // The client has at least what it resumed from (`claimed`) and what was sent: a subscription still
      // loading reports no more than that, so it never triggers a needless resync.
      const seqs: Record<string, number> = {};
      for (const sub of this.#subs.values()) seqs[sub.taskId] = Math.max(sub.cursor, sub.claimed);
      this.#send({ type: 'heartbeat', time: this.#options.clock(), seqs });
    });
  }

  /** Closes the socket with `code` (idempotent); destroys it if the peer does not finish the handshake. */
  close(code: number, reason: string): void {
    if (this.#state === 'closing' || this.#state === 'closed') return;
    this.#state = 'closing';
    this.#clearAuthTimer();
    try {
      this.#ws.close(code, reason.slice(0, MAX_CLOSE_REASON));
    } catch (error) {
      this.#ctx.logger.debug({ err: describeError(error), connection: this.id }, 'close failed; terminating');
      this.#ws.terminate();
      return;
    }
    this.#closeTimer = setTimeout(() => this.#ws.terminate(), CLOSE_GRACE_MS);
    this.#closeTimer.unref();
  }

  /**
   * Graceful shutdown: writes what is queued (until `deadline`, epoch ms of the real clock), closes with
   * 1001 and waits for the close, terminating the socket at the deadline.
   */
  async shutdown(deadline: number): Promise<void> {
    if (this.#state === 'closed') return;
    while (
      this.#state === 'open' &&
      this.#ws.readyState === WebSocket.OPEN &&
      (this.#queue.size > 0 || this.#ws.bufferedAmount > 0) &&
      Date.now() < deadline
    ) {
      this.#drain();
      await delay(Math.min(this.#options.backpressurePollMs, deadline - Date.now()));
    }
    this.close(CloseCode.GoingAway, 'server shutting down');
    await waitAtMost(this.#closed, deadline - Date.now());
    // close() changed the state behind the compiler's narrowing.
    if (this.#stateNow() !== 'closed') this.#ws.terminate();
    await waitAtMost(this.#closed, CLOSE_GRACE_MS);
  }

  // ── incoming frames ───────────────────────────────────────────────────────────────────────────

  #onMessage(data: WebSocket.RawData): void {
    this.#alive = true;
    if (this.#state === 'closing' || this.#state === 'closed') return;
    // Text and binary messages alike: the protocol accepts its UTF-8 JSON in either.
    const decoded = decodeClientFrame(data, { maxBytes: this.#options.maxPayloadBytes });
    if (this.#state === 'authenticating') {
      this.#onFrameBeforeAuth(decoded);
      return;
    }
    this.#onDecoded(decoded);
  }

  #onDecoded(decoded: DecodeResult<ClientFrame>): void {
    if (!decoded.ok) {
      if (!this.#takeToken(decoded.requestId)) return;
      const { code, message, taskId } = decoded.error;
      const refs = {
        ...(decoded.requestId === undefined ? {} : { requestId: decoded.requestId }),
        ...(taskId === undefined ? {} : { taskId }),
      };
      if (code === ErrorCode.UnknownFrame) {
        // A client newer than this server, not a broken one: answered, and never a reason to disconnect
        // (a client closed for it would reconnect and send it again). The rate limit still bounds it.
        this.#ctx.metrics.framesRejected.inc({ code });
        this.#sendError(code, message, refs);
        return;
      }
      this.#invalid(code, message, refs);
      return;
    }
    const frame = decoded.frame;
    // Acks of new events are bounded by what the server sends, so they need no budget; anything else
    // (including repeated or bogus acks) pays one token.
    const free = frame.type === 'ack' && this.#ackAdvances(frame);
    if (!free && !this.#takeToken(frame.type === 'ack' || frame.type === 'auth' ? undefined : frame.id))
      return;
    this.#handle(frame);
  }

  #handle(frame: ClientFrame): void {
    switch (frame.type) {
      case 'auth':
        if (this.#version >= 2) {
          this.#reauthenticate(frame.token);
          return;
        }
        this.#sendError(
          ErrorCode.InvalidFrame,
          'Already authenticated: auth is only valid as the first frame',
          {},
        );
        return;
      case 'subscribe':
        void this.#subscribe(frame).catch((error: unknown) =>
          this.#internalError(error, frame.id, frame.taskId),
        );
        return;
      case 'unsubscribe': {
        const sub = this.#subs.get(frame.taskId);
        if (sub !== undefined) {
          this.#removeSub(sub);
          this.#rememberUnfollowed(frame.taskId);
        }
        return;
      }
      case 'ack':
        this.#ack(frame);
        return;
      case 'ping':
        this.#send({
          type: 'pong',
          ...(frame.id === undefined ? {} : { requestId: frame.id }),
          time: this.#options.clock(),
        });
        return;
      default: {
        const unreachable: never = frame;
        this.#sendError(ErrorCode.UnknownFrame, `Unknown frame ${String(unreachable)}`, {});
      }
    }
  }

  #onFrameBeforeAuth(decoded: DecodeResult<ClientFrame>): void {
    if (this.#authChecking) {
      // A client may pipeline its subscribes behind the auth frame; keep a bounded number of them.
      if (this.#pendingFrames.length >= this.#options.rateLimitBurst) {
        this.close(CloseCode.PolicyViolation, 'too many frames before authentication completed');
        return;
      }
      this.#pendingFrames.push(decoded);
      return;
    }
    if (!decoded.ok && decoded.error.code === ErrorCode.UnsupportedProtocol) {
      this.#refuseAuth(ErrorCode.UnsupportedProtocol, CloseCode.UnsupportedProtocol, decoded.error.message);
      return;
    }
    if (!decoded.ok || decoded.frame.type !== 'auth') {
      this.#refuseAuth(
        ErrorCode.Unauthenticated,
        CloseCode.Unauthenticated,
        'Authenticate first: the first frame must be a valid auth frame',
      );
      return;
    }
    this.#authChecking = true;
    const token = decoded.frame.token;
    this.#ctx.auth.fromToken(token, this.#request).then(
      (principal) =>
        this.#guard(() => {
          this.#authChecking = false;
          if (this.#state !== 'authenticating') return;
          if (principal === undefined) {
            this.#refuseAuth(ErrorCode.Unauthenticated, CloseCode.Unauthenticated, 'Invalid credentials');
            return;
          }
          this.#open(principal);
          for (const pending of this.#pendingFrames.splice(0)) {
            if (this.#stateNow() !== 'open') break;
            this.#onDecoded(pending);
          }
        }),
      (error: unknown) =>
        this.#guard(() => {
          this.#authChecking = false;
          this.#ctx.metrics.handlerErrors.inc();
          this.#ctx.logger.error(
            { err: describeError(error), connection: this.id },
            'authenticateToken hook threw',
          );
          this.close(CloseCode.InternalError, 'authentication failed');
        }),
    );
  }

  /** Ends an unauthenticated socket: an `error` frame saying why, then the matching close code. */
  #refuseAuth(code: ErrorCode, closeCode: number, message: string): void {
    this.#ctx.metrics.framesRejected.inc({ code });
    this.#sendError(code, message, {});
    this.close(closeCode, message);
  }

  /**
   * Protocol version 2: an `auth` frame on an open socket renews its credential. The new one must stand
   * for the same principal; every subscription's authorization is checked again with it, and a task it
   * may no longer watch is dropped with the subscribe's refusal. Answered with a new `hello`.
   */
  #reauthenticate(token: string): void {
    if (this.#authChecking) {
      this.#sendError(ErrorCode.RateLimited, 'An auth frame is already being checked', {});
      return;
    }
    this.#authChecking = true;
    this.#ctx.auth.fromToken(token, this.#request).then(
      (principal) =>
        this.#guard(() => {
          this.#authChecking = false;
          if (this.#state !== 'open') return;
          if (principal === undefined || principal.id !== (this.#principal as P).id) {
            this.#refuseAuth(
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
          this.#sendHello();
          void this.#recheckSubscriptions(principal).catch((error: unknown) => this.#internalError(error));
        }),
      (error: unknown) =>
        this.#guard(() => {
          this.#authChecking = false;
          this.#ctx.metrics.handlerErrors.inc();
          this.#ctx.logger.error(
            { err: describeError(error), connection: this.id },
            'authenticateToken hook threw',
          );
          this.close(CloseCode.InternalError, 'authentication failed');
        }),
    );
  }

  /** Drops the subscriptions `principal` may no longer watch, with the answer a subscribe would get. */
  async #recheckSubscriptions(principal: P): Promise<void> {
    for (const sub of [...this.#subs.values()]) {
      if (!sub.authorized || sub.removed) continue;
      const gen = sub.generation;
      const stale = () => sub.removed || sub.generation !== gen || this.#state !== 'open';
      const task = await this.#read(
        () => (stale() ? Promise.resolve(null) : this.#ctx.options.store.getTask(sub.taskId)),
        stale,
      );
      if (task === null || stale()) continue;
      if (task !== undefined && (await this.#ctx.auth.authorize(principal, task, 'watch'))) continue;
      if (stale()) continue;
      this.#removeSub(sub);
      const forbidden = task !== undefined && this.#options.revealTaskExistence;
      const code = forbidden ? ErrorCode.Forbidden : ErrorCode.TaskNotFound;
      this.#ctx.metrics.framesRejected.inc({ code });
      this.#sendError(
        code,
        forbidden ? `You may not watch task ${sub.taskId}` : taskNotFoundMessage(sub.taskId),
        {
          taskId: sub.taskId,
        },
      );
    }
  }

  #expired(principal: P): boolean {
    return principal.expiresAt !== undefined && principal.expiresAt <= this.#options.clock();
  }

  /** (Re)sets the timer that ends the socket when its credential expires. */
  #armExpiry(principal: P): void {
    if (this.#expiryTimer !== undefined) clearTimeout(this.#expiryTimer);
    this.#expiryTimer = undefined;
    if (principal.expiresAt === undefined) return;
    // setTimeout takes at most 2^31 - 1 ms; a later expiry is re-armed when that fires.
    const delayMs = Math.min(Math.max(0, principal.expiresAt - this.#options.clock()), 2_147_483_647);
    this.#expiryTimer = setTimeout(
      () =>
        this.#guard(() => {
          this.#expiryTimer = undefined;
          if (this.#state !== 'open' || this.#principal !== principal) return;
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
    const code = this.#version >= 2 ? ErrorCode.TokenExpired : ErrorCode.Unauthenticated;
    this.#refuseAuth(code, CloseCode.TokenExpired, 'The credential expired; reconnect with a fresh one');
  }

  #open(principal: P): void {
    this.#clearAuthTimer();
    if (this.#expired(principal)) {
      this.#expire();
      return;
    }
    if (!this.#ctx.limits.openSocket(principal.id)) {
      this.#ctx.metrics.principalLimits.inc({ limit: 'sockets' });
      this.#refuseAuth(
        ErrorCode.TooManySockets,
        CloseCode.TooManySockets,
        `A principal may have at most ${this.#options.maxSocketsPerPrincipal} sockets open`,
      );
      return;
    }
    this.#countedSocket = true;
    this.#principal = principal;
    this.#state = 'open';
    this.#armExpiry(principal);
    this.#ctx.onAuthenticated?.(this);
    this.#sendHello();
  }

  #sendHello(): void {
    this.#send({
      type: 'hello',
      protocol: this.#version,
      serverId: this.#options.serverId,
      heartbeatIntervalMs: this.#options.heartbeatIntervalMs,
      ...this.#epochField(),
      ...reconnectHint(this.#ctx.socketCount(), this.#options.reconnectsPerSecond),
    });
  }

  /** Takes one rate-limit token; on refusal answers every refused frame and closes a persistent flooder. */
  #takeToken(requestId: string | undefined): boolean {
    // The socket's own budget first, then its principal's, shared with the principal's other sockets.
    if (this.#bucket.tryTake() && this.#ctx.limits.takeFrame((this.#principal as P).id)) return true;
    const now = this.#options.clock();
    if (now - this.#lastViolationAt > VIOLATION_STREAK_MS) this.#violations = 0;
    this.#lastViolationAt = now;
    this.#violations += 1;
    this.#ctx.metrics.framesRejected.inc({ code: ErrorCode.RateLimited });
    if (this.#violations >= this.#options.maxRateLimitViolations) {
      this.close(CloseCode.RateLimited, 'rate limit exceeded');
    } else {
      // Every refused frame is answered, so a client never waits for the reply to a request that was
      // dropped. No amplification: one small frame per refused one, and a streak of
      // `maxRateLimitViolations` closes the socket.
      this.#sendError(
        ErrorCode.RateLimited,
        `Rate limit exceeded (${this.#options.rateLimitPerSecond} frames/s); frames are being dropped`,
        requestId === undefined ? {} : { requestId },
      );
    }
    return false;
  }

  #invalid(code: ErrorCode, message: string, refs: { requestId?: string; taskId?: string }): void {
    this.#ctx.metrics.framesRejected.inc({ code });
    this.#invalidFrames += 1;
    this.#sendError(code, message, refs);
    if (this.#invalidFrames >= this.#options.maxInvalidFrames) {
      this.close(CloseCode.PolicyViolation, 'too many invalid frames');
    }
  }

  // ── subscriptions ─────────────────────────────────────────────────────────────────────────────

  async #subscribe(frame: SubscribeFrame): Promise<void> {
    const { taskId, afterSeq } = frame;
    const refs = { ...(frame.id === undefined ? {} : { requestId: frame.id }), taskId };
    let sub = this.#subs.get(taskId);
    if (sub === undefined) {
      if (this.#subs.size >= this.#options.maxSubscriptionsPerSocket) {
        this.#ctx.metrics.framesRejected.inc({ code: ErrorCode.TooManySubscriptions });
        this.#sendError(
          ErrorCode.TooManySubscriptions,
          `A socket may follow at most ${this.#options.maxSubscriptionsPerSocket} tasks`,
          refs,
        );
        return;
      }
      const principalId = (this.#principal as P).id;
      if (!this.#ctx.limits.addSubscription(principalId)) {
        this.#ctx.metrics.principalLimits.inc({ limit: 'subscriptions' });
        this.#ctx.metrics.framesRejected.inc({ code: ErrorCode.TooManySubscriptions });
        this.#sendError(
          ErrorCode.TooManySubscriptions,
          `A principal may follow at most ${this.#options.maxSubscriptionsPerPrincipal} tasks`,
          refs,
        );
        return;
      }
      sub = this.#newSub(taskId);
    } else {
      // A resubscribe restarts the stream from the client's new cursor.
      this.#ctx.metrics.resyncs.inc({ reason: 'resubscribe' });
      this.#resetSub(sub);
    }
    // Acks up to the client's own cursor become valid once the task is loaded and the principal may
    // watch it; acks that arrive before are held, so a refused subscribe never reaches the store.
    sub.claimed = afterSeq;
    const gen = sub.generation;
    const current = sub;
    const stale = () => current.removed || current.generation !== gen || this.#state !== 'open';

    const task = await this.#read(
      () => (stale() ? Promise.resolve(null) : this.#ctx.options.store.getTask(taskId)),
      stale,
    ).catch((error: unknown) => {
      if (!stale()) this.#failSubscription(current, error, refs);
      return null;
    });
    if (task === null || stale()) return;
    // Not found and not allowed cost the same single read and carry no task data; unless the
    // application opted into `revealTaskExistence`, they are the very same answer (no existence oracle).
    if (task === undefined || !(await this.#ctx.auth.authorize(this.#principal as P, task, 'watch'))) {
      if (stale()) return;
      this.#removeSub(current);
      const forbidden = task !== undefined && this.#options.revealTaskExistence;
      const code = forbidden ? ErrorCode.Forbidden : ErrorCode.TaskNotFound;
      this.#ctx.metrics.framesRejected.inc({ code });
      this.#sendError(
        code,
        forbidden ? `You may not watch task ${taskId}` : taskNotFoundMessage(taskId),
        refs,
      );
      return;
    }
    if (stale()) return;
    current.authorized = true;
    // Nothing beyond the task's last seq exists to acknowledge, whatever the client claimed.
    current.ackable = Math.min(afterSeq, task.seq);
    if (current.pendingAck > 0) {
      const seq = current.pendingAck;
      current.pendingAck = 0;
      this.#ack({ type: 'ack', taskId, seq });
    }
    this.#ctx.hub.observe(taskId, task.seq);
    this.#queue.track({ id: task.id, kind: task.kind, createdAt: task.createdAt });
    if (afterSeq > 0) this.#ctx.metrics.resumes.inc();
    const backlog = task.seq - afterSeq;
    if (backlog < 0 && this.#version >= 2) {
      // The cursor is beyond the task's log (a restored store, a purged id reused): no event will ever be
      // above it, so the client must drop it. Its claim is void too: it has nothing of this log.
      this.#ctx.metrics.resyncs.inc({ reason: 'cursor_ahead' });
      current.claimed = 0;
      current.ackable = 0;
      this.#sendReset(current, toTaskView(task));
    } else if (afterSeq === 0 || backlog <= 0 || backlog > this.#options.maxReplayEvents) {
      if (afterSeq > 0 && backlog > this.#options.maxReplayEvents) {
        this.#ctx.metrics.resyncs.inc({ reason: 'replay_limit' });
      }
      this.#pushSnapshot(current, toTaskView(task));
    } else {
      current.cursor = afterSeq;
    }
    await this.#catchUp(current, gen, refs);
  }

  /** Bounded: the oldest unsubscribed id goes first once the socket's subscription cap is reached. */
  #rememberUnfollowed(taskId: string): void {
    this.#unfollowed.delete(taskId);
    this.#unfollowed.add(taskId);
    if (this.#unfollowed.size > this.#options.maxSubscriptionsPerSocket) {
      const oldest = this.#unfollowed.values().next().value;
      if (oldest !== undefined) this.#unfollowed.delete(oldest);
    }
  }

  #newSub(taskId: string): Subscription {
    this.#unfollowed.delete(taskId);
    const sub: Subscription = {
      taskId,
      generation: 0,
      removed: false,
      ready: false,
      authorized: false,
      pendingAck: 0,
      cursor: 0,
      ackable: 0,
      written: 0,
      acked: 0,
      claimed: 0,
      terminalQueued: false,
      terminalSeq: undefined,
      terminalFrame: undefined,
      terminalSentAt: undefined,
      terminalAcked: false,
      unfollow: undefined,
      retryTimer: undefined,
    };
    this.#subs.set(taskId, sub);
    this.#ctx.metrics.subscriptions.inc();
    // Follow before the first read: a commit after that read is then announced to the hub.
    sub.unfollow = this.#ctx.hub.follow(taskId, { deliver: (events) => this.#deliver(sub, events) });
    return sub;
  }

  /** Back to a fresh stream (resubscribe): the queue and retry state of the task start over. */
  #resetSub(sub: Subscription): void {
    sub.generation += 1;
    sub.ready = false;
    sub.authorized = false;
    sub.pendingAck = 0;
    sub.cursor = 0;
    sub.ackable = 0;
    sub.acked = 0;
    sub.claimed = 0;
    this.#forgetTerminal(sub);
    if (sub.retryTimer !== undefined) clearTimeout(sub.retryTimer);
    sub.retryTimer = undefined;
    this.#queue.untrack(sub.taskId);
    this.#retries.forget(sub.taskId);
  }

  #removeSub(sub: Subscription): void {
    if (sub.removed) return;
    this.#resetSub(sub);
    sub.removed = true;
    this.#subs.delete(sub.taskId);
    this.#ctx.metrics.subscriptions.dec();
    if (this.#principal !== undefined) this.#ctx.limits.removeSubscription(this.#principal.id);
    sub.unfollow?.();
    sub.unfollow = undefined;
  }

  #forgetTerminal(sub: Subscription): void {
    if (sub.terminalSentAt !== undefined && !sub.terminalAcked) this.#ctx.metrics.unackedTerminals.dec();
    sub.terminalQueued = false;
    sub.terminalSeq = undefined;
    sub.terminalFrame = undefined;
    sub.terminalSentAt = undefined;
    sub.terminalAcked = false;
  }

  #failSubscription(sub: Subscription, error: unknown, refs: { requestId?: string; taskId: string }): void {
    this.#removeSub(sub);
    const code = isProgressError(error) ? error.code : ErrorCode.Internal;
    if (code === ErrorCode.StoreUnavailable || code === ErrorCode.Internal)
      this.#ctx.metrics.storeErrors.inc();
    this.#ctx.logger.warn(
      { err: describeError(error), connection: this.id, taskId: sub.taskId },
      'subscribe failed',
    );
    this.#sendError(
      code,
      isProgressError(error) ? error.message : 'The task could not be loaded; try again',
      refs,
    );
  }

  /**
   * Reads the events between the subscription's cursor and the latest seq the hub knows, until none is
   * missing, then marks it ready for live events. Events the hub dispatched meanwhile were ignored, but
   * the hub's latest seq covers them, so the loop reads them too.
   */
  async #catchUp(
    sub: Subscription,
    gen: number,
    refs?: { requestId?: string; taskId: string },
  ): Promise<void> {
    const stale = () => sub.removed || sub.generation !== gen || this.#state !== 'open';
    sub.ready = false;
    try {
      for (;;) {
        const target = this.#ctx.hub.latestSeq(sub.taskId) ?? sub.cursor;
        if (sub.terminalQueued || sub.cursor >= target) break;
        if (target - sub.cursor > this.#options.maxReplayEvents) {
          const task = await this.#read(
            () => (stale() ? Promise.resolve(undefined) : this.#ctx.options.store.getTask(sub.taskId)),
            stale,
          );
          if (stale()) return;
          if (task === undefined) {
            this.#removeSub(sub);
            this.#sendError(ErrorCode.TaskNotFound, `Task ${sub.taskId} no longer exists`, {
              taskId: sub.taskId,
            });
            return;
          }
          this.#ctx.metrics.resyncs.inc({ reason: 'replay_limit' });
          this.#ctx.hub.observe(sub.taskId, task.seq);
          this.#pushSnapshot(sub, toTaskView(task));
          continue;
        }
        const events = await this.#read(
          () =>
            stale()
              ? Promise.resolve([])
              : this.#ctx.options.store.readEvents(sub.taskId, sub.cursor, this.#options.maxReplayEvents),
          stale,
        );
        if (stale()) return;
        const before = sub.cursor;
        this.#pushEvents(sub, events);
        this.#drain();
        if (sub.cursor === before) break;
      }
    } catch (error) {
      if (stale()) return;
      if (refs !== undefined) {
        this.#failSubscription(sub, error, refs);
        return;
      }
      this.#ctx.metrics.storeErrors.inc();
      this.#ctx.logger.warn(
        { err: describeError(error), connection: this.id, taskId: sub.taskId },
        'catch-up read failed; retrying',
      );
      sub.retryTimer = setTimeout(() => {
        sub.retryTimer = undefined;
        if (!stale()) void this.#catchUp(sub, gen).catch((e: unknown) => this.#internalError(e));
      }, this.#options.storeRetryDelayMs);
      sub.retryTimer.unref();
      return;
    }
    sub.ready = true;
    this.#drain();
  }

  /**
   * A store read for this socket's subscriptions, in its principal's turn (see {@link FairReads}). The
   * read checks staleness when it starts: a subscription superseded while queued costs no read.
   */
  #read<T>(read: () => Promise<T>, stale: () => boolean): Promise<T> {
    return this.#ctx.reads.run((this.#principal as P).id, read, stale);
  }

  /** Live events from the hub (contiguous, in order). */
  #deliver(sub: Subscription, events: readonly TaskEvent[]): void {
    if (!sub.ready || sub.removed || this.#state !== 'open') return;
    const first = events.find((event) => event.seq > sub.cursor);
    if (first !== undefined && first.seq !== sub.cursor + 1) {
      // Missed events (a failed catch-up, a hub restart): fetch them rather than skip ahead.
      this.#ctx.metrics.resyncs.inc({ reason: 'gap' });
      void this.#catchUp(sub, sub.generation).catch((error: unknown) => this.#internalError(error));
      return;
    }
    this.#pushEvents(sub, events);
    this.#drain();
  }

  /** Queues the events that extend the cursor without a gap. */
  #pushEvents(sub: Subscription, events: readonly TaskEvent[]): void {
    for (const event of events) {
      if (sub.terminalQueued) return;
      if (event.seq <= sub.cursor) continue;
      if (event.seq !== sub.cursor + 1) return;
      this.#queue.pushEvent(event);
      sub.cursor = event.seq;
      if (sub.cursor > sub.ackable) sub.ackable = sub.cursor;
      if (isTerminalType(event.type)) sub.terminalQueued = true;
    }
  }

  #pushSnapshot(sub: Subscription, view: TaskView): void {
    this.#queue.pushSnapshot(view);
    if (view.seq > sub.cursor) sub.cursor = view.seq;
    if (sub.cursor > sub.ackable) sub.ackable = sub.cursor;
    if (view.status !== 'running') sub.terminalQueued = true;
  }

  /**
   * Sends a snapshot marked `reset` at once, ahead of the queue: the subscription was just reset, so
   * nothing of this task is queued, and the events after it go through the queue as usual.
   */
  #sendReset(sub: Subscription, view: TaskView): void {
    const text = encodeFrame({ type: 'snapshot', task: view, ...this.#epochField(), reset: true });
    this.#sendText(text);
    this.#ctx.metrics.snapshotsSent.inc();
    sub.cursor = view.seq;
    sub.ackable = view.seq;
    this.#written(sub.taskId, view.seq);
    if (view.status !== 'running') {
      sub.terminalQueued = true;
      this.#terminalSent(sub.taskId, view.seq, text);
    }
  }

  /** `{ epoch }` for a version-2 socket once the store's epoch is known, else nothing. */
  #epochField(): { epoch?: string } {
    const epoch = this.#ctx.epoch.current;
    return this.#version >= 2 && epoch !== undefined ? { epoch } : {};
  }

  // ── acknowledgements and terminal retries ────────────────────────────────────────────────────

  #ackAdvances(frame: AckFrame): boolean {
    const sub = this.#subs.get(frame.taskId);
    return (
      sub?.authorized === true && frame.seq > sub.acked && frame.seq <= Math.max(sub.ackable, sub.written)
    );
  }

  #ack(frame: AckFrame): void {
    const sub = this.#subs.get(frame.taskId);
    if (sub === undefined) {
      // Acks never reach the store for unfollowed tasks, so a socket cannot mark another owner's events
      // processed. A late ack after an unsubscribe is a normal race (the re-ack of a terminal frame
      // re-sent before the unsubscribe arrived): silent. Any other is answered, not counted as invalid,
      // so the client learns that nothing was recorded.
      if (this.#unfollowed.has(frame.taskId)) return;
      this.#ctx.metrics.framesRejected.inc({ code: ErrorCode.InvalidInput });
      this.#sendError(
        ErrorCode.InvalidInput,
        `ack ignored: this socket does not follow task ${frame.taskId}`,
        { taskId: frame.taskId },
      );
      return;
    }
    if (!sub.authorized) {
      // Authorization or the load is still running: remember it, act on it only once both succeeded.
      if (frame.seq > sub.pendingAck) sub.pendingAck = frame.seq;
      return;
    }
    const limit = Math.max(sub.ackable, sub.written);
    if (frame.seq > limit) {
      this.#invalid(
        ErrorCode.InvalidInput,
        `ack of seq ${frame.seq} is beyond the last seq sent on this socket (${limit})`,
        { taskId: frame.taskId },
      );
      return;
    }
    if (frame.seq <= sub.acked) return;
    sub.acked = frame.seq;
    this.#retries.acked(frame.taskId, frame.seq);
    if (
      sub.terminalSeq !== undefined &&
      frame.seq >= sub.terminalSeq &&
      sub.terminalSentAt !== undefined &&
      !sub.terminalAcked
    ) {
      sub.terminalAcked = true;
      this.#ctx.metrics.unackedTerminals.dec();
      const seconds = Math.max(0, this.#options.clock() - sub.terminalSentAt) / 1000;
      this.#ctx.metrics.terminalAckLatency.observe(seconds);
    }
    this.#ctx.acks.ack(frame.taskId, frame.seq);
    this.#scheduleRetry();
  }

  /** A terminal frame went out: remember it and schedule its re-send until it is acknowledged. */
  #terminalSent(taskId: string, seq: number, text: string): void {
    const sub = this.#subs.get(taskId);
    // A client that acknowledged it, or resumed from it, has it: a snapshot re-stating it needs no retry.
    if (sub === undefined || sub.acked >= seq || sub.claimed >= seq) return;
    sub.terminalSeq = seq;
    sub.terminalFrame = text;
    if (sub.terminalSentAt === undefined) {
      sub.terminalSentAt = this.#options.clock();
      this.#ctx.metrics.unackedTerminals.inc();
    }
    this.#retries.sent(taskId, seq);
    this.#scheduleRetry();
  }

  /** Keeps the socket's one retry timer set for the earliest due re-send (or cleared when none). */
  #scheduleRetry(): void {
    const dueAt = this.#retries.nextDueAt();
    if (dueAt === this.#retryDueAt && (dueAt === undefined || this.#retryTimer !== undefined)) return;
    if (this.#retryTimer !== undefined) clearTimeout(this.#retryTimer);
    this.#retryTimer = undefined;
    this.#retryDueAt = dueAt;
    if (dueAt === undefined || this.#state !== 'open') return;
    this.#retryTimer = setTimeout(
      () => this.#guard(() => this.#onRetryTimer()),
      Math.max(1, dueAt - this.#options.clock()),
    );
    this.#retryTimer.unref();
  }

  #onRetryTimer(): void {
    this.#retryTimer = undefined;
    this.#retryDueAt = undefined;
    if (this.#state !== 'open') return;
    for (const { taskId, seq } of this.#retries.due()) {
      const sub = this.#subs.get(taskId);
      if (sub === undefined || sub.terminalSeq !== seq || sub.terminalFrame === undefined) {
        this.#retries.forget(taskId);
        continue;
      }
      // Straight to the socket: the frame already went through the queue once, after everything before it.
      this.#sendText(sub.terminalFrame);
      this.#ctx.metrics.terminalRetries.inc();
      this.#retries.sent(taskId, seq);
    }
    this.#scheduleRetry();
  }

  // ── sending ───────────────────────────────────────────────────────────────────────────────────

  /**
   * Writes queued entries while the socket's buffer is below the high-water mark. Above it, writing
   * pauses (polled on a short timer) and, once it resumes, runs of progress are coalesced into
   * snapshots until the queue is empty again.
   */
  #drain(): void {
    if (this.#state !== 'open' || this.#drainTimer !== undefined) return;
    if (this.#ws.readyState !== WebSocket.OPEN) return;
    while (this.#queue.size > 0) {
      if (this.#ws.bufferedAmount > this.#options.highWaterMarkBytes) {
        this.#congested = true;
        this.#drainTimer = setTimeout(() => {
          this.#drainTimer = undefined;
          this.#guard(() => this.#drain());
        }, this.#options.backpressurePollMs);
        this.#drainTimer.unref();
        return;
      }
      const entry = this.#queue.shift(this.#congested);
      if (entry === undefined) break;
      this.#sendEntry(entry);
    }
    this.#congested = false;
  }

  #sendEntry(entry: OutgoingEntry): void {
    switch (entry.kind) {
      case 'event': {
        const text = eventFrameText(entry.event);
        this.#sendText(text);
        this.#written(entry.event.taskId, entry.event.seq);
        this.#ctx.metrics.eventsSent.inc();
        if (isTerminalType(entry.event.type)) this.#terminalSent(entry.event.taskId, entry.event.seq, text);
        return;
      }
      case 'snapshot': {
        const text = encodeFrame({ type: 'snapshot', task: entry.task, ...this.#epochField() });
        this.#sendText(text);
        this.#written(entry.task.id, entry.task.seq);
        this.#ctx.metrics.snapshotsSent.inc();
        if (entry.task.status !== 'running') this.#terminalSent(entry.task.id, entry.task.seq, text);
        return;
      }
      default: {
        const unreachable: never = entry;
        throw new TypeError(`Unknown outgoing entry ${String(unreachable)}`);
      }
    }
  }

  #written(taskId: string, seq: number): void {
    const sub = this.#subs.get(taskId);
    if (sub !== undefined && seq > sub.written) sub.written = seq;
  }

  #send(frame: ServerFrame): void {
    this.#sendText(encodeFrame(frame));
  }

  #sendText(text: string): void {
    if (this.#ws.readyState !== WebSocket.OPEN) return;
    this.#ws.send(text, (error) => {
      if (error) this.#ctx.logger.debug({ err: describeError(error), connection: this.id }, 'send failed');
    });
  }

  #sendError(code: ErrorCode, message: string, refs: { requestId?: string; taskId?: string }): void {
    // Clipped so the frame stays valid for a strict client whatever a store's message says.
    const text =
      message.length <= LIMITS.maxMessageLength
        ? message
        : `${message.slice(0, LIMITS.maxMessageLength - 1)}…`;
    this.#send({ type: 'error', code, message: text, ...refs });
  }

  // ── failures and teardown ─────────────────────────────────────────────────────────────────────

  /** Runs `fn`, turning anything it throws into a log line and a metric: `ws` never sees it. */
  #guard(fn: () => void): void {
    try {
      fn();
    } catch (error) {
      this.#internalError(error);
    }
  }

  #internalError(error: unknown, requestId?: string, taskId?: string): void {
    this.#ctx.metrics.handlerErrors.inc();
    this.#ctx.logger.error(
      { err: describeError(error), connection: this.id, taskId },
      'connection handler failed',
    );
    try {
      if (this.#state === 'open') {
        this.#sendError(ErrorCode.Internal, 'The server failed to handle this frame', {
          ...(requestId === undefined ? {} : { requestId }),
          ...(taskId === undefined ? {} : { taskId }),
        });
      }
    } catch {
      // The socket is unusable; its close event cleans up.
    }
  }

  /** The state, read without the compiler's narrowing (handlers called in between may change it). */
  #stateNow(): State {
    return this.#state;
  }

  #clearAuthTimer(): void {
    if (this.#authTimer !== undefined) clearTimeout(this.#authTimer);
    this.#authTimer = undefined;
  }

  #onClose(): void {
    if (this.#state === 'closed') return;
    this.#state = 'closed';
    this.#clearAuthTimer();
    for (const timer of [this.#retryTimer, this.#drainTimer, this.#closeTimer, this.#expiryTimer]) {
      if (timer !== undefined) clearTimeout(timer);
    }
    this.#retryTimer = undefined;
    this.#drainTimer = undefined;
    this.#closeTimer = undefined;
    this.#expiryTimer = undefined;
    for (const sub of [...this.#subs.values()]) this.#removeSub(sub);
    this.#queue.clear();
    this.#pendingFrames.length = 0;
    this.#ctx.metrics.sockets.dec();
    if (this.#countedSocket && this.#principal !== undefined)
      this.#ctx.limits.closeSocket(this.#principal.id);
    this.#resolveClosed();
    this.#ctx.onClose(this);
  }
}

/**
 * The spread a client should jitter its first retry over, should it lose this socket: every socket of
 * this replica coming back within it arrives at about `perSecond`. Omitted when small enough that the
 * client's own setting decides anyway (and when disabled), to keep `hello` as it was.
 */
function reconnectHint(sockets: number, perSecond: number): { reconnectDelayMs?: number } {
  if (perSecond === 0) return {};
  const spreadMs = Math.ceil((sockets * 1000) / perSecond);
  return spreadMs > 100 ? { reconnectDelayMs: Math.min(spreadMs, 30_000) } : {};
}
