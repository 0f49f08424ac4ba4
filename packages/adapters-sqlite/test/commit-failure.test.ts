import type { AppendResult, TaskChange } from '@finishline/core';
import { ErrorCode, isProgressError } from '@finishline/core';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { SqliteProgressStore } from '../src/index.js';
import { spyDatabase, sqliteError } from './support/spy-database.js';

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
          { taskId: 'a', seq: 2, terminal: false },
          { taskId: 'b', seq: 1, terminal: true },
        ]);
        expect((await store.getTask('b'))?.status).toBe('completed');
      } finally {
        await store.close();
      }
    },
  );
});

describe('reading the write mark after COMMIT fails', () => {
  it('still resolves the committed appends and publishes them; the next transaction re-reads its rows', async () => {
    const db = spyDatabase(new Database(':memory:'));
    const store = new SqliteProgressStore({ database: db });
    try {
      await store.createTask({ id: 'a', owner: 'alice', kind: 'k' });
      await store.append('a', { type: 'progress', done: 1 });
      const seen: TaskChange[] = [];
      store.changes.subscribe((change) => seen.push(change));
      // The write mark (total_changes, data_version), read by a write transaction after BEGIN and again
      // after its COMMIT: the second read fails.
      db.failNext('SELECT total_changes()', sqliteError('SQLITE_IOERR', 'disk I/O error'), 1);
      const committed = await store.append('a', { type: 'progress', done: 2 });
      expect(committed.event.seq).toBe(2);
      expect(seen).toEqual([{ taskId: 'a', seq: 2, terminal: false }]);
      expect((await store.append('a', { type: 'completed' })).event.seq).toBe(3);
      expect((await store.readEvents('a', 0)).map((event) => event.seq)).toEqual([1, 2, 3]);
    } finally {
      await store.close();
    }
  });
});
