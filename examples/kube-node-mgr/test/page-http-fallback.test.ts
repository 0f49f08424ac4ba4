// The page's progress client (its options, src/web/progress-options.ts) on its HTTP fallback, against the app.
import { ProgressClient } from '@finishline/client';
import { afterEach, expect, it, vi } from 'vitest';
import WebSocket from 'ws';
import { progressClientOptions } from '../src/web/progress-options.js';
import { onSessionMismatch } from '../src/web/session.js';
import { state } from '../src/web/state.js';
import { type Harness, login, startHarness, upgradeRefusingProxy } from './harness.js';

let h: Harness | undefined;
const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  await h?.close();
  vi.unstubAllGlobals();
  state.csrfToken = '';
  state.me = { username: '', role: 'viewer' };
  onSessionMismatch(() => {});
});

/** The page's sessionStorage, which the client's persistence needs (Node has none). */
function memoryStorage() {
  const entries = new Map<string, string>();
  return {
    getItem: (key: string) => entries.get(key) ?? null,
    setItem: (key: string, value: string) => void entries.set(key, value),
    removeItem: (key: string) => void entries.delete(key),
  };
}

// Found by a review on 6 December 2026: the app asks the CSRF token on every POST /progress/*, which the
// page's client never sent; behind a proxy that refuses upgrades its acks over HTTP all got 403, and no end
// a page saw was recorded.
it('behind a proxy that refuses upgrades, the page’s client acknowledges a batch’s end over HTTP', async () => {
  vi.stubGlobal('sessionStorage', memoryStorage());
  h = await startHarness();
  const alice = await login(h.base, 'alice');
  const { port, seen } = await upgradeRefusingProxy(Number(new URL(h.base).port), cleanups);
  // What the page holds once signed in.
  state.csrfToken = alice.csrf;
  const client = new ProgressClient({
    ...progressClientOptions(`ws://127.0.0.1:${port}/progress`),
    // What a browser has without being told: a WebSocket, the cookie, and its Origin on each POST.
    WebSocket: WebSocket as never,
    headers: { cookie: alice.cookie, origin: `http://127.0.0.1:${port}` },
    reconnect: { initialDelayMs: 20, maxDelayMs: 50 },
    httpPollIntervalMs: 50,
    pageEvents: false,
  });
  client.on('error', () => {});
  cleanups.push(() => client.close());

  const { status, body } = await alice.post('/api/batch', {
    operation: 'cordon',
    nodes: ['worker-1', 'worker-2'],
  });
  expect(status).toBe(202);
  const final = await client.watch(body.taskId).done;
  expect(final).toMatchObject({ status: 'completed', finished: true });
  expect(seen.upgrades).toBeGreaterThanOrEqual(1);
  await expect.poll(() => seen.acks.length, { timeout: 5000 }).toBeGreaterThan(0);
  expect(seen.acks.filter((code) => code >= 300)).toEqual([]);
  const task = await h.store.getTask(body.taskId);
  expect(task?.ackedSeq).toBe(task?.seq);
});

// Found by a review on 6 December 2026: after a sign-in in another tab replaced the cookie, the page's token
// was the old session's, and its client's acks got 403 `csrf` without a word until the tab was shown again.
it('an ack refused for a stale CSRF token makes the page check its session, as a refused POST does', async () => {
  vi.stubGlobal('sessionStorage', memoryStorage());
  h = await startHarness();
  await h.store.createTask({ id: 't-ack', owner: 'alice', kind: 'batch_cordon', total: 1 });
  const page = await login(h.base, 'alice');
  state.me = { username: 'alice', role: 'operator' };
  state.csrfToken = page.csrf;
  const mismatch = vi.fn();
  onSessionMismatch(mismatch);
  const ack = (cookie: string) =>
    progressClientOptions('ws://unused/progress').fetch?.(`${h?.base}/progress/tasks/t-ack/ack`, {
      method: 'POST',
      headers: { cookie, origin: h?.base ?? '', 'content-type': 'application/json' },
      credentials: 'same-origin',
      signal: new AbortController().signal,
      body: JSON.stringify({ seq: 0 }),
    });
  // With the page's own session: no refusal for its token, nothing to check.
  expect((await ack(page.cookie))?.status).not.toBe(403);
  expect(mismatch).not.toHaveBeenCalled();
  // Another tab signs in: the browser now sends that session's cookie with this page's token.
  const other = await login(h.base, 'alice');
  const refused = await ack(other.cookie);
  expect(refused?.status).toBe(403);
  expect(JSON.parse((await refused?.text()) ?? '')).toMatchObject({ error: { code: 'csrf' } });
  expect(mismatch).toHaveBeenCalledTimes(1);
});
