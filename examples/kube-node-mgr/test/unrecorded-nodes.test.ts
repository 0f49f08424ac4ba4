// biome-ignore-all lint/suspicious/noExplicitAny: JSON bodies of API responses, checked by the assertions.
/**
 * A batch whose server died (interrupted) may have changed a node just before, its result never recorded:
 * the progress dialog listed every node without a result as "not changed" and the rerun dialog offered to
 * "resume" them as if untouched. `GET /api/tasks/:id/unrecorded` reads those nodes and says which already
 * have the change; the dialog lists them apart.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { KubeNodes, loadKubeConfig } from '../src/server/kube-nodes.js';
import { drainNode } from '../src/server/node-drain.js';
import { type Harness, login, startHarness } from './harness.js';

let h: Harness;
afterEach(async () => {
  await h?.close();
});

/** The record and the store's task of a label batch on three nodes whose server died after worker-1's item. */
async function crashedBatch(
  id: string,
  owner = 'alice',
  nodes = ['worker-1', 'worker-2', 'worker-3'],
  operation: Record<string, unknown> = { type: 'label_add', key: 'pool', value: 'blue' },
) {
  await h.db.recordTask({
    taskId: id,
    cluster: 'default',
    username: owner,
    operation: operation as any,
    nodes,
    parentTaskId: null,
    relation: null,
    createdAt: Date.now(),
  });
  await h.store.createTask({ id, owner, kind: 'batch_label_add', total: nodes.length });
  return nodes;
}

const labelNode = async (name: string) => {
  const res = await fetch(`${h.cluster.url}/api/v1/nodes/${name}`, {
    method: 'PATCH',
    headers: { 'content-type': 'application/merge-patch+json' },
    body: JSON.stringify({ metadata: { labels: { pool: 'blue' } } }),
  });
  expect(res.status).toBe(200);
};

describe('the nodes of an ended batch without a recorded result', () => {
  it('says which already have the change (patched before the crash) and which do not', async () => {
    h = await startHarness();
    const alice = await login(h.base, 'alice');
    await crashedBatch('t-crash');
    // worker-1 done and recorded; worker-2 patched, then the server died before its item; worker-3 untouched.
    await labelNode('worker-1');
    await h.store.append('t-crash', { type: 'item', key: 'worker-1', ok: true });
    await labelNode('worker-2');
    const running = await alice.get('/api/tasks/t-crash/unrecorded');
    expect(running.status).toBe(409);
    await h.store.append('t-crash', { type: 'interrupted', reason: 'lease expired' });
    const { status, body } = await alice.get('/api/tasks/t-crash/unrecorded');
    expect(status).toBe(200);
    expect(body.nodes).toEqual([
      { name: 'worker-2', changed: true },
      { name: 'worker-3', changed: false },
    ]);
  });

  // A review on 7 December 2026: a node deleted since the batch (scaled down, replaced) was answered
  // `changed: null`, as a node whose read failed: the dialog said it "could not be read back" and may or may
  // not have been changed, to be verified, rather than that it no longer exists.
  it('says which nodes no longer exist (gone), apart from those that could not be read', async () => {
    h = await startHarness();
    const alice = await login(h.base, 'alice');
    await crashedBatch('t-gone', 'alice', ['worker-1', 'retired-7', 'worker-2']);
    await labelNode('worker-2');
    await h.store.append('t-gone', { type: 'cancelled', reason: 'by alice' });
    const { status, body } = await alice.get('/api/tasks/t-gone/unrecorded');
    expect(status).toBe(200);
    expect(body.nodes).toEqual([
      { name: 'worker-1', changed: false },
      { name: 'retired-7', changed: null, gone: true },
      { name: 'worker-2', changed: true },
    ]);
  });

  it('is someone else’s task for an operator (404), anyone’s for a viewer', async () => {
    h = await startHarness();
    await crashedBatch('t-bob', 'bob');
    await h.store.append('t-bob', { type: 'interrupted', reason: 'lease expired' });
    const alice = await login(h.base, 'alice');
    expect((await alice.get('/api/tasks/t-bob/unrecorded')).status).toBe(404);
    const victor = await login(h.base, 'victor');
    expect((await victor.get('/api/tasks/t-bob/unrecorded')).body.nodes).toHaveLength(3);
  });

  // A drain's nodes were not read back: a node drained just before the crash was listed "not drained … may
  // be left cordoned". Read by the drain's rules: cordoned, and no pod left that the drain would evict.
  const cordon = async (name: string) => {
    const res = await fetch(`${h.cluster.url}/api/v1/nodes/${name}`, {
      method: 'PATCH',
      headers: { 'content-type': 'application/merge-patch+json' },
      body: JSON.stringify({ spec: { unschedulable: true } }),
    });
    expect(res.status).toBe(200);
  };

  it('says which nodes of a drain are drained: cordoned, with no pod left to evict', async () => {
    h = await startHarness({ cluster: { podTerminationMs: 10, podReadyMs: 20 } });
    const alice = await login(h.base, 'alice');
    const nodes = ['cp-1', 'worker-1', 'worker-2', 'worker-3', 'worker-4'];
    await crashedBatch('t-drain', 'alice', nodes, { type: 'drain' });
    // worker-4 drained and recorded; worker-3 drained before the crash, its item never written; cp-1 only
    // runs DaemonSet pods, so cordoned is drained; worker-1 cordoned with its pods still there; worker-2
    // untouched.
    const kube = new KubeNodes(loadKubeConfig({ type: 'server', url: h.cluster.url }));
    const drain = (name: string) =>
      drainNode(kube, name, {
        maxAttempts: 3,
        signal: new AbortController().signal,
        pollMs: 10,
        evictionRetryMs: 20,
      });
    await cordon('cp-1');
    await cordon('worker-1');
    await drain('worker-4');
    await h.store.append('t-drain', { type: 'item', key: 'worker-4', ok: true });
    await drain('worker-3');
    await h.store.append('t-drain', { type: 'interrupted', reason: 'lease expired' });
    const { status, body } = await alice.get('/api/tasks/t-drain/unrecorded');
    expect(status).toBe(200);
    expect(body.nodes).toEqual([
      { name: 'cp-1', changed: true },
      { name: 'worker-1', changed: false },
      { name: 'worker-2', changed: false },
      { name: 'worker-3', changed: true },
    ]);
  });

  it('calls a cordoned node of a drain unknown when its pods cannot be read', async () => {
    let podsFail = false;
    h = await startHarness({
      cluster: {
        onRequest: ({ path }) => {
          if (podsFail && path === '/api/v1/pods') throw new Error('etcd is down');
        },
      },
    });
    const alice = await login(h.base, 'alice');
    await crashedBatch('t-drain-2', 'alice', ['cp-1', 'worker-2'], { type: 'drain' });
    await cordon('cp-1');
    await h.store.append('t-drain-2', { type: 'interrupted', reason: 'lease expired' });
    podsFail = true;
    const { status, body } = await alice.get('/api/tasks/t-drain-2/unrecorded');
    expect(status).toBe(200);
    expect(body.nodes).toEqual([
      { name: 'cp-1', changed: null },
      { name: 'worker-2', changed: false },
    ]);
  });

  // Each call read the whole node list and, for a drain, the pods of every cordoned node: any viewer
  // repeating a cheap GET made the server hammer the Kubernetes API. Concurrent callers now share one
  // computation (and its answer for a moment after).
  it('reads the cluster once for many concurrent callers, not once per call', async () => {
    let counting: string | undefined;
    const reads = new Map<string, number>();
    h = await startHarness({
      cluster: {
        onRequest: ({ path }) => {
          // The pods: the node list is shared by every task for a moment (the next case).
          if (counting !== undefined && path === '/api/v1/pods') {
            reads.set(counting, (reads.get(counting) ?? 0) + 1);
          }
        },
      },
    });
    const victor = await login(h.base, 'victor');
    for (const id of ['t-one', 't-many']) {
      await crashedBatch(id, 'alice', ['cp-1', 'worker-1', 'worker-2'], { type: 'drain' });
      await h.store.append(id, { type: 'interrupted', reason: 'lease expired' });
    }
    await cordon('cp-1');
    await cordon('worker-1');
    counting = 't-one';
    const one = await victor.get('/api/tasks/t-one/unrecorded');
    expect(one.status).toBe(200);
    const single = reads.get('t-one') ?? 0;
    expect(single).toBeGreaterThanOrEqual(2); // the pods of two cordoned nodes
    counting = 't-many';
    const many = await Promise.all(
      Array.from({ length: 8 }, () => victor.get('/api/tasks/t-many/unrecorded')),
    );
    for (const answer of many) {
      expect(answer.status).toBe(200);
      expect(answer.body.nodes).toEqual(one.body.nodes);
    }
    expect(reads.get('t-many')).toBe(single);
  });

  // A review on 6 December 2026: shared per task only, each ended task asked for cost a full node list, so a
  // signed-in user asking for many tasks' unrecorded nodes made the server list the cluster's nodes once per
  // task. The list is now shared by every task of the cluster for the same moment.
  it('lists the nodes once for many tasks asked for at once, not once per task', async () => {
    let lists = 0;
    h = await startHarness({
      cluster: {
        onRequest: ({ path }) => {
          if (path === '/api/v1/nodes') lists++;
        },
      },
    });
    const victor = await login(h.base, 'victor');
    const ids = Array.from({ length: 6 }, (_, i) => `t-each-${i}`);
    for (const id of ids) {
      await crashedBatch(id);
      await h.store.append(id, { type: 'interrupted', reason: 'lease expired' });
    }
    await labelNode('worker-2');
    lists = 0;
    const answers = await Promise.all(ids.map((id) => victor.get(`/api/tasks/${id}/unrecorded`)));
    for (const answer of answers) {
      expect(answer.status).toBe(200);
      expect(answer.body.nodes).toEqual([
        { name: 'worker-1', changed: false },
        { name: 'worker-2', changed: true },
        { name: 'worker-3', changed: false },
      ]);
    }
    expect(lists).toBe(1);
  });

  // A review on 6 December 2026: a drain's pod reads were bounded per task only (`concurrency` nodes at a
  // time), so many drains asked for at once read the pods of `concurrency` nodes each, side by side.
  it('reads the pods of at most `concurrency` nodes at a time across every task', async () => {
    let held: (() => void)[] = [];
    let holding = 0;
    let most = 0;
    let arrived!: () => void;
    const some = new Promise<void>((resolve) => {
      arrived = resolve;
    });
    let releasing = false;
    h = await startHarness({
      cluster: {
        onRequest: async ({ path }) => {
          if (path !== '/api/v1/pods' || releasing) return;
          holding++;
          most = Math.max(most, holding);
          if (holding >= 3) arrived();
          await new Promise<void>((resolve) => held.push(resolve));
          holding--;
        },
      },
    });
    const victor = await login(h.base, 'victor');
    const nodes = ['worker-1', 'worker-2', 'worker-3'];
    const ids = ['t-d1', 't-d2', 't-d3'];
    for (const id of ids) {
      await crashedBatch(id, 'alice', nodes, { type: 'drain' });
      await h.store.append(id, { type: 'interrupted', reason: 'lease expired' });
    }
    for (const node of nodes) await cordon(node);
    const answers = Promise.all(ids.map((id) => victor.get(`/api/tasks/${id}/unrecorded`)));
    await some;
    // Time for more reads to arrive, were they let through (the harness's concurrency is 3).
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(most).toBe(3);
    releasing = true;
    for (const release of held) release();
    held = [];
    for (const answer of await answers) expect(answer.status).toBe(200);
  });
});
