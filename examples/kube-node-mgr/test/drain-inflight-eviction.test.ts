/**
 * A drain whose first pod fails the node (or whose batch is cancelled) gave up on the node at once, while
 * another pod's eviction was still on its way to the API server: the node's item was reported and the
 * batch released its node locks (see lock-after-cancel.test.ts) before that eviction was answered, so it
 * could land after another batch had taken the node. The node now fails once every eviction it sent has
 * been answered.
 */
import { describe, expect, it } from 'vitest';
import { drainNode } from '../src/server/node-drain.js';
import { cordonedN1, evictionAccepted, failure, podList, podOnN1, useKubeApi } from './fake-kube-api.js';

const api = useKubeApi();

/**
 * A cordoned node n1 running shop/a and shop/b: a's eviction fails at once (500), b's is answered (201)
 * after `slowMs`; `answeredAt` is when.
 */
async function apiServer(slowMs: number) {
  const seen = { answeredAt: 0 };
  const { nodes } = await api.start(({ path, send }) => {
    if (path === '/api/v1/namespaces/shop/pods/a/eviction') {
      return send(500, failure(500, 'InternalError', 'etcdserver: leader changed'));
    }
    if (path === '/api/v1/namespaces/shop/pods/b/eviction') {
      setTimeout(() => {
        seen.answeredAt = Date.now();
        send(201, evictionAccepted);
      }, slowMs);
      return;
    }
    if (path === '/api/v1/nodes/n1') return send(200, cordonedN1);
    if (path === '/api/v1/pods') return send(200, podList([podOnN1('a'), podOnN1('b')]));
    return send(200, podOnN1(path.split('/').at(-1) ?? ''));
  });
  return { nodes, seen };
}

describe('a drain that fails while an eviction is on its way', () => {
  it('fails the node only once that eviction was answered', async () => {
    const { nodes, seen } = await apiServer(400);
    const drained = drainNode(nodes, 'n1', {
      maxAttempts: 1,
      signal: new AbortController().signal,
      pollMs: 10,
    });
    await expect(drained).rejects.toThrow('evicting shop/a: 500 InternalError: etcdserver: leader changed');
    expect(seen.answeredAt).toBeGreaterThan(0);
  });
});
