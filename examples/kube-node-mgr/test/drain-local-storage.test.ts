/**
 * A drain of a node running a pod with an emptyDir volume: its data is deleted with the pod, and
 * `kubectl drain --ignore-daemonsets`, which the README says the drain does, refuses the node unless told
 * `--delete-emptydir-data`. The example evicted such pods without a word.
 */
import { describe, expect, it } from 'vitest';
import { drainNode } from '../src/server/node-drain.js';
import { cordonedN1, evictionAccepted, failure, podList, podOnN1, useKubeApi } from './fake-kube-api.js';

const api = useKubeApi();
const pod = (name: string, volumes: unknown[], phase = 'Running') =>
  podOnN1(name, { owner: { kind: 'ReplicaSet', name: 'rs', uid: 'rs' }, volumes, phase });

/** An API server of one cordoned node running `pods`; evictions are counted, every pod then reads as gone. */
async function apiServer(pods: unknown[]) {
  const evicted: string[] = [];
  const { nodes } = await api.start(({ method, path, send }) => {
    if (method === 'POST') {
      evicted.push(path.split('/')[6] ?? '');
      return send(201, evictionAccepted);
    }
    if (path === '/api/v1/nodes/n1') return send(200, cordonedN1);
    if (path === '/api/v1/pods') return send(200, podList(pods));
    send(404, failure(404, 'NotFound', 'gone'));
  });
  return { nodes, evicted };
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
