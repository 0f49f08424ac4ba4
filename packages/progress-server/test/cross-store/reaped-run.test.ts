import type { ProgressStore } from '@finishline/core';
import { ErrorCode } from '@finishline/core';
import { afterEach, describe, expect, it } from 'vitest';
import { ProgressServer } from '../../src/progress-server.js';
import { STORE_FIXTURES } from './stores.js';

/**
 * The server ends a handle on a reap's answer only when the answer names the handle's run (the task's
 * `createdAt`, compared with the row `createTask` returned): on every store, its own task reaped ends its
 * handle, and a reap of an older run answered after that run was purged and the id created again here
 * leaves the new run alone.
 */

const cleanups: Array<() => Promise<void>> = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** `store` with its first `reapExpiredLeases` answer that reaped a task held until `release()` (it commits). */
function heldReap(store: ProgressStore) {
  let release: () => void = () => {};
  const gate = new Promise<void>((resolve) => {
    release = resolve;
  });
  let reaped: () => void = () => {};
  const called = new Promise<void>((resolve) => {
    reaped = resolve;
  });
  let holding = true;
  const proxy = new Proxy(store, {
    get(target, key) {
      const value: unknown = Reflect.get(target, key, target);
      if (key === 'reapExpiredLeases' && holding) {
        return async (...args: unknown[]) => {
          const answer = await (value as (...a: unknown[]) => Promise<unknown[]>).apply(target, args);
          if (answer.length === 0 || !holding) return answer;
          holding = false;
          reaped();
          await gate;
          return answer;
        };
      }
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
  return { store: proxy as ProgressStore, called, release };
}

/** Reaps on `server` until something is reaped (the lease expires on the store's clock, a few ms). */
async function reapOnce(reap: () => Promise<unknown[]>): Promise<number> {
  for (let attempt = 0; attempt < 200; attempt += 1) {
    const reaped = await reap();
    if (reaped.length > 0) return reaped.length;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  return 0;
}

describe.each(STORE_FIXTURES)('reaped runs ($name)', (fixture) => {
  async function serve(store: ProgressStore, serverId: string, leaseTtlMs: number): Promise<ProgressServer> {
    const server = new ProgressServer({
      store,
      authenticate: () => null,
      serverId,
      leaseTtlMs,
      leaseRenewIntervalMs: leaseTtlMs - 1,
      reapIntervalMs: 0,
    });
    cleanups.push(() => server.close({ timeoutMs: 1000 }));
    return server;
  }

  it("a server's own task reaped (it stopped renewing) ends its handle", async () => {
    const { store, release } = await fixture.open();
    cleanups.push(release);
    const server = await serve(store, 'replica-a', 20);
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    await server.leases.close();
    expect(await reapOnce(() => server.leases.reap())).toBe(1);
    expect(task.finished).toBe(true);
    expect(task.status).toBe('interrupted');
    expect(task.signal.reason).toMatchObject({ code: ErrorCode.TaskFinished });
    expect(server.leases.owned.size).toBe(0);
    expect(server.tasks.running).toEqual([]);
  });

  it('a reap answered after its run was purged and the id created again here leaves the new run alone', async () => {
    const { store, release } = await fixture.open();
    cleanups.push(release);
    const dead = await serve(store, 'replica-dead', 20);
    await dead.tasks.create({ id: 'job-1', owner: 'alice', kind: 'k' });
    await dead.leases.close();
    const held = heldReap(store);
    const live = await serve(held.store, 'replica-live', 60_000);
    const reaping = reapOnce(() => live.leases.reap());
    await held.called;
    // Retention purges a task only after the millisecond it was created in.
    let purged = 0;
    for (let attempt = 0; attempt < 100 && purged === 0; attempt += 1) {
      await new Promise((resolve) => setTimeout(resolve, 5));
      purged = await store.purgeFinished({ olderThanMs: 0 });
    }
    expect(purged).toBe(1);
    const current = await live.tasks.create({ id: 'job-1', owner: 'alice', kind: 'k' });
    held.release();
    expect(await reaping).toBe(1);
    expect(current.finished).toBe(false);
    expect(current.signal.aborted).toBe(false);
    expect([...live.leases.owned]).toEqual(['job-1']);
    await current.complete();
    expect((await store.getTask('job-1'))?.status).toBe('completed');
  });
});
