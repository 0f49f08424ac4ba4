/**
 * A drain whose read of an evicted pod fails (a 500, a timeout) while it waits for the pod to terminate
 * failed its node with the API's bare message ("etcdserver: leader changed"): nothing said which pod, nor
 * that it had been evicted already, so the operator could not tell a node left untouched from one half
 * drained. The reason now names the pod and what was being done.
 */
import { describe, expect, it } from 'vitest';
import { drainNode } from '../src/server/node-drain.js';
import { cordonedN1, evictionAccepted, failure, podList, podOnN1, useKubeApi } from './fake-kube-api.js';

const api = useKubeApi();

/** A cordoned node n1 running shop/web-1, whose evictions are accepted and whose pod reads fail with 500. */
const apiServer = () =>
  api.start(({ method, path, send }) => {
    if (method === 'POST') return send(201, evictionAccepted);
    if (path === '/api/v1/nodes/n1') return send(200, cordonedN1);
    if (path === '/api/v1/pods') return send(200, podList([podOnN1('web-1', { uid: 'u1' })]));
    return send(500, failure(500, 'InternalError', 'etcdserver: leader changed'));
  });

describe('a drain whose pod read fails after the eviction', () => {
  it('fails the node naming the pod, evicted already, and the API error', async () => {
    const { nodes } = await apiServer();
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
