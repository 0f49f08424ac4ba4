import { createServer, request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import { type AddressInfo, connect, type Socket } from 'node:net';
import { Worker } from 'node:worker_threads';
import { ErrorCode, MemoryProgressStore, PROTOCOL_NAME, ProgressError } from '@finishline/core';
import { ManualClock } from '@finishline/core/testing';
import { afterEach, describe, expect, it } from 'vitest';
import { ProgressServer } from '../progress-server.js';
import {
  headerAuth,
  RawClient,
  serverFrameViolations,
  sleep,
  startServer,
  type TestServer,
  tokenAuth,
} from '../testing/harness.js';
import { type RawHttpAnswer, rawHttp } from '../testing/raw-http.js';

/** The HTTP API: same authentication and authorization as the socket, JSON errors, no leaks. */

let env: TestServer | undefined;
const cleanups: Array<() => Promise<unknown>> = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0)) await cleanup();
  await env?.close();
  env = undefined;
  // Checked last, once every frame arrived and the cleanup ran.
  expect(serverFrameViolations.splice(0)).toEqual([]);
});

async function call(
  path: string,
  options: { user?: string; method?: string; body?: string; headers?: Record<string, string> } = {},
): Promise<{ status: number; body: Record<string, unknown>; headers: Headers }> {
  if (env === undefined) throw new Error('no server');
  const response = await fetch(`${env.httpUrl}${path}`, {
    method: options.method ?? 'GET',
    headers: { ...(options.user === undefined ? {} : { 'x-user': options.user }), ...options.headers },
    ...(options.body === undefined ? {} : { body: options.body }),
  });
  const text = await response.text();
  return { status: response.status, body: text === '' ? {} : JSON.parse(text), headers: response.headers };
}

/**
 * A server whose authorize hook, the first time it runs, lets retention purge alice's ended task `nightly`
 * and bob create a task of that id (and `thenBob` write to it): the window between a route's authorization
 * and its work. The runs of an id are told apart by `createdAt`: the new one is created a millisecond later.
 */
async function idTakenByBobWhileAuthorizing(
  thenBob: (store: MemoryProgressStore) => Promise<void> = async () => {},
): Promise<MemoryProgressStore> {
  const clock = new ManualClock();
  const store = new MemoryProgressStore({ clock: clock.now });
  let swap: (() => Promise<void>) | undefined;
  env = await startServer({
    store,
    authorize: async (principal, task) => {
      const before = swap;
      swap = undefined;
      await before?.();
      return task.owner === principal.id;
    },
  });
  const old = await store.createTask({ id: 'nightly', owner: 'alice', kind: 'k' });
  await store.append(old.id, { type: 'completed' });
  swap = async () => {
    clock.advance(1);
    expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(1);
    await store.createTask({ id: 'nightly', owner: 'bob', kind: 'k' });
    await thenBob(store);
  };
  return store;
}

describe('HTTP handler', () => {
  it('lists tasks with at most 8 authorize calls in flight, in the order the store gave', async () => {
    // Each call of the hook waits for the next turn of the event loop, so calls started together overlap.
    let inFlight = 0;
    let most = 0;
    env = await startServer({
      authorize: async (principal, task) => {
        inFlight += 1;
        most = Math.max(most, inFlight);
        await new Promise((resolve) => setImmediate(resolve));
        inFlight -= 1;
        return task.owner === principal.id && task.kind !== 'hidden';
      },
    });
    for (let i = 0; i < 30; i += 1) {
      await env.server.tasks.create({ id: `t${i}`, owner: 'alice', kind: i % 3 === 0 ? 'hidden' : 'k' });
    }
    const listed = await call('/progress/tasks?limit=100', { user: 'alice' });
    expect(listed.status).toBe(200);
    const ids = (listed.body.tasks as Array<{ id: string }>).map((task) => task.id);
    const stored = await env.store.listTasks({ owner: 'alice', limit: 100 });
    expect(ids).toEqual(stored.filter((task) => task.kind !== 'hidden').map((task) => task.id));
    expect(ids).toHaveLength(20);
    expect(most).toBeGreaterThan(1);
    expect(most).toBeLessThanOrEqual(8);
  });

  it("serves a task's snapshot to its owner, without owner, acks or lease", async () => {
    env = await startServer();
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'batch_taint', total: 2 });
    await task.item({ key: 'n1', ok: true });
    const response = await call(`/progress/tasks/${task.id}`, { user: 'alice' });
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toContain('application/json');
    expect(response.headers.get('cache-control')).toBe('no-store');
    expect(response.body.task).toMatchObject({
      id: task.id,
      kind: 'batch_taint',
      seq: 1,
      done: 1,
      status: 'running',
    });
    for (const hidden of ['owner', 'ackedSeq', 'leaseOwner', 'leaseExpiresAt']) {
      expect(response.body.task).not.toHaveProperty(hidden);
    }
  });

  it('answers 401 without credentials, 403 for another owner (revealTaskExistence) and 404 for an unknown task, with no data', async () => {
    env = await startServer({ revealTaskExistence: true });
    const task = await env.server.tasks.create({
      owner: 'bob',
      kind: 'secret-kind',
      message: 'secret message',
    });
    const anonymous = await call(`/progress/tasks/${task.id}`);
    expect(anonymous).toMatchObject({ status: 401, body: { error: { code: 'unauthenticated' } } });
    const forbidden = await call(`/progress/tasks/${task.id}`, { user: 'alice' });
    expect(forbidden).toMatchObject({ status: 403, body: { error: { code: 'forbidden' } } });
    expect(JSON.stringify(forbidden.body)).not.toMatch(/secret/);
    const events = await call(`/progress/tasks/${task.id}/events`, { user: 'alice' });
    expect(events.status).toBe(403);
    expect(Object.keys(events.body)).toEqual(['error']);
    const missing = await call('/progress/tasks/nope', { user: 'alice' });
    expect(missing).toMatchObject({ status: 404, body: { error: { code: 'task_not_found' } } });
    const cancel = await call(`/progress/tasks/${task.id}/cancel`, {
      user: 'alice',
      method: 'POST',
      headers: { 'content-type': 'application/json' },
    });
    expect(cancel.status).toBe(403);
    expect((await env.store.getTask(task.id))?.status).toBe('running');
  });

  it('pages events after a seq', async () => {
    env = await startServer();
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    for (let i = 1; i <= 5; i++) await task.progress({ done: i });
    const page = await call(`/progress/tasks/${task.id}/events?afterSeq=1&limit=2`, { user: 'alice' });
    expect(page.status).toBe(200);
    expect((page.body.events as Array<{ seq: number }>).map((event) => event.seq)).toEqual([2, 3]);
    expect(page.body.hasMore).toBe(true);
    expect(page.body.task).toMatchObject({ seq: 5 });
    // The store's epoch, as a snapshot frame carries it: an HTTP client tells a restored store's old
    // cursor by it.
    const epoch = await env.store.getEpoch?.();
    expect(epoch).toEqual(expect.any(String));
    expect(page.body.epoch).toBe(epoch);
    expect((await call(`/progress/tasks/${task.id}`, { user: 'alice' })).body.epoch).toBe(epoch);
    const rest = await call(`/progress/tasks/${task.id}/events?afterSeq=3`, { user: 'alice' });
    expect((rest.body.events as Array<{ seq: number }>).map((event) => event.seq)).toEqual([4, 5]);
    expect(rest.body.hasMore).toBe(false);
    for (const query of ['afterSeq=-1', 'afterSeq=abc', 'limit=0', 'limit=100000', 'afterSeq=1.5']) {
      const bad = await call(`/progress/tasks/${task.id}/events?${query}`, { user: 'alice' });
      expect(bad, query).toMatchObject({ status: 400, body: { error: { code: 'invalid_input' } } });
    }
  });

  it('answers hasMore: false when the store holds no event after afterSeq (retention removed them), so a client paging on it stops', async () => {
    env = await startServer();
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    for (let i = 1; i <= 3; i++) await task.progress({ done: i });
    await task.complete();
    // Retention kept the finished task's row and removed its events. hasMore stayed true (the page's last
    // seq, afterSeq, below the task's), and a client paging while hasMore asked for the same empty page
    // for ever; `task` stands for what is gone.
    const store = env.store;
    const readEvents = store.readEvents.bind(store);
    store.readEvents = async () => [];
    cleanups.push(async () => {
      store.readEvents = readEvents;
    });
    const page = await call(`/progress/tasks/${task.id}/events?afterSeq=1`, { user: 'alice' });
    expect(page.status).toBe(200);
    expect(page.body).toMatchObject({ events: [], hasMore: false, task: { seq: 4, status: 'completed' } });
  });

  it("lists only the principal's own recent tasks, filtered by status", async () => {
    env = await startServer();
    const mine = await env.server.tasks.create({ owner: 'alice', kind: 'k', id: 'alice-1' });
    await env.server.tasks.create({ owner: 'alice', kind: 'k', id: 'alice-2' });
    await env.server.tasks.create({ owner: 'bob', kind: 'k', id: 'bob-1' });
    await mine.complete();
    const all = await call('/progress/tasks', { user: 'alice' });
    expect((all.body.tasks as Array<{ id: string }>).map((task) => task.id).sort()).toEqual([
      'alice-1',
      'alice-2',
    ]);
    const running = await call('/progress/tasks?status=running', { user: 'alice' });
    expect((running.body.tasks as Array<{ id: string }>).map((task) => task.id)).toEqual(['alice-2']);
    expect((await call('/progress/tasks?status=bogus', { user: 'alice' })).status).toBe(400);
  });

  it('lists only the tasks the authorize hook lets the principal watch, as every task route answers them', async () => {
    // An application whose rule is narrower than ownership: alice may not watch her `restricted` tasks.
    env = await startServer({
      authorize: (principal, task) => task.owner === principal.id && task.kind !== 'restricted',
    });
    await env.server.tasks.create({ owner: 'alice', kind: 'k', id: 'alice-open' });
    await env.server.tasks.create({
      owner: 'alice',
      kind: 'restricted',
      id: 'alice-hidden',
      message: 'secret',
    });
    expect((await call('/progress/tasks/alice-hidden', { user: 'alice' })).status).toBe(404);
    const listed = await call('/progress/tasks', { user: 'alice' });
    expect(listed.status).toBe(200);
    expect((listed.body.tasks as Array<{ id: string }>).map((task) => task.id)).toEqual(['alice-open']);
    expect(JSON.stringify(listed.body)).not.toContain('secret');
  });

  it('cancels a task, delivers the cancellation to watchers, and answers 409 the second time', async () => {
    env = await startServer();
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    const client = await RawClient.connect(env.wsUrl, { user: 'alice' });
    cleanups.push(() => client.close());
    client.send({ type: 'subscribe', taskId: task.id, afterSeq: 0 });
    await client.next((frame) => frame.type === 'snapshot');
    const response = await call(`/progress/tasks/${task.id}/cancel`, {
      user: 'alice',
      method: 'POST',
      body: JSON.stringify({ reason: 'wrong nodes' }),
      headers: { 'content-type': 'application/json' },
    });
    expect(response).toMatchObject({ status: 200, body: { task: { status: 'cancelled' } } });
    const event = await client.next((frame) => frame.type === 'event');
    expect(event.event).toMatchObject({ type: 'cancelled', reason: 'wrong nodes' });
    expect(task.signal.aborted).toBe(true);
    const again = await call(`/progress/tasks/${task.id}/cancel`, {
      user: 'alice',
      method: 'POST',
      headers: { 'content-type': 'application/json' },
    });
    expect(again).toMatchObject({ status: 409, body: { error: { code: 'task_finished' } } });
    const badBody = await call(`/progress/tasks/${task.id}/cancel`, {
      user: 'alice',
      method: 'POST',
      body: '{oops',
      headers: { 'content-type': 'application/json' },
    });
    expect(badBody.status).toBe(400);
  });

  // Found by a review: a principal allowed to cancel a task but not to watch it (an operator's kill switch)
  // got the whole task in the cancel's answer (its message, items, result), which every read route refuses it.
  it("answers a cancel by a principal that may not watch the task without the task's data", async () => {
    env = await startServer({
      authorize: (principal, task, action) =>
        task.owner === principal.id || (principal.id === 'operator' && action === 'cancel'),
    });
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k', message: 'secret message' });
    await task.item({ key: 'secret-node', ok: true });
    const cancel = (user: string, id: string) =>
      call(`/progress/tasks/${id}/cancel`, {
        user,
        method: 'POST',
        body: JSON.stringify({ reason: 'stop' }),
        headers: { 'content-type': 'application/json' },
      });
    expect((await call(`/progress/tasks/${task.id}`, { user: 'operator' })).status).toBe(404);
    const response = await cancel('operator', task.id);
    expect(response).toEqual(expect.objectContaining({ status: 200, body: { taskId: task.id } }));
    expect((await env.store.getTask(task.id))?.status).toBe('cancelled');
    // The owner, who may watch it, still gets the task as it is after the cancel.
    const other = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    const own = await cancel('alice', other.id);
    expect(own).toMatchObject({ status: 200, body: { taskId: other.id, task: { status: 'cancelled' } } });
  });

  // Found by a security review: the refusal of a cancel of a task that had ended named how it ended ("Task x
  // already ended (failed)"), so the principal of the test above, allowed to cancel and not to watch, read
  // the task's result in the 409 that no read route would have given it.
  it('refuses a cancel of an ended task without naming how it ended, whoever asks, owned here or not', async () => {
    env = await startServer({
      authorize: (principal, task, action) =>
        task.owner === principal.id || (principal.id === 'operator' && action === 'cancel'),
    });
    const cancel = (user: string, id: string) =>
      call(`/progress/tasks/${id}/cancel`, {
        user,
        method: 'POST',
        body: '{}',
        headers: { 'content-type': 'application/json' },
      });
    // One ended through its handle (the server still holds it), one through the store (another replica's).
    const here = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    await here.fail('disk full on node-7');
    const elsewhere = await env.store.createTask({ owner: 'alice', kind: 'k' });
    await env.store.append(elsewhere.id, {
      type: 'failed',
      error: { code: 'disk_full', message: 'disk full on node-7' },
    });
    for (const id of [here.id, elsewhere.id]) {
      for (const user of ['operator', 'alice']) {
        const refused = await cancel(user, id);
        expect(refused.status).toBe(409);
        expect(refused.body).toEqual({
          error: { code: ErrorCode.TaskFinished, message: `Task ${id} already ended` },
        });
      }
    }
  });

  // Found by a security review: the cancel route authorized the task it read, then cancelled whatever task
  // had the id by then. Retention may purge an ended task and its id be taken by another owner's new one
  // meanwhile (while the authorize hook runs): that task was cancelled, by a principal never asked about it.
  it("cancels only the task it authorized, not another owner's task that took the id meanwhile", async () => {
    const store = await idTakenByBobWhileAuthorizing();
    const response = await call('/progress/tasks/nightly/cancel', {
      user: 'alice',
      method: 'POST',
      body: '{}',
      headers: { 'content-type': 'application/json' },
    });
    expect(await store.getTask('nightly')).toMatchObject({ owner: 'bob', status: 'running' });
    expect(response.status).toBe(404);
    expect(response.body).toMatchObject({ error: { code: ErrorCode.TaskNotFound } });
  });

  // Found by a security review: the events route authorized the task it read, then read the events of
  // whatever task had the id by then. Retention may purge an ended task and its id be taken by another
  // owner's new one meanwhile (while the authorize hook runs): that task's events went to a principal never
  // asked about it.
  it("serves no events of another owner's task that took the id while authorize ran", async () => {
    await idTakenByBobWhileAuthorizing(async (bobs) => {
      await bobs.append('nightly', { type: 'progress', message: "bob's secret" });
    });
    const response = await call('/progress/tasks/nightly/events?afterSeq=0', { user: 'alice' });
    expect(JSON.stringify(response.body)).not.toContain("bob's secret");
    expect(response.status).toBe(404);
    expect(response.body).toMatchObject({ error: { code: ErrorCode.TaskNotFound } });
  });

  // Found by a security review: a cancel sent to the replica that created a task, after another worker had
  // taken its expired lease over and before this replica's lease keeper noticed, went through the task's
  // handle, whose append is fenced to this replica's lease: refused 409 lease_held, the task ran on, and the
  // store's message named both workers' server ids (host and pid) to the HTTP client.
  it('cancels a task created here whose lease another worker took over, naming no worker', async () => {
    const clock = new ManualClock();
    const store = new MemoryProgressStore({ clock: clock.now });
    // The lease keeper's timer never fires during the test: only the takeover below moves the lease.
    env = await startServer({
      store,
      serverId: 'replica-a',
      leaseTtlMs: 600_000,
      leaseRenewIntervalMs: 300_000,
      reapIntervalMs: 0,
    });
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    clock.advance(600_000);
    await store.renewLease(task.id, 'replica-b', 600_000);
    const response = await call(`/progress/tasks/${task.id}/cancel`, {
      user: 'alice',
      method: 'POST',
      body: '{"reason":"stop"}',
      headers: { 'content-type': 'application/json' },
    });
    expect(JSON.stringify(response.body)).not.toMatch(/replica-/);
    expect(response).toMatchObject({ status: 200, body: { taskId: task.id, task: { status: 'cancelled' } } });
    expect(await store.getTask(task.id)).toMatchObject({ status: 'cancelled' });
  });

  it('a client leaving in the middle of a POST body is neither logged nor counted as a handler failure', async () => {
    const errors: unknown[] = [];
    const noop = () => {};
    env = await startServer({
      logger: { debug: noop, info: noop, warn: noop, error: (...args: unknown[]) => errors.push(args) },
    });
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    for (const route of ['ack', 'cancel']) {
      const arrived = new Promise<IncomingMessage>((resolve) =>
        env?.server.httpServer?.once('request', resolve),
      );
      const client = connect(env.port, '127.0.0.1');
      cleanups.push(async () => client.destroy());
      client.write(
        `POST /progress/tasks/${task.id}/${route} HTTP/1.1\r\nHost: test\r\nX-User: alice\r\n` +
          'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"seq":',
      );
      const request = await arrived;
      // Leaves once the handler is reading the body (it starts within the turn the request arrived in).
      await new Promise((resolve) => setImmediate(resolve));
      const closed = new Promise((resolve) => request.once('close', resolve));
      client.destroy();
      await closed;
      // The handler's answer to the failed read runs in the turns after the request's close.
      for (let turn = 0; turn < 3; turn++) await new Promise((resolve) => setImmediate(resolve));
    }
    expect(errors).toEqual([]);
    expect((await env.server.metrics.handlerErrors.get()).values.map((value) => value.value)).toEqual([0]);
    expect((await env.store.getTask(task.id))?.status).toBe('running');
  });

  it('answers a body above 16 KiB 413 and closes the connection, rather than read the rest of it; so every refusal before the body arrived', async () => {
    env = await startServer({});
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    const cases = [
      { route: 'ack', headers: 'X-User: alice\r\n', status: 413 },
      { route: 'cancel', headers: 'X-User: alice\r\n', status: 413 },
      // Refused before any of the body is read: without credentials too (the length is judged before
      // authentication), and another site's Origin (judged before the length).
      { route: 'cancel', headers: '', status: 413 },
      { route: 'ack', headers: 'X-User: alice\r\nOrigin: https://evil.example\r\n', status: 403 },
    ];
    for (const { route, headers, status } of cases) {
      const client = connect(env.port, '127.0.0.1');
      cleanups.push(async () => client.destroy());
      let answer = '';
      client.on('data', (chunk: Buffer) => {
        answer += chunk.toString('latin1');
      });
      // Announces 1 GiB and sends 20 KiB of it, then nothing: a server reading the rest (Node reads a
      // request's unread body to its end to keep the connection) would take every byte a client sends.
      const ended = new Promise<string>((resolve) => client.once('end', () => resolve('ended')));
      client.write(
        `POST /progress/tasks/${task.id}/${route} HTTP/1.1\r\nHost: test\r\n${headers}` +
          `Content-Type: application/json\r\nContent-Length: ${2 ** 30}\r\n\r\n{"pad":"${'x'.repeat(20 * 1024)}`,
      );
      const outcome = await Promise.race([ended, sleep(3000).then(() => 'still open')]);
      expect(answer).toMatch(new RegExp(`^HTTP/1\\.1 ${status} `));
      expect(answer.toLowerCase()).toContain('connection: close');
      expect(outcome).toBe('ended');
    }
  });

  // Found by a review: the 413 came only once 16 KiB of the body had arrived, so a request announcing a
  // large body and sending a few bytes ran the authenticate hook and then held its connection, unanswered,
  // until the server's requestTimeout.
  it('answers 413 from a Content-Length above 16 KiB before authentication and before any of the body is read', async () => {
    let authenticated!: () => void;
    const hookRan = new Promise<'authenticate ran'>((resolve) => {
      authenticated = () => resolve('authenticate ran');
    });
    env = await startServer({
      authenticate: (request) => {
        authenticated();
        return headerAuth(request);
      },
    });
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    for (const route of ['ack', 'cancel']) {
      const client = connect(env.port, '127.0.0.1');
      cleanups.push(async () => client.destroy());
      let answer = '';
      client.on('data', (chunk: Buffer) => {
        answer += chunk.toString('latin1');
      });
      const ended = new Promise<string>((resolve) => client.once('end', () => resolve(answer)));
      // 16 KiB and one byte announced, four sent, and then nothing.
      client.write(
        `POST /progress/tasks/${task.id}/${route} HTTP/1.1\r\nHost: test\r\nX-User: alice\r\n` +
          `Content-Type: application/json\r\nContent-Length: ${16 * 1024 + 1}\r\n\r\n{"se`,
      );
      const outcome = await Promise.race([ended, hookRan]);
      expect(outcome).toMatch(/^HTTP\/1\.1 413 /);
      expect(outcome.toLowerCase()).toContain('connection: close');
      expect(JSON.parse(outcome.slice(outcome.indexOf('\r\n\r\n') + 4))).toEqual({
        error: { code: 'invalid_input', message: 'The body must be at most 16384 bytes' },
      });
    }
    // A body of 16 KiB exactly is read as before (and refused for what it says, not for its size).
    const exact = await call(`/progress/tasks/${task.id}/ack`, {
      user: 'alice',
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: `{"seq":0,"pad":"${'x'.repeat(16 * 1024 - 18)}"}`,
    });
    expect([exact.status, exact.body]).toEqual([
      400,
      { error: { code: 'invalid_input', message: 'seq must be an integer >= 1' } },
    ]);
  });

  it('logs a store failure of a task route with the task id, so an operator knows which task it hit', async () => {
    const warnings: Array<Record<string, unknown>> = [];
    const noop = () => {};
    const store = new MemoryProgressStore();
    env = await startServer({
      store,
      logger: { debug: noop, info: noop, warn: (obj) => warnings.push(obj), error: noop },
    });
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    store.getTask = () =>
      Promise.reject(new ProgressError(ErrorCode.StoreUnavailable, 'connect ECONNREFUSED'));
    expect((await call(`/progress/tasks/${encodeURIComponent(task.id)}`, { user: 'alice' })).status).toBe(
      503,
    );
    expect(warnings).toContainEqual(expect.objectContaining({ route: 'task', taskId: task.id }));
  });

  it('answers 405 for a wrong method and 404 for unknown routes without next', async () => {
    env = await startServer();
    const wrong = await call('/progress/tasks/x/cancel', { user: 'alice' });
    expect(wrong.status).toBe(405);
    expect(wrong.headers.get('allow')).toBe('POST');
    expect((await call('/progress/elsewhere', { user: 'alice' })).status).toBe(404);
    expect((await call('/other', { user: 'alice' })).status).toBe(404);
  });

  // Found by a review (7 December 2026): no answer carried `X-Content-Type-Options: nosniff`, though task
  // data is text others wrote (a task's message, an item's error) and a browser sniffing a JSON or error
  // answer as HTML would run it in the API's origin.
  it('sends nosniff on every answer it writes, and no-store on every one that carries task data or a credential decision', async () => {
    env = await startServer({ allowedOrigins: ['https://app.example'] });
    const base = env.httpUrl;
    const task = await env.server.tasks.create({
      owner: 'alice',
      kind: 'k',
      message: '<script>alert(1)</script>',
    });
    const ended = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    await ended.complete();
    const alice = { 'x-user': 'alice' };
    // A stream of the ended task: its terminal frame's id, which a reconnect sends to get the 204.
    const stream = await rawHttp(base, 'GET', `/progress/tasks/${ended.id}/stream`, { headers: alice });
    const endId = /^id: (.+)$/m.exec(stream.body)?.[1];
    expect(endId).toMatch(/!$/);
    const answers: Record<string, RawHttpAnswer> = {
      task: await rawHttp(base, 'GET', `/progress/tasks/${task.id}`, { headers: alice }),
      headTask: await rawHttp(base, 'HEAD', `/progress/tasks/${task.id}`, { headers: alice }),
      events: await rawHttp(base, 'GET', `/progress/tasks/${task.id}/events`, { headers: alice }),
      list: await rawHttp(base, 'GET', '/progress/tasks', { headers: alice }),
      stream,
      headStream: await rawHttp(base, 'HEAD', `/progress/tasks/${task.id}/stream`, { headers: alice }),
      streamAtEnd: await rawHttp(base, 'GET', `/progress/tasks/${ended.id}/stream`, {
        headers: { ...alice, 'last-event-id': endId ?? '' },
      }),
      unauthenticated: await rawHttp(base, 'GET', `/progress/tasks/${task.id}`),
      notFound: await rawHttp(base, 'GET', '/progress/tasks/nope', { headers: alice }),
      noRoute: await rawHttp(base, 'GET', '/progress/elsewhere', { headers: alice }),
      wrongMethod: await rawHttp(base, 'GET', `/progress/tasks/${task.id}/cancel`, { headers: alice }),
      badQuery: await rawHttp(base, 'GET', '/progress/tasks?limit=0x10', { headers: alice }),
      badCursor: await rawHttp(base, 'GET', `/progress/tasks/${task.id}/stream?afterSeq=-1`, {
        headers: alice,
      }),
      origin: await rawHttp(base, 'GET', `/progress/tasks/${task.id}`, {
        headers: { ...alice, origin: 'https://evil.example' },
      }),
      notJson: await rawHttp(base, 'POST', `/progress/tasks/${task.id}/cancel`, {
        headers: alice,
        body: '{}',
      }),
      tooLarge: await rawHttp(base, 'POST', `/progress/tasks/${task.id}/cancel`, {
        headers: { ...alice, 'content-type': 'application/json' },
        body: JSON.stringify({ reason: 'x'.repeat(20_000) }),
      }),
      webSocketPath: await rawHttp(base, 'GET', '/progress'),
      healthz: await rawHttp(base, 'GET', '/progress/healthz'),
      livez: await rawHttp(base, 'GET', '/progress/livez'),
    };
    expect(
      Object.fromEntries(Object.entries(answers).map(([name, answer]) => [name, answer.status])),
    ).toEqual({
      task: 200,
      headTask: 200,
      events: 200,
      list: 200,
      stream: 200,
      headStream: 200,
      streamAtEnd: 204,
      unauthenticated: 401,
      notFound: 404,
      noRoute: 404,
      wrongMethod: 405,
      badQuery: 400,
      badCursor: 400,
      origin: 403,
      notJson: 415,
      tooLarge: 413,
      webSocketPath: 426,
      healthz: 200,
      livez: 200,
    });
    for (const [name, answer] of Object.entries(answers)) {
      expect([name, answer.headers['x-content-type-options']]).toEqual([name, 'nosniff']);
      expect([name, answer.headers['cache-control']]).toEqual([
        name,
        name === 'stream' || name === 'headStream' ? 'no-store, no-transform' : 'no-store',
      ]);
      // Every answer with a body of text names its charset.
      if (answer.status !== 204)
        expect([name, answer.headers['content-type']]).toEqual([
          name,
          expect.stringMatching(/; charset=utf-8$/),
        ]);
    }
    // A preflight's 204 too (its caching is the browser's, by Access-Control-Max-Age).
    const preflight = await rawHttp(base, 'OPTIONS', `/progress/tasks/${task.id}/cancel`, {
      headers: { origin: 'https://app.example', 'access-control-request-method': 'POST' },
    });
    expect(preflight.status).toBe(204);
    expect(preflight.headers['x-content-type-options']).toBe('nosniff');
    // And the refusal of an upgrade, written on the raw socket: a credential's refusal, not to be stored.
    const refused = await new Promise<string>((resolve, reject) => {
      const socket = connect(env?.port ?? 0, '127.0.0.1', () => {
        socket.write(
          'GET /progress HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n' +
            `Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: ${PROTOCOL_NAME}\r\n\r\n`,
        );
      });
      let text = '';
      socket.on('data', (chunk: Buffer) => {
        text += chunk.toString();
      });
      socket.on('close', () => resolve(text));
      socket.on('error', reject);
    });
    expect(refused).toMatch(/^HTTP\/1\.1 401 /);
    expect(refused).toMatch(/\r\nX-Content-Type-Options: nosniff\r\n/i);
    expect(refused).toMatch(/\r\nCache-Control: no-store\r\n/i);
  });

  // Found by a review: a request whose target is in absolute form (`GET http://host/progress/tasks/x`, as
  // a client configured for a forward proxy sends it, and as RFC 9112 says a server must accept) was
  // answered 404 on every route, and its WebSocket upgrade refused 404.
  it('routes requests whose target is in absolute form, the upgrade too', async () => {
    env = await startServer();
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    const port = env.port;
    const ask = (path: string, headers: Record<string, string> = {}) =>
      new Promise<number>((resolve, reject) => {
        const request = httpRequest({
          host: '127.0.0.1',
          port,
          path,
          headers: { 'x-user': 'alice', ...headers },
        });
        request.on('upgrade', (_response, socket) => {
          socket.destroy();
          resolve(101);
        });
        request.on('response', (response) => {
          response.resume();
          resolve(response.statusCode ?? 0);
        });
        request.on('error', reject);
        request.end();
      });
    const origin = `http://127.0.0.1:${port}`;
    expect(await ask(`${origin}/progress/tasks/${task.id}`)).toBe(200);
    expect(await ask(`${origin}/progress/tasks/${task.id}/events?afterSeq=0`)).toBe(200);
    expect(await ask(`${origin}/progress/tasks?status=running`)).toBe(200);
    expect(await ask(`${origin}/progress/elsewhere`)).toBe(404);
    const upgrade = {
      connection: 'Upgrade',
      upgrade: 'websocket',
      'sec-websocket-version': '13',
      'sec-websocket-key': Buffer.from('0123456789abcdef').toString('base64'),
      'sec-websocket-protocol': PROTOCOL_NAME,
    };
    expect(await ask(`${origin}/progress`, upgrade)).toBe(101);
  });

  // Found by a review: the task routes and the upgrade were matched on the path as sent, the probes and the
  // WebSocket path's 426 on the path with its dot segments resolved: `GET /progress/x/../healthz` was the
  // health route, and `GET /elsewhere/../progress` answered 426 "send an upgrade request" to a path whose
  // upgrade is refused 404 "No WebSocket here".
  it('matches every path as sent, dot segments included: the probes and the WebSocket path as the task routes and the upgrade', async () => {
    env = await startServer();
    const port = env.port;
    const ask = (path: string, headers: Record<string, string> = {}) =>
      new Promise<number>((resolve, reject) => {
        // `path` as given: a URL string would have its dot segments removed before sending.
        const request = httpRequest({ host: '127.0.0.1', port, path, headers });
        request.on('upgrade', (_response, socket) => {
          socket.destroy();
          resolve(101);
        });
        request.on('response', (response) => {
          response.resume();
          resolve(response.statusCode ?? 0);
        });
        request.on('error', reject);
        request.end();
      });
    const upgrade = {
      connection: 'Upgrade',
      upgrade: 'websocket',
      'sec-websocket-version': '13',
      'sec-websocket-key': Buffer.from('0123456789abcdef').toString('base64'),
      'sec-websocket-protocol': PROTOCOL_NAME,
    };
    expect(await ask('/progress/healthz')).toBe(200);
    expect(await ask('/progress/livez')).toBe(200);
    expect(await ask('/progress')).toBe(426);
    for (const path of [
      '/progress/x/../healthz',
      '/progress/./livez',
      '/progress/tasks/%2E%2E/livez',
      '/elsewhere/../progress',
      '/progress/./',
    ]) {
      expect(await ask(path), path).toBe(404);
      expect(await ask(path, upgrade), `upgrade ${path}`).toBe(404);
    }
  });

  it('answers a trailing slash on any route like an unknown route: 404 No such route, or next()', async () => {
    env = await startServer();
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    const json = { 'content-type': 'application/json' };
    const requests: Array<[string, string]> = [
      ['GET', '/progress/tasks/'],
      ['HEAD', '/progress/tasks/'],
      ['GET', `/progress/tasks/${task.id}/`],
      ['GET', `/progress/tasks/${task.id}/events/`],
      ['GET', `/progress/tasks/${task.id}/stream/`],
      ['HEAD', `/progress/tasks/${task.id}/stream/`],
      ['POST', `/progress/tasks/${task.id}/cancel/`],
      ['POST', `/progress/tasks/${task.id}/ack/`],
      ['GET', '/progress/healthz/'],
    ];
    for (const [method, path] of requests) {
      const answer = await call(path, {
        user: 'alice',
        method,
        headers: json,
        ...(method === 'POST' ? { body: '{"seq":1}' } : {}),
      });
      expect(answer.status, `${method} ${path}`).toBe(404);
      if (method !== 'HEAD') {
        expect(answer.body, `${method} ${path}`).toEqual({
          error: { code: 'invalid_input', message: 'No such route' },
        });
      }
    }
    expect((await env.store.getTask(task.id))?.status).toBe('running');
    // Without the slash, the same requests are routed.
    expect((await call(`/progress/tasks/${task.id}`, { user: 'alice' })).status).toBe(200);
    expect((await call('/progress/tasks', { user: 'alice' })).status).toBe(200);
  });

  it('decodes percent-encoded ids and accepts a bearer token', async () => {
    env = await startServer({ authenticate: () => null, authenticateToken: tokenAuth });
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k', id: 'team/batch:1' });
    const response = await call(`/progress/tasks/${encodeURIComponent(task.id)}`, {
      headers: { authorization: 'Bearer token-alice' },
    });
    expect(response).toMatchObject({ status: 200, body: { task: { id: 'team/batch:1' } } });
    expect(
      (
        await call(`/progress/tasks/${encodeURIComponent(task.id)}`, {
          headers: { authorization: 'Bearer x' },
        })
      ).status,
    ).toBe(401);
  });

  it('reads a seq or limit zero-padded to more than 16 characters as the integer it names, wherever it is read', async () => {
    // docs/protocol.md: a seq is "an integer from 0 to 2^53 − 1", a limit 1–1000; nothing about its
    // length. `afterSeq=0000000000000001` (16 characters) was read as 1 and `afterSeq=00000000000000001`
    // (17) refused 400, the same integer.
    env = await startServer();
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.item({ key: 'a', ok: true });
    await task.complete({ result: null });
    const padded = (n: number) => String(n).padStart(17, '0');
    const path = `/progress/tasks/${task.id}`;
    const { epoch } = (await call(path, { user: 'alice' })).body as { epoch: string };

    const events = await call(`${path}/events?afterSeq=${padded(1)}&limit=${padded(1)}`, { user: 'alice' });
    expect(events.status).toBe(200);
    expect((events.body.events as Array<{ seq: number }>).map((event) => event.seq)).toEqual([2]);
    const list = await call(`/progress/tasks?limit=${padded(1)}`, { user: 'alice' });
    expect(list.status).toBe(200);
    expect(list.body.tasks).toHaveLength(1);
    // The terminal frame's id, its seq padded: the client has the end (204), from the header or the query.
    for (const id of [`${padded(2)}~${epoch}!`, `${padded(2)}!`]) {
      const header = await call(`${path}/stream`, { user: 'alice', headers: { 'last-event-id': id } });
      expect(header.status, id).toBe(204);
      const query = await call(`${path}/stream?afterSeq=${encodeURIComponent(id)}`, { user: 'alice' });
      expect(query.status, id).toBe(204);
    }
    // Padding does not lift the range: 17 significant digits are still refused, everywhere.
    const tooLarge = '12345678901234567';
    for (const refused of [
      `${path}/events?afterSeq=${tooLarge}`,
      `${path}/events?limit=0${'0'.repeat(20)}1001`,
      `${path}/stream?afterSeq=${tooLarge}`,
      `/progress/tasks?limit=${tooLarge}`,
    ]) {
      expect((await call(refused, { user: 'alice' })).status, refused).toBe(400);
    }
    const header = await call(`${path}/stream`, {
      user: 'alice',
      headers: { 'last-event-id': `0${tooLarge}` },
    });
    expect(header.status).toBe(400);
  });

  it('answers an empty task id segment on every task route 400 Invalid task id, readable cross-origin, unlike a trailing slash', async () => {
    // `…/tasks/${encodeURIComponent('')}/events`: the route is known and its id invalid (docs/protocol.md,
    // 400 "a task id that is invalid"), so a page on an allowed origin reads why; a 404 "No such route"
    // carries no CORS headers, and the page would see the server as unreachable.
    const app = 'https://app.example.com';
    env = await startServer({ allowedOrigins: [app] });
    const headers = { origin: app, 'content-type': 'application/json' };
    const requests: Array<[string, string, string?]> = [
      ['GET', '/progress/tasks//events'],
      ['HEAD', '/progress/tasks//events'],
      ['GET', '/progress/tasks//stream'],
      ['HEAD', '/progress/tasks//stream'],
      ['GET', '/progress/tasks//stream?afterSeq=3'],
      ['POST', '/progress/tasks//cancel', '{"reason":"x"}'],
      ['POST', '/progress/tasks//cancel', ''],
      ['POST', '/progress/tasks//ack', '{"seq":1}'],
    ];
    for (const [method, path, body] of requests) {
      const answer = await call(path, {
        user: 'alice',
        method,
        headers,
        ...(body === undefined ? {} : { body }),
      });
      expect(answer.status, `${method} ${path}`).toBe(400);
      expect(answer.headers.get('access-control-allow-origin'), `${method} ${path}`).toBe(app);
      if (method !== 'HEAD') {
        expect(answer.body, `${method} ${path}`).toEqual({
          error: { code: 'invalid_input', message: 'Invalid task id: must not be empty' },
        });
      }
    }
    // A wrong method is still the route's 405, and a path of no route shape still 404.
    expect((await call('/progress/tasks//cancel', { user: 'alice', headers })).status).toBe(405);
    for (const path of ['/progress/tasks//', '/progress/tasks//events/', '/progress/tasks///events']) {
      expect((await call(path, { user: 'alice', headers })).status, path).toBe(404);
    }
  });

  it('says which rule a refused task id breaks', async () => {
    // Adoption review, 7 December 2026: `GET /progress/tasks/a%20b` answered a bare "Invalid task id".
    env = await startServer();
    const cases: Array<[string, string]> = [
      ['/progress/tasks/a%20b', 'Invalid task id: may contain only letters, digits and _ . : @ / -'],
      [`/progress/tasks/${'x'.repeat(300)}/events`, 'Invalid task id: must be at most 128 characters'],
    ];
    for (const [path, message] of cases) {
      const response = await call(path, { user: 'alice' });
      expect(response, path).toMatchObject({
        status: 400,
        body: { error: { code: 'invalid_input', message } },
      });
    }
  });

  it('answers 400 invalid_input for a task id that is not valid percent-encoding', async () => {
    env = await startServer();
    for (const path of [
      '/progress/tasks/%E0%A4%A/stream',
      '/progress/tasks/%E0%A4%A',
      '/progress/tasks/%zz/events',
    ]) {
      const response = await call(path, { user: 'alice' });
      // Saying what is wrong: until 7 December 2026 the segment decoded to '', "must not be empty".
      expect(response, path).toMatchObject({
        status: 400,
        body: {
          error: {
            code: 'invalid_input',
            message: expect.stringContaining('the path segment is not valid percent-encoding'),
          },
        },
      });
    }
    // Valid percent-encoding of an id no task can have is refused for the id, not for its encoding.
    expect((await call('/progress/tasks/%00', { user: 'alice' })).body).toMatchObject({
      error: { code: 'invalid_input', message: expect.not.stringContaining('percent-encoding') },
    });
    // Not one of the API's routes whatever its id: still 404 (or the framework's next()).
    expect((await call('/progress/tasks/%E0%A4%A/elsewhere', { user: 'alice' })).status).toBe(404);
  });

  it('works as connect/Express middleware: mounted paths via originalUrl, unknown routes to next()', async () => {
    const store = new MemoryProgressStore();
    const progress = new ProgressServer({
      store,
      authenticate: (request) => ({ id: String(request.headers['x-user']) }),
    });
    const handler = progress.httpHandler({ basePath: '/api/progress' });
    const passed: string[] = [];
    // A minimal Express-like app: `app.use('/api', handler)` strips '/api' from `url`.
    const httpServer = createServer((request: IncomingMessage, response: ServerResponse) => {
      const original = request.url ?? '/';
      Object.assign(request, { originalUrl: original, url: original.replace(/^\/api/, '') });
      handler(request, response, () => {
        passed.push(original);
        response.writeHead(418).end();
      });
    });
    await new Promise<void>((resolve) => httpServer.listen(0, '127.0.0.1', resolve));
    cleanups.push(async () => {
      await progress.close({ timeoutMs: 200 });
      await new Promise((resolve) => httpServer.close(resolve));
    });
    const task = await progress.tasks.create({ owner: 'alice', kind: 'k' });
    const base = `http://127.0.0.1:${(httpServer.address() as AddressInfo).port}`;
    const ok = await fetch(`${base}/api/progress/tasks/${task.id}`, { headers: { 'x-user': 'alice' } });
    expect(ok.status).toBe(200);
    const other = await fetch(`${base}/api/users`);
    expect(other.status).toBe(418);
    // The application's answer is its own: none of the API's headers are set on it.
    expect(other.headers.get('x-content-type-options')).toBeNull();
    // A trailing slash is no route of the API either: the application's own routing decides.
    const slash = await fetch(`${base}/api/progress/tasks/`, { headers: { 'x-user': 'alice' } });
    expect(slash.status).toBe(418);
    expect(passed).toEqual(['/api/users', '/api/progress/tasks/']);
  });

  it("serves its routes under the server's path by default, where the client's HTTP fallback looks for them", async () => {
    // The client's httpPath defaults to the path of its WebSocket url, and listen()'s httpBasePath to
    // `path`: a handler fixed at '/progress' answered such a client's every fallback request 404.
    const store = new MemoryProgressStore();
    const progress = new ProgressServer({
      store,
      path: '/api/progress',
      authenticate: (request) => ({ id: String(request.headers['x-user']) }),
    });
    const handler = progress.httpHandler();
    const httpServer = createServer((request, response) => handler(request, response));
    await new Promise<void>((resolve) => httpServer.listen(0, '127.0.0.1', resolve));
    cleanups.push(async () => {
      await progress.close({ timeoutMs: 200 });
      await new Promise((resolve) => httpServer.close(resolve));
    });
    const task = await progress.tasks.create({ owner: 'alice', kind: 'k' });
    const base = `http://127.0.0.1:${(httpServer.address() as AddressInfo).port}`;
    const ok = await fetch(`${base}/api/progress/tasks/${task.id}`, { headers: { 'x-user': 'alice' } });
    expect(ok.status).toBe(200);
    const elsewhere = await fetch(`${base}/progress/tasks/${task.id}`, { headers: { 'x-user': 'alice' } });
    expect(elsewhere.status).toBe(404);
  });

  it('uses a body already parsed by a framework', async () => {
    const store = new MemoryProgressStore();
    const progress = new ProgressServer({ store, authenticate: () => ({ id: 'alice' }) });
    const handler = progress.httpHandler();
    const httpServer = createServer((request, response) => {
      Object.assign(request, { body: { reason: 'parsed upstream' } });
      request.resume();
      handler(request, response);
    });
    await new Promise<void>((resolve) => httpServer.listen(0, '127.0.0.1', resolve));
    cleanups.push(async () => {
      await progress.close({ timeoutMs: 200 });
      await new Promise((resolve) => httpServer.close(resolve));
    });
    const task = await progress.tasks.create({ owner: 'alice', kind: 'k' });
    const base = `http://127.0.0.1:${(httpServer.address() as AddressInfo).port}`;
    const response = await fetch(`${base}/progress/tasks/${task.id}/cancel`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: 'ignored',
    });
    expect(response.status).toBe(200);
    expect((await store.readEvents(task.id, 0)).at(-1)).toMatchObject({
      type: 'cancelled',
      reason: 'parsed upstream',
    });
  });
});

describe('answers their clients do not read', () => {
  /** A task whose page of 1,000 events is some 4 MB: more than the connection's buffers take at once. */
  async function bigTask(server: TestServer): Promise<void> {
    const task = await server.server.tasks.create({ id: 'big', owner: 'alice', kind: 'k', total: 1000 });
    for (let i = 0; i < 1000; i += 1) await task.item({ key: `n${i}`, ok: false, error: 'x'.repeat(4000) });
  }
  const BIG_PAGE = 'GET /progress/tasks/big/events?limit=1000 HTTP/1.1\r\nHost: x\r\nx-user: alice\r\n\r\n';

  it('drops an answer whose client stopped reading it after sseStallTimeoutMs, as a stalled event stream', async () => {
    env = await startServer({ sseStallTimeoutMs: 2000 });
    await bigTask(env);
    const accepted: Socket[] = [];
    env.server.httpServer!.on('connection', (socket: Socket) => accepted.push(socket));
    const client = connect(env.port, '127.0.0.1');
    cleanups.push(async () => client.destroy());
    client.on('error', () => {});
    client.pause();
    client.write(BIG_PAGE);
    let server: Socket | undefined;
    while (server === undefined || server.writableLength === 0) {
      await sleep(10);
      server = accepted.find((socket) => socket.remotePort === client.localPort);
    }
    // It held the rest of the answer in memory, and its connection open, for as long as its client liked.
    await sleep(1000);
    expect(server.destroyed).toBe(false);
    await sleep(3000);
    expect(server.destroyed).toBe(true);
  }, 30_000);

  it("holds at most 32 MiB of a principal's unread answers: requests past it are refused 429, and the budget comes back when the client leaves", async () => {
    // Reported: Node answers pipelined requests together, holding each answer in memory behind the first,
    // and the stall timeout judges only the first: one connection sending 20 requests of a 4 MB page in one
    // write, and reading none (or reading 64 KiB every 29 s), held 80 MB of the server's memory, the
    // principal's budget of 500 requests a second letting a few connections take gigabytes.
    env = await startServer({ sseStallTimeoutMs: 60_000 });
    await bigTask(env);
    const page = await fetch(`${env.httpUrl}/progress/tasks/big/events?limit=1000`, {
      headers: { 'x-user': 'alice' },
    });
    const size = (await page.arrayBuffer()).byteLength;
    // Some 4.2 MB each: the first answers that fit in 32 MiB are held, the rest refused.
    const expected = 20 - Math.floor((32 * 1024 * 1024) / size);
    const client = connect(env.port, '127.0.0.1');
    cleanups.push(async () => client.destroy());
    client.on('error', () => {});
    client.pause();
    client.write(BIG_PAGE.repeat(20));
    const refused = async () => {
      const { values } = await env!.server.metrics.principalLimits.get();
      return values.find((value) => value.labels.limit === 'rate')?.value ?? 0;
    };
    const deadline = Date.now() + 10_000;
    while ((await refused()) < expected && Date.now() < deadline) await sleep(20);
    expect(expected).toBeGreaterThan(10);
    expect(await refused()).toBe(expected);
    // Another principal's answers are not held up by alice's.
    expect((await call('/progress/tasks', { user: 'bob' })).status).toBe(200);
    expect((await call('/progress/tasks/big/events?limit=1000', { user: 'alice' })).status).toBe(429);
    client.destroy();
    // Once the client left, what it held is given back (the answers queued behind the first too).
    const back = Date.now() + 10_000;
    let status = 0;
    while (status !== 200 && Date.now() < back) {
      status = (await call('/progress/tasks/big/events?limit=1000', { user: 'alice' })).status;
      if (status !== 200) await sleep(20);
    }
    expect(status).toBe(200);
  }, 30_000);

  it("counts a principal's unread answers once per server, whichever of its handlers they came from", async () => {
    // Each httpHandler() kept its own count: an application mounting the API twice (two base paths, two
    // frameworks) gave a principal 32 MiB per handler.
    env = await startServer({ sseStallTimeoutMs: 60_000 });
    await bigTask(env);
    const second = createServer(env.server.httpHandler());
    await new Promise<void>((resolve) => second.listen(0, '127.0.0.1', resolve));
    cleanups.push(async () => {
      second.closeAllConnections();
      await new Promise((resolve) => second.close(resolve));
    });
    const secondPort = (second.address() as AddressInfo).port;
    const page = await fetch(`${env.httpUrl}/progress/tasks/big/events?limit=1000`, {
      headers: { 'x-user': 'alice' },
    });
    const size = (await page.arrayBuffer()).byteLength;
    // Some 4.2 MB each, 5 through each handler: 7 fit in 32 MiB, the other 3 are refused.
    const expected = 10 - Math.floor((32 * 1024 * 1024) / size);
    expect(expected).toBeGreaterThan(0);
    for (const port of [env.port, secondPort]) {
      const client = connect(port, '127.0.0.1');
      cleanups.push(async () => client.destroy());
      client.on('error', () => {});
      client.pause();
      client.write(BIG_PAGE.repeat(5));
    }
    const refused = async () => {
      const { values } = await env!.server.metrics.principalLimits.get();
      return values.find((value) => value.labels.limit === 'rate')?.value ?? 0;
    };
    const deadline = Date.now() + 10_000;
    while ((await refused()) < expected && Date.now() < deadline) await sleep(20);
    expect(await refused()).toBe(expected);
  }, 30_000);

  it('holds at most maxUnreadAnswerBytes of unread answers over all principals: past it requests are refused 429', async () => {
    // Each principal was bounded alone (32 MiB): clients of many principals that stopped reading held
    // 32 MiB each, without bound over them all.
    env = await startServer({
      sseStallTimeoutMs: 60_000,
      maxUnreadAnswerBytes: 10 * 1024 * 1024,
      authorize: () => true,
    });
    await bigTask(env);
    // Alice's and Bob's clients ask for a page of some 4.2 MB each and read none of it.
    for (const user of ['alice', 'bob']) {
      const client = connect(env.port, '127.0.0.1');
      cleanups.push(async () => client.destroy());
      client.on('error', () => {});
      client.pause();
      client.write(BIG_PAGE.replace('x-user: alice', `x-user: ${user}`));
    }
    const page = () => call('/progress/tasks/big/events?limit=1000', { user: 'carol' });
    const deadline = Date.now() + 10_000;
    let refused: Awaited<ReturnType<typeof call>> | undefined;
    while (refused === undefined && Date.now() < deadline) {
      const answer = await page();
      if (answer.status === 429) refused = answer;
      else await sleep(20);
    }
    expect(refused?.body).toMatchObject({ error: { code: 'rate_limited' } });
    expect(refused?.headers.get('retry-after')).toBe('1');
    // Counted on its own (it had no metric): no principal was at its own cap.
    expect((await env.server.metrics.unreadAnswersRefused.get()).values[0]?.value).toBeGreaterThanOrEqual(1);
    expect((await env.server.metrics.principalLimits.get()).values).toEqual([]);
    // What still fits is answered.
    expect((await call('/progress/tasks', { user: 'dave' })).status).toBe(200);
    for (const cleanup of cleanups.splice(0)) await cleanup();
    const back = Date.now() + 10_000;
    let status = 0;
    while (status !== 200 && Date.now() < back) {
      status = (await page()).status;
      if (status !== 200) await sleep(20);
    }
    expect(status).toBe(200);
  }, 30_000);

  it("keeps a client that read on while the server's own event loop stood still past sseStallTimeoutMs", async () => {
    env = await startServer({ sseStallTimeoutMs: 300 });
    await bigTask(env);
    const accepted: Socket[] = [];
    env.server.httpServer!.on('connection', (socket: Socket) => accepted.push(socket));
    // The reader runs on its own thread: it reads on while the server's is blocked, slower than the server
    // writes (1 MB every 100 ms), three answers of 4 MB, more than the connection's buffers take: the
    // server waits to write more.
    const reader = new Worker(
      `const { connect } = require('node:net');
      const { parentPort, workerData } = require('node:worker_threads');
      const client = connect(workerData.port, '127.0.0.1');
      const chunks = [];
      let received = 0;
      let expected;
      let pausedAt = 0;
      client.on('data', (chunk) => {
        chunks.push(chunk);
        received += chunk.length;
        if (expected === undefined) {
          const head = Buffer.concat(chunks).toString('latin1');
          const end = head.indexOf('\\r\\n\\r\\n');
          if (end >= 0) expected = 3 * (end + 4 + Number(/content-length: (\\d+)/i.exec(head.slice(0, end))[1]));
        }
        if (received === expected) client.destroy();
        else if (received - pausedAt >= 1024 * 1024) {
          pausedAt = received;
          client.pause();
          setTimeout(() => client.resume(), 100);
        }
      });
      client.on('error', () => {});
      client.on('close', () => parentPort.postMessage(received === expected));
      client.write(workerData.request.repeat(3));`,
      { eval: true, workerData: { port: env.port, request: BIG_PAGE } },
    );
    cleanups.push(() => reader.terminate());
    const whole = new Promise((resolve) => reader.once('message', resolve));
    // The server's loop blocks (a synchronous hook, a GC pause, a throttled container) for longer than
    // the stall timeout while it waits for room to write its answer, the stall timer armed.
    while (!accepted.some((socket) => socket.writableLength > 0)) await sleep(5);
    // Blocked in the check phase (as in an I/O callback): the timers phase is the next to run after it.
    await new Promise((resolve) => setImmediate(resolve));
    const until = Date.now() + 1000;
    while (Date.now() < until) {
      // busy: nothing else runs on this thread
    }
    expect(await whole).toBe(true);
  }, 30_000);

  it('keeps a client that reads slower than the server writes: the answer arrives whole', async () => {
    env = await startServer({ sseStallTimeoutMs: 1000 });
    await bigTask(env);
    const client = connect(env.port, '127.0.0.1');
    cleanups.push(async () => client.destroy());
    client.write(BIG_PAGE);
    let closed = false;
    client.on('close', () => {
      closed = true;
    });
    client.on('readable', () => undefined);
    // Some 2.5 MB a second, 128 KB every 50 ms: the answer takes longer than sseStallTimeoutMs to read.
    const chunks: Buffer[] = [];
    let length: number | undefined;
    const deadline = Date.now() + 20_000;
    while (!closed && Date.now() < deadline) {
      for (let size = 0, chunk = client.read(128 * 1024); chunk !== null && size < 128 * 1024; ) {
        chunks.push(chunk as Buffer);
        size += (chunk as Buffer).length;
        chunk = size < 128 * 1024 ? client.read() : null;
      }
      const received = Buffer.concat(chunks);
      const head = received.indexOf('\r\n\r\n');
      length ??=
        head < 0
          ? undefined
          : Number(/content-length: (\d+)/i.exec(received.toString('latin1', 0, head))?.[1]) + head + 4;
      if (length !== undefined && received.length >= length) break;
      await sleep(50);
    }
    const text = Buffer.concat(chunks).toString('utf8');
    const body = JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4)) as { events: unknown[] };
    expect(body.events).toHaveLength(1000);
  }, 30_000);
});
