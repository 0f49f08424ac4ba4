/**
 * The clusters this app manages: one per kubeconfig context (or per named API server), each with its node
 * API. Requests name their cluster (`?cluster=` or the body's `cluster`); none means the default one.
 */
import { KubeConfig } from '@kubernetes/client-node';
import { KubeNodes, type KubeNodesOptions } from './kube-nodes.js';

/** One cluster: the context's name and its node API. */
export interface Cluster {
  name: string;
  nodes: KubeNodes;
}

/** A cluster name as a request may carry it: a kubeconfig context name's usual characters. */
const CLUSTER_NAME = /^[\w.:@/-]{1,253}$/;

/** Whether `name` may name a cluster (every cluster's name, hence every recorded one, passes). */
export function isClusterName(name: string): boolean {
  return CLUSTER_NAME.test(name);
}

/** The set of clusters, the first the default. */
export class ClusterSet {
  readonly #byName: Map<string, Cluster>;
  readonly default: Cluster;

  constructor(clusters: readonly Cluster[]) {
    const first = clusters[0];
    if (first === undefined) throw new Error('ClusterSet: at least one cluster is needed');
    this.#byName = new Map();
    for (const cluster of clusters) {
      if (!isClusterName(cluster.name)) throw new Error(`ClusterSet: invalid cluster name "${cluster.name}"`);
      if (this.#byName.has(cluster.name))
        throw new Error(`ClusterSet: cluster "${cluster.name}" given twice`);
      this.#byName.set(cluster.name, cluster);
    }
    this.default = first;
  }

  /** Every cluster, the default first. */
  list(): Cluster[] {
    return [...this.#byName.values()];
  }

  /**
   * The cluster a request names: `undefined` or '' → the default; an unknown name → `undefined` (the caller
   * answers 400 `unknown_cluster`).
   */
  resolve(name: unknown): Cluster | undefined {
    if (name === undefined || name === '') return this.default;
    if (typeof name !== 'string') return undefined;
    return this.#byName.get(name);
  }
}

/**
 * One cluster per context of `kc`, the `defaultContext` (else the kubeconfig's current context) first. A
 * context's credentials and server come from the kubeconfig as `kubectl --context` would use them.
 */
export function clustersOfKubeConfig(
  kc: KubeConfig,
  defaultContext?: string,
  options: KubeNodesOptions = {},
): Cluster[] {
  const first = defaultContext ?? kc.getCurrentContext();
  const names = kc.getContexts().map((c) => c.name);
  if (first !== '' && !names.includes(first)) throw new Error(`no context "${first}" in the kubeconfig`);
  const ordered = first === '' ? names : [first, ...names.filter((n) => n !== first)];
  return ordered.map((name) => {
    const one = new KubeConfig();
    one.loadFromOptions({
      clusters: kc.getClusters(),
      users: kc.getUsers(),
      contexts: kc.getContexts(),
      currentContext: name,
    });
    return { name, nodes: new KubeNodes(one, options) };
  });
}
