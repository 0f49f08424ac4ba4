/**
 * Everything one socket writes: the send queue and its drain under backpressure, the terminal re-send
 * timer, and `error` frames. It decides how and when bytes go out, never what a subscription is.
 *
 * @module
 */

import type { Duplex } from 'node:stream';
import type {
  ErrorCode,
  ProtocolVersion,
  ServerFrame,
  TaskEvent,
  TaskMeta,
  TaskView,
} from '@finishline/core';
import { isTerminalType, LIMITS } from '@finishline/core';
import type { OutgoingEntry, RoundTripPool } from '@finishline/core/internal';
import { encodeFrame, SendQueue, TerminalRetryTracker } from '@finishline/core/internal';
import WebSocket from 'ws';
import type { StoreEpoch } from '../hub/store-epoch.js';
import type { ProgressLogger } from '../logger.js';
import { describeError } from '../logger.js';
import type { ServerMetrics } from '../metrics.js';
import type { ResolvedServerOptions } from '../options.js';
import type { QueuedBytesBound } from '../principal-limits.js';
import { eventFrameBytes, eventFrameText } from './event-frame-text.js';

/** The request and task a frame answers, echoed in its `error` frame. */
export interface FrameRefs {
  requestId?: string;
  taskId?: string;
}

/** What the writer records on a subscription as its frames go out. */
export interface WrittenLog {
  /** A frame of the task up to `seq` went out on this socket. */
  wrote(seq: number): void;
  /**
   * A terminal frame went out: `true` when the client still needs it, and it is to be re-sent until
   * acknowledged.
   */
  terminalSent(seq: number, text: string): boolean;
  /** The terminal frame to re-send for `seq`, or `undefined` when it is no longer due. */
  terminalFrame(seq: number): string | undefined;
}

/** What a writer needs from its connection. */
export interface WriterContext {
  readonly ws: WebSocket;
  /**
   * The TCP socket under `ws`, when known (sockets this server upgraded; not those handed over by a
   * user's own `WebSocketServer`): the writer corks it for the rest of the tick at its first frame, so
   * everything written to one socket in one tick leaves in one system call.
   */
  readonly transport?: Duplex | undefined;
  readonly options: Pick<
    ResolvedServerOptions<never>,
    | 'clock'
    | 'terminalRetry'
    | 'highWaterMarkBytes'
    | 'backpressurePollMs'
    | 'maxQueuedFrames'
    | 'maxQueuedBytes'
  >;
  readonly metrics: ServerMetrics;
  readonly logger: ProgressLogger;
  readonly connectionId: number;
  readonly version: ProtocolVersion;
  readonly epoch: StoreEpoch;
  /** The server's pool of terminal-ack round trips, one vote per principal (terminal-retry.ts). */
  readonly roundTrips?: RoundTripPool | undefined;
  /** The socket's principal, whose vote in `roundTrips` its acks move (called after authentication). */
  readonly principalId?: (() => string) | undefined;
  /** The connection is open: writing and timers are allowed. */
  isOpen(): boolean;
  /** Runs a timer callback so that nothing it throws reaches `ws`. */
  guard(fn: () => void): void;
  /** The written-frame log of the subscription of `taskId`, if the socket follows it. */
  log(taskId: string): WrittenLog | undefined;
  /**
   * The socket's queue weighs `delta` bytes more (less when negative) than when it last said; the bound a
   * growth took its principal, or all principals together, past (`maxQueuedBytesPerPrincipal`,
   * `maxQueuedBytesTotal`: the socket then ends, as past `maxQueuedBytes`), else `undefined`. Absent: no
   * bound over several sockets.
   */
  queuedBytes?: ((delta: number) => QueuedBytesBound | undefined) | undefined;
  /**
   * The queue outgrew `bound` (called once): the socket must end. Named so the operator's log says which
   * bound to raise: a byte bound tripped by a few large items was reported as `maxQueuedFrames`.
   */
  overflow(bound: QueueBound): void;
}

/** The bound of what a socket holds for its client that ended it (see {@link WriterContext.overflow}). */
export type QueueBound = 'maxQueuedFrames' | 'maxQueuedBytes' | QueuedBytesBound;

/**
 * Writes one socket's frames. Queued entries go out while the socket's buffer is below the high-water
 * mark; above it, writing pauses (polled on a short timer) and runs of progress are coalesced into
 * snapshots until the queue is empty again. Terminal frames are re-sent on one timer until acknowledged.
 * Nothing is written above the mark: answers and heartbeats ({@link SocketWriter.send}) are dropped
 * there, so a peer that stops reading never makes the server buffer more than the mark and a frame.
 */
export class SocketWriter {
  readonly #ctx: WriterContext;
  /**
   * Weighed by the UTF-8 bytes of its frame text: an event's text and size are cached, computed once
   * whatever the sockets sending it.
   */
  readonly #queue = new SendQueue(undefined, eventFrameBytes);
  /**
   * Reset snapshots that met the socket above the high-water mark, by task: written first when it
   * drains. A task's next reset replaces its waiting one.
   */
  readonly #resets = new Map<string, TaskView>();
  readonly #retries: TerminalRetryTracker;
  #retryTimer: NodeJS.Timeout | undefined;
  #retryDueAt: number | undefined;
  /** The re-send of what fell due, waiting for this turn's socket reads (see `#onRetryTimer`). */
  #retryImmediate: NodeJS.Immediate | undefined;
  #drainTimer: NodeJS.Timeout | undefined;
  #congested = false;
  #corked = false;
  /** Frames handed to `ws`, and those of them the socket has taken (their send callbacks succeeded). */
  #framesWritten = 0;
  #framesFlushed = 0;
  /** The queue outgrew `maxQueuedFrames`: the socket is ending, and nothing more is queued. */
  #overflowed = false;
  /** Deliveries the socket's subscriptions hold for a renewal's re-check (see {@link hold}). */
  #held = 0;
  /** What the events of those deliveries weigh, in bytes of frame text, as the queue weighs its own. */
  #heldBytes = 0;
  /** The queue's weight as last told to the principal's budget (`WriterContext.queuedBytes`). */
  #reportedBytes = 0;
  /** What is queued waits for a renewal's re-check (see {@link holdQueued}). */
  #queuedHeld = false;

  constructor(ctx: WriterContext) {
    this.#ctx = ctx;
    this.#retries = new TerminalRetryTracker(
      ctx.options.clock,
      ctx.options.terminalRetry,
      ctx.roundTrips,
      ctx.principalId,
    );
  }

  /** Everything queued went out and no paused drain is pending (a heartbeat may report seqs now). */
  get idle(): boolean {
    return this.#queue.size === 0 && this.#resets.size === 0 && this.#drainTimer === undefined;
  }

  /** Frames handed to the socket so far (see {@link framesFlushed}). */
  get framesWritten(): number {
    return this.#framesWritten;
  }

  /**
   * Frames the socket has taken so far: written out of its buffer, which a peer that does not read stops
   * once the connection's buffers are full (the liveness check, connection.ts `tick`).
   */
  get framesFlushed(): number {
    return this.#framesFlushed;
  }

  /** Frames are still queued here or buffered in the socket (a graceful shutdown waits for them). */
  get flushing(): boolean {
    return this.#queue.size > 0 || this.#resets.size > 0 || this.#ctx.ws.bufferedAmount > 0;
  }

  /** Starts a task's stream in the queue (its metadata, for coalesced snapshots). */
  track(meta: TaskMeta): void {
    this.#queue.track(meta);
  }

  /** Drops what is queued and due for re-send of a task whose stream starts over or ends. */
  forget(taskId: string): void {
    this.#queue.untrack(taskId);
    this.#resets.delete(taskId);
    this.#retries.forget(taskId);
    this.#reportBytes();
  }

  /**
   * Queues an event, or writes it at once when nothing is queued and the socket takes more: exactly what
   * queueing it and {@link drain} would do, without the queue's bookkeeping per frame (a live event
   * usually meets an empty queue). `log` is the subscription pushing it, which records the frame.
   */
  pushEvent(event: TaskEvent, log: WrittenLog): void {
    if (this.#queue.size > 0 || this.#resets.size > 0 || !this.#writable()) {
      if (this.#overflowed) return;
      this.#queue.pushEvent(event);
      this.#checkBound();
      return;
    }
    // As at the end of a drain: whatever was congested has gone out.
    this.#congested = false;
    if (this.#queue.passEvent(event)) this.#sendEvent(event, log);
  }

  pushSnapshot(view: TaskView): void {
    if (this.#overflowed) return;
    this.#queue.pushSnapshot(view);
    this.#checkBound();
  }

  /**
   * Ends the socket once its queue holds more than `maxQueuedFrames` entries or `maxQueuedBytes` of
   * frames: `item` and terminal events are never dropped, so without a bound a reader slower than its
   * tasks' items pinned them all here (copies of its own when a catch-up read them from the store).
   */
  #checkBound(): void {
    const { maxQueuedFrames, maxQueuedBytes } = this.#ctx.options;
    if (this.#queue.size + this.#held > maxQueuedFrames) this.overflow('maxQueuedFrames');
    else if (this.#queue.bytes + this.#heldBytes > maxQueuedBytes) this.overflow('maxQueuedBytes');
    else {
      const passed = this.#reportBytes();
      if (passed !== undefined) this.overflow(passed);
    }
  }

  /**
   * Tells the principal's budget how much the queue's weight changed since it last did: one number per
   * call, so the sum over the principal's sockets costs O(1) per push and per drain, never a scan of the
   * frames. The bound a growth took the principal or the server past, if any. Called after each push, at
   * the end of each drain (what a drain sends meanwhile is still counted: the budget errs on the full
   * side), and when the queue is cleared.
   */
  #reportBytes(): QueuedBytesBound | undefined {
    const bytes = this.#queue.bytes + this.#heldBytes;
    const delta = bytes - this.#reportedBytes;
    if (delta === 0) return undefined;
    this.#reportedBytes = bytes;
    return this.#ctx.queuedBytes?.(delta);
  }

  /**
   * A subscription of this socket holds one more delivery, whose events weigh `bytes` of frame text, for a
   * token renewal's re-check (see `Subscription.suspend`). What its subscriptions hold counts with the
   * queue against `maxQueuedFrames` and `maxQueuedBytes`, for the socket as a whole (bounded per
   * subscription, a socket following many tasks held that many times the bound), and against its
   * principal's `maxQueuedBytesPerPrincipal` (and the server's `maxQueuedBytesTotal`). Past one the socket ends, as when its queue outgrows it. Not
   * on the live path: only while a re-check runs.
   */
  hold(bytes: number): void {
    this.#held += 1;
    this.#heldBytes += bytes;
    this.#checkBound();
  }

  /** `count` deliveries held (see {@link hold}), weighing `bytes`, went on, or were dropped. */
  released(count: number, bytes: number): void {
    this.#held -= count;
    this.#heldBytes -= bytes;
    this.#reportBytes();
  }

  /**
   * A renewal's re-check starts: what is queued now (the socket above its high-water mark) was queued
   * under the credential it replaces, for tasks the new one may not be allowed to watch, so it waits, with
   * all queued behind it, until {@link releaseQueued}; a task the re-check refuses has its entries dropped
   * meanwhile (`forget`). The subscriptions hold what their streams deliver from now on. Drained on, the
   * queue sent a refused task's frames while its re-check ran, after the replaced credential's expiry too.
   * Nothing queued, nothing waits: a subscribe answered during the re-check goes out as before.
   */
  holdQueued(): void {
    if (this.#queue.size > 0 || this.#resets.size > 0) this.#queuedHeld = true;
  }

  /** What is queued waits for a renewal's re-check (see {@link holdQueued}), and does not drain meanwhile. */
  get queueHeld(): boolean {
    return this.#queuedHeld;
  }

  /** The re-check ended (see {@link holdQueued}): what waited drains. */
  releaseQueued(): void {
    if (!this.#queuedHeld) return;
    this.#queuedHeld = false;
    this.drain();
  }

  /** The socket holds more for its client than `bound` allows: it ends (once), and nothing more is queued. */
  overflow(bound: QueueBound): void {
    if (this.#overflowed) return;
    this.#overflowed = true;
    this.#queue.clear();
    this.#resets.clear();
    this.#reportBytes();
    this.#ctx.overflow(bound);
  }

  /**
   * Sends a snapshot ahead of the queue (a `reset`: the subscription was just reset, so nothing of the
   * task is queued; the events after it go through the queue as usual): at once, or first thing when the
   * socket drains below the high-water mark. Written at once whatever the buffer said, a client that
   * stopped reading could have a snapshot of up to 128 KiB buffered per subscribe it sent.
   */
  sendReset(view: TaskView): void {
    if (this.#resets.size === 0 && this.#writable()) {
      this.#writeReset(view);
      return;
    }
    this.#resets.set(view.id, view);
    this.drain();
  }

  #writeReset(view: TaskView): void {
    const text = encodeFrame({ type: 'snapshot', task: view, ...this.epochField(), reset: true });
    this.#write(text);
    this.#ctx.metrics.snapshotsSent.inc();
    this.#wrote(view.id, view.seq, view.status !== 'running' ? text : undefined);
  }

  /** The client acknowledged `seq` of `taskId`: re-sends up to it stop. */
  acked(taskId: string, seq: number): void {
    this.#retries.acked(taskId, seq);
    this.#scheduleRetry();
  }

  /** Writes queued entries while the socket's buffer allows (see the class). */
  drain(): void {
    if (this.#queuedHeld || !this.#ctx.isOpen() || this.#drainTimer !== undefined) return;
    if (this.#ctx.ws.readyState !== WebSocket.OPEN) return;
    while (this.#queue.size > 0 || this.#resets.size > 0) {
      if (this.#ctx.ws.bufferedAmount > this.#ctx.options.highWaterMarkBytes) {
        this.#congested = true;
        this.#drainTimer = setTimeout(() => {
          this.#drainTimer = undefined;
          this.#ctx.guard(() => this.drain());
        }, this.#ctx.options.backpressurePollMs);
        this.#drainTimer.unref();
        this.#reportBytes();
        return;
      }
      const reset = this.#resets.values().next().value;
      if (reset !== undefined) {
        this.#resets.delete(reset.id);
        this.#writeReset(reset);
        continue;
      }
      const entry = this.#queue.shift(this.#congested);
      if (entry === undefined) break;
      this.#sendEntry(entry);
    }
    this.#congested = false;
    this.#reportBytes();
  }

  /**
   * Writes an answer (`pong`, `error`, `hello`) or a heartbeat, unless the socket's buffer is above the
   * high-water mark: then it is dropped, since holding answers for a peer that does not read would
   * buffer without bound (each costs a client frame, which the rate limit allows a hundred a second).
   * A peer that reads that slowly receives the backlog meanwhile and repeats what it still needs (a
   * subscribe goes unanswered: it is sent again). Each drop is counted in `frames_dropped_total{type}`.
   * Returns whether it was written.
   */
  send(frame: ServerFrame): boolean {
    if (this.#ctx.ws.bufferedAmount > this.#ctx.options.highWaterMarkBytes) {
      this.#ctx.metrics.framesDropped.inc({ type: frame.type });
      return false;
    }
    this.#write(encodeFrame(frame));
    return true;
  }

  /** Writes a frame of the queue or a re-send (each already past its own high-water-mark check). */
  #write(text: string): void {
    const ws = this.#ctx.ws;
    if (ws.readyState !== WebSocket.OPEN) return;
    this.#corkForTick();
    this.#framesWritten += 1;
    ws.send(text, this.#onSent);
  }

  /**
   * A WebSocket ping, held with the tick's frames like they are, so the heartbeat frame that follows it
   * leaves in the same system call. Sent on its own, it was a second write per socket at every heartbeat
   * tick, which showed in the replicas' profiles whenever a tick fell in a measured window.
   *
   * Written whatever the high-water mark, unlike answers: a peer reading through a backlog keeps the
   * buffer just above the mark (the drain refills it), so a ping held there would never go out, and the
   * liveness check (connection.ts, `tick`) would terminate a peer that reads, whenever its buffer
   * happened not to shrink between two ticks. It costs two bytes per heartbeat interval, and a peer
   * that stops reading is terminated at the next tick.
   */
  ping(): void {
    const ws = this.#ctx.ws;
    if (ws.readyState !== WebSocket.OPEN) return;
    this.#corkForTick();
    ws.ping();
  }

  /** One callback for every frame of the socket, not a closure per frame. */
  readonly #onSent = (error?: Error | null): void => {
    if (!error) {
      this.#framesFlushed += 1;
      return;
    }
    this.#ctx.logger.debug({ err: describeError(error), connection: this.#ctx.connectionId }, 'send failed');
  };

  /** What {@link drain} checks before it writes: the socket is open, not paused, below the high-water mark. */
  #writable(): boolean {
    return (
      this.#drainTimer === undefined &&
      this.#ctx.ws.readyState === WebSocket.OPEN &&
      this.#ctx.ws.bufferedAmount <= this.#ctx.options.highWaterMarkBytes &&
      this.#ctx.isOpen()
    );
  }

  /** An `error` frame: an answer, dropped above the high-water mark like every answer ({@link send}). */
  sendError(code: ErrorCode, message: string, refs: FrameRefs): void {
    // Clipped so the frame stays valid for a strict client whatever a store's message says.
    const text =
      message.length <= LIMITS.maxMessageLength
        ? message
        : `${message.slice(0, LIMITS.maxMessageLength - 1)}…`;
    this.send({ type: 'error', code, message: text, ...refs });
  }

  /** `{ epoch }` for a version-2 socket once the store's epoch is known, else nothing. */
  epochField(): { epoch?: string } {
    const epoch = this.#ctx.epoch.current;
    return this.#ctx.version >= 2 && epoch !== undefined ? { epoch } : {};
  }

  /**
   * Holds the socket's writes until the end of the tick (Node's own pattern for batched writes). Each
   * frame `ws` sends is otherwise a `writev` of its own: a catch-up of a hundred events was a hundred
   * system calls, and at load the server's time went to them (docs/benchmarks-history.md, profile). The bytes
   * held count in `ws.bufferedAmount`, so the high-water mark still pauses the drain.
   */
  #corkForTick(): void {
    const transport = this.#ctx.transport;
    if (transport === undefined || this.#corked) return;
    this.#corked = true;
    transport.cork();
    process.nextTick(() => this.flushNow());
  }

  /**
   * Lets the writes held since the tick's first frame go out now, not at the end of the tick (a graceful
   * shutdown measures what is still buffered before it closes the socket).
   */
  flushNow(): void {
    if (!this.#corked) return;
    this.#corked = false;
    this.#ctx.transport?.uncork();
  }

  /** Clears the timers and the queue (the socket closed). */
  stop(): void {
    for (const timer of [this.#retryTimer, this.#drainTimer]) {
      if (timer !== undefined) clearTimeout(timer);
    }
    if (this.#retryImmediate !== undefined) clearImmediate(this.#retryImmediate);
    this.#retryImmediate = undefined;
    this.#retryTimer = undefined;
    this.#drainTimer = undefined;
    this.#queue.clear();
    this.#retries.close();
    this.#resets.clear();
    this.#reportBytes();
  }

  #sendEntry(entry: OutgoingEntry): void {
    switch (entry.kind) {
      case 'event': {
        this.#sendEvent(entry.event, this.#ctx.log(entry.event.taskId));
        return;
      }
      case 'snapshot': {
        const text = encodeFrame({ type: 'snapshot', task: entry.task, ...this.epochField() });
        this.#write(text);
        this.#ctx.metrics.snapshotsSent.inc();
        this.#wrote(entry.task.id, entry.task.seq, entry.task.status !== 'running' ? text : undefined);
        return;
      }
      default: {
        const unreachable: never = entry;
        throw new TypeError(`Unknown outgoing entry ${String(unreachable)}`);
      }
    }
  }

  #sendEvent(event: TaskEvent, log: WrittenLog | undefined): void {
    const text = eventFrameText(event);
    this.#write(text);
    this.#ctx.metrics.eventsSent.inc();
    if (log !== undefined)
      this.#logWrote(log, event.taskId, event.seq, isTerminalType(event.type) ? text : undefined);
  }

  /** Records a written frame; a terminal one (`terminal` is its text) is re-sent until acknowledged. */
  #wrote(taskId: string, seq: number, terminal: string | undefined): void {
    const log = this.#ctx.log(taskId);
    if (log !== undefined) this.#logWrote(log, taskId, seq, terminal);
  }

  #logWrote(log: WrittenLog, taskId: string, seq: number, terminal: string | undefined): void {
    log.wrote(seq);
    if (terminal === undefined || !log.terminalSent(seq, terminal)) return;
    this.#retries.sent(taskId, seq);
    this.#scheduleRetry();
  }

  /**
   * Keeps the socket's one retry timer set for the earliest due re-send (or cleared when none), and no
   * sooner than `notBeforeMs` from now.
   */
  #scheduleRetry(notBeforeMs = 0): void {
    const dueAt = this.#retries.nextDueAt();
    if (dueAt === this.#retryDueAt && (dueAt === undefined || this.#retryTimer !== undefined)) return;
    if (this.#retryTimer !== undefined) clearTimeout(this.#retryTimer);
    this.#retryTimer = undefined;
    this.#retryDueAt = dueAt;
    if (dueAt === undefined || !this.#ctx.isOpen()) return;
    this.#retryTimer = setTimeout(
      () => this.#ctx.guard(() => this.#onRetryTimer()),
      Math.max(1, notBeforeMs, dueAt - this.#ctx.options.clock()),
    );
    this.#retryTimer.unref();
  }

  #onRetryTimer(): void {
    this.#retryTimer = undefined;
    this.#retryDueAt = undefined;
    // Timers run before the event loop reads its sockets: after a busy stretch (a burst of completions)
    // the ack of a terminal event can be waiting unread when its re-send falls due. The re-send waits for
    // this turn's reads (setImmediate runs after them), so an ack already received is not answered with a
    // duplicate frame, a duplicate decode on the client, and its duplicate ack.
    if (this.#retryImmediate !== undefined) return;
    this.#retryImmediate = setImmediate(() => {
      this.#retryImmediate = undefined;
      this.#ctx.guard(() => this.#resendDue());
    });
  }

  #resendDue(): void {
    if (!this.#ctx.isOpen()) return;
    for (const { taskId, seq } of this.#retries.due()) {
      if (this.#ctx.ws.bufferedAmount > this.#ctx.options.highWaterMarkBytes) {
        // The previous copies have not even left the buffer: a re-send now only piles up duplicates behind
        // them. Checked before each frame, not once per round: a round is every due terminal of the
        // socket (up to `maxSubscriptionsPerSocket` frames of up to 128 KiB), and written whole, a peer
        // that stopped reading had all of them buffered past the mark. What is left stays due, and is
        // looked at again after the drain's poll interval.
        this.#scheduleRetry(this.#ctx.options.backpressurePollMs);
        return;
      }
      const frame = this.#ctx.log(taskId)?.terminalFrame(seq);
      if (frame === undefined) {
        this.#retries.forget(taskId);
        continue;
      }
      // Straight to the socket: the frame already went through the queue once, after everything before it.
      this.#write(frame);
      this.#ctx.metrics.terminalRetries.inc();
      this.#retries.sent(taskId, seq);
    }
    this.#scheduleRetry();
  }
}
