/**
 * The one message for a missing or hidden task, shared by the WebSocket and HTTP refusals.
 *
 * @module
 */
/**
 * The one message for a task that does not exist, or that the principal may not know exists: the
 * WebSocket and HTTP refusals share it so the two cases cannot be told apart by their wording.
 */
export function taskNotFoundMessage(taskId: string): string {
  return `Task ${taskId} does not exist`;
}
