// biome-ignore-all lint/suspicious/noExplicitAny: JSON bodies of API responses, checked by the assertions.
/**
 * Issue 15 on the server: per-node locks (409 naming the holder), roles, "retry failed" / "resume
 * remaining" as new linked tasks, the audit list across users and cordon notes per node.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { type Harness, login, startHarness, waitForTask } from './harness.js';

let h: Harness;
afterEach(async () => {
  await h?.close();
});

const waitRunning = async (client: Awaited<ReturnType<typeof login>>, taskId: string, done: number) => {
  for (let i = 0; i < 500; i++) {
    const { body } = await client.get(`/progress/tasks/${taskId}`);
    if (body.task.done >= done) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error('task did not progress');
};

describe('per-node locks', () => {
  it('refuses a batch on nodes another batch is changing: 409 nodes_locked naming the task; free again after it ends', async () => {
    h = await startHarness({ cluster: { latencyMs: 250 }, app: { concurrency: 1 } });
    const alice = await login(h.base, 'alice');
    const bob = await login(h.base, 'bob');
    const first = await alice.post('/api/batch', { operation: 'cordon', nodes: ['worker-1', 'worker-2'] });
    expect(first.status).toBe(202);
    const second = await bob.post('/api/batch', {
      operation: 'taint_add',
      key: 'x',
      effect: 'NoSchedule',
      nodes: ['worker-2', 'worker-3'],
    });
    expect(second.status).toBe(409);
    expect(second.body.error.code).toBe('nodes_locked');
    expect(second.body.error.message).toContain(first.body.taskId);
    expect(second.body.error.message).toContain('worker-2');
    expect(second.body.error.locks).toEqual([
      { node: 'worker-2', taskId: first.body.taskId, username: 'alice' },
    ]);
    // No node of the refused batch was touched.
    expect(h.cluster.node('worker-3')?.spec.taints).toBeUndefined();
    // The node table shows the lock while it is held.
    const table = (await bob.get('/api/nodes')).body.nodes;
    expect(table.find((n: any) => n.name === 'worker-1').lock).toEqual({
      taskId: first.body.taskId,
      by: 'alice',
    });
    await waitForTask(alice, first.body.taskId);
    // As soon as the task ended the table stops showing the lock (even before it is released).
    const after = (await bob.get('/api/nodes')).body.nodes;
    expect(after.find((n: any) => n.name === 'worker-1').lock).toBeNull();
    for (let i = 0; i < 100 && (await h.db.locks('default')).length > 0; i++)
      await new Promise((r) => setTimeout(r, 10));
    const third = await bob.post('/api/batch', {
      operation: 'taint_add',
      key: 'x',
      effect: 'NoSchedule',
      nodes: ['worker-2', 'worker-3'],
    });
    expect(third.status).toBe(202);
    await waitForTask(bob, third.body.taskId);
  });

  it('takes over a lock whose task ended without releasing it (a replica died)', async () => {
    h = await startHarness();
    const alice = await login(h.base, 'alice');
    const done = await alice.post('/api/batch', { operation: 'cordon', nodes: ['worker-4'] });
    await waitForTask(alice, done.body.taskId);
    // As if the replica running it had died before unlocking.
    await h.db.lockNodes(
      'default',
      ['worker-5'],
      { taskId: done.body.taskId, username: 'alice' },
      async () => false,
    );
    // The table does not show a lock whose task has ended.
    const table = (await alice.get('/api/nodes')).body.nodes;
    expect(table.find((n: any) => n.name === 'worker-5').lock).toBeNull();
    const res = await alice.post('/api/batch', { operation: 'cordon', nodes: ['worker-5'] });
    expect(res.status).toBe(202);
  });
});

describe('roles', () => {
  it('lets a viewer watch every task but change nothing; cancel needs the owner or an admin', async () => {
    h = await startHarness({ cluster: { latencyMs: 150 } });
    const alice = await login(h.base, 'alice');
    const bob = await login(h.base, 'bob');
    const victor = await login(h.base, 'victor');
    const ada = await login(h.base, 'ada');
    expect((await victor.get('/api/session')).body.role).toBe('viewer');
    const refused = await victor.post('/api/batch', { operation: 'cordon', nodes: ['worker-1'] });
    expect(refused.status).toBe(403);
    expect(refused.body.error.code).toBe('forbidden_role');
    const { body } = await alice.post('/api/batch', {
      operation: 'label_add',
      key: 'k',
      value: 'v',
      nodes: ['worker-1', 'worker-2', 'worker-3', 'worker-4', 'worker-5', 'worker-6'],
    });
    expect((await victor.get(`/progress/tasks/${body.taskId}`)).status).toBe(200);
    expect((await ada.get(`/progress/tasks/${body.taskId}`)).status).toBe(200);
    expect([403, 404]).toContain((await bob.get(`/progress/tasks/${body.taskId}`)).status);
    expect([403, 404]).toContain((await victor.post(`/progress/tasks/${body.taskId}/cancel`, {})).status);
    expect([403, 404]).toContain((await bob.post(`/progress/tasks/${body.taskId}/cancel`, {})).status);
    expect((await ada.post(`/progress/tasks/${body.taskId}/cancel`, { reason: 'admin stop' })).status).toBe(
      200,
    );
    expect((await waitForTask(alice, body.taskId)).task.status).toBe('cancelled');
  });
});

describe('retry failed / resume remaining', () => {
  it('retries only the failed nodes in a new task linked to the old one', async () => {
    h = await startHarness({ cluster: { failNodes: ['spot-2'] } });
    const alice = await login(h.base, 'alice');
    const first = await alice.post('/api/batch', { operation: 'cordon', nodes: ['worker-1', 'spot-2'] });
    expect((await waitForTask(alice, first.body.taskId)).task).toMatchObject({ succeeded: 1, failed: 1 });
    const retry = await alice.post(`/api/tasks/${first.body.taskId}/rerun`, { mode: 'retry_failed' });
    expect(retry.status).toBe(202);
    expect(retry.body.nodes).toEqual(['spot-2']);
    await waitForTask(alice, retry.body.taskId);
    const list = (await alice.get('/api/tasks')).body.tasks;
    expect(list[0]).toMatchObject({
      id: retry.body.taskId,
      parentTaskId: first.body.taskId,
      relation: 'retry_failed',
      nodes: ['spot-2'],
      username: 'alice',
    });
    // Retried once: a second retry of the same task (another tab, a click after a lost answer) would
    // apply the operation to the same nodes again; it is refused, naming the retry to rerun instead.
    const again = await alice.post(`/api/tasks/${first.body.taskId}/rerun`, { mode: 'retry_failed' });
    expect(again.status).toBe(409);
    expect(again.body.error).toMatchObject({ code: 'already_rerun', taskId: retry.body.taskId });
    const ada = await login(h.base, 'ada');
    expect((await ada.post(`/api/tasks/${first.body.taskId}/rerun`, { mode: 'retry_failed' })).status).toBe(
      409,
    );
    expect((await alice.post(`/api/tasks/${retry.body.taskId}/rerun`, { mode: 'retry_failed' })).status).toBe(
      202,
    );
    // Nothing left unprocessed in the first task.
    const resume = await alice.post(`/api/tasks/${first.body.taskId}/rerun`, { mode: 'resume_remaining' });
    expect(resume.status).toBe(400);
    expect(resume.body.error.code).toBe('nothing_to_rerun');
    // Someone else's task cannot be rerun.
    const bob = await login(h.base, 'bob');
    expect((await bob.post(`/api/tasks/${first.body.taskId}/rerun`, { mode: 'retry_failed' })).status).toBe(
      404,
    );
  });

  it('resumes the nodes a cancelled batch never reached', async () => {
    h = await startHarness({ cluster: { latencyMs: 100 }, app: { concurrency: 1 } });
    const alice = await login(h.base, 'alice');
    const nodes = ['worker-1', 'worker-2', 'worker-3', 'worker-4', 'worker-5'];
    const first = await alice.post('/api/batch', { operation: 'label_add', key: 'r', value: '1', nodes });
    await waitRunning(alice, first.body.taskId, 1);
    await alice.post(`/progress/tasks/${first.body.taskId}/cancel`, {});
    const ended = await waitForTask(alice, first.body.taskId);
    const finished = ended.items.map((e: any) => e.item.key);
    expect(finished.length).toBeLessThan(nodes.length);
    // The cancelled batch holds its locks until its PATCH on its way has landed (lock-after-cancel.test.ts).
    for (let i = 0; i < 200 && (await h.db.locks('default')).length > 0; i++)
      await new Promise((r) => setTimeout(r, 10));
    const resume = await alice.post(`/api/tasks/${first.body.taskId}/rerun`, { mode: 'resume_remaining' });
    expect(resume.status).toBe(202);
    expect(resume.body.nodes).toEqual(nodes.filter((n) => !finished.includes(n)));
    await waitForTask(alice, resume.body.taskId);
    for (const n of nodes) expect(h.cluster.node(n)?.metadata.labels.r).toBe('1');
  });
  // A review on 7 December 2026: a rerun did not check that its nodes still exist, as POST /api/batch does: a
  // node deleted since the batch (scaled down, replaced) started a new task that failed it again, "404
  // NotFound: nodes … not found". Then it was refused as a new batch on it is (400 unknown_nodes), and one
  // deleted node kept the rerun from every other node. It runs on the nodes that still exist, its answer
  // naming the skipped ones; a new batch naming an unknown node is still refused (a typo).
  const retiredBatch = async () => {
    // An interrupted batch of which worker-1 was done; retired-7 has left the cluster since.
    await h.db.recordTask({
      taskId: 't-retired',
      cluster: 'default',
      username: 'alice',
      operation: { type: 'label_add', key: 'rack', value: 'r7' } as any,
      nodes: ['worker-1', 'worker-2', 'retired-7'],
      parentTaskId: null,
      relation: null,
      createdAt: Date.now(),
    });
    await h.store.createTask({ id: 't-retired', owner: 'alice', kind: 'batch_label_add', total: 3 });
    await h.store.append('t-retired', { type: 'item', key: 'worker-1', ok: true });
  };
  it('reruns on the nodes that still exist, naming those deleted since as skipped; a new batch on one is refused', async () => {
    h = await startHarness();
    const alice = await login(h.base, 'alice');
    await retiredBatch();
    await h.store.append('t-retired', { type: 'interrupted', reason: 'lease expired' });
    const batch = await alice.post('/api/batch', {
      operation: 'label_add',
      key: 'rack',
      value: 'r7',
      nodes: ['worker-2', 'retired-7'],
    });
    expect(batch.status).toBe(400);
    expect(batch.body.error).toMatchObject({ code: 'unknown_nodes', field: 'nodes', nodes: ['retired-7'] });
    const resume = await alice.post('/api/tasks/t-retired/rerun', { mode: 'resume_remaining' });
    expect(resume.status).toBe(202);
    expect(resume.body).toMatchObject({ nodes: ['worker-2'], skipped: ['retired-7'] });
    const done = await waitForTask(alice, resume.body.taskId);
    expect(done.task.status).toBe('completed');
    expect(done.items.map((e) => [e.item.key, e.item.ok])).toEqual([['worker-2', true]]);
    expect(h.cluster.node('worker-2')?.metadata.labels.rack).toBe('r7');
    expect((await h.db.task(resume.body.taskId))?.nodes).toEqual(['worker-2']);
  });
  it('refuses a rerun whose every node was deleted since (400 nothing_to_rerun, naming them), starting nothing', async () => {
    h = await startHarness();
    const alice = await login(h.base, 'alice');
    await retiredBatch();
    await h.store.append('t-retired', { type: 'item', key: 'worker-2', ok: true });
    await h.store.append('t-retired', { type: 'interrupted', reason: 'lease expired' });
    const resume = await alice.post('/api/tasks/t-retired/rerun', { mode: 'resume_remaining' });
    expect(resume.status).toBe(400);
    expect(resume.body.error).toMatchObject({
      code: 'nothing_to_rerun',
      message: 'the node to rerun no longer exists in the cluster: retired-7',
      nodes: ['retired-7'],
    });
    expect(await h.db.reruns('t-retired', 'resume_remaining')).toEqual([]);
  });
});

describe('audit and cordon notes', () => {
  it('lists every user’s batches for viewers and admins (who, what, nodes, result), only one’s own for operators', async () => {
    h = await startHarness();
    const alice = await login(h.base, 'alice');
    const bob = await login(h.base, 'bob');
    const victor = await login(h.base, 'victor');
    const a = await alice.post('/api/batch', {
      operation: 'cordon',
      nodes: ['worker-1'],
      reason: 'kernel upgrade',
    });
    const b = await bob.post('/api/batch', {
      operation: 'label_add',
      key: 'team',
      value: 'x',
      nodes: ['worker-2'],
    });
    await waitForTask(alice, a.body.taskId);
    await waitForTask(bob, b.body.taskId);
    const all = (await victor.get('/api/tasks')).body.tasks;
    expect(all.map((t: any) => t.username).sort()).toEqual(['alice', 'bob']);
    const cordon = all.find((t: any) => t.id === a.body.taskId);
    expect(cordon).toMatchObject({
      username: 'alice',
      operation: { type: 'cordon', reason: 'kernel upgrade' },
      nodes: ['worker-1'],
      task: { status: 'completed', succeeded: 1, failed: 0 },
    });
    expect((await bob.get('/api/tasks')).body.tasks.map((t: any) => t.id)).toEqual([b.body.taskId]);
    // The cordon's reason, operator and time are shown per node.
    const node = (await bob.get('/api/nodes')).body.nodes.find((n: any) => n.name === 'worker-1');
    expect(node.cordon).toMatchObject({ reason: 'kernel upgrade', by: 'alice' });
    expect(Math.abs(node.cordon.at - Date.now())).toBeLessThan(60_000);
    const u = await alice.post('/api/batch', { operation: 'uncordon', nodes: ['worker-1'] });
    await waitForTask(alice, u.body.taskId);
    const after = (await bob.get('/api/nodes')).body.nodes.find((n: any) => n.name === 'worker-1');
    expect(after.cordon).toBeNull();
  });
});

describe('cordon notes tied to their cordon', () => {
  /** `kubectl cordon` / `uncordon` as kubectl sends it: a strategic merge patch, kubectl's User-Agent. */
  const kubectl = async (node: string, unschedulable: boolean) => {
    const res = await fetch(`${h.cluster.url}/api/v1/nodes/${node}`, {
      method: 'PATCH',
      headers: {
        'content-type': 'application/strategic-merge-patch+json',
        'user-agent': 'kubectl/v1.30.0 (linux/amd64) kubernetes/7c48c2b',
      },
      body: JSON.stringify({ spec: { unschedulable: unschedulable ? true : null } }),
    });
    expect(res.status).toBe(200);
  };
  const row = async (client: Awaited<ReturnType<typeof login>>, node: string) =>
    (await client.get('/api/nodes')).body.nodes.find((n: any) => n.name === node);

  it('writes a cordon’s note before its PATCH, so a crash just after the PATCH lands leaves it noted', async () => {
    // What the database holds when each cordon PATCH reaches the API (a crash right after it keeps that).
    const notedAtPatch = new Map<string, string[]>();
    h = await startHarness({
      cluster: {
        onRequest: async ({ method, node }) => {
          if (method !== 'PATCH' || node === undefined) return;
          notedAtPatch.set(
            node,
            (await h.db.cordons('default')).map((c) => `${c.node}: ${c.reason}`),
          );
        },
      },
    });
    const alice = await login(h.base, 'alice');
    const c = await alice.post('/api/batch', { operation: 'cordon', nodes: ['worker-1'], reason: 'kernel' });
    await waitForTask(alice, c.body.taskId);
    expect(notedAtPatch.get('worker-1')).toEqual(['worker-1: kernel']);
    // A drain's cordons too (all its nodes are cordoned first).
    const d = await alice.post('/api/batch', { operation: 'drain', nodes: ['gpu-1'], reason: 'gpu swap' });
    expect(d.status).toBe(202);
    await waitForTask(alice, d.body.taskId);
    expect(notedAtPatch.get('gpu-1')).toContain('gpu-1: gpu swap');
  });

  it('drops an app cordon’s note once kubectl uncordoned and cordoned the node again', async () => {
    h = await startHarness();
    const alice = await login(h.base, 'alice');
    const a = await alice.post('/api/batch', { operation: 'cordon', nodes: ['worker-1'], reason: 'kernel' });
    await waitForTask(alice, a.body.taskId);
    expect(await row(alice, 'worker-1')).toMatchObject({
      cordonManager: 'kube-node-mgr',
      cordon: { reason: 'kernel', by: 'alice' },
    });
    await kubectl('worker-1', false);
    await kubectl('worker-1', true);
    // Cordoned again, by kubectl: the old note described the app's cordon, not this one.
    expect(await row(alice, 'worker-1')).toMatchObject({
      unschedulable: true,
      cordonManager: 'kubectl',
      cordon: null,
    });
    // A kubectl cordon of a node the app had cordoned (no change) leaves the cordon, and its note, the app's.
    const b = await alice.post('/api/batch', { operation: 'cordon', nodes: ['worker-2'], reason: 'disk' });
    await waitForTask(alice, b.body.taskId);
    await kubectl('worker-2', true);
    expect((await row(alice, 'worker-2')).cordon).toMatchObject({ reason: 'disk', by: 'alice' });
  });
});

describe('templates', () => {
  it('saves validated label and taint templates for everyone; only operators save, the author or an admin deletes', async () => {
    h = await startHarness();
    const alice = await login(h.base, 'alice');
    const bob = await login(h.base, 'bob');
    const victor = await login(h.base, 'victor');
    const ada = await login(h.base, 'ada');
    const taint = {
      name: 'maintenance',
      kind: 'taint',
      key: 'example.com/maint',
      value: 'planned',
      effect: 'NoExecute',
    };
    expect((await alice.post('/api/templates', taint)).status).toBe(201);
    expect(
      (await alice.post('/api/templates', { name: 'team', kind: 'label', key: 'team', value: 'infra' }))
        .status,
    ).toBe(201);
    const dup = await bob.post('/api/templates', taint);
    expect(dup.status).toBe(409);
    expect(dup.body.error.code).toBe('template_exists');
    const bad = await bob.post('/api/templates', { ...taint, name: 'x', effect: 'Sometimes' });
    expect(bad.status).toBe(400);
    expect(bad.body.error.field).toBe('effect');
    expect((await bob.post('/api/templates', { ...taint, name: 'y', key: 'a/b/c' })).status).toBe(400);
    expect((await victor.post('/api/templates', { ...taint, name: 'z' })).status).toBe(403);
    const list = (await victor.get('/api/templates')).body.templates;
    expect(list).toEqual([
      expect.objectContaining({
        name: 'maintenance',
        kind: 'taint',
        key: 'example.com/maint',
        value: 'planned',
        effect: 'NoExecute',
        createdBy: 'alice',
      }),
      expect.objectContaining({ name: 'team', kind: 'label', key: 'team', value: 'infra', effect: null }),
    ]);
    expect((await bob.post('/api/templates/team/delete', {})).status).toBe(403);
    expect((await ada.post('/api/templates/team/delete', {})).status).toBe(200);
    expect((await alice.get('/api/templates')).body.templates.map((t: any) => t.name)).toEqual([
      'maintenance',
    ]);
  });

  it('refuses a template name no delete URL can carry (".", ".."), and deletes one with a slash', async () => {
    h = await startHarness();
    const alice = await login(h.base, 'alice');
    const label = { kind: 'label', key: 'team', value: 'infra' };
    // A URL's "." and ".." segments are resolved away (fetch, the browser): /api/templates/./delete is
    // /api/templates/delete, so such a template, once saved, could never be deleted by anyone.
    for (const name of ['.', '..', ' .. ']) {
      const saved = await alice.post('/api/templates', { ...label, name });
      expect(saved.status).toBe(400);
      expect(saved.body.error.field).toBe('name');
    }
    expect((await alice.post('/api/templates', { ...label, name: 'team/gpu' })).status).toBe(201);
    expect((await alice.post(`/api/templates/${encodeURIComponent('team/gpu')}/delete`, {})).status).toBe(
      200,
    );
    expect((await alice.get('/api/templates')).body.templates).toEqual([]);
  });
});
