import type { ChangeFeed, ChangeListener, Clock, TaskChange, Unsubscribe } from '@finishline/core';
import { ErrorCode, LocalChangeFeed, ProgressError } from '@finishline/core';
import type { BackoffOptions } from '@finishline/core/internal';
import { backoffDelayMs } from '@finishline/core/internal';
import { type ChangeNotice, decodeNotice } from './notify-payload.js';
import { toProgressError } from './pg-errors.js';

/**
 * The Postgres change feed: one `LISTEN` connection per store, the publication of changes to local
 * subscribers exactly once per process, and the re-read that makes a reconnect lose nothing.
 *
 * ## Why re-read by transaction id, not by a serial id
 *
 * Notifications sent while the listener is disconnected are gone, so after every (re)connect it re-reads
 * what was committed since its high-water mark. A `bigserial` event id is no such mark: ids are taken
 * when rows are inserted, not when they commit, so a transaction holding id 100 can commit after one
 * holding id 101 — a reader that saw 101 and resumes "after 101" skips 100 forever. Each event row
 * therefore records `pg_current_xact_id()` of its transaction, and the mark is the `xmin` of a
 * snapshot: every transaction with an xid below `xmin` had finished when the snapshot was taken, and
 * every later commit has an xid of at least `xmin`. So:
 *
 * 1. On connect: `LISTEN`, then in ONE statement read `xmin` of the statement's snapshot and the events
 *    with `xid >= mark` (grouped per task). Publish them; `mark := xmin`. Nothing committed before that
 *    snapshot is missed (it is in the result or below the old mark, already delivered), and nothing
 *    after it (`LISTEN` was already active).
 * 2. While connected, the mark advances by a barrier: the listener runs
 *    `pg_notify(channel, {barrier, xmin of this statement's snapshot})`. Notifications arrive in commit
 *    order, and every transaction below that `xmin` queued its notification before the barrier's, so
 *    once the barrier comes back all of them were delivered: `mark := xmin`. A barrier lost with the
 *    connection simply leaves the mark where it was — the next re-read covers a bit more.
 *
 * A transaction left open for hours holds every snapshot's `xmin` back, and with it the mark; a re-read
 * then covers more events (more work, never a miss). Re-reads are grouped per task, so their size is
 * the number of tasks that changed, not the number of events.
 *
 * @module
 */

/** A `NOTIFY` message as `pg` delivers it (the part the feed reads). */
export interface PgNotification {
  channel: string;
  payload?: string | undefined;
}

/**
 * The part of a `pg.Client` the `LISTEN` connection calls. A dedicated client, never one from the pool:
 * a pooled connection would be handed to other queries between notifications.
 */
export interface PgListenClient {
  connect(): Promise<unknown>;
  query(text: string, values?: unknown[]): Promise<{ rows: unknown[] }>;
  end(): Promise<unknown>;
  on(event: 'notification', listener: (message: PgNotification) => void): unknown;
  on(event: 'error', listener: (error: Error) => void): unknown;
  on(event: 'end', listener: () => void): unknown;
  /** The backend's process id once connected (`pg` sets it); reported in {@link ChangeFeedHealth}. */
  readonly processID?: number | null | undefined;
}

/** The state of the `LISTEN` connection, for health checks. */
export interface ChangeFeedHealth {
  /** True while the `LISTEN` connection is up and has re-read what it missed. */
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
  /** Changes handed to subscribers (each `(taskId, seq)` at most once per store). */
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
}

/**
 * How many tasks' published seqs the feed remembers. Past it the least recently changed unfollowed
 * tasks are forgotten; a forgotten task's next change is published from the seq it carries (no fill-in),
 * which is still correct, only less complete.
 */
const PUBLISHED_CAPACITY = 50_000;
/** Terminal tasks are forgotten this long after their terminal change (ids may be reused after retention). */
const TERMINAL_MEMORY_MS = 60_000;
/** The shortest wait for a barrier's answer before the `LISTEN` connection is deemed dead. */
const MIN_BARRIER_TIMEOUT_MS = 1000;
/** The longest run of seqs filled in at once; beyond it only the latest ones are published. */
const MAX_FILL = 10_000;

/**
 * Publishes changes to local subscribers, each `(taskId, seq)` once and in seq order per task, whatever
 * path reported it first (own commit, `NOTIFY`, re-read, poll). A report of `firstSeq..seq` for a task
 * whose last published seq is `p` publishes `p + 1..seq`: the log has no gaps, so the seqs in between
 * exist even when their own report was lost.
 */
export class ChangeFeedHub implements PostgresChangeFeed {
  readonly #local: LocalChangeFeed;
  readonly #clock: Clock;
  readonly #published = new Map<string, Published>();
  readonly #followed = new Map<string, number>();
  readonly #counters: ChangeFeedStats = {
    published: 0,
    fromCommits: 0,
    fromNotifications: 0,
    replayed: 0,
    missedByNotifications: 0,
    duplicates: 0,
    notifications: 0,
    malformedNotifications: 0,
    reconnects: 0,
    pollErrors: 0,
  };
  #health: () => ChangeFeedHealth = () => ({
    connected: false,
    listenerPid: null,
    lastError: null,
    lastConnectedAt: null,
    failedAttempts: 0,
    watermark: null,
  });

  constructor(clock: Clock, onListenerError: (error: unknown) => void) {
    this.#clock = clock;
    this.#local = new LocalChangeFeed(onListenerError);
  }

  subscribe(listener: ChangeListener): Unsubscribe {
    return this.#local.subscribe(listener);
  }

  follow(taskId: string): Unsubscribe {
    this.#followed.set(taskId, (this.#followed.get(taskId) ?? 0) + 1);
    let active = true;
    return () => {
      if (!active) return;
      active = false;
      const count = (this.#followed.get(taskId) ?? 1) - 1;
      if (count <= 0) this.#followed.delete(taskId);
      else this.#followed.set(taskId, count);
    };
  }

  followedTaskIds(): string[] {
    return [...this.#followed.keys()];
  }

  health(): ChangeFeedHealth {
    return this.#health();
  }

  stats(): ChangeFeedStats {
    return { ...this.#counters };
  }

  /** Connects the health report to the `LISTEN` connection. */
  setHealthSource(source: () => ChangeFeedHealth): void {
    this.#health = source;
  }

  /** Adds to a counter that the feed's collaborators (listener, poll) maintain. */
  count(counter: 'notifications' | 'malformedNotifications' | 'reconnects' | 'pollErrors'): void {
    this.#counters[counter] += 1;
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

  /** Tasks were deleted by retention: forget them, so a new task with the same id starts from seq 1. */
  forget(taskIds: Iterable<string>): void {
    for (const taskId of taskIds) this.#published.delete(taskId);
  }

  /**
   * Reports that `change.taskId` has the committed seqs `firstSeq..seq`, `seq` being terminal when
   * `terminal`. Publishes what was not published yet; returns how many changes that was.
   */
  report(change: ChangeNotice, source: ChangeSource): number {
    const { taskId, firstSeq, seq, terminal } = change;
    const known = this.#published.get(taskId);
    if (known !== undefined && seq <= known.seq) {
      this.#counters.duplicates += 1;
      return 0;
    }
    if (seq < 1) {
      if (known === undefined) this.#remember(taskId, { seq: 0, terminalAt: undefined });
      return 0;
    }
    let from = known === undefined ? firstSeq : known.seq + 1;
    if (seq - from + 1 > MAX_FILL) from = seq - MAX_FILL + 1;
    this.#remember(taskId, { seq, terminalAt: terminal ? this.#clock() : undefined });
    for (let current = from; current <= seq; current++) {
      this.#local.publish(Object.freeze({ taskId, seq: current, terminal: terminal && current === seq }));
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
        // A poll that sees a task for the first time has nothing to compare with: not counted as a miss.
        if (known !== undefined) this.#counters.missedByNotifications += count;
        break;
      default: {
        const unreachable: never = source;
        throw new ProgressError(ErrorCode.Internal, `Unknown change source ${String(unreachable)}`);
      }
    }
    return count;
  }

  /** Publishes one of this store's own committed events. */
  publishCommitted(change: TaskChange): void {
    this.report(
      { taskId: change.taskId, firstSeq: change.seq, seq: change.seq, terminal: change.terminal },
      'commit',
    );
  }

  /** Forgets terminal tasks past {@link TERMINAL_MEMORY_MS}, unless followed. Called by the poll. */
  sweep(): void {
    const cutoff = this.#clock() - TERMINAL_MEMORY_MS;
    for (const [taskId, entry] of this.#published) {
      if (entry.terminalAt !== undefined && entry.terminalAt <= cutoff && !this.#followed.has(taskId)) {
        this.#published.delete(taskId);
      }
    }
  }

  #remember(taskId: string, entry: Published): void {
    // Delete first so the Map's insertion order is least-recently-changed first.
    this.#published.delete(taskId);
    this.#published.set(taskId, entry);
    if (this.#published.size <= PUBLISHED_CAPACITY) return;
    for (const key of this.#published.keys()) {
      if (this.#published.size <= PUBLISHED_CAPACITY) break;
      if (!this.#followed.has(key)) this.#published.delete(key);
    }
  }
}

/** A row of the re-read statement: the snapshot's xmin, and one task that changed since the mark. */
interface ReplayRow {
  xmin: string;
  task_id: string | null;
  first_seq: string | number | null;
  last_seq: string | number | null;
  terminal: boolean | null;
}

/** What {@link ListenConnection} needs. */
export interface ListenConnectionOptions {
  hub: ChangeFeedHub;
  channel: string;
  /** Makes a new, unconnected client for each (re)connect. */
  createClient: () => PgListenClient | Promise<PgListenClient>;
  /** `LISTEN "<channel>"`. */
  listenSql: string;
  /** The re-read; `$1` and `$2` are both the mark (text) or `NULL`. */
  replaySql: string;
  /** The barrier; `$1` is the channel, `$2` the listener id. */
  barrierSql: string;
  watermarkIntervalMs: number;
  reconnect: BackoffOptions;
  clock: Clock;
  onError: (error: ProgressError) => void;
}

/**
 * The dedicated `LISTEN` connection: connects, listens, re-reads past its mark, advances the mark by
 * barriers, and reconnects with full-jitter backoff whenever the connection fails.
 */
export class ListenConnection {
  readonly #options: ListenConnectionOptions;
  readonly #listenerId = globalThis.crypto.randomUUID();
  #client: PgListenClient | undefined;
  /** Bumped on every connect and every loss; events of an older generation are ignored. */
  #generation = 0;
  #started = false;
  #closed = false;
  #connected = false;
  #failedAttempts = 0;
  #lastError: ProgressError | null = null;
  #lastConnectedAt: number | null = null;
  #watermark: bigint | undefined;
  #retryTimer: ReturnType<typeof setTimeout> | undefined;
  #barrierTimer: ReturnType<typeof setTimeout> | undefined;
  #barrierWatchdog: ReturnType<typeof setTimeout> | undefined;
  #connecting: Promise<void> | undefined;

  constructor(options: ListenConnectionOptions) {
    this.#options = options;
    options.hub.setHealthSource(() => this.health());
  }

  health(): ChangeFeedHealth {
    const pid = this.#connected ? this.#client?.processID : undefined;
    return {
      connected: this.#connected,
      listenerPid: typeof pid === 'number' ? pid : null,
      lastError: this.#lastError,
      lastConnectedAt: this.#lastConnectedAt,
      failedAttempts: this.#failedAttempts,
      watermark: this.#watermark === undefined ? null : this.#watermark.toString(),
    };
  }

  /** The first connect. Rejects (with `store_unavailable`) instead of retrying: the store fails to open. */
  async start(): Promise<void> {
    const generation = ++this.#generation;
    try {
      await this.#open(generation);
    } catch (error) {
      this.#generation++;
      await this.#endClient();
      throw toProgressError(error, 'Opening the LISTEN connection failed');
    }
    this.#started = true;
  }

  /** Ends the connection and its timers; no reconnect follows. */
  async close(): Promise<void> {
    this.#closed = true;
    this.#generation++;
    this.#connected = false;
    clearTimeout(this.#retryTimer);
    clearTimeout(this.#barrierTimer);
    this.#clearWatchdog();
    this.#retryTimer = undefined;
    this.#barrierTimer = undefined;
    // A reconnect in progress settles quickly once its client is ended; wait so nothing outlives close.
    const connecting = this.#connecting;
    await this.#endClient();
    await connecting?.catch(() => {});
    await this.#endClient();
  }

  async #open(generation: number): Promise<void> {
    const client = await this.#options.createClient();
    if (generation !== this.#generation) {
      await client.end().catch(() => {});
      throw new Error('The store closed while the LISTEN connection was being created');
    }
    this.#client = client;
    client.on('notification', (message) => {
      if (generation === this.#generation) this.#onNotification(message);
    });
    client.on('error', (error) => this.#lost(generation, error));
    client.on('end', () => this.#lost(generation, new Error('The LISTEN connection ended')));
    await client.connect();
    await client.query(this.#options.listenSql);
    const mark = this.#watermark === undefined ? null : this.#watermark.toString();
    const { rows } = await client.query(this.#options.replaySql, [mark, mark]);
    if (generation !== this.#generation)
      throw new Error('The LISTEN connection was replaced while connecting');
    let xmin: bigint | undefined;
    for (const row of rows as ReplayRow[]) {
      xmin = BigInt(row.xmin);
      if (row.task_id === null || row.first_seq === null || row.last_seq === null) continue;
      const lastSeq = Number(row.last_seq);
      this.#options.hub.report(
        {
          taskId: row.task_id,
          firstSeq: Number(row.first_seq),
          seq: lastSeq,
          terminal: row.terminal === true,
        },
        'replay',
      );
    }
    if (xmin !== undefined) this.#advance(xmin);
    this.#connected = true;
    this.#failedAttempts = 0;
    this.#lastConnectedAt = this.#options.clock();
    this.#scheduleBarrier(generation);
  }

  #onNotification(message: PgNotification): void {
    if (message.channel !== this.#options.channel) return;
    const { hub } = this.#options;
    hub.count('notifications');
    const notice = decodeNotice(message.payload);
    switch (notice.kind) {
      case 'changes':
        for (const change of notice.changes) {
          hub.report(change, 'notification');
        }
        break;
      case 'barrier':
        // Other stores' barriers say nothing about what this connection received.
        if (notice.listenerId === this.#listenerId) this.#advance(notice.xmin);
        break;
      case 'malformed':
        hub.count('malformedNotifications');
        break;
      default: {
        const unreachable: never = notice;
        throw new ProgressError(ErrorCode.Internal, `Unknown notice ${String(unreachable)}`);
      }
    }
  }

  #advance(xmin: bigint): void {
    if (this.#watermark === undefined || xmin > this.#watermark) this.#watermark = xmin;
  }

  #scheduleBarrier(generation: number): void {
    this.#barrierTimer = setTimeout(() => {
      this.#barrierTimer = undefined;
      const client = this.#client;
      if (generation !== this.#generation || client === undefined) return;
      // The barrier doubles as a liveness check: a socket that died silently (no RST, for example behind
      // a NAT or after a failover) would otherwise look connected forever while notifications stop.
      const timeoutMs = Math.max(5 * this.#options.watermarkIntervalMs, MIN_BARRIER_TIMEOUT_MS);
      this.#barrierWatchdog = setTimeout(() => {
        this.#barrierWatchdog = undefined;
        this.#lost(generation, new Error(`The LISTEN connection did not answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#barrierWatchdog.unref?.();
      client.query(this.#options.barrierSql, [this.#options.channel, this.#listenerId]).then(
        () => {
          if (generation !== this.#generation) return;
          this.#clearWatchdog();
          this.#scheduleBarrier(generation);
        },
        (error: unknown) => {
          // Usually the connection failed, and its 'error'/'end' event starts the reconnect. Otherwise
          // report it and try again later: meanwhile the mark stays put, which only widens a re-read.
          if (generation !== this.#generation) return;
          this.#clearWatchdog();
          this.#options.onError(toProgressError(error, 'Advancing the change feed watermark failed'));
          this.#scheduleBarrier(generation);
        },
      );
    }, this.#options.watermarkIntervalMs);
    this.#barrierTimer.unref?.();
  }

  #clearWatchdog(): void {
    clearTimeout(this.#barrierWatchdog);
    this.#barrierWatchdog = undefined;
  }

  /** The connection of `generation` failed: record why, drop it, and retry after a backoff delay. */
  #lost(generation: number, error: unknown): void {
    if (generation !== this.#generation || this.#closed) return;
    this.#generation++;
    this.#connected = false;
    this.#lastError = toProgressError(error, 'The LISTEN connection failed');
    clearTimeout(this.#barrierTimer);
    this.#barrierTimer = undefined;
    this.#clearWatchdog();
    void this.#endClient();
    if (!this.#started) return; // start() reports the failure itself
    this.#options.onError(this.#lastError);
    this.#scheduleReconnect();
  }

  #scheduleReconnect(): void {
    if (this.#closed || this.#retryTimer !== undefined) return;
    const delay = backoffDelayMs(this.#failedAttempts, this.#options.reconnect);
    this.#failedAttempts += 1;
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = undefined;
      this.#connecting = this.#reconnect().finally(() => {
        this.#connecting = undefined;
      });
    }, delay);
    this.#retryTimer.unref?.();
  }

  async #reconnect(): Promise<void> {
    if (this.#closed) return;
    const generation = ++this.#generation;
    try {
      await this.#open(generation);
      this.#options.hub.count('reconnects');
    } catch (error) {
      // #lost ignores a generation that an 'error' event already retired (and scheduled a retry for).
      this.#lost(generation, error);
    }
  }

  async #endClient(): Promise<void> {
    const client = this.#client;
    this.#client = undefined;
    if (client === undefined) return;
    try {
      await client.end();
    } catch {
      // Ending a broken connection may fail; it is gone either way.
    }
  }
}
