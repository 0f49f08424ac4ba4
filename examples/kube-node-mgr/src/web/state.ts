/** What the page knows of its user, the cluster it shows and that cluster's nodes, and its timings. */
import type { NodeRow, Role } from '../shared/api-types.js';

/** sessionStorage key of the task whose progress dialog is open (a reload reopens it). */
export const RUNNING_TASK_KEY = 'knm.runningTask';
/** The dialog closes itself this long after a complete success. */
export const AUTO_CLOSE_MS = 3000;
/** The task list is re-read this often, for batches started elsewhere (other tabs, other users). */
export const TASK_LIST_POLL_MS = 5000;
/** The node table is re-read this often, for changes made outside the app (kubectl). */
export const NODE_POLL_MS = 15_000;
/** …and this often while a cancelled batch holds nodes until it has stopped (their lock's `stopping`). */
export const STOPPING_POLL_MS = 1000;
/** Most running tasks of the list watched live at once. */
export const MAX_LIVE_WATCHES = 20;

/** The page's mutable state, one object so every module reads the same values. */
export const state = {
  csrfToken: '',
  me: { username: '', role: 'viewer' } as { username: string; role: Role },
  /** The nodes of {@link state.cluster}, as last read. */
  nodes: [] as NodeRow[],
  /** The cluster shown (kubeconfig context); '' until the list of clusters is read. */
  cluster: '',
};
/** The selected node names (of {@link state.cluster}). */
export const selected = new Set<string>();

/** Whether a user is signed in on this page (`me` is cleared when the session ends). */
export const signedIn = () => state.me.username !== '';
export const canChange = () => state.me.role !== 'viewer';
export const canCancel = (owner: string) =>
  state.me.role === 'admin' || (state.me.role === 'operator' && owner === state.me.username);
