/**
 * A drain against an API server that sheds load. API Priority and Fairness answers any request — the pod
 * list and the pod reads a drain polls, not only evictions — with 429 and `Retry-After`, which client-go
 * (kubectl) waits out and retries. Failing the node on it failed drains of a busy cluster.
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

/** An API server that sheds the first request of each kind (pod list, pod read) with 429 and Retry-After 0. */
async function sheddingServer() {
  const seen = new Map<string, number>();
  let evicted = false;
  server = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      const send = (code: number, body: unknown, extra: Record<string, string> = {}) => {
        res.writeHead(code, { 'content-type': 'application/json', ...extra });
        res.end(JSON.stringify(body));
      };
      const url = new URL(req.url ?? '/', 'http://x');
      const kind =
        req.method === 'POST'
          ? 'evict'
          : url.pathname === '/api/v1/pods'
            ? 'list'
            : url.pathname.includes('/pods/')
              ? 'read'
              : 'node';
      const count = (seen.get(kind) ?? 0) + 1;
      seen.set(kind, count);
      if ((kind === 'list' || kind === 'read') && count === 1) {
        return send(
          429,
          {
            kind: 'Status',
            apiVersion: 'v1',
            status: 'Failure',
            message: 'too many requests',
            reason: 'TooManyRequests',
            code: 429,
          },
          { 'retry-after': '0' },
        );
      }
      if (kind === 'node') {
        return send(200, {
          apiVersion: 'v1',
          kind: 'Node',
          metadata: { name: 'n1', resourceVersion: '1' },
          spec: { unschedulable: true },
        });
      }
      if (kind === 'list')
        return send(200, { kind: 'PodList', apiVersion: 'v1', metadata: {}, items: evicted ? [] : [pod] });
      if (kind === 'evict') {
        evicted = true;
        return send(201, { kind: 'Status', apiVersion: 'v1', status: 'Success', code: 201 });
      }
      send(404, {
        kind: 'Status',
        apiVersion: 'v1',
        status: 'Failure',
        reason: 'NotFound',
        code: 404,
        message: 'gone',
      });
    });
  });
  await new Promise<void>((resolve) => server?.listen(0, '127.0.0.1', () => resolve()));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return { nodes: new KubeNodes(loadKubeConfig({ type: 'server', url })), seen };
}

describe('a drain under API load shedding', () => {
  it('waits out a 429 with Retry-After on the pod list and on the pod reads, and drains the node', async () => {
    const { nodes, seen } = await sheddingServer();
    const result = await drainNode(nodes, 'n1', {
      maxAttempts: 5,
      signal: new AbortController().signal,
      pollMs: 10,
    });
    expect(result.evicted).toEqual(['shop/web-1']);
    expect({ list: seen.get('list'), read: seen.get('read') }).toEqual({ list: 2, read: 2 });
  });
});
