/**
 * The shapes of the example's HTTP API, shared by the server (which builds them) and the web UI (which reads
 * them): types only, so the browser bundle pulls in no server code.
 */

/** A user's role, weakest first in {@link ROLE_ORDER}. */
export type Role = 'admin' | 'operator' | 'viewer';

/** The roles from weakest to strongest (a route needing `operator` accepts `admin`). */
export const ROLE_ORDER: readonly Role[] = ['viewer', 'operator', 'admin'];

/** The batch operations. */
export type OpType =
  | 'taint_add'
  | 'taint_remove'
  | 'label_add'
  | 'label_remove'
  | 'cordon'
  | 'uncordon'
  | 'drain';

/** A taint as the node table shows it. */
export interface TaintView {
  key: string;
  value?: string | undefined;
  effect: string;
  timeAdded?: string | undefined;
}

/** What Kubernetes says of a node (the node API's view, before the app's notes are added). */
export interface NodeView {
  name: string;
  resourceVersion: string;
  labels: Record<string, string>;
  taints: TaintView[];
  unschedulable: boolean;
  roles: string[];
  zone: string | null;
  instanceType: string | null;
  ready: boolean;
  kubeletVersion: string | null;
  /**
   * The field manager that set `spec.unschedulable` (from `metadata.managedFields`): `kube-node-mgr` for a
   * cordon of this app's, `kubectl` for `kubectl cordon`…; `null` when the node is schedulable or the API
   * does not say.
   */
  cordonManager: string | null;
}

/** A row of `GET /api/nodes`: the node, who cordoned it and why, and the batch holding its lock. */
export interface NodeRow extends NodeView {
  cordon: { reason: string; by: string; at: number } | null;
  /**
   * The batch holding the node's lock; `stopping`: that batch was cancelled and is still finishing a change
   * it had sent, and holds the node until it has stopped (a batch on the node is refused meanwhile).
   */
  lock: { taskId: string; by: string; stopping?: true } | null;
}

/** A task's state in the store, as the task list and the audit log show it (`null`: purged). */
export interface TaskState {
  status: string;
  kind: string;
  message: string | null;
  total: number | null;
  done: number;
  succeeded: number;
  failed: number;
  error: { code: string; message: string } | null;
  finishedAt: number | null;
}

/** How many of a batch's nodes a row of `GET /api/tasks` names (see {@link TaskEntry.nodes}). */
export const LISTED_NODES = 20;

/** A batch as `/api/tasks` lists it: the example's record and the task's state in the store. */
export interface TaskEntry {
  id: string;
  /** The cluster (kubeconfig context) it changed. */
  cluster: string;
  username: string;
  operation: Record<string, unknown> & { type: string };
  /**
   * Its nodes: every one from `GET /api/tasks/:id`; the first {@link LISTED_NODES} in the rows of
   * `GET /api/tasks`, which the page reads every 5 s (a 5,000-node batch's names are up to 1.3 MB a row).
   */
  nodes: string[];
  /** How many nodes it has. */
  nodeCount: number;
  parentTaskId: string | null;
  relation: 'retry_failed' | 'resume_remaining' | null;
  createdAt: number;
  task: TaskState | null;
}

/** A saved label or taint. */
export interface TemplateView {
  name: string;
  kind: 'label' | 'taint';
  key: string;
  value: string | null;
  effect: string | null;
  createdBy: string;
  createdAt: number;
}

/** A sign-in, sign-out or cancel in the audit log. */
export interface AuditEventView {
  username: string;
  action: 'login' | 'logout' | 'cancel';
  taskId: string | null;
  at: number;
}

/** A cluster the UI can pick (`GET /api/clusters`). */
export interface ClusterView {
  name: string;
  default: boolean;
}

/** The body of `/api/login` and `/api/session`. */
export interface SessionView {
  username: string;
  role: Role;
  csrfToken: string;
}
