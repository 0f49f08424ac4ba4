import type { AppendInput, AppendResult, Clock, Task, TaskChange, TaskEvent } from '@finishline/core';
import { ErrorCode, isProgressError, isTerminalType, ProgressError } from '@finishline/core';
import {
  assertLeaseOwner,
  assertRun,
  compareIds,
  planAppend,
  storeClosed,
  taskNotFound,
} from '@finishline/core/internal';
import { type Kysely, type RawBuilder, sql, type Transaction } from 'kysely';
import { integerArrayLiteral, textArrayLiteral } from './array-literal.js';
import { settlesWithin } from './bounded-end.js';
import type { ConnectionGate } from './connection-gate.js';
import { IDLE_IN_TRANSACTION_TIMEOUT_MS, idleInTransactionTimeout } from './idle-in-transaction.js';
import { LastWrittenRows } from './last-written-rows.js';
import { lockingTransaction } from './locking-transaction.js';
import {
  type ChangeNotice,
  encodeChangeNotices,
  encodeEvent,
  frozenEvent,
  MAX_CHANGE_ENTRY_BYTES,
  NOTIFY_EVENTS_PAYLOAD_BUDGET_BYTES,
  NOTIFY_PAYLOAD_BUDGET_BYTES,
  PAYLOADS_SEPARATOR,
  PG_NOTIFY_PAYLOAD_LIMIT_BYTES,
} from './notify-payload.js';
import {
  endsConnection,
  isDatabaseError,
  isRowRefusal,
  isSerializationFailure,
  LOCK_NOT_AVAILABLE,
  toProgressError,
} from './pg-errors.js';
import { PreparedStatement, param } from './prepared-statement.js';
import {
  int,
  jsonCopy,
  type PlannedFrom,
  type TaskRow,
  taskColumns,
  taskRecordJson,
  tasksById,
} from './row-codec.js';
import type { ProgressDatabase } from './schema.js';

/**
 * The append pipeline (group commit): appends that arrive while a transaction is in flight are
 * committed together by the next one, in call order per task. Each transaction locks its tasks' rows
 * (`SELECT … FOR UPDATE`, in id order), plans the events with the shared pure transitions, and writes
 * the snapshots, the events and a `pg_notify` in one statement, so a task's `seq` is gap-free under any
 * number of writers in any number of processes.
 *
 * @module
 */

// Refuse to load if a payload could ever reach Postgres's limit: an oversized one would fail its transaction.
if (
  MAX_CHANGE_ENTRY_BYTES + 2 > NOTIFY_PAYLOAD_BUDGET_BYTES ||
  NOTIFY_PAYLOAD_BUDGET_BYTES * 4 > PG_NOTIFY_PAYLOAD_LIMIT_BYTES ||
  NOTIFY_EVENTS_PAYLOAD_BUDGET_BYTES >= PG_NOTIFY_PAYLOAD_LIMIT_BYTES
) {
  throw new ProgressError(ErrorCode.Internal, 'NOTIFY payloads could come near the 8000-byte limit');
}

/**
 * Most rows the pipeline keeps of the tasks it writes to (see `last-written-rows.ts`): about 1 KB each, and
 * more running tasks than this per store process is beyond what one process drives.
 */
const LAST_WRITTEN_ROWS = 10_000;

/**
 * The longest that appends wait for a transaction in flight to end before a further one carries them
 * although they are fewer than a quarter of `maxBatchSize` (see `AppendPipeline.#flush`): a transaction
 * normally ends within milliseconds, but one may be slow (a busy database, a connection that died unnoticed,
 * a row another transaction holds, waited for at most {@link HELD_LOCK_WAIT_MS}).
 */
const THROTTLE_MAX_WAIT_MS = 100;

/** A row {@link AppendStatements.lockRows} read: locked, or `held` by another transaction (not locked). */
type LockedRow = TaskRow & { held: boolean };

/**
 * The first wait before appends whose row another transaction held are tried again (then doubling, up to
 * {@link HELD_MAX_RETRY_MS}), as acks and lease renewals are (`postgres-progress-store.ts`).
 */
const HELD_FIRST_RETRY_MS = 50;
/** The longest wait between two tries of appends whose row another transaction holds. */
const HELD_MAX_RETRY_MS = 1000;
/**
 * How long a second transaction waits for the rows the first one skipped (see `AppendPipeline.#commitBatchOnce`),
 * as lease renewals do (`RENEWAL_LOCK_WAIT_MS`): a row another writer's appends hold most of the time is
 * had within a statement or two (the lock queue is first come, first served), where skipping alone could
 * miss it again and again; a row held longer holds one transaction of the pipeline this long at most.
 */
const HELD_LOCK_WAIT_MS = 500;

/**
 * The longest a batch whose outcome is unknown (see `AppendPipeline.#settleUnknown`) waits for its rows
 * before its appends are rejected: as long as an orphaned transaction of the store can hold them (one whose
 * client stopped before its COMMIT, ended by the idle timeout); a statement of its own takes milliseconds.
 */
const UNKNOWN_OUTCOME_WAIT_MS = IDLE_IN_TRANSACTION_TIMEOUT_MS;
/**
 * How many times that wait is tried while the connection it drew turns out dead (see `AppendPipeline.#settleUnknown`):
 * the failed write's own, and with a terminated or restarted server, another few killed with it.
 */
const UNKNOWN_OUTCOME_TRIES = 3;
/** How much longer than {@link UNKNOWN_OUTCOME_WAIT_MS} the pipeline waits for the database to answer that wait. */
const UNKNOWN_OUTCOME_ANSWER_MS = 1000;

/**
 * Whether a failed write may have committed all the same: the driver gave up without an answer from
 * Postgres (the connection dropped, `query_timeout`), or the server ended the connection (class 08, or
 * 57P01–57P03: terminated, crashed, shutting down), which it may do after a commit it could not report.
 * Any other answer from Postgres means the transaction did not commit.
 */
function isOutcomeUnknown(error: unknown): boolean {
  if (isProgressError(error)) return false;
  if (!isDatabaseError(error)) return !isConnectFailure(error);
  return error.code.startsWith('08') || /^57P0[123]$/.test(error.code);
}

/**
 * A connection that could not be had (refused, or the pool's `connectionTimeoutMillis` ran out): nothing of
 * the batch was sent. Waiting for its rows would only ask an exhausted pool or a down database once more.
 */
function isConnectFailure(error: unknown): boolean {
  const { code, message } = (error ?? {}) as { code?: unknown; message?: unknown };
  return code === 'ECONNREFUSED' || message === 'timeout exceeded when trying to connect';
}

/** Where appends are written: the schema's tables and its `NOTIFY` channel. */
export interface AppendTarget {
  tasks: RawBuilder<unknown>;
  events: RawBuilder<unknown>;
  channel: string;
}

/** Counters of the append pipeline since the store opened. */
export interface AppendStats {
  /** Appends committed (events written), reaped interruptions included. */
  appends: number;
  /** Append transactions committed. */
  batches: number;
  /** Most appends committed by one transaction. */
  largestBatch: number;
  /** Append transactions that failed (their appends rejected, or retried one by one after a data error). */
  failedBatches: number;
  /**
   * Committed batches that locked and read their rows first. The others were planned from the rows this
   * store last wrote or created and written in one statement; a batch whose rows moved on meanwhile is
   * counted here.
   */
  lockedBatches: number;
}

/** An append waiting for (or in) a group-commit transaction. */
interface PendingAppend {
  taskId: string;
  input: AppendInput;
  /**
   * The run the append is fenced to (see `RunFence`): checked when planning, so on the locked row, or on a
   * remembered row whose `created_at` the write's guard then checks against the table (no extra query).
   */
  run: number | undefined;
  /**
   * The lease owner the append is fenced to (see `RunFence.owner`): checked when planning, on the locked
   * row, or on a remembered row whose `lease_owner` the write's guard then checks against the table.
   */
  owner: string | undefined;
  /** Tried already while another transaction held its row: the wait before the next try, if so. */
  retryMs?: number;
  resolve: (result: AppendResult) => void;
  reject: (error: unknown) => void;
}

/** What {@link AppendPipeline} needs. */
export interface AppendPipelineOptions {
  db: Kysely<ProgressDatabase>;
  /** Where each write takes its connection: shut by the store's `close()` past `closeTimeoutMs`. */
  gate: ConnectionGate;
  statements: AppendStatements;
  clock: Clock;
  /** Most appends per transaction. */
  maxBatchSize: number;
  /** Most append transactions in flight at once. */
  maxConcurrentBatches: number;
  /** Called once per committed event, right after its transaction committed. */
  publish: (change: TaskChange) => void;
  /**
   * Called before a transaction is sent that would commit `taskId`'s seqs up to `seq` (see
   * `ChangeFeedHub.expectCommit`).
   */
  expectCommit: (taskId: string, seq: number) => void;
  /** Called once a batch's transaction ended, after its changes were published or its appends rejected. */
  settled: (taskIds: Iterable<string>) => void;
}

/**
 * Planned appends as the write statements take them, serialized once: the task rows as one JSON document,
 * the events as one array literal per column (`array-literal.ts`) with the bodies as one text.
 */
interface EncodedAppends {
  /** The tasks' final rows (`taskRecordJson`, with what each was planned from if given), a JSON array. */
  tasks: string;
  /** The tasks' ids, a `text[]` literal. */
  ids: string;
  /** How many tasks. */
  count: number;
  /**
   * The events as columns of the events table, each an array literal, and `bodies` joined by
   * {@link PAYLOADS_SEPARATOR}.
   */
  events: { taskIds: string; seqs: string; types: string; times: string; bodies: string };
  /** The `pg_notify` payloads joined by {@link PAYLOADS_SEPARATOR} (`chr(1)` in SQL). */
  payloads: string;
  /** The changes to publish once committed, in the order of the events. */
  changes: TaskChange[];
}

function encodeAppends(
  tasks: Task[],
  events: TaskEvent[],
  planned?: ReadonlyMap<string, PlannedFrom>,
): EncodedAppends {
  const notices = new Map<string, ChangeNotice & { events: TaskEvent[] }>();
  // Each body is serialized once, for the events table, the notification and the published change alike.
  const bodies = new Map<TaskEvent, string>();
  const taskIds: string[] = [];
  const seqs: number[] = [];
  const types: string[] = [];
  const times: number[] = [];
  const changes: TaskChange[] = [];
  // Each task's run (its created_at), for its notice and changes: the rows the batch was planned from
  // carry it, and the write commits only on those rows (locked, or guarded on seq and created_at), so no
  // statement returns it.
  const runs = new Map<string, number>();
  for (const task of tasks) runs.set(task.id, task.createdAt);
  for (const event of events) {
    const { taskId, seq, type, time, ...body } = event;
    const bodyJson = JSON.stringify(body);
    bodies.set(event, bodyJson);
    taskIds.push(taskId);
    seqs.push(seq);
    types.push(type);
    times.push(time);
    const terminal = isTerminalType(type);
    let notice = notices.get(taskId);
    if (notice === undefined) {
      notice = { taskId, firstSeq: seq, seq, terminal, events: [event] };
      const run = runs.get(taskId);
      if (run !== undefined) notice.run = run;
      notices.set(taskId, notice);
    } else {
      notice.seq = seq;
      notice.terminal = terminal;
      notice.events.push(event);
    }
    changes.push(new CommittedChange(taskId, seq, terminal, notice.run, type, time, bodyJson));
  }
  const payloads = encodeChangeNotices([...notices.values()], (event) =>
    encodeEvent(event, bodies.get(event)),
  );
  return {
    tasks: `[${tasks.map((task) => taskRecordJson(task, planned?.get(task.id))).join(',')}]`,
    ids: textArrayLiteral(tasks.map((task) => task.id)),
    count: tasks.length,
    events: {
      taskIds: textArrayLiteral(taskIds),
      seqs: integerArrayLiteral(seqs),
      types: textArrayLiteral(types),
      times: integerArrayLiteral(times),
      // In event order (a Map iterates in insertion order). JSON.stringify escapes every control
      // character, so U+0001 never occurs inside a body.
      bodies: [...bodies.values()].join(PAYLOADS_SEPARATOR),
    },
    payloads: payloads.join(PAYLOADS_SEPARATOR),
    changes,
  };
}

/**
 * The events as a row source: one array per column, the bodies one text split on U+0001. Columns rather
 * than one JSON document of rows: Postgres then parses each body once (as it stores it) instead of the
 * whole document first, which halved the insert's execution time at 500 events a statement.
 */
const eventColumns = sql`unnest(${param('taskIds')}::text[], ${param('seqs')}::int8[], ${param('types')}::text[],
    ${param('times')}::int8[], string_to_array(${param('bodies')}::text, chr(1)))
    AS e(task_id, seq, type, time, body)`;

/**
 * The statements of the append pipeline (and of the reaper, which writes its interruptions as appends),
 * compiled once per store: see `prepared-statement.ts`. Each runs with the {@link AppendArguments} of one
 * batch.
 */
export class AppendStatements {
  /**
   * Writes planned appends (see {@link writeAppends}). Task rows travel as one JSON document (one
   * serialization in JS, one parse in Postgres, instead of a text[] of JSON strings that both sides escape
   * element by element); events as columns (`eventColumns`).
   */
  readonly write: PreparedStatement<AppendArguments, unknown>;
  /** Writes appends planned from the rows last written, if those rows did not move on (see {@link writeAppendsIfUnchanged}). */
  readonly writeIfUnchanged: PreparedStatement<AppendArguments, OthersColumnsRow>;
  /** Locks the rows of `ids` in id order and reads them; a row another transaction holds is only read (`held`). */
  readonly lockRows: PreparedStatement<{ ids: string[] }, LockedRow>;
  /** Locks the rows of `ids` in id order and reads them, waiting for those another transaction holds. */
  readonly lockRowsWaiting: PreparedStatement<{ ids: string[] }, LockedRow>;

  constructor(db: Kysely<ProgressDatabase>, target: AppendTarget) {
    this.write = new PreparedStatement(
      db,
      sql`
    WITH updated AS (
      UPDATE ${target.tasks} AS t SET
        status = v.status, total = v.total, done = v.done, succeeded = v.succeeded, failed = v.failed,
        current = v.current, message = v.message, result = v.result, error_code = v.error_code,
        error_message = v.error_message, seq = v.seq, updated_at = v.updated_at, finished_at = v.finished_at,
        lease_owner = v.lease_owner, lease_expires_at = v.lease_expires_at
      FROM json_to_recordset(${param('tasks')}::json) AS v(
        id text, status text, total int8, done int8, succeeded int8, failed int8, current text, message text,
        result json, error_code text, error_message text, seq int8, updated_at int8, finished_at int8,
        lease_owner text, lease_expires_at int8)
      -- The id list lets the planner reach the rows by primary key whatever it guesses of the JSON.
      WHERE t.id = v.id AND t.id = ANY(${param('ids')}::text[])
    ), inserted AS (
      INSERT INTO ${target.events} (task_id, seq, type, time, body)
      SELECT task_id, seq, type, time, body::json FROM ${eventColumns}
    )
    -- Payloads as one text split on U+0001: no escaping on either side, unlike a JSON array or a text[].
    SELECT pg_notify(${sql.lit(target.channel)}, payload)
    FROM unnest(string_to_array(${param('payloads')}::text, chr(1))) AS payload`,
    );
    this.writeIfUnchanged = new PreparedStatement(
      db,
      sql<OthersColumnsRow>`
      -- Rows locked in id order first, as every statement of the store locks them, so that this one and
      -- an ack or a locking append over the same tasks never wait for each other in a cycle. A row another
      -- transaction holds is skipped, not waited for (see \`lockRows\`): the count then fails the guard.
      WITH locked AS MATERIALIZED (
        SELECT id FROM ${target.tasks} WHERE id = ANY(${param('ids')}::text[]) ORDER BY id
        FOR UPDATE SKIP LOCKED
      ), updated AS (
        UPDATE ${target.tasks} AS t SET
          status = v.status, total = v.total, done = v.done, succeeded = v.succeeded, failed = v.failed,
          current = v.current, message = v.message, result = v.result, error_code = v.error_code,
          error_message = v.error_message, seq = v.seq, updated_at = v.updated_at, finished_at = v.finished_at,
          lease_owner = CASE WHEN v.status = 'running' THEN t.lease_owner END,
          lease_expires_at = CASE WHEN v.status = 'running' THEN t.lease_expires_at END
        FROM json_to_recordset(${param('tasks')}::json) AS v(
            id text, status text, total int8, done int8, succeeded int8, failed int8, current text, message text,
            result json, error_code text, error_message text, seq int8, updated_at int8, finished_at int8,
            from_seq int8, created_at int8, from_updated_at int8, from_lease_owner text)
        -- The count is a one-time filter: every lock is taken, in id order, before any row is touched.
        -- Joining \`locked\` instead let the planner, which guesses 100 rows for the JSON, pick a nested loop
        -- over it: quadratic in the batch, 45 of a statement's 50 ms at 500 tasks.
        WHERE (SELECT count(*) FROM locked) = ${param('count')}
          AND t.id = v.id AND t.id = ANY(${param('ids')}::text[])
          AND t.seq = v.from_seq AND t.created_at = v.created_at AND t.updated_at = v.from_updated_at
          -- A lease taken over by another owner since (see \`RunFence.owner\`): the locked row decides.
          AND t.lease_owner IS NOT DISTINCT FROM v.from_lease_owner
        RETURNING t.id, t.lease_owner, t.lease_expires_at, t.acked_seq
      ), guard AS (
        -- Every row or none: a row that moved on divides by zero, which undoes the whole statement.
        SELECT 1 / (CASE WHEN count(*) = ${param('count')} THEN 1 ELSE 0 END) AS ok FROM updated
      ), inserted AS (
        INSERT INTO ${target.events} (task_id, seq, type, time, body)
        SELECT task_id, seq, type, time, body::json FROM ${eventColumns}
        WHERE (SELECT ok FROM guard) = 1
      ), notified AS MATERIALIZED (
        -- Materialized so that it runs once: joined as a subquery, it ran again for every updated row
        -- (a nested loop rescans its inner side), calling pg_notify rows × payloads times. Postgres drops
        -- the duplicates, but finding them cost a third of the statement at 500 tasks a batch.
        SELECT count(pg_notify(${sql.lit(target.channel)}, payload)) AS sent
        FROM unnest(string_to_array(${param('payloads')}::text, chr(1))) AS payload
        WHERE (SELECT ok FROM guard) = 1
      )
      SELECT u.id, u.lease_owner, u.lease_expires_at, u.acked_seq
      FROM updated AS u CROSS JOIN notified`,
    );
    // Locks in id order, so two batches (in any processes) never wait for each other in a cycle. A row
    // another transaction holds (an append of a replica frozen before its COMMIT) is skipped, not waited
    // for, and comes back as `held`: a wait would hold this batch's tasks, its pool connection, and, once
    // every transaction in flight waited so, every append of the store, for as long as that one lasts.
    this.lockRows = new PreparedStatement(
      db,
      sql<LockedRow>`
        WITH locked AS MATERIALIZED (
          SELECT ${taskColumns} FROM ${target.tasks}
          WHERE id = ANY(${param('ids')}::text[]) AND ${idleInTransactionTimeout}
          ORDER BY id
          FOR UPDATE SKIP LOCKED
        )
        SELECT *, false AS held FROM locked
        UNION ALL
        SELECT ${taskColumns}, true FROM ${target.tasks}
        WHERE id = ANY(${param('ids')}::text[]) AND id NOT IN (SELECT id FROM locked)`,
    );
    this.lockRowsWaiting = new PreparedStatement(
      db,
      sql<LockedRow>`
        SELECT ${taskColumns}, false AS held FROM ${target.tasks}
        WHERE id = ANY(${param('ids')}::text[]) AND ${idleInTransactionTimeout}
        ORDER BY id
        FOR UPDATE`,
    );
  }
}

/**
 * Writes planned appends: the final row of each task, every event, and notifications of which tasks
 * gained which seqs, with the events when they fit (see `notify-payload.ts`) — one statement, inside the
 * caller's transaction, so the notifications are sent if and only if the appends commit. Returns the
 * changes to publish once the transaction committed, in the order of `events`, each with its event.
 */
export async function writeAppends(
  trx: Transaction<ProgressDatabase>,
  statements: AppendStatements,
  tasks: Task[],
  events: TaskEvent[],
): Promise<TaskChange[]> {
  const encoded = encodeAppends(tasks, events);
  await statements.write.run(trx, encodedArguments(encoded));
  return encoded.changes;
}

/** The arguments of the write statements, from the encoded appends. */
function encodedArguments(encoded: EncodedAppends): AppendArguments {
  const { tasks, ids, count, events, payloads } = encoded;
  return { ...events, tasks, ids, payloads, count };
}

/** The arguments the append statements bind (see {@link AppendStatements}). */
interface AppendArguments extends Record<string, unknown> {
  tasks: string;
  /** Array literals (`array-literal.ts`), as the statements cast them. */
  ids: string;
  count: number;
  taskIds: string;
  seqs: string;
  types: string;
  times: string;
  bodies: string;
  payloads: string;
}

/** The columns of a task row that leases and acks write, which a remembered row may have stale. */
type OthersColumns = Pick<Task, 'leaseOwner' | 'leaseExpiresAt' | 'ackedSeq'>;

interface OthersColumnsRow {
  id: string;
  lease_owner: string | null;
  lease_expires_at: string | number | null;
  acked_seq: string | number;
}

/** The SQLSTATE of the guard in {@link writeAppendsIfUnchanged} (division by zero): a row moved on. */
const ROW_MOVED_ON = '22012';

/** A row that moved on since it was planned from: the caller plans again from the locked rows. */
export class RowMovedOn extends Error {}

/**
 * {@link writeAppends} without a transaction around it, for appends planned from rows as this store last
 * wrote them (`planned`: each task's seq, creation time and update time then): one autocommit statement,
 * one round trip instead of four (BEGIN, the locking read, the write, COMMIT), which at tens of appends per
 * batch is most of what an append costs the process. Each row is written only if its seq, creation time and
 * update time are still the planned ones — nothing else changes a running task's row but an append (leases
 * and acks touch only their own columns, which this write leaves alone except that an ending clears the
 * lease, as `planAppend` does) — and if any row moved on (another writer, the reaper, a purge and a new task
 * of the same id, or a failover that took back the append planned from, after which another writer's append
 * took its seq: the update time tells that row from the remembered one), the guard fails the whole
 * statement and nothing is written: it throws {@link RowMovedOn}.
 * Returns the changes to publish and, per task, the columns others write as the row has them now.
 */
export async function writeAppendsIfUnchanged(
  db: Kysely<ProgressDatabase>,
  statements: AppendStatements,
  tasks: Task[],
  planned: ReadonlyMap<string, PlannedFrom>,
  events: TaskEvent[],
): Promise<{ changes: TaskChange[]; current: Map<string, OthersColumns> }> {
  const encoded = encodeAppends(tasks, events, planned);
  let rows: OthersColumnsRow[];
  try {
    ({ rows } = await statements.writeIfUnchanged.run(db, encodedArguments(encoded)));
  } catch (error) {
    // A serialization failure (a session default stricter than READ COMMITTED, and a row that changed since
    // the statement began) wrote nothing either: the caller plans again from the rows, locked in a
    // READ COMMITTED transaction.
    if ((isDatabaseError(error) && error.code === ROW_MOVED_ON) || isSerializationFailure(error)) {
      throw new RowMovedOn();
    }
    throw error;
  }
  const current = new Map(
    rows.map((row) => [
      row.id,
      {
        leaseOwner: row.lease_owner,
        leaseExpiresAt: row.lease_expires_at === null ? null : int(row.lease_expires_at),
        ackedSeq: int(row.acked_seq),
      },
    ]),
  );
  return { changes: encoded.changes, current };
}

/**
 * The change of a committed event. Its `events` are built on first read, from the text the table
 * stores (a fresh, frozen copy: what any other replica rebuilds from the notification): a store with no
 * subscriber that reads them, like a writer-only process, never pays for the copy.
 *
 * `events` is an own, enumerable getter, so a subscriber that spreads or serializes a change gets them,
 * as it does for a change decoded from a notification; one descriptor shared by every instance, because a
 * literal with its own getter closure per event cost 0.9 µs against 0.15 µs (micro-benchmark), which
 * `bench:store` showed as 10–15 % of the appends/s.
 */
class CommittedChange implements TaskChange {
  static readonly #eventsProperty: PropertyDescriptor = {
    enumerable: true,
    get(this: CommittedChange): readonly TaskEvent[] {
      this.#events ??= Object.freeze([
        frozenEvent(
          this.taskId,
          this.seq,
          this.#type,
          this.#time,
          JSON.parse(this.#bodyJson) as Record<string, unknown>,
        ),
      ]);
      return this.#events;
    },
  };

  readonly taskId: string;
  readonly seq: number;
  readonly terminal: boolean;
  declare readonly run?: number;
  declare readonly events: readonly TaskEvent[];
  readonly #type: string;
  readonly #time: number;
  readonly #bodyJson: string;
  #events: readonly TaskEvent[] | undefined;

  constructor(
    taskId: string,
    seq: number,
    terminal: boolean,
    run: number | undefined,
    type: string,
    time: number,
    bodyJson: string,
  ) {
    this.taskId = taskId;
    this.seq = seq;
    this.terminal = terminal;
    // Every batch's tasks have their run; absent only if a caller passed events of a task it did not.
    if (run !== undefined) (this as { run?: number }).run = run;
    this.#type = type;
    this.#time = time;
    this.#bodyJson = bodyJson;
    Object.defineProperty(this, 'events', CommittedChange.#eventsProperty);
    // Frozen like every change the feed shares; private fields stay writable, so `events` is cached.
    Object.freeze(this);
  }
}

/** What a committed batch gives back: each append's outcome, the changes to publish, the rows written. */
interface WrittenBatch {
  /** The appends planned, in the batch's order: those of tasks whose row another transaction held are not. */
  planned: readonly PendingAppend[];
  /** The outcome of each of `planned`. */
  outcomes: (AppendResult | ProgressError)[];
  changes: TaskChange[];
  tasks: Task[];
  /** Planned from rows read under lock (not from the rows last written). */
  locked: boolean;
  /** The appends of tasks whose row another transaction held, in the batch's order: tried again later. */
  held: PendingAppend[];
}

/**
 * Plans a batch's appends in order from `rows` (taken over: each plan moves its task on), with the shared
 * pure transitions. A refused append is its error; the rest go on.
 */
function planBatch(
  batch: readonly PendingAppend[],
  rows: Map<string, Task | ProgressError>,
  now: number,
): { outcomes: (AppendResult | ProgressError)[]; tasks: Task[]; events: TaskEvent[] } {
  const changed = new Map<string, Task>();
  const events: TaskEvent[] = [];
  const outcomes: (AppendResult | ProgressError)[] = [];
  for (const { taskId, input, run, owner } of batch) {
    const task = rows.get(taskId);
    if (task === undefined) {
      outcomes.push(taskNotFound(taskId));
      continue;
    }
    // A damaged row (see toTask): its appends fail alone, the others of the batch commit.
    if (isProgressError(task)) {
      outcomes.push(task);
      continue;
    }
    try {
      assertRun(task, run);
      assertLeaseOwner(task, owner);
      const next = planAppend(task, input, now);
      rows.set(taskId, next.task);
      changed.set(taskId, next.task);
      events.push(next.event);
      // Returned objects must not share the planning rows (the task is a copy of its own, which the caller
      // of planBatch may complete in place); the input's `detail`/`result` are the pipeline's own copies
      // already (`parseAppendInput` copies them), which the event may keep.
      outcomes.push({ event: next.event, task: { ...next.task, result: jsonCopy(next.task.result) } });
    } catch (error) {
      if (!isProgressError(error)) throw error;
      outcomes.push(error);
    }
  }
  return { outcomes, tasks: [...changed.values()], events };
}

/** Queues appends and commits them in batches; see the module documentation. */
export class AppendPipeline {
  readonly #options: AppendPipelineOptions;
  readonly #queue: PendingAppend[] = [];
  readonly #busyTasks = new Set<string>();
  /** Tasks whose row another transaction held, until their appends are tried again (see {@link #retryLater}). */
  readonly #heldTasks = new Set<string>();
  readonly #idleWaiters: (() => void)[] = [];
  /** The batches in flight, each until its transactions ended (how many run, and {@link settledBefore}). */
  readonly #inFlight = new Set<PendingAppend[]>();
  /** Woken whenever appends may have settled: a batch ended, or queued appends were rejected. */
  #progressWaiters: (() => void)[] = [];
  /** The timers of {@link #retryLater}, which {@link close} clears. */
  readonly #retryTimers = new Set<ReturnType<typeof setTimeout>>();
  /** Set by {@link close}: appends whose row another transaction holds are no longer tried again. */
  #closing = false;
  /** Set by {@link abandon}: nothing more is sent, and appends not sent yet are rejected with `closed`. */
  #abandoned = false;
  readonly #minConcurrentBatch: number;
  readonly #stats: AppendStats = {
    appends: 0,
    batches: 0,
    largestBatch: 0,
    failedBatches: 0,
    lockedBatches: 0,
  };
  /** The rows of running tasks as this pipeline last committed them: a batch of those skips the locking read. */
  readonly #lastWritten: LastWrittenRows;
  #flushScheduled = false;
  /**
   * Armed while appends wait for a second transaction that the batch size alone would not start (see
   * {@link THROTTLE_MAX_WAIT_MS}); cleared whenever a transaction ends.
   */
  #throttleTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(options: AppendPipelineOptions) {
    this.#options = options;
    this.#minConcurrentBatch = Math.ceil(options.maxBatchSize / 4);
    this.#lastWritten = new LastWrittenRows(LAST_WRITTEN_ROWS);
  }

  stats(): AppendStats {
    return { ...this.#stats };
  }

  /** Queues a validated append; the promise settles once its transaction committed or failed. */
  enqueue(
    taskId: string,
    input: AppendInput,
    run: number | undefined,
    owner: string | undefined,
  ): Promise<AppendResult> {
    return new Promise<AppendResult>((resolve, reject) => {
      this.#queue.push({ taskId, input, run, owner, resolve, reject });
      this.#scheduleFlush();
    });
  }

  /**
   * A task this store just inserted, as its row is: the task's first batch of appends can then be planned
   * from it and written in one statement, like every later one, instead of in a locking transaction.
   */
  created(task: Task): void {
    this.#lastWritten.remember(task);
  }

  /** Counts and publishes appends another transaction committed (the reaper's interruptions). */
  committedElsewhere(changes: readonly TaskChange[]): void {
    this.#stats.appends += changes.length;
    for (const change of changes) this.#lastWritten.delete(change.taskId);
    for (const change of changes) this.#options.publish(change);
  }

  /**
   * The store closes. Appends whose task row another transaction holds are rejected with `closed`, with
   * each later append of those tasks, instead of being tried again for as long as the row stays held: that
   * transaction may be another program's, or an operator's `BEGIN; SELECT … FOR UPDATE`, held for hours, and
   * `close()` waits for the pipeline (see {@link whenIdle}). Such appends in a transaction in flight are
   * rejected once its lock wait ({@link HELD_LOCK_WAIT_MS}) ends. Every other append is still committed.
   */
  close(): void {
    this.#closing = true;
    for (const timer of this.#retryTimers) clearTimeout(timer);
    this.#retryTimers.clear();
    this.#rejectQueued(this.#heldTasks);
    this.#heldTasks.clear();
    this.#flush();
  }

  /**
   * The store's `close()` stopped waiting for the pipeline (`closeTimeoutMs`: the database stopped answering):
   * the appends not sent yet are rejected with `closed`, and nothing more is sent, not even a batch's second
   * transaction. Sent once `close()` had returned, they went to a new connection to the database that no
   * longer answered, and never settled (or committed on the caller's pool after it closed). The appends in
   * flight settle as their statements do.
   */
  abandon(): void {
    this.#closing = true;
    this.#abandoned = true;
    clearTimeout(this.#throttleTimer);
    this.#throttleTimer = undefined;
    this.#rejectUnsent();
  }

  /** Once {@link abandon}ed: rejects with `closed` every queued append, and wakes `whenIdle` if nothing is in flight. */
  #rejectUnsent(): void {
    const closed = storeClosed();
    for (const entry of this.#queue.splice(0)) entry.reject(closed);
    this.#progressed();
    if (this.#inFlight.size === 0) for (const wake of this.#idleWaiters.splice(0)) wake();
  }

  /** Rejects with `closed` the queued appends of `taskIds`. */
  #rejectQueued(taskIds: ReadonlySet<string>): void {
    if (taskIds.size === 0) return;
    const closed = storeClosed();
    const kept: PendingAppend[] = [];
    for (const entry of this.#queue) {
      if (taskIds.has(entry.taskId)) entry.reject(closed);
      else kept.push(entry);
    }
    this.#queue.splice(0, this.#queue.length, ...kept);
    this.#progressed();
  }

  /**
   * Resolves once every append queued or in a transaction at the time of the call has been committed (its
   * change published) or rejected; appends queued later are not waited for, so a steady stream of them
   * never holds it back. Appends whose row another transaction holds are waited for as they are tried
   * again, until they commit or `close()` rejects them.
   */
  async settledBefore(): Promise<void> {
    let waiting = this.#outstanding();
    // Each round waits for a batch to end or for queued appends to be rejected; the appends waited for
    // are those of the call, a finite set that only shrinks.
    while (waiting.size > 0) {
      await new Promise<void>((resolve) => this.#progressWaiters.push(resolve));
      const outstanding = this.#outstanding();
      waiting = new Set([...waiting].filter((entry) => outstanding.has(entry)));
    }
  }

  /** The appends not settled yet: queued, or in a batch in flight (some of whose may have settled). */
  #outstanding(): Set<PendingAppend> {
    const outstanding = new Set<PendingAppend>(this.#queue);
    for (const batch of this.#inFlight) for (const entry of batch) outstanding.add(entry);
    return outstanding;
  }

  #progressed(): void {
    if (this.#progressWaiters.length === 0) return;
    const waiters = this.#progressWaiters;
    this.#progressWaiters = [];
    for (const wake of waiters) wake();
  }

  /** Resolves once every queued append has been committed or rejected. */
  async whenIdle(): Promise<void> {
    if (this.#inFlight.size === 0 && this.#queue.length === 0) return;
    await new Promise<void>((resolve) => this.#idleWaiters.push(resolve));
  }

  #scheduleFlush(): void {
    if (this.#flushScheduled) return;
    this.#flushScheduled = true;
    // A microtask later: appends issued in the same synchronous run join one transaction.
    queueMicrotask(() => {
      this.#flushScheduled = false;
      this.#flush();
    });
  }

  #flush(unthrottled = false): void {
    if (this.#abandoned) {
      this.#rejectUnsent();
      return;
    }
    while (this.#inFlight.size < this.#options.maxConcurrentBatches && this.#queue.length > 0) {
      // A second transaction in flight pays off only when it has enough to carry; otherwise the appends
      // wait for the running one to finish and go together (measured: larger batches beat more of them).
      // Not for ever: the running one may be slow, and the appends of every other task would wait as long.
      if (!unthrottled && this.#inFlight.size > 0 && this.#queue.length < this.#minConcurrentBatch) {
        this.#throttleTimer ??= setTimeout(() => {
          this.#throttleTimer = undefined;
          this.#flush(true);
        }, THROTTLE_MAX_WAIT_MS);
        this.#throttleTimer.unref?.();
        break;
      }
      unthrottled = false;
      const batch = this.#takeBatch();
      if (batch.length === 0) break;
      const taskIds = new Set(batch.map((entry) => entry.taskId));
      for (const taskId of taskIds) this.#busyTasks.add(taskId);
      this.#inFlight.add(batch);
      void this.#commitBatch(batch).finally(() => {
        this.#inFlight.delete(batch);
        clearTimeout(this.#throttleTimer);
        this.#throttleTimer = undefined;
        for (const taskId of taskIds) this.#busyTasks.delete(taskId);
        this.#flush();
        if (this.#inFlight.size === 0 && this.#queue.length === 0) {
          for (const wake of this.#idleWaiters.splice(0)) wake();
        }
        this.#progressed();
      });
    }
  }

  /**
   * Takes the next batch from the queue, in order, skipping tasks that are in a transaction already:
   * their appends wait for it, so one task's appends commit in call order.
   */
  #takeBatch(): PendingAppend[] {
    const batch: PendingAppend[] = [];
    const kept: PendingAppend[] = [];
    for (const entry of this.#queue) {
      if (
        batch.length < this.#options.maxBatchSize &&
        !this.#busyTasks.has(entry.taskId) &&
        !this.#heldTasks.has(entry.taskId)
      )
        batch.push(entry);
      else kept.push(entry);
    }
    // Once the batch is full, later appends of a task in it must wait too: they stay behind, in order.
    this.#queue.splice(0, this.#queue.length, ...kept);
    return batch;
  }

  /**
   * Commits a batch of appends (from the rows this store last wrote when it has them all, else in a
   * locking transaction); settles every append's promise. Never rejects.
   */
  async #commitBatch(batch: PendingAppend[]): Promise<void> {
    try {
      await this.#commitBatchOnce(batch);
    } finally {
      this.#options.settled(new Set(batch.map((entry) => entry.taskId)));
    }
  }

  /**
   * `skip`: the first transaction of a batch, which skips the rows another transaction holds; the appends
   * of those tasks go to a second one (`wait`), which waits for them at most {@link HELD_LOCK_WAIT_MS}, and
   * if they are still held then, are tried again later ({@link #retryLater}).
   */
  async #commitBatchOnce(batch: PendingAppend[], mode: 'skip' | 'wait' = 'skip'): Promise<void> {
    if (this.#abandoned) {
      // Not sent (see abandon): a batch's second transaction, or an append of a batch split after a refusal.
      const closed = storeClosed();
      for (const entry of batch) entry.reject(closed);
      return;
    }
    let written: WrittenBatch;
    try {
      written =
        mode === 'wait'
          ? await this.#writeLocked(batch, 'wait')
          : ((await this.#writeFromLastWritten(batch)) ?? (await this.#writeLocked(batch, 'skip')));
    } catch (error) {
      if (mode === 'wait' && isDatabaseError(error) && error.code === LOCK_NOT_AVAILABLE) {
        this.#retryLater(batch);
        return;
      }
      this.#stats.failedBatches += 1;
      for (const entry of batch) this.#lastWritten.delete(entry.taskId);
      if (batch.length > 1 && isRowRefusal(error)) {
        // One append carried a value Postgres refuses, or its task's row is damaged (a unique violation:
        // its seq behind its log); commit the others and let that one fail alone. Without this, every batch
        // a damaged task's appends went into failed whole, with the appends of every other task in it.
        // In call order per task: once one went back to the queue (its row held, see #retryLater), the later
        // ones of its task follow it there rather than being tried before it (its task stays busy, so it waits
        // there until this batch ends).
        const requeued = new Map<string, PendingAppend>();
        for (const entry of batch) {
          const before = requeued.get(entry.taskId);
          const at = before === undefined ? -1 : this.#queue.indexOf(before);
          if (at >= 0) {
            this.#queue.splice(at + 1, 0, entry);
            requeued.set(entry.taskId, entry);
            continue;
          }
          await this.#commitBatch([entry]);
          if (this.#queue.includes(entry)) requeued.set(entry.taskId, entry);
        }
        return;
      }
      const taskIds = new Set(batch.map((entry) => entry.taskId));
      if (isOutcomeUnknown(error)) await this.#settleUnknown([...taskIds]);
      const only = taskIds.size === 1 ? batch[0]?.taskId : undefined;
      const failure = toProgressError(error, 'append', only);
      for (const entry of batch) entry.reject(failure);
      return;
    }
    for (const task of written.tasks) this.#lastWritten.remember(task);
    const committed = written.changes.length;
    for (const change of written.changes) this.#options.publish(change);
    if (committed > 0) {
      this.#stats.appends += committed;
      this.#stats.batches += 1;
      if (written.locked) this.#stats.lockedBatches += 1;
      this.#stats.largestBatch = Math.max(this.#stats.largestBatch, committed);
    }
    written.outcomes.forEach((outcome, index) => {
      const entry = written.planned[index];
      if (entry === undefined) return;
      if (isProgressError(outcome)) entry.reject(outcome);
      else entry.resolve(outcome);
    });
    if (written.held.length > 0) await this.#commitBatchOnce(written.held, 'wait');
  }

  /**
   * Waits until the failed batch's write can no longer commit, before its appends are rejected. Its outcome
   * is unknown ({@link isOutcomeUnknown}: the connection dropped, `query_timeout` gave up), and its write may
   * still be running in Postgres, holding the task rows it locked, to commit a moment later (a backend
   * notices a lost client only when it answers). Rejected at once, a caller that reads the task to learn
   * whether its append landed (as `runBatch` does for an item before writing it again) could read before
   * that commit, and write the event a second time. Locking the same rows (and letting go at once) waits for
   * that write to end, for {@link UNKNOWN_OUTCOME_WAIT_MS} at most; a read after the rejection then sees the
   * outcome. Not covered: a write still waiting for a table lock when its connection dropped (DDL on the
   * events table), which has locked no row yet, and a database this cannot reach. One transaction, on this
   * failure only.
   */
  async #settleUnknown(ids: string[]): Promise<void> {
    // Once the store closes, its appends end at once (see close()): a frozen database is why close() cut
    // their connections, and this would wait on it again.
    if (this.#closing) return;
    const { db, statements } = this.#options;
    const lock = () =>
      lockingTransaction(db).execute(async (trx) => {
        await sql`SELECT set_config('lock_timeout', ${`${UNKNOWN_OUTCOME_WAIT_MS}ms`}, true)`.execute(trx);
        await statements.lockRowsWaiting.run(trx, { ids: [...ids].sort(compareIds) });
      });
    // Tried again on another connection when the one it drew was dead: with `db`, the failed write's own
    // connection, ended by the server, goes back to the caller's pool as healthy (the store cannot release it as
    // broken, see `endsConnection`), and pg-pool hands out its newest idle client first, so this drew it and
    // failed at once; that failure marks it dead, and the pool discards it. Locking and letting go is safe to
    // repeat; a database that refuses connections fails each try at once.
    const locked = (async () => {
      for (let tries = 1; ; tries += 1) {
        try {
          return await lock();
        } catch (error) {
          // Not once the store closes (as above): close() cutting this wait's connection is not one to retry.
          if (
            tries >= UNKNOWN_OUTCOME_TRIES ||
            !endsConnection(error) ||
            isConnectFailure(error) ||
            this.#closing
          )
            throw error;
        }
      }
    })();
    // Still unknown once it fails (the database unreachable, the rows held past the wait) or does not answer
    // (a database that stopped answering: lock_timeout never fires there): rejected as before.
    await settlesWithin(locked, UNKNOWN_OUTCOME_WAIT_MS + UNKNOWN_OUTCOME_ANSWER_MS);
  }

  /**
   * Appends whose row another transaction still held after {@link HELD_LOCK_WAIT_MS}: back to the head of the queue (each task's later appends
   * are behind them, so call order holds), their tasks left out of every batch for 50 ms, doubling to a
   * second while the row stays held. The timer is not unref'd: the appends are accepted work, which
   * `whenIdle` waits for; once the store closes they are rejected instead ({@link close}).
   */
  #retryLater(entries: PendingAppend[]): void {
    const taskIds = new Set(entries.map((entry) => entry.taskId));
    if (this.#closing) {
      // Not tried again once the store closes (see close()): they, and the appends behind them, reject.
      const closed = storeClosed();
      for (const entry of entries) entry.reject(closed);
      this.#rejectQueued(taskIds);
      return;
    }
    const delayMs = Math.max(...entries.map((entry) => entry.retryMs ?? HELD_FIRST_RETRY_MS));
    for (const entry of entries) entry.retryMs = Math.min(HELD_MAX_RETRY_MS, delayMs * 2);
    for (const taskId of taskIds) this.#heldTasks.add(taskId);
    this.#queue.unshift(...entries);
    const timer = setTimeout(() => {
      this.#retryTimers.delete(timer);
      for (const taskId of taskIds) this.#heldTasks.delete(taskId);
      this.#flush();
    }, delayMs);
    this.#retryTimers.add(timer);
  }

  /**
   * The batch planned from the rows this store last wrote and written in one statement, when it has
   * them all, every append plans, and no row moved on since; otherwise `undefined` (nothing written).
   */
  async #writeFromLastWritten(batch: PendingAppend[]): Promise<WrittenBatch | undefined> {
    const from = new Map<string, Task>();
    for (const { taskId } of batch) {
      const task = this.#lastWritten.get(taskId);
      if (task === undefined) return undefined;
      from.set(taskId, task);
    }
    const planned = new Map(
      [...from].map(([id, task]) => [
        id,
        { seq: task.seq, createdAt: task.createdAt, updatedAt: task.updatedAt, leaseOwner: task.leaseOwner },
      ]),
    );
    const plan = planBatch(batch, from, this.#options.clock());
    // A refusal planned from a remembered row is not trusted: the locked row decides it.
    if (plan.outcomes.some((outcome) => isProgressError(outcome))) return undefined;
    const { db, gate, statements, expectCommit } = this.#options;
    for (const task of plan.tasks) expectCommit(task.id, task.seq);
    let written: Awaited<ReturnType<typeof writeAppendsIfUnchanged>>;
    try {
      written = await gate.run(db, (connection) =>
        writeAppendsIfUnchanged(connection, statements, plan.tasks, planned, plan.events),
      );
    } catch (error) {
      if (!(error instanceof RowMovedOn)) throw error;
      for (const taskId of from.keys()) this.#lastWritten.delete(taskId);
      return undefined;
    }
    // Lease and ack columns as the row has them (a renewal or an ack since the remembered row moved them).
    // Written into the outcomes' tasks in place: planBatch made them for this batch alone.
    for (const outcome of plan.outcomes) {
      if (!isProgressError(outcome)) Object.assign(outcome.task, written.current.get(outcome.task.id));
    }
    return {
      planned: batch,
      outcomes: plan.outcomes,
      changes: written.changes,
      tasks: plan.tasks.map((task) => ({ ...task, ...written.current.get(task.id) })),
      locked: false,
      held: [],
    };
  }

  /**
   * The batch in a transaction that locks its rows (in id order), plans from them and writes; the appends
   * of tasks whose row another transaction holds are left for later (`held`).
   */
  async #writeLocked(batch: PendingAppend[], mode: 'skip' | 'wait'): Promise<WrittenBatch> {
    // The batch's first statement moved on meanwhile (see #writeFromLastWritten): not sent again once abandoned.
    if (this.#abandoned) throw storeClosed();
    const { db, gate, statements, clock, expectCommit } = this.#options;
    const ids = [...new Set(batch.map((entry) => entry.taskId))].sort(compareIds);
    return gate.run(db, (connection) =>
      lockingTransaction(connection).execute(async (trx) => {
        if (mode === 'wait') {
          await sql`SELECT set_config('lock_timeout', ${`${HELD_LOCK_WAIT_MS}ms`}, true)`.execute(trx);
        }
        const lockRows = mode === 'wait' ? statements.lockRowsWaiting : statements.lockRows;
        const { rows } = await lockRows.run(trx, { ids });
        const heldIds = new Set(rows.filter((row) => row.held).map((row) => row.id));
        const planned = batch.filter((entry) => !heldIds.has(entry.taskId));
        const locked = rows.filter((row) => !row.held);
        // Read once the rows are locked, as the lease renewals and the SQLite store read it: read before the
        // wait for a connection and for the rows, a write of the task committed meanwhile (another store's)
        // came before this one in the log but at a later time, and the task's log went back in time.
        const now = clock();
        const plan = planBatch(planned, tasksById(locked), now);
        for (const task of plan.tasks) expectCommit(task.id, task.seq);
        const changes =
          plan.events.length > 0 ? await writeAppends(trx, statements, plan.tasks, plan.events) : [];
        const held = batch.filter((entry) => heldIds.has(entry.taskId));
        return { planned, outcomes: plan.outcomes, changes, tasks: plan.tasks, locked: true, held };
      }),
    );
  }
}
