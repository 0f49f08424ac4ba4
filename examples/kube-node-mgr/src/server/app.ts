import { createHash, timingSafeEqual } from 'node:crypto';
import { existsSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import { ErrorCode, isProgressError, ProgressError, type ProgressStore } from '@finishline/core';
import {
  forwardedClientAddress,
  type ProgressLogger,
  ProgressServer,
  type ProgressServerOptions,
  sameOrigin,
} from '@finishline/server';
import express, { type NextFunction, type Request, type Response } from 'express';
import { ApiRateLimit, type ApiRateLimitOptions } from './api-rate-limit.js';
import type { AppDb } from './app-db.js';
import type { SessionManager } from './auth.js';
import { bodyErrorAnswer } from './body-errors.js';
import { type Cluster, ClusterSet } from './clusters.js';
import { hostRule } from './host-rule.js';
import type { KubeNodes } from './kube-nodes.js';
import { LoginThrottle, type LoginThrottleOptions } from './login-throttle.js';
import { startRetention } from './retention.js';
import { PROXY_AUTH_HEADER } from './round-robin-proxy.js';
import { IDEMPOTENCY_KEY_TTL_MS, registerBatchRoutes } from './routes/batch-routes.js';
import { createGuards, type Principal, type RouteContext } from './routes/context.js';
import { registerNodeRoutes } from './routes/node-routes.js';
import { registerSessionRoutes } from './routes/session-routes.js';
import { registerTaskRoutes } from './routes/task-routes.js';
import { registerTemplateRoutes } from './routes/template-routes.js';
import { securityHeaders } from './security-headers.js';

export type { Principal };

/** Options of {@link createApp}. */
export interface AppOptions {
  store: ProgressStore;
  /** The clusters (kubeconfig contexts) to manage, the first the default; or {@link AppOptions.nodes}. */
  clusters?: Cluster[];
  /** One cluster's node API (a cluster named `default`), when {@link AppOptions.clusters} is not given. */
  nodes?: KubeNodes;
  sessions: SessionManager;
  /** The example's own tables (sessions, audit, node locks, cordon notes). */
  db: AppDb;
  /** Login throttling per account and per address. */
  loginThrottle?: LoginThrottleOptions;
  /**
   * `/api` requests per signed-in user (but sign-in and sign-out): past it, 429 `rate_limited` with
   * `Retry-After`. `GET /api/nodes` lists the cluster's nodes from the Kubernetes API at each call.
   */
  apiRateLimit?: ApiRateLimitOptions;
  /**
   * Successful sign-ins per user (a token bucket, asked once the password matched): past it, 429
   * `too_many_sign_ins` with `Retry-After`, nothing stored. Each sign-in writes a session and an audit event.
   * @default { burst: 30, perSecond: 1 / 60 } (30 at once: a shared account, a test run; then one a minute)
   */
  signInRateLimit?: ApiRateLimitOptions;
  /**
   * How long the audit log is kept: sign-in, sign-out and cancel events and the batch records (the audit
   * page's and the task list's rows) older than this are deleted by the retention runs
   * ({@link AppOptions.retentionIntervalMs}). Keep it at least
   * {@link AppOptions.taskRetentionMs} (a finished batch still in the store would lose its record first) and
   * at least 24 h (an `Idempotency-Key` retried after its batch's record went would start the batch again):
   * `createApp` refuses less with a `ProgressError` of code `invalid_input`.
   * @default 7776000000 (90 days)
   */
  auditRetentionMs?: number;
  /**
   * Batches one user may have running at once; one more gets 429 `too_many_batches`.
   * @default 3
   */
  maxRunningBatchesPerUser?: number;
  /**
   * How often the sockets of this replica are checked against revoked sessions (a logout on another
   * replica closes them within this period; a logout on this one closes them at once).
   * @default 10000
   */
  sessionSweepIntervalMs?: number;
  /**
   * How long a finished batch (its task and events) is kept: then retention deletes it, and its page and
   * progress answer `task_not_found`. 0 keeps none past the next retention run.
   * @default 604800000 (7 days)
   */
  taskRetentionMs?: number;
  /**
   * How often this replica deletes finished batches older than {@link AppOptions.taskRetentionMs} and audit
   * rows older than {@link AppOptions.auditRetentionMs}: in batches (500 tasks, 10,000 rows of each audit
   * table) until none is left, at most 100 batches of each per run, one run at a time.
   * @default 600000 (10 minutes)
   */
  retentionIntervalMs?: number;
  /**
   * Nodes patched at the same time in one batch.
   * @default 4
   */
  concurrency?: number;
  /**
   * Patch attempts per node before conflicts count as a failure.
   * @default 5
   */
  maxAttempts?: number;
  /**
   * Most nodes in one batch.
   * @default 1000
   */
  maxNodesPerBatch?: number;
  /**
   * Folder of the built web UI (served at `/`); none: API only.
   * @default undefined
   */
  staticDir?: string | undefined;
  /**
   * Origins allowed to open the progress WebSocket and send state-changing requests.
   * @default 'same-origin'
   */
  allowedOrigins?: 'same-origin' | string[];
  /**
   * Trust `X-Forwarded-Proto` (behind a TLS-terminating proxy): https requests get `Secure` cookies, and
   * same-origin checks (the app's and, with `allowedOrigins` 'same-origin', the WebSocket's and `/progress`'s)
   * take its scheme; the client's address (login throttle) is the one the proxy appended to
   * `X-Forwarded-For`. A number: that many proxies in a row (the replica launcher's round-robin proxy
   * behind a TLS one is 2), the address being the one the first of them appended. `true` is 1.
   * @default false
   */
  trustProxy?: boolean | number;
  /**
   * The secret a trusted proxy sends in `X-Knm-Proxy-Auth` (the replica launcher's round-robin proxy and its
   * replicas share one, `PROXY_SECRET`): with it, the `X-Forwarded-*` headers of a request without it are
   * dropped before anything reads them. The replicas listen on loopback, where any local client could
   * connect directly, bypassing the proxy, and name its own address (the login throttle's) and scheme.
   * @default undefined (every peer's headers are believed, up to `trustProxy` hops)
   */
  proxySecret?: string;
  /**
   * How long a drain waits for one pod that a PodDisruptionBudget protects before the node fails; and, once
   * it is evicted, for it to terminate. An integer from 1 to 2^31 - 1.
   * @default 120000
   */
  evictionTimeoutMs?: number;
  /**
   * How long a drain waits before asking again to evict a pod that a PodDisruptionBudget protects (kubectl
   * drain's 5 s); a refusal with `Retry-After` waits that instead. An integer from 1 to 2^31 - 1.
   * @default 5000
   */
  evictionRetryMs?: number;
  /**
   * The host names the `Host` header may name (without the port; an IPv6 address without brackets); any other
   * is refused with 403 `forbidden_host` (HTTP) or at the WebSocket upgrade. Against DNS rebinding: a web page
   * whose name is made to resolve to 127.0.0.1 is same-origin with its own `Host`, so a server on loopback
   * (the demo users' `demo` / `demo`, in front of `kubectl proxy`) took its sign-in and batches.
   * The server sets `LOOPBACK_HOSTS` (host-rule.ts) when listening on loopback (`--allowed-hosts`, `ALLOWED_HOSTS`).
   * @default undefined (any host)
   */
  allowedHosts?: readonly string[] | undefined;
  /** Extra options of the Finishline server (heartbeat, leases…). */
  progress?: Partial<ProgressServerOptions<Principal>>;
  logger?: ProgressLogger;
}

/** The defaults of {@link AppOptions}. */
export const APP_DEFAULTS = Object.freeze({
  concurrency: 4,
  maxAttempts: 5,
  maxNodesPerBatch: 1000,
  maxRunningBatchesPerUser: 3,
  sessionSweepIntervalMs: 10_000,
  taskRetentionMs: 7 * 24 * 3_600_000,
  auditRetentionMs: 90 * 24 * 3_600_000,
  retentionIntervalMs: 600_000,
  signInRateLimit: Object.freeze({ burst: 30, perSecond: 1 / 60 }),
});

/** A running app: an `http.Server` (not yet listening) with the Finishline server attached. */
export interface App {
  server: http.Server;
  progress: ProgressServer<Principal>;
  /**
   * Stops accepting connections, stops the Finishline server (ends running tasks honestly; at most
   * {@link CLOSE_STEP_MS}), waits (at most as long again) for the stopped batches to release their node
   * locks and for a retention run, a session sweep and an hourly purge under way to end, then (as long
   * again) for the HTTP requests in progress to be answered, and closes the HTTP server — close the database after this. So it resolves within 3 × {@link CLOSE_STEP_MS}.
   */
  close(): Promise<void>;
}

/**
 * The bound of each of `App.close`'s three waits (5 s). deploy/deployment.yaml's grace period must hold its
 * preStop sleep plus the three (test/deploy-prestop.test.ts).
 */
export const CLOSE_STEP_MS = 5000;

/**
 * The largest `maxNodesPerBatch` allowed: Kubernetes' largest supported cluster (5,000 nodes). A batch's
 * node locks are one INSERT of five parameters per node, and a cap of 100,000 let a batch past the
 * databases' parameter limits (SQLite 32,766: about 6,500 nodes; Postgres 65,535: about 13,000), where
 * the batch failed at its start with the database's error.
 */
export const MAX_NODES_PER_BATCH = 5000;

/** The body limit of every `/api` route but `POST /api/batch` (see {@link batchBodyLimit}). */
export const API_BODY_LIMIT = 256 * 1024;

/**
 * The body limit of `POST /api/batch`, in bytes: `maxNodesPerBatch` names of the longest a node may have
 * (253 characters, a DNS-1123 subdomain, which JSON sends unescaped) with their quotes and comma, plus 64 KiB
 * for the rest of the body (operation, key, value, effect, reason, cluster: a few kB at most) and any
 * indentation. 1,345,536 bytes (1.3 MB) for the largest cap, 5,000 nodes; 321,536 for the default 1,000.
 * Under the other routes' 256 kB, a batch of 5,000 (or of 1,000) nodes named over ~50 characters got 413.
 */
export function batchBodyLimit(maxNodesPerBatch: number): number {
  return 64 * 1024 + maxNodesPerBatch * (253 + 3);
}

/** An option of {@link createApp} refused: a `ProgressError` of code `invalid_input` naming it. */
function invalidAppOption(message: string): ProgressError {
  return new ProgressError(ErrorCode.InvalidInput, `createApp: ${message}`);
}

/** Builds the Express app, the HTTP server and the Finishline server on it. */
export function createApp(options: AppOptions): App {
  const config = { ...APP_DEFAULTS, ...options };
  for (const [name, value, max] of [
    ['concurrency', config.concurrency, 1000],
    ['maxAttempts', config.maxAttempts, 100],
    ['maxNodesPerBatch', config.maxNodesPerBatch, MAX_NODES_PER_BATCH],
    ['maxRunningBatchesPerUser', config.maxRunningBatchesPerUser, 1000],
  ] as const) {
    if (!Number.isInteger(value) || value < 1 || value > max)
      throw invalidAppOption(`${name} must be an integer from 1 to ${max} (got ${value})`);
  }
  // setInterval fires a delay past 2^31 - 1 ms after 1 ms.
  for (const [name, value, min, max] of [
    ['taskRetentionMs', config.taskRetentionMs, 0, Number.MAX_SAFE_INTEGER],
    ['auditRetentionMs', config.auditRetentionMs, 0, Number.MAX_SAFE_INTEGER],
    ['retentionIntervalMs', config.retentionIntervalMs, 1, 2 ** 31 - 1],
    // Left out, the drain's defaults (120 s, 5 s). Unchecked until 7 December 2026: an evictionRetryMs of NaN
    // or 0 asked again at once after every PodDisruptionBudget refusal (a timer of NaN fires after 1 ms), a
    // loop against the API server for the whole evictionTimeoutMs; an evictionTimeoutMs of NaN or below 0
    // failed a node at its first refusal, and Infinity never did.
    ['evictionTimeoutMs', config.evictionTimeoutMs, 1, 2 ** 31 - 1],
    ['evictionRetryMs', config.evictionRetryMs, 1, 2 ** 31 - 1],
  ] as const) {
    if (value === undefined) continue;
    if (!Number.isSafeInteger(value) || value < min || value > max)
      throw invalidAppOption(`${name} must be an integer from ${min} to ${max} (got ${value})`);
  }
  // A batch's record (knm_tasks, deleted with the audit log) is what its page, its reruns and the task list
  // read, and what says an Idempotency-Key's batch started. Deleted before the task, the batch still in the
  // store answered 404 everywhere in the app; deleted within the key's 24 h, a retry of the key started the
  // batch a second time. Both were accepted without a word.
  if (config.auditRetentionMs < config.taskRetentionMs)
    throw invalidAppOption(
      `auditRetentionMs (${config.auditRetentionMs}) must be at least taskRetentionMs (${config.taskRetentionMs}): a finished batch still kept would lose its record (its page, its reruns) first`,
    );
  if (config.auditRetentionMs < IDEMPOTENCY_KEY_TTL_MS)
    throw invalidAppOption(
      `auditRetentionMs (${config.auditRetentionMs}) must be at least ${IDEMPOTENCY_KEY_TTL_MS} (24 h, how long an Idempotency-Key answers with its batch): a key sent again after its batch's record was deleted would start the batch again`,
    );
  const { sessions, db, store } = config;
  const clusters = new ClusterSet(
    config.clusters ??
      (config.nodes === undefined ? [] : [{ name: 'default', nodes: config.nodes } satisfies Cluster]),
  );
  const throttle = new LoginThrottle(config.loginThrottle);
  const app = express();
  app.disable('x-powered-by');
  // One hop (the TLS proxy in front): its X-Forwarded-Proto and X-Forwarded-For are believed, not whatever a
  // client put further left in X-Forwarded-For (which would let it pick its address for the login throttle).
  const proxyHops =
    config.trustProxy === true ? 1 : config.trustProxy === false ? 0 : (config.trustProxy ?? 0);
  if (!Number.isInteger(proxyHops) || proxyHops < 0 || proxyHops > 10)
    throw invalidAppOption(`trustProxy must be a boolean or an integer from 0 to 10 (got ${proxyHops})`);
  if (proxyHops > 0) app.set('trust proxy', proxyHops);
  app.use(securityHeaders);
  app.use((req: Request, res: Response, next: NextFunction) => {
    if (hostAllowed(req)) return next();
    // The names and the remedy: someone opening the page by this machine's own name saw only "not served
    // under that host name", with nothing saying which names are or how to add one.
    res.status(403).json({
      error: {
        code: 'forbidden_host',
        message: `this server answers only to ${allowedNames}, against DNS rebinding: open it under one of them, or list this name in --allowed-hosts (ALLOWED_HOSTS)`,
      },
    });
  });
  const server = http.createServer(app);
  // The HTTP requests in progress, which the shutdown lets finish before the caller closes the database.
  let requestsInFlight = 0;
  let closing = false;
  let onRequestsDone: (() => void) | undefined;
  server.on('request', (_req: http.IncomingMessage, res: http.ServerResponse) => {
    requestsInFlight++;
    // During the shutdown a kept-alive connection carries no further request: it closes after this answer.
    if (closing) res.shouldKeepAlive = false;
    res.once('close', () => {
      if (--requestsInFlight === 0) onRequestsDone?.();
    });
  });
  if (config.proxySecret !== undefined) {
    if (config.proxySecret.length < 16)
      throw invalidAppOption('proxySecret must have at least 16 characters');
    const digest = (value: string) => createHash('sha256').update(value).digest();
    const expected = digest(config.proxySecret);
    // Before the app and the progress server (its WebSocket upgrade and same-origin check) see the request.
    const screen = (req: http.IncomingMessage) => {
      const given = req.headers[PROXY_AUTH_HEADER];
      delete req.headers[PROXY_AUTH_HEADER];
      if (typeof given === 'string' && timingSafeEqual(digest(given), expected)) return;
      for (const name of ['x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host'])
        delete req.headers[name];
    };
    server.prependListener('request', screen);
    server.prependListener('upgrade', screen);
  }
  // One Origin rule for the app's routes, the WebSocket and /progress. Behind a proxy that terminates TLS
  // every request arrives over http: under --trust-proxy same-origin takes the scheme from the proxy's
  // X-Forwarded-Proto (else the https pages' socket would be refused with 403, which the client takes as
  // fatal, and their POSTs).
  // Which session cookie a request carries (`__Host-knm_session` over https) follows the scheme as the
  // routes see it (`req.secure`): under trustProxy the proxy's first X-Forwarded-Proto value, as Express
  // and sameOrigin read it; else TLS on the socket. Set here for the upgrade and /progress, which get the bare
  // request.
  sessions.readSchemeWith((req) => {
    const header = req.headers['x-forwarded-proto'];
    const forwarded = (Array.isArray(header) ? header[0] : header)?.split(',')[0]?.trim().toLowerCase();
    if (proxyHops > 0 && forwarded !== undefined && forwarded !== '') return forwarded === 'https';
    return (req.socket as { encrypted?: boolean } | undefined)?.encrypted === true;
  });
  const hostAllowed = hostRule(config.allowedHosts);
  const allowedNames = (config.allowedHosts ?? [])
    .map((h) => (h.includes(':') ? `[${h.replace(/^\[|\]$/g, '')}]` : h))
    .join(', ');
  const sameOriginRule = sameOrigin({ trustProxy: proxyHops > 0 });
  // A request to a host not allowed (DNS rebinding) is of no origin of ours, whatever its Origin says.
  // (HTTP requests are refused below before any route; this is for the WebSocket upgrade. A listed origin is
  // never the rebinding page's own.)
  const allowedOrigins = Array.isArray(config.allowedOrigins)
    ? config.allowedOrigins
    : config.allowedHosts === undefined
      ? sameOriginRule
      : (origin: string, req: http.IncomingMessage) => hostAllowed(req) && sameOriginRule(origin, req);
  const progress = new ProgressServer<Principal>({
    // The client address of the library's limit on failed authentications (`/progress` requests and upgrades
    // without a valid cookie), as the login throttle takes it: behind the proxies `trustProxy` counts, every
    // client otherwise had the nearest proxy's address, and one client's requests without a valid cookie
    // spent the budget of all, refusing every signed-in user's /progress requests and sockets with 429.
    ...(proxyHops > 0 ? { clientAddress: forwardedClientAddress({ trustedProxies: proxyHops }) } : {}),
    ...config.progress,
    store,
    server,
    path: '/progress',
    allowedOrigins,
    // The same cookie as the rest of the app, checked against the stored session at the WebSocket upgrade
    // and on /progress HTTP: a cookie replayed after logout gets 401 on both.
    authenticate: async (request) => {
      const session = await sessions.fromRequest(request);
      return session === null ? null : { id: session.username, role: sessions.role(session) };
    },
    // Viewers and admins watch every task; operators their own. Cancelling: an admin any task, an
    // operator its own, a viewer none.
    authorize: (principal, task, action) => {
      if (action === 'cancel') {
        return principal.role === 'admin' || (principal.role === 'operator' && task.owner === principal.id);
      }
      return principal.role !== 'operator' || task.owner === principal.id;
    },
    ...(config.logger === undefined ? {} : { logger: config.logger }),
  });

  // The raw sockets of upgraded connections and of the HTTP fallback's event streams, by session id, so a
  // logout closes them (the library keeps its connections to itself; destroying the socket makes the
  // client reconnect, and the upgrade or the stream's request then gets 401). An event stream stays open
  // until its task ends: left out, a revoked cookie's streams kept delivering progress after the logout.
  const socketsBySid = new Map<string, Set<Duplex>>();
  /** Tracks `socket` under the request's session until it closes or the returned function is called. */
  const trackSocket = (request: http.IncomingMessage, socket: Duplex): (() => void) => {
    const sid = sessions.sidOf(request);
    if (sid === null) return () => undefined;
    const set = socketsBySid.get(sid) ?? new Set<Duplex>();
    socketsBySid.set(sid, set);
    set.add(socket);
    const untrack = () => {
      socket.off('close', untrack);
      set.delete(socket);
      if (set.size === 0 && socketsBySid.get(sid) === set) socketsBySid.delete(sid);
    };
    socket.once('close', untrack);
    return untrack;
  };
  server.on('upgrade', (request: http.IncomingMessage, socket: Duplex) => {
    trackSocket(request, socket);
  });
  // A request of the Finishline HTTP API that may become an event stream (the library matches the route):
  // its connection is tracked while the answer is open, and only then: once it ends, the kept-alive
  // connection may carry other requests (the logout's own, whose answer destroying it would lose).
  app.use('/progress', (req: Request, res: Response, next: NextFunction) => {
    if (req.method === 'GET' && req.path.endsWith('/stream')) {
      const untrack = trackSocket(req, req.socket);
      res.once('close', untrack);
    }
    next();
  });
  const dropSockets = (sid: string) => {
    for (const socket of socketsBySid.get(sid) ?? []) socket.destroy();
    socketsBySid.delete(sid);
  };
  // The database calls of the sweep and the purge below (kysely's are asynchronous, on SQLite as on
  // Postgres): close() waits for those under way, as for a retention run, before the caller closes the
  // database (one still going then failed on the closed database). Each is caught: none rejects.
  const housekeeping = new Set<Promise<void>>();
  const track = (call: Promise<void>) => {
    housekeeping.add(call);
    void call.then(() => housekeeping.delete(call));
  };
  const sweep = setInterval(() => {
    for (const sid of [...socketsBySid.keys()]) {
      track(
        sessions.active(sid).then(
          (active) => {
            if (!active) dropSockets(sid);
          },
          (error: unknown) => config.logger?.warn({ err: String(error) }, 'session sweep failed'),
        ),
      );
    }
  }, config.sessionSweepIntervalMs);
  sweep.unref();
  // Expired sessions are deleted hourly (revoked ones stay until they expire, so they stay refused), and so
  // are expired Idempotency-Keys of batch starts.
  const purge = setInterval(() => {
    track(
      db
        .purgeSessions()
        .catch((error: unknown) => config.logger?.warn({ err: String(error) }, 'session purge failed')),
    );
    track(
      db
        .purgeIdempotencyKeys(Date.now() - IDEMPOTENCY_KEY_TTL_MS)
        .catch((error: unknown) =>
          config.logger?.warn({ err: String(error) }, 'idempotency key purge failed'),
        ),
    );
  }, 3_600_000);
  purge.unref();
  // Finished batches are deleted for real once older than taskRetentionMs (the original kept every failed
  // task for ever), and the audit log once older than auditRetentionMs (it was never purged).
  const retention = startRetention({
    store,
    db,
    taskRetentionMs: config.taskRetentionMs,
    auditRetentionMs: config.auditRetentionMs,
    intervalMs: config.retentionIntervalMs,
    logger: config.logger,
  });

  const guards = createGuards({ app, sessions, db, clusters, allowedOrigins, logger: config.logger });
  const { fail } = guards;

  // Before anything else of /api: a request past its user's limit costs a cookie check and nothing more — no
  // database read, no Kubernetes call (unlimited, one user, or a script with a stolen cookie, could make
  // `GET /api/nodes` list the cluster's nodes as fast as it asked). Keyed by the signed cookie's user, not its
  // session: more sign-ins do not buy more. A request without a valid signature is refused with 401 by the
  // session check, which reads no database for it; sign-in has its own throttle; sign-out is always let through.
  const rateLimit = new ApiRateLimit(config.apiRateLimit);
  app.use('/api', (req, res, next) => {
    if (req.path === '/login' || req.path === '/logout') return next();
    const user = sessions.userOf(req);
    const waitMs = user === null ? 0 : rateLimit.take(user);
    if (waitMs === 0) return next();
    const seconds = Math.ceil(waitMs / 1000);
    res.setHeader('retry-after', String(seconds));
    fail(res, 429, 'rate_limited', `too many requests: try again in ${seconds} s`, { retryAfterS: seconds });
  });

  // The batch's node list sets its route's limit; a body parsed here is not parsed again below. The
  // session is checked first: read before it, the body of up to 1.3 MB was anyone's to make this replica
  // read and parse (the route's own check sees the request checked and does not ask the database again).
  app.post(
    '/api/batch',
    guards.requireSession,
    express.json({ limit: batchBodyLimit(config.maxNodesPerBatch) }),
  );
  app.use('/api', express.json({ limit: API_BODY_LIMIT }));
  app.use('/api', (req, res, next) => {
    if (req.method !== 'GET' && req.method !== 'HEAD' && !req.is('application/json')) {
      return fail(res, 415, 'unsupported_media_type', 'send application/json');
    }
    next();
  });

  app.get('/healthz', (_req, res) => {
    res.json({ ok: true });
  });

  const ctx: RouteContext = {
    app,
    config: {
      ...config,
      evictionTimeoutMs: config.evictionTimeoutMs,
      evictionRetryMs: config.evictionRetryMs,
      logger: config.logger,
    },
    store,
    db,
    sessions,
    clusters,
    progress,
    ...guards,
    dropSockets,
  };
  // Per user, as the API's limit: the keys are configured users only (asked once the password matched).
  const signIns = new ApiRateLimit({ ...APP_DEFAULTS.signInRateLimit, ...options.signInRateLimit });
  registerSessionRoutes(ctx, throttle, signIns);
  registerNodeRoutes(ctx);
  const batches = registerBatchRoutes(ctx);
  registerTemplateRoutes(ctx);
  registerTaskRoutes(ctx);

  if (config.staticDir !== undefined && existsSync(config.staticDir)) {
    const dir = config.staticDir;
    app.use(express.static(dir, { index: 'index.html', maxAge: '1h', setHeaders: noCacheHtml }));
    app.get(/^\/(?!api\/|progress\/).*/, (_req, res) => {
      res.setHeader('cache-control', 'no-cache');
      res.sendFile(path.join(dir, 'index.html'));
    });
  }
  app.use('/api', (_req: Request, res: Response) => fail(res, 404, 'not_found', 'no such route'));
  app.use((error: unknown, _req: Request, res: Response, _next: NextFunction) => {
    // A path parameter that is not valid %-encoding (`/api/tasks/%ZZ`): Express's router refuses it with a 400
    // URIError, the client's mistake, which was answered `internal` and logged as a server error.
    if (error instanceof URIError && (error as { status?: unknown }).status === 400) {
      return fail(res, 400, 'invalid_input', 'the URL has a malformed %-encoding');
    }
    // A task id in the path that no task can have (`/api/tasks/constructor`, a space, over 128 characters):
    // the store refuses it before reading, which was answered `500 internal` and logged as a server error,
    // while `/progress/tasks/:id` answers the same id 400. The routes' store calls take no other input of the
    // client's (owners are the session's user, kinds and messages the app's own).
    if (isProgressError(error) && error.code === ErrorCode.InvalidInput) {
      return fail(res, 400, 'invalid_input', error.message);
    }
    // A batch asked for while this replica shuts down (its Finishline server closed first): not an internal
    // error but a moment to retry, which another replica (or this one restarted) takes.
    if (isProgressError(error) && error.code === ErrorCode.Closed) {
      res.setHeader('retry-after', '1');
      return fail(res, 503, 'shutting_down', 'this server is shutting down; try again in a moment');
    }
    // A body the JSON parser refused (malformed, too large, an unsupported charset or encoding…): the
    // client's mistake, with its own code, never `internal`.
    const refused = bodyErrorAnswer(error, API_BODY_LIMIT);
    if (refused !== undefined) return fail(res, refused.status, refused.code, refused.message, refused.extra);
    config.logger?.error({ err: String(error) }, 'request failed');
    fail(res, 500, 'internal', 'internal error');
  });

  return {
    server,
    progress,
    async close() {
      clearInterval(sweep);
      clearInterval(purge);
      // Awaited below, before the caller closes the database: a run under way ends after its current purge.
      const retentionStopped = retention.stop();
      // Stop accepting first: new connections are refused (the replica launcher's proxy and a Service send
      // them to another replica) and idle kept-alive ones closed, while the requests in progress go on.
      closing = true;
      const listenerClosed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      await progress.close({ timeoutMs: CLOSE_STEP_MS });
      // The batches just stopped release their node locks after they end: the caller closes the database next.
      // Bounded: a handler stuck in a Kubernetes call that ignores its signal does not hold the shutdown.
      let timer: NodeJS.Timeout | undefined;
      // And the retention run under way (after its current purge), and the session sweep's and the hourly
      // purges' database calls under way (their timers cleared above), within the same bound.
      await Promise.race([
        Promise.all([batches.settled(), retentionStopped, ...housekeeping]),
        new Promise<void>((resolve) => {
          timer = setTimeout(resolve, CLOSE_STEP_MS);
        }),
      ]);
      clearTimeout(timer);
      // Then the HTTP requests still in progress (a read, a login's hash, a batch start answering 503) finish,
      // the database still open: cutting them at once lost their answers. Bounded as the batches are.
      if (requestsInFlight > 0) {
        await Promise.race([
          new Promise<void>((resolve) => {
            onRequestsDone = resolve;
          }),
          new Promise<void>((resolve) => {
            timer = setTimeout(resolve, CLOSE_STEP_MS);
          }),
        ]);
        clearTimeout(timer);
      }
      server.closeAllConnections();
      await listenerClosed;
    },
  };
}

function noCacheHtml(res: http.ServerResponse, file: string): void {
  if (file.endsWith('.html')) res.setHeader('cache-control', 'no-cache');
}
