import type { ChangeListener, ProgressStore, TaskChange, TaskEvent, TaskView } from '@finishline/core';
import { ErrorCode, isProgressError, MemoryProgressStore, ProgressError } from '@finishline/core';
import { ManualClock } from '@finishline/core/testing';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { silentLogger } from '../logger.js';
import { ServerMetrics } from '../metrics.js';
import { FairReads } from './fair-reads.js';
import { TaskHub } from './task-hub.js';
import type { StreamSink } from './task-stream.js';

/**
 * The hub owns catch-up (issue 13 item 1): a subscriber's stream is one unbroken run of events from its
 * cursor, whether they come from the backlog, a gap repair or the live feed.
 */

const closers: Array<() => void | Promise<void>> = [];
afterEach(async () => {
  for (const close of closers.splice(0)) await close();
});

/**
 * A hub over `store` (only what the hub uses of it), closed after the test: started on the store's feed
 * unless `start` is false. `metricsFeed` is a real store's feed for the metrics when `store` is a stand-in.
 */
function hubOver(
  store: ProgressStore,
  options: {
    maxReplayEvents?: number;
    metricsFeed?: ProgressStore['changes'];
    fairReads?: { maxConcurrent: number; maxPerPrincipal: number };
    start?: boolean;
    /** The store epoch the hub takes as current (the server's last read of it). */
    epoch?: () => string | undefined;
    onWentBack?: () => void;
  } = {},
) {
  const feed = options.metricsFeed ?? store.changes;
  const reads = new FairReads(options.fairReads ?? { maxConcurrent: 4, maxPerPrincipal: 2 });
  const hub = new TaskHub({
    store,
    logger: silentLogger,
    metrics: new ServerMetrics({ registry: undefined, prefix: 'test_', feed }),
    retryDelayMs: 10,
    reads,
    maxReplayEvents: options.maxReplayEvents ?? 100,
    ...(options.epoch === undefined ? {} : { epoch: options.epoch }),
    ...(options.onWentBack === undefined ? {} : { onWentBack: options.onWentBack }),
  });
  if (options.start !== false) hub.start();
  closers.push(() => {
    hub.close();
    reads.close();
  });
  return hub;
}

/** `store` as the hub sees it, counting its event reads; `changes` stands in for its feed when given. */
function countingReads(store: MemoryProgressStore, changes: unknown = store.changes) {
  const counted = { reads: 0, store: undefined as unknown as ProgressStore };
  counted.store = {
    changes,
    getTask: (taskId: string) => store.getTask(taskId),
    readEvents: (taskId: string, afterSeq: number, limit?: number) => {
      counted.reads += 1;
      return store.readEvents(taskId, afterSeq, limit);
    },
  } as unknown as ProgressStore;
  return counted;
}

/**
 * `store` as the hub sees it ({@link countingReads}) with a change feed the test drives through `emit`
 * instead of the store's own (as Postgres's `NOTIFY` would, with or without events, late or stale).
 */
function drivenFeed(store: MemoryProgressStore) {
  const listeners = new Set<ChangeListener>();
  const counted = countingReads(store, {
    subscribe: (listener: ChangeListener) => {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
  });
  const emit = (change: TaskChange) => {
    for (const listener of listeners) listener(change);
  };
  return { counted, emit };
}

function setup(options: { maxReplayEvents?: number } = {}) {
  const store = new MemoryProgressStore();
  return { store, hub: hubOver(store, options) };
}

/** A sink that records what it is handed, in order. */
function recorder() {
  const seqs: number[] = [];
  const snapshots: TaskView[] = [];
  const calls: string[] = [];
  let caughtUp = 0;
  const sink: StreamSink = {
    events: (events: readonly TaskEvent[]) => {
      for (const event of events) seqs.push(event.seq);
    },
    snapshot: (view) => {
      snapshots.push(view);
      calls.push(`snapshot@${view.seq}`);
    },
    reset: (view) => {
      snapshots.push(view);
      calls.push(`reset@${view.seq}`);
    },
    gone: () => calls.push('gone'),
    failed: () => calls.push('failed'),
    caughtUp: () => {
      caughtUp += 1;
    },
    internalError: (error) => calls.push(`internal:${String(error)}`),
    isOpen: () => true,
    restart: () => calls.push('restart'),
  };
  return { sink, seqs, snapshots, calls, caughtUp: () => caughtUp };
}

async function until(condition: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !condition(); i++) await new Promise((resolve) => setTimeout(resolve, 5));
  expect(condition()).toBe(true);
}

describe('TaskStream', () => {
  it('reads the backlog after the cursor, then takes live events, with no gap and no repeat', async () => {
    const { store, hub } = setup();
    const task = await store.createTask({ owner: 'alice', kind: 'k' });
    for (let i = 1; i <= 5; i++) await store.append(task.id, { type: 'progress', done: i });
    const rec = recorder();
    const stream = hub.stream(task.id, 'alice', rec.sink);
    const loaded = await stream.load();
    expect(loaded?.seq).toBe(5);
    stream.start(2, false, 5);
    await until(() => rec.caughtUp() > 0);
    expect(rec.seqs).toEqual([3, 4, 5]);
    for (let i = 6; i <= 8; i++) await store.append(task.id, { type: 'progress', done: i });
    await until(() => rec.seqs.length === 6);
    expect(rec.seqs).toEqual([3, 4, 5, 6, 7, 8]);
    expect(rec.calls).toEqual([]);
  });

  it('replaces a backlog longer than the replay limit by a snapshot, then goes on from its seq', async () => {
    const { store, hub } = setup({ maxReplayEvents: 3 });
    const task = await store.createTask({ owner: 'alice', kind: 'k' });
    for (let i = 1; i <= 10; i++) await store.append(task.id, { type: 'progress', done: i });
    const rec = recorder();
    const stream = hub.stream(task.id, 'alice', rec.sink);
    // Ten events behind with a limit of three: one snapshot stands for them.
    stream.start(0, false, 10);
    await until(() => rec.caughtUp() > 0);
    expect(rec.calls).toEqual(['snapshot@10']);
    expect(rec.seqs).toEqual([]);
    await store.append(task.id, { type: 'progress', done: 11 });
    await until(() => rec.seqs.length > 0);
    expect(rec.seqs).toEqual([11]);
  });

  it('reads every event of a backlog longer than the replay limit, page by page, for a sink that replays all', async () => {
    const store = new MemoryProgressStore();
    const counted = countingReads(store);
    const hub = hubOver(counted.store, { maxReplayEvents: 3, metricsFeed: store.changes });
    const task = await store.createTask({ owner: 'alice', kind: 'k' });
    for (let i = 1; i <= 10; i++) await store.append(task.id, { type: 'progress', done: i });
    const rec = recorder();
    const stream = hub.stream(task.id, 'alice', { ...rec.sink, replaysAll: true });
    stream.start(0, false, 10);
    await until(() => rec.caughtUp() > 0);
    expect(rec.seqs).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    expect(rec.calls).toEqual([]);
    // Pages of the replay limit: 3 + 3 + 3 + 1.
    expect(counted.reads).toBe(4);
  });

  it('stands for events a store read skips with a snapshot of the task, then reads on from its seq', async () => {
    const store = new MemoryProgressStore();
    const task = await store.createTask({ owner: 'alice', kind: 'k' });
    for (let i = 1; i <= 3; i++) await store.append(task.id, { type: 'progress', done: i });
    // The first read after seq 1 answers as a store that trimmed seq 2 would: from seq 3.
    let trimmed = false;
    const trimming = {
      changes: store.changes,
      getTask: (taskId: string) => store.getTask(taskId),
      readEvents: (taskId: string, afterSeq: number, limit?: number) => {
        if (afterSeq !== 1 || trimmed) return store.readEvents(taskId, afterSeq, limit);
        trimmed = true;
        return store.readEvents(taskId, afterSeq + 1, limit);
      },
    } as unknown as ProgressStore;
    const hub = hubOver(trimming, { metricsFeed: store.changes });
    const rec = recorder();
    const stream = hub.stream(task.id, 'alice', rec.sink);
    stream.start(1, false, 3);
    await until(() => rec.caughtUp() > 0);
    expect(rec.calls).toEqual(['snapshot@3']);
    expect(rec.seqs).toEqual([]);
    await store.append(task.id, { type: 'completed' });
    await until(() => rec.seqs.length > 0);
    expect(rec.seqs).toEqual([4]);
  });

  it('stops at the terminal event and delivers nothing after a close', async () => {
    const { store, hub } = setup();
    const task = await store.createTask({ owner: 'alice', kind: 'k' });
    const rec = recorder();
    const stream = hub.stream(task.id, 'alice', rec.sink);
    stream.start(0, false, 0);
    await store.append(task.id, { type: 'progress', done: 1 });
    await store.append(task.id, { type: 'completed' });
    await until(() => rec.seqs.length === 2);
    stream.close();
    expect(hub.size).toBe(0);
    expect(await stream.load()).toBeNull();
    expect(rec.seqs).toEqual([1, 2]);
  });

  it('answers a first catch-up that fails with failed(), and says gone() for a task that vanished', async () => {
    const { store, hub } = setup({ maxReplayEvents: 1 });
    const task = await store.createTask({ owner: 'alice', kind: 'k' });
    for (let i = 1; i <= 3; i++) await store.append(task.id, { type: 'progress', done: i });
    const broken = recorder();
    // Only what the hub uses of a store: its feed, task loads, and event reads (failing here).
    const failing = {
      changes: store.changes,
      getTask: (taskId: string) => store.getTask(taskId),
      readEvents: () => Promise.reject(new Error('disk on fire')),
    } as unknown as ProgressStore;
    const other = hubOver(failing, {
      maxReplayEvents: 10,
      metricsFeed: store.changes,
      fairReads: { maxConcurrent: 1, maxPerPrincipal: 1 },
      start: false,
    });
    other.stream(task.id, 'alice', broken.sink).start(0, false, 3);
    await until(() => broken.calls.length > 0);
    expect(broken.calls).toEqual(['failed']);

    // Purged under a stream that is far behind: the replay-limit load finds nothing.
    const rec = recorder();
    const stream = hub.stream('missing-task', 'alice', rec.sink);
    hub.observe('missing-task', 5);
    stream.start(0, false, 5);
    await until(() => rec.calls.length > 0);
    expect(rec.calls).toEqual(['gone']);
  });
  it('retries a first catch-up whose read fails (store_unavailable) after it handed events over, from the last one, with no gap or repeat', async () => {
    const store = new MemoryProgressStore();
    const task = await store.createTask({ owner: 'alice', kind: 'k' });
    for (let i = 1; i <= 5; i++) await store.append(task.id, { type: 'progress', done: i });
    // Seq 6 is committed while the catch-up reads seqs 1 to 5: it reads once more, and that read (and the
    // hub's own read of seq 6 before it) fails as a database restarting does.
    let failures = 0;
    const flaky = {
      changes: store.changes,
      getTask: (taskId: string) => store.getTask(taskId),
      readEvents: async (taskId: string, afterSeq: number, limit?: number) => {
        if (afterSeq === 5 && failures < 2) {
          failures += 1;
          throw new ProgressError(ErrorCode.StoreUnavailable, 'restarting');
        }
        const events = await store.readEvents(taskId, afterSeq, limit);
        if (afterSeq === 0) await store.append(taskId, { type: 'progress', done: 6 });
        return events;
      },
    } as unknown as ProgressStore;
    const hub = hubOver(flaky, { metricsFeed: store.changes });
    const rec = recorder();
    hub.stream(task.id, 'alice', rec.sink).resume(0, 5, task.createdAt);
    await until(() => rec.seqs.length === 6 || rec.calls.length > 0);
    // Seqs 1 to 5 went out before the failure: the subscribe had its answer, and ended now, its client
    // was told the store failed though its watch was under way.
    expect(failures).toBe(2);
    expect(rec.calls).toEqual([]);
    expect(rec.seqs).toEqual([1, 2, 3, 4, 5, 6]);
  });

  it('ends with failed() when repairing a gap meets a row the store cannot read (internal), instead of reading it again every retry delay', async () => {
    const store = new MemoryProgressStore();
    const task = await store.createTask({ owner: 'alice', kind: 'k' });
    let reads = 0;
    const damaged = {
      changes: store.changes,
      getTask: (taskId: string) => store.getTask(taskId),
      readEvents: () => {
        reads += 1;
        return Promise.reject(new ProgressError(ErrorCode.Internal, 'row 2 is damaged'));
      },
    } as unknown as ProgressStore;
    const hub = hubOver(damaged, { metricsFeed: store.changes, start: false });
    const rec = recorder();
    // As its owners do: a failed stream is closed.
    const stream = hub.stream(task.id, 'alice', {
      ...rec.sink,
      failed: (error) => {
        rec.sink.failed(error);
        stream.close();
      },
    });
    stream.start(0, false, 0);
    await until(() => rec.caughtUp() > 0);
    await store.append(task.id, { type: 'progress', done: 1 });
    const { event } = await store.append(task.id, { type: 'progress', done: 2 });
    // Seq 2 handed over live after 0: the gap is read from the store.
    hub.observe(task.id, event.seq, task.createdAt);
    stream.deliver([event]);
    await until(() => rec.calls.length > 0);
    const readsThen = reads;
    // Ten retry delays (10 ms here) later: nothing read again.
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(rec.calls).toEqual(['failed']);
    expect(reads).toBe(readsThen);
  });
});

describe('TaskHub with a feed that carries events', () => {
  it('dispatches the events a change carries without a read, and reads only what a change left out', async () => {
    const store = new MemoryProgressStore();
    // The store as the hub sees it, with a feed driven by the test (as Postgres's NOTIFY with events).
    const { counted, emit } = drivenFeed(store);
    const hub = hubOver(counted.store, {
      maxReplayEvents: 10,
      metricsFeed: store.changes,
      fairReads: { maxConcurrent: 1, maxPerPrincipal: 1 },
    });
    const task = await store.createTask({ owner: 'alice', kind: 'k' });
    await store.append(task.id, { type: 'progress', done: 1 });
    const seen: number[] = [];
    hub.follow(task.id, { deliver: (events) => seen.push(...events.map((event) => event.seq)) });
    hub.observe(task.id, 1);
    const appendAndRead = async (done: number) =>
      (await store.append(task.id, { type: 'progress', done })).event;

    const second = await appendAndRead(2);
    emit({ taskId: task.id, seq: 2, terminal: false, events: [second] });
    expect(seen).toEqual([2]);
    expect(counted.reads).toBe(0);

    // A change whose events start after a gap (3 is missing): nothing from it goes out unread.
    await appendAndRead(3);
    const fourth = await appendAndRead(4);
    emit({ taskId: task.id, seq: 4, terminal: false, events: [fourth] });
    await until(() => seen.length === 3);
    expect(seen).toEqual([2, 3, 4]);
    expect(counted.reads).toBe(1);

    // A repeated change (at-least-once feeds) delivers nothing twice.
    emit({ taskId: task.id, seq: 4, terminal: false, events: [fourth] });
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(seen).toEqual([2, 3, 4]);
    expect(counted.reads).toBe(1);
  });
});

describe('TaskHub dispatches of one tick', () => {
  it('hands a lone event over at once, and what follows in the same tick in one call per task', async () => {
    const store = new MemoryProgressStore();
    // No feed (start() is not called): only publishLocal dispatches, as for appends made in this process.
    const hub = hubOver(store, {
      maxReplayEvents: 10,
      fairReads: { maxConcurrent: 1, maxPerPrincipal: 1 },
      start: false,
    });
    const a = await store.createTask({ owner: 'alice', kind: 'k' });
    const b = await store.createTask({ owner: 'alice', kind: 'k' });
    const calls: string[][] = [];
    for (const task of [a, b]) {
      const name = task === a ? 'a' : 'b';
      hub.follow(task.id, { deliver: (events) => calls.push(events.map((event) => `${name}${event.seq}`)) });
      hub.observe(task.id, 0);
    }
    const append = async (taskId: string, done: number) =>
      (await store.append(taskId, { type: 'progress', done })).event;
    const [a1, a2, a3, a4] = [
      await append(a.id, 1),
      await append(a.id, 2),
      await append(a.id, 3),
      await append(a.id, 4),
    ];
    const [b1, b2] = [await append(b.id, 1), await append(b.id, 2)];

    hub.publishLocal(a1 as TaskEvent);
    expect(calls).toEqual([['a1']]);
    for (const event of [a2, b1, a3, b2]) hub.publishLocal(event as TaskEvent);
    expect(calls).toEqual([['a1']]);
    // One microtask later, still in this tick: each task's held events, in order, in one call.
    await Promise.resolve();
    expect(calls).toEqual([['a1'], ['a2', 'a3'], ['b1', 'b2']]);
    // The held events were handed over: the next dispatch is a lone one again.
    hub.publishLocal(a4 as TaskEvent);
    expect(calls).toEqual([['a1'], ['a2', 'a3'], ['b1', 'b2'], ['a4']]);
  });
});

describe('TaskHub recent events', () => {
  it('serves a catch-up over events it holds without a store read, and reads what it does not hold', async () => {
    const store = new MemoryProgressStore();
    const counted = countingReads(store);
    const hub = hubOver(counted.store, {
      metricsFeed: store.changes,
      fairReads: { maxConcurrent: 1, maxPerPrincipal: 1 },
    });
    const task = await store.createTask({ owner: 'alice', kind: 'k' });
    for (let i = 1; i <= 20; i++) await store.append(task.id, { type: 'progress', done: i });

    // A watcher that stays: its backlog read (10..20) is what the hub keeps.
    const stays = recorder();
    hub.stream(task.id, 'alice', stays.sink).start(10, false, 20);
    await until(() => stays.caughtUp() > 0);
    expect(counted.reads).toBe(1);
    // Live events join the window (this store's feed carries no events: the hub reads them, once each).
    for (let i = 21; i <= 25; i++) await store.append(task.id, { type: 'progress', done: i });
    await until(() => stays.seqs.length === 15);
    const afterLive = counted.reads;

    // Resubscribes within the window read nothing, however often they come.
    for (let round = 0; round < 5; round++) {
      const again = recorder();
      const stream = hub.stream(task.id, 'mallory', again.sink);
      stream.start(12, false, 25);
      await until(() => again.caughtUp() > 0);
      expect(again.seqs).toEqual(Array.from({ length: 13 }, (_, i) => 13 + i));
      stream.close();
    }
    expect(counted.reads).toBe(afterLive);

    // A cursor before the window reads the store, and what it reads joins the window's front.
    const behind = recorder();
    const first = hub.stream(task.id, 'alice', behind.sink);
    first.start(2, false, 25);
    await until(() => behind.caughtUp() > 0);
    expect(behind.seqs).toEqual(Array.from({ length: 23 }, (_, i) => 3 + i));
    expect(counted.reads).toBe(afterLive + 1);
    first.close();
    const behindAgain = recorder();
    hub.stream(task.id, 'alice', behindAgain.sink).start(5, false, 25);
    await until(() => behindAgain.caughtUp() > 0);
    expect(behindAgain.seqs).toHaveLength(20);
    expect(counted.reads).toBe(afterLive + 1);
  });
});

describe('TaskHub after the store epoch changed', () => {
  it('gives up a seq a late notice of the old epoch claims, instead of re-reading the task for ever', async () => {
    vi.useFakeTimers();
    try {
      const store = new MemoryProgressStore();
      const { counted, emit } = drivenFeed(store);
      // retryDelayMs: 10.
      const hub = hubOver(counted.store, {
        metricsFeed: store.changes,
        fairReads: { maxConcurrent: 1, maxPerPrincipal: 1 },
      });
      // The restored store holds the task at seq 2; the old epoch had reached 6.
      const task = await store.createTask({ owner: 'alice', kind: 'k' });
      await store.append(task.id, { type: 'progress', done: 1 });
      await store.append(task.id, { type: 'progress', done: 2 });
      const seen: number[] = [];
      hub.follow(task.id, { deliver: (events) => seen.push(...events.map((event) => event.seq)) });
      hub.observe(task.id, 6);
      hub.forgetSeqs();
      // The old epoch's notice of 6, delivered after the reset, then the restarted stream's read of the task.
      emit({ taskId: task.id, seq: 6, terminal: false });
      hub.observe(task.id, 2);
      await vi.advanceTimersByTimeAsync(1000);
      const settled = counted.reads;
      await vi.advanceTimersByTimeAsync(1000);
      // No seq above 2 exists: a hundred retry delays later the hub no longer reads the task.
      expect(counted.reads).toBe(settled);
      expect(hub.latestSeq(task.id)).toBe(2);

      // The new epoch's commits are read and delivered as usual.
      await store.append(task.id, { type: 'progress', done: 3 });
      emit({ taskId: task.id, seq: 3, terminal: false });
      await vi.advanceTimersByTimeAsync(0);
      expect(seen).toEqual([3]);
    } finally {
      vi.useRealTimers();
    }
  });
  it('asks for the epoch at once when the store does not hold a seq its feed announced (a restore not noticed yet)', async () => {
    vi.useFakeTimers();
    try {
      const store = new MemoryProgressStore();
      const { counted, emit } = drivenFeed(store);
      let epochReads = 0;
      const hub = hubOver(counted.store, { metricsFeed: store.changes, onWentBack: () => (epochReads += 1) });
      const task = await store.createTask({ owner: 'alice', kind: 'k' });
      await store.append(task.id, { type: 'progress', done: 1 });
      hub.follow(task.id, { deliver: () => {} });
      hub.observe(task.id, 1);
      // Restored under the hub, which has not read the new epoch: the old log's notice of 6 comes late.
      emit({ taskId: task.id, seq: 6, terminal: false });
      await vi.advanceTimersByTimeAsync(1000);
      expect(hub.latestSeq(task.id)).toBe(1);
      expect(epochReads).toBe(1);
    } finally {
      vi.useRealTimers();
    }
  });
  it('asks for the epoch at once when a change comes stamped with another one', async () => {
    const store = new MemoryProgressStore();
    const { counted, emit } = drivenFeed(store);
    let epochReads = 0;
    const hub = hubOver(counted.store, {
      metricsFeed: store.changes,
      epoch: () => 'old',
      onWentBack: () => (epochReads += 1),
    });
    const task = await store.createTask({ owner: 'alice', kind: 'k' });
    const seen: number[] = [];
    hub.follow(task.id, { deliver: (events) => seen.push(...events.map((event) => event.seq)) });
    hub.observe(task.id, 0);
    const { event } = await store.append(task.id, { type: 'progress', done: 1 });
    emit({ taskId: task.id, seq: 1, terminal: false, epoch: 'new', events: [event] });
    expect(epochReads).toBe(1);
    // More changes of that epoch (or a flood of an old one's late changes) ask for no more reads.
    emit({ taskId: task.id, seq: 1, terminal: false, epoch: 'new', events: [event] });
    expect(epochReads).toBe(1);
    expect(seen).toEqual([]);
  });
  it("drops a late change of the old epoch, events and all, and delivers the new epoch's own", async () => {
    const store = new MemoryProgressStore();
    const { counted, emit } = drivenFeed(store);
    let epoch = 'old';
    const hub = hubOver(counted.store, { metricsFeed: store.changes, epoch: () => epoch });
    // The restored store holds the task at seq 2; the old epoch had reached 6.
    const task = await store.createTask({ owner: 'alice', kind: 'k' });
    await store.append(task.id, { type: 'progress', done: 1 });
    await store.append(task.id, { type: 'progress', done: 2 });
    const seen: TaskEvent[] = [];
    hub.follow(task.id, { deliver: (events) => seen.push(...events) });
    hub.observe(task.id, 6);
    epoch = 'new';
    hub.forgetSeqs();
    hub.observe(task.id, 2);
    // The old epoch's seq 3, committed before the restore, its notice (with the event) delivered late.
    const stale = Object.freeze({
      taskId: task.id,
      seq: 3,
      type: 'progress',
      time: 0,
      progress: { done: 0, succeeded: 0, failed: 0, total: null, current: null, message: 'old 3' },
    }) as TaskEvent;
    emit({ taskId: task.id, seq: 3, terminal: false, epoch: 'old', events: [stale] });
    // The new epoch's own seq 3.
    const { event } = await store.append(task.id, { type: 'progress', done: 3, message: 'new 3' });
    emit({ taskId: task.id, seq: 3, terminal: false, epoch: 'new', events: [event] });
    await until(() => seen.length > 0);
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(seen).toEqual([event]);
    expect(hub.latestSeq(task.id)).toBe(3);
  });
});

describe('TaskStream behind a seq the store does not hold', () => {
  it('answers with one snapshot, not a snapshot per turn until the hub gives the seq up', async () => {
    const store = new MemoryProgressStore();
    const { counted, emit } = drivenFeed(store);
    let loads = 0;
    // Counting its task loads too (the replay-limit snapshots).
    const loading = {
      ...counted.store,
      getTask: (taskId: string) => {
        loads += 1;
        return store.getTask(taskId);
      },
    } as unknown as ProgressStore;
    const hub = hubOver(loading, {
      maxReplayEvents: 3,
      metricsFeed: store.changes,
      fairReads: { maxConcurrent: 1, maxPerPrincipal: 1 },
    });
    // The restored store holds the task at seq 2; a late notice of the old epoch claims 100.
    const task = await store.createTask({ owner: 'alice', kind: 'k' });
    await store.append(task.id, { type: 'progress', done: 1 });
    await store.append(task.id, { type: 'progress', done: 2 });
    const rec = recorder();
    const stream = hub.stream(task.id, 'alice', rec.sink);
    emit({ taskId: task.id, seq: 100, terminal: false });
    stream.start(0, false, 2);
    await until(() => rec.caughtUp() > 0);
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(rec.calls).toEqual(['snapshot@2']);
    // The stream's one load, and the hub's one read of the task's run as it gives the seq up (the id may
    // hold a later run below it): not one per turn.
    expect(loads).toBe(2);
  });
});

describe('TaskStream catching up while the hub dispatches', () => {
  it('hands over an event the hub dispatched while its catch-up loaded the task, though that load was older', async () => {
    const store = new MemoryProgressStore();
    const { counted, emit } = drivenFeed(store);
    // The catch-up's task load reads the row, then its answer is held (a store answering it behind
    // another connection's commit, whose notice the hub dispatches meanwhile).
    let hold: Promise<void> | undefined;
    let held = 0;
    const loading = {
      ...counted.store,
      getTask: async (taskId: string) => {
        const task = await store.getTask(taskId);
        if (hold !== undefined) {
          held += 1;
          await hold;
        }
        return task;
      },
    } as unknown as ProgressStore;
    const hub = hubOver(loading, { metricsFeed: store.changes });
    const task = await store.createTask({ owner: 'alice', kind: 'k' });
    await store.append(task.id, { type: 'progress', done: 1 });
    await store.append(task.id, { type: 'progress', done: 2 });
    const rec = recorder();
    const stream = hub.stream(task.id, 'alice', rec.sink);
    // A notice of a seq the store does not hold (the old log's, late): the catch-up finds nothing after 2
    // and loads the task.
    emit({ taskId: task.id, seq: 9, terminal: false });
    let release: () => void = () => {};
    hold = new Promise((resolve) => {
      release = resolve;
    });
    stream.start(2, false, 2);
    await until(() => held > 0);
    // The task ends while that load's answer is on its way: the hub dispatches the terminal event once.
    const { event } = await store.append(task.id, { type: 'completed' });
    emit({ taskId: task.id, seq: event.seq, terminal: true, events: [event] });
    hold = undefined;
    release();
    await until(() => rec.caughtUp() > 0);
    await until(() => rec.seqs.includes(3));
    expect(rec.seqs).toEqual([3]);
  });
});

describe('TaskStream repairing a gap in a task purged since', () => {
  it('has its owner start over (a load: task_not_found, or the later run) instead of reading again every retry delay for ever', async () => {
    const clock = new ManualClock();
    const store = new MemoryProgressStore({ clock: clock.now });
    const { counted, emit } = drivenFeed(store);
    const hub = hubOver(counted.store, { metricsFeed: store.changes });
    const task = await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' });
    for (let i = 1; i <= 3; i++) await store.append(task.id, { type: 'progress', done: i });
    const rec = recorder();
    // Its owner replaces it as told (a load of its own): closed, the stream leaves the hub, which then reads
    // nothing for it (the hub's own read, put off for the appends below, would find the task gone too).
    const stream = hub.stream(task.id, 'alice', {
      ...rec.sink,
      restart: () => {
        rec.sink.restart();
        stream.close();
      },
    });
    stream.start(3, false, 3, task.createdAt);
    await until(() => rec.caughtUp() > 0);
    // The task ends (seqs 4 and 5, appended by this process: the hub waits for its own appends, for up to
    // its retry delay, rather than read them) and retention purges it before the stream repairs the gap
    // it is handed.
    const settleAppends = [hub.localAppend(task.id), hub.localAppend(task.id)];
    clock.advance(1);
    await store.append(task.id, { type: 'progress', done: 4 });
    clock.advance(1);
    const { event: last } = await store.append(task.id, { type: 'completed' });
    clock.advance(1);
    expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(1);
    emit({ taskId: task.id, seq: last.seq, terminal: true });
    const readsBefore = counted.reads;
    stream.deliver([last]);
    await until(() => rec.calls.length > 0);
    // Retried as a store failure, the read failed every retryDelayMs (10 ms here) while the subscriber,
    // told nothing, waited for ever. Twenty delays later it read once.
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(rec.calls).toEqual(['restart']);
    expect(counted.reads - readsBefore).toBe(1);
    for (const settleAppend of settleAppends) settleAppend();
  });
});

describe('TaskHub while an append of this process hangs', () => {
  // Found by a review: while appends were in flight, the hub read nothing for a gap no larger than their
  // number, taking it for their own commits. An append that hangs (a pool exhausted, a connection lost
  // before its query went out) commits nothing, and another writer's event announced without its events
  // (too large for NOTIFY, a poll) was read only once more seqs were missing or that append settled:
  // never, for a terminal event, its watchers waiting for as long as the append hung.
  it("reads another writer's event within the retry delay, not once the hung append settles", async () => {
    const store = new MemoryProgressStore();
    const { counted, emit } = drivenFeed(store);
    const hub = hubOver(counted.store, { metricsFeed: store.changes });
    const task = await store.createTask({ owner: 'alice', kind: 'k' });
    await store.append(task.id, { type: 'progress', done: 1 });
    const seen: number[] = [];
    hub.follow(task.id, { deliver: (events) => seen.push(...events.map((event) => event.seq)) });
    hub.observe(task.id, 1, task.createdAt);
    // This process's append starts and never settles.
    const settle = hub.localAppend(task.id);
    const { event } = await store.append(task.id, { type: 'completed' });
    emit({ taskId: task.id, seq: event.seq, terminal: true });
    await until(() => seen.length > 0);
    expect(seen).toEqual([2]);
    settle();
  });

  it('still reads nothing for its own commit announced before the append resolves', async () => {
    const store = new MemoryProgressStore();
    const { counted, emit } = drivenFeed(store);
    const hub = hubOver(counted.store, { metricsFeed: store.changes });
    const task = await store.createTask({ owner: 'alice', kind: 'k' });
    const seen: number[] = [];
    hub.follow(task.id, { deliver: (events) => seen.push(...events.map((event) => event.seq)) });
    hub.observe(task.id, 0, task.createdAt);
    const reads = counted.reads;
    const settle = hub.localAppend(task.id);
    const { event } = await store.append(task.id, { type: 'progress', done: 1 });
    emit({ taskId: task.id, seq: event.seq, terminal: false });
    hub.publishLocal(event, task.createdAt);
    settle();
    expect(seen).toEqual([1]);
    // Past the retry delay: no read was made for it.
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(counted.reads).toBe(reads);
  });
});

describe('TaskStream when the hub closes', () => {
  // Found by a review: start() after close() subscribed to the store's feed again, a listener on the
  // caller's store that nothing removed (close() had run), for a hub whose follow() refuses everything.
  it('refuses start() after close(): the feed is not subscribed to again', () => {
    const store = new MemoryProgressStore();
    const listeners = new Set<ChangeListener>();
    const { store: seen } = countingReads(store, {
      subscribe: (listener: ChangeListener) => {
        listeners.add(listener);
        return () => listeners.delete(listener);
      },
    });
    const hub = hubOver(seen, { metricsFeed: store.changes });
    expect(listeners.size).toBe(1);
    hub.close();
    expect(listeners.size).toBe(0);
    expect(() => hub.start()).toThrow(expect.objectContaining({ code: ErrorCode.Closed }));
    expect(listeners.size).toBe(0);
  });

  // Found by a review: the hub's close() dropped what it followed but registered whatever came after it.
  // A stream opened then (the server's shutdown order kept that from happening, not the hub) caught up
  // from the store and then waited for ever: no feed told it anything, and nothing dropped it.
  it('refuses a stream, or a subscriber, after close: nothing registers, and the stream ends with closed', async () => {
    const { store, hub } = setup();
    const task = await store.createTask({ owner: 'alice', kind: 'k' });
    await store.append(task.id, { type: 'progress', done: 1 });
    hub.close();
    const errors: unknown[] = [];
    const rec = recorder();
    const stream = hub.stream(task.id, 'alice', { ...rec.sink, failed: (error) => errors.push(error) });
    expect(hub.size).toBe(0);
    stream.start(0, false, 1, task.createdAt);
    expect(errors).toHaveLength(1);
    expect(isProgressError(errors[0], ErrorCode.Closed)).toBe(true);
    await expect(hub.stream(task.id, 'alice', recorder().sink).load()).rejects.toMatchObject({
      code: ErrorCode.Closed,
    });
    expect(() => hub.follow(task.id, { deliver: () => undefined })).toThrow(
      expect.objectContaining({ code: ErrorCode.Closed }),
    );
    expect(hub.size).toBe(0);
    // Nothing was handed over, and nothing will be: a later commit reaches no one.
    await store.append(task.id, { type: 'progress', done: 2 });
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(rec.seqs).toEqual([]);
    expect(rec.caughtUp()).toBe(0);
  });

  it('ends a stream whose read was still waiting for its turn, rather than retrying it for ever', async () => {
    const store = new MemoryProgressStore();
    const task = await store.createTask({ owner: 'alice', kind: 'k' });
    for (let i = 1; i <= 5; i++) await store.append(task.id, { type: 'progress', done: i });
    // The first stream's read holds the only slot (a store that hangs); the others' wait behind it.
    let reads = 0;
    const hanging = {
      changes: store.changes,
      getTask: (taskId: string) => store.getTask(taskId),
      readEvents: (taskId: string, afterSeq: number, limit?: number) => {
        reads += 1;
        return reads === 1 ? new Promise(() => {}) : store.readEvents(taskId, afterSeq, limit);
      },
    } as unknown as ProgressStore;
    const fair = new FairReads({ maxConcurrent: 1, maxPerPrincipal: 1 });
    const hub = new TaskHub({
      store: hanging,
      logger: silentLogger,
      metrics: new ServerMetrics({ registry: undefined, prefix: 'test_', feed: store.changes }),
      retryDelayMs: 10,
      reads: fair,
      maxReplayEvents: 100,
    });
    hub.start();
    closers.push(() => hub.close());
    const first = recorder();
    hub.stream(task.id, 'alice', first.sink).start(0, false, 5, task.createdAt);
    // One answered before (its catch-up retried on failure), one resuming (its first catch-up answers).
    const answered = recorder();
    hub.stream(task.id, 'alice', answered.sink).start(2, false, 5, task.createdAt);
    const resuming = recorder();
    hub.stream(task.id, 'alice', resuming.sink).resume(2, 5, task.createdAt);
    await new Promise((resolve) => setImmediate(resolve));
    expect(fair.queued).toBe(2);
    fair.close();
    await until(() => answered.calls.length > 0 && resuming.calls.length > 0);
    // Twenty retry delays later: each was told once, and nothing was read again (refused `closed`, the
    // read was retried every retryDelayMs for ever, its subscriber told nothing).
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(answered.calls).toEqual(['failed']);
    expect(resuming.calls).toEqual(['failed']);
    expect(first.calls).toEqual([]);
    expect(reads).toBe(1);
    hub.close();
  });
});
