/**
 * The task/event model. A task is one batch job; its row is a snapshot from which a watcher that knows
 * nothing can be brought up to date. Its events form an immutable log keyed by `(taskId, seq)` with
 * `seq` = 1, 2, 3 … and no gap, assigned by the store in the same transaction that updates the snapshot.
 *
 * @module
 */

/** Any JSON value: what `result` and item `detail` may hold. */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/** Statuses a task can be in. `running` is the only non-terminal one. */
export const TASK_STATUSES = ['running', 'completed', 'failed', 'cancelled', 'interrupted'] as const;
/** A task's status. */
export type TaskStatus = (typeof TASK_STATUSES)[number];

/** The terminal event types; each is also the status the task ends in. */
export const TERMINAL_TYPES = ['completed', 'failed', 'cancelled', 'interrupted'] as const;
/** A terminal event type (= a terminal status). */
export type TerminalType = (typeof TERMINAL_TYPES)[number];

/** All event types, in no particular order. */
// Written out rather than spread from TERMINAL_TYPES (a test holds them together): a bundler drops an
// array literal nothing reads, not a spread, so pages that never list the types do not carry it.
export const EVENT_TYPES = ['progress', 'item', 'completed', 'failed', 'cancelled', 'interrupted'] as const;
/** An event type. */
export type EventType = (typeof EVENT_TYPES)[number];

/** True for the four terminal types/statuses. */
export function isTerminalType(type: string): type is TerminalType {
  return (TERMINAL_TYPES as readonly string[]).includes(type);
}

/**
 * Delivery priority: terminal > item > progress, and a subscription's snapshot above all (it is what
 * a watcher with a backlog needs first). Under pressure `progress` may be coalesced; `item` and terminal
 * events are never dropped.
 */
export const Priority = { progress: 0, item: 1, terminal: 2, snapshot: 3 } as const;
/** One of the {@link Priority} values. */
export type Priority = (typeof Priority)[keyof typeof Priority];

/** The priority of an event type. */
export function priorityOf(type: EventType): Priority {
  if (type === 'progress') return Priority.progress;
  if (type === 'item') return Priority.item;
  return Priority.terminal;
}

/**
 * The progress part of a task: absolute values, never deltas, so the latest one supersedes all
 * earlier ones. `done` counts items *finished* (succeeded + failed when items are reported one by one),
 * never items started: 100% means the work is over.
 */
export interface ProgressState {
  /** Number of items, or `null` while unknown. */
  total: number | null;
  /** Items finished. */
  done: number;
  /** Items finished successfully (counted from `item` events). */
  succeeded: number;
  /** Items finished with an error (counted from `item` events). */
  failed: number;
  /** The item being worked on, for display; `null` once the task ended (its terminal event clears it). */
  current: string | null;
  /** A human-readable status line. */
  message: string | null;
}

/** Why a task did not complete. Set for `failed`, `cancelled` and `interrupted` tasks. */
export interface TaskFailure {
  /** Application-defined for `failed`; `cancelled` or `interrupted` for those statuses. */
  code: string;
  /** Human-readable reason. */
  message: string;
}

/**
 * What a watcher may see of a task: its snapshot at `seq`. This is what `snapshot` frames carry and what
 * the HTTP API returns.
 */
export interface TaskView extends ProgressState {
  id: string;
  kind: string;
  status: TaskStatus;
  /** The value a `completed` event carried, else `null`. */
  result: JsonValue | null;
  /** Why the task did not complete, else `null`. */
  error: TaskFailure | null;
  /** Seq of the last event applied to this snapshot (0 before the first event). */
  seq: number;
  /** Epoch milliseconds. */
  createdAt: number;
  /** Epoch milliseconds of the last event (or creation). */
  updatedAt: number;
  /** Epoch milliseconds of the terminal event, else `null`. */
  finishedAt: number | null;
}

/** The full task row, as the store keeps it. */
export interface Task extends TaskView {
  /** The principal allowed to watch the task (by the default authorization rule). */
  owner: string;
  /**
   * Highest seq acknowledged by any watcher. Acks are cumulative, like TCP: an event is *processed*
   * once `event.seq <= task.ackedSeq`. Never decreases.
   */
  ackedSeq: number;
  /** The worker (replica) holding the task's lease, or `null`. */
  leaseOwner: string | null;
  /** Epoch milliseconds at which the lease expires; past it, any replica may interrupt the task. */
  leaseExpiresAt: number | null;
}

/** The static fields of a task, enough to render a snapshot from a progress event. */
export type TaskMeta = Pick<TaskView, 'id' | 'kind' | 'createdAt'>;

/** One item's result, as reported by the worker. */
export interface ItemResult {
  /** The item's key (for example a node name). */
  key: string;
  ok: boolean;
  /** Why it failed, when `ok` is false. */
  error: string | null;
  /** Optional application data about the item. */
  detail: JsonValue | null;
}

interface EventBase<T extends EventType> {
  taskId: string;
  /** Position in the task's log: 1, 2, 3 … with no gap. */
  seq: number;
  type: T;
  /** Epoch milliseconds at which the store committed the event. */
  time: number;
  /** The task's progress *after* this event: a single event is enough to draw the bar. */
  progress: ProgressState;
}

/** Coalescible progress: only its `progress` matters. */
export interface ProgressEvent extends EventBase<'progress'> {}
/** One item finished; `progress` already counts it. */
export interface ItemEvent extends EventBase<'item'> {
  item: ItemResult;
}
/** The task completed (possibly with failed items, counted in `progress.failed`). */
export interface CompletedEvent extends EventBase<'completed'> {
  result: JsonValue | null;
}
/** The task failed as a whole. */
export interface FailedEvent extends EventBase<'failed'> {
  error: TaskFailure;
}
/** The task was cancelled on request. */
export interface CancelledEvent extends EventBase<'cancelled'> {
  reason: string | null;
}
/** The task's worker stopped without ending it (lease expired, replica shut down). */
export interface InterruptedEvent extends EventBase<'interrupted'> {
  reason: string;
}

/** A terminal event: exactly one per task, always its last. */
export type TerminalEvent = CompletedEvent | FailedEvent | CancelledEvent | InterruptedEvent;
/** Any event of a task's log. */
export type TaskEvent = ProgressEvent | ItemEvent | TerminalEvent;

/** True when `event` is terminal. */
export function isTerminalEvent(event: TaskEvent): event is TerminalEvent {
  return isTerminalType(event.type);
}

/** The progress fields of a task or view, copied. */
export function progressOf(source: ProgressState): ProgressState {
  return {
    total: source.total,
    done: source.done,
    succeeded: source.succeeded,
    failed: source.failed,
    current: source.current,
    message: source.message,
  };
}

/** The public view of a task row (drops owner, acks and lease). */
export function toTaskView(task: TaskView): TaskView {
  return {
    id: task.id,
    kind: task.kind,
    status: task.status,
    ...progressOf(task),
    result: task.result,
    error: task.error,
    seq: task.seq,
    createdAt: task.createdAt,
    updatedAt: task.updatedAt,
    finishedAt: task.finishedAt,
  };
}

/** True when every item is finished: `total` is known and `done >= total`. */
export function allItemsFinished(progress: ProgressState): boolean {
  return progress.total !== null && progress.done >= progress.total;
}
