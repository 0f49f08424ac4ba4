/** "Recent tasks": the list, kept live by watching its running tasks and by re-reading it. */
import type { Watch, WatchState } from '@finishline/client';
import type { TaskEntry, TaskState } from '../shared/api-types.js';
import { api } from './api.js';
import { client } from './connection.js';
import { $, ago, el, statusLabel } from './dom.js';
import { clusterQuery, loadNodes, refreshNodesSoon } from './nodes.js';
import { openProgress } from './progress-dialog.js';
import { onSessionEnd, sameSession, sessionMark } from './session.js';
import { MAX_LIVE_WATCHES, NODE_POLL_MS, signedIn, state, TASK_LIST_POLL_MS } from './state.js';

/**
 * The list is live by two means (see the README, "Live task list and node table"): each running task in
 * it is watched over the page's one socket (gap-free, and its final state always arrives), and the list
 * itself is re-read every few seconds and after a reconnect, for batches started elsewhere.
 */
const liveWatches = new Map<string, { watch: Watch; off: () => void }>();
export let tasks: TaskEntry[] = [];
/** The last read of the list asked for: an earlier one answering after it is not shown. */
let tasksRead = 0;

export async function loadTasks(): Promise<void> {
  if (!signedIn()) return;
  const scope = state.me.role === 'operator' ? 'mine' : 'all';
  const cluster = state.cluster;
  const session = sessionMark();
  const asked = ++tasksRead;
  try {
    const read = (await api<{ tasks: TaskEntry[] }>(`/api/tasks?scope=${scope}&limit=15&${clusterQuery()}`))
      .tasks;
    // The picker moved on while this was read (that list belongs to the other cluster), the session ended,
    // or a later read was asked for: reads overlap (the poll, a batch started, a watched batch's end; behind
    // the replicas' proxy each on another replica), and an older answer arriving last put back the list of
    // before, a batch just started gone from it and its row's watch closed.
    if (cluster !== state.cluster || !sameSession(session) || asked !== tasksRead) return;
    tasks = read;
    $('#tasks-error').textContent = '';
  } catch (error) {
    // A 401 has ended the session (api.ts): nothing of it is shown any more.
    if (!sameSession(session) || asked !== tasksRead) return;
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
  for (const id of liveWatches.keys()) if (!running.has(id)) stopLiveWatch(id);
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

function stopLiveWatch(id: string): void {
  const live = liveWatches.get(id);
  if (live === undefined) return;
  live.off();
  live.watch.close();
  liveWatches.delete(id);
}

function describeEntry(t: TaskEntry): string {
  const what = t.task?.message ?? String(t.operation.type);
  const by = t.username === state.me.username ? '' : ` — ${t.username}`;
  const link =
    t.parentTaskId === null
      ? ''
      : ` (${t.relation === 'retry_failed' ? 'retry' : 'resume'} of ${t.parentTaskId.slice(0, 8)})`;
  return `${what}${link}${by}`;
}

/**
 * A row's counts. An interrupted batch's nodes without a result are not called "not changed": its server
 * may have changed one just before dying, its result never recorded (the dialog reads them back).
 */
export function resultText(task: TaskState | null): string {
  if (task === null) return '—';
  if (task.status === 'running') return `${task.done} / ${task.total ?? '?'}`;
  return `${task.succeeded} ok${task.failed ? `, ${task.failed} failed` : ''}${task.status === 'interrupted' ? `, ${(task.total ?? 0) - task.done} without a result` : ''}`;
}

function renderTasks(): void {
  $('#tasks tbody').replaceChildren(
    ...tasks.map((t) => {
      const open = el('button', { type: 'button' }, t.task?.status === 'running' ? 'Watch' : 'Details');
      // Read at the click: the row's watch may have moved it to its end since it was drawn.
      open.addEventListener('click', () => openProgress(t.id, { autoClose: t.task?.status === 'running' }));
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
function updateTaskRow(id: string, snap: WatchState): void {
  const t = tasks.find((x) => x.id === id);
  if (t === undefined || t.task === null || snap.progress === null) return;
  t.task = {
    ...t.task,
    status: snap.status,
    done: snap.progress.done,
    total: snap.progress.total,
    succeeded: snap.progress.succeeded,
    failed: snap.progress.failed,
    error: snap.error,
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

let polling: ReturnType<typeof setInterval>[] = [];
export function startPolling(): void {
  if (polling.length > 0) return;
  polling = [
    setInterval(() => {
      if (document.visibilityState === 'visible') void loadTasks();
    }, TASK_LIST_POLL_MS),
    setInterval(() => {
      if (document.visibilityState === 'visible') void loadNodes();
    }, NODE_POLL_MS),
  ];
}

// The old session's watches closed (the socket would resubscribe them for the next user), its rows gone, and
// no polling while signed out (each poll's 401 would show the login form again, moving the focus).
onSessionEnd(() => {
  for (const id of [...liveWatches.keys()]) stopLiveWatch(id);
  tasks = [];
  renderTasks();
  $('#tasks-live').textContent = '';
  $('#tasks-error').textContent = '';
  for (const timer of polling) clearInterval(timer);
  polling = [];
});
