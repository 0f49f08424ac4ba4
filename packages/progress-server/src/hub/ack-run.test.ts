import { MemoryProgressStore } from '@finishline/core';
import { ManualClock } from '@finishline/core/testing';
import { describe, expect, it } from 'vitest';
import { silentLogger } from '../logger.js';
import { ServerMetrics } from '../metrics.js';
import { AckWriter } from './ack-writer.js';

/**
 * An ack names the run its watcher's authorization read (`run`); the writer fences its writes to the run
 * its last read of the task saw (`seen`). A socket still subscribed to run 1 of an id acknowledges run 1's
 * terminal late, after retention purged run 1, the id was created again, and another watcher's load of
 * run 2 told the writer: fenced to run 2, the ack marked run 2's events processed, which none of its
 * watchers had processed.
 */

async function runTwoSeen() {
  const clock = new ManualClock();
  const store = new MemoryProgressStore({ clock: clock.now });
  const one = await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' });
  clock.advance(1);
  await store.append('job-1', { type: 'item', key: 'old-1', ok: true });
  clock.advance(1);
  await store.append('job-1', { type: 'completed' });
  clock.advance(1);
  expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(1);
  clock.advance(1);
  const two = await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' });
  for (let i = 1; i <= 3; i++) {
    clock.advance(1);
    await store.append('job-1', { type: 'item', key: `new-${i}`, ok: true });
  }
  const metrics = new ServerMetrics({ registry: undefined, prefix: 'test_', feed: store.changes });
  const acks = new AckWriter({ store, logger: silentLogger, metrics, retryDelayMs: 5 });
  return { store, acks, one, two };
}

describe('an ack of an earlier run of the id than the one the writer saw last', () => {
  it("is not recorded on the later run's row", async () => {
    const { store, acks, one, two } = await runTwoSeen();
    // Run 2's watcher loaded it (seq 3) ...
    acks.seen('job-1', 3, two.createdAt, acks.mark());
    // ... and run 1's watcher acknowledges run 1's terminal, seq 2.
    acks.ack('job-1', 2, one.createdAt);
    await acks.flush(Date.now() + 2000);
    expect((await store.getTask('job-1'))?.ackedSeq).toBe(0);
    // Run 2's own ack is written.
    acks.ack('job-1', 1, two.createdAt);
    await acks.flush(Date.now() + 2000);
    expect((await store.getTask('job-1'))?.ackedSeq).toBe(1);
    acks.close();
  });
});

describe('an ack of a later run of the id than the one the writer saw last', () => {
  it('is recorded, not refused as a duplicate of the earlier run', async () => {
    const { store, acks, one, two } = await runTwoSeen();
    // The writer last saw run 1 at its end (seq 2), whose ack it wrote...
    acks.seen('job-1', 2, one.createdAt, acks.mark());
    acks.ack('job-1', 2, one.createdAt);
    await acks.flush(Date.now() + 2000);
    // ... and run 2's watcher acknowledges seq 2 of run 2.
    acks.ack('job-1', 2, two.createdAt);
    await acks.flush(Date.now() + 2000);
    expect((await store.getTask('job-1'))?.ackedSeq).toBe(2);
    acks.close();
  });
});
