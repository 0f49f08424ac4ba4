import { existsSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import type { ProgressStore } from '@finishline/core';
import { type ProgressLogger, ProgressServer, type ProgressServerOptions } from '@finishline/server';
import express, { type NextFunction, type Request, type Response } from 'express';
import type { Session, SessionManager } from './auth.js';
import { KubeApiError, type KubeNodes } from './kube-nodes.js';
import { applyToNode } from './node-worker.js';
import {
  BadRequestError,
  describeOperation,
  OPERATION_KIND,
  parseOperation,
  parseSelection,
} from './operations.js';

/** Options of {@link createApp}. */
export interface AppOptions {
  store: ProgressStore;
  nodes: KubeNodes;
  sessions: SessionManager;
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
   * Trust `X-Forwarded-Proto` (behind a TLS-terminating proxy): https requests get `Secure` cookies.
   * @default false
   */
  trustProxy?: boolean;
  /** Extra options of the Finishline server (heartbeat, leases…). */
  progress?: Partial<ProgressServerOptions<{ id: string }>>;
  logger?: ProgressLogger;
}

/** The defaults of {@link AppOptions}. */
export const APP_DEFAULTS = Object.freeze({ concurrency: 4, maxAttempts: 5, maxNodesPerBatch: 1000 });

/** A running app: an `http.Server` (not yet listening) with the Finishline server attached. */
export interface App {
  server: http.Server;
  progress: ProgressServer<{ id: string }>;
  /** Stops the Finishline server (ends running tasks honestly) and the HTTP server. */
  close(): Promise<void>;
}

type Authed = Request & { session?: Session };

/** Builds the Express app, the HTTP server and the Finishline server on it. */
export function createApp(options: AppOptions): App {
  const config = { ...APP_DEFAULTS, ...options };
  for (const [name, value, max] of [
    ['concurrency', config.concurrency, 1000],
    ['maxAttempts', config.maxAttempts, 100],
    ['maxNodesPerBatch', config.maxNodesPerBatch, 100_000],
  ] as const) {
    if (!Number.isInteger(value) || value < 1 || value > max)
      throw new Error(`createApp: ${name} must be an integer from 1 to ${max} (got ${value})`);
  }
  const { sessions, nodes } = config;
  const app = express();
  app.disable('x-powered-by');
  if (config.trustProxy) app.set('trust proxy', true);
  const server = http.createServer(app);
  const allowedOrigins = config.allowedOrigins ?? 'same-origin';
  const progress = new ProgressServer<{ id: string }>({
    ...config.progress,
    store: config.store,
    server,
    path: '/progress',
    allowedOrigins,
    // The same signed cookie as the rest of the app, read at the WebSocket upgrade and on /progress HTTP.
    authenticate: (request) => {
      const session = sessions.fromRequest(request);
      return session === null ? null : { id: session.username };
    },
    ...(config.logger === undefined ? {} : { logger: config.logger }),
  });

  const originAllowed = (req: Request): boolean => {
    const origin = req.headers.origin;
    if (origin === undefined) return true; // non-browser clients; the CSRF token still applies
    if (Array.isArray(allowedOrigins)) return allowedOrigins.includes(origin);
    try {
      return new URL(origin).host === req.headers.host;
    } catch {
      return false;
    }
  };
  const fail = (
    res: Response,
    status: number,
    code: string,
    message: string,
    extra: Record<string, unknown> = {},
  ) => {
    res.status(status).json({ error: { code, message, ...extra } });
  };
  const requireSession = (req: Authed, res: Response, next: NextFunction) => {
    const session = sessions.fromRequest(req);
    if (session === null) return fail(res, 401, 'unauthenticated', 'log in first');
    req.session = session;
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
  const secure = (req: Request) => req.secure;

  app.use('/api', express.json({ limit: '256kb' }));
  app.use('/api', (req, res, next) => {
    if (req.method !== 'GET' && req.method !== 'HEAD' && !req.is('application/json')) {
      return fail(res, 415, 'unsupported_media_type', 'send application/json');
    }
    next();
  });

  app.get('/healthz', (_req, res) => {
    res.json({ ok: true });
  });

  app.post('/api/login', (req: Request, res: Response) => {
    if (!originAllowed(req)) return fail(res, 403, 'forbidden_origin', 'origin not allowed');
    const { username, password } = (req.body ?? {}) as { username?: unknown; password?: unknown };
    if (typeof username !== 'string' || typeof password !== 'string') {
      return fail(res, 400, 'invalid_input', 'username and password are required');
    }
    const session = sessions.login(username, password);
    if (session === null) return fail(res, 401, 'bad_credentials', 'wrong username or password');
    res.setHeader('set-cookie', sessions.cookie(session, secure(req)));
    res.json({ username: session.username, csrfToken: sessions.csrfToken(session) });
  });

  app.get('/api/session', requireSession, (req: Authed, res: Response) => {
    const session = req.session as Session;
    res.json({ username: session.username, csrfToken: sessions.csrfToken(session) });
  });

  app.post('/api/logout', requireSession, requireCsrf, (req: Request, res: Response) => {
    res.setHeader('set-cookie', sessions.clearCookie(secure(req)));
    res.json({ ok: true });
  });

  app.get('/api/nodes', requireSession, async (req: Request, res: Response) => {
    const selector =
      typeof req.query.labelSelector === 'string' && req.query.labelSelector !== ''
        ? req.query.labelSelector
        : undefined;
    try {
      res.json({ nodes: await nodes.list(selector) });
    } catch (error) {
      kubeFailure(res, error);
    }
  });

  app.post('/api/batch', requireSession, requireCsrf, async (req: Authed, res: Response) => {
    const session = req.session as Session;
    let op: ReturnType<typeof parseOperation>;
    let names: string[];
    try {
      op = parseOperation(req.body);
      names = parseSelection((req.body as { nodes?: unknown }).nodes, config.maxNodesPerBatch);
    } catch (error) {
      if (error instanceof BadRequestError)
        return fail(res, 400, 'invalid_input', error.message, { field: error.field });
      throw error;
    }
    let known: Set<string>;
    try {
      known = new Set((await nodes.list()).map((n) => n.name));
    } catch (error) {
      return kubeFailure(res, error);
    }
    const unknown = names.filter((n) => !known.has(n));
    if (unknown.length > 0) {
      return fail(
        res,
        400,
        'unknown_nodes',
        `unknown node${unknown.length > 1 ? 's' : ''}: ${unknown.join(', ')}`,
        {
          field: 'nodes',
          nodes: unknown,
        },
      );
    }
    const description = `${describeOperation(op)} on ${names.length} node${names.length > 1 ? 's' : ''}`;
    const task = await progress.tasks.create({
      owner: session.username,
      kind: OPERATION_KIND[op.type],
      total: names.length,
      message: description,
    });
    void task
      .runBatch(
        names,
        async (name, { signal }) => {
          await task.progress({ current: name });
          return { ...(await applyToNode(nodes, name, op, { maxAttempts: config.maxAttempts, signal })) };
        },
        { concurrency: config.concurrency, key: (name) => name },
      )
      .catch((error: unknown) =>
        config.logger?.error({ err: String(error), taskId: task.id }, 'batch failed'),
      );
    res.status(202).json({ taskId: task.id, kind: OPERATION_KIND[op.type], description, nodes: names });
  });

  // The Finishline HTTP API (snapshots, events after a seq, the user's own recent tasks, cancel). Cancel is
  // state-changing: it needs the CSRF token like the rest.
  const progressHttp = progress.httpHandler({ basePath: '/progress' });
  app.use('/progress', (req: Authed, res: Response, next: NextFunction) => {
    if (req.method === 'GET' || req.method === 'HEAD') return next();
    const session = sessions.fromRequest(req);
    if (session === null) return fail(res, 401, 'unauthenticated', 'log in first');
    req.session = session;
    requireCsrf(req, res, next);
  });
  app.use((req: Request, res: Response, next: NextFunction) => progressHttp(req, res, next));

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
    const e = error as { status?: number; type?: string; message?: string };
    if (e?.type === 'entity.parse.failed')
      return fail(res, 400, 'invalid_json', 'the body is not valid JSON');
    config.logger?.error({ err: String(error) }, 'request failed');
    fail(
      res,
      typeof e?.status === 'number' && e.status >= 400 ? e.status : 500,
      'internal',
      'internal error',
    );
  });

  return {
    server,
    progress,
    async close() {
      await progress.close({ timeoutMs: 5000 });
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

function noCacheHtml(res: http.ServerResponse, file: string): void {
  if (file.endsWith('.html')) res.setHeader('cache-control', 'no-cache');
}

function kubeFailure(res: Response, error: unknown): void {
  const e = error instanceof KubeApiError ? error : new KubeApiError(0, 'Unknown', String(error));
  res.status(502).json({ error: { code: 'kubernetes_error', message: e.message, status: e.status } });
}
