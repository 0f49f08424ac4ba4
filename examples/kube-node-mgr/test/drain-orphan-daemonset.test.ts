/**
 * A drain of a node running a pod whose DaemonSet was deleted (an orphan that still names it as its
 * controller): nothing recreates it, and `kubectl drain --ignore-daemonsets` refuses the node without
 * `--force` (its daemonSetFilter reads the DaemonSet; ignored are only the pods of one that exists). The
 * example left such a pod in place and reported the node drained.
 */
import { describe, expect, it } from 'vitest';
import { drainNode } from '../src/server/node-drain.js';
import { cordonedN1, evictionAccepted, failure, podList, podOnN1, useKubeApi } from './fake-kube-api.js';

const api = useKubeApi();
const pod = (name: string, kind: string, owner: string, phase = 'Running') =>
  podOnN1(name, { namespace: 'kube-system', owner: { kind, name: owner, uid: owner }, phase });

/** An API server of one cordoned node running `pods`, with the DaemonSets `daemonSets` (kube-system). */
async function apiServer(pods: unknown[], daemonSets: string[], daemonSetStatus = 200) {
  const evicted: string[] = [];
  const reads: string[] = [];
  const { nodes } = await api.start(({ method, path, send }) => {
    if (method === 'POST') {
      evicted.push(path.split('/')[6] ?? '');
      return send(201, evictionAccepted);
    }
    if (path === '/api/v1/nodes/n1') return send(200, cordonedN1);
    if (path === '/api/v1/pods') return send(200, podList(pods));
    const ds = path.match(/^\/apis\/apps\/v1\/namespaces\/kube-system\/daemonsets\/([^/]+)$/);
    if (ds !== null) {
      reads.push(ds[1] ?? '');
      if (daemonSetStatus !== 200) {
        return send(daemonSetStatus, failure(daemonSetStatus, 'Forbidden', 'daemonsets is forbidden'));
      }
      if (daemonSets.includes(ds[1] ?? ''))
        return send(200, {
          apiVersion: 'apps/v1',
          kind: 'DaemonSet',
          metadata: { name: ds[1], namespace: 'kube-system' },
        });
      return send(404, failure(404, 'NotFound', `daemonsets.apps "${ds[1]}" not found`));
    }
    send(404, failure(404, 'NotFound', 'gone'));
  });
  return { nodes, evicted, reads };
}

const options = () => ({ maxAttempts: 1, signal: new AbortController().signal, pollMs: 10 });

describe('drain of a node with a pod of a deleted DaemonSet', () => {
  it('fails the node naming the pod and its missing DaemonSet, before any eviction', async () => {
    const { nodes, evicted } = await apiServer(
      [
        pod('web-1', 'ReplicaSet', 'web'),
        pod('kube-proxy-n1', 'DaemonSet', 'kube-proxy'),
        pod('old-agent-n1', 'DaemonSet', 'old-agent'),
      ],
      ['kube-proxy'],
    );
    await expect(drainNode(nodes, 'n1', options())).rejects.toThrow(
      /kube-system\/old-agent-n1 \(DaemonSet kube-system\/old-agent\) belongs to a DaemonSet that no longer exists.*--force/,
    );
    expect(evicted).toEqual([]);
  });

  it('leaves the pods of DaemonSets that exist, reading each DaemonSet once, and evicts a finished orphan', async () => {
    const { nodes, evicted, reads } = await apiServer(
      [
        pod('web-1', 'ReplicaSet', 'web'),
        pod('kube-proxy-n1', 'DaemonSet', 'kube-proxy'),
        pod('kube-proxy-old', 'DaemonSet', 'kube-proxy'),
        pod('old-agent-n1', 'DaemonSet', 'old-agent', 'Succeeded'),
      ],
      ['kube-proxy'],
    );
    const result = await drainNode(nodes, 'n1', options());
    expect(result.skipped).toEqual(['kube-system/kube-proxy-n1', 'kube-system/kube-proxy-old']);
    expect(result.evicted).toEqual(['kube-system/old-agent-n1', 'kube-system/web-1']);
    expect(evicted.sort()).toEqual(['old-agent-n1', 'web-1']);
    expect(reads).toEqual(['kube-proxy']);
  });

  it('fails the node, before any eviction, when the DaemonSet cannot be read (as kubectl drain does)', async () => {
    const { nodes, evicted } = await apiServer(
      [pod('web-1', 'ReplicaSet', 'web'), pod('kube-proxy-n1', 'DaemonSet', 'kube-proxy')],
      ['kube-proxy'],
      403,
    );
    await expect(drainNode(nodes, 'n1', options())).rejects.toThrow(
      /reading DaemonSet kube-system\/kube-proxy .*403 Forbidden/,
    );
    expect(evicted).toEqual([]);
  });
});
