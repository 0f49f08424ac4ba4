// biome-ignore-all lint/suspicious/noExplicitAny: JSON bodies of API responses, checked by the assertions.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type Harness, login, postLogin, startHarness, upgradeStatus, waitForTask } from './harness.js';

let h: Harness;
afterEach(async () => {
  await h?.close();
});

const byKey = (items: { item: { key: string; ok: boolean; error: string | null; detail: any } }[]) =>
  Object.fromEntries(items.map((e) => [e.item.key, e.item]));

describe('batch operations against the demo cluster', () => {
  beforeEach(async () => {
    h = await startHarness();
  });

  it('adds a taint to every selected node, keeping the taints already there', async () => {
    const alice = await login(h.base, 'alice');
    const nodes = ['worker-1', 'worker-2', 'gpu-1'];
    const { status, body } = await alice.post('/api/batch', {
      operation: 'taint_add',
      key: 'example.com/maintenance',
      value: 'planned',
      effect: 'NoSchedule',
      nodes,
    });
    expect(status).toBe(202);
    const { task, items } = await waitForTask(alice, body.taskId);
    expect(task).toMatchObject({
      status: 'completed',
      kind: 'batch_taint',
      total: 3,
      done: 3,
      succeeded: 3,
      failed: 0,
    });
    expect(Object.keys(byKey(items)).sort()).toEqual([...nodes].sort());
    for (const name of nodes) {
      expect(h.cluster.node(name)?.spec.taints).toContainEqual({
        key: 'example.com/maintenance',
        value: 'planned',
        effect: 'NoSchedule',
      });
    }
    expect(h.cluster.node('gpu-1')?.spec.taints).toContainEqual({
      key: 'nvidia.com/gpu',
      value: 'present',
      effect: 'NoSchedule',
    });
    expect(h.cluster.node('worker-3')?.spec.taints).toBeUndefined();
  });

  it('stamps timeAdded on NoExecute taints and reports nodes already tainted as unchanged', async () => {
    const alice = await login(h.base, 'alice');
    const first = await alice.post('/api/batch', {
      operation: 'taint_add',
      key: 'drain',
      effect: 'NoExecute',
      nodes: ['worker-1'],
    });
    await waitForTask(alice, first.body.taskId);
    const taint = h.cluster.node('worker-1')?.spec.taints?.[0];
    expect(taint).toMatchObject({ key: 'drain', effect: 'NoExecute' });
    expect(taint?.timeAdded).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    const rv = h.cluster.node('worker-1')?.metadata.resourceVersion;
    const again = await alice.post('/api/batch', {
      operation: 'taint_add',
      key: 'drain',
      effect: 'NoExecute',
      nodes: ['worker-1'],
    });
    const { items } = await waitForTask(alice, again.body.taskId);
    expect(byKey(items)['worker-1']?.detail).toMatchObject({ outcome: 'unchanged' });
    expect(h.cluster.node('worker-1')?.metadata.resourceVersion).toBe(rv);
  });

  it('removes a taint by key and effect, or by key alone (every effect)', async () => {
    const alice = await login(h.base, 'alice');
    for (const name of ['worker-1', 'worker-2']) {
      h.cluster.mutate(name, (n) => {
        n.spec.taints = [
          { key: 'a', effect: 'NoSchedule' },
          { key: 'a', effect: 'NoExecute' },
          { key: 'b', value: 'x', effect: 'PreferNoSchedule' },
        ];
      });
    }
    const one = await alice.post('/api/batch', {
      operation: 'taint_remove',
      key: 'a',
      effect: 'NoExecute',
      nodes: ['worker-1'],
    });
    const all = await alice.post('/api/batch', { operation: 'taint_remove', key: 'a', nodes: ['worker-2'] });
    expect((await waitForTask(alice, one.body.taskId)).task.status).toBe('completed');
    expect((await waitForTask(alice, all.body.taskId)).task.status).toBe('completed');
    expect(h.cluster.node('worker-1')?.spec.taints).toEqual([
      { key: 'a', effect: 'NoSchedule' },
      { key: 'b', value: 'x', effect: 'PreferNoSchedule' },
    ]);
    expect(h.cluster.node('worker-2')?.spec.taints).toEqual([
      { key: 'b', value: 'x', effect: 'PreferNoSchedule' },
    ]);
    // Removing the last taint leaves no taints field, as the API does.
    const last = await alice.post('/api/batch', { operation: 'taint_remove', key: 'b', nodes: ['worker-2'] });
    await waitForTask(alice, last.body.taskId);
    expect(h.cluster.node('worker-2')?.spec.taints).toBeUndefined();
  });

  it('adds and removes labels', async () => {
    const alice = await login(h.base, 'alice');
    const add = await alice.post('/api/batch', {
      operation: 'label_add',
      key: 'team',
      value: 'infra',
      nodes: ['worker-1', 'spot-1'],
    });
    expect((await waitForTask(alice, add.body.taskId)).task).toMatchObject({
      status: 'completed',
      succeeded: 2,
    });
    expect(h.cluster.node('worker-1')?.metadata.labels.team).toBe('infra');
    expect(h.cluster.node('spot-1')?.metadata.labels.team).toBe('infra');
    expect(h.cluster.node('spot-1')?.metadata.labels.pool).toBe('spot');
    const remove = await alice.post('/api/batch', {
      operation: 'label_remove',
      key: 'team',
      nodes: ['worker-1'],
    });
    await waitForTask(alice, remove.body.taskId);
    expect(h.cluster.node('worker-1')?.metadata.labels).not.toHaveProperty('team');
    expect(h.cluster.node('spot-1')?.metadata.labels.team).toBe('infra');
  });

  it('cordons and uncordons', async () => {
    const alice = await login(h.base, 'alice');
    const cordon = await alice.post('/api/batch', { operation: 'cordon', nodes: ['worker-4', 'worker-5'] });
    await waitForTask(alice, cordon.body.taskId);
    expect(h.cluster.node('worker-4')?.spec.unschedulable).toBe(true);
    expect(h.cluster.node('worker-5')?.spec.unschedulable).toBe(true);
    const uncordon = await alice.post('/api/batch', { operation: 'uncordon', nodes: ['worker-4'] });
    await waitForTask(alice, uncordon.body.taskId);
    expect(h.cluster.node('worker-4')?.spec.unschedulable).toBeUndefined();
    expect(h.cluster.node('worker-5')?.spec.unschedulable).toBe(true);
    const nodes = (await alice.get('/api/nodes')).body.nodes as { name: string; unschedulable: boolean }[];
    expect(nodes.find((n) => n.name === 'worker-5')?.unschedulable).toBe(true);
  });

  it('filters the node list with a label selector', async () => {
    const alice = await login(h.base, 'alice');
    const { body } = await alice.get(
      `/api/nodes?labelSelector=${encodeURIComponent('pool in (gpu,spot),!node-role.kubernetes.io/gpu')}`,
    );
    expect(body.nodes.map((n: { name: string }) => n.name)).toEqual(['spot-1', 'spot-2']);
  });
});

describe('conflicts and failures', () => {
  it('retries a conflict caused by a concurrent change and keeps that change (no lost update)', async () => {
    let injected = 0;
    h = await startHarness({
      cluster: {
        onRequest: ({ method, node }) => {
          // Another client labels the node between our read and our patch, once per node.
          if (
            method === 'PATCH' &&
            node !== undefined &&
            injected < 2 &&
            !h.cluster.node(node)?.metadata.labels.concurrent
          ) {
            injected++;
            h.cluster.mutate(node, (n) => {
              n.metadata.labels.concurrent = 'yes';
              n.spec.taints = [...(n.spec.taints ?? []), { key: 'other', effect: 'PreferNoSchedule' }];
            });
          }
        },
      },
    });
    const alice = await login(h.base, 'alice');
    const { body } = await alice.post('/api/batch', {
      operation: 'taint_add',
      key: 'mine',
      effect: 'NoSchedule',
      nodes: ['worker-1', 'worker-2'],
    });
    const { task, items } = await waitForTask(alice, body.taskId);
    expect(injected).toBe(2);
    expect(task).toMatchObject({ status: 'completed', succeeded: 2, failed: 0 });
    for (const name of ['worker-1', 'worker-2']) {
      expect(byKey(items)[name]?.detail).toMatchObject({ outcome: 'changed', conflicts: 1 });
      const node = h.cluster.node(name);
      expect(node?.metadata.labels.concurrent).toBe('yes');
      expect(node?.spec.taints).toEqual([
        { key: 'other', effect: 'PreferNoSchedule' },
        { key: 'mine', effect: 'NoSchedule' },
      ]);
    }
  });

  it('gives up on a node that keeps changing after the bounded retries; the others succeed', async () => {
    let patches = 0;
    h = await startHarness({
      cluster: {
        onRequest: ({ method, node }) => {
          if (method === 'PATCH' && node === 'worker-2') {
            patches++;
            h.cluster.mutate('worker-2', (n) => {
              n.metadata.annotations.churn = String(patches);
            });
          }
        },
      },
      app: { maxAttempts: 3 },
    });
    const alice = await login(h.base, 'alice');
    const { body } = await alice.post('/api/batch', {
      operation: 'cordon',
      nodes: ['worker-1', 'worker-2', 'worker-3'],
    });
    const { task, items } = await waitForTask(alice, body.taskId);
    expect(task).toMatchObject({ status: 'completed', succeeded: 2, failed: 1 });
    expect(patches).toBe(3);
    expect(byKey(items)['worker-2']).toMatchObject({ ok: false });
    expect(byKey(items)['worker-2']?.error).toMatch(/conflict.*3 attempts/);
    expect(h.cluster.node('worker-2')?.spec.unschedulable).toBeUndefined();
    expect(h.cluster.node('worker-3')?.spec.unschedulable).toBe(true);
  });

  it('completes with the failed nodes and their reasons when some patches fail', async () => {
    h = await startHarness({ cluster: { failNodes: ['worker-2', 'worker-5'] } });
    const alice = await login(h.base, 'alice');
    const nodes = ['worker-1', 'worker-2', 'worker-3', 'worker-4', 'worker-5'];
    const { body } = await alice.post('/api/batch', { operation: 'label_add', key: 'x', value: 'y', nodes });
    const { task, items } = await waitForTask(alice, body.taskId);
    expect(task).toMatchObject({
      status: 'completed',
      total: 5,
      done: 5,
      succeeded: 3,
      failed: 2,
      result: { succeeded: 3, failed: 2 },
    });
    const results = byKey(items);
    for (const name of ['worker-2', 'worker-5']) {
      expect(results[name]?.ok).toBe(false);
      expect(results[name]?.error).toMatch(
        /^500 InternalError: .*injected failure patching node "worker-[25]"/,
      );
      expect(h.cluster.node(name)?.metadata.labels).not.toHaveProperty('x');
    }
    for (const name of ['worker-1', 'worker-3', 'worker-4']) expect(results[name]?.ok).toBe(true);
  });

  it('ends failed when every node fails; the seeded failure rate is reproducible', async () => {
    h = await startHarness({ cluster: { failureRate: 1 } });
    const alice = await login(h.base, 'alice');
    const { body } = await alice.post('/api/batch', { operation: 'cordon', nodes: ['worker-1', 'worker-2'] });
    const { task } = await waitForTask(alice, body.taskId);
    expect(task.status).toBe('failed');
    expect(task.error?.code).toBe('all_items_failed');
    await h.close();

    const failedWith = async (seed: number) => {
      h = await startHarness({ cluster: { failureRate: 0.5, seed }, app: { concurrency: 1 } });
      const user = await login(h.base, 'alice');
      const nodes = ['worker-1', 'worker-2', 'worker-3', 'worker-4', 'worker-5', 'worker-6', 'worker-7'];
      const started = await user.post('/api/batch', { operation: 'cordon', nodes });
      const { items } = await waitForTask(user, started.body.taskId);
      await h.close();
      return items
        .filter((e) => !e.item.ok)
        .map((e) => e.item.key)
        .sort();
    };
    const a = await failedWith(7);
    const b = await failedWith(7);
    expect(a).toEqual(b);
    expect(a.length).toBeGreaterThan(0);
    expect(a.length).toBeLessThan(7);
    h = await startHarness();
  });
});

describe('cancel', () => {
  it('cancels a running batch through the Finishline HTTP API (with the CSRF token); the rest is not touched', async () => {
    let release: (() => void) | undefined;
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    h = await startHarness({
      // worker-2's read waits until the test has cancelled, so the batch is surely running then.
      cluster: {
        onRequest: ({ method, node }) => (method === 'GET' && node === 'worker-2' ? gate : undefined),
      },
      app: { concurrency: 1 },
    });
    const alice = await login(h.base, 'alice');
    const { body } = await alice.post('/api/batch', {
      operation: 'cordon',
      nodes: ['worker-1', 'worker-2', 'worker-3'],
    });
    const bob = await login(h.base, 'bob');
    expect((await bob.post(`/progress/tasks/${body.taskId}/cancel`, {})).status).not.toBe(200);
    const cancel = await alice.post(`/progress/tasks/${body.taskId}/cancel`, { reason: 'changed my mind' });
    expect(cancel.status).toBe(200);
    release?.();
    const { task } = await waitForTask(alice, body.taskId);
    expect(task.status).toBe('cancelled');
    expect(h.cluster.node('worker-3')?.spec.unschedulable).toBeUndefined();
  });

  it.each([
    ['a forged attribution, kept only as a quoted note', { reason: 'cancelled by bob' }, undefined],
    ['no note', {}, undefined],
  ])('names who cancelled from the session, not from the body: %s', async (_case, body, headers) => {
    // Until 5 December 2026 the browser sent the whole reason ("cancelled by <user>") and the task ended
    // with it as given: any user could write "cancelled by someone-else".
    let release: (() => void) | undefined;
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    h = await startHarness({
      cluster: {
        onRequest: ({ method, node }) => (method === 'GET' && node === 'worker-2' ? gate : undefined),
      },
      app: { concurrency: 1 },
    });
    const alice = await login(h.base, 'alice');
    const started = await alice.post('/api/batch', { operation: 'cordon', nodes: ['worker-1', 'worker-2'] });
    // An admin cancels alice's batch: the attribution is the admin's.
    const ada = await login(h.base, 'ada');
    const cancel = await ada.post(`/progress/tasks/${started.body.taskId}/cancel`, body, headers);
    expect(cancel.status).toBe(200);
    release?.();
    const { task } = await waitForTask(alice, started.body.taskId);
    expect(task.status).toBe('cancelled');
    expect(task.error?.message).toBe(
      'reason' in body ? 'cancelled by ada, note: "cancelled by bob"' : 'cancelled by ada',
    );
  });

  it('refuses a note that is not a string, before the cancel', async () => {
    h = await startHarness();
    const alice = await login(h.base, 'alice');
    const started = await alice.post('/api/batch', { operation: 'cordon', nodes: ['worker-1'] });
    const cancel = await alice.post(`/progress/tasks/${started.body.taskId}/cancel`, { reason: 42 });
    expect(cancel.status).toBe(400);
  });
});

describe('validation: 400 before any node is touched', () => {
  beforeEach(async () => {
    h = await startHarness();
  });

  const cases: [string, Record<string, unknown>, RegExp][] = [
    ['empty selection', { operation: 'cordon', nodes: [] }, /select at least one node/],
    ['missing selection', { operation: 'cordon' }, /select at least one node/],
    [
      'unknown node',
      { operation: 'cordon', nodes: ['worker-1', 'no-such-node'] },
      /unknown node: no-such-node/,
    ],
    [
      'invalid node name, saying why',
      { operation: 'cordon', nodes: ['Worker_1'] },
      /invalid node name "Worker_1": must be a lowercase DNS-1123 subdomain/,
    ],
    [
      'node name too long, saying why',
      { operation: 'cordon', nodes: ['a'.repeat(254)] },
      /invalid node name "a+": must be 1 to 253 characters/,
    ],
    [
      'invalid taint key',
      { operation: 'taint_add', key: 'bad key', effect: 'NoSchedule', nodes: ['worker-1'] },
      /invalid taint key/,
    ],
    [
      'taint key with bad prefix',
      { operation: 'taint_add', key: 'Example.com/x', effect: 'NoSchedule', nodes: ['worker-1'] },
      /prefix part/,
    ],
    [
      'taint key too long',
      { operation: 'taint_add', key: 'k'.repeat(64), effect: 'NoSchedule', nodes: ['worker-1'] },
      /63 characters/,
    ],
    ['missing effect', { operation: 'taint_add', key: 'k', nodes: ['worker-1'] }, /effect is required/],
    [
      'invalid effect',
      { operation: 'taint_add', key: 'k', effect: 'NoRun', nodes: ['worker-1'] },
      /effect must be one of/,
    ],
    [
      'invalid taint value',
      { operation: 'taint_add', key: 'k', value: 'a b', effect: 'NoSchedule', nodes: ['worker-1'] },
      /invalid taint value/,
    ],
    [
      'invalid label value',
      { operation: 'label_add', key: 'k', value: '-x', nodes: ['worker-1'] },
      /invalid label value/,
    ],
    [
      'invalid label key',
      { operation: 'label_remove', key: 'a/b/c', nodes: ['worker-1'] },
      /invalid label key/,
    ],
    ['unknown operation', { operation: 'reboot', nodes: ['worker-1'] }, /operation must be one of/],
    // A review on 7 December 2026: the cluster was quoted with String(), which throws for an object whose
    // toString is not a function: the request was answered 500 `internal` and logged as a server error.
    [
      'cluster that is an object without a callable toString',
      { cluster: { toString: 1 }, operation: 'cordon', nodes: ['worker-1'] },
      /unknown cluster: \{"toString":1\}/,
    ],
  ];

  it.each(cases)('%s', async (_name, request, message) => {
    const alice = await login(h.base, 'alice');
    const before = h.cluster.nodes().map((n) => n.metadata.resourceVersion);
    const { status, body } = await alice.post('/api/batch', request);
    expect(status).toBe(400);
    expect(body.error.message).toMatch(message);
    expect(h.cluster.nodes().map((n) => n.metadata.resourceVersion)).toEqual(before);
    expect((await alice.get('/progress/tasks')).body.tasks).toEqual([]);
  });

  it('refuses a body that is not JSON', async () => {
    const alice = await login(h.base, 'alice');
    const res = await fetch(`${h.base}/api/batch`, {
      method: 'POST',
      headers: { cookie: alice.cookie, 'x-csrf-token': alice.csrf, 'content-type': 'application/json' },
      body: '{"operation":',
    });
    expect(res.status).toBe(400);
    expect(((await res.json()) as any).error.code).toBe('invalid_json');
  });
});

describe('authentication, CSRF and per-user tasks', () => {
  beforeEach(async () => {
    h = await startHarness();
  });

  it('refuses wrong passwords and requests without a session', async () => {
    const bad = await postLogin(h.base, 'alice', 'bob');
    expect(bad.status).toBe(401);
    expect(bad.headers.get('set-cookie')).toBeNull();
    expect((await fetch(`${h.base}/api/nodes`)).status).toBe(401);
    expect((await fetch(`${h.base}/progress/tasks`)).status).toBe(401);
    const anonymous = await fetch(`${h.base}/api/batch`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ operation: 'cordon', nodes: ['worker-1'] }),
    });
    expect(anonymous.status).toBe(401);
  });

  it('sets an HttpOnly SameSite cookie, Secure only behind https', async () => {
    const res = await postLogin(h.base, 'alice', 'alice');
    const cookie = res.headers.get('set-cookie') ?? '';
    expect(cookie).toMatch(/HttpOnly/);
    expect(cookie).toMatch(/SameSite=Lax/);
    expect(cookie).not.toMatch(/Secure/);
    await h.close();
    h = await startHarness({ app: { trustProxy: true } });
    const https = await postLogin(h.base, 'alice', 'alice', { 'x-forwarded-proto': 'https' });
    expect(https.headers.get('set-cookie')).toMatch(/; Secure/);
  });

  it('rejects a tampered cookie', async () => {
    const alice = await login(h.base, 'alice');
    const [payload, mac] = alice.cookie.split('=')[1]?.split('.') ?? [];
    // Alice's own cookie, as sent here, is accepted: the refusal below is the signature's.
    const own = await fetch(`${h.base}/api/nodes`, { headers: { cookie: `knm_session=${payload}.${mac}` } });
    expect(own.status).toBe(200);
    // Her session (its sid active on the server) claimed for bob: only the signature tells it apart. A forged
    // sid alone was refused as an unknown session, and the test passed with no signature check at all.
    const session = JSON.parse(Buffer.from(payload ?? '', 'base64url').toString('utf8'));
    const forged = Buffer.from(JSON.stringify({ ...session, username: 'bob' })).toString('base64url');
    const res = await fetch(`${h.base}/api/nodes`, { headers: { cookie: `knm_session=${forged}.${mac}` } });
    expect(res.status).toBe(401);
  });

  it('requires the CSRF token, JSON and an allowed Origin on state-changing requests', async () => {
    const alice = await login(h.base, 'alice');
    const bob = await login(h.base, 'bob');
    const request = { operation: 'cordon', nodes: ['worker-1'] };
    expect((await alice.post('/api/batch', request, { 'x-csrf-token': '' })).status).toBe(403);
    expect((await alice.post('/api/batch', request, { 'x-csrf-token': bob.csrf })).status).toBe(403);
    expect((await alice.post('/api/batch', request, { origin: 'https://evil.example' })).status).toBe(403);
    // Same host and port, another scheme: another origin (the page served over plain http cannot be it).
    const https = h.base.replace(/^http:/, 'https:');
    expect((await alice.post('/api/batch', request, { origin: https })).status).toBe(403);
    const form = await fetch(`${h.base}/api/batch`, {
      method: 'POST',
      headers: {
        cookie: alice.cookie,
        'x-csrf-token': alice.csrf,
        'content-type': 'application/x-www-form-urlencoded',
      },
      body: 'operation=cordon&nodes=worker-1',
    });
    expect(form.status).toBe(415);
    expect(h.cluster.node('worker-1')?.spec.unschedulable).toBeUndefined();
    const ok = await alice.post('/api/batch', request, { origin: h.base });
    expect(ok.status).toBe(202);
    await waitForTask(alice, ok.body.taskId);
    // Cancel through the Finishline HTTP API needs the token too. From an allowed Origin: without one the
    // library refuses the request (403 forbidden) before the app's check, which then went untested.
    const cancel = await fetch(`${h.base}/progress/tasks/${ok.body.taskId}/cancel`, {
      method: 'POST',
      headers: { cookie: alice.cookie, origin: h.base, 'content-type': 'application/json' },
      body: '{}',
    });
    expect(cancel.status).toBe(403);
    expect(((await cancel.json()) as any).error.code).toBe('csrf');
  });

  it('never shows a user another user’s tasks (HTTP and WebSocket)', async () => {
    const alice = await login(h.base, 'alice');
    const bob = await login(h.base, 'bob');
    const { body } = await alice.post('/api/batch', { operation: 'cordon', nodes: ['worker-1'] });
    await waitForTask(alice, body.taskId);
    expect((await alice.get('/progress/tasks')).body.tasks.map((t: { id: string }) => t.id)).toEqual([
      body.taskId,
    ]);
    expect((await bob.get('/progress/tasks')).body.tasks).toEqual([]);
    const peek = await bob.get(`/progress/tasks/${body.taskId}`);
    expect([403, 404]).toContain(peek.status);
    expect(JSON.stringify(peek.body)).not.toContain('worker-1');
    expect((await bob.get(`/progress/tasks/${body.taskId}/events?afterSeq=0`)).status).toBe(peek.status);
  });

  it('authenticates the WebSocket upgrade with the session cookie and checks its Origin', async () => {
    const alice = await login(h.base, 'alice');
    expect(await upgradeStatus(h.base, {})).toBe(401);
    expect(await upgradeStatus(h.base, { cookie: 'knm_session=garbage.x' })).toBe(401);
    expect(await upgradeStatus(h.base, { cookie: alice.cookie, origin: h.base })).toBe(101);
    expect(await upgradeStatus(h.base, { cookie: alice.cookie, origin: 'https://evil.example' })).toBe(403);
  });

  it('behind a TLS proxy (--trust-proxy), same-origin takes the https pages on the WebSocket and /progress too', async () => {
    await h.close();
    h = await startHarness({ app: { trustProxy: true } });
    // Signed in over https (its cookie is `__Host-knm_session`), as every request below is.
    const alice = await login(h.base, 'alice', 'alice', { 'x-forwarded-proto': 'https' });
    // What the proxy passes on: the page's https Origin, its Host, and X-Forwarded-Proto.
    const page = { origin: h.base.replace(/^http:/, 'https:'), 'x-forwarded-proto': 'https' };
    const started = await alice.post('/api/batch', { operation: 'cordon', nodes: ['worker-1'] }, page);
    expect(started.status).toBe(202);
    // Before, the library's own same-origin check (the socket's scheme, never the proxy's) refused the
    // upgrade with 403, which the client takes as fatal: no progress at all behind the documented ingress.
    expect(await upgradeStatus(h.base, { cookie: alice.cookie, ...page })).toBe(101);
    const cancel = await alice.post(`/progress/tasks/${started.body.taskId}/cancel`, {}, page);
    expect(cancel.status).not.toBe(403);
    // The proxy's word is the scheme's only when it is trusted: an http page is another origin there.
    expect(
      await upgradeStatus(h.base, { cookie: alice.cookie, origin: h.base, 'x-forwarded-proto': 'https' }),
    ).toBe(403);
    await waitForTask(alice, started.body.taskId);
  });
});
