import type { ProgressStore } from '@finishline/core';
import { ErrorCode, LocalChangeFeed, MemoryProgressStore } from '@finishline/core';
import { ManualClock } from '@finishline/core/testing';
import { describe, expect, it } from 'vitest';
import { ProgressServer } from '../progress-server.js';
import { useServerSession } from '../testing/session.js';
import type { TaskHandle } from './task-handle.js';

/**
 * A handle of a run that is gone: its task was reaped while its process was frozen, purged by retention,
 * and created again under the same id (the chaos suite's frozen replica). Its writes must not reach the
 * new run. The frozen replica is deaf (a change feed that never delivers), as a stopped process hears
 * nothing: it learns of the reap only from the store's refusals.
 */

const session = useServerSession();

const TTL = 1000;
const quiet = { leaseTtlMs: TTL, leaseRenewIntervalMs: TTL - 1, reapIntervalMs: 0 };

function replica(store: ProgressStore, serverId: string): ProgressServer {
  const server = new ProgressServer({ store, authenticate: () => null, serverId, ...quiet });
  session.onCleanup(() => server.close({ timeoutMs: 200 }));
  return server;
}

/** `store` for a replica that hears no change (frozen while they were published). */
function deaf(store: MemoryProgressStore): ProgressStore {
  const silent = new LocalChangeFeed();
  return new Proxy(store, {
    get(target, key) {
      if (key === 'changes') return silent;
      const value: unknown = Reflect.get(target, key, target);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
}

/**
 * `job-1` run 1 created by the frozen replica (`frozenId`), reaped by `replica-b` past its lease, purged,
 * and run 2 created by a live replica with id `liveId`, with one item.
 */
async function recreatedUnder(frozenId: string, liveId: string) {
  const clock = new ManualClock();
  const store = new MemoryProgressStore({ clock: clock.now });
  const frozen = replica(deaf(store), frozenId);
  const old = await frozen.tasks.create({ id: 'job-1', owner: 'alice', kind: 'k' });
  await old.item({ key: 'old-1', ok: true });
  clock.advance(TTL);
  const reaper = replica(store, 'replica-b');
  expect((await reaper.leases.reap()).length).toBe(1);
  clock.advance(1);
  expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(1);
  clock.advance(1);
  const live = liveId === 'replica-b' ? reaper : replica(store, liveId);
  const current = await live.tasks.create({ id: 'job-1', owner: 'alice', kind: 'k' });
  await current.item({ key: 'new-1', ok: true });
  const row = await store.getTask('job-1');
  return { clock, store, frozen, old, row };
}

describe('a handle of a purged run', () => {
  it('cannot append to or complete the task created again under its id', async () => {
    const { store, old, row } = await recreatedUnder('replica-a', 'replica-b');
    await expect(old.item({ key: 'old-2', ok: true })).rejects.toMatchObject({
      code: ErrorCode.TaskNotFound,
    });
    // The refusal ended the handle: its terminal is refused without reaching the store, and for the same
    // reason (its run is gone), not `task_finished`, "already ended (running)".
    expect(old.finished).toBe(true);
    await expect(old.complete()).rejects.toMatchObject({ code: ErrorCode.TaskNotFound });
    await expect(old.item({ key: 'old-3', ok: true })).rejects.toMatchObject({
      code: ErrorCode.TaskNotFound,
    });
    expect(await store.getTask('job-1')).toEqual(row);
    expect((await store.readEvents('job-1', 0)).map((event) => event.type)).toEqual(['item']);
    expect(old.task.createdAt).toBeLessThan(row?.createdAt ?? 0);
  });

  it('cannot complete the new run as its first write after waking', async () => {
    const { store, old, row } = await recreatedUnder('replica-a', 'replica-b');
    await expect(old.complete()).rejects.toMatchObject({ code: ErrorCode.TaskNotFound });
    expect(await store.getTask('job-1')).toEqual(row);
    expect(row?.status).toBe('running');
  });

  it('cannot renew the lease of the new run, though the new run is leased by the same server id', async () => {
    // Two processes with one server id (a restarted pod keeps its name): the frozen one wakes.
    const { clock, store, frozen, old, row } = await recreatedUnder('replica-a', 'replica-a');
    clock.advance(TTL - 1);
    await frozen.leases.renewAll();
    expect((await store.getTask('job-1'))?.leaseExpiresAt).toBe(row?.leaseExpiresAt);
    expect(frozen.leases.owned.size).toBe(0);
    expect(old.finished).toBe(true);
    // Told by the renewal's refusal, as its own append would have been.
    await expect(old.complete()).rejects.toMatchObject({ code: ErrorCode.TaskNotFound });
    // Not renewed by the frozen process, run 2's lease expires and is reaped as it should.
    clock.advance(1);
    const reaped = await replica(store, 'replica-c').leases.reap();
    expect(reaped.map((result) => [result.event.taskId, result.task.createdAt])).toEqual([
      ['job-1', row?.createdAt],
    ]);
  });

  it("a batch of the purged run stops at its next item and leaves the new run's log alone", async () => {
    const clock = new ManualClock();
    const store = new MemoryProgressStore({ clock: clock.now });
    const frozen = replica(deaf(store), 'replica-a');
    const old = await frozen.tasks.create({ id: 'job-1', owner: 'alice', kind: 'k' });
    let wake: () => void = () => {};
    const asleep = new Promise<void>((resolve) => {
      wake = resolve;
    });
    const batch = old.runBatch(
      ['x', 'y', 'z'],
      async (item) => {
        if (item === 'y') await asleep;
      },
      { concurrency: 1 },
    );
    await expect.poll(() => old.task.done).toBe(1);
    clock.advance(TTL);
    const live = replica(store, 'replica-b');
    expect((await live.leases.reap()).length).toBe(1);
    expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(1);
    clock.advance(1);
    await live.tasks.create({ id: 'job-1', owner: 'alice', kind: 'k' });
    wake();
    const result = await batch;
    expect(result).toMatchObject({ endedElsewhere: true, succeeded: 1 });
    expect(await store.readEvents('job-1', 0)).toEqual([]);
    expect(await store.getTask('job-1')).toMatchObject({ status: 'running', seq: 0, done: 0 });
  });
});

describe('a terminal change of an older run heard late', () => {
  it('does not end the handle of the run this server created since under the same id', async () => {
    // Run 1 of `job-1` ends (reaped) and is purged; this replica creates run 2 before its feed delivers
    // run 1's terminal change (a notification still in flight when the create committed). That change
    // names the id only: it must not end run 2's handle, stop its lease or abort its signal.
    const clock = new ManualClock();
    const store = new MemoryProgressStore({ clock: clock.now });
    const late = new LocalChangeFeed();
    const live = replica(
      new Proxy(store, {
        get(target, key) {
          if (key === 'changes') return late;
          const value: unknown = Reflect.get(target, key, target);
          return typeof value === 'function' ? value.bind(target) : value;
        },
      }),
      'replica-live',
    );
    const frozen = replica(deaf(store), 'replica-frozen');
    await frozen.tasks.create({ id: 'job-1', owner: 'alice', kind: 'k' });
    clock.advance(TTL);
    const [reaped] = await replica(store, 'replica-b').leases.reap();
    clock.advance(1);
    expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(1);
    clock.advance(1);
    const current = await live.tasks.create({ id: 'job-1', owner: 'alice', kind: 'k' });
    late.publish({ taskId: 'job-1', seq: reaped?.event.seq ?? 1, terminal: true });
    // The handle re-reads the row before deciding; give that read its turn.
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(current.finished).toBe(false);
    expect(current.signal.aborted).toBe(false);
    await current.item({ key: 'new-1', ok: true });
    await current.complete();
    expect((await store.getTask('job-1'))?.status).toBe('completed');
  });

  it('ends the handle when the change is its own run ending elsewhere', async () => {
    const store = new MemoryProgressStore();
    const live = replica(store, 'replica-live');
    const current = await live.tasks.create({ id: 'job-1', owner: 'alice', kind: 'k' });
    await replica(store, 'replica-b').tasks.cancel('job-1', 'stop');
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(current.finished).toBe(true);
    expect(current.signal.aborted).toBe(true);
    expect(current.status).toBe('cancelled');
  });
});

/** Run 2's handle on `live` untouched: running, owned, renewed, and it still ends its task. */
async function expectAliveAndOwned(live: ProgressServer, current: TaskHandle, store: ProgressStore) {
  expect(current.finished).toBe(false);
  expect(current.signal.aborted).toBe(false);
  expect([...live.leases.owned]).toEqual(['job-1']);
  expect(live.tasks.running).toEqual([current]);
  await current.complete();
  expect((await store.getTask('job-1'))?.status).toBe('completed');
}

/**
 * `store` with one method's answer held back until `release()`: the call runs (commits or is refused) at
 * once, its answer reaches the server only then (a reply still on the wire, a connection slow to hand it over).
 */
function heldAnswer(store: ProgressStore, method: 'reapExpiredLeases' | 'append') {
  let release: () => void = () => {};
  const gate = new Promise<void>((resolve) => {
    release = resolve;
  });
  let committed: () => void = () => {};
  const called = new Promise<void>((resolve) => {
    committed = resolve;
  });
  let holding = true;
  const proxy = new Proxy(store, {
    get(target, key) {
      const value: unknown = Reflect.get(target, key, target);
      if (key === method && holding) {
        return async (...args: unknown[]) => {
          holding = false;
          const answer = Promise.resolve(
            (value as (...a: unknown[]) => Promise<unknown>).apply(target, args),
          );
          // Settled (committed or refused) before the gate: only the answer is held.
          await answer.then(committed, committed);
          await gate;
          return answer;
        };
      }
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
  return { store: proxy as ProgressStore, called, release };
}

describe('the late answer of an older run', () => {
  it("a reap's answer arriving after the run was purged and created again here leaves the new run alone", async () => {
    // Replica B reaps run 1 of `job-1` (replica A's, expired); the reap commits but its answer is late.
    // Meanwhile run 1 is purged and B creates run 2. The answer names run 1: it must not end run 2's
    // handle, abort its signal nor stop renewing its lease.
    const clock = new ManualClock();
    const store = new MemoryProgressStore({ clock: clock.now });
    await replica(deaf(store), 'replica-a').tasks.create({ id: 'job-1', owner: 'alice', kind: 'k' });
    clock.advance(TTL);
    const held = heldAnswer(store, 'reapExpiredLeases');
    const live = replica(held.store, 'replica-b');
    const reaping = live.leases.reap();
    await held.called;
    clock.advance(1);
    expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(1);
    clock.advance(1);
    const current = await live.tasks.create({ id: 'job-1', owner: 'alice', kind: 'k' });
    held.release();
    expect((await reaping).map((result) => result.event.type)).toEqual(['interrupted']);
    expect(current.finished).toBe(false);
    expect(current.status).toBe('running');
    expect(current.signal.aborted).toBe(false);
    expect([...live.leases.owned]).toEqual(['job-1']);
    expect(live.tasks.running).toEqual([current]);
    // Still renewed: past run 2's first TTL it is not reaped.
    clock.advance(TTL - 1);
    await live.leases.renewAll();
    clock.advance(2);
    expect(await live.leases.reap()).toEqual([]);
    await current.complete();
    expect((await store.getTask('job-1'))?.status).toBe('completed');
  });

  it("a handle's terminal answered after its run was purged and created again here leaves the new run alone", async () => {
    // Run 1's `complete()` commits, its answer is late; run 1 is purged and this server creates run 2.
    const clock = new ManualClock();
    const store = new MemoryProgressStore({ clock: clock.now });
    const held = heldAnswer(store, 'append');
    const live = replica(held.store, 'replica-b');
    const old = await live.tasks.create({ id: 'job-1', owner: 'alice', kind: 'k' });
    const completing = old.complete();
    await held.called;
    clock.advance(1);
    expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(1);
    clock.advance(1);
    const current = await live.tasks.create({ id: 'job-1', owner: 'alice', kind: 'k' });
    held.release();
    await completing;
    expect(old.status).toBe('completed');
    await expectAliveAndOwned(live, current, store);
  });

  it("a handle's append refused `task_finished` after its run was purged and created again here leaves the new run alone", async () => {
    // Run 1 is cancelled by another replica; this one (deaf: it hears no change) appends an item, refused
    // `task_finished`, the refusal late. Run 1 is purged and this server creates run 2 meanwhile.
    const clock = new ManualClock();
    const store = new MemoryProgressStore({ clock: clock.now });
    const held = heldAnswer(deaf(store), 'append');
    const live = replica(held.store, 'replica-b');
    const old = await live.tasks.create({ id: 'job-1', owner: 'alice', kind: 'k' });
    await replica(store, 'replica-c').tasks.cancel('job-1', 'stop');
    const appending = old.item({ key: 'x', ok: true });
    await held.called;
    clock.advance(1);
    expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(1);
    clock.advance(1);
    const current = await live.tasks.create({ id: 'job-1', owner: 'alice', kind: 'k' });
    held.release();
    await expect(appending).rejects.toMatchObject({ code: ErrorCode.TaskFinished });
    expect(old.finished).toBe(true);
    await expectAliveAndOwned(live, current, store);
  });

  it('a handle of an older run still owned here ends when this server creates the id again', async () => {
    // Run 1 is cancelled elsewhere and this (deaf) replica misses the change; run 1 is purged and this
    // replica creates run 2. Run 1's handle learns it from the create: its signal aborts, though it
    // appends nothing more (a job waiting on it for a long step).
    const clock = new ManualClock();
    const store = new MemoryProgressStore({ clock: clock.now });
    const live = replica(deaf(store), 'replica-b');
    const old = await live.tasks.create({ id: 'job-1', owner: 'alice', kind: 'k' });
    const signal = old.signal;
    await replica(store, 'replica-c').tasks.cancel('job-1', 'stop');
    clock.advance(1);
    expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(1);
    clock.advance(1);
    const current = await live.tasks.create({ id: 'job-1', owner: 'alice', kind: 'k' });
    expect(signal.aborted).toBe(true);
    expect(signal.reason).toMatchObject({ code: ErrorCode.TaskFinished });
    expect(old.finished).toBe(true);
    // Its run is gone, as its next append to the store would have been told.
    await expect(old.item({ key: 'old-1', ok: true })).rejects.toMatchObject({
      code: ErrorCode.TaskNotFound,
    });
    expect(current.finished).toBe(false);
    expect(current.task.seq).toBe(0);
    expect(live.tasks.running).toEqual([current]);
    expect([...live.leases.owned]).toEqual(['job-1']);
  });
});

describe('a reap of a later run of the id', () => {
  it('ends the handle of the earlier run still owned here at once', async () => {
    // Run 1 (this deaf replica's) is cancelled elsewhere, unheard; it is purged, run 2 is created by
    // another replica and reaped here: run 1's handle is gone with it, told by the reap, not at the
    // next renewal.
    const clock = new ManualClock();
    const store = new MemoryProgressStore({ clock: clock.now });
    const here = replica(deaf(store), 'replica-a');
    const old = await here.tasks.create({ id: 'job-1', owner: 'alice', kind: 'k' });
    const other = replica(store, 'replica-b');
    await other.tasks.cancel('job-1', 'stop');
    clock.advance(1);
    expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(1);
    clock.advance(1);
    await other.tasks.create({ id: 'job-1', owner: 'alice', kind: 'k' });
    await other.leases.close();
    clock.advance(TTL);
    expect((await here.leases.reap()).length).toBe(1);
    expect(old.finished).toBe(true);
    expect(old.signal.aborted).toBe(true);
    await expect(old.complete()).rejects.toMatchObject({ code: ErrorCode.TaskNotFound });
    expect(here.leases.owned.size).toBe(0);
    expect(here.tasks.running).toEqual([]);
  });
});
