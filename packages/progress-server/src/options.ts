import { randomUUID } from 'node:crypto';
import type { Server as HttpServer } from 'node:http';
import { hostname } from 'node:os';
import type { Clock, ProgressStore } from '@finishline/core';
import { ErrorCode, ID_PATTERN, LIMITS, ProgressError, systemClock } from '@finishline/core';
import type { TerminalRetryOptions } from '@finishline/core/internal';
import { TERMINAL_RETRY_DEFAULTS, TerminalRetryTracker } from '@finishline/core/internal';
import type { Registry } from 'prom-client';
import type { WebSocketServer } from 'ws';
import type {
  AllowedOrigins,
  AuthenticateHook,
  AuthenticateTokenHook,
  AuthorizeHook,
  Principal,
} from './auth.js';
import { ownerOnly } from './auth.js';
import type { ProgressLogger } from './logger.js';
import { guardLogger, silentLogger } from './logger.js';

/**
 * Options of {@link ProgressServer}. Only `store` and one of `authenticate` / `authenticateToken` are
 * required. Where the server listens is one of: `server` (attach to your `http.Server` at `path`), `wss`
 * (your `WebSocketServer`), or neither (you call `handleUpgrade` yourself, or use
 * `ProgressServer.listen`, which creates an `http.Server`).
 */
export interface ProgressServerOptions<P extends Principal = Principal> {
  /** Where tasks and events live. The server never closes it. */
  store: ProgressStore;
  /**
   * Establishes the principal of an upgrade or HTTP request from its headers or cookies; `null` when it
   * has none. At least one of `authenticate` and `authenticateToken` is required.
   * @default none
   */
  authenticate?: AuthenticateHook<P> | undefined;
  /**
   * Establishes the principal from a token: a first-frame `auth` message (then an upgrade that
   * `authenticate` does not recognise is accepted, and the socket must send `auth` within
   * `authTimeoutMs`), an HTTP `Authorization: Bearer` header, or the query parameter `tokenQueryParam`.
   * @default none (first-frame authentication disabled)
   */
  authenticateToken?: AuthenticateTokenHook<P> | undefined;
  /**
   * May `principal` watch or cancel `task`?
   * @default the principal owns the task (`task.owner === principal.id`)
   */
  authorize?: AuthorizeHook<P> | undefined;
  /**
   * An `http.Server` to attach to: the server handles its `upgrade` events for `path` only and leaves
   * every other path to other listeners. Not closed by `close()`.
   * @default none
   */
  server?: HttpServer | undefined;
  /**
   * The WebSocket path on `server`.
   * @default '/progress'
   */
  path?: string | undefined;
  /**
   * A `WebSocketServer` you created: the server handles its `connection` events. Authentication and the
   * Origin check then happen after the upgrade (refusals close the socket with 4001 / 4003 instead of an
   * HTTP status), and `maxPayloadBytes` is yours to set on it. Not closed by `close()`.
   * @default none
   */
  wss?: WebSocketServer | undefined;
  /**
   * Browser origins allowed to connect; see {@link AllowedOrigins}. `'*'` is insecure with cookies.
   * @default 'same-origin'
   */
  allowedOrigins?: AllowedOrigins | undefined;
  /**
   * Read a token from this URL query parameter at the upgrade (passed to `authenticateToken`). Tokens in
   * URLs end up in proxy and access logs, so this is off unless you name the parameter.
   * @default false
   */
  tokenQueryParam?: string | false | undefined;
  /**
   * Whether a task the principal may not watch is answered `forbidden` (WebSocket) / 403 (HTTP). By
   * default it gets exactly the answer of a missing task (`task_not_found` / 404, same message), so
   * application-chosen ids (`taint-42`) do not reveal which tasks exist. Turn it on only when task ids
   * are unguessable or not secret and clients need to tell the two apart.
   * @default false
   */
  revealTaskExistence?: boolean | undefined;
  /**
   * Who sees the details of `GET {basePath}/healthz` (server id, which embeds the hostname and pid,
   * store feed state and its last error, socket and task counts). `'authenticated'`: a request without
   * valid credentials gets only `{ "ok": true|false }` (the status code is the same either way);
   * `'public'`: everyone gets the details (for a probe endpoint that is not reachable from outside).
   * @default 'authenticated'
   */
  healthDetails?: 'authenticated' | 'public' | undefined;
  /**
   * How long an unauthenticated socket has to send its `auth` frame before it is closed with 4004.
   * @default 10000
   */
  authTimeoutMs?: number | undefined;
  /**
   * Longest time an upgrade may take from its request to the open WebSocket (the `authenticate` hook
   * included); a slower one has its socket destroyed. Node's `headersTimeout` stops applying once the
   * upgrade headers are complete, so without this a client (or a hook) that never finishes holds a
   * descriptor for ever.
   * @default 10000
   */
  upgradeTimeoutMs?: number | undefined;
  /**
   * Most connections from one remote address that have not authenticated yet: accepted TCP connections
   * without a request (only on the server `ProgressServer.listen` creates), upgrades being checked, and
   * sockets waiting for their `auth` frame. Over the cap the address's **oldest** such connection is
   * destroyed, so silent connections cannot exhaust descriptors and a new client still gets in.
   * @default 100
   */
  maxPendingConnectionsPerAddress?: number | undefined;
  /**
   * This replica's id: sent in `hello`, used as the lease owner of the tasks it runs. Letters, digits
   * and `_ . : @ / -`, at most 128 characters.
   * @default `${hostname}-${pid}-${random}`
   */
  serverId?: string | undefined;
  /**
   * Time source for rate limits, retries and heartbeats (timers stay real).
   * @default Date.now
   */
  clock?: Clock | undefined;
  /**
   * Structured logs (pino-compatible). A logger that throws is ignored.
   * @default silent
   */
  logger?: ProgressLogger | undefined;
  /**
   * prom-client registry for the metrics; exposed as `server.metrics.registry`.
   * @default a new Registry
   */
  registry?: Registry | undefined;
  /**
   * Prefix of every metric name (use distinct prefixes for two servers sharing a registry).
   * @default 'finishline_'
   */
  metricsPrefix?: string | undefined;
  /**
   * Largest incoming WebSocket message, in bytes; larger ones close the socket with 1009.
   * @default 65536
   */
  maxPayloadBytes?: number | undefined;
  /**
   * Most tasks one socket may follow; one more gets `too_many_subscriptions`.
   * @default 100
   */
  maxSubscriptionsPerSocket?: number | undefined;
  /**
   * Most sockets one principal may have open on this replica; one more is sent `too_many_sockets` and
   * closed with 4009.
   * @default 100
   */
  maxSocketsPerPrincipal?: number | undefined;
  /**
   * Most tasks one principal may follow on this replica, summed over its sockets; one more gets
   * `too_many_subscriptions`.
   * @default 1000
   */
  maxSubscriptionsPerPrincipal?: number | undefined;
  /**
   * Sustained frames per second one principal may send over all its sockets together (each frame also
   * pays the per-socket limit); the burst is `maxSubscriptionsPerPrincipal`. Refusals count as rate-limit
   * violations of the socket that sent them (4008 if they go on).
   * @default 500
   */
  rateLimitPerPrincipalPerSecond?: number | undefined;
  /**
   * Most store reads for subscriptions (task loads and catch-up reads) in flight at once, all principals
   * together. Keep it below the store's pool size, so appends and live delivery always find a connection.
   * @default 4
   */
  catchUpReadConcurrency?: number | undefined;
  /**
   * Most of those reads one principal may have in flight; principals take turns, so one at its caps only
   * slows itself. With a synchronous store (SQLite) a read blocks the event loop, so this is also how
   * many of one principal's reads can run between two turns of the loop.
   * @default 1
   */
  catchUpReadsPerPrincipal?: number | undefined;
  /**
   * Sustained frames per second one socket may send. An `ack` that acknowledges new events is free (its
   * number is bounded by what the server sends); every other frame costs one token.
   * @default 100
   */
  rateLimitPerSecond?: number | undefined;
  /**
   * Burst size of the per-socket rate limit (a reconnecting client resubscribes to all its tasks at
   * once).
   * @default 200
   */
  rateLimitBurst?: number | undefined;
  /**
   * A socket whose frames were refused for exceeding the rate limit this many times, with no pause of a
   * second between refusals, is closed with 4008.
   * @default 50
   */
  maxRateLimitViolations?: number | undefined;
  /**
   * A socket that sent this many invalid frames is closed with 1008.
   * @default 10
   */
  maxInvalidFrames?: number | undefined;
  /**
   * Longest backlog replayed as events on subscribe; a longer one is answered with a snapshot.
   * @default 1000
   */
  maxReplayEvents?: number | undefined;
  /**
   * Interval of heartbeat frames (sent in `hello`) and of WebSocket pings; a socket that misses a pong
   * for one interval is terminated.
   * @default 15000
   */
  heartbeatIntervalMs?: number | undefined;
  /**
   * Reconnect pace the server asks for: its `hello` tells each client to spread its first retry after
   * a loss over `open sockets / reconnectsPerSecond` seconds (`reconnectDelayMs`), so if this replica
   * dies (or drops every socket at once) its clients reach the survivors at about this rate instead of
   * in one instant. 0 sends no hint (clients use their own, 100 ms by default).
   * @default 20000
   */
  reconnectsPerSecond?: number | undefined;
  /**
   * While a socket's `bufferedAmount` is above this many bytes, the server stops writing to it and
   * coalesces its queued progress events into snapshots.
   * @default 1048576
   */
  highWaterMarkBytes?: number | undefined;
  /**
   * How often a congested socket's `bufferedAmount` is checked, in milliseconds.
   * @default 10
   */
  backpressurePollMs?: number | undefined;
  /**
   * Re-send schedule of unacknowledged terminal events.
   * @default TERMINAL_RETRY_DEFAULTS (100 ms, doubling, capped at 5 s)
   */
  terminalRetry?: TerminalRetryOptions | undefined;
  /**
   * Lease length of the tasks this server runs; if the server dies, any replica interrupts them this
   * long after the last renewal.
   * @default 15000
   */
  leaseTtlMs?: number | undefined;
  /**
   * How often leases of running tasks are renewed. Must be below `leaseTtlMs`.
   * @default leaseTtlMs / 3
   */
  leaseRenewIntervalMs?: number | undefined;
  /**
   * How often this server reaps expired leases of any replica (`0` disables; keep it on in at least one
   * replica).
   * @default 5000
   */
  reapIntervalMs?: number | undefined;
  /**
   * After a failed store read for live delivery, wait this long before reading again.
   * @default 1000
   */
  storeRetryDelayMs?: number | undefined;
}

/** The defaults of {@link ProgressServerOptions}. `leaseRenewIntervalMs` defaults to `leaseTtlMs / 3`. */
export const PROGRESS_SERVER_DEFAULTS = Object.freeze({
  path: '/progress',
  allowedOrigins: 'same-origin' as AllowedOrigins,
  tokenQueryParam: false as string | false,
  revealTaskExistence: false,
  upgradeTimeoutMs: 10_000,
  maxPendingConnectionsPerAddress: 100,
  healthDetails: 'authenticated' as 'authenticated' | 'public',
  authTimeoutMs: 10_000,
  metricsPrefix: 'finishline_',
  maxPayloadBytes: 64 * 1024,
  maxSubscriptionsPerSocket: 100,
  maxSocketsPerPrincipal: 100,
  maxSubscriptionsPerPrincipal: 1000,
  rateLimitPerPrincipalPerSecond: 500,
  catchUpReadConcurrency: 4,
  catchUpReadsPerPrincipal: 1,
  rateLimitPerSecond: 100,
  rateLimitBurst: 200,
  maxRateLimitViolations: 50,
  maxInvalidFrames: 10,
  maxReplayEvents: 1000,
  heartbeatIntervalMs: 15_000,
  reconnectsPerSecond: 20_000,
  highWaterMarkBytes: 1024 * 1024,
  backpressurePollMs: 10,
  terminalRetry: TERMINAL_RETRY_DEFAULTS as Readonly<Required<TerminalRetryOptions>>,
  leaseTtlMs: 15_000,
  leaseRenewIntervalMs: 5_000,
  reapIntervalMs: 5_000,
  storeRetryDelayMs: 1_000,
});

/** The options after merging defaults and validation. */
export interface ResolvedServerOptions<P extends Principal> {
  store: ProgressStore;
  authenticate: AuthenticateHook<P> | undefined;
  authenticateToken: AuthenticateTokenHook<P> | undefined;
  authorize: AuthorizeHook<P>;
  server: HttpServer | undefined;
  path: string;
  wss: WebSocketServer | undefined;
  allowedOrigins: AllowedOrigins;
  tokenQueryParam: string | false;
  revealTaskExistence: boolean;
  upgradeTimeoutMs: number;
  maxPendingConnectionsPerAddress: number;
  healthDetails: 'authenticated' | 'public';
  authTimeoutMs: number;
  serverId: string;
  clock: Clock;
  logger: ProgressLogger;
  registry: Registry | undefined;
  metricsPrefix: string;
  maxPayloadBytes: number;
  maxSubscriptionsPerSocket: number;
  maxSocketsPerPrincipal: number;
  maxSubscriptionsPerPrincipal: number;
  rateLimitPerPrincipalPerSecond: number;
  catchUpReadConcurrency: number;
  catchUpReadsPerPrincipal: number;
  rateLimitPerSecond: number;
  rateLimitBurst: number;
  maxRateLimitViolations: number;
  maxInvalidFrames: number;
  maxReplayEvents: number;
  heartbeatIntervalMs: number;
  reconnectsPerSecond: number;
  highWaterMarkBytes: number;
  backpressurePollMs: number;
  terminalRetry: TerminalRetryOptions;
  leaseTtlMs: number;
  leaseRenewIntervalMs: number;
  reapIntervalMs: number;
  storeRetryDelayMs: number;
}

const KNOWN_OPTIONS: ReadonlySet<string> = new Set([
  'store',
  'authenticate',
  'authenticateToken',
  'authorize',
  'server',
  'wss',
  'clock',
  'logger',
  'registry',
  'serverId',
  ...Object.keys(PROGRESS_SERVER_DEFAULTS),
]);

function invalid(message: string): ProgressError {
  return new ProgressError(ErrorCode.InvalidInput, `ProgressServer: ${message}`);
}

function integerOption(name: string, value: number, range: { min: number; max?: number }): number {
  const { min, max = Number.MAX_SAFE_INTEGER } = range;
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw invalid(`${name} must be an integer between ${min} and ${max}, got ${String(value)}`);
  }
  return value;
}

function optionalFunction(name: string, value: unknown): void {
  if (value !== undefined && typeof value !== 'function') throw invalid(`${name} must be a function`);
}

function defaultServerId(): string {
  const host =
    hostname()
      .replace(/[^A-Za-z0-9_.:@/-]/g, '-')
      .slice(0, 80) || 'server';
  return `${host}-${process.pid}-${randomUUID().slice(0, 8)}`;
}

/**
 * Merges `options` over {@link PROGRESS_SERVER_DEFAULTS} once and validates the result.
 *
 * @throws ProgressError `invalid_input` naming the offending option.
 */
export function resolveServerOptions<P extends Principal>(
  options: ProgressServerOptions<P>,
): ResolvedServerOptions<P> {
  if (typeof options !== 'object' || options === null) throw invalid('options must be an object');
  for (const key of Object.keys(options)) {
    if (!KNOWN_OPTIONS.has(key)) throw invalid(`unknown option "${key}"`);
  }
  const d = PROGRESS_SERVER_DEFAULTS;
  const store = options.store;
  if (typeof store !== 'object' || store === null || typeof store.getTask !== 'function') {
    throw invalid('store must be a ProgressStore');
  }
  optionalFunction('authenticate', options.authenticate);
  optionalFunction('authenticateToken', options.authenticateToken);
  optionalFunction('authorize', options.authorize);
  if (options.authenticate === undefined && options.authenticateToken === undefined) {
    throw invalid('authenticate or authenticateToken is required (every socket needs a principal)');
  }
  if (options.server !== undefined && options.wss !== undefined) {
    throw invalid('pass either server (attach at path) or wss (your WebSocketServer), not both');
  }
  if (options.server !== undefined && typeof options.server.on !== 'function') {
    throw invalid('server must be an http.Server');
  }
  if (options.wss !== undefined && typeof options.wss.on !== 'function') {
    throw invalid('wss must be a WebSocketServer');
  }
  const path = options.path ?? d.path;
  if (typeof path !== 'string' || !path.startsWith('/') || path.includes('?')) {
    throw invalid(`path must start with "/" and have no query, got ${JSON.stringify(path)}`);
  }
  const allowedOrigins = options.allowedOrigins ?? d.allowedOrigins;
  if (
    allowedOrigins !== '*' &&
    allowedOrigins !== 'same-origin' &&
    typeof allowedOrigins !== 'function' &&
    !(Array.isArray(allowedOrigins) && allowedOrigins.every((origin) => typeof origin === 'string'))
  ) {
    throw invalid("allowedOrigins must be 'same-origin', '*', an array of origins or a predicate");
  }
  const tokenQueryParam = options.tokenQueryParam ?? d.tokenQueryParam;
  if (tokenQueryParam !== false && (typeof tokenQueryParam !== 'string' || tokenQueryParam === '')) {
    throw invalid('tokenQueryParam must be false or a parameter name');
  }
  if (tokenQueryParam !== false && options.authenticateToken === undefined) {
    throw invalid('tokenQueryParam needs authenticateToken');
  }
  const revealTaskExistence = options.revealTaskExistence ?? d.revealTaskExistence;
  if (typeof revealTaskExistence !== 'boolean') throw invalid('revealTaskExistence must be a boolean');
  const healthDetails = options.healthDetails ?? d.healthDetails;
  if (healthDetails !== 'authenticated' && healthDetails !== 'public') {
    throw invalid("healthDetails must be 'authenticated' or 'public'");
  }
  const serverId = options.serverId ?? defaultServerId();
  if (typeof serverId !== 'string' || serverId.length > LIMITS.maxIdLength || !ID_PATTERN.test(serverId)) {
    throw invalid(`serverId must be 1 to ${LIMITS.maxIdLength} of letters, digits and _ . : @ / -`);
  }
  const clock = options.clock ?? systemClock;
  if (typeof clock !== 'function') throw invalid('clock must be a function');
  const logger = options.logger ?? silentLogger;
  for (const method of ['debug', 'info', 'warn', 'error'] as const) {
    if (typeof logger?.[method] !== 'function') throw invalid(`logger.${method} must be a function`);
  }
  const registry = options.registry;
  if (
    registry !== undefined &&
    (typeof registry !== 'object' || typeof registry.registerMetric !== 'function')
  ) {
    throw invalid('registry must be a prom-client Registry');
  }
  const metricsPrefix = options.metricsPrefix ?? d.metricsPrefix;
  if (typeof metricsPrefix !== 'string' || !/^[a-zA-Z_:][a-zA-Z0-9_:]*$|^$/.test(metricsPrefix)) {
    throw invalid('metricsPrefix must be a valid Prometheus name prefix');
  }
  const leaseTtlMs = integerOption('leaseTtlMs', options.leaseTtlMs ?? d.leaseTtlMs, {
    min: 3,
    max: 86_400_000,
  });
  const leaseRenewIntervalMs = integerOption(
    'leaseRenewIntervalMs',
    options.leaseRenewIntervalMs ?? Math.max(1, Math.floor(leaseTtlMs / 3)),
    { min: 1 },
  );
  if (leaseRenewIntervalMs >= leaseTtlMs) {
    throw invalid(`leaseRenewIntervalMs (${leaseRenewIntervalMs}) must be below leaseTtlMs (${leaseTtlMs})`);
  }
  const terminalRetry = { ...d.terminalRetry, ...stripUndefined(options.terminalRetry ?? {}) };
  // The tracker validates its own options; building one here reports a bad schedule at construction.
  new TerminalRetryTracker(clock, terminalRetry);
  return {
    store,
    authenticate: options.authenticate,
    authenticateToken: options.authenticateToken,
    authorize: options.authorize ?? ownerOnly,
    server: options.server,
    path,
    wss: options.wss,
    allowedOrigins,
    tokenQueryParam,
    revealTaskExistence,
    healthDetails,
    upgradeTimeoutMs: integerOption('upgradeTimeoutMs', options.upgradeTimeoutMs ?? d.upgradeTimeoutMs, {
      min: 1,
    }),
    maxPendingConnectionsPerAddress: integerOption(
      'maxPendingConnectionsPerAddress',
      options.maxPendingConnectionsPerAddress ?? d.maxPendingConnectionsPerAddress,
      { min: 1 },
    ),
    authTimeoutMs: integerOption('authTimeoutMs', options.authTimeoutMs ?? d.authTimeoutMs, { min: 1 }),
    serverId,
    clock,
    logger: guardLogger(logger),
    registry,
    metricsPrefix,
    maxPayloadBytes: integerOption('maxPayloadBytes', options.maxPayloadBytes ?? d.maxPayloadBytes, {
      min: 1024,
    }),
    maxSubscriptionsPerSocket: integerOption(
      'maxSubscriptionsPerSocket',
      options.maxSubscriptionsPerSocket ?? d.maxSubscriptionsPerSocket,
      { min: 1 },
    ),
    maxSocketsPerPrincipal: integerOption(
      'maxSocketsPerPrincipal',
      options.maxSocketsPerPrincipal ?? d.maxSocketsPerPrincipal,
      { min: 1 },
    ),
    maxSubscriptionsPerPrincipal: integerOption(
      'maxSubscriptionsPerPrincipal',
      options.maxSubscriptionsPerPrincipal ?? d.maxSubscriptionsPerPrincipal,
      { min: 1 },
    ),
    rateLimitPerPrincipalPerSecond: integerOption(
      'rateLimitPerPrincipalPerSecond',
      options.rateLimitPerPrincipalPerSecond ?? d.rateLimitPerPrincipalPerSecond,
      { min: 1 },
    ),
    catchUpReadConcurrency: integerOption(
      'catchUpReadConcurrency',
      options.catchUpReadConcurrency ?? d.catchUpReadConcurrency,
      { min: 1 },
    ),
    catchUpReadsPerPrincipal: integerOption(
      'catchUpReadsPerPrincipal',
      options.catchUpReadsPerPrincipal ?? d.catchUpReadsPerPrincipal,
      { min: 1 },
    ),
    rateLimitPerSecond: integerOption(
      'rateLimitPerSecond',
      options.rateLimitPerSecond ?? d.rateLimitPerSecond,
      { min: 1 },
    ),
    rateLimitBurst: integerOption('rateLimitBurst', options.rateLimitBurst ?? d.rateLimitBurst, { min: 1 }),
    maxRateLimitViolations: integerOption(
      'maxRateLimitViolations',
      options.maxRateLimitViolations ?? d.maxRateLimitViolations,
      { min: 1 },
    ),
    maxInvalidFrames: integerOption('maxInvalidFrames', options.maxInvalidFrames ?? d.maxInvalidFrames, {
      min: 1,
    }),
    maxReplayEvents: integerOption('maxReplayEvents', options.maxReplayEvents ?? d.maxReplayEvents, {
      min: 1,
      max: 10_000,
    }),
    heartbeatIntervalMs: integerOption(
      'heartbeatIntervalMs',
      options.heartbeatIntervalMs ?? d.heartbeatIntervalMs,
      { min: 10 },
    ),
    reconnectsPerSecond: integerOption(
      'reconnectsPerSecond',
      options.reconnectsPerSecond ?? d.reconnectsPerSecond,
      { min: 0 },
    ),
    highWaterMarkBytes: integerOption(
      'highWaterMarkBytes',
      options.highWaterMarkBytes ?? d.highWaterMarkBytes,
      { min: 0 },
    ),
    backpressurePollMs: integerOption(
      'backpressurePollMs',
      options.backpressurePollMs ?? d.backpressurePollMs,
      { min: 1 },
    ),
    terminalRetry,
    leaseTtlMs,
    leaseRenewIntervalMs,
    reapIntervalMs: integerOption('reapIntervalMs', options.reapIntervalMs ?? d.reapIntervalMs, { min: 0 }),
    storeRetryDelayMs: integerOption('storeRetryDelayMs', options.storeRetryDelayMs ?? d.storeRetryDelayMs, {
      min: 1,
    }),
  };
}

function stripUndefined<T extends object>(value: T): Partial<T> {
  if (typeof value !== 'object' || value === null) throw invalid('terminalRetry must be an object');
  return Object.fromEntries(Object.entries(value).filter(([, entry]) => entry !== undefined)) as Partial<T>;
}
