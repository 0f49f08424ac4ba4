import { ErrorCode } from '@finishline/core';
import { ManualClock } from '@finishline/core/testing';
import { describe, expect, it } from 'vitest';
import { SqliteProgressStore } from '../src/index.js';
import { tempDatabase } from './support/temp-database.js';

/**
 * Two stores on one file stand for two processes: `a` ran run 1 of `job` (and keeps its running row
 * between batches), `b` reaps it, purges it and creates run 2 while `a` is frozen. A's writes fenced to run
 * 1 must be refused on the row they lock, whatever `a` remembered.
 */
describe('writes fenced to a run purged by another process', () => {
  it('are refused with task_not_found and leave the new run as it was', async () => {
    const clock = new ManualClock();
    const db = tempDatabase();
    const a = new SqliteProgressStore({ database: db.file, clock: clock.now });
    const b = new SqliteProgressStore({ database: db.file, clock: clock.now });
    try {
      const lease = { owner: 'replica', ttlMs: 1000 };
      const old = await a.createTask({ id: 'job', owner: 'alice', kind: 'k', lease });
      const fence = { run: old.createdAt };
      await a.append('job', { type: 'item', key: 'old-1', ok: true }, fence);
      clock.advance(1000);
      expect((await b.reapExpiredLeases()).length).toBe(1);
      clock.advance(1);
      expect(await b.purgeFinished({ olderThanMs: 0 })).toBe(1);
      clock.advance(1);
      const created = await b.createTask({ id: 'job', owner: 'alice', kind: 'k', lease });
      await b.append('job', { type: 'item', key: 'new-1', ok: true }, { run: created.createdAt });
      const row = await b.getTask('job');

      await expect(a.append('job', { type: 'item', key: 'old-2', ok: true }, fence)).rejects.toMatchObject({
        code: ErrorCode.TaskNotFound,
      });
      await expect(a.append('job', { type: 'completed' }, fence)).rejects.toMatchObject({
        code: ErrorCode.TaskNotFound,
      });
      await expect(a.renewLease('job', 'replica', 1000, fence)).rejects.toMatchObject({
        code: ErrorCode.TaskNotFound,
      });
      await expect(a.releaseLease('job', 'replica', fence)).rejects.toMatchObject({
        code: ErrorCode.TaskNotFound,
      });
      expect(await a.getTask('job')).toEqual(row);
      expect((await a.readEvents('job', 0)).map((event) => event.seq)).toEqual([1]);
    } finally {
      await a.close();
      await b.close();
      db.remove();
    }
  });
});
