/** The progress dialog of one batch: live state, per-node results, final state in operator words, reruns. */
import type { Watch, WatchState } from '@finishline/client';
import type { TaskEntry } from '../shared/api-types.js';
import { ApiError, api } from './api.js';
import { client } from './connection.js';
import { $, duration, el, plural, someNames } from './dom.js';
import { loadNodes } from './nodes.js';
import { onSessionEnd } from './session.js';
import { AUTO_CLOSE_MS, canCancel, RUNNING_TASK_KEY, state } from './state.js';
import { loadTasks } from './task-list.js';

type ItemResult = { ok: boolean; error: string | null; detail?: unknown };

export let watch: Watch | undefined;
let unsubscribe: (() => void) | undefined;
let closeTimer: ReturnType<typeof setTimeout> | undefined;
let elapsedTimer: ReturnType<typeof setInterval> | undefined;
let entry: TaskEntry | null = null;
let lastState: WatchState | null = null;
const results = new Map<string, ItemResult>();
/**
 * For an ended task, its nodes without a recorded result: whether each now has the operation's change
 * (`GET /api/tasks/:id/unrecorded`). A batch whose server died may have changed a node just before, its
 * result never recorded: such a node is not called "not changed". `null`: could not be read back; `'gone'`:
 * no longer in the cluster. Absent: not known (yet).
 */
const unrecorded = new Map<string, boolean | null | 'gone'>();
let unrecordedFor: Watch | undefined;
/** The last seq of the open dialog's history read so far: the next read continues after it. */
let historySeq = 0;
/** The seq of the latest snapshot the open dialog's watch applied: the history must be read up to it. */
let snapshotSeq = 0;
/** The watch whose history is being read (one read at a time; a snapshot meanwhile extends it). */
let historyReader: Watch | undefined;

/** Options of {@link openProgress}. */
export interface OpenProgressOptions {
  /**
   * Close the dialog {@link AUTO_CLOSE_MS} after a complete success. Off for "Details" of a batch that had
   * ended already: the user opened it to read its results, which closing after 3 s took away.
   * @default true
   */
  autoClose?: boolean;
}

/** Whether the open dialog closes itself after a complete success (see {@link OpenProgressOptions}). */
let autoClose = true;

export function openProgress(taskId: string, options: OpenProgressOptions = {}): void {
  closeProgressWatch();
  autoClose = options.autoClose ?? true;
  results.clear();
  unrecorded.clear();
  unrecordedFor = undefined;
  historySeq = 0;
  snapshotSeq = 0;
  historyReader = undefined;
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
  $<HTMLProgressElement>('#progress-bar').value = 0;
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
  $('#progress-rerun-note').hidden = true;
  renderResults();
  if (!dialog.open) dialog.showModal();

  const w = client.watch(taskId);
  watch = w;
  void loadEntry(w, taskId);
  void loadHistory(w, taskId);
  w.on('item', (event) => {
    results.set(event.item.key, event.item);
    scheduleResults();
  });
  // A snapshot moves the watch over events it never delivers: a watch's first one (the socket sends no item
  // before it, and the history read sent at the same time may have been served before it was taken), a
  // resync. The items up to it come from the history, read again past its seq.
  w.on('snapshot', (snap) => {
    snapshotSeq = Math.max(snapshotSeq, snap.seq);
    void loadHistory(w, taskId);
  });
  unsubscribe = w.subscribe(() => renderState(w.getSnapshot()));
  renderState(w.getSnapshot());
  elapsedTimer = setInterval(renderElapsed, 1000);
  w.done.then(
    (snap) => finished(w, snap),
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

/**
 * Items finished before this page (or before a reload, or before the watch's latest snapshot) come from the
 * HTTP API; later ones from the socket. Reads on from the last seq read until past {@link snapshotSeq}.
 */
async function loadHistory(w: Watch, taskId: string): Promise<void> {
  if (historyReader === w) return; // the read under way goes on past the new snapshot
  historyReader = w;
  try {
    for (;;) {
      const page = await withRetry(w, 'the nodes finished before this page opened', () =>
        api<{
          events: { seq: number; type: string; item?: { key: string; ok: boolean; error: string | null } }[];
        }>(`/progress/tasks/${encodeURIComponent(taskId)}/events?afterSeq=${historySeq}&limit=1000`),
      ).catch(() => null);
      if (page === null || watch !== w) return;
      for (const event of page.events) if (event.item) results.set(event.item.key, event.item);
      historySeq = page.events[page.events.length - 1]?.seq ?? historySeq;
      renderResults();
      // An empty page: nothing more to read, whatever the snapshot said.
      if (page.events.length === 0 || (page.events.length < 1000 && historySeq >= snapshotSeq)) {
        // The final state may have come first (a reload, a task reopened from the list): its explanation
        // and rerun buttons were written without these nodes, calling them all "not changed".
        if (lastState?.finished) finished(w, lastState);
        return;
      }
    }
  } finally {
    if (historyReader === w) historyReader = undefined;
  }
}

function renderElapsed(): void {
  if (entry === null) return;
  const end = lastState?.finishedAt ?? entry.task?.finishedAt ?? (lastState?.finished ? Date.now() : null);
  $('#progress-elapsed').textContent = duration((end ?? Date.now()) - entry.createdAt);
}

function renderState(snap: WatchState): void {
  lastState = snap;
  // No progress yet: the first snapshot has not arrived.
  if (snap.progress === null) return;
  const { done, total, current } = snap.progress;
  $<HTMLProgressElement>('#progress-bar').value = snap.fraction ?? 0;
  $('#progress-count').textContent = `${done} / ${total ?? '?'}`;
  $('#progress-current').textContent = snap.finished ? '' : current ? ` · processing ${current}` : '';
  $('#progress-rate').textContent =
    snap.rate === null ? '—' : `${snap.rate.toFixed(snap.rate < 10 ? 1 : 0)} nodes/s`;
  $('#progress-eta').textContent = snap.finished ? 'done' : snap.eta === null ? '—' : duration(snap.eta);
  if (!snap.finished) {
    $('#progress-status').textContent = `Running… ${Math.round((snap.fraction ?? 0) * 100)}%`;
  }
  renderElapsed();
}

/**
 * A drain batch cordons all its nodes before draining them (as `kubectl drain` does): its nodes without a
 * result after an early end (cancelled, interrupted) were not drained, but may well be cordoned.
 */
const isDrain = () => entry?.operation.type === 'drain';

/** Nodes of the batch without a result yet: pending while it runs, not changed once it ended. */
function untouched(): string[] {
  return (entry?.nodes ?? []).filter((n) => !results.has(n));
}

/** Of the nodes without a result, those that already have the change (read after the end). */
const alreadyChanged = (key: string) => unrecorded.get(key) === true;
/** Of the nodes without a result, those whose state could not be read back: not known to be unchanged. */
const stateUnknown = (key: string) => unrecorded.has(key) && unrecorded.get(key) === null;
/**
 * Of the nodes without a result, those deleted from the cluster since: called "could not be read back", the
 * user was asked to verify a node that no longer exists.
 */
const gone = (key: string) => unrecorded.get(key) === 'gone';
/** Of the nodes without a result, those listed apart from the ones not changed. */
const setApart = (key: string) => alreadyChanged(key) || stateUnknown(key) || gone(key);

/**
 * The lists' rebuild after a node's result: at once after a quiet {@link RESULTS_RENDER_MS}, else once at
 * its end. Rebuilt per result, a 5,000-node batch built 25 million rows, and a reconnect's catch-up, which
 * delivers results in a burst, froze the page for as long.
 */
let resultsTimer: ReturnType<typeof setTimeout> | undefined;
let resultsRenderedAt = 0;
const RESULTS_RENDER_MS = 100;

function scheduleResults(): void {
  if (resultsTimer !== undefined) return;
  const wait = resultsRenderedAt + RESULTS_RENDER_MS - Date.now();
  if (wait <= 0) renderResults();
  else resultsTimer = setTimeout(renderResults, wait);
}

function renderResults(): void {
  clearTimeout(resultsTimer);
  resultsTimer = undefined;
  resultsRenderedAt = Date.now();
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
  $('#pending-title').textContent = ended
    ? pending.some(setApart)
      ? 'Without a recorded result'
      : isDrain()
        ? 'Not drained'
        : 'Not changed'
    : 'Pending';
  // A finished batch that reached every node has nothing to list here.
  ($('#pending-list').parentElement as HTMLElement).hidden = ended && entry !== null && pending.length === 0;
  $('#pending-count').textContent = entry === null ? '…' : String(pending.length);
  const current = lastState?.progress?.current ?? null;
  $('#pending-list').replaceChildren(
    ...pending.map((key) =>
      ended && setApart(key)
        ? el(
            'li',
            {
              'data-node': key,
              class: alreadyChanged(key) ? 'already-changed' : gone(key) ? 'gone' : 'state-unknown',
            },
            key,
            el(
              'small',
              {},
              alreadyChanged(key)
                ? isDrain()
                  ? ' · already drained; its result was not recorded'
                  : ' · already has the change; its result was not recorded'
                : gone(key)
                  ? ' · no longer exists in the cluster'
                  : ' · no recorded result; its state could not be read',
            ),
          )
        : el('li', { 'data-node': key, class: !ended && key === current ? 'current' : '' }, key),
    ),
  );
}

function finished(w: Watch, snap: WatchState): void {
  if (watch !== w) return;
  lastState = snap;
  const dialog = $<HTMLDialogElement>('#progress-dialog');
  const status = $('#progress-status');
  const explain = $('#progress-explain');
  renderState(snap);
  renderResults();
  $<HTMLButtonElement>('#progress-cancel').hidden = true;
  const failures = snap.progress?.failed ?? 0;
  const left = entry === null ? null : untouched();
  // Nodes without a result may still have been changed (the server stopped between the change and its
  // record): once the end is known, ask which already have the change, then render again.
  if (left !== null && left.length > 0 && unrecordedFor !== w) {
    unrecordedFor = w;
    void loadUnrecorded(w, snap, left);
  }
  const changed = (left ?? []).filter(alreadyChanged);
  const unknown = (left ?? []).filter(stateUnknown);
  const deleted = (left ?? []).filter(gone);
  const unchanged = (left ?? []).filter((n) => !setApart(n));
  const deletedText =
    deleted.length === 0
      ? ''
      : ` ${plural(deleted.length, 'node no longer exists', 'nodes no longer exist')} in the cluster: ${someNames(deleted)}.`;
  const leftText =
    left === null
      ? ''
      : left.length === 0
        ? ' Every node was processed.'
        : isDrain()
          ? `${unchanged.length === 0 ? '' : ` ${plural(unchanged.length, 'node was', 'nodes were')} not drained: ${someNames(unchanged)}. A drain cordons all its nodes first, so ${unchanged.length === 1 ? 'it' : 'they'} may be left cordoned: resume the drain, or uncordon ${unchanged.length === 1 ? 'it' : 'them'}.`}${changed.length === 0 ? '' : ` ${plural(changed.length, 'node is', 'nodes are')} drained without a recorded result (drained just before the batch stopped, or already so): ${someNames(changed)}.`}${unknown.length === 0 ? '' : ` ${plural(unknown.length, 'node has', 'nodes have')} no recorded result and could not be read back, so may or may not have been drained, and may be left cordoned: ${someNames(unknown)}.`}${deletedText}`
          : `${unchanged.length === 0 ? '' : ` ${plural(unchanged.length, 'node was', 'nodes were')} not changed: ${someNames(unchanged)}.`}${changed.length === 0 ? '' : ` ${plural(changed.length, 'node has', 'nodes have')} the change without a recorded result (changed just before the batch stopped, or already so): ${someNames(changed)}.`}${unknown.length === 0 ? '' : ` ${plural(unknown.length, 'node has', 'nodes have')} no recorded result and could not be read back, so may or may not have been changed: ${someNames(unknown)}.`}${deletedText}`;
  explain.hidden = true;
  if (snap.status === 'completed' && failures === 0) {
    status.textContent = 'batch operation complete';
    status.className = 'complete';
    dialog.dataset.state = 'complete';
    sessionStorage.removeItem(RUNNING_TASK_KEY);
    // finished() runs again when the task's record arrives after its end: one timer, not one per call.
    if (closeTimer !== undefined) clearTimeout(closeTimer);
    if (autoClose) closeTimer = setTimeout(() => closeProgress(), AUTO_CLOSE_MS);
  } else {
    const state2 = snap.status === 'completed' ? 'partial' : snap.status;
    dialog.dataset.state = state2;
    status.className = state2 === 'partial' || state2 === 'cancelled' ? 'partial' : 'failed';
    if (snap.status === 'completed') {
      status.textContent = `completed, ${failures} failed`;
      // A failed drain node is not left untouched: its reason says what it was left as (cordoned, pods evicted).
      explain.textContent = isDrain()
        ? `${plural(failures, 'node')} could not be drained; the reasons below say what each was left as. The others were drained.`
        : `${plural(failures, 'node')} could not be changed; the reasons are listed below. The others were changed.`;
    } else if (snap.status === 'interrupted') {
      status.textContent = 'interrupted: the server running this job stopped';
      explain.textContent = `The server process running this batch stopped before it finished (it crashed, was restarted or lost its database), so no one is changing these nodes any more.${leftText}`;
    } else if (snap.status === 'cancelled') {
      status.textContent = 'cancelled';
      explain.textContent = `The batch was cancelled${snap.error?.message ? ` (${snap.error.message})` : ''}.${leftText}`;
    } else {
      status.textContent = `batch operation ${snap.status}`;
      explain.textContent = `${snap.error?.code === 'all_items_failed' ? (isDrain() ? 'No node could be drained; the reasons below say what each was left as.' : 'No node could be changed; the reasons are listed below.') : (snap.error?.message ?? '')}${left !== null && left.length > 0 ? leftText : ''}`;
    }
    explain.hidden = false;
    explain.dataset.detail = snap.error?.message ?? '';
    explain.title = snap.error ? `${snap.error.code}: ${snap.error.message}` : '';
    const mayRerun = entry !== null && canCancel(entry.username) && state.me.role !== 'viewer';
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

async function loadUnrecorded(w: Watch, snap: WatchState, left: string[]): Promise<void> {
  const id = $<HTMLDialogElement>('#progress-dialog').dataset.taskId ?? '';
  // Retried as the dialog's other reads are: right after a crash (the case this read is for) a replica
  // restarting or the database coming back answered one 502 or 500, and the nodes stayed "not changed".
  const got = await withRetry(w, 'the state of the nodes without a recorded result', () =>
    api<{ nodes: { name: string; changed: boolean | null; gone?: boolean }[] }>(
      `/api/tasks/${encodeURIComponent(id)}/unrecorded`,
    ),
  ).catch(() => null);
  if (watch !== w) return;
  // Not read back at all: not known to be unchanged either.
  for (const node of got?.nodes ?? left.map((name) => ({ name, changed: null, gone: false }))) {
    unrecorded.set(node.name, node.gone === true ? 'gone' : node.changed);
  }
  if (unrecorded.size > 0) finished(w, snap);
}

function closeProgressWatch(): void {
  if (closeTimer !== undefined) clearTimeout(closeTimer);
  closeTimer = undefined;
  clearTimeout(resultsTimer);
  resultsTimer = undefined;
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

// The dialog and its watch were the old session's; the task is not reopened for the next user who signs in.
onSessionEnd(() => {
  closeProgress();
  results.clear();
  entry = null;
  lastState = null;
  loadProblems.clear();
  renderLoadProblems();
  renderResults();
});

async function rerun(mode: 'retry_failed' | 'resume_remaining'): Promise<void> {
  const id = $<HTMLDialogElement>('#progress-dialog').dataset.taskId;
  if (id === undefined) return;
  // One rerun per click: a double click (or a click on the other button) while the first request is on its
  // way would start a second task on the same nodes once the first one has ended.
  const buttons = [$<HTMLButtonElement>('#progress-retry'), $<HTMLButtonElement>('#progress-resume')];
  if (buttons.some((b) => b.disabled)) return;
  for (const b of buttons) b.disabled = true;
  try {
    const started = await api<{ taskId: string; skipped?: string[] }>(
      `/api/tasks/${encodeURIComponent(id)}/rerun`,
      { method: 'POST', body: { mode } },
    );
    // The old batch's nodes deleted from the cluster since: the rerun runs on the others, and says so (kept
    // open after a success, which would close it 3 s later, the note with it).
    const skipped = started.skipped ?? [];
    openProgress(started.taskId, { autoClose: skipped.length === 0 });
    if (skipped.length > 0) {
      const note = $('#progress-rerun-note');
      note.hidden = false;
      note.textContent = `Skipped ${someNames(skipped)}: ${skipped.length === 1 ? 'it no longer exists' : 'they no longer exist'} in the cluster.`;
    }
    void loadTasks();
  } catch (error) {
    const inTheWay = batchInTheWay(error, { mode, of: id });
    // Shown only if the dialog still shows the task rerun: the user may have opened another one meanwhile.
    if (inTheWay !== null && $<HTMLDialogElement>('#progress-dialog').dataset.taskId === id) {
      showBatchInTheWay(inTheWay);
      return;
    }
    const box = $('#progress-rerun-error');
    box.hidden = false;
    box.textContent = (error as Error).message;
  } finally {
    for (const b of buttons) b.disabled = false;
  }
}

/** A batch that kept another from starting, and the note saying why it is shown instead. */
export interface BatchInTheWay {
  taskId: string;
  note: string;
}

/**
 * The batch a `409` to a batch start (`POST /api/batch`) or a rerun names, and why it is shown instead: the
 * rerun started already (`already_rerun`: another tab, another user, a click again after a proxy's 502 hid
 * the first answer) or another batch runs on the nodes (`nodes_locked`: often that very rerun, still
 * running). Shown as an error, the refusal left the user to find that batch in the list, or to click again
 * for the same refusal. `null`: no batch is in the way.
 */
export function batchInTheWay(
  error: unknown,
  rerun?: { mode: 'retry_failed' | 'resume_remaining'; of: string },
): BatchInTheWay | null {
  if (!(error instanceof ApiError) || error.status !== 409) return null;
  const fields = error.more.fields ?? {};
  if (rerun !== undefined && error.code === 'already_rerun' && typeof fields.taskId === 'string') {
    return {
      taskId: fields.taskId,
      note: `Not started again: that task was already ${rerun.mode === 'retry_failed' ? 'retried' : 'resumed'} as this one (task ${fields.taskId.slice(0, 8)}).`,
    };
  }
  const lock = Array.isArray(fields.locks)
    ? (fields.locks[0] as { node?: unknown; taskId?: unknown; username?: unknown } | undefined)
    : undefined;
  if (error.code === 'nodes_locked' && typeof lock?.taskId === 'string') {
    // The task rerun itself, just cancelled: its locks are kept while it may still be finishing a change it
    // had sent (LOCK_CANCEL_GRACE_MS on the server), so it is no other batch, and not "running".
    if (lock.taskId === rerun?.of) {
      return {
        taskId: lock.taskId,
        note: `Not started: this batch is still finishing the change it had sent to ${String(lock.node)}. Try again in a moment.`,
      };
    }
    // Not "running": a batch cancelled a moment ago keeps its nodes while it finishes a change it had sent,
    // and was shown "cancelled" under a note calling it "already running" (cancel a drain, uncordon at once).
    return {
      taskId: lock.taskId,
      note: `Not started: this batch (task ${lock.taskId.slice(0, 8)} by ${String(lock.username)}) is still changing ${String(lock.node)}. ${rerun === undefined ? 'Run again' : 'Rerun'} once it has stopped.`,
    };
  }
  return null;
}

/** Shows the batch in the way (see {@link batchInTheWay}) with its note: opened unless the dialog shows it. */
export function showBatchInTheWay(inTheWay: BatchInTheWay): void {
  const dialog = $<HTMLDialogElement>('#progress-dialog');
  if (!dialog.open || dialog.dataset.taskId !== inTheWay.taskId) {
    openProgress(inTheWay.taskId, { autoClose: false });
  }
  const note = $('#progress-rerun-note');
  note.hidden = false;
  note.textContent = inTheWay.note;
  void loadTasks();
}

$('#progress-close').addEventListener('click', closeProgress);
$('#progress-retry').addEventListener('click', () => void rerun('retry_failed'));
$('#progress-resume').addEventListener('click', () => void rerun('resume_remaining'));
$<HTMLDialogElement>('#progress-dialog').addEventListener('cancel', (event) => {
  event.preventDefault();
  closeProgress();
});
$('#progress-cancel').addEventListener('click', async () => {
  const dialog = $<HTMLDialogElement>('#progress-dialog');
  const id = dialog.dataset.taskId;
  const button = $<HTMLButtonElement>('#progress-cancel');
  if (id === undefined || button.disabled) return;
  button.disabled = true;
  try {
    await api(`/progress/tasks/${encodeURIComponent(id)}/cancel`, {
      method: 'POST',
      // The server writes who cancelled (from the session); a reason sent here would only be a note.
      body: {},
    });
  } catch (error) {
    // The task ended while the cancel was on its way (409 task_finished), or the dialog moved on to another
    // task: the final state, which the watch brings, stays on screen instead of the refusal.
    const ended = error instanceof ApiError && error.code === 'task_finished';
    if (!ended && dialog.dataset.taskId === id && lastState?.finished !== true) {
      $('#progress-status').textContent = (error as Error).message;
    }
  } finally {
    button.disabled = false;
  }
});
