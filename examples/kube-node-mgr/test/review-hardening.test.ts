// biome-ignore-all lint/suspicious/noExplicitAny: JSON bodies of API responses, checked by the assertions.
/** Found by a security review on 6 December 2026 (examples/kube-node-mgr, items 1–3). */
import { afterEach, expect, it } from 'vitest';
import { type Harness, login, postLogin, startHarness } from './harness.js';

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

it('a sign-in ends the session of the cookie it replaces', async () => {
  h = await startHarness();
  const old = await login(h.base, 'alice');
  expect((await old.get('/api/session')).status).toBe(200);
  // The browser signs in again (another tab, another user) sending the cookie it has.
  const res = await postLogin(h.base, 'bob', 'bob', { cookie: old.cookie });
  expect(res.status).toBe(200);
  const fresh = (res.headers.get('set-cookie') ?? '').split(';')[0] ?? '';
  expect(fresh).not.toBe(old.cookie);
  // A copy of the old cookie no longer works; the new one does.
  expect((await old.get('/api/session')).status).toBe(401);
  expect((await old.get('/api/nodes')).status).toBe(401);
  const now = await fetch(`${h.base}/api/session`, { headers: { cookie: fresh } });
  expect(now.status).toBe(200);
  expect(((await now.json()) as any).username).toBe('bob');
});
