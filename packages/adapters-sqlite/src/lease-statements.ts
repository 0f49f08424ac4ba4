import type { AppendResult, Clock, Task } from '@finishline/core';
import {
  assertRun,
  isLeaseExpired,
  leaseExpiredReason,
  planAppend,
  planLease,
} from '@finishline/core/internal';
import { writeAppends } from './append-pipeline.js';
import type { TaskRow } from './row-codec.js';
import { rowToTask } from './row-codec.js';
import type { RunningTaskCache } from './running-task-cache.js';
import type { SqliteStatements } from './sqlite-statements.js';
import { requireTask } from './sqlite-statements.js';
import type { WriteTransactions } from './write-transaction.js';

/**
 * The lease statements of the SQLite store: renew and release by the owner, and the reaper that
 * interrupts tasks whose lease expired. Each runs in one `BEGIN IMMEDIATE` transaction; SQLite
 * serializes writers, so two stores on one file never interrupt a task twice. Inputs arrive validated;
 * database errors propagate for the store to type.
 *
 * @module
 */

/** What the lease statements run on. */
export interface LeaseContext {
  statements: SqliteStatements;
  transactions: WriteTransactions;
  cache: RunningTaskCache;
  clock: Clock;
  /** Receives a damaged row the reaper skipped. */
  onError: (error: unknown) => void;
}

/**
 * Renews `owner`'s lease on a running task (or takes a free or expired one); with `run`, only on that run
 * of the id (see `RunFence`).
 */
export function renewLease(
  context: LeaseContext,
  lease: { taskId: string; owner: string; ttlMs: number; run: number | undefined },
): Task {
  const { statements: q, cache } = context;
  const { taskId } = lease;
  return context.transactions.run(() => {
    const current = requireTask(q, taskId);
    assertRun(current, lease.run);
    const task = planLease(current, lease.owner, lease.ttlMs, context.clock());
    cache.forget(taskId);
    q.updateLease.run({ id: taskId, leaseOwner: task.leaseOwner, leaseExpiresAt: task.leaseExpiresAt });
    return task;
  });
}

/**
 * Drops `owner`'s lease on a running task; a task not found, or not of `run` when given, throws
 * `task_not_found`.
 */
export function releaseLease(
  context: LeaseContext,
  taskId: string,
  owner: string,
  run: number | undefined,
): void {
  const { statements: q, cache } = context;
  context.transactions.run(() => {
    const task = requireTask(q, taskId);
    assertRun(task, run);
    // Ended tasks already dropped their lease; another owner's lease is not ours to drop.
    if (task.status === 'running' && task.leaseOwner === owner) {
      cache.forget(taskId);
      q.updateLease.run({ id: taskId, leaseOwner: null, leaseExpiresAt: null });
    }
  });
}

/**
 * Interrupts up to `limit` running tasks whose lease expired, in one transaction. Their changes are
 * queued for the caller to publish (`ChangePublisher.drain`).
 */
export function reapExpiredLeases(context: LeaseContext, limit: number): AppendResult[] {
  const { statements: q, cache } = context;
  return context.transactions.run((log) => {
    const now = context.clock();
    const results: AppendResult[] = [];
    for (const row of q.expiredLeases.all({ now, limit })) {
      let task: Task;
      try {
        task = rowToTask(row as TaskRow);
      } catch (error) {
        // One damaged row must not stop every other expired task from being interrupted.
        context.onError(error);
        continue;
      }
      if (!isLeaseExpired(task, now)) continue;
      cache.forget(task.id);
      results.push(planAppend(task, { type: 'interrupted', reason: leaseExpiredReason(task) }, now));
    }
    writeAppends(q, results, log);
    return results;
  });
}
