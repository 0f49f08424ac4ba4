import type { AppendInput } from '@finishline/core';
import { ErrorCode, MemoryProgressStore, ProgressError } from '@finishline/core';
import { afterEach, describe, expect, it } from 'vitest';
import { ProgressServer } from '../progress-server.js';
import { gate } from '../testing/harness.js';

/**
 * How an owned task's handle learns that the task ended: from its own terminal append's result, or from
 * the change feed when the terminal came from elsewhere, even while one of its own appends is in flight.
 */

const servers: ProgressServer[] = [];

afterEach(async () => {
  await Promise.all(servers.splice(0).map((server) => server.close({ timeoutMs: 500 })));
});

/** A server on a memory store whose task reads are counted and whose appends can be held after commit. */
function setup() {
  const store = new MemoryProgressStore();
  const counts = { getTask: 0 };
  const getTask = store.getTask.bind(store);
  store.getTask = (taskId) => {
    counts.getTask += 1;
    return getTask(taskId);
  };
  const commit = store.append.bind(store);
  let hold: Promise<void> | undefined;
  store.append = async (taskId: string, input: AppendInput) => {
    const result = await commit(taskId, input);
    // Committed and published to the feed, but the caller does not have the result yet.
    if (hold !== undefined) await hold;
    return result;
  };
  const server = new ProgressServer({ store, authenticate: () => null });
  servers.push(server);
  return {
    server,
    counts,
    /** Appends straight to the store, as another replica would, never held. */
    appendElsewhere: commit,
    holdAppends: (until: Promise<void>) => {
      hold = until;
    },
  };
}

describe('an owned task ending', () => {
  it('by its own terminal append: the handle ends from the result, without reading the task again', async () => {
    const { server, counts } = setup();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.item({ key: 'a', ok: true });
    await task.complete();
    expect(task.status).toBe('completed');
    expect(task.finished).toBe(true);
    expect(task.signal.aborted).toBe(true);
    expect(counts.getTask).toBe(0);
  });

  it('elsewhere while none of its appends is in flight: the handle ends and reads the row', async () => {
    const { server, counts, appendElsewhere } = setup();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    await appendElsewhere(task.id, { type: 'cancelled', reason: 'from the UI' });
    await expect.poll(() => task.status).toBe('cancelled');
    expect(task.signal.aborted).toBe(true);
    expect(counts.getTask).toBe(1);
  });

  it('elsewhere after its own append committed, before that append returned: the handle still ends', async () => {
    const { server, appendElsewhere, holdAppends } = setup();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const held = gate();
    holdAppends(held.promise);
    const own = task.progress({ done: 1 });
    // The own append committed (seq 1); the cancel commits after it and the feed reports it now.
    await expect.poll(async () => (await server.tasks.get(task.id))?.seq).toBe(1);
    await appendElsewhere(task.id, { type: 'cancelled', reason: 'from the UI' });
    // The case under test: the feed's terminal waits for the append in flight (it may be this server's own).
    expect(task.finished).toBe(false);
    held.open();
    expect((await own).seq).toBe(1);
    await expect.poll(() => task.status).toBe('cancelled');
    expect(task.signal.aborted).toBe(true);
  });
});

describe("an owned task's signal", () => {
  it('read before the end: aborts once, with task_finished, and its listeners run', async () => {
    const { server } = setup();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const signal = task.signal;
    const reasons: unknown[] = [];
    signal.addEventListener('abort', () => reasons.push(signal.reason));
    expect(signal.aborted).toBe(false);
    await task.complete();
    expect(reasons).toHaveLength(1);
    expect(reasons[0]).toMatchObject({ code: 'task_finished', taskId: task.id });
    expect(task.signal).toBe(signal);
  });

  it('first read after the end (made then): already aborted, with task_finished', async () => {
    const { server } = setup();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.fail({ code: 'E', message: 'boom' });
    expect(task.signal.aborted).toBe(true);
    expect(task.signal.reason).toMatchObject({ code: 'task_finished', taskId: task.id });
  });

  it('read after the server began shutting down: aborted with closed', async () => {
    const { server } = setup();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const closing = server.close({ timeoutMs: 500 });
    expect(task.signal.aborted).toBe(true);
    expect(task.signal.reason).toMatchObject({ code: 'closed' });
    await closing;
  });
});

/** A server on a memory store whose appends of `type` wait for `until` before they commit (a slow round trip). */
function slowAppends(type: AppendInput['type'], until: Promise<void>) {
  const store = new MemoryProgressStore();
  const commit = store.append.bind(store);
  store.append = async (taskId, input, fence) => {
    if (input.type === type) await until;
    return commit(taskId, input, fence);
  };
  const server = new ProgressServer({ store, authenticate: () => null });
  servers.push(server);
  return { store, server };
}

describe('close() and a task driven by hand', () => {
  it("waits for its complete() in flight: the task ends completed, not interrupted by the shutdown's own append", async () => {
    const sent = gate();
    const { store, server } = slowAppends('completed', sent.promise);
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const completing = task.complete({ result: 1 });
    const closing = server.close({ timeoutMs: 2000 });
    setTimeout(() => sent.open(), 50);
    // The interrupt, sent beside it, committed first: complete() was refused task_finished after close().
    await expect(completing).resolves.toMatchObject({ type: 'completed' });
    await closing;
    expect(await store.getTask(task.id)).toMatchObject({ status: 'completed', result: 1 });
    expect(task.status).toBe('completed');
  });

  it('returns only once its item in flight settled, then interrupts it', async () => {
    const sent = gate();
    const { store, server } = slowAppends('item', sent.promise);
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const item = task.item({ key: 'node-1', ok: true });
    let closed = false;
    const closing = server.close({ timeoutMs: 2000 }).then(() => {
      closed = true;
    });
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(closed).toBe(false);
    sent.open();
    await expect(item).resolves.toMatchObject({ type: 'item', seq: 1 });
    await closing;
    expect(await store.getTask(task.id)).toMatchObject({ status: 'interrupted', done: 1, seq: 2 });
  });

  it('gives up on an append that never settles at three quarters of the timeout, and still interrupts the task', async () => {
    const { store, server } = slowAppends('item', new Promise(() => {}));
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    void task.item({ key: 'node-1', ok: true });
    const started = Date.now();
    await server.close({ timeoutMs: 400 });
    expect(Date.now() - started).toBeLessThan(1000);
    expect(await store.getTask(task.id)).toMatchObject({ status: 'interrupted' });
  });
});

describe('a handle after close()', () => {
  it('its interrupt at shutdown answered past the deadline: the handle ends with it, and says so', async () => {
    const { server, holdAppends } = setup();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const answer = gate();
    holdAppends(answer.promise);
    // The interrupt commits at once; its answer comes after close() stopped waiting and forgot the task.
    await server.close({ timeoutMs: 50 });
    answer.open();
    await new Promise((resolve) => setTimeout(resolve, 10));
    expect(task.finished).toBe(true);
    expect(task.status).toBe('interrupted');
    await expect(task.fail('late')).rejects.toMatchObject({ code: 'task_finished' });
  });

  it('its interrupt at shutdown refused (an outage), the task ended elsewhere since: a late append ends the handle', async () => {
    const store = new MemoryProgressStore();
    const append = store.append.bind(store);
    let outage = false;
    store.append = (taskId, input, fence) =>
      outage
        ? Promise.reject(new ProgressError(ErrorCode.StoreUnavailable, 'down'))
        : append(taskId, input, fence);
    const server = new ProgressServer({ store, authenticate: () => null });
    servers.push(server);
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    outage = true;
    await server.close({ timeoutMs: 200 });
    outage = false;
    // A reaper elsewhere ended it once its lease expired.
    await append(task.id, { type: 'interrupted', reason: 'lease expired' });
    expect(task.finished).toBe(false);
    await expect(task.item({ key: 'late', ok: true })).rejects.toMatchObject({ code: 'task_finished' });
    expect(task.finished).toBe(true);
    await new Promise((resolve) => setTimeout(resolve, 10));
    expect(task.status).toBe('interrupted');
    await expect(task.fail('late')).rejects.toMatchObject({
      code: 'task_finished',
      message: expect.stringContaining('(interrupted)'),
    });
  });
});

describe('tasks.create', () => {
  it('refuses an unknown option, naming the nearest, and creates nothing', async () => {
    const { server } = setup();
    // `taskId` was ignored: the task got a random id, and watchers of `taint-42` were told it did not exist.
    await expect(
      server.tasks.create({ owner: 'alice', kind: 'k', taskId: 'taint-42' } as never),
    ).rejects.toMatchObject({
      code: 'invalid_input',
      message: 'tasks.create: unknown option "taskId" (did you mean `id`?)',
    });
    // No hint rather than a wrong one (until 7 December 2026 `tenant` got "did you mean `total`?").
    await expect(
      server.tasks.create({ owner: 'alice', kind: 'k', tenant: 'a' } as never),
    ).rejects.toMatchObject({
      code: 'invalid_input',
      message: 'tasks.create: unknown option "tenant"',
    });
    const task = await server.tasks.create({ owner: 'alice', kind: 'k', id: 'taint-42' });
    expect(task.id).toBe('taint-42');
  });
});
