// biome-ignore-all lint/suspicious/noExplicitAny: JSON bodies of API responses, checked by the assertions.
/** Found by a security review on 6 December 2026 (examples/kube-node-mgr, items 1–3). */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, expect, it } from 'vitest';
import { ApiRateLimit } from '../src/server/api-rate-limit.js';
import { KubeNodes, loadKubeConfig } from '../src/server/kube-nodes.js';
import { failure, useKubeApi } from './fake-kube-api.js';
import { type Harness, login, postLogin, startHarness } from './harness.js';

const kube = useKubeApi();

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

it('a Kubernetes failure is answered with a short reason and its status, its text only logged', async () => {
  const secret = 'User "system:serviceaccount:knm:kube-node-mgr" cannot list resource "nodes"';
  const api = await kube.start((req) =>
    req.send(403, failure(403, 'Forbidden', `nodes is forbidden: ${secret}`)),
  );
  const logged: unknown[] = [];
  const log = (fields: unknown) => void logged.push(fields);
  h = await startHarness({
    app: { nodes: api.nodes, logger: { debug: () => {}, info: () => {}, warn: log, error: log } },
  });
  const alice = await login(h.base, 'alice');
  for (const { status, body } of [
    await alice.get('/api/nodes'),
    await alice.post('/api/batch', { operation: 'cordon', nodes: ['n1'] }),
  ]) {
    expect(status).toBe(502);
    expect(body.error).toEqual({
      code: 'kubernetes_error',
      message: "the Kubernetes API refused this app's access (HTTP 403); ask an administrator",
      status: 403,
    });
  }
  expect(JSON.stringify(logged)).toContain('system:serviceaccount:knm:kube-node-mgr');
});

it('an unreachable Kubernetes API is answered without its address', async () => {
  // A port that was free a moment ago: nothing listens there.
  const server = http.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const port = (server.address() as AddressInfo).port;
  await new Promise((resolve) => server.close(resolve));
  const nodes = new KubeNodes(loadKubeConfig({ type: 'server', url: `http://127.0.0.1:${port}` }));
  h = await startHarness({ app: { nodes } });
  const alice = await login(h.base, 'alice');
  const { status, body } = await alice.get('/api/nodes');
  expect(status).toBe(502);
  expect(body.error).toEqual({
    code: 'kubernetes_error',
    message: 'the Kubernetes API cannot be reached; try again',
    status: 0,
  });
});

it('limits a user’s /api requests: past the burst 429 with Retry-After, before any Kubernetes call', async () => {
  let lists = 0;
  h = await startHarness({
    cluster: {
      onRequest: ({ method, path }) => void (method === 'GET' && path === '/api/v1/nodes' && lists++),
    },
    // No refill within the test: the limit is the burst.
    app: { apiRateLimit: { burst: 3, perSecond: 0.01 } },
  });
  const alice = await login(h.base, 'alice');
  for (let i = 0; i < 3; i++) expect((await alice.get('/api/nodes')).status).toBe(200);
  expect(lists).toBe(3);
  const res = await fetch(`${h.base}/api/nodes`, { headers: { cookie: alice.cookie } });
  expect(res.status).toBe(429);
  expect(Number(res.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
  expect(((await res.json()) as any).error).toMatchObject({ code: 'rate_limited' });
  expect(lists).toBe(3);
  // Per user: another session of alice's shares her limit; bob has his own; alice can still sign out.
  expect((await (await login(h.base, 'alice')).get('/api/session')).status).toBe(429);
  expect((await (await login(h.base, 'bob')).get('/api/nodes')).status).toBe(200);
  expect((await alice.post('/api/logout', {})).status).toBe(200);
});

it('refills a user’s bucket at its rate, up to its burst', () => {
  const limit = new ApiRateLimit({ burst: 2, perSecond: 1 });
  expect([limit.take('a', 0), limit.take('a', 0), limit.take('a', 0)]).toEqual([0, 0, 1000]);
  expect(limit.take('b', 0)).toBe(0);
  expect(limit.take('a', 500)).toBe(500);
  expect(limit.take('a', 1000)).toBe(0);
  // A long pause gives back the burst, not more.
  expect([limit.take('a', 60_000), limit.take('a', 60_000), limit.take('a', 60_000)]).toEqual([0, 0, 1000]);
});

it('over https the session cookie is __Host-knm_session, and only that name is read there', async () => {
  h = await startHarness({ app: { trustProxy: true } });
  const https = { 'x-forwarded-proto': 'https' };
  const res = await postLogin(h.base, 'alice', 'alice', https);
  const setCookie = res.headers.get('set-cookie') ?? '';
  // What the prefix needs, or the browser drops the cookie: Secure, Path=/, no Domain.
  expect(setCookie).toMatch(/^__Host-knm_session=[^;]+; Path=\/; /);
  expect(setCookie).toMatch(/; Secure/);
  expect(setCookie).not.toMatch(/Domain=/i);
  const value = setCookie.split(';')[0]?.split('=').slice(1).join('=') ?? '';
  const session = (cookie: string, headers: Record<string, string>) =>
    fetch(`${h?.base}/api/session`, { headers: { cookie, ...headers } }).then((r) => r.status);
  expect(await session(`__Host-knm_session=${value}`, https)).toBe(200);
  // The same valid session under the plain name — what a sibling subdomain or an http answer could plant
  // over https — is not read there; over http the plain name is the cookie.
  expect(await session(`knm_session=${value}`, https)).toBe(401);
  expect(await session(`knm_session=${value}`, {})).toBe(200);
  // Sign-out clears the name it set.
  const logout = await fetch(`${h.base}/api/logout`, {
    method: 'POST',
    headers: {
      ...https,
      cookie: `__Host-knm_session=${value}`,
      'content-type': 'application/json',
      'x-csrf-token': ((await res.json()) as any).csrfToken,
    },
    body: '{}',
  });
  expect(logout.status).toBe(200);
  expect(logout.headers.get('set-cookie')).toMatch(/^__Host-knm_session=; Path=\/; .*Max-Age=0; Secure/);
});
