import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import type { ProgressStore, Task, TaskChange, TaskEvent } from '@finishline/core';
import { ErrorCode, isProgressError, LIMITS } from '@finishline/core';
import { ManualClock } from '@finishline/core/testing';
import Database from 'better-sqlite3';
import { describe, expect, it, vi } from 'vitest';
import { compareTsdocDefaults, defaultLiteral } from '../../../scripts/tsdoc-defaults.mjs';
import type { SqliteDatabase, SqliteProgressStoreOptions } from '../src/index.js';
import { SQLITE_SCHEMA_VERSION, SQLITE_STORE_DEFAULTS, SqliteProgressStore } from '../src/index.js';
import { PURGE_EVENT_BUDGET } from '../src/sqlite-progress-store.js';
import { eventually, tempDatabase } from './support/temp-database.js';

async function expectCode(promise: Promise<unknown>, code: ErrorCode): Promise<void> {
  const error = await promise.then(
    (value) => new Error(`resolved with ${JSON.stringify(value)}`),
    (reason: unknown) => reason,
  );
  expect(isProgressError(error, code), `expected ${code}, got ${String(error)}`).toBe(true);
}

function expectThrowsCode(action: () => unknown, code: ErrorCode, message?: RegExp): void {
  let thrown: unknown;
  try {
    action();
  } catch (error) {
    thrown = error;
  }
  expect(isProgressError(thrown, code), `expected ${code}, got ${String(thrown)}`).toBe(true);
  if (message) expect((thrown as Error).message).toMatch(message);
}

/**
 * The options table of this package's README (`| \`pollIntervalMs\` | \`500\` | meaning |`): each option's
 * default cell, where it is a literal in code quotes (not prose such as "ignore").
 */
function readmeDefaults(): Map<string, string> {
  const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
  return new Map(
    [...readme.matchAll(/^\| `(\w+)` +\| (.+?) +\|/gm)].map(([, name, cell]) => [
      name as string,
      cell as string,
    ]),
  );
}

describe('options', () => {
  it('states in the TSDoc of its options the defaults it has', () => {
    const source = readFileSync(new URL('../src/sqlite-store-options.ts', import.meta.url), 'utf8');
    const { checked, wrong } = compareTsdocDefaults(source, SQLITE_STORE_DEFAULTS);
    expect(wrong).toEqual([]);
    expect(checked).toBeGreaterThan(0);
  });

  it('states in the README the defaults it has', () => {
    const stated = readmeDefaults();
    for (const [name, value] of Object.entries(SQLITE_STORE_DEFAULTS)) {
      const cell = stated.get(name);
      expect(cell, `README row of ${name}`).toBeDefined();
      if (typeof value === 'function' || !/^`[^`]+`$/.test(cell as string)) continue;
      expect(cell, name).toBe(`\`${defaultLiteral(value)}\``);
    }
  });

  it('exports frozen defaults', () => {
    expect(Object.isFrozen(SQLITE_STORE_DEFAULTS)).toBe(true);
    expect(SQLITE_STORE_DEFAULTS).toMatchObject({
      synchronous: 'normal',
      busyTimeoutMs: 5000,
      dataVersionPollMs: 50,
      maxBatchSize: 1000,
    });
  });

  it('rejects bad options at construction with invalid_input naming the option', () => {
    const bad: [unknown, RegExp][] = [
      [undefined, /options must be an object/],
      [{}, /database must be/],
      [{ database: '' }, /database must be a non-empty path/],
      [{ database: 42 }, /database must be/],
      [{ database: { close() {} } }, /database must be/],
      [{ database: ':memory:', synchronous: 'off' }, /synchronous/],
      [{ database: ':memory:', busyTimeoutMs: -1 }, /busyTimeoutMs/],
      [{ database: ':memory:', dataVersionPollMs: 1.5 }, /dataVersionPollMs/],
      [{ database: ':memory:', maxBatchSize: 0 }, /maxBatchSize/],
      [{ database: ':memory:', clock: 5 }, /clock/],
      [{ database: ':memory:', onError: 'log' }, /onError/],
      [{ database: ':memory:', path: 'x.db' }, /unknown option "path"/],
      // A getter or Proxy trap that throws (until 8 December 2026 its own error, without a code).
      [
        {
          database: ':memory:',
          get busyTimeoutMs(): never {
            throw new Error('getter broke');
          },
        },
        /^SqliteProgressStore: busyTimeoutMs threw: getter broke$/,
      ],
      [
        new Proxy(
          {},
          {
            ownKeys() {
              throw new Error('trap broke');
            },
          },
        ),
        /^SqliteProgressStore: options threw: trap broke$/,
      ],
    ];
    for (const [options, message] of bad) {
      expectThrowsCode(
        () => new SqliteProgressStore(options as SqliteProgressStoreOptions),
        ErrorCode.InvalidInput,
        message,
      );
    }
  });

  it('configures the connection: WAL, synchronous and busy_timeout as asked', async () => {
    const db = tempDatabase();
    const database = new Database(db.file);
    const store = new SqliteProgressStore({ database, synchronous: 'full', busyTimeoutMs: 1234 });
    expect(database.pragma('journal_mode', { simple: true })).toBe('wal');
    expect(database.pragma('synchronous', { simple: true })).toBe(2);
    expect(database.pragma('busy_timeout', { simple: true })).toBe(1234);
    await store.close();
    const normal = new SqliteProgressStore({ database });
    expect(database.pragma('synchronous', { simple: true })).toBe(1);
    await normal.close();
    database.close();
    db.remove();
  });

  it('a file that cannot be opened is store_unavailable', () => {
    expectThrowsCode(
      () => new SqliteProgressStore({ database: '/nonexistent-dir/finishline/progress.db' }),
      ErrorCode.StoreUnavailable,
    );
  });

  it('a file that is not a database is store_unavailable, as the constructor says, not internal', () => {
    const db = tempDatabase();
    try {
      // A wrong path in a config: a text file, or a database encrypted by another tool.
      writeFileSync(db.file, 'not a database\n'.repeat(1000));
      expectThrowsCode(() => new SqliteProgressStore({ database: db.file }), ErrorCode.StoreUnavailable);
    } finally {
      db.remove();
    }
  });
});

describe('open failures', () => {
  /** The error the constructor throws for `file`. */
  function openError(file: string, options: Partial<SqliteProgressStoreOptions> = {}): Error {
    try {
      const store = new SqliteProgressStore({ ...options, database: file });
      void store.close();
    } catch (error) {
      return error as Error;
    }
    throw new Error(`the store opened ${file}`);
  }

  it('name the file and SQLite’s result code: a file that is not a database, a file locked, a newer schema', async () => {
    const corrupt = tempDatabase();
    const locked = tempDatabase();
    const newer = tempDatabase();
    let holder: Database.Database | undefined;
    try {
      writeFileSync(corrupt.file, 'not a database\n'.repeat(1000));
      let error = openError(corrupt.file);
      expect(isProgressError(error, ErrorCode.StoreUnavailable), String(error)).toBe(true);
      expect(error.message).toContain(JSON.stringify(corrupt.file));
      expect(error.message).toContain('SQLITE_NOTADB');

      await new SqliteProgressStore({ database: locked.file }).close();
      holder = new Database(locked.file);
      // Another process holding the file in exclusive locking mode: no other connection can read it.
      holder.pragma('locking_mode = EXCLUSIVE');
      holder.prepare('BEGIN EXCLUSIVE').run();
      holder.prepare('COMMIT').run();
      error = openError(locked.file, { busyTimeoutMs: 10 });
      expect(isProgressError(error, ErrorCode.StoreUnavailable), String(error)).toBe(true);
      expect(error.message).toContain(JSON.stringify(locked.file));
      expect(error.message).toContain('SQLITE_BUSY');

      await new SqliteProgressStore({ database: newer.file }).close();
      const raw = new Database(newer.file);
      raw
        .prepare('INSERT INTO finishline_migrations (version, name, applied_at) VALUES (?, ?, 0)')
        .run(SQLITE_SCHEMA_VERSION + 1, 'from a newer release');
      raw.close();
      error = openError(newer.file);
      expect(isProgressError(error, ErrorCode.StoreUnavailable), String(error)).toBe(true);
      expect(error.message).toContain(JSON.stringify(newer.file));
      expect(error.message).toMatch(/newer than/);
    } finally {
      holder?.close();
      corrupt.remove();
      locked.remove();
      newer.remove();
    }
  });
});

describe('a connection that cannot write', () => {
  it('is refused at open with store_unavailable, not by every write after: read-only, or query_only', async () => {
    const db = tempDatabase();
    try {
      // At the current schema: opening needs no write, so nothing failed before the first write.
      const first = new SqliteProgressStore({ database: db.file });
      await first.createTask({ id: 'a', owner: 'alice', kind: 'k' });
      await first.close();
      const readOnly = new Database(db.file, { readonly: true });
      const queryOnly = new Database(db.file);
      queryOnly.pragma('query_only = 1');
      for (const database of [readOnly, queryOnly]) {
        expectThrowsCode(
          () => new SqliteProgressStore({ database, busyTimeoutMs: 1234 }),
          ErrorCode.StoreUnavailable,
          /cannot write \(SQLITE_READONLY/,
        );
        // The caller's connection is left with the store's busy timeout, as a store that opened leaves it.
        expect(database.pragma('busy_timeout', { simple: true })).toBe(1234);
        database.close();
      }
      // Nothing was written by the refused opens; a writable store still opens and writes.
      const again = new SqliteProgressStore({ database: db.file });
      expect((await again.getTask('a'))?.seq).toBe(0);
      await again.append('a', { type: 'progress', done: 1 });
      await again.close();
    } finally {
      db.remove();
    }
  });
});

describe('ownership and closing', () => {
  it('never closes a database the caller opened', async () => {
    const database = new Database(':memory:');
    // A better-sqlite3 Database satisfies the structural driver interface without a cast.
    const driver: SqliteDatabase = database;
    const store = new SqliteProgressStore({ database: driver });
    await store.createTask({ id: 'a', owner: 'alice', kind: 'k' });
    await store.close();
    expect(database.open).toBe(true);
    expect(database.prepare('SELECT count(*) FROM finishline_tasks').pluck().get()).toBe(1);
    database.close();
  });

  it('closes the database it opened (SQLite removes the WAL when its last connection closes)', async () => {
    const db = tempDatabase();
    const store = new SqliteProgressStore({ database: db.file });
    await store.createTask({ id: 'a', owner: 'alice', kind: 'k' });
    expect(existsSync(`${db.file}-wal`)).toBe(true);
    await store.close();
    expect(existsSync(`${db.file}-wal`)).toBe(false);
    db.remove();
  });

  it('commits queued appends on close, then rejects every call with closed', async () => {
    const db = tempDatabase();
    const store = new SqliteProgressStore({ database: db.file });
    await store.createTask({ id: 'a', owner: 'alice', kind: 'k' });
    const queued = store.append('a', { type: 'completed' });
    await store.close();
    await store.close();
    expect((await queued).event.seq).toBe(1);
    const calls: (() => Promise<unknown>)[] = [
      () => store.createTask({ owner: 'alice', kind: 'k' }),
      () => store.getTask('a'),
      () => store.listTasks({ owner: 'alice' }),
      () => store.append('a', { type: 'progress' }),
      () => store.readEvents('a', 0),
      () => store.latestSeqs(['a']),
      () => store.ack('a', 1),
      () => store.renewLease('a', 'w', 100),
      () => store.releaseLease('a', 'w'),
      () => store.reapExpiredLeases(),
      () => store.purgeFinished({ olderThanMs: 0 }),
    ];
    for (const call of calls) await expectCode(call(), ErrorCode.Closed);
    const reopened = new SqliteProgressStore({ database: db.file });
    expect((await reopened.getTask('a'))?.status).toBe('completed');
    await reopened.close();
    db.remove();
  });

  it('a listener that calls close() during a commit: every append queued before it commits, later ones are closed', async () => {
    const db = tempDatabase();
    // Five appends, two per batch: the first batch's listener closes the store with three still queued.
    const store = new SqliteProgressStore({ database: db.file, maxBatchSize: 2 });
    await store.createTask({ id: 'a', owner: 'alice', kind: 'k' });
    let early: Promise<unknown> | undefined;
    let late: Promise<unknown> | undefined;
    store.changes.subscribe(() => {
      if (early) return;
      early = store.append('a', { type: 'progress', done: 6 });
      void store.close();
      late = store.append('a', { type: 'progress', done: 7 });
    });
    const queued = [1, 2, 3, 4, 5].map((done) => store.append('a', { type: 'progress', done }));
    expect((await Promise.all(queued)).map((result) => result.event.seq)).toEqual([1, 2, 3, 4, 5]);
    expect(((await early!) as { event: { seq: number } }).event.seq).toBe(6);
    await expectCode(late!, ErrorCode.Closed);
    await store.close();
    const reopened = new SqliteProgressStore({ database: db.file });
    expect((await reopened.getTask('a'))?.seq).toBe(6);
    await reopened.close();
    db.remove();
  });

  it('a call whose flush runs a listener that closes the store rejects with closed', async () => {
    const db = tempDatabase();
    const store = new SqliteProgressStore({ database: db.file });
    await store.createTask({ id: 'a', owner: 'alice', kind: 'k' });
    store.changes.subscribe(() => void store.close());
    const appended = store.append('a', { type: 'progress', done: 1 });
    await expectCode(store.getTask('a'), ErrorCode.Closed);
    expect((await appended).event.seq).toBe(1);
    await store.close();
    db.remove();
  });

  it('reads and writes from a change listener see the appends queued before them', async () => {
    const store = new SqliteProgressStore({ database: ':memory:', maxBatchSize: 2 });
    await store.createTask({ id: 'a', owner: 'alice', kind: 'k' });
    let seen:
      | { task: Promise<Task | undefined>; acked: Promise<number>; events: Promise<TaskEvent[]> }
      | undefined;
    store.changes.subscribe(() => {
      if (seen) return;
      // Queued before the reads: call order says they see it.
      void store.append('a', { type: 'progress', done: 6 });
      seen = {
        task: store.getTask('a'),
        acked: store.ack('a', 6),
        events: store.readEvents('a', 0),
      };
    });
    await Promise.all([1, 2, 3, 4, 5].map((done) => store.append('a', { type: 'progress', done })));
    expect((await seen!.task)?.seq).toBe(6);
    expect(await seen!.acked).toBe(6);
    expect((await seen!.events).map((event) => event.seq)).toEqual([1, 2, 3, 4, 5, 6]);
    await store.close();
  });

  it('leaves no timer or immediate behind after close()', async () => {
    const db = tempDatabase();
    const refResources = () =>
      process.getActiveResourcesInfo().filter((name) => name === 'Timeout' || name === 'Immediate');
    const before = refResources();
    vi.useFakeTimers({ toFake: ['setInterval', 'clearInterval', 'setImmediate', 'clearImmediate'] });
    try {
      const store = new SqliteProgressStore({ database: db.file });
      expect(vi.getTimerCount(), 'the data_version poll').toBe(1);
      await store.createTask({ id: 'a', owner: 'alice', kind: 'k' });
      const queued = store.append('a', { type: 'progress', done: 1 });
      expect(vi.getTimerCount(), 'poll + scheduled group commit').toBe(2);
      await store.close();
      expect(vi.getTimerCount()).toBe(0);
      expect((await queued).event.seq).toBe(1);
    } finally {
      vi.useRealTimers();
    }
    // None added: a timer pending before (the test runner's) may have fired meanwhile, since close()
    // waits for the checkpoint worker to exit.
    const count = (list: string[], name: string) => list.filter((each) => each === name).length;
    const after = refResources();
    for (const name of ['Timeout', 'Immediate'])
      expect(count(after, name)).toBeLessThanOrEqual(count(before, name));
    db.remove();
  });

  it('does not poll an in-memory database or when polling is off', async () => {
    vi.useFakeTimers({ toFake: ['setInterval', 'clearInterval'] });
    try {
      const memory = new SqliteProgressStore({ database: ':memory:' });
      expect(vi.getTimerCount()).toBe(0);
      await memory.close();
      const db = tempDatabase();
      const off = new SqliteProgressStore({ database: db.file, dataVersionPollMs: 0 });
      expect(vi.getTimerCount()).toBe(0);
      await off.close();
      db.remove();
    } finally {
      vi.useRealTimers();
    }
  });
});

describe('two stores on one file (one process, two connections)', () => {
  async function pair(clock: ManualClock) {
    const db = tempDatabase();
    const a = new SqliteProgressStore({ database: db.file, clock: clock.now, dataVersionPollMs: 5 });
    const b = new SqliteProgressStore({ database: db.file, clock: clock.now, dataVersionPollMs: 5 });
    const seen = new Map<ProgressStore, TaskChange[]>([
      [a, []],
      [b, []],
    ]);
    for (const [store, changes] of seen) store.changes.subscribe((change) => changes.push(change));
    return {
      a,
      b,
      seen: (store: ProgressStore) => seen.get(store)!,
      close: async () => {
        await a.close();
        await b.close();
        db.remove();
      },
    };
  }

  it('reaping the same expired lease from both yields exactly one interrupted event, seen once by each', async () => {
    const clock = new ManualClock();
    const { a, b, seen, close } = await pair(clock);
    try {
      await a.createTask({ id: 'job', owner: 'alice', kind: 'k', lease: { owner: 'worker-1', ttlMs: 1000 } });
      await a.append('job', { type: 'item', key: 'n-1', ok: true });
      clock.advance(1000);
      const [fromA, fromB] = await Promise.all([a.reapExpiredLeases(), b.reapExpiredLeases()]);
      expect(fromA.length + fromB.length).toBe(1);
      const [reaped] = [...fromA, ...fromB];
      expect(reaped?.event).toMatchObject({
        type: 'interrupted',
        seq: 2,
        reason: 'lease of worker worker-1 expired',
      });
      expect((await b.readEvents('job', 0)).map((event) => event.type)).toEqual(['item', 'interrupted']);
      expect(await a.reapExpiredLeases()).toEqual([]);
      for (const store of [a, b]) {
        await eventually('the interrupted change', () => seen(store).some((change) => change.terminal));
        expect(seen(store).map((change) => change.seq)).toEqual([1, 2]);
      }
    } finally {
      await close();
    }
  });

  it('a write that appends nothing (ack, lease, purge) publishes the other’s commits it read, polling off', async () => {
    const db = tempDatabase();
    const a = new SqliteProgressStore({ database: db.file, dataVersionPollMs: 0 });
    const b = new SqliteProgressStore({ database: db.file, dataVersionPollMs: 0 });
    try {
      await a.createTask({ id: 'mine', owner: 'alice', kind: 'k' });
      await b.createTask({ id: 'theirs', owner: 'alice', kind: 'k' });
      const seen: TaskChange[] = [];
      a.changes.subscribe((change) => seen.push(change));
      const writes: [string, () => Promise<unknown>][] = [
        ['ack', () => a.ack('mine', 0)],
        ['renewLease', () => a.renewLease('mine', 'worker-1', 60_000)],
        ['releaseLease', () => a.releaseLease('mine', 'worker-1')],
        ['purgeFinished', () => a.purgeFinished({ olderThanMs: 0 })],
      ];
      for (const [index, [name, write]] of writes.entries()) {
        await b.append('theirs', { type: 'progress', done: index + 1 });
        // The write's transaction reads b's commit past its mark (README: "each write transaction does
        // the same catch-up first"): that commit is published with it, not held until a's next append.
        await write();
        expect([name, seen.map((change) => change.seq)]).toEqual([
          name,
          writes.slice(0, index + 1).map((_, i) => i + 1),
        ]);
      }
    } finally {
      await a.close();
      await b.close();
      db.remove();
    }
  });

  it('each store publishes the other’s commits in order, interleaved with its own', async () => {
    const clock = new ManualClock();
    const { a, b, seen, close } = await pair(clock);
    try {
      await a.createTask({ id: 'job', owner: 'alice', kind: 'k' });
      for (let round = 0; round < 20; round++) {
        const writer = round % 2 === 0 ? a : b;
        await Promise.all([1, 2, 3].map((done) => writer.append('job', { type: 'progress', done })));
      }
      await b.append('job', { type: 'completed' });
      for (const store of [a, b]) {
        await eventually('the terminal change', () => seen(store).some((change) => change.terminal));
        expect(seen(store).map((change) => change.seq)).toEqual(Array.from({ length: 61 }, (_, i) => i + 1));
      }
    } finally {
      await close();
    }
  });
});

describe('two stores on one connection (a connection the caller passes to both)', () => {
  it("each store's poll publishes the other's commits: data_version does not move for them", async () => {
    const db = tempDatabase();
    const database = new Database(db.file);
    const a = new SqliteProgressStore({ database, dataVersionPollMs: 5 });
    const b = new SqliteProgressStore({ database, dataVersionPollMs: 5 });
    try {
      const seen: TaskChange[] = [];
      b.changes.subscribe((change) => seen.push(change));
      await a.createTask({ id: 'job', owner: 'alice', kind: 'k' });
      await a.append('job', { type: 'progress', done: 1 });
      await a.append('job', { type: 'completed' });
      // b writes nothing: only its poll can tell it, and the poll watched data_version alone, which
      // SQLite moves for other connections' commits, never for its own connection's.
      await eventually("b publishes a's end", () => seen.some((change) => change.terminal), 2_000);
      expect(seen.map((change) => change.seq)).toEqual([1, 2]);
      // Its own commits, which its poll now sees too, are still published once.
      await b.createTask({ id: 'other', owner: 'alice', kind: 'k' });
      await b.append('other', { type: 'completed' });
      await new Promise((resolve) => setTimeout(resolve, 30));
      expect(seen.map((change) => [change.taskId, change.seq])).toEqual([
        ['job', 1],
        ['job', 2],
        ['other', 1],
      ]);
    } finally {
      await a.close();
      await b.close();
      database.close();
      db.remove();
    }
  });
});

describe('rows remembered between append batches', () => {
  it('never outlive a write by another connection, another store on the same connection, or this store', async () => {
    const clock = new ManualClock();
    const db = tempDatabase();
    const shared = new Database(db.file);
    const a = new SqliteProgressStore({ database: shared, clock: clock.now, dataVersionPollMs: 0 });
    const sameConnection = new SqliteProgressStore({
      database: shared,
      clock: clock.now,
      dataVersionPollMs: 0,
    });
    const other = new SqliteProgressStore({ database: db.file, clock: clock.now, dataVersionPollMs: 0 });
    try {
      await a.createTask({ id: 'job', owner: 'alice', kind: 'k', total: 10 });
      const item = (key: string) => ({ type: 'item' as const, key, ok: true });
      expect((await a.append('job', item('n-1'))).task.done).toBe(1);
      // Another connection appends and takes a lease: a's next append must build on both.
      await other.append('job', item('n-2'));
      await other.renewLease('job', 'worker-1', 60_000);
      let result = await a.append('job', item('n-3'));
      expect(result.event.seq).toBe(3);
      expect(result.task).toEqual(await other.getTask('job'));
      expect(result.task).toMatchObject({ done: 3, succeeded: 3, leaseOwner: 'worker-1' });
      // Another store on the very same connection (data_version does not move for it).
      await sameConnection.append('job', item('n-4'));
      await sameConnection.ack('job', 4);
      result = await a.append('job', item('n-5'));
      expect(result.event.seq).toBe(5);
      expect(result.task).toMatchObject({ done: 5, ackedSeq: 4 });
      // This store's own acks and lease changes.
      await a.ack('job', 5);
      await a.releaseLease('job', 'worker-1');
      result = await a.append('job', item('n-6'));
      expect(result.task).toMatchObject({ seq: 6, done: 6, ackedSeq: 5, leaseOwner: null });
      expect(result.task).toEqual(await other.getTask('job'));
      // A caller mutating what it got back does not reach the next append.
      (result.task as { done: number }).done = 1000;
      result = await a.append('job', item('n-7'));
      expect(result.task.done).toBe(7);
      expect((await other.readEvents('job', 0)).map((event) => event.seq)).toEqual([1, 2, 3, 4, 5, 6, 7]);
    } finally {
      await a.close();
      await sameConnection.close();
      await other.close();
      shared.close();
      db.remove();
    }
  });
});

describe('retention', () => {
  it(`stops a purge once its tasks' events pass ${PURGE_EVENT_BUDGET}, taking at least one task`, async () => {
    // One purge is one write transaction on a synchronous driver: every write and this process's event
    // loop wait for it. Before, a call deleted up to `limit` (500) tasks whatever their events numbered.
    const db = tempDatabase();
    const clock = new ManualClock();
    const store = new SqliteProgressStore({ database: db.file, clock: clock.now });
    const events = Math.ceil(PURGE_EVENT_BUDGET * 0.4);
    try {
      for (const id of ['a', 'b', 'c']) {
        await store.createTask({ id, owner: 'alice', kind: 'k' });
        const appends = [];
        for (let i = 1; i < events; i++)
          appends.push(store.append(id, { type: 'item', key: `n${i}`, ok: true }));
        appends.push(store.append(id, { type: 'completed' }));
        await Promise.all(appends);
        clock.advance(1);
      }
      const ids = async () => [...(await store.latestSeqs(['a', 'b', 'c'])).keys()].sort();
      // Two tasks' events (0.8 of the budget) fit; a third's would pass it.
      expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(2);
      expect(await ids()).toEqual(['c']);
      await store.createTask({ id: 'big', owner: 'alice', kind: 'k' });
      const appends = [];
      for (let i = 0; i < PURGE_EVENT_BUDGET; i++)
        appends.push(store.append('big', { type: 'progress', done: i }));
      appends.push(store.append('big', { type: 'completed' }));
      await Promise.all(appends);
      clock.advance(1);
      // c, then big: together past the budget, so c alone.
      expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(1);
      expect(await ids()).toEqual([]);
      // Alone past the budget: purged anyway, so a task larger than the budget is not kept for ever.
      expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(1);
      expect((await store.latestSeqs(['big'])).size).toBe(0);
    } finally {
      await store.close();
      db.remove();
    }
  });

  it('deletes finished tasks and their events for real, oldest first, in batches', async () => {
    const db = tempDatabase();
    const clock = new ManualClock();
    const store = new SqliteProgressStore({ database: db.file, clock: clock.now });
    const raw = new Database(db.file, { readonly: true });
    const count = (table: string, taskId: string) =>
      raw
        .prepare(`SELECT count(*) FROM ${table} WHERE ${table === 'finishline_tasks' ? 'id' : 'task_id'} = ?`)
        .pluck()
        .get(taskId);
    try {
      for (const id of ['old-1', 'old-2', 'old-3', 'recent', 'running']) {
        await store.createTask({ id, owner: 'alice', kind: 'k' });
        await store.append(id, { type: 'item', key: 'n', ok: true });
      }
      for (const id of ['old-2', 'old-1', 'old-3']) {
        await store.append(id, { type: 'completed' });
        clock.advance(10);
      }
      clock.advance(100_000);
      await store.append('recent', { type: 'failed', error: { code: 'E', message: 'boom' } });
      clock.advance(1000);

      expect(await store.purgeFinished({ olderThanMs: 50_000, limit: 2 })).toBe(2);
      expect(count('finishline_tasks', 'old-2')).toBe(0);
      expect(count('finishline_events', 'old-2')).toBe(0);
      expect(count('finishline_tasks', 'old-1')).toBe(0);
      expect(count('finishline_events', 'old-1')).toBe(0);
      expect(count('finishline_events', 'old-3')).toBe(2);
      expect(await store.purgeFinished({ olderThanMs: 50_000, limit: 2 })).toBe(1);
      expect(await store.purgeFinished({ olderThanMs: 50_000 })).toBe(0);
      expect(count('finishline_events', 'old-3')).toBe(0);
      expect(count('finishline_events', 'recent')).toBe(2);
      expect(count('finishline_events', 'running')).toBe(1);
      await expectCode(store.readEvents('old-1', 0), ErrorCode.TaskNotFound);
      expect((await store.listTasks({ owner: 'alice' })).map((task) => task.id).sort()).toEqual([
        'recent',
        'running',
      ]);
    } finally {
      raw.close();
      await store.close();
      db.remove();
    }
  });
});

describe('operator views', () => {
  it('finishline_unprocessed_events lists exactly the events above each task’s acked seq', async () => {
    const database = new Database(':memory:');
    const store = new SqliteProgressStore({ database });
    await store.createTask({ id: 'a', owner: 'alice', kind: 'batch_taint' });
    await store.createTask({ id: 'b', owner: 'bob', kind: 'batch_taint' });
    for (const done of [1, 2, 3]) await store.append('a', { type: 'progress', done });
    await store.append('a', { type: 'completed' });
    await store.append('b', { type: 'item', key: 'n-1', ok: false, error: 'conflict' });
    await store.ack('a', 2);
    const unprocessed = () =>
      database
        .prepare('SELECT task_id, seq, type, owner FROM finishline_unprocessed_events ORDER BY task_id, seq')
        .all();
    expect(unprocessed()).toEqual([
      { task_id: 'a', seq: 3, type: 'progress', owner: 'alice' },
      { task_id: 'a', seq: 4, type: 'completed', owner: 'alice' },
      { task_id: 'b', seq: 1, type: 'item', owner: 'bob' },
    ]);
    expect(
      database
        .prepare("SELECT seq, processed FROM finishline_event_log WHERE task_id = 'a' ORDER BY seq")
        .all(),
    ).toEqual([
      { seq: 1, processed: 1 },
      { seq: 2, processed: 1 },
      { seq: 3, processed: 0 },
      { seq: 4, processed: 0 },
    ]);
    await store.ack('a', 4);
    await store.ack('b', 1);
    expect(unprocessed()).toEqual([]);
    await store.close();
    database.close();
  });
});

describe('bad input and damaged data', () => {
  it('oversized payloads, invalid ids and unknown tasks get typed errors, never a crash', async () => {
    const store = new SqliteProgressStore({ database: ':memory:' });
    await store.createTask({ id: 'a', owner: 'alice', kind: 'k' });
    const huge = 'x'.repeat(LIMITS.maxJsonBytes);
    await expectCode(
      store.append('a', { type: 'item', key: 'n', ok: true, detail: { huge } }),
      ErrorCode.InvalidInput,
    );
    await expectCode(store.append('a', { type: 'completed', result: [huge] }), ErrorCode.InvalidInput);
    await expectCode(
      store.append('a', { type: 'progress', message: 'm'.repeat(LIMITS.maxMessageLength + 1) }),
      ErrorCode.InvalidInput,
    );
    await expectCode(
      store.createTask({ id: "a'; DROP TABLE finishline_tasks; --", owner: 'alice', kind: 'k' }),
      ErrorCode.InvalidInput,
    );
    await expectCode(store.createTask({ id: 'a', owner: 'alice', kind: 'k' }), ErrorCode.InvalidInput);
    await expectCode(store.getTask('x'.repeat(LIMITS.maxIdLength + 1)), ErrorCode.InvalidInput);
    await expectCode(store.latestSeqs(['a', 'bad id']), ErrorCode.InvalidInput);
    await expectCode(store.readEvents('a', -1), ErrorCode.InvalidInput);
    await expectCode(store.readEvents('ghost', 0), ErrorCode.TaskNotFound);
    await expectCode(store.append('ghost', { type: 'progress' }), ErrorCode.TaskNotFound);
    await expectCode(store.ack('ghost', 0), ErrorCode.TaskNotFound);
    await expectCode(store.ack('a', 1), ErrorCode.InvalidInput);
    await expectCode(store.renewLease('ghost', 'w', 10), ErrorCode.TaskNotFound);
    await expectCode(store.renewLease('a', 'w', 0), ErrorCode.InvalidInput);
    expect(await store.latestSeqs(['a', 'ghost'])).toEqual(new Map([['a', 0]]));
    expect((await store.listTasks({ owner: 'alice' })).map((task) => task.id)).toEqual(['a']);
    await store.close();
  });

  it('an event whose value throws when read (a getter, a Proxy) is invalid_input, not internal', async () => {
    const store = new SqliteProgressStore({ database: ':memory:' });
    await store.createTask({ id: 'a', owner: 'alice', kind: 'k' });
    const throwing = {
      get value(): never {
        throw new Error('getter failed');
      },
    };
    const proxy = new Proxy(
      {},
      {
        ownKeys: () => {
          throw new Error('trap failed');
        },
      },
    );
    await expectCode(
      store.append('a', { type: 'item', key: 'n', ok: true, detail: throwing as never }),
      ErrorCode.InvalidInput,
    );
    await expectCode(
      store.append('a', { type: 'completed', result: proxy as never }),
      ErrorCode.InvalidInput,
    );
    // Nothing was written, and the task still takes appends.
    expect((await store.append('a', { type: 'completed' })).event.seq).toBe(1);
    await store.close();
  });

  it('a damaged JSON column read back is ProgressError internal, and other tasks stay readable', async () => {
    const database = new Database(':memory:');
    const store = new SqliteProgressStore({ database });
    await store.createTask({ id: 'a', owner: 'alice', kind: 'k' });
    await store.createTask({ id: 'b', owner: 'alice', kind: 'k', lease: { owner: 'w', ttlMs: 1 } });
    await store.append('a', { type: 'item', key: 'n-1', ok: true, detail: { zone: 1 } });
    await store.append('a', { type: 'completed', result: { n: 1 } });
    database
      .prepare(
        'UPDATE finishline_events SET payload = \'{"key": "n-1", "ok": tru\' WHERE task_id = \'a\' AND seq = 1',
      )
      .run();
    database.prepare("UPDATE finishline_tasks SET result = 'not json' WHERE id = 'a'").run();
    await expectCode(store.readEvents('a', 0), ErrorCode.Internal);
    await expectCode(store.getTask('a'), ErrorCode.Internal);
    await expectCode(store.append('a', { type: 'progress' }), ErrorCode.Internal);
    expect((await store.readEvents('a', 1)).map((event) => event.type)).toEqual(['completed']);
    expect((await store.getTask('b'))?.status).toBe('running');
    // A damaged row does not stop reaping the others.
    database
      .prepare(
        "UPDATE finishline_tasks SET status = 'running', lease_expires_at = 0, result = 'not json' WHERE id = 'a'",
      )
      .run();
    const errors: unknown[] = [];
    const reaper = new SqliteProgressStore({
      database,
      onError: (error) => errors.push(error),
      clock: () => Date.now() + 10_000,
    });
    expect((await reaper.reapExpiredLeases()).map((result) => result.task.id)).toEqual(['b']);
    expect(errors.some((error) => isProgressError(error, ErrorCode.Internal))).toBe(true);
    await reaper.close();
    await store.close();
    database.close();
  });

  it('damaged rows under an expired lease never take the reaper’s slots from live tasks, and are reported once', async () => {
    const database = new Database(':memory:');
    const errors: unknown[] = [];
    let now = 1_000;
    const store = new SqliteProgressStore({
      database,
      clock: () => now,
      onError: (error) => errors.push(error),
    });
    try {
      for (const id of ['bad-1', 'live', 'live-2', 'live-3', 'bad-2'])
        await store.createTask({ id, owner: 'alice', kind: 'k', lease: { owner: 'w', ttlMs: 10 } });
      // In the reaper's order (oldest expiry first): bad-1, live, live-2, live-3, bad-2.
      const setExpiry = database.prepare('UPDATE finishline_tasks SET lease_expires_at = ? WHERE id = ?');
      for (const [index, id] of ['bad-1', 'live', 'live-2', 'live-3', 'bad-2'].entries())
        setExpiry.run(index, id);
      database.prepare("UPDATE finishline_tasks SET result = 'not json' WHERE id LIKE 'bad-%'").run();
      now += 1_000;
      // A pass of two slots: the damaged row's slot goes to the next expired task in the same pass (not
      // to the next pass), and the pass takes no more than its two slots. Before the quarantine, the
      // damaged rows came first in every pass and live tasks behind them were never interrupted.
      const ids = (results: { task: { id: string } }[]) => results.map((result) => result.task.id);
      expect(ids(await store.reapExpiredLeases({ limit: 2 }))).toEqual(['live', 'live-2']);
      expect(ids(await store.reapExpiredLeases({ limit: 2 }))).toEqual(['live-3']);
      expect(ids(await store.reapExpiredLeases({ limit: 2 }))).toEqual([]);
      expect((await store.getTask('live'))?.status).toBe('interrupted');
      // Each damaged row reported once, typed, not on every pass.
      expect(errors).toHaveLength(2);
      expect(errors.every((error) => isProgressError(error, ErrorCode.Internal))).toBe(true);
      expect(errors.map((error) => (error as { taskId?: string }).taskId).sort()).toEqual(['bad-1', 'bad-2']);
    } finally {
      await store.close();
      database.close();
    }
  });

  it("a row whose seq fell behind its log fails its own appends alone, not their batch's", async () => {
    const database = new Database(':memory:');
    const store = new SqliteProgressStore({ database });
    try {
      for (const id of ['damaged', 'a', 'b']) {
        await store.createTask({ id, owner: 'alice', kind: 'k' });
        await store.append(id, { type: 'progress', done: 1 });
      }
      // Written by hand (a partial restore, an operator's edit): its next event collides with one the log holds.
      database.prepare("UPDATE finishline_tasks SET seq = 0 WHERE id = 'damaged'").run();
      const published: TaskChange[] = [];
      store.changes.subscribe((change) => published.push(change));
      // One tick: one batch. Before, the whole batch failed, and so did every batch the damaged task's
      // appends went into, with the appends of every other task in it.
      const [damaged, a, b] = await Promise.allSettled(
        ['damaged', 'a', 'b'].map((id) => store.append(id, { type: 'progress', done: 2 })),
      );
      expect(a).toMatchObject({ status: 'fulfilled', value: { event: { seq: 2 } } });
      expect(b).toMatchObject({ status: 'fulfilled', value: { event: { seq: 2 } } });
      expect(damaged?.status).toBe('rejected');
      const reason = (damaged as PromiseRejectedResult).reason;
      expect(isProgressError(reason, ErrorCode.Internal), String(reason)).toBe(true);
      expect(reason).toMatchObject({ taskId: 'damaged' });
      expect(published.map((change) => `${change.taskId}:${change.seq}`)).toEqual(['a:2', 'b:2']);
      expect(await store.readEvents('damaged', 0)).toHaveLength(1);
      // The others' rows were kept as committed: their next batch goes on from them.
      expect((await store.append('a', { type: 'completed' })).event.seq).toBe(3);
      // An append after the damaged task's refused end is refused with it, not task_finished: it did not end.
      const [end, after] = await Promise.allSettled([
        store.append('damaged', { type: 'completed' }),
        store.append('damaged', { type: 'progress', done: 3 }),
      ]);
      for (const outcome of [end, after]) {
        const error = (outcome as PromiseRejectedResult).reason;
        expect(isProgressError(error, ErrorCode.Internal), String(error)).toBe(true);
      }
      expect((await store.getTask('damaged'))?.status).toBe('running');
    } finally {
      await store.close();
      database.close();
    }
  });

  it('a row whose seq fell behind its log is set aside by the reaper, reported once, and the others reaped', async () => {
    const database = new Database(':memory:');
    const errors: unknown[] = [];
    let now = 1_000;
    const store = new SqliteProgressStore({
      database,
      clock: () => now,
      onError: (error) => errors.push(error),
    });
    try {
      // In the reaper's order (oldest expiry first): live-a, damaged, live-b, live-c.
      for (const id of ['live-a', 'damaged', 'live-b', 'live-c']) {
        await store.createTask({ id, owner: 'alice', kind: 'k', lease: { owner: 'gone', ttlMs: 1000 } });
        await store.append(id, { type: 'progress', done: 1 });
        now += 1;
      }
      // Written by hand: the interruption's event (seq 1) collides with the event the log holds.
      database.prepare("UPDATE finishline_tasks SET seq = 0 WHERE id = 'damaged'").run();
      now += 10_000;
      // Before: every pass failed whole on the damaged row, and no expired task was ever interrupted.
      // Two slots: live-a, then (the damaged row set aside) live-b; live-c is the next pass's.
      const ids = (results: { task: { id: string } }[]) => results.map((result) => result.task.id);
      expect(ids(await store.reapExpiredLeases({ limit: 2 }))).toEqual(['live-a', 'live-b']);
      expect(ids(await store.reapExpiredLeases({ limit: 2 }))).toEqual(['live-c']);
      expect(await store.getTask('damaged')).toMatchObject({
        status: 'running',
        leaseOwner: null,
        leaseExpiresAt: null,
      });
      expect(errors).toHaveLength(1);
      expect(isProgressError(errors[0], ErrorCode.Internal), String(errors[0])).toBe(true);
      expect(errors[0]).toMatchObject({ taskId: 'damaged' });
      // Its lease gone, the next passes neither find it nor report it again.
      expect(await store.reapExpiredLeases()).toEqual([]);
      expect(errors).toHaveLength(1);
    } finally {
      await store.close();
      database.close();
    }
  });

  it('a damaged row is left out of listTasks, reported once, and its place goes to the next task', async () => {
    const database = new Database(':memory:');
    const errors: unknown[] = [];
    let now = 1_000;
    const store = new SqliteProgressStore({
      database,
      clock: () => now,
      onError: (error) => errors.push(error),
    });
    try {
      // Newest first: e, d, c, b, a.
      for (const id of ['a', 'b', 'c', 'd', 'e']) {
        await store.createTask({ id, owner: 'alice', kind: 'k' });
        now += 1;
      }
      await store.createTask({ id: 'other', owner: 'bob', kind: 'k' });
      database.prepare("UPDATE finishline_tasks SET result = 'not json' WHERE id = 'd'").run();
      database.prepare("UPDATE finishline_tasks SET status = 'paused' WHERE id = 'b'").run();
      const ids = (tasks: { id: string }[]) => tasks.map((task) => task.id);
      // Before, one damaged row rejected every list of its owner.
      expect(ids(await store.listTasks({ owner: 'alice' }))).toEqual(['e', 'c', 'a']);
      // Still the `limit` newest readable tasks: the damaged row's place is not lost.
      expect(ids(await store.listTasks({ owner: 'alice', limit: 2 }))).toEqual(['e', 'c']);
      expect(ids(await store.listTasks({ owner: 'alice', limit: 3 }))).toEqual(['e', 'c', 'a']);
      expect(ids(await store.listTasks({ owner: 'alice', statuses: ['running'], limit: 1 }))).toEqual(['e']);
      expect(ids(await store.listTasks({ owner: 'bob' }))).toEqual(['other']);
      // Each damaged row reported once, typed and naming its task, not on every list.
      expect(errors.map((error) => (error as { taskId?: string }).taskId).sort()).toEqual(['b', 'd']);
      expect(errors.every((error) => isProgressError(error, ErrorCode.Internal))).toBe(true);
      // Reading the damaged task itself is a typed error.
      await expectCode(store.getTask('d'), ErrorCode.Internal);
      await expectCode(store.getTask('b'), ErrorCode.Internal);
    } finally {
      await store.close();
      database.close();
    }
  });

  it('a listener that throws is reported to onError and does not disturb the append or other listeners', async () => {
    const errors: unknown[] = [];
    const store = new SqliteProgressStore({ database: ':memory:', onError: (error) => errors.push(error) });
    await store.createTask({ id: 'a', owner: 'alice', kind: 'k' });
    const seen: number[] = [];
    store.changes.subscribe(() => {
      throw new Error('listener bug');
    });
    store.changes.subscribe(({ seq }) => seen.push(seq));
    expect((await store.append('a', { type: 'progress', done: 1 })).event.seq).toBe(1);
    expect(seen).toEqual([1]);
    expect(errors).toHaveLength(1);
    await store.close();
  });
});
