/**
 * Connection routing: the WebSocket upgrades (checked, authenticated, refused with an HTTP status) and
 * the caller's `WebSocketServer` sockets (refused with close codes), each accepted one becoming a
 * {@link Connection}; the set of open connections, their heartbeat and their shutdown.
 *
 * @module
 */

import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { CloseCode, ErrorCode } from '@finishline/core';
import WebSocket, { WebSocketServer } from 'ws';
import { AUTH_RATE_LIMITED_MESSAGE } from '../address-auth-limits.js';
import type { Principal } from '../auth.js';
import { isOriginAllowed } from '../auth.js';
import { offeredProtocols, rejectUpgrade } from '../http/upgrade.js';
import { describeError } from '../logger.js';
import { waitAtMost } from '../wait.js';
import { CLOSE_GRACE_MS, Connection } from './connection.js';
import { PendingConnections } from './pending-connections.js';
import { SUPPORTED_SUBPROTOCOLS, selectSubprotocol } from './protocol-version.js';
import type { SocketServices } from './services.js';

/**
 * Most pongs ws may have queued for one socket's pings before it terminates the socket (ws's own default
 * since 8.23, the version the package requires): a client answering the server's pings, or pinging now and
 * then, never has more than a couple outstanding.
 */
const MAX_PENDING_AUTO_PONGS = 60;

/**
 * Whether a caller's `WebSocketServer` bounds the pongs it queues for a client's pings: ws 8.23 added
 * `maxPendingAutoPongs` (its options lack the key before) and 0 turns the bound off. A server that does
 * not answer pings itself (`autoPong: false`) queues none.
 */
function boundsAutoPongs(wss: WebSocketServer): boolean {
  const options = wss.options as { autoPong?: boolean; maxPendingAutoPongs?: number };
  if (options.autoPong === false) return true;
  return typeof options.maxPendingAutoPongs === 'number' && options.maxPendingAutoPongs > 0;
}

/** Accepts the server's sockets and holds its open connections. */
export class SocketAcceptor<P extends Principal> {
  readonly #ctx: SocketServices<P>;
  readonly #connections = new Set<Connection<P>>();
  /** Connections not authenticated yet, capped per address and in all. */
  readonly pending: PendingConnections;
  readonly #wss: WebSocketServer;
  readonly #ownsWss: boolean;
  readonly #onConnection: (ws: WebSocket, request: IncomingMessage) => void;
  /**
   * Upgrades whose checks (the authentication hooks) are still running, each with what settles it, and
   * the caller's sockets waiting for theirs: refused when the server starts closing. Left to their hooks,
   * an upgrade whose hook was slow or hung held its TCP socket until `upgradeTimeoutMs` (10 s by default),
   * and `close()` of a server created by `listen()` waited for it, past its own deadline.
   */
  readonly #upgrading = new Map<Duplex, () => void>();
  readonly #authenticating = new Set<WebSocket>();
  /**
   * The caller's sockets the acceptor closed (refused, timed out, or closed by the shutdown while their
   * hooks ran), until their close handshake ends: terminated after {@link CLOSE_GRACE_MS}, or at the
   * shutdown's deadline, as connections are. Left to ws, a peer that never answered the close frame held
   * the socket (and the process) for ws's 30 s close timeout, after `close()` had returned too.
   */
  readonly #refused = new Set<WebSocket>();
  #closing = false;
  /**
   * Puts back the caller's `wss` subprotocol selection as it was before the acceptor set its own (see the
   * constructor). Left there after `close()`, which leaves that server to its caller, whoever used it next
   * (the application's own handler, another server) had finishline's versions chosen over the protocol a
   * client offered first.
   */
  #restoreProtocols: () => void = () => {};
  /** The deferred liveness tick, until it runs (see {@link tick}). */
  #pendingTick: NodeJS.Immediate | undefined;

  constructor(ctx: SocketServices<P>) {
    this.#ctx = ctx;
    const { options, metrics, logger } = ctx;
    this.pending = new PendingConnections({
      maxPerAddress: options.maxPendingConnectionsPerAddress,
      maxTotal: options.maxPendingConnections,
      onEvict: (address, cap) => {
        metrics.connectionsDropped.inc({ reason: cap === 'address' ? 'pending_cap' : 'pending_total_cap' });
        logger.debug(
          { address },
          cap === 'address'
            ? 'too many unauthenticated connections from one address; dropped its oldest'
            : 'too many unauthenticated connections in all; dropped the oldest',
        );
      },
    });
    this.#onConnection = (ws, request) => this.#acceptExternal(ws, request);
    if (options.wss !== undefined) {
      this.#wss = options.wss;
      this.#ownsWss = false;
      // ws selects the first subprotocol offered unless told otherwise: a client offering `finishline.v1`
      // first was spoken to in version 1, and one offering another protocol first was closed with 4002,
      // though it offered a version this server speaks. The newest one offered is selected, as on the
      // server's own upgrades (docs/protocol.md, Transport); none of them: the first, refused with 4002 once
      // open. A caller's own `handleProtocols` is left as it is; ours goes when the server stops accepting.
      if (this.#wss.options.handleProtocols == null) {
        const options = this.#wss.options;
        const previous = options.handleProtocols; // ws's default: null
        const ours = (protocols: Set<string>): string | false =>
          selectSubprotocol(protocols) || (protocols.values().next().value ?? false);
        options.handleProtocols = ours;
        this.#restoreProtocols = () => {
          if (options.handleProtocols !== ours) return; // the caller's own since
          if (previous === undefined) delete options.handleProtocols;
          else options.handleProtocols = previous;
        };
      }
      this.#wss.on('connection', this.#onConnection);
      if (!boundsAutoPongs(this.#wss)) {
        logger.warn(
          {},
          "the WebSocketServer passed as wss answers pings without bound (ws older than 8.23, or maxPendingAutoPongs: 0): a client that sends pings and reads nothing grows this process's memory until it runs out; use ws 8.23 or later with its default maxPendingAutoPongs",
        );
      }
      // ws holds a whole message before the server sees it, a socket still waiting for its `auth` frame
      // included: at ws's default (100 MiB), each of the 100 unauthenticated sockets an address may hold
      // could hold that much (and a compressed one inflates to it from a few hundred kilobytes).
      const maxPayload = (this.#wss.options as { maxPayload?: number }).maxPayload;
      if (typeof maxPayload !== 'number' || maxPayload <= 0 || maxPayload > options.maxPayloadBytes) {
        logger.warn(
          { maxPayload, maxPayloadBytes: options.maxPayloadBytes },
          'the WebSocketServer passed as wss accepts messages larger than maxPayloadBytes: ws holds each whole in memory before the server refuses it, from sockets not authenticated yet too; set its maxPayload to maxPayloadBytes',
        );
      }
    } else {
      this.#wss = new WebSocketServer({
        noServer: true,
        maxPayload: options.maxPayloadBytes,
        perMessageDeflate: false,
        clientTracking: false,
        // The protocol's decoder checks UTF-8 (docs/protocol.md: a message that is not UTF-8 is an
        // `invalid_frame`, answered, the socket kept open). Left to ws, a text message of invalid UTF-8
        // closed the socket with 1007, a code the docs did not name; a binary one got invalid_frame.
        skipUTF8Validation: true,
        // Named, not left to ws's defaults (which are these since ws 8.23, and absent before): a client
        // sending pings and reading nothing had a pong queued for each, without bound (21 MB of this
        // process's memory in 4 s from one loopback socket on ws 8.18), authenticated or not (a socket
        // waiting for its `auth` frame is open for `authTimeoutMs`), and its unsolicited pongs kept it
        // alive past the liveness check. Over 60 pongs not yet written, ws terminates the socket.
        autoPong: true,
        handleProtocols: (protocols) => selectSubprotocol(protocols),
        // @types/ws does not name it yet.
        ...({ maxPendingAutoPongs: MAX_PENDING_AUTO_PONGS } as object),
      });
      this.#ownsWss = true;
      this.#wss.on('error', (error) => logger.warn({ err: describeError(error) }, 'WebSocket server error'));
    }
  }

  /** Number of open connections. */
  get size(): number {
    return this.#connections.size;
  }

  /**
   * Liveness work on every connection (see {@link Connection.tick}), run after the event loop's next poll
   * phase rather than in the timer that calls this. After a stall (a long GC pause, a CPU-starved
   * container, a process stopped and continued) the timers phase runs before the poll phase reads what
   * arrived meanwhile: ticking there judged every socket whose pong was waiting unread as dead, and the
   * replica dropped all of them at once (a reconnect storm). Deferred by one `setImmediate`, the pongs that
   * arrived are read first; a peer that sent none is still terminated at the same tick.
   */
  tick(): void {
    if (this.#pendingTick !== undefined) return;
    this.#pendingTick = setImmediate(() => {
      this.#pendingTick = undefined;
      for (const connection of this.#connections) connection.tick();
    });
  }

  /** The store's epoch changed: every subscription of every socket starts over (see {@link Connection.epochRenewed}). */
  epochRenewed(): void {
    for (const connection of this.#connections) connection.epochRenewed();
  }

  /** Stops accepting: new upgrades and sockets are refused as the server shuts down. */
  stopAccepting(): void {
    this.#closing = true;
    if (!this.#ownsWss) this.#wss.off('connection', this.#onConnection);
    this.#restoreProtocols();
    // Refused now as they would be once their hooks answer (503 / 1001), which may be never.
    for (const [socket, settle] of [...this.#upgrading]) {
      settle();
      this.refuse(socket, { status: 503, code: ErrorCode.Closed, message: 'Server is shutting down' });
    }
    for (const ws of [...this.#authenticating]) {
      this.#authenticating.delete(ws);
      this.#ctx.metrics.upgradesRejected.inc({ code: ErrorCode.Closed });
      this.#closeRefused(ws, CloseCode.GoingAway, 'server shutting down');
    }
  }

  /** Shuts every connection down by `deadline` (see {@link Connection.shutdown}) and closes an owned `wss`. */
  async close(deadline: number): Promise<void> {
    this.stopAccepting();
    clearImmediate(this.#pendingTick);
    this.#pendingTick = undefined;
    await Promise.all([...this.#connections].map((connection) => connection.shutdown(deadline)));
    const refused = [...this.#refused];
    const closed = refused.map((ws) => new Promise((resolve) => ws.once('close', resolve)));
    await waitAtMost(Promise.all(closed), deadline - Date.now());
    for (const ws of refused) ws.terminate();
  }

  /**
   * Closes a caller's socket the acceptor will not serve, and terminates it if the peer has not finished
   * the closing handshake within {@link CLOSE_GRACE_MS} (or by the shutdown's deadline, see
   * {@link close}). A paused socket would never read the peer's close frame: it is resumed first.
   */
  #closeRefused(ws: WebSocket, code: number, reason: string): void {
    ws.resume();
    ws.close(code, reason);
    if (ws.readyState === WebSocket.CLOSED) return;
    this.#refused.add(ws);
    const grace = setTimeout(() => ws.terminate(), CLOSE_GRACE_MS);
    grace.unref();
    ws.once('close', () => {
      clearTimeout(grace);
      this.#refused.delete(ws);
    });
  }

  /** Closes the `WebSocketServer` when the acceptor created it. */
  closeServer(): void {
    if (this.#ownsWss) this.#wss.close();
  }

  /**
   * Handles one upgrade request, whatever its path (for routers that dispatch upgrades themselves):
   * checks the Origin and subprotocol, authenticates, and either accepts the socket or answers with an
   * HTTP error (400, 401, 403, 429, 500, 503) on the raw socket. Never throws.
   */
  handleUpgrade(request: IncomingMessage, socket: Duplex, head: Buffer): void {
    // A router that dispatches upgrades after work of its own may hand over a socket whose client has gone
    // meanwhile: there is no one to answer, and its 'close' (which settles an upgrade) has passed already.
    // Taken in, it stayed among the upgrades under way, held with its request until the server closed.
    if (socket.destroyed) return;
    // A client that vanishes during authentication must not crash the process.
    socket.on('error', (error) =>
      this.#ctx.logger.debug({ err: describeError(error) }, 'upgrade socket error'),
    );
    this.pending.add(socket);
    const deadline = setTimeout(() => {
      if (socket.destroyed) return;
      this.#ctx.metrics.connectionsDropped.inc({ reason: 'upgrade_timeout' });
      this.#ctx.logger.debug({}, 'upgrade did not complete in time; destroying the socket');
      socket.destroy();
    }, this.#ctx.options.upgradeTimeoutMs);
    deadline.unref();
    // Refused, accepted or gone: the deadline no longer applies once the upgrade is settled.
    const settle = (): void => {
      clearTimeout(deadline);
      this.#upgrading.delete(socket);
    };
    this.#upgrading.set(socket, settle);
    socket.once('close', settle);
    this.#upgrade(request, socket, head, settle).catch((error: unknown) => {
      this.#ctx.metrics.handlerErrors.inc();
      this.#ctx.logger.error({ err: describeError(error) }, 'upgrade failed');
      this.refuse(socket, { status: 500, code: ErrorCode.Internal, message: 'Upgrade failed' });
    });
  }

  async #upgrade(request: IncomingMessage, socket: Duplex, head: Buffer, settled: () => void): Promise<void> {
    const checked = await this.#checkUpgrade(request);
    // Settled meanwhile: refused by the shutdown (see stopAccepting), or gone.
    if (!this.#upgrading.has(socket)) return;
    if (checked.kind === 'refused') {
      settled();
      this.refuse(socket, checked);
      return;
    }
    if (socket.destroyed) return;
    if (this.#closing) {
      settled();
      this.refuse(socket, { status: 503, code: ErrorCode.Closed, message: 'Server is shutting down' });
      return;
    }
    this.#wss.handleUpgrade(request, socket, head, (ws) => {
      settled();
      this.#accept(ws, request, checked.principal, socket);
    });
  }

  /** Origin, subprotocol and credentials of an upgrade: the principal (or none yet), or why to refuse. */
  async #checkUpgrade(request: IncomingMessage): Promise<
    | { kind: 'accepted'; principal: P | undefined }
    | {
        kind: 'refused';
        status: number;
        code: ErrorCode;
        message: string;
        headers?: Record<string, string>;
      }
  > {
    const refused = (status: number, code: ErrorCode, message: string) =>
      ({ kind: 'refused', status, code, message }) as const;
    if (this.#closing) return refused(503, ErrorCode.Closed, 'Server is shutting down');
    if (!isOriginAllowed(request, this.#ctx.options.allowedOrigins)) {
      return refused(403, ErrorCode.Forbidden, 'Origin not allowed');
    }
    const protocols = offeredProtocols(request);
    if (protocols.length > 0 && selectSubprotocol(protocols) === false) {
      return refused(
        400,
        ErrorCode.UnsupportedProtocol,
        `Subprotocol ${SUPPORTED_SUBPROTOCOLS.join(' or ')} required`,
      );
    }
    const auth = await this.#ctx.auth.fromUpgrade(request);
    if (auth.kind === 'limited') {
      return {
        ...refused(429, ErrorCode.RateLimited, AUTH_RATE_LIMITED_MESSAGE),
        headers: { 'Retry-After': String(auth.retryAfterSeconds) },
      };
    }
    if (auth.kind === 'refused')
      return refused(401, ErrorCode.Unauthenticated, 'Missing or invalid credentials');
    if (auth.kind === 'invalid') return refused(400, ErrorCode.InvalidInput, auth.message);
    return { kind: 'accepted', principal: auth.kind === 'principal' ? auth.principal : undefined };
  }

  /** Refuses an upgrade with an HTTP status on the raw socket (counted and logged). */
  refuse(
    socket: Duplex,
    refusal: { status: number; code: ErrorCode; message: string; headers?: Record<string, string> },
  ): void {
    const { status, code, message } = refusal;
    this.#ctx.metrics.upgradesRejected.inc({ code });
    this.#ctx.logger.debug({ status, code }, `upgrade refused: ${message}`);
    rejectUpgrade(socket, refusal);
  }

  /** A socket from the caller's `WebSocketServer`: the checks of an upgrade, answered with close codes. */
  #acceptExternal(ws: WebSocket, request: IncomingMessage): void {
    const refuse = (close: number, code: ErrorCode, reason: string): void => {
      this.#ctx.metrics.upgradesRejected.inc({ code });
      this.#closeRefused(ws, close, reason);
    };
    ws.on('error', (error) => this.#ctx.logger.debug({ err: describeError(error) }, 'socket error'));
    const refusal = this.#checkExternal(ws, request);
    if (refusal !== undefined) {
      refuse(...refusal);
      return;
    }
    // Counted against maxPendingConnectionsPerAddress until it authenticates, as the server's own
    // upgrades are: uncounted, a client could hold as many silent sockets as it opened within
    // authTimeoutMs. Released by the connection once authenticated, or when the socket closes.
    this.pending.add(request.socket);
    // Frames that arrive while the hooks run stay in the socket until the connection takes over.
    ws.pause();
    this.#authenticating.add(ws);
    // The deadline of the server's own upgrades (`upgradeTimeoutMs`), from the socket's arrival to its
    // hook's answer: without it a hook that never settled held the socket, and its pending slot, for ever
    // (the socket's `authTimeoutMs` only starts once the hook has answered). Closed 1011, as a hook that
    // throws: the fault is the server's, and the client reconnects with backoff.
    const deadline = setTimeout(() => {
      if (!this.#authenticating.delete(ws)) return;
      this.#ctx.metrics.connectionsDropped.inc({ reason: 'upgrade_timeout' });
      this.#ctx.logger.warn(
        {},
        'authenticate hook did not answer within upgradeTimeoutMs; closing the socket',
      );
      this.#closeRefused(ws, CloseCode.InternalError, 'authentication timed out');
    }, this.#ctx.options.upgradeTimeoutMs);
    deadline.unref();
    ws.once('close', () => {
      clearTimeout(deadline);
      this.#authenticating.delete(ws);
    });
    this.#ctx.auth.fromUpgrade(request).then(
      (auth) => {
        clearTimeout(deadline);
        // Refused by the shutdown or the deadline meanwhile (see stopAccepting), or gone.
        if (!this.#authenticating.delete(ws) || ws.readyState !== WebSocket.OPEN) return;
        if (this.#closing) {
          refuse(CloseCode.GoingAway, ErrorCode.Closed, 'server shutting down');
        } else if (auth.kind === 'refused') {
          refuse(CloseCode.Unauthenticated, ErrorCode.Unauthenticated, 'invalid credentials');
        } else if (auth.kind === 'limited') {
          refuse(CloseCode.RateLimited, ErrorCode.RateLimited, 'too many failed authentication attempts');
        } else if (auth.kind === 'invalid') {
          // Upgraded already: the HTTP API's 400 is no longer possible. A client fault, not credentials.
          refuse(CloseCode.PolicyViolation, ErrorCode.InvalidInput, auth.message);
        } else {
          this.#accept(ws, request, auth.kind === 'principal' ? auth.principal : undefined);
          ws.resume();
        }
      },
      (error: unknown) => {
        clearTimeout(deadline);
        if (!this.#authenticating.delete(ws)) return;
        this.#ctx.metrics.handlerErrors.inc();
        this.#ctx.logger.error({ err: describeError(error) }, 'authenticate hook threw');
        refuse(CloseCode.InternalError, ErrorCode.Internal, 'authentication failed');
      },
    );
  }

  /** The synchronous checks of a caller's socket: why to refuse it, if at all. */
  #checkExternal(ws: WebSocket, request: IncomingMessage): [number, ErrorCode, string] | undefined {
    if (this.#closing) return [CloseCode.GoingAway, ErrorCode.Closed, 'server shutting down'];
    if (!isOriginAllowed(request, this.#ctx.options.allowedOrigins)) {
      return [CloseCode.ForbiddenOrigin, ErrorCode.Forbidden, 'origin not allowed'];
    }
    if (offeredProtocols(request).length > 0 && !SUPPORTED_SUBPROTOCOLS.includes(ws.protocol)) {
      return [
        CloseCode.UnsupportedProtocol,
        ErrorCode.UnsupportedProtocol,
        `${SUPPORTED_SUBPROTOCOLS.join(' or ')} required`,
      ];
    }
    return undefined;
  }

  #accept(ws: WebSocket, request: IncomingMessage, principal: P | undefined, raw?: Duplex): void {
    if (this.#closing) {
      ws.close(CloseCode.GoingAway, 'server shutting down');
      return;
    }
    let added = false;
    let connection: Connection<P>;
    try {
      connection = new Connection<P>({ ws, request, principal, transport: raw }, this.#ctx, {
        // Counting the one being constructed too: it may say hello before it is added below.
        socketCount: () => this.#connections.size + (added ? 0 : 1),
        onClose: (closed) => this.#connections.delete(closed),
        onAuthenticated: () => {
          this.pending.release(raw ?? request.socket);
        },
      });
    } catch (error) {
      // A server fault (the server's clock threw: one that returned NaN once, read as the socket's frame
      // budget starts or its credential's expiry is checked): closed 1011 as a hook that throws is. Thrown
      // on, from a caller's `wss` it left the hook's answer as an unhandled rejection (which ends a Node
      // process by default) with the socket open and paused for good; from the server's own upgrade, an
      // HTTP 500 written onto a socket already upgraded.
      this.#ctx.metrics.handlerErrors.inc();
      this.#ctx.logger.error({ err: describeError(error) }, 'accepting a socket failed; closing it');
      this.#closeRefused(ws, CloseCode.InternalError, 'internal error');
      return;
    }
    this.#connections.add(connection);
    added = true;
  }
}
