import type { AppendInput, TaskEvent } from '@finishline/core';
import { ErrorCode, isTerminalEvent, MemoryProgressStore, ProgressError } from '@finishline/core';
import { ManualClock } from '@finishline/core/testing';
import { afterEach, describe, expect, it } from 'vitest';
import { ProgressServer } from '../progress-server.js';

/**
 * A handle driven by hand (no `runBatch`) whose appends fail: answered `store_unavailable` after their
 * commit (a Postgres connection dropped between COMMIT and its reply), or refused outright by an outage.
 * The task API retries nothing itself: the caller is told, the log holds what committed, once.
 */

const servers: ProgressServer[] = [];

afterEach(async () => {
  await Promise.all(servers.splice(0).map((server) => server.close({ timeoutMs: 500 })));
});

/** Leases of 1 s; the tests renew and reap by hand, as the keepers' timers would. */
const quiet = { leaseTtlMs: 1000, leaseRenewIntervalMs: 999, reapIntervalMs: 0 };

function replica(store: MemoryProgressStore, serverId: string): ProgressServer {
  const server = new ProgressServer({ store, authenticate: () => null, serverId, ...quiet });
  servers.push(server);
  return server;
}

/**
 * Appends `fails` picks are answered `store_unavailable`: after their commit when `committed` (the answer
 * was lost), else without one (an outage).
 */
function failingAppends(store: MemoryProgressStore) {
  const append = store.append.bind(store);
  let fails: (input: AppendInput) => boolean = () => false;
  let committed = true;
  store.append = async (taskId, input, fence) => {
    if (!fails(input)) return append(taskId, input, fence);
    if (committed) await append(taskId, input, fence);
    throw new ProgressError(ErrorCode.StoreUnavailable, 'connection terminated');
  };
  return {
    loseAnswers: (pick: (input: AppendInput) => boolean) => {
      fails = pick;
      committed = true;
    },
    refuse: (pick: (input: AppendInput) => boolean) => {
      fails = pick;
      committed = false;
    },
    heal: () => {
      fails = () => false;
    },
  };
}

/** A store (on `clock` if given) whose appends can be made to fail, a replica on it, and a task it runs. */
async function failingTask(clock?: ManualClock) {
  const store = new MemoryProgressStore(clock && { clock: clock.now });
  const appends = failingAppends(store);
  const server = replica(store, 'replica-a');
  const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
  return { store, appends, server, task };
}

const types = (events: TaskEvent[]) => events.map((event) => event.type);
const terminal = (input: AppendInput) => input.type !== 'progress' && input.type !== 'item';

describe('a hand-driven append committed, its answer lost', () => {
  it('item(): one event, the caller told store_unavailable, nothing written again; the next item counts on', async () => {
    const { store, appends, task } = await failingTask();
    appends.loseAnswers((input) => input.type === 'item');
    await expect(task.item({ key: 'a', ok: true })).rejects.toMatchObject({
      code: ErrorCode.StoreUnavailable,
    });
    appends.heal();
    expect(task.finished).toBe(false);
    // The store gives the seq: no conflict, no gap. `done` is 2 because both did land; a caller that wrote
    // `a` again (it cannot tell) would count it twice: only runBatch checks the log before writing again.
    await expect(task.item({ key: 'b', ok: true })).resolves.toMatchObject({ seq: 2, progress: { done: 2 } });
    expect(types(await store.readEvents(task.id, 0))).toEqual(['item', 'item']);
  });

  it('complete(): one terminal; the handle learns it from the feed; a fail() after it is refused task_finished', async () => {
    const { store, appends, server, task } = await failingTask();
    appends.loseAnswers(terminal);
    const error = await task.complete().catch((caught: unknown) => caught);
    expect(error).toMatchObject({ code: ErrorCode.StoreUnavailable });
    appends.heal();
    await expect(task.fail(error as Error)).rejects.toMatchObject({ code: ErrorCode.TaskFinished });
    await expect.poll(() => task.status).toBe('completed');
    expect(server.tasks.running).toEqual([]);
    expect(server.leases.owned.size).toBe(0);
    expect(types(await store.readEvents(task.id, 0))).toEqual(['completed']);
  });
});

describe('a hand-driven terminal refused by an outage that the caller does not retry', () => {
  it('complete() then fail() both refused: the lease is no longer renewed, and a reaper interrupts the task', async () => {
    const clock = new ManualClock();
    const { store, appends, server, task } = await failingTask(clock);
    await task.item({ key: 'a', ok: true });
    // The handle's own example: complete() in the try, fail() in the catch, both in the same outage.
    appends.refuse(terminal);
    await expect(task.complete()).rejects.toMatchObject({ code: ErrorCode.StoreUnavailable });
    await expect(task.fail('no')).rejects.toMatchObject({ code: ErrorCode.StoreUnavailable });
    appends.heal();
    // The store is back; the server lives on. Its lease keeper renewed the lease of a task whose worker had
    // given up, for as long as the server ran: watchers saw it `running` at 100 % for good.
    for (let round = 0; round < 3; round++) {
      clock.advance(1000);
      await server.leases.renewAll();
      await replica(store, `replica-${round}`).leases.reap();
    }
    expect(await store.getTask(task.id)).toMatchObject({ status: 'interrupted', seq: 2 });
    await expect.poll(() => task.finished).toBe(true);
    expect(server.tasks.running).toEqual([]);
  });

  it('interrupt() refused (a deadline timer, fire and forget): the lease is no longer renewed, and a reaper interrupts the task', async () => {
    const clock = new ManualClock();
    const { store, appends, server, task } = await failingTask(clock);
    await task.item({ key: 'a', ok: true });
    // The handle's doc: bound slow work with a timer that interrupts the task; the worker has given up.
    appends.refuse(terminal);
    await expect(task.interrupt('deadline')).rejects.toMatchObject({ code: ErrorCode.StoreUnavailable });
    appends.heal();
    // Renewed for as long as the server ran, the task stayed `running` though nobody would end it.
    for (let round = 0; round < 3; round++) {
      clock.advance(1000);
      await server.leases.renewAll();
      await replica(store, `replica-${round}`).leases.reap();
    }
    expect(await store.getTask(task.id)).toMatchObject({ status: 'interrupted', seq: 2 });
    await expect.poll(() => task.finished).toBe(true);
    expect(server.tasks.running).toEqual([]);
  });

  it('a complete() retried within the lease still completes the task', async () => {
    const clock = new ManualClock();
    const { appends, task } = await failingTask(clock);
    appends.refuse(terminal);
    await expect(task.complete()).rejects.toMatchObject({ code: ErrorCode.StoreUnavailable });
    appends.heal();
    clock.advance(500);
    await expect(task.complete()).resolves.toMatchObject({ type: 'completed', seq: 1 });
    expect(task.status).toBe('completed');
  });
});

describe('two endings, and reports after the end', () => {
  it('complete() racing fail(): one terminal; the later one is refused task_finished and the handle agrees with the log', async () => {
    const store = new MemoryProgressStore();
    const server = replica(store, 'replica-a');
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const [completed, failed] = await Promise.allSettled([task.complete(), task.fail('boom')]);
    expect(completed.status).toBe('fulfilled');
    expect(failed).toMatchObject({ status: 'rejected', reason: { code: ErrorCode.TaskFinished } });
    const log = await store.readEvents(task.id, 0);
    expect(log.filter(isTerminalEvent)).toHaveLength(1);
    expect(task.status).toBe('completed');
    await expect(task.item({ key: 'late', ok: true })).rejects.toMatchObject({
      code: ErrorCode.TaskFinished,
    });
    expect(await store.readEvents(task.id, 0)).toEqual(log);
  });

  it("a worker reaped by another replica (its lease expired): its late reports are refused task_finished and leave the reaper's end", async () => {
    const clock = new ManualClock();
    const store = new MemoryProgressStore({ clock: clock.now });
    const frozen = replica(store, 'replica-a');
    const reaper = replica(store, 'replica-b');
    const task = await frozen.tasks.create({ owner: 'alice', kind: 'k' });
    await task.item({ key: 'x', ok: true });
    clock.advance(1000);
    expect(await reaper.leases.reap()).toHaveLength(1);
    await expect(task.item({ key: 'y', ok: true })).rejects.toMatchObject({ code: ErrorCode.TaskFinished });
    await expect(task.complete()).rejects.toMatchObject({ code: ErrorCode.TaskFinished });
    expect(task.status).toBe('interrupted');
    const log = await store.readEvents(task.id, 0);
    expect(types(log)).toEqual(['item', 'interrupted']);
    expect(log[1]).toMatchObject({ reason: 'lease of worker replica-a expired' });
    expect(await store.getTask(task.id)).toMatchObject({
      status: 'interrupted',
      error: { code: 'interrupted', message: 'lease of worker replica-a expired' },
    });
  });
});
