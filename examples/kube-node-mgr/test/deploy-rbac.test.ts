/**
 * The ClusterRole of `deploy/` must allow every Kubernetes API call the app makes (src/server/kube-nodes.ts),
 * or the batches needing the missing one fail on a real cluster with 403 Forbidden for every node, while
 * the demo cluster (no authorization) never shows it.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';

/** The rules of the ClusterRole in rbac.yaml, whose lists are written in flow style (`verbs: ["get"]`). */
function clusterRoleRules(text: string): { apiGroups: string[]; resources: string[]; verbs: string[] }[] {
  const role = text.split(/^---$/m).find((doc) => /^kind: ClusterRole$/m.test(doc));
  if (role === undefined) throw new Error('no ClusterRole in rbac.yaml');
  const list = (line: string) => JSON.parse(line.slice(line.indexOf('['))) as string[];
  const rules: { apiGroups: string[]; resources: string[]; verbs: string[] }[] = [];
  for (const block of role.split(/^\s*- apiGroups:/m).slice(1)) {
    const lines = `apiGroups:${block}`.split('\n').map((l) => l.trim().replace(/^- /, ''));
    const field = (name: string) => {
      const line = lines.find((l) => l.startsWith(`${name}:`));
      if (line === undefined) throw new Error(`a rule without ${name}`);
      return list(line);
    };
    rules.push({ apiGroups: field('apiGroups'), resources: field('resources'), verbs: field('verbs') });
  }
  return rules;
}

describe('deploy/rbac.yaml', () => {
  it('allows every API call the app makes: the nodes it patches and the pods a drain evicts', () => {
    const rules = clusterRoleRules(readFileSync(new URL('../deploy/rbac.yaml', import.meta.url), 'utf8'));
    const allowed = (resource: string, verb: string, group = '') =>
      rules.some(
        (r) => r.apiGroups.includes(group) && r.resources.includes(resource) && r.verbs.includes(verb),
      );
    // KubeNodes: listNode, readNode, patchNode; listPodForAllNamespaces, readNamespacedPod (a drain lists the
    // node's pods and waits for each evicted one to go); createNamespacedPodEviction (the Eviction API is the
    // pods/eviction subresource of the core group).
    const calls: [string, string][] = [
      ['nodes', 'list'],
      ['nodes', 'get'],
      ['nodes', 'patch'],
      ['pods', 'list'],
      ['pods', 'get'],
      ['pods/eviction', 'create'],
    ];
    expect(calls.filter(([resource, verb]) => !allowed(resource, verb))).toEqual([]);
    // readNamespacedDaemonSet: a drain leaves a DaemonSet's pods only while the DaemonSet exists.
    expect(allowed('daemonsets', 'get', 'apps')).toBe(true);
  });
});
