/**
 * The last events of each followed task, kept in memory so that a subscriber catching up over them
 * (a resubscribe, a reconnect, a storm of them) reads nothing from the store.
 *
 * @module
 */
import type { TaskEvent } from '@finishline/core';
import { eventFrameBytes } from '../socket/event-frame-text.js';

/**
 * Events kept per task: once a task has had this many, at least this many and fewer than twice as many
 * (the front is trimmed in steps, not on every event). A resume is usually a few events behind; a cursor
 * further back than the window reads the store, as before.
 */
export const RECENT_EVENTS_PER_TASK = 256;

/**
 * Most events kept over all tasks (about 15 MB at 250 bytes an event; larger events are bounded by
 * {@link RECENT_EVENTS_TOTAL_BYTES}). Past it, the windows of the tasks served or extended least recently
 * are dropped whole.
 */
export const RECENT_EVENTS_TOTAL = 65_536;

/**
 * Most bytes of events kept over all tasks, weighed by the UTF-8 bytes of their `event` frame's text
 * (which is cached per event and held with it; weighed by its `length`, CJK text was held up to three times
 * this). The count alone assumed small events: at 16 KiB an `item`, 65,536 of them were
 * about 1 GB, and twice that with their texts. Past it, windows are dropped as past the count.
 */
export const RECENT_EVENTS_TOTAL_BYTES = 64 * 1024 * 1024;

/** One task's window and what its events weigh. */
interface Window {
  readonly events: TaskEvent[];
  bytes: number;
}

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
  readonly #totalBytes: number;
  readonly #weigh: (event: TaskEvent) => number;
  /** Insertion order is recency: a window served or extended moves to the end. */
  readonly #windows = new Map<string, Window>();
  #size = 0;
  #bytes = 0;

  /**
   * @param limits - `weigh` is what an event weighs against `totalBytes`: its `event` frame's UTF-8 bytes
   *   by default (encoded once per event whoever sends it, so weighing it here encodes nothing twice).
   */
  constructor(
    limits: {
      perTask?: number;
      total?: number;
      totalBytes?: number;
      weigh?: (event: TaskEvent) => number;
    } = {},
  ) {
    this.#perTask = limits.perTask ?? RECENT_EVENTS_PER_TASK;
    this.#total = limits.total ?? RECENT_EVENTS_TOTAL;
    this.#totalBytes = limits.totalBytes ?? RECENT_EVENTS_TOTAL_BYTES;
    this.#weigh = limits.weigh ?? eventFrameBytes;
  }

  /** Events held over all tasks. */
  get size(): number {
    return this.#size;
  }

  /** What the events held over all tasks weigh (see {@link RECENT_EVENTS_TOTAL_BYTES}). */
  get bytes(): number {
    return this.#bytes;
  }

  /** The hub dispatched `events` (contiguous, in seq order) of `taskId`. */
  extend(taskId: string, events: readonly TaskEvent[]): void {
    const next = events[0];
    if (next === undefined) return;
    const window = this.#windows.get(taskId);
    const held = window?.events;
    const last = held?.[held.length - 1];
    if (window === undefined || held === undefined || last === undefined || next.seq !== last.seq + 1) {
      this.#set(taskId, [...events]);
      return;
    }
    // In place, the hot path: one push per live event, the front trimmed only once it doubled. Each event
    // is weighed once in and once out (a cached size), never the window again.
    let bytes = 0;
    for (const event of events) {
      held.push(event);
      bytes += this.#weigh(event);
    }
    this.#size += events.length;
    if (held.length >= 2 * this.#perTask) {
      const excess = held.length - this.#perTask;
      for (let index = 0; index < excess; index++) bytes -= this.#weigh(held[index] as TaskEvent);
      held.splice(0, excess);
      this.#size -= excess;
    }
    window.bytes += bytes;
    this.#bytes += bytes;
    this.#touch(taskId, window);
    this.#evict(taskId);
  }

  /**
   * A store read of `taskId` that ends at or after the window's first event, or at `dispatchedSeq` (the
   * hub's position) when there is no window: what it adds in front of the window is kept too.
   *
   * A store read names the id, not the run: `ofRun` says the read is known to be of the window's run (its
   * task read after it, still that run). Otherwise it is kept only if it holds the window's first event
   * itself (same seq, time and type: one read is of one run, and a later run's event at that seq is
   * stamped after the purge), so a read served after the run was purged and its id written again never
   * joins the window and goes out from memory as the earlier run's.
   */
  backfill(taskId: string, events: readonly TaskEvent[], dispatchedSeq: number, ofRun = true): void {
    const last = events[events.length - 1];
    if (last === undefined) return;
    const window = this.#windows.get(taskId)?.events;
    const first = window?.[0];
    if (window === undefined || first === undefined) {
      if (ofRun && last.seq === dispatchedSeq) this.#set(taskId, [...events]);
      return;
    }
    const head = events[0] as TaskEvent;
    if (last.seq < first.seq - 1 || head.seq >= first.seq) return;
    if (!ofRun) {
      const same = events[first.seq - head.seq];
      if (
        same === undefined ||
        same.seq !== first.seq ||
        same.time !== first.time ||
        same.type !== first.type
      )
        return;
    }
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
    const first = window?.events[0];
    if (window === undefined || first === undefined || toSeq <= fromSeq) return undefined;
    const start = fromSeq + 1 - first.seq;
    const end = toSeq + 1 - first.seq;
    if (start < 0 || end > window.events.length) return undefined;
    this.#touch(taskId, window);
    return window.events.slice(start, end);
  }

  /** Forgets `taskId`'s events (nobody follows it any more, or its log changed under it). */
  drop(taskId: string): void {
    const window = this.#windows.get(taskId);
    if (window === undefined) return;
    this.#forget(taskId, window);
  }

  #set(taskId: string, events: TaskEvent[]): void {
    this.drop(taskId);
    const kept = events.length > this.#perTask ? events.slice(events.length - this.#perTask) : events;
    let bytes = 0;
    for (const event of kept) bytes += this.#weigh(event);
    this.#windows.set(taskId, { events: kept, bytes });
    this.#size += kept.length;
    this.#bytes += bytes;
    this.#evict(taskId);
  }

  #forget(taskId: string, window: Window): void {
    this.#size -= window.events.length;
    this.#bytes -= window.bytes;
    this.#windows.delete(taskId);
  }

  /** Moves a window to the end of the recency order: the most recently used is the last evicted. */
  #touch(taskId: string, window: Window): void {
    this.#windows.delete(taskId);
    this.#windows.set(taskId, window);
  }

  /** Drops the least recently used windows (never `keep`'s) while over the total count or bytes. */
  #evict(keep: string): void {
    for (const [oldest, window] of this.#windows) {
      if ((this.#size <= this.#total && this.#bytes <= this.#totalBytes) || oldest === keep) return;
      this.#forget(oldest, window);
    }
  }
}
