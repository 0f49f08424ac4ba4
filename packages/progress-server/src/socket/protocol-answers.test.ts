import { ManualClock } from '@finishline/core/testing';
import { describe, expect, it } from 'vitest';
import { type RawClient, type Received, sleep } from '../testing/harness.js';
import { useServerSession } from '../testing/session.js';

/**
 * Issue 14, found #2–#12: what the server answers where docs/protocol.md and the server used to part
 * ways. Each test pins the documented behaviour.
 */

const session = useServerSession();

async function connect(options: { user?: string; hello?: boolean } = {}): Promise<RawClient> {
  const client = await session.connect({ user: 'alice', ...options });
  return client;
}

const errors = (client: RawClient) => client.frames.filter((frame) => frame.type === 'error');

describe('answers the protocol documents', () => {
  it('#7: unknown frame types are answered and never count toward the invalid-frame limit', async () => {
    await session.start({ maxInvalidFrames: 3 });
    const client = await connect();
    for (let i = 0; i < 10; i++) client.send({ type: 'from-the-future', id: `f${i}` });
    client.send({ type: 'ping', id: 'still-here' });
    await client.next((frame) => frame.type === 'pong' && frame.requestId === 'still-here');
    expect(errors(client).map((frame) => [frame.code, frame.requestId])).toEqual(
      Array.from({ length: 10 }, (_, i) => ['unknown_frame', `f${i}`]),
    );
    expect(client.ws.readyState).toBe(client.ws.OPEN);
  });

  /**
   * A server with two tokens per socket and a clock that stands still: the bucket never refills, so which
   * frame is refused is exact. Returns a task of alice's.
   */
  async function startRateLimited() {
    await session.start({
      rateLimitPerSecond: 1,
      rateLimitBurst: 2,
      maxRateLimitViolations: 50,
      clock: new ManualClock().now,
    });
    return session.env.server.tasks.create({ owner: 'alice', kind: 'k' });
  }

  it('#6: every rate-limited frame is answered, subscribes included, with the task they name', async () => {
    const task = await startRateLimited();
    const client = await connect();
    client.send({ type: 'ping', id: 'a' });
    client.send({ type: 'ping', id: 'b' });
    for (let i = 0; i < 3; i++) client.send({ type: 'subscribe', id: `s${i}`, taskId: task.id, afterSeq: 0 });
    client.send({ type: 'ping', id: 'c' });
    await client.next(() => errors(client).length === 4);
    // The taskId lets a client retry the subscribe of the watch it belongs to (one without it only
    // reaches the client's general error handler, and the watch waits for its watchdog).
    expect(errors(client).map((frame) => [frame.code, frame.requestId, frame.taskId])).toEqual([
      ['rate_limited', 's0', task.id],
      ['rate_limited', 's1', task.id],
      ['rate_limited', 's2', task.id],
      ['rate_limited', 'c', undefined],
    ]);
  });

  it('an unsubscribe that ends a subscription is never rate-limited: the task’s frames stop', async () => {
    const task = await startRateLimited();
    const leaving = await connect();
    // Another socket of alice follows the task too: once it has an event, the first socket would have it.
    const staying = await connect();
    for (const client of [leaving, staying]) {
      client.send({ type: 'subscribe', taskId: task.id, afterSeq: 0 });
      await client.next((frame) => frame.type === 'snapshot');
    }
    leaving.send({ type: 'ping', id: 'last-token' });
    await leaving.next((frame) => frame.type === 'pong');
    leaving.send({ type: 'ping', id: 'refused' });
    await leaving.next((frame) => frame.type === 'error' && frame.requestId === 'refused');
    // The budget is spent: the unsubscribe goes through anyway.
    leaving.send({ type: 'unsubscribe', id: 'bye', taskId: task.id });
    await sleep(50);
    await task.progress({ done: 1 });
    await staying.next((frame) => frame.type === 'event');
    await sleep(100);
    expect(leaving.frames.filter((frame) => frame.type === 'event')).toEqual([]);
    expect(errors(leaving).map((frame) => frame.requestId)).toEqual(['refused']);
  });

  it('an unsubscribe of a task the socket does not follow costs a token like any frame', async () => {
    const task = await startRateLimited();
    const client = await connect();
    // Free only when it undoes a subscribe that paid: else a flood of them would cost nothing.
    for (let i = 0; i < 3; i++) client.send({ type: 'unsubscribe', id: `u${i}`, taskId: task.id });
    client.send({ type: 'ping', id: 'after' });
    await client.next((frame) => frame.requestId === 'after');
    expect(errors(client).map((frame) => [frame.code, frame.requestId])).toEqual([
      ['rate_limited', 'u2'],
      ['rate_limited', 'after'],
    ]);
  });

  it('#12: an ack for a task the socket does not follow is answered, and not counted as invalid', async () => {
    await session.start({ maxInvalidFrames: 2 });
    const task = await session.env.server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.progress({ done: 1 });
    const client = await connect();
    for (let i = 0; i < 3; i++) client.send({ type: 'ack', taskId: task.id, seq: 1 });
    await client.next(() => errors(client).length === 3);
    expect(errors(client)).toEqual(
      Array.from({ length: 3 }, () => expect.objectContaining({ code: 'invalid_input', taskId: task.id })),
    );
    await client.sync();
    expect(client.ws.readyState).toBe(client.ws.OPEN);
    expect((await session.env.store.getTask(task.id))?.ackedSeq).toBe(0);
    // After an unsubscribe, a late ack is the expected race: silent.
    client.send({ type: 'subscribe', taskId: task.id, afterSeq: 1 });
    client.send({ type: 'unsubscribe', taskId: task.id });
    client.send({ type: 'ack', taskId: task.id, seq: 1 });
    await client.sync();
    expect(errors(client)).toHaveLength(3);
  });

  it('#2: an ack above the task’s seq is refused with invalid_input and records nothing', async () => {
    await session.start();
    const task = await session.env.server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.progress({ done: 1 });
    await task.progress({ done: 2 });
    const client = await connect();
    client.send({ type: 'subscribe', taskId: task.id, afterSeq: 2 });
    client.send({ type: 'ack', taskId: task.id, seq: 9 });
    const error = await client.next((frame) => frame.type === 'error');
    expect(error).toMatchObject({ code: 'invalid_input', taskId: task.id });
    client.send({ type: 'ack', taskId: task.id, seq: 2 });
    await client.sync();
    await expect.poll(async () => (await session.env.store.getTask(task.id))?.ackedSeq).toBe(2);
  });

  it('#3: a terminal snapshot is re-sent until acknowledged, then no more', async () => {
    await session.start({ terminalRetry: { initialDelayMs: 20, maxDelayMs: 40 } });
    const task = await session.env.server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.complete({ result: { ok: true } });
    const client = await connect();
    client.send({ type: 'subscribe', taskId: task.id, afterSeq: 0 });
    const snapshots = () => client.frames.filter((frame) => frame.type === 'snapshot');
    await client.next(() => snapshots().length >= 3);
    client.send({ type: 'ack', taskId: task.id, seq: 1 });
    await client.sync();
    const count = snapshots().length;
    await sleep(200);
    expect(snapshots().length).toBe(count);
  });

  it('#5: an oversized client frame closes with 1009 and no error frame (frame_too_large is never sent)', async () => {
    await session.start({ maxPayloadBytes: 2048 });
    const client = await connect();
    client.sendRaw(JSON.stringify({ type: 'ping', id: 'x'.repeat(4096) }));
    expect((await client.closed).code).toBe(1009);
    expect(errors(client)).toEqual([]);
  });

  it('#11: shutdown closes with 1001 and sends no `closed` error frame', async () => {
    await session.start();
    const client = await connect();
    const closing = session.env.close();
    expect((await client.closed).code).toBe(1001);
    await closing;
    expect(errors(client)).toEqual([]);
  });

  it('#8: before authentication, any first frame but a valid auth gets unauthenticated + 4001', async () => {
    await session.start({
      authenticate: () => null,
      authenticateToken: (token) => (token === 't' ? { id: 'alice' } : null),
    });
    const client = await session.connect({ hello: false });
    client.sendRaw('{"type":"ping"');
    expect((await client.closed).code).toBe(4001);
    expect(errors(client)).toEqual([expect.objectContaining({ code: 'unauthenticated' })]);
  });

  it('#8: after authentication, an auth frame renews the credential (v2: a new hello; v1: invalid_frame)', async () => {
    await session.start({
      authenticate: () => null,
      authenticateToken: (token) => (token === 't' ? { id: 'alice' } : null),
    });
    const client = await session.connect({ hello: false });
    client.send({ type: 'auth', token: 't', protocol: 2 });
    await client.next((frame: Received) => frame.type === 'hello');
    const from = client.frames.length;
    client.send({ type: 'auth', token: 't', protocol: 2 });
    expect(await client.next((frame) => frame.type === 'hello', { from })).toMatchObject({ protocol: 2 });
    await client.sync();
    expect(errors(client)).toEqual([]);
  });

  it('#10: the HTTP API answers with the documented routes, shapes and statuses', async () => {
    await session.start();
    const task = await session.env.server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.progress({ done: 1 });
    await task.progress({ done: 2 });
    const other = await session.env.server.tasks.create({ owner: 'bob', kind: 'k' });
    const get = (path: string, user = 'alice') =>
      fetch(`${session.env.httpUrl}/progress${path}`, { headers: { 'x-user': user } });
    const list = await get('/tasks?status=running&limit=10');
    expect(list.status).toBe(200);
    expect(list.headers.get('cache-control')).toBe('no-store');
    expect(((await list.json()) as { tasks: { id: string }[] }).tasks.map((t) => t.id)).toEqual([task.id]);
    expect(await (await get(`/tasks/${task.id}`)).json()).toMatchObject({ task: { id: task.id, seq: 2 } });
    const page = await (await get(`/tasks/${task.id}/events?afterSeq=0&limit=1`)).json();
    expect(page).toMatchObject({ task: { seq: 2 }, events: [{ seq: 1 }], hasMore: true });
    const missing = await get('/tasks/nope');
    const hidden = await get(`/tasks/${other.id}`);
    expect([missing.status, hidden.status]).toEqual([404, 404]);
    expect(((await hidden.json()) as { error: { code: string } }).error.code).toBe('task_not_found');
    expect((await get('/tasks', '')).status).toBe(401);
    const wrongMethod = await fetch(`${session.env.httpUrl}/progress/tasks/${task.id}`, {
      method: 'DELETE',
      headers: { 'x-user': 'alice' },
    });
    expect([wrongMethod.status, wrongMethod.headers.get('allow')]).toEqual([405, 'GET, HEAD']);
    const notJson = await fetch(`${session.env.httpUrl}/progress/tasks/${task.id}/cancel`, {
      method: 'POST',
      headers: { 'x-user': 'alice', 'content-type': 'text/plain' },
      body: '{}',
    });
    expect(notJson.status).toBe(415);
    expect((await get('/tasks/x/unknown')).status).toBe(404);
  });
});
