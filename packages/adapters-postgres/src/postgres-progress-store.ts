import type {
  AppendInput,
  AppendResult,
  Clock,
  CreateTaskInput,
  ListTasksQuery,
  ProgressStore,
  PurgeOptions,
  ReapOptions,
  Task,
  TaskEvent,
  TaskStatus,
} from '@finishline/core';
import { ErrorCode, isProgressError, isTerminalType, ProgressError } from '@finishline/core';
import {
  assertCount,
  assertId,
  assertTaskId,
  isLeaseExpired,
  leaseExpiredReason,
  newTask,
  parseAppendInput,
  parseCreateTaskInput,
  parseLeaseInput,
  parseListTasksQuery,
  parsePurgeOptions,
  parseReadLimit,
  parseReapOptions,
  parseTaskIds,
  planAppend,
  planLease,
} from '@finishline/core/internal';
import { Kysely, PostgresDialect, type PostgresPool, type RawBuilder, sql, type Transaction } from 'kysely';
import { changeChannel, migrateProgressSchema } from './migrations.js';
import {
  type ChangeNotice,
  encodeChangeNotices,
  MAX_CHANGE_ENTRY_BYTES,
  NOTIFY_PAYLOAD_BUDGET_BYTES,
  PG_NOTIFY_PAYLOAD_LIMIT_BYTES,
} from './notify-payload.js';
import { isDataException, toProgressError } from './pg-errors.js';
import { ChangeFeedHub, ListenConnection, type PostgresChangeFeed } from './postgres-change-feed.js';
import {
  type PgPool,
  type PostgresProgressStoreOptions,
  type ResolvedStoreOptions,
  resolveStoreOptions,
} from './postgres-store-options.js';
import { type LatestState, SafetyNetPoll } from './safety-net-poll.js';
import type { ProgressDatabase } from './schema.js';

// Payloads are ids only; refuse to load if one could ever come near Postgres's limit.
if (
  MAX_CHANGE_ENTRY_BYTES + 2 > NOTIFY_PAYLOAD_BUDGET_BYTES ||
  NOTIFY_PAYLOAD_BUDGET_BYTES * 4 > PG_NOTIFY_PAYLOAD_LIMIT_BYTES
) {
  throw new ProgressError(ErrorCode.Internal, 'NOTIFY payloads could come near the 8000-byte limit');
}

/** Counters of the append pipeline since the store opened. */
export interface PostgresStoreStats {
  /** Appends committed (events written), reaped interruptions included. */
  appends: number;
  /** Append transactions committed. */
  batches: number;
  /** Most appends committed by one transaction. */
  largestBatch: number;
  /** Append transactions that failed (their appends rejected, or retried one by one after a data error). */
  failedBatches: number;
  /** Ack statements run (each writes every ack of one flush; see `maxAckBatchSize`). */
  ackBatches: number;
}

/** A task row as selected (`int8` columns as `pg` returns them, `json` as text). */
interface TaskRow {
  id: string;
  owner: string;
  kind: string;
  status: string;
  total: string | number | bigint | null;
  done: string | number | bigint;
  succeeded: string | number | bigint;
  failed: string | number | bigint;
  current: string | null;
  message: string | null;
  result: string | null;
  error_code: string | null;
  error_message: string | null;
  seq: string | number | bigint;
  acked_seq: string | number | bigint;
  created_at: string | number | bigint;
  updated_at: string | number | bigint;
  finished_at: string | number | bigint | null;
  lease_owner: string | null;
  lease_expires_at: string | number | bigint | null;
}

/** An event row as selected. */
interface EventRow {
  task_id: string;
  seq: string | number | bigint;
  type: string;
  time: string | number | bigint;
  body: string;
}

/** An append waiting for (or in) a group-commit transaction. */
interface PendingAppend {
  taskId: string;
  input: AppendInput;
  resolve: (result: AppendResult) => void;
  reject: (error: unknown) => void;
}

/** An ack waiting for (or in) an ack statement. */
interface PendingAck {
  taskId: string;
  seq: number;
  resolve: (ackedSeq: number) => void;
  reject: (error: unknown) => void;
}

/** The task columns, `json` as text so the caller's type parsers cannot change what comes back. */
const taskColumns = sql`id, owner, kind, status, total, done, succeeded, failed, current, message,
  result::text AS result, error_code, error_message, seq, acked_seq, created_at, updated_at, finished_at,
  lease_owner, lease_expires_at`;

function int(value: string | number | bigint): number {
  return typeof value === 'number' ? value : Number(value);
}

function nullableInt(value: string | number | bigint | null): number | null {
  return value === null ? null : int(value);
}

function toTask(row: TaskRow): Task {
  return {
    id: row.id,
    owner: row.owner,
    kind: row.kind,
    status: row.status as TaskStatus,
    total: nullableInt(row.total),
    done: int(row.done),
    succeeded: int(row.succeeded),
    failed: int(row.failed),
    current: row.current,
    message: row.message,
    result: row.result === null ? null : JSON.parse(row.result),
    error: row.error_code === null ? null : { code: row.error_code, message: row.error_message ?? '' },
    seq: int(row.seq),
    ackedSeq: int(row.acked_seq),
    createdAt: int(row.created_at),
    updatedAt: int(row.updated_at),
    finishedAt: nullableInt(row.finished_at),
    leaseOwner: row.lease_owner,
    leaseExpiresAt: nullableInt(row.lease_expires_at),
  };
}

function toEvent(row: EventRow): TaskEvent {
  return {
    taskId: row.task_id,
    seq: int(row.seq),
    type: row.type,
    time: int(row.time),
    ...JSON.parse(row.body),
  } as TaskEvent;
}

/** A JSON copy of a caller-supplied value, normalized as the database will return it. */
function jsonCopy<T>(value: T): T {
  return value === null || typeof value !== 'object' ? value : (JSON.parse(JSON.stringify(value)) as T);
}

/**
 * The event as returned to the caller: a planned event shares only the caller's `detail` or `result`
 * object with the input (everything else is fresh), so only those are copied.
 */
function detached(event: TaskEvent): TaskEvent {
  switch (event.type) {
    case 'item':
      return event.item.detail === null
        ? event
        : { ...event, item: { ...event.item, detail: jsonCopy(event.item.detail) } };
    case 'completed':
      return event.result === null ? event : { ...event, result: jsonCopy(event.result) };
    case 'progress':
    case 'failed':
    case 'cancelled':
    case 'interrupted':
      return event;
    default: {
      const unreachable: never = event;
      throw new ProgressError(ErrorCode.Internal, `Unknown event ${String(unreachable)}`);
    }
  }
}

/** The row of an event for `json_to_recordset`: its content goes into `body` as JSON. */
function eventRecord(event: TaskEvent): Record<string, unknown> {
  const { taskId, seq, type, time, ...body } = event;
  return { task_id: taskId, seq, type, time, body };
}

/** The written columns of a task for `json_to_recordset`. */
function taskRecord(task: Task): Record<string, unknown> {
  return {
    id: task.id,
    status: task.status,
    total: task.total,
    done: task.done,
    succeeded: task.succeeded,
    failed: task.failed,
    current: task.current,
    message: task.message,
    result: task.result,
    error_code: task.error?.code ?? null,
    error_message: task.error?.message ?? null,
    seq: task.seq,
    updated_at: task.updatedAt,
    finished_at: task.finishedAt,
    lease_owner: task.leaseOwner,
    lease_expires_at: task.leaseExpiresAt,
  };
}

/**
 * The caller's pool as kysely sees it. `end` does nothing: the pool is the caller's, whatever happens to
 * the Kysely instance. And each client gets an `error` listener while the store holds it: a pg client
 * whose connection dies between two queries of a transaction emits `error`, which without a listener
 * crashes the process; with one, the failure still reaches the store, as the rejection of the
 * transaction's next query (`store_unavailable`), and the pool discards the client on release.
 */
function guardedPool(pool: PgPool): PostgresPool {
  const guarded = new WeakSet<object>();
  return {
    async connect() {
      const client = await pool.connect();
      const emitter = client as unknown as { on?: (event: 'error', listener: () => void) => unknown };
      if (!guarded.has(client) && typeof emitter.on === 'function') {
        guarded.add(client);
        emitter.on('error', () => {});
      }
      return client;
    },
    async end() {},
  };
}

/** Binary order of ids, the order every store uses. */
function compareIds(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function taskNotFound(taskId: string): ProgressError {
  return new ProgressError(ErrorCode.TaskNotFound, `No task ${taskId}`, { taskId });
}

/**
 * A {@link ProgressStore} on Postgres (kysely + pg).
 *
 * - **Appends** lock the task row (`SELECT … FOR UPDATE`), plan the event with the shared pure
 *   transitions, and write the snapshot, the event and a `pg_notify` in one transaction, so a task's
 *   `seq` is gap-free under any number of writers in any number of processes. Appends that arrive while a
 *   transaction is in flight are committed together by the next one (group commit), in call order per task.
 * - **Changes** of this store's own commits are published right after the commit; other processes'
 *   arrive by `NOTIFY` on a dedicated `LISTEN` connection that re-reads what it missed after every
 *   reconnect; a safety-net poll asks about followed tasks only. See {@link PostgresChangeFeed}.
 * - **Leases** are reaped with `FOR UPDATE SKIP LOCKED`: concurrent reapers never interrupt a task twice.
 * - **Retention** deletes finished tasks and their events, in batches.
 *
 * @example
 * ```ts
 * import pg from 'pg';
 * import { PostgresProgressStore } from '@finishline/postgres';
 *
 * const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL });
 * const store = await PostgresProgressStore.open({ pool });
 * const task = await store.createTask({ owner: 'alice', kind: 'batch_taint', total: 1 });
 * await store.append(task.id, { type: 'item', key: 'node-1', ok: true });
 * await store.append(task.id, { type: 'completed' });
 * await store.close(); // the pool stays open: it is yours
 * await pool.end();
 * ```
 */
export class PostgresProgressStore implements ProgressStore {
  readonly #options: ResolvedStoreOptions;
  readonly #db: Kysely<ProgressDatabase>;
  readonly #clock: Clock;
  readonly #schema: string;
  readonly #channel: string;
  readonly #tasks: RawBuilder<unknown>;
  readonly #events: RawBuilder<unknown>;
  readonly #hub: ChangeFeedHub;
  readonly #listener: ListenConnection;
  readonly #poll: SafetyNetPoll;
  readonly #queue: PendingAppend[] = [];
  readonly #busyTasks = new Set<string>();
  readonly #idleWaiters: (() => void)[] = [];
  readonly #stats: PostgresStoreStats = {
    appends: 0,
    batches: 0,
    largestBatch: 0,
    failedBatches: 0,
    ackBatches: 0,
  };
  readonly #ackQueue: PendingAck[] = [];
  #ackFlushTimer: ReturnType<typeof setImmediate> | undefined;
  #ackBatchInFlight: Promise<void> | undefined;
  readonly #minConcurrentBatch: number;
  #activeBatches = 0;
  #flushScheduled = false;
  #closed = false;
  #closing: Promise<void> | undefined;

  /**
   * Opens a store: validates the options, applies migrations (unless `migrate: false`), connects the
   * `LISTEN` connection and starts the safety-net poll.
   *
   * @throws ProgressError `invalid_input` for bad options; `store_unavailable` when the database cannot
   * be reached or migrated.
   */
  static async open(options: PostgresProgressStoreOptions): Promise<PostgresProgressStore> {
    const store = new PostgresProgressStore(resolveStoreOptions(options));
    await store.#start();
    return store;
  }

  private constructor(options: ResolvedStoreOptions) {
    this.#options = options;
    this.#clock = options.clock;
    this.#schema = options.schema;
    this.#minConcurrentBatch = Math.ceil(options.maxBatchSize / 4);
    this.#channel = changeChannel(options.schema);
    this.#db =
      options.db ??
      new Kysely<ProgressDatabase>({
        dialect: new PostgresDialect({ pool: guardedPool(options.pool as PgPool) }),
      });
    this.#tasks = sql.id(this.#schema, 'tasks');
    this.#events = sql.id(this.#schema, 'events');
    this.#hub = new ChangeFeedHub(options.clock, options.onListenerError);
    // Compiled once to SQL text with $n placeholders; the listener passes the values at run time.
    const placeholder = '0';
    this.#listener = new ListenConnection({
      hub: this.#hub,
      channel: this.#channel,
      createClient: options.createListenClient,
      listenSql: sql`LISTEN ${sql.id(this.#channel)}`.compile(this.#db).sql,
      // One statement, so the xmin and the events come from the same snapshot (see the feed's module doc).
      replaySql: sql`
        SELECT s.xmin::text AS xmin, e.task_id, e.first_seq, e.last_seq, e.terminal
        FROM (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin) s
        LEFT JOIN LATERAL (
          SELECT task_id, min(seq) AS first_seq, max(seq) AS last_seq,
                 bool_or(type IN ('completed', 'failed', 'cancelled', 'interrupted')) AS terminal
          FROM ${this.#events}
          WHERE ${placeholder}::xid8 IS NOT NULL AND xid >= ${placeholder}::xid8
          GROUP BY task_id
        ) e ON true`.compile(this.#db).sql,
      barrierSql: sql`
        SELECT pg_notify(${this.#channel}, json_build_object(
          'barrier', ${placeholder}::text, 'xmin', pg_snapshot_xmin(pg_current_snapshot())::text)::text)`.compile(
        this.#db,
      ).sql,
      watermarkIntervalMs: options.watermarkIntervalMs,
      reconnect: options.reconnect,
      clock: options.clock,
      onError: options.onError,
    });
    this.#poll = new SafetyNetPoll({
      hub: this.#hub,
      intervalMs: options.pollIntervalMs,
      readLatest: (taskIds) => this.#readLatest(taskIds),
      onError: options.onError,
    });
  }

  async #start(): Promise<void> {
    if (this.#options.migrate) {
      await migrateProgressSchema(this.#db as Kysely<unknown>, { schema: this.#schema });
    }
    await this.#listener.start();
    this.#poll.start();
  }

  /** The change feed: own commits, `NOTIFY` from other processes, re-reads and the safety-net poll. */
  get changes(): PostgresChangeFeed {
    return this.#hub;
  }

  /** The schema this store works in. */
  get schema(): string {
    return this.#schema;
  }

  /** Counters of the append pipeline (see {@link PostgresStoreStats}). */
  stats(): PostgresStoreStats {
    return { ...this.#stats };
  }

  /**
   * Runs the safety-net poll now instead of waiting for its timer; resolves when it finished. For tests
   * and for servers that want an immediate check (for example right after a reconnect).
   */
  async pollNow(): Promise<void> {
    this.#assertOpen();
    await this.#poll.pollOnce();
  }

  async createTask(input: CreateTaskInput): Promise<Task> {
    this.#assertOpen();
    const parsed = parseCreateTaskInput(input);
    const id = parsed.id ?? globalThis.crypto.randomUUID();
    const task = newTask({ ...parsed, id }, this.#clock());
    const inserted = await this.#run('createTask', id, () =>
      sql<{ id: string }>`
        INSERT INTO ${this.#tasks} (id, owner, kind, status, total, done, succeeded, failed, current, message,
          result, error_code, error_message, seq, acked_seq, created_at, updated_at, finished_at, lease_owner,
          lease_expires_at)
        VALUES (${task.id}, ${task.owner}, ${task.kind}, ${task.status}, ${task.total}, ${task.done},
          ${task.succeeded}, ${task.failed}, ${task.current}, ${task.message}, NULL, NULL, NULL, ${task.seq},
          ${task.ackedSeq}, ${task.createdAt}, ${task.updatedAt}, NULL, ${task.leaseOwner}, ${task.leaseExpiresAt})
        ON CONFLICT (id) DO NOTHING
        RETURNING id`.execute(this.#db),
    );
    if (inserted.rows.length === 0) {
      throw new ProgressError(ErrorCode.InvalidInput, `Task ${id} already exists`, { taskId: id });
    }
    this.#hub.resetTask(id);
    return task;
  }

  async getTask(taskId: string): Promise<Task | undefined> {
    this.#assertOpen();
    assertTaskId(taskId);
    const { rows } = await this.#run('getTask', taskId, () =>
      sql<TaskRow>`SELECT ${taskColumns} FROM ${this.#tasks} WHERE id = ${taskId}`.execute(this.#db),
    );
    const row = rows[0];
    return row === undefined ? undefined : toTask(row);
  }

  async listTasks(query: ListTasksQuery): Promise<Task[]> {
    this.#assertOpen();
    const { owner, statuses, limit } = parseListTasksQuery(query);
    if (statuses !== undefined && statuses.length === 0) return [];
    const statusFilter = statuses === undefined ? sql`` : sql`AND status = ANY(${[...statuses]}::text[])`;
    const { rows } = await this.#run('listTasks', undefined, () =>
      sql<TaskRow>`
        SELECT ${taskColumns} FROM ${this.#tasks}
        WHERE owner = ${owner} ${statusFilter}
        ORDER BY created_at DESC, id DESC
        LIMIT ${limit}`.execute(this.#db),
    );
    return rows.map(toTask);
  }

  append(taskId: string, input: AppendInput): Promise<AppendResult> {
    return new Promise<AppendResult>((resolve, reject) => {
      try {
        this.#assertOpen();
        assertTaskId(taskId);
        const parsed = parseAppendInput(input);
        this.#queue.push({ taskId, input: parsed, resolve, reject });
        this.#scheduleFlush();
      } catch (error) {
        reject(error);
      }
    });
  }

  async readEvents(taskId: string, afterSeq: number, limit?: number): Promise<TaskEvent[]> {
    this.#assertOpen();
    assertTaskId(taskId);
    assertCount(afterSeq, 'afterSeq');
    const resolvedLimit = parseReadLimit(limit);
    // One statement: the task's existence and its events, from the same snapshot.
    const { rows } = await this.#run('readEvents', taskId, () =>
      sql<EventRow | { task_id: null }>`
        SELECT e.task_id, e.seq, e.type, e.time, e.body
        FROM ${this.#tasks} t
        LEFT JOIN LATERAL (
          SELECT task_id, seq, type, time, body::text AS body FROM ${this.#events}
          WHERE task_id = t.id AND seq > ${afterSeq}
          ORDER BY seq
          LIMIT ${resolvedLimit}
        ) e ON true
        WHERE t.id = ${taskId}
        ORDER BY e.seq`.execute(this.#db),
    );
    if (rows.length === 0) throw taskNotFound(taskId);
    const events: TaskEvent[] = [];
    for (const row of rows) if (row.task_id !== null) events.push(toEvent(row));
    return events;
  }

  async latestSeqs(taskIds: readonly string[]): Promise<Map<string, number>> {
    this.#assertOpen();
    const ids = parseTaskIds(taskIds);
    const latest = await this.#readLatest(ids);
    return new Map([...latest].map(([taskId, state]) => [taskId, state.seq]));
  }

  ack(taskId: string, seq: number): Promise<number> {
    return new Promise<number>((resolve, reject) => {
      try {
        this.#assertOpen();
        assertTaskId(taskId);
        assertCount(seq, 'seq');
        this.#ackQueue.push({ taskId, seq, resolve, reject });
        this.#scheduleAckFlush();
      } catch (error) {
        reject(error);
      }
    });
  }

  async renewLease(taskId: string, owner: string, ttlMs: number): Promise<Task> {
    this.#assertOpen();
    assertTaskId(taskId);
    const lease = parseLeaseInput({ owner, ttlMs });
    return this.#run('renewLease', taskId, () =>
      this.#db.transaction().execute(async (trx) => {
        const task = await this.#lockTask(trx, taskId);
        const next = planLease(task, lease.owner, lease.ttlMs, this.#clock());
        await sql`
          UPDATE ${this.#tasks} SET lease_owner = ${next.leaseOwner}, lease_expires_at = ${next.leaseExpiresAt}
          WHERE id = ${taskId}`.execute(trx);
        return next;
      }),
    );
  }

  async releaseLease(taskId: string, owner: string): Promise<void> {
    this.#assertOpen();
    assertTaskId(taskId);
    assertId(owner, 'lease owner');
    // Ended tasks already dropped their lease; another owner's lease is not ours to drop.
    const { rows } = await this.#run('releaseLease', taskId, () =>
      sql<{ found: boolean }>`
        WITH released AS (
          UPDATE ${this.#tasks} SET lease_owner = NULL, lease_expires_at = NULL
          WHERE id = ${taskId} AND status = 'running' AND lease_owner = ${owner}
          RETURNING id
        )
        SELECT EXISTS (SELECT 1 FROM released) OR EXISTS (SELECT 1 FROM ${this.#tasks} WHERE id = ${taskId}) AS found`.execute(
        this.#db,
      ),
    );
    if (rows[0]?.found !== true) throw taskNotFound(taskId);
  }

  async reapExpiredLeases(options?: ReapOptions): Promise<AppendResult[]> {
    this.#assertOpen();
    const { limit } = parseReapOptions(options);
    const now = this.#clock();
    const results = await this.#run('reapExpiredLeases', undefined, () =>
      this.#db.transaction().execute(async (trx) => {
        // SKIP LOCKED: a task another reaper (or an append) holds is left to it; the reaper that holds
        // it either interrupts it or sees it was renewed, so each expired lease ends exactly once.
        const { rows } = await sql<TaskRow>`
          SELECT ${taskColumns} FROM ${this.#tasks}
          WHERE status = 'running' AND lease_expires_at IS NOT NULL AND lease_expires_at <= ${now}
          ORDER BY lease_expires_at, id
          LIMIT ${limit}
          FOR UPDATE SKIP LOCKED`.execute(trx);
        const planned: AppendResult[] = [];
        for (const row of rows) {
          const task = toTask(row);
          if (!isLeaseExpired(task, now)) continue;
          planned.push(planAppend(task, { type: 'interrupted', reason: leaseExpiredReason(task) }, now));
        }
        if (planned.length > 0) {
          await this.#writeAppends(
            trx,
            planned.map((entry) => entry.task),
            planned.map((entry) => entry.event),
          );
        }
        return planned;
      }),
    );
    this.#stats.appends += results.length;
    for (const { event } of results) this.#hub.publishCommitted(changeOf(event));
    return results;
  }

  async purgeFinished(options: PurgeOptions): Promise<number> {
    this.#assertOpen();
    const { olderThanMs, limit } = parsePurgeOptions(options);
    const cutoff = this.#clock() - olderThanMs;
    // Events first (there is no foreign key to cascade), then their tasks, in one statement.
    const { rows } = await this.#run('purgeFinished', undefined, () =>
      sql<{ id: string }>`
        WITH doomed AS (
          SELECT id FROM ${this.#tasks}
          WHERE status <> 'running' AND finished_at IS NOT NULL AND finished_at <= ${cutoff}
          ORDER BY finished_at, id
          LIMIT ${limit}
          FOR UPDATE SKIP LOCKED
        ), purged_events AS (
          DELETE FROM ${this.#events} WHERE task_id IN (SELECT id FROM doomed)
        )
        DELETE FROM ${this.#tasks} WHERE id IN (SELECT id FROM doomed)
        RETURNING id`.execute(this.#db),
    );
    this.#hub.forget(rows.map((row) => row.id));
    return rows.length;
  }

  /**
   * Waits for the appends already accepted, then stops the poll and the `LISTEN` connection. Never ends
   * the caller's pool or Kysely instance. Later calls reject with `closed`; calling it twice is harmless.
   */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#closed = true;
      if (this.#ackFlushTimer !== undefined) clearImmediate(this.#ackFlushTimer);
      this.#ackFlushTimer = undefined;
      const closed = new ProgressError(ErrorCode.Closed, 'The store is closed');
      for (const entry of this.#ackQueue.splice(0)) entry.reject(closed);
      await this.#ackBatchInFlight;
      await this.#whenIdle();
      await this.#poll.stop();
      await this.#listener.close();
    })();
    return this.#closing;
  }

  #assertOpen(): void {
    if (this.#closed) throw new ProgressError(ErrorCode.Closed, 'The store is closed');
  }

  /** Runs a database call, turning driver errors into typed ones. */
  async #run<T>(what: string, taskId: string | undefined, call: () => Promise<T>): Promise<T> {
    try {
      return await call();
    } catch (error) {
      throw toProgressError(error, what, taskId);
    }
  }

  async #lockTask(trx: Transaction<ProgressDatabase>, taskId: string): Promise<Task> {
    const { rows } = await sql<TaskRow>`
      SELECT ${taskColumns} FROM ${this.#tasks} WHERE id = ${taskId} FOR UPDATE`.execute(trx);
    const row = rows[0];
    if (row === undefined) throw taskNotFound(taskId);
    return toTask(row);
  }

  async #readLatest(taskIds: readonly string[]): Promise<Map<string, LatestState>> {
    const latest = new Map<string, LatestState>();
    if (taskIds.length === 0) return latest;
    const { rows } = await this.#run('latestSeqs', undefined, () =>
      sql<{ id: string; seq: string; status: string }>`
        SELECT id, seq, status FROM ${this.#tasks} WHERE id = ANY(${[...taskIds]}::text[])`.execute(this.#db),
    );
    for (const row of rows) latest.set(row.id, { seq: int(row.seq), terminal: row.status !== 'running' });
    return latest;
  }

  /**
   * Writes planned appends: the final row of each task, every event, and notifications of which tasks
   * gained which seqs (ids only, packed) — one statement, inside the caller's transaction, so the
   * notifications are sent if and only if the appends commit.
   */
  async #writeAppends(trx: Transaction<ProgressDatabase>, tasks: Task[], events: TaskEvent[]): Promise<void> {
    const notices = new Map<string, ChangeNotice>();
    for (const event of events) {
      const notice = notices.get(event.taskId);
      const terminal = isTerminalType(event.type);
      if (notice === undefined) {
        notices.set(event.taskId, { taskId: event.taskId, firstSeq: event.seq, seq: event.seq, terminal });
      } else {
        notice.seq = event.seq;
        notice.terminal = terminal;
      }
    }
    const payloads = encodeChangeNotices([...notices.values()]);
    // Rows travel as one JSON document each for tasks and events: one serialization in JS, one parse in
    // Postgres, instead of a text[] of JSON strings that both sides escape and unescape element by element.
    await sql`
      WITH updated AS (
        UPDATE ${this.#tasks} AS t SET
          status = v.status, total = v.total, done = v.done, succeeded = v.succeeded, failed = v.failed,
          current = v.current, message = v.message, result = v.result, error_code = v.error_code,
          error_message = v.error_message, seq = v.seq, updated_at = v.updated_at, finished_at = v.finished_at,
          lease_owner = v.lease_owner, lease_expires_at = v.lease_expires_at
        FROM json_to_recordset(${JSON.stringify(tasks.map(taskRecord))}::json) AS v(
          id text, status text, total int8, done int8, succeeded int8, failed int8, current text, message text,
          result json, error_code text, error_message text, seq int8, updated_at int8, finished_at int8,
          lease_owner text, lease_expires_at int8)
        -- The id list lets the planner reach the rows by primary key whatever it guesses of the JSON.
        WHERE t.id = v.id AND t.id = ANY(${tasks.map((task) => task.id)}::text[])
      ), inserted AS (
        INSERT INTO ${this.#events} (task_id, seq, type, time, body)
        SELECT task_id, seq, type, time, body
        FROM json_to_recordset(${JSON.stringify(events.map(eventRecord))}::json)
          AS e(task_id text, seq int8, type text, time int8, body json)
      )
      SELECT pg_notify(${this.#channel}, payload) FROM unnest(${payloads}::text[]) AS payload`.execute(trx);
  }

  #scheduleAckFlush(): void {
    if (this.#ackFlushTimer !== undefined || this.#ackBatchInFlight !== undefined) return;
    // setImmediate rather than a microtask: acks come one per incoming message, so the ones read from
    // the sockets in the same I/O phase join one statement.
    this.#ackFlushTimer = setImmediate(() => {
      this.#ackFlushTimer = undefined;
      this.#flushAcks();
    });
  }

  /** Starts the next ack statement; one at a time, so acks hold at most one pool connection. */
  #flushAcks(): void {
    if (this.#ackBatchInFlight !== undefined || this.#ackQueue.length === 0) return;
    const batch = this.#ackQueue.splice(0, this.#options.maxAckBatchSize);
    this.#ackBatchInFlight = this.#writeAcks(batch).finally(() => {
      this.#ackBatchInFlight = undefined;
      // Acks that arrived meanwhile go together in the next statement.
      if (!this.#closed) this.#flushAcks();
    });
  }

  /**
   * Writes a batch of acks in one statement and settles each ack's promise. Never rejects.
   *
   * Per task, the ack moves to the highest of the batch's seqs that the task has reached, so an
   * out-of-range ack in the batch neither blocks nor spoils a valid one. Rows are locked in id order
   * first, the order append transactions lock them, so an ack statement and an append transaction never
   * wait for each other in a cycle (a plain multi-row UPDATE locks in whatever order the plan visits).
   */
  async #writeAcks(batch: PendingAck[]): Promise<void> {
    const taskIds = [...new Set(batch.map((entry) => entry.taskId))].sort(compareIds);
    const rows = new Map<string, { seq: number; ackedSeq: number }>();
    try {
      const { rows: updated } = await sql<{ id: string; seq: string; acked_seq: string }>`
        WITH v AS (
          SELECT * FROM unnest(${batch.map((entry) => entry.taskId)}::text[], ${batch.map((entry) => entry.seq)}::int8[])
            AS v(id, seq)
        ), locked AS MATERIALIZED (
          SELECT t.id FROM ${this.#tasks} t
          WHERE t.id = ANY(${taskIds}::text[])
            AND EXISTS (SELECT 1 FROM v WHERE v.id = t.id AND v.seq <= t.seq AND v.seq > t.acked_seq)
          ORDER BY t.id
          FOR UPDATE
        )
        UPDATE ${this.#tasks} AS t
        SET acked_seq = (SELECT max(v.seq) FROM v WHERE v.id = t.id AND v.seq <= t.seq)
        FROM locked
        WHERE t.id = locked.id
          AND EXISTS (SELECT 1 FROM v WHERE v.id = t.id AND v.seq <= t.seq AND v.seq > t.acked_seq)
        RETURNING t.id, t.seq, t.acked_seq`.execute(this.#db);
      this.#stats.ackBatches += 1;
      for (const row of updated) rows.set(row.id, { seq: int(row.seq), ackedSeq: int(row.acked_seq) });
      const unchanged = taskIds.filter((taskId) => !rows.has(taskId));
      if (unchanged.length > 0) {
        const { rows: current } = await sql<{ id: string; seq: string; acked_seq: string }>`
          SELECT id, seq, acked_seq FROM ${this.#tasks} WHERE id = ANY(${unchanged}::text[])`.execute(
          this.#db,
        );
        for (const row of current) rows.set(row.id, { seq: int(row.seq), ackedSeq: int(row.acked_seq) });
      }
    } catch (error) {
      const failure = toProgressError(error, 'ack', taskIds.length === 1 ? taskIds[0] : undefined);
      for (const entry of batch) entry.reject(failure);
      return;
    }
    for (const { taskId, seq, resolve, reject } of batch) {
      const task = rows.get(taskId);
      if (task === undefined) reject(taskNotFound(taskId));
      else if (seq > task.seq) {
        reject(
          new ProgressError(
            ErrorCode.InvalidInput,
            `Cannot ack seq ${seq} of task ${taskId}: its latest seq is ${task.seq}`,
            { taskId },
          ),
        );
      } else resolve(task.ackedSeq);
    }
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

  #flush(): void {
    while (this.#activeBatches < this.#options.maxConcurrentBatches && this.#queue.length > 0) {
      // A second transaction in flight pays off only when it has enough to carry; otherwise the appends
      // wait for the running one to finish and go together (measured: larger batches beat more of them).
      if (this.#activeBatches > 0 && this.#queue.length < this.#minConcurrentBatch) break;
      const batch = this.#takeBatch();
      if (batch.length === 0) break;
      const taskIds = new Set(batch.map((entry) => entry.taskId));
      for (const taskId of taskIds) this.#busyTasks.add(taskId);
      this.#activeBatches += 1;
      void this.#commitBatch(batch).finally(() => {
        this.#activeBatches -= 1;
        for (const taskId of taskIds) this.#busyTasks.delete(taskId);
        this.#flush();
        if (this.#activeBatches === 0 && this.#queue.length === 0) {
          for (const wake of this.#idleWaiters.splice(0)) wake();
        }
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
      if (batch.length < this.#options.maxBatchSize && !this.#busyTasks.has(entry.taskId)) batch.push(entry);
      else kept.push(entry);
    }
    // Once the batch is full, later appends of a task in it must wait too: they stay behind, in order.
    this.#queue.splice(0, this.#queue.length, ...kept);
    return batch;
  }

  async #whenIdle(): Promise<void> {
    if (this.#activeBatches === 0 && this.#queue.length === 0) return;
    await new Promise<void>((resolve) => this.#idleWaiters.push(resolve));
  }

  /** Commits a batch of appends in one transaction; settles every append's promise. Never rejects. */
  async #commitBatch(batch: PendingAppend[]): Promise<void> {
    const now = this.#clock();
    const taskIds = [...new Set(batch.map((entry) => entry.taskId))].sort(compareIds);
    let outcomes: (AppendResult | ProgressError)[];
    try {
      outcomes = await this.#db.transaction().execute(async (trx) => {
        // Locks in id order, so two batches (in any processes) never wait for each other in a cycle.
        const { rows } = await sql<TaskRow>`
          SELECT ${taskColumns} FROM ${this.#tasks}
          WHERE id = ANY(${taskIds}::text[])
          ORDER BY id
          FOR UPDATE`.execute(trx);
        const tasks = new Map(rows.map((row) => [row.id, toTask(row)]));
        const changed = new Map<string, Task>();
        const planned: TaskEvent[] = [];
        const results: (AppendResult | ProgressError)[] = [];
        for (const { taskId, input } of batch) {
          const task = tasks.get(taskId);
          if (task === undefined) {
            results.push(taskNotFound(taskId));
            continue;
          }
          try {
            const next = planAppend(task, input, now);
            tasks.set(taskId, next.task);
            changed.set(taskId, next.task);
            planned.push(next.event);
            // Returned objects must not share the caller's `detail`/`result` objects.
            results.push({
              event: detached(next.event),
              task: { ...next.task, result: jsonCopy(next.task.result) },
            });
          } catch (error) {
            if (!isProgressError(error)) throw error;
            results.push(error);
          }
        }
        if (planned.length > 0) await this.#writeAppends(trx, [...changed.values()], planned);
        return results;
      });
    } catch (error) {
      this.#stats.failedBatches += 1;
      if (batch.length > 1 && isDataException(error)) {
        // One append carried a value Postgres refuses; commit the others and let that one fail alone.
        for (const entry of batch) await this.#commitBatch([entry]);
        return;
      }
      const failure = toProgressError(error, 'append');
      for (const entry of batch) entry.reject(failure);
      return;
    }
    let committed = 0;
    for (const outcome of outcomes) {
      if (!isProgressError(outcome)) {
        committed += 1;
        this.#hub.publishCommitted(changeOf(outcome.event));
      }
    }
    if (committed > 0) {
      this.#stats.appends += committed;
      this.#stats.batches += 1;
      this.#stats.largestBatch = Math.max(this.#stats.largestBatch, committed);
    }
    outcomes.forEach((outcome, index) => {
      const entry = batch[index];
      if (entry === undefined) return;
      if (isProgressError(outcome)) entry.reject(outcome);
      else entry.resolve(outcome);
    });
  }
}

function changeOf(event: TaskEvent): { taskId: string; seq: number; terminal: boolean } {
  return { taskId: event.taskId, seq: event.seq, terminal: isTerminalType(event.type) };
}
