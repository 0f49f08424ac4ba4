import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import type { ProgressStore, Task } from '@finishline/core';
import { type ProgressLogger, ProgressServer, type ProgressServerOptions } from '@finishline/server';
import express, { type NextFunction, type Request, type Response } from 'express';
import type { ClusterView, NodeRow, SessionView, TaskEntry } from '../shared/api-types.js';
import type { AppDb, AuditEvent, NodeLock, TaskRecord } from './app-db.js';
import { ROLES, type Role, type Session, type SessionManager } from './auth.js';
import { type Cluster, ClusterSet } from './clusters.js';
import { KubeApiError, type KubeNodes } from './kube-nodes.js';
import { LoginThrottle, type LoginThrottleOptions } from './login-throttle.js';
import { drainNode } from './node-drain.js';
import { applyToNode } from './node-worker.js';
import {
  BadRequestError,
  describeOperation,
  OPERATION_KIND,
  type Operation,
  parseOperation,
  parseSelection,
} from './operations.js';
import { securityHeaders } from './security-headers.js';

/** The principal of the Finishline server: the user and its role. */
export interface Principal {
  id: string;
  role: Role;
}

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
  /**
   * How long a drain waits for one pod that a PodDisruptionBudget protects before the node fails.
   * @default 120000
   */
  evictionTimeoutMs?: number;
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
});

/** A lock whose task is not in the store yet is in the way this long (the task is being created). */
const LOCK_CREATE_GRACE_MS = 30_000;

/** A running app: an `http.Server` (not yet listening) with the Finishline server attached. */
export interface App {
  server: http.Server;
  progress: ProgressServer<Principal>;
  /** Stops the Finishline server (ends running tasks honestly) and the HTTP server. */
  close(): Promise<void>;
}

type Authed = Request & { session?: Session; role?: Role };

/** Builds the Express app, the HTTP server and the Finishline server on it. */
export function createApp(options: AppOptions): App {
  const config = { ...APP_DEFAULTS, ...options };
  for (const [name, value, max] of [
    ['concurrency', config.concurrency, 1000],
    ['maxAttempts', config.maxAttempts, 100],
    ['maxNodesPerBatch', config.maxNodesPerBatch, 100_000],
    ['maxRunningBatchesPerUser', config.maxRunningBatchesPerUser, 1000],
  ] as const) {
    if (!Number.isInteger(value) || value < 1 || value > max)
      throw new Error(`createApp: ${name} must be an integer from 1 to ${max} (got ${value})`);
  }
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
  if (config.trustProxy) app.set('trust proxy', 1);
  app.use(securityHeaders);
  const server = http.createServer(app);
  const allowedOrigins = config.allowedOrigins ?? 'same-origin';
  const progress = new ProgressServer<Principal>({
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

  // The raw sockets of upgraded connections, by session id, so a logout closes them (the library keeps its
  // connections to itself; destroying the socket makes the client reconnect, and the upgrade then gets 401).
  const socketsBySid = new Map<string, Set<Duplex>>();
  server.on('upgrade', (request: http.IncomingMessage, socket: Duplex) => {
    const sid = sessions.sidOf(request);
    if (sid === null) return;
    const set = socketsBySid.get(sid) ?? new Set<Duplex>();
    socketsBySid.set(sid, set);
    set.add(socket);
    socket.once('close', () => {
      set.delete(socket);
      if (set.size === 0 && socketsBySid.get(sid) === set) socketsBySid.delete(sid);
    });
  });
  const dropSockets = (sid: string) => {
    for (const socket of socketsBySid.get(sid) ?? []) socket.destroy();
    socketsBySid.delete(sid);
  };
  const sweep = setInterval(() => {
    for (const sid of [...socketsBySid.keys()]) {
      sessions.active(sid).then(
        (active) => {
          if (!active) dropSockets(sid);
        },
        (error: unknown) => config.logger?.warn({ err: String(error) }, 'session sweep failed'),
      );
    }
  }, config.sessionSweepIntervalMs);
  sweep.unref();
  // Expired sessions are deleted hourly (revoked ones stay until they expire, so they stay refused).
  const purge = setInterval(() => {
    db.purgeSessions().catch((error: unknown) =>
      config.logger?.warn({ err: String(error) }, 'session purge failed'),
    );
  }, 3_600_000);
  purge.unref();

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
    sessions.fromRequest(req).then((session) => {
      if (session === null) return fail(res, 401, 'unauthenticated', 'log in first');
      req.session = session;
      req.role = sessions.role(session);
      next();
    }, next);
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
  const secure = (req: Request) => req.secure;
  /** Records a sign-in, sign-out or cancel; a failed write is logged, never fails the request itself. */
  const audit = (event: Omit<AuditEvent, 'at'>) =>
    db
      .recordEvent({ ...event, at: Date.now() })
      .catch((error: unknown) => config.logger?.warn({ err: String(error) }, 'audit event not saved'));
  /** The cluster a request names (`?cluster=` or the body's `cluster`); answers 400 and `undefined` if unknown. */
  const clusterOf = (res: Response, name: unknown): Cluster | undefined => {
    const cluster = clusters.resolve(name);
    if (cluster === undefined) {
      fail(res, 400, 'unknown_cluster', `unknown cluster: ${String(name).slice(0, 100)}`, {
        field: 'cluster',
        clusters: clusters.list().map((c) => c.name),
      });
    }
    return cluster;
  };

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

  const sessionBody = (session: Session): SessionView => ({
    username: session.username,
    role: sessions.role(session),
    csrfToken: sessions.csrfToken(session),
  });

  app.post('/api/login', async (req: Request, res: Response) => {
    if (!originAllowed(req)) return fail(res, 403, 'forbidden_origin', 'origin not allowed');
    const { username, password } = (req.body ?? {}) as { username?: unknown; password?: unknown };
    if (typeof username !== 'string' || typeof password !== 'string' || username.length > 256) {
      return fail(res, 400, 'invalid_input', 'username and password are required');
    }
    const address = req.ip ?? req.socket.remoteAddress ?? 'unknown';
    const waitMs = throttle.retryAfterMs(username, address);
    if (waitMs > 0) {
      const seconds = Math.ceil(waitMs / 1000);
      res.setHeader('retry-after', String(seconds));
      return fail(res, 429, 'too_many_attempts', `too many failed logins: try again in ${seconds} s`, {
        retryAfterS: seconds,
      });
    }
    const session = await sessions.login(username, password);
    if (session === null) {
      throttle.failed(username, address);
      return fail(res, 401, 'bad_credentials', 'wrong username or password');
    }
    throttle.succeeded(username);
    await audit({ username: session.username, action: 'login', taskId: null });
    res.setHeader('set-cookie', sessions.cookie(session, secure(req)));
    res.json(sessionBody(session));
  });

  app.get('/api/session', requireSession, (req: Authed, res: Response) => {
    res.json(sessionBody(req.session as Session));
  });

  app.post('/api/logout', requireSession, requireCsrf, async (req: Authed, res: Response) => {
    const session = req.session as Session;
    await sessions.logout(session);
    dropSockets(session.sid);
    await audit({ username: session.username, action: 'logout', taskId: null });
    res.setHeader('set-cookie', sessions.clearCookie(secure(req)));
    res.json({ ok: true });
  });

  // The clusters to pick from (kubeconfig contexts), the default first.
  app.get('/api/clusters', requireSession, (_req: Request, res: Response) => {
    res.json({
      clusters: clusters.list().map((c): ClusterView => ({ name: c.name, default: c === clusters.default })),
    });
  });

  app.get('/api/nodes', requireSession, async (req: Request, res: Response) => {
    const cluster = clusterOf(res, req.query.cluster);
    if (cluster === undefined) return;
    const selector =
      typeof req.query.labelSelector === 'string' && req.query.labelSelector !== ''
        ? req.query.labelSelector
        : undefined;
    try {
      const [list, cordons, locks] = await Promise.all([
        cluster.nodes.list(selector),
        db.cordons(cluster.name),
        db.locks(cluster.name),
      ]);
      const cordonOf = new Map(cordons.map((c) => [c.node, c]));
      // Only locks of running tasks: a lock outlives its task for a moment (released after the terminal
      // event) and for good when its replica died (taken over by the next batch).
      const holders = [...new Set(locks.map((l) => l.taskId))];
      const running = new Set(
        (await Promise.all(holders.map((id) => store.getTask(id))))
          .filter((t) => t?.status === 'running')
          .map((t) => t?.id),
      );
      const lockOf = new Map(locks.filter((l) => running.has(l.taskId)).map((l) => [l.node, l]));
      res.json({
        nodes: list.map((n): NodeRow => {
          const note = cordonOf.get(n.name);
          const lock = lockOf.get(n.name);
          return {
            ...n,
            // A note outlives a cordon done outside the app (kubectl uncordon): shown only while cordoned.
            cordon:
              n.unschedulable && note !== undefined
                ? { reason: note.reason, by: note.username, at: note.at }
                : null,
            lock: lock === undefined ? null : { taskId: lock.taskId, by: lock.username },
          };
        }),
      });
    } catch (error) {
      kubeFailure(res, error);
    }
  });

  /** Whether a lock's task has ended (or never got created), so the lock may be taken over. */
  const lockIsStale = async (lock: NodeLock): Promise<boolean> => {
    const task = await store.getTask(lock.taskId);
    if (task === undefined) return Date.now() - lock.acquiredAt > LOCK_CREATE_GRACE_MS;
    return task.status !== 'running';
  };

  // One batch start at a time per user in this process, so the running-batches cap cannot be raced by
  // requests sent back to back.
  const startQueues = new Map<string, Promise<unknown>>();
  const serialized = <T>(user: string, fn: () => Promise<T>): Promise<T> => {
    const previous = startQueues.get(user) ?? Promise.resolve();
    const next = previous.then(fn, fn);
    const settled = next.catch(() => undefined);
    startQueues.set(user, settled);
    void settled.then(() => {
      if (startQueues.get(user) === settled) startQueues.delete(user);
    });
    return next;
  };

  type StartResult =
    | { ok: true; taskId: string; description: string }
    | { ok: false; status: number; code: string; message: string; extra?: Record<string, unknown> };

  /** Checks the cap and the node locks, creates the task, records it and runs the batch in the background. */
  const startBatch = (
    session: Session,
    cluster: Cluster,
    op: Operation,
    names: string[],
    link: { parentTaskId: string; relation: 'retry_failed' | 'resume_remaining' } | null,
    reason: string | undefined,
  ): Promise<StartResult> =>
    serialized(session.username, async () => {
      const running = await store.listTasks({
        owner: session.username,
        statuses: ['running'],
        limit: config.maxRunningBatchesPerUser,
      });
      if (running.length >= config.maxRunningBatchesPerUser) {
        return {
          ok: false,
          status: 429,
          code: 'too_many_batches',
          message: `you already have ${running.length} batches running (at most ${config.maxRunningBatchesPerUser}); wait for one to finish`,
          extra: { running: running.map((t) => t.id) },
        };
      }
      const taskId = randomUUID();
      const blocking = await db.lockNodes(
        cluster.name,
        names,
        { taskId, username: session.username },
        lockIsStale,
      );
      if (blocking.length > 0) {
        const byTask = new Map<string, NodeLock[]>();
        for (const lock of blocking) byTask.set(lock.taskId, [...(byTask.get(lock.taskId) ?? []), lock]);
        const parts = [...byTask].map(
          ([id, locks]) => `${locks.map((l) => l.node).join(', ')} (task ${id} by ${locks[0]?.username})`,
        );
        return {
          ok: false,
          status: 409,
          code: 'nodes_locked',
          message: `another batch is changing ${parts.join('; ')}; wait for it to finish`,
          extra: { locks: blocking.map((l) => ({ node: l.node, taskId: l.taskId, username: l.username })) },
        };
      }
      const description = `${describeOperation(op)} on ${names.length} node${names.length > 1 ? 's' : ''}`;
      let task: Awaited<ReturnType<typeof progress.tasks.create>>;
      try {
        task = await progress.tasks.create({
          id: taskId,
          owner: session.username,
          kind: OPERATION_KIND[op.type],
          total: names.length,
          message: description,
        });
        await db.recordTask({
          taskId,
          cluster: cluster.name,
          username: session.username,
          operation: { ...op, ...(reason === undefined ? {} : { reason }) },
          nodes: names,
          parentTaskId: link?.parentTaskId ?? null,
          relation: link?.relation ?? null,
          createdAt: Date.now(),
        });
      } catch (error) {
        await db.unlockTask(taskId).catch(() => undefined);
        throw error;
      }
      void task
        .runBatch(
          names,
          async (name, { signal }) => {
            await task.progress({ current: name });
            const result =
              op.type === 'drain'
                ? await drainNode(cluster.nodes, name, {
                    maxAttempts: config.maxAttempts,
                    signal,
                    ...(config.evictionTimeoutMs === undefined
                      ? {}
                      : { evictionTimeoutMs: config.evictionTimeoutMs }),
                    // Each node's evictions show inside its item's progress: "worker-3: evicted 2 of 5 pods".
                    onProgress: (evicted, total) =>
                      task
                        .progress({ current: `${name}: evicted ${evicted} of ${total} pods` })
                        .then(() => undefined),
                  })
                : await applyToNode(cluster.nodes, name, op, { maxAttempts: config.maxAttempts, signal });
            await noteCordon(cluster.name, op, name, session.username, reason);
            return { ...result };
          },
          { concurrency: config.concurrency, key: (name) => name },
        )
        .catch((error: unknown) => config.logger?.error({ err: String(error), taskId }, 'batch failed'))
        .finally(() =>
          db
            .unlockTask(taskId)
            .catch((error: unknown) => config.logger?.warn({ err: String(error), taskId }, 'unlock failed')),
        );
      return { ok: true, taskId, description };
    });

  /** Who cordoned a node and why, kept beside the node (the API has no field for it). */
  const noteCordon = async (
    cluster: string,
    op: Operation,
    node: string,
    username: string,
    reason: string | undefined,
  ) => {
    try {
      if (op.type === 'cordon' || op.type === 'drain') {
        await db.setCordon({ cluster, node, reason: reason ?? '', username, at: Date.now() });
      } else if (op.type === 'uncordon') await db.clearCordon(cluster, node);
    } catch (error) {
      // The node is cordoned all the same; only the note is missing.
      config.logger?.warn({ err: String(error), node }, 'cordon note not saved');
    }
  };

  const answerStart = (res: Response, op: Operation, names: string[], started: StartResult) => {
    if (!started.ok) return fail(res, started.status, started.code, started.message, started.extra);
    res.status(202).json({
      taskId: started.taskId,
      kind: OPERATION_KIND[op.type],
      description: started.description,
      nodes: names,
    });
  };

  app.post(
    '/api/batch',
    requireSession,
    requireCsrf,
    requireRole('operator'),
    async (req: Authed, res: Response) => {
      const session = req.session as Session;
      const cluster = clusterOf(res, (req.body as { cluster?: unknown } | undefined)?.cluster);
      if (cluster === undefined) return;
      let op: Operation;
      let names: string[];
      let reason: string | undefined;
      try {
        op = parseOperation(req.body);
        names = parseSelection((req.body as { nodes?: unknown }).nodes, config.maxNodesPerBatch);
        reason = parseReason((req.body as { reason?: unknown }).reason);
      } catch (error) {
        if (error instanceof BadRequestError)
          return fail(res, 400, 'invalid_input', error.message, { field: error.field });
        throw error;
      }
      let known: Set<string>;
      try {
        known = new Set((await cluster.nodes.list()).map((n) => n.name));
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
      answerStart(res, op, names, await startBatch(session, cluster, op, names, null, reason));
    },
  );

  // "Retry failed" / "resume remaining": a new task on the failed nodes, or on the nodes the old task never
  // finished (an interrupted or cancelled batch), linked to the old one.
  app.post(
    '/api/tasks/:id/rerun',
    requireSession,
    requireCsrf,
    requireRole('operator'),
    async (req: Authed, res: Response) => {
      const session = req.session as Session;
      const mode = (req.body as { mode?: unknown }).mode;
      if (mode !== 'retry_failed' && mode !== 'resume_remaining') {
        return fail(res, 400, 'invalid_input', 'mode must be retry_failed or resume_remaining', {
          field: 'mode',
        });
      }
      const id = String(req.params.id);
      const [record, task] = await Promise.all([db.task(id), store.getTask(id)]);
      if (
        record === undefined ||
        task === undefined ||
        (task.owner !== session.username && req.role !== 'admin')
      ) {
        return fail(res, 404, 'task_not_found', 'no such task');
      }
      if (task.status === 'running') return fail(res, 409, 'task_running', 'the task is still running');
      // The old task's cluster, which this server may no longer manage (its kubeconfig changed).
      const cluster = clusters.resolve(record.cluster);
      if (cluster === undefined) {
        return fail(res, 409, 'unknown_cluster', `this server no longer manages cluster ${record.cluster}`);
      }
      const outcome = await itemOutcomes(store, id);
      const names =
        mode === 'retry_failed'
          ? record.nodes.filter((n) => outcome.get(n) === false)
          : record.nodes.filter((n) => !outcome.has(n));
      if (names.length === 0) {
        return fail(
          res,
          400,
          'nothing_to_rerun',
          mode === 'retry_failed' ? 'no node failed in that task' : 'every node of that task was processed',
        );
      }
      let op: Operation;
      try {
        // Validated again: the record is data from the database, and the rules may have changed since.
        const { type, ...fields } = record.operation;
        op = parseOperation({ ...fields, operation: type });
      } catch {
        return fail(res, 400, 'invalid_input', 'the old task’s operation cannot be rerun');
      }
      const reason = typeof record.operation.reason === 'string' ? record.operation.reason : undefined;
      answerStart(
        res,
        op,
        names,
        await startBatch(session, cluster, op, names, { parentTaskId: id, relation: mode }, reason),
      );
    },
  );

  // Saved label / taint templates, shared by everyone: anyone lists them, operators save them, the author or
  // an admin deletes one.
  app.get('/api/templates', requireSession, async (_req: Authed, res: Response) => {
    res.json({ templates: await db.templates() });
  });

  app.post(
    '/api/templates',
    requireSession,
    requireCsrf,
    requireRole('operator'),
    async (req: Authed, res: Response) => {
      const session = req.session as Session;
      const body = (req.body ?? {}) as Record<string, unknown>;
      const name = body.name;
      if (typeof name !== 'string' || !/^[\w .:/-]{1,64}$/.test(name.trim())) {
        return fail(res, 400, 'invalid_input', 'name must be 1 to 64 letters, digits, spaces or . _ - : /', {
          field: 'name',
        });
      }
      if (body.kind !== 'label' && body.kind !== 'taint') {
        return fail(res, 400, 'invalid_input', 'kind must be label or taint', { field: 'kind' });
      }
      let op: Operation;
      try {
        // The same validation as a batch: a template is a batch's fields, saved.
        op = parseOperation({ ...body, operation: body.kind === 'label' ? 'label_add' : 'taint_add' });
      } catch (error) {
        if (error instanceof BadRequestError)
          return fail(res, 400, 'invalid_input', error.message, { field: error.field });
        throw error;
      }
      const template = {
        name: name.trim(),
        kind: body.kind,
        key: 'key' in op ? op.key : '',
        value: 'value' in op ? (op.value ?? null) : null,
        effect: 'effect' in op ? (op.effect ?? null) : null,
        createdBy: session.username,
        createdAt: Date.now(),
      } as const;
      if (!(await db.addTemplate(template))) {
        return fail(res, 409, 'template_exists', `a template named "${template.name}" exists already`);
      }
      res.status(201).json({ template });
    },
  );

  app.post(
    '/api/templates/:name/delete',
    requireSession,
    requireCsrf,
    requireRole('operator'),
    async (req: Authed, res: Response) => {
      const session = req.session as Session;
      const name = String(req.params.name);
      const template = (await db.templates()).find((t) => t.name === name);
      if (template === undefined) return fail(res, 404, 'not_found', 'no such template');
      if (template.createdBy !== session.username && req.role !== 'admin') {
        return fail(res, 403, 'forbidden_role', `only ${template.createdBy} or an admin may delete it`);
      }
      await db.deleteTemplate(name);
      res.json({ ok: true });
    },
  );

  // One batch's record (its nodes, its link) for the progress dialog; same visibility as watching it.
  app.get('/api/tasks/:id', requireSession, async (req: Authed, res: Response) => {
    const session = req.session as Session;
    const id = String(req.params.id);
    const [record, task] = await Promise.all([db.task(id), store.getTask(id)]);
    if (record === undefined || (req.role === 'operator' && record.username !== session.username)) {
      return fail(res, 404, 'task_not_found', 'no such task');
    }
    res.json({ task: auditEntry(record, task) });
  });

  // The task list and the audit log: the example's record of each batch joined with its live state in the
  // store. Operators see their own; viewers and admins everyone's.
  // Sign-ins, sign-outs and cancels for the audit page: everyone's for admins and viewers, operators their own.
  app.get('/api/audit-events', requireSession, async (req: Authed, res: Response) => {
    const session = req.session as Session;
    const limit = Math.min(Math.max(Number(req.query.limit) || 50, 1), 200);
    const events = await db.events({
      limit,
      ...(req.role === 'operator' ? { username: session.username } : {}),
    });
    res.json({ events });
  });

  app.get('/api/tasks', requireSession, async (req: Authed, res: Response) => {
    const session = req.session as Session;
    const limit = Math.min(Math.max(Number(req.query.limit) || 20, 1), 200);
    const before = Number(req.query.before);
    const mine = req.query.scope === 'mine' || req.role === 'operator';
    const cluster =
      typeof req.query.cluster === 'string' && req.query.cluster !== '' ? req.query.cluster : undefined;
    const records = await db.tasks({
      limit,
      ...(mine ? { username: session.username } : {}),
      ...(cluster === undefined ? {} : { cluster }),
      ...(Number.isFinite(before) && before > 0 ? { before } : {}),
    });
    const tasks = await Promise.all(records.map((r) => store.getTask(r.taskId)));
    res.json({
      tasks: records.map((record, i) => auditEntry(record, tasks[i])),
    });
  });
  // The Finishline HTTP API (snapshots, events after a seq, the user's own recent tasks, cancel). Cancel is
  // state-changing: it needs the CSRF token like the rest.
  const progressHttp = progress.httpHandler({ basePath: '/progress' });
  app.use('/progress', (req: Authed, res: Response, next: NextFunction) => {
    if (req.method === 'GET' || req.method === 'HEAD') return next();
    requireSession(req, res, () =>
      requireCsrf(req, res, () => {
        // A cancel the library accepted goes to the audit log (who cancelled which task).
        const cancel = /^\/tasks\/([^/]+)\/cancel$/.exec(req.path);
        const session = req.session;
        if (cancel?.[1] !== undefined && session !== undefined) {
          const taskId = decodeURIComponent(cancel[1]);
          res.once('finish', () => {
            if (res.statusCode < 300) void audit({ username: session.username, action: 'cancel', taskId });
          });
        }
        next();
      }),
    );
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
    if (e?.type === 'entity.too.large')
      return fail(res, 413, 'payload_too_large', 'the body is larger than 256 kB');
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
      clearInterval(sweep);
      clearInterval(purge);
      await progress.close({ timeoutMs: 5000 });
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** The optional free-text reason of a cordon (shown per node). */
function parseReason(value: unknown): string | undefined {
  if (value === undefined || value === null || value === '') return undefined;
  if (typeof value !== 'string') throw new BadRequestError('reason', 'reason must be a string');
  if (value.length > 500) throw new BadRequestError('reason', 'reason must be at most 500 characters');
  return value;
}

/** Each finished node of a task: `true` succeeded, `false` failed; absent: never finished. */
async function itemOutcomes(store: ProgressStore, taskId: string): Promise<Map<string, boolean>> {
  const outcome = new Map<string, boolean>();
  for (let after = 0; ; ) {
    const events = await store.readEvents(taskId, after, 1000);
    for (const event of events) if (event.type === 'item') outcome.set(event.item.key, event.item.ok);
    if (events.length < 1000) break;
    after = events[events.length - 1]?.seq ?? after;
  }
  return outcome;
}

/** One row of the task list / audit log. */
function auditEntry(record: TaskRecord, task: Task | undefined): TaskEntry {
  return {
    id: record.taskId,
    cluster: record.cluster,
    username: record.username,
    operation: record.operation,
    nodes: record.nodes,
    parentTaskId: record.parentTaskId,
    relation: record.relation,
    createdAt: record.createdAt,
    task:
      task === undefined
        ? null
        : {
            status: task.status,
            kind: task.kind,
            message: task.message,
            total: task.total,
            done: task.done,
            succeeded: task.succeeded,
            failed: task.failed,
            error: task.error,
            finishedAt: task.finishedAt,
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
