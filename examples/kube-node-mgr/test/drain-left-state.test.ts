/**
 * A drain that fails past its cordon does not leave its node untouched: the node stays cordoned, and pods
 * whose eviction landed (another pod's, accepted as one failed) are gone. The node's reason named only
 * what failed ("evicting shop/a: 500 …") and the page said it "could not be changed", so the operator was
 * not told that the node was left cordoned and half drained. The reason now says what the node was left as.
 */
import { LIMITS } from '@finishline/core';
import { describe, expect, it } from 'vitest';
import { drainNode, leftState } from '../src/server/node-drain.js';
import { cordonedN1, evictionAccepted, failure, podList, podOnN1, useKubeApi } from './fake-kube-api.js';

const api = useKubeApi();

const options = () => ({ maxAttempts: 1, signal: new AbortController().signal, pollMs: 10 });

describe('the reason of a drain that failed past its cordon', () => {
  it('says the node is left cordoned and names the pods evicted before the failure', async () => {
    // shop/b's eviction is accepted (the pod then reads as gone); shop/a's fails after it, with a 500.
    const { nodes } = await api.start(({ path, send }) => {
      if (path === '/api/v1/namespaces/shop/pods/b/eviction') return send(201, evictionAccepted);
      if (path === '/api/v1/namespaces/shop/pods/a/eviction') {
        setTimeout(() => send(500, failure(500, 'InternalError', 'etcdserver: leader changed')), 100);
        return;
      }
      if (path === '/api/v1/nodes/n1') return send(200, cordonedN1);
      if (path === '/api/v1/pods') return send(200, podList([podOnN1('a'), podOnN1('b'), podOnN1('c')]));
      if (path === '/api/v1/namespaces/shop/pods/b') return send(404, failure(404, 'NotFound', 'gone'));
      if (path === '/api/v1/namespaces/shop/pods/c/eviction') return send(201, evictionAccepted);
      return send(200, podOnN1(path.split('/').at(-1) ?? ''));
    });
    await expect(drainNode(nodes, 'n1', options())).rejects.toThrow(
      'evicting shop/a: 500 InternalError: etcdserver: leader changed; n1 is left cordoned; 2 of the 3 pods to move were evicted (shop/b, shop/c): uncordon it, or retry the drain',
    );
  });

  it('says the node is left cordoned when the drain refuses it before any eviction', async () => {
    const { nodes } = await api.start(({ path, send }) => {
      if (path === '/api/v1/nodes/n1') return send(200, cordonedN1);
      if (path === '/api/v1/pods')
        return send(
          200,
          podList([{ ...podOnN1('bare'), metadata: { name: 'bare', namespace: 'shop', uid: 'bare' } }]),
        );
      return send(500, failure(500, 'InternalError', 'not expected'));
    });
    await expect(drainNode(nodes, 'n1', options())).rejects.toThrow(
      /declares no controller.*; n1 is left cordoned; no pod was evicted: uncordon it, or retry the drain$/,
    );
  });

  it("says so when the batch's first pass cordoned the node and the node's own read then failed", async () => {
    const { nodes } = await api.start(({ send }) =>
      send(500, failure(500, 'InternalError', 'etcdserver: leader changed')),
    );
    await expect(drainNode(nodes, 'n1', { ...options(), cordoned: true })).rejects.toThrow(
      '500 InternalError: etcdserver: leader changed; n1 is left cordoned; no pod was evicted',
    );
    // Not cordoned by anyone: the node failed untouched, and its reason says nothing more.
    await expect(drainNode(nodes, 'n1', options())).rejects.toThrow(
      /^500 InternalError: etcdserver: leader changed$/,
    );
  });

  it('names five of the pods it refuses the node for, so the reason keeps what the node was left as', async () => {
    // A CI node running 150 bare pods: naming them all made the reason ~10,000 characters, which the item's
    // 4,096-character limit cut, taking off its end: "n1 is left cordoned; …: uncordon it, or retry".
    const bare = Array.from({ length: 150 }, (_, i) => {
      const name = `build-${String(i).padStart(3, '0')}-runner-for-a-pipeline-with-a-long-name`;
      return { ...podOnN1(name), metadata: { name, namespace: 'ci', uid: name } };
    });
    const { nodes } = await api.start(({ path, send }) => {
      if (path === '/api/v1/nodes/n1') return send(200, cordonedN1);
      if (path === '/api/v1/pods') return send(200, podList(bare));
      return send(500, failure(500, 'InternalError', 'not expected'));
    });
    const reason = await drainNode(nodes, 'n1', options()).then(
      () => '',
      (error: Error) => error.message,
    );
    expect(reason.length).toBeLessThanOrEqual(LIMITS.maxMessageLength);
    expect(reason).toMatch(
      /^cannot drain n1: ci\/build-000-\S+, (ci\/\S+, ){3}ci\/build-004-\S+ and 145 more declare no controller/,
    );
    expect(reason).toMatch(/; n1 is left cordoned; no pod was evicted: uncordon it, or retry the drain$/);
  });

  it('counts the pods beyond the first five instead of naming them all', () => {
    const sent = ['s/p1', 's/p2', 's/p3', 's/p4', 's/p5', 's/p6', 's/p7'];
    expect(leftState('w1', sent, 9)).toBe(
      'w1 is left cordoned; 7 of the 9 pods to move were evicted (s/p1, s/p2, s/p3, s/p4, s/p5 and 2 more): uncordon it, or retry the drain',
    );
    expect(leftState('w1', ['s/p1', 's/p2'], 2)).toBe(
      'w1 is left cordoned; all 2 pods to move were evicted (s/p1, s/p2): uncordon it, or retry the drain',
    );
    expect(leftState('w1', ['s/p1'])).toBe(
      'w1 is left cordoned; 1 pod was evicted (s/p1): uncordon it, or retry the drain',
    );
  });
});
