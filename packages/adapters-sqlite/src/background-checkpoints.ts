import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import { ErrorCode, ProgressError } from '@finishline/core';
import type { SqliteDatabase } from './sqlite-driver.js';
import { isConnectionClosed, toProgressError } from './sqlite-errors.js';

/**
 * WAL checkpoints on a worker thread instead of in the store's commits.
 *
 * In WAL mode, SQLite copies the WAL back into the database file (a checkpoint) inside the commit that
 * takes the WAL past `wal_autocheckpoint` pages (1,000 by default). better-sqlite3 is synchronous, so
 * that copy runs on the event loop: measured on 1,000 tasks appending at once, about a quarter of the
 * store's time went to checkpoints (a store without any ran 108–127k appends/s against 84–88k; with this
 * worker, `bench:store` ran 105–117k against 86–92k), and every thousandth page stalls whatever else the process was doing
 * for the length of the copy.
 *
 * Here a worker thread with its own connection to the file runs `PRAGMA wal_checkpoint(PASSIVE)` once
 * {@link CHECKPOINT_AFTER_ROWS} rows changed, at most every {@link CHECKPOINT_INTERVAL_MS}. A passive checkpoint never blocks the
 * store's readers or writers (it copies what no reader still needs and stops there), and a writer
 * restarts the WAL from its start once everything was copied, so the file stays small. The store's
 * own connection keeps `wal_autocheckpoint` as a safety net at {@link FALLBACK_AUTOCHECKPOINT_PAGES}
 * (the WAL stays bounded even if the worker falls behind), and gets its own setting back (SQLite's
 * default is 1,000 pages) when the worker fails or the store closes.
 *
 * A worker that fails (an I/O error, the thread dying) is replaced: the store checkpoints inline meanwhile,
 * and the next checkpoint asked for at least {@link FIRST_RESTART_DELAY_MS} later starts a new worker, the
 * delay doubling up to {@link MAX_RESTART_DELAY_MS} while the new ones fail too. Before, one failure,
 * however passing, took the background checkpoints away for the life of the store. The failure is reported
 * once per streak: again only after a worker checkpointed since. No timer is involved: a restart is tried
 * from a commit, so a closed store has nothing left behind.
 *
 * The worker is started the first time it is asked for a checkpoint, not when the store opens: a store
 * that writes little never starts a thread. It holds nothing alive (`unref`), and `stop()` ends it.
 *
 * @module
 */

/**
 * Rows changed (inserted, updated, deleted) on the store's connection after which it asks the worker for
 * a checkpoint. A row dirties about one page of each B-tree it is in, so this is SQLite's own threshold
 * (1,000 pages) counted in rows: a thousand single-event commits (a task's progress, at its pace) ask for
 * one checkpoint, not a thousand (measured: a checkpoint per commit, each with its sync, cost the x10
 * benchmark's SQLite replica 15 % more CPU), while a batch of a thousand appends asks for one at once.
 */
export const CHECKPOINT_AFTER_ROWS = 1000;

/**
 * Least time between two background checkpoints, in milliseconds: the worker checkpoints this long after
 * it was asked, so commits that keep asking cost one checkpoint per interval.
 */
export const CHECKPOINT_INTERVAL_MS = 20;

/**
 * `wal_autocheckpoint` of the store's connection while the worker checkpoints: the WAL grows past it
 * (about 40 MB with 4 KB pages) only if the worker falls behind, and then the store checkpoints inline,
 * as without a worker.
 */
export const FALLBACK_AUTOCHECKPOINT_PAGES = 10_000;

/**
 * WAL size, in pages, past which the worker follows its passive checkpoint with a `TRUNCATE` one. A passive
 * checkpoint copies the WAL back but never waits, and the WAL starts over from its beginning only when a
 * writer finds every frame copied and no reader on it: with several processes reading and writing at full
 * speed one always is, and the WAL grew without bound (measured: three processes appending for 40 s took
 * it to 193 MB beside a 17 MB database). `TRUNCATE` waits (at most {@link TRUNCATE_BUSY_TIMEOUT_MS}) for
 * the readers on old snapshots to finish, holding new writers back meanwhile, copies everything and
 * empties the file. Only after a passive checkpoint that copied everything: one that could not had a
 * reader on an older snapshot in its way, which the `TRUNCATE` would wait for the whole time with every
 * writer held back. The same size as the store's fallback: below it, passive checkpoints do.
 */
export const TRUNCATE_AFTER_PAGES = FALLBACK_AUTOCHECKPOINT_PAGES;

/**
 * Longest wait of a `TRUNCATE` checkpoint for readers and the writer, in milliseconds. Writers of every
 * process wait behind it (within their `busyTimeoutMs`, 5 s by default), so it is short; a checkpoint that
 * does not get its turn gives up, and the next one asked for tries again while the WAL is still past
 * {@link TRUNCATE_AFTER_PAGES}.
 */
export const TRUNCATE_BUSY_TIMEOUT_MS = 200;

/** Least time, in milliseconds, between a worker's failure and the start of the next one. */
export const FIRST_RESTART_DELAY_MS = 1_000;

/** Most time, in milliseconds, between a failure and the next start while new workers keep failing. */
export const MAX_RESTART_DELAY_MS = 300_000;

/**
 * The worker's code, run with `eval` (CommonJS): a file would need its own build entry, and the tests
 * run the sources, where a worker cannot load TypeScript. It gets better-sqlite3's path and the database
 * file; requests that come while a checkpoint is already scheduled join it. A busy checkpoint (another
 * connection's checkpoint running, or its recovery of the WAL: `SQLITE_BUSY` and its extended codes) is
 * skipped; any other failure is reported, and the worker ends.
 */
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const Database = require(workerData.betterSqlite3);
// better-sqlite3's SqliteError reaches the store's 'error' listener as a bare { code }, its message lost
// on the way (the report said "[object Object]"); a plain Error keeps both.
function plain(error) {
  return error instanceof Error ? Object.assign(new Error(error.message), { code: error.code }) : error;
}
let db;
try {
  db = new Database(workerData.file, { fileMustExist: true, timeout: 0 });
} catch (error) {
  throw plain(error);
}
let scheduled = false;
function checkpoint() {
  scheduled = false;
  try {
    const [row] = db.pragma('wal_checkpoint(PASSIVE)');
    let truncated = false;
    // Only when the passive one copied everything: then no reader was left on an older snapshot. One that
    // was (a backup, an operator's query) kept the WAL from being emptied anyway, and the TRUNCATE held
    // the write lock while it waited for it, every writer of every process behind it, at each checkpoint
    // asked for while the reader lasted.
    if (row.log >= workerData.truncateAfterPages && row.checkpointed === row.log) {
      // Busy (readers or the writer did not let go in time) is a row with busy = 1, not an error.
      db.pragma('busy_timeout = ' + workerData.truncateBusyTimeoutMs);
      try {
        truncated = db.pragma('wal_checkpoint(TRUNCATE)')[0].busy === 0;
      } finally {
        db.pragma('busy_timeout = 0');
      }
    }
    parentPort.postMessage({ frames: row.checkpointed, truncated });
  } catch (error) {
    // Its extended codes too: SQLITE_BUSY_RECOVERY (another connection recovering the WAL after a crash)
    // passes like any busy moment, and stopped the worker.
    if (error && typeof error.code === 'string' && /^SQLITE_BUSY(_|$)/.test(error.code)) return;
    throw plain(error);
  }
}
parentPort.on('message', (message) => {
  if (message === 'stop') {
    db.close();
    process.exit(0);
  }
  if (!scheduled) {
    scheduled = true;
    setTimeout(checkpoint, workerData.intervalMs);
  }
});
`;

/** The background checkpoints since the store opened. */
export interface CheckpointStats {
  /**
   * The worker: `'idle'` before the first checkpoint started it, `'running'`, `'failed'` (the store
   * checkpoints inline until a new worker, started by a later checkpoint after a delay that backs off
   * from 1 s to 5 min, runs again; the failure went to `onError`), `'stopped'` once `close()` ended it.
   */
  worker: 'idle' | 'running' | 'failed' | 'stopped';
  /** Checkpoints the worker ran. */
  checkpoints: number;
  /** WAL frames (pages) they copied into the database file. */
  framesCheckpointed: number;
  /**
   * Checkpoints that found the WAL past 10,000 pages (passive checkpoints could not start it over: readers
   * and writers of other processes always overlapped) and emptied it with a `TRUNCATE` checkpoint.
   */
  truncations: number;
}

/** What {@link BackgroundCheckpoints} needs. */
export interface BackgroundCheckpointsOptions {
  /** The store's connection, in WAL mode. */
  database: SqliteDatabase;
  /**
   * Receives the worker's failure, once per streak (the store then checkpoints inline until a new worker
   * checkpoints), and a failure to give the connection its `wal_autocheckpoint` back then. Called from the
   * worker's listeners, where nothing catches a throw: it must not throw (the store passes its guarded
   * `onError`).
   */
  onError: (error: unknown) => void;
  /** Least time between a failure and the next worker's start; {@link FIRST_RESTART_DELAY_MS} by default. */
  firstRestartDelayMs?: number;
  /** The module the worker loads as better-sqlite3 (tests); better-sqlite3 itself by default. */
  driverPath?: string;
  /** {@link TRUNCATE_AFTER_PAGES} by default (tests lower it). */
  truncateAfterPages?: number;
}

function autocheckpoint(database: SqliteDatabase): number {
  const row = database.prepare('PRAGMA wal_autocheckpoint').get() as { wal_autocheckpoint: number | bigint };
  // A BigInt on a connection with better-sqlite3's safe integers on, which Math.trunc refused.
  return Number(row.wal_autocheckpoint);
}

// An integer read from SQLite or a constant, not input: PRAGMA arguments cannot be bound.
function setAutocheckpoint(database: SqliteDatabase, pages: number): void {
  database.prepare(`PRAGMA wal_autocheckpoint = ${Math.trunc(pages)}`).get();
}

/**
 * The connections whose `wal_autocheckpoint` stores raised: the setting before the first of them (SQLite's
 * default is 1,000 pages), and how many still keep it raised. Stores may share a connection: each kept
 * its own "before", so the first to close gave 1,000 back under the others, and the last gave back the
 * 10,000 it had found, for good.
 */
const raised = new WeakMap<SqliteDatabase, { own: number; stores: number }>();

/** @internal */
export class BackgroundCheckpoints {
  readonly #database: SqliteDatabase;
  /** The database file's absolute path, which the worker opens. */
  readonly #file: string;
  readonly #onError: (error: unknown) => void;
  readonly #firstRestartDelayMs: number;
  readonly #driverPath: string | undefined;
  readonly #truncateAfterPages: number;
  #worker: Worker | undefined;
  /** This store keeps the connection's `wal_autocheckpoint` raised (counted in `raised`). */
  #raising = false;
  /** After a failure: when (`performance.now()`) a new worker may start, and the delay after the next one. */
  #restartAt = 0;
  #restartDelayMs = 0;
  /** A failure was reported and no worker checkpointed since: further failures of the streak are not. */
  #failing = false;
  /** The connection's `total_changes()` when it last asked for a checkpoint. */
  #changesAtLastAsk = 0;
  readonly #stats: CheckpointStats = {
    worker: 'idle',
    checkpoints: 0,
    framesCheckpointed: 0,
    truncations: 0,
  };

  constructor(options: BackgroundCheckpointsOptions, file: string) {
    this.#database = options.database;
    this.#file = file;
    this.#onError = options.onError;
    this.#firstRestartDelayMs = options.firstRestartDelayMs ?? FIRST_RESTART_DELAY_MS;
    this.#driverPath = options.driverPath;
    this.#truncateAfterPages = options.truncateAfterPages ?? TRUNCATE_AFTER_PAGES;
    this.#raiseAutocheckpoint();
  }

  /** Raises the connection's `wal_autocheckpoint` to the fallback while this store's worker runs. */
  #raiseAutocheckpoint(): void {
    const entry = raised.get(this.#database);
    if (entry !== undefined) {
      entry.stores += 1;
    } else {
      const own = autocheckpoint(this.#database);
      setAutocheckpoint(this.#database, FALLBACK_AUTOCHECKPOINT_PAGES);
      raised.set(this.#database, { own, stores: 1 });
    }
    this.#raising = true;
  }

  /**
   * Background checkpoints for `options.database`, or `undefined` when it has no file another
   * connection can open (in memory, or a temporary database): those are checkpointed inline.
   */
  static start(options: BackgroundCheckpointsOptions): BackgroundCheckpoints | undefined {
    if (options.database.memory === true) return undefined;
    const rows = options.database.prepare('PRAGMA database_list').all() as { name: string; file: string }[];
    const file = rows.find((row) => row.name === 'main')?.file ?? '';
    return file === '' ? undefined : new BackgroundCheckpoints(options, file);
  }

  get stats(): CheckpointStats {
    return { ...this.#stats };
  }

  /**
   * Called after each commit with the connection's `total_changes()`: asks the worker for a checkpoint
   * once {@link CHECKPOINT_AFTER_ROWS} rows changed since the last time it asked (the worker joins requests
   * that come while one is scheduled). Never throws: it runs after a commit, which must not be reported as
   * failed (a worker that cannot start is reported on `onError`).
   */
  committed(totalChanges: number): void {
    if (this.#stopped() || totalChanges - this.#changesAtLastAsk < CHECKPOINT_AFTER_ROWS) return;
    // After a failure, inline checkpoints (at the connection's own setting) until the delay has passed.
    if (this.#stats.worker === 'failed' && performance.now() < this.#restartAt) return;
    this.#changesAtLastAsk = totalChanges;
    try {
      this.#worker ??= this.#restart();
      this.#worker?.postMessage('checkpoint');
    } catch {
      // Nothing here is expected to throw (#start reports its own failures, the store's onError is
      // guarded); kept so that a commit is never reported as failed for a checkpoint.
    }
  }

  /**
   * Ends the worker and gives the connection its own `wal_autocheckpoint` back (call it before closing the
   * connection); resolves once the worker exited.
   */
  async stop(): Promise<void> {
    const worker = this.#worker;
    this.#worker = undefined;
    let exited: Promise<void> | undefined;
    if (worker !== undefined) {
      exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
      // Held alive until it exited: unref'd, a process with nothing else to do would end before `exit`,
      // and whoever awaits close() would never resume.
      worker.ref();
      worker.postMessage('stop');
    }
    // After the worker was told to stop: a restore that fails must not leave the thread running.
    if (!this.#stopped()) {
      this.#stats.worker = 'stopped';
      if (this.#raising) this.#restoreAutocheckpoint();
    }
    await exited;
  }

  /**
   * Gives the connection its own `wal_autocheckpoint` back once no other store on it keeps it raised (a
   * connection the caller owns outlives the store). Called once per store. A connection its owner already
   * closed (before the store, the wrong order) has no setting left to give back: skipped. better-sqlite3's
   * bare TypeError for it rejected close(), and from the worker's failure listener it was an uncaught
   * exception, which ends a server's process. Any other failure is a typed error.
   */
  #restoreAutocheckpoint(): void {
    this.#raising = false;
    const entry = raised.get(this.#database);
    if (entry === undefined || --entry.stores > 0) return;
    raised.delete(this.#database);
    try {
      setAutocheckpoint(this.#database, entry.own);
    } catch (error) {
      if (isConnectionClosed(error)) return;
      throw toProgressError(error, 'give the connection its wal_autocheckpoint back');
    }
  }

  /** `stop()` was called: commits ask for nothing any more. */
  #stopped(): boolean {
    return this.#stats.worker === 'stopped';
  }

  /**
   * A worker again after a failure (the connection's setting raised again for it), or the first one.
   * A failure to raise it is one more failure of the streak.
   */
  #restart(): Worker | undefined {
    if (this.#stats.worker === 'failed' && !this.#raising) {
      try {
        this.#raiseAutocheckpoint();
      } catch (error) {
        this.#failed(undefined, error);
        return undefined;
      }
    }
    return this.#start();
  }

  #start(): Worker | undefined {
    try {
      const worker = new Worker(WORKER_SOURCE, {
        eval: true,
        workerData: {
          betterSqlite3: this.#driverPath ?? createRequire(import.meta.url).resolve('better-sqlite3'),
          file: this.#file,
          intervalMs: CHECKPOINT_INTERVAL_MS,
          truncateAfterPages: this.#truncateAfterPages,
          truncateBusyTimeoutMs: TRUNCATE_BUSY_TIMEOUT_MS,
        },
      });
      worker.unref();
      this.#stats.worker = 'running';
      worker.on('message', (message: { frames: number; truncated: boolean }) => {
        // A checkpoint ran: the failure streak, if any, is over.
        this.#failing = false;
        this.#restartDelayMs = 0;
        this.#stats.checkpoints += 1;
        this.#stats.framesCheckpointed += Math.max(0, message.frames);
        if (message.truncated) this.#stats.truncations += 1;
      });
      worker.on('error', (error) => this.#failed(worker, error));
      worker.on('exit', (code) => {
        if (code !== 0) this.#failed(worker, new Error(`the checkpoint worker exited with code ${code}`));
      });
      return worker;
    } catch (error) {
      this.#failed(undefined, error);
      return undefined;
    }
  }

  /**
   * The worker is gone: the store's connection checkpoints inline again (at its own `wal_autocheckpoint`)
   * until a later checkpoint starts a new worker, after a delay that doubles while they keep failing, and
   * the failure is reported once per streak. Runs in the worker's listeners, so nothing may leave it: a
   * failure to give the setting back is reported on `onError` too (typed), after the worker's. It escaped
   * the listener as an uncaught exception, which ends a server's process.
   */
  #failed(worker: Worker | undefined, cause: unknown): void {
    if (this.#stopped() || worker !== this.#worker) return;
    this.#worker = undefined;
    this.#stats.worker = 'failed';
    this.#restartDelayMs =
      this.#restartDelayMs === 0
        ? this.#firstRestartDelayMs
        : Math.min(MAX_RESTART_DELAY_MS, this.#restartDelayMs * 2);
    this.#restartAt = performance.now() + this.#restartDelayMs;
    const first = !this.#failing;
    if (first) {
      this.#failing = true;
      this.#onError(
        new ProgressError(
          ErrorCode.StoreUnavailable,
          `Background WAL checkpoints stopped (the store checkpoints in its commits until a new worker, started by a later checkpoint after a delay that backs off from 1 s to 5 min, runs again; further failures before then are not reported): ${
            cause instanceof Error ? cause.message : String(cause)
          }`,
          { cause },
        ),
      );
    }
    if (!this.#raising) return;
    try {
      this.#restoreAutocheckpoint();
    } catch (error) {
      if (first) this.#onError(error);
    }
  }
}
