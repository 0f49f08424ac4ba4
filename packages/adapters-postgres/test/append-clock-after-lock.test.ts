import { describe, expect, it } from 'vitest';
import { storeFixtures } from './support.js';

const fx = storeFixtures('aclock');

/**
 * Two stores of one schema on one stepping clock (each reading 1 s later). A has a pool of one connection,
 * which `holdA` holds so that A's write waits for it while B writes.
 */
async function twoStoresOneClock() {
  const schema = await fx.migrated();
  const clock = { now: 1_000_000 };
  const read = () => (clock.now += 1000);
  const poolA = fx.pool(1);
  const a = await fx.open({ schema, clock: read, pool: poolA });
  const b = await fx.open({ schema, clock: read });
  /** Runs `waiting` (A's write, started while its connection is held), then `meanwhile` (B's), then frees A. */
  async function holdA<W, M>(waiting: () => Promise<W>, meanwhile: () => Promise<M>) {
    const held = await poolA.connect();
    let release = true;
    try {
      const late = waiting();
      await new Promise((resolve) => setTimeout(resolve, 50)); // A's write is waiting for the connection
      const first = await meanwhile();
      held.release();
      release = false;
      return { first, late: await late };
    } finally {
      if (release) held.release();
    }
  }
  return { a, b, clock, holdA };
}

describe('the time of an append planned on a locked row', () => {
  // The locked write read the store's clock before it waited for a connection (and for the row's lock), and
  // planned the append at that time once it had the row: another write of the task committed meanwhile, at a
  // later time, was followed by this one at an earlier time. The task's log went back in time (seq n+1
  // before seq n, updatedAt going backwards) with one clock, in one process. The SQLite store reads its clock
  // once the write lock is held, as the Postgres lease renewals do once their rows are locked.
  it('is read once the row is locked: the log never goes back in time', async () => {
    const { a, b, holdA } = await twoStoresOneClock();
    // Created by B: A has no row of it remembered, so its append goes to the locked write at once.
    const task = await b.createTask({ owner: 'u', kind: 'k' });
    const { first, late: second } = await holdA(
      () => a.append(task.id, { type: 'progress', message: 'a' }),
      () => b.append(task.id, { type: 'progress', message: 'b' }),
    );
    expect(second.event.seq).toBe(first.event.seq + 1);
    expect(second.event.time).toBeGreaterThanOrEqual(first.event.time);
    expect(second.task.updatedAt).toBeGreaterThanOrEqual(first.task.updatedAt);
  });

  // The reaper read the clock before it waited for a connection, and stamped its interruptions with that time:
  // an append committed meanwhile came before the interruption in the log, at a later time.
  it('a reap reads it once it has its connection: the interruption comes after the append in time too', async () => {
    const { a, b, clock, holdA } = await twoStoresOneClock();
    const task = await b.createTask({ owner: 'u', kind: 'k', lease: { owner: 'w', ttlMs: 1000 } });
    clock.now += 10_000; // the lease expired
    const { first: appended, late } = await holdA(
      () => a.reapExpiredLeases(),
      () => b.append(task.id, { type: 'progress', message: 'late' }),
    );
    const [interruption] = late;
    expect(interruption?.event.seq).toBe(appended.event.seq + 1);
    expect(interruption?.event.time).toBeGreaterThanOrEqual(appended.event.time);
  });
});
