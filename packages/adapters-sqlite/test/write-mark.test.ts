import { ErrorCode } from '@finishline/core';
import { ManualClock } from '@finishline/core/testing';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import type { SqliteDatabase } from '../src/index.js';
import { SqliteProgressStore } from '../src/index.js';
import { tempDatabase } from './support/temp-database.js';

/**
 * The running-row cache is valid while nothing but this store's appends wrote: each write transaction
 * compares the write mark (`total_changes()`, `data_version`) with the one its last commit left. Another
 * connection (another process on the file) committing right after this store's COMMIT, before the store
 * recorded that mark, must still count as a write: recorded after it, the mark took the other commit for
 * this store's own, and the next append was planned on the stale row.
 */

/** The store's connection, with a hook run once right after its next COMMIT. */
function afterCommitDatabase(
  raw: Database.Database,
): SqliteDatabase & { onNextCommit(hook: () => void): void } {
  let hook: (() => void) | undefined;
  return {
    memory: false,
    close: () => raw.close(),
    prepare(sql) {
      const statement = raw.prepare(sql);
      if (sql !== 'COMMIT') return statement;
      return {
        run: (...parameters: unknown[]) => {
          const result = statement.run(...parameters);
          const run = hook;
          hook = undefined;
          run?.();
          return result;
        },
        get: (...parameters: unknown[]) => statement.get(...parameters),
        all: (...parameters: unknown[]) => statement.all(...parameters),
      };
    },
    onNextCommit(next) {
      hook = next;
    },
  };
}

describe('another connection committing right after this store’s COMMIT', () => {
  it('its write is seen by the next append: a task it interrupted rejects task_finished, nothing else fails', async () => {
    const file = tempDatabase();
    const clock = new ManualClock();
    const raw = new Database(file.file);
    const db = afterCommitDatabase(raw);
    const store = new SqliteProgressStore({ database: db, clock: clock.now, dataVersionPollMs: 0 });
    // Another process's store on the same file (a second connection is what SQLite tells apart).
    const other = new SqliteProgressStore({ database: file.file, clock: clock.now, dataVersionPollMs: 0 });
    try {
      await store.createTask({ id: 'a', owner: 'alice', kind: 'k', lease: { owner: 'w', ttlMs: 1000 } });
      await store.createTask({ id: 'b', owner: 'alice', kind: 'k' });
      await store.append('a', { type: 'progress', done: 1 });
      let reaped: string[] = [];
      db.onNextCommit(() => {
        clock.advance(5000);
        // Synchronous: the other store's reaper interrupts `a` (seq 3) before this store reads its mark.
        void other.reapExpiredLeases().then((results) => {
          reaped = results.map((result) => `${result.task.id}@${result.event.seq}`);
        });
      });
      expect((await store.append('a', { type: 'progress', done: 2 })).event.seq).toBe(2);
      expect(reaped).toEqual(['a@3']);

      const settled = await Promise.allSettled([
        store.append('a', { type: 'progress', done: 3 }),
        store.append('b', { type: 'progress', done: 1 }),
      ]);
      // With the stale row, both were rejected `internal` (the batch's insert took seq 3 again).
      expect(settled[0]).toMatchObject({ status: 'rejected', reason: { code: ErrorCode.TaskFinished } });
      expect(settled[1]).toMatchObject({ status: 'fulfilled', value: { event: { seq: 1 } } });
      expect((await store.readEvents('a', 0)).map((event) => event.type)).toEqual([
        'progress',
        'progress',
        'interrupted',
      ]);
      expect((await store.getTask('a'))?.status).toBe('interrupted');
    } finally {
      await store.close();
      await other.close();
      raw.close();
      file.remove();
    }
  });
});
