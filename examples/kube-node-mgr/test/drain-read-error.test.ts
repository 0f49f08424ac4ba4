/**
 * A drain whose read of an evicted pod fails (a 500, a timeout) while it waits for the pod to terminate
 * failed its node with the API's bare message ("etcdserver: leader changed"): nothing said which pod, nor
 * that it had been evicted already, so the operator could not tell a node left untouched from one half
 * drained. The reason now names the pod and what was being done.
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

const pod = {
  apiVersion: 'v1',
  kind: 'Pod',
  metadata: {
    name: 'web-1',
    namespace: 'shop',
    uid: 'u1',
    ownerReferences: [
      { apiVersion: 'apps/v1', kind: 'ReplicaSet', name: 'web', uid: 'rs', controller: true },
    ],
  },
  spec: { nodeName: 'n1' },
  status: { phase: 'Running' },
};

/** A cordoned node n1 running shop/web-1, whose evictions are accepted and whose pod reads fail with 500. */
async function apiServer() {
  const srv = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      const send = (code: number, body: unknown) => {
        res.writeHead(code, { 'content-type': 'application/json' });
        res.end(JSON.stringify(body));
      };
      const path = new URL(req.url ?? '/', 'http://x').pathname;
      if (req.method === 'POST') return send(201, { kind: 'Status', apiVersion: 'v1', status: 'Success' });
      if (path === '/api/v1/nodes/n1') {
        return send(200, {
          apiVersion: 'v1',
          kind: 'Node',
          metadata: { name: 'n1', resourceVersion: '1' },
          spec: { unschedulable: true },
        });
      }
      if (path === '/api/v1/pods')
        return send(200, { kind: 'PodList', apiVersion: 'v1', metadata: {}, items: [pod] });
      return send(500, {
        kind: 'Status',
        apiVersion: 'v1',
        status: 'Failure',
        reason: 'InternalError',
        code: 500,
        message: 'etcdserver: leader changed',
      });
    });
  });
  server = srv;
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', () => resolve()));
  return `http://127.0.0.1:${(srv.address() as AddressInfo).port}`;
}

describe('a drain whose pod read fails after the eviction', () => {
  it('fails the node naming the pod, evicted already, and the API error', async () => {
    const url = await apiServer();
    const nodes = new KubeNodes(loadKubeConfig({ type: 'server', url }));
    const drained = drainNode(nodes, 'n1', {
      maxAttempts: 2,
      signal: new AbortController().signal,
      pollMs: 10,
    });
    await expect(drained).rejects.toThrow(
      'shop/web-1 was evicted, but reading it while waiting for it to terminate failed: 500 InternalError: etcdserver: leader changed',
    );
  });
});
