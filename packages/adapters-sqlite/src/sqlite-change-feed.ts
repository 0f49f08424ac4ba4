import type { TaskChange } from '@finishline/core';
import { isTerminalType, LocalChangeFeed } from '@finishline/core';
import { DataVersionWatcher } from './data-version-watcher.js';
import type { SqliteStatements } from './sqlite-statements.js';

/**
 * The SQLite store's change feed: its own commits are published right after they commit; commits by
 * other connections to the same file are found by polling `PRAGMA data_version` and read from the event
 * log past a high-water mark (the `AUTOINCREMENT` event id, which SQLite's single writer makes commit
 * order), so every event, from any process, is published once and in order.
 *
 * @module
 */

/** What one write transaction publishes once it committed. */
export interface TransactionLog {
  /** Changes to publish: other connections' events found at the start, then this transaction's. */
  changes: TaskChange[];
  /** Highest event id seen or written. */
  lastEventId: number;
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
  readonly feed: LocalChangeFeed;
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
    this.feed = new LocalChangeFeed(options.onListenerError);
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
    return { changes: [], lastEventId: this.#highWaterMark };
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
      for (let index = 0; index < this.#outbox.length; index++) this.feed.publish(this.#outbox[index]!);
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
    // Ids only grow in commit order, so reading page by page outside a transaction never skips a row.
    this.readSince(log);
    this.committed(log);
    this.drain();
  }

  #readMaxEventId(): number {
    const row = this.#q.maxEventId.get() as { id: number | bigint | null } | undefined;
    return row?.id == null ? 0 : Number(row.id);
  }
}
