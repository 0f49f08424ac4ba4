import type { AppendResult, Clock, Task } from '@finishline/core';
import { ErrorCode, ProgressError } from '@finishline/core';
import {
  assertRun,
  isLeaseExpired,
  leaseExpiredReason,
  planAppend,
  planLease,
} from '@finishline/core/internal';
import { damagedRowError, writeAppends, writeAppendsOrRefusal } from './append-pipeline.js';
import type { TaskRow } from './row-codec.js';
import { rowToTask } from './row-codec.js';
import type { RunningTaskCache } from './running-task-cache.js';
import { isRowRefusal } from './sqlite-errors.js';
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
  return context.transactions.run(
    () => {
      const current = requireTask(q, taskId);
      assertRun(current, lease.run);
      const task = planLease(current, lease.owner, lease.ttlMs, context.clock());
      cache.forget(taskId);
      q.updateLease.run({ id: taskId, leaseOwner: task.leaseOwner, leaseExpiresAt: task.leaseExpiresAt });
      return task;
    },
    { changeless: true },
  );
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
  context.transactions.run(
    () => {
      const task = requireTask(q, taskId);
      assertRun(task, run);
      // Ended tasks already dropped their lease; another owner's lease is not ours to drop.
      if (task.status === 'running' && task.leaseOwner === owner) {
        cache.forget(taskId);
        q.updateLease.run({ id: taskId, leaseOwner: null, leaseExpiresAt: null });
      }
    },
    { changeless: true },
  );
}

/**
 * Interrupts up to `limit` running tasks whose lease expired, in one transaction. Their changes are
 * queued for the caller to publish (`ChangePublisher.drain`).
 *
 * A row that cannot be read (damaged by hand) cannot be interrupted either: its lease is dropped
 * (quarantined: the reaper's query no longer finds it) and it is reported on `onError` once. Left under
 * its lease, it came first in every pass, each time reported again, and `limit` such rows took every
 * slot of every pass: live tasks whose lease expired behind them were never interrupted. Its slots go to
 * the next expired tasks in the same pass.
 *
 * So is a row that reads well but refuses its interruption (`isRowRefusal`: a `seq` behind its log, whose
 * next event collides with one the log holds): it failed the whole pass, and every pass after it, so no
 * expired task was interrupted again. When a pass fails so, a careful one writes each interruption under
 * a savepoint of its own and quarantines the rows that refuse theirs. A healthy pass pays nothing for it.
 */
export function reapExpiredLeases(context: LeaseContext, limit: number): AppendResult[] {
  try {
    return reapPass(context, limit, 'together');
  } catch (error) {
    if (!isRowRefusal(error)) throw error;
    return reapPass(context, limit, 'oneByOne');
  }
}

/**
 * One pass of {@link reapExpiredLeases}: `together` writes every interruption in one go after planning
 * them; `oneByOne` writes each as it is planned, under a savepoint, quarantining the rows that refuse it.
 */
function reapPass(context: LeaseContext, limit: number, mode: 'together' | 'oneByOne'): AppendResult[] {
  const { statements: q, cache } = context;
  // Reported once the pass committed: a pass that fails is done again, which would report them again.
  const reports: ProgressError[] = [];
  const reaped = context.transactions.run((log) => {
    reports.length = 0;
    const now = context.clock();
    const results: AppendResult[] = [];
    const planned = new Set<string>();
    /** Drops the expired lease of a row that cannot be interrupted; returns 1 if the row left the query. */
    const quarantine = (id: unknown, error: ProgressError): number => {
      cache.forget(String(id));
      const { changes } = q.updateLease.run({ id, leaseOwner: null, leaseExpiresAt: null });
      reports.push(error);
      return Number(changes);
    };
    // Another query only after rows were quarantined, which took them out of it: the loop ends.
    for (let quarantined = 1; quarantined > 0 && results.length < limit; ) {
      quarantined = 0;
      // Interruptions written after the loop (`together`): the rows planned so far come again, first, and
      // are skipped.
      for (const row of q.expiredLeases.all({ now, limit: limit + planned.size })) {
        if (results.length >= limit) break;
        let task: Task;
        try {
          task = rowToTask(row as TaskRow);
        } catch (error) {
          const { id } = row as TaskRow;
          // Counted only if the row left the query: another query finding it again would loop for ever.
          quarantined += quarantine(
            id,
            new ProgressError(
              ErrorCode.Internal,
              `${error instanceof Error ? error.message : String(error)}; the reaper dropped the task's expired lease instead of interrupting it`,
              { cause: error, taskId: String(id) },
            ),
          );
          continue;
        }
        if (planned.has(task.id) || !isLeaseExpired(task, now)) continue;
        planned.add(task.id);
        cache.forget(task.id);
        const interruption = planAppend(task, { type: 'interrupted', reason: leaseExpiredReason(task) }, now);
        if (mode === 'oneByOne') {
          const refusal = writeAppendsOrRefusal(q, [interruption], log);
          if (refusal !== undefined) {
            const error = damagedRowError(
              task.id,
              refusal,
              'the reaper could not interrupt it and dropped its expired lease instead',
            );
            quarantined += quarantine(task.id, error);
            continue;
          }
        }
        results.push(interruption);
      }
    }
    if (mode === 'together') writeAppends(q, results, log);
    return results;
  });
  for (const error of reports) context.onError(error);
  return reaped;
}
