import type { ChangeListener, ProgressStore } from '@finishline/core';
import { ErrorCode, MemoryProgressStore, ProgressError } from '@finishline/core';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { silentLogger } from '../logger.js';
import { ServerMetrics } from '../metrics.js';
import { FairReads } from './fair-reads.js';
import { TaskHub } from './task-hub.js';

/**
 * A read of a followed task's run that fails (the store down) is retried on a timer. That timer went
 * with the task's entry: left armed, it outlived the last subscriber and the hub's `close()` (the
 * server's shutdown left it behind).
 */

afterEach(() => {
  vi.useRealTimers();
});

/** A hub following a task whose run it knows, over a store whose `getTask` fails once `down()` is called. */
async function followedOverFailingStore() {
  const store = new MemoryProgressStore();
  const task = await store.createTask({ owner: 'alice', kind: 'k' });
  await store.append(task.id, { type: 'progress', done: 1 });
  vi.useFakeTimers();
  let failing = false;
  const listeners = new Set<ChangeListener>();
  const seen = {
    changes: {
      subscribe: (listener: ChangeListener) => {
        listeners.add(listener);
        return () => listeners.delete(listener);
      },
    },
    getTask: async (taskId: string) => {
      if (failing) throw new ProgressError(ErrorCode.StoreUnavailable, 'the store is down');
      return store.getTask(taskId);
    },
    readEvents: (taskId: string, afterSeq: number, limit?: number) =>
      store.readEvents(taskId, afterSeq, limit),
  } as unknown as ProgressStore;
  const reads = new FairReads({ maxConcurrent: 4, maxPerPrincipal: 2 });
  const hub = new TaskHub({
    store: seen,
    logger: silentLogger,
    metrics: new ServerMetrics({ registry: undefined, prefix: 'test_', feed: store.changes }),
    retryDelayMs: 60_000,
    reads,
    maxReplayEvents: 100,
  });
  hub.start();
  const unfollow = hub.follow(task.id, { deliver: () => undefined });
  // A subscriber's load told the hub the task's seq and run.
  hub.observe(task.id, 1, task.createdAt);
  failing = true;
  // A change at a seq the hub holds, without its events: maybe a later run's, so the hub reads the task's
  // run, and that read fails.
  for (const listener of listeners) listener({ taskId: task.id, seq: 1, terminal: false });
  for (let i = 0; i < 20 && vi.getTimerCount() === 0; i++) await Promise.resolve();
  // The retry is armed.
  expect(vi.getTimerCount()).toBe(1);
  return { hub, unfollow, reads };
}

describe("the retry of a failed read of a followed task's run", () => {
  it('is cleared when the last subscriber leaves', async () => {
    const { hub, unfollow, reads } = await followedOverFailingStore();
    unfollow();
    expect(hub.size).toBe(0);
    expect(vi.getTimerCount()).toBe(0);
    hub.close();
    reads.close();
  });

  it("is cleared by the hub's close()", async () => {
    const { hub, reads } = await followedOverFailingStore();
    hub.close();
    reads.close();
    expect(vi.getTimerCount()).toBe(0);
  });
});
