/**
 * A drain against an API server that sheds load. API Priority and Fairness answers any request — the pod
 * list and the pod reads a drain polls, not only evictions — with 429 and `Retry-After`, which client-go
 * (kubectl) waits out and retries. Failing the node on it failed drains of a busy cluster.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { KubeApiError, type KubeNodes, type PodRef } from '../src/server/kube-nodes.js';
import { drainNode } from '../src/server/node-drain.js';
import { cordonedN1, evictionAccepted, failure, podList, podOnN1, useKubeApi } from './fake-kube-api.js';

const api = useKubeApi();
const pod = podOnN1('web-1', { uid: 'u1' });

/** An API server that sheds the first request of each kind (pod list, pod read) with 429 and Retry-After 0. */
async function sheddingServer() {
  const seen = new Map<string, number>();
  let evicted = false;
  const { nodes } = await api.start(({ method, path, send }) => {
    const kind =
      method === 'POST'
        ? 'evict'
        : path === '/api/v1/pods'
          ? 'list'
          : path.includes('/pods/')
            ? 'read'
            : 'node';
    const count = (seen.get(kind) ?? 0) + 1;
    seen.set(kind, count);
    if ((kind === 'list' || kind === 'read') && count === 1) {
      return send(429, failure(429, 'TooManyRequests', 'too many requests'), { 'retry-after': '0' });
    }
    if (kind === 'node') return send(200, cordonedN1);
    if (kind === 'list') return send(200, podList(evicted ? [] : [pod]));
    if (kind === 'evict') {
      evicted = true;
      return send(201, evictionAccepted);
    }
    send(404, failure(404, 'NotFound', 'gone'));
  });
  return { nodes, seen };
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

/**
 * A PodDisruptionBudget's refusal (429 without Retry-After) was retried every 0.5 s per pod: a drain of a
 * few nodes with many guarded pods sent the API server several evictions a second for minutes. kubectl drain
 * waits 5 s between attempts.
 */
describe('an eviction refused by a PodDisruptionBudget', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  const guarded: PodRef = {
    namespace: 'shop',
    name: 'web-1',
    uid: 'u1',
    controller: 'ReplicaSet',
    mirror: false,
    terminating: false,
    finished: false,
    emptyDir: false,
  };
  const nodesRefusing = (refusals: KubeApiError[], attempts: number[]) =>
    ({
      get: async () => ({ name: 'w1', resourceVersion: '1', labels: {}, taints: [], unschedulable: true }),
      podsOn: async () => [guarded],
      pod: async () => null,
      evict: async () => {
        attempts.push(Date.now());
        const refusal = refusals.shift();
        if (refusal !== undefined) throw refusal;
      },
    }) as unknown as KubeNodes;

  it('is tried again after 5 s, as kubectl drain does, not sooner', async () => {
    vi.useFakeTimers();
    const attempts: number[] = [];
    const budget = new KubeApiError(
      429,
      'TooManyRequests',
      "Cannot evict pod as it would violate the pod's disruption budget.",
    );
    const drained = drainNode(nodesRefusing([budget], attempts), 'w1', {
      maxAttempts: 5,
      signal: new AbortController().signal,
    });
    await vi.advanceTimersByTimeAsync(4900);
    expect(attempts).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(200);
    expect(attempts).toHaveLength(2);
    await vi.runAllTimersAsync();
    expect((await drained).evicted).toEqual(['shop/web-1']);
  });

  it("waits the server's Retry-After when it sends one (at most 30 s)", async () => {
    vi.useFakeTimers();
    const attempts: number[] = [];
    const refusals = [
      new KubeApiError(429, 'TooManyRequests', 'the budget is still being processed', 10),
      new KubeApiError(429, 'TooManyRequests', 'too many requests', 3600),
    ];
    const drained = drainNode(nodesRefusing(refusals, attempts), 'w1', {
      maxAttempts: 5,
      signal: new AbortController().signal,
    });
    await vi.advanceTimersByTimeAsync(40_000);
    const gaps = attempts.slice(1).map((at, i) => at - (attempts[i] as number));
    expect(gaps).toEqual([10_000, 30_000]);
    await vi.runAllTimersAsync();
    expect((await drained).evicted).toEqual(['shop/web-1']);
  });

  /**
   * The wait for an evicted pod to terminate counted from the eviction's first attempt: a pod the budget held
   * for 115 s of the 120 had 5 s left for its grace period, and its node failed ("did not terminate in time").
   */
  it('gives the evicted pod its own time limit to terminate, however long the budget held it', async () => {
    vi.useFakeTimers();
    const budget = new KubeApiError(
      429,
      'TooManyRequests',
      "Cannot evict pod as it would violate the pod's disruption budget.",
    );
    const refusals = Array.from({ length: 23 }, () => budget); // 23 × 5 s: accepted after 115 s
    let acceptedAt = Number.POSITIVE_INFINITY;
    const nodes = {
      get: async () => ({ name: 'w1', resourceVersion: '1', labels: {}, taints: [], unschedulable: true }),
      podsOn: async () => [guarded],
      // Terminating for 10 s after its eviction (a grace period), then gone.
      pod: async () => (Date.now() < acceptedAt + 10_000 ? { ...guarded, terminating: true } : null),
      evict: async () => {
        const refusal = refusals.shift();
        if (refusal !== undefined) throw refusal;
        acceptedAt = Date.now();
      },
    } as unknown as KubeNodes;
    const drained = drainNode(nodes, 'w1', { maxAttempts: 5, signal: new AbortController().signal });
    const settled = drained.catch((e: unknown) => e);
    await vi.advanceTimersByTimeAsync(130_000);
    await expect(settled).resolves.toMatchObject({ evicted: ['shop/web-1'] });
  });

  it('fails the node when an evicted pod stays Terminating (a finalizer never removed) past the time limit', async () => {
    vi.useFakeTimers();
    const nodes = {
      get: async () => ({ name: 'w1', resourceVersion: '1', labels: {}, taints: [], unschedulable: true }),
      podsOn: async () => [guarded],
      pod: async () => ({ ...guarded, terminating: true }),
      evict: async () => {},
    } as unknown as KubeNodes;
    const drained = drainNode(nodes, 'w1', { maxAttempts: 5, signal: new AbortController().signal });
    const settled = drained.catch((e: unknown) => e);
    await vi.advanceTimersByTimeAsync(119_000);
    let done = false;
    void settled.then(() => {
      done = true;
    });
    await vi.advanceTimersByTimeAsync(0);
    expect(done).toBe(false); // still waiting within the limit
    await vi.advanceTimersByTimeAsync(2_000);
    expect(await settled).toMatchObject({
      message:
        'shop/web-1 was evicted but did not terminate in time; w1 is left cordoned; the 1 pod to move was evicted (shop/web-1): uncordon it, or retry the drain',
    });
  });
});
