import type {
  ChangeFeed,
  ChangeListener,
  Clock,
  ProgressError,
  TaskChange,
  Unsubscribe,
} from '@finishline/core';
import { LocalChangeFeed } from '@finishline/core';
import { exhaustive } from '@finishline/core/internal';
import type { ChangeNotice } from './notify-payload.js';

/**
 * The Postgres change feed as subscribers see it: the publication of changes to local subscribers,
 * once per `(taskId, seq)` per process as long as the feed remembers what it published (it forgets it
 * after a restore, a purge, or records of purges it may have missed deleted: a change is then published
 * again, never missed), whichever path reported them first — this store's own
 * commits, `NOTIFY` and the re-read of the `LISTEN` connection (`listen-connection.ts`), or the
 * safety-net poll (`safety-net-poll.ts`). Those paths report into {@link ChangeFeedHub}; the store
 * exposes {@link StoreChangeFeed}, which reads health and counters from each part without the parts
 * knowing of one another.
 *
 * @module
 */

/** The state of the `LISTEN` connection, for health checks. */
export interface ChangeFeedHealth {
  /**
   * True while the `LISTEN` connection is up and has re-read what it missed since its mark. A re-read
   * from the start (after a restore) counts as connected as soon as the connection listens, and a
   * connected connection replaced for it (`forgetSeqs()`) still counts as connected while the new one
   * connects (at most the barrier timeout: 5 × `watermarkIntervalMs`, 1 s at least): nothing committed
   * meanwhile is missed (see `listen-connection.ts`). `listenerPid` is `null` until the new one connects.
   */
  connected: boolean;
  /** Backend process id of the `LISTEN` connection (for `pg_stat_activity`), or `null`. */
  listenerPid: number | null;
  /** The last connection error, or `null` if there was none. */
  lastError: ProgressError | null;
  /** Clock time of the last successful (re)connect, or `null`. */
  lastConnectedAt: number | null;
  /** Failed connection attempts since the last success. */
  failedAttempts: number;
  /** The high-water mark (an `xid8`, as text) from which a reconnect re-reads, or `null` before the first connect. */
  watermark: string | null;
}

/** Counters of the feed since the store opened; read them for metrics. */
export interface ChangeFeedStats {
  /**
   * Changes handed to subscribers: each `(taskId, seq)` once per store, unless the feed had to forget
   * what it published (see `listen-connection.ts`), after which some are handed again.
   */
  published: number;
  /** …of which this store's own commits published directly. */
  fromCommits: number;
  /** …of which `NOTIFY` delivered (commits of other stores or processes). */
  fromNotifications: number;
  /** …of which the re-read after a reconnect found (notifications lost while disconnected). */
  replayed: number;
  /**
   * …of which the safety-net poll found before any notification did: notifications that were lost or
   * arrived later than the poll. Nonzero while the listener is healthy means notifications go missing
   * or are very late.
   */
  missedByNotifications: number;
  /** Changes dropped because they were already published (every own commit also comes back by `NOTIFY`). */
  duplicates: number;
  /** `NOTIFY` messages received on the channel, barriers included. */
  notifications: number;
  /** Messages on the channel this store did not write; ignored. */
  malformedNotifications: number;
  /** Successful reconnects of the `LISTEN` connection (the first connect is not counted). */
  reconnects: number;
  /** Safety-net polls that failed (the next one retries). */
  pollErrors: number;
}

/** The counters {@link ChangeFeedHub} keeps: what it published, and from where. */
export type PublicationStats = Pick<
  ChangeFeedStats,
  'published' | 'fromCommits' | 'fromNotifications' | 'replayed' | 'missedByNotifications' | 'duplicates'
>;

/** The counters the `LISTEN` connection keeps. */
export type ListenStats = Pick<ChangeFeedStats, 'notifications' | 'malformedNotifications' | 'reconnects'>;

/** The counters the safety-net poll keeps. */
export type PollStats = Pick<ChangeFeedStats, 'pollErrors'>;

/**
 * The change feed of a `PostgresProgressStore`: a {@link ChangeFeed} with health and counters.
 *
 * @example
 * ```ts
 * const stop = store.changes.subscribe(({ taskId, seq }) => wakeWatchers(taskId, seq));
 * const unfollow = store.changes.follow(taskId); // the safety-net poll now asks about this task
 * if (!store.changes.health().connected) log.warn('LISTEN connection down; relying on the poll');
 * metrics.set('missed_by_notifications', store.changes.stats().missedByNotifications);
 * ```
 */
export interface PostgresChangeFeed extends ChangeFeed {
  subscribe(listener: ChangeListener): Unsubscribe;
  follow(taskId: string): Unsubscribe;
  /** Ids of the tasks followed now (what the safety-net poll asks about). */
  followedTaskIds(): string[];
  /**
   * The store's epoch changed: what was published of each task is forgotten (see {@link ChangeFeed}),
   * and the `LISTEN` connection is replaced, its re-read reporting every task the store holds once (the
   * restored database's transaction ids may be below its mark; see `listen-connection.ts`).
   */
  forgetSeqs(): void;
  /**
   * Every store's `renewEpoch` on the channel is heard here through its notice (see {@link ChangeFeed}), once
   * a read of the epoch finds it changed: any role that can connect may `NOTIFY` on the channel.
   */
  onEpochRenewed(listener: () => void): Unsubscribe;
  health(): ChangeFeedHealth;
  stats(): ChangeFeedStats;
}

/** Where a change came from; decides which counter it adds to. */
export type ChangeSource = 'commit' | 'notification' | 'replay' | 'poll';

/** Per-task memory of what was published, so each `(taskId, seq)` reaches subscribers once. */
interface Published {
  seq: number;
  /** Clock time at which the terminal change was published; `undefined` while running. */
  terminalAt: number | undefined;
  /** The run (`createdAt`) the reports of `seq` named, when one did. */
  run?: number | undefined;
}

/**
 * How many tasks' published seqs the feed remembers. Past it the least recently changed unfollowed
 * tasks are forgotten; a forgotten task's next change is published from the seq it carries (no fill-in),
 * which is still correct, only less complete.
 */
const PUBLISHED_CAPACITY = 50_000;
/**
 * Past {@link PUBLISHED_CAPACITY}, the feed forgets down to this many at once. Forgetting one task per
 * change instead walked the Map from its start every time, over the entries deleted before it, which
 * Map iteration skips one by one until the table is rehashed: a re-read from the start reporting 200,000
 * tasks took 7.8 s of one event-loop turn (0.3 s in batches).
 */
const PUBLISHED_LOW_WATER = 45_000;
/** Terminal tasks are forgotten this long after their terminal change (ids may be reused after retention). */
const TERMINAL_MEMORY_MS = 60_000;
/** The longest run of seqs filled in at once; beyond it only the latest ones are published. */
const MAX_FILL = 10_000;

/**
 * Publishes changes to local subscribers, each `(taskId, seq)` once and in seq order per task, whatever
 * path reported it first (own commit, `NOTIFY`, re-read, poll). A report of `firstSeq..seq` for a task
 * whose last published seq is `p` publishes `p + 1..seq`: the log has no gaps, so the seqs in between
 * exist even when their own report was lost.
 */
export class ChangeFeedHub {
  readonly #local: LocalChangeFeed;
  readonly #clock: Clock;
  readonly #published = new Map<string, Published>();
  readonly #followed = new Map<string, number>();
  /** Per task, the last seq of this store's own append transaction in flight (see {@link expectCommit}). */
  readonly #pending = new Map<string, number>();
  /** Notifications of pending seqs, held until their transaction settles (see {@link expectCommit}). */
  readonly #held = new Map<string, ChangeNotice[]>();
  /**
   * Tasks whose transaction in flight was sent before the last {@link forgetAll}, until it settles: what
   * it committed may be of the old epoch, so its own changes are not published (see {@link forgetAll}).
   */
  readonly #sentBefore = new Set<string>();
  /** Counts the forgets of what was published ({@link forgetCount}). */
  #forgets = 0;
  /** The forget count at the last forget of each followed task, while followed. */
  readonly #forgottenAt = new Map<string, number>();
  /** The forget count at the last forget of every task ({@link forgetAll}, {@link forgetPublished}). */
  #forgotAllAt = 0;
  readonly #counters: PublicationStats = {
    published: 0,
    fromCommits: 0,
    fromNotifications: 0,
    replayed: 0,
    missedByNotifications: 0,
    duplicates: 0,
  };

  /** Called when a report shows the store went back below what was published (see {@link wentBack}). */
  readonly #onWentBack: (taskId: string, seq: number, publishedSeq: number) => void;
  /** Hears a failed read of the clock when a change ended (see {@link #endedAt}). */
  readonly #onClockError: (error: unknown) => void;
  /** The last time the clock gave, which stands in for one it fails to give (see {@link #endedAt}). */
  #lastTime = 0;
  /** A failed read of the clock was reported and none succeeded since: the next failures are not. */
  #clockFailing = false;

  constructor(
    clock: Clock,
    onListenerError: (error: unknown) => void,
    onWentBack: (taskId: string, seq: number, publishedSeq: number) => void = () => {},
    onClockError: (error: unknown) => void = () => {},
  ) {
    this.#clock = clock;
    this.#local = new LocalChangeFeed(onListenerError);
    this.#onWentBack = onWentBack;
    this.#onClockError = onClockError;
  }

  subscribe(listener: ChangeListener): Unsubscribe {
    return this.#local.subscribe(listener);
  }

  onEpochRenewed(listener: () => void): Unsubscribe {
    return this.#local.onEpochRenewed(listener);
  }

  /**
   * The store's epoch was renewed (this store renewed it, or a read found it renewed): the subscribers read it
   * now, unless `epoch` is the one known already (reported before: a notice read back before the renewal's
   * own reply). Without `epoch` (a notice that could not be read back), {@link knownEpoch} stays.
   */
  epochRenewed(epoch?: string): void {
    if (epoch !== undefined) {
      if (epoch === this.knownEpoch) return;
      this.knownEpoch = epoch;
    }
    this.#local.publishEpochRenewed();
  }

  /**
   * The store's epoch as last read or renewed (`undefined` until then): what a renewal after lost commits
   * starts from (see `PostgresProgressStore`'s `#wentBack`). Never a notice's word alone: any role that can
   * connect may `NOTIFY` on the channel, so a notice's epoch is read back first (`#epochNoticed`).
   */
  get knownEpoch(): string | undefined {
    return this.#knownEpoch;
  }

  set knownEpoch(epoch: string | undefined) {
    if (epoch !== this.#knownEpoch) this.#epochWrites += 1;
    this.#knownEpoch = epoch;
  }

  /**
   * How many times {@link knownEpoch} changed: a read of the epoch begun before a later change may be older
   * than it. (Set to the value it had, as every `getEpoch` does, it counts nothing.)
   */
  get epochWrites(): number {
    return this.#epochWrites;
  }

  #knownEpoch: string | undefined;
  #epochWrites = 0;

  follow(taskId: string): Unsubscribe {
    this.#followed.set(taskId, (this.#followed.get(taskId) ?? 0) + 1);
    let active = true;
    return () => {
      if (!active) return;
      active = false;
      const count = (this.#followed.get(taskId) ?? 1) - 1;
      if (count <= 0) {
        this.#followed.delete(taskId);
        this.#forgottenAt.delete(taskId);
      } else this.#followed.set(taskId, count);
    };
  }

  followedTaskIds(): string[] {
    return [...this.#followed.keys()];
  }

  /** The counters of publication (see {@link ChangeFeedStats}). */
  stats(): PublicationStats {
    return { ...this.#counters };
  }

  /** The last seq published for `taskId`, if remembered. */
  publishedSeq(taskId: string): number | undefined {
    return this.#published.get(taskId)?.seq;
  }

  /**
   * A task was created at seq 0. Start its memory afresh when the id is unknown or belonged to a task that
   * ended (retention may free an id for reuse), but keep a running task's memory: another process may
   * already have appended to the new task, and its change may have been published before this call.
   */
  resetTask(taskId: string): void {
    const known = this.#published.get(taskId);
    if (known === undefined || known.terminalAt !== undefined)
      this.#remember(taskId, { seq: 0, terminalAt: undefined });
  }

  /**
   * The store's epoch changed (a restore): forget every task's published seqs, which may now be too high.
   * Nothing received or sent before is published after it: a notification held for this store's own
   * transaction, or that transaction's own changes, may be of the old epoch (committed before the restore,
   * its reply late), and its events would pass for the restored task's. Whatever of them the restored
   * store holds, the `LISTEN` connection's re-read from the start, which follows this call, reports.
   */
  forgetAll(): void {
    this.#forgotAllAt = ++this.#forgets;
    this.#published.clear();
    this.#held.clear();
    for (const taskId of this.#pending.keys()) this.#sentBefore.add(taskId);
  }

  /** Tasks were deleted by retention: forget them, so a new task with the same id starts from seq 1. */
  forget(taskIds: Iterable<string>): void {
    const at = ++this.#forgets;
    for (const taskId of taskIds) {
      this.#published.delete(taskId);
      if (this.#followed.has(taskId)) this.#forgottenAt.set(taskId, at);
    }
  }

  /**
   * A count of forgets so far: the safety-net poll notes it before its query, and skips the tasks
   * {@link forgottenSince} then (what it read may be of a purged task: reported into the emptied memory,
   * its seqs would hide a new task's up to them). It asks again next time.
   */
  forgetCount(): number {
    return this.#forgets;
  }

  /** True when the followed `taskId`'s published seq was forgotten after {@link forgetCount} returned `count`. */
  forgottenSince(taskId: string, count: number): boolean {
    return this.#forgotAllAt > count || (this.#forgottenAt.get(taskId) ?? 0) > count;
  }

  /**
   * Any task may have been deleted by retention unheard (the `LISTEN` connection's re-read found that the
   * records of some purges it may have missed are gone; see `listen-connection.ts`): forget what was
   * published of every task, as {@link forget} would of each. Unlike {@link forgetAll}, nothing received
   * before is suspect: held notifications and this store's own transactions in flight are kept.
   */
  forgetPublished(): void {
    this.#forgotAllAt = ++this.#forgets;
    this.#published.clear();
  }

  /**
   * This store is about to send a transaction that commits `taskId`'s seqs up to `seq`. Until
   * {@link settled}, a notification of those seqs is held, not published: its own commit's reply usually
   * follows within the same I/O turn and publishes the change itself, with its events built only if a
   * subscriber reads them, where publishing from the notification parses and freezes every event of the
   * payload first (a store hears its own commits, and at hundreds of tasks per transaction the
   * notifications often arrive before the reply). A held notification is never dropped: once the
   * transaction settled it is reported, a duplicate if the commit published it (unless a restore was
   * noticed meanwhile: see {@link forgetAll}).
   */
  expectCommit(taskId: string, seq: number): void {
    this.#pending.set(taskId, seq);
  }

  /**
   * The transaction that was to commit `taskIds`' pending seqs ended: committed (and its changes
   * published), failed, or unknown. Reports the notifications held for them.
   */
  settled(taskIds: Iterable<string>): void {
    for (const taskId of taskIds) {
      this.#pending.delete(taskId);
      if (this.#sentBefore.size > 0) this.#sentBefore.delete(taskId);
      const held = this.#held.get(taskId);
      if (held === undefined) continue;
      this.#held.delete(taskId);
      for (const change of held) this.report(change, 'notification');
    }
  }

  /**
   * How many of `taskId`'s seqs `from..to` a held notification reported: those up to the highest held
   * seq (a report of `..seq` stands for every seq before it, as {@link report} fills them in).
   */
  #heldAmong(taskId: string, from: number, to: number): number {
    const held = this.#held.get(taskId);
    if (held === undefined) return 0;
    const top = Math.max(...held.map((change) => change.seq));
    return Math.max(0, Math.min(to, top) - from + 1);
  }

  /** True when `change` is within seqs this store's own transaction in flight is committing. */
  #isPending(change: ChangeNotice): boolean {
    const pending = this.#pending.get(change.taskId);
    return pending !== undefined && change.seq <= pending;
  }

  /**
   * Reports that `change.taskId` has the committed seqs `firstSeq..seq`, `seq` being terminal when
   * `terminal`. Publishes what was not published yet, each change with its event when the report
   * carries `events` (`firstSeq..seq`); returns how many changes that was. A notification of seqs this
   * store is committing itself is held until that transaction settles (see {@link expectCommit}).
   */
  report(change: ChangeNotice, source: ChangeSource): number {
    const { taskId, firstSeq, seq, terminal, run } = change;
    if (source === 'notification' && this.#isPending(change)) {
      const held = this.#held.get(taskId);
      if (held === undefined) this.#held.set(taskId, [change]);
      else held.push(change);
      return 0;
    }
    const known = this.#published.get(taskId);
    if (known !== undefined && seq <= known.seq) {
      if (terminal && this.#contradicts(known, seq, run)) {
        // The store lost commits whose seqs were published (see `wentBack`): remembered as reported, so
        // it is told once, and the renewed epoch's re-read publishes the task as the store holds it.
        this.#remember(taskId, { seq, terminalAt: this.#endedAt(), run: run ?? known.run });
        this.#onWentBack(taskId, seq, known.seq);
        return 0;
      }
      this.#counters.duplicates += 1;
      return 0;
    }
    if (seq < 1) {
      if (known === undefined) this.#remember(taskId, { seq: 0, terminalAt: undefined });
      return 0;
    }
    let from = known === undefined ? firstSeq : known.seq + 1;
    if (seq - from + 1 > MAX_FILL) from = seq - MAX_FILL + 1;
    this.#remember(taskId, {
      seq,
      terminalAt: terminal ? this.#endedAt() : undefined,
      run: run ?? known?.run,
    });
    // The report's events cover firstSeq..seq; seqs filled in below firstSeq go without one.
    const events = change.events?.length === seq - firstSeq + 1 ? change.events : undefined;
    for (let current = from; current <= seq; current++) {
      const isTerminal = terminal && current === seq;
      const event = current >= firstSeq ? events?.[current - firstSeq] : undefined;
      const published: TaskChange =
        event === undefined
          ? { taskId, seq: current, terminal: isTerminal }
          : { taskId, seq: current, terminal: isTerminal, events: Object.freeze([event]) };
      // Seqs filled in below firstSeq are of the same run: a report names seqs of one run only.
      if (run !== undefined) published.run = run;
      this.#local.publish(Object.freeze(published));
    }
    const count = seq - from + 1;
    this.#counters.published += count;
    switch (source) {
      case 'commit':
        this.#counters.fromCommits += count;
        break;
      case 'notification':
        this.#counters.fromNotifications += count;
        break;
      case 'replay':
        this.#counters.replayed += count;
        break;
      case 'poll':
        // A poll that sees a task for the first time has nothing to compare with: not counted as a miss;
        // nor are seqs whose notification arrived and is held (see expectCommit).
        if (known !== undefined)
          this.#counters.missedByNotifications += count - this.#heldAmong(taskId, from, seq);
        break;
      default:
        exhaustive(source, 'change source');
    }
    return count;
  }

  /**
   * True when the committed state a report or poll read (`seq` of the run `run`, terminal or not)
   * contradicts what was published of `taskId`: the task ends at or below a seq published as running, or
   * below a published end. Within one run a task has no seq past its terminal one, so the store went
   * back: a failover to a standby that lacked the last commits, or a restore without `renewEpoch()`, and
   * the task's worker appended again over the lost seqs. Reported, a change at a seq already published
   * was dropped as a duplicate (the poll compares seqs only), and a new end at a lost seq never reached
   * anyone. A report of a run other than the one published is no contradiction. Only a terminal state is
   * told apart: a running task's new events at lost seqs look like the lost ones until it passes them.
   */
  wentBack(taskId: string, seq: number, terminal: boolean, run?: number): boolean {
    const known = this.#published.get(taskId);
    return terminal && known !== undefined && seq <= known.seq && this.#contradicts(known, seq, run);
  }

  #contradicts(known: Published, seq: number, run: number | undefined): boolean {
    if (run !== undefined && known.run !== undefined && run !== known.run) return false;
    return known.terminalAt === undefined || seq < known.seq;
  }

  /**
   * True when reporting `change` would publish something now (its last seq was not published yet, and
   * it is not held for this store's own transaction in flight): whether its events are worth parsing.
   */
  isNew(change: ChangeNotice): boolean {
    if (this.#isPending(change)) return false;
    const known = this.#published.get(change.taskId);
    return known === undefined || change.seq > known.seq;
  }

  /** Publishes one of this store's own committed events, with the event when it is given. */
  publishCommitted(change: TaskChange): void {
    // Sent before a restore was noticed: possibly of the old epoch (see forgetAll).
    if (this.#sentBefore.size > 0 && this.#sentBefore.has(change.taskId)) return;
    const known = this.#published.get(change.taskId);
    if (known !== undefined && change.seq <= known.seq) {
      // Its notification came first (it may outrun the COMMIT's reply): a duplicate, events left unbuilt.
      this.#counters.duplicates += 1;
      return;
    }
    if (change.seq >= 1 && (known === undefined || known.seq === change.seq - 1)) {
      // The next seq, as a report of it alone would publish it: the change itself goes out, so events it
      // builds on demand (see `append-pipeline.ts`) are built only if a subscriber reads them.
      this.#remember(change.taskId, {
        seq: change.seq,
        terminalAt: change.terminal ? this.#endedAt() : undefined,
        run: change.run ?? known?.run,
      });
      this.#local.publish(Object.isFrozen(change) ? change : Object.freeze({ ...change }));
      this.#counters.published += 1;
      this.#counters.fromCommits += 1;
      return;
    }
    const notice: ChangeNotice = {
      taskId: change.taskId,
      firstSeq: change.seq - (change.events?.length ?? 1) + 1,
      seq: change.seq,
      terminal: change.terminal,
    };
    if (change.run !== undefined) notice.run = change.run;
    if (change.events !== undefined) notice.events = change.events;
    this.report(notice, 'commit');
  }

  /** Forgets terminal tasks past {@link TERMINAL_MEMORY_MS}, unless followed. Called by the poll. */
  sweep(): void {
    // A clock that throws here fails the poll, which counts and reports it (see SafetyNetPoll.pollOnce).
    this.#lastTime = this.#clock();
    this.#clockFailing = false;
    const cutoff = this.#lastTime - TERMINAL_MEMORY_MS;
    for (const [taskId, entry] of this.#published) {
      if (entry.terminalAt !== undefined && entry.terminalAt <= cutoff && !this.#followed.has(taskId)) {
        this.#published.delete(taskId);
      }
    }
  }

  /**
   * When a task's end is published, for {@link sweep} alone: the last time read when the store's clock throws
   * (one that returned NaN once, which the store's clock refuses). Read bare, that throw went up through
   * whoever reported the end: the `LISTEN` connection's notification handler (pg's socket handler: an
   * uncaught exception, which ends a Node process by default), or a committed append's publication (the
   * batch's appends never settled, their callers waiting for ever, beside an unhandled rejection), with the
   * change left unpublished. Reported to `onClockError`, once per streak of failures.
   */
  #endedAt(): number {
    try {
      this.#lastTime = this.#clock();
      this.#clockFailing = false;
    } catch (error) {
      if (!this.#clockFailing) {
        this.#clockFailing = true;
        this.#onClockError(error);
      }
    }
    return this.#lastTime;
  }

  #remember(taskId: string, entry: Published): void {
    // Delete first so the Map's insertion order is least-recently-changed first.
    this.#published.delete(taskId);
    this.#published.set(taskId, entry);
    if (this.#published.size <= PUBLISHED_CAPACITY) return;
    for (const key of this.#published.keys()) {
      if (this.#published.size <= PUBLISHED_LOW_WATER) break;
      if (!this.#followed.has(key)) this.#published.delete(key);
    }
  }
}

/** The parts of the feed that {@link StoreChangeFeed} reads. */
export interface ChangeFeedParts {
  hub: ChangeFeedHub;
  listener: { health(): ChangeFeedHealth; stats(): ListenStats; rereadAll(): void };
  poll: { stats(): PollStats };
}

/** The store's {@link PostgresChangeFeed}: subscriptions from the hub, health and counters from every part. */
export class StoreChangeFeed implements PostgresChangeFeed {
  readonly #parts: ChangeFeedParts;

  constructor(parts: ChangeFeedParts) {
    this.#parts = parts;
  }

  subscribe(listener: ChangeListener): Unsubscribe {
    return this.#parts.hub.subscribe(listener);
  }

  follow(taskId: string): Unsubscribe {
    return this.#parts.hub.follow(taskId);
  }

  followedTaskIds(): string[] {
    return this.#parts.hub.followedTaskIds();
  }

  onEpochRenewed(listener: () => void): Unsubscribe {
    return this.#parts.hub.onEpochRenewed(listener);
  }

  forgetSeqs(): void {
    this.#parts.hub.forgetAll();
    // The restored database's transaction ids may be below the mark the re-read starts from.
    this.#parts.listener.rereadAll();
  }

  health(): ChangeFeedHealth {
    return this.#parts.listener.health();
  }

  stats(): ChangeFeedStats {
    const { hub, listener, poll } = this.#parts;
    return { ...hub.stats(), ...listener.stats(), ...poll.stats() };
  }
}
