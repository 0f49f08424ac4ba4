import { randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { connect as connectTcp } from 'node:net';
import { ErrorCode, MemoryProgressStore, PROTOCOL_NAME, ProgressError } from '@finishline/core';
import { ManualClock } from '@finishline/core/testing';
import { describe, expect, it, vi } from 'vitest';
import { WebSocket, WebSocketServer } from 'ws';
import { ProgressServer } from './progress-server.js';
import { headerAuth, RawClient, type Received, seqOf, tokenAuth, upgradeStatus } from './testing/harness.js';
import { useServerSession } from './testing/session.js';

/** Guarantee 4: nobody sees another owner's task, and bad input never disturbs other sockets. */

const session = useServerSession();

async function connect(
  options: Parameters<typeof RawClient.connect>[1] = { user: 'alice' },
): Promise<RawClient> {
  const client = await session.connect(options);
  return client;
}

/** A second socket watching a task that keeps progressing: it must not notice the misbehaving one. */
async function bystander(): Promise<{ client: RawClient; step: (n: number) => Promise<void> }> {
  const task = await session.env.server.tasks.create({ owner: 'carol', kind: 'k' });
  const client = await connect({ user: 'carol' });
  client.send({ type: 'subscribe', taskId: task.id, afterSeq: 0 });
  await client.next((frame) => frame.type === 'snapshot');
  return {
    client,
    step: async (n) => {
      await task.progress({ done: n });
      await client.next((frame) => frame.type === 'event' && seqOf(frame) === n);
    },
  };
}

/** A server letting a socket 10 frames a second (burst 5) and closing it at 20 violations; a bystander; a client. */
async function floodable() {
  const clock = new ManualClock();
  await session.start({
    rateLimitPerSecond: 10,
    rateLimitBurst: 5,
    maxRateLimitViolations: 20,
    clock: clock.now,
  });
  const other = await bystander();
  return { clock, other, client: await connect() };
}

describe('authentication at the upgrade', () => {
  it('refuses an upgrade without credentials with HTTP 401 and a JSON error', async () => {
    await session.start();
    const refused = await upgradeStatus(session.env.wsUrl, {});
    expect(refused.status).toBe(401);
    expect(JSON.parse(refused.body)).toEqual({
      error: { code: 'unauthenticated', message: expect.any(String) },
    });
    expect((await upgradeStatus(session.env.wsUrl, { 'x-user': 'alice' })).status).toBe(101);
  });

  it('answers 500 when the authenticate hook throws, and keeps serving', async () => {
    await session.start({
      authenticate: (request) => {
        if (request.headers['x-user'] === 'boom') throw new Error('session store down');
        return headerAuth(request);
      },
    });
    expect((await upgradeStatus(session.env.wsUrl, { 'x-user': 'boom' })).status).toBe(500);
    await connect();
  });

  it('admits a socket whose auth frame arrived while the server was stalled past authTimeoutMs', async () => {
    await session.start({ authenticate: () => null, authenticateToken: tokenAuth, authTimeoutMs: 100 });
    const client = session.track(await RawClient.connect(session.env.wsUrl, { hello: false }));
    // The frame reaches the server's socket, then the process stalls (a GC pause, a CPU-starved container)
    // past the deadline: after it the timers phase runs before the poll phase reads the frame.
    client.send({ type: 'auth', token: 'token-alice', protocol: 2 });
    const until = Date.now() + 300;
    while (Date.now() < until) {
      // busy: the event loop is stalled
    }
    const outcome = await Promise.race([
      client.next((frame) => frame.type === 'hello').then(() => 'hello'),
      client.closed.then(({ code }) => `closed ${code}`),
    ]);
    expect(outcome).toBe('hello');
  });

  it('ignores a token in the URL unless tokenQueryParam names it', async () => {
    await session.start({ authenticate: () => null, authenticateToken: tokenAuth, authTimeoutMs: 50 });
    // The upgrade is accepted (first-frame mode) but the URL token is not read: the socket times out.
    const client = session.track(new RawClient(`${session.env.wsUrl}?token=token-alice`));
    expect((await client.closed).code).toBe(4004);
    expect(client.frames).toEqual([]);
    await session.env.close();
    await session.start({
      authenticate: () => null,
      authenticateToken: tokenAuth,
      tokenQueryParam: 'token',
    });
    const _allowed = session.track(await RawClient.connect(`${session.env.wsUrl}?token=token-alice`));
    expect((await upgradeStatus(`${session.env.wsUrl}?token=nope`, {})).status).toBe(401);
  });

  // Review, 7 December 2026: the first of a repeated token parameter was taken, while a proxy or
  // firewall in front may judge the upgrade by the last; the HTTP API refuses a repeated parameter it reads.
  it('refuses an upgrade whose token parameter is repeated with 400 invalid_input, running no hook', async () => {
    const tokens: string[] = [];
    await session.start({
      authenticate: () => null,
      authenticateToken: (token) => {
        tokens.push(token);
        return tokenAuth(token);
      },
      tokenQueryParam: 'token',
    });
    const refused = await upgradeStatus(`${session.env.wsUrl}?token=token-alice&token=token-bob`, {});
    expect(refused.status).toBe(400);
    expect(JSON.parse(refused.body)).toEqual({
      error: { code: 'invalid_input', message: 'token must be given at most once, got 2 times' },
    });
    expect(tokens).toEqual([]);
    // A bearer header is read first: the query is not read then, as before.
    const _bearer = session.track(
      await RawClient.connect(`${session.env.wsUrl}?token=a&token=b`, {
        headers: { authorization: 'Bearer token-alice' },
      }),
    );
    expect(tokens).toEqual(['token-alice']);
  });

  it('accepts a bearer token at the upgrade through authenticateToken', async () => {
    await session.start({ authenticate: () => null, authenticateToken: tokenAuth });
    await connect({ headers: { authorization: 'Bearer token-alice' } });
    expect((await upgradeStatus(session.env.wsUrl, { authorization: 'Bearer wrong' })).status).toBe(401);
  });
});

describe('first-frame authentication', () => {
  it('sends hello only after a valid auth frame, and runs frames pipelined behind it', async () => {
    await session.start({ authenticate: () => null, authenticateToken: tokenAuth });
    const task = await session.env.server.tasks.create({ owner: 'alice', kind: 'k' });
    const client = session.track(new RawClient(session.env.wsUrl));
    await client.opened;
    client.send({ type: 'auth', token: 'token-alice', protocol: 1 });
    client.send({ type: 'subscribe', taskId: task.id, afterSeq: 0 });
    await client.next((frame) => frame.type === 'snapshot');
    expect(client.frames.map((frame) => frame.type)).toEqual(['hello', 'snapshot']);
  });

  it.each([
    ['a bad token', { type: 'auth', token: 'stolen', protocol: 1 }, 4001],
    ['another frame first', { type: 'ping' }, 4001],
    ['another protocol version', { type: 'auth', token: 'token-alice', protocol: 3 }, 4002],
  ])('answers %s with an error frame, then closes', async (_name, frame, code) => {
    await session.start({ authenticate: () => null, authenticateToken: tokenAuth });
    const client = session.track(new RawClient(session.env.wsUrl));
    await client.opened;
    client.send(frame);
    expect((await client.closed).code).toBe(code);
    expect(client.frames).toEqual([
      {
        type: 'error',
        code: code === 4002 ? 'unsupported_protocol' : 'unauthenticated',
        message: expect.any(String),
      },
    ]);
  });

  it('closes with 1008 once the frames held behind a checked auth frame pass 64 KiB, however few', async () => {
    // The token hook never answers: the frames behind the auth frame are held until the deadline (4004).
    await session.start({
      authenticate: () => null,
      authenticateToken: () => new Promise<never>(() => {}),
      authTimeoutMs: 5_000,
    });
    const client = session.track(new RawClient(session.env.wsUrl));
    await client.opened;
    client.send({ type: 'auth', token: 'token-alice', protocol: 2 });
    // Nine frames, far below the count bound (200), but of 8 KiB tokens each: 72 KiB held.
    for (let index = 0; index < 9; index += 1) {
      client.send({ type: 'auth', token: 'x'.repeat(8_000), protocol: 2 });
    }
    const { code, reason } = await client.closed;
    expect({ code, reason }).toEqual({
      code: 1008,
      reason: 'too many frames before authentication completed',
    });
  });

  it('still holds 200 subscribes with ids at their length limits behind a slowly checked auth frame', async () => {
    await session.start({
      authenticate: () => null,
      authenticateToken: async (token) => {
        await new Promise((resolve) => setTimeout(resolve, 200));
        return tokenAuth(token);
      },
      maxSubscriptionsPerSocket: 200,
    });
    const client = session.track(new RawClient(session.env.wsUrl));
    await client.opened;
    client.send({ type: 'auth', token: 'token-alice', protocol: 2 });
    for (let index = 0; index < 200; index += 1) {
      const id = String(index).padStart(64, 'r');
      client.send({ type: 'subscribe', id, taskId: String(index).padStart(128, 't'), afterSeq: 0 });
    }
    // Each unknown task is answered `task_not_found`: every subscribe was held, then handled.
    await client.next((frame) => frame.requestId === String(199).padStart(64, 'r'));
    const codes = client.frames.slice(1).map((frame) => frame.code);
    expect(codes).toEqual(new Array(200).fill('task_not_found'));
    expect(client.frames[0]?.type).toBe('hello');
  });

  it('closes with 4004 when no auth frame arrives in time', async () => {
    await session.start({ authenticate: () => null, authenticateToken: tokenAuth, authTimeoutMs: 30 });
    const client = session.track(new RawClient(session.env.wsUrl));
    expect((await client.closed).code).toBe(4004);
  });
});

describe('origins and subprotocols', () => {
  it('allows same-origin and Origin-less clients by default and refuses other origins with 403', async () => {
    await session.start();
    const host = `127.0.0.1:${session.env.port}`;
    expect(
      (await upgradeStatus(session.env.wsUrl, { 'x-user': 'a', origin: 'https://evil.example' })).status,
    ).toBe(403);
    expect((await upgradeStatus(session.env.wsUrl, { 'x-user': 'a', origin: `http://${host}` })).status).toBe(
      101,
    );
    expect((await upgradeStatus(session.env.wsUrl, { 'x-user': 'a' })).status).toBe(101);
    expect((await upgradeStatus(session.env.wsUrl, { 'x-user': 'a', origin: 'not a url' })).status).toBe(403);
  });

  it('uses an explicit allow-list or predicate when given', async () => {
    await session.start({ allowedOrigins: ['https://app.example'] });
    expect(
      (await upgradeStatus(session.env.wsUrl, { 'x-user': 'a', origin: 'https://app.example' })).status,
    ).toBe(101);
    expect(
      (await upgradeStatus(session.env.wsUrl, { 'x-user': 'a', origin: 'https://app.example.evil' })).status,
    ).toBe(403);
    await session.env.close();
    await session.start({ allowedOrigins: (origin) => origin.endsWith('.trusted') });
    expect(
      (await upgradeStatus(session.env.wsUrl, { 'x-user': 'a', origin: 'https://x.trusted' })).status,
    ).toBe(101);
    expect(
      (await upgradeStatus(session.env.wsUrl, { 'x-user': 'a', origin: 'https://x.other' })).status,
    ).toBe(403);
  });

  it('refuses a client that offers only other subprotocols', async () => {
    await session.start();
    const refused = await upgradeStatus(session.env.wsUrl, {
      'x-user': 'a',
      'sec-websocket-protocol': 'finishline.v9',
    });
    expect(refused.status).toBe(400);
    expect(JSON.parse(refused.body).error.code).toBe('unsupported_protocol');
    const accepted = await session.connect({
      user: 'a',
      protocols: ['finishline.v9', PROTOCOL_NAME],
    });
    expect(accepted.ws.protocol).toBe(PROTOCOL_NAME);
  });

  it('leaves upgrades on other paths to their own listeners', async () => {
    await session.start();
    const other = new WebSocketServer({ noServer: true });
    session.onCleanup(() => other.close());
    session.env.server.httpServer?.on('upgrade', (request, socket, head) => {
      if (request.url === '/other') other.handleUpgrade(request, socket, head, (ws) => ws.send('other'));
    });
    const client = session.track(
      new RawClient(`ws://127.0.0.1:${session.env.port}/other`, { protocols: [] }),
    );
    await client.opened;
    expect(await client.next((frame) => frame.type === ('raw' as string))).toMatchObject({ data: 'other' });
  });
});

describe('authorization', () => {
  it("answers another owner's task with forbidden (revealTaskExistence) and never sends its data", async () => {
    await session.start({ revealTaskExistence: true });
    const bobs = await session.env.server.tasks.create({ owner: 'bob', kind: 'secret' });
    const client = await connect({ user: 'alice' });
    client.send({ type: 'subscribe', id: 'req-1', taskId: bobs.id, afterSeq: 0 });
    const error = await client.next((frame) => frame.type === 'error');
    expect(error).toEqual({
      type: 'error',
      code: 'forbidden',
      message: expect.any(String),
      requestId: 'req-1',
      taskId: bobs.id,
    });
    expect(error.message).not.toContain('secret');
    await bobs.progress({ done: 1 });
    await bobs.complete();
    client.send({ type: 'ack', taskId: bobs.id, seq: 2 });
    await client.sync();
    expect(client.frames.filter((frame) => frame.type === 'snapshot' || frame.type === 'event')).toEqual([]);
    expect((await session.env.store.getTask(bobs.id))?.ackedSeq).toBe(0);
    expect(await session.env.server.metrics.subscriptions.get()).toMatchObject({ values: [{ value: 0 }] });
  });

  it('answers an unknown task with task_not_found', async () => {
    await session.start();
    const client = await connect();
    client.send({ type: 'subscribe', id: 'r', taskId: 'no-such-task', afterSeq: 0 });
    expect(await client.next((frame) => frame.type === 'error')).toMatchObject({
      code: 'task_not_found',
      requestId: 'r',
      taskId: 'no-such-task',
    });
  });

  it('calls a custom authorize hook with the principal, task and action; a throwing hook refuses', async () => {
    const calls: string[] = [];
    await session.start({
      revealTaskExistence: true,
      authorize: (principal, task, action) => {
        calls.push(`${principal.id}:${task.id}:${action}`);
        if (task.kind === 'explode') throw new Error('policy engine down');
        return principal.id === 'admin' || task.owner === principal.id;
      },
    });
    const task = await session.env.server.tasks.create({ owner: 'bob', kind: 'k', id: 'task-1' });
    await session.env.server.tasks.create({ owner: 'admin', kind: 'explode', id: 'task-2' });
    const admin = await connect({ user: 'admin' });
    admin.send({ type: 'subscribe', taskId: task.id, afterSeq: 0 });
    await admin.next((frame) => frame.type === 'snapshot');
    admin.send({ type: 'subscribe', taskId: 'task-2', afterSeq: 0 });
    expect(await admin.next((frame) => frame.type === 'error')).toMatchObject({
      code: 'forbidden',
      taskId: 'task-2',
    });
    expect(calls).toEqual(['admin:task-1:watch', 'admin:task-2:watch']);
  });

  it('allows several sockets per principal and per task (below maxSocketsPerPrincipal)', async () => {
    await session.start();
    const task = await session.env.server.tasks.create({ owner: 'alice', kind: 'k' });
    const sockets = await Promise.all([connect(), connect(), connect(), connect()]);
    for (const socket of sockets) socket.send({ type: 'subscribe', taskId: task.id, afterSeq: 0 });
    await Promise.all(sockets.map((socket) => socket.next((frame) => frame.type === 'snapshot')));
    await task.complete();
    for (const socket of sockets) {
      await socket.next(
        (frame) => frame.type === 'event' && (frame.event as { type: string }).type === 'completed',
      );
    }
  });
});

describe('bad input', () => {
  it('answers malformed frames with typed errors echoing the request id, then closes with 1008 while others keep receiving', async () => {
    await session.start({ maxInvalidFrames: 4 });
    const other = await bystander();
    const client = await connect();
    client.sendRaw('{not json');
    client.send({ type: 'subscribe', id: 'bad-1', taskId: 'x', afterSeq: -1 });
    client.send({ type: 'teleport', id: 'bad-2' });
    await client.next(() => client.frames.filter((frame) => frame.type === 'error').length === 3);
    expect(client.frames.map((frame) => frame.type)).toEqual(['hello', 'error', 'error', 'error']);
    const received = client.frames.filter((frame) => frame.type === 'error');
    expect(received.map((frame) => [frame.code, frame.requestId])).toEqual([
      ['invalid_frame', undefined],
      ['invalid_frame', 'bad-1'],
      ['unknown_frame', 'bad-2'],
    ]);
    await other.step(1);
    // The unknown frame type was answered but not counted (issue 14 #7): two more invalid frames close.
    client.sendRaw('[]');
    client.sendRaw('[]');
    expect((await client.closed).code).toBe(1008);
    await other.step(2);
    const rejected = await session.env.server.metrics.framesRejected.get();
    expect(rejected.values).toContainEqual(
      expect.objectContaining({ labels: { code: 'invalid_frame' }, value: 4 }),
    );
    expect(rejected.values).toContainEqual(
      expect.objectContaining({ labels: { code: 'unknown_frame' }, value: 1 }),
    );
  });

  it('closes a socket that sends an oversized frame with 1009 while others keep receiving', async () => {
    await session.start({ maxPayloadBytes: 2048 });
    const other = await bystander();
    const client = await connect();
    client.sendRaw(JSON.stringify({ type: 'ping', id: 'x'.repeat(4096) }));
    expect((await client.closed).code).toBe(1009);
    await other.step(1);
  });

  it('accepts frames sent as binary messages, as the protocol allows', async () => {
    await session.start();
    const client = await connect();
    client.sendRaw(Buffer.from(JSON.stringify({ type: 'ping', id: 'bin' })), { binary: true });
    expect(await client.next((frame) => frame.type === 'pong')).toMatchObject({ requestId: 'bin' });
    client.sendRaw(Buffer.from([0xff, 0xfe, 0x00]), { binary: true });
    expect(await client.next((frame) => frame.type === 'error')).toMatchObject({ code: 'invalid_frame' });
  });

  it('answers a text message that is not UTF-8 with invalid_frame and keeps the socket open, as for a binary one', async () => {
    await session.start();
    const client = await connect();
    // A text frame whose bytes are not UTF-8: ws validated it and closed the socket with 1007, a code the
    // docs did not name, where docs/protocol.md promises invalid_frame (counted toward maxInvalidFrames).
    client.sendRaw(Buffer.from([0x7b, 0xff, 0xfe, 0x7d]));
    expect(await client.next((frame) => frame.type === 'error')).toMatchObject({ code: 'invalid_frame' });
    client.send({ type: 'ping', id: 'after' });
    expect(await client.next((frame) => frame.type === 'pong')).toMatchObject({ requestId: 'after' });
  });

  it('rate-limits a flooding socket, answering every refused frame; one that goes on after its refusals is closed with 4008; others keep receiving', async () => {
    const { clock, other, client } = await floodable();
    const pongs = () => client.frames.filter((frame) => frame.type === 'pong');
    const limited = () => client.frames.filter((frame) => frame.type === 'error');
    for (let i = 0; i < 50; i++) client.send({ type: 'ping', id: `p${i}` });
    await client.next((frame) => frame.requestId === 'p49');
    expect(pongs().length).toBe(5);
    // Every refused frame is answered (issue 14 #6). The batch was written before the client could see a
    // refusal: its 45 refusals are one violation, and the socket stays open.
    expect(limited()).toEqual(
      Array.from({ length: 45 }, (_, i) =>
        expect.objectContaining({ code: 'rate_limited', requestId: `p${5 + i}` }),
      ),
    );
    // The client goes on regardless: one violation per 100 ms with refusals, and the 20th closes.
    for (let round = 1; round < 20; round++) {
      clock.advance(100); // one token
      for (let i = 0; i < 2; i++) client.send({ type: 'ping', id: `r${round}-${i}` });
      if (round < 19) await client.next((frame) => frame.requestId === `r${round}-1`);
    }
    expect((await client.closed).code).toBe(4008);
    // Each round's first ping took the refilled token; the last round's refusal is the close.
    expect(pongs().length).toBe(5 + 19);
    expect(limited().length).toBe(45 + 18);
    await other.step(1);
  });

  it('closes with 4008 a socket refused maxRateLimitViolations × rateLimitBurst frames in one streak, however fast they came', async () => {
    // Folded into one violation per 100 ms, a flood sent as fast as the socket carries it would be answered
    // frame by frame for 20 windows; bounded, it is closed at the 100th refusal here (20 × 5).
    const { other, client } = await floodable();
    for (let i = 0; i < 300; i++) client.send({ type: 'ping', id: `p${i}` });
    expect((await client.closed).code).toBe(4008);
    expect(client.frames.filter((frame) => frame.type === 'pong').length).toBe(5);
    expect(client.frames.filter((frame) => frame.type === 'error').length).toBe(99);
    await other.step(1);
  });

  it('does not charge acks that acknowledge new events', async () => {
    await session.start({ rateLimitPerSecond: 1, rateLimitBurst: 2 });
    const task = await session.env.server.tasks.create({ owner: 'alice', kind: 'k' });
    const client = await connect();
    client.send({ type: 'subscribe', taskId: task.id, afterSeq: 0 });
    await client.next((frame) => frame.type === 'snapshot');
    for (let i = 1; i <= 10; i++) {
      await task.progress({ done: i });
      await client.next((frame) => frame.type === 'event' && seqOf(frame) === i);
      client.send({ type: 'ack', taskId: task.id, seq: i });
    }
    client.send({ type: 'ping', id: 'last' });
    await client.next((frame: Received) => frame.type === 'pong');
    expect(client.frames.filter((frame) => frame.type === 'error')).toEqual([]);
    await expect.poll(async () => (await session.env.store.getTask(task.id))?.ackedSeq).toBe(10);
  });

  it('caps the subscriptions of one socket', async () => {
    await session.start({ maxSubscriptionsPerSocket: 2 });
    const ids = [];
    for (let i = 0; i < 3; i++)
      ids.push((await session.env.server.tasks.create({ owner: 'alice', kind: 'k' })).id);
    const client = await connect();
    for (const [index, taskId] of ids.entries())
      client.send({ type: 'subscribe', id: `s${index}`, taskId, afterSeq: 0 });
    const error = await client.next((frame) => frame.type === 'error');
    expect(error).toMatchObject({ code: 'too_many_subscriptions', requestId: 's2', taskId: ids[2] });
    // A resubscribe of a followed task is not a new subscription.
    client.send({ type: 'subscribe', id: 'again', taskId: ids[0], afterSeq: 0 });
    await client.sync();
    expect(client.frames.filter((frame) => frame.type === 'error')).toHaveLength(1);
  });
});

describe('what clients are told of store failures', () => {
  it("answers a store failure with its code and a fixed message, logging the driver's detail for the operator", async () => {
    const logged: Array<Record<string, unknown>> = [];
    const log = (obj: Record<string, unknown>) => logged.push(obj);
    await session.start({ logger: { debug: log, info: log, warn: log, error: log } });
    const task = await session.env.server.tasks.create({ owner: 'alice', kind: 'k' });
    // What the Postgres adapter makes of a refused connection or a bad password: the driver's message,
    // naming the database's address and user.
    const detail = 'getTask: connect ECONNREFUSED 10.0.3.4:5432 (user "finishline_admin")';
    vi.spyOn(session.env.store, 'getTask').mockImplementation(async () => {
      throw new ProgressError(ErrorCode.StoreUnavailable, detail);
    });
    const client = await connect();
    client.send({ type: 'subscribe', id: 's', taskId: task.id, afterSeq: 0 });
    const frame = await client.next((received) => received.type === 'error');
    expect(frame).toMatchObject({ code: 'store_unavailable', requestId: 's', taskId: task.id });
    expect(frame.message).not.toMatch(/10\.0\.3\.4|finishline_admin/);
    const response = await fetch(`${session.env.httpUrl}/progress/tasks/${task.id}`, {
      headers: { 'x-user': 'alice' },
    });
    expect(response.status).toBe(503);
    const body = (await response.json()) as { error: { code: string; message: string } };
    expect(body.error.code).toBe('store_unavailable');
    expect(body.error.message).not.toMatch(/10\.0\.3\.4|finishline_admin/);
    vi.spyOn(session.env.store, 'getTask').mockImplementation(async () => {
      throw new ProgressError(ErrorCode.Internal, 'row 7 of tasks: corrupted JSON at /var/lib/finishline/db');
    });
    const internal = await fetch(`${session.env.httpUrl}/progress/tasks/${task.id}`, {
      headers: { 'x-user': 'alice' },
    });
    expect(internal.status).toBe(500);
    expect(JSON.stringify(await internal.json())).not.toContain('/var/lib');
    // The operator still learns what failed, on the socket and over HTTP.
    const messages = logged.map((obj) => (obj.err as { message?: string } | undefined)?.message);
    expect(messages.filter((message) => message === detail)).toHaveLength(2);
    expect(messages).toContain('row 7 of tasks: corrupted JSON at /var/lib/finishline/db');
  });

  /**
   * A store closed under the running server (an application closing it before the server at shutdown):
   * each read fails `closed`, in the store's own words. The socket sent them in an `error` frame of code
   * `closed` (never sent in error frames, docs/protocol.md); HTTP answered a 503 `closed` with them,
   * neither logged nor counted in `store_errors_total`.
   */
  async function closedStore() {
    const logged: Array<Record<string, unknown>> = [];
    const log = (obj: Record<string, unknown>) => logged.push(obj);
    await session.start({ logger: { debug: log, info: log, warn: log, error: log } });
    // Created in the store, not by the server: no lease for the lease keeper to renew (and fail to).
    const task = await session.env.store.createTask({ owner: 'alice', kind: 'k' });
    return {
      task,
      /** The failures logged with the store's own words, and `store_errors_total`. */
      async reported(): Promise<{ logged: number; counted: number | undefined }> {
        const message = (obj: Record<string, unknown>) =>
          (obj.err as { message?: string } | undefined)?.message;
        return {
          logged: logged.filter((obj) => message(obj) === 'The store is closed').length,
          counted: (await session.env.server.metrics.storeErrors.get()).values[0]?.value,
        };
      },
    };
  }
  const storeFailed = { code: 'store_unavailable', message: 'The store is unavailable; try again' };

  it('answers a subscribe on a store closed under the running server with store_unavailable, logged and counted', async () => {
    const { task, reported } = await closedStore();
    const client = await connect();
    await session.env.store.close();
    client.send({ type: 'subscribe', id: 's', taskId: task.id, afterSeq: 0 });
    const frame = await client.next((received) => received.type === 'error');
    expect(frame).toEqual({ type: 'error', ...storeFailed, requestId: 's', taskId: task.id });
    expect(await reported()).toEqual({ logged: 1, counted: 1 });
  });

  it('answers HTTP requests on a store closed under the running server with 503 store_unavailable, each logged and counted', async () => {
    const { task, reported } = await closedStore();
    await session.env.store.close();
    const paths = [
      '/progress/tasks',
      `/progress/tasks/${task.id}`,
      `/progress/tasks/${task.id}/events`,
      `/progress/tasks/${task.id}/stream`,
    ];
    for (const path of paths) {
      const response = await fetch(`${session.env.httpUrl}${path}`, { headers: { 'x-user': 'alice' } });
      expect({ path, status: response.status, body: await response.json() }).toEqual({
        path,
        status: 503,
        body: { error: storeFailed },
      });
    }
    expect(await reported()).toEqual({ logged: paths.length, counted: paths.length });
  });
});

describe('pings from a client that reads nothing', () => {
  it('terminates a socket flooding pings while reading none of the pongs', async () => {
    // Every ping is answered with a pong of its payload; a client that pings and reads nothing had them
    // queued in this process without bound (ws before 8.23), and its own unsolicited pongs kept it alive
    // past the liveness check.
    await session.start();
    const { hostname, port } = new URL(session.env.wsUrl);
    const tcp = connectTcp(Number(port), hostname);
    session.onCleanup(() => {
      tcp.destroy();
    });
    await new Promise<void>((resolve) => tcp.once('connect', resolve));
    tcp.write(
      [
        `GET ${new URL(session.env.wsUrl).pathname} HTTP/1.1`,
        `Host: ${hostname}:${port}`,
        'Upgrade: websocket',
        'Connection: Upgrade',
        `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}`,
        'Sec-WebSocket-Version: 13',
        `Sec-WebSocket-Protocol: ${PROTOCOL_NAME}`,
        'x-user: alice',
        '',
        '',
      ].join('\r\n'),
    );
    await expect.poll(() => session.env.server.connectionCount).toBe(1);
    tcp.pause(); // reads nothing from here on
    const closed = new Promise<void>((resolve) => tcp.once('close', () => resolve()));
    tcp.on('error', () => {});
    // Masked ping frames of 125 bytes each, a thousand per write, a pong (127 bytes) to come for each.
    const ping = Buffer.concat([Buffer.from([0x89, 0x80 | 125, 0, 0, 0, 0]), Buffer.alloc(125, 7)]);
    const batch = Buffer.concat(Array.from({ length: 1000 }, () => ping));
    let written = 0;
    const limit = 64 * 1024 * 1024;
    let stopped = false;
    void closed.then(() => {
      stopped = true;
    });
    const pump = (): void => {
      while (!stopped && !tcp.destroyed && written < limit) {
        written += batch.length;
        if (!tcp.write(batch)) {
          tcp.once('drain', pump);
          return;
        }
      }
    };
    pump();
    await expect.poll(() => session.env.server.connectionCount, { timeout: 20_000 }).toBe(0);
    // Long before the 64 MB of pings it could have queued pongs for.
    expect(written).toBeLessThan(limit);
  });
});

describe("the caller's WebSocketServer", () => {
  /** The messages of the warnings of a ProgressServer built over each of `servers` (closed after the test). */
  function warningsOver(servers: WebSocketServer[]): string[] {
    const warnings: string[] = [];
    const logger = {
      debug() {},
      info() {},
      error() {},
      warn: (_: unknown, message?: string) => {
        warnings.push(message ?? '');
      },
    };
    for (const wss of servers) {
      const progress = new ProgressServer({
        store: new MemoryProgressStore(),
        wss,
        authenticate: headerAuth,
        logger,
      });
      session.onCleanup(async () => {
        await progress.close({ timeoutMs: 500 });
        wss.close();
      });
    }
    return warnings;
  }

  it('warns when it answers pings without bound (ws before 8.23, or maxPendingAutoPongs 0), and not otherwise', async () => {
    const unbounded = new WebSocketServer({ noServer: true, ...({ maxPendingAutoPongs: 0 } as object) });
    const bounded = new WebSocketServer({ noServer: true });
    const silent = new WebSocketServer({
      noServer: true,
      autoPong: false,
      ...({ maxPendingAutoPongs: 0 } as object),
    });
    const warnings = warningsOver([unbounded, bounded, silent]);
    expect(warnings.filter((message) => message.includes('maxPendingAutoPongs'))).toHaveLength(1);
  });

  it('warns when it accepts messages larger than maxPayloadBytes, and not otherwise', async () => {
    // ws holds a whole message in memory before the server can refuse it: 100 MiB by default, from
    // sockets still waiting for their auth frame too.
    const servers = [
      new WebSocketServer({ noServer: true }),
      new WebSocketServer({ noServer: true, maxPayload: 64 * 1024 }),
      new WebSocketServer({ noServer: true, maxPayload: 1024 }),
    ];
    const warnings = warningsOver(servers);
    expect(warnings.filter((message) => message.includes('maxPayloadBytes'))).toHaveLength(1);
  });

  it('authenticates and checks origins after the upgrade, answering with close codes', async () => {
    const httpServer: Server = createServer();
    const wss = new WebSocketServer({ server: httpServer, handleProtocols: () => PROTOCOL_NAME });
    await new Promise<void>((resolve) => httpServer.listen(0, '127.0.0.1', resolve));
    const store = new MemoryProgressStore();
    const progress = new ProgressServer({ store, wss, authenticate: headerAuth });
    session.onCleanup(async () => {
      await progress.close({ timeoutMs: 500 });
      wss.close();
      await new Promise((resolve) => httpServer.close(resolve));
    });
    const url = `ws://127.0.0.1:${(httpServer.address() as AddressInfo).port}/anything`;
    const _ok = session.track(await RawClient.connect(url, { user: 'alice' }));
    const anonymous = session.track(new RawClient(url));
    expect((await anonymous.closed).code).toBe(4001);
    const foreign = session.track(
      new RawClient(url, { user: 'alice', headers: { origin: 'https://evil.example' } }),
    );
    expect((await foreign.closed).code).toBe(4003);
  });

  it('caps the sockets of one address still waiting for their auth frame, dropping the oldest', async () => {
    // On a server upgrading its own sockets, maxPendingConnectionsPerAddress bounds them (#4); the
    // caller's WebSocketServer's sockets were never counted: within authTimeoutMs a client could hold as
    // many silent sockets (descriptors) as it could open.
    const httpServer: Server = createServer();
    const wss = new WebSocketServer({ server: httpServer, handleProtocols: () => PROTOCOL_NAME });
    await new Promise<void>((resolve) => httpServer.listen(0, '127.0.0.1', resolve));
    const progress = new ProgressServer({
      store: new MemoryProgressStore(),
      wss,
      authenticateToken: tokenAuth,
      maxPendingConnectionsPerAddress: 3,
      authTimeoutMs: 60_000,
    });
    session.onCleanup(async () => {
      await progress.close({ timeoutMs: 500 });
      wss.close();
      await new Promise((resolve) => httpServer.close(resolve));
    });
    const url = `ws://127.0.0.1:${(httpServer.address() as AddressInfo).port}/progress`;
    const silent: RawClient[] = [];
    for (let i = 0; i < 6; i++) {
      const client = session.track(new RawClient(url));
      await client.opened;
      silent.push(client);
    }
    // The three oldest go; a client that authenticates still gets in.
    await expect
      .poll(() => silent.map((client) => client.ws.readyState === WebSocket.OPEN))
      .toEqual([false, false, false, true, true, true]);
    const fresh = session.track(new RawClient(url));
    await fresh.opened;
    fresh.send({ type: 'auth', token: 'token-alice', protocol: 1 });
    await fresh.next((frame) => frame.type === 'hello');
    expect(progress.connectionCount).toBeLessThanOrEqual(4);
  });
});
