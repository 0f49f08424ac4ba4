import type { AppendResult, TaskChange } from '@finishline/core';
import { ErrorCode, isProgressError } from '@finishline/core';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { SqliteDatabase } from '../src/index.js';
import { SqliteProgressStore } from '../src/index.js';
import { spyDatabase, sqliteError } from './support/spy-database.js';
import { tempDatabase } from './support/temp-database.js';

/**
 * COMMIT itself fails (the last statement of a group-commit batch). An append must not resolve until its
 * batch committed: a store that settles appends once their rows are written, before COMMIT, passes every
 * other test and breaks guarantee 1 (a resolved append that is not stored).
 */

function outcome(result: PromiseSettledResult<AppendResult>): string {
  if (result.status === 'fulfilled') return `seq ${result.value.event.seq}`;
  return isProgressError(result.reason) ? result.reason.code : `non-ProgressError ${String(result.reason)}`;
}

describe('COMMIT failure', () => {
  it.each([
    ['SQLITE_BUSY', 'database is locked'],
    ['SQLITE_IOERR_FSYNC', 'disk I/O error'],
  ])(
    'COMMIT failing with %s rejects every append of the batch, publishes nothing, and a retry commits',
    async (code, message) => {
      const db = spyDatabase(new Database(':memory:'));
      const store = new SqliteProgressStore({ database: db });
      try {
        await store.createTask({ id: 'a', owner: 'alice', kind: 'k' });
        await store.createTask({ id: 'b', owner: 'alice', kind: 'k' });
        await store.append('a', { type: 'progress', done: 1 });
        const seen: TaskChange[] = [];
        store.changes.subscribe((change) => seen.push(change));
        const commitsBefore = db.runs('COMMIT');
        db.failNext('COMMIT', sqliteError(code, message));
        // One batch over two tasks, ending with a terminal event.
        const settled = await Promise.allSettled([
          ...Array.from({ length: 10 }, (_, i) =>
            store.append('a', { type: 'item', key: `n-${i}`, ok: true }),
          ),
          store.append('b', { type: 'progress', done: 1 }),
          store.append('b', { type: 'completed' }),
        ]);
        // The batch was one transaction, and it was its COMMIT that failed.
        expect(db.runs('COMMIT')).toBe(commitsBefore + 1);
        expect(settled.map(outcome)).toEqual(Array.from({ length: 12 }, () => ErrorCode.StoreUnavailable));
        for (const result of settled) {
          if (result.status === 'rejected') expect(result.reason.message).toContain(message);
        }
        expect(seen).toEqual([]);
        expect((await store.readEvents('a', 0)).map((event) => event.seq)).toEqual([1]);
        expect(await store.readEvents('b', 0)).toEqual([]);
        expect((await store.getTask('a'))?.seq).toBe(1);
        expect((await store.getTask('b'))?.status).toBe('running');
        // The retry of the same batch commits, with the seqs the failed one would have had.
        const retried = await Promise.all([
          store.append('a', { type: 'item', key: 'n-0', ok: true }),
          store.append('b', { type: 'completed' }),
        ]);
        expect(retried.map((result) => result.event.seq)).toEqual([2, 1]);
        expect(seen).toEqual([
          { taskId: 'a', seq: 2, terminal: false, run: retried[0]?.task.createdAt },
          { taskId: 'b', seq: 1, terminal: true, run: retried[1]?.task.createdAt },
        ]);
        expect((await store.getTask('b'))?.status).toBe('completed');
      } finally {
        await store.close();
      }
    },
  );
});

describe('reading the write mark for the commit fails', () => {
  it('still resolves the committed appends and publishes them; the next transaction re-reads its rows', async () => {
    const db = spyDatabase(new Database(':memory:'));
    const store = new SqliteProgressStore({ database: db });
    try {
      await store.createTask({ id: 'a', owner: 'alice', kind: 'k' });
      await store.append('a', { type: 'progress', done: 1 });
      const seen: TaskChange[] = [];
      store.changes.subscribe((change) => seen.push(change));
      // The write mark (total_changes, data_version), read by a write transaction after BEGIN and again
      // right before its COMMIT: the second read fails.
      db.failNext('SELECT total_changes()', sqliteError('SQLITE_IOERR', 'disk I/O error'), 1);
      const committed = await store.append('a', { type: 'progress', done: 2 });
      expect(committed.event.seq).toBe(2);
      expect(seen).toEqual([{ taskId: 'a', seq: 2, terminal: false, run: committed.task.createdAt }]);
      expect((await store.append('a', { type: 'completed' })).event.seq).toBe(3);
      expect((await store.readEvents('a', 0)).map((event) => event.seq)).toEqual([1, 2, 3]);
    } finally {
      await store.close();
    }
  });
});

describe("a poll's read failing", () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('is reported, ends its snapshot, and the next poll reads what it could not', async () => {
    // Only the poll timer is fake: the store polls when the test says so.
    vi.useFakeTimers({ toFake: ['setInterval', 'clearInterval'] });
    const file = tempDatabase();
    const db = spyDatabase(new Database(file.file));
    const errors: unknown[] = [];
    const store = new SqliteProgressStore({
      database: db,
      dataVersionPollMs: 1000,
      onError: (e) => errors.push(e),
    });
    const other = new SqliteProgressStore({ database: file.file, dataVersionPollMs: 0 });
    try {
      await other.createTask({ id: 'theirs', owner: 'alice', kind: 'k' });
      await store.createTask({ id: 'mine', owner: 'bob', kind: 'k' });
      const seen: TaskChange[] = [];
      store.changes.subscribe((change) => seen.push({ ...change }));
      await other.append('theirs', { type: 'progress', done: 1 });
      // The poll's read past its mark (the events other connections committed).
      db.failNext(
        'select "id", "task_id", "seq", "type", "time" from "finishline_events"',
        sqliteError('SQLITE_IOERR', 'disk I/O error'),
      );
      vi.advanceTimersByTime(1000);
      expect(errors).toHaveLength(1);
      expect(seen).toEqual([]);
      // No other commit since: the next poll reads it all the same.
      vi.advanceTimersByTime(1000);
      expect(seen).toEqual([{ taskId: 'theirs', seq: 1, terminal: false }]);
      // The snapshot ended: this connection's own write transactions still begin.
      expect((await store.append('mine', { type: 'progress', done: 1 })).event.seq).toBe(1);
    } finally {
      await store.close();
      await other.close();
      db.close();
      file.remove();
    }
  });
});

describe('a full disk', () => {
  it('rejects the appends that do not fit with store_unavailable, and appends commit again once space frees up', async () => {
    // `max_page_count` stands for a full disk: SQLite answers SQLITE_FULL where a write would need a new page.
    const file = tempDatabase();
    const db = new Database(file.file);
    const store = new SqliteProgressStore({ database: db });
    try {
      await store.createTask({ id: 'a', owner: 'alice', kind: 'k' });
      await store.append('a', { type: 'progress', done: 1 });
      db.pragma(`max_page_count = ${Number(db.pragma('page_count', { simple: true }))}`);
      const detail = { pad: 'x'.repeat(2_000) };
      const full = await Promise.allSettled(
        Array.from({ length: 20 }, (_, i) =>
          store.append('a', { type: 'item', key: `n-${i}`, ok: true, detail }),
        ),
      );
      expect(full.map(outcome)).toEqual(Array.from({ length: 20 }, () => ErrorCode.StoreUnavailable));
      expect((full[0] as PromiseRejectedResult).reason.cause.code).toBe('SQLITE_FULL');
      db.pragma('max_page_count = 1073741823');
      const again = await Promise.all(
        Array.from({ length: 20 }, (_, i) =>
          store.append('a', { type: 'item', key: `n-${i}`, ok: true, detail }),
        ),
      );
      expect(again.map((result) => result.event.seq)).toEqual(Array.from({ length: 20 }, (_, i) => i + 2));
      await store.createTask({ id: 'b', owner: 'alice', kind: 'k' });
      expect((await store.getTask('a'))?.seq).toBe(21);
    } finally {
      await store.close();
      db.close();
      file.remove();
    }
  });
});

describe('another connection holding the write lock', () => {
  it('fails each write after busyTimeoutMs with store_unavailable (SQLITE_BUSY), and writes work once it lets go', async () => {
    const file = tempDatabase();
    const store = new SqliteProgressStore({ database: file.file, busyTimeoutMs: 20, dataVersionPollMs: 0 });
    // Another process's connection, as a second connection on the file stands for one.
    const other = new Database(file.file);
    try {
      await store.createTask({ id: 'a', owner: 'alice', kind: 'k', lease: { owner: 'w', ttlMs: 60_000 } });
      other.exec('BEGIN IMMEDIATE');
      const writes = await Promise.allSettled<unknown>([
        store.append('a', { type: 'progress', done: 1 }),
        store.createTask({ id: 'b', owner: 'alice', kind: 'k' }),
        store.renewLease('a', 'w', 60_000),
        store.reapExpiredLeases(),
        store.renewEpoch(),
      ]);
      for (const write of writes) {
        expect(write.status).toBe('rejected');
        const reason = (write as PromiseRejectedResult).reason;
        expect(isProgressError(reason, ErrorCode.StoreUnavailable)).toBe(true);
        expect(reason.cause.code).toMatch(/^SQLITE_BUSY/);
      }
      // Reads go on under the other writer's lock (WAL).
      expect((await store.getTask('a'))?.seq).toBe(0);
      other.exec('ROLLBACK');
      expect((await store.append('a', { type: 'progress', done: 1 })).event.seq).toBe(1);
      await store.createTask({ id: 'b', owner: 'alice', kind: 'k' });
      await store.renewEpoch();
    } finally {
      other.close();
      await store.close();
      file.remove();
    }
  });

  it('fails the appends queued behind a batch with it, after one wait for the lock, not one per batch', async () => {
    const file = tempDatabase();
    const raw = new Database(file.file);
    // Each wait for the lock switches SQLite's busy handler off first (see `beginImmediate`): counted here.
    let waits = 0;
    const database: SqliteDatabase = {
      memory: false,
      close: () => raw.close(),
      prepare(sql) {
        if (sql === 'PRAGMA busy_timeout = 0') waits += 1;
        return raw.prepare(sql);
      },
    };
    const store = new SqliteProgressStore({
      database,
      busyTimeoutMs: 20,
      dataVersionPollMs: 0,
      maxBatchSize: 2,
    });
    const other = new Database(file.file);
    try {
      await store.createTask({ id: 'a', owner: 'alice', kind: 'k' });
      other.exec('BEGIN IMMEDIATE');
      const appends = Array.from({ length: 6 }, (_, i) => store.append('a', { type: 'progress', done: i }));
      waits = 0;
      // A read commits the queued appends first: three batches in one event-loop turn. Each waited
      // busyTimeoutMs for the lock (the loop held three times as long as a write may hold it).
      expect((await store.getTask('a'))?.seq).toBe(0);
      expect(waits).toBe(1);
      for (const result of await Promise.allSettled(appends)) {
        expect(outcome(result)).toBe(ErrorCode.StoreUnavailable);
        expect((result as PromiseRejectedResult).reason.cause.code).toMatch(/^SQLITE_BUSY/);
      }
      other.exec('ROLLBACK');
      expect((await store.append('a', { type: 'progress', done: 1 })).event.seq).toBe(1);
    } finally {
      other.close();
      await store.close();
      raw.close();
      file.remove();
    }
  });
});
