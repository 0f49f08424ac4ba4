/** The node table: loading (of the cluster shown), filtering, selecting. */
import type { ClusterView, NodeRow } from '../shared/api-types.js';
import { api } from './api.js';
import { $, ago, el } from './dom.js';
import { onSessionEnd, sameSession, sessionMark } from './session.js';
import { canChange, STOPPING_POLL_MS, selected, signedIn, state } from './state.js';

const STANDARD_LABEL =
  /^(kubernetes\.io|beta\.kubernetes\.io|node\.kubernetes\.io\/instance-type|topology\.kubernetes\.io|node-role\.kubernetes\.io)/;

/** localStorage key of the cluster last picked (the next visit shows it again). */
const CLUSTER_KEY = 'knm.cluster';
/** Called when the picker changes cluster (main re-reads the task list and the audit page). */
let onClusterChange: () => void = () => {};

/** The `cluster` query parameter of the cluster shown, for the per-cluster reads. */
export const clusterQuery = () => `cluster=${encodeURIComponent(state.cluster)}`;

/**
 * Reads the clusters (kubeconfig contexts) and fills the picker, shown only when there is more than one;
 * keeps the cluster last picked if the server still has it, else the server's default.
 */
export async function loadClusters(changed: () => void): Promise<void> {
  onClusterChange = changed;
  const session = sessionMark();
  let clusters: ClusterView[];
  try {
    clusters = (await api<{ clusters: ClusterView[] }>('/api/clusters')).clusters;
    if (!sameSession(session)) return;
  } catch (error) {
    if (!sameSession(session)) return;
    // The server's default cluster is still shown (requests without a cluster get it).
    $('#clusters-error').textContent =
      `Could not load the clusters (showing the default one): ${(error as Error).message}`;
    return;
  }
  $('#clusters-error').textContent = '';
  const saved = localStorage.getItem(CLUSTER_KEY);
  const chosen = clusters.find((c) => c.name === saved) ?? clusters.find((c) => c.default) ?? clusters[0];
  state.cluster = chosen?.name ?? '';
  const picker = $<HTMLSelectElement>('#cluster');
  picker.replaceChildren(...clusters.map((c) => el('option', { value: c.name }, c.name)));
  picker.value = state.cluster;
  $('#cluster-picker').hidden = clusters.length < 2;
}

$<HTMLSelectElement>('#cluster').addEventListener('change', (event) => {
  state.cluster = (event.target as HTMLSelectElement).value;
  localStorage.setItem(CLUSTER_KEY, state.cluster);
  // A selection names nodes of the cluster it was made in.
  selected.clear();
  state.nodes = [];
  renderNodes();
  void loadNodes();
  onClusterChange();
});

/** The last read of the node table asked for: an earlier one answering after it is not shown. */
let nodesRead = 0;
/** The next read while a node is held by a cancelled batch still stopping (see loadNodes). */
let stoppingTimer: ReturnType<typeof setTimeout> | undefined;

export async function loadNodes(): Promise<void> {
  if (!signedIn()) return;
  const cluster = state.cluster;
  const session = sessionMark();
  const read = ++nodesRead;
  try {
    const nodes = (await api<{ nodes: NodeRow[] }>(`/api/nodes?${clusterQuery()}`)).nodes;
    // The picker moved on while this was read (that cluster's answer is not this one's), the session ended,
    // or a later read was asked for: reads overlap (a batch's results ask for one every 400 ms, and a large
    // cluster's list takes longer; behind the replicas' proxy each goes to another replica), and an older
    // answer arriving last put back the locks and taints of before, and dropped from the selection a node
    // the later answer had.
    if (cluster !== state.cluster || !sameSession(session) || read !== nodesRead) return;
    state.nodes = nodes;
    $('#nodes-error').textContent = '';
  } catch (error) {
    // A 401 has ended the session (api.ts).
    if (!sameSession(session) || read !== nodesRead) return;
    $('#nodes-error').textContent = `Could not load nodes: ${(error as Error).message}`;
    return;
  }
  // A set: each selected node looked for in the whole list was 25 million comparisons for 5,000 nodes.
  const present = new Set(state.nodes.map((n) => n.name));
  for (const name of selected) if (!present.has(name)) selected.delete(name);
  // A cancelled batch holds its nodes until its worker has stopped (up to 30 s), and nothing tells the page
  // when it lets go: re-read soon while one does, so the nodes show free once a batch may take them.
  if (stoppingTimer === undefined && state.nodes.some((n) => n.lock?.stopping)) {
    stoppingTimer = setTimeout(() => {
      stoppingTimer = undefined;
      void loadNodes();
    }, STOPPING_POLL_MS);
  }
  fillSelect(
    '#role-filter',
    state.nodes.flatMap((n) => n.roles),
  );
  fillSelect(
    '#zone-filter',
    state.nodes.flatMap((n) => (n.zone === null ? [] : [n.zone])),
  );
  renderNodes();
}

let nodesTimer: ReturnType<typeof setTimeout> | undefined;
/** Re-reads the node table soon (coalescing bursts of item events into one request). */
export function refreshNodesSoon(): void {
  if (nodesTimer !== undefined) return;
  nodesTimer = setTimeout(() => {
    nodesTimer = undefined;
    void loadNodes();
  }, 400);
}

function fillSelect(selector: string, values: string[]): void {
  const select = $<HTMLSelectElement>(selector);
  const current = select.value;
  const first = select.options[0];
  select.replaceChildren(
    ...(first ? [first] : []),
    ...[...new Set(values)].sort().map((v) => el('option', { value: v }, v)),
  );
  select.value = current;
}

function visibleNodes(): NodeRow[] {
  const text = $<HTMLInputElement>('#filter').value.trim().toLowerCase();
  const role = $<HTMLSelectElement>('#role-filter').value;
  const zone = $<HTMLSelectElement>('#zone-filter').value;
  return state.nodes.filter((n) => {
    if (role && !n.roles.includes(role)) return false;
    if (zone && n.zone !== zone) return false;
    if (!text) return true;
    const haystack = [
      n.name,
      ...Object.entries(n.labels).map(([k, v]) => `${k}=${v}`),
      ...n.taints.map((t) => `${t.key}${t.value ? `=${t.value}` : ''}:${t.effect}`),
    ]
      .join(' ')
      .toLowerCase();
    return text.split(/\s+/).every((word) => haystack.includes(word));
  });
}

function renderNodes(): void {
  const shown = visibleNodes();
  const rows = shown.map((n) => {
    const checkbox = el('input', { type: 'checkbox', 'aria-label': `Select ${n.name}` }) as HTMLInputElement;
    checkbox.checked = selected.has(n.name);
    checkbox.disabled = !canChange();
    checkbox.addEventListener('change', () => {
      if (checkbox.checked) selected.add(n.name);
      else selected.delete(n.name);
      renderNodes();
    });
    const status = el(
      'td',
      { class: 'status' },
      n.unschedulable
        ? el('span', { class: 'status-cordoned' }, `${n.ready ? 'Ready' : 'NotReady'}, SchedulingDisabled`)
        : el('span', { class: n.ready ? 'status-ready' : 'error' }, n.ready ? 'Ready' : 'NotReady'),
    );
    if (n.cordon !== null) {
      status.append(
        el(
          'small',
          { class: 'cordon-note', title: new Date(n.cordon.at).toLocaleString() },
          `cordoned by ${n.cordon.by} ${ago(n.cordon.at)}${n.cordon.reason ? `: ${n.cordon.reason}` : ''}`,
        ),
      );
    }
    if (n.lock !== null) {
      status.append(
        el(
          'small',
          { class: n.lock.stopping ? 'lock stopping' : 'lock' },
          n.lock.stopping
            ? `held by ${n.lock.by}'s cancelled task ${n.lock.taskId.slice(0, 8)} until it has stopped`
            : `being changed by ${n.lock.by}'s task ${n.lock.taskId.slice(0, 8)}`,
        ),
      );
    }
    const taints = n.taints.map((t) =>
      el('span', { class: `chip taint ${t.effect}` }, `${t.key}${t.value ? `=${t.value}` : ''}:${t.effect}`),
    );
    const custom = Object.entries(n.labels).filter(([k]) => !STANDARD_LABEL.test(k));
    const labels = custom.map(([k, v]) => el('span', { class: 'chip' }, v === '' ? k : `${k}=${v}`));
    const labelCell = el(
      'td',
      {
        class: 'opt',
        title: Object.entries(n.labels)
          .map(([k, v]) => `${k}=${v}`)
          .join('\n'),
      },
      ...labels,
    );
    return el(
      'tr',
      { 'data-node': n.name, class: selected.has(n.name) ? 'selected' : '' },
      el('td', {}, checkbox),
      el('td', {}, el('strong', {}, n.name)),
      status,
      el('td', { class: 'opt' }, n.roles.join(', ') || '—'),
      el('td', { class: 'opt' }, n.zone ?? '—'),
      el('td', { class: 'opt' }, n.instanceType ?? '—'),
      el('td', {}, ...(taints.length ? taints : ['—'])),
      labelCell,
    );
  });
  $('#nodes tbody').replaceChildren(...rows);
  const selectAll = $<HTMLInputElement>('#select-all');
  selectAll.disabled = !canChange();
  selectAll.checked = shown.length > 0 && shown.every((n) => selected.has(n.name));
  selectAll.indeterminate = !selectAll.checked && shown.some((n) => selected.has(n.name));
  $('#selection-count').textContent = `${selected.size} selected`;
  for (const button of document.querySelectorAll<HTMLButtonElement>('button[data-op]'))
    button.disabled = selected.size === 0;
}

// A selection and the locks shown (whose batches, by whom) were the old session's.
onSessionEnd(() => {
  if (nodesTimer !== undefined) clearTimeout(nodesTimer);
  nodesTimer = undefined;
  clearTimeout(stoppingTimer);
  stoppingTimer = undefined;
  selected.clear();
  state.nodes = [];
  renderNodes();
  $('#nodes-error').textContent = '';
  $('#clusters-error').textContent = '';
});

$<HTMLInputElement>('#select-all').addEventListener('change', (event) => {
  const on = (event.target as HTMLInputElement).checked;
  for (const n of visibleNodes()) {
    if (on) selected.add(n.name);
    else selected.delete(n.name);
  }
  renderNodes();
});
for (const id of ['#filter', '#role-filter', '#zone-filter']) $(id).addEventListener('input', renderNodes);
$('#refresh').addEventListener('click', () => void loadNodes());
