/**
 * A drain of a node running a pod with an emptyDir volume: its data is deleted with the pod, and
 * `kubectl drain --ignore-daemonsets`, which the README says the drain does, refuses the node unless told
 * `--delete-emptydir-data`. The example evicted such pods without a word.
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

const owner = [{ apiVersion: 'apps/v1', kind: 'ReplicaSet', name: 'rs', uid: 'rs', controller: true }];
const pod = (name: string, volumes: unknown[], phase = 'Running') => ({
  apiVersion: 'v1',
  kind: 'Pod',
  metadata: { name, namespace: 'shop', uid: name, ownerReferences: owner },
  spec: { nodeName: 'n1', volumes },
  status: { phase },
});

/** An API server of one cordoned node running `pods`; evictions are counted, every pod then reads as gone. */
async function apiServer(pods: unknown[]) {
  const evicted: string[] = [];
  server = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      const send = (code: number, body: unknown) => {
        res.writeHead(code, { 'content-type': 'application/json' });
        res.end(JSON.stringify(body));
      };
      const path = new URL(req.url ?? '/', 'http://x').pathname;
      if (req.method === 'POST') {
        evicted.push(path.split('/')[6] ?? '');
        return send(201, { kind: 'Status', apiVersion: 'v1', status: 'Success', code: 201 });
      }
      if (path === '/api/v1/nodes/n1') {
        return send(200, {
          apiVersion: 'v1',
          kind: 'Node',
          metadata: { name: 'n1', resourceVersion: '1' },
          spec: { unschedulable: true },
        });
      }
      if (path === '/api/v1/pods')
        return send(200, { kind: 'PodList', apiVersion: 'v1', metadata: {}, items: pods });
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
  return { nodes: new KubeNodes(loadKubeConfig({ type: 'server', url })), evicted };
}

const options = () => ({ maxAttempts: 1, signal: new AbortController().signal, pollMs: 10 });

describe('drain of a node with a pod using an emptyDir volume', () => {
  it('fails the node naming the pod and the data it would lose, before any eviction', async () => {
    const { nodes, evicted } = await apiServer([
      pod('web-1', [{ name: 'config', configMap: { name: 'web' } }]),
      pod('cache-1', [{ name: 'scratch', emptyDir: {} }]),
    ]);
    await expect(drainNode(nodes, 'n1', options())).rejects.toThrow(
      /shop\/cache-1.*emptyDir.*--delete-emptydir-data/,
    );
    expect(evicted).toEqual([]);
  });

  it('still drains it once that pod has finished (its data is of no use to anyone)', async () => {
    const { nodes, evicted } = await apiServer([
      pod('job-1', [{ name: 'scratch', emptyDir: {} }], 'Succeeded'),
    ]);
    expect((await drainNode(nodes, 'n1', options())).evicted).toEqual(['shop/job-1']);
    expect(evicted).toEqual(['job-1']);
  });
});
