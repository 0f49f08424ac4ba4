// @vitest-environment happy-dom
// The page's start (src/web/main.ts) when the server does not answer the session read: the modules rendered
// in happy-dom with a fake progress client and a fake fetch (review of 6 December 2026; failed before its fix).
import { expect, it, vi } from 'vitest';
import { renderPage } from './page-harness.js';

vi.mock('../src/web/connection.js', () => import('./page-harness.js'));

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// A reload while the server restarts (or a proxy answers 502 for a moment) showed the login form, with no
// word of why, to a user whose session was valid: the batch whose dialog was open was reopened only after
// signing in again. An answer other than the session or a 401 is now said, and the session asked for again.
it('a reload answered 502 for the session says so, asks again, and reopens the batch once the server answers', async () => {
  renderPage();
  sessionStorage.setItem('knm.runningTask', 'task-1');
  let serverUp = false;
  globalThis.fetch = vi.fn(async (input: RequestInfo | URL) => {
    const path = String(input);
    const json = (value: unknown) =>
      new Response(JSON.stringify(value), { status: 200, headers: { 'content-type': 'application/json' } });
    if (!serverUp) {
      return new Response('bad gateway', { status: 502, headers: { 'content-type': 'text/plain' } });
    }
    if (path === '/api/session') return json({ username: 'ada', role: 'admin', csrfToken: 'csrf-ada' });
    if (path === '/api/clusters') return json({ clusters: [{ name: 'default', default: true }] });
    if (path.startsWith('/api/nodes')) return json({ nodes: [] });
    if (path.startsWith('/api/tasks?')) return json({ tasks: [] });
    if (path === '/api/tasks/task-1') {
      const task = { id: 'task-1', cluster: 'default', username: 'ada', operation: { type: 'cordon' } };
      return json({
        task: { ...task, nodes: ['worker-1'], nodeCount: 1, parentTaskId: null, relation: null },
      });
    }
    return json({ events: [] });
  }) as typeof fetch;
  await import('../src/web/main.js');
  await sleep(100);
  expect(document.querySelector('#login-error')?.textContent).toMatch(/unavailable \(HTTP 502/);
  serverUp = true;
  const dialog = document.querySelector('#progress-dialog') as HTMLDialogElement;
  for (let i = 0; i < 60 && dialog.dataset.taskId !== 'task-1'; i++) await sleep(100);
  expect((document.querySelector('#app-view') as HTMLElement).hidden).toBe(false);
  expect((document.querySelector('#login-view') as HTMLElement).hidden).toBe(true);
  expect(dialog.dataset.taskId).toBe('task-1');
});
