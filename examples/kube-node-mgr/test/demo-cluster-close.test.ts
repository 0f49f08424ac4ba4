import { describe, expect, it } from 'vitest';
import { DemoCluster } from '../src/server/demo-cluster.js';

const LATENCY_MS = 300;
const timeouts = () => process.getActiveResourcesInfo().filter((kind) => kind === 'Timeout').length;

describe('demo cluster close', () => {
  // The simulated latency (150 ms by default in the app) was a bare setTimeout: closed while calls were in
  // flight, the cluster kept their timers (a not unref'd one each, holding the process up), and once they fired
  // the calls went on against the closed cluster: a patch was applied, an eviction scheduled a pod's end.
  it('closed while calls wait out their latency: no timer left, and no call applied after close', async () => {
    let reached!: () => void;
    const handled = new Promise<void>((resolve) => {
      reached = resolve;
    });
    const cluster = new DemoCluster({ latencyMs: LATENCY_MS, onRequest: () => reached() });
    const base = await cluster.listen(0);
    const before = timeouts();
    const labelsBefore = cluster.node('worker-1')?.metadata.labels;
    const call = fetch(`${base}/api/v1/nodes/worker-1`, {
      method: 'PATCH',
      headers: { 'content-type': 'application/merge-patch+json' },
      body: JSON.stringify({ metadata: { labels: { late: 'yes' } } }),
    }).then(
      (res) => res.status,
      () => 'cut' as const,
    );
    await handled;
    await new Promise((resolve) => setImmediate(resolve)); // the latency's wait has begun
    await cluster.close();
    expect(timeouts()).toBeLessThanOrEqual(before);
    expect(await call).toBe('cut');
    await new Promise((resolve) => setTimeout(resolve, LATENCY_MS + 100));
    expect(cluster.node('worker-1')?.metadata.labels).toEqual(labelsBefore);
  });

  it('an eviction still waiting out its latency at close does not evict the pod (no workload timer after close)', async () => {
    let reached!: () => void;
    const handled = new Promise<void>((resolve) => {
      reached = resolve;
    });
    const cluster = new DemoCluster({ latencyMs: LATENCY_MS, onRequest: () => reached() });
    const base = await cluster.listen(0);
    const pod = cluster.pods('worker-1').find((p) => p.metadata.labels.app === 'reports');
    if (pod === undefined) throw new Error('no reports pod on worker-1');
    const call = fetch(`${base}/api/v1/namespaces/batch/pods/${pod.metadata.name}/eviction`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        apiVersion: 'policy/v1',
        kind: 'Eviction',
        metadata: { name: pod.metadata.name },
      }),
    }).then(
      (res) => res.status,
      () => 'cut' as const,
    );
    await handled;
    await new Promise((resolve) => setImmediate(resolve));
    await cluster.close();
    expect(await call).toBe('cut');
    await new Promise((resolve) => setTimeout(resolve, LATENCY_MS + 100));
    const after = cluster.pods('worker-1').find((p) => p.metadata.name === pod.metadata.name);
    expect(after?.metadata.deletionTimestamp).toBeUndefined();
  });
});
