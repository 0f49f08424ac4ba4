import { type Clock, ErrorCode, ProgressError } from '@finishline/core';
import type { BackoffOptions } from '@finishline/core/internal';
import { backoffDelayMs, exhaustive } from '@finishline/core/internal';
import { type Kysely, type RawBuilder, sql } from 'kysely';
import { type EndableClient, endWithin } from './bounded-end.js';
import type { ChangeNotice } from './notify-payload.js';
import { decodeNotice } from './notify-payload.js';
import { toProgressError } from './pg-errors.js';
import type { ChangeFeedHealth, ChangeFeedHub, ListenStats } from './postgres-change-feed.js';
import { intColumn } from './row-codec.js';
import type { ProgressDatabase } from './schema.js';
import { assertStorableEncoding } from './task-statements.js';

/**
 * The dedicated `LISTEN` connection of a store: it connects, listens, re-reads what was committed while
 * it was away, advances its high-water mark by barriers, and reconnects with full-jitter backoff. Every
 * statement it runs is built here, next to the code that runs it. What it finds goes to the feed's
 * {@link ChangeFeedHub}, which publishes each change once, unless it had to forget what it published
 * (below).
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
 *    Each barrier names the connection that sent it, not only the store: one from a replaced connection
 *    (its socket dead, its backend committing late) says nothing about what the new one received, and
 *    arriving before the re-read it would move the re-read past commits that only the re-read can find.
 *
 * A transaction left open for hours holds every snapshot's `xmin` back, and with it the mark; a re-read
 * then covers more events (more work, never a miss). Re-reads are grouped per task, so their size is
 * the number of tasks that changed, not the number of events.
 *
 * ## Purges
 *
 * The feed publishes each `(taskId, seq)` once by remembering each task's last published seq. Retention
 * (`purgeFinished`) deletes finished tasks, and a new task may then take a deleted id and start again at
 * seq 1; its seqs up to the remembered one would pass for duplicates and be dropped — for as long as a
 * watcher follows the id, its events and its end never published. So a purge sends a notice, and every
 * listener forgets the purged ids. A notice is a notification, lost with a connection that is down like any
 * other: the purge statement therefore also records each purged id with its transaction id in
 * `<schema>.purged`, and the re-read from the mark reads those records in its snapshot too. A purge it sees
 * committed before every event of a new task of that id it sees (the new task is created once the purge
 * committed), so it forgets those ids first and then reports the events: the new task's are published from
 * seq 1. That covers the new task's events whether the re-read finds them or they come later.
 *
 * Two details keep it exact:
 *
 * - The notifications the new connection receives before the re-read's rows are reported (commits after
 *   `LISTEN`; Postgres sends them ahead of the re-read's `ReadyForQuery`, so `pg` emits them before the
 *   rows are handed over) are held, and reported after the rows, in the order they came. Reported first, a
 *   commit after the re-read's snapshot would be judged against a memory the re-read is about to correct:
 *   the new task's seqs up to the remembered one dropped as duplicates, or a purge notice and a new task's
 *   first seq followed by the snapshot's rows of the purged task, whose higher seqs would then be
 *   published as the new task's. The same holds for this store's own reports made meanwhile, which are
 *   queued with them ({@link ListenConnection.afterReread}): its purges, the tasks it creates and its
 *   commits (their replies may come during the re-read), from the moment the re-read's statement is sent;
 *   and the safety-net poll reports nothing while a re-read runs (it asks again next time). When the
 *   connection is lost or replaced first, the held notifications are dropped (the next re-read, from the
 *   same mark, finds what they announced) and the store's own reports are made at once, as while
 *   disconnected. The re-read from the start (after a restore) holds them page by page: from each page's
 *   statement until its rows are reported, and not between pages. It reads no purge records, but a purge
 *   and a new task of the purged id committed after a page's snapshot would otherwise be followed by that
 *   page's row of the purged task: its seqs above the new task's, and its end, published as the new
 *   task's, and the new task's own seqs up to them dropped as duplicates.
 *
 *   At most {@link HELD_NOTIFICATIONS_CAPACITY} notifications are held (a slow re-read and a busy
 *   channel often go together). Past it they are all dropped, and once the rows are reported the
 *   re-read runs again from their snapshot's `xmin` (holding anew; the mark moves after the last pass):
 *   every commit a dropped notification announced is visible in that snapshot (and in the rows, its
 *   `xid` being at least the old mark) or has an `xid` of at least that `xmin`. Each such pass re-reads
 *   only what was committed during the one before, so they end once a pass is quick enough. Past it
 *   during a page of the re-read from the start, the pages go on, and a re-read from the first page's
 *   `xmin` follows them: a commit a dropped notification announced is visible in the first page's
 *   snapshot (so in every later one) or has an `xid` of at least that `xmin`. This
 *   store's own reports are held through every pass (they are not dropped: its commits must settle).
 * - The safety-net poll, whose answer may be read before a purge and arrive after its notice, skips the
 *   tasks forgotten while its query ran (`ChangeFeedHub.forgetCount`): reported into the emptied memory,
 *   the purged task's seq would hide the new task's up to it.
 * - A purge already heard (its notice carries its transaction id, and this store's own purges return it)
 *   is not acted on again when a re-read finds its record, which it does whenever the mark had not passed
 *   the purge: forgetting the task again would publish a second time what was published of the new task
 *   since. The ids heard are kept until the mark passes their purge, and while one of this store's own
 *   purges is in flight: its reply may come after its notice and after a barrier past it.
 *
 * Records are kept an hour (`PURGED_RECORD_MS`), then deleted by a later purge, which raises
 * `purged_horizon` in `<schema>.meta` to the highest transaction id it deleted. A re-read from a mark at or
 * below the horizon may have missed a purge whose record is gone (a connection away that long, or a mark
 * held back by a transaction open that long), so it forgets every task's published seq before it
 * reports: changes published again, never one missed.
 *
 * ## After a restore
 *
 * The mark only holds within one run of transaction ids. A physical restore, a restore into another
 * cluster, or a failover that lost transactions starts the ids again below it, and a re-read "from the
 * mark" would skip every commit of the restored database until its ids pass the old mark (barriers,
 * whose `xmin` is lower, never move a mark down). No xid bounds what the restored database committed
 * that this listener may not have heard of, so the mark goes back to 0: the next re-read reports every
 * task the store holds, once, with its latest seq only (its earlier ones are older than the restore, or
 * filled in from what was published since). That re-read reads the `tasks` table, not the events: a
 * store keeps finished tasks until retention purges them, so its events can number millions, and every
 * replica re-reads at once after a restore. A task's row carries its latest seq and status, and is
 * written by the statement that inserts its events (`append-pipeline.ts`), so one snapshot sees both or
 * neither: the row says exactly what reading its events would, at one row per task instead of one per
 * event (200,000 tasks of 10 events: 0.1 s instead of 2.5 s). That happens:
 *
 * - when the store's epoch is renewed ({@link ListenConnection.rereadAll}, from the feed's `forgetSeqs()`):
 *   the connection is replaced at once, so the re-read runs now and no barrier of the old connection
 *   (matched by connection) can move the new mark;
 * - when a (re)connect's snapshot `xmin` is below the mark, which within one run of ids cannot happen
 *   (`xmin` never decreases): the restore is seen even when the epoch was kept. It is not seen when the
 *   restored cluster's ids passed the old mark before the listener reconnected; renewing the epoch is
 *   what covers that.
 *
 * ## Epoch renewals
 *
 * A store's `renewEpoch` tells every listener on the channel by a notice, which a connection that is down
 * misses: its store kept the old epoch as the one it knows (what a renewal after lost commits starts from,
 * so such a renewal was skipped: the epoch was no longer the old one), and its server, told nothing, went
 * on announcing the old epoch with its feed's old seqs until its next heartbeat tick. So every (re)connect,
 * once it listens, reads the epoch, and one that differs from the one known is reported as its notice
 * would have been ({@link ChangeFeedHub.epochRenewed}): a renewal committed after that read sends its
 * notice to this connection, which listens already.
 *
 * A notice is a hint, not a proof: `NOTIFY` needs no privilege, so any role that can connect to the database
 * can send `{"epoch": "…"}` on the channel. The store reads the epoch back (on its pool) and reports a renewal
 * only when the epoch it reads differs from the one it knows; the notice's value is never kept. Epochs change
 * rarely, and the reads are one at a time (notices during one share the next), so a flood costs one read at a
 * time at most.
 *
 * A logical restore (`pg_dump` of the schema restored into another cluster) also copies the `xid` of
 * every event and purge record, and `purged_horizon`, from the old cluster's run of ids. Where that ran
 * higher they lie above every id of the new cluster until its ids pass them, which with 64-bit ids
 * (wraparound epochs included) may be never: every re-read from a mark read every copied row again, and
 * the copied horizon, above every mark, made every re-read forget every task (each task's copied events
 * published again at every reconnect, and the readiness of a replica waiting for a re-read as large as
 * the store). An id at or above a snapshot's `xmax` cannot be of a transaction of this cluster that the
 * snapshot sees, so the re-read leaves such rows and such a horizon out: they are older than the restore,
 * which the re-read from the start after it reported. A purge likewise leaves such records out of the
 * horizon it raises, and replaces such a horizon rather than keep the greater one, which would hide the
 * records this cluster deletes (`purgeFinished` in `task-statements.ts`).
 *
 * The re-read from the start reads the tasks in pages of {@link REREAD_CHUNK_ROWS} rows by id (the
 * primary key), so what it holds in memory at once does not grow with the store. Only the first page's
 * statement reads the snapshot's `xmin`, the new mark; each later page runs in a later snapshot, which
 * sees every commit the first one saw (a task's seq may have grown since, which reports no less), and a
 * task committed after the first snapshot, whose id may sort before the page being read, is delivered by
 * its notification: `LISTEN` ran before. One transaction around all pages would keep one snapshot, but a
 * session inside a transaction receives no notifications until it ends, and a long one holds back every
 * vacuum of the cluster. Between pages the connection is idle, so notifications are published as they
 * arrive; those that arrive during a page are reported after its rows (see "Purges"). Every re-read
 * (from a mark too, which is one statement: its size is the number of tasks that changed while the
 * connection was away) is published {@link REREAD_CHUNK_ROWS} rows per event-loop turn, stopping if the
 * connection is replaced meanwhile, so sockets and timers are served during it.
 *
 * The connection counts as connected ({@link ChangeFeedHealth}) during such a re-read, as soon as it
 * listens, where a re-read from a mark must end first. Nothing committed from then on is missed (the
 * notifications are published while the re-read runs, each once the page in flight is reported; the
 * safety-net poll reports nothing while a page is read, and asks again at its next interval), and a
 * server that renewed its epoch answers every subscription from the store anyway. Holding the replica
 * unhealthy would instead take every replica out of its load balancer at the same moment, right after a
 * restore, for as long as the re-read takes.
 *
 * For the same reason, when {@link ListenConnection.rereadAll} replaces a connected connection, the feed
 * counts as connected while the replacement connects, until it listens, fails, or has not listened
 * within the barrier timeout (a live connection silent that long would be deemed dead). Nothing is missed
 * in that gap either: what is committed before the replacement listens, its re-read from the start reads,
 * as its snapshot is taken after `LISTEN`. The old connection is not kept listening until then
 * (make-before-break): what it delivers after the epoch changed may be of the old one (sent before the
 * restore, or by the old cluster after a restore into another), and published after the feed forgot its
 * seqs it would pass for the restored task's and hide the restored seqs up to it. Its notifications are
 * dropped from the moment it is replaced, so kept open it would deliver nothing.
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
  /**
   * pg's connection, whose socket is destroyed when `end()` has not finished within a second (see
   * `bounded-end.ts`: on a black-holed network it would wait for TCP to give up).
   */
  readonly connection?: EndableClient['connection'];
}

/**
 * Held while a re-read from a mark, or a page of the re-read from the start, runs: a notification, or one
 * of this store's own reports to the feed ({@link ListenConnection.afterReread}).
 */
type Held = PgNotification | (() => void);

/**
 * What a connection holds while its re-read from a mark (or a page of the one from the start) runs (see
 * {@link ListenConnection.afterReread}).
 */
interface HeldBuffer {
  generation: number;
  messages: Held[];
  /** Set once the re-read's statement is sent (see {@link ListenConnection.afterReread}). */
  rereading: boolean;
  /** How many of `messages` are notifications (at most {@link HELD_NOTIFICATIONS_CAPACITY}). */
  notifications: number;
  /** The held notifications were dropped: the rows are followed by a re-read from their `xmin`. */
  overflowed: boolean;
}

/** A row of the re-read statement: the snapshot's xmin, and one task that changed since the mark. */
interface ReplayRow {
  /** `null` on the later pages of the re-read from the start, whose mark is the first page's. */
  xmin: string | null;
  task_id: string | null;
  first_seq: string | number | null;
  last_seq: string | number | null;
  terminal: boolean | null;
  /**
   * The task's run (its `created_at`) the seqs are of, from the task row in the same snapshot: a purge
   * of the id deletes its run's events, so the events a snapshot shows are of the run it shows. `null`
   * on a purge's row.
   */
  run: string | number | null;
  /**
   * Set on a row that records a purge instead of events (`task_id` was deleted by the transaction with
   * this id); absent from the re-read from the start.
   */
  purged_xid?: string | null;
  /** True when records of purges past the mark may have been deleted (the same on every row). */
  horizon_passed?: boolean | null;
}

/** The `xmin` of a re-read's snapshot (its rows always include one, with or without a task). */
function snapshotXmin(rows: readonly ReplayRow[]): bigint | undefined {
  const xmin = rows[0]?.xmin;
  return xmin === undefined || xmin === null ? undefined : BigInt(xmin);
}

/**
 * The most purged ids remembered as heard (see "Purges" in the module doc); past it the oldest are
 * dropped, and a re-read that finds their records forgets those tasks once more (a change published
 * again, never one missed).
 */
const HEARD_PURGES_CAPACITY = 50_000;

/**
 * The most notifications held during a re-read from a mark, or a page of the one from the start (see
 * "Purges" in the module doc): at most 8 MB of payloads (a payload is below Postgres's 8,000-byte limit).
 * Past it they are dropped, and a re-read from the rows' snapshot (the first page's) follows, which finds
 * what they announced.
 */
export const HELD_NOTIFICATIONS_CAPACITY = 1000;

/** The shortest wait for a barrier's answer before the `LISTEN` connection is deemed dead. */
const MIN_BARRIER_TIMEOUT_MS = 1000;

/**
 * How many `watermarkIntervalMs` (at least {@link MIN_ANSWER_TIMEOUT_MS}) the connection waits for the
 * answer to each statement of a (re)connect's re-read before it is deemed dead, times one more per failed
 * attempt since the last success, up to {@link MAX_ANSWER_TIMEOUT_FACTOR} times (the connect and `LISTEN`
 * are bounded by `connectTimeoutMs` instead). Far longer than a barrier's wait: a re-read after a long
 * outage is a large statement, and one that needs longer gets it at a later attempt. Without a bound, a connection whose network died silently during a re-read waited for TCP to
 * give up (hours), this store's own commits held for the re-read's rows meanwhile (see "Purges").
 */
const ANSWER_TIMEOUT_INTERVALS = 30;
/** The shortest wait for the answer to a step of a (re)connect (see {@link ANSWER_TIMEOUT_INTERVALS}). */
const MIN_ANSWER_TIMEOUT_MS = 3000;
/**
 * The most times its base wait that a step of a (re)connect is waited for, however many attempts failed
 * before it. Growing without end, it made a connect or re-read that hung after a long outage of quickly
 * failing attempts (hundreds an hour at the backoff's 10 s) wait hundreds of times its base: hours during
 * which the store's own commits were held for the re-read, or the listener stayed down after the database
 * was back. Ten times is 5 minutes for a re-read statement and 100 s for a connect, by default.
 */
const MAX_ANSWER_TIMEOUT_FACTOR = 10;

/**
 * Rows of a re-read published in one event-loop turn, and rows per page of the re-read from the start
 * (see the module doc). 200,000 tasks published in one loop held the event loop for 0.1–0.6 s; a chunk
 * of 1,000 holds it for about 200 times less, and a page that size is a short index range scan.
 */
export const REREAD_CHUNK_ROWS = 1000;

/** What {@link ListenConnection} needs. */
export interface ListenConnectionOptions {
  /** Where what the connection finds is reported. */
  hub: Pick<ChangeFeedHub, 'report' | 'isNew' | 'forget' | 'forgetPublished' | 'epochRenewed' | 'knownEpoch'>;
  /**
   * A notice on the channel says the epoch was renewed. Not taken at its word (any role that can connect may
   * `NOTIFY` on the channel): the store reads the epoch back, and reports a renewal only if it finds one.
   */
  epochNoticed: () => void;
  /** Compiles the connection's statements once (kysely's Postgres dialect); never runs a query. */
  db: Kysely<ProgressDatabase>;
  /** The `NOTIFY` channel of the store's schema. */
  channel: string;
  /** The schema's events table. */
  events: RawBuilder<unknown>;
  /** The schema's tasks table (the re-read from the start; see the module doc). */
  tasks: RawBuilder<unknown>;
  /** The schema's records of purged tasks (see "Purges" in the module doc). */
  purged: RawBuilder<unknown>;
  /** The schema's meta table, which holds `purged_horizon`. */
  meta: RawBuilder<unknown>;
  /** Makes a new, unconnected client for each (re)connect. */
  createClient: () => PgListenClient | Promise<PgListenClient>;
  watermarkIntervalMs: number;
  /**
   * How long the connect and the `LISTEN` of one (re)connect attempt may go unanswered, times one more per
   * failed attempt since the last success (see `listenConnectTimeoutMs` of the store's options).
   */
  connectTimeoutMs: number;
  reconnect: BackoffOptions;
  clock: Clock;
  onError: (error: ProgressError) => void;
}

/** The statements of the connection, compiled once to text with `$n` placeholders. */
interface ListenStatements {
  /** `LISTEN "<channel>"`. */
  listen: string;
  /** The re-read; `$1` is the mark (text) or `NULL`. */
  replay: string;
  /** The re-read from the start (a mark of 0), from the tasks table: its first page; no parameters. */
  replayAll: string;
  /** A later page of the re-read from the start: `$1` is the last task id of the page before. */
  replayAllAfter: string;
  /** The barrier; `$1` is the channel, `$2` the connection's barrier id ({@link ListenConnection}). */
  barrier: string;
  /**
   * The store's epoch, read once the connection listens (see "Epoch renewals" in the module doc); one row,
   * its `epoch` `NULL` when the schema has none, and the database's `encoding`. It also turns the session's
   * `statement_timeout`, `transaction_timeout` and `idle_session_timeout` off.
   */
  epoch: string;
}

function compileStatements({
  db,
  channel,
  events,
  tasks,
  purged,
  meta,
}: ListenConnectionOptions): ListenStatements {
  // Placeholders only: the values are passed at run time, so the text is compiled once.
  const placeholder = '0';
  return {
    listen: sql`LISTEN ${sql.id(channel)}`.compile(db).sql,
    // One statement, so the xmin, the events and the purges come from the same snapshot (see the module
    // doc): a purge it sees came before every event of a new task with the purged id that it sees. Ids at
    // or above the snapshot's xmax are another cluster's, copied by a logical restore (see "After a
    // restore" in the module doc): no transaction of this cluster that the snapshot sees has one.
    replay: sql`
      SELECT s.xmin::text AS xmin, s.horizon_passed, e.task_id, e.first_seq, e.last_seq, e.terminal,
             e.purged_xid, e.run
      FROM (
        SELECT pg_snapshot_xmin(snapshot) AS xmin, pg_snapshot_xmax(snapshot) AS xmax, mark,
               coalesce((SELECT value::xid8 >= mark AND value::xid8 < pg_snapshot_xmax(snapshot)
                         FROM ${meta} WHERE key = 'purged_horizon'),
                        false) AS horizon_passed
        -- The mark is passed once; a NULL one reads no rows. Postgres pulls these subqueries up, so the
        -- ranges below are index scans planned with the mark's value.
        FROM (SELECT pg_current_snapshot() AS snapshot, ${placeholder}::xid8 AS mark) AS taken
      ) s
      LEFT JOIN LATERAL (
        SELECT task_id, min(seq) AS first_seq, max(seq) AS last_seq,
               bool_or(type IN ('completed', 'failed', 'cancelled', 'interrupted')) AS terminal,
               NULL::text AS purged_xid,
               (SELECT created_at FROM ${tasks} WHERE id = task_id) AS run
        FROM ${events}
        WHERE xid >= s.mark AND xid < s.xmax
        GROUP BY task_id
        UNION ALL
        SELECT task_id, NULL::int8, NULL::int8, NULL::boolean, xid::text, NULL::int8
        FROM ${purged}
        WHERE xid >= s.mark AND xid < s.xmax
      ) e ON true`.compile(db).sql,
    // Each task's latest seq alone, from its row (see the module doc); a task without events is left out.
    // Paged by id (the primary key), the first page with the snapshot's xmin that becomes the mark.
    replayAll: sql`
      SELECT s.xmin::text AS xmin, t.id AS task_id, t.seq AS first_seq, t.seq AS last_seq,
             t.status <> 'running' AS terminal, t.created_at AS run
      FROM (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin) s
      LEFT JOIN LATERAL (
        SELECT id, seq, status, created_at FROM ${tasks} WHERE seq > 0 ORDER BY id LIMIT ${sql.lit(REREAD_CHUNK_ROWS)}
      ) t ON true
      ORDER BY t.id`.compile(db).sql,
    replayAllAfter: sql`
      SELECT NULL AS xmin, id AS task_id, seq AS first_seq, seq AS last_seq, status <> 'running' AS terminal,
             created_at AS run
      FROM ${tasks} WHERE seq > 0 AND id > ${placeholder}
      ORDER BY id LIMIT ${sql.lit(REREAD_CHUNK_ROWS)}`.compile(db).sql,
    // The session's statement_timeout (the pool's options, the role's or the database's setting) would cut a
    // re-read that takes longer, at every attempt, from the same mark: after a long outage the listener stayed
    // down for good. Each step of a (re)connect has the connection's own bound (#answered), and a barrier its
    // watchdog. Set here, before the re-read, without a round trip of its own.
    // Likewise transaction_timeout (Postgres 17), which ends the session of a statement that runs longer, and
    // idle_session_timeout (Postgres 14): a DBA's timeout shorter than watermarkIntervalMs ended the connection
    // between every two barriers, and the listener reconnected and re-read for good (an idle LISTEN connection
    // is this one's purpose; the barrier watchdog finds one that died). Read from pg_settings, so an older
    // server, which has no such setting, sets nothing rather than failing.
    epoch: sql`SELECT (SELECT value FROM ${meta} WHERE key = 'epoch') AS epoch,
      current_setting('server_encoding') AS encoding,
      set_config('statement_timeout', '0', false) AS statement_timeout,
      (SELECT count(set_config(name, '0', false)) FROM pg_catalog.pg_settings
       WHERE name IN ('idle_session_timeout', 'transaction_timeout')) AS session_timeouts`.compile(db).sql,
    barrier: sql`
      SELECT pg_notify(${channel}, json_build_object(
        'barrier', ${placeholder}::text, 'xmin', pg_snapshot_xmin(pg_current_snapshot())::text)::text)`.compile(
      db,
    ).sql,
  };
}

/**
 * The dedicated `LISTEN` connection: connects, listens, re-reads past its mark, advances the mark by
 * barriers, and reconnects with full-jitter backoff whenever the connection fails.
 */
export class ListenConnection {
  readonly #options: ListenConnectionOptions;
  readonly #statements: ListenStatements;
  readonly #stats: ListenStats = { notifications: 0, malformedNotifications: 0, reconnects: 0 };
  readonly #listenerId = globalThis.crypto.randomUUID();
  #client: PgListenClient | undefined;
  /** Bumped on every connect and every loss; events of an older generation are ignored. */
  #generation = 0;
  #started = false;
  #closed = false;
  #connected = false;
  /**
   * Clock time at which {@link rereadAll} replaced a connected connection, until the replacement listens
   * or fails: it counts as connected meanwhile (see the module doc).
   */
  #replacedAt: number | undefined;
  #failedAttempts = 0;
  #lastError: ProgressError | null = null;
  #lastConnectedAt: number | null = null;
  #watermark: bigint | undefined;
  #retryTimer: ReturnType<typeof setTimeout> | undefined;
  #barrierTimer: ReturnType<typeof setTimeout> | undefined;
  #barrierWatchdog: ReturnType<typeof setTimeout> | undefined;
  #connecting: Promise<void> | undefined;
  /**
   * What the connection of `generation` received while its re-read from a mark (or a page of the one from
   * the start) ran, and what this store did meanwhile ({@link afterReread}), in the order they came: reported
   * once that re-read (or page) was (see "Purges" in the module doc).
   */
  #buffered: HeldBuffer | undefined;
  /**
   * Per task id, the transaction id of the latest purge of it this store heard of (its notice, its own
   * purge, or a re-read's record), while a re-read from the mark could still find that purge's record: a
   * record of a purge already heard is not acted on again (see "Purges" in the module doc).
   */
  readonly #heardPurges = new Map<string, bigint>();
  /**
   * This store's own purges sent and not yet reported ({@link ownPurge}): while there are any, the mark
   * moves without forgetting the purges heard, as such a purge's reply, reported after its notice and after
   * a barrier past it, would otherwise pass for one not heard.
   */
  #ownPurges = 0;
  /**
   * Gives up the wait for the current client's `connect()`, while it runs: pg 8 never settles a connect
   * that `end()` interrupted, so {@link #endClient} settles the wait instead (see {@link #connect}).
   */
  #abandonConnect: ((reason: ProgressError) => void) | undefined;

  constructor(options: ListenConnectionOptions) {
    this.#options = options;
    this.#statements = compileStatements(options);
  }

  stats(): ListenStats {
    return { ...this.#stats };
  }

  health(): ChangeFeedHealth {
    const connected = this.#connected || this.#replacing();
    const pid = connected ? this.#client?.processID : undefined;
    return {
      connected,
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
      this.#connected = false;
      this.#releaseHeld();
      await this.#endClient();
      throw toProgressError(error, 'Opening the LISTEN connection failed');
    }
    this.#started = true;
  }

  /**
   * Ends the connection and its timers; no reconnect follows. Waits for each client it ends at most
   * `END_TIMEOUT_MS` (a second) however the network behaves, then destroys its socket, and gives `end()`
   * as long again to settle (see `bounded-end.ts`).
   */
  async close(): Promise<void> {
    this.#closed = true;
    this.#generation++;
    this.#connected = false;
    this.#replacedAt = undefined;
    this.#releaseHeld();
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
    const connectTimeoutMs = this.#options.connectTimeoutMs;
    // A `listenClient` factory of the caller's that never settles (a client taken from somewhere that
    // hangs) held open() for ever, and close() too (it waits for a reconnect in progress): bounded as the
    // connect is, and given up when the store closes. A client it gives too late is ended.
    const created = (async () => this.#options.createClient())();
    let client: PgListenClient;
    try {
      client = await this.#answered(
        generation,
        'its client factory (listenClient)',
        this.#abandonable(created),
        connectTimeoutMs,
      );
    } catch (error) {
      created.then(endWithin).catch(() => {});
      throw error;
    }
    if (!isListenClient(client)) {
      created.then(endWithin).catch(() => {});
      throw new ProgressError(
        ErrorCode.InvalidInput,
        'The listenClient factory returned no pg client (an object with connect, query, on and end methods)',
      );
    }
    if (generation !== this.#generation) {
      await endWithin(client);
      throw new Error('The store closed while the LISTEN connection was being created');
    }
    this.#client = client;
    // Held from the start of the re-read until its rows are reported (see #drain).
    this.#releaseHeld();
    this.#buffered = { generation, messages: [], rereading: false, notifications: 0, overflowed: false };
    client.on('notification', (message) => {
      if (generation !== this.#generation) return;
      if (this.#buffered?.generation === generation) this.#hold(message);
      else this.#onNotification(message, generation);
    });
    client.on('error', (error) => this.#lost(generation, error));
    client.on('end', () => this.#lost(generation, new Error('The LISTEN connection ended')));
    // Bounded by their own deadline, not the re-read's (30 watermark intervals): a connect or a LISTEN has
    // nothing to read, and a black-holed host held open() 30 s by default, and 30 h with an hourly watermark.
    await this.#answered(generation, 'its connect', this.#connect(client), connectTimeoutMs);
    await this.#answered(generation, 'LISTEN', client.query(this.#statements.listen), connectTimeoutMs);
    // Before its re-read, whose rows the held notifications follow: a renewal's notice held meanwhile is
    // newer than this read, and is reported after it.
    const epoch = await this.#answered(
      generation,
      'its read of the epoch',
      client.query(this.#statements.epoch),
    );
    this.#assertCurrent(generation);
    const read = epoch.rows[0] as { epoch?: string | null; encoding?: string } | undefined;
    // Here, not on the pool: open() sends nothing on the pool when it does not migrate (a store opened while
    // its pool's database is down serves once it is back), and every store connects this connection first.
    assertStorableEncoding(read?.encoding, 'PostgresProgressStore');
    this.#epochRead(read?.epoch ?? undefined);
    let from = this.#watermark;
    let xmin: bigint | undefined;
    for (;;) {
      if (from === 0n) {
        this.#drain(generation);
        const read = await this.#replayAll(client, generation);
        xmin = read.xmin;
        if (!read.overflowed || xmin === undefined) break;
        // Notifications held during a page were dropped: every commit they announced is in the first
        // page's snapshot (so in its page's rows, or in those of a later page, whose snapshot is later) or
        // has an xid of at least that snapshot's xmin, which a re-read from it finds (see the module doc).
        this.#assertCurrent(generation);
        from = xmin;
        continue;
      }
      // From now on this store's own reports wait for the rows too (see afterReread); not while it
      // connected, when the safety-net poll and its own commits are all that publish.
      this.#holdReread(generation);
      const rows = await this.#answered(generation, 'its re-read', this.#replay(client, from));
      xmin = snapshotXmin(rows);
      if (from !== undefined && xmin !== undefined && xmin < from) {
        // Transaction ids went back (a restore; see the module doc): the rows skipped everything below
        // the mark. Read again from the start, on the same connection, which already listens.
        this.#resetMark();
        from = 0n;
        continue;
      }
      await this.#publish(rows, generation);
      if (xmin === undefined || !this.#overflowed(generation)) {
        this.#drain(generation);
        break;
      }
      // Too many notifications came during it, and were dropped: every commit they announced is in
      // these rows or after their snapshot, so a re-read from its xmin finds the rest (see the module doc).
      // The mark itself moves once the last pass is reported: the purges heard stay known until then, so
      // this store's own purges still held are not taken for unheard ones.
      this.#assertCurrent(generation);
      from = xmin;
    }
    this.#assertCurrent(generation);
    if (xmin !== undefined) this.#advance(xmin);
    this.#connected = true;
    this.#replacedAt = undefined;
    this.#failedAttempts = 0;
    // Through #time (reported, the last time kept): read bare, a clock that threw here failed a connect
    // that had succeeded, and open() with it, or on a reconnect ended the working connection to start over.
    this.#lastConnectedAt = this.#time() ?? this.#lastConnectedAt;
    this.#scheduleBarrier(generation);
  }

  /**
   * `client.connect()`, given up when the client is ended first ({@link #endClient}: the store closes, the
   * connection is replaced, or the client failed or ended, which {@link #lost} handles). In pg 8, `end()`
   * during a connect marks the socket's end as deliberate, and the connect is then called back neither
   * with an error nor without: awaited alone, it held `close()` forever, and left every connect that a
   * replacement interrupted pending. The client's own 'error' and 'end' listeners ({@link #open}) end it,
   * so nothing more is registered per attempt.
   */
  async #connect(client: PgListenClient): Promise<void> {
    await this.#abandonable(client.connect());
  }

  /** `pending`, given up (rejecting with the reason) when {@link #endClient} runs meanwhile. */
  async #abandonable<T>(pending: Promise<T>): Promise<T> {
    let abandon!: (reason: ProgressError) => void;
    const abandoned = new Promise<never>((_, reject) => {
      abandon = reject;
    });
    this.#abandonConnect = abandon;
    try {
      return await Promise.race([pending, abandoned]);
    } finally {
      if (this.#abandonConnect === abandon) this.#abandonConnect = undefined;
    }
  }

  /**
   * `answer`, one step of the (re)connect of `generation`; unsettled past `baseTimeoutMs` (by default a
   * re-read statement's: see {@link ANSWER_TIMEOUT_INTERVALS}) times one more per failed attempt since the
   * last success (at most {@link MAX_ANSWER_TIMEOUT_FACTOR} times), the connection is deemed lost (a
   * reconnect follows) and this rejects.
   */
  async #answered<T>(
    generation: number,
    what: string,
    answer: Promise<T>,
    baseTimeoutMs = Math.max(
      ANSWER_TIMEOUT_INTERVALS * this.#options.watermarkIntervalMs,
      MIN_ANSWER_TIMEOUT_MS,
    ),
  ): Promise<T> {
    const timeoutMs = baseTimeoutMs * Math.min(1 + this.#failedAttempts, MAX_ANSWER_TIMEOUT_FACTOR);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timedOut = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        const error = new Error(`The LISTEN connection did not answer ${what} within ${timeoutMs} ms`);
        this.#lost(generation, error);
        reject(error);
      }, timeoutMs);
      timer.unref?.();
    });
    try {
      return await Promise.race([answer, timedOut]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** The re-read from `mark` (`undefined`: nothing, only the snapshot's `xmin`); see the module doc. */
  async #replay(client: PgListenClient, mark: bigint | undefined): Promise<ReplayRow[]> {
    const text = mark === undefined ? null : mark.toString();
    const { rows } = await client.query(this.#statements.replay, [text]);
    return rows as ReplayRow[];
  }

  /**
   * The re-read from the start, on the connection of `generation`, which listens already: it counts as
   * connected while this runs (see the module doc), unless it was replaced meanwhile. The failed attempts
   * are reset only once it succeeded, so a re-read that keeps failing backs off like a failed connect.
   * Reads and publishes page by page, each page held as a re-read from a mark is (see "Purges" in the
   * module doc); returns the first page's snapshot `xmin`, the new mark, and whether notifications held
   * during some page were dropped (a re-read from that `xmin` must follow).
   */
  async #replayAll(
    client: PgListenClient,
    generation: number,
  ): Promise<{ xmin: bigint | undefined; overflowed: boolean }> {
    this.#assertCurrent(generation);
    this.#connected = true;
    this.#replacedAt = undefined;
    let xmin: bigint | undefined;
    let overflowed = false;
    let last: string | undefined;
    for (;;) {
      this.#holdReread(generation);
      // Each page has its own snapshot, later than the first page's (see the module doc).
      const { rows } = (await this.#answered(
        generation,
        'its re-read from the start',
        last === undefined
          ? client.query(this.#statements.replayAll)
          : client.query(this.#statements.replayAllAfter, [last]),
      )) as { rows: ReplayRow[] };
      if (last === undefined) xmin = snapshotXmin(rows);
      await this.#publish(rows, generation);
      if (this.#overflowed(generation)) overflowed = true;
      // Between pages the connection is idle: notifications are reported as they arrive.
      this.#drain(generation);
      const next = rows.at(-1)?.task_id;
      if (rows.length < REREAD_CHUNK_ROWS || next === null || next === undefined) return { xmin, overflowed };
      this.#assertCurrent(generation);
      last = next;
    }
  }

  /**
   * From now until {@link #drain}, the connection of `generation` holds what it receives and this store's
   * own reports ({@link afterReread}): a re-read's statement is about to be sent. Keeps what is held already.
   */
  #holdReread(generation: number): void {
    this.#assertCurrent(generation);
    const buffered = this.#buffered;
    if (buffered?.generation === generation) {
      buffered.rereading = true;
      buffered.overflowed = false;
    } else {
      this.#buffered = { generation, messages: [], rereading: true, notifications: 0, overflowed: false };
    }
  }

  /** True when the connection of `generation` dropped notifications it held (see {@link #hold}). */
  #overflowed(generation: number): boolean {
    const buffered = this.#buffered;
    return buffered?.generation === generation && buffered.overflowed;
  }

  /**
   * Reports the rows of a re-read, {@link REREAD_CHUNK_ROWS} per event-loop turn, so a large re-read
   * does not hold the process; stops if the connection of `generation` was replaced meanwhile (its
   * re-read reports them, and after a renewed epoch these may be of the old one).
   */
  async #publish(rows: readonly ReplayRow[], generation: number): Promise<void> {
    this.#assertCurrent(generation);
    this.#forgetPurged(rows);
    for (let start = 0; start < rows.length; start += REREAD_CHUNK_ROWS) {
      if (start > 0) await new Promise((resolve) => setImmediate(resolve));
      this.#assertCurrent(generation);
      const end = Math.min(start + REREAD_CHUNK_ROWS, rows.length);
      for (let index = start; index < end; index++) {
        const row = rows[index] as ReplayRow;
        if (row.task_id === null || row.first_seq === null || row.last_seq === null) continue;
        if (row.purged_xid !== undefined && row.purged_xid !== null) continue;
        // A row damaged by hand (an int8 above 2^53 came back rounded) is reported and left out: its
        // rounded seqs, compared with those published, announced changes that were not there.
        let change: ChangeNotice;
        try {
          change = {
            taskId: row.task_id,
            firstSeq: intColumn(row.task_id, 'seq', row.first_seq),
            seq: intColumn(row.task_id, 'seq', row.last_seq),
            terminal: row.terminal === true,
          };
          if (row.run !== null) change.run = intColumn(row.task_id, 'created_at', row.run);
        } catch (error) {
          this.#options.onError(toProgressError(error, 'The change feed re-read a damaged row'));
          continue;
        }
        this.#options.hub.report(change, 'replay');
      }
    }
  }

  /**
   * The purges a re-read from the mark found, before any of its events: their tasks are forgotten, so the
   * events of a new task with one of those ids, which the same snapshot shows (and every later report of
   * it), are published from seq 1. When records the re-read may have needed were deleted, every task is.
   */
  #forgetPurged(rows: readonly ReplayRow[]): void {
    if (rows[0]?.horizon_passed === true) this.#options.hub.forgetPublished();
    for (const row of rows) {
      if (row.task_id === null || row.purged_xid === undefined || row.purged_xid === null) continue;
      this.purged([row.task_id], BigInt(row.purged_xid));
    }
  }

  /**
   * Reports the notifications the connection of `generation` received during its re-read, in the order
   * they came, and stops holding them.
   */
  #drain(generation: number): void {
    const buffered = this.#buffered;
    if (buffered?.generation !== generation) return;
    this.#buffered = undefined;
    for (const held of buffered.messages) {
      if (typeof held === 'function') held();
      // A connection replaced meanwhile: its held notifications are the next re-read's to find.
      else if (generation === this.#generation) this.#onNotification(held, generation);
    }
  }

  /**
   * Holds a notification received during the re-read. Past {@link HELD_NOTIFICATIONS_CAPACITY}, the
   * notifications held are dropped, and so is every one until the next re-read from the mark is sent (this
   * store's own reports are kept, in order): that re-read, from the `xmin` of the rows being read, finds what
   * they announced (see the module doc).
   */
  #hold(message: PgNotification): void {
    const buffered = this.#buffered;
    if (buffered === undefined || buffered.overflowed) return;
    if (buffered.notifications < HELD_NOTIFICATIONS_CAPACITY) {
      buffered.messages.push(message);
      buffered.notifications += 1;
      return;
    }
    buffered.messages = buffered.messages.filter((held) => typeof held === 'function');
    buffered.notifications = 0;
    buffered.overflowed = true;
  }

  /**
   * Stops holding: the connection is lost, replaced or closed, its re-read abandoned. The notifications held
   * are dropped (the next re-read, from the same mark, finds what they announced); this store's own reports
   * are made now, in their order, as they are while the connection is down: the re-read's rows they had to
   * follow will not be reported.
   */
  #releaseHeld(): void {
    const buffered = this.#buffered;
    this.#buffered = undefined;
    if (buffered === undefined) return;
    for (const held of buffered.messages) if (typeof held === 'function') held();
  }

  /**
   * Runs `action`, one of this store's own reports to the feed (its commits, a task it created, its purges),
   * now, or, while a re-read from a mark (or a page of the one from the start) runs, after that re-read's
   * rows and the notifications received before it, in order (see "Purges" in the module doc): made before
   * the rows, it would be judged against a memory the rows are about to correct, and the rows then against
   * what it changed.
   */
  afterReread(action: () => void): void {
    if (this.rereading()) this.#buffered?.messages.push(action);
    else action();
  }

  /**
   * True while a re-read from a mark, or a page of the re-read from the start, runs: a report that is not
   * ordered with it ({@link afterReread}) would be judged against a memory it is about to correct (the
   * safety-net poll skips its reports meanwhile, and retries).
   */
  rereading(): boolean {
    const buffered = this.#buffered;
    return buffered?.rereading === true && buffered.generation === this.#generation;
  }

  /**
   * This store sends a purge: until the returned function is called (once its reply was reported through
   * {@link purged}, or it failed), the purges heard are kept however far the mark moves (see "Purges" in the
   * module doc). Calling the function again does nothing.
   */
  ownPurge(): () => void {
    this.#ownPurges += 1;
    let settled = false;
    return () => {
      if (settled) return;
      settled = true;
      this.#ownPurges -= 1;
    };
  }

  /**
   * Tasks deleted by retention, by the transaction `xid` (`undefined` when unknown: a notice of an older
   * version): the hub forgets them, unless this purge, or a later one of the same id, was heard already.
   * Called for purge notices, for the records a re-read finds, and for this store's own purges.
   */
  purged(taskIds: readonly string[], xid: bigint | undefined): void {
    const forget: string[] = [];
    for (const taskId of taskIds) {
      const heard = this.#heardPurges.get(taskId);
      if (xid !== undefined && heard !== undefined && heard >= xid) continue;
      forget.push(taskId);
      if (xid === undefined) continue;
      // Re-inserted, so the Map's order is oldest heard first.
      this.#heardPurges.delete(taskId);
      this.#heardPurges.set(taskId, xid);
    }
    for (const taskId of this.#heardPurges.keys()) {
      if (this.#heardPurges.size <= HEARD_PURGES_CAPACITY) break;
      this.#heardPurges.delete(taskId);
    }
    this.#options.hub.forget(forget);
  }

  /**
   * The epoch a (re)connect read once it listened: a renewal's notice sent while the connection was down was
   * lost with it, so one that differs from the epoch the store knows is reported as that notice would have
   * been (see "Epoch renewals" in the module doc). The first read, with no epoch known, only records it.
   */
  #epochRead(epoch: string | undefined): void {
    const { hub } = this.#options;
    if (epoch === undefined || epoch === hub.knownEpoch) return;
    if (hub.knownEpoch === undefined) hub.knownEpoch = epoch;
    else hub.epochRenewed(epoch);
  }

  /** Throws when the connection of `generation` is no longer the current one (replaced, lost or closed). */
  #assertCurrent(generation: number): void {
    if (generation !== this.#generation)
      throw new Error('The LISTEN connection was replaced while connecting');
  }

  /**
   * The store's epoch was renewed (a restore): what it committed may lie below the mark, which is of
   * the old run of transaction ids. Resets the mark to 0 and replaces the connection, whose re-read then
   * reports every task the store holds (see the module doc); while it is down, the pending reconnect
   * does. The connection counts one more reconnect, with no error, and no failed attempt: it reconnects at
   * once, not after a backoff delay, since nothing failed (replicas notice a renewed epoch at different
   * moments, so they do not reconnect all at once). A connection that was connected still counts as
   * connected while its replacement connects (see the module doc).
   */
  rereadAll(): void {
    if (this.#closed) return;
    this.#resetMark();
    if (!this.#started || this.#retryTimer !== undefined) return;
    // The re-read in flight is abandoned: this store's own reports it held are made now, as they would have
    // been without it (the feed drops those of commits sent before the restore was noticed; see `forgetAll`).
    this.#releaseHeld();
    // Connected, or connecting with a re-read that may have used the old mark: a new generation
    // discards that re-read and every barrier the old connection sent, and reconnects.
    this.#generation++;
    if (this.#connected) this.#replacedAt = this.#time();
    this.#connected = false;
    clearTimeout(this.#barrierTimer);
    this.#barrierTimer = undefined;
    this.#clearWatchdog();
    void this.#endClient();
    this.#scheduleReconnect(0);
  }

  /** A notification received by the connection of `generation`, the current one. */
  #onNotification(message: PgNotification, generation: number): void {
    if (message.channel !== this.#options.channel) return;
    const { hub } = this.#options;
    this.#stats.notifications += 1;
    // The events a payload carries are parsed only when some change of it is new here: a store hears
    // its own commits, which it published already, and most of a busy channel is those.
    const notice = decodeNotice(message.payload, (change) => hub.isNew(change));
    switch (notice.kind) {
      case 'changes':
        for (const change of notice.changes) {
          hub.report(change, 'notification');
        }
        break;
      case 'purged':
        // Retention deleted them (in any store on the channel): a new task may take one of the ids.
        this.purged(notice.taskIds, notice.xid);
        break;
      case 'epoch':
        this.#options.epochNoticed();
        break;
      case 'barrier':
        // Other stores' barriers, and this store's earlier connections', say nothing about what this
        // connection received.
        if (notice.listenerId === this.#barrierId(generation)) this.#advance(notice.xmin);
        break;
      case 'malformed':
        this.#stats.malformedNotifications += 1;
        break;
      default:
        exhaustive(notice, 'notice');
    }
  }

  /** Whom the barriers of the connection of `generation` are addressed to: this store's listener, that connection. */
  #barrierId(generation: number): string {
    return `${this.#listenerId}/${generation}`;
  }

  /**
   * The mark goes back to 0: a re-read from the start follows. The purges heard are forgotten with it: their
   * xids are of the old run of transaction ids, and would pass for later purges of the restored database.
   */
  #resetMark(): void {
    this.#watermark = 0n;
    this.#heardPurges.clear();
  }

  #advance(xmin: bigint): void {
    if (this.#watermark !== undefined && xmin <= this.#watermark) return;
    this.#watermark = xmin;
    // A re-read from the new mark finds no record of a purge below it: nothing to tell apart any more,
    // but for this store's own purges in flight (see #ownPurges); a later barrier prunes them.
    if (this.#ownPurges > 0) return;
    for (const [taskId, xid] of this.#heardPurges) {
      if (xid < xmin) this.#heardPurges.delete(taskId);
    }
  }

  #scheduleBarrier(generation: number): void {
    this.#barrierTimer = setTimeout(() => {
      this.#barrierTimer = undefined;
      const client = this.#client;
      if (generation !== this.#generation || client === undefined) return;
      // The barrier doubles as a liveness check: a socket that died silently (no RST, for example behind
      // a NAT or after a failover) would otherwise look connected forever while notifications stop.
      const timeoutMs = this.#barrierTimeoutMs();
      this.#barrierWatchdog = setTimeout(() => {
        this.#barrierWatchdog = undefined;
        this.#lost(generation, new Error(`The LISTEN connection did not answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#barrierWatchdog.unref?.();
      client.query(this.#statements.barrier, [this.#options.channel, this.#barrierId(generation)]).then(
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

  /** How long a barrier may go unanswered before the connection is deemed dead. */
  #barrierTimeoutMs(): number {
    return Math.max(5 * this.#options.watermarkIntervalMs, MIN_BARRIER_TIMEOUT_MS);
  }

  /**
   * True while a connected connection is being replaced on purpose ({@link rereadAll}), for as long as
   * a live connection may leave a barrier unanswered: a replacement that takes longer counts as down.
   */
  #replacing(): boolean {
    if (this.#replacedAt === undefined) return false;
    const now = this.#time();
    return now !== undefined && now - this.#replacedAt < this.#barrierTimeoutMs();
  }

  /**
   * The store's clock, `undefined` when it throws (one that returned NaN once, which the store's clock
   * refuses): reported, and the replacement is then taken as down (see {@link #replacing}). Read bare in
   * {@link rereadAll}, its throw came halfway through the replacement: the old connection's generation was
   * retired (its notifications ignored from then on) but the connection neither ended nor replaced, nor a
   * reconnect scheduled, and the feed counted as connected. Nothing reached it by `NOTIFY` again, for the
   * life of the store: what it published came from the safety-net poll alone, an interval late.
   */
  #time(): number | undefined {
    try {
      return this.#options.clock();
    } catch (error) {
      this.#options.onError(toProgressError(error, "Reading the store's clock failed"));
      return undefined;
    }
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
    this.#replacedAt = undefined;
    this.#lastError = toProgressError(error, 'The LISTEN connection failed');
    this.#releaseHeld(); // the next connection's re-read covers the notifications it held
    clearTimeout(this.#barrierTimer);
    this.#barrierTimer = undefined;
    this.#clearWatchdog();
    void this.#endClient(this.#lastError);
    if (!this.#started) return; // start() reports the failure itself
    this.#options.onError(this.#lastError);
    this.#scheduleReconnect();
  }

  /** Reconnects after `delay`, by default a backoff delay for one more failed attempt. */
  #scheduleReconnect(delay?: number): void {
    if (this.#closed || this.#retryTimer !== undefined) return;
    if (delay === undefined) {
      delay = backoffDelayMs(this.#failedAttempts, this.#options.reconnect);
      this.#failedAttempts += 1;
    }
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
      this.#stats.reconnects += 1;
    } catch (error) {
      // #lost ignores a generation that an 'error' event already retired (and scheduled a retry for).
      this.#lost(generation, error);
    }
  }

  /**
   * Ends the current client; a wait for its `connect()` fails with `reason`, by default `closed` once the
   * store closes and `store_unavailable` otherwise (the connection was replaced).
   */
  async #endClient(reason?: ProgressError): Promise<void> {
    const client = this.#client;
    this.#client = undefined;
    const abandon = this.#abandonConnect;
    this.#abandonConnect = undefined;
    abandon?.(
      reason ??
        (this.#closed
          ? new ProgressError(ErrorCode.Closed, 'The store closed while the LISTEN connection was connecting')
          : new ProgressError(
              ErrorCode.StoreUnavailable,
              'The LISTEN connection was replaced while connecting',
            )),
    );
    if (client === undefined) return;
    // Bounded: close() must not wait for a server that no longer answers (see `bounded-end.ts`).
    await endWithin(client);
  }
}

/** Whether a `listenClient` factory's answer has the methods the connection calls. */
function isListenClient(value: unknown): value is PgListenClient {
  const client = value as Partial<Record<keyof PgListenClient, unknown>> | null;
  return (
    typeof client === 'object' &&
    client !== null &&
    typeof client.connect === 'function' &&
    typeof client.query === 'function' &&
    typeof client.on === 'function' &&
    typeof client.end === 'function'
  );
}
