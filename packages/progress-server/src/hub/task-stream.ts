/**
 * One subscriber's unbroken stream of a task's events, owned by the hub: the task load, the backlog
 * read from the subscriber's cursor, gap repair and the live events, all in order. Store reads go
 * through {@link FairReads} in the subscriber's principal's turn. Its subscribers are socket
 * subscriptions and Server-Sent Events streams.
 *
 * @module
 */
import type { ProgressStore, Task, TaskEvent, TaskView, Unsubscribe } from '@finishline/core';
import { ErrorCode, isProgressError, isTerminalType, toTaskView } from '@finishline/core';
import type { ProgressLogger } from '../logger.js';
import { describeError } from '../logger.js';
import type { ServerMetrics } from '../metrics.js';
import type { FairReads } from './fair-reads.js';

/**
 * Where a stream's events go (a socket subscription, a Server-Sent Events stream). Every call is
 * synchronous and in seq order.
 */
export interface StreamSink {
  /** Events that extend the stream's position without a gap. */
  events(events: readonly TaskEvent[]): void;
  /**
   * The task's current view stands for the backlog: it was longer than the replay limit, or the store no
   * longer holds the events after the position.
   */
  snapshot(view: TaskView): void;
  /**
   * The task went back below the position of a resume that nothing answered yet (the store was restored
   * between the subscriber's load and its first read): no event of the task's log follows the
   * subscriber's cursor, which it must drop; the view replaces it, as a reset snapshot.
   */
  reset(view: TaskView): void;
  /** The task no longer exists (found while catching up). */
  gone(): void;
  /**
   * A catch-up read failed before the subscribe had its answer (a resume that nothing answered yet: the
   * subscribe is answered with this error), or a later read failed with an error that reading again does
   * not cure (`internal`: a row the store cannot decode; `closed`: the hub's reads, or the hub, closed, the
   * server shutting down), which ends the stream: its owner tells the client.
   */
  failed(error: unknown): void;
  /** The stream caught up with everything known: what was queued may go out now. */
  caughtUp(): void;
  /** A bug while handing something over (not a store failure): reported to the client as internal. */
  internalError(error: unknown): void;
  /**
   * The id's task is another run than the stream's (purged and created again), or gone: the stream's
   * owner starts over from a load of its own, authorized again (a reset snapshot of the run, or
   * task_not_found), with a new stream in place of this one. Told even while `isOpen()` is false (a
   * Server-Sent Events stream waiting for 'drain' starts over once drained).
   */
  restart(): void;
  /** `false` once the sink can take nothing more (its socket is closing): reads are skipped. */
  isOpen(): boolean;
  /**
   * Every event is wanted, however long the backlog: it is read page by page (`maxReplayEvents` a page),
   * never replaced by a snapshot for its length. A Server-Sent Events stream paces itself this way: its
   * sink stops taking events when the connection's buffer is full (`isOpen()` turns false), and a new
   * stream reads on from its position once the buffer drained. Absent: a backlog longer than
   * `maxReplayEvents` is replaced by a snapshot (a socket subscription's subscribe).
   */
  readonly replaysAll?: boolean;
}

/**
 * Whether a failed store read is of a kind that reading again does not cure: `internal`, which stores
 * answer for a row they cannot decode (one damaged by hand) and for their own bugs, as against
 * `store_unavailable` (the database down, busy or restarting). Retried every `storeRetryDelayMs`, such a
 * read failed for as long as anyone followed the task, and its watchers were told nothing. An error that
 * is no ProgressError is a store breaking its contract (a driver's own error, a decoder's `SyntaxError`):
 * answered `internal`, as a subscribe's first read answers it, since nothing says another read cures it
 * (retried, its watchers waited for ever, the heartbeat at the last seq sent showing no gap).
 */
export function isLastingReadError(error: unknown): boolean {
  return !isProgressError(error) || error.code === ErrorCode.Internal;
}

/** What a stream needs from its hub. */
export interface StreamHub {
  readonly store: ProgressStore;
  readonly reads: FairReads;
  readonly metrics: ServerMetrics;
  readonly logger: ProgressLogger;
  readonly maxReplayEvents: number;
  readonly retryDelayMs: number;
  /** The highest seq of the task known to be committed. */
  latestSeq(taskId: string): number | undefined;
  /**
   * A read of the task at `seq`, of the run created at `run` (when known): where the hub's own live reads
   * start. `false` when `run` is older than the run the hub follows now (the id was purged and created
   * again since that read), or than a run a change named before the read started (`heard`, from
   * {@link heard} as it started; `undefined`: not known, taken as before).
   */
  observe(taskId: string, seq: number, run?: number, heard?: number): boolean;
  /**
   * The changes of the task heard so far (a count): taken as a load starts, and handed to {@link observe}
   * with what it read, it tells a read that may have missed a later run named meanwhile.
   */
  heard(taskId: string): number;
  /** The task's events after `fromSeq` up to `toSeq` when the hub holds them all in memory. */
  recent(taskId: string, fromSeq: number, toSeq: number): readonly TaskEvent[] | undefined;
  /** Taken before a stream's store read, and handed back with its events to {@link readBack}. */
  readMark(): number;
  /**
   * Events a stream read from the store, for the hub to keep if they join what it holds, unless the hub
   * dropped what it held since `mark` was taken: the read may be of the id's older run (or the store's
   * older epoch), and kept, it was served to the new one's streams. `ofRun`: found to be of the stream's
   * run (a read names the id, not the run: see `#ofRun`); before that, kept only where they prove their
   * run against what the hub holds (see `RecentEvents.backfill`).
   */
  readBack(taskId: string, events: readonly TaskEvent[], mark: number, ofRun: boolean): void;
  /**
   * A read found a task below the seq the hub knew of it: the store went back (restored, or the id
   * purged and reused), and its epoch is worth reading now rather than at the next heartbeat tick.
   */
  wentBack(): void;
  /** Taken as a subscriber's load starts, and handed to {@link loaded} with what it read. */
  loadMark(): number;
  /**
   * A subscriber's load read the task at `seq`, created at `createdAt` (for its authorization), the read
   * started at `mark` ({@link loadMark}): another run than the acks written for the id, or below them
   * (see `AckWriter.seen`).
   */
  loaded(taskId: string, seq: number, createdAt: number, mark: number): void;
}

/**
 * One subscriber's stream. It follows the hub from its creation, so no commit after its first read goes
 * unnoticed; {@link TaskStream.start} begins the delivery from a cursor. A closed stream does nothing
 * more: a resubscribe closes the old stream and opens a new one.
 */
export class TaskStream {
  readonly taskId: string;
  readonly #principalId: string;
  readonly #hub: StreamHub;
  readonly #sink: StreamSink;
  readonly #unfollow: Unsubscribe;
  /** Highest seq handed to the sink (event or snapshot). */
  #position = 0;
  /** The terminal event (or a terminal snapshot) was handed over: nothing can follow it. */
  #ended = false;
  /** Caught up: live events from the hub are taken. */
  #live = false;
  /**
   * Highest seq the hub handed over while the stream was not live: ignored then, and the hub hands an
   * event over once. A catch-up whose last read was older than it (a task load answered after the hub
   * dispatched a later commit) reads on rather than going live behind it (see `#catchUp`).
   */
  #passedBy = 0;
  /**
   * Started by {@link resume} and nothing handed over since: the subscriber waits for an answer, and the
   * first catch-up does not end without one (see `#answer`).
   */
  #answerDue = false;
  #closed = false;
  /** The `createdAt` of the run the stream started on; `undefined` before its start. */
  #run: number | undefined;
  /** The seq of the load that authorized the stream (see `#shortOfLoad`). */
  #loadedSeq = 0;
  #retryTimer: NodeJS.Timeout | undefined;
  /** {@link StreamHub.heard} as this stream's last {@link load} started; `undefined` before one. */
  #loadHeard: number | undefined;
  /** Opened on a closed hub (`closed`): it follows nothing, its load rejects with it, its start fails with it. */
  readonly #refused: unknown;

  constructor(
    init: { taskId: string; principalId: string; hub: StreamHub; sink: StreamSink; refused?: unknown },
    follow: (stream: TaskStream) => Unsubscribe,
  ) {
    this.taskId = init.taskId;
    this.#principalId = init.principalId;
    this.#hub = init.hub;
    this.#sink = init.sink;
    this.#refused = init.refused;
    this.#unfollow = follow(this);
  }

  /** The stream was closed or its sink can take nothing more: work started for it is dropped. */
  get stale(): boolean {
    return this.#closed || !this.#sink.isOpen();
  }

  /**
   * Reads the task in the principal's turn (for the subscribe's authorization, or a re-check). Resolves
   * `null` when the stream went stale before or during the read.
   */
  async load(): Promise<Task | undefined | null> {
    if (this.#refused !== undefined) throw this.#refused;
    let mark = 0;
    const task = await this.#read(() => {
      mark = this.#hub.loadMark();
      this.#loadHeard = this.#hub.heard(this.taskId);
      return this.#hub.store.getTask(this.taskId);
    }, null);
    if (task) this.#hub.loaded(this.taskId, task.seq, task.createdAt, mark);
    return this.stale ? null : task;
  }

  /**
   * Starts delivering after `from` (the client's cursor, or the seq of the snapshot it was just given),
   * `ended` when that snapshot was terminal. `taskSeq` is the seq of the load that authorized it, and
   * `taskRun` its `createdAt`: the run of the id the stream is of (see {@link StreamHub.observe}).
   */
  start(from: number, ended: boolean, taskSeq: number, taskRun?: number): void {
    if (this.stale) return;
    this.#answerDue = false;
    this.#begin(from, ended, taskSeq, taskRun);
  }

  /**
   * Starts delivering after the subscriber's own cursor `from`, which nothing answered yet (a resume
   * without a snapshot): the first catch-up hands over the events after it, or, when there are none to
   * read, the task's state (a snapshot; a reset when the task went back below `from`). `taskSeq` is the
   * seq of the load that authorized it, above `from`, and `taskRun` its `createdAt`.
   */
  resume(from: number, taskSeq: number, taskRun?: number): void {
    if (this.stale) return;
    this.#answerDue = true;
    this.#begin(from, false, taskSeq, taskRun);
  }

  #begin(from: number, ended: boolean, taskSeq: number, taskRun: number | undefined): void {
    if (this.#refused !== undefined) {
      this.#sink.failed(this.#refused);
      return;
    }
    this.#position = from;
    this.#ended = ended;
    this.#run = taskRun;
    this.#loadedSeq = taskSeq;
    // Loaded before the id's task was purged and created again, and started once the hub follows (or a
    // change named) the new run: nothing of the run loaded will come.
    if (!this.#hub.observe(this.taskId, taskSeq, taskRun, this.#loadHeard)) {
      this.#sink.restart();
      return;
    }
    void this.#catchUp().catch((error: unknown) => this.#lost(error));
  }

  /** Live events from the hub (contiguous, in order). */
  deliver(events: readonly TaskEvent[]): void {
    if (this.stale) return;
    if (!this.#live) {
      const last = events.at(-1);
      if (last !== undefined && last.seq > this.#passedBy) this.#passedBy = last.seq;
      return;
    }
    for (const event of events) {
      if (event.seq <= this.#position) continue;
      if (event.seq === this.#position + 1) break;
      // Missed events (a failed catch-up, a hub restart): fetch them rather than skip ahead.
      this.#hub.metrics.resyncs.inc({ reason: 'gap' });
      void this.#catchUp().catch((error: unknown) => this.#lost(error));
      return;
    }
    this.#push(events);
  }

  /**
   * The hub found the id's task is `run` now (`undefined`: gone). A stream started on another run has its
   * owner start over (see {@link StreamSink.restart}); so has any stream when the task is gone. One not
   * started yet learns the run followed when it starts (see `#begin`).
   */
  restart(run: number | undefined): void {
    if (this.#closed) return;
    if (run !== undefined && (this.#run === undefined || this.#run === run)) return;
    this.#sink.restart();
  }

  /**
   * The hub's read of the task failed with a lasting error (see {@link isLastingReadError}): the stream
   * ends, its sink told.
   */
  failed(error: unknown): void {
    if (this.stale) return;
    this.#sink.failed(error);
  }

  /** Stops the stream: no read starts for it and nothing reaches its sink any more. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#retryTimer !== undefined) clearTimeout(this.#retryTimer);
    this.#retryTimer = undefined;
    this.#unfollow();
  }

  /**
   * Reads the events between the position and the latest seq the hub knows (from the hub's memory when
   * it holds them all, else from the store), until none is missing, then takes live events. Events the
   * hub dispatched meanwhile were ignored, but the hub's latest seq covers them, so the loop reads them
   * too; those dispatched after the loop's last target was taken, while it ended on a task load, are read
   * in one more round (see `#passedBy`). A failure before the subscribe had its answer (a resume that
   * nothing answered yet, see `#answerDue`) answers it; any other is retried, but for `task_not_found`,
   * which restarts the subscriber, and a lasting error, which ends it. Ended on the first catch-up alone,
   * a resume whose events already went out (the store pages them, or a commit during the read asked for
   * one more) was ended for a store that failed once, as no live read is.
   */
  async #catchUp(): Promise<void> {
    this.#live = false;
    try {
      /** The task as the loop last read it. */
      let loaded: Task | undefined;
      for (;;) {
        const target = this.#hub.latestSeq(this.taskId) ?? this.#position;
        if (this.#ended || this.#position >= target) break;
        const tooLong = target - this.#position > this.#hub.maxReplayEvents && this.#sink.replaysAll !== true;
        if (!tooLong) {
          // From the hub's memory when it holds them all, in the principal's turn all the same: what a
          // catch-up costs is also the sending, and a burst of resubscribes must not take a turn at once.
          let fromStore = false;
          let mark = 0;
          const events = await this.#read(() => {
            const held = this.#hub.recent(this.taskId, this.#position, target);
            if (held !== undefined) return Promise.resolve(held);
            fromStore = true;
            mark = this.#hub.readMark();
            return this.#hub.store.readEvents(this.taskId, this.#position, this.#hub.maxReplayEvents);
          }, []);
          if (this.stale) return;
          // At once, before its run is checked (below), so the resubscribes of a cut that wait for their turn
          // find it in memory: kept only if it holds the hub's first event in memory (see `backfill`).
          if (fromStore) this.#hub.readBack(this.taskId, events, mark, false);
          // A log has no gap (1..n), so a read that starts past the position means the store no longer
          // holds what follows it (a store that trims its logs): the task's snapshot stands for it. Pushed
          // as they are, those events would be skipped, and the catch-up read the same page again at the
          // next live event, for ever. So does a read that found nothing although the target is above the
          // position (a store that removed all of them): taken as caught up, it left a resume with no
          // answer at all, and a finished task's watcher without its final state.
          // So does a read that stops short of the stream's load: it is of a later run of the id (see
          // `#shortOfLoad`), and the load of the task below tells its run (its owner starts over).
          const head = events[0] as TaskEvent | undefined;
          if (
            head !== undefined &&
            head.seq <= this.#position + 1 &&
            !(fromStore && this.#shortOfLoad(events))
          ) {
            if (fromStore) {
              if (!(await this.#ofRun())) return;
              // Known now to be of the stream's run: kept also where they could not prove it above. Kept
              // unchecked (until 7 December 2026), a read served after the run was purged and its id written
              // again joined the hub's window of the old run with the later run's events, which went out
              // from memory to the next stream's catch-up as the old run's own (a terminal included).
              this.#hub.readBack(this.taskId, events, mark, true);
            }
            const before = this.#position;
            this.#push(events);
            if (this.#position === before) break;
            continue;
          }
        }
        const task = await this.#read(() => this.#hub.store.getTask(this.taskId), undefined);
        if (this.stale) return;
        if (task === undefined) {
          this.#sink.gone();
          return;
        }
        this.#hub.observe(this.taskId, task.seq, task.createdAt);
        // A later run of the id: the hub restarted the stream's owner, which replaced it.
        if (this.stale) return;
        if (task.seq < target) this.#hub.wentBack();
        loaded = task;
        // The task went back since the read (a restore under way): its snapshot would stand for nothing
        // past the position. Live events, and their gap repair, take it from here (a resume that nothing
        // answered yet is answered first, below).
        if (!tooLong && task.seq <= this.#position) break;
        this.#hub.metrics.resyncs.inc({ reason: tooLong ? 'replay_limit' : 'gap' });
        this.#snapshot(toTaskView(task));
        // The store holds less than the hub was told (a late change notice of a restored store's old
        // epoch): loading again would find the same, and sent a snapshot per turn until the hub gave
        // that seq up. Live events, and their gap repair, take it from here. What the hub dispatched
        // since this load read the task is read after the loop (see `#passedBy`).
        if (task.seq < target) break;
      }
      if (this.#answerDue && !(await this.#answer(loaded))) return;
      // The hub dispatched past the position while the last read was under way, and the loop ended on
      // that read (a load at or below the position, a snapshot below the target): taken as caught up,
      // those events were never handed over, and a terminal one left the watcher waiting for ever.
      if (!this.#ended && this.#passedBy > this.#position) {
        this.#passedBy = 0;
        this.#hub.metrics.resyncs.inc({ reason: 'gap' });
        // Whatever answers the subscribe went out: a failed read is retried.
        return await this.#catchUp();
      }
    } catch (error) {
      if (this.stale) return;
      if (this.#answerDue) {
        this.#sink.failed(error);
        return;
      }
      if (isProgressError(error, ErrorCode.TaskNotFound)) {
        // Purged (retention) since the stream started: no read of the id finds its events again, and
        // retried as a store failure, the gap was read every retryDelayMs for as long as the subscriber
        // stayed, the subscriber told nothing. Its owner starts over from a load, as when the hub finds the
        // task gone: task_not_found to the client, or a reset snapshot of the id's later run.
        this.#sink.restart();
        return;
      }
      if (isProgressError(error, ErrorCode.Closed)) {
        // The hub's reads were closed (the server shuts down) while this one waited for its turn: every
        // read is refused alike now, and retried, one was tried every retryDelayMs for as long as the
        // process lived, a timer the shutdown left behind, the subscriber told nothing. Its owner tells it
        // (`closed` goes out as `store_unavailable`: the client resumes elsewhere).
        this.#sink.failed(error);
        return;
      }
      this.#hub.metrics.storeErrors.inc();
      if (isLastingReadError(error)) {
        // A row the store cannot decode fails every read alike: retried, the gap was read every
        // retryDelayMs for as long as the subscriber stayed, which was told nothing. Its owner tells it.
        this.#hub.logger.warn(
          { err: describeError(error), taskId: this.taskId },
          'catch-up read failed; ending',
        );
        this.#sink.failed(error);
        return;
      }
      this.#hub.logger.warn(
        { err: describeError(error), taskId: this.taskId },
        'catch-up read failed; retrying',
      );
      this.#retryTimer = setTimeout(() => {
        this.#retryTimer = undefined;
        if (!this.stale) void this.#catchUp().catch((e: unknown) => this.#lost(e));
      }, this.#hub.retryDelayMs);
      this.#retryTimer.unref();
      return;
    }
    this.#live = true;
    this.#sink.caughtUp();
  }

  /**
   * A resume whose first catch-up handed nothing over: the store was restored between the subscriber's
   * load and this catch-up, and holds nothing after the cursor (the task went back to it or below).
   * Taken as caught up, the resume had no answer at all until an epoch renewal restarted the stream
   * (never, for a restore that kept the epoch), and the client's repeated subscribes were joined to that
   * silence. The task's state answers it: a snapshot at the cursor's seq, a reset below it, as a
   * subscribe's own load would have (`loaded`: the task as the catch-up last read it, else read now).
   * Returns `false` when the stream went stale or the task is gone (the sink was told).
   */
  async #answer(loaded: Task | undefined): Promise<boolean> {
    const task = loaded ?? (await this.#read(() => this.#hub.store.getTask(this.taskId), undefined));
    if (this.stale) return false;
    if (task === undefined) {
      this.#sink.gone();
      return false;
    }
    this.#hub.observe(this.taskId, task.seq, task.createdAt);
    // A later run of the id: the hub restarted the stream's owner, which replaced it. Its answer would be
    // that run's state, handed over by a stream no longer current (its owners drop it; see `#catchUp`).
    if (this.stale) return false;
    const view = toTaskView(task);
    if (view.seq >= this.#position) {
      this.#snapshot(view);
      return true;
    }
    this.#hub.metrics.resyncs.inc({ reason: 'cursor_ahead' });
    this.#answerDue = false;
    this.#position = view.seq;
    this.#ended = view.status !== 'running';
    this.#sink.reset(view);
    return true;
  }

  /**
   * A store read in the principal's turn (see {@link FairReads}). It checks staleness when it starts: a
   * stream closed while its read was queued costs no read and gets `whenStale`.
   */
  #read<T, S>(read: () => Promise<T>, whenStale: S): Promise<T | S> {
    const stale = (): boolean => this.stale;
    return this.#hub.reads.run<T | S>(
      this.#principalId,
      () => (stale() ? Promise.resolve(whenStale) : read()),
      stale,
    );
  }

  /**
   * Whether events just read from the store are of the stream's run: the store's read names no run, and
   * retention may purge the run and its id go to a new task (another owner's too) before the hub hears of
   * it (a feed that polls, a listener away, or the moment between the authorizing load and this read).
   * Handed over, that task's events went out as the stream's own run's, to a principal never authorized
   * for it. The id's task read again after the events still of this run means they were its own (a run's
   * `createdAt` never comes back); another run, or none, has the stream's owner start over (a load,
   * authorized again). `false` when the stream went stale or was restarted.
   */
  async #ofRun(): Promise<boolean> {
    if (this.#run === undefined) return true;
    const task = await this.#read(() => this.#hub.store.getTask(this.taskId), null);
    if (this.stale || task === null) return false;
    if (task?.createdAt === this.#run) return true;
    this.#sink.restart();
    return false;
  }

  /**
   * True when `events`, read from the store after the position, stop short of the seq the stream's load
   * found with room left in their page: a read of that run, made after the load, returns every event up
   * to it. One made after retention purged the run and the id was written again below that seq returns
   * the later run's events, which follow on from a cursor of the old run: handed over, they went out as
   * its own (a terminal of the later run included). A store that went back (restored) reads short too:
   * the load that follows answers it, as when a read finds nothing.
   */
  #shortOfLoad(events: readonly TaskEvent[]): boolean {
    const last = (events.at(-1) as TaskEvent).seq;
    return last < Math.min(this.#loadedSeq, this.#position + this.#hub.maxReplayEvents);
  }

  /** Hands over the events that extend the position without a gap, up to a terminal one. */
  #push(events: readonly TaskEvent[]): void {
    // `events` are in seq order: skip those already handed over, take the run that follows on.
    let start = 0;
    while (start < events.length && (events[start] as TaskEvent).seq <= this.#position) start++;
    let end = start;
    while (!this.#ended && end < events.length && (events[end] as TaskEvent).seq === this.#position + 1) {
      const event = events[end] as TaskEvent;
      this.#position = event.seq;
      if (isTerminalType(event.type)) this.#ended = true;
      end++;
    }
    if (end === start) return;
    this.#answerDue = false;
    // All of them (the hub's usual live event): the same array, not a copy per subscriber.
    this.#sink.events(start === 0 && end === events.length ? events : events.slice(start, end));
  }

  #snapshot(view: TaskView): void {
    this.#answerDue = false;
    if (view.seq > this.#position) this.#position = view.seq;
    if (view.status !== 'running') this.#ended = true;
    this.#sink.snapshot(view);
  }

  /** A bug, not a store failure: the sink reports it; the stream waits for the next event. */
  #lost(error: unknown): void {
    this.#sink.internalError(error);
  }
}
