/** The operation dialog: its fields per operation, the blast-radius confirmation, templates, and the start. */
import type { NodeRow, OpType, TemplateView } from '../shared/api-types.js';
import { ApiError, api } from './api.js';
import { $, el, plural, someNames } from './dom.js';
import { refreshNodesSoon } from './nodes.js';
import { batchInTheWay, openProgress, showBatchInTheWay } from './progress-dialog.js';
import { onSessionEnd } from './session.js';
import { selected, state } from './state.js';
import { loadTasks } from './task-list.js';

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
/** A batch of this dialog is on its way: Run stays disabled whatever the confirmation says meanwhile. */
let submitting = false;
/**
 * The `Idempotency-Key` of the batch this dialog sends, and the body it was made for. Run again with the same
 * body (after a network error lost the answer, or a refusal) sends the same key: a batch the lost request did
 * start is answered again (`Idempotent-Replayed`) and shown, not started a second time; a refused request
 * freed its key on the server, so sending it again is harmless. A changed body, or the dialog opened again
 * (a new submission), gets a new key; a batch started clears it.
 */
let sending: { key: string; body: string } | null = null;
/**
 * How many `409 idempotency_key_in_use` answers are asked again, after their `Retry-After`, before one is
 * shown: the server takes a key over from a request that started nothing within 30 s, so about 30 do.
 */
const IN_USE_ATTEMPTS = 40;

for (const button of document.querySelectorAll<HTMLButtonElement>('button[data-op]')) {
  button.addEventListener('click', () => openOperation(button.dataset.op as OpType));
}

const isControlPlane = (n: NodeRow) => n.roles.includes('control-plane') || n.roles.includes('master');

/**
 * What the batch would disrupt, in words, or `null` when it is harmless enough to run without a second
 * look: NoExecute evicts running pods at once, control-plane nodes carry the cluster itself, and cordoning
 * most nodes leaves nowhere to schedule.
 */
function blastRadius(op: OpType, effect: string): string | null {
  const chosen = state.nodes.filter((n) => selected.has(n.name));
  const cp = chosen.filter(isControlPlane);
  const parts: string[] = [];
  if (op === 'taint_add' && effect === 'NoExecute') {
    parts.push(
      `NoExecute evicts every pod without a matching toleration from ${plural(chosen.length, 'node')} right away.`,
    );
  }
  if (op === 'drain') {
    parts.push(
      `Drain cordons ${plural(chosen.length, 'node')} and evicts every pod on them except DaemonSet pods; PodDisruptionBudgets are honoured, so it may wait for replacements to become ready. A node running a pod that no controller recreates, or one with an emptyDir volume, fails untouched but cordoned.`,
    );
  }
  const disrupts = op === 'cordon' || op === 'drain' || (op === 'taint_add' && effect !== 'PreferNoSchedule');
  if (disrupts && cp.length > 0) {
    parts.push(
      `This includes ${plural(cp.length, 'control-plane node')} (${cp.map((n) => n.name).join(', ')})` +
        `${cp.length === state.nodes.filter(isControlPlane).length ? ' — all of them' : ''}.`,
    );
  }
  if (disrupts) {
    const schedulable = state.nodes.filter((n) => !n.unschedulable && !selected.has(n.name)).length;
    if (schedulable < state.nodes.length / 2) {
      parts.push(`Afterwards only ${schedulable} of ${state.nodes.length} nodes accept new pods.`);
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
  $<HTMLButtonElement>('#op-submit').disabled = submitting || (radius !== null && !check.checked);
}

function openOperation(op: OpType): void {
  currentOp = op;
  const dialog = $<HTMLDialogElement>('#op-dialog');
  const form = $<HTMLFormElement>('#op-form');
  form.reset();
  $('#op-title').textContent = OP_TITLES[op];
  const names = [...selected].sort();
  $('#op-nodes').textContent = `${plural(names.length, 'node')}: ${someNames(names)}`;
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
  sending = null;
  updateConfirm();
  dialog.showModal();
}

/** 128 random bits in hex: `crypto.randomUUID` exists only in secure contexts, and the page may be on http. */
function newKey(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * Sends the batch with its key; a `409 idempotency_key_in_use` (the first request with the key is still
 * being answered: its answer was lost on the way, not its work) is asked again after its `Retry-After`.
 * `null` when the dialog was closed or opened again meanwhile: the batch is no longer this dialog's to show.
 */
async function sendBatch(body: Record<string, unknown>, sent: { key: string }): Promise<string | null> {
  for (let attempt = 1; ; attempt++) {
    try {
      const started = await api<{ taskId: string }>('/api/batch', {
        method: 'POST',
        body,
        headers: { 'idempotency-key': sent.key },
      });
      return started.taskId;
    } catch (error) {
      if (
        !(error instanceof ApiError && error.code === 'idempotency_key_in_use') ||
        attempt >= IN_USE_ATTEMPTS
      ) {
        throw error;
      }
      const waitMs = Math.min(error.more.retryAfterMs ?? 1000, 30_000);
      $('#op-error').textContent =
        `Your earlier request for this batch is still being answered; asking again in ${Math.ceil(waitMs / 1000)} s…`;
      await new Promise((resolve) => setTimeout(resolve, waitMs));
      if (sending !== sent || !$<HTMLDialogElement>('#op-dialog').open) return null;
    }
  }
}

// ---------------------------------------------------------------- templates

let templates: TemplateView[] = [];

async function loadTemplates(kind: 'label' | 'taint'): Promise<void> {
  const select = $<HTMLSelectElement>('#template-select');
  try {
    templates = (await api<{ templates: TemplateView[] }>('/api/templates')).templates;
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
  updateTemplateDelete();
}

/** Delete is offered for the selected template when this user may delete it (its author or an admin). */
function updateTemplateDelete(): void {
  const t = templates.find((x) => x.name === $<HTMLSelectElement>('#template-select').value);
  $<HTMLButtonElement>('#template-delete').disabled =
    t === undefined || !(t.createdBy === state.me.username || state.me.role === 'admin');
}

$('#template-select').addEventListener('change', () => {
  const t = templates.find((x) => x.name === $<HTMLSelectElement>('#template-select').value);
  updateTemplateDelete();
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
    const saved = await api<{ template: TemplateView }>('/api/templates', {
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
    updateTemplateDelete();
    $<HTMLInputElement>('#op-form input[name=template-name]').value = '';
  } catch (error) {
    $('#op-error').textContent = (error as Error).message;
  }
});

// Enter in the template's name saves the template. Left to the form, it submitted the operation's form: the
// batch ran on the selected nodes (a label or a NoSchedule taint has no blast radius to tick first).
$('#op-form input[name=template-name]').addEventListener('keydown', (event) => {
  if (event.key !== 'Enter' || event.isComposing) return;
  event.preventDefault();
  $<HTMLButtonElement>('#template-save').click();
});

$('#template-delete').addEventListener('click', async () => {
  const name = $<HTMLSelectElement>('#template-select').value;
  if (name === '') return;
  $('#op-error').textContent = '';
  try {
    await api(`/api/templates/${encodeURIComponent(name)}/delete`, { method: 'POST', body: {} });
    await loadTemplates(currentOp === 'taint_add' ? 'taint' : 'label');
  } catch (error) {
    $('#op-error').textContent = (error as Error).message;
  }
});

// A half-filled operation on the old user's selection is not left for the next one.
onSessionEnd(() => {
  $<HTMLDialogElement>('#op-dialog').close();
  $<HTMLFormElement>('#op-form').reset();
  templates = [];
});

$('#op-form select[name=effect]').addEventListener('change', updateConfirm);
$('#op-confirm-check').addEventListener('change', updateConfirm);
$('#op-cancel').addEventListener('click', () => $<HTMLDialogElement>('#op-dialog').close());

$<HTMLFormElement>('#op-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const form = new FormData(event.target as HTMLFormElement);
  const body: Record<string, unknown> = {
    cluster: state.cluster,
    operation: currentOp,
    nodes: [...selected].sort(),
  };
  for (const field of OP_FIELDS[currentOp]) {
    if (field === 'template' || field === 'save') continue;
    const value = String(form.get(field) ?? '');
    if (value !== '' || (field === 'value' && currentOp === 'label_add')) body[field] = value;
  }
  if (submitting) return;
  submitting = true;
  $<HTMLButtonElement>('#op-submit').disabled = true;
  const json = JSON.stringify(body);
  if (sending?.body !== json) sending = { key: newKey(), body: json };
  const sent = sending;
  $('#op-error').textContent = '';
  try {
    const taskId = await sendBatch(body, sent);
    if (taskId === null) return;
    sending = null;
    $<HTMLDialogElement>('#op-dialog').close();
    openProgress(taskId);
    void loadTasks();
    refreshNodesSoon();
  } catch (error) {
    const inTheWay = batchInTheWay(error);
    if (inTheWay !== null) {
      // Another batch holds some of the nodes (409 nodes_locked): shown over this dialog with why nothing
      // started, as a rerun refused so is; shown as the server's message, the user had to find it in the list.
      // This dialog stays beneath, filled in, to Run again once that batch has ended.
      $('#op-error').textContent = `Not started: ${(error as Error).message}.`;
      if ($<HTMLDialogElement>('#op-dialog').open) showBatchInTheWay(inTheWay);
    } else if (error instanceof ApiError && error.code === 'idempotency_key_reused') {
      // The key started another request's batch: nothing was started now, and Run again gets a new key.
      if (sending === sent) sending = null;
      const taskId = error.more.fields?.taskId;
      $('#op-error').textContent =
        `This batch was not started: its request key was already used for another batch${typeof taskId === 'string' ? ` (task ${taskId})` : ''}. Run again to start it.`;
    } else {
      $('#op-error').textContent = (error as Error).message;
    }
  } finally {
    // As the confirmation says now: enabled outright, a tick undone while the batch was on its way let
    // the next click run the disruptive batch without it.
    submitting = false;
    updateConfirm();
  }
});
