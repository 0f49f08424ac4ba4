import type { ChangeFeed, TaskChange } from '@finishline/core';
import { isTerminalType, LocalChangeFeed } from '@finishline/core';
import { DataVersionWatcher } from './data-version-watcher.js';
import type { SqliteStatements } from './sqlite-statements.js';

/**
 * The SQLite store's change feed: its own commits are published right after they commit; commits by
 * other connections to the same file are found by polling `PRAGMA data_version` and read from the event
 * log past a high-water mark (the `AUTOINCREMENT` event id, which SQLite's single writer makes commit
 * order), so every event, from any process, is published once and in order.
 *
 * ## After a restore
 *
 * The mark only holds within one run of event ids. A database file restored from an older backup under
 * a running store (SQLite's backup API, `sqlite3 progress.db ".restore backup.db"`) takes the ids, and
 * `sqlite_sequence` with them, back below the mark: reading "past the mark" would skip every commit to
 * the restored file until its ids passed the old mark, and this store's own next append, whose ids are
 * below it too, would move the mark over other processes' commits it never read. No id tells what the
 * restored file received since, so the feed then re-reads the tasks, not the events: it publishes
 * every task's latest seq once (a hint that costs a read) and takes the file's largest id as the mark.
 * The file going back is seen:
 *
 * - by a poll: `sqlite_sequence` is below the mark, which within one run of ids cannot happen (it never
 *   decreases; retention deletes rows, never lowers it). Read once per poll that found a commit;
 * - by this store's append: the ids its inserts got are not above the mark (a comparison; the hot
 *   path runs no extra statement);
 * - not when other processes' appends took the ids past the old mark before either looked (within
 *   one poll interval of the restore): renewing the epoch covers that. The server that notices the
 *   renewed epoch calls `forgetSeqs()` and reads every task it follows again; the feed then drops what it
 *   had not published yet and takes the file's largest id as the mark, so it publishes nothing
 *   committed before the call and every commit after it, whatever their ids.
 *
 * @module
 */

/** What one write transaction publishes once it committed. */
export interface TransactionLog {
  /** Changes to publish: other connections' events found at the start, then this transaction's. */
  changes: TaskChange[];
  /** Highest event id seen or written. */
  lastEventId: number;
  /**
   * Set when this transaction's own inserts got ids not above the mark: the file went back (a restore),
   * and the events other connections committed to it may lie below the mark too. See the module doc.
   */
  idsWentBack: boolean;
}

/** Page size when reading other connections' events past the high-water mark. */
const CATCH_UP_PAGE = 1000;

/** Options of {@link ChangePublisher}. */
export interface ChangePublisherOptions {
  statements: SqliteStatements;
  /** Poll interval of the `data_version` watcher; `0` does not watch. */
  dataVersionPollMs: number;
  /** Receives what a change listener throws. */
  onListenerError: (error: unknown) => void;
  /** Receives what a poll of the watcher throws; polling goes on. */
  onPollError: (error: unknown) => void;
}

/**
 * Publishes committed changes in commit order: an outbox filled by committed transactions and by the
 * catch-up of other connections' commits, drained to a {@link LocalChangeFeed}.
 */
export class ChangePublisher {
  /** The feed subscribers see. */
  readonly feed: ChangeFeed;
  readonly #local: LocalChangeFeed;
  readonly #q: SqliteStatements;
  readonly #watcher: DataVersionWatcher | undefined;
  /** Id of the newest event this store has published (or written). */
  #highWaterMark = 0;
  #outbox: TaskChange[] = [];
  #draining = false;
  #stopped = false;

  /**
   * Starts the watcher (when polling) and reads the high-water mark.
   *
   * @throws whatever reading the database throws, with the watcher stopped again.
   */
  constructor(options: ChangePublisherOptions) {
    const local = new LocalChangeFeed(options.onListenerError);
    this.#local = local;
    this.feed = {
      subscribe: (listener) => local.subscribe(listener),
      forgetSeqs: () => this.forgetSeqs(),
    };
    this.#q = options.statements;
    let watcher: DataVersionWatcher | undefined;
    try {
      if (options.dataVersionPollMs > 0) {
        const dataVersion = this.#q.dataVersion;
        watcher = new DataVersionWatcher({
          intervalMs: options.dataVersionPollMs,
          readVersion: () => Number((dataVersion.get() as { data_version: number | bigint }).data_version),
          onChange: () => this.#catchUp(),
          onError: options.onPollError,
        });
        // Baseline first, then the high-water mark: a commit landing in between is then caught by the
        // first poll instead of being hidden behind the baseline.
        watcher.start();
      }
      this.#highWaterMark = this.#readMaxEventId();
    } catch (error) {
      watcher?.stop();
      throw error;
    }
    this.#watcher = watcher;
  }

  /** A log for a transaction starting now: past the high-water mark, nothing to publish yet. */
  startLog(): TransactionLog {
    return { changes: [], lastEventId: this.#highWaterMark, idsWentBack: false };
  }

  /** Adds the events committed past `log.lastEventId` (by other connections) to `log`. */
  readSince(log: TransactionLog): void {
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

  /**
   * Adds every task's latest seq to `log` and takes the file's largest event id as its last: the file
   * went back (see the module doc), so what other connections committed to it cannot be told apart by
   * id. Run inside the write transaction that found it, or on its own by a poll.
   */
  readAll(log: TransactionLog): void {
    const rows = this.#q.latestOfEveryTask.all() as {
      max_id: number | bigint | null;
      task_id: string | null;
      seq: number | bigint | null;
      status: string | null;
    }[];
    for (const row of rows) {
      if (row.task_id === null) continue;
      log.changes.push(
        Object.freeze({ taskId: row.task_id, seq: Number(row.seq), terminal: isTerminalType(row.status!) }),
      );
    }
    const maxId = rows[0]?.max_id;
    log.lastEventId = maxId == null ? 0 : Number(maxId);
  }

  /**
   * The store's epoch was renewed (a restore, noticed by a server): drops the changes not published yet
   * and takes the file's largest event id as the mark, so nothing committed before the call is published
   * after it and every commit after it is, even when the restore took its ids below the old mark.
   *
   * @throws whatever reading the database throws; the outbox is dropped all the same.
   */
  forgetSeqs(): void {
    // A new array, so that a drain in progress (a listener calling this) drops the rest of the old one.
    this.#outbox = [];
    // Stopped: the store may have closed its database, and nothing is published any more.
    if (this.#stopped) return;
    this.#highWaterMark = this.#readMaxEventId();
  }

  /** Takes a committed log: its changes go to the outbox, its last id becomes the high-water mark. */
  committed(log: TransactionLog): void {
    this.#highWaterMark = log.lastEventId;
    for (const change of log.changes) this.#outbox.push(change);
  }

  /**
   * Publishes queued changes in order. A listener that writes (and so commits and queues more changes)
   * only adds to the outbox: the outermost drain delivers everything, still in commit order.
   */
  drain(): void {
    if (this.#draining) return;
    this.#draining = true;
    try {
      let outbox = this.#outbox;
      for (let index = 0; index < outbox.length; index++) {
        this.#local.publish(outbox[index]!);
        // A listener called forgetSeqs(): the rest was committed before it; what came since is new.
        if (this.#outbox !== outbox) {
          outbox = this.#outbox;
          index = -1;
        }
      }
    } finally {
      this.#outbox = [];
      this.#draining = false;
    }
  }

  /** Stops watching; later polls publish nothing. Safe to call more than once. */
  stop(): void {
    this.#stopped = true;
    this.#watcher?.stop();
  }

  /** Publishes what other connections committed since the high-water mark (called by the watcher). */
  #catchUp(): void {
    if (this.#stopped) return;
    const log = this.startLog();
    // Ids only grow in commit order, so reading page by page outside a transaction never skips a row;
    // unless the file went back (see the module doc).
    if (this.#readIdSequence() < this.#highWaterMark) this.readAll(log);
    else this.readSince(log);
    this.committed(log);
    this.drain();
  }

  #readIdSequence(): number {
    const row = this.#q.eventIdSequence.get() as { seq: number | bigint } | undefined;
    return row === undefined ? 0 : Number(row.seq);
  }

  #readMaxEventId(): number {
    const row = this.#q.maxEventId.get() as { id: number | bigint | null } | undefined;
    return row?.id == null ? 0 : Number(row.id);
  }
}
