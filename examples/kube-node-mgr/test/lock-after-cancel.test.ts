/**
 * A cancel is written by whoever cancels it, while the batch may still be in the middle of a node on its
 * replica (a PATCH or an eviction already sent). Its node locks must stay in the way until that batch lets
 * go of them, else a batch started right after the cancel runs beside the old one on the same node.
 */
import { afterEach, expect, it } from 'vitest';
import { type Harness, login, startHarness, waitForTask } from './harness.js';

let h: Harness;
afterEach(async () => {
  await h?.close();
});

it('keeps a cancelled batch’s node locks until its in-flight PATCH has landed and it released them', async () => {
  let release: (() => void) | undefined;
  const gate = new Promise<void>((resolve) => {
    release = resolve;
  });
  let patchSent: (() => void) | undefined;
  const patching = new Promise<void>((resolve) => {
    patchSent = resolve;
  });
  h = await startHarness({
    // The cordon's PATCH of worker-1 is held (a slow API server) until the test lets it through.
    cluster: {
      onRequest: ({ method, node }) => {
        if (method !== 'PATCH' || node !== 'worker-1' || release === undefined) return undefined;
        patchSent?.();
        return gate;
      },
    },
  });
  const alice = await login(h.base, 'alice');
  const cordon = await alice.post('/api/batch', { operation: 'cordon', nodes: ['worker-1'] });
  expect(cordon.status).toBe(202);
  await patching;
  const cancel = await alice.post(`/progress/tasks/${cordon.body.taskId}/cancel`, { reason: 'wrong node' });
  expect(cancel.status).toBe(200);
  // The PATCH is still on its way: an uncordon now would read the node schedulable, change nothing and
  // report success, and the cordon would land after it.
  const early = await alice.post('/api/batch', { operation: 'uncordon', nodes: ['worker-1'] });
  expect(early.status).toBe(409);
  expect(early.body.error.code).toBe('nodes_locked');
  expect(early.body.error.message).toContain(cordon.body.taskId);

  // The node table shows worker-1 held (by the cancelled batch, stopping), not free: a user picking it got
  // `nodes_locked` for as long as the batch took to stop (up to 30 s).
  const held = await alice.get('/api/nodes');
  expect(held.body.nodes.find((n: { name: string }) => n.name === 'worker-1').lock).toEqual({
    taskId: cordon.body.taskId,
    by: 'alice',
    stopping: true,
  });

  const gateOpen = release as () => void;
  release = undefined;
  gateOpen();
  await waitForTask(alice, cordon.body.taskId);
  for (let i = 0; i < 200 && (await h.db.locks('default')).length > 0; i++)
    await new Promise((r) => setTimeout(r, 10));
  expect(await h.db.locks('default')).toEqual([]);
  const free = await alice.get('/api/nodes');
  expect(free.body.nodes.find((n: { name: string }) => n.name === 'worker-1').lock).toBeNull();
  const uncordon = await alice.post('/api/batch', { operation: 'uncordon', nodes: ['worker-1'] });
  expect(uncordon.status).toBe(202);
  expect((await waitForTask(alice, uncordon.body.taskId)).task.status).toBe('completed');
  expect(h.cluster.node('worker-1')?.spec.unschedulable).toBeUndefined();
});

// A review on 7 December 2026: the page asks which nodes without a result have the change as soon as the
// cancel shows, while the batch's PATCH of worker-1 was still on its way: read before it landed, worker-1 was
// called "not changed" (and the answer kept) though the PATCH cordoned it a moment later; the batch, being
// cancelled, never records it. While the cancelled batch holds its locks it is still finishing: 409
// `task_stopping` with Retry-After, then the read once it has let go.
it('does not read back the nodes of a cancelled batch still finishing its in-flight PATCH', async () => {
  let release: (() => void) | undefined;
  const gate = new Promise<void>((resolve) => {
    release = resolve;
  });
  let patchSent: (() => void) | undefined;
  const patching = new Promise<void>((resolve) => {
    patchSent = resolve;
  });
  h = await startHarness({
    cluster: {
      onRequest: ({ method, node }) => {
        if (method !== 'PATCH' || node !== 'worker-1' || release === undefined) return undefined;
        patchSent?.();
        return gate;
      },
    },
  });
  const alice = await login(h.base, 'alice');
  const cordon = await alice.post('/api/batch', { operation: 'cordon', nodes: ['worker-1'] });
  expect(cordon.status).toBe(202);
  const id = cordon.body.taskId as string;
  await patching;
  expect((await alice.post(`/progress/tasks/${id}/cancel`, {})).status).toBe(200);
  const early = await fetch(`${h.base}/api/tasks/${id}/unrecorded`, { headers: { cookie: alice.cookie } });
  expect(early.status).toBe(409);
  expect(early.headers.get('retry-after')).toBe('1');
  expect(((await early.json()) as { error: { code: string } }).error.code).toBe('task_stopping');

  const gateOpen = release as () => void;
  release = undefined;
  gateOpen();
  for (let i = 0; i < 200 && (await h.db.locks('default')).length > 0; i++)
    await new Promise((r) => setTimeout(r, 10));
  const late = await alice.get(`/api/tasks/${id}/unrecorded`);
  expect(late.status).toBe(200);
  expect(late.body.nodes).toEqual([{ name: 'worker-1', changed: true }]);
  expect(h.cluster.node('worker-1')?.spec.unschedulable).toBe(true);
});
