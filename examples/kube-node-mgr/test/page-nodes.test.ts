// @vitest-environment happy-dom
// The node table's reads and the selection across them (review of 6 December 2026): web/nodes.ts rendered in
// happy-dom with a fake `api`. Each case failed before its fix.
import { beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import type { NodeRow } from '../src/shared/api-types.js';
import { renderPage } from './page-harness.js';

/** The answers of the fake `api`, in the order the reads ask: each a promise the test settles. */
const answers: { path: string; resolve: (value: { nodes: NodeRow[] }) => void }[] = [];
vi.mock('../src/web/api.js', () => ({
  api: (path: string) =>
    new Promise((resolve) => {
      answers.push({ path, resolve });
    }),
}));

/** The times any node row's `name` was read (the page's work per node). */
let nameReads = 0;
const row = (name: string): NodeRow => {
  const fields = {
    resourceVersion: '1',
    labels: {},
    taints: [],
    unschedulable: false,
    roles: ['worker'],
    zone: null,
    instanceType: null,
    ready: true,
    kubeletVersion: null,
    cordonManager: null,
    cordon: null,
    lock: null,
  };
  return Object.defineProperty(fields, 'name', {
    enumerable: true,
    get: () => {
      nameReads++;
      return name;
    },
  }) as unknown as NodeRow;
};
const names = (count: number, prefix = 'node') =>
  Array.from({ length: count }, (_, i) => `${prefix}-${String(i).padStart(5, '0')}`);

let nodes: typeof import('../src/web/nodes.js');
let page: typeof import('../src/web/state.js');

beforeAll(async () => {
  renderPage();
  nodes = await import('../src/web/nodes.js');
  page = await import('../src/web/state.js');
});

beforeEach(() => {
  answers.length = 0;
  page.state.me = { username: 'ada', role: 'operator' };
  page.selected.clear();
  (document.querySelector('#filter') as HTMLInputElement).value = '';
});

/** Runs one read and answers it with `list`. */
async function load(list: string[]): Promise<void> {
  const done = nodes.loadNodes();
  answers.shift()?.resolve({ nodes: list.map(row) });
  await done;
}

describe('the node table', () => {
  it('checks a selection of 5,000 nodes against the list once per node, not against the whole list each', async () => {
    const all = names(5000);
    // No row shown, so the count is the selection's check (and the filter's), not the table's rendering.
    (document.querySelector('#filter') as HTMLInputElement).value = 'shown-by-no-node';
    await load(all);
    for (const name of all) page.selected.add(name);
    nameReads = 0;
    // One node has gone since (drained and deleted, scaled down): it leaves the selection.
    await load(all.slice(1));
    expect(page.selected.size).toBe(4999);
    expect(page.selected.has(all[0] as string)).toBe(false);
    // Before: each selected name looked for with `some` over the list, 12.5 million reads.
    expect(nameReads).toBeLessThan(10 * all.length);
    expect(document.querySelector('#selection-count')?.textContent).toBe('4999 selected');
  });

  it('an earlier read answering after a later one is not shown, nor drops the selection', async () => {
    const before = names(3);
    await load(before);
    const added = 'node-added';
    const first = nodes.loadNodes();
    const second = nodes.loadNodes();
    const [older, newer] = answers.splice(0, 2);
    // The later read has the node added since; the user selects it.
    newer?.resolve({ nodes: [...before, added].map(row) });
    await second;
    page.selected.add(added);
    // The earlier read (another replica, a slower list) answers last, without it.
    older?.resolve({ nodes: before.map(row) });
    await first;
    expect(page.state.nodes.map((n) => n.name)).toEqual([...before, added]);
    expect(page.selected.has(added)).toBe(true);
    expect(document.querySelectorAll('#nodes tbody tr')).toHaveLength(4);
  });

  // A review on 7 December 2026: the nodes of a batch cancelled a moment ago showed free while the batch
  // still held their locks (up to 30 s, finishing a change it had sent), and a batch on them was refused
  // `nodes_locked`. The server now sends those locks, `stopping`; the table says so, and reads again soon
  // (nothing else tells the page when the batch lets go) until they are free.
  it('shows the nodes a cancelled batch still holds as held until it has stopped, then free without Refresh', async () => {
    const held = { ...row('node-held'), name: 'node-held' };
    held.lock = { taskId: 'cancelled-task', by: 'bob', stopping: true };
    const done = nodes.loadNodes();
    answers.shift()?.resolve({ nodes: [held, row('node-free')] });
    await done;
    const lockText = () => document.querySelector('tr[data-node="node-held"] .lock')?.textContent ?? null;
    expect(lockText()).toBe("held by bob's cancelled task cancelle until it has stopped");
    expect(document.querySelector('tr[data-node="node-free"] .lock')).toBeNull();
    // No read asked for by anyone else: the table asks again by itself while a node is held so.
    expect(answers).toHaveLength(0);
    for (let i = 0; i < 40 && answers.length === 0; i++) await new Promise((r) => setTimeout(r, 50));
    expect(answers[0]?.path).toMatch(/^\/api\/nodes/);
    answers.shift()?.resolve({ nodes: [{ ...held, lock: null }, row('node-free')] });
    await new Promise((r) => setTimeout(r, 0));
    expect(lockText()).toBeNull();
    // Free: no more reads of its own.
    await new Promise((r) => setTimeout(r, 1200));
    expect(answers).toHaveLength(0);
  });
});
