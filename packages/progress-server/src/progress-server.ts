/**
 * The composition root: `ProgressServer` builds the hub, the fair reads, the ack writer, the task API,
 * the lease keeper and the socket acceptor from the resolved options, and owns their start and graceful
 * shutdown.
 *
 * @module
 */

import { setMaxListeners } from 'node:events';
import { createServer, type Server as HttpServer, type IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { ErrorCode, ProgressError } from '@finishline/core';
import { integer, ofType, RoundTripPool, resolveOptions } from '@finishline/core/internal';
import { AddressAuthLimits } from './address-auth-limits.js';
import type { Principal } from './auth.js';
import { pathOf } from './auth.js';
import { Authenticator } from './authenticator.js';
import type { ServerHealth } from './http/health.js';
import { readStoreHealth } from './http/health.js';
import type { HttpHandler, HttpHandlerOptions, OpenAnswer } from './http/http-handler.js';
import { createHttpHandler } from './http/http-handler.js';
import type { OpenStream } from './http/sse-stream.js';
import { AckWriter } from './hub/ack-writer.js';
import { FairReads } from './hub/fair-reads.js';
import { StoreEpoch } from './hub/store-epoch.js';
import { TaskHub } from './hub/task-hub.js';
import type { ProgressLogger } from './logger.js';
import { endableLogger } from './logger.js';
import { ServerMetrics } from './metrics.js';
import type { ProgressServerOptions, ResolvedServerOptions } from './options.js';
import { MAX_TIMER_MS, resolveServerOptions } from './options.js';
import { PrincipalLimits } from './principal-limits.js';
import { SocketAcceptor } from './socket/socket-acceptor.js';
import { LeaseKeeper } from './tasks/lease-keeper.js';
import { TaskApi } from './tasks/task-api.js';
import { waitAtMost } from './wait.js';

/** Options of {@link ProgressServer.close}. */
export interface CloseOptions {
  /**
   * Longest time the shutdown may take, in milliseconds. Three quarters of it are for running batches to
   * stop by themselves and for this server's appends in flight (a hand-driven task's, a `cancel()`'s) to settle; then the tasks still running are interrupted, queued frames are flushed and the
   * sockets closed with 1001; whatever is left at the deadline is terminated. An integer from 0 to
   * 2^31 - 1 (about 24.8 days, the longest a timer waits); another value rejects with `invalid_input`.
   * @default 5000
   */
  timeoutMs?: number | undefined;
}

/** The defaults of {@link CloseOptions}. */
export const CLOSE_DEFAULTS = Object.freeze({ timeoutMs: 5000 });

/** Options of {@link ProgressServer.listen}. */
export interface ListenOptions {
  /**
   * TCP port; `0` picks a free one (read it from `server.httpServer.address()`).
   * @default 0
   */
  port?: number | undefined;
  /**
   * Interface to listen on.
   * @default all interfaces (Node's default)
   */
  host?: string | undefined;
  /**
   * Base path of the HTTP API served next to the WebSocket.
   * @default the WebSocket `path` option ('/progress')
   */
  httpBasePath?: string | undefined;
  /**
   * Longest time a client may take to send a request's headers (Node's `headersTimeout`); a connection
   * that sends nothing, or a partial request, is closed after it. Checked every second.
   * @default 10000
   */
  headersTimeoutMs?: number | undefined;
  /**
   * Longest time a client may take to send a whole request, body included (Node's `requestTimeout`).
   * @default 30000
   */
  requestTimeoutMs?: number | undefined;
  /**
   * Connections the kernel may hold waiting for the server to accept them (`listen`'s backlog; Linux caps
   * it at `net.core.somaxconn`, 4096 by default since 5.4). A connection past a full queue is dropped
   * without a word, and the client's TCP sends its SYN again only after 1 s, then 3 s: with Node's 511,
   * a crowd reconnecting at once (a replica's 10,000 sockets after a failover) waited whole seconds on
   * those resends while the server sat idle. An integer from 1 to 65,535.
   * @default 4096
   */
  backlog?: number | undefined;
}

/** The defaults of {@link ListenOptions} that bound slow clients and let a reconnecting crowd queue. */
export const LISTEN_DEFAULTS = Object.freeze({
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 30_000,
  backlog: 4096,
});

/**
 * One description per option of {@link ListenOptions}, and of {@link CloseOptions}: unknown keys are refused,
 * naming the nearest (`{ timeout: 30_000 }` closed within the default 5 s, `{ prot: 8080 }` listened on a
 * random port, without a word).
 */
const LISTEN_OPTIONS = {
  port: integer(0, 0, 65_535),
  host: ofType<string>('a host name or address', (value) => typeof value === 'string'),
  httpBasePath: ofType<string>('a path', (value) => typeof value === 'string'),
  headersTimeoutMs: integer(LISTEN_DEFAULTS.headersTimeoutMs, 1, MAX_TIMER_MS),
  requestTimeoutMs: integer(LISTEN_DEFAULTS.requestTimeoutMs, 1, MAX_TIMER_MS),
  backlog: integer(LISTEN_DEFAULTS.backlog, 1, 65_535),
} satisfies { [K in keyof Required<ListenOptions>]: unknown };

const CLOSE_OPTIONS = {
  timeoutMs: integer(CLOSE_DEFAULTS.timeoutMs, 0, MAX_TIMER_MS),
} satisfies { [K in keyof Required<CloseOptions>]: unknown };

/** How often Node checks `headersTimeout` / `requestTimeout` on the server `listen()` creates. */
const TIMEOUT_CHECK_INTERVAL_MS = 1000;

/**
 * The WebSocket paths each caller's HTTP server has a ProgressServer on. A second one on the same server
 * and path (a module evaluated twice, a server built per request) answered every upgrade as well: `ws`
 * refused the second `handleUpgrade` of the socket, which it destroyed, so each socket said `hello` and
 * died (1006) at once, and the client reconnected for ever without reporting anything.
 */
const servedPaths = new WeakMap<HttpServer, Set<string>>();

/**
 * The Finishline server: delivers task progress to watchers over WebSocket (and HTTP), runs tasks
 * through {@link TaskApi} (`server.tasks`), keeps their leases, reaps the expired leases of dead
 * replicas, and shuts down honestly.
 *
 * @example
 * ```ts
 * import http from 'node:http';
 * import { MemoryProgressStore } from '@finishline/core';
 * import { ProgressServer } from '@finishline/server';
 *
 * const httpServer = http.createServer();
 * const progress = new ProgressServer({
 *   store: new MemoryProgressStore(),
 *   server: httpServer, // WebSocket at /progress
 *   authenticate: (request) => sessions.lookup(request.headers.cookie), // → { id } | null
 * });
 * httpServer.on('request', progress.httpHandler()); // GET /progress/tasks/:id …
 * httpServer.listen(8080);
 *
 * const task = await progress.tasks.create({ owner: 'alice', kind: 'batch_taint' });
 * void task.runBatch(nodes, (node, { signal }) => taint(node, { signal }), { concurrency: 4 });
 * ```
 */
export class ProgressServer<P extends Principal = Principal> {
  /** This replica's id (sent in `hello`, owner of its leases). */
  readonly serverId: string;
  /** Create and run tasks. */
  readonly tasks: TaskApi;
  /** Lease renewal and reaping (timer-driven; `renewAll()` / `reap()` force a run). */
  readonly leases: LeaseKeeper;
  /** Prometheus metrics; `metrics.registry` is the registry they live in. */
  readonly metrics: ServerMetrics;
  readonly #options: ResolvedServerOptions<P>;
  readonly #logger: ProgressLogger;
  /** Silences {@link #logger} for good: nothing of this server logs after close() resolved. */
  readonly #endLogs: () => void;
  readonly #auth: Authenticator<P>;
  readonly #hub: TaskHub;
  readonly #acks: AckWriter;
  /** The sockets: upgrades, accepted connections, their heartbeat and shutdown. */
  readonly #sockets: SocketAcceptor<P>;
  readonly #limits: PrincipalLimits;
  readonly #reads: FairReads;
  readonly #heartbeatTimer: NodeJS.Timeout;
  readonly #epoch: StoreEpoch;
  /**
   * Bytes of HTTP API answers not yet handed to the network, all handlers together (`maxUnreadAnswerBytes`),
   * and each principal's share (at most 32 MiB over all handlers).
   */
  readonly #unreadAnswers: { bytes: number; readonly max: number; readonly byPrincipal: Map<string, number> };
  /** Each principal's HTTP API requests in progress, bounded by `maxSubscriptionsPerPrincipal` (http-handler.ts). */
  readonly #requestsInProgress: { readonly max: number; readonly byPrincipal: Map<string, number> };
  /** Stops listening to the feed's renewal hints (`ChangeFeed.onEpochRenewed`). */
  #stopEpochHints: (() => void) | undefined;
  /** Open Server-Sent Events streams: ended at shutdown, restarted when the store epoch changes. */
  readonly #streams = new Set<OpenStream>();
  /** HTTP API answers still being written: left until the shutdown's deadline, then cut, as streams are. */
  readonly #answers = new Set<OpenAnswer>();
  readonly #onUpgrade: (request: IncomingMessage, socket: Duplex, head: Buffer) => void;
  #ownedHttpServer: HttpServer | undefined;
  /**
   * Aborted as the shutdown begins: ends the HTTP requests' waits on hung hooks (see `httpHandler`). Each
   * waiting request listens to it until answered, so it has as many listeners as requests wait at once:
   * no limit, or Node warned of a leak (MaxListenersExceededWarning) from eleven on.
   */
  readonly #shutdown = unlimitedListeners(new AbortController());
  #closing = false;
  #closed: Promise<void> | undefined;

  /**
   * A constructor that throws leaves nothing behind: no metric in `registry`, no timer, no listener on
   * the store's feed or on `server`, so a retry in the same process starts clean.
   *
   * @throws ProgressError `invalid_input` for invalid options, and when `registry` already holds a metric
   *   of one of the server's names (`metricsPrefix`), or when another ProgressServer not closed yet serves
   *   `path` on `server`. Whatever the feed's `subscribe` / `onEpochRenewed` throws.
   */
  constructor(options: ProgressServerOptions<P>) {
    const given = resolveServerOptions(options);
    // Every part logs through it, and close() ends it as it resolves (see endableLogger).
    const logs = endableLogger(given.logger);
    const resolved: ResolvedServerOptions<P> = { ...given, logger: logs.logger };
    this.#endLogs = logs.end;
    if (resolved.server !== undefined && servedPaths.get(resolved.server)?.has(resolved.path)) {
      throw new ProgressError(
        ErrorCode.InvalidInput,
        `ProgressServer: another ProgressServer already serves WebSocket upgrades at ${resolved.path} on this server: close() it first, or give this one another \`path\``,
      );
    }
    this.#options = resolved;
    this.#logger = resolved.logger;
    this.serverId = resolved.serverId;
    this.metrics = new ServerMetrics({
      registry: resolved.registry,
      prefix: resolved.metricsPrefix,
      feed: resolved.store.changes,
    });
    this.#auth = new Authenticator({
      authenticate: resolved.authenticate,
      authenticateToken: resolved.authenticateToken,
      authorize: resolved.authorize,
      tokenQueryParam: resolved.tokenQueryParam,
      logger: resolved.logger,
      limits: new AddressAuthLimits({
        ratePerSecond: resolved.authRateLimitPerAddressPerSecond,
        clock: resolved.clock,
        clientAddress: resolved.clientAddress,
        logger: resolved.logger,
      }),
      onLimited: (via) => this.metrics.authRateLimited.inc({ via }),
    });
    const shared = { store: resolved.store, logger: resolved.logger, metrics: this.metrics };
    this.#reads = new FairReads({
      maxConcurrent: resolved.catchUpReadConcurrency,
      maxPerPrincipal: resolved.catchUpReadsPerPrincipal,
      clock: resolved.clock,
    });
    this.#hub = new TaskHub({
      ...shared,
      retryDelayMs: resolved.storeRetryDelayMs,
      reads: this.#reads,
      maxReplayEvents: resolved.maxReplayEvents,
      // Assigned below, read only when a change arrives.
      epoch: () => this.#epoch.current,
      // A restore renewed the epoch, most likely: noticed now, the watchers start over in the new epoch at
      // once. At the next tick (15 s by default) the hub went on ignoring the restored tasks' new events at
      // the seqs it had passed, and a resume met meanwhile stood on a snapshot of the old epoch's.
      onWentBack: () => void this.#epoch.refresh(),
      // A task id purged and created again starts its seqs over: the acks this process wrote for the
      // purged run must not pass the new run's for duplicates (they were never written: its `ackedSeq`
      // stayed 0, found by the chaos suite's retention fault).
      // Acks taken while a load ran may be of events it did not see: its seq below them is no restore.
      loadMark: () => this.#acks.mark(),
      onLoaded: (taskId, seq, createdAt, mark) => this.#acks.seen(taskId, seq, createdAt, mark),
    });
    this.#acks = new AckWriter({ ...shared, retryDelayMs: resolved.storeRetryDelayMs });
    // The keeper and the task API refer to each other through callbacks; `tasks` exists before either fires.
    this.leases = new LeaseKeeper({
      ...shared,
      serverId: resolved.serverId,
      ttlMs: resolved.leaseTtlMs,
      renewIntervalMs: resolved.leaseRenewIntervalMs,
      reapIntervalMs: resolved.reapIntervalMs,
      onLost: (taskId, run, error) => this.tasks.leaseLost(taskId, error, run),
      onReaped: (result) => this.tasks.published(result),
    });
    this.tasks = new TaskApi({
      ...shared,
      hub: this.#hub,
      leases: this.leases,
      serverId: resolved.serverId,
      leaseTtlMs: resolved.leaseTtlMs,
    });

    this.#limits = new PrincipalLimits({
      maxSockets: resolved.maxSocketsPerPrincipal,
      maxSubscriptions: resolved.maxSubscriptionsPerPrincipal,
      ratePerSecond: resolved.rateLimitPerPrincipalPerSecond,
      maxQueuedBytes: resolved.maxQueuedBytesPerPrincipal,
      maxQueuedBytesTotal: resolved.maxQueuedBytesTotal,
      clock: resolved.clock,
    });
    // A restore under the running server: the hub's seqs are of the old epoch, and so are the watchers'.
    this.#unreadAnswers = { bytes: 0, max: resolved.maxUnreadAnswerBytes, byPrincipal: new Map() };
    this.#requestsInProgress = { max: resolved.maxSubscriptionsPerPrincipal, byPrincipal: new Map() };
    this.#epoch = new StoreEpoch(resolved.store, this.#logger, () => {
      this.#hub.forgetSeqs();
      this.#acks.forgetSeqs();
      this.#sockets.epochRenewed();
      for (const stream of this.#streams) stream.epochRenewed();
    });
    this.#sockets = new SocketAcceptor<P>({
      options: resolved,
      auth: this.#auth,
      hub: this.#hub,
      acks: this.#acks,
      metrics: this.metrics,
      logger: this.#logger,
      limits: this.#limits,
      epoch: this.#epoch,
      roundTrips: new RoundTripPool(),
    });
    this.#onUpgrade = (request, socket, head) => {
      if (pathOf(request.url) !== resolved.path) {
        // Other paths belong to other upgrade listeners; when there is none, Node would leave the socket
        // open for ever, so answer 404.
        const server = this.#ownedHttpServer ?? resolved.server;
        if (server?.listenerCount('upgrade') === 1) {
          socket.on('error', () => {});
          this.#sockets.refuse(socket, {
            status: 404,
            code: ErrorCode.InvalidInput,
            message: 'No WebSocket here',
          });
        }
        return;
      }
      this.handleUpgrade(request, socket, head);
    };
    // The steps that reach out (the caller's server and feed) are undone, in reverse, when one throws:
    // the metrics, lease timers and feed listeners of a server never returned outlived it, and a retry in
    // the same process failed on the metric names.
    try {
      resolved.server?.on('upgrade', this.#onUpgrade);
      this.#servePath(true);
      this.#hub.start();
      this.tasks.start();
      this.leases.start();
      void this.#epoch.refresh();
      // A store whose feed hears renewals (its own, or every replica's on Postgres) has the epoch read now.
      this.#stopEpochHints = resolved.store.changes.onEpochRenewed?.(() => void this.#epoch.refresh());
    } catch (error) {
      this.#epoch.close();
      void this.leases.close();
      this.tasks.stop();
      this.#hub.close();
      resolved.server?.off('upgrade', this.#onUpgrade);
      this.#servePath(false);
      this.#sockets.stopAccepting();
      this.#sockets.closeServer();
      this.metrics.unregister();
      throw error;
    }
    this.#heartbeatTimer = setInterval(() => {
      void this.#epoch.refresh();
      this.#sockets.tick();
    }, resolved.heartbeatIntervalMs);
    this.#heartbeatTimer.unref();
  }

  /**
   * Creates an `http.Server` serving the WebSocket at `path` and the HTTP API at `httpBasePath`, and
   * starts listening. `close()` closes that server too.
   *
   * @example
   * ```ts
   * const progress = await ProgressServer.listen({ store, authenticate }, { port: 8080 });
   * ```
   */
  static async listen<P extends Principal = Principal>(
    options: Omit<ProgressServerOptions<P>, 'server' | 'wss'>,
    listenOptions: ListenOptions = {},
  ): Promise<ProgressServer<P> & { readonly httpServer: HttpServer }> {
    const listenAt = resolveOptions('listen', LISTEN_OPTIONS, listenOptions);
    const headersTimeout = listenAt.headersTimeoutMs;
    const requestTimeout = listenAt.requestTimeoutMs;
    // Node's defaults (60 s / 300 s, checked every 30 s) let silent connections pile up for minutes.
    const httpServer = createServer({
      headersTimeout,
      requestTimeout: Math.max(requestTimeout, headersTimeout),
      connectionsCheckingInterval: TIMEOUT_CHECK_INTERVAL_MS,
    });
    // `this`, not the class's name: a class that names itself in its body is bundled as `class _ProgressServer`,
    // and that was its `name` (in `console.log`, stack frames, loggers reading `constructor.name`).
    const progress: ProgressServer<P> = new this({ ...options, server: httpServer });
    progress.#ownedHttpServer = httpServer;
    // A connection counts as unauthenticated from its accept until it sends an ordinary request or its
    // WebSocket authenticates: silent connections are then capped per address.
    httpServer.on('connection', (socket) => progress.#sockets.pending.add(socket));
    let handler: ReturnType<ProgressServer<P>['httpHandler']>;
    try {
      handler = progress.httpHandler(
        listenAt.httpBasePath === undefined ? {} : { basePath: listenAt.httpBasePath },
      );
    } catch (error) {
      // An invalid httpBasePath: the server built above is closed, or its timers and its listeners on the
      // caller's store outlived the rejected call.
      await progress.close({ timeoutMs: 0 });
      throw error;
    }
    /** Requests of each connection not answered yet: one kept alive is idle at none. */
    const inFlight = new WeakMap<Duplex, number>();
    httpServer.on('request', (request, response) => {
      // A request with a body counts until its body is in: otherwise headers followed by a body that
      // trickles (or never comes) hold a descriptor uncapped until requestTimeout. Counted again on a
      // kept-alive connection, which its first request released: a quick request, then one whose body
      // never comes, held any number of connections of one address past the cap.
      const hasBody =
        request.headers['transfer-encoding'] !== undefined ||
        (request.headers['content-length'] !== undefined && request.headers['content-length'] !== '0');
      if (!hasBody) progress.#sockets.pending.release(request.socket);
      else if (!request.complete) {
        progress.#sockets.pending.add(request.socket);
        request.once('end', () => progress.#sockets.pending.release(request.socket));
      } else progress.#sockets.pending.release(request.socket);
      // Idle again once its last request is answered: counted as a silent connection is, unless a request
      // of it authenticated since its latest began (see `PendingConnections.idle` and `requested`).
      const socket = request.socket;
      progress.#sockets.pending.requested(socket);
      inFlight.set(socket, (inFlight.get(socket) ?? 0) + 1);
      response.once('close', () => {
        const left = (inFlight.get(socket) ?? 1) - 1;
        inFlight.set(socket, left);
        if (left === 0 && response.shouldKeepAlive && !socket.destroyed)
          progress.#sockets.pending.idle(socket);
      });
      handler(request, response);
    });
    try {
      await new Promise<void>((resolve, reject) => {
        httpServer.once('error', reject);
        const { port, host, backlog } = listenAt;
        httpServer.listen({ port, backlog, ...(host === undefined ? {} : { host }) }, () => {
          httpServer.off('error', reject);
          resolve();
        });
      });
    } catch (error) {
      await progress.close({ timeoutMs: 0 });
      throw error;
    }
    // Typed with its `httpServer` (which `listen` made): `progress.httpServer.address()` needs no `!`.
    return progress as ProgressServer<P> & { readonly httpServer: HttpServer };
  }

  /** The `http.Server` created by {@link ProgressServer.listen}, else `undefined`. */
  get httpServer(): HttpServer | undefined {
    return this.#ownedHttpServer;
  }

  /** Number of open WebSocket connections. */
  get connectionCount(): number {
    return this.#sockets.size;
  }

  /**
   * This replica's health, for readiness probes and dashboards: `ok` is `false` while the store's change
   * feed is disconnected (a Postgres replica that lost its database) or the server is closing. A replica
   * that loses the database keeps its sockets and catches up when the feed reconnects, so take it out
   * of the load balancer (readiness), but do not restart it for that (liveness). Also served by
   * {@link ProgressServer.httpHandler} at `GET {basePath}/healthz`.
   *
   * @example
   * ```ts
   * const { ok, store, sockets } = progress.health();
   * ```
   */
  health(): ServerHealth {
    const store = readStoreHealth(this.#options.store.changes);
    return {
      ok: store.connected && !this.#closing,
      serverId: this.serverId,
      closing: this.#closing,
      store,
      sockets: this.#sockets.size,
      ownedTasks: this.tasks.running.length,
      followedTasks: this.#hub.size,
    };
  }

  /**
   * Handles one upgrade request, whatever its path (for routers that dispatch upgrades themselves):
   * checks the Origin and subprotocol, authenticates, and either accepts the socket or answers with an
   * HTTP error (400, 401, 403, 429, 500, 503) on the raw socket. Never throws.
   */
  handleUpgrade(request: IncomingMessage, socket: Duplex, head: Buffer): void {
    this.#sockets.handleUpgrade(request, socket, head);
  }

  /**
   * The HTTP API as a handler for node `http`, Express (`app.use(handler)`) or Fastify (see README):
   * `GET {basePath}/tasks`, `GET {basePath}/tasks/:id`, `GET {basePath}/tasks/:id/events?afterSeq=&limit=`,
   * `POST {basePath}/tasks/:id/cancel`, and the unauthenticated probes `GET {basePath}/healthz`
   * ({@link ProgressServer.health}: 200 when healthy, else 503; for readiness) and `GET {basePath}/livez`
   * (200 whenever the event loop answers; for liveness).
   */
  httpHandler(options: HttpHandlerOptions = {}): HttpHandler {
    return createHttpHandler(
      {
        auth: this.#auth,
        allowedOrigins: this.#options.allowedOrigins,
        revealTaskExistence: this.#options.revealTaskExistence,
        tasks: this.tasks,
        store: this.#options.store,
        metrics: this.metrics,
        logger: this.#logger,
        health: () => this.health(),
        healthDetails: this.#options.healthDetails,
        webSocketPath: this.#options.path,
        closing: () => this.#closing,
        clock: this.#options.clock,
        epoch: this.#epoch,
        hookTimeoutMs: this.#options.upgradeTimeoutMs,
        shutdown: this.#shutdown.signal,
        pending: this.#sockets.pending,
        unreadAnswers: this.#unreadAnswers,
        openAnswers: this.#answers,
        requestsInProgress: this.#requestsInProgress,
        reads: this.#reads,
        streams: {
          hub: this.#hub,
          epoch: this.#epoch,
          limits: this.#limits,
          logger: this.#logger,
          metrics: this.metrics,
          heartbeatIntervalMs: this.#options.heartbeatIntervalMs,
          sseStallTimeoutMs: this.#options.sseStallTimeoutMs,
          sseStreamLifetimeMs: this.#options.sseStreamLifetimeMs,
          maxReplayEvents: this.#options.maxReplayEvents,
          clock: this.#options.clock,
          reconnectsPerSecond: this.#options.reconnectsPerSecond,
          open: this.#streams,
          acks: this.#acks,
          maxSocketsPerPrincipal: this.#options.maxSocketsPerPrincipal,
        },
      },
      options,
    );
  }

  /**
   * Graceful shutdown (idempotent): stops accepting sockets, stops batches through their signals, lets this
   * server's appends in flight settle (a hand-driven task's `complete()` sent in time is not overtaken) and
   * interrupts owned tasks that do not end in time (`interrupted`, "server shutting down"), flushes and
   * closes sockets with 1001, clears every timer and releases the feed. It never closes the store, nor an
   * `http.Server` or `WebSocketServer` it did not create. Nothing is logged once it resolved, so the
   * logger may be flushed and ended then: store calls still out at the deadline end unlogged, and a task
   * whose interrupt the store had not answered is logged before it resolves.
   */
  close(options: CloseOptions = {}): Promise<void> {
    let timeoutMs: number;
    // Above 2^31 - 1 ms the shutdown's timers fired after 1 ms: close() stopped waiting for batches and
    // sockets at once. Refused before the shutdown starts: an invalid call used to leave its rejection as
    // the result of every later close(), and the server open.
    try {
      timeoutMs = resolveOptions('close', CLOSE_OPTIONS, options).timeoutMs;
    } catch (error) {
      return Promise.reject(error);
    }
    this.#closed ??= this.#close(timeoutMs);
    return this.#closed;
  }

  async #close(timeoutMs: number): Promise<void> {
    this.#closing = true;
    this.#shutdown.abort();
    const start = Date.now();
    const deadline = start + timeoutMs;
    // The upgrade listener stays until the sockets are closed: the acceptor refuses upgrades from now on
    // with 503 `closed` (docs/protocol.md), which sends a client to another replica. Removed here, an
    // upgrade reached the HTTP handler as a plain request (Node passes it there when no listener is left)
    // and was answered 426 `invalid_input`, "send an upgrade request".
    this.#sockets.stopAccepting();

    await this.tasks.shutdown(start + Math.floor(timeoutMs * 0.75), deadline);
    // Timers stop at once; only an in-flight renewal or reap is waited for, and not past the deadline.
    await waitAtMost(this.leases.close(), deadline - Date.now());
    clearInterval(this.#heartbeatTimer);
    this.#stopEpochHints?.();
    this.#epoch.close();
    // Event streams end like sockets do, at the same time, cut at the deadline; their clients resume
    // elsewhere with Last-Event-ID. So are the HTTP answers still being written.
    await Promise.all([
      this.#sockets.close(deadline),
      ...[...this.#streams].map((stream) => stream.shutdown(deadline)),
      ...[...this.#answers].map((answer) => answer.shutdown(deadline)),
    ]);
    await this.#acks.flush(deadline);
    this.#acks.close();
    this.#hub.close();
    this.#reads.close();
    this.#sockets.closeServer();
    this.#options.server?.off('upgrade', this.#onUpgrade);
    this.#servePath(false);
    this.#ownedHttpServer?.off('upgrade', this.#onUpgrade);
    const httpServer = this.#ownedHttpServer;
    if (httpServer !== undefined) {
      await new Promise<void>((resolve) => {
        httpServer.close(() => resolve());
        httpServer.closeAllConnections();
      });
    }
    if (this.#options.registry !== undefined) this.metrics.unregister();
    this.#logger.info({ serverId: this.serverId }, 'progress server closed');
    this.#endLogs();
  }

  /** Marks this server's path on the caller's HTTP server as served, or free again (see `servedPaths`). */
  #servePath(served: boolean): void {
    const { server, path } = this.#options;
    if (server === undefined) return;
    const paths = servedPaths.get(server) ?? new Set<string>();
    servedPaths.set(server, paths);
    if (served) paths.add(path);
    else paths.delete(path);
  }
}

/** `controller`, its signal allowed any number of listeners (see `ProgressServer#shutdown`). */
function unlimitedListeners(controller: AbortController): AbortController {
  setMaxListeners(0, controller.signal);
  return controller;
}
