import type { IncomingMessage } from 'node:http';
import { MemoryProgressStore } from '@finishline/core';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { Principal } from '../auth.js';
import { RawClient, startServer, type TestServer } from '../testing/harness.js';
import { readStoreHealth } from './health.js';

/** `server.health()` and `GET {base}/healthz`: what a Kubernetes readiness probe sees. */

let env: TestServer | undefined;

afterEach(async () => {
  await env?.close();
  env = undefined;
});

/** A memory store whose feed reports a switchable `health()`, like the Postgres feed does. */
function storeWithFeedHealth(): {
  store: MemoryProgressStore;
  state: { connected: boolean; lastError: Error | null };
} {
  const store = new MemoryProgressStore();
  const state = { connected: true, lastError: null as Error | null };
  Object.assign(store.changes, { health: () => ({ ...state, listenerPid: null }) });
  return { store, state };
}

/** Authenticates the session cookie `session=<user>`, as an application's `authenticate` hook reads its own. */
const cookieAuth = (request: IncomingMessage): Principal | null => {
  const user = /(?:^|;\s*)session=([\w.-]+)/.exec(request.headers.cookie ?? '')?.[1];
  return user === undefined ? null : { id: user };
};

async function probe(
  path = '/progress/healthz',
  method = 'GET',
): Promise<{ status: number; body: Record<string, unknown> }> {
  if (env === undefined) throw new Error('no server');
  const response = await fetch(`${env.httpUrl}${path}`, { method });
  const text = await response.text();
  return { status: response.status, body: text === '' ? {} : JSON.parse(text) };
}

describe('health', () => {
  it('reports the feed state, sockets and owned tasks, and flips the probe to 503 while the feed is down', async () => {
    const { store, state } = storeWithFeedHealth();
    env = await startServer({ store, healthDetails: 'public' });
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    const client = await RawClient.connect(env.wsUrl, { user: 'alice' });

    expect(env.server.health()).toMatchObject({
      ok: true,
      closing: false,
      store: { connected: true, lastError: null },
      sockets: 1,
      ownedTasks: 1,
    });
    const up = await probe();
    expect(up.status).toBe(200);
    expect(up.body).toMatchObject({ ok: true, sockets: 1, ownedTasks: 1 });

    state.connected = false;
    state.lastError = new Error('connection terminated');
    const down = await probe();
    expect(down.status).toBe(503);
    expect(down.body).toMatchObject({
      ok: false,
      store: { connected: false, lastError: 'connection terminated' },
    });
    // The replica keeps its sockets while the database is away.
    expect(env.server.health().sockets).toBe(1);

    state.connected = true;
    expect((await probe()).status).toBe(200);
    await task.complete();
    expect(env.server.health().ownedTasks).toBe(0);
    client.close();
  });

  it('needs no credentials, carries no task data, answers HEAD, and leaves other paths alone', async () => {
    env = await startServer({ healthDetails: 'public' });
    await env.server.tasks.create({ owner: 'alice', kind: 'secret_kind' });
    const response = await probe();
    expect(response.status).toBe(200);
    expect(JSON.stringify(response.body)).not.toContain('secret_kind');
    expect(JSON.stringify(response.body)).not.toContain('alice');
    expect((await probe('/progress/healthz', 'HEAD')).status).toBe(200);
    expect((await probe('/progress/healthz', 'POST')).status).toBe(404);
    expect((await probe('/healthz')).status).toBe(404);
  });

  it('answers only { ok } without credentials by default, details to an authenticated caller', async () => {
    const { store, state } = storeWithFeedHealth();
    env = await startServer({ store, authenticate: cookieAuth });
    const client = await RawClient.connect(env.wsUrl, { headers: { cookie: 'session=alice' } });
    const anonymous = await probe();
    expect(anonymous).toEqual({ status: 200, body: { ok: true } });
    const authenticated = await fetch(`${env.httpUrl}/progress/healthz`, {
      headers: { cookie: 'session=ops' },
    });
    expect(await authenticated.json()).toMatchObject({
      ok: true,
      serverId: env.server.serverId,
      sockets: 1,
      store: { connected: true },
    });
    state.connected = false;
    state.lastError = new Error('password authentication failed for user "finishline"');
    expect(await probe()).toEqual({ status: 503, body: { ok: false } });
    await client.close();
  });

  it("gives details only to the principals a healthDetails predicate accepts, and to no one with 'none'", async () => {
    const { store, state } = storeWithFeedHealth();
    state.lastError = new Error('password authentication failed for user "finishline"');
    const asUser = async (user: string) =>
      (await fetch(`${env?.httpUrl}/progress/healthz`, { headers: { cookie: `session=${user}` } })).json();
    env = await startServer({
      store,
      authenticate: cookieAuth,
      healthDetails: (principal) => principal.id === 'ops',
    });
    // An end user of the application authenticates too, and learns nothing of the store or the replica.
    expect(await asUser('alice')).toEqual({ ok: true });
    expect(await asUser('ops')).toMatchObject({ ok: true, store: { lastError: expect.any(String) } });
    await env.close();
    // Only `true` accepts (a predicate written in JavaScript may return a truthy non-boolean), and one that
    // throws accepts no one (options.ts).
    env = await startServer({
      store,
      authenticate: cookieAuth,
      healthDetails: () => 'false' as unknown as boolean,
    });
    expect(await asUser('ops')).toEqual({ ok: true });
    await env.close();
    env = await startServer({
      store,
      authenticate: cookieAuth,
      healthDetails: () => {
        throw new Error('roles service down');
      },
    });
    expect(await asUser('ops')).toEqual({ ok: true });
    await env.close();
    // 'none' does not authenticate at all: the probe does not wait on (or load) the authenticate hook.
    let authenticated = 0;
    env = await startServer({
      store,
      healthDetails: 'none',
      authenticate: () => {
        authenticated += 1;
        return { id: 'ops' };
      },
    });
    expect(await asUser('ops')).toEqual({ ok: true });
    expect(authenticated).toBe(0);
  });

  it('answers only { ok } to an expired credential, as every other route refuses it (401 token_expired)', async () => {
    const { store, state } = storeWithFeedHealth();
    env = await startServer({
      store,
      authenticate: (request) =>
        cookieAuth(request)?.id === 'ops' ? { id: 'ops', expiresAt: Date.now() - 1000 } : null,
    });
    state.lastError = new Error('password authentication failed for user "finishline"');
    const expired = await fetch(`${env.httpUrl}/progress/healthz`, { headers: { cookie: 'session=ops' } });
    expect({ status: expired.status, body: await expired.json() }).toEqual({
      status: 200,
      body: { ok: true },
    });
  });

  it('answers a probe without credentials without asking the authenticate hook, however long it takes', async () => {
    // Reported: every anonymous GET/HEAD of healthz (the kubelet's, a load balancer's, every few
    // seconds) waited on `authenticate` to decide on details, so an auth backend that hung timed the
    // probe out and the replica was marked unready for it.
    const { store, state } = storeWithFeedHealth();
    let calls = 0;
    let release!: () => void;
    const hung = new Promise<null>((resolve) => {
      release = () => resolve(null);
    });
    env = await startServer({
      store,
      authenticate: () => {
        calls += 1;
        return hung;
      },
    });
    state.lastError = new Error('password authentication failed for user "finishline"');
    try {
      // Bounded, so that the defect fails here rather than at the test's timeout; no measure of speed.
      const signal = AbortSignal.timeout(3000);
      const answers: unknown[] = [];
      for (const path of ['/progress/healthz', '/progress/livez']) {
        for (const method of ['GET', 'HEAD']) {
          // A probe's own headers (a kubelet sends a User-Agent and Accept), and an application's custom
          // header, which this route does not take for a credential.
          const headers = { 'user-agent': 'kube-probe/1.31', accept: '*/*', 'x-user': 'ops' };
          const response = await fetch(`${env.httpUrl}${path}`, { method, headers, signal });
          answers.push([path, method, response.status, await response.text()]);
        }
      }
      expect(answers).toEqual([
        ['/progress/healthz', 'GET', 200, '{"ok":true}'],
        ['/progress/healthz', 'HEAD', 200, ''],
        ['/progress/livez', 'GET', 200, '{"ok":true}'],
        ['/progress/livez', 'HEAD', 200, ''],
      ]);
      expect(calls).toBe(0);
      // A request with credentials still asks the hook (and waits for it, a while) to decide on the details.
      const withCookie = fetch(`${env.httpUrl}/progress/healthz`, { headers: { cookie: 'session=ops' } });
      await vi.waitFor(() => expect(calls).toBe(1));
      release();
      expect(await (await withCookie).json()).toEqual({ ok: true });
    } finally {
      release();
    }
  });

  it('answers a probe with credentials within a bound when the authenticate hook or healthDetails hangs', async () => {
    // Reported: a GET of healthz carrying a Cookie or Authorization header (a load balancer's check
    // through an auth proxy that adds them) waited on the hooks for ever when they hung, so the probe
    // timed out and the replica was marked unready for its auth backend's sake. The status is the
    // report's; the hooks decide the details only, and a hook that does not answer in time gives none.
    const { store, state } = storeWithFeedHealth();
    const hung = new Promise<never>(() => {});
    let hangAuthenticate = true;
    env = await startServer({
      store,
      authenticate: (request) => (hangAuthenticate ? hung : cookieAuth(request)),
      healthDetails: () => hung,
    });
    // Bounded, so that the defect fails here rather than at the test's timeout; no measure of speed.
    const signal = AbortSignal.timeout(3000);
    const ask = async (method: string, headers: Record<string, string>) => {
      const response = await fetch(`${env?.httpUrl}/progress/healthz`, { method, headers, signal });
      return [method, response.status, await response.text()];
    };
    const answers = [
      await ask('GET', { cookie: 'session=ops' }),
      await ask('HEAD', { authorization: 'Bearer t' }),
    ];
    state.connected = false;
    answers.push(await ask('GET', { cookie: 'session=ops' }));
    // The predicate hangs with an authenticate hook that answers.
    hangAuthenticate = false;
    answers.push(await ask('GET', { cookie: 'session=ops' }));
    expect(answers).toEqual([
      ['GET', 200, '{"ok":true}'],
      ['HEAD', 200, ''],
      ['GET', 503, '{"ok":false}'],
      ['GET', 503, '{"ok":false}'],
    ]);
  });

  it('answers 503 to a probe with credentials when shutdown begins while its hooks run', async () => {
    // The status was decided before the wait for the hooks: a close() begun during it still answered 200.
    let closing: Promise<void> | undefined;
    env = await startServer({
      healthDetails: 'authenticated',
      authenticate: (request) => {
        closing ??= env?.server.close({ timeoutMs: 200 });
        return cookieAuth(request);
      },
    });
    const response = await fetch(`${env.httpUrl}/progress/healthz`, {
      headers: { cookie: 'session=ops' },
      signal: AbortSignal.timeout(3000),
    });
    const body = await response.json();
    await closing;
    expect([response.status, body]).toEqual([503, expect.objectContaining({ ok: false, closing: true })]);
  });

  it('is unhealthy once closing', async () => {
    env = await startServer();
    const closing = env.server.close({ timeoutMs: 100 });
    expect(env.server.health()).toMatchObject({ ok: false, closing: true });
    await closing;
  });

  it('answers livez 200 while readiness fails: feed down, and during a shutdown still waiting for a batch', async () => {
    const { store, state } = storeWithFeedHealth();
    env = await startServer({ store });
    expect(await probe('/progress/livez')).toEqual({ status: 200, body: { ok: true } });
    expect((await probe('/progress/livez', 'HEAD')).status).toBe(200);
    expect((await probe('/progress/livez', 'POST')).status).toBe(404);

    state.connected = false;
    expect((await probe()).status).toBe(503);
    // A replica that lost its database recovers by itself: liveness must not get it restarted.
    expect(await probe('/progress/livez')).toEqual({ status: 200, body: { ok: true } });
    state.connected = true;

    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    let started!: () => void;
    const running = new Promise<void>((resolve) => {
      started = resolve;
    });
    let release!: () => void;
    const released = new Promise<void>((resolve) => {
      release = resolve;
    });
    // A batch slow to honour its abort: close() waits for it, its listener still open meanwhile.
    const batch = task.runBatch([1], async (_n, { signal }) => {
      started();
      await released;
      signal.throwIfAborted();
    });
    await running;
    const closing = env.server.close({ timeoutMs: 5000 });
    expect(await probe()).toEqual({ status: 503, body: { ok: false } });
    expect(await probe('/progress/livez')).toEqual({ status: 200, body: { ok: true } });
    release();
    await closing;
    expect(await batch).toMatchObject({ status: 'interrupted' });
  });

  it('treats a feed without health() as connected and one whose health() throws as down', () => {
    expect(readStoreHealth(new MemoryProgressStore().changes)).toEqual({ connected: true, lastError: null });
    const broken = {
      subscribe: () => () => {},
      health: () => {
        throw new Error('boom');
      },
    };
    expect(readStoreHealth(broken)).toEqual({ connected: false, lastError: 'boom' });
  });
});
