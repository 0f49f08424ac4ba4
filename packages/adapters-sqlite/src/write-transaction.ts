import { rollbackQuietly } from './migrations.js';
import type { RunningTaskCache } from './running-task-cache.js';
import type { ChangePublisher, TransactionLog } from './sqlite-change-feed.js';
import type { SqliteDatabase } from './sqlite-driver.js';
import type { SqliteStatements } from './sqlite-statements.js';

/**
 * The SQLite store's write transaction: `BEGIN IMMEDIATE`, the running-row cache checked against the
 * write mark, other connections' events read first, and changes handed to the publisher only once the
 * commit succeeded.
 *
 * @module
 */

/** Options of {@link WriteTransactions}. */
export interface WriteTransactionsOptions {
  database: SqliteDatabase;
  statements: SqliteStatements;
  cache: RunningTaskCache;
  publisher: ChangePublisher;
  /**
   * How long `BEGIN IMMEDIATE` waits for another connection's write lock, in milliseconds: the connection's
   * `busy_timeout`, which the transaction sets to 0 for its own looks at the lock and back right after.
   */
  busyTimeoutMs: number;
  /**
   * Called after each commit with the connection's `total_changes()` (rows it inserted, updated or
   * deleted since it opened): background checkpoints count the WAL's growth by it.
   */
  onCommitted?: ((totalChanges: number) => void) | undefined;
}

/**
 * How long `BEGIN IMMEDIATE` sleeps between two looks at a write lock another connection holds, in
 * milliseconds. SQLite's own busy handler looks after 1, 2, 5, 10 … then every 100 ms, some 60 times in
 * the default 5 s: a process that commits back to back (an append loop) holds the lock at nearly every one
 * of those instants, and another process's write failed with "database is locked" although the lock was
 * free between each of the first one's commits. Looking every millisecond, a waiter lands in one of those
 * gaps.
 */
export const WRITE_LOCK_POLL_MS = 1;

/** Sleeps the thread: the transaction waits synchronously, as SQLite's busy handler does. */
const sleeper = new Int32Array(new SharedArrayBuffer(4));

/** Whether `error` is SQLite's refusal of a lock another connection holds (`SQLITE_BUSY` and extended codes). */
function isBusy(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^SQLITE_BUSY(_|$)/.test(code);
}

/**
 * Runs one statement that returns a row or none, prepared anew: SQLite applies `PRAGMA busy_timeout = N`
 * when it compiles it, so a prepared one run again changes nothing. better-sqlite3's `exec` when there is
 * one (a fifth of the cost), `prepare` otherwise (a wrapper).
 */
function execute(database: SqliteDatabase, text: string): void {
  const exec = (database as { exec?: unknown }).exec;
  if (typeof exec === 'function') exec.call(database, text);
  else database.prepare(text).get();
}

/** Runs the store's write transactions on its one connection. */
export class WriteTransactions {
  readonly #database: SqliteDatabase;
  readonly #busyTimeoutMs: number;
  /** `PRAGMA busy_timeout` at the configured wait. */
  readonly #busyWait: string;
  /**
   * Another connection wrote between this store's last two write transactions, or a poll found a commit
   * since the last one, or none ran yet: the next one may find the write lock held, and looks at it itself
   * (see {@link WRITE_LOCK_POLL_MS}).
   * Otherwise it begins without switching `busy_timeout` off and on (two statements).
   */
  #othersWrite = true;
  readonly #q: SqliteStatements;
  readonly #cache: RunningTaskCache;
  readonly #publisher: ChangePublisher;
  readonly #onCommitted: ((totalChanges: number) => void) | undefined;

  constructor(options: WriteTransactionsOptions) {
    this.#database = options.database;
    this.#busyTimeoutMs = options.busyTimeoutMs;
    // A validated integer (see the options): PRAGMA arguments cannot be bound.
    this.#busyWait = `PRAGMA busy_timeout = ${Math.trunc(options.busyTimeoutMs)}`;
    this.#q = options.statements;
    this.#cache = options.cache;
    this.#publisher = options.publisher;
    this.#onCommitted = options.onCommitted;
  }

  /**
   * Runs `work` in a `BEGIN IMMEDIATE` transaction (the write lock is taken up front, so the
   * transaction never has to upgrade a read lock and fail with SQLITE_BUSY_SNAPSHOT). Before `work`, it
   * reads the events other connections committed past the high-water mark, so they are published before
   * this transaction's own. Changes go to the outbox only once the commit succeeded; publishing them is
   * the caller's (`ChangePublisher.drain`).
   */
  run<T>(work: (log: TransactionLog) => T): T {
    this.#begin();
    try {
      // Checked under the write lock, so no other writer can slip in after the check.
      const nothingElseWrote = this.#cache.validate(this.#readWriteMark().text);
      this.#othersWrite = !nothingElseWrote;
      const log = this.#publisher.startLog();
      // Only another writer (a restore included) can have taken the file back under the mark.
      if (!nothingElseWrote) this.#publisher.checkMark(log);
      // Gone back: what came past the mark is read with the rest after the work (readAll).
      if (!log.idsWentBack) this.#publisher.readSince(log);
      const result = work(log);
      // The file went back under the mark (a restore): read what other connections committed to it
      // before the commit, so a failure rolls the work back instead of losing their changes.
      if (log.idsWentBack) this.#publisher.readAll(log);
      // Read under the write lock, before COMMIT: read after it, the mark could already count another
      // connection's commit landing in between, and the cache would take that commit for none and keep
      // rows it changed (an append then planned on a stale row: a seq already taken, the batch rejected).
      const mark = this.#tryReadWriteMark();
      this.#q.commit.run();
      this.#afterCommit(log, mark);
      return result;
    } catch (error) {
      rollbackQuietly(this.#database);
      this.#cache.reset();
      throw error;
    }
  }

  /**
   * Another connection may be writing (a poll found a commit): the next transaction looks at the lock
   * itself. Without it, a store whose last transaction saw no other writer met a process that had started
   * committing back to back since with SQLite's busy handler.
   */
  othersWrote(): void {
    this.#othersWrite = true;
  }

  /**
   * `BEGIN IMMEDIATE`, waiting up to `busyTimeoutMs` for another connection's write lock. When other
   * connections write, by looking at it every {@link WRITE_LOCK_POLL_MS} (see there why not with SQLite's
   * busy handler, which is off meanwhile); the connection's `busy_timeout` is back when this returns or
   * throws, and a transaction begun is rolled back if it cannot be put back.
   */
  #begin(): void {
    if (!this.#othersWrite || this.#busyTimeoutMs === 0) {
      try {
        this.#q.begin.run();
      } catch (error) {
        // Another connection writes after all: the next transaction looks at the lock itself.
        if (isBusy(error)) this.#othersWrite = true;
        throw error;
      }
      return;
    }
    execute(this.#database, 'PRAGMA busy_timeout = 0');
    try {
      let deadline: number | undefined;
      for (;;) {
        try {
          this.#q.begin.run();
          break;
        } catch (error) {
          if (!isBusy(error)) throw error;
          const now = performance.now();
          deadline ??= now + this.#busyTimeoutMs;
          if (now >= deadline) throw error;
          Atomics.wait(sleeper, 0, 0, Math.min(WRITE_LOCK_POLL_MS, deadline - now));
        }
      }
    } catch (error) {
      try {
        execute(this.#database, this.#busyWait);
      } catch {
        // The error to report is the one of BEGIN.
      }
      throw error;
    }
    try {
      execute(this.#database, this.#busyWait);
    } catch (error) {
      rollbackQuietly(this.#database);
      throw error;
    }
  }

  /**
   * What follows a commit, none of which may report the committed work as failed: its changes go to the
   * outbox, and the write mark read before the commit goes to the running-row cache and the checkpoints.
   * A mark that could not be read leaves the cache empty (the next transaction re-reads its rows) and
   * asks for no checkpoint (the next commit does).
   */
  #afterCommit(log: TransactionLog, mark: { text: string; changes: number } | undefined): void {
    this.#publisher.committed(log);
    if (mark === undefined) {
      this.#cache.reset();
      return;
    }
    this.#cache.committed(mark.text);
    this.#onCommitted?.(mark.changes);
  }

  /**
   * The write mark, read where a failure to read it must not fail the work (right before a COMMIT, which
   * does not move it: `data_version` moves for other connections' commits only): `undefined` then.
   */
  #tryReadWriteMark(): { text: string; changes: number } | undefined {
    try {
      return this.#readWriteMark();
    } catch {
      return undefined;
    }
  }

  /** The write mark as `RunningTaskCache` compares it, and the connection's `total_changes()` in it. */
  #readWriteMark(): { text: string; changes: number } {
    const row = this.#q.writeMark.get() as { changes: number | bigint; version: number | bigint };
    return { text: `${row.changes}:${row.version}`, changes: Number(row.changes) };
  }
}
