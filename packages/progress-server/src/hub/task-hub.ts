/**
 * The per-process hub of live events: at most one store read per change (none when the change feed
 * carried the events, or the events were committed here), fanned out to every local subscriber,
 * and the owner of each subscriber's stream ({@link TaskStream}: backlog, gap repair, live events) for
 * socket subscriptions and Server-Sent Events streams.
 *
 * @module
 */
import type { ChangeFeed, ProgressStore, TaskChange, TaskEvent, Unsubscribe } from '@finishline/core';
import { ErrorCode, isProgressError, isTerminalType } from '@finishline/core';
import type { ProgressLogger } from '../logger.js';
import { describeError } from '../logger.js';
import type { ServerMetrics } from '../metrics.js';
import { shuttingDown } from '../shutting-down.js';
import type { FairReads } from './fair-reads.js';
import { RecentEvents } from './recent-events.js';
import type { StreamHub, StreamSink } from './task-stream.js';
import { isLastingReadError, TaskStream } from './task-stream.js';

/** A local consumer of a task's live events (a {@link TaskStream}, one per subscription or SSE stream). */
export interface HubSubscriber {
  /**
   * New events of the task: contiguous, in seq order, each handed to every subscriber once. A subscriber
   * that missed earlier ones (it was still loading) catches up from the store: a {@link TaskStream} does
   * that for it.
   */
  deliver(events: readonly TaskEvent[]): void;
  /**
   * The id's task is not the run the subscriber may have loaded: the hub found `run` (a `createdAt`), a
   * later run of the id, or no task at all (`undefined`). A subscriber of another run starts over from a
   * load of its own (a {@link TaskStream} has its owner do that: its authorization is of the old run).
   */
  restart?(run: number | undefined): void;
  /**
   * A read of the task failed with an error that reading again does not cure ({@link isLastingReadError}:
   * a row the store cannot decode). The subscriber ends (a {@link TaskStream} tells its owner, which
   * tells the client); the hub stops reading for it once no subscriber is left.
   */
  failed?(error: unknown): void;
}

interface Followed {
  readonly taskId: string;
  readonly subscribers: Set<HubSubscriber>;
  /** Highest seq read and dispatched; `undefined` until the first subscriber learned the task's seq. */
  readSeq: number | undefined;
  /** Highest seq known to be committed (from the feed, local appends and subscribers' reads). */
  latestSeq: number;
  reading: boolean;
  /** Reads in a row that found nothing after `readSeq` although `latestSeq` is above it. */
  emptyReads: number;
  /** Appends to this task in flight in this process (see {@link TaskHub.localAppend}). */
  localAppends: number;
  /** The read put off for those appends, made after `retryDelayMs` whatever they do (see `#pump`). */
  appendWait: NodeJS.Timeout | undefined;
  retryTimer: NodeJS.Timeout | undefined;
  /** The retry of a failed read of the task's run (see `#readRun`). */
  checkTimer: NodeJS.Timeout | undefined;
  stopFeed: Unsubscribe | undefined;
  closed: boolean;
  /** Events dispatched (`readSeq` is past them) and held, not yet handed over (see `#dispatch`). */
  pending: TaskEvent[];
  /**
   * The run of the id the seqs above are of: the `createdAt` of the task its subscribers read last
   * (`undefined` until one said). An id is taken again once retention purged its task, and each run
   * starts again at seq 1 (see `#newRun`).
   */
  run: number | undefined;
  /** Bumped when the id's run changes: a read started before is of the old run. */
  runs: number;
  /**
   * The seq of the followed run's terminal event, once a change of that run (or of no known run) said so
   * or the hub dispatched it: the run ends there, so an event the hub reads past it, or another at it, is
   * of a later run of the id (see `#pastEnd`).
   */
  endSeq: number | undefined;
  /**
   * A seq announced that may be of another run of the id than the one followed: a change only hinted
   * (see `#ofEarlierRun`), or the highest seq known when a later run reset the entry (see `#newRun`).
   * It asks for one read after `readSeq`, and a read that finds nothing settles it: no restore is implied,
   * so it neither counts toward giving `latestSeq` up nor tells the server the store went back.
   */
  unconfirmed: number;
  /**
   * Changes heard (feed and local): one heard while a read ran may be a commit that read did not see,
   * whatever its seq (see `#readLoop`).
   */
  heard: number;
  /** A read of the task for its run is under way (see `#checkRun`). */
  checking: boolean;
  /** A change asked for that read while it ran: it may have been served before the change's commit. */
  checkAgain: boolean;
  /**
   * The latest run a change or local append named while no run was followed yet (`run` undefined: the
   * first subscribers still loading), and `heard` as it was first heard. A subscriber's load of an earlier
   * run that started before it may have read the run since purged: it starts over (see {@link
   * TaskHub.observe}).
   */
  laterRun: number | undefined;
  laterRunHeard: number;
}

const noop = (): void => undefined;

/** Events read per store call when catching up. */
const READ_LIMIT = 1000;

/**
 * Retries of a read that found nothing after `readSeq`, after which the seq the feed announced is given
 * up (see `#readLoop`).
 */
const MAX_EMPTY_RETRIES = 3;

/**
 * Per-process fan-out of live events. Whatever the number of local sockets following a task, a change
 * on the feed costs one store read, and its events go to every subscriber in seq order. Events appended
 * through this process are dispatched directly, in the tick their append resolves, without a read.
 *
 * A socket subscription or a Server-Sent Events stream gets one unbroken stream from its cursor through
 * {@link TaskHub.stream}: the hub reads its backlog (through {@link FairReads}, in its principal's turn),
 * repairs gaps and hands it the live events, so neither reads the store for events.
 *
 * The hub remembers each followed task's latest events ({@link RecentEvents}): a stream catching up
 * over them reads nothing.
 */
export class TaskHub {
  readonly #store: ProgressStore;
  readonly #feed: ChangeFeed;
  readonly #logger: ProgressLogger;
  readonly #metrics: ServerMetrics;
  readonly #retryDelayMs: number;
  readonly #epoch: () => string | undefined;
  readonly #followed = new Map<string, Followed>();
  readonly #recent = new RecentEvents();
  /** The last epoch other than the current one that a change was stamped with (it asked for a read). */
  #foreignEpochSeen: string | undefined;
  /** Bumped when the store's epoch changes: a read started before belongs to the old epoch. */
  #epochs = 0;
  /**
   * Bumped whenever the hub drops what it holds of a task for another run or epoch (`#newRun`,
   * {@link forgetSeqs}): a stream's store read started before may be of the old one, and is not kept
   * (see {@link StreamHub.readBack}).
   */
  #resets = 0;
  /** A dispatch went out and its hold is queued: later dispatches wait for it (see `#dispatch`). */
  #holding = false;
  /** Tasks holding events, in the order their first one was held. */
  #due: Followed[] = [];
  /** What the subscribers' streams use of the hub. */
  readonly #streamHub: StreamHub;
  #stopFeed: Unsubscribe | undefined;
  /**
   * {@link close} was called: nothing registers any more. A subscriber added after it was followed by no
   * feed (and dropped by nobody): its stream caught up once and then waited for ever, unheard.
   */
  #closed = false;

  constructor(options: {
    store: ProgressStore;
    logger: ProgressLogger;
    metrics: ServerMetrics;
    retryDelayMs: number;
    /** The fair scheduler of subscription reads (task loads, backlogs, gap repairs). */
    reads: FairReads;
    /** A backlog longer than this is replaced by a snapshot. */
    maxReplayEvents: number;
    /**
     * The store epoch the server read last (`undefined` before the first read, or for a store without
     * epochs): a change stamped with another one is dropped (see {@link TaskChange.epoch}).
     */
    epoch?: () => string | undefined;
    /**
     * A sign that the store may have been restored: a stream found a task below the seq the hub knew of
     * it (see {@link StreamHub.wentBack}), the store did not hold a seq its feed announced, or a change
     * came stamped with an epoch other than the current one. The server reads the store's epoch again.
     */
    onWentBack?: () => void;
    /** Taken as a subscriber's load starts (see {@link StreamHub.loadMark}). */
    loadMark?: () => number;
    /** A subscriber's load read a task (see {@link StreamHub.loaded}). */
    onLoaded?: (taskId: string, seq: number, createdAt: number, mark: number) => void;
  }) {
    this.#store = options.store;
    this.#feed = options.store.changes;
    this.#logger = options.logger;
    this.#metrics = options.metrics;
    this.#retryDelayMs = options.retryDelayMs;
    this.#epoch = options.epoch ?? (() => undefined);
    this.#streamHub = {
      store: options.store,
      reads: options.reads,
      metrics: options.metrics,
      logger: options.logger,
      maxReplayEvents: options.maxReplayEvents,
      retryDelayMs: options.retryDelayMs,
      latestSeq: (taskId) => this.latestSeq(taskId),
      observe: (taskId, seq, run, heard) => this.observe(taskId, seq, run, heard),
      heard: (taskId) => this.#followed.get(taskId)?.heard ?? 0,
      recent: (taskId, fromSeq, toSeq) => this.#recent.between(taskId, fromSeq, toSeq),
      readMark: () => this.#resets,
      readBack: (taskId, events, mark, ofRun) => {
        if (mark !== this.#resets) return;
        const readSeq = this.#followed.get(taskId)?.readSeq;
        if (readSeq !== undefined) this.#recent.backfill(taskId, events, readSeq, ofRun);
      },
      wentBack: options.onWentBack ?? noop,
      loadMark: options.loadMark ?? (() => 0),
      loaded: options.onLoaded ?? noop,
    };
  }

  /**
   * Opens a subscriber's stream of `taskId`. It follows the task at once, before its first read, so no
   * commit after that read goes unnoticed; reads run in `principalId`'s turn.
   */
  stream(taskId: string, principalId: string, sink: StreamSink): TaskStream {
    // Once closed, the stream follows nothing and ends with `closed` when it starts (or its load rejects
    // with it), as its reads would be refused: its owner tells the client, which resumes elsewhere.
    const refused = this.#closed ? shuttingDown() : undefined;
    return new TaskStream({ taskId, principalId, hub: this.#streamHub, sink, refused }, (stream) =>
      refused === undefined ? this.follow(taskId, stream) : noop,
    );
  }

  /**
   * Starts listening to the store's change feed. Throws `closed` once the hub is closed: a start after
   * {@link close} subscribed to the feed again, a listener on the caller's store that nothing removed, for
   * a hub that follows nothing (its {@link follow} refuses).
   */
  start(): void {
    if (this.#closed) throw shuttingDown();
    if (this.#stopFeed !== undefined) return;
    this.#stopFeed = this.#feed.subscribe((change) => this.#onChange(change));
  }

  /**
   * {@link close} was called (the server shuts down): a `closed` its streams end with is the server's own,
   * not a store failing (a store closed under the running server also fails its reads with `closed`).
   */
  get closed(): boolean {
    return this.#closed;
  }

  /** Number of tasks followed by at least one local subscriber. */
  get size(): number {
    return this.#followed.size;
  }

  /**
   * Adds a subscriber of `taskId`. Call it *before* reading the task, so no commit after the read can go
   * unnoticed. Returns the function that removes it. Throws `closed` once the hub is closed.
   */
  follow(taskId: string, subscriber: HubSubscriber): Unsubscribe {
    if (this.#closed) throw shuttingDown();
    let entry = this.#followed.get(taskId);
    if (entry === undefined) {
      entry = {
        taskId,
        subscribers: new Set(),
        readSeq: undefined,
        latestSeq: 0,
        reading: false,
        emptyReads: 0,
        localAppends: 0,
        appendWait: undefined,
        retryTimer: undefined,
        checkTimer: undefined,
        stopFeed: undefined,
        closed: false,
        pending: [],
        run: undefined,
        runs: 0,
        endSeq: undefined,
        unconfirmed: 0,
        heard: 0,
        checking: false,
        checkAgain: false,
        laterRun: undefined,
        laterRunHeard: 0,
      };
      this.#followed.set(taskId, entry);
      try {
        entry.stopFeed = this.#feed.follow?.(taskId);
      } catch (error) {
        this.#logger.warn({ err: describeError(error), taskId }, 'change feed follow() failed');
      }
    }
    entry.subscribers.add(subscriber);
    const followed = entry;
    return () => {
      followed.subscribers.delete(subscriber);
      if (followed.subscribers.size === 0 && this.#followed.get(taskId) === followed) this.#drop(followed);
    };
  }

  /**
   * A subscriber read the task at `seq`, the run created at `run` (its `createdAt`, when the reader
   * knows it). The first such read fixes where the hub's own reads start; any later one only raises the
   * latest known seq. A read of a later run of the id starts over from it (see `#newRun`); one of an
   * earlier run (read before the purge, told after) says nothing of the run followed now: `false`; so
   * does the first read of a run older than one a change named before that read started (`heard`, see
   * {@link StreamHub.heard}).
   */
  observe(taskId: string, seq: number, run?: number, heard?: number): boolean {
    const entry = this.#followed.get(taskId);
    if (entry === undefined) return true;
    let later = false;
    if (run !== undefined && entry.run !== run) {
      if (entry.run !== undefined && run < entry.run) return false;
      // The first run learned, older than one a change named meanwhile: a read that started before that
      // change (`heard`: the task's count of changes as it started; unknown: as old) may be of a run
      // purged since, and followed, the later run's events went out as its own. One that started after
      // it is the store's truth (that change was a late notice of what a restore took back).
      if (entry.run === undefined && entry.laterRun !== undefined && run < entry.laterRun) {
        if (heard === undefined || heard < entry.laterRunHeard) return false;
      }
      entry.laterRun = undefined;
      if (entry.run !== undefined) this.#newRun(entry);
      later = entry.run !== undefined;
      entry.run = run;
    }
    if (entry.readSeq === undefined) entry.readSeq = seq;
    if (seq > entry.latestSeq) entry.latestSeq = seq;
    this.#pump(entry);
    // The old run's subscribers never hear its end from the hub now: they start over.
    if (later) this.#restart(entry, run);
    return true;
  }

  /** The highest seq of `taskId` known to be committed, for a followed task. */
  latestSeq(taskId: string): number | undefined {
    return this.#followed.get(taskId)?.latestSeq;
  }

  /**
   * An append to `taskId` starts in this process. The feed's notice of that very commit may arrive
   * before the append resolves (stores publish it from inside the commit; Postgres's `NOTIFY` can beat
   * the `COMMIT` reply), and reading then would fetch the event {@link publishLocal} is about to hand
   * over. So while appends are in flight, the hub reads at once only when more seqs are missing than
   * there are appends in flight (some must come from elsewhere, or resolved out of order); otherwise it
   * reads after `retryDelayMs` if they have not settled by then (an append that hangs commits nothing,
   * and the gap is another writer's). Call the returned function once the append settled, after
   * `publishLocal`; it reads whatever is still missing.
   */
  localAppend(taskId: string): () => void {
    const entry = this.#followed.get(taskId);
    if (entry === undefined) return noop;
    entry.localAppends += 1;
    let settled = false;
    return () => {
      if (settled) return;
      settled = true;
      entry.localAppends -= 1;
      if (entry.localAppends === 0 && entry.appendWait !== undefined) {
        clearTimeout(entry.appendWait);
        entry.appendWait = undefined;
      }
      this.#pump(entry);
    };
  }

  /**
   * An event this process just committed: dispatched at once when it is the next one, so a local terminal
   * event reaches local sockets in the same tick its append resolves. `run` is the `createdAt` of the task
   * it was appended to: a later run of the id than the one followed starts the hub over on it.
   */
  publishLocal(event: TaskEvent, run?: number): void {
    const entry = this.#followed.get(event.taskId);
    if (entry === undefined) return;
    // Appended to another run of the id than the one followed (see `#onChange`).
    if (run !== undefined && entry.run !== undefined && run !== entry.run) {
      if (run < entry.run) return;
      this.#startOver(entry, run);
    }
    entry.heard += 1;
    if (run !== undefined && entry.run === undefined) this.#heardRun(entry, run);
    if (isTerminalType(event.type)) entry.endSeq = event.seq;
    if (event.seq > entry.latestSeq) entry.latestSeq = event.seq;
    if (this.#dispatchNext(entry, [event])) return;
    this.#pump(entry);
  }

  /**
   * The store's epoch changed (restored from a backup): every seq the hub knows belongs to the old
   * epoch, and the restored tasks' seqs may be lower. Each followed task starts again from the next
   * subscriber's read ({@link observe}); the caller restarts every subscriber's stream.
   */
  forgetSeqs(): void {
    this.#epochs += 1;
    this.#resets += 1;
    // A feed that publishes each seq once would skip the restored tasks' lower seqs.
    try {
      this.#feed.forgetSeqs?.();
    } catch (error) {
      this.#logger.warn({ err: describeError(error) }, 'change feed forgetSeqs() failed');
    }
    for (const entry of this.#followed.values()) {
      entry.readSeq = undefined;
      entry.latestSeq = 0;
      entry.unconfirmed = 0;
      entry.emptyReads = 0;
      entry.pending = [];
      // A restored task may be an earlier run than the one followed (created before it, purged since).
      entry.run = undefined;
      entry.laterRun = undefined;
      entry.endSeq = undefined;
      if (entry.retryTimer !== undefined) clearTimeout(entry.retryTimer);
      entry.retryTimer = undefined;
      this.#recent.drop(entry.taskId);
    }
    this.#due = [];
  }

  /**
   * Stops listening and forgets every task (their subscribers are being closed). Nothing follows a task
   * after it: {@link follow} throws `closed`, and {@link stream} returns a stream that ends with it.
   */
  close(): void {
    this.#closed = true;
    this.#stopFeed?.();
    this.#stopFeed = undefined;
    for (const entry of [...this.#followed.values()]) this.#drop(entry);
  }

  #onChange(change: TaskChange): void {
    const entry = this.#followed.get(change.taskId);
    if (entry === undefined) return;
    // Of another epoch: the old one's, delivered after the restore was noticed, its seq and events of the
    // old log; or a new one this server is yet to notice, whose restart reads the store. Either way it
    // says nothing of the log the hub follows.
    if (change.epoch !== undefined && this.#isForeign(change.epoch)) {
      // A new epoch's change is the first sign of a restore: the server reads the epoch now, not at its
      // next heartbeat tick. Once per foreign epoch: a flood of the old epoch's late changes costs one read.
      if (change.epoch !== this.#foreignEpochSeen) {
        this.#foreignEpochSeen = change.epoch;
        this.#streamHub.wentBack();
      }
      return;
    }
    // The change names its run (the feed knew it): a later run than the one followed starts the hub over
    // on it before anything of it is dispatched, whatever its seq; an earlier run's (a late notice of a
    // run retention purged since) says nothing of the run followed. Without a run, only a read of the
    // task tells runs apart (`#checkRun`), and only for a seq at or below what the hub holds: above it,
    // the new run's events went out as the old run's, its terminal included.
    const { run } = change;
    if (run !== undefined && entry.run !== undefined && run !== entry.run) {
      if (run < entry.run) return;
      this.#startOver(entry, run);
    }
    entry.heard += 1;
    if (run !== undefined && entry.run === undefined) this.#heardRun(entry, run);
    // Of the run followed, for sure: neither a late change of an earlier run nor one of a later run.
    const ofRun = run !== undefined && run === entry.run;
    // Its run's end (a change without a run may be an earlier run's, heard late: only once dispatched).
    if (change.terminal && ofRun) entry.endSeq = change.seq;
    if (!ofRun && change.events !== undefined && this.#ofEarlierRun(entry, change.events)) {
      // Maybe the old run's seq, which the followed run may never reach: read once, never given up as a
      // restore (see `unconfirmed`).
      if (change.seq > entry.unconfirmed) entry.unconfirmed = change.seq;
    } else {
      // At or below what the hub holds: a change heard again, or one of a later run of the id whose old
      // run's end, purge and re-creation the feed never told (a SQLite poll after the purge deleted the
      // old run's last events, a Postgres listener that was away). Taken for the former, the old run's
      // subscribers waited for ever, or got the new run's events past that seq as their run's.
      if (!ofRun && change.seq <= entry.latestSeq && !this.#holds(entry, change.events))
        this.#checkRun(entry);
      if (change.seq > entry.latestSeq) entry.latestSeq = change.seq;
      // The feed carried the committed events (Postgres's NOTIFY when they fit): the ones right after what
      // was dispatched go out without a read. The rest, if any, is read as usual. Not from a change that
      // names no run while the hub follows one: it may be of a later run of the id (run 1's end, purge and
      // run 2's first seqs unheard), whose events right after `readSeq` went out as the run's own, its end
      // included. Its seq is read instead, and a read tells the run it is of (`#sameRun`).
      const known = run !== undefined || entry.run === undefined;
      if (known && change.events !== undefined && this.#dispatchNext(entry, change.events)) {
        if (change.terminal && entry.readSeq === change.seq) entry.endSeq = change.seq;
      }
    }
    this.#pump(entry);
  }

  /** A change or local append named `run` while no run is followed yet (see `laterRun`). */
  #heardRun(entry: Followed, run: number): void {
    if (entry.laterRun !== undefined && run <= entry.laterRun) return;
    entry.laterRun = run;
    entry.laterRunHeard = entry.heard;
  }

  /**
   * True when `events` may be of a run of the id older than the one followed: committed before it was
   * created. A change that does not name its run (see `TaskChange.run`) names only the id, and one of the old run heard late (its
   * notification still in flight when the new run was created and read) carries the old run's events,
   * whose seqs follow on from the new run's: dispatched, they went out as the new run's, its end
   * included. Such a change is only a hint then: the store is read once after it, and finding nothing
   * settles it (see `unconfirmed`). Timestamps are of the store clocks of the replicas
   * that wrote them: a new run's event stamped before its `createdAt` (clocks skewed between replicas)
   * costs a read, never an event; an old run's event stamped at or after the new run's `createdAt` (run 1
   * ended, purged and created again within one millisecond, or clocks skewed by more than retention's
   * age) cannot be told apart, as the store's run fence cannot tell those runs apart either.
   */
  #ofEarlierRun(entry: Followed, events: readonly TaskEvent[]): boolean {
    const run = entry.run;
    return run !== undefined && events.some((event) => event.time < run);
  }

  /**
   * A subscriber read a later run of the followed id than the one the hub's seqs are of: the old run was
   * purged and the id taken again, and every seq, held event and read in flight is the old run's. Held,
   * the old run's events were served from memory to the new run's subscribers, and its seqs, at or above
   * the new run's, kept the new run's events from being dispatched. The hub starts again from that
   * subscriber's read, as after a restore ({@link forgetSeqs}). What was announced before is not
   * forgotten, though: a commit of the new run between that subscriber's load and now was skipped (its
   * seq was not above the old run's), and the subscriber's stream goes live at its load's seq. So the
   * highest seq known is read once from the new position (see `unconfirmed`).
   */
  #newRun(entry: Followed): void {
    entry.runs += 1;
    this.#resets += 1;
    entry.endSeq = undefined;
    if (entry.latestSeq > entry.unconfirmed) entry.unconfirmed = entry.latestSeq;
    entry.readSeq = undefined;
    entry.latestSeq = 0;
    entry.emptyReads = 0;
    entry.pending = [];
    if (entry.retryTimer !== undefined) clearTimeout(entry.retryTimer);
    entry.retryTimer = undefined;
    this.#recent.drop(entry.taskId);
  }

  /**
   * A change or local append of `run`, a later run of the id than the one followed: the hub starts over
   * on it (`#newRun`) and restarts the subscribers, who load that run and tell the hub where to read from
   * ({@link observe}); until then nothing is read or dispatched.
   */
  #startOver(entry: Followed, run: number): void {
    this.#newRun(entry);
    entry.run = run;
    this.#restart(entry, run);
  }

  /**
   * True when `events` (read from the store, in seq order) reach past the end of the run followed (see
   * `endSeq`). A read names the id, not the run: one that ran after the followed run was purged and its
   * id taken again returns the new run's events at the seqs after `readSeq`, and dispatched, they went
   * out as the old run's. One read is one run's (a store answers it from one snapshot, and a run is
   * purged with its events before its id is taken again), so its last event tells: past the end, every
   * event of the read is the later run's, those below the end too. Checked per read, not per change.
   */
  #pastEnd(entry: Followed, events: readonly TaskEvent[]): boolean {
    const end = entry.endSeq;
    if (end === undefined) return false;
    const last = events.at(-1) as TaskEvent;
    return last.seq > end || (last.seq === end && !isTerminalType(last.type));
  }

  /**
   * Whether a read of the hub's (`read`, after the seq before `held` when the hub holds the event at its
   * position, else after its position) is of the run followed. A read names the id, not the run: one
   * served after the run ended, was purged and its id written again (a read that waited on a busy pool,
   * or for the store to come back) returns the later run's events, whose seqs follow on from what the hub
   * dispatched, and handed out, they went out to the run's watchers as its own, and the run's own end
   * never did. One read is one run's (see `#pastEnd`): the event at the position, read again, is the one
   * dispatched (same time and type; one of a later run is stamped at or after its creation, after the
   * purge) only in a read of the run followed. When the hub does not hold it (its position is a load's),
   * a read that found anything is followed by a read of the task: the run followed still there means
   * the read was of it (a run's `createdAt` never comes back). That read is once per position the hub
   * starts from, not per event: what it dispatches it holds.
   */
  async #sameRun(entry: Followed, read: readonly TaskEvent[], held: TaskEvent | undefined): Promise<boolean> {
    if (held !== undefined) {
      const first = read[0];
      return (
        first !== undefined && first.seq === held.seq && first.time === held.time && first.type === held.type
      );
    }
    if (read.length === 0 || entry.run === undefined) return true;
    const task = await this.#store.getTask(entry.taskId);
    return task?.createdAt === entry.run;
  }

  /**
   * True when `events`, read after `from`, stop short of the end of the run followed (see `endSeq`) with
   * room left in their page: a read of that run made once its end was committed returns every event up
   * to it.
   */
  #shortOfEnd(entry: Followed, events: readonly TaskEvent[], from: number): boolean {
    const end = entry.endSeq;
    return end !== undefined && (events.at(-1) as TaskEvent).seq < Math.min(end, from + READ_LIMIT);
  }

  /**
   * True when the hub holds the last of `events` itself (heard again, at-least-once): no read needed.
   * A change without events, or of events the hub does not hold, is read for its run.
   */
  #holds(entry: Followed, events: readonly TaskEvent[] | undefined): boolean {
    const last = events?.at(-1);
    if (last === undefined) return false;
    const held = this.#recent.between(entry.taskId, last.seq - 1, last.seq)?.[0];
    return held !== undefined && held.time === last.time && held.type === last.type;
  }

  /**
   * Reads the task once for its run (one read at a time; a change during it reads once more, after it):
   * a later run of the id starts the hub over from it and restarts the subscribers, and so does a task
   * gone (they find it so). Nothing else learns of such a run when no subscriber loads the task again.
   */
  #checkRun(entry: Followed): void {
    if (entry.run === undefined || entry.closed) return;
    if (entry.checking) {
      entry.checkAgain = true;
      return;
    }
    entry.checking = true;
    void this.#readRun(entry);
  }

  async #readRun(entry: Followed): Promise<void> {
    try {
      do {
        entry.checkAgain = false;
        const runs = entry.runs;
        const epochs = this.#epochs;
        const task = await this.#store.getTask(entry.taskId);
        // Started over meanwhile (a subscriber loaded a later run, a restore): from a read after this one.
        if (entry.closed || runs !== entry.runs || epochs !== this.#epochs) continue;
        const run = task?.createdAt;
        if (run !== undefined && entry.run !== undefined && run <= entry.run) {
          // The run followed, not ended where the hub took it to end (a terminal change of no known run
          // was an earlier run's): reads past that seq go on.
          if (run === entry.run && entry.endSeq !== undefined && task !== undefined) {
            if (task.seq !== entry.endSeq || !isTerminalType(task.status)) {
              entry.endSeq = undefined;
              this.#pump(entry);
            }
          }
          continue;
        }
        if (run !== undefined) this.#startOver(entry, run);
        else this.#restart(entry, undefined);
      } while (entry.checkAgain && !entry.closed);
    } catch (error) {
      this.#metrics.storeErrors.inc();
      if (isLastingReadError(error)) {
        // As for live events: not read again on a timer; a later change reads again.
        this.#logger.warn(
          { err: describeError(error), taskId: entry.taskId },
          "reading a task's run failed; ending the task's subscriptions",
        );
        this.#fail(entry, error);
        return;
      }
      this.#logger.warn(
        { err: describeError(error), taskId: entry.taskId },
        "reading a task's run failed; retrying",
      );
      // Kept on the entry, which clears it when dropped: left to run out, it outlived the task's last
      // subscriber and the hub's close() (a timer the server's shutdown left behind).
      if (entry.closed) return;
      if (entry.checkTimer !== undefined) clearTimeout(entry.checkTimer);
      entry.checkTimer = setTimeout(() => {
        entry.checkTimer = undefined;
        this.#checkRun(entry);
      }, this.#retryDelayMs);
      entry.checkTimer.unref();
    } finally {
      entry.checking = false;
    }
  }

  /** Tells every subscriber of `entry` that the id's task is `run` now (`undefined`: gone). */
  #restart(entry: Followed, run: number | undefined): void {
    for (const subscriber of [...entry.subscribers]) {
      try {
        subscriber.restart?.(run);
      } catch (error) {
        this.#metrics.handlerErrors.inc();
        this.#logger.error(
          { err: describeError(error), taskId: entry.taskId },
          'subscriber failed to restart',
        );
      }
    }
  }

  /** Tells every subscriber of `entry` that a read of the task failed with `error`, a lasting one. */
  #fail(entry: Followed, error: unknown): void {
    for (const subscriber of [...entry.subscribers]) {
      try {
        subscriber.failed?.(error);
      } catch (thrown) {
        this.#metrics.handlerErrors.inc();
        this.#logger.error({ err: describeError(thrown), taskId: entry.taskId }, 'subscriber failed to end');
      }
    }
  }

  #isForeign(epoch: string): boolean {
    const current = this.#epoch();
    return current !== undefined && epoch !== current;
  }

  #drop(entry: Followed): void {
    entry.closed = true;
    if (entry.retryTimer !== undefined) clearTimeout(entry.retryTimer);
    entry.retryTimer = undefined;
    if (entry.checkTimer !== undefined) clearTimeout(entry.checkTimer);
    entry.checkTimer = undefined;
    if (entry.appendWait !== undefined) clearTimeout(entry.appendWait);
    entry.appendWait = undefined;
    this.#followed.delete(entry.taskId);
    this.#recent.drop(entry.taskId);
    try {
      entry.stopFeed?.();
    } catch (error) {
      this.#logger.warn({ err: describeError(error), taskId: entry.taskId }, 'change feed unfollow failed');
    }
  }

  /**
   * Reads and dispatches everything between `readSeq` and `latestSeq`; one read loop per task at a time.
   * `waited`: the read put off for this process's appends in flight is due (see {@link localAppend}).
   */
  #pump(entry: Followed, waited = false): void {
    if (entry.reading || entry.closed || entry.retryTimer !== undefined) return;
    if (entry.readSeq === undefined) return;
    const wanted = Math.max(entry.latestSeq, entry.unconfirmed);
    if (wanted <= entry.readSeq) return;
    if (!waited && entry.localAppends > 0 && wanted - entry.readSeq <= entry.localAppends) {
      // Their commits, most likely, announced before their replies. But an append may hang (a pool
      // exhausted, a connection lost before its query went out) and commit nothing, the gap another
      // writer's: put off for good, a terminal event of another replica's waited for as long as it hung.
      // One timer per task at a time, and only for a notice without its events that beat the reply.
      if (entry.appendWait === undefined) {
        entry.appendWait = setTimeout(() => {
          entry.appendWait = undefined;
          this.#pump(entry, true);
        }, this.#retryDelayMs);
        entry.appendWait.unref();
      }
      return;
    }
    entry.reading = true;
    void this.#readLoop(entry);
  }

  async #readLoop(entry: Followed): Promise<void> {
    try {
      while (
        !entry.closed &&
        entry.readSeq !== undefined &&
        (entry.latestSeq > entry.readSeq || entry.unconfirmed > entry.readSeq)
      ) {
        const epochs = this.#epochs;
        const runs = entry.runs;
        const claimed = entry.latestSeq;
        const heard = entry.heard;
        const hinted = entry.unconfirmed;
        const from = entry.readSeq;
        const end = entry.endSeq;
        // The event at `from`, when the hub holds it, is read again with what follows: it tells the run
        // read (see `#sameRun`) at the cost of one row, not of a read.
        const held = from > 0 ? this.#recent.between(entry.taskId, from - 1, from)?.[0] : undefined;
        const after = held === undefined ? from : from - 1;
        // A failure of a read made in the old epoch, or of the id's old run, says nothing of what the hub
        // follows now, as its events would not: taken for the current run's (`task_not_found` below, read
        // after the old run was purged), it gave up the seqs the new run announced meanwhile, and nothing
        // read them again (its watchers waited for their end for ever).
        let read: readonly TaskEvent[];
        try {
          read = await this.#store.readEvents(entry.taskId, after, READ_LIMIT);
        } catch (error) {
          if (entry.closed) return;
          if (epochs !== this.#epochs || runs !== entry.runs) continue;
          throw error;
        }
        if (entry.closed) return;
        // Read in the old epoch, or of the id's old run: its events mean nothing now; the loop goes on
        // from the new position.
        if (epochs !== this.#epochs || runs !== entry.runs) continue;
        const ofRun = await this.#sameRun(entry, read, held);
        if (entry.closed) return;
        if (epochs !== this.#epochs || runs !== entry.runs) continue;
        if (!ofRun) {
          // Another run's events (or none where the run has one), or a store that went back (restored)
          // under what was dispatched: left to a read of the task's run (`#checkRun` starts the hub over
          // on a later one) and to the server's read of the store's epoch. Until then nothing past what
          // was dispatched is read.
          if (entry.readSeq !== undefined && entry.latestSeq > entry.readSeq) entry.latestSeq = entry.readSeq;
          entry.unconfirmed = 0;
          entry.emptyReads = 0;
          this.#streamHub.wentBack();
          this.#checkRun(entry);
          return;
        }
        const events = held === undefined ? read : read.slice(1);
        if (events.length === 0) {
          // Announced while the read ran: committed after what it saw, maybe. Read again, not counted.
          if (entry.latestSeq > claimed || entry.unconfirmed > hinted) continue;
          // A change heard during the read that raised nothing (a seq the hub already knows of: its own
          // run's, below a seq of the old run heard late) may be a commit that read did not see. It is
          // read again at once, but counted: on a busy task after a restore such changes never stop, and
          // not counting them kept the hub from ever giving the old epoch's seq up (and telling the server).
          const heardDuring = entry.heard !== heard;
          // A seq that may be another run's was read for and is not there: settled.
          entry.unconfirmed = 0;
          if (entry.latestSeq <= entry.readSeq) return;
          entry.emptyReads += 1;
          if (entry.emptyReads > MAX_EMPTY_RETRIES) {
            // The store does not hold the seq announced: a late notice of the store's previous epoch
            // (a restore took the task back below it) claims what no read will ever find, and retrying
            // re-read the task every retryDelayMs for ever. The next notice of a commit reads again.
            this.#logger.warn(
              { taskId: entry.taskId, announcedSeq: entry.latestSeq, storeSeq: entry.readSeq },
              'the change feed announced a seq the store does not hold; giving it up',
            );
            entry.latestSeq = entry.readSeq;
            entry.emptyReads = 0;
            // A store that holds less than its feed announced was most likely restored: the server reads
            // its epoch now rather than at its next heartbeat tick.
            this.#streamHub.wentBack();
            // Or the seq was the followed run's and the id was purged and taken again since, below it: the
            // hub waits for a seq that will never come, and its subscribers for the run's end. A read of the
            // task tells them (a later run or none restarts them; the run followed, nothing).
            this.#checkRun(entry);
            // A change heard during that last read may be a commit below the seq given up: read once more
            // (what it finds is dispatched; finding nothing settles it).
            if (heardDuring) {
              entry.unconfirmed = claimed;
              continue;
            }
            return;
          }
          if (heardDuring) continue;
          // The feed announced a seq the store does not show yet: try again later rather than spin.
          this.#scheduleRetry(entry);
          return;
        }
        entry.emptyReads = 0;
        if (this.#shortOfEnd(entry, events, after)) {
          // The run's end was heard during the read, which may have been served before it: read again.
          if (end !== entry.endSeq) continue;
          // Known as the read started, that end was committed before it: a read of the run followed
          // reaches it (or fills its page). This one is of a later run of the id, whose events below the
          // end follow on from `readSeq` (a change of the end heard after retention purged the run and the
          // id was written again): dispatched, they went out as the run's own. Read again later, unless
          // the read of the task's run finds it is another one (the hub starts over) or gone.
          this.#checkRun(entry);
          this.#scheduleRetry(entry);
          return;
        }
        if (this.#pastEnd(entry, events)) {
          // Another run's events, all of them (see #pastEnd): left to a read of the task's run (`#checkRun`
          // starts the hub over on it). Until then nothing past what was dispatched is read.
          if (entry.readSeq !== undefined && entry.latestSeq > entry.readSeq) entry.latestSeq = entry.readSeq;
          entry.unconfirmed = 0;
          this.#checkRun(entry);
          return;
        }
        // Local appends and the feed's own events may have advanced readSeq while the read was in flight.
        this.#dispatchNext(entry, events);
        const last = events.at(-1) as TaskEvent;
        if (isTerminalType(last.type) && entry.readSeq === last.seq) entry.endSeq = last.seq;
      }
    } catch (error) {
      if (isProgressError(error, ErrorCode.TaskNotFound)) {
        // Purged (retention) since the seq announced: no read of the id finds it, and retried as a store
        // failure, it was read every retryDelayMs while anyone followed it, its subscribers told nothing.
        // Nothing is read past what was dispatched until a change announces more; a read of the task
        // tells the subscribers it is gone, or starts the hub over on the id's later run.
        if (entry.readSeq !== undefined && entry.latestSeq > entry.readSeq) entry.latestSeq = entry.readSeq;
        entry.unconfirmed = 0;
        entry.emptyReads = 0;
        if (entry.run === undefined) this.#restart(entry, undefined);
        else this.#checkRun(entry);
        return;
      }
      this.#metrics.storeErrors.inc();
      if (isLastingReadError(error)) {
        // Not read again on a timer: every read fails alike. A later change reads again.
        this.#logger.warn(
          { err: describeError(error), taskId: entry.taskId },
          "reading live events failed; ending the task's subscriptions",
        );
        this.#fail(entry, error);
        return;
      }
      this.#logger.warn(
        { err: describeError(error), taskId: entry.taskId },
        'reading live events failed; retrying',
      );
      this.#scheduleRetry(entry);
    } finally {
      // Cleared in the same synchronous step as the loop's last check: a change announced after that
      // check finds the flag down and starts a new read.
      entry.reading = false;
    }
  }

  #scheduleRetry(entry: Followed): void {
    if (entry.closed || entry.retryTimer !== undefined) return;
    entry.retryTimer = setTimeout(() => {
      entry.retryTimer = undefined;
      this.#pump(entry);
    }, this.#retryDelayMs);
    entry.retryTimer.unref();
  }

  /**
   * Dispatches the run of `events` (in seq order) that continues right after `readSeq`, skipping those
   * already dispatched and stopping at a gap; returns whether anything went out.
   */
  #dispatchNext(entry: Followed, events: readonly TaskEvent[]): boolean {
    if (entry.readSeq === undefined || entry.closed) return false;
    const first = entry.readSeq + 1;
    let start = 0;
    while (start < events.length && (events[start] as TaskEvent).seq < first) start += 1;
    let end = start;
    while (end < events.length && (events[end] as TaskEvent).seq === first + (end - start)) end += 1;
    if (end === start) return false;
    const fresh = start === 0 && end === events.length ? events : events.slice(start, end);
    entry.readSeq = first + (end - start) - 1;
    if (entry.readSeq > entry.latestSeq) entry.latestSeq = entry.readSeq;
    this.#dispatch(entry, fresh);
    return true;
  }

  /**
   * Hands `events` to the subscribers: at once when nothing is held, else held with whatever else is
   * dispatched for the task until the microtasks queued before the hold have run (still in this tick), then
   * handed over in one call. A group commit resolves many appends in one tick, each dispatched on its own;
   * handed over one by one, every event walked every subscriber's socket state (stream, subscription,
   * writer, queue), which a thousand sockets do not keep in the CPU's caches, and that walk was most of
   * the fan-out's cost (docs/benchmarks-history.md, session 4). A lone event still goes out synchronously.
   * The recent events and `readSeq` move now: a stream catching up meanwhile reads the held events from
   * memory, and drops them when they come live.
   */
  #dispatch(entry: Followed, events: readonly TaskEvent[]): void {
    this.#recent.extend(entry.taskId, events);
    if (this.#holding) {
      if (entry.pending.length === 0) this.#due.push(entry);
      for (const event of events) entry.pending.push(event);
      return;
    }
    this.#holding = true;
    queueMicrotask(this.#flush);
    this.#handOver(entry, events);
  }

  /** The end of a hold: the held events go out, one call per task and subscriber. */
  readonly #flush = (): void => {
    const due = this.#due;
    this.#due = [];
    for (const entry of due) {
      const events = entry.pending;
      entry.pending = [];
      // Nothing when a new run of the id dropped what was held (see `#newRun`).
      if (!entry.closed && events.length > 0) this.#handOver(entry, events);
    }
    // Anything dispatched while handing over (nothing does so today) waits for one more round.
    if (this.#due.length > 0) queueMicrotask(this.#flush);
    else this.#holding = false;
  };

  #handOver(entry: Followed, events: readonly TaskEvent[]): void {
    for (const subscriber of [...entry.subscribers]) {
      try {
        subscriber.deliver(events);
      } catch (error) {
        this.#metrics.handlerErrors.inc();
        this.#logger.error(
          { err: describeError(error), taskId: entry.taskId },
          'subscriber failed to take events',
        );
      }
    }
  }
}
