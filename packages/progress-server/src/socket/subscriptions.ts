/**
 * The subscriptions of one socket: subscribe (caps, load, authorization, where the stream starts),
 * unsubscribe, acks, and the re-check of every subscription after a token renewal.
 *
 * @module
 */
import type { AckFrame, ProtocolVersion, SubscribeFrame, Task } from '@finishline/core';
import { ErrorCode, isProgressError, ProgressError, toTaskView } from '@finishline/core';
import type { Principal } from '../auth.js';
import { clientError, isStoreFailure } from '../client-message.js';
import { describeError } from '../logger.js';
import { missingTask, taskNotFoundMessage } from '../tasks/task-not-found.js';
import { delay, settledWithin } from '../wait.js';
import type { SocketServices } from './services.js';
import type { FrameRefs, SocketWriter } from './socket-writer.js';
import { Subscription } from './subscription.js';

/**
 * Most subscribes one start answers (see `#join`): a tab-sharing leader sends one per tab that watches the
 * task, and no browser runs this many tabs of one app; a client sending more (distinct ids for one task
 * while it loads) is broken or hostile, and its oldest ids go unanswered, to be asked again.
 */
const MAX_WAITING_SUBSCRIBES = 64;

/** The subscribes a start answers, by their id (insertion order: the latest last). */
type WaitingSubscribes = Map<string | undefined, FrameRefs & { taskId: string }>;

/** What the subscriptions need from their socket. */
export interface SubscriptionsContext<P extends Principal>
  extends Omit<SocketServices<P>, 'epoch' | 'roundTrips'> {
  readonly writer: SocketWriter;
  readonly connectionId: number;
  readonly version: ProtocolVersion;
  /** The socket's principal (the socket is open). */
  principal(): P;
  isOpen(): boolean;
  /** Whether the principal's credential is still in force; once it expired, the socket ends (`AuthGate.inForce`). */
  inForce(): boolean;
  /** A handler failed: logged, counted and answered as internal. */
  internalError(error: unknown, requestId?: string, taskId?: string): void;
}

/** The subscriptions of one socket, keyed by task id. */
export class Subscriptions<P extends Principal> {
  readonly #ctx: SubscriptionsContext<P>;
  readonly #subs = new Map<string, Subscription>();
  /**
   * Tasks this socket unsubscribed from lately, each with the highest seq it may still acknowledge (what
   * it was sent, when the subscription was authorized; else 0) and the run of the id those seqs are of. A
   * late ack of theirs is expected, not an error, and one up to that seq is recorded while the id is still
   * that run (see `AckWriter.ackOfRun`).
   */
  readonly #unfollowed = new Map<string, { limit: number; run: number | undefined }>();
  /**
   * The store's epoch changed since this socket's `hello`: the client holds cursors of the old epoch,
   * except for the tasks in `#told`.
   */
  #renewed = false;
  /**
   * Tasks whose ended subscription had written a frame of the new epoch (the client adopted it from the
   * snapshot). Any other task's next subscribe with a cursor is answered by a reset: its cursor may be
   * of the old epoch (a subscription whose reset never went out, a cursor the client persisted). Bounded
   * like `#unfollowed`; a task dropped from it only costs a needless reset.
   */
  readonly #told = new Set<string>();
  /**
   * The subscribe frames each subscription's latest (re)start answers, the latest last: the one that
   * started it, each one that joined it while it loaded (see `#join`), and those an unanswered earlier
   * start carried over (see `#start`).
   */
  readonly #refs = new WeakMap<Subscription, WaitingSubscribes>();
  /** A re-check of the subscriptions runs (see {@link recheck}). */
  #rechecking = false;
  /** The principal of the latest renewal, whose re-check waits for the one under way. */
  #recheckNext: P | undefined;
  /** The `afterSeq` of each subscription's latest (re)start. */
  readonly #startedFrom = new WeakMap<Subscription, number>();
  /** Subscriptions whose latest start resumed from the client's cursor (no snapshot answered it). */
  readonly #resumed = new WeakSet<Subscription>();

  constructor(ctx: SubscriptionsContext<P>) {
    this.#ctx = ctx;
  }

  get size(): number {
    return this.#subs.size;
  }

  /** The subscription of `taskId`, if the socket follows it. */
  get(taskId: string): Subscription | undefined {
    return this.#subs.get(taskId);
  }

  /** The seqs a heartbeat reports, per followed task. */
  heartbeatSeqs(written = false): Record<string, number> {
    const seqs: Record<string, number> = {};
    for (const sub of this.#subs.values()) {
      seqs[sub.taskId] = written ? sub.writtenHeartbeatSeq : sub.heartbeatSeq;
    }
    return seqs;
  }

  async subscribe(frame: SubscribeFrame): Promise<void> {
    const { taskId, afterSeq } = frame;
    const { metrics } = this.#ctx;
    const refs = { ...(frame.id === undefined ? {} : { requestId: frame.id }), taskId };
    let sub = this.#subs.get(taskId);
    if (sub === undefined) {
      sub = this.#add(taskId, refs);
      if (sub === undefined) return;
      if (afterSeq > 0 && this.#renewed && !this.#told.has(taskId)) {
        await this.#start(sub, 0, refs, true);
        return;
      }
    } else if (sub.epochResetDue) {
      // The server restarted it for a new epoch and the reset has not gone out: this subscribe was sent
      // before the client could know, its cursor is of the old epoch. Resumed from it, the new epoch's
      // events would land on the old epoch's state; the reset answers it instead (the one under way, if
      // it is still loading).
      if (this.#stillLoading(sub, 0)) {
        this.#join(sub, refs);
        return;
      }
      await this.#start(sub, 0, refs, true);
      return;
    } else if (this.#stillLoading(sub, afterSeq)) {
      // The same subscribe again before anything was sent for the previous one (a client repeating a
      // subscribe it got no answer to yet, or a duplicated frame): the answer under way is this one's
      // too. A restart would drop its place in the principal's read queue and queue it again at the
      // back, so under load a client that repeats its subscribe would only wait longer (loaded chaos
      // runs saw subscribes unanswered for up to 4.9 s).
      this.#join(sub, refs);
      return;
    } else {
      // A resubscribe restarts the stream from the client's new cursor.
      metrics.resyncs.inc({ reason: 'resubscribe' });
    }
    await this.#start(sub, afterSeq, refs, false);
  }

  /**
   * A subscribe answered by the (re)start under way. Its id joins the ids that start answers, once: a
   * tab-sharing leader sends each tab's subscribe with that tab's id on one socket, and routes a refusal
   * to the tab it names, so a refusal naming only the first would leave the other tabs unanswered until
   * they asked again.
   */
  #join(sub: Subscription, refs: FrameRefs & { taskId: string }): void {
    const waiting: WaitingSubscribes = this.#refs.get(sub) ?? new Map();
    this.#refs.set(sub, waiting);
    // Deleted first, so that a repeated id moves to the end (the latest).
    waiting.delete(refs.requestId);
    waiting.set(refs.requestId, refs);
    if (waiting.size > MAX_WAITING_SUBSCRIBES) waiting.delete(waiting.keys().next().value);
  }

  /** The subscribes `sub`'s latest start answers, the latest last. */
  #waiting(sub: Subscription): (FrameRefs & { taskId: string })[] {
    return [...(this.#refs.get(sub)?.values() ?? [])];
  }

  /**
   * The store's epoch changed under the server (restored from a backup): every cursor and every seq this
   * socket was told belong to the old epoch. Each subscription starts over, as a subscribe from seq 0
   * would, answered by a snapshot of the task in the new epoch marked `reset` (version 2), so the client
   * drops its cursor whatever the seqs. Call it after the hub forgot the old seqs.
   */
  epochRenewed(): void {
    // What this socket may still acknowledge of tasks it left was counted in the old epoch's seqs.
    this.#unfollowed.clear();
    this.#renewed = true;
    this.#told.clear();
    for (const sub of [...this.#subs.values()]) {
      this.#ctx.metrics.resyncs.inc({ reason: 'epoch' });
      this.#start(sub, 0, { taskId: sub.taskId }, true).catch((error: unknown) =>
        this.#ctx.internalError(error, undefined, sub.taskId),
      );
    }
  }

  /**
   * (Re)starts `sub`'s stream from `afterSeq`: load, authorization, then where the stream starts. `renewed`:
   * the server restarts it because the store's epoch changed, and the answer is a reset snapshot.
   */
  async #start(sub: Subscription, afterSeq: number, refs: FrameRefs, renewed: boolean): Promise<void> {
    const { options, metrics, writer } = this.#ctx;
    const taskId = sub.taskId;
    // Nothing goes out before a start is authorized, and a refusal only before: the subscribes an
    // unauthorized start was answering are still waiting, and this start answers them too (a tab whose
    // cursor differs from the one that restarted it would otherwise hear its refusal only when it asked
    // again). Once authorized, they had their answer.
    if (sub.authorized) this.#refs.delete(sub);
    this.#join(sub, { ...refs, taskId });
    this.#startedFrom.set(sub, afterSeq);
    this.#resumed.delete(sub);
    const current = sub;
    const stream = current.restart(afterSeq, renewed);
    const task = await stream.load().catch((error: unknown) => {
      if (current.isCurrent(stream)) this.#fail(current, error);
      return null;
    });
    if (task === null || !current.isCurrent(stream)) return;
    // Not found and not allowed cost the same single read and carry no task data; unless the
    // application opted into `revealTaskExistence`, they are the very same answer (no existence oracle),
    // sent after the same `authorize` call: a missing task's is asked about a stand-in (see `missingTask`).
    let allowed = false;
    try {
      if (task !== undefined) allowed = await this.#mayWatch(task);
      else if (!this.#ctx.options.revealTaskExistence) await this.#mayWatch(missingTask(taskId));
    } catch (error) {
      // The hook did not answer in time: this subscribe, and the repeats joined to it, get `timeout`.
      if (current.isCurrent(stream)) this.#fail(current, error);
      return;
    }
    if (task === undefined || !allowed) {
      if (current.isCurrent(stream)) this.#refuse(current, task, this.#waiting(current));
      return;
    }
    // An answer that came once the credential expired authorizes nothing: no snapshot goes out (the writer
    // asks the same), and no ack held for the authorization is recorded.
    if (!current.isCurrent(stream) || !this.#ctx.inForce()) return;
    const held = current.authorize(task.seq, task.createdAt);
    // An ack held across an epoch change acknowledges a seq of the old epoch: nothing to record.
    if (held > 0 && !renewed) this.ack({ type: 'ack', taskId, seq: held });
    writer.track({ id: task.id, kind: task.kind, createdAt: task.createdAt });
    if (afterSeq > 0) metrics.resumes.inc();
    const backlog = task.seq - afterSeq;
    const view = toTaskView(task);
    // A cursor at the seq a finished task ended at: in one run, a watch there has that end (it applied the
    // terminal frame) or knows only the seq (resumed from a persisted cursor), and the snapshot changes
    // nothing for either. A cursor of an earlier run of the id (purged by retention and created again,
    // the watcher away meanwhile) is unfinished there: an unmarked snapshot at its own seq is stale to a
    // client that applied frames (rule 3), and the watch waited for ever on a task that had ended. Marked
    // `reset`, it is applied (a cursor carries no run; only the end tells such a cursor apart, so one of a
    // running task at its seq resumes as before). Still not re-sent: the client claimed that seq.
    const endedAtCursor = afterSeq > 0 && backlog === 0 && view.status !== 'running';
    if ((backlog < 0 || renewed || endedAtCursor) && this.#ctx.version >= 2) {
      // No event will ever be above the client's cursor, or its seqs are of another epoch: it must drop it.
      if (!renewed && backlog < 0) metrics.resyncs.inc({ reason: 'cursor_ahead' });
      current.reset(view, endedAtCursor);
      stream.start(view.seq, view.status !== 'running', task.seq, task.createdAt);
    } else if (afterSeq === 0 || backlog <= 0 || backlog > options.maxReplayEvents) {
      if (afterSeq > 0 && backlog > options.maxReplayEvents) metrics.resyncs.inc({ reason: 'replay_limit' });
      current.snapshot(view);
      stream.start(view.seq, view.status !== 'running', task.seq, task.createdAt);
    } else {
      this.#resumed.add(current);
      current.resumeAt(afterSeq);
      stream.resume(afterSeq, task.seq, task.createdAt);
    }
    // The snapshot goes now, not when the catch-up just started has read what followed it: a slow read
    // held it in the queue, and with it every heartbeat (sent only when nothing is queued), until the
    // client's watchdog closed the socket. A catch-up with nothing to read has drained already.
    writer.drain();
  }

  /**
   * Whether the socket's principal may watch `task`, with the credential in force once the check ends. A
   * renewal's re-check skips the subscriptions not authorized yet, so a check that ran with the credential
   * it replaced is made again with the new one: otherwise the renewal left the subscription followed
   * under a credential that may not watch the task.
   */
  async #mayWatch(task: Task): Promise<boolean> {
    for (;;) {
      const principal = this.#ctx.principal();
      const allowed = await this.#authorizeInTime(principal, task);
      if (!allowed || this.#ctx.principal() === principal) return allowed;
    }
  }

  /**
   * The `authorize` hook's answer, within the server's `upgradeTimeoutMs` (the bound of the same hook on
   * an HTTP request, answered 504 there); past it, a `timeout` ProgressError. Unbounded, a hook that never
   * answered (an auth backend down, a call without a timeout) left the subscribe unanswered, and the
   * repeats the client sends of an unanswered subscribe joined it (delivery rule 1): the watch waited
   * for ever, as did a followed task held by a renewal's re-check.
   */
  async #authorizeInTime(principal: P, task: Task): Promise<boolean> {
    const answer = await settledWithin<boolean | 'timeout'>(
      this.#ctx.auth.authorize(principal, task, 'watch'),
      this.#ctx.options.upgradeTimeoutMs,
      'timeout',
    );
    if (answer !== 'timeout') return answer;
    // Counted as the HTTP API's 504 of the same hook is; `#fail` logs it.
    this.#ctx.metrics.handlerErrors.inc();
    throw new ProgressError(
      ErrorCode.Timeout,
      `The check of task ${task.id} did not answer in time; try again`,
    );
  }

  /**
   * `sub` was (re)started from `afterSeq` and nothing was sent for it yet: its task is still loading, or
   * it resumed from the client's cursor and its catch-up has not queued anything yet (its snapshot-less
   * start sends nothing before, and the catch-up always ends with an answer: see `TaskStream.resume`).
   * Asked by what was queued, not by the cursor: a resume answered by a snapshot at its own seq leaves
   * the cursor where it was, and a repeat then joined an answer already sent, to wait for ever.
   */
  #stillLoading(sub: Subscription, afterSeq: number): boolean {
    const stream = sub.currentStream;
    if (stream === undefined || !sub.isCurrent(stream) || this.#startedFrom.get(sub) !== afterSeq)
      return false;
    return !sub.authorized || (this.#resumed.has(sub) && !sub.answered);
  }

  unsubscribe(taskId: string): void {
    const sub = this.#subs.get(taskId);
    if (sub === undefined) return;
    this.#removeKeepingLateAcks(sub);
  }

  /**
   * Removes `sub` but keeps accepting (silently, recorded) acks of what this socket was sent for it: frames
   * already in flight may be acknowledged after the removal (a client `unsubscribe`, or a resubscribe whose
   * load failed while the previous answer was on its way).
   */
  #removeKeepingLateAcks(sub: Subscription): void {
    const taskId = sub.taskId;
    // A renewal's re-check of it is under way (left by the client, or its read or hook failed): the new
    // credential was not found to allow the task, and acks sent under it are not recorded, as `recheck`
    // ends the allowance of the tasks left before it. (Kept, they were.)
    if (sub.suspended) {
      this.remove(sub);
      return;
    }
    // Taken before the removal resets the subscription.
    const ackLimit = sub.authorized ? sub.ackLimit : sub.writtenSeq;
    this.remove(sub);
    // Bounded: the oldest unsubscribed id goes first once the socket's subscription cap is reached.
    this.#unfollowed.delete(taskId);
    this.#unfollowed.set(taskId, { limit: ackLimit, run: sub.ackRun });
    if (this.#unfollowed.size > this.#ctx.options.maxSubscriptionsPerSocket) {
      const oldest = this.#unfollowed.keys().next().value;
      if (oldest !== undefined) this.#unfollowed.delete(oldest);
    }
  }

  /** A free ack: it acknowledges new events of an authorized subscription (no rate-limit token). */
  ackAdvances(frame: AckFrame): boolean {
    return this.#subs.get(frame.taskId)?.ackAdvances(frame.seq) === true;
  }

  ack(frame: AckFrame): void {
    const sub = this.#subs.get(frame.taskId);
    if (sub === undefined) {
      // Acks of tasks the socket never followed never reach the store, so a socket cannot mark another
      // owner's events processed; they are answered (not counted as invalid), so the client learns that
      // nothing was recorded. A late ack after an unsubscribe is a normal race (the re-ack of a terminal
      // frame re-sent before the unsubscribe arrived): silent, and recorded up to what this socket was
      // sent while authorized. It can be the only ack that arrives: the full chaos run lost terminal acks
      // whose first copy was dropped and whose re-ack came behind the unsubscribe.
      const left = this.#unfollowed.get(frame.taskId);
      if (left !== undefined) {
        // The id may be another run's by now, of another owner too: recorded only while it is the run sent.
        if (frame.seq <= left.limit) this.#ctx.acks.ackOfRun(frame.taskId, frame.seq, left.run);
        return;
      }
      this.#ctx.metrics.framesRejected.inc({ code: ErrorCode.InvalidInput });
      this.#ctx.writer.sendError(
        ErrorCode.InvalidInput,
        `ack ignored: this socket does not follow task ${frame.taskId}`,
        { taskId: frame.taskId },
      );
      return;
    }
    const limit = sub.ackLimit;
    switch (sub.ack(frame.seq)) {
      case 'beyond':
        // Answered, not counted toward `maxInvalidFrames`: a correct client sends such acks one round
        // trip behind a restart of the task's stream (the acks of the old epoch's frames it applied
        // before reading the reset snapshot of a restored store), and rule 5's answer is "resync the
        // task", not a disconnect. It paid its frame's rate-limit token, which bounds a flood of them.
        this.#ctx.metrics.framesRejected.inc({ code: ErrorCode.InvalidInput });
        this.#ctx.writer.sendError(
          ErrorCode.InvalidInput,
          `ack of seq ${frame.seq} is beyond the last seq sent on this socket (${limit})`,
          { taskId: frame.taskId },
        );
        return;
      case 'advanced':
        if (sub.authorized) this.#ctx.acks.ack(frame.taskId, frame.seq, sub.ackRun);
        // Of what an earlier stream sent, while the new one loads: the id may be another run's by now.
        else this.#ctx.acks.ackOfRun(frame.taskId, frame.seq, sub.ackRun);
        // After the store's record: the re-sends' bookkeeping reads the clock, which may throw (one that
        // returned NaN once), and the ack, taken already, would not come again.
        this.#ctx.writer.acked(frame.taskId, frame.seq);
        return;
      default:
        return;
    }
  }

  /**
   * Drops the subscriptions `principal` may no longer watch, with the answer a subscribe would get, and
   * the late-ack allowances of the tasks the socket left. One
   * re-check at a time: a renewal during one waits for it, and only the latest waits (its credential is
   * the one in force). Each re-check reads every subscription's task; one per renewal, all at once, made
   * a client renewing within its frame rate read the store a hundred times as often as the rate allows.
   */
  async recheck(principal: P): Promise<void> {
    // The late-ack allowances of tasks the socket left were granted under the credential just replaced,
    // which the new one may not share: kept, acks sent under a credential that may not watch the task were
    // recorded (and a subscribe of it again took them before its refusal). Re-checking them would cost a
    // store read each; what is lost is an operator's mark of a re-ack racing the renewal (acks sent before
    // the `auth` frame were handled before it took effect).
    this.#unfollowed.clear();
    // Nothing more of a followed task goes out until the new credential is found to allow it; those
    // already re-checked under the credential this one replaces are checked again.
    for (const sub of this.#subs.values()) sub.suspend();
    // And what the socket's queue holds of them already (see `SocketWriter.holdQueued`).
    this.#ctx.writer.holdQueued();
    this.#recheckNext = principal;
    if (this.#rechecking) return;
    this.#rechecking = true;
    try {
      let next: P | undefined = principal;
      while (next !== undefined) {
        this.#recheckNext = undefined;
        await this.#recheckAll(next);
        next = this.#recheckNext;
      }
    } finally {
      this.#rechecking = false;
      this.#ctx.writer.releaseQueued();
    }
  }

  async #recheckAll(principal: P): Promise<void> {
    for (const sub of [...this.#subs.values()]) {
      if (!sub.authorized) continue;
      const stream = sub.currentStream;
      if (stream === undefined) continue;
      if (!(await this.#payRecheck())) return;
      // Left, or started again (authorized afresh), while the re-check waited for its token.
      if (this.#subs.get(sub.taskId) !== sub || !sub.isCurrent(stream)) continue;
      let task: Task | undefined | null;
      try {
        task = await stream.load();
      } catch (error) {
        // Fail closed, one subscription at a time: the others are still re-checked. The client resubscribes
        // (store_unavailable is retried with backoff) and is authorized again then.
        if (sub.isCurrent(stream)) this.#fail(sub, error);
        continue;
      }
      if (task === null || !sub.isCurrent(stream)) continue;
      let allowed = false;
      try {
        allowed = task !== undefined && (await this.#authorizeInTime(principal, task));
      } catch (error) {
        // Not answered in time: the subscription ends with `timeout`, and the client resubscribes.
        if (sub.isCurrent(stream)) this.#fail(sub, error);
        continue;
      }
      if (allowed) {
        // Unless a newer renewal came meanwhile: its re-check, next, decides.
        if (this.#recheckNext === undefined) sub.resume();
        continue;
      }
      if (sub.isCurrent(stream)) this.#refuse(sub, task, [{ taskId: sub.taskId }]);
    }
  }

  /**
   * Takes a token of the principal's frame budget for one subscription's re-check, waiting for the budget
   * to refill when it is empty; `false` once the socket closed. A re-check reads the task and asks
   * `authorize`, the work of a subscribe, which pays a token: unpaid, an `auth` frame (one token) re-checked
   * up to `maxSubscriptionsPerSocket` subscriptions, and renewals sent as each re-check ended (coalescing
   * only merges those that arrive during one) made 113,000 store reads and `authorize` calls in 3 s for
   * 1,170 tokens (10 sockets of 100 subscriptions, memory store). A client renewing now and then has the
   * budget full (its burst is at least `maxSubscriptionsPerPrincipal`) and never waits; its subscriptions
   * stay suspended while one does.
   */
  async #payRecheck(): Promise<boolean> {
    const { limits, options } = this.#ctx;
    while (this.#ctx.isOpen() && !limits.takeFrame(this.#ctx.principal().id)) {
      await delay(Math.ceil(1000 / options.rateLimitPerPrincipalPerSecond));
    }
    return this.#ctx.isOpen();
  }

  /** Removes every subscription (the socket closed). */
  removeAll(): void {
    for (const sub of [...this.#subs.values()]) this.remove(sub);
  }

  remove(sub: Subscription): void {
    if (this.#subs.get(sub.taskId) !== sub) return;
    if (this.#renewed) {
      this.#told.delete(sub.taskId);
      if (!sub.epochResetDue) this.#told.add(sub.taskId);
      if (this.#told.size > this.#ctx.options.maxSubscriptionsPerSocket) {
        const oldest = this.#told.values().next().value;
        if (oldest !== undefined) this.#told.delete(oldest);
      }
    }
    sub.remove();
    this.#subs.delete(sub.taskId);
    this.#ctx.metrics.subscriptions.dec();
    this.#ctx.limits.removeSubscription(this.#ctx.principal().id);
  }

  /** A new subscription within the socket's and the principal's caps, or `undefined` (answered). */
  #add(taskId: string, refs: FrameRefs): Subscription | undefined {
    const { options, metrics, writer } = this.#ctx;
    const capped = (message: string): undefined => {
      metrics.framesRejected.inc({ code: ErrorCode.TooManySubscriptions });
      writer.sendError(ErrorCode.TooManySubscriptions, message, refs);
      return undefined;
    };
    if (this.#subs.size >= options.maxSubscriptionsPerSocket) {
      return capped(`A socket may follow at most ${options.maxSubscriptionsPerSocket} tasks`);
    }
    if (!this.#ctx.limits.addSubscription(this.#ctx.principal().id)) {
      metrics.principalLimits.inc({ limit: 'subscriptions' });
      return capped(`A principal may follow at most ${options.maxSubscriptionsPerPrincipal} tasks`);
    }
    const sentBefore = this.#unfollowed.get(taskId);
    this.#unfollowed.delete(taskId);
    const sub = new Subscription(taskId, {
      writer,
      metrics,
      clock: options.clock,
      resets: this.#ctx.version >= 2,
      openStream: (id, sink) => this.#ctx.hub.stream(id, this.#ctx.principal().id, sink),
      isOpen: () => this.#ctx.isOpen(),
      onGone: (gone) => {
        this.remove(gone);
        writer.sendError(ErrorCode.TaskNotFound, `Task ${gone.taskId} no longer exists`, {
          taskId: gone.taskId,
        });
      },
      onFailed: (failed, error) => this.#fail(failed, error),
      // Its client's cursor and the seqs sent are of the old run: answered as after a new epoch.
      onRestart: (restarted) => {
        metrics.resyncs.inc({ reason: 'run' });
        this.#start(restarted, 0, { taskId }, true).catch((error: unknown) =>
          this.#ctx.internalError(error, undefined, taskId),
        );
      },
      onInternalError: (error) => this.#ctx.internalError(error),
    });
    // What the task's earlier subscription on this socket sent may still be on its way, and acknowledged
    // behind this subscribe (rule 5: acks are accepted up to what was sent "in the current subscription or
    // an earlier one"). Forgotten here, such an ack was refused as beyond what was sent (counted towards
    // the invalid-frame limit) and recorded nothing.
    if (sentBefore !== undefined) sub.sentEarlier(sentBefore.limit, sentBefore.run);
    this.#subs.set(taskId, sub);
    metrics.subscriptions.inc();
    return sub;
  }

  /**
   * The principal may not watch the task (or it does not exist): the subscription ends, and each
   * subscribe in `answers` is refused.
   */
  #refuse(sub: Subscription, task: Task | undefined, answers: FrameRefs[]): void {
    this.remove(sub);
    const forbidden = task !== undefined && this.#ctx.options.revealTaskExistence;
    const code = forbidden ? ErrorCode.Forbidden : ErrorCode.TaskNotFound;
    for (const refs of answers) {
      this.#ctx.metrics.framesRejected.inc({ code });
      this.#ctx.writer.sendError(
        code,
        forbidden ? `You may not watch task ${sub.taskId}` : taskNotFoundMessage(sub.taskId),
        refs,
      );
    }
  }

  /**
   * The subscribe's load or first catch-up failed: the subscription ends with the error's code, answered
   * once, to the latest subscribe. Not to each one that joined: the error is not final (the client asks
   * again), and a tab-sharing leader relays it to every tab, so each tab would hear it once per tab.
   */
  #fail(sub: Subscription, error: unknown): void {
    const refs = this.#waiting(sub).at(-1) ?? { taskId: sub.taskId };
    this.#removeKeepingLateAcks(sub);
    // The hub (or its reads) refused it: the server shuts down (a store closed under the running server
    // fails with `closed` too, and is a failure). Counted and logged as a failed subscribe, a clean
    // shutdown showed the operator a failing store.
    const shutdown = isProgressError(error, ErrorCode.Closed) && this.#ctx.hub.closed;
    // Not a ProgressError: the store broke its contract (a driver's own error), answered as internal.
    if (!shutdown && (!isProgressError(error) || isStoreFailure(error))) this.#ctx.metrics.storeErrors.inc();
    const logged = { err: describeError(error), connection: this.#ctx.connectionId, taskId: sub.taskId };
    if (shutdown) this.#ctx.logger.debug(logged, 'subscribe refused: the server is shutting down');
    else this.#ctx.logger.warn(logged, 'subscribe failed');
    // A store closed under the server is `store_unavailable` here too: `closed` is never sent in an
    // `error` frame (docs/protocol.md), a shutdown closes the socket with 1001 instead.
    const { code, message } = isProgressError(error)
      ? clientError(error)
      : { code: ErrorCode.Internal, message: 'The task could not be loaded; try again' };
    this.#ctx.writer.sendError(code, message, refs);
  }
}
