/**
 * What every group of routes gets from `createApp`: the app's parts (store, tables, sessions, clusters, the
 * Finishline server) and the request guards, with {@link RouteContext.route} registering a route behind
 * them in one line.
 */
import type { ProgressStore } from '@finishline/core';
import type { ProgressLogger, ProgressServer } from '@finishline/server';
import type { Express, NextFunction, Request, Response } from 'express';
import type { AppDb, AuditEvent } from '../app-db.js';
import { ROLES, type Role, type Session, type SessionManager } from '../auth.js';
import type { Cluster, ClusterSet } from '../clusters.js';
import { KubeApiError } from '../kube-nodes.js';
import { quoted } from '../operations.js';

/** The principal of the Finishline server: the user and its role. */
export interface Principal {
  id: string;
  role: Role;
}

/** A request past {@link RouteContext.requireSession}. */
export type Authed = Request & { session?: Session; role?: Role };

/** The resolved numbers and switches the routes read. */
export interface RouteConfig {
  concurrency: number;
  maxAttempts: number;
  maxNodesPerBatch: number;
  maxRunningBatchesPerUser: number;
  evictionTimeoutMs: number | undefined;
  evictionRetryMs: number | undefined;
  logger: ProgressLogger | undefined;
}

/** Who may call a route: any signed-in user, or at least `role`. */
export interface Access {
  role?: Role;
}

export interface RouteContext {
  app: Express;
  config: RouteConfig;
  store: ProgressStore;
  db: AppDb;
  sessions: SessionManager;
  clusters: ClusterSet;
  progress: ProgressServer<Principal>;
  /** Answers `{ error: { code, message, …extra } }` with `status`. */
  fail(res: Response, status: number, code: string, message: string, extra?: Record<string, unknown>): void;
  /** Whether the request's Origin may change state (no Origin: a non-browser client, CSRF still applies). */
  originAllowed(req: Request): boolean;
  requireSession(req: Authed, res: Response, next: NextFunction): void;
  requireCsrf(req: Authed, res: Response, next: NextFunction): void;
  /**
   * Registers a route behind the session check, the role check (`access.role`) and, for POST, the Origin
   * and CSRF checks; the handler gets the session.
   */
  route(
    method: 'get' | 'post',
    path: string,
    access: Access,
    handler: (req: Authed, res: Response, session: Session) => unknown,
  ): void;
  /** Records a sign-in, sign-out or cancel; a failed write is logged, never fails the request. */
  audit(event: Omit<AuditEvent, 'at'>): Promise<void>;
  /** The cluster a request names (`undefined`/'' → the default); answers 400 and gives `undefined` if unknown. */
  clusterOf(res: Response, name: unknown): Cluster | undefined;
  /** Closes the WebSockets of a session (at logout). */
  dropSockets(sid: string): void;
}

/** The parts of a {@link RouteContext} that {@link createGuards} derives. */
type Guards = Pick<
  RouteContext,
  'fail' | 'originAllowed' | 'requireSession' | 'requireCsrf' | 'route' | 'audit' | 'clusterOf'
>;

/** Builds the request guards and helpers on the app's sessions, tables and clusters. */
export function createGuards(parts: {
  app: Express;
  sessions: SessionManager;
  db: AppDb;
  clusters: ClusterSet;
  /** A list of origins, or a rule such as `sameOrigin()` of `@finishline/server`. */
  allowedOrigins: string[] | ((origin: string, req: Request) => boolean);
  logger: ProgressLogger | undefined;
}): Guards {
  const { app, sessions, db, clusters, allowedOrigins, logger } = parts;
  const fail: Guards['fail'] = (res, status, code, message, extra = {}) => {
    res.status(status).json({ error: { code, message, ...extra } });
  };
  const originAllowed = (req: Request): boolean => {
    const origin = req.headers.origin;
    if (origin === undefined) return true; // non-browser clients; the CSRF token still applies
    if (Array.isArray(allowedOrigins)) return allowedOrigins.includes(origin);
    // An Origin that is not a URL (`null` from a sandboxed frame or a file: page, or garbage) makes the
    // same-origin rule throw: another origin, refused with 403 as the upgrade and /progress refuse it,
    // not a 500.
    try {
      return allowedOrigins(origin, req);
    } catch {
      return false;
    }
  };
  const requireSession = (req: Authed, res: Response, next: NextFunction) => {
    // Checked already, before the body was read (`POST /api/batch`).
    if (req.session !== undefined) return next();
    sessions.fromRequest(req).then(
      (session) => {
        if (session === null) return fail(res, 401, 'unauthenticated', 'log in first');
        req.session = session;
        req.role = sessions.role(session);
        next();
      },
      (error: unknown) => {
        // The session table cannot be read (the database down): every request of every user was answered
        // `500 internal` and logged as a server error for as long as the outage lasted. A moment to retry.
        logger?.warn({ err: String(error) }, 'session not checked');
        res.setHeader('retry-after', '1');
        fail(res, 503, 'store_unavailable', 'the session could not be checked; try again in a moment', {
          retryAfterS: 1,
        });
      },
    );
  };
  const requireRole = (role: Role) => (req: Authed, res: Response, next: NextFunction) => {
    if (ROLES.indexOf(req.role ?? 'viewer') < ROLES.indexOf(role)) {
      return fail(
        res,
        403,
        'forbidden_role',
        `this needs the ${role} role (you are ${req.role ?? 'nobody'})`,
      );
    }
    next();
  };
  // State-changing requests: JSON only (a cross-site form cannot send it without a preflight), an allowed
  // Origin, and the session's CSRF token in a header.
  const requireCsrf = (req: Authed, res: Response, next: NextFunction) => {
    if (req.method === 'GET' || req.method === 'HEAD') return next();
    if (!originAllowed(req)) return fail(res, 403, 'forbidden_origin', 'origin not allowed');
    if (req.session === undefined || !sessions.checkCsrf(req.session, req)) {
      return fail(res, 403, 'csrf', `missing or wrong ${'X-CSRF-Token'} header`);
    }
    next();
  };
  const route: Guards['route'] = (method, path, access, handler) => {
    const guards = [
      requireSession,
      ...(method === 'post' ? [requireCsrf] : []),
      ...(access.role === undefined ? [] : [requireRole(access.role)]),
    ];
    // Express 5 passes a rejected promise on to the error handler.
    app[method](path, ...guards, (req: Authed, res: Response) => handler(req, res, req.session as Session));
  };
  const audit: Guards['audit'] = (event) =>
    db
      .recordEvent({ ...event, at: Date.now() })
      .catch((error: unknown) => logger?.warn({ err: String(error) }, 'audit event not saved'));
  const clusterOf: Guards['clusterOf'] = (res, name) => {
    const cluster = clusters.resolve(name);
    if (cluster === undefined) {
      // Quoted as JSON (`quoted`), not with String(): a body's `{"toString": 1}` made String() throw, and the
      // request was answered 500 `internal`.
      fail(res, 400, 'unknown_cluster', `unknown cluster: ${quoted(name)}`, {
        field: 'cluster',
        clusters: clusters.list().map((c) => c.name),
      });
    }
    return cluster;
  };
  return { fail, originAllowed, requireSession, requireCsrf, route, audit, clusterOf };
}

/**
 * Answers a Kubernetes API failure as a 502 with a short reason of ours and the API's HTTP status (0: no
 * answer), and logs the API's own text. That text went to the user verbatim: the API server's URL and
 * address ("connect ECONNREFUSED 10.0.0.1:6443"), the service account this app runs as ("User
 * \"system:serviceaccount:knm:kube-node-mgr\" cannot list resource \"nodes\""), whatever a proxy in front
 * of the API put in its body — to every signed-in user, viewers included. The operator finds it in the log.
 */
export function kubeFailure(res: Response, error: unknown, logger: ProgressLogger | undefined): void {
  const e = error instanceof KubeApiError ? error : new KubeApiError(0, 'Unknown', String(error));
  logger?.warn({ err: e.message, status: e.status, reason: e.reason }, 'Kubernetes API call failed');
  res.status(502).json({ error: { code: 'kubernetes_error', message: kubeReason(e), status: e.status } });
}

/** What a user is told of a Kubernetes API failure: its kind and HTTP status, none of the API's text. */
function kubeReason(e: KubeApiError): string {
  if (e.status === 0) {
    return e.reason === 'Timeout'
      ? 'the Kubernetes API did not answer in time; try again'
      : 'the Kubernetes API cannot be reached; try again';
  }
  if (e.status === 401 || e.status === 403)
    return `the Kubernetes API refused this app's access (HTTP ${e.status}); ask an administrator`;
  if (e.status === 429) return 'the Kubernetes API is busy (HTTP 429); try again in a moment';
  return `the Kubernetes API failed (HTTP ${e.status}); try again`;
}
