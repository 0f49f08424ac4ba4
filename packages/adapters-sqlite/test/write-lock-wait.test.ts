import { ErrorCode } from '@finishline/core';
import { ManualClock } from '@finishline/core/testing';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import type { SqliteDatabase } from '../src/index.js';
import { SqliteProgressStore } from '../src/index.js';
import { eventually, tempDatabase } from './support/temp-database.js';

/**
 * A write transaction waits for another connection's write lock by looking at it often. A process that
 * commits back to back frees the lock only for moments; SQLite's busy handler looks after 1, 2, 5 … then
 * every 100 ms, so it found the lock held nearly every time, and the other process's appends failed with
 * "database is locked" (cross-process.test.ts, 'appends to the same task from two processes', in CI).
 * Here the holder is another connection of this thread that frees the lock only when the store looks a
 * third time: inside SQLite's busy handler the store never looked again, and waited out busyTimeoutMs.
 */
describe('waiting for another connection’s write lock', () => {
  const cleanups: (() => void)[] = [];
  afterEach(() => {
    for (const cleanup of cleanups.splice(0).reverse()) cleanup();
  });

  /** A store on a file whose write lock another connection holds, its BEGIN IMMEDIATE runs counted. */
  async function setup(busyTimeoutMs: number, releaseAtLook: number, dataVersionPollMs = 0) {
    const temp = tempDatabase();
    cleanups.push(temp.remove);
    const raw = new Database(temp.file);
    const holder = new Database(temp.file);
    cleanups.push(() => {
      if (holder.inTransaction) holder.prepare('ROLLBACK').run();
      holder.close();
    });
    let looks = 0;
    const database: SqliteDatabase = {
      memory: false,
      close: () => raw.close(),
      prepare(sql) {
        const statement = raw.prepare(sql);
        if (sql !== 'BEGIN IMMEDIATE') return statement;
        return {
          run: (...parameters: unknown[]) => {
            looks += 1;
            if (looks === releaseAtLook && holder.inTransaction) holder.prepare('COMMIT').run();
            return statement.run(...parameters);
          },
          get: (...parameters: unknown[]) => statement.get(...parameters),
          all: (...parameters: unknown[]) => statement.all(...parameters),
        };
      },
    };
    const store = new SqliteProgressStore({ database, busyTimeoutMs, dataVersionPollMs });
    cleanups.push(() => raw.close());
    cleanups.push(() => void store.close());
    await store.createTask({ id: 't', owner: 'alice', kind: 'batch_taint' });
    if (dataVersionPollMs > 0) {
      // No other writer in the store's last transaction: it begins the next one as it did. Then another
      // connection starts writing, and only a poll can tell.
      await store.append('t', { type: 'progress', done: 0 });
      const seen: string[] = [];
      store.changes.subscribe((change) => seen.push(change.taskId));
      const other = new SqliteProgressStore({ database: temp.file, dataVersionPollMs: 0 });
      await other.createTask({ id: 'other', owner: 'bob', kind: 'batch_taint' });
      await other.append('other', { type: 'progress', done: 1 });
      await other.close();
      await eventually('a poll found the other connection’s commit', () => seen.includes('other'));
      looks = 0;
      holder.prepare('BEGIN IMMEDIATE').run();
      return { store, raw, looks: () => looks };
    }
    // The store's last transaction saw another connection's commit, as in a process beside a busy one.
    holder.prepare("INSERT INTO finishline_meta (key, value) VALUES ('holder', '0')").run();
    await store.append('t', { type: 'progress', done: 0 });
    looks = 0;
    holder.prepare('BEGIN IMMEDIATE').run();
    holder.prepare("UPDATE finishline_meta SET value = '1' WHERE key = 'holder'").run();
    return { store, raw, looks: () => looks };
  }

  it('gets the lock when it is freed between two looks, and gives busy_timeout back', async () => {
    const { store, raw, looks } = await setup(2000, 3);
    const result = await store.append('t', { type: 'progress', done: 1 });
    expect(result.event.seq).toBe(2);
    expect(looks()).toBe(3);
    expect(raw.pragma('busy_timeout', { simple: true })).toBe(2000);
  });

  it('creates a task when the lock is freed between two looks', async () => {
    const { store, looks } = await setup(2000, 3);
    const task = await store.createTask({ id: 'u', owner: 'alice', kind: 'batch_taint' });
    expect((await store.getTask('u'))?.createdAt).toBe(task.createdAt);
    expect(looks()).toBe(3);
  });

  it('renews the epoch when the lock is freed between two looks', async () => {
    const { store, looks } = await setup(2000, 3);
    const before = await store.getEpoch();
    const renewed = await store.renewEpoch();
    expect(renewed).not.toBe(before);
    expect(await store.getEpoch()).toBe(renewed);
    expect(looks()).toBe(3);
  });

  it('looks often too when only a poll saw the other connection write', async () => {
    const { store, looks } = await setup(2000, 3, 5);
    const result = await store.append('t', { type: 'progress', done: 2 });
    expect(result.event.seq).toBe(2);
    expect(looks()).toBe(3);
  });

  it('fails with store_unavailable once the lock stayed held for busyTimeoutMs, busy_timeout given back', async () => {
    const { store, raw, looks } = await setup(30, Number.POSITIVE_INFINITY);
    await expect(store.append('t', { type: 'progress', done: 1 })).rejects.toMatchObject({
      code: ErrorCode.StoreUnavailable,
      message: expect.stringContaining('database is locked'),
    });
    expect(looks()).toBeGreaterThan(1);
    expect(raw.pragma('busy_timeout', { simple: true })).toBe(30);
    expect(raw.inTransaction).toBe(false);
  });

  it('with busyTimeoutMs 0, looks once', async () => {
    const { store, looks } = await setup(0, Number.POSITIVE_INFINITY);
    await expect(store.append('t', { type: 'progress', done: 1 })).rejects.toMatchObject({
      code: ErrorCode.StoreUnavailable,
    });
    expect(looks()).toBe(1);
  });
});

/**
 * The store's other writes wait for the lock the same way: the migration of a new file, and the renewal of
 * the epoch after a restore. Both went through SQLite's busy handler, which beside a process that commits
 * back to back missed the moments the lock was free, held the event loop for busyTimeoutMs and failed: the
 * store did not open, or the restore stayed without a renewal (nothing tries that one again).
 */
describe('the migration and the renewal after a restore wait for the lock as the write transactions do', () => {
  const cleanups: (() => Promise<void> | void)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  /**
   * A connection to `file` that counts the looks at the lock (runs of `BEGIN IMMEDIATE`) once `arm()` was
   * called, and has `holder` commit (free the lock) at the `releaseAtLook`th.
   */
  function lookingConnection(file: string, holder: Database.Database, releaseAtLook: number) {
    const raw = new Database(file);
    let armed = false;
    let looks = 0;
    let afterCommit: (() => void) | undefined;
    const database: SqliteDatabase = {
      memory: false,
      close: () => raw.close(),
      prepare(sql) {
        const statement = raw.prepare(sql);
        if (sql !== 'BEGIN IMMEDIATE' && sql !== 'COMMIT') return statement;
        return {
          run: (...parameters: unknown[]) => {
            if (sql === 'COMMIT') {
              const result = statement.run(...parameters);
              const then = afterCommit;
              afterCommit = undefined;
              then?.();
              return result;
            }
            if (armed) {
              looks += 1;
              if (looks === releaseAtLook && holder.inTransaction) holder.prepare('COMMIT').run();
            }
            return statement.run(...parameters);
          },
          get: (...parameters: unknown[]) => statement.get(...parameters),
          all: (...parameters: unknown[]) => statement.all(...parameters),
        };
      },
    };
    return {
      database,
      looks: () => looks,
      arm: () => {
        armed = true;
      },
      /** Runs `hook` right after the next COMMIT on this connection. */
      afterNextCommit: (hook: () => void) => {
        afterCommit = hook;
      },
    };
  }

  function holderOf(file: string): Database.Database {
    const holder = new Database(file);
    cleanups.push(() => {
      if (holder.inTransaction) holder.prepare('ROLLBACK').run();
      holder.close();
    });
    return holder;
  }

  it('migrates a new file when the lock is freed between two looks', async () => {
    const temp = tempDatabase();
    cleanups.push(temp.remove);
    const holder = holderOf(temp.file);
    // WAL first, as a store would: switching to WAL needs the lock too.
    holder.pragma('journal_mode = WAL');
    const connection = lookingConnection(temp.file, holder, 3);
    connection.arm();
    holder.prepare('BEGIN IMMEDIATE').run();
    const store = new SqliteProgressStore({
      database: connection.database,
      busyTimeoutMs: 500,
      dataVersionPollMs: 0,
    });
    cleanups.push(() => {
      connection.database.close();
    });
    cleanups.push(() => store.close());
    expect(connection.looks()).toBe(3);
    await expect(store.createTask({ id: 't', owner: 'alice', kind: 'k' })).resolves.toMatchObject({
      id: 't',
    });
  });

  it('renews the epoch after a restore when the lock is freed between two looks', async () => {
    const temp = tempDatabase();
    cleanups.push(temp.remove);
    const errors: unknown[] = [];
    const worker = new SqliteProgressStore({ database: temp.file, dataVersionPollMs: 0 });
    cleanups.push(() => worker.close());
    const holder = holderOf(temp.file);
    const connection = lookingConnection(temp.file, holder, 3);
    const server = new SqliteProgressStore({
      database: connection.database,
      busyTimeoutMs: 500,
      dataVersionPollMs: 0,
      onError: (error) => errors.push(error),
    });
    cleanups.push(() => {
      connection.database.close();
    });
    cleanups.push(() => server.close());
    await worker.createTask({ id: 'old', owner: 'alice', kind: 'k' });
    await worker.append('old', { type: 'progress', done: 1 });
    await server.createTask({ id: 'mine', owner: 'bob', kind: 'k' });
    const backup = `${temp.file}.backup`;
    const live = new Database(temp.file, { readonly: true });
    await live.backup(backup);
    live.close();
    for (let done = 2; done <= 10; done++) await worker.append('old', { type: 'progress', done });
    // The server's mark goes past the backup's ids.
    await server.append('mine', { type: 'progress', done: 1 });
    const before = await server.getEpoch();
    const source = new Database(backup, { readonly: true });
    await source.backup(temp.file);
    source.close();
    // The server's next append notices the restore; right after its commit, another connection takes the
    // lock and frees it only at the renewal's third look.
    connection.arm();
    connection.afterNextCommit(() => holder.prepare('BEGIN IMMEDIATE').run());
    await server.append('mine', { type: 'progress', done: 1 });
    expect(errors).toEqual([]);
    expect(connection.looks()).toBe(3);
    expect(await worker.getEpoch()).not.toBe(before);
  });
});

/**
 * A write reads the clock once it holds the lock. `createTask` read it before its wait: a lease shorter
 * than the wait was created already expired (the next reap interrupted the task it had just created), and
 * its run (`createdAt`) was of before a purge that held the lock meanwhile.
 */
describe('the time of a write that waited for the lock', () => {
  it('a task created after a wait for the lock takes its run and lease from after the wait', async () => {
    const temp = tempDatabase();
    const raw = new Database(temp.file);
    const holder = new Database(temp.file);
    const clock = new ManualClock(1_000_000);
    let looks = 0;
    let armed = false;
    const database: SqliteDatabase = {
      memory: false,
      close: () => raw.close(),
      prepare(sql) {
        const statement = raw.prepare(sql);
        if (sql !== 'BEGIN IMMEDIATE') return statement;
        return {
          run: (...parameters: unknown[]) => {
            if (armed && ++looks === 1) clock.advance(1000); // a second goes by with the lock held
            if (armed && looks === 2) holder.prepare('COMMIT').run();
            return statement.run(...parameters);
          },
          get: (...parameters: unknown[]) => statement.get(...parameters),
          all: (...parameters: unknown[]) => statement.all(...parameters),
        };
      },
    };
    const store = new SqliteProgressStore({ database, clock: clock.now, dataVersionPollMs: 0 });
    try {
      holder.prepare('BEGIN IMMEDIATE').run();
      armed = true;
      const task = await store.createTask({
        id: 't',
        owner: 'alice',
        kind: 'k',
        lease: { owner: 'w', ttlMs: 500 },
      });
      expect(looks).toBe(2);
      expect(task.createdAt).toBe(1_001_000);
      expect(task.leaseExpiresAt).toBe(1_001_500);
      expect(await store.getTask('t')).toEqual(task);
      expect(await store.reapExpiredLeases()).toEqual([]);
    } finally {
      await store.close();
      if (holder.inTransaction) holder.prepare('ROLLBACK').run();
      holder.close();
      raw.close();
      temp.remove();
    }
  });
});
