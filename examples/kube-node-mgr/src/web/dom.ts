/** The page's DOM helpers and the words it shows for times, counts and task states. */
import type { TaskState } from '../shared/api-types.js';

export const $ = <T extends HTMLElement = HTMLElement>(selector: string): T => {
  const element = document.querySelector<T>(selector);
  if (element === null) throw new Error(`missing ${selector}`);
  return element;
};

export const el = <K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: (Node | string)[]
) => {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) element.setAttribute(name, value);
  element.append(...children);
  return element;
};

export function ago(ms: number): string {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(ms).toLocaleString();
}

export function duration(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export const plural = (n: number, one: string, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;

/**
 * The first {@link MAX_NAMES_IN_TEXT} names, then how many more: a sentence naming a 5,000-node batch's nodes
 * one by one was up to 1.3 MB of text (253-character names), which buried the dialog's fields and buttons.
 */
export const MAX_NAMES_IN_TEXT = 20;
export const someNames = (names: readonly string[]): string =>
  names.length <= MAX_NAMES_IN_TEXT
    ? names.join(', ')
    : `${names.slice(0, MAX_NAMES_IN_TEXT).join(', ')} and ${names.length - MAX_NAMES_IN_TEXT} more`;

/** The words and colour of a task's state, the same in the dialog, the task list and the audit log. */
export function statusLabel(task: TaskState | null): { text: string; cls: string } {
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
