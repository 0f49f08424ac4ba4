import type { AppendResult, Clock, ProgressError, Task, TaskChange } from '@finishline/core';
import { isProgressError } from '@finishline/core';
import {
  compareIds,
  isLeaseExpired,
  leaseExpiredReason,
  planAppend,
  planLease,
  runGone,
  taskNotFound,
} from '@finishline/core/internal';
import { type Kysely, sql } from 'kysely';
import { type AppendStatements, type AppendTarget, writeAppends } from './append-pipeline.js';
import { toProgressError } from './pg-errors.js';
import { int, type TaskRow, taskColumns, toTask } from './row-codec.js';
import type { ProgressDatabase } from './schema.js';
import type { BatchedCall } from './statement-batcher.js';

/**
 * The lease statements of the store: renew and release by the owner, and the reaper that interrupts
 * tasks whose lease expired. Inputs arrive validated; database errors propagate for the store to type.
 *
 * @module
 */

/** One renewal: `owner` takes or keeps the lease of `taskId` for `ttlMs`; resolves with the task. */
export interface LeaseCall {
  taskId: string;
  owner: string;
  ttlMs: number;
  /** The run the renewal is fenced to (see `RunFence`): another run of the id rejects, `task_not_found`. */
  run?: number | undefined;
}

/**
 * Renews a batch of leases (each `owner`'s on a running task, or takes a free or expired one) in one
 * transaction: the rows locked in id order, each renewal planned by the shared transition, one statement
 * writing them all. A server renews every lease it holds at the same tick, and a transaction per lease
 * was four round trips each (at x10 in `npm run bench`, more than half of the statements of the replica
 * running the tasks). The clock is read once the rows are locked, so a renewal that waited for a lock
 * starts its lease then. Settles every call; never rejects.
 */
export async function renewLeases(
  db: Kysely<ProgressDatabase>,
  target: AppendTarget,
  clock: Clock,
  batch: BatchedCall<LeaseCall, Task>[],
): Promise<void> {
  const taskIds = [...new Set(batch.map((call) => call.input.taskId))].sort(compareIds);
  let outcomes: (Task | ProgressError)[];
  try {
    outcomes = await db.transaction().execute(async (trx) => {
      const { rows } = await sql<TaskRow>`
        SELECT ${taskColumns} FROM ${target.tasks}
        WHERE id = ANY(${taskIds}::text[])
        ORDER BY id
        FOR UPDATE`.execute(trx);
      const tasks = new Map(rows.map((row) => [row.id, toTask(row)]));
      const now = clock();
      const renewed = new Map<string, Task>();
      const planned = batch.map(({ input: { taskId, owner, ttlMs, run } }) => {
        const task = tasks.get(taskId);
        if (task === undefined) return taskNotFound(taskId);
        if (run !== undefined && task.createdAt !== run) return runGone(taskId, run);
        try {
          const next = planLease(task, owner, ttlMs, now);
          tasks.set(taskId, next);
          renewed.set(taskId, next);
          return next;
        } catch (error) {
          if (isProgressError(error)) return error;
          throw error;
        }
      });
      if (renewed.size > 0) {
        const leases = JSON.stringify(
          [...renewed.values()].map((task) => ({
            id: task.id,
            lease_owner: task.leaseOwner,
            lease_expires_at: task.leaseExpiresAt,
          })),
        );
        await sql`
          UPDATE ${target.tasks} AS t SET lease_owner = v.lease_owner, lease_expires_at = v.lease_expires_at
          FROM json_to_recordset(${leases}::json) AS v(id text, lease_owner text, lease_expires_at int8)
          WHERE t.id = v.id AND t.id = ANY(${[...renewed.keys()]}::text[])`.execute(trx);
      }
      return planned;
    });
  } catch (error) {
    const failure = toProgressError(error, 'renewLease', taskIds.length === 1 ? taskIds[0] : undefined);
    for (const call of batch) call.reject(failure);
    return;
  }
  batch.forEach((call, index) => {
    // One outcome per call, in order (planned above).
    const outcome = outcomes[index] as Task | ProgressError;
    if (isProgressError(outcome)) call.reject(outcome);
    else call.resolve(outcome);
  });
}

/**
 * Drops `owner`'s lease on a running task, of run `run` when given (see `RunFence`), in one statement.
 * Resolves `'not_found'` when no task has this id, `'other_run'` when its task is not of `run`.
 */
export async function releaseLease(
  db: Kysely<ProgressDatabase>,
  target: AppendTarget,
  taskId: string,
  owner: string,
  run: number | undefined,
): Promise<'done' | 'not_found' | 'other_run'> {
  const fence = run ?? null;
  // Ended tasks already dropped their lease; another owner's lease is not ours to drop.
  const { rows } = await sql<{ released: boolean; created_at: string | number | null }>`
    WITH released AS (
      UPDATE ${target.tasks} SET lease_owner = NULL, lease_expires_at = NULL
      WHERE id = ${taskId} AND status = 'running' AND lease_owner = ${owner}
        AND (${fence}::int8 IS NULL OR created_at = ${fence}::int8)
      RETURNING id
    )
    SELECT EXISTS (SELECT 1 FROM released) AS released,
      (SELECT created_at FROM ${target.tasks} WHERE id = ${taskId}) AS created_at`.execute(db);
  const row = rows[0];
  if (row === undefined || row.released) return 'done';
  if (row.created_at === null) return 'not_found';
  return run !== undefined && int(row.created_at) !== run ? 'other_run' : 'done';
}

/**
 * Interrupts up to `limit` running tasks whose lease expired at `now`, in one transaction; returns the
 * appends it committed and the changes to publish once the caller is told (each with its event).
 */
export async function reapExpiredLeases(
  db: Kysely<ProgressDatabase>,
  target: AppendTarget,
  statements: AppendStatements,
  { limit, now }: { limit: number; now: number },
): Promise<{ results: AppendResult[]; changes: TaskChange[] }> {
  return db.transaction().execute(async (trx) => {
    // SKIP LOCKED: a task another reaper (or an append) holds is left to it; the reaper that holds
    // it either interrupts it or sees it was renewed, so each expired lease ends exactly once.
    const { rows } = await sql<TaskRow>`
      SELECT ${taskColumns} FROM ${target.tasks}
      WHERE status = 'running' AND lease_expires_at IS NOT NULL AND lease_expires_at <= ${now}
      ORDER BY lease_expires_at, id
      LIMIT ${limit}
      FOR UPDATE SKIP LOCKED`.execute(trx);
    const planned: AppendResult[] = [];
    for (const row of rows) {
      const task = toTask(row);
      if (!isLeaseExpired(task, now)) continue;
      planned.push(planAppend(task, { type: 'interrupted', reason: leaseExpiredReason(task) }, now));
    }
    let changes: TaskChange[] = [];
    if (planned.length > 0) {
      changes = await writeAppends(
        trx,
        statements,
        planned.map((entry) => entry.task),
        planned.map((entry) => entry.event),
      );
    }
    return { results: planned, changes };
  });
}
