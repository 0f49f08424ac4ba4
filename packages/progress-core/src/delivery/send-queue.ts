import type { ProgressEvent, TaskEvent, TaskMeta, TaskView } from '../model.js';
import { Priority, priorityOf } from '../model.js';
import type { Resolved } from '../options.js';
import { defaultsOf, exhaustive, integer, resolveOptions } from '../options.js';
import { Deque } from './deque.js';
import { taskViewAtProgress } from './event-view.js';

/**
 * The server's outgoing queue for one socket. Frames wait here while the socket's buffer drains; the
 * queue decides what goes next so that a watcher with a backlog gets what matters first (snapshots and
 * terminal states), and, when the socket is congested, folds runs of `progress` events into one snapshot
 * (progress is absolute, so only the last one of a run carries information). A task's own entries keep
 * their seq order; `item` and terminal events are never dropped or merged.
 *
 * Why the coalescing and the priority picking stay in this one file: both rest on one invariant, that a
 * task's per-priority `counts` and the queue's `size` always match its queued entries. Every change to the
 * entries (pushing, collapsing a run, a snapshot replacing what it covers, folding at send time) goes
 * through `#append`/`#removeHead` or adjusts the counts beside them, and `#pick` reads those counts; split
 * apart, the invariant could no longer be checked by reading one class. The ring buffer under each task's
 * entries has no such tie and lives in `deque.ts`.
 *
 * @module
 */

/** What the queue hands to the socket: an event frame or a snapshot frame. */
export type OutgoingEntry = { kind: 'event'; event: TaskEvent } | { kind: 'snapshot'; task: TaskView };

/** Options of {@link SendQueue}. */
export interface SendQueueOptions {
  /**
   * Longest run of consecutive queued `progress` events of one task kept as individual events. A longer
   * run (of a tracked task) is collapsed at push time into its first seq and its last event, which bounds
   * the memory a slow socket can pin; such a run is sent as one snapshot even when the socket is not
   * congested, because its middle events are gone. An integer >= 1.
   * @default 64
   */
  maxProgressRun?: number | undefined;
}

const SEND_QUEUE_OPTIONS = { maxProgressRun: /* @__PURE__ */ integer(64, 1) };

/** Defaults of {@link SendQueueOptions}. */
export const SEND_QUEUE_DEFAULTS: Readonly<Resolved<SendQueueOptions>> = /* @__PURE__ */ Object.freeze(
  /* @__PURE__ */ defaultsOf(SEND_QUEUE_OPTIONS),
);

type QueuedEntry =
  | { kind: 'event'; event: TaskEvent; order: number }
  | { kind: 'snapshot'; task: TaskView; order: number }
  /**
   * Consecutive progress events `firstSeq … last.seq`, collapsed to the last one. `order` is the first
   * event's and stays when a snapshot moves `firstSeq` forward (see the class's note on arrival).
   */
  | { kind: 'run'; firstSeq: number; last: ProgressEvent; meta: TaskMeta; order: number };

interface TaskQueue {
  /** Static fields of a tracked task; `null` when untracked (its progress cannot be coalesced). */
  meta: TaskMeta | null;
  entries: Deque<QueuedEntry>;
  /** Highest seq covered by a pushed event or snapshot: anything at or below it is a duplicate. */
  lastPushedSeq: number;
  /** Seq of the last entry shifted out (-1 before the first): outputs only move forward. */
  lastEmittedSeq: number;
  /** Number of queued entries per {@link Priority}, so a task's highest priority is O(1). */
  counts: [number, number, number, number];
  /** What its queued events weigh (see {@link SendQueue.bytes}). */
  bytes: number;
}

/**
 * One socket's outgoing queue.
 *
 * Order: {@link shift} picks the task holding the highest-priority queued entry (snapshot > terminal >
 * item > progress; ties go to the task whose oldest queued entry arrived first) and emits that task's
 * *head* entry: a task's entries are never reordered, so a task with a terminal or snapshot queued
 * drains ahead of tasks that hold only progress.
 *
 * Arrival, for that tie-break, is per queued entry. A progress run collapsed at push time is one entry
 * that arrived with its first event, and keeps that arrival when a snapshot replaces its front: the run
 * holds only its first seq and last event, so when its later events arrived is gone, and remembering it
 * would cost memory per event, which is what `maxProgressRun` bounds. Such a task can therefore win a
 * tie it would lose had its events stayed apart; priority and each task's own order are unaffected, and
 * the effect ends when the run is sent.
 *
 * Coalescing: when the socket is congested and the chosen head is a run of consecutive `progress`
 * events of a tracked task, the whole run goes out as one snapshot at its last seq, rendered from the
 * task's {@link TaskMeta} (the client's cursor jumps over it explicitly). A run of one goes out as the
 * event itself; an untracked task's events go out unchanged.
 *
 * Restarting a task's stream (a re-subscribe on the same socket) is `untrack` then `track`: the queue's
 * duplicate filter and forward-only rule apply within one tracking period.
 *
 * @example
 * ```ts
 * const queue = new SendQueue();
 * queue.track({ id: task.id, kind: task.kind, createdAt: task.createdAt });
 * queue.pushSnapshot(task);
 * feed.onChange(async () => { for (const event of await newEvents()) queue.pushEvent(event); flush(); });
 * function flush() {
 *   while (socket.bufferedAmount < HIGH_WATER) {
 *     const entry = queue.shift(socket.bufferedAmount > LOW_WATER);
 *     if (entry === undefined) return;
 *     socket.send(encodeFrame(entry.kind === 'event' ? { type: 'event', event: entry.event } : { type: 'snapshot', task: entry.task }));
 *   }
 * }
 * ```
 */
export class SendQueue {
  readonly #maxProgressRun: number;
  readonly #weigh: (event: TaskEvent) => number;
  readonly #tasks = new Map<string, TaskQueue>();
  #size = 0;
  #bytes = 0;
  /** Arrival counter, for the tie-break between tasks of equal priority. */
  #order = 0;

  /**
   * @param options - merged over {@link SEND_QUEUE_DEFAULTS} and validated here.
   * @param weigh - what a queued event weighs, summed in {@link bytes} (a server passes its frame's length).
   * @throws ProgressError `invalid_input` for invalid options.
   */
  constructor(options?: SendQueueOptions, weigh: (event: TaskEvent) => number = () => 0) {
    this.#maxProgressRun = resolveOptions('SendQueue', SEND_QUEUE_OPTIONS, options).maxProgressRun;
    this.#weigh = weigh;
  }

  /**
   * What the queued events weigh together, by the constructor's `weigh` (0 without one). Counted for each
   * event queued as itself; a progress run collapsed at push time and a snapshot weigh nothing (one run
   * per run of a task's progress, one snapshot per task at most). A socket bounds it: the entries are
   * counted in {@link size}, but one `item` may carry 16 KiB.
   */
  get bytes(): number {
    return this.#bytes;
  }

  /** Number of queued entries (a collapsed progress run counts as one). */
  get size(): number {
    return this.#size;
  }

  /** Registers a followed task's static fields, which coalesced snapshots are rendered from. */
  track(meta: TaskMeta): void {
    const queue = this.#queueOf(meta.id);
    queue.meta = { id: meta.id, kind: meta.kind, createdAt: meta.createdAt };
  }

  /** Forgets a task: drops its queued entries, its metadata and its duplicate filter. */
  untrack(taskId: string): void {
    const queue = this.#tasks.get(taskId);
    if (queue === undefined) return;
    this.#size -= queue.entries.length;
    this.#bytes -= queue.bytes;
    this.#tasks.delete(taskId);
  }

  /**
   * Queues an event. Events of one task must be pushed in seq order; an event at or below the highest
   * seq already pushed (as an event or snapshot) of its task is a duplicate and is ignored.
   *
   * @returns whether the event was queued.
   */
  pushEvent(event: TaskEvent): boolean {
    const queue = this.#queueOf(event.taskId);
    if (!(event.seq > queue.lastPushedSeq)) return false;
    queue.lastPushedSeq = event.seq;
    if (event.type === 'progress') {
      this.#pushProgress(queue, event);
      return true;
    }
    this.#append(queue, { kind: 'event', event, order: this.#order++ });
    return true;
  }

  /**
   * {@link pushEvent} then {@link shift} in one step, for an empty queue: `true` when `event` is to be
   * sent now (the queue records it as pushed and sent), `false` for a duplicate (ignored, as `pushEvent`
   * ignores it). A socket's live events usually meet an empty queue; this spares them the queueing.
   *
   * @throws RangeError when entries are queued: they go first, so the event must be pushed.
   */
  passEvent(event: TaskEvent): boolean {
    if (this.#size > 0) throw new RangeError('SendQueue: passEvent with entries queued');
    const queue = this.#queueOf(event.taskId);
    if (!(event.seq > queue.lastPushedSeq)) return false;
    // Alone in the queue, an event goes out as itself whatever its type and the congestion: a run of one
    // progress event is sent as the event.
    queue.lastPushedSeq = event.seq;
    queue.lastEmittedSeq = event.seq;
    return true;
  }

  /**
   * Queues a snapshot of a task, replacing that task's queued entries it covers (seq <= `task.seq`).
   * It goes out before the task's remaining (later) entries. A snapshot not newer than what was already
   * sent for the task is ignored.
   *
   * @returns whether the snapshot was queued.
   */
  pushSnapshot(task: TaskView): boolean {
    const queue = this.#queueOf(task.id);
    if (!(task.seq > queue.lastEmittedSeq)) return false;
    const { entries } = queue;
    for (let head = entries.at(0); head !== undefined; head = entries.at(0)) {
      if (head.kind === 'run' && head.firstSeq <= task.seq && task.seq < head.last.seq) {
        head.firstSeq = task.seq + 1;
        break;
      }
      if (lastSeqOf(head) > task.seq) break;
      this.#removeHead(queue);
    }
    entries.unshift({ kind: 'snapshot', task, order: this.#order++ });
    queue.counts[Priority.snapshot] += 1;
    this.#size += 1;
    if (task.seq > queue.lastPushedSeq) queue.lastPushedSeq = task.seq;
    return true;
  }

  /**
   * The next entry to send, or `undefined` when the queue is empty.
   *
   * @param congested - the socket is backed up (for example `bufferedAmount` above a threshold): fold a
   *   run of progress events at the chosen task's head into one snapshot.
   */
  shift(congested: boolean): OutgoingEntry | undefined {
    const queue = this.#pick();
    if (queue === undefined) return undefined;
    const head = this.#removeHead(queue);
    let out: OutgoingEntry;
    switch (head.kind) {
      case 'snapshot':
        out = { kind: 'snapshot', task: head.task };
        break;
      case 'run':
        out = this.#foldProgress(queue, head.firstSeq, head.last, head.meta, congested);
        break;
      case 'event':
        out =
          head.event.type === 'progress' && queue.meta !== null
            ? this.#foldProgress(queue, head.event.seq, head.event, queue.meta, congested)
            : { kind: 'event', event: head.event };
        break;
      default:
        exhaustive(head, 'SendQueue entry');
    }
    queue.lastEmittedSeq = out.kind === 'event' ? out.event.seq : out.task.seq;
    return out;
  }

  /** Drops every queued entry and every task's state, tracking included: the queue is as new. */
  clear(): void {
    this.#tasks.clear();
    this.#size = 0;
    this.#bytes = 0;
  }

  #queueOf(taskId: string): TaskQueue {
    let queue = this.#tasks.get(taskId);
    if (queue === undefined) {
      queue = {
        meta: null,
        entries: new Deque(),
        lastPushedSeq: 0,
        lastEmittedSeq: -1,
        counts: [0, 0, 0, 0],
        bytes: 0,
      };
      this.#tasks.set(taskId, queue);
    }
    return queue;
  }

  #append(queue: TaskQueue, entry: QueuedEntry): void {
    queue.entries.push(entry);
    queue.counts[priorityOfEntry(entry)] += 1;
    this.#size += 1;
    this.#addBytes(queue, entry, 1);
  }

  /** Adds (`sign` 1) or takes off (-1) what `entry` weighs: an event queued as itself, nothing else. */
  #addBytes(queue: TaskQueue, entry: QueuedEntry, sign: 1 | -1): void {
    if (entry.kind !== 'event') return;
    const bytes = sign * this.#weigh(entry.event);
    queue.bytes += bytes;
    this.#bytes += bytes;
  }

  #removeHead(queue: TaskQueue): QueuedEntry {
    const head = queue.entries.shift();
    if (head === undefined) throw new RangeError('SendQueue: removeHead on an empty task queue');
    queue.counts[priorityOfEntry(head)] -= 1;
    this.#size -= 1;
    this.#addBytes(queue, head, -1);
    return head;
  }

  #pushProgress(queue: TaskQueue, event: ProgressEvent): void {
    const { entries } = queue;
    const tail = entries.at(entries.length - 1);
    if (tail?.kind === 'run' && tail.last.seq + 1 === event.seq) {
      tail.last = event;
      return;
    }
    this.#append(queue, { kind: 'event', event, order: this.#order++ });
    if (queue.meta === null) return; // an untracked run cannot be rendered as a snapshot: keep it whole
    let length = 0;
    for (let i = entries.length - 1; i >= 0 && length <= this.#maxProgressRun; i--) {
      const entry = entries.at(i);
      if (
        entry?.kind !== 'event' ||
        entry.event.type !== 'progress' ||
        entry.event.seq !== event.seq - length
      )
        break;
      length += 1;
    }
    if (length <= this.#maxProgressRun) return;
    let first: QueuedEntry | undefined;
    for (let i = 0; i < length; i++) {
      first = entries.pop();
      queue.counts[Priority.progress] -= 1;
      this.#size -= 1;
      if (first !== undefined) this.#addBytes(queue, first, -1);
    }
    if (first?.kind !== 'event') throw new RangeError('SendQueue: progress run bookkeeping is inconsistent');
    this.#append(queue, {
      kind: 'run',
      firstSeq: first.event.seq,
      last: event,
      meta: queue.meta,
      order: first.order,
    });
  }

  /**
   * Emits the progress run starting with an entry already removed (`firstSeq … last`): as one snapshot
   * when congested (swallowing the consecutive progress entries behind it) or when it was collapsed at
   * push time; as the event itself when it covers a single seq.
   */
  #foldProgress(
    queue: TaskQueue,
    firstSeq: number,
    last: ProgressEvent,
    meta: TaskMeta,
    congested: boolean,
  ): OutgoingEntry {
    let end = last;
    if (congested) {
      for (let next = queue.entries.at(0); next !== undefined; next = queue.entries.at(0)) {
        if (next.kind === 'event' && next.event.type === 'progress' && next.event.seq === end.seq + 1) {
          end = next.event;
        } else if (next.kind === 'run' && next.firstSeq === end.seq + 1) {
          end = next.last;
        } else break;
        this.#removeHead(queue);
      }
    }
    if (end.seq === firstSeq) return { kind: 'event', event: end };
    return { kind: 'snapshot', task: taskViewAtProgress(meta, end) };
  }

  /** The task to serve next: highest queued priority, then oldest queued entry. */
  #pick(): TaskQueue | undefined {
    let best: TaskQueue | undefined;
    let bestPriority = -1;
    let bestOrder = Number.POSITIVE_INFINITY;
    for (const queue of this.#tasks.values()) {
      if (queue.entries.length === 0) continue;
      const priority = highestPriority(queue);
      if (priority < bestPriority) continue;
      const order = oldestOrder(queue);
      if (priority > bestPriority || order < bestOrder) {
        best = queue;
        bestPriority = priority;
        bestOrder = order;
      }
    }
    return best;
  }
}

function priorityOfEntry(entry: QueuedEntry): Priority {
  switch (entry.kind) {
    case 'snapshot':
      return Priority.snapshot;
    case 'run':
      return Priority.progress;
    case 'event':
      return priorityOf(entry.event.type);
    default:
      exhaustive(entry, 'SendQueue entry');
  }
}

function lastSeqOf(entry: QueuedEntry): number {
  switch (entry.kind) {
    case 'snapshot':
      return entry.task.seq;
    case 'run':
      return entry.last.seq;
    case 'event':
      return entry.event.seq;
    default:
      exhaustive(entry, 'SendQueue entry');
  }
}

function highestPriority(queue: TaskQueue): number {
  for (let priority = Priority.snapshot; priority >= Priority.progress; priority--) {
    if (queue.counts[priority as Priority] > 0) return priority;
  }
  return -1;
}

/**
 * Arrival order of a task's oldest queued entry. Entries are appended in arrival order, except snapshots,
 * which are put at the head when they arrive; so the oldest is among the leading snapshots or the first
 * entry behind them. (Looking at the head and the one behind it only was wrong when a snapshot arrived in
 * front of another queued snapshot: a deep property run, seed 1055625773, served the wrong task.)
 */
function oldestOrder(queue: TaskQueue): number {
  let oldest = Number.POSITIVE_INFINITY;
  for (let index = 0; index < queue.entries.length; index++) {
    const entry = queue.entries.at(index) as QueuedEntry;
    if (entry.order < oldest) oldest = entry.order;
    if (entry.kind !== 'snapshot') break;
  }
  return oldest;
}
