import type {
  JsonValue,
  ProgressEvent,
  ProgressState,
  TaskEvent,
  TaskFailure,
  TaskMeta,
  TaskStatus,
  TaskView,
  TerminalEvent,
} from '../model.js';
import { isTerminalEvent, progressOf } from '../model.js';
import { exhaustive } from '../options.js';

/**
 * The one rule that turns a task event into view fields (status, result, the failure and its message,
 * counters, terminal time), used by the stores' `planAppend`, the client's watch cursor and watch, and
 * the server's send queue, so that a store row, a snapshot and a client's view agree to the field.
 *
 * @module
 */

/** What the client knows of a watched task, built from the snapshots and events applied so far. */
export interface WatchView {
  readonly taskId: string;
  /** The cursor: seq of the last event applied (or of the last snapshot accepted). */
  readonly seq: number;
  /** `running` until a terminal event or terminal snapshot was applied. */
  readonly status: TaskStatus;
  /** Known once a snapshot was applied (events do not carry it). */
  readonly kind: string | null;
  /** Absolute progress after the last delivery; `null` before the first. */
  readonly progress: ProgressState | null;
  /** The `completed` event's result, else `null`. */
  readonly result: JsonValue | null;
  /** Why the task did not complete (`failed`, `cancelled`, `interrupted`), else `null`. */
  readonly error: TaskFailure | null;
  /** Epoch ms of the last delivery's event or snapshot; `null` before the first. */
  readonly updatedAt: number | null;
  /** Epoch ms of the terminal event, else `null`. */
  readonly finishedAt: number | null;
}

/** The fields a terminal event fixes on a task row or a view. */
export interface TerminalFields {
  status: Exclude<TaskStatus, 'running'>;
  result: JsonValue | null;
  error: TaskFailure | null;
}

/**
 * The status, result and failure a terminal event stands for. A cancellation without a reason gets the
 * message `cancelled`, so every failure carries a message to show.
 */
export function terminalFields(event: TerminalEvent): TerminalFields {
  switch (event.type) {
    case 'completed':
      return { status: 'completed', result: event.result, error: null };
    case 'failed':
      return {
        status: 'failed',
        result: null,
        error: { code: event.error.code, message: event.error.message },
      };
    case 'cancelled':
      return {
        status: 'cancelled',
        result: null,
        error: { code: 'cancelled', message: event.reason ?? 'cancelled' },
      };
    case 'interrupted':
      return { status: 'interrupted', result: null, error: { code: 'interrupted', message: event.reason } };
  }
}

/** The view a snapshot stands for: everything the watcher can know of the task at `task.seq`. */
export function watchViewOfTask(task: TaskView): WatchView {
  return {
    taskId: task.id,
    seq: task.seq,
    status: task.status,
    kind: task.kind,
    progress: progressOf(task),
    result: task.result,
    error: task.error,
    updatedAt: task.updatedAt,
    finishedAt: task.finishedAt,
  };
}

/** The view after `event` (the next one in seq order): what `planAppend` does to the task row. */
export function watchViewAfter(view: WatchView, event: TaskEvent): WatchView {
  // Frames are validated before they reach the cursor; should an unknown type slip through, it is treated
  // as progress rather than thrown at the socket handler.
  const fields = isTerminalEvent(event) ? terminalFields(event) : view;
  // One literal of the view's own fields, no spread: it runs for every event a client applies, and `view`
  // may be a client state with more fields.
  return {
    taskId: view.taskId,
    seq: event.seq,
    status: fields.status,
    kind: view.kind,
    progress: progressOf(event.progress),
    result: fields.result,
    error: fields.error,
    updatedAt: event.time,
    finishedAt: fields === view ? view.finishedAt : event.time,
  };
}

/** The task as it stood after a progress event: still running, nothing final yet. */
export function taskViewAtProgress(meta: TaskMeta, event: ProgressEvent): TaskView {
  return {
    id: meta.id,
    kind: meta.kind,
    status: 'running',
    ...progressOf(event.progress),
    result: null,
    error: null,
    seq: event.seq,
    createdAt: meta.createdAt,
    updatedAt: event.time,
    finishedAt: null,
  };
}

/** The progress of a task before anything happened: nothing done, total unknown. */
export const EMPTY_PROGRESS: Readonly<ProgressState> = Object.freeze({
  total: null,
  done: 0,
  succeeded: 0,
  failed: 0,
  current: null,
  message: null,
});

/**
 * The terminal event a terminal view stands for, when the view came from a snapshot (the inverse of
 * {@link terminalFields}: a cancellation's message becomes its reason).
 */
export function terminalEventOfView(view: WatchView): TerminalEvent {
  const base = {
    taskId: view.taskId,
    seq: view.seq,
    time: view.finishedAt ?? view.updatedAt ?? 0,
    progress: view.progress ?? { ...EMPTY_PROGRESS },
  };
  const message = view.error?.message;
  switch (view.status) {
    case 'failed':
      return { ...base, type: 'failed', error: view.error ?? { code: 'failed', message: 'failed' } };
    case 'cancelled':
      return { ...base, type: 'cancelled', reason: message ?? null };
    case 'interrupted':
      return { ...base, type: 'interrupted', reason: message ?? 'interrupted' };
    case 'completed':
    case 'running':
      return { ...base, type: 'completed', result: view.result };
    default:
      return exhaustive(view.status);
  }
}
