import { ErrorCode, ProgressError, type Task } from '@finishline/core';
import { type Kysely, type RawBuilder, sql } from 'kysely';
import type { AppendTarget } from './append-pipeline.js';
import type { ConnectionGate } from './connection-gate.js';
import { DATABASE_CLOCK, databaseNow } from './lease-statements.js';
import { readOnLiveConnection, toProgressError } from './pg-errors.js';
import { PreparedStatement, param } from './prepared-statement.js';
import { type EventRow, type TaskRow, taskColumns, toTask } from './row-codec.js';
import type { ProgressDatabase } from './schema.js';
import type { BatchedCall } from './statement-batcher.js';

/**
 * The task statements of the Postgres store that run outside the append pipeline and the lease
 * statements: create, read, list, the epoch, latest seqs and retention. Each returns the query unrun;
 * the store runs it and types its driver errors, and decodes the rows.
 *
 * @module
 */

/** What {@link insertTask} returns of the row it inserted. */
export interface InsertedRow {
  id: string;
  created_at: string | number;
  lease_expires_at: string | number | null;
}

/**
 * Inserts a new task's row; returns its id and times, or no row when the id is taken.
 *
 * With `databaseClock` its `createdAt` (and `updatedAt`) is the database's time, and its lease expires
 * `leaseTtlMs` after it: the run of a task id is its `createdAt` (see `RunFence`), and runs of one id
 * created by replicas whose clocks disagree must still follow one another in the order they were created
 * (a replica's hub drops the changes of a run older than the one it follows, and a fence tells runs apart
 * by their times). From each replica's clock, a task created again after a purge by a replica whose clock
 * ran behind was an older run than the one it replaced.
 */
export function insertTask(
  target: AppendTarget,
  task: Task,
  databaseClock: { leaseTtlMs: number | undefined } | undefined,
): RawBuilder<InsertedRow> {
  let clock = sql``;
  let createdAt = sql`${task.createdAt}::int8`;
  let leaseExpiresAt = sql`${task.leaseExpiresAt}::int8`;
  if (databaseClock !== undefined) {
    // Read once (a CTE): created_at, updated_at and the lease's start are the same time.
    clock = sql`WITH clock AS MATERIALIZED (SELECT ${databaseNow} AS now)`;
    createdAt = sql`(SELECT now FROM clock)`;
    const ttl = databaseClock.leaseTtlMs;
    leaseExpiresAt = ttl === undefined ? sql`NULL` : sql`(SELECT now FROM clock) + ${ttl}::int8`;
  }
  return sql<InsertedRow>`
    ${clock}
    INSERT INTO ${target.tasks} (id, owner, kind, status, total, done, succeeded, failed, current, message,
      result, error_code, error_message, seq, acked_seq, created_at, updated_at, finished_at, lease_owner,
      lease_expires_at)
    VALUES (${task.id}, ${task.owner}, ${task.kind}, ${task.status}, ${task.total}, ${task.done},
      ${task.succeeded}, ${task.failed}, ${task.current}, ${task.message}, NULL, NULL, NULL, ${task.seq},
      ${task.ackedSeq}, ${createdAt}, ${createdAt}, NULL, ${task.leaseOwner}, ${leaseExpiresAt})
    ON CONFLICT (id) DO NOTHING
    RETURNING id, created_at, lease_expires_at`;
}

/**
 * The server encodings a store can use. Core accepts any text without U+0000 or a lone surrogate, and the
 * store sends it as UTF-8 (pg's client encoding): a database in another encoding (LATIN1, WIN1252, EUC_JP…)
 * refused every character it has no equivalent for, so the store opened and then failed appends and task
 * creations carrying one (an emoji in an item key, a CJK result) with `invalid_input`, as if the caller's
 * input were wrong, and a worker could not end its task with such a result. `SQL_ASCII` stores the bytes as
 * sent, unconverted: every text comes back as it went in.
 */
export const STORABLE_ENCODINGS: ReadonlySet<string> = new Set(['UTF8', 'SQL_ASCII']);

/**
 * Refuses `encoding` (the database's, as `current_setting('server_encoding')` reads it) unless it is in
 * {@link STORABLE_ENCODINGS}: the one check of `open()` and of `migrateProgressSchema`, so that a migration
 * run alone (a deployment step) does not prepare a database every store will refuse. `who` starts the message.
 *
 * @throws ProgressError `store_unavailable`, naming the encoding.
 */
export function assertStorableEncoding(encoding: string | undefined, who: string): void {
  if (encoding !== undefined && !STORABLE_ENCODINGS.has(encoding)) {
    throw new ProgressError(
      ErrorCode.StoreUnavailable,
      `${who}: the database's encoding is ${encoding}, which cannot hold every text the store accepts (an emoji, a CJK character: appends and creations with one would fail with invalid_input); use a database created with ENCODING 'UTF8'`,
    );
  }
}

/** The store's epoch (no row when the schema was altered by hand). */
export function selectEpoch(meta: RawBuilder<unknown>): RawBuilder<{ value: string }> {
  return sql<{ value: string }>`SELECT value FROM ${meta} WHERE key = 'epoch'`;
}

/**
 * Replaces the store's epoch with a fresh random value and returns it, telling every listener on
 * `channel` in the same transaction (`{"epoch":"<value>"}`): their servers read it at once rather than at
 * their next heartbeat tick. With `from`, only if the epoch is still `from`; with `after` (an event's row),
 * only if the epoch was not written since that event's transaction (no row returned otherwise).
 */
export function renewEpoch(
  meta: RawBuilder<unknown>,
  channel: string,
  from?: string,
  after?: { events: RawBuilder<unknown>; taskId: string; seq: number },
): RawBuilder<{ value: string }> {
  // From a known epoch only: replicas that notice the same lost commits at once renew it once.
  const fromOnly = from === undefined ? sql`` : sql`AND value = ${from}`;
  // And not again once renewed after the end that told of the loss: a store that could not read the epoch
  // at open read it when it noticed, after another replica's renewal for the same end maybe, and renewed
  // it a second time (watchers reset twice). The renewal's transaction began after that end committed, so
  // its xid is the younger of the two; age() compares xids across wraparound. An event row no longer there
  // (purged) leaves it to `from`.
  const afterOnly =
    after === undefined
      ? sql``
      : sql`AND age(xmin) >= COALESCE(
          (SELECT age(xmin) FROM ${after.events} WHERE task_id = ${after.taskId} AND seq = ${after.seq}), 0)`;
  const only = sql`${fromOnly} ${afterOnly}`;
  return sql<{ value: string }>`
    WITH renewed AS (
      UPDATE ${meta}
      SET value = md5(random()::text || clock_timestamp()::text || pg_backend_pid()::text)
      WHERE key = 'epoch' ${only} RETURNING value
    )
    SELECT value, pg_notify(${channel}, json_build_object('epoch', value)::text) AS notified FROM renewed`;
}

/** An owner's tasks, newest first, optionally only those with one of `statuses` (never empty). */
export function listTasks(
  target: AppendTarget,
  query: { owner: string; statuses: readonly string[] | undefined; limit: number },
): RawBuilder<TaskRow> {
  const { owner, statuses, limit } = query;
  const statusFilter = statuses === undefined ? sql`` : sql`AND status = ANY(${[...statuses]}::text[])`;
  return sql<TaskRow>`
    SELECT ${taskColumns} FROM ${target.tasks}
    WHERE owner = ${owner} ${statusFilter}
    ORDER BY created_at DESC, id DESC
    LIMIT ${limit}`;
}

/**
 * The task statements a server runs for every subscriber and every change: tasks' rows, a task's events
 * past a seq, the latest seqs of many. Compiled once per store (see `prepared-statement.ts`).
 */
export class TaskReads {
  /** The rows of those of `taskIds` that exist. */
  readonly tasks: PreparedStatement<{ taskIds: string[] }, TaskRow>;
  /**
   * A task's events past `afterSeq`, in one statement with the task's existence, from the same snapshot:
   * no row means no task; a row with a null `task_id` means a task without such events.
   */
  readonly events: PreparedStatement<
    { taskId: string; afterSeq: number; limit: number },
    EventRow | { task_id: null }
  >;
  /** The seq and status of each of `taskIds` that exists (at least one id). */
  readonly latest: PreparedStatement<
    { taskIds: string[] },
    { id: string; seq: string; status: string; created_at: string }
  >;

  constructor(db: Kysely<ProgressDatabase>, target: AppendTarget) {
    this.tasks = new PreparedStatement(
      db,
      sql<TaskRow>`SELECT ${taskColumns} FROM ${target.tasks} WHERE id = ANY(${param('taskIds')}::text[])`,
    );
    this.events = new PreparedStatement(
      db,
      sql<EventRow | { task_id: null }>`
    SELECT e.task_id, e.seq, e.type, e.time, e.body
    FROM ${target.tasks} t
    LEFT JOIN LATERAL (
      SELECT task_id, seq, type, time, body::text AS body FROM ${target.events}
      WHERE task_id = t.id AND seq > ${param('afterSeq')}
      ORDER BY seq
      LIMIT ${param('limit')}
    ) e ON true
    WHERE t.id = ${param('taskId')}
    ORDER BY e.seq`,
    );
    this.latest = new PreparedStatement(
      db,
      sql<{ id: string; seq: string; status: string; created_at: string }>`
    SELECT id, seq, status, created_at FROM ${target.tasks} WHERE id = ANY(${param('taskIds')}::text[])`,
    );
  }
}

/**
 * Ids per purge notice: ids are at most 128 characters from `ID_PATTERN`, which JSON leaves unescaped, so
 * 50 of them (about 6,600 bytes, and the purge's xid) stay under Postgres's 8000-byte payload limit.
 */
const PURGE_NOTICE_IDS = 50;

/**
 * How long the record of a purge (`<schema>.purged`) is kept: the re-read of a `LISTEN` connection that was
 * down when the purge notice was sent finds the purge there (see `listen-connection.ts`). A connection away
 * longer than this may find the record gone; `purged_horizon` tells it so.
 */
export const PURGED_RECORD_MS = 3_600_000;

/**
 * The events one `purgeFinished` call deletes, at most, but for its first task (as the SQLite store's
 * `PURGE_EVENT_BUDGET`): a purge is one statement, one transaction, and at the default limit of 500 tasks
 * of a few thousand events each, millions of event rows went in it, their row locks, WAL and dead tuples
 * held by one long transaction that a replica or a logical decoder then had to swallow at once. A task's
 * `seq` counts its events (its log is 1..seq); a call that stops early leaves the rest to the next.
 */
export const PURGE_EVENT_BUDGET = 10_000;

/** Where retention writes: the tables, the channel, and the purge records and the horizon in `meta`. */
export interface PurgeTarget extends AppendTarget {
  purged: RawBuilder<unknown>;
  meta: RawBuilder<unknown>;
}

/**
 * Deletes up to `limit` tasks finished at or before `cutoff` and their events, in one statement; returns
 * the deleted ids, each with the statement's transaction id (`xid`, as text). Events first (there is no
 * foreign key to cascade), then their tasks; `SKIP LOCKED` leaves a task another transaction holds for a
 * later purge. Of the tasks it locked (oldest first), it deletes those whose events, added up, stay within
 * {@link PURGE_EVENT_BUDGET}, and always the first; the others stay locked until the statement's short
 * transaction ends, and go to a later purge.
 *
 * The same statement records each deleted id in `purged` with its transaction id, and sends the purge
 * notices with that id too: every listener forgets the purged ids, so that a new task with the same id is
 * published from seq 1; a listener that was not connected when the notice went out finds the record by its
 * re-read, and one that heard the notice knows the record for the same purge (see `listen-connection.ts`).
 * It also deletes up to `limit` records older than {@link PURGED_RECORD_MS} (by the store's clock, `now`),
 * and raises `purged_horizon` to the highest xid among them.
 */
export function purgeFinished(
  target: PurgeTarget,
  {
    cutoff,
    limit,
    now,
    createdBefore,
  }: { cutoff: number; limit: number; now: number; createdBefore: number | typeof DATABASE_CLOCK },
): RawBuilder<{ id: string; xid: string }> {
  // Not a task created in this millisecond of the clock `created_at` comes from: its id taken again would be
  // the same run (see `isPurgeable` in core). The database's time is read once, before any row is locked.
  const clock =
    createdBefore === DATABASE_CLOCK
      ? sql`SELECT ${databaseNow} AS now`
      : sql`SELECT ${createdBefore}::int8 AS now`;
  return sql<{ id: string; xid: string }>`
    WITH clock AS MATERIALIZED (${clock}), locked AS (
      SELECT id, seq, finished_at FROM ${target.tasks}
      WHERE status <> 'running' AND finished_at IS NOT NULL AND finished_at <= ${cutoff}
        AND created_at < (SELECT now FROM clock)
      ORDER BY finished_at, id
      LIMIT ${limit}
      FOR UPDATE SKIP LOCKED
    ), doomed AS (
      -- The oldest whose events add up to the budget, and the first whatever its size.
      SELECT id FROM (
        SELECT id, row_number() OVER oldest AS n, sum(seq) OVER oldest AS events FROM locked
        WINDOW oldest AS (ORDER BY finished_at, id ROWS UNBOUNDED PRECEDING)
      ) AS running
      WHERE n = 1 OR events <= ${sql.lit(PURGE_EVENT_BUDGET)}
    ), purged_events AS (
      DELETE FROM ${target.events} WHERE task_id IN (SELECT id FROM doomed)
    ), deleted AS (
      DELETE FROM ${target.tasks} WHERE id IN (SELECT id FROM doomed)
      RETURNING id
    ), recorded AS (
      INSERT INTO ${target.purged} (task_id, purged_at) SELECT id, ${now} FROM deleted
    ), expired AS (
      -- SKIP LOCKED: two purges at once each delete records the other does not hold (no lock waits, no
      -- deadlock between them).
      DELETE FROM ${target.purged} WHERE ctid IN (
        SELECT ctid FROM ${target.purged} WHERE purged_at <= ${now - PURGED_RECORD_MS}
        ORDER BY purged_at LIMIT ${limit}
        FOR UPDATE SKIP LOCKED
      )
      RETURNING xid
    ), horizon AS (
      -- Ids above this transaction's are another cluster's, copied by a logical restore (see "After a
      -- restore" in listen-connection.ts): such records tell this cluster's listeners nothing, and such a
      -- horizon is replaced, not kept by greatest(), which would hide this cluster's deleted records.
      UPDATE ${target.meta}
      SET value = CASE WHEN value::xid8 < pg_current_xact_id() THEN greatest(value::xid8, newest.xid)
                       ELSE newest.xid END::text
      -- Not max(): the older Postgres versions the store supports have no max() of xid8, only its order.
      FROM (SELECT xid FROM expired WHERE xid < pg_current_xact_id() ORDER BY xid DESC LIMIT 1) AS newest
      WHERE key = 'purged_horizon'
    ), notified AS (
      -- Postgres delivers the notices in commit order, before any notification of such a new task.
      -- PURGE_NOTICE_IDS ids per notification.
      SELECT pg_notify(${target.channel}, json_build_object(
        'purged', json_agg(id), 'xid', pg_current_xact_id()::text)::text)
      FROM (SELECT id, (row_number() OVER () - 1) / ${sql.lit(PURGE_NOTICE_IDS)} AS chunk FROM deleted) AS numbered
      GROUP BY chunk
    )
    -- The count is a one-time filter that makes the notifications run (an unreferenced CTE would not).
    SELECT id, pg_current_xact_id()::text AS xid FROM deleted WHERE (SELECT count(*) FROM notified) >= 0`;
}

/**
 * Reads the tasks of a batch of `getTask` calls (gathered by a `StatementBatcher`: the subscribes of one
 * I/O phase, often many watchers of one task) in one statement, and settles each call with its own copy
 * (a caller owns the task it gets), on a connection taken through `gate`. Never rejects.
 */
export async function readTasks(
  gate: ConnectionGate,
  db: Kysely<ProgressDatabase>,
  reads: TaskReads,
  batch: BatchedCall<string, Task | undefined>[],
  closed: () => boolean,
): Promise<void> {
  const taskIds = [...new Set(batch.map((call) => call.input))];
  let rows: TaskRow[];
  try {
    ({ rows } = await readOnLiveConnection(
      () => gate.read(db, (connection) => reads.tasks.run(connection, { taskIds })),
      closed,
    ));
  } catch (error) {
    for (const call of batch) call.reject(toProgressError(error, 'getTask', call.input));
    return;
  }
  const byId = new Map(rows.map((row) => [row.id, row]));
  for (const call of batch) {
    const row = byId.get(call.input);
    // A damaged row fails its own calls (see toTask); thrown here, it left the other calls unsettled.
    let task: Task | undefined;
    try {
      task = row === undefined ? undefined : toTask(row);
    } catch (error) {
      call.reject(toProgressError(error, 'getTask', call.input));
      continue;
    }
    call.resolve(task);
  }
}
