import type { TaskEvent, TaskView } from '../model.js';
import { isTerminalEvent, isTerminalType } from '../model.js';
import type { Resolved } from '../options.js';
import { defaultsOf, integer, resolveOptions } from '../options.js';
import { assertTaskId } from '../value-checks.js';
import type { WatchView } from './event-view.js';
import { watchViewAfter, watchViewOfTask } from './event-view.js';

/**
 * The client's apply step for one watched task: it turns whatever the network delivers (duplicates,
 * frames out of order, stale snapshots, replays after a reconnect) into the sequence the application
 * sees, in seq order, without gaps or duplicates, ending with the terminal state exactly once. This is
 * where guarantees 1 and 2 of the design are enforced on the client side.
 *
 * @module
 */

/** What the application is handed: an event, or a snapshot that moves the cursor forward explicitly. */
export type Delivery = { kind: 'event'; event: TaskEvent } | { kind: 'snapshot'; task: TaskView };

/** What one `apply*` call did. */
export interface ApplyResult {
  /** What the application must see now, in order (the input, then buffered successors it released). */
  delivered: Delivery[];
  /** The input was already covered by the cursor (or the watch is finished) and was dropped. */
  duplicate: boolean;
  /**
   * The input was an event ahead of `seq + 1`: something in between is missing. It was buffered (or
   * dropped when the buffer is full; the resync brings it again).
   */
  gap: boolean;
  /** When `gap`: the `afterSeq` to re-subscribe with (the cursor). Otherwise `null`. */
  resyncFrom: number | null;
  /** True only on the one apply that delivered the terminal state. */
  finished: boolean;
  /** The input was about another task and was ignored. */
  foreign: boolean;
}

/** Options of {@link WatchCursor}. */
export interface WatchCursorOptions {
  /**
   * Seq already seen by this watcher, for example a cursor persisted across a page reload: events up to
   * it are duplicates. A non-negative integer.
   * @default 0
   */
  afterSeq?: number | undefined;
  /**
   * Most out-of-order events held while waiting for the missing ones. When full, the event farthest
   * ahead is dropped (a resync brings it again). A non-negative integer; 0 disables buffering.
   * @default 256
   */
  maxBuffered?: number | undefined;
}

const WATCH_CURSOR_OPTIONS = { afterSeq: integer(0, 0), maxBuffered: integer(256, 0) };

/** Defaults of {@link WatchCursorOptions}. */
// Marked pure so that bundles that never read it (the browser client's) leave it out.
export const WATCH_CURSOR_DEFAULTS: Readonly<Resolved<WatchCursorOptions>> = /* @__PURE__ */ Object.freeze(
  /* @__PURE__ */ defaultsOf(WATCH_CURSOR_OPTIONS),
);

const NOTHING: Omit<ApplyResult, 'delivered'> = Object.freeze({
  duplicate: false,
  gap: false,
  resyncFrom: null,
  finished: false,
  foreign: false,
});

/** The result of an apply that delivered something: a literal, not a spread of NOTHING (every frame). */
function delivery(delivered: Delivery[], finished: boolean): ApplyResult {
  return { delivered, duplicate: false, gap: false, resyncFrom: null, finished, foreign: false };
}

/**
 * One watched task's cursor and view.
 *
 * Rules: an event with seq <= cursor is a duplicate; seq = cursor + 1 is delivered, then any buffered
 * successors; a later seq is buffered and reported as a gap. A snapshot ahead of the cursor is delivered
 * and moves the cursor to its seq (discarding buffered events it covers); an older one is ignored. The
 * one exception is a snapshot at exactly the cursor before anything was delivered: a fresh watcher
 * (cursor 0, task without events yet) or one resumed from a persisted cursor knows nothing of the task
 * but its seq, and that snapshot is how it learns the rest, including that the task already ended.
 * Once the terminal state is delivered, every input is a duplicate.
 *
 * `view` is replaced (never mutated) on every change, so it can back React's `useSyncExternalStore`.
 *
 * @example
 * ```ts
 * const cursor = new WatchCursor(taskId, { afterSeq: stored ?? 0 });
 * socket.onEvent = (event) => {
 *   const result = cursor.applyEvent(event);
 *   for (const delivery of result.delivered) app.onDelivery(delivery);
 *   if (result.gap) resubscribe(taskId, result.resyncFrom);
 * };
 * ```
 */
export class WatchCursor {
  readonly #taskId: string;
  readonly #maxBuffered: number;
  readonly #buffer = new Map<number, TaskEvent>();
  #view: WatchView;
  #finished = false;
  /** Nothing delivered yet: the view holds only the seq it started from. */
  #fresh = true;

  /**
   * @throws ProgressError `invalid_input` for an invalid task id or options.
   */
  constructor(taskId: string, options?: WatchCursorOptions) {
    assertTaskId(taskId);
    const { afterSeq, maxBuffered } = resolveOptions('WatchCursor', WATCH_CURSOR_OPTIONS, options);
    this.#maxBuffered = maxBuffered;
    this.#taskId = taskId;
    this.#view = Object.freeze({
      taskId,
      seq: afterSeq,
      status: 'running',
      kind: null,
      progress: null,
      result: null,
      error: null,
      updatedAt: null,
      finishedAt: null,
    });
  }

  /** The watched task's id. */
  get taskId(): string {
    return this.#taskId;
  }

  /** The cursor: the seq to resume from (`afterSeq`) after a disconnect. */
  get seq(): number {
    return this.#view.seq;
  }

  /** What the client knows of the task. A new object after every change. */
  get view(): WatchView {
    return this.#view;
  }

  /** The application has been handed the terminal state. */
  get finished(): boolean {
    return this.#finished;
  }

  /** Number of out-of-order events held. */
  get buffered(): number {
    return this.#buffer.size;
  }

  /**
   * True when the server's latest seq (from a heartbeat) is ahead of the cursor: a frame was lost on a
   * connection that still looks healthy, and the caller should resync from {@link seq}.
   */
  isBehind(latestSeq: number): boolean {
    return !this.#finished && latestSeq > this.#view.seq;
  }

  /** Applies one event frame. Never throws. */
  applyEvent(event: TaskEvent): ApplyResult {
    if (event.taskId !== this.#taskId) return { ...NOTHING, delivered: [], foreign: true };
    if (this.#finished || event.seq <= this.#view.seq) return { ...NOTHING, delivered: [], duplicate: true };
    if (event.seq > this.#view.seq + 1) {
      const alreadyHeld = this.#buffer.has(event.seq);
      if (!alreadyHeld) this.#hold(event);
      return { ...NOTHING, delivered: [], duplicate: alreadyHeld, gap: true, resyncFrom: this.#view.seq };
    }
    // A literal of its one element: `[]` then push would give the array room for 17 (136 bytes more for
    // every event a client applies); a rare drain of held events grows it.
    const delivered: Delivery[] = [this.#advance(event)];
    this.#drain(delivered);
    return delivery(delivered, this.#finished);
  }

  /**
   * Applies one snapshot frame. Never throws.
   *
   * @param reset - the frame was marked `reset`: the server says the cursor does not belong to the
   *   task's log (ahead of it, or from another epoch), so the snapshot replaces the view whatever its
   *   seq, unless the terminal state was already delivered.
   */
  applySnapshot(task: TaskView, reset = false): ApplyResult {
    if (task.id !== this.#taskId) return { ...NOTHING, delivered: [], foreign: true };
    const fills = reset || task.seq > this.#view.seq || (this.#fresh && task.seq === this.#view.seq);
    if (this.#finished || !fills) return { ...NOTHING, delivered: [], duplicate: true };
    const delivered: Delivery[] = [{ kind: 'snapshot', task }];
    this.#fresh = false;
    this.#view = Object.freeze(watchViewOfTask(task));
    // A reset says the held events belong to another log (rule 3: discard anything held).
    if (reset) this.#buffer.clear();
    for (const seq of this.#buffer.keys()) {
      if (seq <= task.seq) this.#buffer.delete(seq);
    }
    if (isTerminalType(task.status)) this.#finish();
    else this.#drain(delivered);
    return delivery(delivered, this.#finished);
  }

  /**
   * Starts over from seq 0, keeping what the view shows until the next snapshot replaces it: for a
   * cursor of another epoch, whose seqs mean nothing in the current log. A finished watch stays finished.
   */
  restart(): void {
    if (this.#finished) return;
    this.#buffer.clear();
    this.#fresh = true;
    this.#view = Object.freeze({ ...this.#view, seq: 0 });
  }

  #hold(event: TaskEvent): void {
    if (this.#buffer.size < this.#maxBuffered) {
      this.#buffer.set(event.seq, event);
      return;
    }
    if (this.#maxBuffered === 0) return;
    // Full: keep the events nearest the cursor, which are the ones that can be released soonest.
    let farthest = -1;
    for (const seq of this.#buffer.keys()) if (seq > farthest) farthest = seq;
    if (event.seq < farthest) {
      this.#buffer.delete(farthest);
      this.#buffer.set(event.seq, event);
    }
  }

  #drain(delivered: Delivery[]): void {
    while (!this.#finished && this.#buffer.size > 0) {
      const next = this.#buffer.get(this.#view.seq + 1);
      if (next === undefined) return;
      this.#buffer.delete(next.seq);
      delivered.push(this.#advance(next));
    }
  }

  /** Moves the view past `event` (the next seq) and returns its delivery. */
  #advance(event: TaskEvent): Delivery {
    this.#fresh = false;
    this.#view = Object.freeze(watchViewAfter(this.#view, event));
    if (isTerminalEvent(event)) this.#finish();
    return { kind: 'event', event };
  }

  #finish(): void {
    this.#finished = true;
    this.#buffer.clear();
  }
}
