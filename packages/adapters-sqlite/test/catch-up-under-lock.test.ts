import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import type { SqliteDatabase } from '../src/index.js';
import { SqliteProgressStore } from '../src/index.js';
import { tempDatabase } from './support/temp-database.js';

/**
 * A store far behind other connections' commits (polling off here; an event loop held for long does the
 * same) reads them when it next writes. Read under the write lock, all of them, every other process's
 * writes waited for the whole read: 200,000 events held the lock some 0.3 s, a few million outlasted their
 * busy timeout. It reads one page under the lock, the rest without it, and still publishes every event
 * once, in commit order, before its own.
 */

/** The store's connection, counting the event rows it reads past its mark while it holds the write lock. */
function lockWatchingDatabase(raw: Database.Database): SqliteDatabase & { readUnderLock(): number } {
  let locked = false;
  let readUnderLock = 0;
  return {
    memory: false,
    close: () => raw.close(),
    prepare(sql) {
      const statement = raw.prepare(sql);
      const pastMark =
        /^select "id", "task_id", "seq", "type", "time" from "finishline_events" where "id" >/.test(sql);
      return {
        run: (...parameters: unknown[]) => {
          const result = statement.run(...parameters);
          if (sql === 'BEGIN IMMEDIATE') locked = true;
          else if (sql === 'COMMIT' || sql === 'ROLLBACK') locked = false;
          return result;
        },
        get: (...parameters: unknown[]) => statement.get(...parameters),
        all: (...parameters: unknown[]) => {
          const rows = statement.all(...parameters);
          if (pastMark && locked) readUnderLock += rows.length;
          return rows;
        },
      };
    },
    readUnderLock: () => readUnderLock,
  };
}

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

describe('a write transaction far behind other connections’ commits', () => {
  it('reads at most one page of them under the write lock, and publishes them all once, in order, before its own', async () => {
    const file = tempDatabase();
    cleanups.push(() => file.remove());
    const raw = new Database(file.file);
    cleanups.push(() => {
      raw.close();
    });
    const db = lockWatchingDatabase(raw);
    const store = new SqliteProgressStore({ database: db, dataVersionPollMs: 0 });
    cleanups.push(() => store.close());
    // Another process's store on the same file (a second connection is what SQLite tells apart).
    const other = new SqliteProgressStore({ database: file.file, dataVersionPollMs: 0 });
    cleanups.push(() => other.close());
    await store.createTask({ id: 'mine', owner: 'alice', kind: 'k' });
    await other.createTask({ id: 'theirs', owner: 'alice', kind: 'k' });
    const theirs = 3500;
    await Promise.all(
      Array.from({ length: theirs }, (_, i) =>
        other.append('theirs', { type: 'item', key: `n-${i}`, ok: true }),
      ),
    );
    const heard: string[] = [];
    store.changes.subscribe((change) => heard.push(`${change.taskId}:${change.seq}`));

    await store.append('mine', { type: 'progress', done: 1 });

    // Above 0: the statement the wrapper looks for is still the one that reads past the mark.
    expect(db.readUnderLock(), 'event rows read under the write lock').toBeGreaterThan(0);
    expect(db.readUnderLock(), 'event rows read under the write lock').toBeLessThanOrEqual(1000);
    expect(heard).toEqual([...Array.from({ length: theirs }, (_, i) => `theirs:${i + 1}`), 'mine:1']);
  });
});
