"use strict";
var __create = Object.create;
var __defProp = Object.defineProperty;
var __getOwnPropDesc = Object.getOwnPropertyDescriptor;
var __getOwnPropNames = Object.getOwnPropertyNames;
var __getProtoOf = Object.getPrototypeOf;
var __hasOwnProp = Object.prototype.hasOwnProperty;
var __export = (target, all) => {
  for (var name in all)
    __defProp(target, name, { get: all[name], enumerable: true });
};
var __copyProps = (to, from, except, desc) => {
  if (from && typeof from === "object" || typeof from === "function") {
    for (let key of __getOwnPropNames(from))
      if (!__hasOwnProp.call(to, key) && key !== except)
        __defProp(to, key, { get: () => from[key], enumerable: !(desc = __getOwnPropDesc(from, key)) || desc.enumerable });
  }
  return to;
};
var __toESM = (mod, isNodeMode, target) => (target = mod != null ? __create(__getProtoOf(mod)) : {}, __copyProps(
  // If the importer is in node compatibility mode or this is not an ESM
  // file that has been converted to a CommonJS file using a Babel-
  // compatible transform (i.e. "__esModule" has not been set), then set
  // "default" to the CommonJS "module.exports" for node compatibility.
  isNodeMode || !mod || !mod.__esModule ? __defProp(target, "default", { value: mod, enumerable: true }) : target,
  mod
));
var __toCommonJS = (mod) => __copyProps(__defProp({}, "__esModule", { value: true }), mod);

// src/index.ts
var src_exports = {};
__export(src_exports, {
  SQLITE_SCHEMA_VERSION: () => SQLITE_SCHEMA_VERSION,
  SQLITE_STORE_DEFAULTS: () => SQLITE_STORE_DEFAULTS,
  SqliteProgressStore: () => SqliteProgressStore,
  TABLES: () => TABLES
});
module.exports = __toCommonJS(src_exports);

// src/migrations.ts
var import_core = require("@finishline/core");
var import_kysely2 = require("kysely");

// src/query-builder.ts
var import_kysely = require("kysely");
function createQueryBuilder() {
  return new import_kysely.Kysely({
    dialect: {
      createAdapter: () => new import_kysely.SqliteAdapter(),
      createDriver: () => new import_kysely.DummyDriver(),
      createIntrospector: (db) => new import_kysely.SqliteIntrospector(db),
      createQueryCompiler: () => new import_kysely.SqliteQueryCompiler()
    }
  });
}
var Placeholder = class {
  constructor(name) {
    this.name = name;
  }
};
function param(name) {
  return new Placeholder(name);
}
function isPlaceholder(value) {
  return value instanceof Placeholder;
}
var PreparedQuery = class {
  sql;
  #statement;
  #slots;
  /**
   * @param names the placeholder names the query must use, checked here so a typo fails at
   * construction rather than binding `undefined`.
   */
  constructor(database, query, names) {
    const compiled = "compile" in query ? query.compile() : query;
    this.sql = compiled.sql;
    this.#slots = compiled.parameters.map((value) => isPlaceholder(value) ? value : { constant: value });
    const used = new Set(this.#slots.filter(isPlaceholder).map((slot) => slot.name));
    const expected = new Set(names);
    if (used.size !== expected.size || [...used].some((name) => !expected.has(name))) {
      throw new Error(`Placeholders [${[...used]}] do not match [${[...expected]}] in: ${compiled.sql}`);
    }
    this.#statement = database.prepare(compiled.sql);
  }
  run(values) {
    return this.#statement.run(this.#bind(values));
  }
  get(values) {
    return this.#statement.get(this.#bind(values));
  }
  all(values) {
    return this.#statement.all(this.#bind(values));
  }
  #bind(values) {
    return this.#slots.map(
      (slot) => isPlaceholder(slot) ? values?.[slot.name] : slot.constant
    );
  }
};
var PreparedInsert = class {
  rows;
  #statement;
  constructor(database, query, options) {
    const compiled = query.compile();
    const expected = Array.from(
      { length: options.rows },
      (_, row) => options.columns.map((column) => `${column}#${row}`)
    ).flat();
    const actual = compiled.parameters.map((value) => isPlaceholder(value) ? value.name : "?");
    if (actual.join(",") !== expected.join(",")) {
      throw new Error(`Unexpected parameter layout in: ${compiled.sql}`);
    }
    this.rows = options.rows;
    this.#statement = database.prepare(compiled.sql);
  }
  /** Inserts `rows` rows from `values` (length `rows × columns`). */
  run(values) {
    return this.#statement.run(values);
  }
};

// src/schema.ts
var TABLES = Object.freeze({
  tasks: "finishline_tasks",
  events: "finishline_events",
  migrations: "finishline_migrations",
  meta: "finishline_meta",
  eventLog: "finishline_event_log",
  unprocessedEvents: "finishline_unprocessed_events"
});

// src/migrations.ts
var MIGRATIONS = Object.freeze([
  {
    version: 1,
    name: "create_tasks_and_events",
    statements: (builder) => [
      builder.schema.createTable(TABLES.tasks).addColumn("id", "text", (column) => column.primaryKey().notNull()).addColumn("owner", "text", (column) => column.notNull()).addColumn("kind", "text", (column) => column.notNull()).addColumn("status", "text", (column) => column.notNull()).addColumn("total", "integer").addColumn("done", "integer", (column) => column.notNull()).addColumn("succeeded", "integer", (column) => column.notNull()).addColumn("failed", "integer", (column) => column.notNull()).addColumn("current", "text").addColumn("message", "text").addColumn("result", "text").addColumn("error_code", "text").addColumn("error_message", "text").addColumn("seq", "integer", (column) => column.notNull()).addColumn("acked_seq", "integer", (column) => column.notNull()).addColumn("created_at", "integer", (column) => column.notNull()).addColumn("updated_at", "integer", (column) => column.notNull()).addColumn("finished_at", "integer").addColumn("lease_owner", "text").addColumn("lease_expires_at", "integer"),
      // listTasks: one owner's tasks, newest first.
      builder.schema.createIndex("finishline_tasks_owner_created").on(TABLES.tasks).columns(["owner", "created_at desc", "id desc"]),
      // reapExpiredLeases: only running tasks under a lease, oldest expiry first.
      builder.schema.createIndex("finishline_tasks_lease_expiry").on(TABLES.tasks).columns(["lease_expires_at", "id"]).where(import_kysely2.sql.ref("status"), "=", "running").where("lease_expires_at", "is not", null),
      // purgeFinished: only ended tasks, oldest first.
      builder.schema.createIndex("finishline_tasks_finished").on(TABLES.tasks).columns(["finished_at", "id"]).where(import_kysely2.sql.ref("status"), "<>", "running"),
      builder.schema.createTable(TABLES.events).addColumn("id", "integer", (column) => column.primaryKey().autoIncrement()).addColumn("task_id", "text", (column) => column.notNull()).addColumn("seq", "integer", (column) => column.notNull()).addColumn("type", "text", (column) => column.notNull()).addColumn("time", "integer", (column) => column.notNull()).addColumn("total", "integer").addColumn("done", "integer", (column) => column.notNull()).addColumn("succeeded", "integer", (column) => column.notNull()).addColumn("failed", "integer", (column) => column.notNull()).addColumn("current", "text").addColumn("message", "text").addColumn("payload", "text").addUniqueConstraint("finishline_events_task_seq", ["task_id", "seq"])
    ]
  },
  {
    version: 2,
    name: "create_operator_views",
    statements: (builder) => [
      builder.schema.createView(TABLES.eventLog).as(
        builder.selectFrom(`${TABLES.events} as e`).innerJoin(`${TABLES.tasks} as t`, "t.id", "e.task_id").select((eb) => [
          "e.task_id",
          "e.seq",
          "e.type",
          "e.time",
          eb("e.seq", "<=", eb.ref("t.acked_seq")).as("processed"),
          "t.owner",
          "t.kind",
          "t.status as task_status",
          "t.acked_seq",
          "e.payload"
        ])
      ),
      builder.schema.createView(TABLES.unprocessedEvents).as(
        builder.selectFrom(`${TABLES.events} as e`).innerJoin(`${TABLES.tasks} as t`, "t.id", "e.task_id").select([
          "e.task_id",
          "e.seq",
          "e.type",
          "e.time",
          "t.owner",
          "t.kind",
          "t.status as task_status",
          "t.acked_seq",
          "e.payload"
        ]).whereRef("e.seq", ">", "t.acked_seq")
      )
    ]
  },
  {
    version: 3,
    name: "create_meta_with_epoch",
    // The epoch is born with the schema: a new database file is a new epoch, and seqs of another file
    // mean nothing here. randomblob() keeps the DDL free of parameters.
    statements: (builder) => [
      builder.schema.createTable(TABLES.meta).addColumn("key", "text", (column) => column.primaryKey().notNull()).addColumn("value", "text", (column) => column.notNull()),
      builder.insertInto(TABLES.meta).values({ key: import_kysely2.sql.lit("epoch"), value: import_kysely2.sql`lower(hex(randomblob(16)))` })
    ]
  }
]);
var SQLITE_SCHEMA_VERSION = MIGRATIONS.length;
function migrate(database, builder, options) {
  const migrations = options.migrations ?? MIGRATIONS;
  const run = (query) => new PreparedQuery(database, query, []).run();
  const begin = database.prepare("BEGIN IMMEDIATE");
  const commit = database.prepare("COMMIT");
  begin.run();
  try {
    run(
      builder.schema.createTable(TABLES.migrations).ifNotExists().addColumn("version", "integer", (column) => column.primaryKey().notNull()).addColumn("name", "text", (column) => column.notNull()).addColumn("applied_at", "integer", (column) => column.notNull())
    );
    const rows = new PreparedQuery(
      database,
      builder.selectFrom(TABLES.migrations).select("version").orderBy("version"),
      []
    ).all();
    const applied = rows.map((row) => Number(row.version));
    if (applied.some((version, index) => version !== index + 1)) {
      throw new import_core.ProgressError(
        import_core.ErrorCode.Internal,
        `The ${TABLES.migrations} table records versions [${applied}], expected 1..n without gaps`
      );
    }
    if (applied.length > migrations.length) {
      throw new import_core.ProgressError(
        import_core.ErrorCode.StoreUnavailable,
        `The database has schema version ${applied.length}, newer than the ${migrations.length} this @finishline/sqlite knows; upgrade the package`
      );
    }
    const record = new PreparedQuery(
      database,
      builder.insertInto(TABLES.migrations).values({ version: param("version"), name: param("name"), applied_at: param("appliedAt") }),
      ["version", "name", "appliedAt"]
    );
    const done = [];
    for (const migration of migrations.slice(applied.length)) {
      for (const statement of migration.statements(builder)) run(statement);
      record.run({ version: migration.version, name: migration.name, appliedAt: options.now });
      done.push(migration.version);
    }
    commit.run();
    return done;
  } catch (error) {
    rollbackQuietly(database);
    throw error;
  }
}
function rollbackQuietly(database) {
  try {
    database.prepare("ROLLBACK").run();
  } catch {
  }
}

// src/sqlite-progress-store.ts
var import_core5 = require("@finishline/core");
var import_internal3 = require("@finishline/core/internal");
var import_better_sqlite3 = __toESM(require("better-sqlite3"), 1);
var import_kysely4 = require("kysely");

// src/data-version-watcher.ts
var DataVersionWatcher = class {
  #options;
  #timer;
  #version;
  constructor(options) {
    this.#options = options;
  }
  /** True while the timer runs. */
  get running() {
    return this.#timer !== void 0;
  }
  /** Starts polling; the current version is the baseline. No-op when already running. */
  start() {
    if (this.#timer !== void 0) return;
    this.#version = this.#options.readVersion();
    this.#timer = setInterval(() => this.check(), this.#options.intervalMs);
    this.#timer.unref();
  }
  /** Stops polling. Safe to call more than once. */
  stop() {
    if (this.#timer !== void 0) clearInterval(this.#timer);
    this.#timer = void 0;
  }
  /** Polls once now; returns whether the version changed (and `onChange` ran). */
  check() {
    try {
      const version = this.#options.readVersion();
      if (version === this.#version) return false;
      this.#version = version;
      this.#options.onChange();
      return true;
    } catch (error) {
      this.#options.onError(error);
      return false;
    }
  }
};

// src/group-commit.ts
var GroupCommitQueue = class {
  #maxBatchSize;
  #timing;
  #commit;
  #queue = [];
  /** Index of the first entry not yet taken; the array is compacted lazily to keep batching O(n). */
  #head = 0;
  #immediate;
  #microtaskPending = false;
  #committing = false;
  constructor(options) {
    this.#maxBatchSize = options.maxBatchSize;
    this.#timing = options.timing;
    this.#commit = options.commit;
  }
  /** Entries waiting for a commit. */
  get size() {
    return this.#queue.length - this.#head;
  }
  /** Queues `entry` and makes sure a commit is scheduled. */
  enqueue(entry) {
    this.#queue.push(entry);
    this.#schedule();
  }
  /**
   * Commits everything queued now, batch by batch. A no-op while a commit is already running (a
   * listener called from inside one): that commit's caller takes the rest afterwards.
   */
  flush() {
    while (this.size > 0 && !this.#committing) this.#commitOne();
  }
  /** Removes and returns the entries still queued, for their owner to settle (on close). */
  clear() {
    const rest = this.#queue.slice(this.#head);
    this.#queue = [];
    this.#head = 0;
    return rest;
  }
  /** Cancels the scheduled commit. Entries still queued stay queued; call `flush()` first. */
  cancel() {
    if (this.#immediate !== void 0) clearImmediate(this.#immediate);
    this.#immediate = void 0;
    this.#microtaskPending = false;
  }
  #schedule() {
    if (this.#immediate !== void 0 || this.#microtaskPending) return;
    if (this.#timing === "microtask") {
      this.#microtaskPending = true;
      queueMicrotask(() => {
        if (!this.#microtaskPending) return;
        this.#microtaskPending = false;
        this.#onScheduled();
      });
    } else {
      this.#immediate = setImmediate(() => {
        this.#immediate = void 0;
        this.#onScheduled();
      });
    }
  }
  #onScheduled() {
    if (this.#committing || this.size === 0) return;
    this.#commitOne();
    if (this.size > 0 && this.#immediate === void 0) {
      this.#immediate = setImmediate(() => {
        this.#immediate = void 0;
        this.#onScheduled();
      });
    }
  }
  #commitOne() {
    let batch;
    if (this.#head === 0 && this.#queue.length <= this.#maxBatchSize) {
      batch = this.#queue;
      this.#queue = [];
    } else {
      batch = this.#queue.slice(this.#head, this.#head + this.#maxBatchSize);
      this.#head += batch.length;
      if (this.#head === this.#queue.length) {
        this.#queue = [];
        this.#head = 0;
      } else if (this.#head * 2 > this.#queue.length) {
        this.#queue = this.#queue.slice(this.#head);
        this.#head = 0;
      }
    }
    this.#committing = true;
    try {
      this.#commit(batch);
    } finally {
      this.#committing = false;
    }
  }
};

// src/row-codec.ts
var import_core2 = require("@finishline/core");
var import_internal = require("@finishline/core/internal");
var EVENT_COLUMNS = [
  "task_id",
  "seq",
  "type",
  "time",
  "total",
  "done",
  "succeeded",
  "failed",
  "current",
  "message",
  "payload"
];
function pushEventValues(values, event) {
  const { progress } = event;
  values.push(
    event.taskId,
    event.seq,
    event.type,
    event.time,
    progress.total,
    progress.done,
    progress.succeeded,
    progress.failed,
    progress.current,
    progress.message,
    encodePayload(event)
  );
}
function encodePayload(event) {
  switch (event.type) {
    case "progress":
      return null;
    case "item":
      return JSON.stringify({
        key: event.item.key,
        ok: event.item.ok,
        error: event.item.error,
        detail: event.item.detail
      });
    case "completed":
      return JSON.stringify({ result: event.result });
    case "failed":
      return JSON.stringify({ code: event.error.code, message: event.error.message });
    case "cancelled":
    case "interrupted":
      return JSON.stringify({ reason: event.reason });
    default:
      (0, import_internal.exhaustive)(event, "event type");
  }
}
function taskToRow(task) {
  return {
    id: task.id,
    owner: task.owner,
    kind: task.kind,
    status: task.status,
    total: task.total,
    done: task.done,
    succeeded: task.succeeded,
    failed: task.failed,
    current: task.current,
    message: task.message,
    result: task.result === null ? null : JSON.stringify(task.result),
    error_code: task.error?.code ?? null,
    error_message: task.error?.message ?? null,
    seq: task.seq,
    acked_seq: task.ackedSeq,
    created_at: task.createdAt,
    updated_at: task.updatedAt,
    finished_at: task.finishedAt,
    lease_owner: task.leaseOwner,
    lease_expires_at: task.leaseExpiresAt
  };
}
var Reader = class {
  constructor(taskId, what) {
    this.taskId = taskId;
    this.what = what;
  }
  fail(column, detail, cause) {
    throw new import_core2.ProgressError(
      import_core2.ErrorCode.Internal,
      `Corrupt ${this.what} of task ${this.taskId} in SQLite: column ${column} ${detail}`,
      cause === void 0 ? { taskId: this.taskId } : { taskId: this.taskId, cause }
    );
  }
  int(value, column) {
    if (typeof value === "number" && Number.isSafeInteger(value)) return value;
    if (typeof value === "bigint" && value >= 0n && value <= BigInt(Number.MAX_SAFE_INTEGER)) {
      return Number(value);
    }
    return this.fail(column, `is not a safe integer (${String(value)})`);
  }
  intOrNull(value, column) {
    return value === null ? null : this.int(value, column);
  }
  text(value, column) {
    return typeof value === "string" ? value : this.fail(column, "is not text");
  }
  textOrNull(value, column) {
    return value === null ? null : this.text(value, column);
  }
  json(value, column) {
    const text = this.text(value, column);
    try {
      return JSON.parse(text);
    } catch (error) {
      return this.fail(column, "is not valid JSON", error);
    }
  }
  object(value, column) {
    const parsed = this.json(value, column);
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
      return this.fail(column, "is not a JSON object");
    }
    return parsed;
  }
};
function readProgress(reader, row) {
  return {
    total: reader.intOrNull(row.total, "total"),
    done: reader.int(row.done, "done"),
    succeeded: reader.int(row.succeeded, "succeeded"),
    failed: reader.int(row.failed, "failed"),
    current: reader.textOrNull(row.current, "current"),
    message: reader.textOrNull(row.message, "message")
  };
}
var STATUSES = new Set(import_core2.TASK_STATUSES);
function rowToTask(row) {
  const id = typeof row.id === "string" ? row.id : "(unreadable id)";
  const reader = new Reader(id, "row");
  const status = reader.text(row.status, "status");
  if (!STATUSES.has(status)) reader.fail("status", `holds unknown status ${JSON.stringify(status)}`);
  const errorCode = reader.textOrNull(row.error_code, "error_code");
  const errorMessage = reader.textOrNull(row.error_message, "error_message");
  if (errorCode === null !== (errorMessage === null)) {
    reader.fail("error_code", "and error_message must both be set or both be NULL");
  }
  const error = errorCode === null || errorMessage === null ? null : { code: errorCode, message: errorMessage };
  return {
    id: reader.text(row.id, "id"),
    owner: reader.text(row.owner, "owner"),
    kind: reader.text(row.kind, "kind"),
    status,
    ...readProgress(reader, row),
    result: row.result === null ? null : reader.json(row.result, "result"),
    error,
    seq: reader.int(row.seq, "seq"),
    ackedSeq: reader.int(row.acked_seq, "acked_seq"),
    createdAt: reader.int(row.created_at, "created_at"),
    updatedAt: reader.int(row.updated_at, "updated_at"),
    finishedAt: reader.intOrNull(row.finished_at, "finished_at"),
    leaseOwner: reader.textOrNull(row.lease_owner, "lease_owner"),
    leaseExpiresAt: reader.intOrNull(row.lease_expires_at, "lease_expires_at")
  };
}
function rowToEvent(row) {
  const taskId = typeof row.task_id === "string" ? row.task_id : "(unreadable id)";
  const reader = new Reader(taskId, `event ${String(row.seq)}`);
  const base = {
    taskId: reader.text(row.task_id, "task_id"),
    seq: reader.int(row.seq, "seq"),
    time: reader.int(row.time, "time"),
    progress: readProgress(reader, row)
  };
  const type = reader.text(row.type, "type");
  if (type === "progress") return { ...base, type };
  const payload = reader.object(row.payload, "payload");
  const field = (name, check, expected) => {
    const value = payload[name];
    return check(value) ? value : reader.fail("payload", `field ${name} is not ${expected}`);
  };
  if (type === "item") {
    return {
      ...base,
      type,
      item: {
        key: field("key", isString, "a string"),
        ok: field("ok", isBoolean, "a boolean"),
        error: field("error", isStringOrNull, "a string or null"),
        detail: field("detail", isJson, "present")
      }
    };
  }
  if (!(0, import_core2.isTerminalType)(type)) return reader.fail("type", `holds unknown type ${JSON.stringify(type)}`);
  switch (type) {
    case "completed":
      return { ...base, type, result: field("result", isJson, "present") };
    case "failed":
      return {
        ...base,
        type,
        error: { code: field("code", isString, "a string"), message: field("message", isString, "a string") }
      };
    case "cancelled":
      return { ...base, type, reason: field("reason", isStringOrNull, "a string or null") };
    case "interrupted":
      return { ...base, type, reason: field("reason", isString, "a string") };
    default: {
      const unreachable = type;
      return reader.fail("type", `holds unknown type ${String(unreachable)}`);
    }
  }
}
function isString(value) {
  return typeof value === "string";
}
function isStringOrNull(value) {
  return value === null || typeof value === "string";
}
function isBoolean(value) {
  return typeof value === "boolean";
}
function isJson(value) {
  return value !== void 0;
}

// src/sqlite-errors.ts
var import_core3 = require("@finishline/core");
var TRANSIENT = /^SQLITE_(BUSY|LOCKED|IOERR|FULL|CANTOPEN|READONLY|PROTOCOL|NOMEM|INTERRUPT)/;
function toProgressError(error, action) {
  if (error instanceof import_core3.ProgressError) return error;
  const code = error?.code;
  const message = error instanceof Error ? error.message : String(error);
  if (typeof code === "string" && TRANSIENT.test(code)) {
    return new import_core3.ProgressError(import_core3.ErrorCode.StoreUnavailable, `SQLite failed to ${action}: ${message}`, {
      cause: error
    });
  }
  if (error instanceof TypeError && /database connection is not open/i.test(message)) {
    return new import_core3.ProgressError(import_core3.ErrorCode.StoreUnavailable, `SQLite failed to ${action}: ${message}`, {
      cause: error
    });
  }
  return new import_core3.ProgressError(import_core3.ErrorCode.Internal, `SQLite failed to ${action}: ${message}`, { cause: error });
}

// src/sqlite-statements.ts
var import_kysely3 = require("kysely");
var EVENT_INSERT_ROWS = 32;
var APPEND_COLUMNS = [
  "status",
  "total",
  "done",
  "succeeded",
  "failed",
  "current",
  "message",
  "result",
  "error_code",
  "error_message",
  "seq",
  "updated_at",
  "finished_at",
  "lease_owner",
  "lease_expires_at"
];
var TASK_COLUMNS = [
  "id",
  "owner",
  "kind",
  ...APPEND_COLUMNS,
  "acked_seq",
  "created_at"
];
function placeholders(columns, suffix = "") {
  return Object.fromEntries(columns.map((column) => [column, param(`${column}${suffix}`)]));
}
function prepareStatements(database, builder) {
  const running = import_kysely3.sql.lit("running");
  const jsonIds = (name) => import_kysely3.sql`(select value from json_each(${param(name)}))`;
  const raw = (text) => database.prepare(text);
  return {
    // Transactions and pragmas have no kysely builder; they are constant text.
    begin: raw("BEGIN IMMEDIATE"),
    commit: raw("COMMIT"),
    dataVersion: raw("PRAGMA data_version"),
    selectTask: new PreparedQuery(
      database,
      builder.selectFrom(TABLES.tasks).selectAll().where("id", "=", param("id")),
      ["id"]
    ),
    selectTasks: new PreparedQuery(
      database,
      builder.selectFrom(TABLES.tasks).selectAll().where("id", "in", jsonIds("ids")),
      ["ids"]
    ),
    insertTask: new PreparedQuery(
      database,
      builder.insertInto(TABLES.tasks).values(placeholders(TASK_COLUMNS)).onConflict((conflict) => conflict.column("id").doNothing()),
      TASK_COLUMNS
    ),
    updateTaskAfterAppend: new PreparedQuery(
      database,
      builder.updateTable(TABLES.tasks).set(placeholders(APPEND_COLUMNS)).where("id", "=", param("id")),
      [...APPEND_COLUMNS, "id"]
    ),
    updateLease: new PreparedQuery(
      database,
      builder.updateTable(TABLES.tasks).set({ lease_owner: param("leaseOwner"), lease_expires_at: param("leaseExpiresAt") }).where("id", "=", param("id")),
      ["leaseOwner", "leaseExpiresAt", "id"]
    ),
    updateAckedSeq: new PreparedQuery(
      database,
      builder.updateTable(TABLES.tasks).set({ acked_seq: param("ackedSeq") }).where("id", "=", param("id")),
      ["ackedSeq", "id"]
    ),
    listTasks: new PreparedQuery(
      database,
      builder.selectFrom(TABLES.tasks).selectAll().where("owner", "=", param("owner")).orderBy("created_at", "desc").orderBy("id", "desc").limit(param("limit")),
      ["owner", "limit"]
    ),
    listTasksByStatus: new PreparedQuery(
      database,
      builder.selectFrom(TABLES.tasks).selectAll().where("owner", "=", param("owner")).where("status", "in", jsonIds("statuses")).orderBy("created_at", "desc").orderBy("id", "desc").limit(param("limit")),
      ["owner", "statuses", "limit"]
    ),
    latestSeqs: new PreparedQuery(
      database,
      builder.selectFrom(TABLES.tasks).select(["id", "seq"]).where("id", "in", jsonIds("ids")),
      ["ids"]
    ),
    expiredLeases: new PreparedQuery(
      database,
      builder.selectFrom(TABLES.tasks).selectAll().where("status", "=", running).where("lease_expires_at", "is not", null).where("lease_expires_at", "<=", param("now")).orderBy("lease_expires_at").orderBy("id").limit(param("limit")),
      ["now", "limit"]
    ),
    finishedBefore: new PreparedQuery(
      database,
      builder.selectFrom(TABLES.tasks).select("id").where("status", "<>", running).where("finished_at", "<=", param("cutoff")).orderBy("finished_at").orderBy("id").limit(param("limit")),
      ["cutoff", "limit"]
    ),
    deleteEventsOfTasks: new PreparedQuery(
      database,
      builder.deleteFrom(TABLES.events).where("task_id", "in", jsonIds("ids")),
      ["ids"]
    ),
    deleteTasks: new PreparedQuery(
      database,
      builder.deleteFrom(TABLES.tasks).where("id", "in", jsonIds("ids")),
      ["ids"]
    ),
    insertEvent: new PreparedInsert(
      database,
      builder.insertInto(TABLES.events).values(placeholders(EVENT_COLUMNS, "#0")),
      {
        columns: EVENT_COLUMNS,
        rows: 1
      }
    ),
    insertEvents: new PreparedInsert(
      database,
      builder.insertInto(TABLES.events).values(
        Array.from({ length: EVENT_INSERT_ROWS }, (_, row) => placeholders(EVENT_COLUMNS, `#${row}`))
      ),
      { columns: EVENT_COLUMNS, rows: EVENT_INSERT_ROWS }
    ),
    selectEvents: new PreparedQuery(
      database,
      builder.selectFrom(TABLES.events).select(EVENT_COLUMNS).where("task_id", "=", param("taskId")).where("seq", ">", param("afterSeq")).orderBy("seq").limit(param("limit")),
      ["taskId", "afterSeq", "limit"]
    ),
    eventsSince: new PreparedQuery(
      database,
      builder.selectFrom(TABLES.events).select(["id", "task_id", "seq", "type"]).where("id", ">", param("afterId")).orderBy("id").limit(param("limit")),
      ["afterId", "limit"]
    ),
    selectEpoch: new PreparedQuery(
      database,
      builder.selectFrom(TABLES.meta).select("value").where("key", "=", import_kysely3.sql.lit("epoch")),
      []
    ),
    updateEpoch: new PreparedQuery(
      database,
      builder.updateTable(TABLES.meta).set({ value: import_kysely3.sql`lower(hex(randomblob(16)))` }).where("key", "=", import_kysely3.sql.lit("epoch")),
      []
    ),
    maxEventId: new PreparedQuery(
      database,
      builder.selectFrom(TABLES.events).select((eb) => eb.fn.max("id").as("id")),
      []
    )
  };
}

// src/sqlite-store-options.ts
var import_core4 = require("@finishline/core");
var import_internal2 = require("@finishline/core/internal");
var SQLITE_STORE_DEFAULTS = Object.freeze({
  clock: import_core4.systemClock,
  synchronous: "normal",
  busyTimeoutMs: 5e3,
  dataVersionPollMs: 50,
  maxBatchSize: 1e3,
  onError: () => {
  }
});
var OPTION_NAMES = /* @__PURE__ */ new Set(["database", ...Object.keys(SQLITE_STORE_DEFAULTS)]);
var SYNCHRONOUS = /* @__PURE__ */ new Set(["normal", "full", "extra"]);
function invalid(message) {
  return (0, import_internal2.invalidOption)("SqliteProgressStore", message);
}
function checkInteger(name, value, min, max) {
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw invalid(`${name} must be an integer from ${min} to ${max}, got ${String(value)}`);
  }
}
function resolveSqliteStoreOptions(options) {
  if (typeof options !== "object" || options === null) throw invalid("options must be an object");
  for (const name of Object.keys(options)) {
    if (!OPTION_NAMES.has(name)) throw invalid(`unknown option "${name}"`);
  }
  const defined = Object.fromEntries(Object.entries(options).filter(([, value]) => value !== void 0));
  const resolved = { ...SQLITE_STORE_DEFAULTS, ...defined };
  const { database } = resolved;
  if (typeof database === "string") {
    if (database === "" || database.includes("\0")) throw invalid("database must be a non-empty path");
  } else if (typeof database !== "object" || database === null || typeof database.prepare !== "function") {
    throw invalid("database must be a file path or a better-sqlite3 Database");
  }
  if (typeof resolved.clock !== "function") throw invalid("clock must be a function");
  if (typeof resolved.onError !== "function") throw invalid("onError must be a function");
  if (!SYNCHRONOUS.has(resolved.synchronous)) {
    throw invalid(`synchronous must be 'normal', 'full' or 'extra', got ${String(resolved.synchronous)}`);
  }
  checkInteger("busyTimeoutMs", resolved.busyTimeoutMs, 0, 2147483647);
  checkInteger("dataVersionPollMs", resolved.dataVersionPollMs, 0, 36e5);
  checkInteger("maxBatchSize", resolved.maxBatchSize, 1, 1e5);
  return resolved;
}

// src/sqlite-progress-store.ts
var SYNCHRONOUS_PRAGMA = Object.freeze({
  normal: "PRAGMA synchronous = NORMAL",
  full: "PRAGMA synchronous = FULL",
  extra: "PRAGMA synchronous = EXTRA"
});
var CATCH_UP_PAGE = 1e3;
var SqliteProgressStore = class {
  #database;
  #ownsDatabase;
  #clock;
  #onError;
  #changes;
  #q;
  #appends;
  #watcher;
  /** Id of the newest event this store has published (or written). */
  #highWaterMark = 0;
  #outbox = [];
  #draining = false;
  #closed = false;
  /**
   * Opens (or adopts) the database, configures it (WAL, `synchronous`, `busy_timeout`), applies pending
   * migrations and starts watching for other processes' commits.
   *
   * @throws ProgressError `invalid_input` for bad options, `store_unavailable` when the database cannot
   * be opened or migrated.
   */
  constructor(options) {
    const resolved = resolveSqliteStoreOptions(options);
    this.#clock = resolved.clock;
    this.#onError = resolved.onError;
    this.#changes = new import_core5.LocalChangeFeed(resolved.onError);
    this.#ownsDatabase = typeof resolved.database === "string";
    const database = typeof resolved.database === "string" ? open(resolved.database, resolved.busyTimeoutMs) : resolved.database;
    let watcher;
    try {
      const builder = createQueryBuilder();
      configure(database, {
        synchronous: resolved.synchronous,
        busyTimeoutSql: import_kysely4.sql`PRAGMA busy_timeout = ${import_kysely4.sql.lit(resolved.busyTimeoutMs)}`.compile(builder).sql
      });
      migrate(database, builder, { now: this.#clock() });
      this.#q = prepareStatements(database, builder);
      if (resolved.dataVersionPollMs > 0 && database.memory !== true) {
        const dataVersion = this.#q.dataVersion;
        watcher = new DataVersionWatcher({
          intervalMs: resolved.dataVersionPollMs,
          readVersion: () => Number(dataVersion.get().data_version),
          onChange: () => this.#catchUp(),
          onError: (error) => this.#onError(toProgressError(error, "poll for other connections\u2019 commits"))
        });
        watcher.start();
      }
      this.#highWaterMark = this.#readMaxEventId();
    } catch (error) {
      watcher?.stop();
      if (this.#ownsDatabase) database.close();
      throw toProgressError(error, "open the database");
    }
    this.#watcher = watcher;
    this.#database = database;
    this.#appends = new GroupCommitQueue({
      maxBatchSize: resolved.maxBatchSize,
      timing: "immediate",
      commit: (batch) => this.#commitAppends(batch)
    });
  }
  /** Every committed event, this process's and (when polling) other processes' on the same file. */
  get changes() {
    return this.#changes;
  }
  createTask(input) {
    return this.#call("create a task", () => {
      const parsed = (0, import_internal3.parseCreateTaskInput)(input);
      this.#appends.flush();
      const id = parsed.id ?? globalThis.crypto.randomUUID();
      const task = (0, import_internal3.newTask)({ ...parsed, id }, this.#clock());
      const { changes } = this.#q.insertTask.run(taskToRow(task));
      if (Number(changes) === 0) {
        throw (0, import_internal3.taskAlreadyExists)(id);
      }
      return task;
    });
  }
  getTask(taskId) {
    return this.#call("read a task", () => {
      (0, import_internal3.assertTaskId)(taskId);
      this.#appends.flush();
      return this.#loadTask(taskId);
    });
  }
  getEpoch() {
    return this.#call("read the epoch", () => this.#readEpoch());
  }
  renewEpoch() {
    return this.#call("renew the epoch", () => {
      this.#q.updateEpoch.run();
      return this.#readEpoch();
    });
  }
  listTasks(query) {
    return this.#call("list tasks", () => {
      const { owner, statuses, limit } = (0, import_internal3.parseListTasksQuery)(query);
      this.#appends.flush();
      if (statuses !== void 0 && statuses.length === 0) return [];
      const rows = statuses === void 0 ? this.#q.listTasks.all({ owner, limit }) : this.#q.listTasksByStatus.all({ owner, statuses: JSON.stringify(statuses), limit });
      return rows.map((row) => rowToTask(row));
    });
  }
  append(taskId, input) {
    let parsed;
    try {
      this.#assertOpen();
      (0, import_internal3.assertTaskId)(taskId);
      parsed = detach((0, import_internal3.parseAppendInput)(input));
    } catch (error) {
      return Promise.reject(toProgressError(error, "append"));
    }
    return new Promise(
      (resolve, reject) => this.#appends.enqueue({ taskId, input: parsed, resolve, reject })
    );
  }
  readEvents(taskId, afterSeq, limit) {
    return this.#call("read events", () => {
      (0, import_internal3.assertTaskId)(taskId);
      (0, import_internal3.assertCount)(afterSeq, "afterSeq");
      const resolvedLimit = (0, import_internal3.parseReadLimit)(limit);
      this.#appends.flush();
      const rows = this.#q.selectEvents.all({ taskId, afterSeq, limit: resolvedLimit });
      if (rows.length === 0 && this.#q.selectTask.get({ id: taskId }) === void 0)
        throw (0, import_internal3.taskNotFound)(taskId);
      return rows.map((row) => rowToEvent(row));
    });
  }
  latestSeqs(taskIds) {
    return this.#call("read latest seqs", () => {
      const ids = (0, import_internal3.parseTaskIds)(taskIds);
      this.#appends.flush();
      const seqs = /* @__PURE__ */ new Map();
      if (ids.length === 0) return seqs;
      for (const row of this.#q.latestSeqs.all({ ids: JSON.stringify(ids) })) {
        seqs.set(String(row.id), Number(row.seq));
      }
      return seqs;
    });
  }
  ack(taskId, seq) {
    return this.#call("record an ack", () => {
      (0, import_internal3.assertTaskId)(taskId);
      (0, import_internal3.assertCount)(seq, "seq");
      this.#appends.flush();
      return this.#transaction(() => {
        const task = this.#requireTask(taskId);
        if (seq > task.seq) {
          throw new import_core5.ProgressError(
            import_core5.ErrorCode.InvalidInput,
            `Cannot ack seq ${seq} of task ${taskId}: its latest seq is ${task.seq}`,
            { taskId }
          );
        }
        if (seq <= task.ackedSeq) return task.ackedSeq;
        this.#q.updateAckedSeq.run({ id: taskId, ackedSeq: seq });
        return seq;
      });
    });
  }
  renewLease(taskId, owner, ttlMs) {
    return this.#call("renew a lease", () => {
      (0, import_internal3.assertTaskId)(taskId);
      const lease = (0, import_internal3.parseLeaseInput)({ owner, ttlMs });
      this.#appends.flush();
      return this.#transaction(() => {
        const task = (0, import_internal3.planLease)(this.#requireTask(taskId), lease.owner, lease.ttlMs, this.#clock());
        this.#q.updateLease.run({
          id: taskId,
          leaseOwner: task.leaseOwner,
          leaseExpiresAt: task.leaseExpiresAt
        });
        return task;
      });
    });
  }
  releaseLease(taskId, owner) {
    return this.#call("release a lease", () => {
      (0, import_internal3.assertTaskId)(taskId);
      (0, import_internal3.assertId)(owner, "lease owner");
      this.#appends.flush();
      this.#transaction(() => {
        const task = this.#requireTask(taskId);
        if (task.status === "running" && task.leaseOwner === owner) {
          this.#q.updateLease.run({ id: taskId, leaseOwner: null, leaseExpiresAt: null });
        }
      });
    });
  }
  reapExpiredLeases(options) {
    return this.#call("reap expired leases", () => {
      const { limit } = (0, import_internal3.parseReapOptions)(options);
      this.#appends.flush();
      const reaped = this.#transaction((log) => {
        const now = this.#clock();
        const results = [];
        for (const row of this.#q.expiredLeases.all({ now, limit })) {
          let task;
          try {
            task = rowToTask(row);
          } catch (error) {
            this.#onError(error);
            continue;
          }
          if (!(0, import_internal3.isLeaseExpired)(task, now)) continue;
          results.push((0, import_internal3.planAppend)(task, { type: "interrupted", reason: (0, import_internal3.leaseExpiredReason)(task) }, now));
        }
        this.#writeAppends(results, log);
        return results;
      });
      this.#drainOutbox();
      return reaped;
    });
  }
  purgeFinished(options) {
    return this.#call("purge finished tasks", () => {
      const { olderThanMs, limit } = (0, import_internal3.parsePurgeOptions)(options);
      this.#appends.flush();
      return this.#transaction(() => {
        const cutoff = this.#clock() - olderThanMs;
        const rows = this.#q.finishedBefore.all({ cutoff, limit });
        if (rows.length === 0) return 0;
        const ids = JSON.stringify(rows.map((row) => row.id));
        this.#q.deleteEventsOfTasks.run({ ids });
        this.#q.deleteTasks.run({ ids });
        return rows.length;
      });
    });
  }
  /**
   * Commits queued appends, stops polling and closes the database if the store opened it. Safe to call
   * more than once.
   */
  close() {
    if (this.#closed) return Promise.resolve();
    try {
      this.#appends.flush();
    } finally {
      this.#closed = true;
      this.#appends.cancel();
      for (const entry of this.#appends.clear()) entry.reject((0, import_internal3.storeClosed)());
      this.#watcher?.stop();
      if (this.#ownsDatabase) this.#database.close();
    }
    return Promise.resolve();
  }
  // ——— internals ———
  /** Runs `work` now (better-sqlite3 is synchronous) and maps whatever it throws to a ProgressError. */
  #call(action, work) {
    try {
      this.#assertOpen();
      return Promise.resolve(work());
    } catch (error) {
      return Promise.reject(toProgressError(error, action));
    }
  }
  #assertOpen() {
    if (this.#closed) throw (0, import_internal3.storeClosed)();
  }
  #loadTask(taskId) {
    const row = this.#q.selectTask.get({ id: taskId });
    return row === void 0 ? void 0 : rowToTask(row);
  }
  #requireTask(taskId) {
    const task = this.#loadTask(taskId);
    if (task === void 0) throw (0, import_internal3.taskNotFound)(taskId);
    return task;
  }
  /**
   * Runs `work` in a `BEGIN IMMEDIATE` transaction (the write lock is taken up front, so the
   * transaction never has to upgrade a read lock and fail with SQLITE_BUSY_SNAPSHOT). Before `work`, it
   * reads the events other connections committed past the high-water mark, so they are published before
   * this transaction's own. Changes go to the outbox only once the commit succeeded.
   */
  #transaction(work) {
    this.#q.begin.run();
    try {
      const log = { changes: [], lastEventId: this.#highWaterMark };
      this.#readEventsSince(log);
      const result = work(log);
      this.#q.commit.run();
      this.#highWaterMark = log.lastEventId;
      for (const change of log.changes) this.#outbox.push(change);
      return result;
    } catch (error) {
      rollbackQuietly(this.#database);
      throw error;
    }
  }
  /** Commits one batch of appends and settles each one. Never throws. */
  #commitAppends(batch) {
    const outcomes = new Array(batch.length);
    try {
      this.#transaction((log) => {
        const now = this.#clock();
        const tasks = this.#loadBatchTasks(batch);
        const planned = [];
        for (let index = 0; index < batch.length; index++) {
          const { taskId, input } = batch[index];
          const task = tasks.get(taskId);
          if (task instanceof import_core5.ProgressError) {
            outcomes[index] = task;
            continue;
          }
          try {
            const result = (0, import_internal3.planAppend)(task, input, now);
            tasks.set(taskId, result.task);
            planned.push(result);
            outcomes[index] = result;
          } catch (error) {
            outcomes[index] = toProgressError(error, "append");
          }
        }
        this.#writeAppends(planned, log);
      });
    } catch (error) {
      const failure = toProgressError(error, "commit appends");
      for (const entry of batch) entry.reject(failure);
      return;
    }
    this.#drainOutbox();
    for (let index = 0; index < batch.length; index++) {
      const outcome = outcomes[index];
      const entry = batch[index];
      if (outcome instanceof import_core5.ProgressError) entry.reject(outcome);
      else entry.resolve(outcome);
    }
  }
  /**
   * The rows of every task a batch appends to, read in one statement (a batch spread over many tasks
   * would otherwise pay one call per task). A missing or damaged row becomes that task's error.
   */
  #loadBatchTasks(batch) {
    const ids = /* @__PURE__ */ new Set();
    for (const { taskId } of batch) ids.add(taskId);
    const rows = ids.size === 1 ? [this.#q.selectTask.get({ id: batch[0].taskId })] : this.#q.selectTasks.all({ ids: JSON.stringify([...ids]) });
    const tasks = /* @__PURE__ */ new Map();
    for (const row of rows) {
      if (row === void 0) continue;
      const id = String(row.id);
      try {
        tasks.set(id, rowToTask(row));
      } catch (error) {
        tasks.set(id, toProgressError(error, "read a task"));
      }
    }
    for (const id of ids) if (!tasks.has(id)) tasks.set(id, (0, import_internal3.taskNotFound)(id));
    return tasks;
  }
  /** Inserts the events of `results` in order and writes each touched task's final row once. */
  #writeAppends(results, log) {
    if (results.length === 0) return;
    const finalTasks = /* @__PURE__ */ new Map();
    const { insertEvents, insertEvent } = this.#q;
    const values = [];
    let index = 0;
    let lastId = log.lastEventId;
    for (; index + EVENT_INSERT_ROWS <= results.length; index += EVENT_INSERT_ROWS) {
      values.length = 0;
      for (let row = index; row < index + EVENT_INSERT_ROWS; row++)
        pushEventValues(values, results[row].event);
      lastId = Number(insertEvents.run(values).lastInsertRowid);
    }
    for (; index < results.length; index++) {
      values.length = 0;
      pushEventValues(values, results[index].event);
      lastId = Number(insertEvent.run(values).lastInsertRowid);
    }
    for (const { event, task } of results) {
      finalTasks.set(task.id, task);
      log.changes.push(
        Object.freeze({ taskId: event.taskId, seq: event.seq, terminal: (0, import_core5.isTerminalType)(event.type) })
      );
    }
    for (const task of finalTasks.values()) this.#q.updateTaskAfterAppend.run(taskToRow(task));
    log.lastEventId = lastId;
  }
  /** Adds the events committed past `log.lastEventId` (by other connections) to `log`. */
  #readEventsSince(log) {
    for (; ; ) {
      const rows = this.#q.eventsSince.all({ afterId: log.lastEventId, limit: CATCH_UP_PAGE });
      for (const row of rows) {
        log.changes.push(
          Object.freeze({ taskId: row.task_id, seq: Number(row.seq), terminal: (0, import_core5.isTerminalType)(row.type) })
        );
        log.lastEventId = Number(row.id);
      }
      if (rows.length < CATCH_UP_PAGE) return;
    }
  }
  /** Publishes what other connections committed since the high-water mark (called by the watcher). */
  #catchUp() {
    if (this.#closed) return;
    const log = { changes: [], lastEventId: this.#highWaterMark };
    this.#readEventsSince(log);
    this.#highWaterMark = log.lastEventId;
    for (const change of log.changes) this.#outbox.push(change);
    this.#drainOutbox();
  }
  /**
   * Publishes queued changes in order. A listener that writes (and so commits and queues more changes)
   * only adds to the outbox: the outermost drain delivers everything, still in commit order.
   */
  #drainOutbox() {
    if (this.#draining) return;
    this.#draining = true;
    try {
      for (let index = 0; index < this.#outbox.length; index++) this.#changes.publish(this.#outbox[index]);
    } finally {
      this.#outbox = [];
      this.#draining = false;
    }
  }
  #readEpoch() {
    const row = this.#q.selectEpoch.get();
    if (row === void 0) throw new import_core5.ProgressError(import_core5.ErrorCode.Internal, "The store has no epoch row");
    return row.value;
  }
  #readMaxEventId() {
    const row = this.#q.maxEventId.get();
    return row?.id == null ? 0 : Number(row.id);
  }
};
function detach(input) {
  if (input.type === "item" && typeof input.detail === "object" && input.detail !== null) {
    return { ...input, detail: structuredClone(input.detail) };
  }
  if (input.type === "completed" && typeof input.result === "object" && input.result !== null) {
    return { ...input, result: structuredClone(input.result) };
  }
  return input;
}
function open(path, busyTimeoutMs) {
  try {
    return new import_better_sqlite3.default(path, { timeout: busyTimeoutMs });
  } catch (error) {
    throw new import_core5.ProgressError(
      import_core5.ErrorCode.StoreUnavailable,
      `Cannot open SQLite database ${JSON.stringify(path)}: ${error instanceof Error ? error.message : String(error)}`,
      { cause: error }
    );
  }
}
function configure(database, options) {
  database.prepare(options.busyTimeoutSql).get();
  if (database.memory !== true) {
    const row = database.prepare("PRAGMA journal_mode = WAL").get();
    if (row?.journal_mode?.toLowerCase() !== "wal") {
      throw new import_core5.ProgressError(
        import_core5.ErrorCode.StoreUnavailable,
        `SQLite refused WAL mode (journal_mode is ${String(row?.journal_mode)})`
      );
    }
  }
  database.prepare(SYNCHRONOUS_PRAGMA[options.synchronous]).run();
}
// Annotate the CommonJS export names for ESM import in node:
0 && (module.exports = {
  SQLITE_SCHEMA_VERSION,
  SQLITE_STORE_DEFAULTS,
  SqliteProgressStore,
  TABLES
});
