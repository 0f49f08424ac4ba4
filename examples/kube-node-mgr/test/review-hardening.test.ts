// biome-ignore-all lint/suspicious/noExplicitAny: JSON bodies of API responses, checked by the assertions.
/** Found by a security review on 6 December 2026 (examples/kube-node-mgr, items 1–3). */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, expect, it } from 'vitest';
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
