// biome-ignore-all lint/suspicious/noExplicitAny: JSON bodies of API requests and responses, checked by the assertions.
/**
 * An eviction that runs out of time (`KUBE_TIMEOUT_MS`) was never sent again and failed its node: a retry
 * could have evicted a pod a StatefulSet recreated under the same name since. Evictions now carry the listed
 * pod's uid as `deleteOptions.preconditions.uid` — the API server answers 409 Conflict for a pod of that name
 * with another uid (404 once no pod has the name) — and a timed-out one is sent again within `maxAttempts`.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { MemoryProgressStore } from '@finishline/core';
import { afterEach, describe, expect, it } from 'vitest';
import { createApp } from '../src/server/app.js';
import { DemoCluster } from '../src/server/demo-cluster.js';
import { KubeNodes, loadKubeConfig } from '../src/server/kube-nodes.js';
import { drainNode } from '../src/server/node-drain.js';

let server: http.Server | undefined;
afterEach(async () => {
  server?.closeAllConnections();
  await new Promise<void>((resolve) => (server === undefined ? resolve() : server.close(() => resolve())));
  server = undefined;
});

const podOf = (uid: string, nodeName: string) => ({
  apiVersion: 'v1',
  kind: 'Pod',
  metadata: {
    name: 'db-0',
    namespace: 'shop',
    uid,
    ownerReferences: [
      { apiVersion: 'apps/v1', kind: 'StatefulSet', name: 'db', uid: 'sts', controller: true },
    ],
  },
  spec: { nodeName },
  status: { phase: 'Running' },
});

const failure = (code: number, reason: string, message: string) => ({
  kind: 'Status',
  apiVersion: 'v1',
  status: 'Failure',
  reason,
  code,
  message,
});

/**
 * One StatefulSet pod `shop/db-0` (uid `u1`) on node n1. The first eviction is never answered: `landed`,
 * it did evict the pod, which the StatefulSet recreates at once on n2 (uid `u2`); else it was lost. Later
 * evictions check their uid precondition as the API server does — after the budget (`guarded`: the
 * recreated pod's budget refuses, 429) — and `stalled` leaves every eviction unanswered.
 */
async function apiServer(mode: { landed: boolean; guarded?: boolean; stalled?: boolean }) {
  let current: ReturnType<typeof podOf> | null = podOf('u1', 'n1');
  const evictions: (string | undefined)[] = [];
  server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const send = (code: number, body: unknown) => {
        res.writeHead(code, { 'content-type': 'application/json' });
        res.end(JSON.stringify(body));
      };
      const url = new URL(req.url ?? '/', 'http://x');
      if (req.method === 'POST') {
        const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as any;
        const uid: string | undefined = body.deleteOptions?.preconditions?.uid;
        evictions.push(uid);
        if (evictions.length === 1 || mode.stalled) {
          if (mode.landed) current = podOf('u2', 'n2');
          return; // held open, unanswered
        }
        if (current === null) return send(404, failure(404, 'NotFound', 'pods "db-0" not found'));
        if (mode.guarded) return send(429, failure(429, 'TooManyRequests', 'Cannot evict pod'));
        if (uid !== undefined && uid !== current.metadata.uid)
          return send(409, failure(409, 'Conflict', 'the UID in the precondition does not match'));
        current = null;
        return send(201, { kind: 'Status', apiVersion: 'v1', status: 'Success', code: 201 });
      }
      if (url.pathname === '/api/v1/pods') {
        const items = current !== null && current.spec.nodeName === 'n1' ? [current] : [];
        return send(200, { kind: 'PodList', apiVersion: 'v1', metadata: {}, items });
      }
      if (url.pathname === '/api/v1/namespaces/shop/pods/db-0')
        return current === null ? send(404, failure(404, 'NotFound', 'gone')) : send(200, current);
      send(200, {
        apiVersion: 'v1',
        kind: 'Node',
        metadata: { name: 'n1', resourceVersion: '1' },
        spec: { unschedulable: true },
      });
    });
  });
  await new Promise<void>((resolve) => server?.listen(0, '127.0.0.1', () => resolve()));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const nodes = new KubeNodes(loadKubeConfig({ type: 'server', url }), { requestTimeoutMs: 200 });
  return { nodes, evictions, current: () => current };
}

const options = (extra: Record<string, number> = {}) => ({
  maxAttempts: 3,
  signal: new AbortController().signal,
  pollMs: 10,
  ...extra,
});

describe('an eviction that timed out', () => {
  it('is sent again with the listed pod uid; the 409 for the recreated pod counts the pod evicted', async () => {
    const api = await apiServer({ landed: true });
    const result = await drainNode(api.nodes, 'n1', options());
    expect(result.evicted).toEqual(['shop/db-0']);
    expect(api.evictions).toEqual(['u1', 'u1']);
    expect(api.current()?.metadata.uid).toBe('u2'); // the recreated pod stays
  });

  it('is sent again when it was lost, and evicts the pod', async () => {
    const api = await apiServer({ landed: false });
    const result = await drainNode(api.nodes, 'n1', options());
    expect(result.evicted).toEqual(['shop/db-0']);
    expect(api.evictions).toEqual(['u1', 'u1']);
    expect(api.current()).toBeNull();
  });

  it("counts the pod evicted when the recreated pod's budget refuses the retry (429), without waiting for the budget", async () => {
    const api = await apiServer({ landed: true, guarded: true });
    const result = await drainNode(
      api.nodes,
      'n1',
      options({ evictionTimeoutMs: 2000, evictionRetryMs: 50 }),
    );
    expect(result.evicted).toEqual(['shop/db-0']);
    expect(api.evictions).toEqual(['u1', 'u1']);
  });

  it('fails the node after maxAttempts evictions that all timed out', async () => {
    const api = await apiServer({ landed: false, stalled: true });
    await expect(drainNode(api.nodes, 'n1', options())).rejects.toThrow(
      'evicting shop/db-0: Kubernetes API did not answer within 200 ms',
    );
    expect(api.evictions).toEqual(['u1', 'u1', 'u1']);
  });
});

describe("the demo cluster's eviction with a uid precondition", () => {
  let cluster: DemoCluster | undefined;
  afterEach(async () => {
    await cluster?.close();
    cluster = undefined;
  });

  it('answers 409 Conflict for another uid, 201 for the pod own, 404 once the name is gone', async () => {
    cluster = new DemoCluster({ podTerminationMs: 10_000 });
    const base = await cluster.listen(0);
    const pod = cluster.pods('worker-1').find((p) => p.metadata.labels.app === 'reports');
    expect(pod).toBeDefined();
    const name = pod?.metadata.name ?? '';
    const evict = (uid: string, podName = name) =>
      fetch(`${base}/api/v1/namespaces/batch/pods/${podName}/eviction`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({
          apiVersion: 'policy/v1',
          kind: 'Eviction',
          metadata: { name: podName, namespace: 'batch' },
          deleteOptions: { preconditions: { uid } },
        }),
      });
    const leaving = async () =>
      ((await (await fetch(`${base}/api/v1/namespaces/batch/pods/${name}`)).json()) as any).metadata
        .deletionTimestamp !== undefined;
    const conflict = await evict('another-uid');
    expect(conflict.status).toBe(409);
    expect(await conflict.json()).toMatchObject({ reason: 'Conflict', code: 409 });
    expect(await leaving()).toBe(false); // not evicted
    expect((await evict(pod?.metadata.uid ?? '')).status).toBe(201);
    expect(await leaving()).toBe(true);
    expect((await evict('another-uid')).status).toBe(409); // leaving, still checked
    expect((await evict('u', 'no-such-pod')).status).toBe(404);
  });
});

// Review of 7 December 2026: createApp checked its other options but took any evictionTimeoutMs and
// evictionRetryMs: NaN or 0 retried a refused eviction every millisecond against the API server.
describe('createApp eviction options', () => {
  it('refuses an evictionTimeoutMs or evictionRetryMs that is not a whole number of ms from 1 to 2^31 - 1', () => {
    for (const name of ['evictionTimeoutMs', 'evictionRetryMs'] as const) {
      for (const value of [Number.NaN, -1, 0, 1.5, Number.POSITIVE_INFINITY, 2 ** 31]) {
        expect(() =>
          createApp({
            store: new MemoryProgressStore(),
            sessions: {} as never,
            db: {} as never,
            [name]: value,
          }),
        ).toThrow(new RegExp(`createApp: ${name} must be an integer from 1 to ${2 ** 31 - 1} \\(got `));
      }
    }
  });
});
