import { existsSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { ErrorCode, isProgressError } from '@finishline/core';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { BackgroundCheckpoints, FALLBACK_AUTOCHECKPOINT_PAGES } from '../src/background-checkpoints.js';
import { SqliteProgressStore } from '../src/index.js';
import { eventually, tempDatabase } from './support/temp-database.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** A store on its own connection to a fresh file (the connection is the test's, to read its pragmas). */
function storeOnFile(
  options: { checkpoints?: 'background' | 'inline'; onError?: (error: unknown) => void } = {},
) {
  const temp = tempDatabase();
  const database = new Database(temp.file);
  const store = new SqliteProgressStore({ database, dataVersionPollMs: 0, ...options });
  cleanups.push(
    temp.remove,
    () => {
      database.close();
    },
    () => store.close(),
  );
  return { store, database, file: temp.file };
}

const autocheckpoint = (database: Database.Database) =>
  database.pragma('wal_autocheckpoint', { simple: true });

/**
 * `count` appends to a new task: about twice as many rows changed (the event, the task's row), so the
 * default asks for a checkpoint (CHECKPOINT_AFTER_ROWS, 1,000).
 */
async function appendSome(store: SqliteProgressStore, count = 600): Promise<void> {
  const task = await store.createTask({ owner: 'o', kind: 'k' });
  for (let i = 0; i < count; i++) await store.append(task.id, { type: 'item', key: `item-${i}`, ok: true });
}

describe("checkpoints: 'background' (the default)", () => {
  it('copies the WAL into the file on a worker thread after commits; the store’s connection keeps a high fallback', async () => {
    const { store, database } = storeOnFile();
    expect(autocheckpoint(database)).toBe(FALLBACK_AUTOCHECKPOINT_PAGES);
    expect(store.checkpointStats()).toEqual({
      worker: 'idle',
      checkpoints: 0,
      framesCheckpointed: 0,
      truncations: 0,
    });
    await appendSome(store);
    await eventually('a background checkpoint', () => (store.checkpointStats()?.framesCheckpointed ?? 0) > 0);
    // What the worker copied is all there was: a checkpoint on the store's connection finds nothing left.
    await eventually('the WAL fully copied', () => {
      const [row] = database.pragma('wal_checkpoint(PASSIVE)') as { log: number; checkpointed: number }[];
      return row !== undefined && row.log === row.checkpointed;
    });
  });

  it('counts the rows that task inserts wrote: a store that only creates tasks gets its checkpoints too', async () => {
    const { store } = storeOnFile();
    // One row each, committed on its own (outside the append transactions): 1,000 ask for a checkpoint.
    for (let i = 0; i < 1_100; i++) await store.createTask({ owner: 'o', kind: 'k' });
    await eventually('a background checkpoint', () => (store.checkpointStats()?.framesCheckpointed ?? 0) > 0);
  });

  it('starts no worker before the first commit, and close() ends it', async () => {
    const { store, database } = storeOnFile();
    await store.getTask('nothing-written');
    expect(store.checkpointStats()?.worker).toBe('idle');
    // Fewer rows than ask for a checkpoint: still no thread.
    await appendSome(store, 100);
    expect(store.checkpointStats()?.worker).toBe('idle');
    await appendSome(store);
    expect(store.checkpointStats()?.worker).toBe('running');
    await eventually('a background checkpoint', () => (store.checkpointStats()?.checkpoints ?? 0) > 0);
    // Resolves once the worker exited.
    await store.close();
    expect(store.checkpointStats()?.worker).toBe('stopped');
    // The connection is the test's, and outlives the store: its own setting is back.
    expect(autocheckpoint(database)).toBe(1000);
  });

  it('a second close() while the first waits for the worker resolves only once the worker exited', async () => {
    const { store } = storeOnFile();
    await appendSome(store);
    expect(store.checkpointStats()?.worker).toBe('running');
    const exits: string[] = [];
    const first = store.close().then(() => exits.push('first'));
    // A server's shutdown and the app's own both closing the store: whoever awaits either may then
    // remove the file, which the worker must no longer hold open.
    const second = store.close().then(() => exits.push('second'));
    await second;
    expect(exits).toEqual(['first', 'second']);
    await first;
  });

  it('gives a connection that reads integers as BigInt its own setting back, and close() resolves', async () => {
    const temp = tempDatabase();
    cleanups.push(temp.remove);
    const database = new Database(temp.file);
    cleanups.push(() => {
      database.close();
    });
    // The caller's whole app reads 64-bit integers exactly (better-sqlite3's safe integers): so does the
    // store on its connection, the pragma it reads back included.
    database.defaultSafeIntegers(true);
    const store = new SqliteProgressStore({ database, dataVersionPollMs: 0 });
    await appendSome(store);
    await expect(store.close()).resolves.toBeUndefined();
    expect(autocheckpoint(database)).toBe(1000n);
  });

  it('two stores on one connection: the setting stays raised until the last closes, then is the connection’s own', async () => {
    const { store, database } = storeOnFile();
    const second = new SqliteProgressStore({ database, dataVersionPollMs: 0 });
    cleanups.push(() => second.close());
    await store.close();
    // The second store still checkpoints in the background: its safety net stays.
    expect(autocheckpoint(database)).toBe(FALLBACK_AUTOCHECKPOINT_PAGES);
    await second.close();
    // Not the 10,000 pages the second store found (the first store's) and gave back for good.
    expect(autocheckpoint(database)).toBe(1000);
  });

  it('goes back to inline checkpoints, and says so on onError, when the worker cannot open the file', async () => {
    const errors: unknown[] = [];
    const { store, database, file } = storeOnFile({ onError: (error) => errors.push(error) });
    // The store's connection keeps the file it opened; the worker, opening it by name, finds none.
    rmSync(file);
    await appendSome(store);
    await eventually('the worker’s failure reported', () => errors.length > 0);
    expect(errors).toHaveLength(1);
    expect(isProgressError(errors[0]) && errors[0].code).toBe(ErrorCode.StoreUnavailable);
    expect(String((errors[0] as Error).message)).toMatch(/Background WAL checkpoints stopped/);
    // Why, as SQLite said it: better-sqlite3's error crossed from the thread as a bare { code }, and the
    // report ended in "[object Object]".
    expect(String((errors[0] as Error).message)).toMatch(/: unable to open database file$/);
    expect((errors[0] as Error).cause).toMatchObject({ code: 'SQLITE_CANTOPEN' });
    expect(autocheckpoint(database)).toBe(1000);
    expect(store.checkpointStats()?.worker).toBe('failed');
    // The store goes on working.
    await appendSome(store, 5);
    expect(errors).toHaveLength(1);
  });

  it('starts a new worker after a failure once the delay passed, and checkpoints in the background again', async () => {
    const errors: unknown[] = [];
    const { store, database, file } = storeOnFile({ onError: (error) => errors.push(error) });
    // The worker, opening the file by name, finds none: a failure that passes once the file is back.
    renameSync(file, `${file}.away`);
    await appendSome(store);
    await eventually('the worker’s failure reported', () => errors.length > 0);
    expect(store.checkpointStats()?.worker).toBe('failed');
    expect(autocheckpoint(database)).toBe(1000);
    renameSync(`${file}.away`, file);
    // Before the delay (1 s): inline checkpoints, no new worker.
    await appendSome(store);
    expect(store.checkpointStats()?.worker).toBe('failed');
    await new Promise((resolve) => setTimeout(resolve, 1_100));
    // Before, the store checkpointed inline for the rest of its life after one failure, however passing.
    await appendSome(store);
    await eventually('a background checkpoint', () => (store.checkpointStats()?.checkpoints ?? 0) > 0);
    expect(store.checkpointStats()?.worker).toBe('running');
    expect(autocheckpoint(database)).toBe(FALLBACK_AUTOCHECKPOINT_PAGES);
    expect(errors).toHaveLength(1);
    await store.close();
    expect(autocheckpoint(database)).toBe(1000);
  });

  it('retries with a doubling delay, reports the failure once per streak, and stop() leaves nothing running', async () => {
    const temp = tempDatabase();
    const database = new Database(temp.file);
    database.pragma('journal_mode = WAL');
    database.exec('CREATE TABLE t (x); INSERT INTO t VALUES (1)');
    const errors: unknown[] = [];
    const checkpoints = BackgroundCheckpoints.start({
      database,
      onError: (error) => errors.push(error),
      firstRestartDelayMs: 300,
    });
    cleanups.push(temp.remove, () => {
      database.close();
    });
    if (checkpoints === undefined) throw new Error('a file database gets background checkpoints');
    const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
    const failedAgain = () => eventually('the worker failed', () => checkpoints.stats.worker === 'failed');
    renameSync(temp.file, `${temp.file}.away`);
    let changes = 0;
    // A commit that takes the connection's changed rows past the next checkpoint's threshold.
    const ask = () => {
      changes += 1_000;
      checkpoints.committed(changes);
    };
    ask();
    expect(checkpoints.stats.worker).toBe('running');
    await failedAgain();
    expect(errors).toHaveLength(1);
    // Within the delay: no new worker.
    ask();
    expect(checkpoints.stats.worker).toBe('failed');
    await sleep(350);
    ask();
    expect(checkpoints.stats.worker).toBe('running');
    await failedAgain();
    // The same streak: not reported again.
    expect(errors).toHaveLength(1);
    // The delay doubled (600 ms).
    await sleep(200);
    ask();
    expect(checkpoints.stats.worker).toBe('failed');
    renameSync(`${temp.file}.away`, temp.file);
    await sleep(450);
    ask();
    expect(checkpoints.stats.worker).toBe('running');
    await eventually('a background checkpoint', () => checkpoints.stats.checkpoints > 0);
    expect(autocheckpoint(database)).toBe(FALLBACK_AUTOCHECKPOINT_PAGES);
    await checkpoints.stop();
    expect(checkpoints.stats.worker).toBe('stopped');
    expect(autocheckpoint(database)).toBe(1000);
    // Stopped: a commit starts nothing.
    ask();
    expect(checkpoints.stats.worker).toBe('stopped');
    expect(errors).toHaveLength(1);
  });

  it('skips a checkpoint that fails with an extended busy code (SQLITE_BUSY_RECOVERY) like a plain busy one', async () => {
    const temp = tempDatabase();
    const database = new Database(temp.file);
    database.pragma('journal_mode = WAL');
    database.exec('CREATE TABLE t (x); INSERT INTO t VALUES (1)');
    // better-sqlite3, but its first checkpoint finds another connection recovering the WAL.
    const marker = `${temp.file}.busy`;
    const driver = `${temp.file}.driver.cjs`;
    writeFileSync(
      driver,
      `const Database = require(${JSON.stringify(createRequire(import.meta.url).resolve('better-sqlite3'))});
let busy = true;
module.exports = class extends Database {
  pragma(source, options) {
    if (busy && source.startsWith('wal_checkpoint')) {
      busy = false;
      require('node:fs').writeFileSync(${JSON.stringify(marker)}, '');
      throw Object.assign(new Error('database is locked'), { code: 'SQLITE_BUSY_RECOVERY' });
    }
    return super.pragma(source, options);
  }
};
`,
    );
    const errors: unknown[] = [];
    const checkpoints = BackgroundCheckpoints.start({
      database,
      onError: (error) => errors.push(error),
      firstRestartDelayMs: 60_000,
      driverPath: driver,
    });
    cleanups.push(temp.remove, () => {
      database.close();
    });
    if (checkpoints === undefined) throw new Error('a file database gets background checkpoints');
    cleanups.push(() => checkpoints.stop());
    let changes = 0;
    const ask = () => {
      changes += 1_000;
      checkpoints.committed(changes);
    };
    ask();
    await eventually('the busy checkpoint', () => existsSync(marker));
    await eventually('the next checkpoint, or the worker gone', () => {
      if (checkpoints.stats.worker === 'failed') return true;
      ask();
      return checkpoints.stats.checkpoints > 0;
    });
    expect(errors).toEqual([]);
    expect(checkpoints.stats.worker).toBe('running');
    expect(checkpoints.stats.checkpoints).toBeGreaterThan(0);
  });

  it('closes without an error when the caller closed its own connection first, and again after that', async () => {
    const { store, database } = storeOnFile();
    await appendSome(store);
    expect(store.checkpointStats()?.worker).toBe('running');
    // The wrong order (docs: close the store, then the connection): the store has no setting to give
    // back to a closed connection, and still ends its worker. close() rejected with better-sqlite3's bare
    // TypeError ("The database connection is not open") before it told the worker to stop.
    const task = await store.createTask({ owner: 'o', kind: 'k' });
    // What could not be committed any more is said where it was asked for (awaited below; the assertion
    // is attached now, before close() rejects it).
    const queued = expect(store.append(task.id, { type: 'progress', done: 1 })).rejects.toMatchObject({
      code: ErrorCode.StoreUnavailable,
    });
    database.close();
    await expect(store.close()).resolves.toBeUndefined();
    expect(store.checkpointStats()?.worker).toBe('stopped');
    await queued;
    await expect(store.close()).resolves.toBeUndefined();
  });

  it('reports a worker failure that comes after the caller closed its connection on onError, and throws nothing', async () => {
    const errors: unknown[] = [];
    const uncaught: unknown[] = [];
    const record = (error: unknown) => uncaught.push(error);
    process.on('uncaughtException', record);
    cleanups.push(() => {
      process.off('uncaughtException', record);
    });
    const { store, database, file } = storeOnFile({ onError: (error) => errors.push(error) });
    // The worker, opening the file by name, finds none: it fails once it has started.
    rmSync(file);
    await appendSome(store);
    database.close();
    // Its failure used to restore the closed connection's wal_autocheckpoint from the worker's 'error'
    // listener, whose TypeError nothing caught: in a server, an uncaught exception that ends the process.
    await eventually('the worker’s failure reported', () => errors.length > 0);
    expect(uncaught).toEqual([]);
    expect(errors).toHaveLength(1);
    expect(isProgressError(errors[0]) && errors[0].code).toBe(ErrorCode.StoreUnavailable);
    expect(store.checkpointStats()?.worker).toBe('failed');
    await expect(store.close()).resolves.toBeUndefined();
  });
});

/** Uncaught exceptions of the test, recorded (an escape from a worker's listener ends a server's process). */
function recordUncaught(): unknown[] {
  const uncaught: unknown[] = [];
  const record = (error: unknown) => uncaught.push(error);
  process.on('uncaughtException', record);
  cleanups.push(() => {
    process.off('uncaughtException', record);
  });
  return uncaught;
}

/** Node's warnings emitted during the test. */
function recordWarnings(): Error[] {
  const warnings: Error[] = [];
  const record = (warning: Error) => warnings.push(warning);
  process.on('warning', record);
  cleanups.push(() => {
    process.off('warning', record);
  });
  return warnings;
}

describe('the TRUNCATE checkpoint past the size', () => {
  it('is not tried while a reader on an older snapshot keeps the passive one from copying everything', async () => {
    // A TRUNCATE checkpoint takes the write lock, then waits (up to 200 ms) for the readers on older
    // snapshots with it held: every writer of every process stood still meanwhile, and waited behind it
    // again at each checkpoint asked for while a long reader (a backup, an operator's query) lasted,
    // for a checkpoint that could not empty the WAL anyway.
    const temp = tempDatabase();
    const writer = new Database(temp.file);
    const reader = new Database(temp.file);
    const other = new Database(temp.file, { timeout: 0 });
    writer.pragma('journal_mode = WAL');
    writer.pragma('wal_autocheckpoint = 0');
    writer.exec('CREATE TABLE t (x)');
    const insert = writer.prepare('INSERT INTO t VALUES (randomblob(3000))');
    for (let i = 0; i < 100; i++) insert.run();
    // The reader's snapshot: every frame written after it is one the passive checkpoint cannot copy.
    reader.exec('BEGIN');
    reader.prepare('SELECT count(*) FROM t').get();
    for (let i = 0; i < 100; i++) insert.run();
    const checkpoints = BackgroundCheckpoints.start({
      database: writer,
      onError: (error) => {
        throw error;
      },
      truncateAfterPages: 64,
    }) as BackgroundCheckpoints;
    cleanups.push(temp.remove, async () => {
      await checkpoints.stop();
      if (reader.inTransaction) reader.exec('ROLLBACK');
      for (const connection of [other, reader, writer]) connection.close();
    });
    checkpoints.committed(1000);
    // Another connection takes the write lock every few ms until the checkpoint ran.
    let refused = 0;
    await eventually('the worker checkpointed', () => {
      try {
        other.exec('BEGIN IMMEDIATE');
        other.exec('ROLLBACK');
      } catch (error) {
        if ((error as { code?: string }).code !== 'SQLITE_BUSY') throw error;
        refused += 1;
      }
      return checkpoints.stats.checkpoints > 0;
    });
    expect(checkpoints.stats.truncations).toBe(0);
    expect(refused).toBe(0);
    // Once the reader ended, the next checkpoint empties the WAL.
    reader.exec('ROLLBACK');
    checkpoints.committed(2000);
    await eventually('the WAL was emptied', () => checkpoints.stats.truncations > 0);
  });
});

describe('a failure reported from a worker’s listener or a timer', () => {
  it('an onError that throws crashes nothing: the first throw is one process warning, the store goes on', async () => {
    const uncaught = recordUncaught();
    const warnings = recordWarnings();
    let calls = 0;
    const { store, file } = storeOnFile({
      onError: () => {
        calls += 1;
        throw new Error('the logger is down');
      },
    });
    // The worker, opening the file by name, finds none: its failure is reported from its 'error' listener.
    rmSync(file);
    await appendSome(store);
    await eventually('the worker’s failure reported', () => calls > 0);
    // Warnings are emitted on the next tick; an escape would have been caught by then too.
    await new Promise((resolve) => setTimeout(resolve, 50));
    // Before: the throw left the listener as an uncaught exception, which ends a server's process.
    expect(uncaught).toEqual([]);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatchObject({ code: 'FINISHLINE_SQLITE_ON_ERROR_THREW' });
    expect(warnings[0]?.message).toMatch(/the logger is down/);
    expect(store.checkpointStats()?.worker).toBe('failed');
    await appendSome(store, 5);
    await expect(store.close()).resolves.toBeUndefined();
  });

  it('an onError that throws from the data_version poll’s timer crashes nothing either', async () => {
    const uncaught = recordUncaught();
    const warnings = recordWarnings();
    let calls = 0;
    const temp = tempDatabase();
    const database = new Database(temp.file);
    const store = new SqliteProgressStore({
      database,
      dataVersionPollMs: 5,
      checkpoints: 'inline',
      onError: () => {
        calls += 1;
        throw new Error('the logger is down');
      },
    });
    cleanups.push(temp.remove, () => store.close());
    // The wrong order (the caller's connection closed under the store): every poll fails, and the
    // streak is reported once.
    database.close();
    await eventually('the failed polls reported', () => calls >= 1);
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(uncaught).toEqual([]);
    expect(calls).toBe(1);
    expect(
      warnings.filter(
        (warning) => (warning as { code?: string }).code === 'FINISHLINE_SQLITE_ON_ERROR_THREW',
      ),
    ).toHaveLength(1);
  });

  it('reports a failure to give the connection its wal_autocheckpoint back on onError, typed, and throws nothing', async () => {
    const uncaught = recordUncaught();
    const errors: unknown[] = [];
    const temp = tempDatabase();
    const database = new Database(temp.file);
    // Once armed, setting wal_autocheckpoint fails as a connection can (an I/O error, not a closed one).
    let failReset = false;
    const wrapped = new Proxy(database, {
      get(target, property) {
        if (property === 'prepare')
          return (sql: string) => {
            if (failReset && sql.startsWith('PRAGMA wal_autocheckpoint ='))
              throw new Database.SqliteError('disk I/O error', 'SQLITE_IOERR');
            return target.prepare(sql);
          };
        const value = Reflect.get(target, property, target);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    });
    const store = new SqliteProgressStore({
      database: wrapped,
      dataVersionPollMs: 0,
      onError: (error) => errors.push(error),
    });
    cleanups.push(
      temp.remove,
      () => {
        database.close();
      },
      () => store.close(),
    );
    failReset = true;
    rmSync(temp.file);
    await appendSome(store);
    await eventually('the worker’s failure reported', () => errors.length > 0);
    await new Promise((resolve) => setTimeout(resolve, 50));
    // Before: the reset's error left the worker's listener as an uncaught exception.
    expect(uncaught).toEqual([]);
    expect(errors).toHaveLength(2);
    expect(errors[0]).toMatchObject({ code: ErrorCode.StoreUnavailable });
    expect(String((errors[0] as Error).message)).toMatch(/Background WAL checkpoints stopped/);
    expect(isProgressError(errors[1]) && errors[1].code).toBe(ErrorCode.StoreUnavailable);
    expect(String((errors[1] as Error).message)).toMatch(/wal_autocheckpoint back: disk I\/O error/);
    expect(store.checkpointStats()?.worker).toBe('failed');
    await expect(store.close()).resolves.toBeUndefined();
  });
});

describe('a store that fails to open', () => {
  it("stops polling for other connections' commits when its checkpoints cannot start", async () => {
    const temp = tempDatabase();
    const database = new Database(temp.file);
    cleanups.push(temp.remove, () => {
      database.close();
    });
    // The checkpoints' start reads the file's path; make that read fail, after the change feed began polling.
    const prepare = database.prepare.bind(database);
    database.prepare = ((source: string) => {
      if (source.startsWith('PRAGMA database_list')) throw new Error('disk I/O error');
      return prepare(source);
    }) as typeof database.prepare;
    const errors: unknown[] = [];
    expect(
      () =>
        new SqliteProgressStore({
          database,
          dataVersionPollMs: 2,
          onError: (error) => errors.push(error),
        }),
    ).toThrow(/disk I\/O error/);
    // The caller closes its connection on the failure: a poll left running would read a closed database
    // and report it on every tick, for the life of the process.
    database.close();
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(errors).toEqual([]);
  });
});

describe("checkpoints: 'inline'", () => {
  it('leaves SQLite’s own checkpoints in the commits and starts no worker', async () => {
    const { store, database } = storeOnFile({ checkpoints: 'inline' });
    expect(autocheckpoint(database)).toBe(1000);
    await appendSome(store, 20);
    expect(store.checkpointStats()).toBeUndefined();
  });

  it('is what a database in memory gets whatever the option says', async () => {
    const store = new SqliteProgressStore({ database: ':memory:' });
    cleanups.push(() => store.close());
    await appendSome(store, 5);
    expect(store.checkpointStats()).toBeUndefined();
  });

  it('refuses an unknown value with invalid_input', () => {
    expect(
      () => new SqliteProgressStore({ database: ':memory:', checkpoints: 'never' as 'inline' }),
    ).toThrowError(expect.objectContaining({ code: ErrorCode.InvalidInput }));
  });
});
