import { Generated } from 'kysely';
import { Clock, ProgressStore, ChangeFeed, CreateTaskInput, Task, ListTasksQuery, AppendInput, AppendResult, TaskEvent, ReapOptions, PurgeOptions } from '@finishline/core';

/**
 * The tables and views of the SQLite store, as kysely types. The schema itself is created only by
 * `migrations.ts`; these types let kysely check the store's queries against it.
 *
 * Column names are snake_case; integers are SQLite `INTEGER` (64-bit), times epoch milliseconds from the
 * store's injected clock, JSON columns `TEXT` holding `JSON.stringify` output.
 *
 * @module
 */
/** One row per task: the snapshot a watcher that knows nothing can be brought up to date from. */
interface TasksTable {
    id: string;
    owner: string;
    kind: string;
    /** `running`, `completed`, `failed`, `cancelled` or `interrupted`. */
    status: string;
    total: number | null;
    done: number;
    succeeded: number;
    failed: number;
    current: string | null;
    message: string | null;
    /** JSON of the `completed` result; `NULL` for none. */
    result: string | null;
    /** `TaskFailure.code`; `NULL` unless the task failed, was cancelled or interrupted. */
    error_code: string | null;
    error_message: string | null;
    /** Seq of the last event. */
    seq: number;
    /** Highest seq a watcher acknowledged: events with `seq <= acked_seq` are processed. */
    acked_seq: number;
    created_at: number;
    updated_at: number;
    finished_at: number | null;
    lease_owner: string | null;
    lease_expires_at: number | null;
}
/**
 * The event log. `id` is an `AUTOINCREMENT` rowid: SQLite admits one writer at a time and never reuses
 * an `AUTOINCREMENT` id, so id order is commit order and a reader can follow every commit, including
 * other processes', with a high-water mark.
 */
interface EventsTable {
    id: Generated<number>;
    task_id: string;
    seq: number;
    type: string;
    time: number;
    /** The task's progress after the event. */
    total: number | null;
    done: number;
    succeeded: number;
    failed: number;
    current: string | null;
    message: string | null;
    /**
     * JSON of the type's own fields: `{key, ok, error, detail}` for `item`, `{result}` for `completed`,
     * `{code, message}` for `failed`, `{reason}` for `cancelled` and `interrupted`; `NULL` for `progress`.
     */
    payload: string | null;
}
/** Applied migrations, one row per version. */
interface MigrationsTable {
    version: number;
    name: string;
    applied_at: number;
}
/** Store-wide values, one row per key: `epoch` (created with the schema, replaced by `renewEpoch`). */
interface MetaTable {
    key: string;
    value: string;
}
/** Operator view: every event with its task and a `processed` flag (1 once a watcher acked it). */
interface EventLogView {
    task_id: string;
    seq: number;
    type: string;
    time: number;
    processed: number;
    owner: string;
    kind: string;
    task_status: string;
    acked_seq: number;
    payload: string | null;
}
/** Operator view: the events no watcher acknowledged yet (`seq > acked_seq`). */
type UnprocessedEventsView = Omit<EventLogView, 'processed'>;
/** The whole schema, for `Kysely<SqliteSchema>`. */
interface SqliteSchema {
    finishline_tasks: TasksTable;
    finishline_events: EventsTable;
    finishline_migrations: MigrationsTable;
    finishline_meta: MetaTable;
    finishline_event_log: EventLogView;
    finishline_unprocessed_events: UnprocessedEventsView;
}
/** Table and view names, in one place. */
declare const TABLES: Readonly<{
    readonly tasks: "finishline_tasks";
    readonly events: "finishline_events";
    readonly migrations: "finishline_migrations";
    readonly meta: "finishline_meta";
    readonly eventLog: "finishline_event_log";
    readonly unprocessedEvents: "finishline_unprocessed_events";
}>;

/**
 * The parts of better-sqlite3 the store calls, described structurally (as kysely describes its drivers)
 * so that neither the store's types nor its callers are tied to one better-sqlite3 version. A
 * better-sqlite3 `Database` satisfies {@link SqliteDatabase} as it is; so does a thin wrapper, which is
 * how the tests count transactions.
 *
 * @module
 */
/** What `Statement.run` returns. */
interface SqliteRunResult {
    /** Rows inserted, updated or deleted. */
    changes: number | bigint;
    /** Rowid of the last inserted row. */
    lastInsertRowid: number | bigint;
}
/**
 * A prepared statement. The store always passes its positional parameters as one array, which
 * better-sqlite3 binds in order, and calls no other method.
 */
interface SqliteStatement {
    /** Executes a statement that returns no rows. */
    run(...parameters: unknown[]): SqliteRunResult;
    /** The first row, or `undefined`. */
    get(...parameters: unknown[]): unknown;
    /** Every row. */
    all(...parameters: unknown[]): unknown[];
}
/**
 * A synchronous SQLite connection, for example `new Database(path)` from better-sqlite3.
 *
 * @example
 * ```ts
 * import Database from 'better-sqlite3';
 * import { SqliteProgressStore } from '@finishline/sqlite';
 *
 * const database = new Database('progress.db');
 * const store = new SqliteProgressStore({ database });
 * // …
 * await store.close(); // leaves `database` open: the store closes only what it opened
 * database.close();
 * ```
 */
interface SqliteDatabase {
    /** Compiles one SQL statement. */
    prepare(sql: string): SqliteStatement;
    /** Closes the connection. Called only on databases the store opened itself. */
    close(): unknown;
    /**
     * True for an in-memory database. No other connection can write to one, so the store does not poll
     * it for other processes' commits. Treated as `false` when absent.
     */
    readonly memory?: boolean;
}

/** The schema version this release creates. */
declare const SQLITE_SCHEMA_VERSION: number;

/**
 * SQLite's `synchronous` setting in WAL mode — what a commit survives:
 * - `normal`: a commit survives the process crashing (it is in the WAL, handed to the OS), but an OS
 *   crash or power loss may undo the last transactions before the next checkpoint. The database is
 *   never corrupted. No fsync per commit.
 * - `full`: the WAL is fsynced at every commit, so a commit also survives power loss. Group commit pays
 *   that fsync once per batch, not per append.
 * - `extra`: like `full`, and also syncs the directory after the WAL is reset.
 */
type SqliteSynchronous = 'normal' | 'full' | 'extra';
/** Options of {@link SqliteProgressStore}. */
interface SqliteProgressStoreOptions {
    /**
     * A file path (or `':memory:'`), which the store opens with better-sqlite3 and closes in `close()`;
     * or a better-sqlite3 `Database` you opened, which the store configures (WAL, `synchronous`,
     * `busy_timeout`) and migrates but never closes. Required.
     */
    database: string | SqliteDatabase;
    /**
     * Source of every timestamp (creation, events, lease expiry, retention age). Tests pass
     * `ManualClock.now`. All processes sharing a file should use the same clock source.
     * @default systemClock (`Date.now`)
     */
    clock?: Clock;
    /**
     * Durability of each commit; see {@link SqliteSynchronous}. `normal` loses nothing when the process
     * dies, only (possibly) the last commits when the machine does.
     * @default 'normal'
     */
    synchronous?: SqliteSynchronous;
    /**
     * How long a write waits for another connection's write lock before failing with `store_unavailable`,
     * in milliseconds. better-sqlite3 waits synchronously: keep other writers' transactions short.
     * @default 5000
     */
    busyTimeoutMs?: number;
    /**
     * How often to poll `PRAGMA data_version` for commits by other processes (or other stores in this
     * process) on the same file, in milliseconds; their events are then published on `changes`. `0` turns
     * polling off. In-memory databases are never polled: no other connection can write to them.
     * @default 50
     */
    dataVersionPollMs?: number;
    /**
     * Most appends committed in one transaction. Appends queued beyond it are committed in the next
     * transaction, one event-loop turn later, so a flood cannot block the loop for long.
     * @default 1000
     */
    maxBatchSize?: number;
    /**
     * Receives what a change listener throws and what goes wrong while polling for other processes'
     * commits (the store keeps working either way). Use it to log.
     * @default ignores the error
     */
    onError?: (error: unknown) => void;
}
/** The defaults of {@link SqliteProgressStoreOptions}, merged once at construction. */
declare const SQLITE_STORE_DEFAULTS: Readonly<Required<Omit<SqliteProgressStoreOptions, 'database'>>>;

/**
 * A {@link ProgressStore} on SQLite (better-sqlite3, WAL), for one machine: one process, or several
 * processes sharing a database file.
 *
 * - **Group commit.** Appends issued in the same event-loop turn are committed in one transaction, each
 *   planned by the shared `planAppend` in call order, so a task's seq stays gap-free; an append that is
 *   rejected (unknown task, task already finished) rejects only its own promise.
 * - **Call order.** Every other method first commits the appends queued before it, so operations take
 *   effect in the order they were called, as with the in-memory store; a read sees every earlier write.
 * - **Change feed.** Local commits are published right after they commit. Commits by other connections
 *   to the same file are found by polling `PRAGMA data_version` and read from the event log past a
 *   high-water mark (the `AUTOINCREMENT` event id, which SQLite's single writer makes commit order), so
 *   every event, from any process, is published once and in order.
 * - **Leases.** Reaping reads and interrupts expired tasks inside one `BEGIN IMMEDIATE` transaction;
 *   SQLite serializes writers, so two stores on one file never interrupt a task twice.
 *
 * better-sqlite3 is synchronous: each method does its SQLite work before returning its promise.
 *
 * @example
 * ```ts
 * import { SqliteProgressStore } from '@finishline/sqlite';
 *
 * const store = new SqliteProgressStore({ database: 'progress.db' });
 * const task = await store.createTask({ owner: 'alice', kind: 'batch_taint', total: 1 });
 * await store.append(task.id, { type: 'item', key: 'node-1', ok: true });
 * await store.append(task.id, { type: 'completed' });
 * await store.close();
 * ```
 */
declare class SqliteProgressStore implements ProgressStore {
    #private;
    /**
     * Opens (or adopts) the database, configures it (WAL, `synchronous`, `busy_timeout`), applies pending
     * migrations and starts watching for other processes' commits.
     *
     * @throws ProgressError `invalid_input` for bad options, `store_unavailable` when the database cannot
     * be opened or migrated.
     */
    constructor(options: SqliteProgressStoreOptions);
    /** Every committed event, this process's and (when polling) other processes' on the same file. */
    get changes(): ChangeFeed;
    createTask(input: CreateTaskInput): Promise<Task>;
    getTask(taskId: string): Promise<Task | undefined>;
    getEpoch(): Promise<string>;
    renewEpoch(): Promise<string>;
    listTasks(query: ListTasksQuery): Promise<Task[]>;
    append(taskId: string, input: AppendInput): Promise<AppendResult>;
    readEvents(taskId: string, afterSeq: number, limit?: number): Promise<TaskEvent[]>;
    latestSeqs(taskIds: readonly string[]): Promise<Map<string, number>>;
    ack(taskId: string, seq: number): Promise<number>;
    renewLease(taskId: string, owner: string, ttlMs: number): Promise<Task>;
    releaseLease(taskId: string, owner: string): Promise<void>;
    reapExpiredLeases(options?: ReapOptions): Promise<AppendResult[]>;
    purgeFinished(options: PurgeOptions): Promise<number>;
    /**
     * Commits queued appends, stops polling and closes the database if the store opened it. Safe to call
     * more than once.
     */
    close(): Promise<void>;
}

export { type EventLogView, type EventsTable, type MigrationsTable, SQLITE_SCHEMA_VERSION, SQLITE_STORE_DEFAULTS, type SqliteDatabase, SqliteProgressStore, type SqliteProgressStoreOptions, type SqliteRunResult, type SqliteSchema, type SqliteStatement, type SqliteSynchronous, TABLES, type TasksTable, type UnprocessedEventsView };
