import type { AppendResult, Clock, Task, TaskChange } from '@finishline/core';
import {
  isLeaseExpired,
  leaseExpiredReason,
  planAppend,
  planLease,
  taskNotFound,
} from '@finishline/core/internal';
import { type Kysely, sql } from 'kysely';
import { type AppendTarget, writeAppends } from './append-pipeline.js';
import { type TaskRow, taskColumns, toTask } from './row-codec.js';
import type { ProgressDatabase } from './schema.js';

/**
 * The lease statements of the store: renew and release by the owner, and the reaper that interrupts
 * tasks whose lease expired. Inputs arrive validated; database errors propagate for the store to type.
 *
 * @module
 */

/**
 * Renews `owner`'s lease on a running task (or takes a free or expired one), in one transaction. The
 * clock is read once the row is locked, so a renewal that waited for the lock starts its lease then.
 */
export async function renewLease(
  db: Kysely<ProgressDatabase>,
  target: AppendTarget,
  lease: { taskId: string; owner: string; ttlMs: number; clock: Clock },
): Promise<Task> {
  const { taskId } = lease;
  return db.transaction().execute(async (trx) => {
    const { rows } = await sql<TaskRow>`
      SELECT ${taskColumns} FROM ${target.tasks} WHERE id = ${taskId} FOR UPDATE`.execute(trx);
    const row = rows[0];
    if (row === undefined) throw taskNotFound(taskId);
    const next = planLease(toTask(row), lease.owner, lease.ttlMs, lease.clock());
    await sql`
      UPDATE ${target.tasks} SET lease_owner = ${next.leaseOwner}, lease_expires_at = ${next.leaseExpiresAt}
      WHERE id = ${taskId}`.execute(trx);
    return next;
  });
}

/** Drops `owner`'s lease on a running task. Resolves `false` when no task has this id. */
export async function releaseLease(
  db: Kysely<ProgressDatabase>,
  target: AppendTarget,
  taskId: string,
  owner: string,
): Promise<boolean> {
  // Ended tasks already dropped their lease; another owner's lease is not ours to drop.
  const { rows } = await sql<{ found: boolean }>`
    WITH released AS (
      UPDATE ${target.tasks} SET lease_owner = NULL, lease_expires_at = NULL
      WHERE id = ${taskId} AND status = 'running' AND lease_owner = ${owner}
      RETURNING id
    )
    SELECT EXISTS (SELECT 1 FROM released) OR EXISTS (SELECT 1 FROM ${target.tasks} WHERE id = ${taskId}) AS found`.execute(
    db,
  );
  return rows[0]?.found === true;
}

/**
 * Interrupts up to `limit` running tasks whose lease expired at `now`, in one transaction; returns the
 * appends it committed and the changes to publish once the caller is told (each with its event).
 */
export async function reapExpiredLeases(
  db: Kysely<ProgressDatabase>,
  target: AppendTarget,
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
        target,
        planned.map((entry) => entry.task),
        planned.map((entry) => entry.event),
      );
    }
    return { results: planned, changes };
  });
}
