// biome-ignore-all lint/suspicious/noExplicitAny: JSON bodies of API responses, checked by the assertions.
/**
 * Drain (issue 15 item 4): the demo cluster's pods, DaemonSets, PodDisruptionBudgets and Eviction API —
 * enough for the real `kubectl drain` — and the app's batch drain with each node's evictions in its
 * item's progress.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { type Harness, login, startHarness, waitForTask } from './harness.js';

let h: Harness;
afterEach(async () => {
  await h?.close();
});

const KUBECTL = process.env.KUBECTL_PATH ?? '/usr/bin/kubectl';

function kubectl(server: string, args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(
      KUBECTL,
      [`--server=${server}`, ...args],
      { env: { ...process.env, KUBECONFIG: '/dev/null' }, timeout: 60_000 },
      (error, stdout, stderr) => {
        resolve({ code: error ? ((error as { code?: number }).code ?? 1) : 0, out: `${stdout}${stderr}` });
      },
    );
  });
}

const kinds = (pods: { metadata: { ownerReferences: { kind: string }[] } }[]) =>
  [...new Set(pods.map((p) => p.metadata.ownerReferences[0]?.kind))].sort();

describe('the demo cluster can be drained', () => {
  it('has DaemonSet pods on every node and Deployment pods on the workers', async () => {
    h = await startHarness();
    expect(kinds(h.cluster.pods('cp-1'))).toEqual(['DaemonSet']);
    expect(kinds(h.cluster.pods('worker-1'))).toEqual(['DaemonSet', 'ReplicaSet']);
    const pdbs = (await (await fetch(`${h.cluster.url}/apis/policy/v1/poddisruptionbudgets`)).json()) as any;
    expect(pdbs.items.map((p: any) => `${p.metadata.namespace}/${p.metadata.name}`)).toEqual([
      'shop/web',
      'shop/api',
    ]);
    expect(pdbs.items[0].status).toMatchObject({
      currentHealthy: 4,
      desiredHealthy: 3,
      disruptionsAllowed: 1,
    });
  });

  it('refuses an eviction that would break a PodDisruptionBudget with 429, allows it once a replacement is ready', async () => {
    h = await startHarness({ cluster: { podTerminationMs: 20, podReadyMs: 300 } });
    const web = ['worker-1', 'worker-2', 'worker-3', 'worker-4'].flatMap((n) =>
      h.cluster.pods(n).filter((p) => p.metadata.labels.app === 'web'),
    );
    expect(web.length).toBe(4);
    const evict = (pod: (typeof web)[number]) =>
      fetch(`${h.cluster.url}/api/v1/namespaces/shop/pods/${pod.metadata.name}/eviction`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({
          apiVersion: 'policy/v1',
          kind: 'Eviction',
          metadata: { name: pod.metadata.name },
        }),
      });
    expect((await evict(web[0] as (typeof web)[number])).status).toBe(201);
    const refused = await evict(web[1] as (typeof web)[number]);
    expect(refused.status).toBe(429);
    expect(((await refused.json()) as any).message).toContain('disruption budget');
    await new Promise((r) => setTimeout(r, 500));
    expect((await evict(web[1] as (typeof web)[number])).status).toBe(201);
  });

  it.skipIf(!existsSync(KUBECTL))('works with the real kubectl drain', async () => {
    h = await startHarness({ cluster: { podTerminationMs: 50, podReadyMs: 200 } });
    const before = h.cluster.pods('worker-2').length;
    const { code, out } = await kubectl(h.cluster.url, [
      'drain',
      'worker-2',
      '--ignore-daemonsets',
      '--timeout=60s',
    ]);
    expect(out).toMatch(/node\/worker-2 drained/);
    expect(code).toBe(0);
    expect(out).toMatch(/Warning: ignoring DaemonSet-managed Pods/);
    expect(h.cluster.node('worker-2')?.spec.unschedulable).toBe(true);
    const left = h.cluster.pods('worker-2');
    expect(kinds(left)).toEqual(['DaemonSet']);
    expect(left.length).toBeLessThan(before);
  });
});

describe('batch drain', () => {
  it('cordons and drains each node, honouring the budgets, with per-node eviction progress', async () => {
    // Budget refusals retried every 0.2 s, not kubectl's 5 s: the replacements here are ready in 0.15 s.
    h = await startHarness({
      cluster: { podTerminationMs: 20, podReadyMs: 150 },
      app: { evictionRetryMs: 200 },
    });
    const alice = await login(h.base, 'alice');
    const nodes = ['worker-1', 'worker-2', 'worker-3', 'worker-4'];
    const { status, body } = await alice.post('/api/batch', {
      operation: 'drain',
      nodes,
      reason: 'rotate AMIs',
    });
    expect(status).toBe(202);
    const { task, items } = await waitForTask(alice, body.taskId);
    expect(task).toMatchObject({ status: 'completed', kind: 'batch_drain', succeeded: 4, failed: 0 });
    for (const name of nodes) {
      expect(h.cluster.node(name)?.spec.unschedulable).toBe(true);
      expect(kinds(h.cluster.pods(name))).toEqual(['DaemonSet']);
      const item = items.find((e: any) => e.item.key === name).item;
      expect(item.detail.evicted.length).toBeGreaterThan(0);
      expect(item.detail.skipped).toEqual([
        `kube-system/kube-proxy-${name}`,
        `monitoring/node-exporter-${name}`,
      ]);
    }
    // The web pods (a budget of 3 of 4) all moved to other workers.
    const web = ['worker-5', 'worker-6', 'worker-7'].flatMap((n) =>
      h.cluster.pods(n).filter((p) => p.metadata.labels.app === 'web'),
    );
    expect(web.length).toBe(4);
    const log = (await alice.get(`/progress/tasks/${body.taskId}/events?afterSeq=0&limit=1000`)).body.events;
    const currents = log.filter((e: any) => e.type === 'progress').map((e: any) => e.progress.current);
    expect(currents).toContainEqual(expect.stringMatching(/^worker-\d: evicted \d of \d pods$/));
    const node = (await alice.get('/api/nodes')).body.nodes.find((n: any) => n.name === 'worker-1');
    expect(node.cordon).toMatchObject({ reason: 'rotate AMIs', by: 'alice' });
  });

  it('cordons every node of the batch before evicting anything, so no pod is evicted twice', async () => {
    // One node at a time: the nodes not reached yet are exactly where the first node's pods could go.
    h = await startHarness({
      cluster: { podTerminationMs: 20, podReadyMs: 100 },
      app: { evictionRetryMs: 100, concurrency: 1 },
    });
    const alice = await login(h.base, 'alice');
    const nodes = ['worker-1', 'worker-2', 'worker-3'];
    const movable = nodes.flatMap((n) =>
      h.cluster
        .pods(n)
        .filter((p) => p.metadata.ownerReferences[0]?.kind !== 'DaemonSet')
        .map((p) => `${p.metadata.namespace}/${p.metadata.name}`),
    );
    expect(movable.length).toBeGreaterThan(0);
    const { body } = await alice.post('/api/batch', { operation: 'drain', nodes, reason: 'pool rotation' });
    const { task, items } = await waitForTask(alice, body.taskId);
    expect(task).toMatchObject({ status: 'completed', succeeded: 3, failed: 0 });
    // As `kubectl drain worker-1 worker-2 worker-3`: the pods there at the start, each evicted once; none
    // moved onto a node of the batch and was evicted from it again.
    const evicted = items.flatMap((e: any) => e.item.detail.evicted as string[]);
    expect(evicted.sort()).toEqual(movable.sort());
    for (const e of items) expect(e.item.detail.outcome).toBe('changed');
    const notes = (await alice.get('/api/nodes')).body.nodes.filter((n: any) => nodes.includes(n.name));
    for (const n of notes) expect(n.cordon).toMatchObject({ reason: 'pool rotation', by: 'alice' });
  });
});
