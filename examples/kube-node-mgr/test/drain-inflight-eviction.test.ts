/**
 * A drain whose first pod fails the node (or whose batch is cancelled) gave up on the node at once, while
 * another pod's eviction was still on its way to the API server: the node's item was reported and the
 * batch released its node locks (see lock-after-cancel.test.ts) before that eviction was answered, so it
 * could land after another batch had taken the node. The node now fails once every eviction it sent has
 * been answered.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { KubeNodes, loadKubeConfig } from '../src/server/kube-nodes.js';
import { drainNode } from '../src/server/node-drain.js';

let server: http.Server | undefined;
afterEach(async () => {
  server?.closeAllConnections();
  await new Promise<void>((resolve) => (server === undefined ? resolve() : server.close(() => resolve())));
  server = undefined;
});

const pod = (name: string) => ({
  apiVersion: 'v1',
  kind: 'Pod',
  metadata: {
    name,
    namespace: 'shop',
    uid: name,
    ownerReferences: [
      { apiVersion: 'apps/v1', kind: 'ReplicaSet', name: 'web', uid: 'rs', controller: true },
    ],
  },
  spec: { nodeName: 'n1' },
  status: { phase: 'Running' },
});

/**
 * A cordoned node n1 running shop/a and shop/b: a's eviction fails at once (500), b's is answered (201)
 * after `slowMs`; `answeredAt` is when.
 */
async function apiServer(slowMs: number) {
  const seen = { answeredAt: 0 };
  const srv = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      const send = (code: number, body: unknown) => {
        res.writeHead(code, { 'content-type': 'application/json' });
        res.end(JSON.stringify(body));
      };
      const path = new URL(req.url ?? '/', 'http://x').pathname;
      if (path === '/api/v1/namespaces/shop/pods/a/eviction') {
        return send(500, {
          kind: 'Status',
          apiVersion: 'v1',
          status: 'Failure',
          reason: 'InternalError',
          code: 500,
          message: 'etcdserver: leader changed',
        });
      }
      if (path === '/api/v1/namespaces/shop/pods/b/eviction') {
        setTimeout(() => {
          seen.answeredAt = Date.now();
          send(201, { kind: 'Status', apiVersion: 'v1', status: 'Success' });
        }, slowMs);
        return;
      }
      if (path === '/api/v1/nodes/n1') {
        return send(200, {
          apiVersion: 'v1',
          kind: 'Node',
          metadata: { name: 'n1', resourceVersion: '1' },
          spec: { unschedulable: true },
        });
      }
      if (path === '/api/v1/pods') {
        return send(200, { kind: 'PodList', apiVersion: 'v1', metadata: {}, items: [pod('a'), pod('b')] });
      }
      return send(200, pod(path.split('/').at(-1) ?? ''));
    });
  });
  server = srv;
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', () => resolve()));
  return { url: `http://127.0.0.1:${(srv.address() as AddressInfo).port}`, seen };
}

describe('a drain that fails while an eviction is on its way', () => {
  it('fails the node only once that eviction was answered', async () => {
    const { url, seen } = await apiServer(400);
    const nodes = new KubeNodes(loadKubeConfig({ type: 'server', url }));
    const drained = drainNode(nodes, 'n1', {
      maxAttempts: 1,
      signal: new AbortController().signal,
      pollMs: 10,
    });
    await expect(drained).rejects.toThrow('evicting shop/a: 500 InternalError: etcdserver: leader changed');
    expect(seen.answeredAt).toBeGreaterThan(0);
  });
});
