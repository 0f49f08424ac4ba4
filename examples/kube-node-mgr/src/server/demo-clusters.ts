/**
 * The built-in demo as one or two clusters (kubeconfig contexts `demo` and `demo-east`), so the cluster
 * picker has something to pick: `demo` is the usual 14 nodes on the port asked for; `demo-east` is a
 * smaller one (12 nodes: workers 1–5) on a port the system chooses.
 */
import { DemoCluster, type DemoClusterOptions } from './demo-cluster.js';

/** The demo clusters' context names, in order. */
export const DEMO_CLUSTER_NAMES = ['demo', 'demo-east'] as const;

/** Running demo clusters. */
export interface DemoClusters {
  clusters: { name: string; url: string; cluster: DemoCluster }[];
  close(): Promise<void>;
}

/**
 * Starts `count` (1 or 2) demo clusters; the first on `port` (falling back to any free port when it is
 * taken and not 0). Each has its own nodes, pods and failure injection (the second with seed + 1).
 */
export async function startDemoClusters(
  count: number,
  port: number,
  options: DemoClusterOptions = {},
): Promise<DemoClusters> {
  if (!Number.isInteger(count) || count < 1 || count > DEMO_CLUSTER_NAMES.length)
    throw new Error(`demo clusters must be 1 or ${DEMO_CLUSTER_NAMES.length} (got ${count})`);
  const started: DemoClusters['clusters'] = [];
  const close = async () => {
    for (const c of started) await c.cluster.close();
  };
  try {
    for (let i = 0; i < count; i++) {
      const cluster = new DemoCluster(
        i === 0 ? options : { ...options, nodeCount: 12, seed: (options.seed ?? 1) + i },
      );
      let url: string;
      const wanted = i === 0 ? port : 0;
      try {
        url = await cluster.listen(wanted);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EADDRINUSE' || wanted === 0) throw error;
        url = await cluster.listen(0);
      }
      started.push({ name: DEMO_CLUSTER_NAMES[i] as string, url, cluster });
    }
  } catch (error) {
    await close();
    throw error;
  }
  return { clusters: started, close };
}
