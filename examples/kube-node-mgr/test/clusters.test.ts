// biome-ignore-all lint/suspicious/noExplicitAny: JSON bodies of API responses, checked by the assertions.
/**
 * Several clusters (kubeconfig contexts): the demo serves `demo` and `demo-east`; nodes, batches, node
 * locks, cordon notes and the task list are per cluster; an unknown cluster is a 400 naming the known ones;
 * every context of a kubeconfig file is a cluster, `--context` the default. Also the audit events of
 * sign-ins, sign-outs and cancels.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { clustersOfKubeConfig } from '../src/server/clusters.js';
import { loadConfig } from '../src/server/config.js';
import { type DemoClusters, startDemoClusters } from '../src/server/demo-clusters.js';
import { loadKubeConfig } from '../src/server/kube-nodes.js';
import { type Harness, login, startHarness, waitForTask } from './harness.js';

let h: Harness | undefined;
let demos: DemoClusters | undefined;
afterEach(async () => {
  await h?.close();
  await demos?.close();
  h = undefined;
  demos = undefined;
});

async function twoClusters(options: { latencyMs?: number } = {}): Promise<Harness> {
  demos = await startDemoClusters(2, 0, options);
  const clusters = clustersOfKubeConfig(
    loadKubeConfig({ type: 'servers', servers: demos.clusters.map(({ name, url }) => ({ name, url })) }),
  );
  return startHarness({ app: { clusters } });
}

const names = (body: any) => body.nodes.map((n: any) => n.name);

describe('several clusters', () => {
  it('lists the clusters and the nodes of the one asked for, the default without a name', async () => {
    h = await twoClusters();
    const alice = await login(h.base, 'alice');
    expect((await alice.get('/api/clusters')).body.clusters).toEqual([
      { name: 'demo', default: true },
      { name: 'demo-east', default: false },
    ]);
    const main = names((await alice.get('/api/nodes')).body);
    const east = names((await alice.get('/api/nodes?cluster=demo-east')).body);
    expect(main).toContain('worker-7');
    expect(east).toContain('worker-5');
    expect(east).not.toContain('worker-6');
    expect(names((await alice.get('/api/nodes?cluster=demo')).body)).toEqual(main);
    const unknown = await alice.get('/api/nodes?cluster=prod');
    expect(unknown.status).toBe(400);
    expect(unknown.body.error).toMatchObject({ code: 'unknown_cluster', clusters: ['demo', 'demo-east'] });
    const batch = await alice.post('/api/batch', {
      cluster: 'prod',
      operation: 'cordon',
      nodes: ['worker-1'],
    });
    expect(batch.status).toBe(400);
    expect(batch.body.error.code).toBe('unknown_cluster');
    // A node only the other cluster has is unknown here.
    const other = await alice.post('/api/batch', {
      cluster: 'demo-east',
      operation: 'cordon',
      nodes: ['worker-7'],
    });
    expect(other.status).toBe(400);
    expect(other.body.error.code).toBe('unknown_nodes');
  });

  it('changes the cluster named, keeps locks, cordon notes and tasks per cluster', async () => {
    h = await twoClusters({ latencyMs: 300 });
    const alice = await login(h.base, 'alice');
    const bob = await login(h.base, 'bob');
    const east = demos?.clusters[1]?.cluster;
    const main = demos?.clusters[0]?.cluster;
    const a = await alice.post('/api/batch', {
      cluster: 'demo-east',
      operation: 'cordon',
      reason: 'east kernel',
      nodes: ['worker-1', 'worker-2', 'worker-3', 'worker-4', 'worker-5'],
    });
    expect(a.status).toBe(202);
    // The same cluster's worker-1 is locked while alice's batch runs…
    const c = await bob.post('/api/batch', {
      cluster: 'demo-east',
      operation: 'uncordon',
      nodes: ['worker-1'],
    });
    expect(c.status).toBe(409);
    expect(c.body.error.message).toContain(`(task ${a.body.taskId} by alice)`);
    // …but worker-1 of the other cluster is another node, free.
    const b = await bob.post('/api/batch', {
      operation: 'label_add',
      key: 'k',
      value: 'v',
      nodes: ['worker-1'],
    });
    expect(b.status).toBe(202);
    expect((await alice.get(`/progress/tasks/${a.body.taskId}`)).body.task.status).toBe('running');
    expect((await waitForTask(alice, a.body.taskId)).task.status).toBe('completed');
    await waitForTask(bob, b.body.taskId);
    expect(east?.node('worker-1')?.spec.unschedulable).toBe(true);
    expect(main?.node('worker-1')?.spec.unschedulable).not.toBe(true);
    expect(main?.node('worker-1')?.metadata.labels?.k).toBe('v');
    expect(east?.node('worker-1')?.metadata.labels?.k).toBeUndefined();
    // The cordon note is shown in its cluster only.
    const eastNodes = (await alice.get('/api/nodes?cluster=demo-east')).body.nodes;
    expect(eastNodes.find((n: any) => n.name === 'worker-1').cordon).toMatchObject({ reason: 'east kernel' });
    const mainNodes = (await alice.get('/api/nodes')).body.nodes;
    expect(mainNodes.find((n: any) => n.name === 'worker-1').cordon).toBeNull();
    // The task list filtered by cluster, each entry naming its cluster.
    const ada = await login(h.base, 'ada');
    const eastTasks = (await ada.get('/api/tasks?cluster=demo-east')).body.tasks;
    expect(eastTasks.map((t: any) => [t.id, t.cluster])).toEqual([[a.body.taskId, 'demo-east']]);
    const all = (await ada.get('/api/tasks')).body.tasks;
    expect(all.map((t: any) => t.cluster).sort()).toEqual(['demo', 'demo-east']);
    const record = (await alice.get(`/api/tasks/${a.body.taskId}`)).body.task;
    expect(record.cluster).toBe('demo-east');
  });
});

describe('clusters from configuration', () => {
  it('makes every context of a kubeconfig a cluster, --context the default', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'knm-kubeconfig-'));
    try {
      const file = path.join(dir, 'config');
      writeFileSync(
        file,
        JSON.stringify({
          apiVersion: 'v1',
          kind: 'Config',
          clusters: [
            { name: 'a', cluster: { server: 'https://a.example:6443' } },
            { name: 'b', cluster: { server: 'https://b.example:6443' } },
          ],
          users: [{ name: 'u', user: { token: 't' } }],
          contexts: [
            { name: 'prod', context: { cluster: 'a', user: 'u' } },
            { name: 'staging', context: { cluster: 'b', user: 'u' } },
          ],
          'current-context': 'prod',
        }),
      );
      const kc = loadKubeConfig({ type: 'kubeconfig', path: file, context: undefined });
      expect(clustersOfKubeConfig(kc).map((c) => [c.name, c.nodes.server])).toEqual([
        ['prod', 'https://a.example:6443'],
        ['staging', 'https://b.example:6443'],
      ]);
      expect(clustersOfKubeConfig(kc, 'staging').map((c) => c.name)).toEqual(['staging', 'prod']);
      expect(() => clustersOfKubeConfig(kc, 'nope')).toThrow(/no context "nope"/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('reads NAME=URL lists from --kube-server and the demo cluster count', () => {
    const config = loadConfig(
      ['--kube-server', 'east=http://127.0.0.1:1,west=http://127.0.0.1:2', '--demo-clusters', '1'],
      {},
      '/tmp',
      '/tmp/web',
    );
    expect(config).toMatchObject({
      kube: {
        type: 'servers',
        servers: [
          { name: 'east', url: 'http://127.0.0.1:1' },
          { name: 'west', url: 'http://127.0.0.1:2' },
        ],
      },
      demo: { clusters: 1 },
    });
    expect(() => loadConfig(['--kube-server', 'east=ftp://x'], {}, '/tmp', '/tmp/web')).toThrow(/NAME=URL/);
    expect(() => loadConfig(['--demo-clusters', '3'], {}, '/tmp', '/tmp/web')).toThrow(/--demo-clusters/);
  });
});

describe('audit events', () => {
  it('records sign-ins, sign-outs and accepted cancels; operators see their own', async () => {
    h = await startHarness({ cluster: { latencyMs: 200 } });
    const alice = await login(h.base, 'alice');
    const bob = await login(h.base, 'bob');
    const started = await alice.post('/api/batch', {
      operation: 'cordon',
      nodes: ['worker-1', 'worker-2', 'worker-3'],
    });
    // Bob may not cancel alice's task: no audit entry for a refused cancel.
    expect((await bob.post(`/progress/tasks/${started.body.taskId}/cancel`, {})).status).toBe(404);
    expect((await alice.post(`/progress/tasks/${started.body.taskId}/cancel`, {})).status).toBeLessThan(300);
    await waitForTask(alice, started.body.taskId);
    await bob.post('/api/logout', {});
    const ada = await login(h.base, 'ada');
    const events = (await ada.get('/api/audit-events')).body.events.map(
      (e: any) => `${e.username} ${e.action}${e.taskId ? ` ${e.taskId}` : ''}`,
    );
    expect(events).toEqual([
      'ada login',
      'bob logout',
      `alice cancel ${started.body.taskId}`,
      'bob login',
      'alice login',
    ]);
    const own = (await alice.get('/api/audit-events')).body.events.map((e: any) => e.action);
    expect(own).toEqual(['cancel', 'login']);
  });
});
