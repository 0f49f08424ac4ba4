import { describe, expect, it } from 'vitest';
import { storeFixtures } from './support.js';

const fx = storeFixtures('aclock');

describe('the time of an append planned on a locked row', () => {
  // The locked write read the store's clock before it waited for a connection (and for the row's lock), and
  // planned the append at that time once it had the row: another write of the task committed meanwhile, at a
  // later time, was followed by this one at an earlier time. The task's log went back in time (seq n+1
  // before seq n, updatedAt going backwards) with one clock, in one process. The SQLite store reads its clock
  // once the write lock is held, as the Postgres lease renewals do once their rows are locked.
  it('is read once the row is locked: the log never goes back in time', async () => {
    const schema = await fx.migrated();
    let now = 1_000_000;
    const clock = () => (now += 1000);
    const poolA = fx.pool(1);
    const a = await fx.open({ schema, clock, pool: poolA });
    const b = await fx.open({ schema, clock });
    // Created by B: A has no row of it remembered, so its append goes to the locked write at once.
    const task = await b.createTask({ owner: 'u', kind: 'k' });
    const held = await poolA.connect(); // A's only connection: its write waits for it
    let release = true;
    try {
      const late = a.append(task.id, { type: 'progress', message: 'a' });
      await new Promise((resolve) => setTimeout(resolve, 50)); // A's batch is waiting for the connection
      const first = await b.append(task.id, { type: 'progress', message: 'b' });
      held.release();
      release = false;
      const second = await late;
      expect(second.event.seq).toBe(first.event.seq + 1);
      expect(second.event.time).toBeGreaterThanOrEqual(first.event.time);
      expect(second.task.updatedAt).toBeGreaterThanOrEqual(first.task.updatedAt);
    } finally {
      if (release) held.release();
    }
  });

  // The reaper read the clock before it waited for a connection, and stamped its interruptions with that time:
  // an append committed meanwhile came before the interruption in the log, at a later time.
  it('a reap reads it once it has its connection: the interruption comes after the append in time too', async () => {
    const schema = await fx.migrated();
    let now = 1_000_000;
    const clock = () => (now += 1000);
    const poolA = fx.pool(1);
    const a = await fx.open({ schema, clock, pool: poolA });
    const b = await fx.open({ schema, clock });
    const task = await b.createTask({ owner: 'u', kind: 'k', lease: { owner: 'w', ttlMs: 1000 } });
    now += 10_000; // the lease expired
    const held = await poolA.connect();
    let release = true;
    try {
      const reaped = a.reapExpiredLeases();
      await new Promise((resolve) => setTimeout(resolve, 50)); // the reap is waiting for the connection
      const appended = await b.append(task.id, { type: 'progress', message: 'late' });
      held.release();
      release = false;
      const [interruption] = await reaped;
      expect(interruption?.event.seq).toBe(appended.event.seq + 1);
      expect(interruption?.event.time).toBeGreaterThanOrEqual(appended.event.time);
    } finally {
      if (release) held.release();
    }
  });
});
