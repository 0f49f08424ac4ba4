/**
 * Edge cases of the server's lifetimes and limits: the HTTP API during shutdown, credentials that expire
 * over HTTP and SSE, the re-check of a token renewal when the store fails, rate limits across reconnects,
 * an SSE client that leaves during authentication. Each but the last was a bug found by a review on
 * 3 December 2026, and its test failed before the fix; the last (a socket closed while its subscribes wait
 * on the store) checks what that review found right.
 */
import { createServer, request as httpRequest, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { ErrorCode, MemoryProgressStore, ProgressError } from '@finishline/core';
import { afterEach, describe, expect, it } from 'vitest';
import { ProgressServer } from './progress-server.js';
import { gate, headerAuth, sleep } from './testing/harness.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

function get(
  url: string,
  headers: Record<string, string>,
): Promise<{ status: number; response: IncomingMessage; body: () => Promise<string> }> {
  return new Promise((resolve, reject) => {
    const request = httpRequest(url, { headers });
    request.on('response', (response) => {
      let text = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => {
        text += chunk;
      });
      const ended = new Promise<string>((done) => response.on('end', () => done(text)));
      resolve({ status: response.statusCode ?? 0, response, body: () => ended });
      cleanups.push(() => {
        response.destroy();
      });
    });
    request.on('error', reject);
    request.end();
  });
}

/** Mounts `progress`'s HTTP API on `httpServer`, listening until the test ends: its port. */
async function serveOn(httpServer: Server, progress: ProgressServer): Promise<number> {
  httpServer.on('request', progress.httpHandler());
  await new Promise<void>((resolve) => httpServer.listen(0, '127.0.0.1', resolve));
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        httpServer.closeAllConnections();
        httpServer.close(() => resolve());
      }),
  );
  return (httpServer.address() as AddressInfo).port;
}

/** A ProgressServer whose HTTP API is mounted on the application's own http.Server. */
async function onOwnHttpServer() {
  const store = new MemoryProgressStore();
  const httpServer = createServer();
  const progress = new ProgressServer({ store, server: httpServer, authenticate: headerAuth });
  return { store, progress, port: await serveOn(httpServer, progress) };
}

describe('the HTTP API during shutdown (an application http.Server)', () => {
  it('answers requests after close() with 503 closed', async () => {
    const { progress, port } = await onOwnHttpServer();
    const task = await progress.tasks.create({ owner: 'alice', kind: 'k' });
    await progress.close({ timeoutMs: 200 });

    const answer = await get(`http://127.0.0.1:${port}/progress/tasks/${task.id}`, { 'x-user': 'alice' });
    expect(answer.status).toBe(503);
    // A page on another site is refused as at any other time: it does not learn of the shutdown.
    const forged = await get(`http://127.0.0.1:${port}/progress/tasks/${task.id}`, {
      'x-user': 'alice',
      origin: 'https://evil.example',
    });
    expect(forged.status).toBe(403);
  });

  it('refuses an SSE stream after close() (it would follow a closed hub and never end)', async () => {
    const { store, progress, port } = await onOwnHttpServer();
    // A task of another replica (store shared), still running when this replica shuts down.
    const task = await store.createTask({ owner: 'alice', kind: 'k' });
    await progress.close({ timeoutMs: 200 });

    const answer = await get(`http://127.0.0.1:${port}/progress/tasks/${task.id}/stream`, {
      'x-user': 'alice',
    });
    // The other replica completes the task.
    await store.append(task.id, { type: 'completed' });
    let ended = false;
    void answer.body().then(() => {
      ended = true;
    });
    await sleep(1500);
    // Either refused (503) or, if served, it must end after the terminal frame.
    expect({ status: answer.status, ended }).toEqual({ status: 503, ended: true });
  });
});

/**
 * A ProgressServer on the application's own http.Server whose authenticate hook holds every request until
 * `release()`: `inHook` resolves once a request waits in it (past the handler's shutdown check).
 */
async function authenticatingUntilReleased() {
  const store = new MemoryProgressStore();
  const httpServer = createServer();
  const held = gate();
  let entered!: () => void;
  const inHook = new Promise<void>((resolve) => {
    entered = resolve;
  });
  const progress = new ProgressServer({
    store,
    server: httpServer,
    heartbeatIntervalMs: 60_000,
    authenticate: async (request) => {
      entered();
      await held.promise;
      return headerAuth(request);
    },
  });
  const port = await serveOn(httpServer, progress);
  return { store, progress, base: `http://127.0.0.1:${port}/progress`, inHook, release: held.open };
}

describe('a request being authenticated while the server shuts down', () => {
  it('an SSE stream is refused with 503 closed, not opened after close() ended the streams', async () => {
    const { store, progress, base, inHook, release } = await authenticatingUntilReleased();
    // A task of another replica (store shared): this replica's shutdown does not end it.
    const task = await store.createTask({ owner: 'alice', kind: 'k' });
    const answer = get(`${base}/tasks/${task.id}/stream`, { 'x-user': 'alice' });
    // The request passed the shutdown check and waits in the authenticate hook while close() runs.
    await inHook;
    await progress.close({ timeoutMs: 200 });
    release();
    // Opened now, the stream would be in no shutdown's set: on the application's server it stayed open
    // for ever (a closed hub, heartbeats and the principal's slot held).
    expect((await answer).status).toBe(503);
  });

  it('an ack is refused with 503 closed, not answered 200 once the ack writer has closed (it was lost)', async () => {
    const { store, progress, base, inHook, release } = await authenticatingUntilReleased();
    const task = await store.createTask({ owner: 'alice', kind: 'k' });
    await store.append(task.id, { type: 'completed' });
    const answer = fetch(`${base}/tasks/${task.id}/ack`, {
      method: 'POST',
      headers: { 'x-user': 'alice', 'content-type': 'application/json' },
      body: JSON.stringify({ seq: 1 }),
    });
    await inHook;
    await progress.close({ timeoutMs: 200 });
    release();
    const response = await answer;
    // A 200 tells the client its ack is recorded: it never sends it again. 503 `closed`: it acks elsewhere.
    expect({
      status: response.status,
      body: await response.json(),
      ackedSeq: (await store.getTask(task.id))?.ackedSeq,
    }).toEqual({
      status: 503,
      body: { error: { code: 'closed', message: expect.any(String) } },
      ackedSeq: 0,
    });
  });
});

describe('Principal.expiresAt over HTTP and SSE', () => {
  it('refuses a request whose credential already expired with 401 token_expired, as a socket refuses it (4011)', async () => {
    const store = new MemoryProgressStore();
    const progress = await ProgressServer.listen(
      {
        store,
        authenticate: (request) =>
          request.headers['x-user'] === 'alice' ? { id: 'alice', expiresAt: Date.now() - 60_000 } : null,
      },
      { port: 0, host: '127.0.0.1' },
    );
    cleanups.push(() => progress.close({ timeoutMs: 200 }));
    const port = (progress.httpServer.address() as AddressInfo).port;
    const task = await progress.tasks.create({ owner: 'alice', kind: 'k' });
    const answer = await get(`http://127.0.0.1:${port}/progress/tasks/${task.id}`, { 'x-user': 'alice' });
    expect(answer.status).toBe(401);
  });

  it('takes an expiry that is not a time (NaN) for expired, on the API and its event stream', async () => {
    // `claims.exp * 1000` of a token without `exp`: before, the credential never expired over HTTP.
    const store = new MemoryProgressStore();
    const progress = await ProgressServer.listen(
      { store, authenticate: () => ({ id: 'alice', expiresAt: Number.NaN }) },
      { port: 0, host: '127.0.0.1' },
    );
    cleanups.push(() => progress.close({ timeoutMs: 200 }));
    const port = (progress.httpServer.address() as AddressInfo).port;
    const task = await progress.tasks.create({ owner: 'alice', kind: 'k' });
    for (const path of [`/progress/tasks/${task.id}`, `/progress/tasks/${task.id}/stream`]) {
      const answer = await get(`http://127.0.0.1:${port}${path}`, {});
      expect(answer.status, path).toBe(401);
      expect(JSON.parse(await answer.body()), path).toMatchObject({ error: { code: 'token_expired' } });
    }
  });

  it('ends an SSE stream when its credential expires', async () => {
    const store = new MemoryProgressStore();
    const progress = await ProgressServer.listen(
      {
        store,
        authenticate: (request) =>
          request.headers['x-user'] === 'alice' ? { id: 'alice', expiresAt: Date.now() + 200 } : null,
        heartbeatIntervalMs: 60_000,
      },
      { port: 0, host: '127.0.0.1' },
    );
    cleanups.push(() => progress.close({ timeoutMs: 200 }));
    const port = (progress.httpServer.address() as AddressInfo).port;
    const task = await progress.tasks.create({ owner: 'alice', kind: 'k' });
    const answer = await get(`http://127.0.0.1:${port}/progress/tasks/${task.id}/stream`, {
      'x-user': 'alice',
    });
    expect(answer.status).toBe(200);
    let text = '';
    answer.response.on('data', (chunk: string) => {
      text += chunk;
    });
    await sleep(500); // past the credential's expiry
    await task.progress({ done: 1, message: 'after-expiry' });
    await sleep(200);
    // A socket would have been closed with token_expired / 4011 at the expiry.
    expect(text).not.toContain('after-expiry');
  });
});

describe('the re-check of a token renewal', () => {
  it('goes on past a store failure on one subscription: the others are still re-checked (and dropped)', async () => {
    const { RawClient } = await import('./testing/harness.js');
    const store = new MemoryProgressStore();
    const revoked = new Set<string>();
    const progress = await ProgressServer.listen(
      {
        store,
        authenticate: () => null,
        authenticateToken: (token) => (token.startsWith('token-') ? { id: token.slice(6) } : null),
        authorize: (principal, task) => task.owner === principal.id && !revoked.has(task.id),
        heartbeatIntervalMs: 60_000,
      },
      { port: 0, host: '127.0.0.1' },
    );
    cleanups.push(() => progress.close({ timeoutMs: 200 }));
    const port = (progress.httpServer.address() as AddressInfo).port;
    const first = await progress.tasks.create({ owner: 'alice', kind: 'k' });
    const second = await progress.tasks.create({ owner: 'alice', kind: 'k' });
    const client = new RawClient(`ws://127.0.0.1:${port}/progress`);
    cleanups.push(() => client.close().then(() => undefined));
    await client.opened;
    client.send({ type: 'auth', token: 'token-alice', protocol: 2 });
    await client.next((frame) => frame.type === 'hello');
    for (const task of [first, second]) client.send({ type: 'subscribe', taskId: task.id, afterSeq: 0 });
    await client.next(() => client.frames.filter((frame) => frame.type === 'snapshot').length === 2);

    // Access to both is revoked; the renewal's re-check of the first fails on a transient store error.
    revoked.add(first.id);
    revoked.add(second.id);
    const getTask = store.getTask.bind(store);
    let failed = false;
    store.getTask = async (id: string) => {
      if (!failed) {
        failed = true;
        throw new ProgressError(ErrorCode.StoreUnavailable, 'hiccup');
      }
      return getTask(id);
    };
    const from = client.frames.length;
    client.send({ type: 'auth', token: 'token-alice', protocol: 2 });
    await client.next((frame) => frame.type === 'hello', { from });
    await sleep(200);
    await second.progress({ done: 1, message: 'secret' });
    await sleep(200);
    const leaked = client.frames
      .slice(from)
      .filter((frame) => frame.type === 'event' && (frame.event as { taskId: string }).taskId === second.id);
    expect(leaked).toEqual([]);
  });
});

describe('rate limits that reconnects and claimed cursors do not get around', () => {
  it("keeps a principal's frame budget across serial reconnects", async () => {
    const { startServer, RawClient } = await import('./testing/harness.js');
    // The rate limits' clock stands still, so no token is refilled however long the rounds take: on a
    // loaded machine five reconnects took over a second, the budget refilled, and the frame meant to be
    // refused was answered.
    const frozenAt = Date.now();
    const env = await startServer({
      rateLimitPerPrincipalPerSecond: 10,
      maxSubscriptionsPerPrincipal: 10,
      heartbeatIntervalMs: 60_000,
      clock: () => frozenAt,
    });
    cleanups.push(() => env.close());
    let accepted = 0;
    for (let round = 0; round < 5; round++) {
      const client = await RawClient.connect(env.wsUrl, { user: 'mallory' });
      for (let i = 0; i < 10; i++) client.send({ type: 'ping', id: `p${round}-${i}` });
      await client.next(
        () => client.frames.filter((f) => f.type === 'pong' || f.type === 'error').length === 10,
      );
      accepted += client.frames.filter((f) => f.type === 'pong').length;
      await client.close();
    }
    // The principal's burst of 10, once: a reconnect does not refill it.
    expect(accepted).toBe(10);
    // The refusal names the limit that refused: the principal's, not the socket's (which had tokens left).
    const client = await RawClient.connect(env.wsUrl, { user: 'mallory' });
    client.send({ type: 'ping', id: 'over' });
    const refused = await client.next((frame) => frame.type === 'error');
    expect(refused).toMatchObject({ code: 'rate_limited', requestId: 'over' });
    expect(refused.message).toBe(
      "Rate limit exceeded (10 frames/s for all of this principal's sockets); frames are being dropped",
    );
    await client.close();
  });

  it('charges acks beyond one per frame sent (a claimed cursor, or one snapshot, buys no run of free acks)', async () => {
    const { startServer, RawClient } = await import('./testing/harness.js');
    const env = await startServer({ heartbeatIntervalMs: 60_000 });
    cleanups.push(() => env.close());
    const task = await env.server.tasks.create({ owner: 'mallory', kind: 'k' });
    for (let i = 0; i < 1000; i++) await task.progress({ done: i });
    const client = await RawClient.connect(env.wsUrl, { user: 'mallory' });
    cleanups.push(() => client.close().then(() => undefined));
    // Claim to have everything: one snapshot is sent, and acks 1, 2 … 1000 would each advance.
    client.send({ type: 'subscribe', taskId: task.id, afterSeq: 1000 });
    await client.next((f) => f.type === 'snapshot');
    for (let seq = 1; seq <= 1000; seq++) client.send({ type: 'ack', taskId: task.id, seq });
    // 1,000 frames in one burst (burst 200, 100/s): the acks beyond the one frame sent pay, and are refused.
    const refused = await client.next((f) => f.type === 'error');
    expect(refused).toMatchObject({ code: 'rate_limited' });
  });
});

describe('an auth renewal in an unsupported protocol version', () => {
  it('gets unsupported_protocol and close 4002 (docs/protocol.md, Versioning)', async () => {
    const { startServer, RawClient } = await import('./testing/harness.js');
    const env = await startServer({ heartbeatIntervalMs: 60_000, authenticateToken: (t) => ({ id: t }) });
    cleanups.push(() => env.close());
    const client = await RawClient.connect(env.wsUrl, { user: 'alice' });
    cleanups.push(() => client.close().then(() => undefined));
    client.send({ type: 'auth', token: 'alice', protocol: 3 });
    const error = await client.next((f) => f.type === 'error');
    // It names the versions this server accepts (it said "speaks 2", as if version 1 were refused).
    expect(error).toMatchObject({
      code: 'unsupported_protocol',
      message: 'Protocol version 3 is not supported; this side speaks 1 and 2',
    });
    const closed = await Promise.race([
      client.closed,
      sleep(1000).then(() => ({ code: -1, reason: 'still open' })),
    ]);
    expect(closed.code).toBe(4002);
  });
});

describe('an SSE request whose client left while it was being authenticated', () => {
  it('releases its socket slot and hub follow', async () => {
    const { startServer } = await import('./testing/harness.js');
    let slow = true;
    const env = await startServer({
      maxSocketsPerPrincipal: 1,
      heartbeatIntervalMs: 60_000,
      authenticate: async (request) => {
        if (slow) await sleep(300);
        const user = request.headers['x-user'];
        return typeof user === 'string' ? { id: user } : null;
      },
    });
    cleanups.push(() => env.close());
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    // The client gives up while authentication runs.
    await new Promise<void>((resolve) => {
      const request = httpRequest(`${env.httpUrl}/progress/tasks/${task.id}/stream`, {
        headers: { 'x-user': 'alice' },
      });
      request.on('error', () => resolve());
      request.end();
      setTimeout(() => {
        request.destroy();
        resolve();
      }, 50);
    });
    await sleep(600);
    slow = false;
    const followedTasks = env.server.health().followedTasks;
    // A stream counts against the socket cap: alice's WebSocket is refused too.
    const { RawClient } = await import('./testing/harness.js');
    const ws = await RawClient.connect(env.wsUrl, { user: 'alice', hello: false });
    const first = await ws.next(() => true);
    await ws.close();
    await sleep(100);
    const answer = await get(`${env.httpUrl}/progress/tasks/${task.id}/stream`, { 'x-user': 'alice' });
    // Nobody is watching: no followed task, and alice's one socket slot is free.
    expect({ followedTasks, ws: first.type, sse: answer.status }).toEqual({
      followedTasks: 0,
      ws: 'hello',
      sse: 200,
    });
  });
});

describe('a socket closed while its subscribes wait on the store', () => {
  it('leaves no hub follow or subscription count behind', async () => {
    const { startServer, RawClient, gate } = await import('./testing/harness.js');
    const env = await startServer({ maxSubscriptionsPerPrincipal: 3, heartbeatIntervalMs: 60_000 });
    cleanups.push(() => env.close());
    const tasks = [];
    for (let i = 0; i < 3; i++) tasks.push(await env.server.tasks.create({ owner: 'alice', kind: 'k' }));
    const held = gate();
    const getTask = env.store.getTask.bind(env.store);
    env.store.getTask = async (id: string) => {
      await held.promise;
      return getTask(id);
    };
    const first = await RawClient.connect(env.wsUrl, { user: 'alice' });
    for (const task of tasks) {
      first.send({ type: 'subscribe', taskId: task.id, afterSeq: 0 });
      first.send({ type: 'ack', taskId: task.id, seq: 1 });
    }
    first.send({ type: 'unsubscribe', taskId: tasks[0]!.id });
    first.send({ type: 'subscribe', taskId: tasks[0]!.id, afterSeq: 0 });
    await first.sync();
    await first.close();
    held.open();
    await sleep(100);
    const health = env.server.health();
    const second = await RawClient.connect(env.wsUrl, { user: 'alice' });
    cleanups.push(() => second.close().then(() => undefined));
    for (const task of tasks) second.send({ type: 'subscribe', taskId: task.id, afterSeq: 0 });
    await second.next(
      () => second.frames.filter((f) => f.type === 'snapshot' || f.type === 'error').length === 3,
    );
    expect({ followed: health.followedTasks, sockets: health.sockets }).toEqual({ followed: 0, sockets: 0 });
    expect(second.frames.filter((f) => f.type === 'error')).toEqual([]);
  });
});
