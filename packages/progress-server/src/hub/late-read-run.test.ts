import { MemoryProgressStore } from '@finishline/core';
import { ManualClock } from '@finishline/core/testing';
import { describe, expect, it } from 'vitest';
import { HUB_READ, useHubs } from '../testing/hub-over.js';
import { recorder, settle, until } from '../testing/stream-recorder.js';
import type { TaskHub } from './task-hub.js';

/**
 * A read of the store names the id, not the run. The hub's live read of run 1, started on a change of
 * run 1 and served late (a busy pool, a store that answered once it was back), may be served after run 1
 * ended, was purged and its id was written again: it returns run 2's events, whose seqs follow on from
 * what the hub dispatched of run 1. Handed out, they went out to run 1's watchers as run 1's own (another
 * run's terminal included), and run 1's own end never came.
 */

const { hubOver } = useHubs();

/** A hub over `store` whose feed the test drives, and whose own reads (page 1000) wait for `gate`. */
function gatedHub(initial: MemoryProgressStore) {
  let store = initial;
  let gate: Promise<void> | undefined;
  let hubReads = 0;
  let taskReads = 0;
  const { hub, emit, wentBack } = hubOver(
    {
      changes: initial.changes,
      getTask: (taskId: string) => {
        taskReads += 1;
        return store.getTask(taskId);
      },
      readEvents: async (taskId: string, afterSeq: number, limit?: number) => {
        if (limit !== undefined && limit >= HUB_READ) {
          hubReads += 1;
          await gate;
        }
        return store.readEvents(taskId, afterSeq, limit);
      },
    },
    true,
  );
  let open: () => void = () => undefined;
  return {
    hub,
    emit,
    hold: () => {
      gate = new Promise((resolve) => {
        open = resolve;
      });
    },
    release: () => {
      gate = undefined;
      open();
    },
    hubReads: () => hubReads,
    taskReads: () => taskReads,
    wentBack,
    /** The store restored from `copy` under the hub (same epoch as far as the hub knows). */
    restore: (copy: MemoryProgressStore) => {
      store = copy;
    },
  };
}

/** A watcher of job-1 on `hub`, its stream started from the load's `seq` and caught up. */
async function watch(hub: TaskHub, seq: number) {
  const watcher = recorder();
  const stream = hub.stream('job-1', 'alice', watcher.sink);
  const loaded = await stream.load();
  stream.start(seq, false, seq, loaded?.createdAt);
  await until(() => watcher.caughtUp() > 0);
  return watcher;
}

/** Ends job-1's run, purges it, and writes the id again: a new run with five items. Returns the new run. */
async function endPurgeAndRewrite(store: MemoryProgressStore, clock: ManualClock) {
  clock.advance(1);
  await store.append('job-1', { type: 'completed' });
  clock.advance(1);
  expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(1);
  clock.advance(1);
  const run = await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' });
  for (let i = 1; i <= 5; i++) {
    clock.advance(1);
    await store.append('job-1', { type: 'item', key: `new-${i}`, ok: true });
  }
  return run;
}

describe("the hub's live read of a run, served after the run was purged and its id taken again", () => {
  it("does not hand the later run's events to the earlier run's watchers", async () => {
    const clock = new ManualClock();
    const store = new MemoryProgressStore({ clock: clock.now });
    const { hub, emit, hold, release, hubReads } = gatedHub(store);
    const one = await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' });
    const watcher = await watch(hub, 0);
    // Run 1's item@1 and item@2, heard with their events.
    for (let i = 1; i <= 2; i++) {
      clock.advance(1);
      const { event } = await store.append('job-1', { type: 'item', key: `old-${i}`, ok: true });
      emit({ taskId: 'job-1', seq: event.seq, terminal: false, run: one.createdAt, events: [event] });
    }
    await until(() => watcher.events.length === 2);
    // Run 1's item@3, heard without its events (too big for a notification): the hub reads, late.
    hold();
    clock.advance(1);
    await store.append('job-1', { type: 'item', key: 'old-3', ok: true });
    emit({ taskId: 'job-1', seq: 3, terminal: false, run: one.createdAt });
    await until(() => hubReads() === 1);
    // Meanwhile run 1 ends (its change still on its way), is purged, and the id is written again past 3.
    const two = await endPurgeAndRewrite(store, clock);
    release();
    await settle();
    // Run 1's end is heard now.
    emit({ taskId: 'job-1', seq: 4, terminal: true, run: one.createdAt });
    await settle();
    // Nothing of run 2 went out as run 1's: its watcher starts over (its owner loads run 2).
    expect(watcher.events).toEqual(['item@1', 'item@2']);
    expect(watcher.calls).toEqual(['restart']);
    expect(two.createdAt).toBeGreaterThan(one.createdAt);
  });
});

describe("the hub's first live read of a run from a load's position, served after the run was purged", () => {
  it("does not hand the later run's events to the earlier run's watchers", async () => {
    const clock = new ManualClock();
    const store = new MemoryProgressStore({ clock: clock.now });
    const { hub, emit, hold, release, hubReads } = gatedHub(store);
    const one = await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' });
    for (let i = 1; i <= 2; i++) {
      clock.advance(1);
      await store.append('job-1', { type: 'item', key: `old-${i}`, ok: true });
    }
    // Watched from the load's seq 2: the hub holds none of run 1's events.
    const watcher = await watch(hub, 2);
    hold();
    clock.advance(1);
    await store.append('job-1', { type: 'item', key: 'old-3', ok: true });
    emit({ taskId: 'job-1', seq: 3, terminal: false, run: one.createdAt });
    await until(() => hubReads() === 1);
    await endPurgeAndRewrite(store, clock);
    release();
    await settle();
    expect(watcher.events).toEqual([]);
    expect(watcher.calls).toEqual(['restart']);
  });
});

describe("the hub's live reads of the run it follows", () => {
  it('read the task only when the hub does not hold the event at its position', async () => {
    const clock = new ManualClock();
    const store = new MemoryProgressStore({ clock: clock.now });
    const { hub, emit, hubReads, taskReads } = gatedHub(store);
    const one = await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' });
    const watcher = await watch(hub, 0);
    const before = taskReads();
    // Every change without its events: each costs one read of the events.
    for (let i = 1; i <= 5; i++) {
      clock.advance(1);
      await store.append('job-1', { type: 'item', key: `item-${i}`, ok: true });
      emit({ taskId: 'job-1', seq: i, terminal: false, run: one.createdAt });
      await until(() => watcher.events.length === i);
    }
    clock.advance(1);
    await store.append('job-1', { type: 'completed' });
    emit({ taskId: 'job-1', seq: 6, terminal: true, run: one.createdAt });
    await until(() => watcher.events.length === 6);
    expect(watcher.events.at(-1)).toBe('completed@6');
    expect(hubReads()).toBe(6);
    // The first read, from the load's position, is checked by a read of the task; the others by the
    // event at the hub's position, read again with them.
    expect(taskReads() - before).toBe(1);
    expect(watcher.calls).toEqual([]);
  });
});

describe("the hub's live read of a store restored below what the hub dispatched", () => {
  it('tells the server the store went back at once', async () => {
    const store = new MemoryProgressStore();
    const { hub, emit, wentBack, restore } = gatedHub(store);
    const task = await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' });
    const backup = new MemoryProgressStore();
    await backup.createTask({ id: 'job-1', owner: 'alice', kind: 'k' });
    await backup.append('job-1', { type: 'progress', done: 1 });
    const watcher = await watch(hub, 0);
    for (let i = 1; i <= 4; i++) {
      const { event } = await store.append('job-1', { type: 'progress', done: i });
      emit({ taskId: 'job-1', seq: event.seq, terminal: false, run: task.createdAt, events: [event] });
    }
    await until(() => watcher.events.length === 4);
    // Restored to seq 1; the old log's late notice of seq 5, without its events, asks for a read.
    restore(backup);
    emit({ taskId: 'job-1', seq: 5, terminal: false });
    await until(() => wentBack() > 0);
    expect(watcher.events).toEqual(['progress@1', 'progress@2', 'progress@3', 'progress@4']);
  });
});
