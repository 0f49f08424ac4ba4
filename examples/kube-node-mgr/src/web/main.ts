import { ProgressClient, type Watch, type WatchState } from '@finishline/client';
import { httpFallback } from '@finishline/client/http';

interface NodeView {
  name: string;
  labels: Record<string, string>;
  taints: { key: string; value?: string; effect: string }[];
  unschedulable: boolean;
  roles: string[];
  zone: string | null;
  instanceType: string | null;
  ready: boolean;
  cordon: { reason: string; by: string; at: number } | null;
  lock: { taskId: string; by: string } | null;
}

interface TaskState {
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

/** A batch as `/api/tasks` lists it: the example's record and the task's state in the store. */
interface TaskEntry {
  id: string;
  username: string;
  operation: Record<string, unknown> & { type: string };
  nodes: string[];
  parentTaskId: string | null;
  relation: 'retry_failed' | 'resume_remaining' | null;
  createdAt: number;
  task: TaskState | null;
}

type Role = 'admin' | 'operator' | 'viewer';
type OpType = 'taint_add' | 'taint_remove' | 'label_add' | 'label_remove' | 'cordon' | 'uncordon' | 'drain';
type ItemResult = { ok: boolean; error: string | null; detail?: unknown };

/** sessionStorage key of the task whose progress dialog is open (a reload reopens it). */
const RUNNING_TASK_KEY = 'knm.runningTask';
/** The dialog closes itself this long after a complete success. */
const AUTO_CLOSE_MS = 3000;
/** The task list is re-read this often, for batches started elsewhere (other tabs, other users). */
const TASK_LIST_POLL_MS = 5000;
/** The node table is re-read this often, for changes made outside the app (kubectl). */
const NODE_POLL_MS = 15_000;
/** Most running tasks of the list watched live at once. */
const MAX_LIVE_WATCHES = 20;

const $ = <T extends HTMLElement = HTMLElement>(selector: string): T => {
  const element = document.querySelector<T>(selector);
  if (element === null) throw new Error(`missing ${selector}`);
  return element;
};

const el = <K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: (Node | string)[]
) => {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) element.setAttribute(name, value);
  element.append(...children);
  return element;
};

let csrfToken = '';
let me: { username: string; role: Role } = { username: '', role: 'viewer' };
let nodes: NodeView[] = [];
const selected = new Set<string>();

class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/**
 * Calls the API. Every answer is handled, JSON or not: a proxy's `502 bad gateway` in plain text becomes
 * "the server is unavailable (HTTP 502: bad gateway)", never a JSON parse error.
 */
async function api<T>(path: string, init: { method?: string; body?: unknown } = {}): Promise<T> {
  let response: Response;
  try {
    response = await fetch(path, {
      method: init.method ?? 'GET',
      credentials: 'same-origin',
      headers:
        init.body === undefined ? {} : { 'content-type': 'application/json', 'x-csrf-token': csrfToken },
      ...(init.body === undefined ? {} : { body: JSON.stringify(init.body) }),
    });
  } catch {
    throw new ApiError(0, 'network', 'the server cannot be reached (network error); try again');
  }
  const text = await response.text().catch(() => '');
  let body: unknown;
  try {
    body = text === '' ? {} : JSON.parse(text);
  } catch {
    body = undefined;
  }
  if (!response.ok) {
    const error = (body as { error?: { code?: unknown; message?: unknown } } | undefined)?.error;
    if (typeof error?.message === 'string') {
      throw new ApiError(response.status, String(error.code ?? 'error'), error.message);
    }
    const snippet = text.replace(/\s+/g, ' ').trim().slice(0, 80);
    const what = response.status >= 500 ? 'the server is unavailable' : 'the request was refused';
    throw new ApiError(
      response.status,
      'http',
      `${what} (HTTP ${response.status}${snippet ? `: ${snippet}` : ''}); try again`,
    );
  }
  if (body === undefined) throw new ApiError(response.status, 'http', 'the server sent an unreadable answer');
  return body as T;
}

const canChange = () => me.role !== 'viewer';
const canCancel = (owner: string) => me.role === 'admin' || (me.role === 'operator' && owner === me.username);

function ago(ms: number): string {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(ms).toLocaleString();
}

function duration(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

const plural = (n: number, one: string, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;

/** The words and colour of a task's state, the same in the dialog, the task list and the audit log. */
function statusLabel(task: TaskState | null): { text: string; cls: string } {
  if (task === null) return { text: 'unknown (purged)', cls: 'st-unknown' };
  switch (task.status) {
    case 'running':
      return { text: `running ${task.done} / ${task.total ?? '?'}`, cls: 'st-running' };
    case 'completed':
      return task.failed > 0
        ? { text: `completed, ${task.failed} failed`, cls: 'st-partial' }
        : { text: 'completed', cls: 'st-completed' };
    case 'interrupted':
      return { text: 'interrupted (server stopped)', cls: 'st-interrupted' };
    default:
      return { text: task.status, cls: `st-${task.status}` };
  }
}

// ---------------------------------------------------------------- login

function showLogin(): void {
  $('#app-view').hidden = true;
  $('#audit-view').hidden = true;
  $('#nav').hidden = true;
  $('#logout').hidden = true;
  $('#whoami').textContent = '';
  $('#login-view').hidden = false;
  $<HTMLInputElement>('#login-form input[name=username]').focus();
}

async function showApp(session: { username: string; role: Role; csrfToken: string }): Promise<void> {
  csrfToken = session.csrfToken;
  me = { username: session.username, role: session.role };
  $('#login-view').hidden = true;
  $('#nav').hidden = false;
  $('#logout').hidden = false;
  $('#whoami').textContent = `${session.username} (${session.role})`;
  $('#actions').hidden = !canChange();
  $('#read-only').hidden = canChange();
  route();
  await Promise.all([loadNodes(), loadTasks()]);
  startPolling();
  const running = sessionStorage.getItem(RUNNING_TASK_KEY);
  if (running !== null) openProgress(running);
}

$<HTMLFormElement>('#login-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const form = new FormData(event.target as HTMLFormElement);
  $('#login-error').textContent = '';
  try {
    const session = await api<{ username: string; role: Role; csrfToken: string }>('/api/login', {
      method: 'POST',
      body: { username: form.get('username'), password: form.get('password') },
    });
    await showApp(session);
  } catch (error) {
    $('#login-error').textContent = (error as Error).message;
  }
});

$('#logout').addEventListener('click', async () => {
  await api('/api/logout', { method: 'POST', body: {} }).catch(() => undefined);
  sessionStorage.removeItem(RUNNING_TASK_KEY);
  location.reload();
});

// ---------------------------------------------------------------- views

function route(): void {
  const audit = location.hash === '#audit';
  $('#app-view').hidden = audit;
  $('#audit-view').hidden = !audit;
  $('#nav-nodes').classList.toggle('active', !audit);
  $('#nav-audit').classList.toggle('active', audit);
  if (audit) void loadAudit(false);
}
window.addEventListener('hashchange', () => {
  if (me.username !== '') route();
});

// ---------------------------------------------------------------- nodes

const STANDARD_LABEL =
  /^(kubernetes\.io|beta\.kubernetes\.io|node\.kubernetes\.io\/instance-type|topology\.kubernetes\.io|node-role\.kubernetes\.io)/;

async function loadNodes(): Promise<void> {
  try {
    nodes = (await api<{ nodes: NodeView[] }>('/api/nodes')).nodes;
    $('#nodes-error').textContent = '';
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return showLogin();
    $('#nodes-error').textContent = `Could not load nodes: ${(error as Error).message}`;
    return;
  }
  for (const name of [...selected]) if (!nodes.some((n) => n.name === name)) selected.delete(name);
  fillSelect(
    '#role-filter',
    nodes.flatMap((n) => n.roles),
  );
  fillSelect(
    '#zone-filter',
    nodes.flatMap((n) => (n.zone === null ? [] : [n.zone])),
  );
  renderNodes();
}

let nodesTimer: ReturnType<typeof setTimeout> | undefined;
/** Re-reads the node table soon (coalescing bursts of item events into one request). */
function refreshNodesSoon(): void {
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

function visibleNodes(): NodeView[] {
  const text = $<HTMLInputElement>('#filter').value.trim().toLowerCase();
  const role = $<HTMLSelectElement>('#role-filter').value;
  const zone = $<HTMLSelectElement>('#zone-filter').value;
  return nodes.filter((n) => {
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
        el('small', { class: 'lock' }, `being changed by ${n.lock.by}'s task ${n.lock.taskId.slice(0, 8)}`),
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

// ---------------------------------------------------------------- operation dialog

const OP_TITLES: Record<OpType, string> = {
  taint_add: 'Add taint',
  taint_remove: 'Remove taint',
  label_add: 'Add label',
  label_remove: 'Remove label',
  cordon: 'Cordon nodes',
  uncordon: 'Uncordon nodes',
  drain: 'Drain nodes',
};
const OP_FIELDS: Record<OpType, string[]> = {
  taint_add: ['template', 'key', 'value', 'effect', 'save'],
  taint_remove: ['key', 'effect'],
  label_add: ['template', 'key', 'value', 'save'],
  label_remove: ['key'],
  cordon: ['reason'],
  uncordon: [],
  drain: ['reason'],
};
let currentOp: OpType = 'cordon';

for (const button of document.querySelectorAll<HTMLButtonElement>('button[data-op]')) {
  button.addEventListener('click', () => openOperation(button.dataset.op as OpType));
}

const isControlPlane = (n: NodeView) => n.roles.includes('control-plane') || n.roles.includes('master');

/**
 * What the batch would disrupt, in words, or `null` when it is harmless enough to run without a second
 * look: NoExecute evicts running pods at once, control-plane nodes carry the cluster itself, and cordoning
 * most nodes leaves nowhere to schedule.
 */
function blastRadius(op: OpType, effect: string): string | null {
  const chosen = nodes.filter((n) => selected.has(n.name));
  const cp = chosen.filter(isControlPlane);
  const parts: string[] = [];
  if (op === 'taint_add' && effect === 'NoExecute') {
    parts.push(
      `NoExecute evicts every pod without a matching toleration from ${plural(chosen.length, 'node')} right away.`,
    );
  }
  if (op === 'drain') {
    parts.push(
      `Drain cordons ${plural(chosen.length, 'node')} and evicts every pod on them except DaemonSet pods; PodDisruptionBudgets are honoured, so it may wait for replacements to become ready.`,
    );
  }
  const disrupts = op === 'cordon' || op === 'drain' || (op === 'taint_add' && effect !== 'PreferNoSchedule');
  if (disrupts && cp.length > 0) {
    parts.push(
      `This includes ${plural(cp.length, 'control-plane node')} (${cp.map((n) => n.name).join(', ')})` +
        `${cp.length === nodes.filter(isControlPlane).length ? ' — all of them' : ''}.`,
    );
  }
  if (disrupts) {
    const schedulable = nodes.filter((n) => !n.unschedulable && !selected.has(n.name)).length;
    if (schedulable < nodes.length / 2) {
      parts.push(`Afterwards only ${schedulable} of ${nodes.length} nodes accept new pods.`);
    }
  }
  return parts.length === 0 ? null : parts.join(' ');
}

function updateConfirm(): void {
  const form = $<HTMLFormElement>('#op-form');
  const effect = form.querySelector<HTMLSelectElement>('select[name=effect]')?.value ?? '';
  const radius = blastRadius(currentOp, effect);
  $('#op-confirm').hidden = radius === null;
  $('#op-confirm-text').textContent = radius ?? '';
  $('#op-confirm-label').textContent =
    `I understand: ${OP_TITLES[currentOp].toLowerCase()} on ${plural(selected.size, 'node')}`;
  const check = $<HTMLInputElement>('#op-confirm-check');
  if (radius === null) check.checked = false;
  $<HTMLButtonElement>('#op-submit').disabled = radius !== null && !check.checked;
}

function openOperation(op: OpType): void {
  currentOp = op;
  const dialog = $<HTMLDialogElement>('#op-dialog');
  const form = $<HTMLFormElement>('#op-form');
  form.reset();
  $('#op-title').textContent = OP_TITLES[op];
  const names = [...selected].sort();
  $('#op-nodes').textContent = `${plural(names.length, 'node')}: ${names.join(', ')}`;
  for (const field of form.querySelectorAll<HTMLElement>('[data-field]')) {
    field.hidden = !OP_FIELDS[op].includes(field.dataset.field ?? '');
  }
  if (op === 'taint_add' || op === 'label_add') void loadTemplates(op === 'taint_add' ? 'taint' : 'label');
  const effect = form.querySelector<HTMLSelectElement>('select[name=effect]');
  if (effect && op === 'taint_remove' && !effect.querySelector('option[value=""]')) {
    effect.prepend(el('option', { value: '' }, 'any effect'));
  }
  if (effect && op !== 'taint_remove') effect.querySelector('option[value=""]')?.remove();
  if (effect) effect.value = op === 'taint_remove' ? '' : 'NoSchedule';
  const key = form.querySelector<HTMLInputElement>('input[name=key]');
  if (key) key.required = OP_FIELDS[op].includes('key');
  $('#op-error').textContent = '';
  $<HTMLButtonElement>('#op-submit').textContent =
    op === 'cordon' ? 'Cordon' : op === 'uncordon' ? 'Uncordon' : op === 'drain' ? 'Drain' : 'Run';
  updateConfirm();
  dialog.showModal();
}

// ---------------------------------------------------------------- templates

interface Template {
  name: string;
  kind: 'label' | 'taint';
  key: string;
  value: string | null;
  effect: string | null;
  createdBy: string;
}
let templates: Template[] = [];

async function loadTemplates(kind: 'label' | 'taint'): Promise<void> {
  const select = $<HTMLSelectElement>('#template-select');
  try {
    templates = (await api<{ templates: Template[] }>('/api/templates')).templates;
  } catch (error) {
    $('#op-error').textContent = `Could not load templates: ${(error as Error).message}`;
    return;
  }
  const first = select.options[0];
  select.replaceChildren(
    ...(first ? [first] : []),
    ...templates
      .filter((t) => t.kind === kind)
      .map((t) =>
        el(
          'option',
          { value: t.name },
          `${t.name} — ${t.key}${t.value ? `=${t.value}` : ''}${t.effect ? `:${t.effect}` : ''}`,
        ),
      ),
  );
  select.value = '';
}

$('#template-select').addEventListener('change', () => {
  const t = templates.find((x) => x.name === $<HTMLSelectElement>('#template-select').value);
  if (t === undefined) return;
  const form = $<HTMLFormElement>('#op-form');
  (form.querySelector('input[name=key]') as HTMLInputElement).value = t.key;
  (form.querySelector('input[name=value]') as HTMLInputElement).value = t.value ?? '';
  const effect = form.querySelector<HTMLSelectElement>('select[name=effect]');
  if (effect && t.effect) effect.value = t.effect;
  updateConfirm();
});

$('#template-save').addEventListener('click', async () => {
  const form = new FormData($<HTMLFormElement>('#op-form'));
  const kind = currentOp === 'taint_add' ? 'taint' : 'label';
  $('#op-error').textContent = '';
  try {
    const saved = await api<{ template: Template }>('/api/templates', {
      method: 'POST',
      body: {
        name: String(form.get('template-name') ?? ''),
        kind,
        key: String(form.get('key') ?? ''),
        value: String(form.get('value') ?? ''),
        ...(kind === 'taint' ? { effect: String(form.get('effect') ?? '') } : {}),
      },
    });
    await loadTemplates(kind);
    $<HTMLSelectElement>('#template-select').value = saved.template.name;
    $<HTMLInputElement>('#op-form input[name=template-name]').value = '';
  } catch (error) {
    $('#op-error').textContent = (error as Error).message;
  }
});

$('#op-form select[name=effect]').addEventListener('change', updateConfirm);
$('#op-confirm-check').addEventListener('change', updateConfirm);
$('#op-cancel').addEventListener('click', () => $<HTMLDialogElement>('#op-dialog').close());

$<HTMLFormElement>('#op-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const form = new FormData(event.target as HTMLFormElement);
  const body: Record<string, unknown> = { operation: currentOp, nodes: [...selected].sort() };
  for (const field of OP_FIELDS[currentOp]) {
    if (field === 'template' || field === 'save') continue;
    const value = String(form.get(field) ?? '');
    if (value !== '' || (field === 'value' && currentOp === 'label_add')) body[field] = value;
  }
  const submit = $<HTMLButtonElement>('#op-submit');
  submit.disabled = true;
  try {
    const started = await api<{ taskId: string }>('/api/batch', { method: 'POST', body });
    $<HTMLDialogElement>('#op-dialog').close();
    openProgress(started.taskId);
    void loadTasks();
    refreshNodesSoon();
  } catch (error) {
    $('#op-error').textContent = (error as Error).message;
  } finally {
    submit.disabled = false;
  }
});

// ---------------------------------------------------------------- the client and its connection state

const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/progress`;
// The session cookie authenticates the socket; `persistence: 'session'` saves the cursor with each ack, so
// a reload resumes from where this page was instead of starting over.
// Reconnect attempts back off to 5 s at most (the library's default is 30 s): an operator watching a server
// restart should see the page come back within seconds.
const client = new ProgressClient({
  url: wsUrl,
  persistence: 'session',
  httpFallback: httpFallback(),
  reconnect: { maxDelayMs: 5000 },
});
let wasOpen = false;
client.on('state', ({ state }) => {
  const conn = $('#connection');
  const lost = wasOpen && (state === 'reconnecting' || state === 'connecting');
  if (state === 'open') {
    // Back after a loss: what changed meanwhile outside the watched tasks comes from the HTTP API.
    if (wasOpen && !conn.hidden) {
      void loadTasks();
      refreshNodesSoon();
    }
    wasOpen = true;
  }
  conn.hidden = !lost && state !== 'closed';
  conn.textContent = state === 'closed' ? 'disconnected' : 'reconnecting…';
  conn.className = `conn ${state}`;
  const warning = $('#progress-warning');
  warning.hidden = !lost;
  warning.textContent = lost ? 'Reconnecting… the progress shown may be behind; nothing is lost.' : '';
});

// ---------------------------------------------------------------- progress dialog

let watch: Watch | undefined;
let unsubscribe: (() => void) | undefined;
let closeTimer: ReturnType<typeof setTimeout> | undefined;
let elapsedTimer: ReturnType<typeof setInterval> | undefined;
let entry: TaskEntry | null = null;
let lastState: WatchState | null = null;
const results = new Map<string, ItemResult>();

function openProgress(taskId: string): void {
  closeProgressWatch();
  results.clear();
  entry = null;
  lastState = null;
  sessionStorage.setItem(RUNNING_TASK_KEY, taskId);
  const dialog = $<HTMLDialogElement>('#progress-dialog');
  dialog.dataset.taskId = taskId;
  dialog.dataset.state = 'running';
  $('#progress-title').textContent = 'Batch operation';
  $('#progress-status').textContent = 'Starting…';
  $('#progress-status').className = '';
  $('#progress-explain').hidden = true;
  $('#progress-link').hidden = true;
  $('#progress-count').textContent = '…';
  $('#progress-current').textContent = '';
  $('#progress-rate').textContent = '—';
  $('#progress-eta').textContent = '—';
  $('#progress-elapsed').textContent = '—';
  $<HTMLButtonElement>('#progress-cancel').hidden = true;
  $<HTMLButtonElement>('#progress-retry').hidden = true;
  $<HTMLButtonElement>('#progress-resume').hidden = true;
  loadProblems.clear();
  renderLoadProblems();
  $('#progress-rerun-error').hidden = true;
  renderResults();
  if (!dialog.open) dialog.showModal();

  const w = client.watch(taskId);
  watch = w;
  void loadEntry(w, taskId);
  void loadHistory(w, taskId);
  w.on('item', (event) => {
    results.set(event.item.key, event.item);
    renderResults();
  });
  unsubscribe = w.subscribe(() => renderState(w.getSnapshot()));
  renderState(w.getSnapshot());
  elapsedTimer = setInterval(renderElapsed, 1000);
  w.done.then(
    (state) => finished(w, state),
    (error: unknown) => {
      if (watch !== w) return;
      $('#progress-status').textContent = `Lost track of the task: ${(error as Error).message}`;
      $('#progress-status').className = 'failed';
      dialog.dataset.state = 'error';
      sessionStorage.removeItem(RUNNING_TASK_KEY);
    },
  );
}

/** Reads of the open dialog that are failing (what → why), shown together in `#progress-load-warning`. */
const loadProblems = new Map<string, string>();

function renderLoadProblems(): void {
  const box = $('#progress-load-warning');
  box.hidden = loadProblems.size === 0;
  box.textContent = [...loadProblems.values()].join(' ');
}

/** Retries a read with a growing pause, showing why meanwhile; gives up after `attempts`. */
async function withRetry<T>(w: Watch, what: string, read: () => Promise<T>, attempts = 6): Promise<T | null> {
  for (let attempt = 1; ; attempt++) {
    try {
      const value = await read();
      if (watch === w && loadProblems.delete(what)) renderLoadProblems();
      return value;
    } catch (error) {
      if (watch !== w) return null;
      if (
        error instanceof ApiError &&
        (error.status === 401 || error.status === 404 || error.status === 403)
      ) {
        throw error;
      }
      const last = attempt >= attempts;
      loadProblems.set(
        what,
        `Could not load ${what}: ${(error as Error).message}${last ? '. Reopen the task to try again.' : '. Retrying…'}`,
      );
      renderLoadProblems();
      if (last) return null;
      await new Promise((r) => setTimeout(r, Math.min(500 * 2 ** (attempt - 1), 8000)));
      if (watch !== w) return null;
    }
  }
}

async function loadEntry(w: Watch, taskId: string): Promise<void> {
  try {
    const got = await withRetry(w, 'the task’s node list', () =>
      api<{ task: TaskEntry }>(`/api/tasks/${encodeURIComponent(taskId)}`),
    );
    if (got === null || watch !== w) return;
    entry = got.task;
    if (entry.task?.message) $('#progress-title').textContent = entry.task.message;
    if (entry.parentTaskId !== null) {
      const link = $('#progress-link');
      link.hidden = false;
      link.textContent = `${entry.relation === 'retry_failed' ? 'Retry of the failed nodes' : 'Resumes the remaining nodes'} of task ${entry.parentTaskId.slice(0, 8)}`;
    }
    $<HTMLButtonElement>('#progress-cancel').hidden = !(
      canCancel(entry.username) && !w.getSnapshot().finished
    );
    renderResults();
    renderElapsed();
    if (lastState?.finished) finished(w, lastState);
  } catch (error) {
    if (watch === w) {
      loadProblems.set('entry', (error as Error).message);
      renderLoadProblems();
    }
  }
}

/** Items finished before this page (or before a reload) come from the HTTP API; later ones from the socket. */
async function loadHistory(w: Watch, taskId: string): Promise<void> {
  let after = 0;
  for (;;) {
    const page = await withRetry(w, 'the nodes finished before this page opened', () =>
      api<{
        events: { seq: number; type: string; item?: { key: string; ok: boolean; error: string | null } }[];
      }>(`/progress/tasks/${encodeURIComponent(taskId)}/events?afterSeq=${after}&limit=1000`),
    ).catch(() => null);
    if (page === null || watch !== w) return;
    for (const event of page.events) if (event.item) results.set(event.item.key, event.item);
    renderResults();
    if (page.events.length < 1000) return;
    after = page.events[page.events.length - 1]?.seq ?? after;
  }
}

function renderElapsed(): void {
  if (entry === null) return;
  const end = lastState?.finishedAt ?? entry.task?.finishedAt ?? (lastState?.finished ? Date.now() : null);
  $('#progress-elapsed').textContent = duration((end ?? Date.now()) - entry.createdAt);
}

function renderState(state: WatchState): void {
  lastState = state;
  // No progress yet: the first snapshot has not arrived.
  if (state.progress === null) return;
  const { done, total, current } = state.progress;
  $<HTMLProgressElement>('#progress-bar').value = state.fraction ?? 0;
  $('#progress-count').textContent = `${done} / ${total ?? '?'}`;
  $('#progress-current').textContent = state.finished ? '' : current ? ` · processing ${current}` : '';
  $('#progress-rate').textContent =
    state.rate === null ? '—' : `${state.rate.toFixed(state.rate < 10 ? 1 : 0)} nodes/s`;
  $('#progress-eta').textContent = state.finished ? 'done' : state.eta === null ? '—' : duration(state.eta);
  if (!state.finished) {
    $('#progress-status').textContent = `Running… ${Math.round((state.fraction ?? 0) * 100)}%`;
  }
  renderElapsed();
}

/** Nodes of the batch without a result yet: pending while it runs, not changed once it ended. */
function untouched(): string[] {
  return (entry?.nodes ?? []).filter((n) => !results.has(n));
}

function renderResults(): void {
  const ok = [...results]
    .filter(([, r]) => r.ok)
    .map(([key]) => key)
    .sort();
  const failed = [...results].filter(([, r]) => !r.ok).sort(([a], [b]) => a.localeCompare(b));
  $('#ok-count').textContent = String(ok.length);
  $('#fail-count').textContent = String(failed.length);
  $('#ok-list').replaceChildren(
    ...ok.map((key) => {
      // A drained node says what moved: "worker-3 · 3 pods evicted, 2 DaemonSet pods left".
      const detail = results.get(key)?.detail as { evicted?: unknown; skipped?: unknown } | null | undefined;
      const evicted = Array.isArray(detail?.evicted) ? detail.evicted : null;
      const skipped = Array.isArray(detail?.skipped) ? detail.skipped : [];
      return evicted === null
        ? el('li', { 'data-node': key }, key)
        : el(
            'li',
            { 'data-node': key, title: evicted.join('\n') },
            key,
            el(
              'small',
              {},
              ` · ${plural(evicted.length, 'pod')} evicted, ${plural(skipped.length, 'DaemonSet pod')} left`,
            ),
          );
    }),
  );
  $('#fail-list').replaceChildren(
    ...failed.map(([key, r]) => el('li', { 'data-node': key }, key, el('small', {}, r.error ?? 'failed'))),
  );
  const pending = untouched();
  const ended = lastState?.finished === true;
  $('#pending-title').textContent = ended ? 'Not changed' : 'Pending';
  // A finished batch that reached every node has nothing to list here.
  ($('#pending-list').parentElement as HTMLElement).hidden = ended && entry !== null && pending.length === 0;
  $('#pending-count').textContent = entry === null ? '…' : String(pending.length);
  const current = lastState?.progress?.current ?? null;
  $('#pending-list').replaceChildren(
    ...pending.map((key) =>
      el('li', { 'data-node': key, class: !ended && key === current ? 'current' : '' }, key),
    ),
  );
}

function finished(w: Watch, state: WatchState): void {
  if (watch !== w) return;
  lastState = state;
  const dialog = $<HTMLDialogElement>('#progress-dialog');
  const status = $('#progress-status');
  const explain = $('#progress-explain');
  renderState(state);
  renderResults();
  $<HTMLButtonElement>('#progress-cancel').hidden = true;
  const failures = state.progress?.failed ?? 0;
  const left = entry === null ? null : untouched();
  const leftText =
    left === null
      ? ''
      : left.length === 0
        ? ' Every node was processed.'
        : ` ${plural(left.length, 'node was', 'nodes were')} not changed: ${left.join(', ')}.`;
  explain.hidden = true;
  if (state.status === 'completed' && failures === 0) {
    status.textContent = 'batch operation complete';
    status.className = 'complete';
    dialog.dataset.state = 'complete';
    sessionStorage.removeItem(RUNNING_TASK_KEY);
    closeTimer = setTimeout(() => closeProgress(), AUTO_CLOSE_MS);
  } else {
    const state2 = state.status === 'completed' ? 'partial' : state.status;
    dialog.dataset.state = state2;
    status.className = state2 === 'partial' || state2 === 'cancelled' ? 'partial' : 'failed';
    if (state.status === 'completed') {
      status.textContent = `completed, ${failures} failed`;
      explain.textContent = `${plural(failures, 'node')} could not be changed; the reasons are listed below. The others were changed.`;
    } else if (state.status === 'interrupted') {
      status.textContent = 'interrupted: the server running this job stopped';
      explain.textContent = `The server process running this batch stopped before it finished (it crashed, was restarted or lost its database), so no one is changing these nodes any more.${leftText}`;
    } else if (state.status === 'cancelled') {
      status.textContent = 'cancelled';
      explain.textContent = `The batch was cancelled${state.error?.message ? ` (${state.error.message})` : ''}.${leftText}`;
    } else {
      status.textContent = `batch operation ${state.status}`;
      explain.textContent = `${state.error?.code === 'all_items_failed' ? 'No node could be changed; the reasons are listed below.' : (state.error?.message ?? '')}${left !== null && left.length > 0 ? leftText : ''}`;
    }
    explain.hidden = false;
    explain.dataset.detail = state.error?.message ?? '';
    explain.title = state.error ? `${state.error.code}: ${state.error.message}` : '';
    const mayRerun = entry !== null && canCancel(entry.username) && me.role !== 'viewer';
    const retry = $<HTMLButtonElement>('#progress-retry');
    retry.hidden = !(mayRerun && failures > 0);
    retry.textContent = `Retry failed (${failures})`;
    const resume = $<HTMLButtonElement>('#progress-resume');
    resume.hidden = !(mayRerun && left !== null && left.length > 0);
    resume.textContent = `Resume remaining (${left?.length ?? 0})`;
  }
  void loadTasks();
  // Not debounced away by a read already scheduled before the end: the locks and results must show now.
  setTimeout(() => void loadNodes(), 300);
}

function closeProgressWatch(): void {
  if (closeTimer !== undefined) clearTimeout(closeTimer);
  closeTimer = undefined;
  if (elapsedTimer !== undefined) clearInterval(elapsedTimer);
  elapsedTimer = undefined;
  unsubscribe?.();
  unsubscribe = undefined;
  watch?.close();
  watch = undefined;
}

function closeProgress(): void {
  closeProgressWatch();
  sessionStorage.removeItem(RUNNING_TASK_KEY);
  const dialog = $<HTMLDialogElement>('#progress-dialog');
  dialog.dataset.state = 'closed';
  dialog.close();
}

async function rerun(mode: 'retry_failed' | 'resume_remaining'): Promise<void> {
  const id = $<HTMLDialogElement>('#progress-dialog').dataset.taskId;
  if (id === undefined) return;
  try {
    const started = await api<{ taskId: string }>(`/api/tasks/${encodeURIComponent(id)}/rerun`, {
      method: 'POST',
      body: { mode },
    });
    openProgress(started.taskId);
    void loadTasks();
  } catch (error) {
    const box = $('#progress-rerun-error');
    box.hidden = false;
    box.textContent = (error as Error).message;
  }
}

$('#progress-close').addEventListener('click', closeProgress);
$('#progress-retry').addEventListener('click', () => void rerun('retry_failed'));
$('#progress-resume').addEventListener('click', () => void rerun('resume_remaining'));
$<HTMLDialogElement>('#progress-dialog').addEventListener('cancel', (event) => {
  event.preventDefault();
  closeProgress();
});
$('#progress-cancel').addEventListener('click', async () => {
  const id = $<HTMLDialogElement>('#progress-dialog').dataset.taskId;
  if (id === undefined) return;
  await api(`/progress/tasks/${encodeURIComponent(id)}/cancel`, {
    method: 'POST',
    body: { reason: `cancelled by ${me.username}` },
  }).catch((error: unknown) => {
    $('#progress-status').textContent = (error as Error).message;
  });
});

// ---------------------------------------------------------------- live task list

/**
 * The list is live by two means (see the README, "Live task list and node table"): each running task in
 * it is watched over the page's one socket (gap-free, and its final state always arrives), and the list
 * itself is re-read every few seconds and after a reconnect, for batches started elsewhere.
 */
const liveWatches = new Map<string, { watch: Watch; off: () => void }>();
let tasks: TaskEntry[] = [];

async function loadTasks(): Promise<void> {
  const scope = me.role === 'operator' ? 'mine' : 'all';
  try {
    tasks = (await api<{ tasks: TaskEntry[] }>(`/api/tasks?scope=${scope}&limit=15`)).tasks;
    $('#tasks-error').textContent = '';
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return showLogin();
    $('#tasks-error').textContent = `Could not load tasks: ${(error as Error).message}`;
    return;
  }
  $('#tasks-live').textContent = scope === 'all' ? '(everyone’s, live)' : '(live)';
  const running = new Set(
    tasks
      .filter((t) => t.task?.status === 'running')
      .slice(0, MAX_LIVE_WATCHES)
      .map((t) => t.id),
  );
  for (const [id, live] of liveWatches) {
    if (!running.has(id)) {
      live.off();
      live.watch.close();
      liveWatches.delete(id);
    }
  }
  for (const id of running) {
    if (liveWatches.has(id)) continue;
    const w = client.watch(id);
    const offState = w.subscribe(() => updateTaskRow(id, w.getSnapshot()));
    const onItem = () => refreshNodesSoon();
    w.on('item', onItem);
    w.done.then(
      () => {
        void loadTasks();
        refreshNodesSoon();
      },
      () => undefined,
    );
    liveWatches.set(id, {
      watch: w,
      off: () => {
        offState();
        w.off('item', onItem);
      },
    });
  }
  renderTasks();
  for (const [id, live] of liveWatches) updateTaskRow(id, live.watch.getSnapshot());
}

function describeEntry(t: TaskEntry): string {
  const what = t.task?.message ?? String(t.operation.type);
  const by = t.username === me.username ? '' : ` — ${t.username}`;
  const link =
    t.parentTaskId === null
      ? ''
      : ` (${t.relation === 'retry_failed' ? 'retry' : 'resume'} of ${t.parentTaskId.slice(0, 8)})`;
  return `${what}${link}${by}`;
}

function resultText(task: TaskState | null): string {
  if (task === null) return '—';
  if (task.status === 'running') return `${task.done} / ${task.total ?? '?'}`;
  return `${task.succeeded} ok${task.failed ? `, ${task.failed} failed` : ''}${task.status === 'interrupted' ? `, ${(task.total ?? 0) - task.done} not changed` : ''}`;
}

function renderTasks(): void {
  $('#tasks tbody').replaceChildren(
    ...tasks.map((t) => {
      const open = el('button', { type: 'button' }, t.task?.status === 'running' ? 'Watch' : 'Details');
      open.addEventListener('click', () => openProgress(t.id));
      const label = statusLabel(t.task);
      return el(
        'tr',
        { 'data-task': t.id },
        el('td', { title: new Date(t.createdAt).toLocaleString() }, ago(t.createdAt)),
        el('td', {}, describeEntry(t)),
        el('td', { class: `status ${label.cls}` }, label.text),
        el('td', { class: 'result' }, resultText(t.task)),
        el('td', {}, open),
      );
    }),
  );
}

/** Moves one row forward from its watch (the list itself is not re-read for every item). */
function updateTaskRow(id: string, state: WatchState): void {
  const t = tasks.find((x) => x.id === id);
  if (t === undefined || t.task === null || state.progress === null) return;
  t.task = {
    ...t.task,
    status: state.status,
    done: state.progress.done,
    total: state.progress.total,
    succeeded: state.progress.succeeded,
    failed: state.progress.failed,
    error: state.error,
  };
  const row = document.querySelector(`#tasks tr[data-task="${CSS.escape(id)}"]`);
  if (row === null) return;
  const label = statusLabel(t.task);
  const statusCell = row.querySelector('td.status');
  if (statusCell) {
    statusCell.textContent = label.text;
    statusCell.className = `status ${label.cls}`;
  }
  const resultCell = row.querySelector('td.result');
  if (resultCell) resultCell.textContent = resultText(t.task);
}

let polling = false;
function startPolling(): void {
  if (polling) return;
  polling = true;
  setInterval(() => {
    if (document.visibilityState === 'visible') void loadTasks();
  }, TASK_LIST_POLL_MS);
  setInterval(() => {
    if (document.visibilityState === 'visible') void loadNodes();
  }, NODE_POLL_MS);
}

// ---------------------------------------------------------------- audit

let auditRows: TaskEntry[] = [];

async function loadAudit(more: boolean): Promise<void> {
  const before = more ? auditRows[auditRows.length - 1]?.createdAt : undefined;
  try {
    const page = (
      await api<{ tasks: TaskEntry[] }>(`/api/tasks?scope=all&limit=50${before ? `&before=${before}` : ''}`)
    ).tasks;
    auditRows = more ? [...auditRows, ...page] : page;
    $('#audit-error').textContent = '';
    $('#audit-more').hidden = page.length < 50;
  } catch (error) {
    $('#audit-error').textContent = `Could not load the audit log: ${(error as Error).message}`;
    return;
  }
  $('#audit-scope').textContent = me.role === 'operator' ? '(your batches)' : '(every user)';
  $('#audit tbody').replaceChildren(
    ...auditRows.map((t) => {
      const label = statusLabel(t.task);
      const open = el('button', { type: 'button', class: 'link' }, 'details');
      open.addEventListener('click', () => openProgress(t.id));
      const reason =
        typeof t.operation.reason === 'string' && t.operation.reason ? ` — “${t.operation.reason}”` : '';
      return el(
        'tr',
        { 'data-task': t.id },
        el('td', { title: new Date(t.createdAt).toLocaleString() }, new Date(t.createdAt).toLocaleString()),
        el('td', {}, t.username),
        el(
          'td',
          {},
          `${t.task?.message ?? String(t.operation.type)}${reason}`,
          t.parentTaskId === null
            ? ''
            : ` (${t.relation === 'retry_failed' ? 'retry of failed nodes' : 'resume'} of ${t.parentTaskId.slice(0, 8)})`,
          ' ',
          open,
        ),
        el(
          'td',
          { title: t.nodes.join('\n') },
          t.nodes.length <= 4
            ? t.nodes.join(', ')
            : `${t.nodes.slice(0, 3).join(', ')} +${t.nodes.length - 3}`,
        ),
        el(
          'td',
          { class: label.cls },
          label.text,
          t.task && t.task.status !== 'running' ? ` · ${resultText(t.task)}` : '',
        ),
      );
    }),
  );
}
$('#audit-more').addEventListener('click', () => void loadAudit(true));

// ---------------------------------------------------------------- start

api<{ username: string; role: Role; csrfToken: string }>('/api/session').then(
  (session) => showApp(session),
  () => showLogin(),
);
