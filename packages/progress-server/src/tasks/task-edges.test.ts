import type { Task } from '@finishline/core';
import { ErrorCode, MemoryProgressStore } from '@finishline/core';
import { ManualClock } from '@finishline/core/testing';
import { afterEach, describe, expect, it } from 'vitest';
import { ProgressServer } from '../progress-server.js';

const servers: ProgressServer[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((server) => server.close({ timeoutMs: 300 })));
});
const quiet = { leaseTtlMs: 1000, leaseRenewIntervalMs: 999, reapIntervalMs: 0 };
function replica(store: MemoryProgressStore, serverId: string, extra: object = {}): ProgressServer {
  const server = new ProgressServer({ store, authenticate: () => null, serverId, ...quiet, ...extra });
  servers.push(server);
  return server;
}

/**
 * The task side's edge cases: a batch refused for bad arguments, workers returning or throwing odd values,
 * one hung lease renewal, a create() in flight at shutdown. Each but the non-JSON case was a bug found by a
 * review on 3 December 2026, and its test failed before the fix.
 */
describe('tasks at the edges', () => {
  it('fail() ends the task whatever a catch block hands it (a non-Error, an over-long or unstorable failure)', async () => {
    const store = new MemoryProgressStore();
    const server = replica(store, 'a');
    const thrown: unknown[] = [
      undefined,
      null,
      42,
      { status: 500, message: 'upstream said no' },
      { code: 'E_BIG', message: `${'m'.repeat(10_000)}` },
      { code: 'E\uD800', message: 'lone \uDC00 surrogate' },
    ];
    for (const value of thrown) {
      const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
      // As in `catch (error) { await task.fail(error as Error) }`: the value is whatever was thrown.
      const ended = await Promise.resolve()
        .then(() => task.fail(value as Error))
        .then(
          (event) => event.type,
          (error: unknown) => `rejected: ${String(error)}`,
        );
      expect(ended, String(value)).toBe('failed');
      const row = (await store.getTask(task.id)) as Task;
      expect(row.status).toBe('failed');
      expect(row.error?.message.length).toBeGreaterThan(0);
    }
  });

  it('item(), progress() and complete() reject an update they cannot read (a throwing getter, a Proxy) instead of throwing', async () => {
    const store = new MemoryProgressStore();
    const server = replica(store, 'a');
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const throwing = new Proxy(
      {},
      {
        ownKeys: () => {
          throw new Error('no keys here');
        },
      },
    );
    const getter = Object.defineProperty({}, 'key', {
      enumerable: true,
      get: () => {
        throw new Error('getter threw');
      },
    });
    const calls = [
      () => task.item(getter as never),
      () => task.progress(throwing as never),
      () => task.complete(throwing as never),
    ];
    for (const call of calls) {
      let promise: Promise<unknown> | undefined;
      // Before: the call threw at once, out of a method whose caller chains .catch() on its promise.
      expect(() => {
        promise = call();
      }).not.toThrow();
      await expect(promise).rejects.toMatchObject({ code: ErrorCode.InvalidInput });
    }
    // Nothing was written, and the handle still works.
    await task.item({ key: 'node-1', ok: true });
    expect((await store.getTask(task.id))?.seq).toBe(1);
  });

  it("item(), progress() and complete() clip a tool's texts instead of refusing them, so the handle's own example still ends its task", async () => {
    const store = new MemoryProgressStore();
    const server = replica(store, 'a');
    const nodes = ['node-1', 'node-2'];
    // A kubectl failure as `String(error)` gives it: over 4,096 characters, with binary output (U+0000).
    const failure = new Error(`exit 1: ${'x'.repeat(5000)}\u0000`);
    const task = await server.tasks.create({ owner: 'alice', kind: 'batch_taint', total: nodes.length });
    // The loop of TaskHandle's TSDoc example: its catch block reports whatever the tool threw.
    const run = async () => {
      for (const node of nodes) {
        await task.progress({ current: `${node}\u0000${'c'.repeat(600)}`, message: 'm'.repeat(5000) });
        try {
          if (node === 'node-2') throw failure;
          await task.item({ key: node, ok: true });
        } catch (error) {
          await task.item({ key: `${node}${'k'.repeat(600)}`, ok: false, error: String(error) });
        }
      }
      await task.complete({ message: `done\u0000${'d'.repeat(5000)}` });
    };
    expect(
      await run().then(
        () => 'ended',
        (error: unknown) => `rejected: ${String(error)}`,
      ),
    ).toBe('ended');
    const row = (await store.getTask(task.id)) as Task;
    expect(row).toMatchObject({ status: 'completed', done: 2, succeeded: 1, failed: 1 });
    expect(row.message).toMatch(/^done\uFFFDd+…$/);
    expect(row.message).toHaveLength(4096);
    const item = (await store.readEvents(task.id, 0)).find(
      (event) => event.type === 'item' && !event.item.ok,
    );
    expect(item).toMatchObject({ item: { key: expect.stringMatching(/^node-2k+…$/) } });
    if (item?.type !== 'item') throw new Error('no failed item');
    expect(item.item.key).toHaveLength(512);
    expect(item.item.error).toHaveLength(4096);
    expect(item.progress.current).toMatch(/^node-2\uFFFDc+…$/);
  });

  it('cancel() and interrupt() given a non-string reason end the task, as tasks.cancel() does for a task owned elsewhere', async () => {
    const store = new MemoryProgressStore();
    const server = replica(store, 'a');
    const ending = async (end: () => Promise<{ type: string }>) =>
      Promise.resolve()
        .then(end)
        .then(
          (event) => event.type,
          (error: unknown) => `rejected: ${String(error)}`,
        );
    const owned = await server.tasks.create({ owner: 'alice', kind: 'k' });
    expect(await ending(() => server.tasks.cancel(owned.id, 5 as never))).toBe('cancelled');
    expect((await store.getTask(owned.id))?.status).toBe('cancelled');
    const other = await server.tasks.create({ owner: 'alice', kind: 'k' });
    expect(await ending(() => other.interrupt(undefined as never))).toBe('interrupted');
    expect((await store.getTask(other.id))?.status).toBe('interrupted');
  });

  it('runBatch rejected for bad arguments does not block a corrected runBatch', async () => {
    const server = replica(new MemoryProgressStore(), 'a');
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    await expect(task.runBatch(['x'], () => {}, { concurrency: 0 })).rejects.toMatchObject({
      code: ErrorCode.InvalidInput,
    });
    // Nothing ran: the corrected call should run the batch.
    const result = await task.runBatch(['x'], () => {}, { concurrency: 1 });
    expect(result).toMatchObject({ status: 'completed', succeeded: 1 });
  });

  it('a worker returning non-JSON values keeps its items (detail dropped)', async () => {
    const server = replica(new MemoryProgressStore(), 'a');
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const circular: Record<string, unknown> = {};
    circular.self = circular;
    const values: unknown[] = [10n, circular, new Date(0), new Map(), () => 1, Symbol('s'), NaN];
    const result = await task.runBatch(values, (v) => v);
    expect(result).toMatchObject({ status: 'completed', succeeded: values.length, failed: 0 });
  });

  it('a worker throwing a value without toString counts as a failed item', async () => {
    const server = replica(new MemoryProgressStore(), 'a');
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const result = await task.runBatch([1, 2], (n) => {
      if (n === 1) throw Object.create(null);
    });
    expect(result).toMatchObject({ status: 'completed', succeeded: 1, failed: 1 });
  });

  it('one hung renewal does not stop the renewal of the other tasks', async () => {
    const clock = new ManualClock();
    const store = new MemoryProgressStore({ clock: clock.now });
    const server = replica(store, 'replica-a');
    const stuck = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const alive = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const renew = store.renewLease.bind(store);
    store.renewLease = (taskId, owner, ttl): Promise<Task> =>
      taskId === stuck.id ? new Promise<Task>(() => {}) : renew(taskId, owner, ttl);
    clock.advance(600);
    void server.leases.renewAll(); // hangs on `stuck`
    await new Promise((r) => setTimeout(r, 10));
    clock.advance(600);
    void server.leases.renewAll(); // the next interval, at 1200 ms
    await new Promise((r) => setTimeout(r, 10));
    clock.advance(600);
    void server.leases.renewAll(); // at 1800 ms
    await new Promise((r) => setTimeout(r, 10));
    // `alive` (worker alive, store answering its renewals) was due renewals at 600, 1200 and 1800 ms.
    const reaped = await replica(store, 'replica-b').leases.reap();
    expect(reaped.map((r) => r.event.taskId)).not.toContain(alive.id);
  });

  it('a task whose create() was in flight at close() is not left running', async () => {
    const store = new MemoryProgressStore();
    const create = store.createTask.bind(store);
    let release: () => void = () => {};
    const held = new Promise<void>((r) => {
      release = r;
    });
    store.createTask = async (input) => {
      const task = await create(input);
      await held;
      return task;
    };
    const server = new ProgressServer({ store, authenticate: () => null, serverId: 'a' });
    const creating = server.tasks.create({ owner: 'alice', kind: 'k' });
    await new Promise((r) => setTimeout(r, 5));
    const closing = server.close({ timeoutMs: 200 });
    await new Promise((r) => setTimeout(r, 250));
    release();
    await closing;
    const outcome = await creating.then(
      (handle) => ({ ok: true as const, handle }),
      (error: unknown) => ({ ok: false as const, error }),
    );
    await new Promise((r) => setTimeout(r, 50));
    // create() refused the handle, and the task it made did not stay running with nobody renewing it.
    expect(outcome).toMatchObject({ ok: false, error: { code: 'closed' } });
    const [row] = await store.listTasks({ owner: 'alice' });
    expect(row?.status).toBe('interrupted');
  });
});
