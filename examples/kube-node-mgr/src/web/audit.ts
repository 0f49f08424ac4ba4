/**
 * The audit page of the cluster shown: every batch (who, what, which nodes, result, when), then the
 * sign-ins, sign-outs and cancels.
 */
import type { AuditEventView, TaskEntry } from '../shared/api-types.js';
import { api } from './api.js';
import { $, el, statusLabel } from './dom.js';
import { clusterQuery } from './nodes.js';
import { openProgress } from './progress-dialog.js';
import { onSessionEnd, sameSession, sessionMark } from './session.js';
import { signedIn, state } from './state.js';
import { resultText } from './task-list.js';

let auditRows: TaskEntry[] = [];
/** The read of the next page on its way: a second "more" click waits for it rather than reading it again. */
let moreInFlight: Promise<void> | null = null;

export function loadAudit(more: boolean): Promise<void> {
  if (!more) return readAudit(false);
  moreInFlight ??= readAudit(true).finally(() => {
    moreInFlight = null;
  });
  return moreInFlight;
}

async function readAudit(more: boolean): Promise<void> {
  if (!signedIn()) return;
  // The next page starts after the last row shown: its time and its id (batches of one millisecond).
  const last = more ? auditRows[auditRows.length - 1] : undefined;
  const cluster = state.cluster;
  const session = sessionMark();
  // Read on their own: a failure of one list does not hide the other.
  if (!more) void loadAuditEvents();
  try {
    const page = (
      await api<{ tasks: TaskEntry[] }>(
        `/api/tasks?scope=all&limit=50&${clusterQuery()}${last ? `&before=${last.createdAt}&beforeId=${encodeURIComponent(last.id)}` : ''}`,
      )
    ).tasks;
    // The picker moved on while this was read (that page belongs to the other cluster), or the session ended.
    if (cluster !== state.cluster || !sameSession(session)) return;
    // The rows were read again meanwhile (a reload of the page, another cluster): this page followed the old ones.
    if (more && auditRows[auditRows.length - 1] !== last) return;
    auditRows = more ? [...auditRows, ...page] : page;
    $('#audit-error').textContent = '';
    $('#audit-more').hidden = page.length < 50;
  } catch (error) {
    if (!sameSession(session)) return;
    $('#audit-error').textContent = `Could not load the audit log: ${(error as Error).message}`;
    return;
  }
  const who = state.me.role === 'operator' ? 'your batches' : 'every user';
  $('#audit-scope').textContent = `(${who}, cluster ${state.cluster})`;
  $('#audit tbody').replaceChildren(
    ...auditRows.map((t) => {
      const label = statusLabel(t.task);
      const open = el('button', { type: 'button', class: 'link' }, 'details');
      open.addEventListener('click', () => openProgress(t.id, { autoClose: t.task?.status === 'running' }));
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
          // The row names the first nodes only (LISTED_NODES); nodeCount counts them all.
          {
            title: `${t.nodes.join('\n')}${t.nodeCount > t.nodes.length ? `\n… and ${t.nodeCount - t.nodes.length} more` : ''}`,
          },
          t.nodeCount <= 4 ? t.nodes.join(', ') : `${t.nodes.slice(0, 3).join(', ')} +${t.nodeCount - 3}`,
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

const ACTION_WORDS: Record<AuditEventView['action'], string> = {
  login: 'signed in',
  logout: 'signed out',
  cancel: 'cancelled task',
};

/** Sign-ins, sign-outs and cancels (not per cluster: a session spans every cluster). */
async function loadAuditEvents(): Promise<void> {
  const session = sessionMark();
  let events: AuditEventView[];
  try {
    events = (await api<{ events: AuditEventView[] }>('/api/audit-events?limit=50')).events;
    if (!sameSession(session)) return;
    $('#audit-events-error').textContent = '';
  } catch (error) {
    if (!sameSession(session)) return;
    $('#audit-events-error').textContent = `Could not load sign-ins and cancels: ${(error as Error).message}`;
    return;
  }
  $('#audit-events tbody').replaceChildren(
    ...events.map((e) => {
      const task = e.taskId === null ? '' : ` ${e.taskId.slice(0, 8)}`;
      const cell = el('td', {}, `${ACTION_WORDS[e.action] ?? e.action}${task}`);
      if (e.taskId !== null) {
        const id = e.taskId;
        const open = el('button', { type: 'button', class: 'link' }, 'details');
        open.addEventListener('click', () => openProgress(id, { autoClose: false }));
        cell.append(' ', open);
      }
      return el(
        'tr',
        { 'data-action': e.action },
        el('td', {}, new Date(e.at).toLocaleString()),
        el('td', {}, e.username),
        cell,
      );
    }),
  );
}

// Both lists were read with the old session's rights (an admin's every batch and sign-in).
onSessionEnd(() => {
  auditRows = [];
  $('#audit tbody').replaceChildren();
  $('#audit-events tbody').replaceChildren();
  $('#audit-scope').textContent = '';
  $('#audit-error').textContent = '';
  $('#audit-events-error').textContent = '';
  $('#audit-more').hidden = true;
});
