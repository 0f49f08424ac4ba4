import type { TaskChange } from '@finishline/core';
import { ManualClock } from '@finishline/core/testing';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { SqliteProgressStore } from '../src/index.js';

/**
 * A task id is taken again once retention purged its task, and each run starts again at seq 1. The
 * changes of a store's own appends name the run they are of (`TaskChange.run`, the task's `createdAt`),
 * so that a server following the old run starts over on the new one instead of taking its seqs for the
 * old run's. (Other connections' commits, caught up from the events table, go without it.)
 */
describe("the SQLite store's changes of its own appends", () => {
  it("carry the task's run, each run of a reused id its own", async () => {
    const clock = new ManualClock();
    const store = new SqliteProgressStore({ database: new Database(':memory:'), clock: clock.now });
    try {
      const seen: TaskChange[] = [];
      store.changes.subscribe((change) => seen.push(change));
      const one = await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' });
      clock.advance(1);
      await store.append('job-1', { type: 'item', key: 'old-1', ok: true });
      clock.advance(1);
      await store.append('job-1', { type: 'completed' });
      clock.advance(1);
      expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(1);
      clock.advance(1);
      const two = await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' });
      expect(two.createdAt).toBeGreaterThan(one.createdAt);
      clock.advance(1);
      await Promise.all([
        store.append('job-1', { type: 'item', key: 'new-1', ok: true }),
        store.append('job-1', { type: 'item', key: 'new-2', ok: true }),
      ]);
      expect(seen.map((change) => `${change.seq}:${change.run}`)).toEqual([
        `1:${one.createdAt}`,
        `2:${one.createdAt}`,
        `1:${two.createdAt}`,
        `2:${two.createdAt}`,
      ]);
    } finally {
      await store.close();
    }
  });
});
