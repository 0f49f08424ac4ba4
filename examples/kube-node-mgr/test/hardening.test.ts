// biome-ignore-all lint/suspicious/noExplicitAny: JSON bodies of API responses, checked by the assertions.
import { afterEach, describe, expect, it } from 'vitest';
import { KubeApiError, type KubeNodes, type PodRef } from '../src/server/kube-nodes.js';
import { drainNode } from '../src/server/node-drain.js';
import { type Harness, login, postLogin, startHarness, waitForTask } from './harness.js';

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Defects a review found on 3 December 2026, each test failing before its fix: a malformed task id in a
 * cancel crashed the process, a failed drain kept evicting, parallel guesses got past the login throttle,
 * and label keys named like Object.prototype members were read as present.
 */
describe('hardening of the example', () => {
  it('a cancel with a malformed percent-encoded task id is answered, not an unhandled rejection (process crash)', async () => {
    h = await startHarness();
    const viewer = await login(h.base, 'victor');
    const rejections: unknown[] = [];
    const onRejection = (reason: unknown) => rejections.push(reason);
    process.on('unhandledRejection', onRejection);
    try {
      const answer = await Promise.race([
        fetch(`${h.base}/progress/tasks/%E0%A4%A/cancel`, {
          method: 'POST',
          headers: {
            cookie: viewer.cookie,
            origin: h.base,
            'content-type': 'application/json',
            'x-csrf-token': viewer.csrf,
          },
          body: '{}',
        }).then((r) => r.status),
        sleep(2000).then(() => 'no answer in 2 s'),
      ]);
      await sleep(50);
      expect(rejections.map(String)).toEqual([]);
      // The server refuses an id that is not valid percent-encoding as a bad request (docs/protocol.md).
      expect(answer).toBe(400);
    } finally {
      process.off('unhandledRejection', onRejection);
    }
  });

  it("a drain whose node failed (one eviction refused) stops evicting the node's other pods", async () => {
    const evictions: { pod: string; at: number }[] = [];
    let calls = 0;
    const pod = (name: string): PodRef => ({
      namespace: 'shop',
      name,
      uid: name,
      controller: 'ReplicaSet',
      mirror: false,
      terminating: false,
      finished: false,
      emptyDir: false,
    });
    const nodes = {
      get: async () => ({ name: 'w1', resourceVersion: '1', labels: {}, taints: [], unschedulable: true }),
      mergePatch: async () => {
        throw new Error('not expected');
      },
      podsOn: async () => [pod('broken'), pod('guarded')],
      pod: async () => null,
      evict: async (_ns: string, name: string) => {
        evictions.push({ pod: name, at: Date.now() });
        if (name === 'broken') throw new KubeApiError(500, 'InternalError', 'etcd timeout');
        // A PodDisruptionBudget refuses the other pod for a while.
        if (++calls < 20) throw new KubeApiError(429, 'TooManyRequests', 'would violate the budget');
      },
    } as unknown as KubeNodes;
    const failedAt = await drainNode(nodes, 'w1', {
      maxAttempts: 1,
      signal: new AbortController().signal,
      pollMs: 10,
    }).then(
      () => -1,
      () => Date.now(),
    );
    expect(failedAt).toBeGreaterThan(0);
    await sleep(300);
    // The node was reported failed; no eviction should be sent to it afterwards.
    const after = evictions.filter((e) => e.at > failedAt).length;
    expect(after).toBe(0);
  });

  it('the login throttle holds against guesses sent in parallel, as one after another', async () => {
    h = await startHarness({
      app: { loginThrottle: { accountFreeFailures: 2, addressFreeFailures: 1000, baseDelayMs: 60_000 } },
    });
    const base = h.base;
    // 30 wrong guesses and the right password, all sent at once.
    const guesses = [...Array.from({ length: 30 }, (_, i) => `wrong-${i}`), 'alice'];
    const statuses = await Promise.all(guesses.map((p) => postLogin(base, 'alice', p).then((r) => r.status)));
    const hashedGuesses = statuses.filter((s) => s !== 429).length;
    // Sequentially the throttle lets 3 failures through, then 429s: the 31 guesses may not all be tried.
    expect({ hashedGuesses, rightPassword: statuses.at(-1) }).toEqual({
      hashedGuesses: 3,
      rightPassword: 429,
    });
  });

  it('removing a label the node does not have, named like an Object.prototype member, is "unchanged"', async () => {
    h = await startHarness();
    const alice = await login(h.base, 'alice');
    const started = await alice.post('/api/batch', {
      operation: 'label_remove',
      key: 'constructor',
      nodes: ['worker-1'],
    });
    expect(started.status).toBe(202);
    const { items } = await waitForTask(alice, started.body.taskId);
    expect(items.map((e: any) => [e.item.ok, e.item.detail?.outcome, e.item.error])).toEqual([
      [true, 'unchanged', null],
    ]);
  });
});

/**
 * A review on 5 December 2026: a drain evicted pods that no controller recreates (bare pods), which are
 * then gone for good; `kubectl drain --ignore-daemonsets`, which the README says it does, refuses the node
 * without `--force`.
 */
describe('drain of a node with a pod no controller recreates', () => {
  const pod = (name: string, controller: string | null, finished = false, terminating = false): PodRef => ({
    namespace: 'ops',
    name,
    uid: name,
    controller,
    mirror: false,
    terminating,
    finished,
    emptyDir: false,
  });
  const nodesWith = (pods: PodRef[], evicted: string[]) =>
    ({
      get: async () => ({ name: 'w1', resourceVersion: '1', labels: {}, taints: [], unschedulable: true }),
      mergePatch: async () => {
        throw new Error('not expected');
      },
      podsOn: async () => pods,
      pod: async () => null,
      evict: async (_ns: string, name: string) => {
        evicted.push(name);
      },
    }) as unknown as KubeNodes;

  it('fails the node naming the pod, before any eviction', async () => {
    const evicted: string[] = [];
    const nodes = nodesWith([pod('web-1', 'ReplicaSet'), pod('debug-shell', null)], evicted);
    await expect(
      drainNode(nodes, 'w1', { maxAttempts: 1, signal: new AbortController().signal, pollMs: 10 }),
    ).rejects.toThrow(/ops\/debug-shell.*no controller/);
    expect(evicted).toEqual([]);
  });

  it('still drains a node whose pod without a controller has finished or is being deleted (nothing is lost)', async () => {
    const evicted: string[] = [];
    const nodes = nodesWith(
      [pod('web-1', 'ReplicaSet'), pod('one-off', null, true), pod('leaving', null, false, true)],
      evicted,
    );
    const result = await drainNode(nodes, 'w1', {
      maxAttempts: 1,
      signal: new AbortController().signal,
      pollMs: 10,
    });
    expect(result.evicted).toEqual(['ops/leaving', 'ops/one-off', 'ops/web-1']);
  });
});
