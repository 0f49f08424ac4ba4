import type {
  AppendInput,
  AppendResult,
  Clock,
  CreateTaskInput,
  ListTasksQuery,
  ProgressStore,
  PurgeOptions,
  ReapOptions,
  RunFence,
  Task,
  TaskEvent,
} from '@finishline/core';
import { ErrorCode, isProgressError, ProgressError } from '@finishline/core';
import {
  assertCount,
  assertId,
  assertTaskId,
  describeThrown,
  guardHook,
  newTask,
  parseAppendInput,
  parseCreateTaskInput,
  parseFenceOwner,
  parseLeaseInput,
  parseListTasksQuery,
  parsePurgeOptions,
  parseReadLimit,
  parseReapOptions,
  parseRunFence,
  parseTaskIds,
  runGone,
  storeClosed,
  taskAlreadyExists,
  taskNotFound,
} from '@finishline/core/internal';
import { Kysely, PostgresDialect, type QueryResult, type RawBuilder, sql } from 'kysely';
import { type AckCall, ackStatement, writeAcks } from './ack-statement.js';
import { AppendPipeline, AppendStatements, type AppendStats, type AppendTarget } from './append-pipeline.js';
import { settlesWithin } from './bounded-end.js';
import { ConnectionGate } from './connection-gate.js';
import { type GuardedPool, guardedPool } from './guarded-pool.js';
import {
  DATABASE_CLOCK,
  type LeaseCall,
  RELEASE_LOCK_WAIT_MS,
  reapExpiredLeases,
  releaseLease,
  renewLeases,
} from './lease-statements.js';
import { ListenConnection } from './listen-connection.js';
import { runStatement } from './locking-transaction.js';
import { changeChannel, migrateProgressSchema } from './migrations.js';
import { isDatabaseError, LOCK_NOT_AVAILABLE, readOnLiveConnection, toProgressError } from './pg-errors.js';
import { ChangeFeedHub, type PostgresChangeFeed, StoreChangeFeed } from './postgres-change-feed.js';
import {
  type PgPool,
  type PostgresProgressStoreOptions,
  type ResolvedStoreOptions,
  resolveStoreOptions,
} from './postgres-store-options.js';
import { int, intColumn, toEvent, toTask } from './row-codec.js';
import { type LatestState, SafetyNetPoll } from './safety-net-poll.js';
import type { ProgressDatabase } from './schema.js';
import { type BatchedCall, StatementBatcher } from './statement-batcher.js';
import {
  insertTask,
  listTasks,
  type PurgeTarget,
  purgeFinished,
  readTasks,
  renewEpoch,
  selectEpoch,
  TaskReads,
} from './task-statements.js';

/**
 * The Postgres `ProgressStore`: opening, the store methods, and the wiring of its append pipeline, ack
 * batcher and change feed.
 *
 * @module
 */

/** The first wait before an ack or renewal whose row another transaction held is asked again (then doubling). */
/** The `code` of the process warning that says the store's `onError` threw (the first time). */
export const ON_ERROR_THREW_WARNING = 'FINISHLINE_POSTGRES_ON_ERROR_THREW';

const LOCKED_FIRST_RETRY_MS = 50;
/** The longest wait between two asks of such an ack or renewal. */
const LOCKED_MAX_RETRY_MS = 1000;

/** Counters of the append pipeline since the store opened. */
export interface PostgresStoreStats extends AppendStats {
  /** Ack statements run, failed ones included (each writes every ack of one flush; see `maxAckBatchSize`). */
  ackBatches: number;
  /** Lease-renewal transactions run, failed ones included (each renews the leases of one flush; up to `maxBatchSize`). */
  renewalBatches: number;
  /** Task-read statements run, failed ones included (each reads the tasks of one flush's `getTask` calls; up to `maxBatchSize`). */
  taskReadBatches: number;
}

/**
 * Task-read statements in flight at once: as many as the subscribes of a few ticks need, and few enough to
 * leave most of a default pool (10 connections) to appends and acks.
 */
const TASK_READS_IN_FLIGHT = 4;

/**
 * Renewal batches in flight at once. Two, so that a renewal whose query hangs (a connection that died
 * without the driver noticing) does not hold back the one the lease keeper sends beside it half an interval
 * later: one at a time, the new one queued behind it and every lease of the replica expired while its
 * workers ran. Two batches do not deadlock (each locks its rows in id order), and the second skips the rows
 * the first holds, then waits for them a bounded time (see `renewLeases`).
 */
const RENEWALS_IN_FLIGHT = 2;

/** Proves a construction came from {@link PostgresProgressStore.open}. */
/** The most damaged rows a store remembers having reported from `listTasks` (then it forgets them all). */
const REPORTED_ROWS_MAX = 1000;

const OPENING = Symbol('PostgresProgressStore.open');

/**
 * A {@link ProgressStore} on Postgres (kysely + pg).
 *
 * - **Appends** lock the task row (`SELECT … FOR UPDATE`), plan the event with the shared pure
 *   transitions, and write the snapshot, the event and a `pg_notify` in one transaction, so a task's
 *   `seq` is gap-free under any number of writers in any number of processes. Appends that arrive while a
 *   transaction is in flight are committed together by the next one (group commit), in call order per
 *   task; see `append-pipeline.ts`. Acks are batched likewise (`ack-statement.ts`), and so are lease
 *   renewals (`lease-statements.ts`) and task reads (`readTasks`, `task-statements.ts`): the calls of
 *   one I/O phase in one round trip or transaction.
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
export class PostgresProgressStore implements ProgressStore {
  readonly #options: ResolvedStoreOptions;
  readonly #db: Kysely<ProgressDatabase>;
  /** The caller's pool as the store uses it; `undefined` when the caller gave `db`. */
  readonly #pool: GuardedPool | undefined;
  readonly #clock: Clock;
  /** The caller's `onError`, guarded: one that throws is reported once as a process warning. */
  readonly #onError: (error: ProgressError) => void;
  /** The damaged rows `listTasks` left out and reported, each once (cleared at {@link REPORTED_ROWS_MAX}). */
  readonly #reportedRows = new Set<string>();
  readonly #schema: string;
  /** The schema's `meta` table (the epoch). */
  readonly #meta: RawBuilder<unknown>;
  readonly #target: AppendTarget;
  readonly #purgeTarget: PurgeTarget;
  readonly #hub: ChangeFeedHub;
  readonly #feed: StoreChangeFeed;
  readonly #listener: ListenConnection;
  readonly #poll: SafetyNetPoll;
  readonly #appendStatements: AppendStatements;
  readonly #reads: TaskReads;
  /** `getTask` calls of one I/O phase, read in one statement (subscribes come in bursts, per task). */
  readonly #taskReads: StatementBatcher<string, Task | undefined>;
  readonly #appends: AppendPipeline;
  readonly #acks: StatementBatcher<AckCall, number>;
  readonly #renewals: StatementBatcher<LeaseCall, Task>;
  /** Where every call takes its connection (see `connection-gate.ts`), and so `close()` stops those still waiting. */
  readonly #gate = new ConnectionGate();
  /** Acks and renewals waiting to be asked again (see `#later`), by timer: `close()` ends them at once. */
  readonly #retries = new Map<ReturnType<typeof setTimeout>, { reject(error: unknown): void }>();
  #closed = false;
  /** A renewal of the epoch after lost commits is in flight (see `#wentBack`). */
  #renewingAfterLoss = false;
  /** The next try of a renewal after lost commits that failed (see `#wentBack`): `close()` clears it. */
  #renewalRetry: ReturnType<typeof setTimeout> | undefined;
  #closing: Promise<void> | undefined;
  /** The read-back of an epoch notice in flight (see {@link #epochNoticed}). */
  #epochCheck: Promise<void> | undefined;
  /** Another epoch notice came while {@link #epochCheck} ran: one more read follows it. */
  #epochCheckAgain = false;

  /**
   * Opens a store: validates the options, applies migrations (unless `migrate: false`), connects the
   * `LISTEN` connection and starts the safety-net poll.
   *
   * @throws ProgressError `invalid_input` for bad options; `store_unavailable` when the database cannot
   * be reached or migrated, or its encoding cannot hold every text (a database not in UTF-8: see the README).
   */
  static async open(options: PostgresProgressStoreOptions): Promise<PostgresProgressStore> {
    // `this`, not the class's name: a class that names itself in its body is bundled as
    // `class _PostgresProgressStore`, and that was its `name` (`console.log`, stack frames, loggers).
    const store = new this(OPENING, resolveStoreOptions(options));
    await store.#start();
    return store;
  }

  /**
   * Not callable: a store must migrate and connect before use, which a constructor cannot await.
   *
   * @throws ProgressError `invalid_input` pointing to {@link PostgresProgressStore.open} when called
   * directly (from JavaScript, or TypeScript past a cast).
   */
  private constructor(opening: typeof OPENING, options: ResolvedStoreOptions) {
    if (opening !== OPENING) {
      throw new ProgressError(
        ErrorCode.InvalidInput,
        'PostgresProgressStore: use `await PostgresProgressStore.open(options)`, not `new PostgresProgressStore()`: opening migrates the schema and connects, which a constructor cannot wait for',
      );
    }
    this.#options = options;
    this.#clock = options.clock;
    this.#schema = options.schema;
    this.#meta = sql.id(options.schema, 'meta');
    // Without the caller's plugins: they may rewrite result rows (CamelCasePlugin renames task_id to taskId,
    // ParseJSONResultsPlugin parses the JSON the store selects as text), which the store's raw statements
    // read by their own column names and types.
    this.#pool =
      options.db === undefined
        ? guardedPool(options.pool as PgPool, { preparedStatements: options.preparedStatements })
        : undefined;
    this.#db =
      options.db?.withoutPlugins() ??
      new Kysely<ProgressDatabase>({ dialect: new PostgresDialect({ pool: this.#pool as GuardedPool }) });
    const channel = changeChannel(options.schema);
    this.#target = {
      tasks: sql.id(this.#schema, 'tasks'),
      events: sql.id(this.#schema, 'events'),
      channel,
    };
    this.#purgeTarget = { ...this.#target, purged: sql.id(this.#schema, 'purged'), meta: this.#meta };
    // The caller's logging hook: one that throws must not stop what called it (a reconnect not
    // scheduled, the poll or the barriers stopped for good), nor reach pg's socket handlers as an uncaught
    // exception. (`onListenerError` is guarded where it is called, in the hub's feed.)
    const onError = guardHook(options.onError, (thrown, error) =>
      process.emitWarning(
        `@finishline/postgres: the store's onError threw (${describeThrown(thrown)}) while reporting: ${error.message}. Later throws of this store's onError are ignored.`,
        { type: 'FinishlineWarning', code: ON_ERROR_THREW_WARNING },
      ),
    );
    this.#onError = onError;
    this.#hub = new ChangeFeedHub(
      options.clock,
      options.onListenerError,
      (taskId, seq, publishedSeq) => this.#wentBack(taskId, seq, publishedSeq),
      (error) =>
        onError(toProgressError(error, "Reading the store's clock failed as a task's end was published")),
    );
    this.#listener = new ListenConnection({
      hub: this.#hub,
      db: this.#db,
      channel,
      events: this.#target.events,
      tasks: this.#target.tasks,
      purged: this.#purgeTarget.purged,
      meta: this.#meta,
      epochNoticed: () => this.#epochNoticed(),
      createClient: options.createListenClient,
      watermarkIntervalMs: options.watermarkIntervalMs,
      connectTimeoutMs: options.listenConnectTimeoutMs,
      reconnect: options.reconnect,
      clock: options.clock,
      onError,
    });
    this.#poll = new SafetyNetPoll({
      hub: this.#hub,
      intervalMs: options.pollIntervalMs,
      readLatest: (taskIds) => this.#readLatest(taskIds),
      rereading: () => this.#listener.rereading(),
      onError,
    });
    this.#feed = new StoreChangeFeed({ hub: this.#hub, listener: this.#listener, poll: this.#poll });
    this.#appendStatements = new AppendStatements(this.#db, this.#target);
    this.#appends = new AppendPipeline({
      db: this.#db,
      gate: this.#gate,
      statements: this.#appendStatements,
      clock: options.clock,
      maxBatchSize: options.maxBatchSize,
      maxConcurrentBatches: options.maxConcurrentBatches,
      // Ordered after a re-read in flight, with the notifications it holds (see "Purges" in
      // `listen-connection.ts`); expectCommit need not be: it only holds notifications back.
      publish: (change) => this.#listener.afterReread(() => this.#hub.publishCommitted(change)),
      expectCommit: (taskId, seq) => this.#hub.expectCommit(taskId, seq),
      settled: (taskIds) => this.#listener.afterReread(() => this.#hub.settled(taskIds)),
    });
    this.#reads = new TaskReads(this.#db, this.#target);
    const reads = this.#reads;
    // Reads lock nothing: a few batches at once, so one slow read does not hold up the next ticks' subscribes.
    this.#taskReads = new StatementBatcher(
      (batch) => readTasks(this.#gate, this.#db, reads, batch, this.#isClosed),
      options.maxBatchSize,
      TASK_READS_IN_FLIGHT,
    );
    const acks = ackStatement(this.#db, this.#target.tasks);
    this.#acks = new StatementBatcher(
      (batch) =>
        this.#gated('ack', batch, (db) =>
          writeAcks(db, acks, batch, (call) => this.#later(this.#acks, call)),
        ),
      options.maxAckBatchSize,
    );
    this.#renewals = new StatementBatcher(
      (batch) =>
        this.#gated('renewLease', batch, (db) =>
          renewLeases(db, this.#target, options.leaseClock, batch, (call) =>
            this.#later(this.#renewals, call),
          ),
        ),
      options.maxBatchSize,
      RENEWALS_IN_FLIGHT,
    );
  }

  /**
   * A batcher's `write` of `batch`, on a connection taken through the gate. `write` settles every call and
   * never rejects; the connection it did not get (the database refused it, or `close()` shut the gate
   * meanwhile) rejects them all, as `what`.
   */
  #gated<I extends { taskId: string }, O>(
    what: string,
    batch: BatchedCall<I, O>[],
    write: (db: Kysely<ProgressDatabase>) => Promise<void>,
  ): Promise<void> {
    return this.#gate.run(this.#db, write).catch((error: unknown) => {
      const taskIds = new Set(batch.map((call) => call.input.taskId));
      const failure = toProgressError(error, what, taskIds.size === 1 ? batch[0]?.input.taskId : undefined);
      for (const call of batch) call.reject(failure);
    });
  }

  async #start(): Promise<void> {
    if (this.#options.migrate) {
      await migrateProgressSchema(this.#db as Kysely<unknown>, { schema: this.#schema });
    }
    await this.#listener.start();
    // What a renewal after lost commits starts from (see `#wentBack`); notices, and the LISTEN connection's
    // read at every (re)connect, keep it current from here (that read usually set it already).
    // Not overwritten: a renewal heard during the read is newer than what the read saw.
    // A failed read leaves it to the first renewal to read it.
    const read = await this.#read('getEpoch', selectEpoch(this.#meta)).catch(() => undefined);
    this.#hub.knownEpoch ??= read?.rows[0]?.value;
    this.#poll.start();
  }

  /** The change feed: own commits, `NOTIFY` from other processes, re-reads and the safety-net poll. */
  get changes(): PostgresChangeFeed {
    return this.#feed;
  }

  /** The schema this store works in. */
  get schema(): string {
    return this.#schema;
  }

  /** Counters of the append pipeline (see {@link PostgresStoreStats}). */
  stats(): PostgresStoreStats {
    return {
      ...this.#appends.stats(),
      ackBatches: this.#acks.batches,
      renewalBatches: this.#renewals.batches,
      taskReadBatches: this.#taskReads.batches,
    };
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
    // Without a clock of the caller's, the run (createdAt) and the lease start at the database's time (see
    // `insertTask` and the `clock` option).
    const databaseClock =
      this.#options.leaseClock === DATABASE_CLOCK ? { leaseTtlMs: parsed.lease?.ttlMs } : undefined;
    const inserted = await this.#query('createTask', id, insertTask(this.#target, task, databaseClock));
    const row = inserted.rows[0];
    if (row === undefined) {
      throw taskAlreadyExists(id);
    }
    if (databaseClock !== undefined) {
      task.createdAt = task.updatedAt = int(row.created_at);
      task.leaseExpiresAt = row.lease_expires_at === null ? null : int(row.lease_expires_at);
    }
    // A copy: the caller owns the returned object, and may change it.
    this.#appends.created({ ...task });
    this.#listener.afterReread(() => this.#hub.resetTask(id));
    return task;
  }

  getTask(taskId: string): Promise<Task | undefined> {
    try {
      this.#assertOpen();
      assertTaskId(taskId);
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#taskReads.enqueue(taskId);
  }

  async getEpoch(): Promise<string> {
    this.#assertOpen();
    const { rows } = await this.#read('getEpoch', selectEpoch(this.#meta));
    const row = rows[0];
    // Migration 0002 inserts the row; a schema without it was altered by hand.
    if (row === undefined) throw new ProgressError(ErrorCode.Internal, 'The store has no epoch row');
    this.#hub.knownEpoch = row.value;
    return row.value;
  }

  /**
   * Commits the appends called before it first (call order): committed after the epoch row, an append
   * called before the renewal reached every listener after it, and a server that had read the new epoch
   * took that old-epoch event for one of the new epoch. Appends whose row another transaction holds are
   * waited for too, as they are tried again.
   */
  async renewEpoch(): Promise<string> {
    this.#assertOpen();
    await this.#appends.settledBefore();
    this.#assertOpen();
    const { rows } = await this.#query('renewEpoch', undefined, renewEpoch(this.#meta, this.#target.channel));
    const row = rows[0];
    if (row === undefined) throw new ProgressError(ErrorCode.Internal, 'The store has no epoch row');
    // Told here: the notice this store hears of its own renewal finds the epoch it knows already.
    this.#hub.epochRenewed(row.value);
    return row.value;
  }

  /**
   * A notice on the channel said the epoch was renewed: read it back, and report a renewal (setting the epoch
   * known) only if the epoch read differs from the one known. Any role that can connect may `NOTIFY` on the
   * channel; taken at its word, a notice made every listener of `onEpochRenewed` think the epoch changed, and
   * kept its value as the epoch known (a renewal after lost commits, which starts from it, was then skipped,
   * and the next reconnect reported another renewal). One read at a time: the notices that come during it
   * share one read after it. A read that fails reports the notice as a hint alone (the server reads the epoch
   * itself). When the epoch known changed during the read (this store renewed it, `getEpoch`, a reconnect's
   * read), the read may be older than that change: it is dropped, and the epoch read once more.
   */
  #epochNoticed(): void {
    if (this.#closed) return;
    if (this.#epochCheck !== undefined) {
      this.#epochCheckAgain = true;
      return;
    }
    const writes = this.#hub.epochWrites;
    const known = this.#hub.knownEpoch;
    this.#epochCheck = this.#read('getEpoch', selectEpoch(this.#meta))
      .then(
        ({ rows }) => {
          const epoch = rows[0]?.value;
          if (this.#closed || epoch === undefined) return;
          if (this.#hub.epochWrites !== writes) this.#epochCheckAgain = true;
          else if (epoch !== known) this.#hub.epochRenewed(epoch);
        },
        () => {
          if (!this.#closed) this.#hub.epochRenewed();
        },
      )
      .finally(() => {
        this.#epochCheck = undefined;
        if (!this.#epochCheckAgain) return;
        this.#epochCheckAgain = false;
        this.#epochNoticed();
      });
  }

  /**
   * The change feed heard `taskId` end at `seq`, at or below the seq `publishedSeq` it had published of it
   * as running (or below its published end): the database went back under the store, losing commits whose
   * changes were published (a failover to an asynchronous standby, a restore without `renewEpoch()`), and
   * the task's worker appended again over the lost seqs. Every server's watchers hold what was lost, and
   * every task may have lost commits: that is a restore, so the store renews the epoch, as the operator
   * would after one. From the epoch it knows (read, renewed or heard of last), and only if the epoch was
   * not renewed since the end's transaction (see `renewEpoch` in `task-statements.ts`), so that the
   * replicas that heard the same change renew it once; reported on `onError` (`internal`, with the task).
   */
  #wentBack(taskId: string, seq: number, publishedSeq: number, failures = 0): void {
    if (this.#closed || this.#renewingAfterLoss) return;
    this.#renewingAfterLoss = true;
    const renew = async (): Promise<string | undefined> => {
      const from = this.#hub.knownEpoch ?? (await this.getEpoch());
      const { rows } = await this.#query(
        'renewEpoch',
        undefined,
        renewEpoch(this.#meta, this.#target.channel, from, {
          events: this.#target.events,
          taskId,
          seq,
        }),
      );
      // Told here: the notice this store hears of its own renewal finds the epoch it knows already.
      if (rows[0] !== undefined) this.#hub.epochRenewed(rows[0].value);
      return rows[0]?.value;
    };
    void renew()
      .then(
        (epoch) =>
          this.#onError(
            new ProgressError(
              ErrorCode.Internal,
              `The change feed heard task ${taskId} end at seq ${seq}, after it had published seqs up to ${publishedSeq} of it: the database lost commits (a failover to a standby that lacked them, or a restore without renewEpoch()). ${epoch === undefined ? 'Another process renewed the store epoch first' : 'The store epoch was renewed'}, so every watcher starts over from the store.`,
              { taskId },
            ),
          ),
        (error: unknown) => {
          if (this.#closed) return;
          // The feed will not tell this task again (it remembers the end now): tried again until it is
          // renewed, the failure reported once.
          if (failures === 0)
            this.#onError(toProgressError(error, 'Renewing the store epoch after lost commits failed'));
          this.#renewalRetry = setTimeout(
            () => this.#wentBack(taskId, seq, publishedSeq, failures + 1),
            1000,
          );
          this.#renewalRetry.unref?.();
        },
      )
      .finally(() => {
        this.#renewingAfterLoss = false;
      });
  }

  async listTasks(query: ListTasksQuery): Promise<Task[]> {
    this.#assertOpen();
    const parsed = parseListTasksQuery(query);
    if (parsed.statuses !== undefined && parsed.statuses.length === 0) return [];
    const damaged = new Map<string, unknown>();
    let tasks: Task[] = [];
    // A damaged row (see toTask) is left out, not the whole list: one row edited by hand denied its owner
    // every list. Its place goes to the next task, so the list still holds the `limit` newest readable
    // tasks: the query runs again for as many more rows as it left out (those read before come again,
    // first). Each run that left rows out reads more than the last, so the loop ends with the owner's rows.
    for (let read = parsed.limit; ; ) {
      const statement = listTasks(this.#target, { ...parsed, limit: read });
      const { rows } = await this.#run('listTasks', undefined, () =>
        readOnLiveConnection(
          () => this.#gate.read(this.#db, (db) => runStatement(db, statement)),
          this.#isClosed,
        ),
      );
      tasks = [];
      for (const row of rows) {
        try {
          tasks.push(toTask(row));
        } catch (error) {
          damaged.set(row.id, error);
        }
      }
      if (tasks.length >= parsed.limit || rows.length < read) break;
      read = parsed.limit + (rows.length - tasks.length);
    }
    for (const [taskId, error] of damaged) this.#reportSkippedRow(taskId, error);
    return tasks.slice(0, parsed.limit);
  }

  /**
   * Reports a damaged row `listTasks` left out, once per row and store: a list asked for every few seconds
   * must not flood the log with the same row.
   */
  #reportSkippedRow(
    taskId: string,
    error: unknown,
    what = 'listTasks left the task out of its lists (getTask of it fails with this error)',
  ): void {
    const key = `${what}\0${taskId}`;
    if (this.#reportedRows.has(key)) return;
    if (this.#reportedRows.size >= REPORTED_ROWS_MAX) this.#reportedRows.clear();
    this.#reportedRows.add(key);
    this.#onError(
      new ProgressError(
        ErrorCode.Internal,
        `${describeThrown(error)}; ${what} until the row is repaired or purged`,
        { cause: error, taskId },
      ),
    );
  }

  append(taskId: string, input: AppendInput, options?: RunFence): Promise<AppendResult> {
    let parsed: AppendInput;
    let run: number | undefined;
    let owner: string | undefined;
    try {
      this.#assertOpen();
      assertTaskId(taskId);
      // The parse copies `detail` and `result`: the pipeline writes them later, and the caller may change
      // its objects once we return.
      parsed = parseAppendInput(input);
      run = parseRunFence(options);
      owner = parseFenceOwner(options);
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#appends.enqueue(taskId, parsed, run, owner);
  }

  async readEvents(taskId: string, afterSeq: number, limit?: number): Promise<TaskEvent[]> {
    this.#assertOpen();
    assertTaskId(taskId);
    assertCount(afterSeq, 'afterSeq');
    const read = { taskId, afterSeq, limit: parseReadLimit(limit) };
    // One statement: the task's existence and its events, from the same snapshot.
    const { rows } = await this.#run('readEvents', taskId, () =>
      readOnLiveConnection(
        () => this.#gate.read(this.#db, (db) => this.#reads.events.run(db, read)),
        this.#isClosed,
      ),
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

  ack(taskId: string, seq: number, options?: RunFence): Promise<number> {
    let run: number | undefined;
    try {
      this.#assertOpen();
      assertTaskId(taskId);
      assertCount(seq, 'seq');
      run = parseRunFence(options);
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#acks.enqueue({ taskId, seq, run });
  }

  /**
   * An ack or a lease renewal whose row another transaction held (an append of a replica frozen before its
   * COMMIT): asked again in a later batch, 50 ms later, doubling to a second while the row stays held, so
   * that it holds back no other call of its batcher meanwhile.
   */
  #later<I extends { retryMs?: number }, O>(batcher: StatementBatcher<I, O>, call: BatchedCall<I, O>): void {
    // Its batch was in flight when close() cleared the retries: no retry after close, and no timer left.
    if (this.#closed) {
      call.reject(storeClosed());
      return;
    }
    const delayMs = call.input.retryMs ?? LOCKED_FIRST_RETRY_MS;
    const timer = setTimeout(() => {
      this.#retries.delete(timer);
      const input = { ...call.input, retryMs: Math.min(LOCKED_MAX_RETRY_MS, delayMs * 2) };
      batcher.enqueue(input).then(call.resolve, call.reject);
    }, delayMs);
    timer.unref?.();
    this.#retries.set(timer, call);
  }

  async renewLease(taskId: string, owner: string, ttlMs: number, options?: RunFence): Promise<Task> {
    this.#assertOpen();
    assertTaskId(taskId);
    const lease = parseLeaseInput({ owner, ttlMs });
    const run = parseRunFence(options);
    return this.#renewals.enqueue({ taskId, ...lease, run });
  }

  async releaseLease(taskId: string, owner: string, options?: RunFence): Promise<void> {
    this.#assertOpen();
    assertTaskId(taskId);
    assertId(owner, 'lease owner');
    const run = parseRunFence(options);
    const outcome = await this.#run('releaseLease', taskId, async () => {
      try {
        return await this.#gate.run(this.#db, (db) => releaseLease(db, this.#target, taskId, owner, run));
      } catch (error) {
        if (!(isDatabaseError(error) && error.code === LOCK_NOT_AVAILABLE)) throw error;
        throw new ProgressError(
          ErrorCode.StoreUnavailable,
          `releaseLease: another transaction held the row of task ${taskId} for ${RELEASE_LOCK_WAIT_MS} ms (nothing was written); try again, or let the lease expire`,
          { cause: error, taskId },
        );
      }
    });
    if (outcome === 'not_found') throw taskNotFound(taskId);
    if (outcome === 'other_run' && run !== undefined) throw runGone(taskId, run);
  }

  async reapExpiredLeases(options?: ReapOptions): Promise<AppendResult[]> {
    this.#assertOpen();
    const { limit } = parseReapOptions(options);
    // The clock is read in the reap's transaction (see reapExpiredLeases); a given clock is the leases' too.
    const databaseExpiry = this.#options.leaseClock === DATABASE_CLOCK;
    const { results, changes, damaged } = await this.#run('reapExpiredLeases', undefined, () =>
      this.#gate.run(this.#db, (db) =>
        reapExpiredLeases(db, this.#target, this.#appendStatements, {
          limit,
          clock: this.#clock,
          databaseExpiry,
        }),
      ),
    );
    this.#appends.committedElsewhere(changes);
    // Once each: their lease is gone, so no later pass finds them (see reapExpiredLeases).
    for (const { taskId, error } of damaged) {
      this.#onError(
        new ProgressError(
          ErrorCode.Internal,
          `reapExpiredLeases: task ${taskId} could not be interrupted (${describeThrown(error)}); its row looks damaged (written by hand?), so the reaper dropped its expired lease instead: the task stays running until repaired or ended`,
          { cause: error, taskId },
        ),
      );
    }
    return results;
  }

  async purgeFinished(options: PurgeOptions): Promise<number> {
    this.#assertOpen();
    const { olderThanMs, limit } = parsePurgeOptions(options);
    const now = this.#clock();
    // `created_at` is of the database's clock unless the caller gave one (see `clock`).
    const createdBefore = this.#options.leaseClock === DATABASE_CLOCK ? DATABASE_CLOCK : now;
    const doomed = purgeFinished(this.#purgeTarget, { cutoff: now - olderThanMs, limit, now, createdBefore });
    // Its notice may come, and barriers pass it, before its reply: the purges heard are kept until then.
    const settled = this.#listener.ownPurge();
    let rows: { id: string; xid: string }[];
    try {
      ({ rows } = await this.#query('purgeFinished', undefined, doomed));
    } catch (error) {
      settled();
      throw error;
    }
    const xid = rows[0]?.xid;
    const ids = rows.map((row) => row.id);
    // Forgotten through the LISTEN connection, which then knows this purge when its notice or its record
    // (a re-read's) comes, and forgets nothing published since (see "Purges" in `listen-connection.ts`).
    // Ordered after a re-read in flight, whose snapshot may still hold the purged tasks' events.
    this.#listener.afterReread(() => {
      if (xid !== undefined) this.#listener.purged(ids, BigInt(xid));
      settled();
    });
    return rows.length;
  }

  /**
   * Waits for the appends already accepted and the other writes called before it (`createTask`,
   * `releaseLease`, `reapExpiredLeases`, `purgeFinished`, `renewEpoch`), then stops the poll and the
   * `LISTEN` connection. Reads are not waited for: a `getTask` out settles when the database answers, a
   * poll's answer is dropped. Any call still waiting for a connection when it returns (with `db`, of a pool
   * the caller holds every connection of) rejects with `closed`, nothing sent. Never ends the caller's pool
   * or Kysely instance. Later calls reject with `closed`; calling it twice is harmless.
   *
   * An append, ack or lease renewal whose task row another transaction holds (another program's, or a
   * replica frozen before its COMMIT) is not waited for: it rejects with `closed`, after at most the
   * 500 ms lock wait of a transaction already in flight for it, so that such a transaction, held for
   * however long, never holds `close()`. Past `closeTimeoutMs` (a database that stopped answering, or a
   * pool with no connection to give), the appends not sent yet and the calls still waiting for a connection
   * reject with `closed` too, nothing of them written.
   */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#closed = true;
      // An ack or renewal still waiting for a row another transaction holds is not written: it rejects now, with no
      // timer left behind, rather than up to a second after the store closed.
      for (const [timer, call] of this.#retries) {
        clearTimeout(timer);
        call.reject(storeClosed());
      }
      this.#retries.clear();
      clearTimeout(this.#renewalRetry);
      // Appends whose task row another transaction holds are rejected likewise (see AppendPipeline.close).
      this.#appends.close();
      // Task reads not sent yet reject; those out are not waited for (they settle when the database answers):
      // awaited, one on a database host that stopped answering held close() until TCP gave up.
      void this.#taskReads.close();
      // The other writes called before close() (createTask, releaseLease, the reaper, purges, renewEpoch) are
      // waited for as the appends are: not waited for, one committed after close() had returned.
      const written = Promise.all([
        this.#acks.close(),
        this.#renewals.close(),
        this.#gate.writesSettled(),
      ]).then(() => this.#appends.whenIdle());
      if (!(await settlesWithin(written, this.#options.closeTimeoutMs))) {
        // The database has not answered statements sent before close() (see closeTimeoutMs): their
        // connections go, which fails them at once; the pipeline and the batchers do not retry once closed,
        // and the appends not sent yet are rejected (sent now, they would wait on that database too), as are
        // the writes still waiting for a connection: with `db`, for one the caller's pool may never free.
        this.#appends.abandon();
        this.#gate.shut();
        // With `db` nothing was cut, so nothing in flight settles any sooner: waited for again, close() took
        // twice closeTimeoutMs (until 7 December 2026).
        if (this.#pool !== undefined) {
          this.#pool.destroyHeld();
          await settlesWithin(written, this.#options.closeTimeoutMs);
        }
      }
      // Every call still waiting for a connection rejects with `closed` (reads too, called before close()),
      // nothing sent: with `db` the caller's pool may free one long after close() returned.
      this.#gate.shut();
      this.#poll.stop();
      await this.#listener.close();
    })();
    return this.#closing;
  }

  /** Whether `close()` was called: a read cut by it is not sent again (see `readOnLiveConnection`). */
  readonly #isClosed = (): boolean => this.#closed;

  #assertOpen(): void {
    if (this.#closed) throw storeClosed();
  }

  /** Runs a database call, turning driver errors into typed ones. */
  async #run<T>(what: string, taskId: string | undefined, call: () => Promise<T>): Promise<T> {
    try {
      return await call();
    } catch (error) {
      throw toProgressError(error, what, taskId);
    }
  }

  /**
   * Runs one of the task statements, turning driver errors into typed ones; once more at `READ COMMITTED`
   * after a serialization failure (see `runStatement`): a create of an id another replica created
   * meanwhile, a purge of a task acked meanwhile, two renewals of the epoch at once.
   */
  #query<R>(what: string, taskId: string | undefined, query: RawBuilder<R>): Promise<QueryResult<R>> {
    return this.#run(what, taskId, () => this.#gate.run(this.#db, (db) => runStatement(db, query)));
  }

  /** Runs `query`, a statement that writes nothing, as {@link #query} does, not waited for by `close()`. */
  #read<R>(what: string, query: RawBuilder<R>): Promise<QueryResult<R>> {
    return this.#run(what, undefined, () => this.#gate.read(this.#db, (db) => runStatement(db, query)));
  }

  async #readLatest(taskIds: readonly string[]): Promise<Map<string, LatestState>> {
    const latest = new Map<string, LatestState>();
    if (taskIds.length === 0) return latest;
    const { rows } = await this.#run('latestSeqs', undefined, () =>
      readOnLiveConnection(
        () => this.#gate.read(this.#db, (db) => this.#reads.latest.run(db, { taskIds: [...taskIds] })),
        this.#isClosed,
      ),
    );
    for (const row of rows) {
      // A row damaged by hand (an int8 above 2^53 came back rounded) is left out, as listTasks does: its
      // rounded seq, compared with those published, announced or hid changes that were not there.
      let state: LatestState;
      try {
        state = {
          seq: intColumn(row.id, 'seq', row.seq),
          terminal: row.status !== 'running',
          run: intColumn(row.id, 'created_at', row.created_at),
        };
      } catch (error) {
        if (!isProgressError(error)) throw error;
        this.#reportSkippedRow(
          row.id,
          error,
          'the safety-net poll and latestSeqs leave the task out (getTask of it fails with this error)',
        );
        continue;
      }
      latest.set(row.id, state);
    }
    return latest;
  }
}
