/**
 * One followed task on one socket: its cursor, what the client may acknowledge, its terminal frame's
 * re-send state, and its current stream from the hub. One staleness check ({@link
 * Subscription.isCurrent}) says whether async work started for it still applies.
 *
 * @module
 */
import type { TaskEvent, TaskView } from '@finishline/core';
import type { StreamSink, TaskStream } from '../hub/task-stream.js';
import type { ServerMetrics } from '../metrics.js';
import { eventFrameBytes } from './event-frame-text.js';
import type { SocketWriter, WrittenLog } from './socket-writer.js';

/** What a subscription needs from its socket. */
export interface SubscriptionContext {
  readonly writer: SocketWriter;
  readonly metrics: ServerMetrics;
  readonly clock: () => number;
  /** The socket speaks protocol version 2 or later: a cursor ahead of the task is answered by a reset. */
  readonly resets: boolean;
  /** Opens the hub stream of the task for this socket's principal. */
  openStream(taskId: string, sink: StreamSink): TaskStream;
  /** The socket is open: a stream's reads and frames still matter. */
  isOpen(): boolean;
  /** The task vanished while the stream caught up. */
  onGone(sub: Subscription): void;
  /** The id's task is another run than the stream's, or gone: the subscription starts over (a reset). */
  onRestart(sub: Subscription): void;
  /** A catch-up failed before the subscribe had its answer, or for good: the subscription ends with the error. */
  onFailed(sub: Subscription, error: unknown): void;
  /** A bug while handling the stream. */
  onInternalError(error: unknown): void;
}

/** What an ack frame did to a subscription. */
export type AckOutcome =
  /** Held until the subscription is authorized and loaded (issue 10 item 1). */
  | 'held'
  /** Beyond anything sent on this socket: an invalid frame. */
  | 'beyond'
  /** At or below what was already acknowledged: nothing to do. */
  | 'repeated'
  /** A new acknowledgement, to be recorded. */
  | 'advanced';

/**
 * One followed task on one socket. Each (re)subscribe starts a new {@link TaskStream}; work started for
 * an older stream, or after removal, is stale and dropped.
 */
export class Subscription implements WrittenLog {
  readonly taskId: string;
  readonly #ctx: SubscriptionContext;
  #stream: TaskStream | undefined;
  #removed = false;
  /**
   * The principal may watch the task and it is loaded. Until then no frame of this subscription acts:
   * an ack is only remembered (its highest seq) and applied once this turns true.
   */
  #authorized = false;
  /** Highest seq acknowledged while the subscription was not yet authorized. */
  #pendingAck = 0;
  /** Highest seq queued to this socket (event or snapshot). */
  #cursor = 0;
  /** Highest seq the client may acknowledge: what it was sent, or what it said it had. */
  #ackable = 0;
  /**
   * Highest seq written to this socket for this task, across resubscribes. A resubscribe resets
   * `ackable`, but frames of the previous stream may still be in flight to the client, which cannot
   * tell them from the answer to its new subscribe; acking them is legitimate (they were sent here).
   */
  #written = 0;
  /**
   * The run of the id (its `createdAt`) that `#written`'s seqs are of: the latest authorized load's. An ack
   * that no current authorization vouches for is recorded only while the id is still that run.
   */
  #ackRun: number | undefined;
  /** Highest seq the client acknowledged. */
  #acked = 0;
  /** Free acks left: each frame written buys one, each ack that advances uses one. */
  #freeAcks = 0;
  /** The `afterSeq` of the subscribe: the client already has everything up to it. */
  #claimed = 0;
  /** The seq of the current stream's last frame written to this socket (0 before any). */
  #lastWritten = 0;
  #terminalSeq: number | undefined;
  /** The encoded terminal frame, re-sent until acknowledged. */
  #terminalFrame: string | undefined;
  /** Clock time of the first send of the terminal frame, for the push→ack latency. */
  #terminalSentAt: number | undefined;
  #terminalAcked = false;
  /**
   * The server restarted the subscription for a new store epoch and no frame of it went out since: the
   * client still holds a cursor of the old epoch, so its subscribes meanwhile are answered by the reset.
   */
  #epochResetDue = false;
  /** Something was queued for the latest (re)start (a snapshot, a reset or events): it was answered. */
  #answered = false;
  /**
   * A token renewal's re-check of this subscription is under way (see {@link suspend}): what its stream
   * delivers meanwhile waits here, in order, until the new credential is found to allow the task.
   */
  #held: Array<() => void> | undefined;
  /** What the events in {@link #held} weigh, in bytes of their frame text (see `SocketWriter.hold`). */
  #heldBytes = 0;

  constructor(taskId: string, ctx: SubscriptionContext) {
    this.taskId = taskId;
    this.#ctx = ctx;
  }

  /** `true` while `stream` is this subscription's live stream: async work started under it still applies. */
  isCurrent(stream: TaskStream): boolean {
    return !this.#removed && this.#stream === stream && !stream.stale;
  }

  /** The stream the last (re)subscribe opened; `undefined` once removed. */
  get currentStream(): TaskStream | undefined {
    return this.#stream;
  }

  get authorized(): boolean {
    return this.#authorized;
  }

  /** What a heartbeat reports: the client has at least what it resumed from and what was sent. */
  get heartbeatSeq(): number {
    return Math.max(this.#cursor, this.#claimed);
  }

  /**
   * What a heartbeat reports while the socket's queue waits for a renewal's re-check (see
   * `SocketWriter.holdQueued`): what was written, not what waits queued (`#cursor`), which the client
   * has not got and would take for a lost frame (delivery rule 6).
   */
  get writtenHeartbeatSeq(): number {
    return Math.max(this.#lastWritten, this.#claimed);
  }

  /**
   * Starts a fresh stream from the client's `afterSeq` (a subscribe or resubscribe): the queue and
   * retry state of the task start over. Returns the stream, the token of this attempt. `newEpoch`: the
   * store's epoch changed, so the seqs written to this socket before and a held ack are of the old epoch.
   */
  restart(afterSeq: number, newEpoch = false): TaskStream {
    // A held ack survives (#reset keeps it): it is applied, through the usual checks, once the new stream
    // is authorized. Dropping it lost it for good when a duplicated subscribe overtook the first one.
    this.#reset();
    if (newEpoch) {
      this.#epochResetDue = true;
      // An old epoch's seq must not pass as sent here: a late ack of it would stand above the restored
      // task's seq, refused by the store, and make every real ack after it look repeated.
      this.#written = 0;
      this.#ackRun = undefined;
      this.#pendingAck = 0;
      this.#freeAcks = 0;
    }
    // Acks up to the client's own cursor become valid once the task is loaded and the principal may
    // watch it; acks that arrive before are held, so a refused subscribe never reaches the store.
    this.#claimed = afterSeq;
    // A (re)start is authorized with the credential in force: nothing of the old stream is to go out.
    this.#dropHeld();
    const previous = this.#stream;
    // The new stream follows the task before the old one lets go, so the hub keeps its place.
    const stream = this.#ctx.openStream(
      this.taskId,
      this.#sinkOf(() => stream),
    );
    this.#stream = stream;
    previous?.close();
    return stream;
  }

  /**
   * The load of `stream` found the task and the principal may watch it, at `taskSeq`. Returns the held
   * ack to apply now (0 when none).
   */
  authorize(taskSeq: number, run?: number): number {
    this.#authorized = true;
    if (run !== this.#ackRun) {
      // Another run of the id than the one whose seqs this socket was sent (purged and taken again): none
      // of them acknowledges anything of this run.
      if (this.#ackRun !== undefined) {
        this.#written = 0;
        // An ack of the earlier run's frames taken while this load ran (recorded for that run only, see
        // `Subscriptions.ack`) acknowledges nothing of this one. Kept, this run's acks up to its seq were
        // taken for repeats and never recorded, and its end, at or below it, was never re-sent.
        this.#acked = 0;
        this.#freeAcks = 0;
        this.#ctx.writer.forget(this.taskId);
      }
      this.#ackRun = run;
    }
    // Nothing beyond the task's last seq exists to acknowledge, whatever the client claimed.
    this.#ackable = Math.min(this.#claimed, taskSeq);
    const held = this.#pendingAck;
    this.#pendingAck = 0;
    return held;
  }

  /**
   * The cursor is beyond the task's log (a restored store, a purged id reused), or at the seq the task
   * ended at (maybe of a purged run): the client must drop it, and its claim is void too unless the
   * snapshot is at it. The snapshot goes out at once, ahead of the queue.
   */
  reset(view: TaskView, atClaim = false): void {
    this.#answered = true;
    // `atClaim`: the snapshot is at the seq the client claimed (a task that ended there), which stays
    // claimed: that end is not re-sent to a client that said it has it (delivery rules).
    if (!atClaim) this.#claimed = 0;
    this.#cursor = view.seq;
    this.#ackable = view.seq;
    this.#ctx.writer.sendReset(view);
  }

  /** Queues a snapshot that stands for everything up to its seq. */
  snapshot(view: TaskView): void {
    this.#answered = true;
    this.#ctx.writer.pushSnapshot(view);
    if (view.seq > this.#cursor) this.#cursor = view.seq;
    if (this.#cursor > this.#ackable) this.#ackable = this.#cursor;
  }

  /** Something was queued since the latest (re)start: the subscribes it answers had their answer. */
  get answered(): boolean {
    return this.#answered;
  }

  /** The client resumes from its own cursor: events after it follow. */
  resumeAt(afterSeq: number): void {
    this.#cursor = afterSeq;
  }

  /** A free ack: it acknowledges new events of an authorized subscription (no rate-limit token). */
  ackAdvances(seq: number): boolean {
    // Bounded by what this socket was sent, not by the cursor the client claimed in its subscribe, and one
    // per frame written: a claimed `afterSeq` of a million, or one snapshot at seq a million, would
    // otherwise buy a million acks (1, 2, 3 …) outside the frame budget.
    return this.#authorized && seq > this.#acked && seq <= this.#written && this.#freeAcks > 0;
  }

  /**
   * An earlier subscription of the task on this socket, unsubscribed, may acknowledge up to `seq` (see
   * `#written`): its frames may still be on their way.
   */
  sentEarlier(seq: number, run: number | undefined): void {
    if (seq > this.#written) this.#written = seq;
    this.#ackRun = run;
  }

  /** The run of the id that the seqs sent on this socket are of (see `#ackRun`). */
  get ackRun(): number | undefined {
    return this.#ackRun;
  }

  /** Highest seq written to this socket for this task, across resubscribes. */
  get writtenSeq(): number {
    return this.#written;
  }

  /** The highest seq the client may acknowledge on this socket. */
  get ackLimit(): number {
    return Math.max(this.#ackable, this.#written);
  }

  /** Applies an ack frame's seq to the subscription's state (the caller records an advanced one). */
  ack(seq: number): AckOutcome {
    if (!this.#authorized && seq > this.#written) {
      // Authorization or the load is still running: remember it, act on it only once both succeeded.
      // A seq this socket was already sent (under an earlier, authorized stream) needs no wait: holding
      // it would lose it if an unsubscribe came before the new stream's authorization.
      if (seq > this.#pendingAck) this.#pendingAck = seq;
      return 'held';
    }
    if (seq > this.ackLimit) return 'beyond';
    if (seq <= this.#acked) return 'repeated';
    this.#acked = seq;
    if (this.#freeAcks > 0) this.#freeAcks -= 1;
    if (
      this.#terminalSeq !== undefined &&
      seq >= this.#terminalSeq &&
      this.#terminalSentAt !== undefined &&
      !this.#terminalAcked
    ) {
      this.#terminalAcked = true;
      this.#ctx.metrics.unackedTerminals.dec();
      // Thrown on, the ack never reached the store, and the client's re-ack was taken for a repeat.
      const now = this.#sampleTime();
      if (now !== undefined) {
        this.#ctx.metrics.terminalAckLatency.observe(Math.max(0, now - this.#terminalSentAt) / 1000);
      }
    }
    return 'advanced';
  }

  /**
   * A renewed credential is about to be checked against this subscription: until {@link resume}, what its
   * stream delivers is held (at most `maxQueuedFrames` deliveries and `maxQueuedBytes` of event frames
   * with the socket's queue, over all its subscriptions, and counted in its principal's
   * `maxQueuedBytesPerPrincipal`; past them the socket ends, as when its queue outgrows them). Sent on, the task's frames
   * went out while the check ran under a credential that may not watch the task, and after the replaced
   * credential had expired (its expiry is no longer enforced once a renewal is accepted). Held for the length of one store read and one `authorize` call;
   * dropped if the check refuses the task. Only an authorized subscription is held: any other is still
   * starting, and its own check uses the new credential.
   */
  suspend(): void {
    if (this.#authorized && !this.#removed && this.#held === undefined) this.#held = [];
  }

  /** A renewal's re-check of this subscription is under way (see {@link suspend}). */
  get suspended(): boolean {
    return this.#held !== undefined;
  }

  /** The re-check allowed the task: what was held goes on, in order. */
  resume(): void {
    const held = this.#held;
    this.#dropHeld();
    if (held !== undefined) for (const deliver of held) deliver();
  }

  /** Lets go of what was held for a re-check (see {@link suspend}): the socket's count of it goes down. */
  #dropHeld(): void {
    if (this.#held === undefined) return;
    this.#ctx.writer.released(this.#held.length, this.#heldBytes);
    this.#held = undefined;
    this.#heldBytes = 0;
  }

  /** See `#epochResetDue`: the reset of a new epoch is still to reach the client. */
  get epochResetDue(): boolean {
    return this.#epochResetDue;
  }

  wrote(seq: number): void {
    // The first frame after an epoch restart is its reset (the task's queue was dropped with the restart).
    this.#epochResetDue = false;
    if (seq > this.#written) this.#written = seq;
    this.#lastWritten = seq;
    this.#freeAcks += 1;
  }

  terminalSent(seq: number, text: string): boolean {
    // A client that acknowledged it, or resumed from it, has it: a snapshot re-stating it needs no retry.
    if (this.#removed || this.#acked >= seq || this.#claimed >= seq) return false;
    this.#terminalSeq = seq;
    this.#terminalFrame = text;
    // Thrown on, the frame had gone out but its re-sends were never scheduled.
    if (this.#terminalSentAt === undefined) {
      this.#terminalSentAt = this.#sampleTime();
      if (this.#terminalSentAt !== undefined) this.#ctx.metrics.unackedTerminals.inc();
    }
    return true;
  }

  /**
   * The clock's time for the terminal ack's latency sample, or `undefined` when the clock throws (one that
   * returned NaN once): that loses the sample, never the ack or the re-sends it is taken around.
   */
  #sampleTime(): number | undefined {
    try {
      return this.#ctx.clock();
    } catch {
      return undefined;
    }
  }

  terminalFrame(seq: number): string | undefined {
    return this.#terminalSeq === seq ? this.#terminalFrame : undefined;
  }

  /** Ends the subscription: its stream closes and nothing of it is sent or re-sent any more. */
  remove(): void {
    if (this.#removed) return;
    this.#reset();
    this.#pendingAck = 0;
    this.#dropHeld();
    this.#removed = true;
    this.#stream?.close();
    this.#stream = undefined;
  }

  /** Back to a fresh stream: the queue and retry state of the task start over (a held ack stays). */
  #reset(): void {
    this.#authorized = false;
    this.#answered = false;
    this.#cursor = 0;
    this.#ackable = 0;
    this.#acked = 0;
    this.#claimed = 0;
    this.#lastWritten = 0;
    if (this.#terminalSentAt !== undefined && !this.#terminalAcked) this.#ctx.metrics.unackedTerminals.dec();
    this.#terminalSeq = undefined;
    this.#terminalFrame = undefined;
    this.#terminalSentAt = undefined;
    this.#terminalAcked = false;
    this.#ctx.writer.forget(this.taskId);
  }

  /** The sink of one stream: it acts only while that stream is current. */
  #sinkOf(stream: () => TaskStream): StreamSink {
    const current = (): boolean => this.isCurrent(stream());
    /** Runs `deliver` now, or once a renewal's re-check allowed the task (see `suspend`). */
    const deliverOrHold = (deliver: () => void, events?: readonly TaskEvent[]): void => {
      if (!current()) return;
      if (this.#held === undefined) {
        deliver();
        return;
      }
      this.#held.push(() => current() && deliver());
      // Bounded with the socket's queue, over all its subscriptions, in deliveries and in bytes: a re-check
      // that never ends (an `authorize` hook that hangs; one per subscription, in turn) must not pin the
      // tasks' events without limit. Counted only, a delivery of a catch-up page or a group commit is one
      // entry however many 16 KiB items it carries: 10,000 held were 160 MB, past `maxQueuedBytes`.
      let bytes = 0;
      if (events !== undefined) for (const event of events) bytes += eventFrameBytes(event);
      this.#heldBytes += bytes;
      this.#ctx.writer.hold(bytes);
    };
    return {
      events: (events) => deliverOrHold(() => this.#events(events), events),
      snapshot: (view) =>
        deliverOrHold(() => {
          this.snapshot(view);
          this.#ctx.writer.drain();
        }),
      reset: (view) =>
        deliverOrHold(() => {
          if (this.#ctx.resets) this.reset(view);
          else {
            // Version 1 knows no reset: a snapshot below the cursor, as its subscribe's load answers one.
            this.#cursor = view.seq;
            this.snapshot(view);
          }
          this.#ctx.writer.drain();
        }),
      caughtUp: () => deliverOrHold(() => this.#ctx.writer.drain()),
      gone: () => {
        if (current()) this.#ctx.onGone(this);
      },
      restart: () => {
        if (current()) this.#ctx.onRestart(this);
      },
      failed: (error) => {
        if (current()) this.#ctx.onFailed(this, error);
      },
      internalError: (error) => this.#ctx.onInternalError(error),
      isOpen: () => this.#ctx.isOpen(),
    };
  }

  #events(events: readonly TaskEvent[]): void {
    if (events.length > 0) this.#answered = true;
    for (const event of events) {
      this.#ctx.writer.pushEvent(event, this);
      this.#cursor = event.seq;
    }
    if (this.#cursor > this.#ackable) this.#ackable = this.#cursor;
    this.#ctx.writer.drain();
  }
}
