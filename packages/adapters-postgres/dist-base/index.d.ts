import { ColumnType, Generated, Kysely, PostgresPool } from 'kysely';
import { ProgressError, ChangeFeed, ChangeListener, Unsubscribe, Clock, ProgressStore, CreateTaskInput, Task, ListTasksQuery, AppendInput, AppendResult, TaskEvent, ReapOptions, PurgeOptions } from '@finishline/core';
import { BackoffOptions } from '@finishline/core/internal';

/**
 * The payloads the store sends with `pg_notify` on its channel. They carry ids only, never an event's
 * content: a receiver reads the events from the table, so a payload stays small whatever the events
 * hold — at most {@link NOTIFY_PAYLOAD_BUDGET_BYTES}, an eighth of Postgres's 8000-byte limit.
 *
 * - Changes: `[["<taskId>",3,5,0],["<taskId>",1,1,1]]` — per task, the seqs `firstSeq..seq` it gained in
 *   the transaction and whether `seq` is terminal (1) or not (0). A group commit that touches many tasks
 *   packs several into one payload: each notification costs Postgres and every listener far more than
 *   its bytes, so fewer, fuller ones keep the feed cheap at tens of thousands of appends per second.
 * - A barrier: `{"barrier":"<listener id>","xmin":"<xid8>"}` — sent by a listener to itself to advance
 *   its high-water mark (see `postgres-change-feed.ts`).
 *
 * @module
 */
/** Postgres rejects a `NOTIFY` payload of 8000 bytes or more. */
declare const PG_NOTIFY_PAYLOAD_LIMIT_BYTES = 8000;
/** A task that gained the committed seqs `firstSeq..seq` in one transaction. */
interface ChangeNotice {
    taskId: string;
    firstSeq: number;
    seq: number;
    /** True when `seq` is the task's terminal event. */
    terminal: boolean;
}
/** The most bytes of one change payload; changes beyond it go into another notification. */
declare const NOTIFY_PAYLOAD_BUDGET_BYTES = 1000;

/**
 * The Postgres change feed as subscribers see it: the publication of changes to local subscribers,
 * exactly once per `(taskId, seq)` per process, whichever path reported them first — this store's own
 * commits, `NOTIFY` and the re-read of the `LISTEN` connection (`listen-connection.ts`), or the
 * safety-net poll (`safety-net-poll.ts`). Those paths report into {@link ChangeFeedHub}; the store
 * exposes {@link StoreChangeFeed}, which reads health and counters from each part without the parts
 * knowing of one another.
 *
 * @module
 */
/** The state of the `LISTEN` connection, for health checks. */
interface ChangeFeedHealth {
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
interface ChangeFeedStats {
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
interface PostgresChangeFeed extends ChangeFeed {
    subscribe(listener: ChangeListener): Unsubscribe;
    follow(taskId: string): Unsubscribe;
    /** Ids of the tasks followed now (what the safety-net poll asks about). */
    followedTaskIds(): string[];
    health(): ChangeFeedHealth;
    stats(): ChangeFeedStats;
}

/**
 * Kysely table types of the Postgres store. Every table lives in the configured schema
 * (`finishline` by default); queries reach it through `db.withSchema(schema)`.
 *
 * Times are epoch milliseconds in `int8` columns because they come from the store's injected clock,
 * not from the database's `now()` (so tests drive lease expiry with a manual clock, and replicas with
 * skewed clocks still agree on what one task's times mean). The operator view converts them.
 *
 * @module
 */
/**
 * An `int8` column. `pg` returns `int8` as a string unless the caller installed a type parser, so reads
 * accept every representation and the store converts with `Number()` (values never exceed
 * `Number.MAX_SAFE_INTEGER`: inputs are validated against `LIMITS.maxCount`).
 */
type Int8 = ColumnType<string | number | bigint, number, number>;
/** A nullable {@link Int8}. */
type NullableInt8 = ColumnType<string | number | bigint | null, number | null, number | null>;
/** A `json` column: written as JSON text, read as whatever the pool's type parser returns. */
type Json = ColumnType<unknown, string, string>;
/** A nullable {@link Json} column. */
type NullableJson = ColumnType<unknown, string | null, string | null>;
/** `<schema>.tasks`: one row per task, the snapshot a watcher can be brought up to date from. */
interface TasksTable {
    id: string;
    owner: string;
    kind: string;
    /** `running`, `completed`, `failed`, `cancelled` or `interrupted` (checked by a constraint). */
    status: string;
    total: NullableInt8;
    done: Int8;
    succeeded: Int8;
    failed: Int8;
    current: string | null;
    message: string | null;
    /** The `completed` event's result, JSON; `NULL` for none. */
    result: NullableJson;
    error_code: string | null;
    error_message: string | null;
    /** Seq of the last event; 0 before the first. */
    seq: Int8;
    /** Highest seq acknowledged by a watcher; events with `seq <= acked_seq` are processed. */
    acked_seq: Int8;
    created_at: Int8;
    updated_at: Int8;
    finished_at: NullableInt8;
    lease_owner: string | null;
    lease_expires_at: NullableInt8;
}
/** `<schema>.events`: the immutable event log, keyed by `(task_id, seq)`. */
interface EventsTable {
    task_id: string;
    seq: Int8;
    type: string;
    time: Int8;
    /** The event without `taskId`, `seq`, `type` and `time` (its `progress`, `item`, `result`, …), JSON. */
    body: Json;
    /**
     * `pg_current_xact_id()` of the writing transaction. The change feed re-reads from a snapshot's
     * `xmin` after a reconnect: unlike a serial id, it never skips a transaction that committed late.
     */
    xid: Generated<string>;
}
/** `<schema>.unprocessed_events`: the operator view of events no watcher acknowledged yet. */
interface UnprocessedEventsView {
    task_id: string;
    seq: Int8;
    type: string;
    time: Date;
    owner: string;
    kind: string;
    task_status: string;
    acked_seq: Int8;
    body: unknown;
}
/** The tables and views of one store schema, for `Kysely<ProgressDatabase>`. */
interface ProgressDatabase {
    tasks: TasksTable;
    events: EventsTable;
    unprocessed_events: UnprocessedEventsView;
}

/**
 * The dedicated `LISTEN` connection of a store: it connects, listens, re-reads what was committed while
 * it was away, advances its high-water mark by barriers, and reconnects with full-jitter backoff. Every
 * statement it runs is built here, next to the code that runs it. What it finds goes to the feed's
 * {@link ChangeFeedHub}, which publishes each change once.
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
interface PgNotification {
    channel: string;
    payload?: string | undefined;
}
/**
 * The part of a `pg.Client` the `LISTEN` connection calls. A dedicated client, never one from the pool:
 * a pooled connection would be handed to other queries between notifications.
 */
interface PgListenClient {
    connect(): Promise<unknown>;
    query(text: string, values?: unknown[]): Promise<{
        rows: unknown[];
    }>;
    end(): Promise<unknown>;
    on(event: 'notification', listener: (message: PgNotification) => void): unknown;
    on(event: 'error', listener: (error: Error) => void): unknown;
    on(event: 'end', listener: () => void): unknown;
    /** The backend's process id once connected (`pg` sets it); reported in {@link ChangeFeedHealth}. */
    readonly processID?: number | null | undefined;
}

/**
 * Versioned migrations of the store's schema, applied with kysely's `Migrator` (one transaction, an
 * advisory lock so replicas starting together do not race, and a record of each applied version in
 * `<schema>.migrations`). A migration, once published, is never edited: changes come as new versions.
 *
 * @module
 */
/**
 * What a schema name may look like: lower-case letters, digits and `_`, starting with a letter or `_`,
 * at most 48 characters (so the derived channel name stays under Postgres's 63-byte identifier limit),
 * and not `pg_…` (reserved by Postgres). The schema name is the only identifier the store puts into SQL
 * text, which is why it is this strict.
 */
declare const SCHEMA_NAME_PATTERN: RegExp;
/** Throws `invalid_input` unless `schema` matches {@link SCHEMA_NAME_PATTERN} and is not `pg_…`. */
declare function assertSchemaName(schema: unknown): asserts schema is string;
/**
 * The `LISTEN`/`NOTIFY` channel of a schema's change feed. Derived from the schema so that two stores in
 * one database (for example one schema per environment) never hear each other.
 */
declare function changeChannel(schema: string): string;
/** The table in which applied migrations are recorded (inside the store's schema). */
declare const MIGRATION_TABLE = "migrations";
/** The migration names this version of the package knows, in order. */
declare const MIGRATION_NAMES: readonly string[];
/** Options of {@link migrateProgressSchema}. */
interface MigrateOptions {
    /** The schema to create or upgrade. @default 'finishline' */
    schema?: string;
}
/**
 * Creates `schema` if needed and applies every migration it lacks, in one transaction. Safe to call
 * from several replicas at once. Returns the names of the migrations it applied (empty when up to date).
 *
 * @throws ProgressError `invalid_input` for a bad schema name; `store_unavailable` (with the cause) when
 * the database fails or already holds a migration this package does not know (a newer version ran).
 *
 * @example
 * ```ts
 * import pg from 'pg';
 * import { Kysely, PostgresDialect } from 'kysely';
 * import { migrateProgressSchema } from '@finishline/postgres';
 *
 * const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL });
 * const db = new Kysely({ dialect: new PostgresDialect({ pool }) });
 * await migrateProgressSchema(db, { schema: 'finishline' });
 * ```
 */
declare function migrateProgressSchema(db: Kysely<unknown>, options?: MigrateOptions): Promise<string[]>;

/** Counters of the append pipeline since the store opened. */
interface AppendStats {
    /** Appends committed (events written), reaped interruptions included. */
    appends: number;
    /** Append transactions committed. */
    batches: number;
    /** Most appends committed by one transaction. */
    largestBatch: number;
    /** Append transactions that failed (their appends rejected, or retried one by one after a data error). */
    failedBatches: number;
}

/**
 * The part of a `pg.Pool` the store uses: kysely's `PostgresPool` (`connect`, `end` — the store never
 * calls `end`), plus what it reads to build its dedicated `LISTEN` client the way the pool builds its
 * own: the pool's `options` and its `Client` class (both present on every `pg.Pool`).
 */
interface PgPool extends PostgresPool {
    readonly options?: object;
    readonly Client?: new (config: object) => PgListenClient;
}
/**
 * Where the `LISTEN` connection comes from: a connection string or a `pg.Client` config (the store
 * creates a `pg.Client` with it for each (re)connect), or a factory returning a new, unconnected client.
 */
type ListenClientSource = string | Readonly<Record<string, unknown>> | (() => PgListenClient | Promise<PgListenClient>);
/** Options of `PostgresProgressStore.open`. Give exactly one of `pool` and `db`. */
interface PostgresProgressStoreOptions {
    /**
     * The caller's `pg.Pool`. The store builds a Kysely with `PostgresDialect` on it, and never ends it.
     * @default undefined (then `db` is required)
     */
    pool?: PgPool;
    /**
     * A Kysely instance on Postgres to use instead of `pool`. The store never destroys it. With `db`, the
     * store cannot see the pool's settings, so `listenClient` is required.
     * @default undefined (then `pool` is required)
     */
    db?: Kysely<any>;
    /**
     * The schema holding the store's tables; also names its `NOTIFY` channel (`<schema>_changes`).
     * 1–48 lower-case letters, digits and `_`, starting with a letter or `_`, not `pg_…`.
     * @default 'finishline'
     */
    schema?: string;
    /**
     * Create or upgrade the schema when opening (safe with several replicas opening at once). Turn it off
     * when migrations run as a deployment step (`migrateProgressSchema`).
     * @default true
     */
    migrate?: boolean;
    /**
     * Source of every timestamp the store writes (creation, events, lease expiry, retention age). The
     * database's `now()` is never used, so tests drive leases with a manual clock.
     * @default systemClock (`Date.now`)
     */
    clock?: Clock;
    /**
     * Where the dedicated `LISTEN` connection comes from.
     * @default a new client of the pool's own `Client` class with the pool's options (plus
     * `application_name: 'finishline-listen'` and `keepAlive: true` unless the options set them)
     */
    listenClient?: ListenClientSource;
    /**
     * Interval of the safety-net poll, which asks about followed tasks only, in milliseconds.
     * @default 500
     */
    pollIntervalMs?: number;
    /**
     * How often the `LISTEN` connection advances its high-water mark (one tiny query and a self-addressed
     * notification), in milliseconds. Shorter means a smaller re-read after a reconnect. The same query is
     * a liveness check: unanswered for 5 intervals (at least 1 s), the connection is replaced.
     * @default 1000
     */
    watermarkIntervalMs?: number;
    /**
     * Backoff of the `LISTEN` connection's reconnects (full jitter).
     * @default { initialDelayMs: 250, maxDelayMs: 10000, multiplier: 2 }
     */
    reconnect?: BackoffOptions;
    /**
     * Most appends committed in one transaction (group commit: appends that arrive while a transaction is
     * in flight are committed together by the next one).
     * @default 500
     */
    maxBatchSize?: number;
    /**
     * Most append transactions in flight at once (each holds a pool connection). A transaction beyond the
     * first starts only with at least a quarter of `maxBatchSize` appends waiting. Appends to one task never
     * run in two at once, so their order is the order of the calls.
     * @default 2
     */
    maxConcurrentBatches?: number;
    /**
     * Most acks written by one statement. Acks that arrive in the same tick (and while an ack statement
     * is in flight) are written together, one statement at a time, so acks take one pool connection and
     * lock their task rows in the same order as append transactions.
     * @default 1000
     */
    maxAckBatchSize?: number;
    /**
     * Receives background failures: a lost `LISTEN` connection, a failed poll. The store keeps working
     * (reconnecting, polling again); this hook is for logs and alerts.
     * @default ignores the error
     */
    onError?: (error: ProgressError) => void;
    /**
     * Receives what a change listener throws. Listeners must not throw; this hook exists so a faulty one
     * can be logged instead of disturbing others.
     * @default ignores the error
     */
    onListenerError?: (error: unknown) => void;
}
/** The defaults of {@link PostgresProgressStoreOptions}. */
declare const POSTGRES_STORE_DEFAULTS: Readonly<{
    schema: "finishline";
    migrate: true;
    clock: Clock;
    pollIntervalMs: 500;
    watermarkIntervalMs: 1000;
    reconnect: Readonly<Required<BackoffOptions>>;
    maxBatchSize: 500;
    maxConcurrentBatches: 2;
    maxAckBatchSize: 1000;
    onError: (_error: ProgressError) => void;
    onListenerError: (_error: unknown) => void;
}>;

/** Counters of the append pipeline since the store opened. */
interface PostgresStoreStats extends AppendStats {
    /** Ack statements run (each writes every ack of one flush; see `maxAckBatchSize`). */
    ackBatches: number;
}
/**
 * A {@link ProgressStore} on Postgres (kysely + pg).
 *
 * - **Appends** lock the task row (`SELECT … FOR UPDATE`), plan the event with the shared pure
 *   transitions, and write the snapshot, the event and a `pg_notify` in one transaction, so a task's
 *   `seq` is gap-free under any number of writers in any number of processes. Appends that arrive while a
 *   transaction is in flight are committed together by the next one (group commit), in call order per
 *   task; see `append-pipeline.ts`. Acks are batched likewise (`ack-batcher.ts`).
 * - **Changes** of this store's own commits are published right after the commit; other processes'
 *   arrive by `NOTIFY` on a dedicated `LISTEN` connection that re-reads what it missed after every
 *   reconnect (`listen-connection.ts`); a safety-net poll asks about followed tasks only. See
 *   {@link PostgresChangeFeed}.
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
declare class PostgresProgressStore implements ProgressStore {
    #private;
    /**
     * Opens a store: validates the options, applies migrations (unless `migrate: false`), connects the
     * `LISTEN` connection and starts the safety-net poll.
     *
     * @throws ProgressError `invalid_input` for bad options; `store_unavailable` when the database cannot
     * be reached or migrated.
     */
    static open(options: PostgresProgressStoreOptions): Promise<PostgresProgressStore>;
    /**
     * Not callable: a store must migrate and connect before use, which a constructor cannot await.
     *
     * @throws ProgressError `invalid_input` pointing to {@link PostgresProgressStore.open} when called
     * directly (from JavaScript, or TypeScript past a cast).
     */
    private constructor();
    /** The change feed: own commits, `NOTIFY` from other processes, re-reads and the safety-net poll. */
    get changes(): PostgresChangeFeed;
    /** The schema this store works in. */
    get schema(): string;
    /** Counters of the append pipeline (see {@link PostgresStoreStats}). */
    stats(): PostgresStoreStats;
    /**
     * Runs the safety-net poll now instead of waiting for its timer; resolves when it finished. For tests
     * and for servers that want an immediate check (for example right after a reconnect).
     */
    pollNow(): Promise<void>;
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
     * Waits for the appends already accepted, then stops the poll and the `LISTEN` connection. Never ends
     * the caller's pool or Kysely instance. Later calls reject with `closed`; calling it twice is harmless.
     */
    close(): Promise<void>;
}

export { type ChangeFeedHealth, type ChangeFeedStats, type ChangeNotice, type EventsTable, type Int8, type Json, type ListenClientSource, MIGRATION_NAMES, MIGRATION_TABLE, type MigrateOptions, NOTIFY_PAYLOAD_BUDGET_BYTES, type NullableInt8, type NullableJson, PG_NOTIFY_PAYLOAD_LIMIT_BYTES, POSTGRES_STORE_DEFAULTS, type PgListenClient, type PgNotification, type PgPool, type PostgresChangeFeed, PostgresProgressStore, type PostgresProgressStoreOptions, type PostgresStoreStats, type ProgressDatabase, SCHEMA_NAME_PATTERN, type TasksTable, type UnprocessedEventsView, assertSchemaName, changeChannel, migrateProgressSchema };
