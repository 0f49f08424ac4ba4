/**
 * The last events of each followed task, kept in memory so that a subscriber catching up over them
 * (a resubscribe, a reconnect, a storm of them) reads nothing from the store.
 *
 * @module
 */
import type { TaskEvent } from '@finishline/core';

/**
 * Events kept per task: once a task has had this many, at least this many and fewer than twice as many
 * (the front is trimmed in steps, not on every event). A resume is usually a few events behind; a cursor
 * further back than the window reads the store, as before.
 */
export const RECENT_EVENTS_PER_TASK = 256;

/**
 * Most events kept over all tasks (about 15 MB at 250 bytes an event). Past it, the windows of the tasks
 * served or extended least recently are dropped whole.
 */
export const RECENT_EVENTS_TOTAL = 65_536;

/**
 * Per task, one contiguous run of its latest committed events, ending at the hub's dispatched seq. The
 * events are the very objects the hub handed out (frozen), so a catch-up served from here allocates no
 * event and re-encodes no frame (the frame text is cached per event object).
 *
 * The hub keeps the invariant: {@link RecentEvents.extend} gets each dispatched run, contiguous with
 * the last; {@link RecentEvents.backfill} gets a store read that ends where the window begins or
 * overlaps it. A run that does not join the window replaces it.
 */
export class RecentEvents {
  readonly #perTask: number;
  readonly #total: number;
  /** Insertion order is recency: a window served or extended moves to the end. */
  readonly #windows = new Map<string, TaskEvent[]>();
  #size = 0;

  constructor(limits: { perTask?: number; total?: number } = {}) {
    this.#perTask = limits.perTask ?? RECENT_EVENTS_PER_TASK;
    this.#total = limits.total ?? RECENT_EVENTS_TOTAL;
  }

  /** Events held over all tasks. */
  get size(): number {
    return this.#size;
  }

  /** The hub dispatched `events` (contiguous, in seq order) of `taskId`. */
  extend(taskId: string, events: readonly TaskEvent[]): void {
    const next = events[0];
    if (next === undefined) return;
    const window = this.#windows.get(taskId);
    const last = window?.[window.length - 1];
    if (window === undefined || last === undefined || next.seq !== last.seq + 1) {
      this.#set(taskId, [...events]);
      return;
    }
    // In place, the hot path: one push per live event, the front trimmed only once it doubled.
    for (const event of events) window.push(event);
    this.#size += events.length;
    if (window.length >= 2 * this.#perTask) {
      const excess = window.length - this.#perTask;
      window.splice(0, excess);
      this.#size -= excess;
    }
    this.#touch(taskId, window);
    this.#evict(taskId);
  }

  /**
   * A store read of `taskId` that ends at or after the window's first event, or at `dispatchedSeq` (the
   * hub's position) when there is no window: what it adds in front of the window is kept too.
   */
  backfill(taskId: string, events: readonly TaskEvent[], dispatchedSeq: number): void {
    const last = events[events.length - 1];
    if (last === undefined) return;
    const window = this.#windows.get(taskId);
    const first = window?.[0];
    if (window === undefined || first === undefined) {
      if (last.seq === dispatchedSeq) this.#set(taskId, [...events]);
      return;
    }
    if (last.seq < first.seq - 1 || (events[0] as TaskEvent).seq >= first.seq) return;
    const before = events.filter((event) => event.seq < first.seq);
    // Only worth it while the window has room: #set keeps the newest events.
    if (window.length < this.#perTask) this.#set(taskId, before.concat(window));
  }

  /**
   * The events of `taskId` after `fromSeq` up to `toSeq`, or `undefined` when the window does not hold
   * all of them.
   */
  between(taskId: string, fromSeq: number, toSeq: number): readonly TaskEvent[] | undefined {
    const window = this.#windows.get(taskId);
    const first = window?.[0];
    if (window === undefined || first === undefined || toSeq <= fromSeq) return undefined;
    const start = fromSeq + 1 - first.seq;
    const end = toSeq + 1 - first.seq;
    if (start < 0 || end > window.length) return undefined;
    this.#touch(taskId, window);
    return window.slice(start, end);
  }

  /** Forgets `taskId`'s events (nobody follows it any more, or its log changed under it). */
  drop(taskId: string): void {
    const window = this.#windows.get(taskId);
    if (window === undefined) return;
    this.#size -= window.length;
    this.#windows.delete(taskId);
  }

  #set(taskId: string, events: TaskEvent[]): void {
    this.drop(taskId);
    const kept = events.length > this.#perTask ? events.slice(events.length - this.#perTask) : events;
    this.#windows.set(taskId, kept);
    this.#size += kept.length;
    this.#evict(taskId);
  }

  /** Moves a window to the end of the recency order: the most recently used is the last evicted. */
  #touch(taskId: string, window: TaskEvent[]): void {
    this.#windows.delete(taskId);
    this.#windows.set(taskId, window);
  }

  /** Drops the least recently used windows (never `keep`'s) while over the total. */
  #evict(keep: string): void {
    for (const [oldest, window] of this.#windows) {
      if (this.#size <= this.#total || oldest === keep) return;
      this.#size -= window.length;
      this.#windows.delete(oldest);
    }
  }
}
