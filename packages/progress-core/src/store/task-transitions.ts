import { ErrorCode } from '../codes.js';
import { terminalFields } from '../delivery/event-view.js';
import { LIMITS } from '../limits.js';
import type { ProgressState, Task, TaskEvent, TerminalEvent } from '../model.js';
import { progressOf } from '../model.js';
import { ProgressError } from '../progress-error.js';
import type { AppendInput, CreateTaskInput } from './inputs.js';
import { runGone } from './store-errors.js';

/**
 * The pure state transitions of a task, shared by every store so that SQLite, Postgres and memory agree
 * to the field: a store loads the row (locked), calls these, and writes the results in one transaction.
 * Inputs must already be validated (see `inputs.ts`). What a terminal event sets on the row is the
 * event → view rule of `delivery/event-view.ts`, the same the clients apply.
 *
 * @module
 */

/** The row of a new task. */
export function newTask(input: CreateTaskInput & { id: string }, now: number): Task {
  return {
    id: input.id,
    owner: input.owner,
    kind: input.kind,
    status: 'running',
    total: input.total ?? null,
    done: 0,
    succeeded: 0,
    failed: 0,
    current: null,
    message: input.message ?? null,
    result: null,
    error: null,
    seq: 0,
    ackedSeq: 0,
    createdAt: now,
    updatedAt: now,
    finishedAt: null,
    leaseOwner: input.lease?.owner ?? null,
    leaseExpiresAt: input.lease ? now + input.lease.ttlMs : null,
  };
}

/**
 * Checks a write's fence (see `RunFence`) on the row the store loaded for it: a no-op without `run`.
 *
 * @throws ProgressError `task_not_found` when the row is of another run than `run`.
 */
export function assertRun(task: Task, run: number | undefined): void {
  if (run !== undefined && task.createdAt !== run) throw runGone(task.id, run);
}

/**
 * Checks an append's lease fence (see `RunFence.owner`) on the row the store loaded for it: a no-op without
 * `owner`, on an ended task (the append is refused `task_finished`) and on a task whose lease nobody holds.
 *
 * @throws ProgressError `lease_held` when another owner holds the running task's lease (it took the lease
 * over once it expired): the writer lost the task.
 */
export function assertLeaseOwner(task: Task, owner: string | undefined): void {
  if (owner === undefined || task.status !== 'running') return;
  if (task.leaseOwner !== null && task.leaseOwner !== owner) {
    throw new ProgressError(
      ErrorCode.LeaseHeld,
      `Task ${task.id} is leased by ${task.leaseOwner}, not ${owner}: its lease was taken over`,
      { taskId: task.id },
    );
  }
}

/** The event an append creates and the task row after it. */
export interface AppendResult {
  event: TaskEvent;
  task: Task;
}

/**
 * Plans an append: the next event (seq = task.seq + 1) and the updated row.
 *
 * @throws ProgressError `task_finished` when the task already has its terminal event.
 */
export function planAppend(task: Task, input: AppendInput, now: number): AppendResult {
  if (task.status !== 'running') {
    throw new ProgressError(
      ErrorCode.TaskFinished,
      `Task ${task.id} already ended (${task.status}); nothing can be appended after its terminal event`,
      { taskId: task.id },
    );
  }
  const next = copyTask(task);
  next.seq = task.seq + 1;
  next.updatedAt = now;
  let event: TaskEvent;
  switch (input.type) {
    case 'progress': {
      if (input.total !== undefined) next.total = input.total;
      if (input.done !== undefined) next.done = input.done;
      if (input.current !== undefined) next.current = input.current;
      if (input.message !== undefined) next.message = input.message;
      event = { taskId: task.id, seq: next.seq, time: now, type: 'progress', progress: progressOf(next) };
      break;
    }
    case 'item': {
      // Every count stays a count (≤ LIMITS.maxCount, what readers accept): refused, not stored past it.
      if (task.done >= LIMITS.maxCount || (input.ok ? task.succeeded : task.failed) >= LIMITS.maxCount) {
        throw new ProgressError(
          ErrorCode.InvalidInput,
          `Task ${task.id} cannot count another item: its counts are at the limit (${LIMITS.maxCount})`,
          { taskId: task.id },
        );
      }
      next.done += 1;
      if (input.ok) next.succeeded += 1;
      else next.failed += 1;
      if (input.current !== undefined) next.current = input.current;
      const item = {
        key: input.key,
        ok: input.ok,
        error: input.ok ? null : (input.error ?? 'failed'),
        detail: input.detail ?? null,
      };
      event = { taskId: task.id, seq: next.seq, time: now, type: 'item', item, progress: progressOf(next) };
      break;
    }
    case 'completed':
    case 'failed':
    case 'cancelled':
    case 'interrupted': {
      finish(next, now);
      if (input.type === 'completed' && input.message !== undefined) next.message = input.message;
      const terminal = terminalEvent(input, task.id, next.seq, now, progressOf(next));
      const fields = terminalFields(terminal);
      next.status = fields.status;
      next.result = fields.result;
      next.error = fields.error;
      event = terminal;
      break;
    }
    default: {
      const unreachable: never = input;
      throw new ProgressError(ErrorCode.InvalidInput, `Unknown event type ${String(unreachable)}`);
    }
  }
  return { event, task: next };
}

/**
 * A field-by-field copy. Deliberately not `{ ...task }`: V8 cannot take its fast clone path for objects
 * holding non-Smi numbers (epoch milliseconds are), which made spreading cost ~3 µs per append — a third
 * of a SQLite store's whole per-append budget.
 */
function copyTask(task: Task): Task {
  return {
    id: task.id,
    owner: task.owner,
    kind: task.kind,
    status: task.status,
    total: task.total,
    done: task.done,
    succeeded: task.succeeded,
    failed: task.failed,
    current: task.current,
    message: task.message,
    result: task.result,
    error: task.error,
    seq: task.seq,
    ackedSeq: task.ackedSeq,
    createdAt: task.createdAt,
    updatedAt: task.updatedAt,
    finishedAt: task.finishedAt,
    leaseOwner: task.leaseOwner,
    leaseExpiresAt: task.leaseExpiresAt,
  };
}

/** The terminal event an append input asks for (its fields in the order the other events have). */
function terminalEvent(
  input: Extract<AppendInput, { type: TerminalEvent['type'] }>,
  taskId: string,
  seq: number,
  time: number,
  progress: ProgressState,
): TerminalEvent {
  switch (input.type) {
    case 'completed':
      return { taskId, seq, time, type: 'completed', result: input.result ?? null, progress };
    case 'failed': {
      const error = { code: input.error.code, message: input.error.message };
      return { taskId, seq, time, type: 'failed', error, progress };
    }
    case 'cancelled':
      return { taskId, seq, time, type: 'cancelled', reason: input.reason ?? null, progress };
    case 'interrupted':
      return { taskId, seq, time, type: 'interrupted', reason: input.reason, progress };
  }
}

/** What ending does to the row besides the terminal fields: no current item, no lease. */
function finish(task: Task, now: number): void {
  task.finishedAt = now;
  task.current = null;
  task.leaseOwner = null;
  task.leaseExpiresAt = null;
}

/** The reason recorded when reaping turns an expired lease into `interrupted`. */
export function leaseExpiredReason(task: Pick<Task, 'leaseOwner'>): string {
  return `lease of worker ${task.leaseOwner ?? 'unknown'} expired`;
}

/**
 * True when retention may delete the task at `now` with this `cutoff` (`now - olderThanMs`): it ended at or
 * before the cutoff, and it was created before `now`'s millisecond. A run of a task id is told apart by its
 * `createdAt` (see `RunFence`): a task purged in the millisecond it was created (`olderThanMs: 0`) and
 * created again in that millisecond would be the same run to every fence, so a writer of the first run
 * (its handle, after someone else cancelled it) would write into the second, and a hub following the id
 * would hand the second run's events to the first run's watchers. Left to the next purge, it goes a
 * millisecond later; a task created again after that purge has a later `createdAt` on the same clock.
 */
export function isPurgeable(task: Task, cutoff: number, now: number): boolean {
  return (
    task.status !== 'running' && task.finishedAt !== null && task.finishedAt <= cutoff && task.createdAt < now
  );
}

/** True when the task is running under a lease that expired at or before `now`. */
export function isLeaseExpired(task: Task, now: number): boolean {
  return task.status === 'running' && task.leaseExpiresAt !== null && task.leaseExpiresAt <= now;
}

/**
 * Plans taking or renewing a lease.
 *
 * @throws ProgressError `task_finished` when the task ended, `lease_held` when another owner holds an
 * unexpired lease.
 */
export function planLease(task: Task, owner: string, ttlMs: number, now: number): Task {
  if (task.status !== 'running') {
    throw new ProgressError(ErrorCode.TaskFinished, `Task ${task.id} already ended (${task.status})`, {
      taskId: task.id,
    });
  }
  if (task.leaseOwner !== null && task.leaseOwner !== owner && !isLeaseExpired(task, now)) {
    throw new ProgressError(ErrorCode.LeaseHeld, `Task ${task.id} is leased by ${task.leaseOwner}`, {
      taskId: task.id,
    });
  }
  return { ...task, leaseOwner: owner, leaseExpiresAt: now + ttlMs };
}
