/** The task list, one task's record, the audit events, and the audit of cancels sent to the Finishline HTTP API. */

import type { Task } from '@finishline/core';
import { LIMITS } from '@finishline/core';
import type { NextFunction, Request, Response } from 'express';
import express from 'express';
import { LISTED_NODES, type TaskEntry } from '../../shared/api-types.js';
import type { TaskRecord } from '../app-db.js';
import { isClusterName } from '../clusters.js';
import type { Authed, RouteContext } from './context.js';

export function registerTaskRoutes(ctx: RouteContext): void {
  const { app, store, db, progress, fail, requireSession, requireCsrf, route, audit } = ctx;
  // One batch's record (its nodes, its link) for the progress dialog; same visibility as watching it.
  route('get', '/api/tasks/:id', {}, async (req, res, session) => {
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
  route('get', '/api/audit-events', {}, async (req, res, session) => {
    const limit = queryLimit(req.query.limit, 50);
    const events = await db.events({
      limit,
      ...(req.role === 'operator' ? { username: session.username } : {}),
    });
    res.json({ events });
  });

  route('get', '/api/tasks', {}, async (req, res, session) => {
    const limit = queryLimit(req.query.limit, 20);
    const before = Number(req.query.before);
    // The previous page's last task id: with `before`, the cursor that loses no batch of the same millisecond.
    // Neither it nor `cluster` may carry U+0000 (`%00`) to the database: Postgres refuses the whole query, a
    // `500 internal` logged as a server error.
    const beforeId =
      typeof req.query.beforeId === 'string' &&
      req.query.beforeId !== '' &&
      req.query.beforeId.length <= 256 &&
      !req.query.beforeId.includes('\u0000')
        ? req.query.beforeId
        : undefined;
    const mine = req.query.scope === 'mine' || req.role === 'operator';
    const cluster =
      typeof req.query.cluster === 'string' && req.query.cluster !== '' ? req.query.cluster : undefined;
    if (cluster !== undefined && !isClusterName(cluster)) {
      return fail(res, 400, 'invalid_input', 'cluster is not a cluster name', { field: 'cluster' });
    }
    const records = await db.tasks({
      limit,
      ...(mine ? { username: session.username } : {}),
      ...(cluster === undefined ? {} : { cluster }),
      ...(Number.isFinite(before) && before > 0
        ? { before, ...(beforeId === undefined ? {} : { beforeId }) }
        : {}),
    });
    const tasks = await Promise.all(records.map((r) => store.getTask(r.taskId)));
    res.json({
      tasks: records.map((record, i) => {
        const row = auditEntry(record, tasks[i]);
        return { ...row, nodes: row.nodes.slice(0, LISTED_NODES) };
      }),
    });
  });
  // The Finishline HTTP API (snapshots, events after a seq, the user's own recent tasks, cancel). Cancel is
  // state-changing: it needs the CSRF token like the rest.
  const progressHttp = progress.httpHandler({ basePath: '/progress' });
  // A cancel's body, whatever its content type (the library answers 415 to any but JSON): the library
  // reads the parsed body when there is one, and the raw stream otherwise.
  const cancelBody = express.json({ limit: '256kb', type: () => true });
  app.use('/progress', (req: Authed, res: Response, next: NextFunction) => {
    if (req.method === 'GET' || req.method === 'HEAD') return next();
    requireSession(req, res, () =>
      requireCsrf(req, res, () => {
        // A cancel the library accepted goes to the audit log (who cancelled which task).
        const cancel = /^\/tasks\/([^/]+)\/cancel$/.exec(req.path);
        const session = req.session;
        let taskId: string | undefined;
        try {
          taskId = cancel?.[1] === undefined ? undefined : decodeURIComponent(cancel[1]);
        } catch {
          taskId = undefined; // malformed %-encoding: the library answers 404 for it
        }
        if (taskId === undefined || session === undefined) return next();
        res.once('finish', () => {
          if (res.statusCode < 300) void audit({ username: session.username, action: 'cancel', taskId });
        });
        // The reason the task ends with names who cancelled it, from the session: sent by the browser, any
        // user could write "cancelled by someone-else". What the user wrote is kept as a quoted note.
        cancelBody(req, res, (error?: unknown) => {
          if (error !== undefined) return next(error);
          const body: unknown = req.body ?? {};
          if (Array.isArray(body) || typeof body !== 'object' || body === null) {
            return fail(res, 400, 'invalid_input', 'the body must be a JSON object');
          }
          const note = (body as { reason?: unknown }).reason;
          if (note !== undefined && note !== null && typeof note !== 'string') {
            return fail(res, 400, 'invalid_input', 'reason must be a string');
          }
          const reason = cancelReason(session.username, note ?? '');
          if (reason.length > LIMITS.maxKeyLength) {
            return fail(
              res,
              400,
              'invalid_input',
              `reason is too long (at most ${LIMITS.maxKeyLength} characters with who cancelled)`,
            );
          }
          req.body = { reason };
          next();
        });
      }),
    );
  });
  app.use((req: Request, res: Response, next: NextFunction) => progressHttp(req, res, next));
}

/** Most rows one read of the task list or the audit events answers. */
const MAX_LIMIT = 200;

/**
 * A read's `?limit=`: a whole number of rows from 1 to {@link MAX_LIMIT}, `fallback` when it is not a number.
 * The fraction is dropped: `?limit=1.5` reached the database as such, which refused the LIMIT (a 500).
 */
function queryLimit(value: unknown, fallback: number): number {
  return Math.min(Math.max(Math.floor(Number(value)) || fallback, 1), MAX_LIMIT);
}

/**
 * The reason a cancelled task ends with: who cancelled it (the signed-in user), then the user's own note,
 * if any, quoted (so it cannot pass for the attribution).
 */
export function cancelReason(username: string, note: string): string {
  const trimmed = note.trim();
  return trimmed === ''
    ? `cancelled by ${username}`
    : `cancelled by ${username}, note: ${JSON.stringify(trimmed)}`;
}

/** One row of the task list / audit log. */
function auditEntry(record: TaskRecord, task: Task | undefined): TaskEntry {
  return {
    id: record.taskId,
    cluster: record.cluster,
    username: record.username,
    operation: record.operation,
    nodes: record.nodes,
    nodeCount: record.nodes.length,
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
