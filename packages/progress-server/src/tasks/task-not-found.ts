/**
 * The one message for a missing or hidden task, shared by the WebSocket and HTTP refusals, and the task
 * `authorize` is asked about in a missing one's place.
 *
 * @module
 */
import type { Task } from '@finishline/core';

/**
 * The one message for a task that does not exist, or that the principal may not know exists: the
 * WebSocket and HTTP refusals share it so the two cases cannot be told apart by their wording.
 */
export function taskNotFoundMessage(taskId: string): string {
  return `Task ${taskId} does not exist`;
}

/**
 * What `authorize` is asked about in place of a task that does not exist, unless the server reveals task
 * existence: a missing task is then refused after the same hook calls as another owner's. Refused at once,
 * it was refused sooner by the hook's time (a database query, an authorization service: 1 ms of hook made
 * the one answer 2.8 ms slower than the other on loopback), which told which ids exist as plainly as a
 * 403 did. Its `owner` is `''`, which no task has; what the hook answers is ignored.
 */
export function missingTask(taskId: string): Task {
  return {
    id: taskId,
    kind: '',
    owner: '',
    status: 'running',
    total: null,
    done: 0,
    succeeded: 0,
    failed: 0,
    current: null,
    message: null,
    result: null,
    error: null,
    seq: 0,
    createdAt: 0,
    updatedAt: 0,
    finishedAt: null,
    ackedSeq: 0,
    leaseOwner: null,
    leaseExpiresAt: null,
  };
}
