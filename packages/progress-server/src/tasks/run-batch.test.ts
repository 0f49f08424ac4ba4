import type { AppendInput, ItemEvent, TaskEvent } from '@finishline/core';
import { ErrorCode, isTerminalEvent, MemoryProgressStore, ProgressError } from '@finishline/core';
import { ManualClock } from '@finishline/core/testing';
import { afterEach, describe, expect, it } from 'vitest';
import { ProgressServer } from '../progress-server.js';
import type { RunBatchOptions } from './run-batch.js';

/** runBatch: counts finished items, reports each one, and always ends the task exactly once. */

const servers: ProgressServer[] = [];

afterEach(async () => {
  await Promise.all(servers.splice(0).map((server) => server.close({ timeoutMs: 500 })));
});

function setup(store = new MemoryProgressStore()) {
  const server = new ProgressServer({ store, authenticate: () => null });
  servers.push(server);
  return { server, store };
}

/** A server on a manual clock's store, its leases of `leaseTtlMs` renewed 1 ms before they lapse, reaped by hand. */
function leasedFor(leaseTtlMs: number) {
  const clock = new ManualClock();
  const store = new MemoryProgressStore({ clock: clock.now });
  const server = new ProgressServer({
    store,
    authenticate: () => null,
    leaseTtlMs,
    leaseRenewIntervalMs: leaseTtlMs - 1,
    reapIntervalMs: 0,
  });
  servers.push(server);
  return { clock, store, server };
}

function isTerminalInput(input: AppendInput): boolean {
  return input.type !== 'progress' && input.type !== 'item';
}

async function log(store: MemoryProgressStore, taskId: string): Promise<TaskEvent[]> {
  return store.readEvents(taskId, 0);
}

/** A promise and its resolver, to hold workers at a known point. */
function gate<T = void>(): { promise: Promise<T>; open: (value: T) => void } {
  let open: (value: T) => void = () => {};
  const promise = new Promise<T>((resolve) => {
    open = resolve;
  });
  return { promise, open };
}

/** Checks the invariants every batch log must satisfy, whatever happened. */
function checkLog(events: TaskEvent[]): void {
  expect(events.map((event) => event.seq)).toEqual(events.map((_, index) => index + 1));
  expect(events.filter(isTerminalEvent)).toHaveLength(1);
  expect(isTerminalEvent(events.at(-1) as TaskEvent)).toBe(true);
  let finished = 0;
  for (const event of events) {
    if (event.type === 'item') finished += 1;
    // `done` counts finished items, never started ones.
    expect(event.progress.done).toBe(finished);
  }
}

/** The task's log, checked against the invariants of {@link checkLog}. */
async function checkedLog(store: MemoryProgressStore, taskId: string): Promise<TaskEvent[]> {
  const events = await log(store, taskId);
  checkLog(events);
  return events;
}

/**
 * A store restart: the first `times` appends `refused` picks are refused store_unavailable. Returns how
 * many were.
 */
function restartRefusing(
  store: MemoryProgressStore,
  refused: (input: AppendInput) => boolean,
  times: number,
): () => number {
  const append = store.append.bind(store);
  let count = 0;
  store.append = async (taskId, input, fence) => {
    if (refused(input) && count < times) {
      count += 1;
      throw new ProgressError(ErrorCode.StoreUnavailable, 'database restarting');
    }
    return append(taskId, input, fence);
  };
  return () => count;
}

/**
 * A COMMIT whose answer was lost: the first `times` appends `lost` picks are stored, and the caller told
 * store_unavailable all the same. Returns how many were.
 */
function commitLosing(
  store: MemoryProgressStore,
  lost: (input: AppendInput) => boolean,
  times: number,
): () => number {
  const append = store.append.bind(store);
  let count = 0;
  store.append = async (taskId, input, fence) => {
    const result = await append(taskId, input, fence);
    if (lost(input) && count < times) {
      count += 1;
      throw new ProgressError(ErrorCode.StoreUnavailable, 'connection lost during COMMIT');
    }
    return result;
  };
  return () => count;
}

describe('runBatch', () => {
  it('reports every item and completes with the counts', async () => {
    const { server, store } = setup();
    const task = await server.tasks.create({ owner: 'alice', kind: 'batch_taint' });
    const result = await task.runBatch(['node-1', 'node-2', 'node-3'], (node) => ({ tainted: node }));
    expect(result).toEqual({
      taskId: task.id,
      status: 'completed',
      succeeded: 3,
      failed: 0,
      skipped: 0,
      endedElsewhere: false,
    });
    const events = await checkedLog(store, task.id);
    expect(events[0]).toMatchObject({ type: 'progress', progress: { total: 3, done: 0 } });
    expect(
      events.filter((event): event is ItemEvent => event.type === 'item').map((event) => event.item),
    ).toEqual([
      { key: 'node-1', ok: true, error: null, detail: { tainted: 'node-1' } },
      { key: 'node-2', ok: true, error: null, detail: { tainted: 'node-2' } },
      { key: 'node-3', ok: true, error: null, detail: { tainted: 'node-3' } },
    ]);
    expect(events.at(-1)).toMatchObject({ type: 'completed', result: { succeeded: 3, failed: 0 } });
    expect(task.finished).toBe(true);
    expect(server.tasks.running).toEqual([]);
  });

  it('counts a throwing worker as a failed item and still completes', async () => {
    const { server, store } = setup();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const result = await task.runBatch([1, 2, 3, 4], (n) => {
      if (n % 2 === 0) throw new Error(`node ${n} refused`);
    });
    expect(result).toMatchObject({ status: 'completed', succeeded: 2, failed: 2 });
    const events = await checkedLog(store, task.id);
    const failed = events.filter((event): event is ItemEvent => event.type === 'item' && !event.item.ok);
    expect(failed.map((event) => [event.item.key, event.item.error])).toEqual([
      ['2', 'node 2 refused'],
      ['4', 'node 4 refused'],
    ]);
    expect(events.at(-1)?.progress).toMatchObject({ done: 4, succeeded: 2, failed: 2 });
  });

  it('drops a returned value that throws when read, and still counts the item as succeeded', async () => {
    const { server, store } = setup();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const result = await task.runBatch(['a', 'b'], (key) =>
      key === 'a'
        ? {
            get lazy(): never {
              throw new Error('not loaded');
            },
          }
        : { ok: key },
    );
    expect(result).toMatchObject({ status: 'completed', succeeded: 2, failed: 0, skipped: 0 });
    const events = await checkedLog(store, task.id);
    expect(
      events.filter((event): event is ItemEvent => event.type === 'item').map((event) => event.item),
    ).toEqual([
      { key: 'a', ok: true, error: null, detail: null },
      { key: 'b', ok: true, error: null, detail: { ok: 'b' } },
    ]);
  });

  it('a key function returning a number (numeric ids from JavaScript) keys items as the default would', async () => {
    const { server, store } = setup();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const nodes = [{ id: 7 }, { id: 8 }];
    const result = await task.runBatch(nodes, () => {}, {
      key: (node) => node.id as unknown as string,
    });
    expect(result).toMatchObject({ status: 'completed', succeeded: 2, failed: 0, skipped: 0 });
    const events = await checkedLog(store, task.id);
    expect(
      events.filter((event): event is ItemEvent => event.type === 'item').map((event) => event.item.key),
    ).toEqual(['7', '8']);
  });

  it('a key function that throws for one item (a malformed record) keys it item-<n>, and the batch runs on', async () => {
    const { server, store } = setup();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const nodes = [{ name: 'a' }, null, { name: 'c' }];
    const ran: unknown[] = [];
    const result = await task.runBatch(nodes, (node) => void ran.push(node), {
      key: (node) => (node as { name: string }).name,
    });
    // It failed the whole batch (`batch_error`): the item and every one after it skipped, for a label.
    expect(result).toMatchObject({ status: 'completed', succeeded: 3, failed: 0, skipped: 0 });
    expect(ran).toEqual(nodes);
    const events = await checkedLog(store, task.id);
    expect(
      events.filter((event): event is ItemEvent => event.type === 'item').map((event) => event.item.key),
    ).toEqual(['a', 'item-2', 'c']);
  });

  it('an async key function keys items as the default would, and its rejection never goes unhandled', async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    try {
      const { server, store } = setup();
      const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
      const result = await task.runBatch([{ id: 7 }, { id: 8 }], () => {}, {
        key: (async () => {
          throw new Error('key lookup failed');
        }) as never,
      });
      expect(result).toMatchObject({ status: 'completed', succeeded: 2, failed: 0, skipped: 0 });
      const events = await log(store, task.id);
      expect(
        events.filter((event): event is ItemEvent => event.type === 'item').map((event) => event.item.key),
      ).toEqual(['item-1', 'item-2']);
      await new Promise((resolve) => setImmediate(resolve));
      await new Promise((resolve) => setImmediate(resolve));
      expect(unhandled).toEqual([]);
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  });

  it('ends as failed when every item failed', async () => {
    const { server, store } = setup();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const result = await task.runBatch(['a', 'b'], async () => {
      throw 'nope';
    });
    expect(result).toMatchObject({ status: 'failed', succeeded: 0, failed: 2 });
    const events = await checkedLog(store, task.id);
    expect(events.at(-1)).toMatchObject({ type: 'failed', error: { code: 'all_items_failed' } });
  });

  it('completes an empty batch', async () => {
    const { server, store } = setup();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    expect(await task.runBatch([], () => {})).toMatchObject({ status: 'completed' });
    checkLog(await log(store, task.id));
  });

  it('stops on its signal and ends cancelled, without counting interrupted items', async () => {
    const { server, store } = setup();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const controller = new AbortController();
    const started: number[] = [];
    const result = await task.runBatch(
      [0, 1, 2, 3, 4, 5],
      async (n, { signal }) => {
        started.push(n);
        if (n === 2) {
          controller.abort(new Error('user pressed stop'));
          // A well-behaved worker gives up when its signal aborts.
          if (signal.aborted) throw signal.reason;
        }
      },
      { signal: controller.signal },
    );
    expect(started).toEqual([0, 1, 2]);
    expect(result).toMatchObject({ status: 'cancelled', succeeded: 2, failed: 0, skipped: 4 });
    const events = await checkedLog(store, task.id);
    expect(events.at(-1)).toMatchObject({ type: 'cancelled', reason: 'user pressed stop' });
  });

  it('stops when the task is cancelled from elsewhere and appends nothing after it', async () => {
    const { server, store } = setup();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const held = gate();
    const batch = task.runBatch([1, 2, 3], async (n, { signal }) => {
      if (n === 2) {
        // Cancelled by a direct append to the store (another replica, the HTTP API).
        await store.append(task.id, { type: 'cancelled', reason: 'from the UI' });
        held.open();
        if (signal.aborted) throw signal.reason;
      }
    });
    await held.promise;
    const result = await batch;
    expect(result).toMatchObject({ status: 'cancelled', succeeded: 1, endedElsewhere: true, skipped: 2 });
    const events = await checkedLog(store, task.id);
    expect(events.at(-1)).toMatchObject({ type: 'cancelled', reason: 'from the UI' });
    await expect(task.progress({ done: 9 })).rejects.toMatchObject({ code: ErrorCode.TaskFinished });
  });

  it('stops when cancel() is called on the task', async () => {
    const { server, store } = setup();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const result = await task.runBatch([1, 2, 3, 4], async (n) => {
      if (n === 2) await server.tasks.cancel(task.id, 'changed my mind');
    });
    expect(result).toMatchObject({ status: 'cancelled', endedElsewhere: true });
    // The item whose worker returned after the cancel could not be reported: the task had ended.
    const events = await checkedLog(store, task.id);
    expect(events.filter((event) => event.type === 'item')).toHaveLength(1);
  });

  it('ends interrupted when the server shuts down, waiting for workers that honour their signal', async () => {
    const { server, store } = setup();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const inside = gate();
    const batch = task.runBatch([1, 2, 3], async (n, { signal }) => {
      if (n === 2) {
        inside.open();
        await new Promise((_, reject) => signal.addEventListener('abort', () => reject(signal.reason)));
      }
    });
    await inside.promise;
    await server.close({ timeoutMs: 2000 });
    expect(await batch).toMatchObject({
      status: 'interrupted',
      succeeded: 1,
      skipped: 2,
      endedElsewhere: false,
    });
    const events = await checkedLog(store, task.id);
    expect(events.at(-1)).toMatchObject({ type: 'interrupted', reason: 'server shutting down' });
  });

  it('interrupts the task at the shutdown deadline when a worker ignores its signal', async () => {
    const { server, store } = setup();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const stuck = gate();
    const inside = gate();
    const batch = task.runBatch(['x'], async () => {
      inside.open();
      await stuck.promise;
    });
    await inside.promise;
    await server.close({ timeoutMs: 100 });
    const events = await checkedLog(store, task.id);
    expect(events.at(-1)).toMatchObject({ type: 'interrupted', reason: 'server shutting down' });
    stuck.open();
    // The late worker finds its task over: its item is not appended after the terminal event.
    expect(await batch).toMatchObject({ status: 'interrupted', endedElsewhere: true });
    checkLog(await log(store, task.id));
  });

  it('never runs more workers at once than its concurrency, and uses all of it', async () => {
    const { server, store } = setup();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    let running = 0;
    let peak = 0;
    const result = await task.runBatch(
      Array.from({ length: 12 }, (_, i) => i),
      async () => {
        running += 1;
        peak = Math.max(peak, running);
        await new Promise((resolve) => setTimeout(resolve, 2));
        running -= 1;
      },
      { concurrency: 3 },
    );
    expect(peak).toBe(3);
    expect(result).toMatchObject({ status: 'completed', succeeded: 12 });
    checkLog(await log(store, task.id));
  });

  it('fails the task when reporting an item fails, and still writes a terminal event', async () => {
    const store = new MemoryProgressStore();
    const { server } = setup(store);
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const append = store.append.bind(store);
    let itemAppends = 0;
    store.append = async (taskId, input, fence) => {
      if (input.type === 'item' && ++itemAppends === 2) {
        throw new ProgressError(ErrorCode.Internal, 'disk full');
      }
      return append(taskId, input, fence);
    };
    const result = await task.runBatch(['a', 'b', 'c'], () => {});
    expect(result).toMatchObject({ status: 'failed', succeeded: 1, skipped: 2 });
    const events = await checkedLog(store, task.id);
    expect(events.at(-1)).toMatchObject({
      type: 'failed',
      error: { code: 'batch_error', message: 'disk full' },
    });
  });

  it('carries on through a store outage in the middle of the batch that the lease survives', async () => {
    const { server, store } = setup();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    // A database restart while item b is reported: its first 3 attempts are refused (about 0.7 s, the
    // lease is 15 s), and so is the first read that looks for it in the log.
    const refused = restartRefusing(store, (input) => input.type === 'item' && input.key === 'b', 3);
    let reads = 0;
    const read = store.getTask.bind(store);
    store.getTask = async (taskId) => {
      if (reads++ === 0) throw new ProgressError(ErrorCode.StoreUnavailable, 'database restarting');
      return read(taskId);
    };
    const result = await task.runBatch(['a', 'b', 'c'], () => {});
    expect(refused()).toBe(3);
    // One refused, then one before each of the 3 attempts after the first: none found b.
    expect(reads).toBe(4);
    expect(result).toMatchObject({ status: 'completed', succeeded: 3, failed: 0, skipped: 0 });
    const events = await checkedLog(store, task.id);
    expect(
      events.filter((event) => event.type === 'item').map((event) => (event as ItemEvent).item.key),
    ).toEqual(['a', 'b', 'c']);
    expect(events.at(-1)).toMatchObject({ type: 'completed', result: { succeeded: 3, failed: 0 } });
  });

  it('carries on through a store outage the lease survives when it sets the total, at the start of the batch', async () => {
    const { server, store } = setup();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    // A database restart as the batch starts: its first 2 attempts at setting the total are refused.
    const refused = restartRefusing(store, (input) => input.type === 'progress', 2);
    const result = await task.runBatch(['a', 'b'], () => {});
    expect(refused()).toBe(2);
    expect(result).toMatchObject({ status: 'completed', succeeded: 2, failed: 0, skipped: 0 });
    const events = await checkedLog(store, task.id);
    expect(events.map((event) => event.type)).toEqual(['progress', 'item', 'item', 'completed']);
    expect(events.at(-1)).toMatchObject({ progress: { total: 2, done: 2 } });
  });

  it('does not write an item twice when its append refused store_unavailable had committed all the same', async () => {
    const store = new MemoryProgressStore();
    const { server } = setup(store);
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    // A Postgres COMMIT whose answer was lost: the event is stored, the caller is told store_unavailable.
    const lost = commitLosing(
      store,
      (input) => input.type === 'item' && (input.key === 'b' || input.key === 'c'),
      2,
    );
    const result = await task.runBatch(['a', 'b', 'c', 'd'], () => {}, { concurrency: 2 });
    expect(lost()).toBe(2);
    expect(result).toMatchObject({ status: 'completed', succeeded: 4, skipped: 0 });
    const events = await checkedLog(store, task.id);
    const keys = events
      .filter((event) => event.type === 'item')
      .map((event) => (event as ItemEvent).item.key);
    expect(keys.sort()).toEqual(['a', 'b', 'c', 'd']);
    expect(events.at(-1)).toMatchObject({ type: 'completed', result: { succeeded: 4, failed: 0 } });
  });

  /**
   * Two items of one batch with the same key (duplicates, or keys equal once clipped to 512 characters),
   * reported by concurrent lanes, one append of theirs refused `store_unavailable`. Until 6 December 2026
   * the log was searched for an `item` event of that key and outcome after the seq held before the first
   * attempt, and the other item's event was taken for the refused one's: an item was never written (`done`
   * one short of the batch's own count) — or, with both refused and one committed, both took that one.
   */
  it.each([
    { name: 'a duplicate item', items: ['x', 'x'], refusals: ['not committed'] },
    {
      name: 'keys equal once clipped',
      items: [`${'k'.repeat(600)}1`, `${'k'.repeat(600)}2`],
      refusals: ['not committed'],
    },
    {
      name: 'a duplicate item, the first refusal committed',
      items: ['x', 'x'],
      refusals: ['committed', 'not committed'],
    },
    {
      name: 'a duplicate item, the second refusal committed',
      items: ['x', 'x'],
      refusals: ['not committed', 'committed'],
    },
  ])(
    'neither loses nor doubles an item refused store_unavailable that has $name',
    async ({ items, refusals }) => {
      const store = new MemoryProgressStore();
      const { server } = setup(store);
      const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
      const append = store.append.bind(store);
      // The first item appends are refused as listed: committed (a COMMIT whose answer was lost) or not.
      const plan = [...refusals];
      store.append = async (taskId, input, fence) => {
        if (input.type !== 'item') return append(taskId, input, fence);
        const refusal = plan.shift();
        if (refusal === undefined) return append(taskId, input, fence);
        if (refusal === 'committed') await append(taskId, input, fence);
        throw new ProgressError(ErrorCode.StoreUnavailable, 'connection lost during COMMIT');
      };
      const result = await task.runBatch(items, () => {}, { concurrency: 2 });
      expect(plan).toEqual([]);
      expect(result).toMatchObject({ status: 'completed', succeeded: 2, failed: 0, skipped: 0 });
      const events = await checkedLog(store, task.id);
      expect(events.filter((event) => event.type === 'item')).toHaveLength(2);
      expect(events.at(-1)).toMatchObject({
        type: 'completed',
        result: { succeeded: 2, failed: 0 },
        progress: { done: 2, succeeded: 2 },
      });
    },
  );

  it('fails the task when an outage outlasts the lease TTL while an item is reported', async () => {
    const { store, server } = leasedFor(250);
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const append = store.append.bind(store);
    let refused = 0;
    store.append = async (taskId, input, fence) => {
      if (input.type === 'item' && input.key === 'b') {
        refused += 1;
        throw new ProgressError(ErrorCode.StoreUnavailable, 'database down');
      }
      return append(taskId, input, fence);
    };
    const result = await task.runBatch(['a', 'b', 'c'], () => {});
    // Pauses of 100 and 200 ms: the third attempt comes after the 250 ms budget, and is the last.
    expect(refused).toBe(3);
    expect(result).toMatchObject({ status: 'failed', succeeded: 1, skipped: 2 });
    const events = await checkedLog(store, task.id);
    expect(events.at(-1)).toMatchObject({
      type: 'failed',
      error: { code: 'batch_error', message: 'database down' },
    });
  });

  it('keeps an item whose worker returned something the store refuses as detail', async () => {
    const { server, store } = setup();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const result = await task.runBatch(['a'], () => ({ huge: 'x'.repeat(20_000) }));
    expect(result).toMatchObject({ status: 'completed', succeeded: 1 });
    const events = await log(store, task.id);
    expect(events.find((event) => event.type === 'item')).toMatchObject({
      item: { key: 'a', ok: true, detail: null },
    });
  });

  it('retries its terminal event through a store outage the lease survives, so a successful batch still completes', async () => {
    const { server, store } = setup();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    // A database restart at the end of the batch: the first 4 attempts at its terminal event (about 0.7 s)
    // are refused; the lease (15 s by default) outlives it.
    const refused = restartRefusing(store, isTerminalInput, 4);
    const result = await task.runBatch(['a', 'b'], () => {});
    expect(refused()).toBe(4);
    expect(result).toMatchObject({ status: 'completed', succeeded: 2, endedElsewhere: false });
    const events = await checkedLog(store, task.id);
    expect(events.at(-1)).toMatchObject({ type: 'completed', result: { succeeded: 2, failed: 0 } });
  });

  it('takes its own terminal event, committed by an attempt whose answer was lost, as its own: not ended elsewhere', async () => {
    const store = new MemoryProgressStore();
    const { server } = setup(store);
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    // A Postgres COMMIT whose answer was lost: the terminal is stored, the caller is told store_unavailable;
    // the retry is refused task_finished.
    const lost = commitLosing(store, isTerminalInput, 1);
    const result = await task.runBatch(['a', 'b'], () => {});
    expect(lost()).toBe(1);
    expect(result).toMatchObject({ status: 'completed', succeeded: 2, endedElsewhere: false });
    const events = await checkedLog(store, task.id);
    expect(events.at(-1)).toMatchObject({ type: 'completed', result: { succeeded: 2, failed: 0 } });
  });

  it('gives its terminal event up after the lease TTL: the batch rejects, the lease lapses and a reaper interrupts the task', async () => {
    const { clock, store, server } = leasedFor(300);
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const append = store.append.bind(store);
    let refused = 0;
    store.append = async (taskId, input, fence) => {
      if (isTerminalInput(input)) {
        refused += 1;
        throw new ProgressError(ErrorCode.StoreUnavailable, 'database down');
      }
      return append(taskId, input, fence);
    };
    await expect(task.runBatch(['a'], () => {})).rejects.toMatchObject({ code: ErrorCode.StoreUnavailable });
    // 4 attempts (0.7 s) outlast a 300 ms budget: no more than that.
    expect(refused).toBe(4);
    expect(server.leases.owned.has(task.id)).toBe(false);
    store.append = append;
    clock.advance(300);
    const reaped = await server.leases.reap();
    expect(reaped.map((each) => each.event)).toEqual([
      expect.objectContaining({ taskId: task.id, type: 'interrupted' }),
    ]);
    checkLog(await log(store, task.id));
    expect(task.finished).toBe(true);
  });

  it('stops retrying its terminal event when the server shuts down: no pause of it outlives close()', async () => {
    const store = new MemoryProgressStore();
    const server = new ProgressServer({ store, authenticate: () => null });
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const append = store.append.bind(store);
    let refused = 0;
    const fifth = gate();
    store.append = async (taskId, input, fence) => {
      if (isTerminalInput(input)) {
        if (++refused === 5) fifth.open();
        throw new ProgressError(ErrorCode.StoreUnavailable, 'database down');
      }
      return append(taskId, input, fence);
    };
    let settled = false;
    const batch = task
      .runBatch(['a'], () => {})
      .finally(() => {
        settled = true;
      });
    // Refused 5 times (1.5 s): the batch now pauses 1 s before its next attempt; close() comes during it.
    await fifth.promise;
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(settled).toBe(false);
    await server.close({ timeoutMs: 400 });
    expect(settled).toBe(true);
    await expect(batch).rejects.toMatchObject({ code: ErrorCode.StoreUnavailable });
    // Its 6th attempt, then the shutdown's own `interrupted`.
    expect(refused).toBe(7);
  });

  it('rejects bad arguments and a second batch on the same task', async () => {
    const { server } = setup();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    await expect(task.runBatch([1], () => {}, { concurrency: 0 })).rejects.toMatchObject({
      code: 'invalid_input',
    });
    const other = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const held = gate();
    const first = other.runBatch([1], () => held.promise);
    await expect(other.runBatch([1], () => {})).rejects.toMatchObject({ code: 'invalid_input' });
    held.open();
    await first;
  });

  it('refuses an unknown option, naming the nearest, and starts no batch', async () => {
    const { server } = setup();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    // A typo of `concurrency` ran the batch one item at a time without a word.
    const typo = { concurency: 8 } as RunBatchOptions<number>;
    await expect(task.runBatch([1], () => {}, typo)).rejects.toMatchObject({
      code: 'invalid_input',
      message: 'runBatch: unknown option "concurency" (did you mean `concurrency`?)',
    });
    await expect(task.runBatch([1], () => {}, { concurrency: 1.5 })).rejects.toMatchObject({
      message: 'runBatch: concurrency must be an integer from 1 to 1000, got 1.5',
    });
    // Refused before it took the task's one batch.
    await expect(task.runBatch([1], () => {})).resolves.toMatchObject({ succeeded: 1 });
  });
});

/**
 * Texts from workers and callers (item keys, error messages, cancel reasons) are made storable before they
 * reach the store: clipped without cutting a surrogate pair, U+0000 and lone surrogates replaced. Before,
 * every store refused such a text, which failed a whole batch (found by a review, 3 December 2026).
 */
describe('storable texts from workers and callers', () => {
  // 510 ASCII chars, then an emoji (2 UTF-16 code units) at 510..511: clip(…, 512) keeps 511 units, the lone high surrogate.
  const longKey = `${'k'.repeat(510)}😀${'x'.repeat(20)}`;

  it('runBatch clips a long item key without splitting a surrogate pair (the item is reported)', async () => {
    const { server, store } = setup();
    const task = await server.tasks.create({ owner: 'alice', kind: 'batch' });
    const result = await task.runBatch([longKey], () => undefined);
    const events = await store.readEvents(task.id, 0);
    expect(result.status).toBe('completed');
    expect(events.map((event) => event.type)).toEqual(['progress', 'item', 'completed']);
  });

  it('runBatch clips a long worker error message without splitting a surrogate pair', async () => {
    const { server, store } = setup();
    const task = await server.tasks.create({ owner: 'alice', kind: 'batch' });
    const message = `${'e'.repeat(4094)}😀 and more`;
    const result = await task.runBatch(['a'], () => {
      throw new Error(message);
    });
    const events = await store.readEvents(task.id, 0);
    expect(events.map((event) => event.type)).toEqual(['progress', 'item', 'failed']);
    expect(result.status).toBe('failed');
    expect(events.at(-1)).toMatchObject({ error: { code: 'all_items_failed' } });
  });

  it('runBatch reports an item whose worker error message holds a NUL (e.g. from binary output)', async () => {
    const { server, store } = setup();
    const task = await server.tasks.create({ owner: 'alice', kind: 'batch' });
    const result = await task.runBatch(['a', 'b'], (item) => {
      if (item === 'a') throw new Error('exit 1: \u0000\u0001 garbage');
      return undefined;
    });
    const events = await store.readEvents(task.id, 0);
    expect(events.map((event) => event.type)).toEqual(['progress', 'item', 'item', 'completed']);
    expect(result).toMatchObject({ status: 'completed', succeeded: 1, failed: 1 });
  });

  it('tasks.cancel clips a long reason without splitting a surrogate pair', async () => {
    const { server } = setup();
    const task = await server.tasks.create({ owner: 'alice', kind: 'batch' });
    await expect(server.tasks.cancel(task.id, longKey)).resolves.toMatchObject({ type: 'cancelled' });
  });
});
