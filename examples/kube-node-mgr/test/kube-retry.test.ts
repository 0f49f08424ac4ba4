/**
 * A node's read–modify–write against an API server that sheds load: API Priority and Fairness answers 429
 * with `Retry-After` (and an overloaded server 5xx with `Retry-After`), which client-go (kubectl) waits out
 * and retries. The request is not the node's fault; failing the node on it fails batches under load.
 */
import { describe, expect, it } from 'vitest';
import type { KubeNodes } from '../src/server/kube-nodes.js';
import { applyToNode } from '../src/server/node-worker.js';
import { failure, useKubeApi } from './fake-kube-api.js';

const api = useKubeApi();

const node = (unschedulable: boolean) => ({
  apiVersion: 'v1',
  kind: 'Node',
  metadata: { name: 'n1', resourceVersion: unschedulable ? '2' : '1', labels: {} },
  spec: unschedulable ? { unschedulable: true } : {},
});

/** An API server whose first `refusals` PATCHes of node n1 are answered `status` (with `headers`). */
async function apiServer(refusals: number, status: number, headers: Record<string, string>) {
  const patches: number[] = [];
  const { nodes } = await api.start(({ method, send }) => {
    if (method === 'GET') return send(200, node(false));
    patches.push(patches.length + 1);
    if (patches.length <= refusals) {
      const reason = status === 429 ? 'TooManyRequests' : 'InternalError';
      const message = 'the server has received too many requests and has asked us to try again later';
      return send(status, failure(status, reason, message), headers);
    }
    send(200, node(true));
  });
  return { nodes, patches };
}

/** Cordons node n1 through `nodes`, trying at most `maxAttempts` times. */
const cordon = (nodes: KubeNodes, maxAttempts: number) =>
  applyToNode(nodes, 'n1', { type: 'cordon' }, { maxAttempts, signal: new AbortController().signal });

describe('a node patch refused for load', () => {
  it('is retried after a 429 with Retry-After, and the node succeeds', async () => {
    const { nodes, patches } = await apiServer(2, 429, { 'retry-after': '0' });
    const result = await cordon(nodes, 5);
    expect(result.outcome).toBe('changed');
    expect(patches).toHaveLength(3);
  });

  it('is retried after a 503 with Retry-After too', async () => {
    const { nodes, patches } = await apiServer(1, 503, { 'retry-after': '0' });
    const result = await cordon(nodes, 5);
    expect(result.outcome).toBe('changed');
    expect(patches).toHaveLength(2);
  });

  it('fails the node after maxAttempts refusals, and at once on a 500 without Retry-After (a real error)', async () => {
    const refusing = await apiServer(10, 429, { 'retry-after': '0' });
    await expect(cordon(refusing.nodes, 3)).rejects.toThrow(/429 TooManyRequests/);
    expect(refusing.patches).toHaveLength(3);
    await api.close();
    const failing = await apiServer(10, 500, {});
    await expect(cordon(failing.nodes, 3)).rejects.toThrow(/500 InternalError/);
    expect(failing.patches).toHaveLength(1);
  });
});
