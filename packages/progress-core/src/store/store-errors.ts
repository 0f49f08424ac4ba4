import { ErrorCode } from '../codes.js';
import { ProgressError } from '../progress-error.js';

/**
 * The errors every store raises for the same conditions, built in one place so the code, the message and
 * the `taskId` are the same whichever store raised them (the contract suite compares stores).
 *
 * @module
 */

/** `task_not_found`: no task has this id. */
export function taskNotFound(taskId: string): ProgressError {
  return new ProgressError(ErrorCode.TaskNotFound, `No task ${taskId}`, { taskId });
}

/**
 * `task_not_found`: a write fenced by `run` (see `RunFence`) found the id taken by another run: the task
 * it was meant for was purged and the id created again.
 */
export function runGone(taskId: string, run: number): ProgressError {
  return new ProgressError(
    ErrorCode.TaskNotFound,
    `No task ${taskId} created at ${run}: the id was purged and created again`,
    { taskId },
  );
}

/** `invalid_input`: `createTask` was given the id of an existing task. */
export function taskAlreadyExists(taskId: string): ProgressError {
  return new ProgressError(ErrorCode.InvalidInput, `Task ${taskId} already exists`, { taskId });
}

/** `closed`: a call reached a store after `close()`. */
export function storeClosed(): ProgressError {
  return new ProgressError(ErrorCode.Closed, 'The store is closed');
}

/** Binary (code unit) order of ids, the order every store lists and locks tasks in. */
export function compareIds(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
