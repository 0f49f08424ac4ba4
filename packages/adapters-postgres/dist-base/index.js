// src/migrations.ts
import { ErrorCode, ProgressError } from "@finishline/core";
import { Migrator, sql } from "kysely";
var SCHEMA_NAME_PATTERN = /^[a-z_][a-z0-9_]{0,47}$/;
function assertSchemaName(schema) {
  if (typeof schema !== "string" || !SCHEMA_NAME_PATTERN.test(schema) || schema.startsWith("pg_")) {
    throw new ProgressError(
      ErrorCode.InvalidInput,
      `Invalid schema name ${JSON.stringify(schema)}: use 1-48 lower-case letters, digits and _, starting with a letter or _, not pg_`
    );
  }
}
function changeChannel(schema) {
  assertSchemaName(schema);
  return `${schema}_changes`;
}
var MIGRATION_TABLE = "migrations";
var MIGRATION_LOCK_TABLE = "migrations_lock";
function migrationsFor(schema) {
  const table = (name) => sql.id(schema, name);
  return {
    "0001_initial": {
      async up(db) {
        await sql`
          CREATE TABLE ${table("tasks")} (
            id text COLLATE "C" PRIMARY KEY,
            owner text COLLATE "C" NOT NULL,
            kind text NOT NULL,
            status text NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'cancelled', 'interrupted')),
            total int8 CHECK (total >= 0),
            done int8 NOT NULL CHECK (done >= 0),
            succeeded int8 NOT NULL CHECK (succeeded >= 0),
            failed int8 NOT NULL CHECK (failed >= 0),
            current text,
            message text,
            result json,
            error_code text,
            error_message text,
            seq int8 NOT NULL CHECK (seq >= 0),
            acked_seq int8 NOT NULL CHECK (acked_seq >= 0 AND acked_seq <= seq),
            created_at int8 NOT NULL,
            updated_at int8 NOT NULL,
            finished_at int8,
            lease_owner text,
            lease_expires_at int8
          ) WITH (fillfactor = 80)`.execute(db);
        await sql`CREATE INDEX tasks_owner_created_idx ON ${table("tasks")} (owner, created_at DESC, id DESC)`.execute(
          db
        );
        await sql`
          CREATE INDEX tasks_lease_expiry_idx ON ${table("tasks")} (lease_expires_at)
          WHERE status = 'running' AND lease_expires_at IS NOT NULL`.execute(db);
        await sql`
          CREATE INDEX tasks_finished_idx ON ${table("tasks")} (finished_at)
          WHERE finished_at IS NOT NULL`.execute(db);
        await sql`
          CREATE TABLE ${table("events")} (
            task_id text COLLATE "C" NOT NULL,
            seq int8 NOT NULL CHECK (seq >= 1),
            type text NOT NULL CHECK (type IN ('progress', 'item', 'completed', 'failed', 'cancelled', 'interrupted')),
            time int8 NOT NULL,
            body json NOT NULL,
            xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
            PRIMARY KEY (task_id, seq)
          )`.execute(db);
        await sql`CREATE INDEX events_xid_idx ON ${table("events")} (xid)`.execute(db);
        await sql`
          CREATE VIEW ${table("unprocessed_events")} AS
          SELECT e.task_id, e.seq, e.type, to_timestamp(e.time / 1000.0) AS time,
                 t.owner, t.kind, t.status AS task_status, t.acked_seq, e.body
          FROM ${table("events")} e
          JOIN ${table("tasks")} t ON t.id = e.task_id
          WHERE e.seq > t.acked_seq`.execute(db);
        await sql`
          COMMENT ON VIEW ${table("unprocessed_events")} IS
          'Events no watcher has acknowledged yet (seq > the task''s acked_seq). Acks are cumulative.'`.execute(
          db
        );
        await sql`
          COMMENT ON COLUMN ${table("events")}.xid IS
          'Writing transaction id; the change feed re-reads from a snapshot xmin after reconnecting.'`.execute(
          db
        );
      }
    },
    "0002_meta_epoch": {
      async up(db) {
        await sql`
          CREATE TABLE ${table("meta")} (
            key text COLLATE "C" PRIMARY KEY,
            value text NOT NULL
          )`.execute(db);
        await sql`
          INSERT INTO ${table("meta")} (key, value)
          VALUES ('epoch', md5(random()::text || clock_timestamp()::text || pg_backend_pid()::text))`.execute(
          db
        );
      }
    }
  };
}
var MIGRATION_NAMES = Object.freeze(
  Object.keys(migrationsFor("finishline")).sort()
);
async function migrateProgressSchema(db, options = {}) {
  const schema = options.schema ?? "finishline";
  assertSchemaName(schema);
  const migrations = migrationsFor(schema);
  const provider = { getMigrations: async () => migrations };
  const migrator = new Migrator({
    db,
    provider,
    migrationTableSchema: schema,
    migrationTableName: MIGRATION_TABLE,
    migrationLockTableName: MIGRATION_LOCK_TABLE
  });
  const { error, results } = await migrator.migrateToLatest();
  if (error !== void 0) {
    throw new ProgressError(
      ErrorCode.StoreUnavailable,
      `Migrating schema ${schema} failed: ${error instanceof Error ? error.message : String(error)}`,
      { cause: error }
    );
  }
  return (results ?? []).filter((result) => result.status === "Success").map((result) => result.migrationName);
}

// src/notify-payload.ts
import { ID_PATTERN, LIMITS } from "@finishline/core";
var PG_NOTIFY_PAYLOAD_LIMIT_BYTES = 8e3;
var NOTIFY_PAYLOAD_BUDGET_BYTES = 1e3;
function encodeEntry(change) {
  return JSON.stringify([change.taskId, change.firstSeq, change.seq, change.terminal ? 1 : 0]);
}
var MAX_CHANGE_ENTRY_BYTES = encodeEntry({
  taskId: "x".repeat(LIMITS.maxIdLength),
  firstSeq: LIMITS.maxCount,
  seq: LIMITS.maxCount,
  terminal: false
}).length;
function encodeChangeNotices(changes) {
  const payloads = [];
  let entries = [];
  let bytes = 2;
  for (const change of changes) {
    const entry = encodeEntry(change);
    if (entries.length > 0 && bytes + entry.length + 1 > NOTIFY_PAYLOAD_BUDGET_BYTES) {
      payloads.push(`[${entries.join(",")}]`);
      entries = [];
      bytes = 2;
    }
    entries.push(entry);
    bytes += entry.length + (entries.length > 1 ? 1 : 0);
  }
  if (entries.length > 0) payloads.push(`[${entries.join(",")}]`);
  return payloads;
}
var MALFORMED = Object.freeze({ kind: "malformed" });
function isSeq(value) {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 1;
}
function decodeNotice(payload) {
  if (payload === void 0 || payload.length === 0 || payload.length > PG_NOTIFY_PAYLOAD_LIMIT_BYTES) {
    return MALFORMED;
  }
  let value;
  try {
    value = JSON.parse(payload);
  } catch {
    return MALFORMED;
  }
  if (Array.isArray(value)) {
    if (value.length === 0) return MALFORMED;
    const changes = [];
    for (const entry of value) {
      const change = decodeEntry(entry);
      if (change === void 0) return MALFORMED;
      changes.push(change);
    }
    return { kind: "changes", changes };
  }
  if (typeof value !== "object" || value === null) return MALFORMED;
  const record = value;
  if (typeof record.barrier === "string") {
    if (typeof record.xmin !== "string" || !/^[0-9]{1,20}$/.test(record.xmin)) return MALFORMED;
    return { kind: "barrier", listenerId: record.barrier, xmin: BigInt(record.xmin) };
  }
  return MALFORMED;
}
function decodeEntry(entry) {
  if (!Array.isArray(entry) || entry.length !== 4) return void 0;
  const [taskId, firstSeq, seq, terminal] = entry;
  if (typeof taskId !== "string" || taskId.length > LIMITS.maxIdLength || !ID_PATTERN.test(taskId) || !isSeq(firstSeq) || !isSeq(seq) || firstSeq > seq || terminal !== 0 && terminal !== 1) {
    return void 0;
  }
  return { taskId, firstSeq, seq, terminal: terminal === 1 };
}

// src/postgres-progress-store.ts
import { ErrorCode as ErrorCode5, ProgressError as ProgressError5 } from "@finishline/core";
import {
  assertCount,
  assertId,
  assertTaskId,
  newTask,
  parseAppendInput,
  parseCreateTaskInput,
  parseLeaseInput,
  parseListTasksQuery,
  parsePurgeOptions,
  parseReadLimit,
  parseReapOptions,
  parseTaskIds,
  storeClosed as storeClosed2,
  taskAlreadyExists,
  taskNotFound as taskNotFound4
} from "@finishline/core/internal";
import { Kysely, PostgresDialect, sql as sql7 } from "kysely";

// src/ack-batcher.ts
import { ErrorCode as ErrorCode3, ProgressError as ProgressError3 } from "@finishline/core";
import { compareIds, storeClosed, taskNotFound } from "@finishline/core/internal";
import { sql as sql3 } from "kysely";

// src/pg-errors.ts
import { ErrorCode as ErrorCode2, isProgressError, ProgressError as ProgressError2 } from "@finishline/core";
function isDatabaseError(error) {
  if (typeof error !== "object" || error === null) return false;
  const record = error;
  return typeof record.code === "string" && /^[0-9A-Z]{5}$/.test(record.code) && typeof record.severity === "string";
}
function isDataException(error) {
  return isDatabaseError(error) && error.code.startsWith("22");
}
function toProgressError(error, what, taskId) {
  if (isProgressError(error)) return error;
  const options = taskId === void 0 ? { cause: error } : { cause: error, taskId };
  const detail = error instanceof Error ? error.message : String(error);
  if (isDataException(error)) {
    return new ProgressError2(
      ErrorCode2.InvalidInput,
      `${what}: Postgres rejected a value (${detail})`,
      options
    );
  }
  return new ProgressError2(ErrorCode2.StoreUnavailable, `${what}: ${detail}`, options);
}

// src/row-codec.ts
import { isTerminalType } from "@finishline/core";
import { exhaustive } from "@finishline/core/internal";
import { sql as sql2 } from "kysely";
var taskColumns = sql2`id, owner, kind, status, total, done, succeeded, failed, current, message,
  result::text AS result, error_code, error_message, seq, acked_seq, created_at, updated_at, finished_at,
  lease_owner, lease_expires_at`;
function int(value) {
  return typeof value === "number" ? value : Number(value);
}
function nullableInt(value) {
  return value === null ? null : int(value);
}
function toTask(row) {
  return {
    id: row.id,
    owner: row.owner,
    kind: row.kind,
    status: row.status,
    total: nullableInt(row.total),
    done: int(row.done),
    succeeded: int(row.succeeded),
    failed: int(row.failed),
    current: row.current,
    message: row.message,
    result: row.result === null ? null : JSON.parse(row.result),
    error: row.error_code === null ? null : { code: row.error_code, message: row.error_message ?? "" },
    seq: int(row.seq),
    ackedSeq: int(row.acked_seq),
    createdAt: int(row.created_at),
    updatedAt: int(row.updated_at),
    finishedAt: nullableInt(row.finished_at),
    leaseOwner: row.lease_owner,
    leaseExpiresAt: nullableInt(row.lease_expires_at)
  };
}
function toEvent(row) {
  return {
    taskId: row.task_id,
    seq: int(row.seq),
    type: row.type,
    time: int(row.time),
    ...JSON.parse(row.body)
  };
}
function jsonCopy(value) {
  return value === null || typeof value !== "object" ? value : JSON.parse(JSON.stringify(value));
}
function detached(event) {
  switch (event.type) {
    case "item":
      return event.item.detail === null ? event : { ...event, item: { ...event.item, detail: jsonCopy(event.item.detail) } };
    case "completed":
      return event.result === null ? event : { ...event, result: jsonCopy(event.result) };
    case "progress":
    case "failed":
    case "cancelled":
    case "interrupted":
      return event;
    default:
      exhaustive(event, "event");
  }
}
function eventRecord(event) {
  const { taskId, seq, type, time, ...body } = event;
  return { task_id: taskId, seq, type, time, body };
}
function taskRecord(task) {
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
    lease_expires_at: task.leaseExpiresAt
  };
}
function changeOf(event) {
  return { taskId: event.taskId, seq: event.seq, terminal: isTerminalType(event.type) };
}

// src/ack-batcher.ts
var AckBatcher = class {
  #options;
  #queue = [];
  #flushTimer;
  #inFlight;
  #closed = false;
  #batches = 0;
  constructor(options) {
    this.#options = options;
  }
  /** Ack statements run (each writes every ack of one flush). */
  get batches() {
    return this.#batches;
  }
  /** Queues a validated ack; resolves with the task's acked seq once its statement ran. */
  enqueue(taskId, seq) {
    return new Promise((resolve, reject) => {
      this.#queue.push({ taskId, seq, resolve, reject });
      this.#scheduleFlush();
    });
  }
  /** Rejects the acks not yet sent with `closed` and waits for the statement in flight. */
  async close() {
    this.#closed = true;
    if (this.#flushTimer !== void 0) clearImmediate(this.#flushTimer);
    this.#flushTimer = void 0;
    const closed = storeClosed();
    for (const entry of this.#queue.splice(0)) entry.reject(closed);
    await this.#inFlight;
  }
  #scheduleFlush() {
    if (this.#flushTimer !== void 0 || this.#inFlight !== void 0) return;
    this.#flushTimer = setImmediate(() => {
      this.#flushTimer = void 0;
      this.#flush();
    });
  }
  /** Starts the next ack statement; one at a time, so acks hold at most one pool connection. */
  #flush() {
    if (this.#inFlight !== void 0 || this.#queue.length === 0) return;
    const batch = this.#queue.splice(0, this.#options.maxBatchSize);
    this.#inFlight = this.#write(batch).finally(() => {
      this.#inFlight = void 0;
      if (!this.#closed) this.#flush();
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
  async #write(batch) {
    const { db, tasks } = this.#options;
    const taskIds = [...new Set(batch.map((entry) => entry.taskId))].sort(compareIds);
    const rows = /* @__PURE__ */ new Map();
    try {
      const { rows: updated } = await sql3`
        WITH v AS (
          SELECT * FROM unnest(${batch.map((entry) => entry.taskId)}::text[], ${batch.map((entry) => entry.seq)}::int8[])
            AS v(id, seq)
        ), locked AS MATERIALIZED (
          SELECT t.id FROM ${tasks} t
          WHERE t.id = ANY(${taskIds}::text[])
            AND EXISTS (SELECT 1 FROM v WHERE v.id = t.id AND v.seq <= t.seq AND v.seq > t.acked_seq)
          ORDER BY t.id
          FOR UPDATE
        )
        UPDATE ${tasks} AS t
        SET acked_seq = (SELECT max(v.seq) FROM v WHERE v.id = t.id AND v.seq <= t.seq)
        FROM locked
        WHERE t.id = locked.id
          AND EXISTS (SELECT 1 FROM v WHERE v.id = t.id AND v.seq <= t.seq AND v.seq > t.acked_seq)
        RETURNING t.id, t.seq, t.acked_seq`.execute(db);
      this.#batches += 1;
      for (const row of updated) rows.set(row.id, { seq: int(row.seq), ackedSeq: int(row.acked_seq) });
      const unchanged = taskIds.filter((taskId) => !rows.has(taskId));
      if (unchanged.length > 0) {
        const { rows: current } = await sql3`
          SELECT id, seq, acked_seq FROM ${tasks} WHERE id = ANY(${unchanged}::text[])`.execute(db);
        for (const row of current) rows.set(row.id, { seq: int(row.seq), ackedSeq: int(row.acked_seq) });
      }
    } catch (error) {
      const failure = toProgressError(error, "ack", taskIds.length === 1 ? taskIds[0] : void 0);
      for (const entry of batch) entry.reject(failure);
      return;
    }
    for (const { taskId, seq, resolve, reject } of batch) {
      const task = rows.get(taskId);
      if (task === void 0) reject(taskNotFound(taskId));
      else if (seq > task.seq) {
        reject(
          new ProgressError3(
            ErrorCode3.InvalidInput,
            `Cannot ack seq ${seq} of task ${taskId}: its latest seq is ${task.seq}`,
            { taskId }
          )
        );
      } else resolve(task.ackedSeq);
    }
  }
};

// src/append-pipeline.ts
import { ErrorCode as ErrorCode4, isProgressError as isProgressError2, isTerminalType as isTerminalType2, ProgressError as ProgressError4 } from "@finishline/core";
import { compareIds as compareIds2, planAppend, taskNotFound as taskNotFound2 } from "@finishline/core/internal";
import { sql as sql4 } from "kysely";
if (MAX_CHANGE_ENTRY_BYTES + 2 > NOTIFY_PAYLOAD_BUDGET_BYTES || NOTIFY_PAYLOAD_BUDGET_BYTES * 4 > PG_NOTIFY_PAYLOAD_LIMIT_BYTES) {
  throw new ProgressError4(ErrorCode4.Internal, "NOTIFY payloads could come near the 8000-byte limit");
}
async function writeAppends(trx, target, tasks, events) {
  const notices = /* @__PURE__ */ new Map();
  for (const event of events) {
    const notice = notices.get(event.taskId);
    const terminal = isTerminalType2(event.type);
    if (notice === void 0) {
      notices.set(event.taskId, { taskId: event.taskId, firstSeq: event.seq, seq: event.seq, terminal });
    } else {
      notice.seq = event.seq;
      notice.terminal = terminal;
    }
  }
  const payloads = encodeChangeNotices([...notices.values()]);
  await sql4`
    WITH updated AS (
      UPDATE ${target.tasks} AS t SET
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
      INSERT INTO ${target.events} (task_id, seq, type, time, body)
      SELECT task_id, seq, type, time, body
      FROM json_to_recordset(${JSON.stringify(events.map(eventRecord))}::json)
        AS e(task_id text, seq int8, type text, time int8, body json)
    )
    SELECT pg_notify(${target.channel}, payload) FROM unnest(${payloads}::text[]) AS payload`.execute(trx);
}
var AppendPipeline = class {
  #options;
  #queue = [];
  #busyTasks = /* @__PURE__ */ new Set();
  #idleWaiters = [];
  #minConcurrentBatch;
  #stats = { appends: 0, batches: 0, largestBatch: 0, failedBatches: 0 };
  #activeBatches = 0;
  #flushScheduled = false;
  constructor(options) {
    this.#options = options;
    this.#minConcurrentBatch = Math.ceil(options.maxBatchSize / 4);
  }
  stats() {
    return { ...this.#stats };
  }
  /** Queues a validated append; the promise settles once its transaction committed or failed. */
  enqueue(taskId, input) {
    return new Promise((resolve, reject) => {
      this.#queue.push({ taskId, input, resolve, reject });
      this.#scheduleFlush();
    });
  }
  /** Counts and publishes appends another transaction committed (the reaper's interruptions). */
  committedElsewhere(events) {
    this.#stats.appends += events.length;
    for (const event of events) this.#options.publish(changeOf(event));
  }
  /** Resolves once every queued append has been committed or rejected. */
  async whenIdle() {
    if (this.#activeBatches === 0 && this.#queue.length === 0) return;
    await new Promise((resolve) => this.#idleWaiters.push(resolve));
  }
  #scheduleFlush() {
    if (this.#flushScheduled) return;
    this.#flushScheduled = true;
    queueMicrotask(() => {
      this.#flushScheduled = false;
      this.#flush();
    });
  }
  #flush() {
    while (this.#activeBatches < this.#options.maxConcurrentBatches && this.#queue.length > 0) {
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
  #takeBatch() {
    const batch = [];
    const kept = [];
    for (const entry of this.#queue) {
      if (batch.length < this.#options.maxBatchSize && !this.#busyTasks.has(entry.taskId)) batch.push(entry);
      else kept.push(entry);
    }
    this.#queue.splice(0, this.#queue.length, ...kept);
    return batch;
  }
  /** Commits a batch of appends in one transaction; settles every append's promise. Never rejects. */
  async #commitBatch(batch) {
    const { db, target, clock, publish } = this.#options;
    const now = clock();
    const taskIds = [...new Set(batch.map((entry) => entry.taskId))].sort(compareIds2);
    let outcomes;
    try {
      outcomes = await db.transaction().execute(async (trx) => {
        const { rows } = await sql4`
          SELECT ${taskColumns} FROM ${target.tasks}
          WHERE id = ANY(${taskIds}::text[])
          ORDER BY id
          FOR UPDATE`.execute(trx);
        const tasks = new Map(rows.map((row) => [row.id, toTask(row)]));
        const changed = /* @__PURE__ */ new Map();
        const planned = [];
        const results = [];
        for (const { taskId, input } of batch) {
          const task = tasks.get(taskId);
          if (task === void 0) {
            results.push(taskNotFound2(taskId));
            continue;
          }
          try {
            const next = planAppend(task, input, now);
            tasks.set(taskId, next.task);
            changed.set(taskId, next.task);
            planned.push(next.event);
            results.push({
              event: detached(next.event),
              task: { ...next.task, result: jsonCopy(next.task.result) }
            });
          } catch (error) {
            if (!isProgressError2(error)) throw error;
            results.push(error);
          }
        }
        if (planned.length > 0) await writeAppends(trx, target, [...changed.values()], planned);
        return results;
      });
    } catch (error) {
      this.#stats.failedBatches += 1;
      if (batch.length > 1 && isDataException(error)) {
        for (const entry of batch) await this.#commitBatch([entry]);
        return;
      }
      const failure = toProgressError(error, "append");
      for (const entry of batch) entry.reject(failure);
      return;
    }
    let committed = 0;
    for (const outcome of outcomes) {
      if (!isProgressError2(outcome)) {
        committed += 1;
        publish(changeOf(outcome.event));
      }
    }
    if (committed > 0) {
      this.#stats.appends += committed;
      this.#stats.batches += 1;
      this.#stats.largestBatch = Math.max(this.#stats.largestBatch, committed);
    }
    outcomes.forEach((outcome, index) => {
      const entry = batch[index];
      if (entry === void 0) return;
      if (isProgressError2(outcome)) entry.reject(outcome);
      else entry.resolve(outcome);
    });
  }
};

// src/guarded-pool.ts
function guardedPool(pool) {
  const guarded = /* @__PURE__ */ new WeakSet();
  return {
    async connect() {
      const client = await pool.connect();
      const emitter = client;
      if (!guarded.has(client) && typeof emitter.on === "function") {
        guarded.add(client);
        emitter.on("error", () => {
        });
      }
      return client;
    },
    async end() {
    }
  };
}

// src/lease-statements.ts
import {
  isLeaseExpired,
  leaseExpiredReason,
  planAppend as planAppend2,
  planLease,
  taskNotFound as taskNotFound3
} from "@finishline/core/internal";
import { sql as sql5 } from "kysely";
async function renewLease(db, target, lease) {
  const { taskId } = lease;
  return db.transaction().execute(async (trx) => {
    const { rows } = await sql5`
      SELECT ${taskColumns} FROM ${target.tasks} WHERE id = ${taskId} FOR UPDATE`.execute(trx);
    const row = rows[0];
    if (row === void 0) throw taskNotFound3(taskId);
    const next = planLease(toTask(row), lease.owner, lease.ttlMs, lease.clock());
    await sql5`
      UPDATE ${target.tasks} SET lease_owner = ${next.leaseOwner}, lease_expires_at = ${next.leaseExpiresAt}
      WHERE id = ${taskId}`.execute(trx);
    return next;
  });
}
async function releaseLease(db, target, taskId, owner) {
  const { rows } = await sql5`
    WITH released AS (
      UPDATE ${target.tasks} SET lease_owner = NULL, lease_expires_at = NULL
      WHERE id = ${taskId} AND status = 'running' AND lease_owner = ${owner}
      RETURNING id
    )
    SELECT EXISTS (SELECT 1 FROM released) OR EXISTS (SELECT 1 FROM ${target.tasks} WHERE id = ${taskId}) AS found`.execute(
    db
  );
  return rows[0]?.found === true;
}
async function reapExpiredLeases(db, target, { limit, now }) {
  return db.transaction().execute(async (trx) => {
    const { rows } = await sql5`
      SELECT ${taskColumns} FROM ${target.tasks}
      WHERE status = 'running' AND lease_expires_at IS NOT NULL AND lease_expires_at <= ${now}
      ORDER BY lease_expires_at, id
      LIMIT ${limit}
      FOR UPDATE SKIP LOCKED`.execute(trx);
    const planned = [];
    for (const row of rows) {
      const task = toTask(row);
      if (!isLeaseExpired(task, now)) continue;
      planned.push(planAppend2(task, { type: "interrupted", reason: leaseExpiredReason(task) }, now));
    }
    if (planned.length > 0) {
      await writeAppends(
        trx,
        target,
        planned.map((entry) => entry.task),
        planned.map((entry) => entry.event)
      );
    }
    return planned;
  });
}

// src/listen-connection.ts
import { backoffDelayMs, exhaustive as exhaustive2 } from "@finishline/core/internal";
import { sql as sql6 } from "kysely";
var MIN_BARRIER_TIMEOUT_MS = 1e3;
function compileStatements({ db, channel, events }) {
  const placeholder = "0";
  return {
    listen: sql6`LISTEN ${sql6.id(channel)}`.compile(db).sql,
    // One statement, so the xmin and the events come from the same snapshot (see the module doc).
    replay: sql6`
      SELECT s.xmin::text AS xmin, e.task_id, e.first_seq, e.last_seq, e.terminal
      FROM (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin) s
      LEFT JOIN LATERAL (
        SELECT task_id, min(seq) AS first_seq, max(seq) AS last_seq,
               bool_or(type IN ('completed', 'failed', 'cancelled', 'interrupted')) AS terminal
        FROM ${events}
        WHERE ${placeholder}::xid8 IS NOT NULL AND xid >= ${placeholder}::xid8
        GROUP BY task_id
      ) e ON true`.compile(db).sql,
    barrier: sql6`
      SELECT pg_notify(${channel}, json_build_object(
        'barrier', ${placeholder}::text, 'xmin', pg_snapshot_xmin(pg_current_snapshot())::text)::text)`.compile(
      db
    ).sql
  };
}
var ListenConnection = class {
  #options;
  #statements;
  #stats = { notifications: 0, malformedNotifications: 0, reconnects: 0 };
  #listenerId = globalThis.crypto.randomUUID();
  #client;
  /** Bumped on every connect and every loss; events of an older generation are ignored. */
  #generation = 0;
  #started = false;
  #closed = false;
  #connected = false;
  #failedAttempts = 0;
  #lastError = null;
  #lastConnectedAt = null;
  #watermark;
  #retryTimer;
  #barrierTimer;
  #barrierWatchdog;
  #connecting;
  constructor(options) {
    this.#options = options;
    this.#statements = compileStatements(options);
  }
  stats() {
    return { ...this.#stats };
  }
  health() {
    const pid = this.#connected ? this.#client?.processID : void 0;
    return {
      connected: this.#connected,
      listenerPid: typeof pid === "number" ? pid : null,
      lastError: this.#lastError,
      lastConnectedAt: this.#lastConnectedAt,
      failedAttempts: this.#failedAttempts,
      watermark: this.#watermark === void 0 ? null : this.#watermark.toString()
    };
  }
  /** The first connect. Rejects (with `store_unavailable`) instead of retrying: the store fails to open. */
  async start() {
    const generation = ++this.#generation;
    try {
      await this.#open(generation);
    } catch (error) {
      this.#generation++;
      await this.#endClient();
      throw toProgressError(error, "Opening the LISTEN connection failed");
    }
    this.#started = true;
  }
  /** Ends the connection and its timers; no reconnect follows. */
  async close() {
    this.#closed = true;
    this.#generation++;
    this.#connected = false;
    clearTimeout(this.#retryTimer);
    clearTimeout(this.#barrierTimer);
    this.#clearWatchdog();
    this.#retryTimer = void 0;
    this.#barrierTimer = void 0;
    const connecting = this.#connecting;
    await this.#endClient();
    await connecting?.catch(() => {
    });
    await this.#endClient();
  }
  async #open(generation) {
    const client = await this.#options.createClient();
    if (generation !== this.#generation) {
      await client.end().catch(() => {
      });
      throw new Error("The store closed while the LISTEN connection was being created");
    }
    this.#client = client;
    client.on("notification", (message) => {
      if (generation === this.#generation) this.#onNotification(message);
    });
    client.on("error", (error) => this.#lost(generation, error));
    client.on("end", () => this.#lost(generation, new Error("The LISTEN connection ended")));
    await client.connect();
    await client.query(this.#statements.listen);
    const mark = this.#watermark === void 0 ? null : this.#watermark.toString();
    const { rows } = await client.query(this.#statements.replay, [mark, mark]);
    if (generation !== this.#generation)
      throw new Error("The LISTEN connection was replaced while connecting");
    let xmin;
    for (const row of rows) {
      xmin = BigInt(row.xmin);
      if (row.task_id === null || row.first_seq === null || row.last_seq === null) continue;
      const lastSeq = Number(row.last_seq);
      this.#options.hub.report(
        {
          taskId: row.task_id,
          firstSeq: Number(row.first_seq),
          seq: lastSeq,
          terminal: row.terminal === true
        },
        "replay"
      );
    }
    if (xmin !== void 0) this.#advance(xmin);
    this.#connected = true;
    this.#failedAttempts = 0;
    this.#lastConnectedAt = this.#options.clock();
    this.#scheduleBarrier(generation);
  }
  #onNotification(message) {
    if (message.channel !== this.#options.channel) return;
    const { hub } = this.#options;
    this.#stats.notifications += 1;
    const notice = decodeNotice(message.payload);
    switch (notice.kind) {
      case "changes":
        for (const change of notice.changes) {
          hub.report(change, "notification");
        }
        break;
      case "barrier":
        if (notice.listenerId === this.#listenerId) this.#advance(notice.xmin);
        break;
      case "malformed":
        this.#stats.malformedNotifications += 1;
        break;
      default:
        exhaustive2(notice, "notice");
    }
  }
  #advance(xmin) {
    if (this.#watermark === void 0 || xmin > this.#watermark) this.#watermark = xmin;
  }
  #scheduleBarrier(generation) {
    this.#barrierTimer = setTimeout(() => {
      this.#barrierTimer = void 0;
      const client = this.#client;
      if (generation !== this.#generation || client === void 0) return;
      const timeoutMs = Math.max(5 * this.#options.watermarkIntervalMs, MIN_BARRIER_TIMEOUT_MS);
      this.#barrierWatchdog = setTimeout(() => {
        this.#barrierWatchdog = void 0;
        this.#lost(generation, new Error(`The LISTEN connection did not answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#barrierWatchdog.unref?.();
      client.query(this.#statements.barrier, [this.#options.channel, this.#listenerId]).then(
        () => {
          if (generation !== this.#generation) return;
          this.#clearWatchdog();
          this.#scheduleBarrier(generation);
        },
        (error) => {
          if (generation !== this.#generation) return;
          this.#clearWatchdog();
          this.#options.onError(toProgressError(error, "Advancing the change feed watermark failed"));
          this.#scheduleBarrier(generation);
        }
      );
    }, this.#options.watermarkIntervalMs);
    this.#barrierTimer.unref?.();
  }
  #clearWatchdog() {
    clearTimeout(this.#barrierWatchdog);
    this.#barrierWatchdog = void 0;
  }
  /** The connection of `generation` failed: record why, drop it, and retry after a backoff delay. */
  #lost(generation, error) {
    if (generation !== this.#generation || this.#closed) return;
    this.#generation++;
    this.#connected = false;
    this.#lastError = toProgressError(error, "The LISTEN connection failed");
    clearTimeout(this.#barrierTimer);
    this.#barrierTimer = void 0;
    this.#clearWatchdog();
    void this.#endClient();
    if (!this.#started) return;
    this.#options.onError(this.#lastError);
    this.#scheduleReconnect();
  }
  #scheduleReconnect() {
    if (this.#closed || this.#retryTimer !== void 0) return;
    const delay = backoffDelayMs(this.#failedAttempts, this.#options.reconnect);
    this.#failedAttempts += 1;
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = void 0;
      this.#connecting = this.#reconnect().finally(() => {
        this.#connecting = void 0;
      });
    }, delay);
    this.#retryTimer.unref?.();
  }
  async #reconnect() {
    if (this.#closed) return;
    const generation = ++this.#generation;
    try {
      await this.#open(generation);
      this.#stats.reconnects += 1;
    } catch (error) {
      this.#lost(generation, error);
    }
  }
  async #endClient() {
    const client = this.#client;
    this.#client = void 0;
    if (client === void 0) return;
    try {
      await client.end();
    } catch {
    }
  }
};

// src/postgres-change-feed.ts
import { LocalChangeFeed } from "@finishline/core";
import { exhaustive as exhaustive3 } from "@finishline/core/internal";
var PUBLISHED_CAPACITY = 5e4;
var TERMINAL_MEMORY_MS = 6e4;
var MAX_FILL = 1e4;
var ChangeFeedHub = class {
  #local;
  #clock;
  #published = /* @__PURE__ */ new Map();
  #followed = /* @__PURE__ */ new Map();
  #counters = {
    published: 0,
    fromCommits: 0,
    fromNotifications: 0,
    replayed: 0,
    missedByNotifications: 0,
    duplicates: 0
  };
  constructor(clock, onListenerError) {
    this.#clock = clock;
    this.#local = new LocalChangeFeed(onListenerError);
  }
  subscribe(listener) {
    return this.#local.subscribe(listener);
  }
  follow(taskId) {
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
  followedTaskIds() {
    return [...this.#followed.keys()];
  }
  /** The counters of publication (see {@link ChangeFeedStats}). */
  stats() {
    return { ...this.#counters };
  }
  /** The last seq published for `taskId`, if remembered. */
  publishedSeq(taskId) {
    return this.#published.get(taskId)?.seq;
  }
  /**
   * A task was created at seq 0. Start its memory afresh when the id is unknown or belonged to a task that
   * ended (retention may free an id for reuse), but keep a running task's memory: another process may
   * already have appended to the new task, and its change may have been published before this call.
   */
  resetTask(taskId) {
    const known = this.#published.get(taskId);
    if (known === void 0 || known.terminalAt !== void 0)
      this.#remember(taskId, { seq: 0, terminalAt: void 0 });
  }
  /** Tasks were deleted by retention: forget them, so a new task with the same id starts from seq 1. */
  forget(taskIds) {
    for (const taskId of taskIds) this.#published.delete(taskId);
  }
  /**
   * Reports that `change.taskId` has the committed seqs `firstSeq..seq`, `seq` being terminal when
   * `terminal`. Publishes what was not published yet; returns how many changes that was.
   */
  report(change, source) {
    const { taskId, firstSeq, seq, terminal } = change;
    const known = this.#published.get(taskId);
    if (known !== void 0 && seq <= known.seq) {
      this.#counters.duplicates += 1;
      return 0;
    }
    if (seq < 1) {
      if (known === void 0) this.#remember(taskId, { seq: 0, terminalAt: void 0 });
      return 0;
    }
    let from = known === void 0 ? firstSeq : known.seq + 1;
    if (seq - from + 1 > MAX_FILL) from = seq - MAX_FILL + 1;
    this.#remember(taskId, { seq, terminalAt: terminal ? this.#clock() : void 0 });
    for (let current = from; current <= seq; current++) {
      this.#local.publish(Object.freeze({ taskId, seq: current, terminal: terminal && current === seq }));
    }
    const count = seq - from + 1;
    this.#counters.published += count;
    switch (source) {
      case "commit":
        this.#counters.fromCommits += count;
        break;
      case "notification":
        this.#counters.fromNotifications += count;
        break;
      case "replay":
        this.#counters.replayed += count;
        break;
      case "poll":
        if (known !== void 0) this.#counters.missedByNotifications += count;
        break;
      default:
        exhaustive3(source, "change source");
    }
    return count;
  }
  /** Publishes one of this store's own committed events. */
  publishCommitted(change) {
    this.report(
      { taskId: change.taskId, firstSeq: change.seq, seq: change.seq, terminal: change.terminal },
      "commit"
    );
  }
  /** Forgets terminal tasks past {@link TERMINAL_MEMORY_MS}, unless followed. Called by the poll. */
  sweep() {
    const cutoff = this.#clock() - TERMINAL_MEMORY_MS;
    for (const [taskId, entry] of this.#published) {
      if (entry.terminalAt !== void 0 && entry.terminalAt <= cutoff && !this.#followed.has(taskId)) {
        this.#published.delete(taskId);
      }
    }
  }
  #remember(taskId, entry) {
    this.#published.delete(taskId);
    this.#published.set(taskId, entry);
    if (this.#published.size <= PUBLISHED_CAPACITY) return;
    for (const key of this.#published.keys()) {
      if (this.#published.size <= PUBLISHED_CAPACITY) break;
      if (!this.#followed.has(key)) this.#published.delete(key);
    }
  }
};
var StoreChangeFeed = class {
  #parts;
  constructor(parts) {
    this.#parts = parts;
  }
  subscribe(listener) {
    return this.#parts.hub.subscribe(listener);
  }
  follow(taskId) {
    return this.#parts.hub.follow(taskId);
  }
  followedTaskIds() {
    return this.#parts.hub.followedTaskIds();
  }
  health() {
    return this.#parts.listener.health();
  }
  stats() {
    const { hub, listener, poll } = this.#parts;
    return { ...hub.stats(), ...listener.stats(), ...poll.stats() };
  }
};

// src/postgres-store-options.ts
import { isProgressError as isProgressError3, systemClock } from "@finishline/core";
import { backoffDelayMs as backoffDelayMs2, invalidOption } from "@finishline/core/internal";
var POSTGRES_STORE_DEFAULTS = Object.freeze({
  schema: "finishline",
  migrate: true,
  clock: systemClock,
  pollIntervalMs: 500,
  watermarkIntervalMs: 1e3,
  reconnect: Object.freeze({ initialDelayMs: 250, maxDelayMs: 1e4, multiplier: 2 }),
  maxBatchSize: 500,
  maxConcurrentBatches: 2,
  maxAckBatchSize: 1e3,
  onError: (_error) => {
  },
  onListenerError: (_error) => {
  }
});
var OPTION_NAMES = /* @__PURE__ */ new Set(["pool", "db", "listenClient", ...Object.keys(POSTGRES_STORE_DEFAULTS)]);
function invalid(message) {
  return invalidOption("PostgresProgressStore", message);
}
function requireInteger(name, value, { min, max }) {
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < min || value > max) {
    throw invalid(`${name} must be an integer from ${min} to ${max}, got ${String(value)}`);
  }
  return value;
}
function requireFunction(name, value) {
  if (typeof value !== "function") throw invalid(`${name} must be a function`);
  return value;
}
async function importPgClient() {
  const module = await import("pg");
  const Client = module.default?.Client ?? module.Client;
  if (Client === void 0) throw invalid("the pg module has no Client class");
  return Client;
}
function listenClientFactory(source, pool) {
  if (typeof source === "function") return source;
  const withName = (config2) => ({
    application_name: "finishline-listen",
    keepAlive: true,
    ...config2
  });
  if (source === void 0) {
    const Client = pool?.Client;
    const config2 = pool?.options;
    if (typeof Client !== "function" || typeof config2 !== "object" || config2 === null) {
      throw invalid(
        pool === void 0 ? "listenClient is required with db (the store cannot see the connection settings)" : "cannot derive a LISTEN client from this pool (no Client or options); pass listenClient"
      );
    }
    return () => new Client(withName(config2));
  }
  if (typeof source !== "string" && (typeof source !== "object" || source === null)) {
    throw invalid("listenClient must be a connection string, a pg.Client config or a factory");
  }
  const config = typeof source === "string" ? { connectionString: source } : source;
  const PoolClient = pool?.Client;
  return async () => {
    const Client = typeof PoolClient === "function" ? PoolClient : await importPgClient();
    return new Client(withName(config));
  };
}
function resolveStoreOptions(options) {
  if (typeof options !== "object" || options === null) throw invalid("options must be an object");
  for (const name of Object.keys(options)) {
    if (!OPTION_NAMES.has(name)) throw invalid(`unknown option "${name}"`);
  }
  const defined = Object.fromEntries(Object.entries(options).filter(([, value]) => value !== void 0));
  const merged = { ...POSTGRES_STORE_DEFAULTS, ...defined };
  const { pool, db } = merged;
  if (pool === void 0 === (db === void 0)) throw invalid("give exactly one of pool and db");
  if (pool !== void 0 && (typeof pool !== "object" || typeof pool.connect !== "function")) {
    throw invalid("pool must be a pg.Pool");
  }
  if (db !== void 0 && (typeof db !== "object" || typeof db.transaction !== "function")) {
    throw invalid("db must be a Kysely instance");
  }
  try {
    assertSchemaName(merged.schema);
  } catch (error) {
    throw isProgressError3(error) ? invalid(error.message) : error;
  }
  if (typeof merged.migrate !== "boolean") throw invalid("migrate must be a boolean");
  const reconnect = { ...POSTGRES_STORE_DEFAULTS.reconnect, ...merged.reconnect ?? {} };
  try {
    backoffDelayMs2(0, reconnect, () => 0);
  } catch (error) {
    throw invalid(`reconnect: ${error instanceof Error ? error.message : String(error)}`);
  }
  return {
    pool,
    db,
    schema: merged.schema,
    migrate: merged.migrate,
    clock: requireFunction("clock", merged.clock),
    createListenClient: listenClientFactory(merged.listenClient, pool),
    pollIntervalMs: requireInteger("pollIntervalMs", merged.pollIntervalMs, { min: 1, max: 36e5 }),
    watermarkIntervalMs: requireInteger("watermarkIntervalMs", merged.watermarkIntervalMs, {
      min: 1,
      max: 36e5
    }),
    reconnect,
    maxBatchSize: requireInteger("maxBatchSize", merged.maxBatchSize, { min: 1, max: 1e4 }),
    maxConcurrentBatches: requireInteger("maxConcurrentBatches", merged.maxConcurrentBatches, {
      min: 1,
      max: 64
    }),
    maxAckBatchSize: requireInteger("maxAckBatchSize", merged.maxAckBatchSize, { min: 1, max: 1e4 }),
    onError: requireFunction("onError", merged.onError),
    onListenerError: requireFunction("onListenerError", merged.onListenerError)
  };
}

// src/safety-net-poll.ts
import { STORE_DEFAULTS } from "@finishline/core";
var SafetyNetPoll = class {
  #options;
  #timer;
  #running;
  #stopped = false;
  #errors = 0;
  constructor(options) {
    this.#options = options;
  }
  stats() {
    return { pollErrors: this.#errors };
  }
  start() {
    this.#schedule();
  }
  /** Stops the timer and waits for a poll in progress. */
  async stop() {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.#timer = void 0;
    await this.#running;
  }
  /**
   * Runs one poll now (also what the timer does). Resolves when it finished; never rejects (a failure
   * is counted and reported to `onError`).
   */
  async pollOnce() {
    if (this.#running !== void 0) return this.#running;
    this.#running = this.#poll().finally(() => {
      this.#running = void 0;
    });
    return this.#running;
  }
  #schedule() {
    if (this.#stopped) return;
    this.#timer = setTimeout(() => {
      this.#timer = void 0;
      void this.pollOnce().then(() => this.#schedule());
    }, this.#options.intervalMs);
    this.#timer.unref?.();
  }
  async #poll() {
    const { hub } = this.#options;
    hub.sweep();
    const taskIds = hub.followedTaskIds();
    for (let start = 0; start < taskIds.length && !this.#stopped; start += STORE_DEFAULTS.maxLatestSeqsIds) {
      const chunk = taskIds.slice(start, start + STORE_DEFAULTS.maxLatestSeqsIds);
      let latest;
      try {
        latest = await this.#options.readLatest(chunk);
      } catch (error) {
        this.#errors += 1;
        this.#options.onError(toProgressError(error, "The safety-net poll failed"));
        return;
      }
      for (const [taskId, state] of latest) {
        const published = hub.publishedSeq(taskId);
        if (published === void 0 || state.seq > published) {
          hub.report({ taskId, firstSeq: state.seq, seq: state.seq, terminal: state.terminal }, "poll");
        }
      }
    }
  }
};

// src/postgres-progress-store.ts
var OPENING = Symbol("PostgresProgressStore.open");
var PostgresProgressStore = class _PostgresProgressStore {
  #options;
  #db;
  #clock;
  #schema;
  #target;
  #hub;
  #feed;
  #listener;
  #poll;
  #appends;
  #acks;
  #closed = false;
  #closing;
  /**
   * Opens a store: validates the options, applies migrations (unless `migrate: false`), connects the
   * `LISTEN` connection and starts the safety-net poll.
   *
   * @throws ProgressError `invalid_input` for bad options; `store_unavailable` when the database cannot
   * be reached or migrated.
   */
  static async open(options) {
    const store = new _PostgresProgressStore(OPENING, resolveStoreOptions(options));
    await store.#start();
    return store;
  }
  /**
   * Not callable: a store must migrate and connect before use, which a constructor cannot await.
   *
   * @throws ProgressError `invalid_input` pointing to {@link PostgresProgressStore.open} when called
   * directly (from JavaScript, or TypeScript past a cast).
   */
  constructor(opening, options) {
    if (opening !== OPENING) {
      throw new ProgressError5(
        ErrorCode5.InvalidInput,
        "PostgresProgressStore: use `await PostgresProgressStore.open(options)`, not `new PostgresProgressStore()`: opening migrates the schema and connects, which a constructor cannot wait for"
      );
    }
    this.#options = options;
    this.#clock = options.clock;
    this.#schema = options.schema;
    this.#db = options.db ?? new Kysely({
      dialect: new PostgresDialect({ pool: guardedPool(options.pool) })
    });
    const channel = changeChannel(options.schema);
    this.#target = {
      tasks: sql7.id(this.#schema, "tasks"),
      events: sql7.id(this.#schema, "events"),
      channel
    };
    this.#hub = new ChangeFeedHub(options.clock, options.onListenerError);
    this.#listener = new ListenConnection({
      hub: this.#hub,
      db: this.#db,
      channel,
      events: this.#target.events,
      createClient: options.createListenClient,
      watermarkIntervalMs: options.watermarkIntervalMs,
      reconnect: options.reconnect,
      clock: options.clock,
      onError: options.onError
    });
    this.#poll = new SafetyNetPoll({
      hub: this.#hub,
      intervalMs: options.pollIntervalMs,
      readLatest: (taskIds) => this.#readLatest(taskIds),
      onError: options.onError
    });
    this.#feed = new StoreChangeFeed({ hub: this.#hub, listener: this.#listener, poll: this.#poll });
    this.#appends = new AppendPipeline({
      db: this.#db,
      target: this.#target,
      clock: options.clock,
      maxBatchSize: options.maxBatchSize,
      maxConcurrentBatches: options.maxConcurrentBatches,
      publish: (change) => this.#hub.publishCommitted(change)
    });
    this.#acks = new AckBatcher({
      db: this.#db,
      tasks: this.#target.tasks,
      maxBatchSize: options.maxAckBatchSize
    });
  }
  async #start() {
    if (this.#options.migrate) {
      await migrateProgressSchema(this.#db, { schema: this.#schema });
    }
    await this.#listener.start();
    this.#poll.start();
  }
  /** The change feed: own commits, `NOTIFY` from other processes, re-reads and the safety-net poll. */
  get changes() {
    return this.#feed;
  }
  /** The schema this store works in. */
  get schema() {
    return this.#schema;
  }
  /** Counters of the append pipeline (see {@link PostgresStoreStats}). */
  stats() {
    return { ...this.#appends.stats(), ackBatches: this.#acks.batches };
  }
  /**
   * Runs the safety-net poll now instead of waiting for its timer; resolves when it finished. For tests
   * and for servers that want an immediate check (for example right after a reconnect).
   */
  async pollNow() {
    this.#assertOpen();
    await this.#poll.pollOnce();
  }
  async createTask(input) {
    this.#assertOpen();
    const parsed = parseCreateTaskInput(input);
    const id = parsed.id ?? globalThis.crypto.randomUUID();
    const task = newTask({ ...parsed, id }, this.#clock());
    const inserted = await this.#run(
      "createTask",
      id,
      () => sql7`
        INSERT INTO ${this.#target.tasks} (id, owner, kind, status, total, done, succeeded, failed, current, message,
          result, error_code, error_message, seq, acked_seq, created_at, updated_at, finished_at, lease_owner,
          lease_expires_at)
        VALUES (${task.id}, ${task.owner}, ${task.kind}, ${task.status}, ${task.total}, ${task.done},
          ${task.succeeded}, ${task.failed}, ${task.current}, ${task.message}, NULL, NULL, NULL, ${task.seq},
          ${task.ackedSeq}, ${task.createdAt}, ${task.updatedAt}, NULL, ${task.leaseOwner}, ${task.leaseExpiresAt})
        ON CONFLICT (id) DO NOTHING
        RETURNING id`.execute(this.#db)
    );
    if (inserted.rows.length === 0) {
      throw taskAlreadyExists(id);
    }
    this.#hub.resetTask(id);
    return task;
  }
  async getTask(taskId) {
    this.#assertOpen();
    assertTaskId(taskId);
    const { rows } = await this.#run(
      "getTask",
      taskId,
      () => sql7`SELECT ${taskColumns} FROM ${this.#target.tasks} WHERE id = ${taskId}`.execute(this.#db)
    );
    const row = rows[0];
    return row === void 0 ? void 0 : toTask(row);
  }
  async getEpoch() {
    this.#assertOpen();
    const { rows } = await this.#run(
      "getEpoch",
      void 0,
      () => sql7`SELECT value FROM ${sql7.id(this.#schema, "meta")} WHERE key = 'epoch'`.execute(
        this.#db
      )
    );
    const row = rows[0];
    if (row === void 0) throw new ProgressError5(ErrorCode5.Internal, "The store has no epoch row");
    return row.value;
  }
  async renewEpoch() {
    this.#assertOpen();
    const { rows } = await this.#run(
      "renewEpoch",
      void 0,
      () => sql7`
        UPDATE ${sql7.id(this.#schema, "meta")}
        SET value = md5(random()::text || clock_timestamp()::text || pg_backend_pid()::text)
        WHERE key = 'epoch' RETURNING value`.execute(this.#db)
    );
    const row = rows[0];
    if (row === void 0) throw new ProgressError5(ErrorCode5.Internal, "The store has no epoch row");
    return row.value;
  }
  async listTasks(query) {
    this.#assertOpen();
    const { owner, statuses, limit } = parseListTasksQuery(query);
    if (statuses !== void 0 && statuses.length === 0) return [];
    const statusFilter = statuses === void 0 ? sql7`` : sql7`AND status = ANY(${[...statuses]}::text[])`;
    const { rows } = await this.#run(
      "listTasks",
      void 0,
      () => sql7`
        SELECT ${taskColumns} FROM ${this.#target.tasks}
        WHERE owner = ${owner} ${statusFilter}
        ORDER BY created_at DESC, id DESC
        LIMIT ${limit}`.execute(this.#db)
    );
    return rows.map(toTask);
  }
  append(taskId, input) {
    let parsed;
    try {
      this.#assertOpen();
      assertTaskId(taskId);
      parsed = parseAppendInput(input);
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#appends.enqueue(taskId, parsed);
  }
  async readEvents(taskId, afterSeq, limit) {
    this.#assertOpen();
    assertTaskId(taskId);
    assertCount(afterSeq, "afterSeq");
    const resolvedLimit = parseReadLimit(limit);
    const { rows } = await this.#run(
      "readEvents",
      taskId,
      () => sql7`
        SELECT e.task_id, e.seq, e.type, e.time, e.body
        FROM ${this.#target.tasks} t
        LEFT JOIN LATERAL (
          SELECT task_id, seq, type, time, body::text AS body FROM ${this.#target.events}
          WHERE task_id = t.id AND seq > ${afterSeq}
          ORDER BY seq
          LIMIT ${resolvedLimit}
        ) e ON true
        WHERE t.id = ${taskId}
        ORDER BY e.seq`.execute(this.#db)
    );
    if (rows.length === 0) throw taskNotFound4(taskId);
    const events = [];
    for (const row of rows) if (row.task_id !== null) events.push(toEvent(row));
    return events;
  }
  async latestSeqs(taskIds) {
    this.#assertOpen();
    const ids = parseTaskIds(taskIds);
    const latest = await this.#readLatest(ids);
    return new Map([...latest].map(([taskId, state]) => [taskId, state.seq]));
  }
  ack(taskId, seq) {
    try {
      this.#assertOpen();
      assertTaskId(taskId);
      assertCount(seq, "seq");
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#acks.enqueue(taskId, seq);
  }
  async renewLease(taskId, owner, ttlMs) {
    this.#assertOpen();
    assertTaskId(taskId);
    const lease = parseLeaseInput({ owner, ttlMs });
    return this.#run(
      "renewLease",
      taskId,
      () => renewLease(this.#db, this.#target, { taskId, ...lease, clock: this.#clock })
    );
  }
  async releaseLease(taskId, owner) {
    this.#assertOpen();
    assertTaskId(taskId);
    assertId(owner, "lease owner");
    const found = await this.#run(
      "releaseLease",
      taskId,
      () => releaseLease(this.#db, this.#target, taskId, owner)
    );
    if (!found) throw taskNotFound4(taskId);
  }
  async reapExpiredLeases(options) {
    this.#assertOpen();
    const { limit } = parseReapOptions(options);
    const now = this.#clock();
    const results = await this.#run(
      "reapExpiredLeases",
      void 0,
      () => reapExpiredLeases(this.#db, this.#target, { limit, now })
    );
    this.#appends.committedElsewhere(results.map((result) => result.event));
    return results;
  }
  async purgeFinished(options) {
    this.#assertOpen();
    const { olderThanMs, limit } = parsePurgeOptions(options);
    const cutoff = this.#clock() - olderThanMs;
    const { rows } = await this.#run(
      "purgeFinished",
      void 0,
      () => sql7`
        WITH doomed AS (
          SELECT id FROM ${this.#target.tasks}
          WHERE status <> 'running' AND finished_at IS NOT NULL AND finished_at <= ${cutoff}
          ORDER BY finished_at, id
          LIMIT ${limit}
          FOR UPDATE SKIP LOCKED
        ), purged_events AS (
          DELETE FROM ${this.#target.events} WHERE task_id IN (SELECT id FROM doomed)
        )
        DELETE FROM ${this.#target.tasks} WHERE id IN (SELECT id FROM doomed)
        RETURNING id`.execute(this.#db)
    );
    this.#hub.forget(rows.map((row) => row.id));
    return rows.length;
  }
  /**
   * Waits for the appends already accepted, then stops the poll and the `LISTEN` connection. Never ends
   * the caller's pool or Kysely instance. Later calls reject with `closed`; calling it twice is harmless.
   */
  close() {
    this.#closing ??= (async () => {
      this.#closed = true;
      await this.#acks.close();
      await this.#appends.whenIdle();
      await this.#poll.stop();
      await this.#listener.close();
    })();
    return this.#closing;
  }
  #assertOpen() {
    if (this.#closed) throw storeClosed2();
  }
  /** Runs a database call, turning driver errors into typed ones. */
  async #run(what, taskId, call) {
    try {
      return await call();
    } catch (error) {
      throw toProgressError(error, what, taskId);
    }
  }
  async #readLatest(taskIds) {
    const latest = /* @__PURE__ */ new Map();
    if (taskIds.length === 0) return latest;
    const { rows } = await this.#run(
      "latestSeqs",
      void 0,
      () => sql7`
        SELECT id, seq, status FROM ${this.#target.tasks} WHERE id = ANY(${[...taskIds]}::text[])`.execute(
        this.#db
      )
    );
    for (const row of rows) latest.set(row.id, { seq: int(row.seq), terminal: row.status !== "running" });
    return latest;
  }
};
export {
  MIGRATION_NAMES,
  MIGRATION_TABLE,
  NOTIFY_PAYLOAD_BUDGET_BYTES,
  PG_NOTIFY_PAYLOAD_LIMIT_BYTES,
  POSTGRES_STORE_DEFAULTS,
  PostgresProgressStore,
  SCHEMA_NAME_PATTERN,
  assertSchemaName,
  changeChannel,
  migrateProgressSchema
};
