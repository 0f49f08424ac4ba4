/**
 * One WebSocket's routing: frames in (decode, rate limit, dispatch), liveness, close and shutdown. The
 * frame budget is {@link FrameBudget}'s, authentication is the {@link AuthGate}'s, subscriptions are
 * {@link Subscriptions}', and all writing is the {@link SocketWriter}'s; this file only ties them to
 * the socket.
 *
 * @module
 */
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { ClientFrame, ProtocolVersion } from '@finishline/core';
import { CloseCode, ErrorCode } from '@finishline/core';
import type { DecodeResult } from '@finishline/core/internal';
import { decodeClientFrame } from '@finishline/core/internal';
import WebSocket from 'ws';
import type { Principal } from '../auth.js';
import { describeError } from '../logger.js';
import type { ResolvedServerOptions } from '../options.js';
import { delay, waitAtMost } from '../wait.js';
import type { SocketState } from './auth-gate.js';
import { AuthGate } from './auth-gate.js';
import { FrameBudget } from './frame-budget.js';
import { versionOfSubprotocol } from './protocol-version.js';
import type { SocketServices } from './services.js';
import { type FrameRefs, SocketWriter } from './socket-writer.js';
import { Subscriptions } from './subscriptions.js';

/** What the acceptor tells a connection, and wants to hear from it. */
export interface ConnectionHooks<P extends Principal> {
  /** Number of open connections of the server (for the reconnect hint in `hello`). */
  socketCount(): number;
  /** Called once, when the socket has closed and the connection released everything. */
  onClose(connection: Connection<P>): void;
  /** Called once, when the socket has a principal (at once, or after its `auth` frame). */
  onAuthenticated(connection: Connection<P>): void;
}

/** Longest close reason RFC 6455 allows (123 bytes); ours are ASCII. */
const MAX_CLOSE_REASON = 123;
/** How long a peer gets to complete the closing handshake before the socket is destroyed. */
export const CLOSE_GRACE_MS = 2000;

let nextConnectionId = 1;

/**
 * One WebSocket. Everything that happens on it is confined to it: a handler that fails logs, counts,
 * answers with an `error` frame or closes this socket, and never throws into `ws` or touches other sockets.
 */
export class Connection<P extends Principal> {
  /** Process-unique id, for logs. */
  readonly id = nextConnectionId++;
  readonly #ws: WebSocket;
  /** The server's parts, one object shared by every connection. */
  readonly #ctx: SocketServices<P>;
  readonly #hooks: ConnectionHooks<P>;
  readonly #options: ResolvedServerOptions<P>;
  readonly #budget: FrameBudget;
  /** The protocol version of this socket, from the subprotocol selected at the upgrade. */
  readonly #version: ProtocolVersion;
  readonly #writer: SocketWriter;
  readonly #gate: AuthGate<P>;
  readonly #subs: Subscriptions<P>;
  #state: SocketState = 'authenticating';
  /** This socket counts against its principal's socket cap (released on close). */
  #countedSocket = false;
  #closeTimer: NodeJS.Timeout | undefined;
  #alive = true;
  /** `bufferedAmount` when the last ping was sent: a peer that reads makes it shrink. */
  #bufferedAtPing = 0;
  /** The writer's frames written and flushed when the last ping was sent (see `tick`). */
  #writtenAtPing = 0;
  #flushedAtPing = 0;
  readonly #closed: Promise<void>;
  #resolveClosed: () => void = () => {};

  /**
   * @param socket - the accepted socket, its upgrade request, and the principal established at the
   *   upgrade (`undefined` when the socket must authenticate with a first `auth` frame); `transport` is
   *   the TCP socket under `ws` when the server upgraded it itself (see {@link WriterContext.transport}).
   */
  constructor(
    socket: {
      ws: WebSocket;
      request: IncomingMessage;
      principal: P | undefined;
      transport?: Duplex | undefined;
    },
    ctx: SocketServices<P>,
    hooks: ConnectionHooks<P>,
  ) {
    const { ws, request, principal, transport } = socket;
    this.#ws = ws;
    this.#ctx = ctx;
    this.#hooks = hooks;
    this.#options = ctx.options;
    this.#version = versionOfSubprotocol(ws.protocol);
    this.#closed = new Promise((resolve) => {
      this.#resolveClosed = resolve;
    });
    const isOpen = (): boolean => this.#state === 'open';
    const guard = (fn: () => void): void => this.#guard(fn);
    // Every context below is a literal with its properties spelled out, never `{ ...common, … }`: V8 gave
    // each spread-built object a hidden class of its own, so each connection added four classes (2.5 KiB
    // of heap per socket) and every property read through them missed the inline caches.
    const { metrics, logger } = ctx;
    const connectionId = this.id;
    const version = this.#version;
    this.#writer = new SocketWriter({
      metrics,
      logger,
      connectionId,
      version,
      ws,
      transport,
      options: this.#options,
      epoch: ctx.epoch,
      roundTrips: ctx.roundTrips,
      // Acks come only from an authenticated socket: by the first sample, the principal is known.
      principalId: () => (this.#gate.principal as P).id,
      // Nothing of a task goes out under an expired credential (see `AuthGate.inForce`).
      isOpen: () => this.#state === 'open' && this.#gate.inForce(),
      guard,
      log: (taskId) => this.#subs.get(taskId),
      // Events are queued only for subscriptions, so after authentication: the principal is known.
      queuedBytes: (delta) => ctx.limits.addQueuedBytes((this.#gate.principal as P).id, delta),
      overflow: (bound) => {
        // No close frame: it would wait behind the backlog the peer is not reading. The client reconnects
        // and resumes from its cursor, as after the liveness check's termination.
        this.#ctx.logger.info(
          { connection: this.id, bound, [bound]: this.#options[bound] },
          `send queue over ${bound} (client reads too slowly); terminating socket`,
        );
        this.#ws.terminate();
      },
    });
    this.#budget = new FrameBudget({
      options: this.#options,
      metrics: ctx.metrics,
      limits: ctx.limits,
      writer: this.#writer,
      principalId: () => (this.#gate.principal as P).id,
      close: (code, reason) => this.close(code, reason),
    });
    this.#subs = new Subscriptions<P>({
      metrics,
      logger,
      connectionId,
      version,
      options: this.#options,
      auth: ctx.auth,
      hub: ctx.hub,
      acks: ctx.acks,
      limits: ctx.limits,
      writer: this.#writer,
      principal: () => this.#gate.principal as P,
      isOpen,
      inForce: () => this.#gate.inForce(),
      internalError: (error, requestId, taskId) => this.#internalError(error, requestId, taskId),
    });
    this.#gate = new AuthGate<P>({
      metrics,
      logger,
      connectionId,
      version,
      request,
      options: this.#options,
      auth: ctx.auth,
      writer: this.#writer,
      state: () => this.#state,
      open: (authenticated) => this.#open(authenticated),
      // Version 1's hello carries no epoch.
      helloReady: () => (version >= 2 ? ctx.epoch.firstRead : undefined),
      replay: (frame) => this.#onDecoded(frame),
      payRenewal: (wanted) => this.#budget.waitForToken(wanted),
      renewed: (renewed) => {
        this.#sendHello();
        void this.#subs.recheck(renewed).catch((error: unknown) => this.#internalError(error));
      },
      close: (code, reason) => this.close(code, reason),
      guard,
    });
    ctx.metrics.sockets.inc();

    ws.on('message', (data) => this.#guard(() => this.#onMessage(data)));
    ws.on('pong', () => {
      this.#alive = true;
    });
    ws.on('error', (error) => {
      this.#ctx.logger.debug({ err: describeError(error), connection: this.id }, 'socket error');
    });
    ws.on('close', () => this.#guard(() => this.#onClose()));
    this.#gate.begin(principal);
  }

  /** The authenticated principal, once there is one. */
  get principal(): P | undefined {
    return this.#gate.principal;
  }

  /** Number of tasks this socket follows. */
  get subscriptionCount(): number {
    return this.#subs.size;
  }

  /** Resolves once the socket closed and everything was released. */
  get closed(): Promise<void> {
    return this.#closed;
  }

  /** The store's epoch changed: each subscription starts over with a reset snapshot of the new epoch. */
  epochRenewed(): void {
    this.#guard(() => {
      if (this.#state === 'open') this.#subs.epochRenewed();
    });
  }

  /**
   * Periodic liveness work, called by the server every `heartbeatIntervalMs`: terminate a socket that did
   * not answer the previous ping, ping again, and send a heartbeat frame.
   */
  tick(): void {
    this.#guard(() => {
      if (this.#state !== 'open' || this.#ws.readyState !== WebSocket.OPEN) return;
      // A heartbeat names the followed tasks and their seqs.
      if (!this.#gate.inForce()) return;
      // Only a pong proves the peer reads (a peer that keeps sending frames but stops reading would
      // otherwise stay for ever, with everything sent to it buffered here). A peer still working through
      // a backlog has not reached the ping yet: its buffer shrank since, so it is spared another interval.
      const buffered = this.#ws.bufferedAmount;
      // The buffer alone does not tell: while a backlog is queued here the drain refills it to the
      // high-water mark as fast as the peer reads, so it was as large at this tick as at the ping about
      // half the time, and a peer still reading towards the ping was terminated. A frame written before
      // the ping and taken by the socket since is that progress (a peer that stopped reading stops it once
      // the connection's buffers are full); one written after it says nothing of the ping.
      const readTowardsPing = Math.min(this.#writer.framesFlushed, this.#writtenAtPing) > this.#flushedAtPing;
      if (!this.#alive && !(buffered < this.#bufferedAtPing) && !readTowardsPing) {
        this.#ctx.logger.info(
          { connection: this.id },
          'no pong within a heartbeat interval; terminating socket',
        );
        this.#ws.terminate();
        return;
      }
      this.#alive = false;
      this.#bufferedAtPing = buffered;
      this.#writtenAtPing = this.#writer.framesWritten;
      this.#flushedAtPing = this.#writer.framesFlushed;
      this.#writer.ping();
      // Only when everything queued went out, with the seq of the last frame sent per task: a client that
      // sees a seq above its cursor really lost a frame (no false alarm while a backlog drains or a
      // commit is still being read). A subscription still loading reports no more than what the client
      // resumed from, so it never triggers a needless resync. Except while the queue waits for a renewal's
      // re-check, which it never drains before: once the client read what was written, it got nothing at
      // all until the re-check ended (each task's `authorize` may take `upgradeTimeoutMs`, in turn), and
      // its silence deadline (delivery rule 7) closed a socket that read. Those heartbeats name each task at
      // the seq of the last frame written, never of one still queued.
      const held = this.#writer.queueHeld;
      if (!this.#writer.idle && !held) return;
      this.#writer.send({
        type: 'heartbeat',
        time: this.#options.clock(),
        seqs: this.#subs.heartbeatSeqs(held),
      });
    });
  }

  /** Closes the socket with `code` (idempotent); destroys it if the peer does not finish the handshake. */
  close(code: number, reason: string): void {
    if (this.#state === 'closing' || this.#state === 'closed') return;
    this.#state = 'closing';
    this.#gate.stopWaiting();
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
    // What this tick wrote is still corked: out with it, so it is measured as sent or buffered.
    this.#writer.flushNow();
    while (
      this.#state === 'open' &&
      this.#ws.readyState === WebSocket.OPEN &&
      this.#writer.flushing &&
      Date.now() < deadline
    ) {
      this.#writer.drain();
      this.#writer.flushNow();
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
    if (this.#state === 'closed') return;
    // Text and binary messages alike: the protocol accepts its UTF-8 JSON in either.
    const decoded = decodeClientFrame(data, { maxBytes: this.#options.maxPayloadBytes });
    // An expired credential ends the socket before its frame is handled, as its expiry timer would have
    // (a busy event loop runs it late; an application's clock runs apart from it): until then a
    // `subscribe` ran the `authorize` hook and the store's read, and was answered, on that credential.
    // The frame is then one on a closing socket, as it would have been after the timer.
    if (this.#state === 'open') this.#gate.inForce();
    if (this.#state === 'closing') {
      // Our close crossed frames already on their way. An ack among them still counts: it records what
      // the client processed, and the client will not send it again; dropping it left the task's processed
      // mark behind (the full chaos run found it, when replicas shut down gracefully). Anything else is moot
      // on a closing socket. Not after an expiry: this frame arrived once the credential had expired (the
      // check above, or the expiry's timer, closed the socket), and recorded, its ack was an effect of it.
      if (this.#gate.expired) return;
      if (decoded.ok && decoded.frame.type === 'ack' && this.#subs.ackAdvances(decoded.frame)) {
        this.#subs.ack(decoded.frame);
      }
      return;
    }
    if (this.#state === 'authenticating') {
      this.#gate.beforeAuth(decoded, rawByteLength(data));
      return;
    }
    this.#onDecoded(decoded);
  }

  #onDecoded(decoded: DecodeResult<ClientFrame>): void {
    if (!decoded.ok) {
      const byRequest: FrameRefs = decoded.requestId === undefined ? {} : { requestId: decoded.requestId };
      if (!this.#take(byRequest)) return;
      const { code, message, taskId } = decoded.error;
      const refs = { ...byRequest, ...(taskId === undefined ? {} : { taskId }) };
      if (code === ErrorCode.UnsupportedProtocol) {
        // A version this server does not speak (an `auth` renewal claiming one): as before authentication,
        // the socket cannot go on in it (docs/protocol.md, Versioning).
        this.#gate.refuse(code, CloseCode.UnsupportedProtocol, message);
        return;
      }
      if (code === ErrorCode.UnknownFrame) {
        // A client newer than this server, not a broken one: answered, and never a reason to disconnect
        // (a client closed for it would reconnect and send it again). The rate limit still bounds it.
        this.#ctx.metrics.framesRejected.inc({ code });
        this.#writer.sendError(code, message, refs);
        return;
      }
      this.#budget.invalid(code, message, refs);
      return;
    }
    const frame = decoded.frame;
    // Acks of new events are bounded by what the server sends, and unsubscribes that end a subscription
    // by the subscribes that paid for it, so neither needs a budget. A refused unsubscribe would leave the
    // server pushing the task's frames for the rest of its life: its error names no task, and a client
    // drops errors about tasks it left. Anything else (repeated or bogus acks, an unsubscribe of a task
    // the socket does not follow) pays one token.
    if (frame.type === 'auth' && this.#version >= 2) {
      // A renewal over the budget is not dropped: an `auth` has no `id`, so its `rate_limited` named
      // nothing (the same error as a refused `ack`'s or `ping`'s), and the client could not tell its
      // renewal was refused. It waits for a token instead (see `AuthGate.renew`), answered as any
      // renewal is; its refusal still counts towards the streak that closes a flooding socket (4008).
      const paid = this.#take(undefined);
      if (this.#state === 'open') this.#gate.renew(frame.token, paid);
      return;
    }
    const free =
      (frame.type === 'ack' && this.#subs.ackAdvances(frame)) ||
      (frame.type === 'unsubscribe' && this.#subs.get(frame.taskId) !== undefined);
    if (!free && !this.#take(refusalRefs(frame))) return;
    this.#handle(frame);
  }

  /**
   * Takes the frame's rate-limit token (see {@link FrameBudget.take}). The budget reads the clock (the
   * socket's bucket, the principal's, a refusal's time); one that throws (returned NaN once) fails the
   * frame with `internal` naming it by `refs`, as a ping's pong read does. Left to the guard, the error
   * carried no `requestId`, and the client could not match it to its request.
   */
  #take(refs: FrameRefs | undefined): boolean {
    try {
      return this.#budget.take(refs);
    } catch (error) {
      this.#internalError(error, refs?.requestId, refs?.taskId);
      return false;
    }
  }

  #handle(frame: ClientFrame): void {
    switch (frame.type) {
      case 'auth':
        if (this.#version >= 2) {
          this.#gate.renew(frame.token);
          return;
        }
        this.#writer.sendError(
          ErrorCode.InvalidFrame,
          'Already authenticated: auth is only valid as the first frame',
          {},
        );
        return;
      case 'subscribe':
        void this.#subs
          .subscribe(frame)
          .catch((error: unknown) => this.#internalError(error, frame.id, frame.taskId));
        return;
      case 'unsubscribe':
        this.#subs.unsubscribe(frame.taskId);
        return;
      case 'ack':
        this.#subs.ack(frame);
        return;
      case 'ping': {
        // Read here rather than let the guard catch it: the guard's error names no frame, and the client
        // matches an error to its ping by the ping's id, as it does every other frame's.
        let time: number;
        try {
          time = this.#options.clock();
        } catch (error) {
          this.#internalError(error, frame.id);
          return;
        }
        this.#writer.send({ type: 'pong', ...(frame.id === undefined ? {} : { requestId: frame.id }), time });
        return;
      }
      default: {
        const unreachable: never = frame;
        this.#writer.sendError(ErrorCode.UnknownFrame, `Unknown frame ${String(unreachable)}`, {});
      }
    }
  }

  /** Opens the socket for an authenticated principal; `false` when its socket cap refused it. */
  #open(principal: P): boolean {
    if (!this.#ctx.limits.openSocket(principal.id)) {
      this.#ctx.metrics.principalLimits.inc({ limit: 'sockets' });
      this.#gate.refuse(
        ErrorCode.TooManySockets,
        CloseCode.TooManySockets,
        `A principal may have at most ${this.#options.maxSocketsPerPrincipal} sockets open`,
      );
      return false;
    }
    this.#countedSocket = true;
    this.#state = 'open';
    this.#hooks.onAuthenticated(this);
    this.#sendHello();
    return true;
  }

  #sendHello(): void {
    this.#writer.send({
      type: 'hello',
      protocol: this.#version,
      serverId: this.#options.serverId,
      heartbeatIntervalMs: this.#options.heartbeatIntervalMs,
      ...this.#writer.epochField(),
      ...reconnectHint(this.#hooks.socketCount(), this.#options.reconnectsPerSecond),
    });
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
        this.#writer.sendError(ErrorCode.Internal, 'The server failed to handle this frame', {
          ...(requestId === undefined ? {} : { requestId }),
          ...(taskId === undefined ? {} : { taskId }),
        });
      }
    } catch {
      // The socket is unusable; its close event cleans up.
    }
  }

  /** The state, read without the compiler's narrowing (handlers called in between may change it). */
  #stateNow(): SocketState {
    return this.#state;
  }

  #onClose(): void {
    if (this.#state === 'closed') return;
    this.#state = 'closed';
    this.#gate.stop();
    if (this.#closeTimer !== undefined) clearTimeout(this.#closeTimer);
    this.#closeTimer = undefined;
    this.#subs.removeAll();
    this.#writer.stop();
    this.#ctx.metrics.sockets.dec();
    const principal = this.#gate.principal;
    if (this.#countedSocket && principal !== undefined) this.#ctx.limits.closeSocket(principal.id);
    this.#resolveClosed();
    this.#hooks.onClose(this);
  }
}

/**
 * What the answer to a rate-limited `frame` names. A refused subscribe names its task, so that the client
 * retries the subscribe of the watch it belongs to; without it the error reaches only the client's
 * general error handler. A refused ack does not: it acknowledged nothing new (an ack that does is free),
 * and a client answers an error about a watched task by subscribing again, one frame more from a socket
 * already over its budget.
 */
function refusalRefs(frame: ClientFrame): FrameRefs {
  switch (frame.type) {
    case 'subscribe':
      return { ...(frame.id === undefined ? {} : { requestId: frame.id }), taskId: frame.taskId };
    case 'unsubscribe':
    case 'ping':
      return frame.id === undefined ? {} : { requestId: frame.id };
    case 'ack':
    case 'auth':
      return {};
    default: {
      const unreachable: never = frame;
      throw new TypeError(`Unknown frame ${String(unreachable)}`);
    }
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

/** The encoded size of a message as `ws` hands it over (one buffer, fragments, or an ArrayBuffer). */
function rawByteLength(data: WebSocket.RawData): number {
  if (Array.isArray(data)) return data.reduce((sum, chunk) => sum + chunk.byteLength, 0);
  return data.byteLength;
}
