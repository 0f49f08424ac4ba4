/**
 * An API server that accepts the connection and never answers (a black-holed connection, a stuck apiserver):
 * `@kubernetes/client-node` sets no timeout, so such a request hung its batch for ever ("processing …"),
 * the node locks held. Every request now has a time limit, and a node's read and patch are repeated after
 * it up to `maxAttempts` times before the node fails with the reason.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { KubeApiError, KubeNodes, loadKubeConfig } from '../src/server/kube-nodes.js';
import { applyToNode } from '../src/server/node-worker.js';

let server: http.Server | undefined;
afterEach(async () => {
  server?.closeAllConnections();
  await new Promise<void>((resolve) => (server === undefined ? resolve() : server.close(() => resolve())));
  server = undefined;
});

/**
 * An API server answering the first `silent` requests never (`headersOnly`: sends the headers, then
 * stalls the body), then the node as asked.
 */
async function apiServer(silent: number, headersOnly = false) {
  const requests: string[] = [];
  server = http.createServer((req, res) => {
    requests.push(req.method ?? '');
    req.resume();
    if (requests.length <= silent) {
      if (headersOnly) res.writeHead(200, { 'content-type': 'application/json' }).write('{"kind":');
      return; // held open, unanswered
    }
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({
          apiVersion: 'v1',
          kind: 'Node',
          metadata: { name: 'n1', resourceVersion: req.method === 'PATCH' ? '2' : '1', labels: {} },
          spec: req.method === 'PATCH' ? { unschedulable: true } : {},
        }),
      );
    });
  });
  await new Promise<void>((resolve) => server?.listen(0, '127.0.0.1', () => resolve()));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return { url, requests };
}

describe('a Kubernetes API that does not answer', () => {
  it('fails a request with a Timeout error once its time limit passes', async () => {
    const { url } = await apiServer(1);
    const nodes = new KubeNodes(loadKubeConfig({ type: 'server', url }), { requestTimeoutMs: 200 });
    const error = await nodes.get('n1').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(KubeApiError);
    expect(error).toMatchObject({ status: 0, reason: 'Timeout' });
    expect((error as Error).message).toBe('Kubernetes API did not answer within 200 ms');
  });

  it('also when the headers came and the body stalls', async () => {
    const { url } = await apiServer(1, true);
    const nodes = new KubeNodes(loadKubeConfig({ type: 'server', url }), { requestTimeoutMs: 200 });
    await expect(nodes.get('n1')).rejects.toMatchObject({ status: 0, reason: 'Timeout' });
  });

  it('repeats a node read and patch that timed out, then fails the node with the reason', async () => {
    const api = await apiServer(1);
    const nodes = new KubeNodes(loadKubeConfig({ type: 'server', url: api.url }), { requestTimeoutMs: 200 });
    const signal = new AbortController().signal;
    const result = await applyToNode(nodes, 'n1', { type: 'cordon' }, { maxAttempts: 3, signal });
    expect(result.outcome).toBe('changed');
    expect(api.requests).toEqual(['GET', 'GET', 'PATCH']);

    const dead = await apiServer(Number.POSITIVE_INFINITY);
    const stuck = new KubeNodes(loadKubeConfig({ type: 'server', url: dead.url }), { requestTimeoutMs: 100 });
    await expect(applyToNode(stuck, 'n1', { type: 'cordon' }, { maxAttempts: 3, signal })).rejects.toThrow(
      'Kubernetes API did not answer within 100 ms',
    );
    expect(dead.requests).toEqual(['GET', 'GET', 'GET']);
  });

  it('refuses a time limit that is not a positive integer', () => {
    const kc = loadKubeConfig({ type: 'server', url: 'http://127.0.0.1:1' });
    expect(() => new KubeNodes(kc, { requestTimeoutMs: 0 })).toThrow(/requestTimeoutMs/);
  });
});
