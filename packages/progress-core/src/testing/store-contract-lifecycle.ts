import { describe, expect, it } from 'vitest';
import { ErrorCode } from '../codes.js';
import { ID_PATTERN, LIMITS } from '../limits.js';
import type { JsonValue } from '../model.js';
import type { ContractContext } from './store-contract-support.js';
import { eventually, expectRejection, mustGet, taskInput } from './store-contract-support.js';

/**
 * Store contract: returned objects are copies, inputs are not kept, `close` ends every method.
 *
 * @module
 */

/** Scribbles over every field of a returned object, recursively. */
function scribble(value: unknown): void {
  if (Array.isArray(value)) {
    value.push('scribbled');
    for (const entry of value) scribble(entry);
    return;
  }
  if (typeof value !== 'object' || value === null) return;
  const record = value as Record<string, unknown>;
  for (const [key, entry] of Object.entries(record)) {
    if (typeof entry === 'object' && entry !== null) scribble(entry);
    else record[key] = typeof entry === 'number' ? -999 : 'scribbled';
  }
  record.scribbled = true;
}

/** Returned objects are copies; the store keeps no reference to inputs; close. */
export function describeLifecycleContract(ctx: ContractContext): void {
  describe('copies', () => {
    it('mutating returned tasks and events does not change the store', async () => {
      const { store } = ctx;
      scribble(
        await store.createTask(taskInput({ id: 'task-1', lease: { owner: 'worker-1', ttlMs: 1000 } })),
      );
      scribble(
        await store.append('task-1', { type: 'item', key: 'node-1', ok: true, detail: { tags: ['a'] } }),
      );
      scribble(await store.renewLease('task-1', 'worker-1', 1000));
      await store.createTask(taskInput({ id: 'task-2', lease: { owner: 'worker-1', ttlMs: 1000 } }));
      const snapshot = {
        task: await mustGet(store, 'task-1'),
        events: await store.readEvents('task-1', 0),
      };
      const expected = structuredClone(snapshot);
      scribble(snapshot);
      scribble(await store.getTask('task-1'));
      scribble(await store.listTasks({ owner: taskInput().owner }));
      scribble(await store.readEvents('task-1', 0));
      const completed = await store.append('task-1', { type: 'completed', result: { nodes: ['node-1'] } });
      const completedCopy = structuredClone(completed);
      scribble(completed);
      ctx.clock.advance(1000);
      const reaped = await store.reapExpiredLeases();
      const reapedCopy = structuredClone(reaped);
      scribble(reaped);
      expect(await store.getTask('task-1'), 'task-1 after scribbling over returned objects').toEqual(
        completedCopy.task,
      );
      expect(await store.readEvents('task-1', 0), 'events of task-1 after scribbling').toEqual([
        ...expected.events,
        completedCopy.event,
      ]);
      expect(await store.getTask('task-2'), 'task-2 after scribbling over the reap result').toEqual(
        reapedCopy[0]?.task,
      );
    });

    it('keeps no reference to the inputs of createTask and append', async () => {
      const lease = { owner: 'worker-1', ttlMs: 1000 };
      const input = taskInput({ id: 'task-1', lease });
      const created = structuredClone(await ctx.store.createTask(input));
      lease.owner = 'scribbled';
      input.kind = 'scribbled';
      const detail: JsonValue = { tags: ['a'], nested: { n: 1 } };
      const itemInput = { type: 'item' as const, key: 'node-1', ok: true, detail };
      const item = structuredClone(await ctx.store.append('task-1', itemInput));
      scribble(detail);
      itemInput.key = 'scribbled';
      const result: JsonValue = { nodes: ['node-1'] };
      const done = structuredClone(await ctx.store.append('task-1', { type: 'completed', result }));
      scribble(result);
      expect(await ctx.store.readEvents('task-1', 0), 'events after mutating the inputs').toEqual([
        item.event,
        done.event,
      ]);
      expect(await ctx.store.getTask('task-1'), 'task after mutating the inputs').toMatchObject({
        kind: created.kind,
        result: { nodes: ['node-1'] },
      });
    });

    it('keeps no reference to an append input once append returned, before its promise settles', async () => {
      await ctx.store.createTask(taskInput({ id: 'task-1' }));
      // One object reused for every call, changed right after each: a store that commits later (group
      // commit) must not write, nor return, what the caller made of it after the call.
      const detail: { node: JsonValue } = { node: 'node-1' };
      const first = ctx.store.append('task-1', { type: 'item', key: 'node-1', ok: true, detail });
      detail.node = 'node-2';
      const second = ctx.store.append('task-1', { type: 'item', key: 'node-2', ok: true, detail });
      detail.node = ['scribbled'];
      const result: { nodes: JsonValue[] } = { nodes: ['node-1', 'node-2'] };
      const done = ctx.store.append('task-1', { type: 'completed', result });
      result.nodes.push('scribbled');
      const appended = await Promise.all([first, second, done]);
      expect(
        appended.map(({ event }) => (event.type === 'item' ? event.item.detail : event)),
        'details returned',
      ).toEqual([{ node: 'node-1' }, { node: 'node-2' }, expect.objectContaining({ type: 'completed' })]);
      expect(appended[2]?.task.result, 'result returned').toEqual({ nodes: ['node-1', 'node-2'] });
      const log = await ctx.store.readEvents('task-1', 0);
      expect(
        log.map((event) => (event.type === 'item' ? event.item.detail : null)),
        'details stored',
      ).toEqual([{ node: 'node-1' }, { node: 'node-2' }, null]);
      expect(log, 'events stored').toEqual(appended.map(({ event }) => event));
      expect((await ctx.store.getTask('task-1'))?.result, 'result stored').toEqual({
        nodes: ['node-1', 'node-2'],
      });
    });
  });

  describe('epoch', () => {
    it('has an id-shaped epoch, stable across reads and writes, replaced by renewEpoch', async () => {
      const { store } = ctx;
      // Optional methods: a store written before epochs has neither, and servers then announce none.
      if (store.getEpoch === undefined || store.renewEpoch === undefined) return;
      const epoch = await store.getEpoch();
      expect(epoch).toMatch(ID_PATTERN);
      expect(epoch.length).toBeLessThanOrEqual(LIMITS.maxIdLength);
      await store.createTask(taskInput({ id: 'task-1' }));
      await store.append('task-1', { type: 'progress', done: 1 });
      expect(await store.getEpoch()).toBe(epoch);
      const renewed = await store.renewEpoch();
      expect(renewed).not.toBe(epoch);
      expect(renewed).toMatch(ID_PATTERN);
      expect(await store.getEpoch()).toBe(renewed);
      // The log itself is untouched: only the meaning of cursors changed.
      expect((await mustGet(store, 'task-1')).seq).toBe(1);
    });

    it("tells the feed's onEpochRenewed listeners when renewEpoch replaces the epoch", async () => {
      const { store } = ctx;
      // Optional on both sides: a feed that cannot hear renewals omits the hook (servers then read the
      // epoch at their next heartbeat tick).
      if (store.renewEpoch === undefined || store.changes.onEpochRenewed === undefined) return;
      let heard = 0;
      const stop = store.changes.onEpochRenewed(() => {
        heard += 1;
      });
      try {
        await store.renewEpoch();
        await eventually('the renewal reached onEpochRenewed', () => heard > 0);
      } finally {
        stop();
      }
    });
  });

  describe('close', () => {
    it('after close, every method rejects with closed', async () => {
      await ctx.store.createTask(taskInput({ id: 'task-1' }));
      await ctx.store.close();
      const { store } = ctx;
      const calls: [string, () => Promise<unknown>][] = [
        ['createTask', () => store.createTask(taskInput({ id: 'task-2' }))],
        ['getTask', () => store.getTask('task-1')],
        ['listTasks', () => store.listTasks({ owner: taskInput().owner })],
        ['append', () => store.append('task-1', { type: 'progress' })],
        ['readEvents', () => store.readEvents('task-1', 0)],
        ['latestSeqs', () => store.latestSeqs(['task-1'])],
        ['ack', () => store.ack('task-1', 0)],
        ['renewLease', () => store.renewLease('task-1', 'worker-1', 1000)],
        ['releaseLease', () => store.releaseLease('task-1', 'worker-1')],
        ['reapExpiredLeases', () => store.reapExpiredLeases()],
        ['purgeFinished', () => store.purgeFinished({ olderThanMs: 0 })],
      ];
      // Optional methods, held to the same rule when a store has them.
      const { getEpoch, renewEpoch } = store;
      if (getEpoch !== undefined) calls.push(['getEpoch', () => getEpoch.call(store)]);
      if (renewEpoch !== undefined) calls.push(['renewEpoch', () => renewEpoch.call(store)]);
      for (const [what, call] of calls) await expectRejection(`${what} after close`, ErrorCode.Closed, call);
    });

    it('close can be called twice', async () => {
      await ctx.store.close();
      await ctx.store.close();
    });
  });
}
