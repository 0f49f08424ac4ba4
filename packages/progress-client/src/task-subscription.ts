import type { Clock, ProgressError, SnapshotFrame } from '@finishline/core';
import { ErrorCode } from '@finishline/core';
import type { ApplyResult } from '@finishline/core/internal';
import { FinishWatchdog, WatchCursor } from '@finishline/core/internal';
import type { AnswerWait } from './answer-wait.js';
import type { ServerCursors } from './cursor-storage.js';
import type { ReconnectPacing } from './reconnect-pacing.js';
import { Timeout, type TimerSet } from './timers.js';
import { WatchedTask } from './watched-task.js';

/**
 * One task followed by the client: the protocol bookkeeping (cursor, epoch, acks, the resubscribe state,
 * the watchdog and retry timers) behind the read-only state its {@link WatchedTask} shows the handles.
 * `ProgressClient` decides what to send; each step it takes goes through a method here, so the rules of
 * one subscription (when a gap needs a resync, which seq may be acknowledged, when the socket is done
 * with the task) sit in one place.
 *
 * @internal
 * @module
 */

/**
 * The client's options a {@link TaskSubscription} reads (its resolved options fit): the clock, the 100%
 * watchdog's `finishTimeoutMs`, the rate window, and the cursor storage a view saved before a page reload
 * is read from. (How long a subscribe may go unanswered comes from the host's {@link AnswerWait}.)
 *
 * @internal
 */
export interface TaskSubscriptionOptions {
  clock: Clock;
  finishTimeoutMs: number;
  rateWindowMs: number;
  storage: ServerCursors | undefined;
}

/** What every {@link TaskSubscription} of one client shares with it, made once per client. @internal */
export interface TaskSubscriptionHost {
  timers: TimerSet;
  /** How long a subscribe may go unanswered, learned from the client's answered subscribes. */
  answerWait: AnswerWait;
  /** The 100% watchdog fired: the task sits at 100% without a terminal state (see {@link armWatchdog}). */
  onStuck(task: TaskSubscription, action: StuckAction): void;
  /**
   * Subscribe again from the cursor: a subscribe got no answer within its wait, a gap was not filled by
   * the answer it was waiting for, or a heartbeat shows the cursor behind (or the task no longer followed).
   */
  resync(task: TaskSubscription): void;
}

/**
 * Error codes after which a watch cannot go on: the task is not there, or not for this principal.
 * @internal
 */
export const FATAL_TASK_ERRORS: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  ErrorCode.Forbidden,
  ErrorCode.TaskNotFound,
]);

/** The 100% watchdog's escalation steps. @internal */
export type StuckAction = 'resync' | 'reconnect' | 'http';

/** @internal */
export class TaskSubscription {
  // `declare`: the constructor sets them; without it, the bundle defines each as a field first too.
  declare readonly taskId: string;
  /** The state and handles the application sees. */
  declare readonly task: WatchedTask;
  declare readonly cursor: WatchCursor;
  readonly #clock: Clock;
  readonly #watchdog: FinishWatchdog;
  readonly #watchdogTimer: Timeout;
  readonly #behindTimer: Timeout;
  readonly #retryTimer: Timeout;
  readonly #answerTimer: Timeout;
  readonly #host: TaskSubscriptionHost;
  /** Bound once: the watchdog is re-armed after every delivered frame. */
  readonly #checkWatchdog = (): void => {
    const action = this.#watchdog.check();
    if (action !== 'none') this.#host.onStuck(this, action);
    if (!this.#failed && !this.#released) this.armWatchdog();
  };
  /** Highest seq acknowledged to a server. */
  #ackedSeq = 0;
  /** Highest seq saved to the cursor storage. */
  #savedSeq = 0;
  /** The store epoch the cursor's seq belongs to, when known (from `hello`, or saved with the cursor). */
  #epoch: string | undefined;
  /**
   * Set once the epoch is renewed after the watch finished: its seq in the new epoch, 0 until a snapshot
   * gives it. The cursor stays finished at the old epoch's seq, which the server no longer knows: an ack
   * of it would be refused (above the task's seq) or too low to stop the terminal frame's re-sends.
   */
  #renewedSeq: number | undefined;
  /** The `afterSeq` of a subscribe sent and not yet answered; suppresses repeats for the same gap. */
  #resyncFrom: number | undefined;
  /** When that subscribe was sent (clock ms). */
  #resyncSentAt = 0;
  /** Latest seq a heartbeat reported. */
  #behindTarget = 0;
  /** A frame about this task arrived since the latest subscribe went out. */
  #answered = false;
  /** Consecutive error frames about this task, for the retry backoff. */
  #retries = 0;
  /** Subscribes in a row that went unanswered for their whole wait: the next waits 2^this longer. */
  #unanswered = 0;
  /** Terminal acknowledged and unsubscribed: the socket has nothing more to do for this task. */
  #socketDone = false;
  /** Ended by a fatal error. */
  #failed = false;
  /** The last handle closed: the client follows the task no more. */
  #released = false;
  /** An HTTP catch-up is running. */
  httpBusy = false;
  /**
   * The pace of reopening its fallback stream, the socket's own (`fallback-streams.ts`), kept as long as the
   * watch is. Declared only: nothing in the client's core entry for a field the SSE entry alone sets.
   */
  declare pacing?: ReconnectPacing;

  constructor(taskId: string, options: TaskSubscriptionOptions, host: TaskSubscriptionHost) {
    this.taskId = taskId;
    this.#clock = options.clock;
    this.#host = host;
    this.cursor = new WatchCursor(taskId);
    this.#watchdog = new FinishWatchdog(options.clock, { stuckAfterMs: options.finishTimeoutMs });
    this.#watchdogTimer = new Timeout(host.timers);
    this.#behindTimer = new Timeout(host.timers);
    this.#retryTimer = new Timeout(host.timers);
    this.#answerTimer = new Timeout(host.timers);
    this.task = new WatchedTask(this.cursor, options, host.timers);
    // A view saved before a page reload, already validated, with its epoch.
    const restored = options.storage?.restore(taskId);
    if (restored !== undefined) {
      this.#epoch = restored.epoch;
      // Silent: no handle exists yet; each gets the restored state through its replay.
      this.task.restore(this.cursor.applySnapshot(restored.task).delivered, this.cursor.view);
      this.#savedSeq = this.cursor.seq;
    }
  }

  get epoch(): string | undefined {
    return this.#epoch;
  }
  /** The seq the server knows this watch at: what it subscribes from and acknowledges. */
  get seq(): number {
    return this.#renewedSeq ?? this.cursor.seq;
  }
  /**
   * Nothing left to subscribe for: finished, and its latest subscribe answered. A finished watch still
   * subscribes to acknowledge its terminal (it finished over HTTP, or before its ack went out, or before
   * its epoch was renewed); that subscribe is repeated like any other until answered.
   */
  get settled(): boolean {
    return this.cursor.finished && this.#answered;
  }
  /** Terminal acknowledged and unsubscribed. */
  get socketDone(): boolean {
    return this.#socketDone;
  }
  /** A frame about this task arrived since the latest subscribe went out. */
  get answered(): boolean {
    return this.#answered;
  }
  get failed(): boolean {
    return this.#failed;
  }
  /** The socket still has work for this task (it is neither done nor failed). */
  get wantsSocket(): boolean {
    return !this.#socketDone && !this.#failed;
  }

  /**
   * A subscribe from the cursor went out: until a frame answers it, acks above it may be refused. The
   * server answers every subscribe (a snapshot, events, or an error), so one that stays unanswered for
   * the wait was lost, or its answer was: it is sent again then, not only after a heartbeat that no
   * longer lists the task (1–2 heartbeat intervals later: 2 s in the chaos suite, up to 30 s with the
   * production default of 15 s).
   */
  subscribed(): void {
    // (It went out: a retry still waiting for a refused one's backoff would only repeat it.)
    this.#retryTimer.clear();
    this.#resyncFrom = this.cursor.seq;
    this.#resyncSentAt = this.#clock();
    this.#answered = false;
    const wait = this.#host.answerWait;
    const doublings = wait.doublings(this.#unanswered);
    const waitMs = wait.ms(doublings);
    // 0 (`behindGraceMs: 0`) turns the repeat off: it would repeat the subscribe every turn until answered.
    if (waitMs <= 0) return;
    this.#answerTimer.set(waitMs, () => {
      if (this.#answered || !this.wantsSocket || this.settled) return;
      this.#unanswered += 1;
      wait.unanswered(doublings);
      this.#host.resync(this);
    });
  }

  /** True when the latest subscribe went out at least `graceMs` ago (a heartbeat did not cross it). */
  #subscribeOlderThan(graceMs: number): boolean {
    return this.#clock() - this.#resyncSentAt >= graceMs;
  }

  /** A frame about this task arrived; true when it is the first since the latest subscribe. */
  answer(): boolean {
    const first = !this.#answered;
    this.#answered = true;
    if (first) {
      // Only a subscribe sent once times the answer: after a repeat, which copy was answered is unknown.
      if (this.#unanswered === 0 && this.#resyncFrom !== undefined)
        this.#host.answerWait.answered(this.#clock() - this.#resyncSentAt);
      this.#unanswered = 0;
      this.#answerTimer.clear();
    }
    return first;
  }

  /**
   * A gap in `result`: resync now, unless a resync from the same seq went out less than `graceMs` ago
   * (frames already in flight when it went out arrive with the same gap: one resync per gap, unless its
   * answer is overdue, lost too); then once that answer is overdue, if the gap is still there. Waiting for
   * the next gapped frame instead left the watch stuck until the server's next terminal re-send (700 ms,
   * then 1.5 s after the first send) or the next heartbeat.
   */
  onGap(result: ApplyResult, graceMs: number): void {
    if (!result.gap) return;
    if (this.#resyncFrom !== result.resyncFrom || this.#subscribeOlderThan(graceMs)) {
      this.#host.resync(this);
      return;
    }
    this.#behind((result.resyncFrom ?? this.cursor.seq) + 1, graceMs);
  }

  /** Something was delivered: the pending resync (if any) was answered, and the error backoff resets. */
  delivered(): void {
    this.#resyncFrom = undefined;
    this.#retries = 0;
  }

  /**
   * The socket was lost: nothing sent on it is pending any more (the next `hello` subscribes again). A
   * terminal ack sent on it is owed again: the heartbeat that lets go of the task (the server no longer
   * follows it) has not come, so it may have been lost with the socket (a leader tab that died before
   * relaying it, a connection cut with it unread). Until 6 December 2026 it was lost for good: the next
   * `hello` subscribes the task again, and its answer is acknowledged.
   */
  down(): void {
    this.#resyncFrom = undefined;
    this.#behindTimer.clear();
    this.#answerTimer.clear();
    if (this.#socketDone) {
      this.#socketDone = false;
      this.#ackedSeq = 0;
    }
  }

  /**
   * A snapshot arrived: a reset starts over; the epoch it announces (if any) is the cursor's; a watch
   * finished before the epoch was renewed takes its seq as its seq in the new epoch.
   */
  snapshot(frame: SnapshotFrame): void {
    if (frame.reset) this.startOver();
    if (frame.epoch !== undefined) this.#epoch = frame.epoch;
    if (this.#renewedSeq !== undefined) this.#renewedSeq = frame.task.seq;
  }

  /**
   * The store epoch of the latest `hello` (`undefined` before one carried an epoch: nothing to adopt).
   * Seqs of another epoch mean nothing in this one: such a cursor starts over.
   */
  adoptEpoch(epoch: string | undefined): void {
    if (epoch === undefined) return;
    if (this.#epoch !== undefined && this.#epoch !== epoch) this.startOver();
    this.#epoch = epoch;
  }

  /**
   * The cursor is meaningless (another epoch, or the server reset it): back to seq 0, with the ack and
   * save bookkeeping, so the next snapshot is accepted and its seq acknowledged and saved even if lower.
   * A finished watch stays finished (and keeps what it saved): only the seq it gives the server restarts.
   */
  startOver(): void {
    this.#ackedSeq = 0;
    if (this.cursor.finished) this.#renewedSeq = 0;
    else {
      this.cursor.restart();
      this.#savedSeq = 0;
      this.#behindTarget = 0;
      this.#resyncFrom = undefined;
    }
  }

  /**
   * A heartbeat from the server, which lists the task at seq `latest`. `undefined`: the server does not
   * (or no longer) follow the task for this client, so resync (subscribe again from the cursor), unless
   * a subscribe went out less than `graceMs` ago and the heartbeat crossed it. A cursor behind gets
   * `graceMs` for the frames in flight, then a resync. Nothing while a refused subscribe waits out its
   * backoff: its retry subscribes from the cursor anyway, and a heartbeat every interval would not
   * let a server out of store or over its rate limit breathe. True when the client may let go of the task:
   * its end acknowledged, and the server no longer follows it (so re-sends no terminal frame to acknowledge).
   */
  heartbeat(latest: number | undefined, graceMs: number): boolean | undefined {
    if (this.#socketDone) return latest === undefined;
    if (this.cursor.finished || this.#retryTimer.pending) return;
    if (latest === undefined) {
      if (this.#subscribeOlderThan(graceMs)) this.#host.resync(this);
    } else if (this.cursor.isBehind(latest)) this.#behind(latest, graceMs);
  }

  /**
   * The server has the task at `latest`, ahead of the cursor. A heartbeat follows every frame the server
   * sent before it (it is sent only when nothing is queued), so without a subscribe of the last
   * `graceMs` the missing frames were lost: resync at once. A recent subscribe's answer may still be on
   * its way (the heartbeat may have crossed it): resync when that answer is overdue, if the cursor is
   * still behind. (A fixed `graceMs` from the heartbeat cost up to a second more per lost frame.)
   */
  #behind(latest: number, graceMs: number): void {
    this.#behindTarget = Math.max(this.#behindTarget, latest);
    if (this.#behindTimer.pending) return;
    const overdueInMs = this.#resyncSentAt + graceMs - this.#clock();
    if (overdueInMs <= 0) {
      this.#host.resync(this);
      return;
    }
    this.#behindTimer.set(overdueInMs, () => {
      if (this.cursor.isBehind(this.#behindTarget)) this.#host.resync(this);
    });
  }

  /** Terminal acks go at once; others once `every` events wait, or when the ack timer fires. */
  ackDue(every: number): boolean {
    return this.cursor.finished || this.cursor.seq - this.#ackedSeq >= every;
  }

  /**
   * The seq to acknowledge now, if any: nothing while the server has not answered the latest subscribe
   * (it may not accept acks up to the cursor yet), nor once the socket is done with the task.
   */
  ackable(): number | undefined {
    if (this.#socketDone || !this.#answered || this.seq <= this.#ackedSeq) return undefined;
    return this.seq;
  }

  /** `seq` was sent in an ack. */
  acked(seq: number): void {
    this.#ackedSeq = seq;
  }

  /** The terminal seq is acknowledged (or the server stopped following): unsubscribe-ready. */
  get readyToUnsubscribe(): boolean {
    return !this.#socketDone && this.#answered && this.cursor.finished && this.seq <= this.#ackedSeq;
  }

  /** Saves the cursor when it moved since the last save. */
  save(storage: ServerCursors): void {
    if (this.cursor.seq > this.#savedSeq && storage.saveView(this.task.state, this.#epoch))
      this.#savedSeq = this.cursor.seq;
  }

  /** The terminal ack and the unsubscribe went out: the socket has nothing more to do here. */
  done(): void {
    this.#socketDone = true;
    this.#clearTimers();
  }

  /** An error frame about this task: retry after the delay `delayOf(retries so far)` gives. */
  retryAfterError(delayOf: (retries: number) => number, retry: () => void): void {
    this.#resyncFrom = undefined;
    // The error answered the subscribe; the retry below paces the next one (a heartbeat's resync too).
    this.#answerTimer.clear();
    this.#behindTimer.clear();
    this.#retryTimer.set(delayOf(this.#retries++), retry);
  }

  /**
   * Re-arms the 100% watchdog after a change: `onStuck` runs with the watchdog's action when the task
   * sits at 100% without a terminal state for too long, and again at every later step.
   */
  armWatchdog(): void {
    this.#watchdog.observe(this.cursor.view);
    const at = this.#watchdog.nextCheckAt();
    if (at === undefined) this.#watchdogTimer.clear();
    else this.#watchdogTimer.set(at - this.#clock(), this.#checkWatchdog);
  }

  /** Ends every handle with a fatal error (none for a finished task: see {@link WatchedTask.fail}). */
  fail(error: ProgressError | undefined, emitError: boolean): void {
    this.#failed = true;
    this.#clearTimers();
    this.task.fail(error, emitError);
  }

  /** The last handle closed: no timer of this task runs again. */
  release(): void {
    this.#released = true;
    this.#clearTimers();
  }

  /** Cancels this task's timers. */
  #clearTimers(): void {
    this.#watchdogTimer.clear();
    this.#behindTimer.clear();
    this.#retryTimer.clear();
    this.#answerTimer.clear();
  }
}
