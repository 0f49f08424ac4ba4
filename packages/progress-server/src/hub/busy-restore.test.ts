import type { ChangeListener, ProgressStore, TaskChange } from '@finishline/core';
import { MemoryProgressStore } from '@finishline/core';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { silentLogger } from '../logger.js';
import { ServerMetrics } from '../metrics.js';
import { FairReads } from './fair-reads.js';
import { TaskHub } from './task-hub.js';

/**
 * A store restored under a hub that had read a task further than the restored copy holds, the task busy
 * again at once: another process commits while each of the hub's reads runs, each commit of a seq the hub
 * already knew of (the old epoch's). A change that raises nothing may still be a commit the read missed,
 * so an empty read heard during one is read again at once; but counted, or the hub never gave the old
 * epoch's seq up nor told the server the store went back (its reads back to back while the task stayed busy).
 */

afterEach(() => {
  vi.useRealTimers();
});

async function busyAfterRestore(oldSeq: number, commitsWhileReading: number) {
  vi.useFakeTimers();
  const store = new MemoryProgressStore();
  const listeners = new Set<ChangeListener>();
  const emit = (change: TaskChange) => {
    for (const listener of listeners) listener(change);
  };
  let busy = false;
  let commits = 0;
  let hubReads = 0;
  const seen = {
    changes: {
      subscribe: (listener: ChangeListener) => {
        listeners.add(listener);
        return () => listeners.delete(listener);
      },
    },
    getTask: (id: string) => store.getTask(id),
    readEvents: async (id: string, after: number, limit?: number) => {
      const events = await store.readEvents(id, after, limit);
      // The hub's own reads (READ_LIMIT 1000): another process commits while each one runs.
      if (busy && limit === 1000) {
        hubReads += 1;
        if (commits < commitsWhileReading) {
          commits += 1;
          const { event } = await store.append(id, { type: 'progress', done: commits });
          emit({ taskId: id, seq: event.seq, terminal: false, events: [event] });
        }
      }
      return events;
    },
  } as unknown as ProgressStore;
  const reads = new FairReads({ maxConcurrent: 4, maxPerPrincipal: 2 });
  let wentBack = 0;
  const hub = new TaskHub({
    store: seen,
    logger: silentLogger,
    metrics: new ServerMetrics({ registry: undefined, prefix: 'test_', feed: store.changes }),
    retryDelayMs: 10,
    reads,
    maxReplayEvents: 100,
    onWentBack: () => {
      wentBack += 1;
    },
  });
  hub.start();
  // The restored store holds the task at seq 2; the hub had read it to `oldSeq` before the restore.
  const task = await store.createTask({ owner: 'alice', kind: 'k' });
  await store.append(task.id, { type: 'progress', done: 1 });
  await store.append(task.id, { type: 'progress', done: 2 });
  hub.follow(task.id, { deliver: () => undefined });
  hub.observe(task.id, oldSeq);
  busy = true;
  // The old epoch's late notice of the next seq (no epoch stamp: not told apart as foreign).
  emit({ taskId: task.id, seq: oldSeq + 1, terminal: false });
  await vi.advanceTimersByTimeAsync(500);
  hub.close();
  reads.close();
  return { wentBack, hubReads };
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
