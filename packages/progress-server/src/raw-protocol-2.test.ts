import { readFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { ProgressError } from '@finishline/core';
import { describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { restorableStore } from './testing/harness.js';
import { bearer, jsonHeaders, userTokens } from './testing/raw-http.js';
import { errorOf, eventAt, holdTaskReads, rawSession, snapshotOf } from './testing/raw-session.js';
import { type Frame, Raw, WAIT } from './testing/raw-socket.js';

/**
 * A client written from docs/protocol.md alone (plain `ws`, JSON, nothing imported from the Finishline
 * packages on the client side): checks that the document is enough to talk to a real server. Each test
 * names the section of the document it relies on. The server side uses the test harness only to start
 * a server and to drive tasks. Where this client had to guess, the document was made to say it (the
 * order of answers, heartbeat seqs after a reset, the end of a rate-limit streak, the subscription
 * cap's pending subscribes, `protocol` on first frames, the HTTP 401 and 429 headers). Its plain
 * `node:http` request is testing/raw-http.ts, shared with raw-http-protocol.test.ts.
 */

const session = rawSession();
const { clients, start, http } = session;

/** Opens a socket, authenticates with an `auth` first frame (doc: Authentication 2) and waits for `hello`. */
const connect = (token = 'alice', opts: { protocols?: string[] } = {}): Promise<Raw> =>
  session.connect(token, opts.protocols);

describe('authentication (doc: Authentication)', () => {
  it('auth first frame → hello with the selected version, serverId, interval and epoch', async () => {
    await start();
    const client = await connect();
    expect(client.ws.protocol).toBe('finishline.v2');
    const hello = client.frames[0]!;
    expect(hello).toMatchObject({ type: 'hello', protocol: 2, heartbeatIntervalMs: 60_000 });
    expect(typeof hello.serverId).toBe('string');
    expect(hello.epoch).toBe(await session.env!.store.getEpoch());
  });

  it('a header at the upgrade authenticates: hello is the first frame, no auth needed', async () => {
    await start();
    const client = new Raw(session.env!.wsUrl, { headers: { authorization: 'Bearer alice' } });
    clients.push(client);
    const hello = await client.next((f) => f.type === 'hello');
    expect(client.frames[0]).toBe(hello);
  });

  it('no subprotocol offered → version 1, hello without epoch', async () => {
    await start();
    const client = new Raw(session.env!.wsUrl, { protocols: [] });
    clients.push(client);
    await client.open;
    client.send({ type: 'auth', token: 'alice', protocol: 1 });
    const hello = await client.next((f) => f.type === 'hello');
    expect(hello.protocol).toBe(1);
    expect(hello.epoch).toBeUndefined();
  });

  it('only unknown subprotocols → HTTP 400 unsupported_protocol at the upgrade', async () => {
    await start();
    const client = new Raw(session.env!.wsUrl, { protocols: ['finishline.v9'] });
    await expect(client.open).rejects.toThrow('HTTP 400');
  });

  it('upgrade refusals: 401 with WWW-Authenticate when only headers authenticate, 403 for a foreign Origin', async () => {
    await start({ authenticateToken: undefined });
    const refused = await new Promise<{ status: number; challenge: unknown }>((resolve, reject) => {
      const ws = new WebSocket(session.env!.wsUrl, ['finishline.v2']);
      ws.on('unexpected-response', (_req, res) => {
        resolve({ status: res.statusCode ?? 0, challenge: res.headers['www-authenticate'] });
        res.resume();
      });
      ws.on('open', () => reject(new Error('opened')));
      ws.on('error', () => {});
    });
    expect(refused).toEqual({ status: 401, challenge: 'Bearer realm="finishline"' });
    const foreign = new Raw(session.env!.wsUrl, { headers: { ...bearer(), origin: 'https://evil.example' } });
    await expect(foreign.open).rejects.toThrow('HTTP 403');
  });

  it('a refused token → unauthenticated + 4001', async () => {
    await start();
    const client = new Raw(session.env!.wsUrl);
    clients.push(client);
    await client.open;
    client.send({ type: 'auth', token: 'bad', protocol: 2 });
    expect((await client.closed).code).toBe(4001);
    expect(client.frames).toEqual([expect.objectContaining({ type: 'error', code: 'unauthenticated' })]);
  });

  it('a first frame other than auth → unauthenticated + 4001; unknown protocol → unsupported_protocol + 4002', async () => {
    await start();
    const a = new Raw(session.env!.wsUrl);
    const b = new Raw(session.env!.wsUrl);
    const c = new Raw(session.env!.wsUrl);
    clients.push(a, b, c);
    await Promise.all([a.open, b.open, c.open]);
    a.send({ type: 'ping', id: 'p' });
    b.send({ type: 'auth', token: 'alice', protocol: 3 });
    // Only auth carries `protocol` among client frames: another type with one is just not an auth.
    c.send({ type: 'ping', protocol: 3 });
    for (const refused of [a, c]) {
      expect((await refused.closed).code).toBe(4001);
      expect(refused.frames).toEqual([expect.objectContaining({ code: 'unauthenticated' })]);
    }
    expect((await b.closed).code).toBe(4002);
    expect(b.frames).toEqual([expect.objectContaining({ code: 'unsupported_protocol' })]);
  });

  it('no auth within authTimeoutMs → 4004', async () => {
    await start({ authTimeoutMs: 100 });
    const client = new Raw(session.env!.wsUrl);
    clients.push(client);
    await client.open;
    expect((await client.closed).code).toBe(4004);
  });

  it('an auth frame sent in time whose token check outlasts authTimeoutMs → 4004 too, its reason saying so', async () => {
    await start({
      authTimeoutMs: 100,
      authenticateToken: async (token: string) => {
        await new Promise((r) => setTimeout(r, 400));
        return userTokens(token);
      },
    });
    const client = new Raw(session.env!.wsUrl);
    clients.push(client);
    await client.open;
    client.send({ type: 'auth', token: 'alice', protocol: 2 });
    // The deadline counts from the socket's opening and covers the check: the client did send its frame.
    expect(await client.closed).toEqual({ code: 4004, reason: 'auth frame not checked in time' });
    expect(client.frames).toEqual([]);
  });

  it('frames pipelined behind auth are handled in order after hello', async () => {
    const { server } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const client = new Raw(session.env!.wsUrl);
    clients.push(client);
    await client.open;
    client.send({ type: 'auth', token: 'alice', protocol: 2 });
    client.send({ type: 'subscribe', id: 's1', taskId: task.id, afterSeq: 0 });
    // Handled in order, answered as each answer is ready: the subscribe's snapshot waits on a store
    // read, so a pong for a later ping may overtake it (the doc now says so, Client → server frames).
    await client.next(snapshotOf(task.id));
    expect(client.frames.map((f) => f.type)).toEqual(['hello', 'snapshot']);
  });
});

describe('subscribe and snapshots (doc: snapshot, subscribe, rules 1–3)', () => {
  it('afterSeq 0 → snapshot with epoch; afterSeq = seq → snapshot; afterSeq < seq → the events after it', async () => {
    const { server, store } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k', total: 3 });
    await task.item({ key: 'a', ok: true });
    await task.item({ key: 'b', ok: true });
    const epoch = await store.getEpoch();
    const client = await connect();
    client.send({ type: 'subscribe', id: 's1', taskId: task.id, afterSeq: 0 });
    const first = await client.next(snapshotOf(task.id));
    expect(first).toEqual({ type: 'snapshot', task: expect.objectContaining({ seq: 2, done: 2 }), epoch });
    let from = client.frames.length;
    client.send({ type: 'subscribe', id: 's2', taskId: task.id, afterSeq: 2 });
    const same = await client.next(snapshotOf(task.id), from);
    expect(same.task.seq).toBe(2);
    expect(same.reset).toBeUndefined();
    from = client.frames.length;
    client.send({ type: 'subscribe', id: 's3', taskId: task.id, afterSeq: 1 });
    const replayed = await client.next(eventAt(task.id, 2), from);
    expect(replayed.event).toMatchObject({ type: 'item', item: { key: 'b', ok: true } });
    await task.progress({ message: 'live' });
    await client.next(eventAt(task.id, 3));
  });

  it('afterSeq ahead of the task → reset snapshot; the cursor restarts from it', async () => {
    const { server } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.progress({ done: 1 });
    const client = await connect();
    client.send({ type: 'subscribe', taskId: task.id, afterSeq: 50 });
    const reset = await client.next(snapshotOf(task.id));
    expect(reset).toMatchObject({ reset: true, task: { seq: 1 }, epoch: expect.any(String) });
    await task.progress({ done: 2 });
    await client.next(eventAt(task.id, 2));
  });

  it('a renewed epoch resets every subscription with the new epoch; old-epoch acks above the task are refused', async () => {
    const { server, store } = await start({ heartbeatIntervalMs: 100 });
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.progress({ done: 1 });
    const client = await connect();
    client.send({ type: 'subscribe', taskId: task.id, afterSeq: 0 });
    await client.next(snapshotOf(task.id));
    const from = client.frames.length;
    const epoch = await store.renewEpoch();
    const reset = await client.next(snapshotOf(task.id), from);
    expect(reset).toMatchObject({ reset: true, epoch });
    // An ack of a seq the new epoch's task does not have: invalid_input with taskId, socket open (rule 5).
    const ackFrom = client.frames.length;
    client.send({ type: 'ack', taskId: task.id, seq: 99 });
    expect(await client.next(errorOf('invalid_input'), ackFrom)).toMatchObject({ taskId: task.id });
  });

  it('a hello with another epoch: the client sets its cursor to 0 and gets a snapshot (rule 1)', async () => {
    const { server, store } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.progress({ done: 1 });
    const first = await connect();
    const oldEpoch = first.frames[0]!.epoch;
    await first.close();
    await store.renewEpoch();
    const second = await connect();
    expect(second.frames[0]!.epoch).not.toBe(oldEpoch);
    second.send({ type: 'subscribe', taskId: task.id, afterSeq: 0 });
    expect((await second.next(snapshotOf(task.id))).epoch).toBe(second.frames[0]!.epoch);
  });

  it('a hello with another epoch, the task at seq 0 in the restored store: the answer is an unmarked snapshot at seq 0 (rule 1: applied, nothing counted as applied)', async () => {
    const restorable = restorableStore();
    // Ticks of 50 ms: the server reads the epoch at each (this test store reports no renewal itself).
    const { store } = await start({ store: restorable.store, heartbeatIntervalMs: 50 });
    // The backup holds the task just created (seq 0); the live store goes on to seq 3.
    await restorable.both((s) => s.createTask({ id: 'restored', owner: 'alice', kind: 'k', total: 3 }));
    for (const key of ['a', 'b', 'c']) await store.append('restored', { type: 'item', key, ok: true });
    const first = await connect();
    first.send({ type: 'subscribe', taskId: 'restored', afterSeq: 0 });
    expect((await first.next(snapshotOf('restored'))).task).toMatchObject({ seq: 3, done: 3 });
    await first.close();
    restorable.restore();
    const epoch = await store.renewEpoch();
    // The HTTP API answers with the epoch the server knows: once it is the new one, so is a hello's.
    while ((await http('GET', '/progress/tasks/restored', { headers: bearer() })).json().epoch !== epoch) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const second = await connect();
    expect(second.frames[0]).toMatchObject({ type: 'hello', epoch });
    // The client's cursor (3, old epoch) is set to 0: the snapshot at seq 0 equals it, unmarked. A client
    // that still counted the old epoch's frames as applied would take it as stale (rule 3) and keep
    // showing 3 of 3 done of a task that has done nothing.
    second.send({ type: 'subscribe', taskId: 'restored', afterSeq: 0 });
    const answer = await second.next(snapshotOf('restored'));
    expect(answer).toEqual({
      type: 'snapshot',
      task: expect.objectContaining({ seq: 0, done: 0, status: 'running' }),
      epoch,
    });
  });

  it('a watch started after a hello of the current epoch from a cursor of an older one is resumed from its seq: the client checks the epoch (rule 1)', async () => {
    const { server, store } = await start({ heartbeatIntervalMs: 50 });
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    for (let done = 1; done <= 3; done++) await task.progress({ done });
    const epoch = await store.renewEpoch();
    while ((await http('GET', `/progress/tasks/${task.id}`, { headers: bearer() })).json().epoch !== epoch) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const client = await connect();
    expect(client.frames[0]).toMatchObject({ epoch });
    // A cursor persisted before the renewal (seq 1 of the old epoch): the subscribe cannot say so.
    client.send({ type: 'subscribe', taskId: task.id, afterSeq: 1 });
    await client.next(eventAt(task.id, 3));
    expect(client.about(task.id).map((f) => f.type)).toEqual(['event', 'event']);
  });

  it('subscribe carries no epoch: an epoch field makes the frame invalid (strict validation)', async () => {
    const { server } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const client = await connect();
    client.send({ type: 'subscribe', id: 'e1', taskId: task.id, afterSeq: 0, epoch: 'x' });
    expect(await client.next(errorOf('invalid_frame'))).toMatchObject({ requestId: 'e1' });
  });

  it('a task purged and created again under the same id while subscribed → reset snapshot of the new run', async () => {
    const { server, store } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k', id: 'reused' });
    await task.progress({ done: 1 });
    await task.progress({ done: 2 });
    await task.complete({ result: { n: 1 } });
    const client = await connect();
    client.send({ type: 'subscribe', taskId: 'reused', afterSeq: 0 });
    const terminal = await client.next(snapshotOf('reused'));
    expect(terminal.task).toMatchObject({ status: 'completed', seq: 3 });
    client.send({ type: 'ack', taskId: 'reused', seq: 3 });
    await client.sync();
    // Retention leaves a task in the millisecond it was created (its id taken again would be the same run).
    await new Promise((resolve) => setTimeout(resolve, 2));
    expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(1);
    const from = client.frames.length;
    const again = await server.tasks.create({ owner: 'alice', kind: 'k2', id: 'reused' });
    await again.progress({ done: 1 });
    // The new run (seq 0 or 1) must reach the watcher: as a reset snapshot, then events above its seq.
    const reset = await client.next(snapshotOf('reused'), from);
    expect(reset).toMatchObject({ reset: true, task: { kind: 'k2', status: 'running' } });
    if (reset.task.seq < 1) await client.next(eventAt('reused', 1), from);
  });
});

describe('acks (doc: ack, rule 5)', () => {
  it('a cumulative ack gets no reply; above the task or for an unfollowed task → invalid_input, never a close', async () => {
    const { server } = await start({ maxInvalidFrames: 2 });
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.progress({ done: 1 });
    await task.progress({ done: 2 });
    const client = await connect();
    client.send({ type: 'subscribe', taskId: task.id, afterSeq: 0 });
    await client.next(snapshotOf(task.id));
    let from = await client.sync();
    client.send({ type: 'ack', taskId: task.id, seq: 2 });
    client.send({ type: 'ack', taskId: task.id, seq: 1 }); // cumulative: an older ack is harmless
    expect((await client.sync()) - from).toBe(1); // the pong only
    from = client.frames.length;
    for (let i = 0; i < 4; i++) client.send({ type: 'ack', taskId: task.id, seq: 3 });
    client.send({ type: 'ack', taskId: 'not-followed', seq: 1 });
    await client.sync();
    const errors = client.frames.slice(from).filter((f) => f.type === 'error');
    expect(errors.map((f) => [f.code, f.taskId])).toEqual([
      ...Array(4).fill(['invalid_input', task.id]),
      ['invalid_input', 'not-followed'],
    ]);
    expect(client.ws.readyState).toBe(WebSocket.OPEN);
    expect((await server.tasks.get(task.id))?.ackedSeq).toBe(2);
  });

  it('a late ack right after unsubscribe is recorded without reply', async () => {
    const { server } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.complete();
    const client = await connect();
    client.send({ type: 'subscribe', taskId: task.id, afterSeq: 0 });
    await client.next(snapshotOf(task.id));
    client.send({ type: 'unsubscribe', taskId: task.id });
    const from = await client.sync();
    client.send({ type: 'ack', taskId: task.id, seq: 1 });
    expect((await client.sync()) - from).toBe(1);
    expect((await server.tasks.get(task.id))?.ackedSeq).toBe(1);
  });
});

describe('terminal re-sends (doc: delivery rules, rule 4)', () => {
  it('an unacknowledged terminal event is re-sent until acked, with its own seq', async () => {
    const { server } = await start({ terminalRetry: { initialDelayMs: 20, maxDelayMs: 40 } });
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const client = await connect();
    client.send({ type: 'subscribe', taskId: task.id, afterSeq: 0 });
    await client.next(snapshotOf(task.id));
    await task.complete();
    await client.next(eventAt(task.id, 1));
    const countTerminal = () => client.frames.filter(eventAt(task.id, 1)).length;
    // Bounded: wait for the third copy of the terminal event.
    await client.next((f) => eventAt(task.id, 1)(f) && countTerminal() >= 3);
    client.send({ type: 'ack', taskId: task.id, seq: 1 });
    await client.sync();
    const after = countTerminal();
    await new Promise((r) => setTimeout(r, 200)); // several retry periods: nothing more comes
    expect(countTerminal()).toBe(after);
  });

  it('a terminal snapshot is re-sent too, except when afterSeq already equals the terminal seq', async () => {
    const { server } = await start({ terminalRetry: { initialDelayMs: 20, maxDelayMs: 40 } });
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.fail('boom');
    const a = await connect();
    a.send({ type: 'subscribe', taskId: task.id, afterSeq: 0 });
    await a.next((f) => snapshotOf(task.id)(f) && a.about(task.id).length >= 2);
    a.send({ type: 'ack', taskId: task.id, seq: 1 });
    const b = await connect();
    b.send({ type: 'subscribe', taskId: task.id, afterSeq: 1 });
    await b.next(snapshotOf(task.id));
    await new Promise((r) => setTimeout(r, 200));
    expect(b.about(task.id)).toHaveLength(1);
  });
});

describe('heartbeats, rate limits, unknown and invalid frames (doc: heartbeat, Limits, Errors)', () => {
  it('heartbeats list every followed task at the last seq sent; a reset voids the afterSeq claimed', async () => {
    const { server } = await start({ heartbeatIntervalMs: 50 });
    const a = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const b = await server.tasks.create({ owner: 'alice', kind: 'k' });
    await a.progress({ done: 1 });
    const client = await connect();
    expect(client.frames[0]!.heartbeatIntervalMs).toBe(50);
    client.send({ type: 'subscribe', taskId: a.id, afterSeq: 0 });
    client.send({ type: 'subscribe', taskId: b.id, afterSeq: 7 }); // ahead: reset snapshot at 0
    await client.next(snapshotOf(b.id));
    const from = client.frames.length;
    const beat = await client.next((f) => f.type === 'heartbeat', from);
    // Not 7: the reset snapshot set the client's cursor to 0, and a 7 would have it resync for ever (rule 6).
    expect(beat).toEqual({ type: 'heartbeat', time: expect.any(Number), seqs: { [a.id]: 1, [b.id]: 0 } });
  });

  it('a socket that does not answer WebSocket pings is terminated: no close frame, the client sees 1006', async () => {
    await start({ heartbeatIntervalMs: 50 });
    const ws = new WebSocket(session.env!.wsUrl, ['finishline.v2'], { headers: bearer(), autoPong: false });
    ws.on('error', () => {});
    const code = await new Promise<number>((resolve) => ws.on('close', (closeCode) => resolve(closeCode)));
    expect(code).toBe(1006);
  });

  it('every frame refused by the rate limit is answered (requestId, taskId of a subscribe); one batch is one violation, a streak of them is the 4008', async () => {
    const { server } = await start({ rateLimitPerSecond: 1, rateLimitBurst: 3, maxRateLimitViolations: 5 });
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const client = await connect();
    // One batch, read by the server within far less than the second a token takes to refill.
    for (let i = 0; i < 3; i++) client.send({ type: 'ping', id: `p${i}` });
    client.send({ type: 'subscribe', id: 'sx', taskId: task.id, afterSeq: 0 });
    client.send({ type: 'ping', id: 'px' });
    for (let i = 0; i < 2; i++) client.send({ type: 'ping', id: `q${i}` });
    await client.next((f) => f.requestId === 'q1');
    expect(client.frames.find((f) => f.requestId === 'sx')?.taskId).toBe(task.id);
    // Written before the client could see a refusal, the batch's 4 refusals count as one violation.
    expect(client.frames.filter(errorOf('rate_limited')).map((f) => f.requestId)).toEqual([
      'sx',
      'px',
      'q0',
      'q1',
    ]);
    expect(client.ws.readyState).toBe(WebSocket.OPEN);
    // Going on after the refusals: at most one violation per 100 ms, and the fifth closes (before the 15th
    // refusal of the streak, maxRateLimitViolations × rateLimitBurst, would).
    const startedAt = Date.now();
    let n = 0;
    const flood = setInterval(() => client.send({ type: 'ping', id: `r${n++}` }), 50);
    try {
      expect((await client.closed).code).toBe(4008);
    } finally {
      clearInterval(flood);
    }
    expect(Date.now() - startedAt).toBeGreaterThanOrEqual(250);
  });

  it('unknown frame types are answered with unknown_frame (requestId echoed) and never close the socket', async () => {
    await start({ maxInvalidFrames: 2 });
    const client = await connect();
    for (let i = 0; i < 6; i++) client.send({ type: 'future-thing', id: `u${i}` });
    client.send({ type: 'hello', protocol: 2, serverId: 'x', heartbeatIntervalMs: 1 }); // a server type
    await client.sync();
    const errors = client.frames.filter((f) => f.type === 'error');
    expect(errors.map((f) => f.code)).toEqual(Array(7).fill('unknown_frame'));
    expect(errors.slice(0, 6).map((f) => f.requestId)).toEqual(['u0', 'u1', 'u2', 'u3', 'u4', 'u5']);
    expect(client.ws.readyState).toBe(WebSocket.OPEN);
  });

  it('invalid frames are answered with invalid_frame; maxInvalidFrames of them close with 1008', async () => {
    await start({ maxInvalidFrames: 3 });
    const client = await connect();
    client.send('not json');
    client.send({ type: 'subscribe', id: 'i1', taskId: 'x', afterSeq: -1 });
    await client.sync();
    expect(client.frames.filter(errorOf('invalid_frame')).map((f) => f.requestId)).toEqual([undefined, 'i1']);
    expect(client.ws.readyState).toBe(WebSocket.OPEN);
    client.send({ type: 'ping', id: 42 });
    expect((await client.closed).code).toBe(1008);
    expect(client.frames.filter(errorOf('invalid_frame'))).toHaveLength(3);
  });

  it('a message above maxPayloadBytes closes with 1009', async () => {
    await start();
    const client = await connect();
    client.send({ type: 'ping', id: 'x', pad: 'x'.repeat(70 * 1024) });
    expect((await client.closed).code).toBe(1009);
  });

  it('a binary frame holding the same UTF-8 JSON is accepted', async () => {
    await start();
    const client = await connect();
    client.ws.send(Buffer.from(JSON.stringify({ type: 'ping', id: 'bin' })), { binary: true });
    await client.next((f) => f.type === 'pong' && f.requestId === 'bin');
  });
});

describe('credential renewal and expiry (doc: After authentication, Credential expiry)', () => {
  it('auth on an open version-2 socket renews it: a new hello, and the socket outlives the first expiry', async () => {
    const { server } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const client = await connect('alice:500');
    client.send({ type: 'subscribe', taskId: task.id, afterSeq: 0 });
    await client.next(snapshotOf(task.id));
    const from = client.frames.length;
    client.send({ type: 'auth', token: 'alice:60000', protocol: 2 });
    await client.next((f) => f.type === 'hello', from);
    await new Promise((r) => setTimeout(r, 600)); // past the first credential's expiry
    await task.progress({ done: 1 });
    await client.next(eventAt(task.id, 1));
    expect(client.ws.readyState).toBe(WebSocket.OPEN);
  });

  it('renewing as another principal → unauthenticated + 4001', async () => {
    await start();
    const client = await connect('alice');
    client.send({ type: 'auth', token: 'bob', protocol: 2 });
    expect((await client.closed).code).toBe(4001);
    expect(client.frames.filter((f) => f.type === 'error').map((f) => f.code)).toEqual(['unauthenticated']);
  });

  it('expiry → token_expired + 4011 (version 1: unauthenticated + 4011); already expired → the same at once', async () => {
    await start();
    const v2 = await connect('alice:300');
    const v1 = await connect('alice:300', { protocols: ['finishline.v1'] });
    expect((await v2.closed).code).toBe(4011);
    expect(v2.frames.filter((f) => f.type === 'error').map((f) => f.code)).toEqual(['token_expired']);
    expect((await v1.closed).code).toBe(4011);
    expect(v1.frames.filter((f) => f.type === 'error').map((f) => f.code)).toEqual(['unauthenticated']);
    const late = new Raw(session.env!.wsUrl);
    clients.push(late);
    await late.open;
    late.send({ type: 'auth', token: 'alice:-1', protocol: 2 });
    expect((await late.closed).code).toBe(4011);
    expect(late.frames.map((f) => f.code)).toEqual(['token_expired']);
  });

  it('version 1: a second auth is invalid_frame and the socket stays open', async () => {
    await start();
    const client = await connect('alice', { protocols: ['finishline.v1'] });
    client.send({ type: 'auth', token: 'alice', protocol: 1 });
    await client.next(errorOf('invalid_frame'));
    await client.sync();
    expect(client.ws.readyState).toBe(WebSocket.OPEN);
  });
});

describe('HTTP API (doc: HTTP API)', () => {
  it('the read routes: statuses, JSON, Cache-Control, epoch', async () => {
    const { server, store } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k', total: 2 });
    await task.item({ key: 'a', ok: true });
    await task.item({ key: 'b', ok: false, error: 'no' });
    const epoch = await store.getEpoch();
    const list = await http('GET', '/progress/tasks?status=running&limit=5', { headers: bearer() });
    expect(list.status).toBe(200);
    expect(list.headers['content-type']).toBe('application/json; charset=utf-8');
    expect(list.headers['cache-control']).toBe('no-store');
    expect(list.json().tasks.map((t: Frame) => t.id)).toEqual([task.id]);
    const one = await http('GET', `/progress/tasks/${encodeURIComponent(task.id)}`, { headers: bearer() });
    expect(one.json()).toEqual({ task: expect.objectContaining({ id: task.id, seq: 2 }), epoch });
    const events = await http('GET', `/progress/tasks/${task.id}/events?afterSeq=1&limit=100`, {
      headers: bearer(),
    });
    expect(events.json()).toMatchObject({ events: [{ seq: 2, type: 'item' }], hasMore: false, epoch });
    const page = await http('GET', `/progress/tasks/${task.id}/events?afterSeq=0&limit=1`, {
      headers: bearer(),
    });
    expect(page.json()).toMatchObject({ events: [{ seq: 1 }], hasMore: true });
    const head = await http('HEAD', `/progress/tasks/${task.id}`, { headers: bearer() });
    expect([head.status, head.body]).toEqual([200, '']);
    // Another principal's task is answered exactly like a missing one.
    const foreign = await http('GET', `/progress/tasks/${task.id}`, { headers: bearer('bob') });
    const missing = await http('GET', '/progress/tasks/nope', { headers: bearer('bob') });
    expect([foreign.status, missing.status]).toEqual([404, 404]);
    expect(foreign.json().error.code).toBe('task_not_found');
    expect((await http('GET', '/progress/tasks/', { headers: bearer() })).status).toBe(404);
    expect(
      (await http('GET', `/progress/tasks/${task.id}/events?limit=0`, { headers: bearer() })).status,
    ).toBe(400);
    const health = await http('GET', '/progress/healthz');
    expect([health.status, health.json().ok]).toEqual([200, true]);
    // healthz answers GET and HEAD only; another method is no route, not a 405.
    expect((await http('HEAD', '/progress/healthz')).status).toBe(200);
    expect((await http('DELETE', '/progress/healthz')).status).toBe(404);
  });

  it('401 carries WWW-Authenticate (invalid_token for an expired credential)', async () => {
    const { server } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const none = await http('GET', `/progress/tasks/${task.id}`);
    expect(none.status).toBe(401);
    expect(none.json().error.code).toBe('unauthenticated');
    expect(none.headers['www-authenticate']).toBe('Bearer realm="finishline"');
    const expired = await http('GET', `/progress/tasks/${task.id}`, { headers: bearer('alice:-1') });
    expect(expired.status).toBe(401);
    expect(expired.json().error.code).toBe('token_expired');
    expect(expired.headers['www-authenticate']).toMatch(/^Bearer realm="finishline", error="invalid_token"/);
  });

  it('cancel and ack: answers, 405 with Allow, 415, 409, 400 beyond the task', async () => {
    const { server } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.progress({ done: 1 });
    const ack = await http('POST', `/progress/tasks/${task.id}/ack`, {
      headers: jsonHeaders(),
      body: '{"seq":1}',
    });
    expect([ack.status, ack.json()]).toEqual([200, { taskId: task.id, seq: 1 }]);
    for (const body of ['{"seq":9}', '{"seq":0}', '{}']) {
      const refused = await http('POST', `/progress/tasks/${task.id}/ack`, { headers: jsonHeaders(), body });
      expect([refused.status, refused.json().error.code]).toEqual([400, 'invalid_input']);
    }
    const wrongType = await http('POST', `/progress/tasks/${task.id}/cancel`, {
      headers: { ...bearer(), 'content-type': 'text/plain' },
      body: '{}',
    });
    expect(wrongType.status).toBe(415);
    const getCancel = await http('GET', `/progress/tasks/${task.id}/cancel`, { headers: bearer() });
    expect([getCancel.status, getCancel.headers.allow]).toEqual([405, 'POST']);
    const postTask = await http('POST', `/progress/tasks/${task.id}`, { headers: jsonHeaders(), body: '{}' });
    expect([postTask.status, postTask.headers.allow]).toEqual([405, 'GET, HEAD']);
    const cancel = await http('POST', `/progress/tasks/${task.id}/cancel`, {
      headers: jsonHeaders(),
      body: '{"reason":"wrong cluster"}',
    });
    expect(cancel.status).toBe(200);
    expect(cancel.json()).toEqual({
      taskId: task.id,
      task: expect.objectContaining({ status: 'cancelled' }),
    });
    // Bodies are not strict: an unknown field is ignored (docs: HTTP API, after the route table).
    const extra = await http('POST', `/progress/tasks/${task.id}/ack`, {
      headers: jsonHeaders(),
      body: '{"seq":1,"epoch":"another"}',
    });
    expect([extra.status, extra.json()]).toEqual([200, { taskId: task.id, seq: 1 }]);
    const again = await http('POST', `/progress/tasks/${task.id}/cancel`, {
      headers: jsonHeaders(),
      body: '{}',
    });
    expect([again.status, again.json().error.code]).toEqual([409, 'task_finished']);
  });

  it('CORS: an allowed Origin is answered with CORS headers, its preflight 204; another origin 403 first', async () => {
    const { server } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const origin = 'https://app.example.com';
    const ok = await http('GET', `/progress/tasks/${task.id}`, { headers: { ...bearer(), origin } });
    expect(ok.status).toBe(200);
    expect(ok.headers['access-control-allow-origin']).toBe(origin);
    expect(ok.headers['access-control-allow-credentials']).toBe('true');
    expect(ok.headers.vary).toContain('Origin');
    const error = await http('GET', '/progress/tasks/nope', { headers: { ...bearer(), origin } });
    expect([error.status, error.headers['access-control-allow-origin']]).toEqual([404, origin]);
    const preflight = await http('OPTIONS', `/progress/tasks/${task.id}/cancel`, {
      headers: {
        origin,
        'access-control-request-method': 'POST',
        'access-control-request-headers': 'authorization, content-type',
      },
    });
    expect(preflight.status).toBe(204);
    expect(preflight.headers['access-control-allow-methods']).toBe('POST');
    expect(preflight.headers['access-control-allow-headers']).toBe('authorization, content-type');
    expect(preflight.headers['access-control-max-age']).toBe('600');
    const foreignPreflight = await http('OPTIONS', `/progress/tasks/${task.id}`, {
      headers: { origin: 'https://evil.example', 'access-control-request-method': 'GET' },
    });
    expect([foreignPreflight.status, foreignPreflight.headers['access-control-allow-methods']]).toEqual([
      403,
      undefined,
    ]);
    const readPreflight = await http('OPTIONS', `/progress/tasks/${task.id}/stream`, {
      headers: {
        origin,
        'access-control-request-method': 'GET',
        'access-control-request-headers': 'last-event-id',
      },
    });
    expect([readPreflight.status, readPreflight.headers['access-control-allow-methods']]).toEqual([
      204,
      'GET, HEAD',
    ]);
    const foreign = await http('DELETE', `/progress/tasks/${task.id}`, {
      headers: { origin: 'https://evil.example' },
    });
    expect([foreign.status, foreign.json().error.code]).toEqual([403, 'forbidden']);
    expect(foreign.headers['access-control-allow-origin']).toBeUndefined();
    const health = await http('GET', '/progress/healthz', { headers: { origin } });
    expect(health.headers['access-control-allow-origin']).toBeUndefined();
  });

  it('the event stream: retry, hello comment, ids <seq>~<epoch> (a terminal frame ends with !), reset on another epoch, ends after the terminal frame', async () => {
    const { server, store } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.progress({ done: 1 });
    await task.complete();
    const epoch = await store.getEpoch();
    const stream = await http('GET', `/progress/tasks/${task.id}/stream`, { headers: bearer() });
    expect(stream.headers['content-type']).toMatch(/^text\/event-stream/);
    // retry: 1000–2999 ms, jittered per stream.
    expect(stream.body).toMatch(/^retry: [12]\d{3}\n: hello heartbeatIntervalMs=60000\n\n/);
    expect(stream.body).toContain(`id: 2~${epoch}!\ndata: {"type":"snapshot"`);
    const resumed = await http('GET', `/progress/tasks/${task.id}/stream`, {
      headers: { ...bearer(), 'last-event-id': '1~other-epoch' },
    });
    const data = resumed.body.split('\n').filter((line) => line.startsWith('data: '));
    expect(data.map((line) => JSON.parse(line.slice(6)))).toEqual([
      { type: 'snapshot', task: expect.objectContaining({ seq: 2 }), epoch, reset: true },
    ]);
    const bad = await http('GET', `/progress/tasks/${task.id}/stream?afterSeq=x`, { headers: bearer() });
    expect(bad.status).toBe(400);
    const head = await http('HEAD', `/progress/tasks/${task.id}/stream`, { headers: bearer() });
    expect([head.status, head.headers['content-type'], head.body]).toEqual([
      200,
      'text/event-stream; charset=utf-8',
      '',
    ]);
    const foreign = await http('GET', `/progress/tasks/${task.id}/stream`, { headers: bearer('bob') });
    expect([foreign.status, foreign.json().error.code]).toEqual([404, 'task_not_found']);
    const post = await http('POST', `/progress/tasks/${task.id}/stream`, {
      headers: jsonHeaders(),
      body: '{}',
    });
    expect([post.status, post.headers.allow]).toEqual([405, 'GET, HEAD']);
  });
});

describe('free frames and limits (doc: Limits, Before authentication)', () => {
  it('acks of new events and an unsubscribe that ends a subscription are never rate-limited', async () => {
    const { server } = await start({ rateLimitPerSecond: 1, rateLimitBurst: 2 });
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const client = await connect();
    client.send({ type: 'subscribe', taskId: task.id, afterSeq: 0 }); // token 1
    await client.next(snapshotOf(task.id));
    for (let i = 1; i <= 5; i++) await task.progress({ done: i });
    await client.next(eventAt(task.id, 5));
    for (let seq = 1; seq <= 5; seq++) client.send({ type: 'ack', taskId: task.id, seq });
    client.send({ type: 'unsubscribe', taskId: task.id });
    client.send({ type: 'ping', id: 'last' }); // token 2
    await client.next((f) => f.type === 'pong' && f.requestId === 'last');
    expect(client.frames.filter((f) => f.type === 'error')).toEqual([]);
    expect((await server.tasks.get(task.id))?.ackedSeq).toBe(5);
  });

  it('more frames than rateLimitBurst pipelined behind auth close with 1008', async () => {
    await start({
      rateLimitBurst: 3,
      authenticateToken: async (token: string) => {
        await new Promise((r) => setTimeout(r, 50));
        return userTokens(token);
      },
    });
    const client = new Raw(session.env!.wsUrl);
    clients.push(client);
    await client.open;
    client.send({ type: 'auth', token: 'alice', protocol: 2 });
    for (let i = 0; i < 4; i++) client.send({ type: 'ping', id: `p${i}` });
    expect((await client.closed).code).toBe(1008);
  });
});

describe('subscribe edge rules (doc: subscribe, ack, snapshot triggers)', () => {
  it('an ack pipelined behind its subscribe is held and recorded; a repeated subscribe gets one answer', async () => {
    const { server } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.progress({ done: 1 });
    await task.progress({ done: 2 });
    const client = await connect();
    client.send({ type: 'subscribe', id: 'a', taskId: task.id, afterSeq: 2 });
    client.send({ type: 'subscribe', id: 'b', taskId: task.id, afterSeq: 2 });
    client.send({ type: 'ack', taskId: task.id, seq: 2 });
    await client.next(snapshotOf(task.id));
    await task.progress({ done: 3 });
    await client.next(eventAt(task.id, 3));
    expect(client.about(task.id).map((f) => f.type)).toEqual(['snapshot', 'event']);
    expect((await server.tasks.get(task.id))?.ackedSeq).toBe(2);
  });

  it('after a renewal the socket did not see, a subscribe with an old-epoch cursor gets a reset snapshot', async () => {
    const { server, store } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    for (let i = 1; i <= 3; i++) await task.progress({ done: i });
    const client = await connect();
    await store.renewEpoch();
    const epoch = await store.getEpoch();
    // The socket's hello announced the old epoch: its cursor (1) is of that epoch whatever its value.
    client.send({ type: 'subscribe', taskId: task.id, afterSeq: 1 });
    const answer = await client.next(snapshotOf(task.id));
    expect(answer).toMatchObject({ reset: true, epoch, task: { seq: 3 } });
  });
});

/** Reads an event stream until `until` holds for the text so far (or it ends), then drops it. */
function readStream(
  path: string,
  headers: Record<string, string>,
  until: (text: string) => boolean,
): Promise<string> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('stream: no match in time')), WAIT);
    const req = httpRequest(`${session.env!.httpUrl}${path}`, { headers }, (res) => {
      let text = '';
      const finish = () => {
        clearTimeout(timer);
        req.destroy();
        resolve(text);
      };
      res.on('data', (chunk: Buffer) => {
        text += chunk.toString();
        if (until(text)) finish();
      });
      res.on('end', finish);
    });
    req.on('error', () => {});
    req.end();
  });
}

describe('event stream live (doc: Server-Sent Events)', () => {
  it('resumes from a seq alone or afterSeq, heartbeats as comments, a cursor ahead gets a reset snapshot', async () => {
    const { server, store } = await start({ heartbeatIntervalMs: 50 });
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.progress({ done: 1 });
    await task.progress({ done: 2 });
    const epoch = await store.getEpoch();
    const resumed = await readStream(
      `/progress/tasks/${task.id}/stream`,
      { ...bearer(), 'last-event-id': '1' },
      (t) => t.includes(': heartbeat '),
    );
    expect(resumed).toContain(`id: 2~${epoch}\ndata: {"type":"event"`);
    expect(resumed).not.toContain('"snapshot"');
    const ahead = await readStream(`/progress/tasks/${task.id}/stream?afterSeq=9~${epoch}`, bearer(), (t) =>
      t.includes('"reset":true'),
    );
    expect(ahead).toContain(`id: 2~${epoch}\ndata: {"type":"snapshot"`);
  });
});

describe('subscription cap (doc: too_many_subscriptions)', () => {
  it('a subscribe still waiting for its answer counts toward the cap until its refusal ends it', async () => {
    const { server } = await start({ maxSubscriptionsPerSocket: 1 });
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const client = await connect();
    client.send({ type: 'subscribe', id: 'm', taskId: 'missing', afterSeq: 0 });
    client.send({ type: 'subscribe', id: 'early', taskId: task.id, afterSeq: 0 });
    await client.next((f) => errorOf('task_not_found')(f) && f.requestId === 'm');
    const refused = client.frames.find((f) => f.type === 'error' && f.requestId === 'early');
    expect(refused).toMatchObject({ code: 'too_many_subscriptions', taskId: task.id });
    client.send({ type: 'subscribe', id: 'later', taskId: task.id, afterSeq: 0 });
    await client.next(snapshotOf(task.id));
  });
});

describe('socket cap and cookies (doc: Before authentication, HTTP API)', () => {
  it('the socket cap: too_many_sockets + 4009 on a socket, 429 on a stream, HEAD takes no slot; cookies need Origin on POST', async () => {
    const { server } = await start({
      maxSocketsPerPrincipal: 1,
      authenticate: (req) => {
        const auth = req.headers.authorization;
        if (auth?.startsWith('Bearer ')) return userTokens(auth.slice(7));
        const cookie = req.headers.cookie;
        return cookie?.startsWith('sid=') ? userTokens(cookie.slice(4)) : null;
      },
    });
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.progress({ done: 1 });
    const origin = 'https://app.example.com';
    const unauthenticated = await http('GET', `/progress/tasks/${task.id}`, { headers: { origin } });
    expect([unauthenticated.status, unauthenticated.headers['access-control-allow-origin']]).toEqual([
      401,
      origin,
    ]);
    const ack = (headers: Record<string, string>) =>
      http('POST', `/progress/tasks/${task.id}/ack`, {
        headers: { cookie: 'sid=alice', 'content-type': 'application/json', ...headers },
        body: '{"seq":1}',
      });
    expect((await ack({})).status).toBe(403);
    expect((await ack({ origin })).status).toBe(200);
    await connect('alice');
    expect((await http('HEAD', `/progress/tasks/${task.id}/stream`, { headers: bearer() })).status).toBe(200);
    const stream = await http('GET', `/progress/tasks/${task.id}/stream`, {
      headers: { ...bearer(), origin },
    });
    expect([stream.status, stream.json().error.code]).toEqual([429, 'too_many_sockets']);
    const second = new Raw(session.env!.wsUrl);
    clients.push(second);
    await second.open;
    second.send({ type: 'auth', token: 'alice', protocol: 2 });
    expect((await second.closed).code).toBe(4009);
    expect(second.frames).toEqual([expect.objectContaining({ type: 'error', code: 'too_many_sockets' })]);
  });
});

describe("the document's own examples (doc: Server-Sent Events, HTTP API, Example session)", () => {
  const doc = readFileSync(new URL('../../../docs/protocol.md', import.meta.url), 'utf8');
  /** The non-empty lines of the first fenced `text` block after `marker` in the document. */
  const blockAfter = (marker: string): string[] => {
    const at = doc.indexOf(marker);
    expect(at, marker).toBeGreaterThan(-1);
    const open = doc.indexOf('```text\n', at) + '```text\n'.length;
    return doc
      .slice(open, doc.indexOf('\n```', open))
      .split('\n')
      .filter((line) => line !== '');
  };
  /** What an SSE message's `data:` line is, read from its text (the document's are abbreviated with …). */
  const kindOf = (data: string) => {
    const event = data.match(/"type":"event".*?"seq":\d+,.*?"type":"(\w+)"/)?.[1];
    if (event !== undefined) return `event ${event}`;
    return `snapshot ${data.match(/"status":"(\w+)"/)?.[1]}`;
  };

  it('the event stream example: the server writes the same ids (terminal frame marked !) for the same frames', async () => {
    const { server, store } = await start();
    const task = await server.tasks.create({ id: 'taint-42', owner: 'alice', kind: 'batch_taint', total: 2 });
    await task.progress({ current: 'node-1' });
    await task.item({ key: 'node-1', ok: true }); // seq 2: the example's snapshot
    const epoch = (await store.getEpoch()) as string;
    const example = blockAfter('curl -N -H "Authorization: Bearer $TOKEN"');
    const messages = (lines: string[]) =>
      lines.flatMap((line, i) =>
        line.startsWith('id: ') ? [[line.slice(4), kindOf(lines[i + 1] ?? '')] as const] : [],
      );
    // The stream as the server writes it: the snapshot, then the item and the completion appended live.
    const body = await new Promise<string>((resolve, reject) => {
      const req = httpRequest(
        `${session.env!.httpUrl}/progress/tasks/taint-42/stream`,
        { headers: bearer() },
        (res) => {
          let text = '';
          let appended = false;
          res.on('data', (chunk: Buffer) => {
            text += chunk.toString();
            if (appended || !text.includes('"type":"snapshot"')) return;
            appended = true;
            void task
              .item({ key: 'node-2', ok: false, error: 'node is cordoned' })
              .then(() => task.complete({ result: { tainted: ['node-1'] } }))
              .catch(reject);
          });
          res.on('end', () => resolve(text));
        },
      );
      req.on('error', reject);
      req.end();
    });
    const written = messages(body.split('\n')).map(([id, kind]) => [id.replace(epoch, '5f0c…'), kind]);
    expect(messages(example)).toEqual(written);
    expect(written).toEqual([
      ['2~5f0c…', 'snapshot running'],
      ['3~5f0c…', 'event item'],
      ['4~5f0c…!', 'event completed'],
    ]);
  });

  it('the HTTP example: a task of another principal is answered as the document shows', async () => {
    const { server } = await start();
    await server.tasks.create({ id: 'someone-elses-task', owner: 'bob', kind: 'k' });
    const [status, body] = blockAfter('-d \'{"reason":"wrong cluster"}\'');
    const answer = await http('GET', '/progress/tasks/someone-elses-task', { headers: bearer() });
    expect(`HTTP/1.1 ${answer.status} Not Found`).toBe(status);
    expect(answer.body).toBe(body);
  });

  it('the example session: failed requests are answered as shown', async () => {
    const { server } = await start({ revealTaskExistence: true });
    await server.tasks.create({ id: 'someone-elses-task', owner: 'bob', kind: 'k' });
    const lines = blockAfter('Requests that fail are answered');
    const client = await connect();
    let exchanged = 0;
    for (const [i, line] of lines.entries()) {
      if (!line.startsWith('→ ')) continue;
      const request = JSON.parse(line.slice(2)) as Frame;
      const shown = JSON.parse((lines[i + 1] as string).slice(2)) as Frame;
      client.send(request);
      const answer = await client.next((f) => f.requestId === request.id);
      expect(answer).toEqual(shown.type === 'pong' ? { ...shown, time: expect.any(Number) } : shown);
      exchanged += 1;
    }
    expect(exchanged).toBe(3);
  });
});

describe('statements without a test before (doc: Transport, Authentication, heartbeat, snapshot, Errors)', () => {
  /** A socket opened without credentials, its first frame not sent yet. */
  async function unauthenticated(): Promise<Raw> {
    const client = new Raw(session.env!.wsUrl);
    clients.push(client);
    await client.open;
    return client;
  }

  it('the server selects the newest subprotocol it speaks, whatever the order offered', async () => {
    await start();
    for (const offered of [
      ['finishline.v1', 'finishline.v2'],
      ['chat', 'finishline.v2'],
    ]) {
      const client = await connect('alice', { protocols: offered });
      expect([offered, client.ws.protocol, client.frames[0]?.protocol]).toEqual([
        offered,
        'finishline.v2',
        2,
      ]);
    }
  });

  it('first frames: another type carrying protocol is 4001; an auth of an unknown protocol is 4002 whatever else it holds', async () => {
    await start();
    const other = await unauthenticated();
    other.send({ type: 'subscribe', taskId: 't', afterSeq: 0, protocol: 5 });
    expect(await other.next(errorOf('unauthenticated'))).toBeDefined();
    expect((await other.closed).code).toBe(4001);
    const noToken = await unauthenticated();
    noToken.send({ type: 'auth', protocol: 3 });
    expect(await noToken.next(errorOf('unsupported_protocol'))).toBeDefined();
    expect((await noToken.closed).code).toBe(4002);
  });

  it('a renewal of an unknown protocol is 4002; one whose credential already expired is token_expired + 4011', async () => {
    await start();
    const unknown = await connect();
    unknown.send({ type: 'auth', token: 'alice', protocol: 3 });
    expect(await unknown.next(errorOf('unsupported_protocol'))).toBeDefined();
    expect((await unknown.closed).code).toBe(4002);
    const expired = await connect();
    expired.send({ type: 'auth', token: 'alice:-1000', protocol: 2 });
    expect(await expired.next(errorOf('token_expired'))).toBeDefined();
    expect((await expired.closed).code).toBe(4011);
  });

  it('a ping without id gets a pong without requestId; a socket following nothing gets heartbeats with empty seqs', async () => {
    await start({ heartbeatIntervalMs: 100 });
    const client = await connect();
    client.send({ type: 'ping' });
    expect(await client.next((f) => f.type === 'pong')).toEqual({ type: 'pong', time: expect.any(Number) });
    expect(await client.next((f) => f.type === 'heartbeat')).toEqual({
      type: 'heartbeat',
      time: expect.any(Number),
      seqs: {},
    });
  });

  it('a subscribe from the seq a task ended at: version 2 a reset snapshot, not re-sent; version 1 unmarked, no epoch', async () => {
    const { server } = await start();
    const task = await server.tasks.create({ id: 'done', owner: 'alice', kind: 'k' });
    await task.complete({ result: null });
    const v2 = await connect();
    v2.send({ type: 'subscribe', taskId: 'done', afterSeq: 1 });
    const reset = await v2.next(snapshotOf('done'));
    expect([reset.reset, reset.task.seq, typeof reset.epoch]).toEqual([true, 1, 'string']);
    const v1 = await connect('alice', { protocols: ['finishline.v1'] });
    v1.send({ type: 'subscribe', taskId: 'done', afterSeq: 1 });
    const plain = await v1.next(snapshotOf('done'));
    expect([plain.reset, plain.epoch, plain.task.seq]).toEqual([undefined, undefined, 1]);
    // Past the first re-send (100 ms): the client claimed the seq, nothing is re-sent.
    await new Promise((resolve) => setTimeout(resolve, 400));
    expect([v2.about('done').length, v1.about('done').length]).toEqual([1, 1]);
  });

  it('at the subscription cap a resubscribe of a followed task is a resync; another task gets too_many_subscriptions', async () => {
    const { server } = await start({ maxSubscriptionsPerSocket: 2 });
    for (const id of ['a', 'b', 'c']) await server.tasks.create({ id, owner: 'alice', kind: 'k' });
    const client = await connect();
    client.send({ type: 'subscribe', id: 's1', taskId: 'a', afterSeq: 0 });
    client.send({ type: 'subscribe', id: 's2', taskId: 'b', afterSeq: 0 });
    await client.next(snapshotOf('a'));
    await client.next(snapshotOf('b'));
    client.send({ type: 'subscribe', id: 's3', taskId: 'a', afterSeq: 0 });
    client.send({ type: 'subscribe', id: 's4', taskId: 'c', afterSeq: 0 });
    expect(await client.next((f) => f.type === 'error')).toMatchObject({
      code: 'too_many_subscriptions',
      requestId: 's4',
      taskId: 'c',
    });
    await client.sync();
    expect(client.about('a').map((f) => f.type)).toEqual(['snapshot', 'snapshot']);
    expect(client.frames.filter((f) => f.type === 'error')).toHaveLength(1);
  });

  it('a heartbeat names a task still loading at the subscribe’s afterSeq', async () => {
    const { server, store } = await start({ heartbeatIntervalMs: 100 });
    await server.tasks.create({ id: 'slow', owner: 'alice', kind: 'k' });
    const client = await connect();
    const release = holdTaskReads(store);
    client.send({ type: 'subscribe', taskId: 'slow', afterSeq: 7 });
    const from = client.frames.length;
    expect((await client.next((f) => f.type === 'heartbeat' && 'slow' in f.seqs, from)).seqs).toEqual({
      slow: 7,
    });
    release();
    expect((await client.next(snapshotOf('slow'))).reset).toBe(true);
  });

  it('a store failure is store_unavailable with a fixed message: an error frame naming the request and task, HTTP 503', async () => {
    const { server, store } = await start();
    await server.tasks.create({ id: 't', owner: 'alice', kind: 'k' });
    const client = await connect();
    store.getTask = async () => {
      throw new ProgressError('store_unavailable', 'connection to db-7.internal refused');
    };
    client.send({ type: 'subscribe', id: 's1', taskId: 't', afterSeq: 0 });
    const error = await client.next((f) => f.type === 'error');
    expect(error).toMatchObject({ code: 'store_unavailable', requestId: 's1', taskId: 't' });
    expect(error.message).not.toContain('db-7');
    for (const path of ['/progress/tasks/t', '/progress/tasks/t/events', '/progress/tasks/t/stream']) {
      const answer = await http('GET', path, { headers: bearer() });
      expect([path, answer.status, answer.json().error]).toEqual([
        path,
        503,
        { code: 'store_unavailable', message: error.message },
      ]);
    }
  });
});
