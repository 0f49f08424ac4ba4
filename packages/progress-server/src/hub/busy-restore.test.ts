import { MemoryProgressStore } from '@finishline/core';
import { describe, expect, it } from 'vitest';
import { HUB_READ, useHubs } from '../testing/hub-over.js';

/**
 * A store restored under a hub that had read a task further than the restored copy holds, the task busy
 * again at once: another process commits while each of the hub's reads runs, each commit of a seq the hub
 * already knew of (the old epoch's). A change that raises nothing may still be a commit the read missed,
 * so an empty read heard during one is read again at once; but counted, or the hub never gave the old
 * epoch's seq up nor told the server the store went back (its reads back to back while the task stayed busy).
 */

const { hubOver } = useHubs();

async function busyAfterRestore(oldSeq: number, commitsWhileReading: number) {
  const store = new MemoryProgressStore();
  let busy = false;
  let commits = 0;
  let hubReads = 0;
  const { hub, emit, wentBack } = hubOver(store, true, async (limit) => {
    if (!busy || limit !== HUB_READ) return;
    hubReads += 1;
    if (commits < commitsWhileReading) {
      commits += 1;
      const { event } = await store.append(task.id, { type: 'progress', done: commits });
      emit({ taskId: task.id, seq: event.seq, terminal: false, events: [event] });
    }
  });
  // The restored store holds the task at seq 2; the hub had read it to `oldSeq` before the restore.
  const task = await store.createTask({ owner: 'alice', kind: 'k' });
  await store.append(task.id, { type: 'progress', done: 1 });
  await store.append(task.id, { type: 'progress', done: 2 });
  hub.follow(task.id, { deliver: () => undefined });
  hub.observe(task.id, oldSeq);
  busy = true;
  // The old epoch's late notice of the next seq (no epoch stamp: not told apart as foreign).
  emit({ taskId: task.id, seq: oldSeq + 1, terminal: false });
  // Four empty reads a retry delay (5 ms) apart, then the give-up: well within this.
  const deadline = Date.now() + 2000;
  while (wentBack() === 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
  return { wentBack: wentBack(), hubReads };
}

describe('a busy task after a restore', () => {
  it('gives the old epoch seq up and tells the server the store went back, though the task keeps committing', async () => {
    expect((await busyAfterRestore(6, 10)).wentBack).toBe(1);
  });

  it('is not read back to back while it stays busy: the empty reads are counted', async () => {
    const { wentBack, hubReads } = await busyAfterRestore(1000, 50);
    expect(wentBack).toBe(1);
    expect(hubReads).toBeLessThanOrEqual(5);
  });
});
