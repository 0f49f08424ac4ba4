import type { RunningTaskCache } from './running-task-cache.js';
import type { ChangePublisher, TransactionLog } from './sqlite-change-feed.js';
import type { SqliteDatabase } from './sqlite-driver.js';
import type { SqliteStatements } from './sqlite-statements.js';
import { beginImmediate, isBusy, rollbackQuietly } from './write-lock.js';

/**
 * The SQLite store's write transaction: `BEGIN IMMEDIATE`, the running-row cache checked against the
 * write mark, other connections' events read first, and changes handed to the publisher only once the
 * commit succeeded.
 *
 * @module
 */

/**
 * The pages of other connections' events (1,000 each, see `sqlite-change-feed.ts`) a write transaction
 * reads under the write lock before it lets go of the lock to read the rest without it.
 */
const CATCH_UP_PAGES_UNDER_LOCK = 1;

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

/** Runs the store's write transactions on its one connection. */
export class WriteTransactions {
  readonly #database: SqliteDatabase;
  readonly #busyTimeoutMs: number;
  /**
   * Another connection wrote between this store's last two write transactions, or a poll found a commit
   * since the last one, or none ran yet: the next one may find the write lock held, and looks at it itself
   * (see `WRITE_LOCK_POLL_MS` (`write-lock.ts`)).
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
    this.#q = options.statements;
    this.#cache = options.cache;
    this.#publisher = options.publisher;
    this.#onCommitted = options.onCommitted;
  }

  /**
   * Runs `work` in a `BEGIN IMMEDIATE` transaction (the write lock is taken up front, so the
   * transaction never has to upgrade a read lock and fail with SQLITE_BUSY_SNAPSHOT). Before `work`, it
   * reads the events other connections committed past the high-water mark, so they are published before
   * this transaction's own: at most {@link CATCH_UP_PAGES_UNDER_LOCK} pages under the lock, the rest
   * without it before trying again. Changes go to the outbox only once the commit succeeded; publishing them is
   * the caller's (`ChangePublisher.drain`).
   *
   * `changeless`: the work publishes no change of its own (an ack, a lease, a task created). While a poll
   * publishes a backlog page by page (`ChangePublisher.pagingBacklog`), such a transaction leaves the rest
   * to it: read here, all of it in one event-loop turn, it held the loop as long as the poll's paging avoids
   * (a server's acks during a backlog of 100,000 events: some 0.8 s each time). An append batch waits for
   * the paging instead (see {@link runAfterBacklog}).
   */
  run<T>(work: (log: TransactionLog) => T, options?: { changeless?: boolean }): T {
    const leaveToPoll = options?.changeless === true && this.#publisher.pagingBacklog;
    for (let pages = CATCH_UP_PAGES_UNDER_LOCK; ; pages = Number.POSITIVE_INFINITY) {
      const attempt = this.#attempt(work, leaveToPoll ? 0 : pages);
      if (attempt.done) return attempt.result;
      // Far behind other connections' commits (polling off, or an event loop held for long): the rest is
      // read without the write lock, which every other process's writes wait for. Read under it, 200,000
      // events held it for some 0.3 s; a few million outlasted the others' busy timeout and failed their
      // writes. What lands meanwhile is read under the lock, all of it: the transaction has to get done.
      this.#publisher.catchUp();
    }
  }

  /**
   * {@link run} for an append batch, which can wait: when a poll is publishing a backlog of other
   * connections' commits page by page (`ChangePublisher.pagingBacklog`), or more than
   * {@link CATCH_UP_PAGES_UNDER_LOCK} pages of them wait, returns `undefined` with `work` not run and
   * nothing of them kept, for the caller to have the publisher page them (`pageBacklog`), a page per
   * turn, and then call {@link run}. Read here, all of it in one event-loop turn, 100,000 events held the
   * loop some 0.8 s; the page read here is read again by the paging, so that no turn publishes two.
   */
  runAfterBacklog<T>(work: (log: TransactionLog) => T): { result: T } | undefined {
    if (this.#publisher.pagingBacklog) return undefined;
    const attempt = this.#attempt(work, CATCH_UP_PAGES_UNDER_LOCK, false);
    return attempt.done ? { result: attempt.result } : undefined;
  }

  /**
   * One try at {@link run}: `done: false` (rolled back, `work` not run) when more than `catchUpPages`
   * pages of other connections' events were waiting; the pages read are in the outbox then, unless not
   * `keepRead`. With `catchUpPages` 0 it reads none, and does not check the mark (the poll that reads them
   * does).
   */
  #attempt<T>(
    work: (log: TransactionLog) => T,
    catchUpPages: number,
    keepRead = true,
  ): { done: true; result: T } | { done: false } {
    this.#begin();
    try {
      // Checked under the write lock, so no other writer can slip in after the check.
      const nothingElseWrote = this.#cache.validate(this.#readWriteMark().text);
      this.#othersWrite = !nothingElseWrote;
      const log = this.#publisher.startLog();
      // Only another writer (a restore included) can have taken the file back under the mark.
      if (!nothingElseWrote && catchUpPages > 0) this.#publisher.checkMark(log);
      // Gone back: the mark is taken from the file after the work (markRestored).
      if (catchUpPages > 0 && !log.idsWentBack && !this.#publisher.readSince(log, catchUpPages)) {
        // Other connections' committed events: published whatever becomes of this transaction.
        rollbackQuietly(this.#database);
        if (keepRead) this.#publisher.committed(log);
        return { done: false };
      }
      const result = work(log);
      // The file went back under the mark (a restore): the mark is its newest event, taken before the
      // commit, so a failure rolls the work back and leaves the mark for the next transaction to find.
      if (log.idsWentBack) this.#publisher.markRestored(log);
      // Read under the write lock, before COMMIT: read after it, the mark could already count another
      // connection's commit landing in between, and the cache would take that commit for none and keep
      // rows it changed (an append then planned on a stale row: a seq already taken, the batch rejected).
      const mark = this.#tryReadWriteMark();
      this.#q.commit.run();
      this.#afterCommit(log, mark);
      return { done: true, result };
    } catch (error) {
      rollbackQuietly(this.#database);
      this.#cache.reset();
      throw error;
    }
  }

  /**
   * Runs `work` in a `BEGIN IMMEDIATE` transaction of its own, the lock waited for as in {@link run}, but
   * without reading other connections' commits or publishing anything: the epoch's renewal after a restore,
   * which runs after a drain. A commit that changed a row moves the write mark, so the running-row cache is
   * re-read by the next transaction.
   */
  runAlone<T>(work: () => T): T {
    this.#begin();
    try {
      const result = work();
      this.#q.commit.run();
      return result;
    } catch (error) {
      rollbackQuietly(this.#database);
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
   * connections write, by looking at it every `WRITE_LOCK_POLL_MS` (`write-lock.ts`) (see there why not with SQLite's
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
    beginImmediate(this.#database, () => this.#q.begin.run(), this.#busyTimeoutMs);
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
