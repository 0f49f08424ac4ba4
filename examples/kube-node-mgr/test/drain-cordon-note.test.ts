// biome-ignore-all lint/suspicious/noExplicitAny: JSON bodies of API responses, checked by the assertions.
/**
 * A drain that fails after its cordon leaves the node cordoned (as kubectl drain does), but the note of who
 * cordoned it and why was saved only for a drained node: the node table showed a cordon nobody had made.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { type Harness, login, startHarness, waitForTask } from './harness.js';

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

describe('a drain that fails after cordoning the node', () => {
  it('keeps the cordon’s note (who, why) on the node it left cordoned', async () => {
    h = await startHarness({
      cluster: {
        onRequest: ({ method, path }) => {
          if (method === 'POST' && path.endsWith('/eviction')) throw new Error('injected eviction failure');
        },
      },
    });
    const alice = await login(h.base, 'alice');
    const started = await alice.post('/api/batch', {
      operation: 'drain',
      nodes: ['worker-1'],
      reason: 'kernel update',
    });
    expect(started.status).toBe(202);
    const { task } = await waitForTask(alice, started.body.taskId);
    expect(task).toMatchObject({ failed: 1 });
    expect(h.cluster.node('worker-1')?.spec.unschedulable).toBe(true);
    const node = (await alice.get('/api/nodes')).body.nodes.find((n: any) => n.name === 'worker-1');
    expect(node.cordon).toMatchObject({ reason: 'kernel update', by: 'alice' });
  });
});

/**
 * A cordon's note is written before its PATCH (an intent, so a PATCH landing just before a crash still
 * has one). Until 5 December 2026 a cordon whose change to the node then failed left its intent in place
 * of the node's earlier note: a node cordoned by bob "for the disk" showed alice's cordon, which never
 * happened.
 */
describe('a cordon whose change to the node fails', () => {
  it.each(['cordon', 'drain'] as const)(
    'leaves the earlier note of a node already cordoned: %s',
    async (operation) => {
      let failing = false;
      h = await startHarness({
        cluster: {
          onRequest: ({ node }) => {
            if (failing && node === 'worker-1') throw new Error('injected failure');
          },
        },
      });
      const bob = await login(h.base, 'bob');
      const first = await bob.post('/api/batch', {
        operation: 'cordon',
        nodes: ['worker-1'],
        reason: 'disk',
      });
      expect(first.status).toBe(202);
      expect((await waitForTask(bob, first.body.taskId)).task).toMatchObject({ status: 'completed' });
      failing = true;
      const alice = await login(h.base, 'alice');
      const second = await alice.post('/api/batch', {
        operation,
        nodes: ['worker-1'],
        reason: 'kernel update',
      });
      expect(second.status).toBe(202);
      expect((await waitForTask(alice, second.body.taskId)).task).toMatchObject({ failed: 1 });
      failing = false;
      expect(h.cluster.node('worker-1')?.spec.unschedulable).toBe(true);
      const node = (await alice.get('/api/nodes')).body.nodes.find((n: any) => n.name === 'worker-1');
      expect(node.cordon).toMatchObject({ reason: 'disk', by: 'bob' });
    },
  );
});

/**
 * A cordon's intent was written before the node was read — a drain's for all its nodes before any cordon —
 * in place of the note of a node cordoned already. Put back only by the batch's `finally`: after a kill -9
 * in between, a node bob had cordoned "for the disk", which the batch never touched, showed alice's cordon
 * for good. The intent is now written right before the PATCH, for a node found uncordoned.
 */
describe('a cordon whose process dies before it reached a node', () => {
  it.each(['cordon', 'drain'] as const)(
    'leaves the earlier note of a node already cordoned in the database: %s',
    async (operation) => {
      let hold: Promise<void> | undefined;
      let reached: () => void = () => undefined;
      const atRead = new Promise<void>((resolve) => {
        reached = resolve;
      });
      let release: () => void = () => undefined;
      h = await startHarness({
        cluster: {
          onRequest: ({ method, node }) => {
            if (hold === undefined || method !== 'GET' || node !== 'worker-1') return;
            reached();
            return hold;
          },
        },
      });
      const bob = await login(h.base, 'bob');
      const first = await bob.post('/api/batch', {
        operation: 'cordon',
        nodes: ['worker-1'],
        reason: 'disk',
      });
      expect((await waitForTask(bob, first.body.taskId)).task).toMatchObject({ status: 'completed' });
      hold = new Promise<void>((resolve) => {
        release = resolve;
      });
      const alice = await login(h.base, 'alice');
      const second = await alice.post('/api/batch', {
        operation,
        nodes: ['worker-1', 'worker-2'],
        reason: 'kernel update',
      });
      expect(second.status).toBe(202);
      // The batch is reading worker-1: a kill -9 now leaves the database as it is.
      await atRead;
      await new Promise((resolve) => setTimeout(resolve, 100));
      const notes = await h.db.cordons('default');
      expect(notes.find((n) => n.node === 'worker-1')).toMatchObject({ reason: 'disk', username: 'bob' });
      hold = undefined;
      release();
      await waitForTask(alice, second.body.taskId);
    },
  );
});

/**
 * A cordon or drain that found its node cordoned already (by bob, "for the disk") did not change it, yet
 * wrote its own note over bob's: the node read "cordoned by alice: kernel update", and alice, uncordoning
 * her nodes after the update, put bob's broken node back in service. A drain also moved the time of its
 * own first pass's note to when its turn came. A note is now written only by the batch that cordoned the node.
 */
describe('a cordon that finds its node cordoned already', () => {
  it.each(['cordon', 'drain'] as const)('leaves the note of whoever cordoned it: %s', async (operation) => {
    h = await startHarness();
    const bob = await login(h.base, 'bob');
    const first = await bob.post('/api/batch', {
      operation: 'cordon',
      nodes: ['worker-1'],
      reason: 'disk',
    });
    expect((await waitForTask(bob, first.body.taskId)).task).toMatchObject({ status: 'completed' });
    const before = (await h.db.cordons('default')).find((n) => n.node === 'worker-1');
    const alice = await login(h.base, 'alice');
    const second = await alice.post('/api/batch', {
      operation,
      nodes: ['worker-1', 'worker-2'],
      reason: 'kernel update',
    });
    expect(second.status).toBe(202);
    expect((await waitForTask(alice, second.body.taskId)).task).toMatchObject({
      status: 'completed',
      failed: 0,
    });
    const nodes = (await alice.get('/api/nodes')).body.nodes;
    expect(nodes.find((n: any) => n.name === 'worker-1').cordon).toMatchObject({
      reason: 'disk',
      by: 'bob',
    });
    expect((await h.db.cordons('default')).find((n) => n.node === 'worker-1')).toEqual(before);
    // The node the batch did cordon has its note.
    expect(nodes.find((n: any) => n.name === 'worker-2').cordon).toMatchObject({
      reason: 'kernel update',
      by: 'alice',
    });
  });
});
