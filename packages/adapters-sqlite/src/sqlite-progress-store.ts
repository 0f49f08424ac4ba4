import type {
  AppendInput,
  AppendResult,
  ChangeFeed,
  Clock,
  CreateTaskInput,
  ListTasksQuery,
  ProgressStore,
  PurgeOptions,
  ReapOptions,
  Task,
  TaskChange,
  TaskEvent,
} from '@finishline/core';
import { ErrorCode, isTerminalType, LocalChangeFeed, ProgressError } from '@finishline/core';
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
  storeClosed,
  taskAlreadyExists,
  taskNotFound,
} from '@finishline/core/internal';
import BetterSqlite3 from 'better-sqlite3';
import { sql } from 'kysely';
import { DataVersionWatcher } from './data-version-watcher.js';
import { GroupCommitQueue } from './group-commit.js';
import { migrate, rollbackQuietly } from './migrations.js';
import { createQueryBuilder } from './query-builder.js';
import type { EventRow, TaskRow } from './row-codec.js';
import { pushEventValues, rowToEvent, rowToTask, taskToRow } from './row-codec.js';
import type { SqliteDatabase } from './sqlite-driver.js';
import { toProgressError } from './sqlite-errors.js';
import type { SqliteStatements } from './sqlite-statements.js';
import { EVENT_INSERT_ROWS, prepareStatements } from './sqlite-statements.js';
import type { SqliteProgressStoreOptions, SqliteSynchronous } from './sqlite-store-options.js';
import { resolveSqliteStoreOptions } from './sqlite-store-options.js';

/**
 * The SQLite `ProgressStore`: the store methods on one better-sqlite3 connection, with group commit and the
 * cross-process change watcher.
 *
 * @module
 */

/** An append waiting for its batch. */
interface PendingAppend {
  taskId: string;
  input: AppendInput;
  resolve: (result: AppendResult) => void;
  reject: (error: ProgressError) => void;
}

/** What one write transaction publishes once it committed. */
interface TransactionLog {
  /** Changes to publish: other connections' events found at the start, then this transaction's. */
  changes: TaskChange[];
  /** Highest event id seen or written. */
  lastEventId: number;
}

/**
 * The most running tasks whose rows the store keeps in memory between append batches; past it the
 * least recently written are dropped (and read again when next appended to).
 */
const TASK_CACHE_CAPACITY = 10_000;

const SYNCHRONOUS_PRAGMA: Readonly<Record<SqliteSynchronous, string>> = Object.freeze({
  normal: 'PRAGMA synchronous = NORMAL',
  full: 'PRAGMA synchronous = FULL',
  extra: 'PRAGMA synchronous = EXTRA',
});

/** Page size when reading other connections' events past the high-water mark. */
const CATCH_UP_PAGE = 1000;

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
export class SqliteProgressStore implements ProgressStore {
  readonly #database: SqliteDatabase;
  readonly #ownsDatabase: boolean;
  readonly #clock: Clock;
  readonly #onError: (error: unknown) => void;
  readonly #changes: LocalChangeFeed;
  readonly #q: SqliteStatements;
  readonly #appends: GroupCommitQueue<PendingAppend>;
  readonly #watcher: DataVersionWatcher | undefined;
  /** Id of the newest event this store has published (or written). */
  #highWaterMark = 0;
  /**
   * The rows of running tasks as this store's last append batches left them, so the next batch need not
   * read them back: valid only while nothing else wrote, which {@link #writeMark} tells (it is checked
   * inside each transaction, under the write lock, so no other writer can slip in after the check).
   */
  readonly #taskCache = new Map<string, Task>();
  /** The write mark right after this store's last commit; `undefined` when unknown. */
  #writeMark: string | undefined;
  #outbox: TaskChange[] = [];
  #draining = false;
  #closed = false;

  /**
   * Opens (or adopts) the database, configures it (WAL, `synchronous`, `busy_timeout`), applies pending
   * migrations and starts watching for other processes' commits.
   *
   * @throws ProgressError `invalid_input` for bad options, `store_unavailable` when the database cannot
   * be opened or migrated.
   */
  constructor(options: SqliteProgressStoreOptions) {
    const resolved = resolveSqliteStoreOptions(options);
    this.#clock = resolved.clock;
    this.#onError = resolved.onError;
    this.#changes = new LocalChangeFeed(resolved.onError);
    this.#ownsDatabase = typeof resolved.database === 'string';
    const database =
      typeof resolved.database === 'string'
        ? open(resolved.database, resolved.busyTimeoutMs)
        : resolved.database;
    let watcher: DataVersionWatcher | undefined;
    try {
      const builder = createQueryBuilder();
      configure(database, {
        synchronous: resolved.synchronous,
        busyTimeoutSql: sql`PRAGMA busy_timeout = ${sql.lit(resolved.busyTimeoutMs)}`.compile(builder).sql,
      });
      migrate(database, builder, { now: this.#clock() });
      this.#q = prepareStatements(database, builder);
      if (resolved.dataVersionPollMs > 0 && database.memory !== true) {
        const dataVersion = this.#q.dataVersion;
        watcher = new DataVersionWatcher({
          intervalMs: resolved.dataVersionPollMs,
          readVersion: () => Number((dataVersion.get() as { data_version: number | bigint }).data_version),
          onChange: () => this.#catchUp(),
          onError: (error) => this.#onError(toProgressError(error, 'poll for other connections’ commits')),
        });
        // Baseline first, then the high-water mark: a commit landing in between is then caught by the
        // first poll instead of being hidden behind the baseline.
        watcher.start();
      }
      this.#highWaterMark = this.#readMaxEventId();
    } catch (error) {
      watcher?.stop();
      if (this.#ownsDatabase) database.close();
      throw toProgressError(error, 'open the database');
    }
    this.#watcher = watcher;
    this.#database = database;
    this.#appends = new GroupCommitQueue<PendingAppend>({
      maxBatchSize: resolved.maxBatchSize,
      timing: 'immediate',
      commit: (batch) => this.#commitAppends(batch),
    });
  }

  /** Every committed event, this process's and (when polling) other processes' on the same file. */
  get changes(): ChangeFeed {
    return this.#changes;
  }

  createTask(input: CreateTaskInput): Promise<Task> {
    return this.#call('create a task', () => {
      const parsed = parseCreateTaskInput(input);
      this.#appends.flush();
      const id = parsed.id ?? globalThis.crypto.randomUUID();
      const task = newTask({ ...parsed, id }, this.#clock());
      this.#taskCache.delete(id);
      const { changes } = this.#q.insertTask.run(taskToRow(task));
      if (Number(changes) === 0) {
        throw taskAlreadyExists(id);
      }
      return task;
    });
  }

  getTask(taskId: string): Promise<Task | undefined> {
    return this.#call('read a task', () => {
      assertTaskId(taskId);
      this.#appends.flush();
      return this.#loadTask(taskId);
    });
  }

  getEpoch(): Promise<string> {
    return this.#call('read the epoch', () => this.#readEpoch());
  }

  renewEpoch(): Promise<string> {
    return this.#call('renew the epoch', () => {
      this.#q.updateEpoch.run();
      return this.#readEpoch();
    });
  }

  listTasks(query: ListTasksQuery): Promise<Task[]> {
    return this.#call('list tasks', () => {
      const { owner, statuses, limit } = parseListTasksQuery(query);
      this.#appends.flush();
      if (statuses !== undefined && statuses.length === 0) return [];
      const rows =
        statuses === undefined
          ? this.#q.listTasks.all({ owner, limit })
          : this.#q.listTasksByStatus.all({ owner, statuses: JSON.stringify(statuses), limit });
      return rows.map((row) => rowToTask(row as TaskRow));
    });
  }

  append(taskId: string, input: AppendInput): Promise<AppendResult> {
    let parsed: AppendInput;
    try {
      this.#assertOpen();
      assertTaskId(taskId);
      parsed = detach(parseAppendInput(input));
    } catch (error) {
      return Promise.reject(toProgressError(error, 'append'));
    }
    return new Promise((resolve, reject) =>
      this.#appends.enqueue({ taskId, input: parsed, resolve, reject }),
    );
  }

  readEvents(taskId: string, afterSeq: number, limit?: number): Promise<TaskEvent[]> {
    return this.#call('read events', () => {
      assertTaskId(taskId);
      assertCount(afterSeq, 'afterSeq');
      const resolvedLimit = parseReadLimit(limit);
      this.#appends.flush();
      const rows = this.#q.selectEvents.all({ taskId, afterSeq, limit: resolvedLimit });
      if (rows.length === 0 && this.#q.selectTask.get({ id: taskId }) === undefined)
        throw taskNotFound(taskId);
      return rows.map((row) => rowToEvent(row as EventRow));
    });
  }

  latestSeqs(taskIds: readonly string[]): Promise<Map<string, number>> {
    return this.#call('read latest seqs', () => {
      const ids = parseTaskIds(taskIds);
      this.#appends.flush();
      const seqs = new Map<string, number>();
      if (ids.length === 0) return seqs;
      for (const row of this.#q.latestSeqs.all({ ids: JSON.stringify(ids) }) as Pick<
        TaskRow,
        'id' | 'seq'
      >[]) {
        seqs.set(String(row.id), Number(row.seq));
      }
      return seqs;
    });
  }

  ack(taskId: string, seq: number): Promise<number> {
    return this.#call('record an ack', () => {
      assertTaskId(taskId);
      assertCount(seq, 'seq');
      this.#appends.flush();
      return this.#transaction(() => {
        const task = this.#requireTask(taskId);
        if (seq > task.seq) {
          throw new ProgressError(
            ErrorCode.InvalidInput,
            `Cannot ack seq ${seq} of task ${taskId}: its latest seq is ${task.seq}`,
            { taskId },
          );
        }
        if (seq <= task.ackedSeq) return task.ackedSeq;
        this.#taskCache.delete(taskId);
        this.#q.updateAckedSeq.run({ id: taskId, ackedSeq: seq });
        return seq;
      });
    });
  }

  renewLease(taskId: string, owner: string, ttlMs: number): Promise<Task> {
    return this.#call('renew a lease', () => {
      assertTaskId(taskId);
      const lease = parseLeaseInput({ owner, ttlMs });
      this.#appends.flush();
      return this.#transaction(() => {
        const task = planLease(this.#requireTask(taskId), lease.owner, lease.ttlMs, this.#clock());
        this.#taskCache.delete(taskId);
        this.#q.updateLease.run({
          id: taskId,
          leaseOwner: task.leaseOwner,
          leaseExpiresAt: task.leaseExpiresAt,
        });
        return task;
      });
    });
  }

  releaseLease(taskId: string, owner: string): Promise<void> {
    return this.#call('release a lease', () => {
      assertTaskId(taskId);
      assertId(owner, 'lease owner');
      this.#appends.flush();
      this.#transaction(() => {
        const task = this.#requireTask(taskId);
        // Ended tasks already dropped their lease; another owner's lease is not ours to drop.
        if (task.status === 'running' && task.leaseOwner === owner) {
          this.#taskCache.delete(taskId);
          this.#q.updateLease.run({ id: taskId, leaseOwner: null, leaseExpiresAt: null });
        }
      });
    });
  }

  reapExpiredLeases(options?: ReapOptions): Promise<AppendResult[]> {
    return this.#call('reap expired leases', () => {
      const { limit } = parseReapOptions(options);
      this.#appends.flush();
      const reaped = this.#transaction((log) => {
        const now = this.#clock();
        const results: AppendResult[] = [];
        for (const row of this.#q.expiredLeases.all({ now, limit })) {
          let task: Task;
          try {
            task = rowToTask(row as TaskRow);
          } catch (error) {
            // One damaged row must not stop every other expired task from being interrupted.
            this.#onError(error);
            continue;
          }
          if (!isLeaseExpired(task, now)) continue;
          this.#taskCache.delete(task.id);
          results.push(planAppend(task, { type: 'interrupted', reason: leaseExpiredReason(task) }, now));
        }
        this.#writeAppends(results, log);
        return results;
      });
      this.#drainOutbox();
      return reaped;
    });
  }

  purgeFinished(options: PurgeOptions): Promise<number> {
    return this.#call('purge finished tasks', () => {
      const { olderThanMs, limit } = parsePurgeOptions(options);
      this.#appends.flush();
      return this.#transaction(() => {
        const cutoff = this.#clock() - olderThanMs;
        const rows = this.#q.finishedBefore.all({ cutoff, limit }) as Pick<TaskRow, 'id'>[];
        if (rows.length === 0) return 0;
        for (const row of rows) this.#taskCache.delete(String(row.id));
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
  close(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    try {
      this.#appends.flush();
    } finally {
      this.#closed = true;
      this.#appends.cancel();
      // Only appends queued by a listener while close() ran inside a commit can be left here.
      for (const entry of this.#appends.clear()) entry.reject(storeClosed());
      this.#watcher?.stop();
      if (this.#ownsDatabase) this.#database.close();
    }
    return Promise.resolve();
  }

  // ——— internals ———

  /** Runs `work` now (better-sqlite3 is synchronous) and maps whatever it throws to a ProgressError. */
  #call<T>(action: string, work: () => T): Promise<T> {
    try {
      this.#assertOpen();
      return Promise.resolve(work());
    } catch (error) {
      return Promise.reject(toProgressError(error, action));
    }
  }

  #assertOpen(): void {
    if (this.#closed) throw storeClosed();
  }

  #loadTask(taskId: string): Task | undefined {
    const row = this.#q.selectTask.get({ id: taskId });
    return row === undefined ? undefined : rowToTask(row as TaskRow);
  }

  #requireTask(taskId: string): Task {
    const task = this.#loadTask(taskId);
    if (task === undefined) throw taskNotFound(taskId);
    return task;
  }

  /**
   * Runs `work` in a `BEGIN IMMEDIATE` transaction (the write lock is taken up front, so the
   * transaction never has to upgrade a read lock and fail with SQLITE_BUSY_SNAPSHOT). Before `work`, it
   * reads the events other connections committed past the high-water mark, so they are published before
   * this transaction's own. Changes go to the outbox only once the commit succeeded.
   */
  #transaction<T>(work: (log: TransactionLog) => T): T {
    this.#q.begin.run();
    try {
      // Anything written since this store's last commit (another connection, or this connection used
      // directly or by createTask) may have changed cached rows: forget them all.
      if (this.#readWriteMark() !== this.#writeMark) this.#taskCache.clear();
      const log: TransactionLog = { changes: [], lastEventId: this.#highWaterMark };
      this.#readEventsSince(log);
      const result = work(log);
      this.#q.commit.run();
      this.#writeMark = this.#readWriteMark();
      this.#highWaterMark = log.lastEventId;
      for (const change of log.changes) this.#outbox.push(change);
      return result;
    } catch (error) {
      rollbackQuietly(this.#database);
      // What was planned in the rolled-back transaction may already be in the cache: start afresh.
      this.#taskCache.clear();
      this.#writeMark = undefined;
      throw error;
    }
  }

  #readWriteMark(): string {
    const row = this.#q.writeMark.get() as { changes: number | bigint; version: number | bigint };
    return `${row.changes}:${row.version}`;
  }

  /** Keeps `task` (a running task's row as just committed) for the next batch. */
  #cacheTask(task: Task): void {
    this.#taskCache.delete(task.id);
    if (task.status !== 'running') return;
    this.#taskCache.set(task.id, task);
    if (this.#taskCache.size > TASK_CACHE_CAPACITY) {
      const oldest = this.#taskCache.keys().next();
      if (oldest.done !== true) this.#taskCache.delete(oldest.value);
    }
  }

  /** Commits one batch of appends and settles each one. Never throws. */
  #commitAppends(batch: PendingAppend[]): void {
    const outcomes: (AppendResult | ProgressError)[] = new Array(batch.length);
    let batchTasks: Map<string, Task | ProgressError> | undefined;
    try {
      this.#transaction((log) => {
        const now = this.#clock();
        // The batch's view of each task: loaded once, then advanced by each planned append.
        const tasks = this.#loadBatchTasks(batch);
        const planned: AppendResult[] = [];
        for (let index = 0; index < batch.length; index++) {
          const { taskId, input } = batch[index]!;
          const task = tasks.get(taskId)!;
          if (task instanceof ProgressError) {
            outcomes[index] = task;
            continue;
          }
          try {
            const result = planAppend(task, input, now);
            tasks.set(taskId, result.task);
            planned.push(result);
            outcomes[index] = result;
          } catch (error) {
            outcomes[index] = toProgressError(error, 'append');
          }
        }
        this.#writeAppends(planned, log);
        batchTasks = tasks;
      });
    } catch (error) {
      // The transaction rolled back: nothing of the batch was written.
      const failure = toProgressError(error, 'commit appends');
      for (const entry of batch) entry.reject(failure);
      return;
    }
    // Committed: these rows are the tasks' state now. A copy, since the callers get the planned rows.
    if (batchTasks !== undefined) {
      for (const task of batchTasks.values())
        if (!(task instanceof ProgressError)) this.#cacheTask({ ...task });
    }
    this.#drainOutbox();
    for (let index = 0; index < batch.length; index++) {
      const outcome = outcomes[index]!;
      const entry = batch[index]!;
      if (outcome instanceof ProgressError) entry.reject(outcome);
      else entry.resolve(outcome);
    }
  }

  /**
   * The rows of every task a batch appends to, read in one statement (a batch spread over many tasks
   * would otherwise pay one call per task). A missing or damaged row becomes that task's error.
   */
  #loadBatchTasks(batch: readonly PendingAppend[]): Map<string, Task | ProgressError> {
    const tasks = new Map<string, Task | ProgressError>();
    const ids = new Set<string>();
    for (const { taskId } of batch) {
      if (tasks.has(taskId) || ids.has(taskId)) continue;
      // Planning copies the row before changing it, so a cached row is never modified in place.
      const cached = this.#taskCache.get(taskId);
      if (cached !== undefined) tasks.set(taskId, cached);
      else ids.add(taskId);
    }
    if (ids.size === 0) return tasks;
    const rows =
      ids.size === 1
        ? [this.#q.selectTask.get({ id: ids.values().next().value })]
        : this.#q.selectTasks.all({ ids: JSON.stringify([...ids]) });
    for (const row of rows) {
      if (row === undefined) continue;
      const id = String((row as TaskRow).id);
      try {
        tasks.set(id, rowToTask(row as TaskRow));
      } catch (error) {
        tasks.set(id, toProgressError(error, 'read a task'));
      }
    }
    // Errors capture a stack trace: build them only for the ids that are really missing.
    for (const id of ids) if (!tasks.has(id)) tasks.set(id, taskNotFound(id));
    return tasks;
  }

  /** Inserts the events of `results` in order and writes each touched task's final row once. */
  #writeAppends(results: readonly AppendResult[], log: TransactionLog): void {
    if (results.length === 0) return;
    const finalTasks = new Map<string, Task>();
    const { insertEvents, insertEvent } = this.#q;
    const values: unknown[] = [];
    let index = 0;
    let lastId = log.lastEventId;
    for (; index + EVENT_INSERT_ROWS <= results.length; index += EVENT_INSERT_ROWS) {
      values.length = 0;
      for (let row = index; row < index + EVENT_INSERT_ROWS; row++)
        pushEventValues(values, results[row]!.event);
      lastId = Number(insertEvents.run(values).lastInsertRowid);
    }
    for (; index < results.length; index++) {
      values.length = 0;
      pushEventValues(values, results[index]!.event);
      lastId = Number(insertEvent.run(values).lastInsertRowid);
    }
    for (const { event, task } of results) {
      finalTasks.set(task.id, task);
      log.changes.push(
        Object.freeze({ taskId: event.taskId, seq: event.seq, terminal: isTerminalType(event.type) }),
      );
    }
    for (const task of finalTasks.values()) {
      // A task still running changed only its counters, texts, seq and time (see `planAppend`).
      const statement =
        task.status === 'running' ? this.#q.updateRunningTaskAfterAppend : this.#q.updateTaskAfterAppend;
      const { changes } = statement.run(taskToRow(task));
      // The row was loaded (or remembered) running in this transaction; anything else is a bug, not data.
      if (Number(changes) !== 1)
        throw new ProgressError(ErrorCode.Internal, `Task ${task.id} was not updated`);
    }
    log.lastEventId = lastId;
  }

  /** Adds the events committed past `log.lastEventId` (by other connections) to `log`. */
  #readEventsSince(log: TransactionLog): void {
    for (;;) {
      const rows = this.#q.eventsSince.all({ afterId: log.lastEventId, limit: CATCH_UP_PAGE }) as {
        id: number | bigint;
        task_id: string;
        seq: number | bigint;
        type: string;
      }[];
      for (const row of rows) {
        log.changes.push(
          Object.freeze({ taskId: row.task_id, seq: Number(row.seq), terminal: isTerminalType(row.type) }),
        );
        log.lastEventId = Number(row.id);
      }
      if (rows.length < CATCH_UP_PAGE) return;
    }
  }

  /** Publishes what other connections committed since the high-water mark (called by the watcher). */
  #catchUp(): void {
    if (this.#closed) return;
    const log: TransactionLog = { changes: [], lastEventId: this.#highWaterMark };
    // Ids only grow in commit order, so reading page by page outside a transaction never skips a row.
    this.#readEventsSince(log);
    this.#highWaterMark = log.lastEventId;
    for (const change of log.changes) this.#outbox.push(change);
    this.#drainOutbox();
  }

  /**
   * Publishes queued changes in order. A listener that writes (and so commits and queues more changes)
   * only adds to the outbox: the outermost drain delivers everything, still in commit order.
   */
  #drainOutbox(): void {
    if (this.#draining) return;
    this.#draining = true;
    try {
      for (let index = 0; index < this.#outbox.length; index++) this.#changes.publish(this.#outbox[index]!);
    } finally {
      this.#outbox = [];
      this.#draining = false;
    }
  }

  #readEpoch(): string {
    const row = this.#q.selectEpoch.get() as { value: string } | undefined;
    // Migration 3 inserts the row; a database without it was altered by hand.
    if (row === undefined) throw new ProgressError(ErrorCode.Internal, 'The store has no epoch row');
    return row.value;
  }

  #readMaxEventId(): number {
    const row = this.#q.maxEventId.get() as { id: number | bigint | null } | undefined;
    return row?.id == null ? 0 : Number(row.id);
  }
}

/**
 * The input with its JSON values copied: the append is committed later (group commit), and the
 * caller may reuse or change its objects as soon as `append` returned.
 */
function detach(input: AppendInput): AppendInput {
  if (input.type === 'item' && typeof input.detail === 'object' && input.detail !== null) {
    return { ...input, detail: structuredClone(input.detail) };
  }
  if (input.type === 'completed' && typeof input.result === 'object' && input.result !== null) {
    return { ...input, result: structuredClone(input.result) };
  }
  return input;
}

function open(path: string, busyTimeoutMs: number): SqliteDatabase {
  try {
    return new BetterSqlite3(path, { timeout: busyTimeoutMs });
  } catch (error) {
    // better-sqlite3 reports a missing directory as a TypeError without a SQLite code.
    throw new ProgressError(
      ErrorCode.StoreUnavailable,
      `Cannot open SQLite database ${JSON.stringify(path)}: ${error instanceof Error ? error.message : String(error)}`,
      { cause: error },
    );
  }
}

function configure(
  database: SqliteDatabase,
  options: { synchronous: SqliteSynchronous; busyTimeoutSql: string },
): void {
  // PRAGMA arguments cannot be bound: the timeout is a validated integer rendered by kysely's literal
  // compiler, the other settings constant text.
  database.prepare(options.busyTimeoutSql).get();
  if (database.memory !== true) {
    const row = database.prepare('PRAGMA journal_mode = WAL').get() as { journal_mode?: string } | undefined;
    if (row?.journal_mode?.toLowerCase() !== 'wal') {
      throw new ProgressError(
        ErrorCode.StoreUnavailable,
        `SQLite refused WAL mode (journal_mode is ${String(row?.journal_mode)})`,
      );
    }
  }
  database.prepare(SYNCHRONOUS_PRAGMA[options.synchronous]).run();
}
