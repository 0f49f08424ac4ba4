import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { type AddressInfo, connect as netConnect } from 'node:net';
import { MemoryProgressStore } from '@finishline/core';
import { decodeClientFrame, decodeServerFrame } from '@finishline/core/internal';
import { describe, expect, it } from 'vitest';
import { WebSocketServer } from 'ws';
import { ProgressServer } from './progress-server.js';
import { epochHeldStore } from './testing/harness.js';
import { bearer, jsonHeaders, RAW_SOCKET_SERVER_OPTIONS } from './testing/raw-http.js';
import { errorOf, eventAt, holdTaskReads, rawSession } from './testing/raw-session.js';
import { type Frame, Raw } from './testing/raw-socket.js';

/**
 * An audit of docs/protocol.md's promise that it alone is enough to write a client: its examples
 * checked as written (every JSON frame decoded by the rules it states, its `curl` commands run against
 * a server, its example session replayed), and statements no other raw test checked. The client side is
 * plain `ws`, `node:http` and `curl`; the decoders of `@finishline/core/internal` are used only to
 * check that the document's own frames are valid by its rules (the document names them as the rules).
 */

const session = rawSession();
const { clients, start, unauthenticated, connect, http } = session;

const doc = readFileSync(new URL('../../../docs/protocol.md', import.meta.url), 'utf8');
/** The fenced blocks of the document in `lang`, in order. */
const blocks = (lang: string): string[] =>
  [...doc.matchAll(new RegExp(`\`\`\`${lang}\\n([\\s\\S]*?)\\n\\s*\`\`\``, 'g'))].map((m) => m[1] as string);
const sessionAt = doc.indexOf('## Example session');
/** The example session's frames, in order: `[direction, frame]`. */
const sessionFrames = (): Array<['→' | '←', Frame]> =>
  doc
    .slice(sessionAt)
    .split('\n')
    .filter((line) => line.startsWith('→ ') || line.startsWith('← '))
    .map((line) => [line.slice(0, 1) as '→' | '←', JSON.parse(line.slice(2)) as Frame]);

describe("the document's examples are valid by its own rules (doc: Example session, Authentication, HTTP API)", () => {
  it('every frame of the example session, and the auth frame of Authentication, decodes', () => {
    const frames = sessionFrames();
    expect(frames.length).toBeGreaterThan(15);
    for (const [direction, frame] of frames) {
      const text = JSON.stringify(frame);
      if (direction === '→') {
        const decoded = decodeClientFrame(text);
        // The session's one invalid request is there to show its refusal.
        if (frame.afterSeq === -1) expect(decoded.ok).toBe(false);
        else expect([text, decoded.ok]).toEqual([text, true]);
      } else expect([text, decodeServerFrame(text).ok]).toEqual([text, true]);
    }
    const auth = blocks('json').find((b) => b.includes('"type":"auth"')) as string;
    expect(decodeClientFrame(auth.trim()).ok).toBe(true);
  });

  it('the example session replays against a server: the frames shown, with the shown fields', async () => {
    const { server } = await start({ serverId: 'replica-a', heartbeatIntervalMs: 15_000 });
    const task = await server.tasks.create({ id: 'taint-42', owner: 'alice', kind: 'batch_taint', total: 2 });
    await task.item({ key: 'node-1', ok: true });
    await task.progress({ current: 'node-2' });
    const shown = sessionFrames();
    const client = await connect('alice', ['finishline.v1']);
    const ignoreTimes = (f: Frame): Frame =>
      JSON.parse(JSON.stringify(f), (k, v) =>
        ['time', 'createdAt', 'updatedAt', 'finishedAt'].includes(k) && typeof v === 'number' ? 0 : v,
      );
    expect(ignoreTimes(client.frames[0] as Frame)).toEqual(ignoreTimes(shown[0]![1]));
    client.send(shown[1]![1]);
    const snapshot = await client.next((f) => f.type === 'snapshot');
    expect(ignoreTimes(snapshot)).toEqual(ignoreTimes(shown[2]![1]));
    // seq 3 and 4 as the session shows them; the client subscribed from 0 and got them live.
    await task.item({ key: 'node-2', ok: false, error: 'node is cordoned', current: null });
    const event3 = await client.next(eventAt('taint-42', 3));
    expect(ignoreTimes(event3)).toEqual(ignoreTimes(shown.find(([, f]) => f.event?.seq === 3)![1]));
    client.send({ type: 'ack', taskId: 'taint-42', seq: 3 });
    await task.complete({ message: '1 of 2 nodes tainted', result: { tainted: ['node-1'] } });
    const event4 = await client.next(eventAt('taint-42', 4));
    expect(ignoreTimes(event4)).toEqual(ignoreTimes(shown.find(([, f]) => f.event?.seq === 4)![1]));
    // Not acknowledged: re-sent, the same frame; its ack ends the re-sending.
    const from = client.frames.indexOf(event4) + 1;
    expect(await client.next(eventAt('taint-42', 4), from)).toEqual(event4);
    client.send({ type: 'ack', taskId: 'taint-42', seq: 4 });
    client.send({ type: 'unsubscribe', taskId: 'taint-42' });
    const quiet = await client.sync();
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(client.frames.slice(quiet).filter((f) => f.type !== 'heartbeat')).toEqual([]);
  });
});

/** Runs a `sh` command of the document as written, the example host replaced by the test server's. */
function sh(command: string): Promise<{ code: number; stdout: string }> {
  const script = command.replaceAll('https://app.example.com', session.env!.httpUrl);
  return new Promise((resolve) => {
    execFile(
      'sh',
      ['-c', script],
      { env: { ...process.env, TOKEN: 'alice' }, timeout: 10_000 },
      (error, stdout) =>
        resolve({ code: error === null ? 0 : ((error as { code?: number }).code ?? -1), stdout }),
    );
  });
}

describe("the document's curl commands work as written (doc: HTTP API, Server-Sent Events)", () => {
  /** The commands of the `sh` blocks, comments dropped, continuation lines joined. */
  const commands = blocks('sh').flatMap((block) =>
    block
      .replaceAll('\\\n', ' ')
      .split('\n')
      .filter((line) => line.startsWith('curl ')),
  );

  it('the HTTP examples: the running tasks, the snapshot, the events after seq 2, the cancel', async () => {
    const { server, store } = await start();
    const task = await server.tasks.create({ id: 'taint-42', owner: 'alice', kind: 'batch_taint', total: 2 });
    await task.item({ key: 'node-1', ok: true });
    await task.progress({ current: 'node-2' });
    await task.item({ key: 'node-2', ok: true });
    const epoch = await store.getEpoch();
    const [list, one, events, cancel] = commands.filter((c) => !c.startsWith('curl -N'));
    expect(commands).toHaveLength(5);
    const listed = await sh(list as string);
    expect([listed.code, JSON.parse(listed.stdout).tasks.map((t: Frame) => t.id)]).toEqual([0, ['taint-42']]);
    const snapshot = await sh(one as string);
    expect(JSON.parse(snapshot.stdout)).toMatchObject({ task: { id: 'taint-42', seq: 3 }, epoch });
    const page = JSON.parse((await sh(events as string)).stdout);
    expect([page.events.map((e: Frame) => e.seq), page.hasMore, page.epoch]).toEqual([[3], false, epoch]);
    const cancelled = JSON.parse((await sh(cancel as string)).stdout);
    expect(cancelled).toMatchObject({ taskId: 'taint-42', task: { status: 'cancelled', seq: 4 } });
    expect((await store.readEvents('taint-42', 3, 10))[0]).toMatchObject({
      type: 'cancelled',
      reason: 'wrong cluster',
    });
  });

  it('the stream example, and its resume with the Last-Event-ID its comment shows', async () => {
    const { server, store } = await start();
    const task = await server.tasks.create({ id: 'taint-42', owner: 'alice', kind: 'batch_taint', total: 2 });
    await task.item({ key: 'node-1', ok: true });
    await task.progress({ current: 'node-2' });
    const stream = commands.find((c) => c.startsWith('curl -N')) as string;
    const watched = sh(stream);
    await new Promise((resolve) => setTimeout(resolve, 300));
    await task.item({ key: 'node-2', ok: false, error: 'node is cordoned' });
    await task.complete({ result: { tainted: ['node-1'] } });
    const { code, stdout } = await watched;
    const epoch = (await store.getEpoch()) as string;
    const ids = stdout.split('\n').filter((l) => l.startsWith('id: '));
    expect([code, ids]).toEqual([0, [`id: 2~${epoch}`, `id: 3~${epoch}`, `id: 4~${epoch}!`]]);
    // "resume after a cut with -H 'Last-Event-ID: <last id seen>' (e.g. 3~5f0c…)"
    const resumed = await sh(stream.replace('curl -N', `curl -N -H 'Last-Event-ID: 3~${epoch}'`));
    expect(resumed.stdout.split('\n').filter((l) => l.startsWith('id: '))).toEqual([`id: 4~${epoch}!`]);
  });
});

describe('statements no raw test checked (doc: Versioning, auth, subscribe, unsubscribe, Limits, Errors)', () => {
  it('unsupported_protocol names the versions accepted, 1 and 2, on a first auth and on a renewal', async () => {
    await start();
    const first = await unauthenticated();
    first.send({ type: 'auth', token: 'alice', protocol: 3 });
    const refused = await first.next(errorOf('unsupported_protocol'));
    expect([refused.message.includes('1 and 2'), (await first.closed).code]).toEqual([true, 4002]);
    const open = await connect();
    open.send({ type: 'auth', token: 'alice', protocol: 7 });
    const renewal = await open.next(errorOf('unsupported_protocol'));
    expect([renewal.message.includes('1 and 2'), (await open.closed).code]).toEqual([true, 4002]);
  });

  it('auth.token is 1–8192 characters: 8192 authenticates, 8193 and the empty token are invalid first frames (4001)', async () => {
    await start({ authenticateToken: (token: string) => (token.length > 0 ? { id: 'alice' } : null) });
    const longest = await unauthenticated();
    longest.send({ type: 'auth', token: 'a'.repeat(8192), protocol: 2 });
    expect((await longest.next((f) => f.type === 'hello')).protocol).toBe(2);
    for (const token of ['a'.repeat(8193), '']) {
      const client = await unauthenticated();
      client.send({ type: 'auth', token, protocol: 2 });
      expect([(await client.next((f) => f.type === 'error')).code, (await client.closed).code]).toEqual([
        'unauthenticated',
        4001,
      ]);
    }
  });

  it('a subscribe of a followed task from a lower afterSeq is a resync: delivery restarts from it', async () => {
    const { server } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    for (const key of ['a', 'b', 'c']) await task.item({ key, ok: true });
    const client = await connect();
    client.send({ type: 'subscribe', taskId: task.id, afterSeq: 3 });
    await client.next((f) => f.type === 'snapshot');
    const from = await client.sync();
    client.send({ type: 'subscribe', taskId: task.id, afterSeq: 1 });
    await client.next(eventAt(task.id, 3), from);
    expect(
      client.frames
        .slice(from)
        .filter((f) => f.type === 'event')
        .map((f) => f.event.seq),
    ).toEqual([2, 3]);
  });

  it('an unsubscribe of a task the socket does not follow does nothing: no reply', async () => {
    await start();
    const client = await connect();
    const from = client.frames.length;
    client.send({ type: 'unsubscribe', id: 'u1', taskId: 'never-followed' });
    const after = await client.sync();
    expect(client.frames.slice(from, after - 1)).toEqual([]);
  });

  it('a request id of any characters is echoed as requestId', async () => {
    await start();
    const client = await connect();
    const id = 'é☃ \u0001"\\'.padEnd(64, '😀').slice(0, 64);
    client.send({ type: 'subscribe', id, taskId: 'missing', afterSeq: 0 });
    expect((await client.next(errorOf('task_not_found'))).requestId).toBe(id);
  });

  it('an auth frame from an address out of failed attempts: rate_limited, then 4008', async () => {
    // Upgrades without credentials run no hook here (no `authenticate`): only the auth frames are charged.
    await start({ authenticate: undefined, authRateLimitPerAddressPerSecond: 1 });
    const sockets = await Promise.all(Array.from({ length: 60 }, () => unauthenticated()));
    const outcomes: Array<[string, number]> = [];
    for (const socket of sockets) {
      socket.send({ type: 'auth', token: 'bad', protocol: 2 });
      const error = await socket.next((f) => f.type === 'error');
      outcomes.push([error.code, (await socket.closed).code]);
      if (error.code === 'rate_limited') break;
    }
    expect(outcomes.at(-1)).toEqual(['rate_limited', 4008]);
    expect(outcomes.slice(0, -1).every(([code, close]) => code === 'unauthenticated' && close === 4001)).toBe(
      true,
    );
  });

  it('a socket open at shutdown is closed with 1001', async () => {
    const { server } = await start();
    const client = await connect();
    const closing = server.close();
    expect((await client.closed).code).toBe(1001);
    await closing;
  });

  it('terminal events and snapshots: cancelled and interrupted carry their reason, the view its error code', async () => {
    const { server } = await start();
    const cancelled = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const interrupted = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const failed = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const client = await connect();
    for (const t of [cancelled, interrupted, failed])
      client.send({ type: 'subscribe', taskId: t.id, afterSeq: 0 });
    await client.sync();
    await client.next((f) => f.type === 'snapshot' && f.task.id === failed.id);
    await cancelled.cancel();
    await interrupted.interrupt('lease expired');
    await failed.fail({ code: 'boom', message: 'it broke' });
    const events = await Promise.all(
      [cancelled, interrupted, failed].map((t) => client.next(eventAt(t.id, 1))),
    );
    expect(events.map((f) => [f.event.type, f.event.reason, f.event.error])).toEqual([
      ['cancelled', null, undefined],
      ['interrupted', 'lease expired', undefined],
      ['failed', undefined, { code: 'boom', message: 'it broke' }],
    ]);
    for (const f of events) client.send({ type: 'ack', taskId: f.event.taskId, seq: 1 });
    const views = await Promise.all(
      [cancelled, interrupted, failed].map((t) =>
        http('GET', `/progress/tasks/${t.id}`, { headers: bearer() }),
      ),
    );
    expect(views.map((v) => [v.json().task.status, v.json().task.error?.code])).toEqual([
      ['cancelled', 'cancelled'],
      ['interrupted', 'interrupted'],
      ['failed', 'boom'],
    ]);
  });
});

describe('HTTP statements no raw test checked (doc: HTTP API)', () => {
  it('HEAD on a POST route is a wrong method: 405 with Allow: POST; a GET route answers 405 with Allow: GET, HEAD', async () => {
    const { server } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const head = await http('HEAD', `/progress/tasks/${task.id}/cancel`, { headers: bearer() });
    expect([head.status, head.headers.allow]).toEqual([405, 'POST']);
    const put = await http('PUT', `/progress/tasks/${task.id}`, { headers: bearer() });
    expect([put.status, put.headers.allow, put.json().error.code]).toEqual([
      405,
      'GET, HEAD',
      'invalid_input',
    ]);
  });

  it('a 409 task_finished names no status; a POST ack ignores fields it does not name', async () => {
    const { server } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.item({ key: 'a', ok: true });
    await task.fail({ code: 'boom', message: 'no' });
    const cancel = await http('POST', `/progress/tasks/${task.id}/cancel`, {
      headers: jsonHeaders(),
      body: '{}',
    });
    expect([cancel.status, cancel.json().error.code, /failed/.test(cancel.json().error.message)]).toEqual([
      409,
      'task_finished',
      false,
    ]);
    const ack = await http('POST', `/progress/tasks/${task.id}/ack`, {
      headers: jsonHeaders(),
      body: '{"seq": 2, "epoch": "another"}',
    });
    expect([ack.status, ack.json()]).toEqual([200, { taskId: task.id, seq: 2 }]);
  });

  it('an ack of a task the principal may not watch is 404 task_not_found, as the other routes', async () => {
    const { server } = await start();
    const task = await server.tasks.create({ owner: 'bob', kind: 'k' });
    await task.item({ key: 'a', ok: true });
    const ack = await http('POST', `/progress/tasks/${task.id}/ack`, {
      headers: jsonHeaders(),
      body: '{"seq":1}',
    });
    expect([ack.status, ack.json().error.code]).toEqual([404, 'task_not_found']);
  });

  it('during a shutdown livez answers 200 {"ok": true} and healthz {"ok": false} 503', async () => {
    const { server } = await start();
    expect((await http('GET', '/progress/healthz')).json().ok).toBe(true);
    // A socket open keeps the shutdown under way while the probes are asked.
    const client = await connect();
    const closing = server.close();
    const [health, live] = await Promise.all([
      http('GET', '/progress/healthz'),
      http('GET', '/progress/livez'),
    ]);
    expect([health.status, health.json().ok, live.status, live.json()]).toEqual([
      503,
      false,
      200,
      { ok: true },
    ]);
    await client.closed;
    await closing;
  });
});

describe('renewals (doc: After authentication)', () => {
  /** Tokens `alice` (every task of hers) and `alice~<taskId>,…` (only those): the same principal, other rights. */
  const scopedTokens = (token: string) => {
    const [id, scope] = token.split('~');
    return id === 'alice' ? { id, scope: scope?.split(',') } : null;
  };
  const scopedAuthorize = (
    principal: { id: string; scope?: string[] },
    task: { id: string; owner: string },
  ) => task.owner === principal.id && (principal.scope === undefined || principal.scope.includes(task.id));

  it('a renewal whose credential may no longer watch a followed task drops it with task_not_found and its taskId; nothing of it follows', async () => {
    const { server } = await start({ authenticateToken: scopedTokens, authorize: scopedAuthorize as never });
    const kept = await server.tasks.create({ id: 'kept', owner: 'alice', kind: 'k' });
    const dropped = await server.tasks.create({ id: 'dropped', owner: 'alice', kind: 'k' });
    const client = await connect('alice');
    client.send({ type: 'subscribe', id: 's1', taskId: 'kept', afterSeq: 0 });
    client.send({ type: 'subscribe', id: 's2', taskId: 'dropped', afterSeq: 0 });
    await client.next((f) => f.type === 'snapshot' && f.task.id === 'dropped');
    const from = client.frames.length;
    client.send({ type: 'auth', token: 'alice~kept', protocol: 2 });
    await client.next((f) => f.type === 'hello', from);
    const refusal = await client.next(errorOf('task_not_found'), from);
    expect(refusal.taskId).toBe('dropped');
    await dropped.progress({ done: 1 });
    await kept.progress({ done: 1 });
    await client.next(eventAt('kept', 1), from);
    const at = await client.sync();
    expect(client.frames.slice(from, at).filter((f) => f.event?.taskId === 'dropped')).toEqual([]);
    // The server no longer counts it followed: its heartbeat would name `kept` alone (rule 6); an ack is refused.
    client.send({ type: 'ack', taskId: 'dropped', seq: 1 });
    expect((await client.next(errorOf('invalid_input'), at)).taskId).toBe('dropped');
  });

  it('a late ack of a task left before a renewal is answered as an ack of a task not followed, and not recorded', async () => {
    const { server } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.complete();
    const client = await connect();
    client.send({ type: 'subscribe', taskId: task.id, afterSeq: 0 });
    await client.next((f) => f.type === 'snapshot');
    client.send({ type: 'unsubscribe', taskId: task.id });
    client.send({ type: 'auth', token: 'alice', protocol: 2 });
    await client.next((f) => f.type === 'hello', 1);
    const from = client.frames.length;
    client.send({ type: 'ack', taskId: task.id, seq: 1 });
    expect((await client.next((f) => f.type === 'error', from)).code).toBe('invalid_input');
    expect((await server.tasks.get(task.id))?.ackedSeq).toBe(0);
  });

  it('a renewal whose token hook does not answer in time: error timeout without taskId, the socket open, the next renewal checked', async () => {
    let hang = false;
    await start({
      upgradeTimeoutMs: 200,
      authenticateToken: (token: string) => (hang ? new Promise(() => {}) : { id: token }),
    });
    const client = await connect();
    hang = true;
    const from = client.frames.length;
    client.send({ type: 'auth', token: 'alice', protocol: 2 });
    const timeout = await client.next((f) => f.type === 'error', from);
    expect([timeout.code, 'taskId' in timeout, 'requestId' in timeout]).toEqual(['timeout', false, false]);
    hang = false;
    client.send({ type: 'auth', token: 'alice', protocol: 2 });
    expect((await client.next((f) => f.type === 'hello', from)).protocol).toBe(2);
  });
});

describe('upgrade refusals and ids (doc: Transport, Authentication, Limits)', () => {
  /** An upgrade request's refusal, read whole: status, headers and body. */
  const upgrade = (headers: Record<string, string>) =>
    http('GET', '/progress', {
      headers: {
        connection: 'Upgrade',
        upgrade: 'websocket',
        'sec-websocket-version': '13',
        'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==',
        ...headers,
      },
    });

  it('an upgrade refused is answered with the JSON error of its status: 400 unsupported_protocol, 401, 403', async () => {
    await start({ authenticateToken: undefined });
    const unsupported = await upgrade({ ...bearer(), 'sec-websocket-protocol': 'finishline.v9' });
    expect([unsupported.status, unsupported.json().error.code]).toEqual([400, 'unsupported_protocol']);
    const anonymous = await upgrade({ 'sec-websocket-protocol': 'finishline.v2' });
    expect([anonymous.status, anonymous.json().error.code]).toEqual([401, 'unauthenticated']);
    const foreign = await upgrade({ ...bearer(), origin: 'https://evil.example' });
    expect([foreign.status, foreign.json().error.code]).toEqual([403, 'forbidden']);
  });

  it('ids: constructor, prototype, 129 characters and characters outside ID_PATTERN are refused, 128 accepted', async () => {
    await start();
    const client = await connect();
    const refused = ['constructor', 'prototype', 'a'.repeat(129), 'a b', 'a~b', 'a!b'];
    for (const [i, taskId] of refused.entries())
      client.send({ type: 'subscribe', id: `r${i}`, taskId, afterSeq: 0 });
    client.send({ type: 'subscribe', id: 'ok', taskId: 'a'.repeat(128), afterSeq: 0 });
    const answers = await Promise.all(
      [...refused.map((_, i) => `r${i}`), 'ok'].map((id) => client.next((f) => f.requestId === id)),
    );
    expect(answers.map((f) => f.code)).toEqual([...refused.map(() => 'invalid_frame'), 'task_not_found']);
    for (const taskId of refused) {
      const answer = await http('GET', `/progress/tasks/${encodeURIComponent(taskId)}`, {
        headers: bearer(),
      });
      expect([taskId, answer.status, answer.json().error.code]).toEqual([taskId, 400, 'invalid_input']);
    }
  });
});

describe('a version-1 socket gets the frames of version 1 (doc: Versioning, snapshot)', () => {
  it('a cursor ahead of the task, and a renewed epoch: unmarked snapshots without epoch; the hello names no epoch', async () => {
    const { server, store } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.item({ key: 'a', ok: true });
    const client = await connect('alice', ['finishline.v1']);
    expect(client.frames[0]).not.toHaveProperty('epoch');
    client.send({ type: 'subscribe', taskId: task.id, afterSeq: 5 });
    const ahead = await client.next((f) => f.type === 'snapshot');
    expect(ahead).toEqual({ type: 'snapshot', task: expect.objectContaining({ seq: 1 }) });
    const from = client.frames.length;
    await store.renewEpoch();
    const renewed = await client.next((f) => f.type === 'snapshot', from);
    expect(renewed).toEqual({ type: 'snapshot', task: expect.objectContaining({ seq: 1 }) });
    // Every frame decodes by the version-1 rules: no field of version 2 anywhere.
    expect(client.frames.filter((f) => 'epoch' in f || 'reset' in f)).toEqual([]);
  });
});

describe("@finishline/server's documented defaults, as a client meets them (doc: hello, Limits, Errors)", () => {
  const defaults = { ...RAW_SOCKET_SERVER_OPTIONS, heartbeatIntervalMs: undefined };

  it('heartbeatIntervalMs 15000; 100 subscriptions per socket; 10 invalid frames close with 1008', async () => {
    const { server } = await start(defaults);
    const client = await connect();
    expect(client.frames[0]?.heartbeatIntervalMs).toBe(15_000);
    for (let i = 0; i < 101; i++) await server.tasks.create({ id: `t${i}`, owner: 'alice', kind: 'k' });
    for (let i = 0; i < 101; i++)
      client.send({ type: 'subscribe', id: `s${i}`, taskId: `t${i}`, afterSeq: 0 });
    const refusal = await client.next((f) => f.type === 'error');
    expect([refusal.code, refusal.requestId]).toEqual(['too_many_subscriptions', 's100']);
    for (let i = 0; i < 9; i++) client.send('not json');
    await client.sync();
    expect(client.ws.readyState).toBe(1);
    client.send('not json');
    expect((await client.closed).code).toBe(1008);
  });

  it('a burst of 200 frames per socket, then rate_limited (a streak of 50 violations, one per 100 ms at most: 4008); 100 sockets per principal, then too_many_sockets + 4009', async () => {
    await start(defaults);
    const client = await connect();
    // Far more than the burst: the refill (100 per second) cannot cover them however slowly they are read.
    for (let i = 0; i < 400; i++) client.send({ type: 'ping', id: `p${i}` });
    await client.next((f) => f.requestId === 'p399');
    const pongs = client.frames.filter((f) => f.type === 'pong').length;
    expect(pongs).toBeGreaterThanOrEqual(199); // the hello's auth frame took a token too
    expect(pongs).toBeLessThan(400);
    expect(client.frames.filter(errorOf('rate_limited'))).toHaveLength(400 - pongs);
    // One batch is not yet a streak; going on regardless is (50 violations, each at least 100 ms after the
    // last): the close ends that socket, and its slot is free again.
    const startedAt = Date.now();
    let n = 0;
    const flood = setInterval(() => {
      for (let i = 0; i < 10; i++) client.send({ type: 'ping', id: `r${n++}` });
    }, 20);
    try {
      expect((await client.closed).code).toBe(4008);
    } finally {
      clearInterval(flood);
    }
    expect(Date.now() - startedAt).toBeGreaterThanOrEqual(4500);
    await Promise.all(Array.from({ length: 100 }, () => connect()));
    const extra = await unauthenticated();
    extra.send({ type: 'auth', token: 'alice', protocol: 2 });
    expect([(await extra.next((f) => f.type === 'error')).code, (await extra.closed).code]).toEqual([
      'too_many_sockets',
      4009,
    ]);
  });

  it('a backlog of 1000 events is replayed; of 1001, answered with a snapshot (maxReplayEvents)', async () => {
    const { server } = await start(defaults);
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    for (let i = 0; i < 1001; i++) await task.progress({ done: i + 1 });
    const client = await connect();
    client.send({ type: 'subscribe', taskId: task.id, afterSeq: 1 });
    await client.next(eventAt(task.id, 1001));
    expect(client.frames.filter((f) => f.type === 'snapshot')).toEqual([]);
    // One more event: the same cursor is 1001 events behind.
    await task.progress({ done: 1002 });
    const other = await connect();
    other.send({ type: 'subscribe', taskId: task.id, afterSeq: 1 });
    const answer = await other.next((f) => f.type === 'snapshot' || f.type === 'event');
    expect([answer.type, answer.task?.seq]).toEqual(['snapshot', 1002]);
  });
});

describe("a socket opened during the server's first read of its store's epoch (doc: hello)", () => {
  it('gets its hello once the read returns, with the epoch; the frames sent meanwhile are answered after it', async () => {
    const { store, release, epoch } = epochHeldStore();
    const { server } = await start({ store });
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const client = await unauthenticated();
    client.send({ type: 'auth', token: 'alice', protocol: 2 });
    client.send({ type: 'subscribe', taskId: task.id, afterSeq: 0 });
    await new Promise((resolve) => setTimeout(resolve, 150));
    expect(client.frames).toEqual([]);
    release();
    await client.next((f) => f.type === 'snapshot');
    expect(client.frames.map((f) => [f.type, f.epoch])).toEqual([
      ['hello', await epoch],
      ['snapshot', await epoch],
    ]);
  });

  it('gets its hello without an epoch at most 2 s later when the read does not return', async () => {
    const { store } = epochHeldStore();
    await start({ store });
    const client = await unauthenticated();
    const opened = Date.now();
    client.send({ type: 'auth', token: 'alice', protocol: 2 });
    const hello = await client.next((f) => f.type === 'hello');
    expect([hello.protocol, 'epoch' in hello]).toEqual([2, false]);
    // Bounded loosely: the document's bound is 2 s; a server that never answered fails on the wait above.
    expect(Date.now() - opened).toBeLessThan(5_000);
  });
});

describe('shutdown (doc: Errors, closed; Close codes, 1001)', () => {
  it('an upgrade during a shutdown is refused with HTTP 503 closed; the open socket gets 1001', async () => {
    const { server } = await start();
    const open = await connect();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    open.send({ type: 'subscribe', taskId: task.id, afterSeq: 0 });
    await open.next((f) => f.type === 'snapshot');
    const closing = server.close();
    const refused = await http('GET', '/progress', {
      headers: {
        ...bearer(),
        connection: 'Upgrade',
        upgrade: 'websocket',
        'sec-websocket-version': '13',
        'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==',
        'sec-websocket-protocol': 'finishline.v2',
      },
    });
    expect([refused.status, refused.json().error.code]).toEqual([503, 'closed']);
    expect((await open.closed).code).toBe(1001);
    await closing;
  });
});

describe('more HTTP statements (doc: HTTP API)', () => {
  it("POST with a Cookie and no Origin is 403 even with allowedOrigins '*'; with '*' any Origin reads the answers", async () => {
    const { server } = await start({ allowedOrigins: '*' });
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const cookie = await http('POST', `/progress/tasks/${task.id}/cancel`, {
      headers: { ...jsonHeaders(), cookie: 'session=x' },
      body: '{}',
    });
    expect([cookie.status, cookie.json().error.code]).toEqual([403, 'forbidden']);
    const read = await http('GET', `/progress/tasks/${task.id}`, {
      headers: { ...bearer(), origin: 'https://anywhere.example' },
    });
    expect([read.status, read.headers['access-control-allow-origin']]).toEqual([
      200,
      'https://anywhere.example',
    ]);
  });

  it('GET /tasks calls authorize for each listed task, at most 8 calls at a time', async () => {
    let running = 0;
    let most = 0;
    const { server } = await start({
      authorize: async (principal, task) => {
        running += 1;
        most = Math.max(most, running);
        await new Promise((resolve) => setTimeout(resolve, 20));
        running -= 1;
        return task.owner === principal.id;
      },
    });
    for (let i = 0; i < 20; i++) await server.tasks.create({ owner: 'alice', kind: 'k' });
    const listed = await http('GET', '/progress/tasks', { headers: bearer() });
    expect([listed.json().tasks.length, most]).toEqual([20, 8]);
  });
});

describe('terminal re-sends (doc: What the server guarantees)', () => {
  it('an unacknowledged terminal event is re-sent after 100 ms, then 200 ms, 400 ms: never sooner', async () => {
    const { server } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const client = await connect();
    client.send({ type: 'subscribe', taskId: task.id, afterSeq: 0 });
    await client.next((f) => f.type === 'snapshot');
    const times: number[] = [];
    client.ws.on('message', (data) => {
      if (String(data).includes('"completed"')) times.push(Date.now());
    });
    await task.complete();
    await client.next(eventAt(task.id, 1));
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    const gaps = times.slice(1).map((t, i) => t - (times[i] as number));
    // Lower bounds only (a loaded machine delays, never hastens): 100, 200, 400 ms, with a few ms of timer slack.
    expect(gaps.length).toBeGreaterThanOrEqual(1);
    expect(gaps.length).toBeLessThanOrEqual(3);
    for (const [i, gap] of gaps.entries()) expect(gap).toBeGreaterThanOrEqual(100 * 2 ** i - 5);
  });
});

describe('late acks (doc: ack)', () => {
  it('a late ack after unsubscribe is recorded when at most the highest seq this socket was sent; a larger one records nothing; no reply', async () => {
    const { server } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.progress({ done: 1 });
    await task.progress({ done: 2 });
    const client = await connect();
    client.send({ type: 'subscribe', taskId: task.id, afterSeq: 0 });
    await client.next((f) => f.type === 'snapshot');
    client.send({ type: 'unsubscribe', taskId: task.id });
    await client.sync();
    await task.progress({ done: 3 });
    const from = client.frames.length;
    // Beyond what this socket was sent (seq 2): nothing recorded (not even seq 2), no reply.
    client.send({ type: 'ack', taskId: task.id, seq: 3 });
    await client.sync();
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect((await server.tasks.get(task.id))?.ackedSeq).toBe(0);
    client.send({ type: 'ack', taskId: task.id, seq: 2 });
    const after = await client.sync();
    expect(client.frames.slice(from, after).filter((f) => f.type !== 'pong')).toEqual([]);
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect((await server.tasks.get(task.id))?.ackedSeq).toBe(2);
  });
});

describe('answer shapes (doc: HTTP API route table, Server-Sent Events)', () => {
  it('each route answers exactly the fields its row names', async () => {
    const { server } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.item({ key: 'a', ok: true });
    const keys = async (method: string, path: string, body?: string) =>
      Object.keys((await http(method, path, { headers: jsonHeaders(), body: body ?? '' })).json()).sort();
    const base = `/progress/tasks/${task.id}`;
    expect(await keys('GET', '/progress/tasks')).toEqual(['tasks']);
    expect(await keys('GET', base)).toEqual(['epoch', 'task']);
    expect(await keys('GET', `${base}/events`)).toEqual(['epoch', 'events', 'hasMore', 'task']);
    expect(await keys('POST', `${base}/ack`, '{"seq":1}')).toEqual(['seq', 'taskId']);
    expect(await keys('POST', `${base}/cancel`, '')).toEqual(['task', 'taskId']);
  });

  it('a stream from a cursor equal to a running task’s seq starts with its unmarked snapshot', async () => {
    const { server, store } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.item({ key: 'a', ok: true });
    const epoch = await store.getEpoch();
    const text = await new Promise<string>((resolve, reject) => {
      const req = httpRequest(
        `${session.env!.httpUrl}/progress/tasks/${task.id}/stream`,
        { headers: { ...bearer(), 'last-event-id': `1~${epoch}` } },
        (res) => {
          let body = '';
          res.on('data', (chunk: Buffer) => {
            body += chunk.toString();
            if (body.includes('\ndata: ')) {
              req.destroy();
              resolve(body);
            }
          });
        },
      );
      req.on('error', reject);
      req.end();
    });
    const data = JSON.parse(
      text
        .split('\n')
        .find((l) => l.startsWith('data: '))!
        .slice(6),
    );
    expect(data).toEqual({ type: 'snapshot', task: expect.objectContaining({ seq: 1 }), epoch });
  });
});

describe('a WebSocketServer passed with a larger maxPayload (doc: Errors, frame_too_large)', () => {
  it('a message above maxPayloadBytes is answered frame_too_large and counts toward the invalid-frame limit', async () => {
    const wss = new WebSocketServer({ port: 0, host: '127.0.0.1', maxPayload: 1 << 20 });
    await new Promise<void>((resolve) => wss.once('listening', () => resolve()));
    const server = new ProgressServer({
      store: new MemoryProgressStore(),
      wss,
      ...RAW_SOCKET_SERVER_OPTIONS,
      allowedOrigins: '*',
      maxPayloadBytes: 2048,
      maxInvalidFrames: 2,
    });
    try {
      const { port } = wss.address() as AddressInfo;
      const client = new Raw(`ws://127.0.0.1:${port}/progress`, { headers: bearer() });
      clients.push(client);
      await client.next((f) => f.type === 'hello');
      client.send({ type: 'ping', id: 'big', pad: 'x'.repeat(4096) });
      const refusal = await client.next((f) => f.type === 'error');
      expect(refusal.code).toBe('frame_too_large');
      client.send({ type: 'ping', id: 'big', pad: 'x'.repeat(4096) });
      expect((await client.closed).code).toBe(1008);
    } finally {
      await server.close({ timeoutMs: 500 });
      await new Promise((resolve) => wss.close(resolve));
    }
  });
});

describe('the principal budget is shared by its sockets and HTTP requests (doc: Limits, HTTP API 429)', () => {
  it('requests that spent it leave the socket’s next frame refused with rate_limited and its requestId', async () => {
    await start({ rateLimitPerPrincipalPerSecond: 1, maxSubscriptionsPerPrincipal: 3 });
    const client = await connect();
    let status = 200;
    for (let i = 0; i < 6 && status !== 429; i++)
      status = (await http('GET', '/progress/tasks', { headers: bearer() })).status;
    expect(status).toBe(429);
    client.send({ type: 'ping', id: 'after-http' });
    const answer = await client.next((f) => f.requestId === 'after-http');
    expect([answer.type, answer.code]).toEqual(['error', 'rate_limited']);
  });
});

describe('the upgrade in absolute form (doc: Changes, HTTP API)', () => {
  it('an upgrade whose request target is in absolute form is routed by its path: 101 with the selected subprotocol', async () => {
    const { port } = await start();
    const head = await new Promise<string>((resolve, reject) => {
      const socket = netConnect(port, '127.0.0.1', () => {
        socket.write(
          'GET http://progress.example.com/progress HTTP/1.1\r\nHost: progress.example.com\r\n' +
            'Authorization: Bearer alice\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n' +
            'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n' +
            'Sec-WebSocket-Protocol: finishline.v2\r\n\r\n',
        );
      });
      let text = '';
      socket.on('data', (chunk) => {
        text += chunk.toString('latin1');
        if (text.includes('\r\n\r\n')) {
          socket.destroy();
          resolve(text.slice(0, text.indexOf('\r\n\r\n')));
        }
      });
      socket.on('error', reject);
    });
    expect(head.split('\r\n')[0]).toBe('HTTP/1.1 101 Switching Protocols');
    expect(head.toLowerCase()).toContain('sec-websocket-protocol: finishline.v2');
  });
});

describe('a store closed under the running server (doc: Errors, store_unavailable)', () => {
  it('a subscribe is answered store_unavailable with its requestId and taskId; an HTTP read 503 store_unavailable', async () => {
    const { server, store } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const client = await connect();
    await store.close();
    client.send({ type: 'subscribe', id: 's1', taskId: task.id, afterSeq: 0 });
    const refusal = await client.next((f) => f.type === 'error');
    expect([refusal.code, refusal.requestId, refusal.taskId]).toEqual(['store_unavailable', 's1', task.id]);
    const read = await http('GET', `/progress/tasks/${task.id}`, { headers: bearer() });
    expect([read.status, read.json().error.code]).toEqual([503, 'store_unavailable']);
  });
});

describe("another principal's task (doc: Example session, HTTP API)", () => {
  it('is refused on the socket exactly as a task that does not exist: the same code and message', async () => {
    const { server } = await start();
    await server.tasks.create({ id: 'bobs', owner: 'bob', kind: 'k' });
    const client = await connect();
    client.send({ type: 'subscribe', id: 'a', taskId: 'bobs', afterSeq: 0 });
    client.send({ type: 'subscribe', id: 'b', taskId: 'nobodys', afterSeq: 0 });
    const [theirs, missing] = await Promise.all(
      ['a', 'b'].map((id) => client.next((f) => f.requestId === id)),
    );
    expect([theirs?.code, theirs?.message.replace('bobs', 'X')]).toEqual([
      missing?.code,
      missing?.message.replace('nobodys', 'X'),
    ]);
    expect(theirs?.code).toBe('task_not_found');
  });
});

describe('the socket cap at the upgrade (doc: Close codes, 4009)', () => {
  it('a socket authenticated by its upgrade beyond the cap gets too_many_sockets, no hello, then 4009', async () => {
    await start({ maxSocketsPerPrincipal: 1 });
    const first = new Raw(session.env!.wsUrl, { headers: bearer() });
    clients.push(first);
    await first.next((f) => f.type === 'hello');
    const second = new Raw(session.env!.wsUrl, { headers: bearer() });
    clients.push(second);
    const { code } = await second.closed;
    expect([second.frames.map((f) => [f.type, f.code]), code]).toEqual([
      [['error', 'too_many_sockets']],
      4009,
    ]);
  });
});

describe('subscribes pipelined behind auth (doc: Before authentication, Limits)', () => {
  /** A subscribe as the document sizes them: a task id of 128 characters, a seq of 16 digits. */
  const subscribe = (id: string, index: number) => ({
    type: 'subscribe',
    id,
    taskId: String(index).padStart(128, 't'),
    afterSeq: Number.MAX_SAFE_INTEGER,
  });
  /** A socket whose `auth` frame is checked for 300 ms, `frames` sent right behind it. */
  const pipelined = async (frames: Array<Frame | string>) => {
    await start({
      maxSubscriptionsPerSocket: 200,
      authenticateToken: async (token: string) => {
        await new Promise((resolve) => setTimeout(resolve, 300));
        return { id: token };
      },
    });
    const client = await unauthenticated(['finishline.v2']);
    client.send({ type: 'auth', token: 'alice', protocol: 2 });
    for (const frame of frames) client.send(frame);
    return client;
  };

  it('200 fit in the 64 KiB held with ASCII ids at the length limits (260 bytes each)', async () => {
    const frames = Array.from({ length: 200 }, (_, i) => subscribe(String(i).padStart(64, 'r'), i));
    expect(JSON.stringify(frames[0])).toHaveLength(260);
    const client = await pipelined(frames);
    await client.next((f) => f.requestId === String(199).padStart(64, 'r'));
    expect(client.frames.filter((f) => f.type === 'error').map((f) => f.code)).toEqual(
      new Array(200).fill('task_not_found'),
    );
  });

  it('200 fit with printable ASCII ids JSON escapes (324 bytes each)', async () => {
    const frames = Array.from({ length: 200 }, (_, i) => subscribe('"'.repeat(64), i));
    expect(Buffer.byteLength(JSON.stringify(frames[0]))).toBe(324);
    const client = await pipelined(frames);
    await client.next(() => client.frames.filter((f) => f.type === 'error').length === 200);
    expect(client.frames.filter((f) => f.type === 'error').map((f) => f.code)).toEqual(
      new Array(200).fill('task_not_found'),
    );
  });

  it('of the largest (580 bytes, every id character escaped), 112 fit; a 113th closes with 1008', async () => {
    // Control characters JSON escapes as \u00XX (6 bytes), not \b \t \n \f \r; the last two tell ids apart.
    const sixBytes = [1, 2, 3, 4, 5, 6, 7, 11, 14, 15, 16, 17, 18, 19, 20].map((c) => String.fromCharCode(c));
    const escaped = (i: number) =>
      '\u0001'.repeat(62) + sixBytes[Math.floor(i / sixBytes.length)] + sixBytes[i % sixBytes.length];
    const frames = Array.from({ length: 113 }, (_, i) => subscribe(escaped(i), i));
    expect(Buffer.byteLength(JSON.stringify(frames[0]))).toBe(580);
    const held = await pipelined(frames.slice(0, 112));
    await held.next((f) => f.requestId === escaped(111));
    expect(held.frames.filter((f) => f.type === 'error')).toHaveLength(112);
    await held.close();
    await session.env?.close();
    const refused = await pipelined(frames);
    expect(await refused.closed).toEqual({
      code: 1008,
      reason: 'too many frames before authentication completed',
    });
    expect(refused.frames).toEqual([]);
  });

  it('counts the bytes as sent: 200 that fit as JSON.stringify writes them close 1008 with each / escaped', async () => {
    // `\/` is a legal JSON escape that JSON.stringify never writes and some encoders do (PHP's
    // json_encode by default): the same 200 subscribes take some 387 bytes each written so, 77 KB together.
    const frames = Array.from({ length: 200 }, (_, i) => ({
      type: 'subscribe',
      id: String(i).padStart(64, 'r'),
      taskId: String(i).padStart(128, '/'),
      afterSeq: Number.MAX_SAFE_INTEGER,
    }));
    const escaped = frames.map((frame) => JSON.stringify(frame).replaceAll('/', '\\/'));
    expect(JSON.stringify(frames[0])).toHaveLength(260);
    expect(Buffer.byteLength(escaped[0] as string)).toBe(387);
    const refused = await pipelined(escaped);
    expect(await refused.closed).toEqual({
      code: 1008,
      reason: 'too many frames before authentication completed',
    });
  });
});

describe('CORS headers are those of routes (doc: HTTP API, CORS)', () => {
  it('an allowed Origin gets them on every answer of a route, and none on a path that is no route', async () => {
    await start();
    const origin = { origin: 'https://app.example.com' };
    const preflight = { ...origin, 'access-control-request-method': 'GET' };
    const answers = {
      error: await http('GET', '/progress/tasks/nope', { headers: { ...origin, ...bearer() } }),
      unauthenticated: await http('GET', '/progress/tasks', { headers: origin }),
      noRoute: await http('GET', '/progress/nope', { headers: { ...origin, ...bearer() } }),
      webSocketPath: await http('GET', '/progress', { headers: { ...origin, ...bearer() } }),
      noRoutePreflight: await http('OPTIONS', '/progress/nope', { headers: preflight }),
    };
    expect(
      Object.fromEntries(
        Object.entries(answers).map(([name, a]) => [
          name,
          [a.status, a.headers['access-control-allow-origin'] ?? null],
        ]),
      ),
    ).toEqual({
      error: [404, 'https://app.example.com'],
      unauthenticated: [401, 'https://app.example.com'],
      noRoute: [404, null],
      webSocketPath: [426, null],
      noRoutePreflight: [404, null],
    });
  });
});

describe("the example session's refusals and its auth frame (doc: Example session)", () => {
  it('are answered with the frames shown, but for times and the server id', async () => {
    const shown = sessionFrames();
    const from = shown.findIndex(([, f]) => f.id === 's3');
    const { server } = await start({ revealTaskExistence: true, heartbeatIntervalMs: 15_000 });
    await server.tasks.create({ id: 'someone-elses-task', owner: 'bob', kind: 'batch_taint' });
    const client = await connect('alice', ['finishline.v1']);
    const ignore = (f: Frame): Frame => ({ ...f, ...(typeof f.time === 'number' ? { time: 0 } : {}) });
    // s3, s4, p1, and the auth frame of a browser that cannot send the cookie.
    expect(shown.length - from).toBe(8);
    for (let index = from; index + 1 < shown.length; index += 2) {
      const [toServer, request] = shown[index]!;
      const [toClient, answer] = shown[index + 1]!;
      expect([toServer, toClient]).toEqual(['→', '←']);
      if (request.type === 'auth') {
        const other = await session.unauthenticated(['finishline.v1']);
        other.send(request);
        const hello = await other.next((f) => f.type === 'hello');
        expect({ ...hello, serverId: 'replica-b' }).toEqual(answer);
        continue;
      }
      const at = client.frames.length;
      client.send(request);
      expect(ignore(await client.next((f) => f.type !== 'heartbeat', at))).toEqual(ignore(answer));
    }
  });
});

describe('refused upgrade credentials on a server that takes auth frames (doc: Authentication 1)', () => {
  it('a refused cookie opens the socket to wait for auth (4004 without one); a refused bearer token is a 401', async () => {
    await start({
      authenticate: (req) => (req.headers.cookie === 'sid=good' ? { id: 'alice' } : null),
      authTimeoutMs: 300,
    });
    const open = (headers: Record<string, string>) => {
      const client = new Raw(session.env!.wsUrl, { headers, protocols: ['finishline.v2'] });
      clients.push(client);
      return client;
    };
    const cookie = open({ cookie: 'sid=good' });
    expect((await cookie.next((f) => f.type === 'hello')).type).toBe('hello');
    const silent = open({ cookie: 'sid=expired' });
    await silent.open;
    expect(await silent.closed).toEqual({ code: 4004, reason: 'no auth frame in time' });
    expect(silent.frames).toEqual([]);
    const renewed = open({ cookie: 'sid=expired' });
    await renewed.open;
    renewed.send({ type: 'auth', token: 'alice', protocol: 2 });
    expect(await renewed.next((f) => f.type === 'hello')).toMatchObject({ type: 'hello', protocol: 2 });
    const bearerRefused = await http('GET', '/progress', {
      headers: {
        connection: 'Upgrade',
        upgrade: 'websocket',
        'sec-websocket-version': '13',
        'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==',
        'sec-websocket-protocol': 'finishline.v2',
        authorization: 'Bearer bad',
      },
    });
    expect([bearerRefused.status, bearerRefused.json().error.code]).toEqual([401, 'unauthenticated']);
  });
});

describe('subscribes joined to one load (doc: subscribe)', () => {
  it('a refusal answers at most 64 distinct ids per load, the latest ones', async () => {
    const { store } = await start();
    const release = holdTaskReads(store);
    const client = await connect();
    const ids = Array.from({ length: 70 }, (_, i) => `s${i}`);
    for (const id of ids) client.send({ type: 'subscribe', id, taskId: 'missing', afterSeq: 0 });
    await client.sync();
    release();
    await client.next((f) => f.type === 'error' && f.requestId === 's69');
    await client.sync();
    expect(client.about('missing').map((f) => [f.code, f.requestId])).toEqual(
      ids.slice(-64).map((id) => ['task_not_found', id]),
    );
  });
});

describe('the names the document tells a TypeScript client to import (doc: introduction, Delivery rules, Errors)', () => {
  it('each is exported by the entry the document names', async () => {
    const entries = {
      '@finishline/core': await import('@finishline/core'),
      '@finishline/core/internal': await import('@finishline/core/internal'),
    };
    const named: Array<[string, keyof typeof entries]> = [
      ['PROTOCOL_NAME', '@finishline/core'],
      ['PROTOCOL_NAME_V1', '@finishline/core'],
      ['PROTOCOL_VERSION', '@finishline/core'],
      ['PROTOCOL_VERSIONS', '@finishline/core'],
      ['LIMITS', '@finishline/core'],
      ['ID_PATTERN', '@finishline/core'],
      ['SSE_ID_SEPARATOR', '@finishline/core'],
      ['FATAL_CLOSE_CODES', '@finishline/core'],
      ['decodeServerFrame', '@finishline/core/internal'],
      ['decodeClientFrame', '@finishline/core/internal'],
      ['encodeFrame', '@finishline/core/internal'],
      ['WatchCursor', '@finishline/core/internal'],
      ['SSE_END_MARK', '@finishline/core/internal'],
      ['TERMINAL_RETRY_DEFAULTS', '@finishline/core/internal'],
    ];
    for (const [name, entry] of named) {
      expect([name, doc.includes(`\`${name}\``), name in entries[entry]]).toEqual([name, true, true]);
    }
    for (const name of ['WatchCursor', 'decodeServerFrame', 'TERMINAL_RETRY_DEFAULTS']) {
      expect([name, new RegExp(`\`${name}\`[^.]{0,40}\`@finishline/core\``).test(doc)]).toEqual([
        name,
        false,
      ]);
    }
  });
});
