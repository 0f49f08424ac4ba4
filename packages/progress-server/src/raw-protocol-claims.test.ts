import { request as httpRequest } from 'node:http';
import { connect as netConnect } from 'node:net';
import { ProgressError } from '@finishline/core';
import { describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { startServer } from './testing/harness.js';
import { bearer } from './testing/raw-http.js';
import { errorOf, holdTaskReads, rawSession, snapshotOf } from './testing/raw-session.js';
import { Raw } from './testing/raw-socket.js';

/**
 * Claims of docs/protocol.md that no other raw test checked, each checked with a client written from the
 * document alone (plain `ws`, `node:http`): the server side uses the harness only to start a server and
 * drive tasks. Each test names the section it relies on.
 */

const session = rawSession();
const { clients, start, unauthenticated, connect, http } = session;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('the server answers every subscribe (doc: delivery rule 1, Errors)', () => {
  it('a subscribe whose authorize hook does not answer within upgradeTimeoutMs is answered timeout; a repeat is answered too', async () => {
    let hang = true;
    const { server } = await start({
      upgradeTimeoutMs: 200,
      authorize: (principal, task) => (hang ? new Promise(() => {}) : task.owner === principal.id),
    });
    await server.tasks.create({ id: 't', owner: 'alice', kind: 'k' });
    const client = await connect();
    client.send({ type: 'subscribe', id: 's1', taskId: 't', afterSeq: 0 });
    expect(await client.next((f) => f.type === 'error')).toMatchObject({
      code: 'timeout',
      requestId: 's1',
      taskId: 't',
    });
    // The client asks again (rule 1): answered again, not joined to the check that never answered.
    client.send({ type: 'subscribe', id: 's2', taskId: 't', afterSeq: 0 });
    expect(await client.next((f) => f.type === 'error' && f.requestId === 's2')).toMatchObject({
      code: 'timeout',
      taskId: 't',
    });
    // Counted as the HTTP API's 504 of the same hook is (docs/operations.md).
    expect((await server.metrics.handlerErrors.get()).values[0]?.value).toBe(2);
    hang = false;
    client.send({ type: 'subscribe', id: 's3', taskId: 't', afterSeq: 0 });
    expect((await client.next(snapshotOf('t'))).task.seq).toBe(0);
  });

  it('a renewal whose re-check of a followed task does not answer in time ends that subscription with timeout', async () => {
    let hang = false;
    const { server } = await start({
      upgradeTimeoutMs: 200,
      authorize: (principal, task) => (hang ? new Promise(() => {}) : task.owner === principal.id),
    });
    const task = await server.tasks.create({ id: 't', owner: 'alice', kind: 'k' });
    const client = await connect();
    client.send({ type: 'subscribe', id: 'w1', taskId: 't', afterSeq: 0 });
    await client.next(snapshotOf('t'));
    hang = true;
    const from = client.frames.length;
    client.send({ type: 'auth', token: 'alice', protocol: 2 });
    await client.next((f) => f.type === 'hello', from);
    await task.progress({ done: 1 });
    expect(await client.next((f) => f.type === 'error', from)).toMatchObject({
      code: 'timeout',
      requestId: 'w1',
      taskId: 't',
    });
    hang = false;
    client.send({ type: 'subscribe', taskId: 't', afterSeq: 0 });
    expect((await client.next(snapshotOf('t'), from)).task.seq).toBe(1);
  });
});

describe('a store that fails to read a followed task (doc: Errors, internal)', () => {
  it('a read of live events that fails with an error that is no ProgressError ends the subscription with internal, naming the task', async () => {
    const { server, store } = await start({ heartbeatIntervalMs: 100, storeRetryDelayMs: 50 });
    const task = await server.tasks.create({ id: 'r', owner: 'alice', kind: 'k' });
    const client = await connect();
    client.send({ type: 'subscribe', taskId: 'r', afterSeq: 0 });
    await client.next(snapshotOf('r'));
    // A store breaking its contract (a driver's own error, every read alike): the server reads it from
    // the store, its own recent events do not hold a commit it did not make.
    store.readEvents = async () => {
      throw new SyntaxError('Unexpected token in JSON at position 0');
    };
    await store.append(task.id, { type: 'progress', done: 1 });
    const error = await client.next((f) => f.type === 'error');
    expect(error).toMatchObject({ code: 'internal', taskId: 'r' });
    // No longer followed: the heartbeat says so (rule 6: subscribe again).
    const from = client.frames.length;
    expect((await client.next((f) => f.type === 'heartbeat', from)).seqs).toEqual({});
  });
});

describe('a store that fails once during a resume (doc: Errors, store_unavailable)', () => {
  it('a read failing after the resume sent events is read again from the last one sent: no error, no gap, no repeat', async () => {
    const { server, store } = await start({ storeRetryDelayMs: 50 });
    const task = await server.tasks.create({ id: 'r', owner: 'alice', kind: 'k' });
    for (let done = 1; done <= 5; done++) await store.append(task.id, { type: 'progress', done });
    // Seq 6 is committed while the resume reads seqs 2 to 5: it reads once more, and that read (and the
    // server's own read of seq 6 before it) fails as a restarting database does.
    const readEvents = store.readEvents.bind(store);
    let failures = 0;
    store.readEvents = async (taskId, afterSeq, limit) => {
      if (afterSeq === 5 && failures < 2) {
        failures += 1;
        throw new ProgressError('store_unavailable', 'restarting');
      }
      const events = await readEvents(taskId, afterSeq, limit);
      if (afterSeq === 1) await store.append(task.id, { type: 'progress', done: 6 });
      return events;
    };
    const client = await connect();
    client.send({ type: 'subscribe', id: 's1', taskId: 'r', afterSeq: 1 });
    await client.next((f) => (f.type === 'event' && f.event.seq === 6) || f.type === 'error');
    expect(failures).toBe(2);
    expect(client.frames.filter((f) => f.type === 'error')).toEqual([]);
    expect(client.frames.filter((f) => f.type === 'event').map((f) => f.event.seq)).toEqual([2, 3, 4, 5, 6]);
  });
});

describe('errors about a subscription already answered (doc: Errors, internal)', () => {
  it('a live read that fails ends the subscription with internal naming the task and the id of the subscribe that started it', async () => {
    const { server, store } = await start({ storeRetryDelayMs: 50 });
    const task = await server.tasks.create({ id: 'r', owner: 'alice', kind: 'k' });
    const client = await connect();
    client.send({ type: 'subscribe', id: 's1', taskId: 'r', afterSeq: 0 });
    await client.next(snapshotOf('r'));
    store.readEvents = async () => {
      throw new ProgressError('internal', 'row 1 is damaged');
    };
    await store.append(task.id, { type: 'progress', done: 1 });
    expect(await client.next((f) => f.type === 'error')).toEqual({
      type: 'error',
      code: 'internal',
      message: 'Internal error',
      requestId: 's1',
      taskId: 'r',
    });
  });
});

describe('frames and their answers (doc: Transport, Errors, error, Limits)', () => {
  it('a text frame that is not UTF-8 is invalid_frame and the socket stays open', async () => {
    await start();
    const client = await connect();
    client.ws.send(Buffer.from([0x7b, 0xff, 0x7d]), { binary: false });
    expect(await client.next((f) => f.type === 'error')).toMatchObject({ code: 'invalid_frame' });
    await client.sync();
    expect(client.ws.readyState).toBe(WebSocket.OPEN);
  });

  it('requestId is echoed from an invalid frame whose id is 1–64 characters, not from a longer id; server frame types sent by a client are unknown_frame', async () => {
    await start();
    const client = await connect();
    client.send({ type: 'subscribe', id: 'x'.repeat(64), taskId: 't', afterSeq: -1 });
    client.send({ type: 'subscribe', id: 'y'.repeat(65), taskId: 't', afterSeq: -1 });
    client.send({ type: 'hello', id: 'h1' });
    await client.sync();
    const errors = client.frames.filter((f) => f.type === 'error');
    expect(errors.map((f) => [f.code, f.requestId])).toEqual([
      ['invalid_frame', 'x'.repeat(64)],
      ['invalid_frame', undefined],
      ['unknown_frame', 'h1'],
    ]);
  });

  it('limits of client frames: seq 0, __proto__ ids, a seq above 2^53 − 1, arrays and a non-string type are invalid_frame', async () => {
    await start();
    const client = await connect();
    client.send({ type: 'ack', taskId: 't', seq: 0 });
    client.send({ type: 'subscribe', id: 'p', taskId: '__proto__', afterSeq: 0 });
    client.send({ type: 'subscribe', id: 'big', taskId: 't', afterSeq: 2 ** 53 });
    client.send('[1,2]');
    client.send('{"type":3}');
    await client.sync();
    const errors = client.frames.filter((f) => f.type === 'error');
    expect(errors.map((f) => f.code)).toEqual(Array(5).fill('invalid_frame'));
    expect(errors.slice(0, 3).map((f) => f.message.split(':')[1]?.trim())).toEqual([
      'seq',
      'taskId',
      'afterSeq',
    ]);
  });

  it('error messages quote neither a credential nor a long value, and fit in an error frame', async () => {
    await start();
    const refused = await unauthenticated();
    refused.send({ type: 'auth', token: 'bad:supersecret', protocol: 2 });
    expect((await refused.next(errorOf('unauthenticated'))).message).not.toContain('supersecret');
    expect((await refused.closed).code).toBe(4001);
    const client = await connect();
    client.send({ type: 'x'.repeat(50_000) });
    client.send({ type: 'subscribe', taskId: 'y'.repeat(50_000), afterSeq: 0 });
    await client.sync();
    const errors = client.frames.filter((f) => f.type === 'error');
    expect(errors.map((f) => f.code)).toEqual(['unknown_frame', 'invalid_frame']);
    for (const error of errors) expect(error.message.length).toBeLessThanOrEqual(4096);
    expect(errors.map((f) => f.message).join('')).not.toContain('x'.repeat(200));
  });

  it('auth.protocol may be 1 or 2 on either subprotocol; the hello names the selected one', async () => {
    await start();
    const v1 = await unauthenticated(['finishline.v1']);
    v1.send({ type: 'auth', token: 'alice', protocol: 2 });
    expect((await v1.next((f) => f.type === 'hello')).protocol).toBe(1);
    const v2 = await unauthenticated();
    v2.send({ type: 'auth', token: 'alice', protocol: 1 });
    expect((await v2.next((f) => f.type === 'hello')).protocol).toBe(2);
    // A renewal whose protocol is no integer is an invalid frame, not a close.
    v2.send({ type: 'auth', token: 'alice', protocol: '2' });
    expect(await v2.next(errorOf('invalid_frame'))).toBeDefined();
    await v2.sync();
    expect(v2.ws.readyState).toBe(WebSocket.OPEN);
  });

  it('a hello on a quiet server has no reconnectDelayMs (omitted at 100 ms or less)', async () => {
    await start();
    const client = await connect();
    expect(Object.keys(client.frames[0]!).sort()).toEqual([
      'epoch',
      'heartbeatIntervalMs',
      'protocol',
      'serverId',
      'type',
    ]);
  });
});

describe('subscriptions (doc: subscribe, unsubscribe, snapshot triggers, too_many_subscriptions)', () => {
  it('a backlog above maxReplayEvents is answered on the socket with a snapshot, one within it with the events', async () => {
    const { server } = await start({ maxReplayEvents: 3 });
    const task = await server.tasks.create({ id: 't', owner: 'alice', kind: 'k' });
    for (let done = 1; done <= 6; done++) await task.progress({ done });
    const far = await connect();
    far.send({ type: 'subscribe', taskId: 't', afterSeq: 1 });
    expect(await far.next(snapshotOf('t'))).toMatchObject({ task: { seq: 6 } });
    expect((await far.next(snapshotOf('t'))).reset).toBeUndefined();
    const near = await connect();
    near.send({ type: 'subscribe', taskId: 't', afterSeq: 4 });
    await near.next((f) => f.type === 'event' && f.event.seq === 6);
    expect(near.about('t').map((f) => f.event?.seq)).toEqual([5, 6]);
  });

  it('while a task loads, a refusal answers each distinct id once, the subscribe of another afterSeq that restarted the load too', async () => {
    const { store } = await start();
    const release = holdTaskReads(store);
    const client = await connect();
    client.send({ type: 'subscribe', id: 's1', taskId: 'missing', afterSeq: 0 });
    client.send({ type: 'subscribe', id: 's2', taskId: 'missing', afterSeq: 0 });
    client.send({ type: 'subscribe', id: 's2', taskId: 'missing', afterSeq: 0 });
    client.send({ type: 'subscribe', id: 's3', taskId: 'missing', afterSeq: 5 });
    await client.sync();
    release();
    await client.next((f) => f.type === 'error' && f.requestId === 's3');
    await client.sync();
    expect(client.about('missing').map((f) => [f.code, f.requestId])).toEqual([
      ['task_not_found', 's1'],
      ['task_not_found', 's2'],
      ['task_not_found', 's3'],
    ]);
  });

  it('an unsubscribe while the task loads, then a subscribe again: answered; an unsubscribe gets no reply and stops terminal re-sends', async () => {
    const { server, store } = await start();
    const task = await server.tasks.create({ id: 't', owner: 'alice', kind: 'k' });
    const release = holdTaskReads(store);
    const client = await connect();
    client.send({ type: 'subscribe', id: 'u1', taskId: 't', afterSeq: 0 });
    client.send({ type: 'unsubscribe', taskId: 't' });
    client.send({ type: 'subscribe', id: 'u2', taskId: 't', afterSeq: 0 });
    await client.sync();
    release();
    expect((await client.next(snapshotOf('t'))).task.seq).toBe(0);
    await task.complete({ result: null });
    await client.next((f) => f.type === 'event' && f.event.type === 'completed');
    client.send({ type: 'unsubscribe', taskId: 't' });
    const after = await client.sync();
    await sleep(400); // past the first re-sends (100 ms, then 200 ms)
    await client.sync();
    expect(client.frames.slice(after).filter((f) => f.type !== 'pong')).toEqual([]);
    expect(client.about('t').filter((f) => f.type === 'event')).toHaveLength(1);
  });

  it('the principal cap counts the subscriptions of all its sockets: too_many_subscriptions with requestId and taskId', async () => {
    const { server } = await start({ maxSubscriptionsPerPrincipal: 2 });
    for (const id of ['a', 'b', 'c']) await server.tasks.create({ id, owner: 'alice', kind: 'k' });
    const one = await connect();
    const two = await connect();
    one.send({ type: 'subscribe', taskId: 'a', afterSeq: 0 });
    two.send({ type: 'subscribe', taskId: 'b', afterSeq: 0 });
    await one.next(snapshotOf('a'));
    await two.next(snapshotOf('b'));
    two.send({ type: 'subscribe', id: 'c1', taskId: 'c', afterSeq: 0 });
    expect(await two.next((f) => f.type === 'error')).toMatchObject({
      code: 'too_many_subscriptions',
      requestId: 'c1',
      taskId: 'c',
    });
  });

  it('renewals sent while one is checked: the newest is checked after it, the ones it superseded get no hello', async () => {
    const checked: string[] = [];
    await start({
      authenticateToken: async (token: string) => {
        checked.push(token);
        if (token === 'slow') await sleep(300);
        return { id: 'alice' };
      },
    });
    const client = await connect('first');
    const from = client.frames.length;
    for (const token of ['slow', 'b', 'c', 'd']) client.send({ type: 'auth', token, protocol: 2 });
    const hellos = () => client.frames.slice(from).filter((f) => f.type === 'hello').length;
    while (hellos() < 2) await client.next((f) => f.type === 'hello', client.frames.length);
    await client.sync();
    expect([checked, hellos()]).toEqual([['first', 'slow', 'd'], 2]);
  });
});

describe('refusals of the server and its options (doc: Authentication, Limits, hello)', () => {
  it('heartbeatIntervalMs above 300000 and maxSubscriptionsPerSocket above 885 are refused with invalid_input', async () => {
    for (const option of [{ heartbeatIntervalMs: 300_001 }, { maxSubscriptionsPerSocket: 886 }]) {
      await expect(startServer({ ...option })).rejects.toMatchObject({ code: 'invalid_input' });
    }
  });

  it('an address out of failed authentication attempts: HTTP 429 with Retry-After, its upgrade 429 too', async () => {
    await start({ authRateLimitPerAddressPerSecond: 1 });
    // The burst is 50 seconds of the rate: 50 failures at 1 per second.
    let answer = await http('GET', '/progress/tasks/t', { headers: bearer('bad') });
    for (let i = 0; i < 60 && answer.status === 401; i++)
      answer = await http('GET', '/progress/tasks/t', { headers: bearer('bad') });
    expect([answer.status, answer.json().error.code]).toEqual([429, 'rate_limited']);
    expect(Number(answer.headers['retry-after'])).toBeGreaterThan(0);
    // The upgrade too is refused before its credentials are looked at.
    const client = new Raw(session.env!.wsUrl);
    clients.push(client);
    await expect(client.open).rejects.toThrow('HTTP 429');
  });
});

describe('credentials and acks at the edges (doc: Credential expiry, hello, ack)', () => {
  it('a header credential already expired at the upgrade: no hello, token_expired + 4011 (version 1: unauthenticated + 4011)', async () => {
    await start();
    for (const [protocols, code] of [
      [['finishline.v2', 'finishline.v1'], 'token_expired'],
      [['finishline.v1'], 'unauthenticated'],
    ] as const) {
      const client = new Raw(session.env!.wsUrl, {
        headers: bearer('alice:-1000'),
        protocols: [...protocols],
      });
      clients.push(client);
      await client.open;
      expect((await client.closed).code).toBe(4011);
      expect(client.frames.map((f) => [f.type, f.code])).toEqual([['error', code]]);
    }
  });

  it('hello.reconnectDelayMs is open sockets / reconnectsPerSecond seconds', async () => {
    await start({ reconnectsPerSecond: 2 });
    const delays: number[] = [];
    for (let i = 0; i < 3; i++) delays.push((await connect()).frames[0]!.reconnectDelayMs);
    expect(delays).toEqual([500, 1000, 1500]);
  });

  it('an ack held behind a subscribe that is refused is dropped: the refusal is the one answer, nothing recorded', async () => {
    const { server, store } = await start();
    await server.tasks.create({ id: 'bobs', owner: 'bob', kind: 'k' });
    const client = await connect();
    client.send({ type: 'subscribe', id: 's1', taskId: 'bobs', afterSeq: 0 });
    client.send({ type: 'ack', taskId: 'bobs', seq: 1 });
    await client.next(errorOf('task_not_found'));
    await client.sync();
    expect(client.about('bobs').map((f) => [f.code, f.requestId])).toEqual([['task_not_found', 's1']]);
    expect((await store.getTask('bobs'))?.ackedSeq).toBe(0);
  });
});

describe('HTTP answers and upgrades (doc: Authentication, HTTP API)', () => {
  it('a refusal sent before a POST body has all arrived (413, 401, 415, 403) carries Connection: close, and the connection is closed', async () => {
    const { server } = await start();
    await server.tasks.create({ id: 't', owner: 'alice', kind: 'k' });
    for (const [status, headers] of [
      // A Content-Length above 16 KiB is refused 413 before authentication; chunked, the 401 comes first.
      [413, 'Content-Type: application/json'],
      [401, 'Content-Type: application/json\r\nTransfer-Encoding: chunked'],
      [415, 'Authorization: Bearer alice\r\nContent-Type: text/plain'],
      [403, 'Authorization: Bearer alice\r\nContent-Type: application/json\r\nOrigin: https://evil.example'],
      [403, 'Authorization: Bearer alice\r\nContent-Type: application/json\r\nCookie: session=alice'],
    ] as const) {
      const answer = await new Promise<string>((resolve, reject) => {
        const socket = netConnect(session.env!.port, '127.0.0.1', () =>
          socket.write(
            headers.includes('chunked')
              ? `POST /progress/tasks/t/cancel HTTP/1.1\r\nHost: x\r\n${headers}\r\n\r\na\r\n{"reason":\r\n`
              : `POST /progress/tasks/t/cancel HTTP/1.1\r\nHost: x\r\n${headers}\r\nContent-Length: 100000\r\n\r\n{"reason":`,
          ),
        );
        let text = '';
        socket.on('data', (chunk: Buffer) => {
          text += chunk.toString();
        });
        socket.on('close', () => resolve(text));
        socket.on('error', reject);
      });
      expect([answer.split('\r\n')[0], /\r\nconnection: close\r\n/i.test(answer)]).toEqual([
        expect.stringContaining(`HTTP/1.1 ${status}`),
        true,
      ]);
    }
  });

  it('an authorize hook that does not answer within upgradeTimeoutMs: 504 timeout on every task route, the stream and ack included', async () => {
    const { server } = await start({ upgradeTimeoutMs: 200, authorize: () => new Promise(() => {}) });
    await server.tasks.create({ id: 't', owner: 'alice', kind: 'k' });
    const answers = [];
    for (const path of ['/progress/tasks/t', '/progress/tasks/t/events', '/progress/tasks/t/stream'])
      answers.push(await http('GET', path, { headers: bearer() }));
    answers.push(
      await http('POST', '/progress/tasks/t/ack', {
        headers: { ...bearer(), 'content-type': 'application/json' },
        body: '{"seq":1}',
      }),
    );
    expect(answers.map((a) => [a.status, a.json().error.code])).toEqual(Array(4).fill([504, 'timeout']));
  });

  it('parameters out of their documented ranges are 400 invalid_input', async () => {
    const { server } = await start();
    await server.tasks.create({ id: 't', owner: 'alice', kind: 'k' });
    const json = { ...bearer(), 'content-type': 'application/json' };
    const answers = [];
    for (const path of [
      '/progress/tasks?status=bogus',
      '/progress/tasks?limit=0',
      '/progress/tasks?limit=1001',
      '/progress/tasks/t/events?afterSeq=-1',
      '/progress/tasks/t/events?afterSeq=1.5',
      '/progress/tasks/t/events?limit=1001',
      '/progress/tasks/t/stream?afterSeq=-1',
    ])
      answers.push(await http('GET', path, { headers: bearer() }));
    answers.push(await http('POST', '/progress/tasks/t/ack', { headers: json, body: '{"seq":0}' }));
    answers.push(await http('POST', '/progress/tasks/t/cancel', { headers: json, body: '{"reason":5}' }));
    expect(answers.map((a) => [a.status, a.json().error.code])).toEqual(
      Array(9).fill([400, 'invalid_input']),
    );
  });

  it('an upgrade whose authenticate hook does not answer within upgradeTimeoutMs is dropped without an answer', async () => {
    await start({ upgradeTimeoutMs: 200, authenticate: () => new Promise(() => {}) });
    const client = new Raw(session.env!.wsUrl, { headers: bearer() });
    clients.push(client);
    const error = await client.open.then(
      () => undefined,
      (e: Error) => e,
    );
    expect(error?.message).not.toMatch(/^HTTP/);
    expect((await client.closed).code).toBe(1006);
  });
});

describe('Server-Sent Events (doc: Server-Sent Events)', () => {
  it('a terminal frame id (!) at a seq the task did not end at gets a reset snapshot', async () => {
    const { server } = await start();
    const task = await server.tasks.create({ id: 't', owner: 'alice', kind: 'k' });
    await task.progress({ done: 1 });
    await task.progress({ done: 2 });
    const text = await sse('/progress/tasks/t/stream', { ...bearer(), 'last-event-id': '1!' }, (t) =>
      t.includes('data:'),
    );
    const data = text
      .split('\n')
      .filter((l) => l.startsWith('data: '))
      .map((l) => JSON.parse(l.slice(6)));
    expect(data[0]).toMatchObject({ type: 'snapshot', reset: true, task: { seq: 2 } });
  });

  it('a stream ends at the end of its lifetime without a terminal frame', async () => {
    const { server } = await start({ sseStreamLifetimeMs: 300 });
    await server.tasks.create({ id: 't', owner: 'alice', kind: 'k' });
    const text = await sse('/progress/tasks/t/stream', bearer());
    expect(text).toContain('"type":"snapshot"');
    expect(text).not.toContain('!');
  });
});

/** Reads an event stream until `until` holds for the text so far, or until it ends. */
function sse(
  path: string,
  headers: Record<string, string>,
  until: (text: string) => boolean = () => false,
): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(`${session.env!.httpUrl}${path}`, { headers }, (res) => {
      let text = '';
      res.on('data', (chunk: Buffer) => {
        text += chunk.toString();
        if (until(text)) {
          req.destroy();
          resolve(text);
        }
      });
      res.on('end', () => resolve(text));
    });
    req.on('error', reject);
    req.end();
  });
}
