import { describe, expect, it } from 'vitest';
import { ErrorCode } from '../codes.js';
import { isProgressError } from '../progress-error.js';
import { ManualClock } from '../testing/manual-clock.js';
import { describeProgressStoreContract } from '../testing/store-contract.js';
import type { TaskChange } from './change-feed.js';
import { MEMORY_PROGRESS_STORE_DEFAULTS, MemoryProgressStore } from './memory-store.js';
import { STORE_DEFAULTS } from './progress-store.js';

describeProgressStoreContract(
  'memory',
  async () => {
    const clock = new ManualClock();
    const store = new MemoryProgressStore({ clock: clock.now });
    return { store, clock, close: () => store.close() };
  },
  { numRuns: 1000 },
);

describe('MemoryProgressStore', () => {
  function build() {
    const clock = new ManualClock();
    return { clock, store: new MemoryProgressStore({ clock: clock.now }) };
  }

  it('exports frozen defaults', () => {
    expect(Object.isFrozen(MEMORY_PROGRESS_STORE_DEFAULTS)).toBe(true);
    expect(typeof MEMORY_PROGRESS_STORE_DEFAULTS.clock()).toBe('number');
  });

  it('refuses a clock that returns no time with internal, and creates nothing', async () => {
    for (const now of [Number.NaN, -1, Number.POSITIVE_INFINITY, '1700000000000']) {
      const store = new MemoryProgressStore({ clock: () => now as number });
      await expect(
        store.createTask({ id: 'task-1', owner: 'alice', kind: 'batch' }),
        `clock returning ${String(now)}`,
      ).rejects.toMatchObject({ code: ErrorCode.Internal, message: expect.stringContaining('clock') });
      expect(await store.getTask('task-1'), `task after a clock returning ${String(now)}`).toBeUndefined();
    }
  });

  it('refuses a clock that throws with internal, the throw as its cause, and writes nothing', async () => {
    // Until 7 December 2026 the bare error reached the caller, with no code.
    const thrown = new Error('clock broke');
    let broken = false;
    const store = new MemoryProgressStore({
      clock: () => {
        if (broken) throw thrown;
        return 1_000;
      },
    });
    await store.createTask({ id: 'task-1', owner: 'alice', kind: 'batch' });
    broken = true;
    const calls: Array<[string, () => Promise<unknown>]> = [
      ['createTask', () => store.createTask({ id: 'task-2', owner: 'alice', kind: 'batch' })],
      ['append', () => store.append('task-1', { type: 'progress' })],
      ['renewLease', () => store.renewLease('task-1', 'worker-1', 1_000)],
      ['reapExpiredLeases', () => store.reapExpiredLeases()],
      ['purgeFinished', () => store.purgeFinished({ olderThanMs: 0 })],
    ];
    for (const [what, call] of calls) {
      await expect(call(), what).rejects.toMatchObject({ code: ErrorCode.Internal, cause: thrown });
    }
    expect(await store.getTask('task-2')).toBeUndefined();
    expect(await store.getTask('task-1')).toMatchObject({ seq: 0, leaseOwner: null });
  });

  it('reaps every expired lease at one reading of the clock, as the other stores reap in one transaction', async () => {
    // Until 8 December 2026 each reaped task read the clock again: one that threw on the second read
    // rejected the call with internal after the first task was already interrupted (and published), a
    // reap the caller never heard of; the tasks' ends also had different times.
    let now = 1_000;
    let readsLeft = Number.POSITIVE_INFINITY;
    const store = new MemoryProgressStore({
      clock: () => {
        readsLeft -= 1;
        if (readsLeft < 0) throw new Error('clock broke');
        return now;
      },
    });
    for (const id of ['task-1', 'task-2']) {
      await store.createTask({ id, owner: 'alice', kind: 'batch' });
      await store.renewLease(id, 'worker-1', 100);
    }
    now = 5_000;
    readsLeft = 1;
    const reaped = await store.reapExpiredLeases();
    expect(reaped.map((result) => [result.task.id, result.event.time])).toEqual([
      ['task-1', 5_000],
      ['task-2', 5_000],
    ]);
  });

  it('rejects bad options at construction with invalid_input', () => {
    const bad: unknown[] = [{ clock: 42 }, { onListenerError: 'log' }, { colour: 'red' }, null, 'options'];
    for (const options of bad) {
      let caught: unknown;
      try {
        new MemoryProgressStore(options as never);
      } catch (error) {
        caught = error;
      }
      expect(isProgressError(caught, ErrorCode.InvalidInput), `options ${JSON.stringify(options)}`).toBe(
        true,
      );
    }
  });

  it('uses the system clock by default', async () => {
    const before = Date.now();
    const task = await new MemoryProgressStore().createTask({ owner: 'alice', kind: 'k' });
    expect(task.createdAt).toBeGreaterThanOrEqual(before);
    expect(task.createdAt).toBeLessThanOrEqual(Date.now());
  });

  it('hands what a listener throws to onListenerError and still appends', async () => {
    const errors: unknown[] = [];
    const store = new MemoryProgressStore({ onListenerError: (error) => errors.push(error) });
    const boom = new Error('boom');
    store.changes.subscribe(() => {
      throw boom;
    });
    const seen: TaskChange[] = [];
    store.changes.subscribe((change) => seen.push(change));
    const task = await store.createTask({ owner: 'alice', kind: 'k' });
    const { event } = await store.append(task.id, { type: 'progress' });
    expect(event.seq).toBe(1);
    expect(errors).toEqual([boom]);
    expect(seen).toEqual([{ taskId: task.id, seq: 1, terminal: false, run: task.createdAt }]);
  });

  it('still appends, and tells the other listeners, when onListenerError itself throws', async () => {
    const store = new MemoryProgressStore({
      onListenerError: () => {
        throw new Error('the logger is down');
      },
    });
    store.changes.subscribe(() => {
      throw new Error('boom');
    });
    const seen: TaskChange[] = [];
    store.changes.subscribe((change) => seen.push(change));
    const task = await store.createTask({ owner: 'alice', kind: 'k' });
    // Committed: the caller must not be told it failed (a retry would append it twice).
    await expect(store.append(task.id, { type: 'progress' })).resolves.toMatchObject({ event: { seq: 1 } });
    expect(seen).toEqual([{ taskId: task.id, seq: 1, terminal: false, run: task.createdAt }]);
  });

  it('never leaves a rejection of an async onListenerError unhandled', async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    try {
      const store = new MemoryProgressStore({
        onListenerError: (async () => {
          throw new Error('the log shipper is down');
        }) as never,
      });
      store.changes.subscribe(() => {
        throw new Error('boom');
      });
      const task = await store.createTask({ owner: 'alice', kind: 'k' });
      await expect(store.append(task.id, { type: 'progress' })).resolves.toMatchObject({ event: { seq: 1 } });
      await new Promise((resolve) => setImmediate(resolve));
      await new Promise((resolve) => setImmediate(resolve));
      expect(unhandled).toEqual([]);
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  });

  it('hands the rejection of an async listener to onListenerError, never leaving it unhandled', async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    try {
      const errors: unknown[] = [];
      const store = new MemoryProgressStore({ onListenerError: (error) => errors.push(error) });
      const boom = new Error('the listener gave up');
      // `ChangeListener` returns void, and TypeScript lets an async function be one.
      store.changes.subscribe(async () => {
        await Promise.resolve();
        throw boom;
      });
      const epochBoom = new Error('the epoch listener gave up');
      store.changes.onEpochRenewed?.(async () => {
        throw epochBoom;
      });
      const task = await store.createTask({ owner: 'alice', kind: 'k' });
      await expect(store.append(task.id, { type: 'progress' })).resolves.toMatchObject({ event: { seq: 1 } });
      await store.renewEpoch();
      await new Promise((resolve) => setImmediate(resolve));
      await new Promise((resolve) => setImmediate(resolve));
      expect(unhandled).toEqual([]);
      expect(errors).toEqual([boom, epochBoom]);
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  });

  it('publishes synchronously, after the state is updated', async () => {
    const { store } = build();
    const task = await store.createTask({ id: 'task-1', owner: 'alice', kind: 'k' });
    const observed: Promise<number | undefined>[] = [];
    store.changes.subscribe(() => observed.push(store.getTask(task.id).then((row) => row?.seq)));
    const pending = store.append(task.id, { type: 'progress' });
    // The append ran to completion before its promise settled, listener included.
    expect(observed.length).toBe(1);
    await pending;
    expect(await observed[0]).toBe(1);
  });

  it('publishes frozen changes, so one listener cannot alter what the next one sees', async () => {
    const { store } = build();
    const changes: TaskChange[] = [];
    store.changes.subscribe((change) => changes.push(change));
    const task = await store.createTask({ owner: 'alice', kind: 'k' });
    await store.append(task.id, { type: 'progress' });
    expect(Object.isFrozen(changes[0])).toBe(true);
  });

  it("stamps each change with its task's run, each run of a reused id its own, as the SQL stores do", async () => {
    const { clock, store } = build();
    const seen: TaskChange[] = [];
    store.changes.subscribe((change) => seen.push(change));
    const one = await store.createTask({
      id: 'job-1',
      owner: 'alice',
      kind: 'k',
      lease: { owner: 'w', ttlMs: 5 },
    });
    clock.advance(1);
    await store.append('job-1', { type: 'item', key: 'old-1', ok: true });
    clock.advance(10);
    await store.reapExpiredLeases();
    clock.advance(1);
    expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(1);
    clock.advance(1);
    const two = await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' });
    await store.append('job-1', { type: 'completed' });
    expect(seen.map((change) => `${change.seq}:${change.run}`)).toEqual([
      `1:${one.createdAt}`,
      `2:${one.createdAt}`,
      `1:${two.createdAt}`,
    ]);
  });

  it('reaps what is still expired when a change listener ends another expired task during the reap', async () => {
    const { clock, store } = build();
    for (const id of ['task-1', 'task-2']) {
      await store.createTask({ id, owner: 'alice', kind: 'k', lease: { owner: 'worker-1', ttlMs: 10 } });
      clock.advance(1);
    }
    clock.advance(100);
    let cancelled: Promise<unknown> | undefined;
    // An app's cascade: a task of the batch interrupted cancels its sibling.
    store.changes.subscribe((change) => {
      if (change.taskId === 'task-1' && change.terminal)
        cancelled = store.append('task-2', { type: 'cancelled' });
    });
    const reaped = await store.reapExpiredLeases();
    await cancelled;
    expect(reaped.map(({ event }) => `${event.taskId}:${event.type}`)).toEqual(['task-1:interrupted']);
    expect((await store.getTask('task-2'))?.status).toBe('cancelled');
  });

  it('hands out a fresh copy on every read', async () => {
    const { store } = build();
    const task = await store.createTask({ id: 'task-1', owner: 'alice', kind: 'k' });
    await store.append('task-1', { type: 'item', key: 'n', ok: true, detail: { a: [1] } });
    const [a, b] = [await store.getTask('task-1'), await store.getTask('task-1')];
    expect(a).not.toBe(b);
    expect(a).toEqual(b);
    const [e1, e2] = [await store.readEvents('task-1', 0), await store.readEvents('task-1', 0)];
    expect(e1[0]).not.toBe(e2[0]);
    expect(e1[0]?.progress).not.toBe(e2[0]?.progress);
    expect(task).not.toBe(a);
  });

  it('clamps readEvents to maxReadLimit events', async () => {
    const { store } = build();
    await store.createTask({ id: 'task-1', owner: 'alice', kind: 'k' });
    for (let i = 0; i <= STORE_DEFAULTS.maxReadLimit; i++) await store.append('task-1', { type: 'progress' });
    expect((await store.readEvents('task-1', 0, STORE_DEFAULTS.maxReadLimit * 2)).length).toBe(
      STORE_DEFAULTS.maxReadLimit,
    );
    expect((await store.readEvents('task-1', 0)).length).toBe(STORE_DEFAULTS.readLimit);
  });

  it('clamps reap and purge limits to their maximum', async () => {
    const { store, clock } = build();
    const count = STORE_DEFAULTS.maxReapLimit + 1;
    for (let i = 0; i < count; i++) {
      await store.createTask({ id: `t-${i}`, owner: 'alice', kind: 'k', lease: { owner: 'w', ttlMs: 1 } });
    }
    clock.advance(1);
    expect((await store.reapExpiredLeases({ limit: count * 10 })).length).toBe(STORE_DEFAULTS.maxReapLimit);
    expect((await store.reapExpiredLeases()).length).toBe(1);
    // Those reaped tasks are finished; add enough more to pass the purge maximum.
    for (let i = count; i <= STORE_DEFAULTS.maxPurgeLimit; i++) {
      await store.createTask({ id: `t-${i}`, owner: 'alice', kind: 'k' });
      await store.append(`t-${i}`, { type: 'cancelled' });
    }
    // Out of their creation's millisecond (a task is not purged in it).
    clock.advance(1);
    expect(await store.purgeFinished({ olderThanMs: 0, limit: 10 ** 9 })).toBe(STORE_DEFAULTS.maxPurgeLimit);
    expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(1);
  });

  it('breaks reap ties by id, so the order is deterministic', async () => {
    const { store, clock } = build();
    for (const id of ['t-b', 't-a', 't-c']) {
      await store.createTask({ id, owner: 'alice', kind: 'k', lease: { owner: 'w', ttlMs: 5 } });
    }
    clock.advance(5);
    expect((await store.reapExpiredLeases()).map((result) => result.event.taskId)).toEqual([
      't-a',
      't-b',
      't-c',
    ]);
  });
});
