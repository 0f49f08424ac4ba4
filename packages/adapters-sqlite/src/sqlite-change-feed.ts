import type { ChangeFeed, TaskChange, TaskEvent } from '@finishline/core';
import { isTerminalType, LocalChangeFeed } from '@finishline/core';
import { DataVersionWatcher } from './data-version-watcher.js';
import { toProgressError } from './sqlite-errors.js';
import type { SqliteStatements } from './sqlite-statements.js';

/**
 * The SQLite store's change feed: its own commits are published right after they commit; commits by
 * other connections to the same file are found by polling `PRAGMA data_version` and read from the event
 * log past a high-water mark (the `AUTOINCREMENT` event id, which SQLite's single writer makes commit
 * order), so every event, from any process, is published once and in order.
 *
 * ## Purges
 *
 * Retention deletes finished tasks, and a new task may then take a deleted id and start again at seq 1.
 * The feed remembers no task's seq, only an event id, and retention never lowers ids (`AUTOINCREMENT`:
 * `sqlite_sequence` keeps the largest ever assigned), so the new task's events lie past the mark of every
 * store on the file and are published from seq 1, whether that store did the purge, polled between it
 * and the new task, or only after both. Hence no purge log, unlike the Postgres feed, which remembers each
 * task's last published seq. Keep it so: a per-task seq filter here would drop the new task's seqs up to
 * the old one's as duplicates, its end included (`test/purge-reuse-feed.test.ts`). What a purge deletes
 * before a store read it is not published by that store, so retention's age must stay far above the poll
 * interval.
 *
 * ## After a restore
 *
 * The mark only holds within one run of event ids. A database file restored from an older backup under
 * a running store (SQLite's backup API, `sqlite3 progress.db ".restore backup.db"`) takes the ids, and
 * `sqlite_sequence` with them, back below the mark: reading "past the mark" would skip every commit to
 * the restored file until its ids passed the old mark, and this store's own next append, whose ids are
 * below it too, would move the mark over other processes' commits it never read. No id tells what the
 * restored file received since, so the feed then re-reads the tasks, not the events: it publishes
 * every task's latest seq once (a hint that costs a read), a page of tasks per event-loop turn, and takes
 * the file's largest id as the mark.
 * The file going back is seen:
 *
 * - by a poll that found a commit, and by a write transaction that starts after another connection
 *   wrote (the write mark tells, see `RunningTaskCache`): the row at the mark is not the one the feed
 *   read or wrote there (its task, seq and time differ). Within one run of ids a row is never changed
 *   and its id never reused, so only a file gone back holds another row at that id; this also finds the
 *   restored file when other processes' appends took its ids past the old mark before this store looked.
 *   One lookup by id; a missing row proves nothing (retention deletes finished tasks' rows), and then
 *   `sqlite_sequence` below the mark does, which within one run of ids cannot happen (it never
 *   decreases; retention never lowers it);
 * - by this store's append: the ids its inserts got are not above the mark (a comparison; the hot
 *   path runs no extra statement);
 * - not when the mark's row is gone from the restored file too (retention deleted it there before this
 *   store looked) and other processes' appends took the ids past the old mark: renewing the epoch covers
 *   that. The server that notices the renewed epoch calls `forgetSeqs()` and reads every task it follows
 *   again; the feed then drops what it had not published yet and takes the file's largest id as the
 *   mark, so it publishes nothing committed before the call and every commit after it, whatever their
 *   ids.
 *
 * @module
 */

/** What tells the event at the mark from another event that a file gone back gave the same id. */
export type MarkedEvent = Pick<TaskEvent, 'taskId' | 'seq' | 'time'>;

/** What one write transaction publishes once it committed. */
export interface TransactionLog {
  /** Changes to publish: other connections' events found at the start, then this transaction's. */
  changes: TaskChange[];
  /** Highest event id seen or written. */
  lastEventId: number;
  /** The event at `lastEventId`; `undefined` when there is none or it is not known. */
  lastEvent: MarkedEvent | undefined;
  /**
   * Set when the file went back under the mark (a restore): found by {@link ChangePublisher.checkMark},
   * or this transaction's own inserts got ids not above the mark. The events other connections committed
   * to it may lie below the mark too. See the module doc.
   */
  idsWentBack: boolean;
}

/** Page size when reading other connections' events past the high-water mark. */
const CATCH_UP_PAGE = 1000;

/**
 * Pages of other connections' events a poll reads and publishes in one event-loop turn; the rest waits for
 * the next turn (`setImmediate`), page after page. Read in one turn, a backlog of 100,000 events (another
 * process's large transaction, or this one paused for a while) held the event loop some 0.8 s, sockets and
 * timers (heartbeats, acks) unserved meanwhile. An append batch of this store that starts while the rest
 * waits, or finds such a backlog itself, waits for the paging to end (its events are published after
 * them: see `pageBacklog`); a write that publishes nothing of its own (an ack, a lease, a task created)
 * reads none of it (see `WriteTransactions.run`).
 */
const POLL_PAGES_PER_TURN = 1;

/** Options of {@link ChangePublisher}. */
export interface ChangePublisherOptions {
  statements: SqliteStatements;
  /** Poll interval of the `data_version` watcher; `0` does not watch. */
  dataVersionPollMs: number;
  /** Receives what a change listener throws. */
  onListenerError: (error: unknown) => void;
  /** Receives what a poll of the watcher throws; polling goes on. */
  onPollError: (error: unknown) => void;
  /**
   * Called when a poll found a commit (another connection's, or this connection's own): the next write
   * transaction may find the lock held (see `WriteTransactions`).
   */
  onPolledCommit?: () => void;
  /**
   * Runs a write of its own (the epoch's renewal after a restore) in a write transaction that waits for
   * another connection's lock as the store's others do (`WriteTransactions.runAlone`). Without it the
   * statement runs on its own, under SQLite's busy handler.
   */
  writeAlone?: (work: () => void) => void;
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
  /** The event at `#highWaterMark`, when known. */
  #markEvent: MarkedEvent | undefined;
  #outbox: TaskChange[] = [];
  /**
   * The epoch as this publisher last read it (polling only): another process's `renewEpoch` is a commit
   * like any other, and the poll that sees it tells this process's server at once.
   */
  #epoch: string | undefined;
  #draining = false;
  #stopped = false;
  /** A committed log found the file went back under the mark: the epoch is renewed after the drain. */
  #restoreNoticed = false;
  /** A poll is publishing what it read: the renewal after a restore waits for its epoch check. */
  #catchingUp = false;
  /**
   * A poll read a page and left the rest for the next event-loop turn (see {@link POLL_PAGES_PER_TURN}):
   * the polls meanwhile leave it to this one, which reads up to whatever they found.
   */
  #nextPage: ReturnType<typeof setImmediate> | undefined;
  /** What waits for the paging (see {@link pageBacklog}), and the event id it waits for it to reach. */
  #afterPaging: { upTo: number; then: () => void }[] = [];
  /** The re-read of a restored file's tasks (see {@link committed}): the last task id read, while it goes on. */
  #rereadAfter: string | undefined;
  /** Its next page, scheduled for the next event-loop turn. */
  #nextReread: ReturnType<typeof setImmediate> | undefined;
  readonly #onPollError: (error: unknown) => void;
  readonly #writeAlone: (work: () => void) => void;

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
      onEpochRenewed: (listener) => local.onEpochRenewed(listener),
    };
    this.#q = options.statements;
    this.#onPollError = options.onPollError;
    this.#writeAlone = options.writeAlone ?? ((work) => work());
    let watcher: DataVersionWatcher | undefined;
    try {
      if (options.dataVersionPollMs > 0) {
        const writeMark = this.#q.writeMark;
        watcher = new DataVersionWatcher({
          intervalMs: options.dataVersionPollMs,
          // data_version moves for other connections' commits only. Another store the caller gave the
          // same connection commits on it, so only total_changes() moves for those: watched alone,
          // data_version left this store's listeners without the other store's events (a task's end
          // included) until this store wrote. total_changes() moves for this store's own writes too;
          // the poll after them reads past the mark and finds nothing new.
          readVersion: () => {
            const row = writeMark.get() as { changes: number | bigint; version: number | bigint };
            return `${row.changes}:${row.version}`;
          },
          onChange: () => {
            options.onPolledCommit?.();
            this.#publishPolled();
          },
          onError: options.onPollError,
        });
        // Baseline first, then the high-water mark: a commit landing in between is then caught by the
        // first poll instead of being hidden behind the baseline.
        watcher.start();
      }
      this.#takeNewestEventAsMark();
      // Also without polling: what a renewal after a restore starts from (see `#renewAfterRestore`).
      this.#epoch = this.#readEpoch();
    } catch (error) {
      watcher?.stop();
      throw error;
    }
    this.#watcher = watcher;
  }

  /**
   * True while a poll publishes a backlog of other connections' commits page by page, the rest waiting for a
   * later event-loop turn (see {@link POLL_PAGES_PER_TURN}): it reads up to the newest commit, so a write
   * transaction that publishes nothing of its own may leave them to it.
   */
  get pagingBacklog(): boolean {
    return this.#nextPage !== undefined;
  }

  /**
   * Publishes what other connections committed past the mark a page per event-loop turn, as a poll does,
   * from the next turn, and calls `then` once it read up to the commits there are now (or ended: read up to
   * the newest, failed (reported as a poll's failure), or the publisher stopped): an append batch that
   * found a backlog waits for it so, and is then written after it. Not until the paging ends: beside a
   * process that commits a page per turn or more, it never does, and the batch waited for ever. `then` is
   * never called before this returns.
   *
   * @throws whatever reading the largest event id throws.
   */
  pageBacklog(then: () => void): void {
    if (this.#stopped) {
      queueMicrotask(then);
      return;
    }
    this.#afterPaging.push({ upTo: this.#readIdSequence(), then });
    if (this.#nextPage === undefined) this.#scheduleNextPage();
  }

  /** A log for a transaction starting now: past the high-water mark, nothing to publish yet. */
  startLog(): TransactionLog {
    return { changes: [], lastEventId: this.#highWaterMark, lastEvent: this.#markEvent, idsWentBack: false };
  }

  /**
   * Sets `log.idsWentBack` when the file went back under the log's mark (see the module doc): the row at
   * the mark is another event, or, when it is missing, `sqlite_sequence` is below the mark. One lookup
   * by id, two when the row is missing. Run before reading past the mark.
   */
  checkMark(log: TransactionLog): void {
    const mark = log.lastEventId;
    if (mark === 0) return;
    const expected = log.lastEvent;
    if (expected !== undefined) {
      const found = this.#readEventAt(mark);
      if (found !== undefined) {
        if (found.taskId !== expected.taskId || found.seq !== expected.seq || found.time !== expected.time)
          log.idsWentBack = true;
        return;
      }
    }
    if (this.#readIdSequence() < mark) log.idsWentBack = true;
  }

  /**
   * Adds the events committed past `log.lastEventId` (by other connections) to `log`, at most `maxPages`
   * pages of {@link CATCH_UP_PAGE}; returns whether it read them all.
   */
  readSince(log: TransactionLog, maxPages = Number.POSITIVE_INFINITY): boolean {
    for (let page = 0; page < maxPages; page++) {
      const rows = this.#q.eventsSince.all({ afterId: log.lastEventId, limit: CATCH_UP_PAGE }) as {
        id: number | bigint;
        task_id: string;
        seq: number | bigint;
        type: string;
        time: number | bigint;
      }[];
      for (const row of rows) {
        log.changes.push(
          Object.freeze({ taskId: row.task_id, seq: Number(row.seq), terminal: isTerminalType(row.type) }),
        );
      }
      const last = rows.at(-1);
      if (last !== undefined) {
        log.lastEventId = Number(last.id);
        log.lastEvent = toMarkedEvent(last);
      }
      if (rows.length < CATCH_UP_PAGE) return true;
    }
    return false;
  }

  /**
   * Takes the file's newest event as `log`'s last: the file went back (see the module doc), so what other
   * connections committed to it cannot be told apart by id, and once the log is committed every task's
   * latest seq is published instead, read a page per turn (see {@link committed}). Run inside the write
   * transaction that found it, or in the snapshot of the poll that did.
   */
  markRestored(log: TransactionLog): void {
    const row = this.#q.lastEvent.get() as (MarkedEventRow & { id: number | bigint }) | undefined;
    log.lastEventId = row === undefined ? 0 : Number(row.id);
    log.lastEvent = row === undefined ? undefined : toMarkedEvent(row);
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
    // The re-read of a restored file is of what was committed before the call too.
    this.#stopRereading();
    // Stopped: the store may have closed its database, and nothing is published any more.
    if (this.#stopped) return;
    this.#takeNewestEventAsMark();
  }

  /**
   * Takes a committed log: its changes go to the outbox, its last id becomes the high-water mark. A log
   * that found the file gone back (a restore) has every task's latest seq published after its changes:
   * a page of {@link CATCH_UP_PAGE} tasks now (to the outbox, for the caller's drain), the rest a page
   * per later event-loop turn. better-sqlite3 is synchronous: read and published in one turn, 100,000 tasks
   * held the event loop 170–256 ms (sockets, heartbeats and acks unserved), more with a server's listeners. Each page reads the rows as they
   * are then, past the last task id read: a task's seq only grows, so a hint is never below a change
   * already published (one of the same seq may follow it: a hint, the listener reads the task).
   */
  committed(log: TransactionLog): void {
    this.#highWaterMark = log.lastEventId;
    this.#markEvent = log.lastEvent;
    for (const change of log.changes) this.#outbox.push(change);
    if (!log.idsWentBack) return;
    this.#restoreNoticed = true;
    // A restore noticed again: from the first task once more.
    this.#stopRereading();
    this.#rereadAfter = '';
    this.#rereadPage();
  }

  /**
   * Reads the next page of the restored file's tasks into the outbox and schedules the next one, if any.
   * Never throws (the first page is read after a commit, which must not be reported as failed): a failure
   * goes to `onPollError` and ends the re-read; the epoch's renewal after the restore has servers read
   * every task they follow anyway.
   */
  #rereadPage(): void {
    if (this.#stopped || this.#rereadAfter === undefined) return;
    let rows: { id: string; seq: number | bigint; status: string }[];
    try {
      rows = this.#q.tasksAfter.all({ afterId: this.#rereadAfter, limit: CATCH_UP_PAGE }) as typeof rows;
    } catch (error) {
      this.#rereadAfter = undefined;
      this.#onPollError(toProgressError(error, 'read the tasks of a restored file'));
      return;
    }
    for (const row of rows) {
      this.#outbox.push(
        Object.freeze({ taskId: row.id, seq: Number(row.seq), terminal: isTerminalType(row.status) }),
      );
    }
    if (rows.length < CATCH_UP_PAGE) {
      this.#rereadAfter = undefined;
      return;
    }
    this.#rereadAfter = rows.at(-1)!.id;
    this.#nextReread = setImmediate(() => {
      this.#nextReread = undefined;
      this.#rereadPage();
      this.drain();
    });
  }

  #stopRereading(): void {
    if (this.#nextReread !== undefined) clearImmediate(this.#nextReread);
    this.#nextReread = undefined;
    this.#rereadAfter = undefined;
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
    // A poll renews after its own check of the epoch (see `#publishPolled`).
    if (this.#restoreNoticed && !this.#catchingUp) this.#renewAfterRestore();
  }

  /**
   * The file went back under the mark: restored from an older backup, whose epoch it has, under running
   * stores. The events committed to it since take the seqs of those lost, and a watcher that received a
   * lost one took a new one at its seq for a duplicate: a task whose end took a lost seq never ended for
   * it (its heartbeats claimed the lost seq). The store renews the epoch, as an operator should after a
   * restore, so that every server resets its watchers from the store. Only from the epoch this publisher
   * knew: the processes that notice the same restore renew it once, and a restore of a file whose epoch
   * was renewed since the backup (a changed epoch every server notices already) is not renewed again.
   * Never throws: it runs after a commit, which must not be reported as failed; a failure goes to
   * `onPollError`, and this store does not try again for this restore (its mark is in the restored file
   * now); another process that notices the same restore still renews.
   */
  #renewAfterRestore(): void {
    this.#restoreNoticed = false;
    const from = this.#epoch;
    if (this.#stopped || from === undefined) return;
    try {
      // Beside a process that commits back to back, SQLite's busy handler missed the moments the lock was
      // free, blocked the event loop for busyTimeoutMs and failed: the restore stayed without a renewal.
      this.#writeAlone(() => this.#q.renewEpochFrom.run({ from }));
      const epoch = this.#readEpoch();
      if (epoch !== from) this.epochRenewed(epoch);
    } catch (error) {
      this.#onPollError(toProgressError(error, 'renew the epoch after a restore'));
    }
  }

  /** Stops watching; later polls publish nothing. Safe to call more than once. */
  stop(): void {
    this.#stopped = true;
    this.#watcher?.stop();
    this.#stopRereading();
    if (this.#nextPage !== undefined) clearImmediate(this.#nextPage);
    this.#nextPage = undefined;
    this.#pagingEnded();
  }

  /** Reads and publishes the next page in the next event-loop turn (see {@link POLL_PAGES_PER_TURN}). */
  #scheduleNextPage(): void {
    this.#nextPage = setImmediate(() => {
      this.#nextPage = undefined;
      try {
        this.#publishPolled();
      } catch (error) {
        // As a poll's failure: reported once per streak, and the next poll tries again. Without polling
        // (an append asked for the paging), reported as one.
        if (this.#watcher !== undefined) this.#watcher.failed(error);
        else this.#onPollError(toProgressError(error, 'read other connections’ commits'));
      }
      this.#pagingEnded(this.#nextPage === undefined ? Number.POSITIVE_INFINITY : this.#highWaterMark);
    });
  }

  /** Calls what waited for the paging to read up to `mark` (see {@link pageBacklog}); all of it by default. */
  #pagingEnded(mark = Number.POSITIVE_INFINITY): void {
    if (this.#afterPaging.length === 0) return;
    const waiting = this.#afterPaging.filter(({ upTo }) => upTo <= mark);
    this.#afterPaging = this.#afterPaging.filter(({ upTo }) => upTo > mark);
    for (const { then } of waiting) then();
  }

  /**
   * Publishes what other connections committed since the high-water mark (called by the watcher), at most
   * {@link POLL_PAGES_PER_TURN} pages in this event-loop turn; the rest in later turns, from the mark then
   * (a write transaction of this store meanwhile reads past it first, so nothing is read twice or skipped).
   */
  #publishPolled(): void {
    if (this.#stopped || this.#nextPage !== undefined) return;
    const { epoch, complete } = this.catchUp(POLL_PAGES_PER_TURN);
    if (!complete) this.#scheduleNextPage();
    this.#catchingUp = true;
    try {
      this.drain();
    } finally {
      this.#catchingUp = false;
    }
    if (epoch !== this.#epoch) {
      // Renewed by another process (after it noticed the restore too, maybe), or restored with another
      // epoch: either way every server resets its watchers, and renewing from it would be a second time.
      this.#restoreNoticed = false;
      this.epochRenewed(epoch);
    }
    // After that check, which compares with the epoch read in the poll's snapshot: a renewal before it
    // was taken back for the restored epoch.
    if (this.#restoreNoticed) this.#renewAfterRestore();
  }

  /**
   * Reads, in one snapshot (no write lock), what other connections committed past the high-water mark
   * into the outbox without publishing it, and the epoch, which it returns: the poll's read, and that of
   * a write transaction that found itself far behind, before it takes the lock again (see
   * `WriteTransactions.run`). At most `maxPages` pages of {@link CATCH_UP_PAGE} events; `complete` is
   * false when more were waiting.
   */
  catchUp(maxPages = Number.POSITIVE_INFINITY): { epoch: string | undefined; complete: boolean } {
    const log = this.startLog();
    // The check and the reads see one snapshot: a restore landing between them would pass the check,
    // then be read past the mark as new commits, and move the mark into the restored file without the
    // commits made to it below the old mark ever being published.
    this.#q.pollSnapshot.run();
    let epoch: string | undefined;
    let complete = true;
    try {
      this.checkMark(log);
      if (log.idsWentBack) this.markRestored(log);
      else complete = this.readSince(log, maxPages);
      epoch = this.#readEpoch();
    } catch (error) {
      try {
        this.#q.endPollSnapshot.run();
      } catch {
        // Only if SQLite rolled the transaction back for the error (a full disk, an I/O error): the read's
        // error is the one to report either way.
      }
      throw error;
    }
    this.#q.endPollSnapshot.run();
    this.committed(log);
    return { epoch, complete };
  }

  /** The epoch is now `epoch` (renewed by this process, or found renewed by a poll): listeners hear it. */
  epochRenewed(epoch: string | undefined): void {
    this.#epoch = epoch;
    if (!this.#stopped) this.#local.publishEpochRenewed();
  }

  /** The epoch row's value (`undefined` in a database altered by hand, which the store reports). */
  #readEpoch(): string | undefined {
    return (this.#q.selectEpoch.get() as { value: string } | undefined)?.value;
  }

  #readIdSequence(): number {
    const row = this.#q.eventIdSequence.get() as { seq: number | bigint } | undefined;
    return row === undefined ? 0 : Number(row.seq);
  }

  #readEventAt(id: number): MarkedEvent | undefined {
    const row = this.#q.eventAt.get({ id }) as MarkedEventRow | undefined;
    return row === undefined ? undefined : toMarkedEvent(row);
  }

  #takeNewestEventAsMark(): void {
    const row = this.#q.lastEvent.get() as (MarkedEventRow & { id: number | bigint }) | undefined;
    this.#highWaterMark = row === undefined ? 0 : Number(row.id);
    this.#markEvent = row === undefined ? undefined : toMarkedEvent(row);
  }
}

/** The columns of an event row that tell it from another with the same id. */
interface MarkedEventRow {
  task_id: string;
  seq: number | bigint;
  time: number | bigint;
}

function toMarkedEvent(row: MarkedEventRow): MarkedEvent {
  return { taskId: row.task_id, seq: Number(row.seq), time: Number(row.time) };
}
