/** The clusters and the node table of one. */

import type { ClusterView, NodeRow } from '../../shared/api-types.js';
import { FIELD_MANAGER, KubeApiError, type NodeView } from '../kube-nodes.js';
import { lockState } from './batch-routes.js';
import { kubeFailure, type RouteContext } from './context.js';

export function registerNodeRoutes(ctx: RouteContext): void {
  const { store, db, clusters, route, clusterOf, fail } = ctx;
  // The clusters to pick from (kubeconfig contexts), the default first.
  route('get', '/api/clusters', {}, (_req, res) => {
    res.json({
      clusters: clusters.list().map((c): ClusterView => ({ name: c.name, default: c === clusters.default })),
    });
  });

  route('get', '/api/nodes', {}, async (req, res) => {
    const cluster = clusterOf(res, req.query.cluster);
    if (cluster === undefined) return;
    const selector =
      typeof req.query.labelSelector === 'string' && req.query.labelSelector !== ''
        ? req.query.labelSelector
        : undefined;
    // The app's own tables are read beside the Kubernetes API's list. Only the list's failure is the API's: a
    // failing database was answered `502 kubernetes_error` ("the Kubernetes API cannot be reached") and logged
    // as a failed API call; it is the server's own error (500, logged as such).
    const tables = Promise.all([db.cordons(cluster.name), db.locks(cluster.name)]);
    tables.catch(() => undefined); // awaited below, unless the list failed first
    let list: NodeView[];
    try {
      list = await cluster.nodes.list(selector);
    } catch (error) {
      // The API refuses a malformed selector with 400: the caller's mistake, not the API server's failure.
      if (selector !== undefined && error instanceof KubeApiError && error.status === 400) {
        return fail(res, 400, 'invalid_input', `invalid labelSelector: ${error.message}`, {
          field: 'labelSelector',
        });
      }
      return kubeFailure(res, error, ctx.config.logger);
    }
    const [cordons, locks] = await tables;
    const cordonOf = new Map(cordons.map((c) => [c.node, c]));
    // The locks in the way of a batch, as a batch start decides (lockState): a running task's, and a task's
    // cancelled a moment ago until its batch has stopped and released them (shown `stopping`). Only running
    // tasks' were shown: a cancelled batch's nodes showed free while it finished the change it had sent, for
    // up to 30 s, and a batch on them was refused `nodes_locked`. A lock its ended task has not released yet
    // (a moment after the terminal event, or for good when its replica died) is taken over: not shown.
    const holders = [...new Set(locks.map((l) => l.taskId))];
    const tasks = new Map(
      await Promise.all(holders.map(async (id) => [id, await store.getTask(id)] as const)),
    );
    const now = Date.now();
    const lockOf = new Map<string, NonNullable<NodeRow['lock']>>();
    for (const l of locks) {
      const held = lockState(l, tasks.get(l.taskId), now);
      if (held === 'stale') continue;
      lockOf.set(l.node, {
        taskId: l.taskId,
        by: l.username,
        ...(held === 'stopping' ? { stopping: true } : {}),
      });
    }
    res.json({
      nodes: list.map((n): NodeRow => {
        const note = cordonOf.get(n.name);
        const lock = lockOf.get(n.name);
        return {
          ...n,
          // A note outlives a cordon undone outside the app (kubectl uncordon): shown only while cordoned,
          // and only while the cordon is the app's (its field manager owns spec.unschedulable) — after a
          // kubectl uncordon and a kubectl cordon the old note described another cordon. An API that does
          // not record field managers (null) keeps the note shown.
          cordon:
            n.unschedulable &&
            note !== undefined &&
            (n.cordonManager === null || n.cordonManager === FIELD_MANAGER)
              ? { reason: note.reason, by: note.username, at: note.at }
              : null,
          lock: lock ?? null,
        };
      }),
    });
  });
}
