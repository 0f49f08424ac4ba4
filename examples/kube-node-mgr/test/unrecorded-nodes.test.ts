// biome-ignore-all lint/suspicious/noExplicitAny: JSON bodies of API responses, checked by the assertions.
/**
 * A batch whose server died (interrupted) may have changed a node just before, its result never recorded:
 * the progress dialog listed every node without a result as "not changed" and the rerun dialog offered to
 * "resume" them as if untouched. `GET /api/tasks/:id/unrecorded` reads those nodes and says which already
 * have the change; the dialog lists them apart.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { type Harness, login, startHarness } from './harness.js';

let h: Harness;
afterEach(async () => {
  await h?.close();
});

/** The record and the store's task of a label batch on three nodes whose server died after worker-1's item. */
async function crashedBatch(id: string, owner = 'alice') {
  const nodes = ['worker-1', 'worker-2', 'worker-3'];
  await h.db.recordTask({
    taskId: id,
    cluster: 'default',
    username: owner,
    operation: { type: 'label_add', key: 'pool', value: 'blue' },
    nodes,
    parentTaskId: null,
    relation: null,
    createdAt: Date.now(),
  });
  await h.store.createTask({ id, owner, kind: 'batch_label_add', total: 3 });
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

  it('is someone else’s task for an operator (404), anyone’s for a viewer', async () => {
    h = await startHarness();
    await crashedBatch('t-bob', 'bob');
    await h.store.append('t-bob', { type: 'interrupted', reason: 'lease expired' });
    const alice = await login(h.base, 'alice');
    expect((await alice.get('/api/tasks/t-bob/unrecorded')).status).toBe(404);
    const victor = await login(h.base, 'victor');
    expect((await victor.get('/api/tasks/t-bob/unrecorded')).body.nodes).toHaveLength(3);
  });
});
