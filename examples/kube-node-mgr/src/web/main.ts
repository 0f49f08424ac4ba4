import { ProgressClient, type Watch, type WatchState } from '@finishline/client';

interface NodeView {
  name: string;
  labels: Record<string, string>;
  taints: { key: string; value?: string; effect: string }[];
  unschedulable: boolean;
  roles: string[];
  zone: string | null;
  instanceType: string | null;
  ready: boolean;
}

interface TaskView {
  id: string;
  kind: string;
  status: string;
  total: number | null;
  done: number;
  succeeded: number;
  failed: number;
  message: string | null;
  createdAt: number;
  error: { code: string; message: string } | null;
}

type OpType = 'taint_add' | 'taint_remove' | 'label_add' | 'label_remove' | 'cordon' | 'uncordon';

/** sessionStorage key of the task whose progress dialog is open (a reload reopens it). */
const RUNNING_TASK_KEY = 'knm.runningTask';
/** The dialog closes itself this long after a complete success. */
const AUTO_CLOSE_MS = 3000;

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
let nodes: NodeView[] = [];
const selected = new Set<string>();

class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

async function api<T>(path: string, init: { method?: string; body?: unknown } = {}): Promise<T> {
  const response = await fetch(path, {
    method: init.method ?? 'GET',
    credentials: 'same-origin',
    headers: init.body === undefined ? {} : { 'content-type': 'application/json', 'x-csrf-token': csrfToken },
    ...(init.body === undefined ? {} : { body: JSON.stringify(init.body) }),
  });
  const text = await response.text();
  const body = text === '' ? {} : (JSON.parse(text) as { error?: { message?: string } });
  if (!response.ok) throw new ApiError(response.status, body.error?.message ?? `HTTP ${response.status}`);
  return body as T;
}

// ---------------------------------------------------------------- login

function showLogin(): void {
  $('#app-view').hidden = true;
  $('#logout').hidden = true;
  $('#whoami').textContent = '';
  $('#login-view').hidden = false;
  $<HTMLInputElement>('#login-form input[name=username]').focus();
}

async function showApp(username: string, token: string): Promise<void> {
  csrfToken = token;
  $('#login-view').hidden = true;
  $('#app-view').hidden = false;
  $('#logout').hidden = false;
  $('#whoami').textContent = username;
  await Promise.all([loadNodes(), loadTasks()]);
  const running = sessionStorage.getItem(RUNNING_TASK_KEY);
  if (running !== null) openProgress(running, null);
}

$<HTMLFormElement>('#login-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const form = new FormData(event.target as HTMLFormElement);
  $('#login-error').textContent = '';
  try {
    const session = await api<{ username: string; csrfToken: string }>('/api/login', {
      method: 'POST',
      body: { username: form.get('username'), password: form.get('password') },
    });
    await showApp(session.username, session.csrfToken);
  } catch (error) {
    $('#login-error').textContent = (error as Error).message;
  }
});

$('#logout').addEventListener('click', async () => {
  await api('/api/logout', { method: 'POST', body: {} }).catch(() => undefined);
  sessionStorage.removeItem(RUNNING_TASK_KEY);
  location.reload();
});

// ---------------------------------------------------------------- nodes

const STANDARD_LABEL =
  /^(kubernetes\.io|beta\.kubernetes\.io|node\.kubernetes\.io\/instance-type|topology\.kubernetes\.io|node-role\.kubernetes\.io)/;

async function loadNodes(): Promise<void> {
  $('#nodes-error').textContent = '';
  try {
    nodes = (await api<{ nodes: NodeView[] }>('/api/nodes')).nodes;
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
    checkbox.addEventListener('change', () => {
      if (checkbox.checked) selected.add(n.name);
      else selected.delete(n.name);
      renderNodes();
    });
    const status = n.unschedulable
      ? el('span', { class: 'status-cordoned' }, `${n.ready ? 'Ready' : 'NotReady'}, SchedulingDisabled`)
      : el('span', { class: n.ready ? 'status-ready' : 'error' }, n.ready ? 'Ready' : 'NotReady');
    const taints = n.taints.map((t) =>
      el('span', { class: `chip taint ${t.effect}` }, `${t.key}${t.value ? `=${t.value}` : ''}:${t.effect}`),
    );
    const custom = Object.entries(n.labels).filter(([k]) => !STANDARD_LABEL.test(k));
    const labels = custom.map(([k, v]) => el('span', { class: 'chip' }, v === '' ? k : `${k}=${v}`));
    const labelCell = el(
      'td',
      {
        title: Object.entries(n.labels)
          .map(([k, v]) => `${k}=${v}`)
          .join('\n'),
      },
      ...labels,
    );
    const row = el(
      'tr',
      { 'data-node': n.name, class: selected.has(n.name) ? 'selected' : '' },
      el('td', {}, checkbox),
      el('td', {}, el('strong', {}, n.name)),
      el('td', {}, status),
      el('td', {}, n.roles.join(', ') || '—'),
      el('td', {}, n.zone ?? '—'),
      el('td', {}, n.instanceType ?? '—'),
      el('td', {}, ...(taints.length ? taints : ['—'])),
      labelCell,
    );
    return row;
  });
  $('#nodes tbody').replaceChildren(...rows);
  const selectAll = $<HTMLInputElement>('#select-all');
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
};
const OP_FIELDS: Record<OpType, string[]> = {
  taint_add: ['key', 'value', 'effect'],
  taint_remove: ['key', 'effect'],
  label_add: ['key', 'value'],
  label_remove: ['key'],
  cordon: [],
  uncordon: [],
};
let currentOp: OpType = 'cordon';

for (const button of document.querySelectorAll<HTMLButtonElement>('button[data-op]')) {
  button.addEventListener('click', () => openOperation(button.dataset.op as OpType));
}

function openOperation(op: OpType): void {
  currentOp = op;
  const dialog = $<HTMLDialogElement>('#op-dialog');
  const form = $<HTMLFormElement>('#op-form');
  form.reset();
  $('#op-title').textContent = OP_TITLES[op];
  const names = [...selected].sort();
  $('#op-nodes').textContent = `${names.length} node${names.length === 1 ? '' : 's'}: ${names.join(', ')}`;
  for (const label of form.querySelectorAll<HTMLElement>('label[data-field]')) {
    label.hidden = !OP_FIELDS[op].includes(label.dataset.field ?? '');
  }
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
    op === 'cordon' ? 'Cordon' : op === 'uncordon' ? 'Uncordon' : 'Run';
  dialog.showModal();
}

$('#op-cancel').addEventListener('click', () => $<HTMLDialogElement>('#op-dialog').close());

$<HTMLFormElement>('#op-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const form = new FormData(event.target as HTMLFormElement);
  const body: Record<string, unknown> = { operation: currentOp, nodes: [...selected].sort() };
  for (const field of OP_FIELDS[currentOp]) {
    const value = String(form.get(field) ?? '');
    if (value !== '' || (field === 'value' && currentOp === 'label_add')) body[field] = value;
  }
  const submit = $<HTMLButtonElement>('#op-submit');
  submit.disabled = true;
  try {
    const started = await api<{ taskId: string; description: string }>('/api/batch', {
      method: 'POST',
      body,
    });
    $<HTMLDialogElement>('#op-dialog').close();
    openProgress(started.taskId, started.description);
    void loadTasks();
  } catch (error) {
    $('#op-error').textContent = (error as Error).message;
  } finally {
    submit.disabled = false;
  }
});

// ---------------------------------------------------------------- progress dialog

const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/progress`;
// The session cookie authenticates the socket; `persistence: 'session'` saves the cursor with each ack, so
// a reload resumes from where this page was instead of starting over.
const client = new ProgressClient({ url: wsUrl, persistence: 'session' });

let watch: Watch | undefined;
let unsubscribe: (() => void) | undefined;
let closeTimer: ReturnType<typeof setTimeout> | undefined;
const results = new Map<string, { ok: boolean; error: string | null }>();

function openProgress(taskId: string, description: string | null): void {
  closeProgressWatch();
  results.clear();
  sessionStorage.setItem(RUNNING_TASK_KEY, taskId);
  const dialog = $<HTMLDialogElement>('#progress-dialog');
  dialog.dataset.taskId = taskId;
  dialog.dataset.state = 'running';
  $('#progress-title').textContent = description ?? 'Batch operation';
  $('#progress-status').textContent = 'Starting…';
  $('#progress-status').className = '';
  $<HTMLButtonElement>('#progress-cancel').hidden = false;
  renderResults();
  if (!dialog.open) dialog.showModal();

  const w = client.watch(taskId);
  watch = w;
  // Items finished before this page (or before a reload) come from the HTTP API; later ones from the socket.
  void api<{
    task: TaskView;
    events: { type: string; item?: { key: string; ok: boolean; error: string | null } }[];
  }>(`/progress/tasks/${encodeURIComponent(taskId)}/events?afterSeq=0&limit=1000`)
    .then(({ task, events }) => {
      if (watch !== w) return;
      if (description === null && task.message) $('#progress-title').textContent = task.message;
      for (const event of events) if (event.item) results.set(event.item.key, event.item);
      renderResults();
    })
    .catch(() => undefined);
  w.on('item', (event) => {
    results.set(event.item.key, event.item);
    renderResults();
  });
  unsubscribe = w.subscribe(() => renderState(w.getSnapshot()));
  renderState(w.getSnapshot());
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

function renderState(state: WatchState): void {
  // No progress yet: the first snapshot has not arrived.
  if (state.progress === null) return;
  const { done, total, current, message } = state.progress;
  const bar = $<HTMLProgressElement>('#progress-bar');
  bar.value = state.fraction ?? 0;
  $('#progress-count').textContent = `${done} / ${total ?? '?'}`;
  $('#progress-current').textContent = state.finished ? '' : current ? ` · processing ${current}` : '';
  if (message && $('#progress-title').textContent === 'Batch operation')
    $('#progress-title').textContent = message;
  if (!state.finished) {
    $('#progress-status').textContent = `Running… ${Math.round((state.fraction ?? 0) * 100)}%`;
  }
}

function renderResults(): void {
  const ok = [...results]
    .filter(([, r]) => r.ok)
    .map(([key]) => key)
    .sort();
  const failed = [...results].filter(([, r]) => !r.ok).sort(([a], [b]) => a.localeCompare(b));
  $('#ok-count').textContent = String(ok.length);
  $('#fail-count').textContent = String(failed.length);
  $('#ok-list').replaceChildren(...ok.map((key) => el('li', {}, key)));
  $('#fail-list').replaceChildren(
    ...failed.map(([key, r]) => el('li', { 'data-node': key }, key, el('small', {}, r.error ?? 'failed'))),
  );
}

function finished(w: Watch, state: WatchState): void {
  if (watch !== w) return;
  const dialog = $<HTMLDialogElement>('#progress-dialog');
  const status = $('#progress-status');
  renderState(state);
  $<HTMLButtonElement>('#progress-cancel').hidden = true;
  const failures = state.progress?.failed ?? 0;
  if (state.status === 'completed' && failures === 0) {
    status.textContent = 'batch operation complete';
    status.className = 'complete';
    dialog.dataset.state = 'complete';
    sessionStorage.removeItem(RUNNING_TASK_KEY);
    closeTimer = setTimeout(() => closeProgress(), AUTO_CLOSE_MS);
  } else {
    const why =
      state.status === 'completed'
        ? `batch operation completed with ${failures} failed node${failures === 1 ? '' : 's'}`
        : `batch operation ${state.status}${state.error ? `: ${state.error.message}` : ''}`;
    status.textContent = why;
    status.className = 'failed';
    dialog.dataset.state = state.status === 'completed' ? 'partial' : state.status;
  }
  void loadNodes();
  void loadTasks();
}

function closeProgressWatch(): void {
  if (closeTimer !== undefined) clearTimeout(closeTimer);
  closeTimer = undefined;
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

$('#progress-close').addEventListener('click', closeProgress);
$<HTMLDialogElement>('#progress-dialog').addEventListener('cancel', (event) => {
  event.preventDefault();
  closeProgress();
});
$('#progress-cancel').addEventListener('click', async () => {
  const id = $<HTMLDialogElement>('#progress-dialog').dataset.taskId;
  if (id === undefined) return;
  await api(`/progress/tasks/${encodeURIComponent(id)}/cancel`, {
    method: 'POST',
    body: { reason: 'cancelled from the UI' },
  }).catch((error: unknown) => {
    $('#progress-status').textContent = (error as Error).message;
  });
});

// ---------------------------------------------------------------- recent tasks

async function loadTasks(): Promise<void> {
  let tasks: TaskView[];
  try {
    tasks = (await api<{ tasks: TaskView[] }>('/progress/tasks?limit=15')).tasks;
  } catch {
    return;
  }
  $('#tasks tbody').replaceChildren(
    ...tasks.map((t) => {
      const open = el('button', {}, t.status === 'running' ? 'Watch' : 'Details');
      open.addEventListener('click', () => openProgress(t.id, t.message));
      const result =
        t.status === 'running'
          ? `${t.done} / ${t.total ?? '?'}`
          : `${t.succeeded} ok${t.failed ? `, ${t.failed} failed` : ''}${t.error ? ` (${t.error.message})` : ''}`;
      return el(
        'tr',
        { 'data-task': t.id },
        el('td', {}, new Date(t.createdAt).toLocaleString()),
        el('td', {}, t.message ?? t.kind),
        el('td', { class: `st-${t.status}` }, t.status),
        el('td', {}, result),
        el('td', {}, open),
      );
    }),
  );
}

// ---------------------------------------------------------------- start

api<{ username: string; csrfToken: string }>('/api/session').then(
  (session) => showApp(session.username, session.csrfToken),
  () => showLogin(),
);
