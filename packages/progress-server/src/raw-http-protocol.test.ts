import { readFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { connect as netConnect } from 'node:net';
import { MemoryProgressStore } from '@finishline/core';
import { afterEach, describe, expect, it } from 'vitest';
import { HTTP_STATUS } from './http/http-request.js';
import { epochHeldStore, restorableStore, startServer, type TestServer } from './testing/harness.js';
import { bearer, jsonHeaders, type RawHttpAnswer, rawHttp, userTokens } from './testing/raw-http.js';

/**
 * A raw HTTP client written from docs/protocol.md alone (section "HTTP API" and "Server-Sent Events"):
 * `fetch`, `node:http` and `node:net`, nothing from the Finishline client. Each test checks statements
 * of the document against a real server over a memory store; the server side uses the harness only to
 * start the server and drive tasks; the plain `node:http` request is shared with raw-protocol-2.test.ts
 * in testing/raw-http.ts.
 */

const WAIT = 10_000;
// biome-ignore lint/suspicious/noExplicitAny: bodies are read as the document describes them.
type Json = Record<string, any>;

let env: TestServer | undefined;
afterEach(async () => {
  await env?.close();
  env = undefined;
});

async function start(overrides: Parameters<typeof startServer>[0] = {}): Promise<TestServer> {
  env = await startServer({
    authenticate: (req) => {
      const auth = req.headers.authorization;
      if (auth?.startsWith('Bearer ')) return userTokens(auth.slice(7));
      const cookie = req.headers.cookie?.match(/session=([^;]+)/)?.[1];
      return cookie === undefined ? null : userTokens(cookie);
    },
    allowedOrigins: ['https://app.example.com'],
    heartbeatIntervalMs: 60_000,
    ...overrides,
  });
  return env;
}

/** One request to the test's server, the whole answer read. */
const http = (method: string, path: string, opts?: Parameters<typeof rawHttp>[3]) =>
  rawHttp(env!.httpUrl, method, path, opts);

const ORIGIN = 'https://app.example.com';

/** An SSE message as the document describes it: `id:` and `data:` lines, comments, `retry:`. */
interface SseMessage {
  id?: string;
  data?: Json;
  comments: string[];
  retry?: number;
}

function parseSse(text: string): SseMessage[] {
  const messages: SseMessage[] = [];
  for (const block of text.split('\n\n')) {
    if (block === '') continue;
    const message: SseMessage = { comments: [] };
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) message.comments.push(line.slice(1).trim());
      else if (line.startsWith('id: ')) message.id = line.slice(4);
      else if (line.startsWith('data: ')) message.data = JSON.parse(line.slice(6));
      else if (line.startsWith('retry: ')) message.retry = Number(line.slice(7));
    }
    messages.push(message);
  }
  return messages;
}

interface Stream {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  ended: boolean;
}

/** Reads an event stream until `until` holds for the text so far, or it ends (then `ended`). */
function stream(
  path: string,
  headers: Record<string, string>,
  until: (text: string) => boolean = () => false,
): Promise<Stream> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`stream ${path}: no match in time`)), WAIT);
    const req = httpRequest(`${env!.httpUrl}${path}`, { headers }, (res) => {
      let text = '';
      const finish = (ended: boolean) => {
        clearTimeout(timer);
        req.destroy();
        resolve({ status: res.statusCode ?? 0, headers: res.headers, text, ended });
      };
      res.on('data', (chunk: Buffer) => {
        text += chunk.toString();
        if (until(text)) finish(false);
      });
      res.on('end', () => finish(true));
      res.on('error', () => finish(true));
    });
    req.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    req.end();
  });
}

const dataOf = (text: string) => parseSse(text).flatMap((m) => (m.data === undefined ? [] : [m.data]));

describe('HTTP API: requests and answers (doc: HTTP API)', () => {
  it('every answer, errors included, is application/json; charset=utf-8 with Cache-Control: no-store and the error body shape', async () => {
    const { server } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const answers = [
      await http('GET', `/progress/tasks/${task.id}`, { headers: bearer() }),
      await http('GET', '/progress/tasks/nope', { headers: bearer() }),
      await http('GET', `/progress/tasks/${task.id}`),
      await http('GET', '/progress/nothing-here', { headers: bearer() }),
      await http('DELETE', `/progress/tasks/${task.id}`, { headers: bearer() }),
    ];
    for (const answer of answers) {
      expect(answer.headers['content-type']).toBe('application/json; charset=utf-8');
      expect(answer.headers['cache-control']).toBe('no-store');
    }
    for (const error of answers.slice(1)) {
      const body = error.json();
      expect(Object.keys(body)).toEqual(['error']);
      expect(Object.keys(body.error).sort()).toEqual(['code', 'message']);
      expect(typeof body.error.message).toBe('string');
    }
    expect(answers.slice(1).map((a) => [a.status, a.json().error.code])).toEqual([
      [404, 'task_not_found'],
      [401, 'unauthenticated'],
      [404, 'invalid_input'],
      [405, 'invalid_input'],
    ]);
    expect(answers[3]!.json().error.message).toBe('No such route');
  });

  it('task ids are one percent-encoded path segment (ids may contain /); bad percent-encoding is 400 invalid_input', async () => {
    const { server } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k', id: 'team/a:b@c' });
    await task.progress({ done: 1 });
    const id = encodeURIComponent(task.id);
    const one = await http('GET', `/progress/tasks/${id}`, { headers: bearer() });
    expect([one.status, one.json().task.id]).toEqual([200, 'team/a:b@c']);
    const events = await http('GET', `/progress/tasks/${id}/events`, { headers: bearer() });
    expect(events.json().events.map((e: Json) => e.seq)).toEqual([1]);
    const bad = await http('GET', '/progress/tasks/%E0%A4%A', { headers: bearer() });
    expect([bad.status, bad.json().error.code]).toEqual([400, 'invalid_input']);
    const invalidId = await http('GET', `/progress/tasks/${encodeURIComponent('a b')}`, {
      headers: bearer(),
    });
    expect([invalidId.status, invalidId.json().error.code]).toEqual([400, 'invalid_input']);
  });

  it('a request target in absolute form is routed by its path', async () => {
    const { server, port } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const raw = await new Promise<string>((resolve, reject) => {
      const socket = netConnect(port, '127.0.0.1', () => {
        socket.write(
          `GET http://progress.example.com/progress/tasks/${task.id} HTTP/1.1\r\nHost: progress.example.com\r\n` +
            'Authorization: Bearer alice\r\nConnection: close\r\n\r\n',
        );
      });
      let text = '';
      socket.on('data', (chunk) => {
        text += chunk.toString();
      });
      socket.on('end', () => resolve(text));
      socket.on('error', reject);
    });
    expect(raw).toMatch(/^HTTP\/1\.1 200 /);
    expect(JSON.parse(raw.slice(raw.indexOf('\r\n\r\n') + 4)).task.id).toBe(task.id);
  });

  it('HEAD is accepted wherever GET is: the same status and headers, no body', async () => {
    const { server } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    for (const path of [
      '/progress/tasks',
      `/progress/tasks/${task.id}`,
      `/progress/tasks/${task.id}/events`,
      '/progress/healthz',
    ]) {
      const get = await http('GET', path, { headers: bearer() });
      const head = await http('HEAD', path, { headers: bearer() });
      expect([head.status, head.body, head.headers['content-type']]).toEqual([
        get.status,
        '',
        get.headers['content-type'],
      ]);
    }
    const missing = await http('HEAD', '/progress/tasks/nope', { headers: bearer() });
    expect([missing.status, missing.body]).toEqual([404, '']);
  });

  it('trailing slashes are no route: 404 No such route', async () => {
    const { server } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    for (const path of [
      '/progress/tasks/',
      `/progress/tasks/${task.id}/`,
      `/progress/tasks/${task.id}/events/`,
      `/progress/tasks/${task.id}/stream/`,
    ]) {
      const answer = await http('GET', path, { headers: bearer() });
      expect([path, answer.status, answer.json().error]).toEqual([
        path,
        404,
        { code: 'invalid_input', message: 'No such route' },
      ]);
    }
  });
});

describe('HTTP API: the routes (doc: HTTP API route table)', () => {
  it('GET /tasks: the principal own tasks newest first, status filter, limit 1–1000 (default 50)', async () => {
    const { server } = await start();
    const first = await server.tasks.create({ owner: 'alice', kind: 'k' });
    await new Promise((r) => setTimeout(r, 5));
    const second = await server.tasks.create({ owner: 'alice', kind: 'k' });
    await new Promise((r) => setTimeout(r, 5));
    const third = await server.tasks.create({ owner: 'alice', kind: 'k' });
    await server.tasks.create({ owner: 'bob', kind: 'k' });
    await third.fail({ code: 'boom', message: 'no' });
    await second.complete();
    const all = await http('GET', '/progress/tasks', { headers: bearer() });
    expect(all.json().tasks.map((t: Json) => t.id)).toEqual([third.id, second.id, first.id]);
    const some = await http('GET', '/progress/tasks?status=running,failed', { headers: bearer() });
    expect(some.json().tasks.map((t: Json) => t.id)).toEqual([third.id, first.id]);
    const one = await http('GET', '/progress/tasks?limit=1', { headers: bearer() });
    expect(one.json().tasks.map((t: Json) => t.id)).toEqual([third.id]);
    for (const query of ['limit=0', 'limit=1001', 'limit=x', 'status=bogus']) {
      const bad = await http('GET', `/progress/tasks?${query}`, { headers: bearer() });
      expect([query, bad.status, bad.json().error.code]).toEqual([query, 400, 'invalid_input']);
    }
    expect((await http('GET', '/progress/tasks?limit=1000', { headers: bearer() })).status).toBe(200);
    for (let i = 0; i < 52; i++) await server.tasks.create({ owner: 'carol', kind: 'k' });
    const carol = await http('GET', '/progress/tasks', { headers: bearer('carol') });
    expect(carol.json().tasks).toHaveLength(50);
  });

  it('GET /tasks lists the principal own tasks less those authorize refuses it to watch', async () => {
    const { server } = await start({
      authorize: (principal, task) => principal.id === task.owner && task.kind !== 'secret',
    });
    const open = await server.tasks.create({ owner: 'alice', kind: 'k' });
    await server.tasks.create({ owner: 'alice', kind: 'secret' });
    const list = await http('GET', '/progress/tasks', { headers: bearer() });
    expect(list.json().tasks.map((t: Json) => t.id)).toEqual([open.id]);
  });

  it('GET /tasks/:id is {task, epoch}: a TaskView with the documented fields', async () => {
    const { server, store } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'batch_taint', total: 2 });
    await task.item({ key: 'node-1', ok: true });
    const body = (await http('GET', `/progress/tasks/${task.id}`, { headers: bearer() })).json();
    expect(Object.keys(body).sort()).toEqual(['epoch', 'task']);
    expect(body.epoch).toBe(await store.getEpoch());
    expect(Object.keys(body.task).sort()).toEqual(
      [
        'total',
        'done',
        'succeeded',
        'failed',
        'current',
        'message',
        'id',
        'kind',
        'status',
        'result',
        'error',
        'seq',
        'createdAt',
        'updatedAt',
        'finishedAt',
      ].sort(),
    );
    expect(body.task).toMatchObject({ status: 'running', total: 2, done: 1, succeeded: 1, seq: 1 });
  });

  it('GET /events: paging with hasMore, limit 1–1000, a cursor ahead of the task answered with task to take as a snapshot', async () => {
    const { server } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    for (let i = 1; i <= 5; i++) await task.progress({ done: i });
    const path = `/progress/tasks/${task.id}/events`;
    const page1 = (await http('GET', `${path}?afterSeq=0&limit=2`, { headers: bearer() })).json();
    expect([page1.events.map((e: Json) => e.seq), page1.hasMore]).toEqual([[1, 2], true]);
    const page2 = (await http('GET', `${path}?afterSeq=2&limit=100`, { headers: bearer() })).json();
    expect([page2.events.map((e: Json) => e.seq), page2.hasMore]).toEqual([[3, 4, 5], false]);
    const end = (await http('GET', `${path}?afterSeq=5`, { headers: bearer() })).json();
    expect([end.events, end.hasMore, end.task.seq]).toEqual([[], false, 5]);
    const ahead = (await http('GET', `${path}?afterSeq=9`, { headers: bearer() })).json();
    expect([ahead.events, ahead.hasMore, ahead.task.seq]).toEqual([[], false, 5]);
    for (const query of ['limit=1001', 'afterSeq=-1', 'afterSeq=1.5', 'afterSeq=x']) {
      const bad = await http('GET', `${path}?${query}`, { headers: bearer() });
      expect([query, bad.status, bad.json().error.code]).toEqual([query, 400, 'invalid_input']);
    }
    const event = page1.events[0];
    expect(event).toMatchObject({ taskId: task.id, seq: 1, type: 'progress' });
    expect(Object.keys(event.progress).sort()).toEqual(
      ['total', 'done', 'succeeded', 'failed', 'current', 'message'].sort(),
    );
  });

  // Found by a review: the first of a repeated parameter was taken and the others ignored, while a proxy
  // in front may read the last: the two judged one request by different values (parameter pollution).
  it('a query parameter a route reads, given twice, is 400 invalid_input naming it; an unknown one is ignored', async () => {
    const { server } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.progress({ done: 1 });
    const base = `/progress/tasks/${task.id}`;
    const cases = [
      ['/progress/tasks?limit=1&limit=1000', 'limit'],
      ['/progress/tasks?status=running&status=failed', 'status'],
      [`${base}/events?afterSeq=0&afterSeq=1`, 'afterSeq'],
      [`${base}/events?limit=1&afterSeq=0&limit=1`, 'limit'],
      [`${base}/stream?afterSeq=0&afterSeq=1`, 'afterSeq'],
      // Empty or not, every value counts: `?limit=&limit=1000` was served as the default page.
      ['/progress/tasks?limit=&limit=1000', 'limit'],
    ] as const;
    for (const [path, name] of cases) {
      const bad = await http('GET', path, { headers: bearer() });
      expect([path, bad.status, bad.json()]).toEqual([
        path,
        400,
        { error: { code: 'invalid_input', message: `${name} must be given at most once, got 2 times` } },
      ]);
    }
    const unknown = await http('GET', `${base}/events?x=1&x=2&afterSeq=0`, { headers: bearer() });
    expect([unknown.status, unknown.json().events.length]).toEqual([200, 1]);
  });

  it('POST cancel: {taskId, task}, reason ≤ 512 characters (no U+0000 or unpaired surrogate) or null, 404 for a task not watched, 413 above 16 KiB', async () => {
    const { server } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const path = `/progress/tasks/${task.id}/cancel`;
    const foreign = await http('POST', path, { headers: jsonHeaders('bob'), body: '{}' });
    expect([foreign.status, foreign.json().error.code]).toEqual([404, 'task_not_found']);
    const long = await http('POST', path, {
      headers: jsonHeaders(),
      body: JSON.stringify({ reason: 'x'.repeat(513) }),
    });
    expect([long.status, long.json().error.code]).toEqual([400, 'invalid_input']);
    // A reason no store keeps as sent is refused like a long one, as the store refuses such texts: it was
    // stored with U+FFFD in their place, the caller told nothing.
    for (const reason of ['a\u0000b', 'lone \uD800']) {
      const unstorable = await http('POST', path, {
        headers: jsonHeaders(),
        body: JSON.stringify({ reason }),
      });
      expect([reason, unstorable.status, unstorable.json().error]).toEqual([
        reason,
        400,
        { code: 'invalid_input', message: expect.stringContaining('U+0000') },
      ]);
    }
    expect((await server.tasks.get(task.id))?.status).toBe('running');
    const huge = await http('POST', path, {
      headers: jsonHeaders(),
      body: JSON.stringify({ reason: null, pad: 'x'.repeat(17 * 1024) }),
    });
    expect([huge.status, huge.json().error.code]).toEqual([413, 'invalid_input']);
    const ok = await http('POST', path, { headers: jsonHeaders(), body: '{"reason":null}' });
    expect(ok.status).toBe(200);
    expect(ok.json()).toEqual({ taskId: task.id, task: expect.objectContaining({ status: 'cancelled' }) });
    expect((await server.tasks.get(task.id))?.status).toBe('cancelled');
  });

  // docs/protocol.md said a body that is not JSON gets 400, and an empty body is not JSON: a client writer
  // sending a bare cancel (`curl -X POST -H 'content-type: application/json'`) could not tell which. An
  // empty body (or blank, or `null`) is taken as `{}`: a cancel without a reason; an ack without a seq.
  it('POST with an empty body is {}: a cancel without a reason, an ack refused for its seq', async () => {
    const { server } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const garbage = await http('POST', `/progress/tasks/${task.id}/cancel`, {
      headers: jsonHeaders(),
      body: 'nope',
    });
    expect([garbage.status, garbage.json().error]).toEqual([
      400,
      { code: 'invalid_input', message: 'The body must be JSON' },
    ]);
    const ack = await http('POST', `/progress/tasks/${task.id}/ack`, { headers: jsonHeaders(), body: '' });
    expect([ack.status, ack.json().error.code]).toEqual([400, 'invalid_input']);
    expect(ack.json().error.message).toContain('seq');
    for (const body of ['', ' \n', 'null']) {
      const other = await server.tasks.create({ owner: 'alice', kind: 'k' });
      const empty = await http('POST', `/progress/tasks/${other.id}/cancel`, {
        headers: jsonHeaders(),
        body,
      });
      expect([empty.status, empty.json().taskId]).toEqual([200, other.id]);
      expect((await server.tasks.get(other.id))?.status).toBe('cancelled');
    }
  });

  it('POST cancel by a principal allowed to cancel but not to watch: {taskId} alone', async () => {
    const { server } = await start({
      authorize: (principal, task, action) =>
        principal.id === task.owner || (principal.id === 'operator' && action === 'cancel'),
    });
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const answer = await http('POST', `/progress/tasks/${task.id}/cancel`, {
      headers: jsonHeaders('operator'),
      body: '{"reason":"kill switch"}',
    });
    expect([answer.status, answer.json()]).toEqual([200, { taskId: task.id }]);
  });

  it('403 forbidden: a task the principal may watch but not cancel; with revealTaskExistence, a task it may not see', async () => {
    const { server } = await start({
      revealTaskExistence: true,
      authorize: (principal, task, action) =>
        principal.id === task.owner || (principal.id === 'viewer' && action !== 'cancel'),
    });
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const cancel = await http('POST', `/progress/tasks/${task.id}/cancel`, {
      headers: jsonHeaders('viewer'),
      body: '{}',
    });
    expect([cancel.status, cancel.json().error.code]).toEqual([403, 'forbidden']);
    expect((await http('GET', `/progress/tasks/${task.id}`, { headers: bearer('viewer') })).status).toBe(200);
    const hidden = await http('GET', `/progress/tasks/${task.id}`, { headers: bearer('bob') });
    expect([hidden.status, hidden.json().error.code]).toEqual([403, 'forbidden']);
    const missing = await http('GET', '/progress/tasks/nope', { headers: bearer('bob') });
    expect([missing.status, missing.json().error.code]).toEqual([404, 'task_not_found']);
  });

  it('POST ack: {taskId, seq}, cumulative, 400 beyond the task seq, 415 without application/json', async () => {
    const { server } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    for (let i = 1; i <= 3; i++) await task.progress({ done: i });
    const path = `/progress/tasks/${task.id}/ack`;
    const ack = await http('POST', path, { headers: jsonHeaders(), body: '{"seq":3}' });
    expect([ack.status, ack.json()]).toEqual([200, { taskId: task.id, seq: 3 }]);
    const lower = await http('POST', path, { headers: jsonHeaders(), body: '{"seq":1}' });
    expect(lower.status).toBe(200);
    expect((await server.tasks.get(task.id))?.ackedSeq).toBe(3);
    for (const body of ['{"seq":4}', '{"seq":-1}', '{"seq":1.5}', '{"seq":"2"}', 'not json']) {
      const refused = await http('POST', path, { headers: jsonHeaders(), body });
      expect([body, refused.status, refused.json().error.code]).toEqual([body, 400, 'invalid_input']);
    }
    const plain = await http('POST', path, { headers: bearer(), body: '{"seq":1}' });
    expect([plain.status, plain.json().error.code]).toEqual([415, 'invalid_input']);
    const foreign = await http('POST', path, { headers: jsonHeaders('bob'), body: '{"seq":1}' });
    expect([foreign.status, foreign.json().error.code]).toEqual([404, 'task_not_found']);
    const get = await http('GET', path, { headers: bearer() });
    expect([get.status, get.headers.allow]).toEqual([405, 'POST']);
  });

  it('healthz: no authentication, no CORS headers, details only for an authenticated caller', async () => {
    await start(); // healthDetails: 'authenticated', the default
    const anonymous = await http('GET', '/progress/healthz', { headers: { origin: ORIGIN } });
    expect([anonymous.status, anonymous.json().ok]).toEqual([200, true]);
    expect(anonymous.headers['access-control-allow-origin']).toBeUndefined();
    const authed = await http('GET', '/progress/healthz', { headers: bearer() });
    expect(authed.json().ok).toBe(true);
    expect(Object.keys(authed.json()).length).toBeGreaterThan(Object.keys(anonymous.json()).length);
    const post = await http('POST', '/progress/healthz', { headers: jsonHeaders(), body: '{}' });
    expect([post.status, post.json().error.message]).toEqual([404, 'No such route']);
  });
});

describe('HTTP API: authentication, Origin, CORS, rate limits (doc: HTTP API)', () => {
  it('401 for no or a refused credential, with WWW-Authenticate; token_expired with error_description', async () => {
    const { server } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    for (const headers of [{}, bearer('bad')]) {
      const answer = await http('GET', `/progress/tasks/${task.id}`, { headers });
      expect([answer.status, answer.json().error.code]).toEqual([401, 'unauthenticated']);
      expect(answer.headers['www-authenticate']).toBe('Bearer realm="finishline"');
    }
    const expired = await http('GET', `/progress/tasks/${task.id}/events`, { headers: bearer('alice:-1') });
    expect([expired.status, expired.json().error.code]).toEqual([401, 'token_expired']);
    expect(expired.headers['www-authenticate']).toMatch(
      /^Bearer realm="finishline", error="invalid_token", error_description="[^"]+"$/,
    );
  });

  it('tokens in the URL are not accepted', async () => {
    const { server } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    for (const query of ['token=alice', 'access_token=alice']) {
      const answer = await http('GET', `/progress/tasks/${task.id}?${query}`);
      expect(answer.status).toBe(401);
    }
  });

  it('a refused Origin (Origin: null included) gets 403 forbidden before authentication, a 405 or a 503', async () => {
    const { server } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    for (const origin of ['https://evil.example', 'null']) {
      for (const [method, path] of [
        ['GET', `/progress/tasks/${task.id}`],
        ['HEAD', '/progress/tasks'],
        ['GET', `/progress/tasks/${task.id}/stream`],
        ['DELETE', `/progress/tasks/${task.id}/events`],
        ['POST', `/progress/tasks/${task.id}/ack`],
      ] as const) {
        const answer = await http(method, path, { headers: { origin } });
        expect([origin, method, path, answer.status]).toEqual([origin, method, path, 403]);
        if (method !== 'HEAD') expect(answer.json().error.code).toBe('forbidden');
      }
    }
    // Without Origin a GET passes (then needs authentication).
    expect((await http('GET', `/progress/tasks/${task.id}`)).status).toBe(401);
  });

  it('POST with a cookie and no Origin is 403; with the allowed Origin it passes', async () => {
    const { server } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.progress({ done: 1 });
    const headers = { cookie: 'session=alice', 'content-type': 'application/json' };
    const noOrigin = await http('POST', `/progress/tasks/${task.id}/ack`, { headers, body: '{"seq":1}' });
    expect([noOrigin.status, noOrigin.json().error.code]).toEqual([403, 'forbidden']);
    const withOrigin = await http('POST', `/progress/tasks/${task.id}/ack`, {
      headers: { ...headers, origin: ORIGIN },
      body: '{"seq":1}',
    });
    expect(withOrigin.status).toBe(200);
    // A cookie on a GET needs no Origin.
    expect(
      (await http('GET', `/progress/tasks/${task.id}`, { headers: { cookie: 'session=alice' } })).status,
    ).toBe(200);
  });

  it('CORS: allowed Origin gets Allow-Origin, Allow-Credentials, Expose-Headers and Vary on answers, errors and the stream', async () => {
    const { server } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.complete();
    const check = (headers: RawHttpAnswer['headers']) => {
      expect(headers['access-control-allow-origin']).toBe(ORIGIN);
      expect(headers['access-control-allow-credentials']).toBe('true');
      expect(headers['access-control-expose-headers']).toBe('WWW-Authenticate, Retry-After');
      expect(String(headers.vary)).toMatch(/(^|, *)Origin(,|$)/);
    };
    check(
      (await http('GET', `/progress/tasks/${task.id}`, { headers: { ...bearer(), origin: ORIGIN } })).headers,
    );
    check((await http('GET', `/progress/tasks/${task.id}`, { headers: { origin: ORIGIN } })).headers); // 401
    check(
      (
        await http('POST', `/progress/tasks/${task.id}/cancel`, {
          headers: { ...jsonHeaders(), origin: ORIGIN },
          body: '{}',
        })
      ).headers,
    ); // 409
    const live = await stream(`/progress/tasks/${task.id}/stream`, { ...bearer(), origin: ORIGIN });
    expect(live.status).toBe(200);
    check(live.headers);
  });

  it('CORS preflight: 204 with the route methods, the asked headers and Max-Age 600', async () => {
    const { server } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    for (const [path, methods] of [
      ['/progress/tasks', 'GET, HEAD'],
      [`/progress/tasks/${task.id}/events`, 'GET, HEAD'],
      [`/progress/tasks/${task.id}/ack`, 'POST'],
    ] as const) {
      const preflight = await http('OPTIONS', path, {
        headers: {
          origin: ORIGIN,
          'access-control-request-method': methods === 'POST' ? 'POST' : 'GET',
          'access-control-request-headers': 'authorization, content-type, last-event-id, x-app',
        },
      });
      expect([path, preflight.status]).toEqual([path, 204]);
      expect(preflight.headers['access-control-allow-methods']).toBe(methods);
      expect(preflight.headers['access-control-allow-headers']).toBe(
        'authorization, content-type, last-event-id, x-app',
      );
      expect(preflight.headers['access-control-max-age']).toBe('600');
      expect(preflight.headers['access-control-allow-origin']).toBe(ORIGIN);
    }
  });

  it('429 rate_limited with Retry-After: 1 once the principal frame budget is used', async () => {
    // The budget's burst is the larger of maxSubscriptionsPerPrincipal and one second of its rate.
    const { server } = await start({ rateLimitPerPrincipalPerSecond: 1, maxSubscriptionsPerPrincipal: 2 });
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const statuses: number[] = [];
    let limited: RawHttpAnswer | undefined;
    for (let i = 0; i < 5 && limited === undefined; i++) {
      const answer = await http('GET', `/progress/tasks/${task.id}`, { headers: bearer() });
      statuses.push(answer.status);
      if (answer.status === 429) limited = answer;
    }
    expect(statuses).toEqual([200, 200, 429]);
    expect(limited?.json().error.code).toBe('rate_limited');
    expect(limited?.headers['retry-after']).toBe('1');
    const stream429 = await http('GET', `/progress/tasks/${task.id}/stream`, { headers: bearer() });
    expect([stream429.status, stream429.json().error.code, stream429.headers['retry-after']]).toEqual([
      429,
      'rate_limited',
      '1',
    ]);
    const head429 = await http('HEAD', `/progress/tasks/${task.id}/stream`, { headers: bearer() });
    expect([head429.status, head429.headers['retry-after']]).toEqual([429, '1']);
    // Another principal has its own budget.
    expect((await http('GET', '/progress/tasks', { headers: bearer('bob') })).status).toBe(200);
  });

  it('503 closed during shutdown, after the Origin check', async () => {
    // The shutdown interrupts the running task it owns and waits (up to its deadline) for that write; a
    // store holding it keeps the server in its drain, its listener open, until the requests below are
    // answered. (Before, an open stream was to hold it, but nothing waits for streams: the close was over
    // and the listener shut before the request connected, and the checks, under an `if` an answer came,
    // never ran.)
    const store = new MemoryProgressStore();
    let release!: () => void;
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    const append = store.append.bind(store);
    store.append = async (...args: Parameters<typeof append>) => {
      if (args[1].type === 'interrupted') await gate;
      return append(...args);
    };
    const { server } = await start({ heartbeatIntervalMs: 50, store });
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const closing = server.close({ timeoutMs: 5000 });
    try {
      const during = await http('GET', `/progress/tasks/${task.id}`, { headers: bearer() });
      expect([during.status, during.json().error.code]).toEqual([503, 'closed']);
      const stream = await http('GET', `/progress/tasks/${task.id}/stream`, { headers: bearer() });
      expect([stream.status, stream.json().error.code]).toEqual([503, 'closed']);
      // The Origin is checked first: a forged request does not even learn the server is shutting down.
      const foreign = await http('GET', `/progress/tasks/${task.id}`, {
        headers: { ...bearer(), origin: 'https://evil.example' },
      });
      expect(foreign.status).toBe(403);
    } finally {
      release();
    }
    await closing;
    expect((await store.getTask(task.id))?.status).toBe('interrupted');
    env = undefined;
  });
});

describe('Server-Sent Events (doc: Server-Sent Events)', () => {
  it('headers, retry 1000–3000 ms then the hello comment in one block, frames with id <seq>~<epoch>', async () => {
    const { server, store } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.progress({ done: 1 });
    await task.progress({ done: 2 });
    const epoch = await store.getEpoch();
    const live = await stream(`/progress/tasks/${task.id}/stream`, bearer(), (t) => t.includes('"snapshot"'));
    expect(live.status).toBe(200);
    expect(live.headers['content-type']).toBe('text/event-stream; charset=utf-8');
    expect(live.headers['cache-control']).toBe('no-store, no-transform');
    expect(live.headers['x-accel-buffering']).toBe('no');
    const [first, second] = parseSse(live.text);
    expect(first!.retry).toBeGreaterThanOrEqual(1000);
    expect(first!.retry).toBeLessThanOrEqual(3000);
    expect(first!.comments).toEqual(['hello heartbeatIntervalMs=60000']);
    expect(first!.data).toBeUndefined();
    expect(second!.id).toBe(`2~${epoch}`);
    expect(second!.data).toMatchObject({ type: 'snapshot', task: { id: task.id, seq: 2 }, epoch });
    expect(second!.data!.reset).toBeUndefined();
  });

  it('live events follow the snapshot in order; after the terminal event the stream ends', async () => {
    const { server, store } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k', total: 2 });
    const epoch = await store.getEpoch();
    const reading = stream(`/progress/tasks/${task.id}/stream`, bearer());
    await new Promise((r) => setTimeout(r, 100));
    await task.item({ key: 'a', ok: true });
    await task.item({ key: 'b', ok: false, error: 'no' });
    await task.complete({ result: { n: 1 } });
    const done = await reading;
    expect(done.ended).toBe(true);
    const messages = parseSse(done.text).filter((m) => m.data !== undefined);
    expect(messages.map((m) => m.id)).toEqual([`0~${epoch}`, `1~${epoch}`, `2~${epoch}`, `3~${epoch}!`]);
    expect(messages.map((m) => m.data!.type)).toEqual(['snapshot', 'event', 'event', 'event']);
    expect(messages[3]!.data!.event).toMatchObject({ seq: 3, type: 'completed', result: { n: 1 } });
  });

  it('Last-Event-ID wins over afterSeq; both take <seq>~<epoch> or <seq>; the events after it, no snapshot', async () => {
    const { server, store } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    for (let i = 1; i <= 3; i++) await task.progress({ done: i });
    const epoch = await store.getEpoch();
    const path = `/progress/tasks/${task.id}/stream`;
    const until = (t: string) => t.includes(`id: 3~${epoch}`);
    const byHeader = await stream(
      `${path}?afterSeq=0`,
      { ...bearer(), 'last-event-id': `2~${epoch}` },
      until,
    );
    expect(dataOf(byHeader.text).map((f) => [f.type, f.event?.seq])).toEqual([['event', 3]]);
    const byQuery = await stream(`${path}?afterSeq=${encodeURIComponent(`1~${epoch}`)}`, bearer(), until);
    expect(dataOf(byQuery.text).map((f) => f.event?.seq)).toEqual([2, 3]);
    const seqAlone = await stream(`${path}?afterSeq=2`, bearer(), until);
    expect(dataOf(seqAlone.text).map((f) => f.event?.seq)).toEqual([3]);
    const atEnd = await stream(path, { ...bearer(), 'last-event-id': `3~${epoch}` }, (t) =>
      t.includes('"snapshot"'),
    );
    expect(dataOf(atEnd.text)).toEqual([
      { type: 'snapshot', task: expect.objectContaining({ seq: 3, status: 'running' }), epoch },
    ]);
  });

  it('an empty Last-Event-ID is taken as no header: afterSeq (else 0) is the cursor', async () => {
    // Before, an empty header (an EventSource polyfill's after an empty `id:`, a proxy's) was the cursor
    // itself, read as 0: the stream started over from a snapshot whatever afterSeq the URL carried.
    const { server } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    for (let i = 1; i <= 3; i++) await task.progress({ done: i });
    const path = `/progress/tasks/${task.id}/stream`;
    const byQuery = await stream(`${path}?afterSeq=2`, { ...bearer(), 'last-event-id': '' }, (t) =>
      t.includes('id: 3'),
    );
    expect(dataOf(byQuery.text).map((f) => [f.type, f.event?.seq])).toEqual([['event', 3]]);
    const fromStart = await stream(path, { ...bearer(), 'last-event-id': '' }, (t) =>
      t.includes('"snapshot"'),
    );
    expect(dataOf(fromStart.text).map((f) => [f.type, f.task?.seq])).toEqual([['snapshot', 3]]);
  });

  it('malformed cursors are refused with 400 invalid_input before the stream starts', async () => {
    const { server } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const path = `/progress/tasks/${task.id}/stream`;
    const ids = [
      '-1',
      '1.5',
      '9007199254740992',
      'x',
      '3~',
      '~abc',
      '3~bad epoch',
      '1e3',
      '3~a b',
      '3!!',
      '3!~e',
    ];
    for (const id of ids) {
      const answer = await http('GET', path, { headers: { ...bearer(), 'last-event-id': id } });
      expect([id, answer.status, answer.headers['content-type']]).toEqual([
        id,
        400,
        'application/json; charset=utf-8',
      ]);
      expect(answer.json().error.code).toBe('invalid_input');
      // The message states the whole form the stream writes, the terminal frame's end mark included: it
      // named <seq> and <seq>~<epoch> only, as if the ids of terminal frames were refused.
      expect(answer.json().error.message).toContain('<seq>~<epoch>, either followed by ! ');
    }
    const max = await stream(path, { ...bearer(), 'last-event-id': '9007199254740991' }, (t) =>
      t.includes('"reset":true'),
    );
    expect(max.status).toBe(200);
  });

  it('a cursor of another epoch or ahead of the task gets a reset snapshot; the stream splits the id at its first ~', async () => {
    const { server, store } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.progress({ done: 1 });
    const epoch = await store.getEpoch();
    const path = `/progress/tasks/${task.id}/stream`;
    for (const id of ['1~old-epoch', `5~${epoch}`, '2~old-epoch']) {
      const answer = await stream(path, { ...bearer(), 'last-event-id': id }, (t) =>
        t.includes('"snapshot"'),
      );
      expect([id, dataOf(answer.text)]).toEqual([
        id,
        [{ type: 'snapshot', task: expect.objectContaining({ seq: 1 }), epoch, reset: true }],
      ]);
      expect(parseSse(answer.text)[1]!.id).toBe(`1~${epoch}`);
    }
    // A cursor of 0 knows nothing in any epoch: a plain snapshot, as a subscribe from 0 gets.
    const fresh = await stream(path, { ...bearer(), 'last-event-id': '0~old-epoch' }, (t) =>
      t.includes('"snapshot"'),
    );
    expect(dataOf(fresh.text)).toEqual([
      { type: 'snapshot', task: expect.objectContaining({ seq: 1 }), epoch },
    ]);
  });

  it('an open stream starts over with a reset snapshot when the store epoch is renewed', async () => {
    const { server, store } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.progress({ done: 1 });
    const reading = stream(`/progress/tasks/${task.id}/stream`, bearer(), (t) => t.includes('"reset":true'));
    await new Promise((r) => setTimeout(r, 100));
    const renewed = await store.renewEpoch();
    const answer = await reading;
    const reset = dataOf(answer.text).find((f) => f.reset === true);
    expect(reset).toMatchObject({ type: 'snapshot', epoch: renewed, task: { seq: 1 } });
  });

  it('204 No Content (GET and HEAD) when the cursor is the terminal frame of an ended task; a reset snapshot when its epoch is another, or it lacks the end mark', async () => {
    const { server, store } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.progress({ done: 1 });
    await task.complete();
    const epoch = await store.getEpoch();
    const path = `/progress/tasks/${task.id}/stream`;
    for (const id of [`2~${epoch}!`, '2!']) {
      const get = await http('GET', path, { headers: { ...bearer(), 'last-event-id': id } });
      expect([id, get.status, get.body]).toEqual([id, 204, '']);
      const head = await http('HEAD', path, { headers: { ...bearer(), 'last-event-id': id } });
      expect([id, head.status]).toEqual([id, 204]);
    }
    // Another epoch's, or one at the end without the mark (its frame there may be of a purged run of the id).
    for (const id of ['2~old-epoch!', '2~old-epoch', `2~${epoch}`, '2']) {
      const other = await http('GET', path, { headers: { ...bearer(), 'last-event-id': id } });
      expect([id, other.status]).toEqual([id, 200]);
      expect(dataOf(other.body)).toEqual([
        {
          type: 'snapshot',
          task: expect.objectContaining({ seq: 2, status: 'completed' }),
          epoch,
          reset: true,
        },
      ]);
    }
    // From an earlier cursor: the events after it, ending with the terminal one, then the end.
    const rest = await http('GET', path, { headers: { ...bearer(), 'last-event-id': `1~${epoch}` } });
    expect(dataOf(rest.body).map((f) => [f.type, f.event?.type])).toEqual([['event', 'completed']]);
  });

  it('heartbeats are comments `: heartbeat <server time>` every heartbeatIntervalMs', async () => {
    const { server } = await start({ heartbeatIntervalMs: 50 });
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const before = Date.now();
    const live = await stream(
      `/progress/tasks/${task.id}/stream`,
      bearer(),
      (t) => (t.match(/: heartbeat /g) ?? []).length >= 2,
    );
    expect(live.text).toContain(': hello heartbeatIntervalMs=50\n');
    const beats = [...live.text.matchAll(/^: heartbeat (\d+)$/gm)].map((m) => Number(m[1]));
    expect(beats.length).toBeGreaterThanOrEqual(2);
    for (const time of beats) expect(time).toBeGreaterThanOrEqual(before - 1000);
  });

  it('the stream ends when its credential expires', async () => {
    const { server } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const live = await stream(`/progress/tasks/${task.id}/stream`, bearer('alice:400'));
    expect(live.ended).toBe(true);
    expect(dataOf(live.text).map((f) => f.type)).toEqual(['snapshot']);
  });

  it('a backlog above maxReplayEvents is answered with a snapshot first', async () => {
    const { server } = await start({ maxReplayEvents: 3 });
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    for (let i = 1; i <= 6; i++) await task.progress({ done: i });
    const live = await stream(`/progress/tasks/${task.id}/stream?afterSeq=1`, bearer(), (t) =>
      t.includes('"snapshot"'),
    );
    expect(dataOf(live.text)[0]).toMatchObject({ type: 'snapshot', task: { seq: 6 } });
  });

  it('refusals are JSON errors before the stream: 401, 404 for a task not watched, 429 too_many_sockets; HEAD takes no slot', async () => {
    const { server } = await start({ maxSocketsPerPrincipal: 1 });
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const path = `/progress/tasks/${task.id}/stream`;
    const none = await http('GET', path);
    expect([none.status, none.json().error.code]).toEqual([401, 'unauthenticated']);
    const foreign = await http('GET', path, { headers: bearer('bob') });
    expect([foreign.status, foreign.json().error.code]).toEqual([404, 'task_not_found']);
    const holder = httpRequest(`${env!.httpUrl}${path}`, { headers: bearer() });
    holder.on('error', () => {});
    await new Promise<void>((resolve) => holder.on('response', () => resolve()).end());
    const second = await http('GET', path, { headers: bearer() });
    expect([second.status, second.json().error.code]).toEqual([429, 'too_many_sockets']);
    const head = await http('HEAD', path, { headers: bearer() });
    expect(head.status).toBe(200);
    holder.destroy();
  });

  it('acks of stream frames go to POST …/ack and are recorded', async () => {
    const { server } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.progress({ done: 1 });
    await task.complete();
    const body = (await http('GET', `/progress/tasks/${task.id}/stream`, { headers: bearer() })).body;
    const terminal = dataOf(body).at(-1)!;
    expect(terminal).toMatchObject({ type: 'snapshot', task: { status: 'completed', seq: 2 } });
    const ack = await http('POST', `/progress/tasks/${task.id}/ack`, {
      headers: jsonHeaders(),
      body: JSON.stringify({ seq: terminal.task.seq }),
    });
    expect(ack.json()).toEqual({ taskId: task.id, seq: 2 });
    expect((await server.tasks.get(task.id))?.ackedSeq).toBe(2);
  });
});

describe('HTTP API: the status table (doc: HTTP API, Errors)', () => {
  const doc = readFileSync(new URL('../../../docs/protocol.md', import.meta.url), 'utf8');
  /** The rows of the table under "**Errors** carry": status, and the error codes each row names. */
  const rows = (() => {
    const from = doc.indexOf('**Errors** carry');
    const table = doc.slice(from, doc.indexOf('\n\n', doc.indexOf('| Status |', from)));
    return table.split('\n').flatMap((line) => {
      const match = line.match(/^\| (\d{3}) \| (.*) \|$/);
      if (match === null) return [];
      const named = [...(match[2] as string).matchAll(/`(\w+)`/g)].map((m) => m[1] as string);
      return [{ status: Number(match[1]), codes: named.filter((code) => code in HTTP_STATUS) }];
    });
  })();
  /** Codes the document says no HTTP answer carries, and the client's own `unreachable`. */
  const socketOnly = [
    'invalid_frame',
    'frame_too_large',
    'unknown_frame',
    'too_many_subscriptions',
    'unreachable',
  ];

  it('names every code the server answers over HTTP, each at the status the server sends', () => {
    const listed = new Set(rows.flatMap((row) => row.codes));
    const answered = Object.keys(HTTP_STATUS).filter((code) => !socketOnly.includes(code));
    expect(answered.filter((code) => !listed.has(code))).toEqual([]);
    for (const { status, codes } of rows) {
      for (const code of codes) {
        // invalid_input is the one code with several statuses (the table says which).
        if (code !== 'invalid_input')
          expect([code, HTTP_STATUS[code as keyof typeof HTTP_STATUS]]).toEqual([code, status]);
      }
    }
  });

  it('504 timeout: an authenticate hook that does not answer within upgradeTimeoutMs', async () => {
    await start({
      upgradeTimeoutMs: 100,
      authenticate: (req) => (req.headers.authorization === 'Bearer hang' ? new Promise(() => {}) : null),
    });
    for (const path of ['/progress/tasks', '/progress/tasks/t', '/progress/tasks/t/stream']) {
      const answer = await http('GET', path, { headers: bearer('hang') });
      expect([path, answer.status, answer.json().error.code]).toEqual([path, 504, 'timeout']);
    }
  });
});

describe('HTTP API: smaller statements (doc: HTTP API, Server-Sent Events)', () => {
  it('a plain request on the WebSocket path is 426 with Upgrade: websocket; healthz and livez know only GET and HEAD', async () => {
    await start();
    const plain = await http('GET', '/progress', { headers: bearer() });
    expect([plain.status, plain.headers.upgrade, plain.json().error.code]).toEqual([
      426,
      'websocket',
      'invalid_input',
    ]);
    for (const path of ['/progress/healthz', '/progress/livez']) {
      const post = await http('POST', path, { headers: { 'content-type': 'application/json' }, body: '{}' });
      expect([path, post.status, post.json().error]).toEqual([
        path,
        404,
        { code: 'invalid_input', message: 'No such route' },
      ]);
    }
  });

  it('POST bodies: null is {}, a JSON value that is no object and a body that is no JSON get their 400s', async () => {
    const { server } = await start();
    await server.tasks.create({ id: 't', owner: 'alice', kind: 'k' });
    const cancel = await http('POST', '/progress/tasks/t/cancel', { headers: jsonHeaders(), body: 'null' });
    expect([cancel.status, cancel.json().task.status]).toEqual([200, 'cancelled']);
    for (const [body, message] of <Array<[string, string]>>[
      ['[1]', 'The body must be a JSON object'],
      ['3', 'The body must be a JSON object'],
      ['{"seq":', 'The body must be JSON'],
    ]) {
      const answer = await http('POST', '/progress/tasks/t/ack', { headers: jsonHeaders(), body });
      expect([body, answer.status, answer.json().error]).toEqual([
        body,
        400,
        { code: 'invalid_input', message },
      ]);
    }
  });

  it('a refusal before the body arrived: Connection: close for a body above 16 KiB or chunked, the connection kept for a smaller one', async () => {
    const { port } = await start();
    /** Writes `head` (and `body`), reads until `until` matches the text so far; whether the server closed. */
    const exchange = (head: string, until: RegExp, more = '') =>
      new Promise<{ text: string; closed: boolean }>((resolve, reject) => {
        const socket = netConnect(port, '127.0.0.1', () => socket.write(head));
        let text = '';
        const timer = setTimeout(() => {
          socket.destroy();
          resolve({ text, closed: false });
        }, 1_000);
        socket.on('data', (chunk: Buffer) => {
          text += chunk.toString();
          // The first answer came: the rest of the body, and a second request on the same connection.
          if (more !== '' && /\r\n\r\n\{/.test(text) && !text.includes('\0sent')) {
            text += '\0sent';
            socket.write(more);
          }
          if (until.test(text)) {
            clearTimeout(timer);
            socket.destroy();
            resolve({ text, closed: false });
          }
        });
        socket.on('close', () => {
          clearTimeout(timer);
          resolve({ text, closed: true });
        });
        socket.on('error', reject);
      });
    const post = (length: string) =>
      `POST /progress/tasks/t/ack HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n${length}\r\n\r\n${
        length.startsWith('Transfer') ? '4\r\n{"se\r\n' : '{"se'
      }`;
    // 401 before a body of 10 bytes arrived: kept alive, the rest read, the next request answered on it.
    const small = await exchange(
      post('Content-Length: 10'),
      /HTTP\/1\.1 401[\s\S]*HTTP\/1\.1 401/,
      'q":1}\r\nGET /progress/tasks HTTP/1.1\r\nHost: x\r\n\r\n',
    );
    expect(small.text).not.toMatch(/connection: close/i);
    expect(small.text.match(/HTTP\/1\.1 401/g)).toHaveLength(2);
    // A body above 16 KiB (refused 413 from its Content-Length, before authentication), or chunked:
    // Connection: close, and the server closes once the answer is out.
    for (const [length, status] of [
      ['Content-Length: 20000', 'HTTP/1.1 413 Payload Too Large'],
      ['Transfer-Encoding: chunked', 'HTTP/1.1 401 Unauthorized'],
    ] as const) {
      const large = await exchange(post(length), /$^/);
      expect([
        length,
        large.text.split('\r\n')[0],
        /\r\nconnection: close\r\n/i.test(large.text),
        large.closed,
      ]).toEqual([length, status, true, true]);
    }
  });

  it('an afterSeq holding the terminal frame’s id, or the seq alone marked !, is answered 204 at the task’s end', async () => {
    const { server, store } = await start();
    const task = await server.tasks.create({ id: 't', owner: 'alice', kind: 'k' });
    await task.complete({ result: null });
    const epoch = await store.getEpoch();
    const query = await http(
      'GET',
      `/progress/tasks/t/stream?afterSeq=${encodeURIComponent(`1~${epoch}!`)}`,
      {
        headers: bearer(),
      },
    );
    expect([query.status, query.body]).toEqual([204, '']);
    const alone = await http('GET', '/progress/tasks/t/stream', {
      headers: { ...bearer(), 'last-event-id': '1!' },
    });
    expect([alone.status, alone.body]).toEqual([204, '']);
  });

  it('healthz does not check Origin; application/json with a charset is JSON; events limit defaults to 100', async () => {
    const { server } = await start();
    const health = await http('GET', '/progress/healthz', { headers: { origin: 'https://evil.example' } });
    expect(health.status).toBe(200);
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    for (let i = 1; i <= 102; i++) await task.progress({ done: i });
    const page = (await http('GET', `/progress/tasks/${task.id}/events`, { headers: bearer() })).json();
    expect([page.events.length, page.events[0].seq, page.hasMore]).toEqual([100, 1, true]);
    const ack = await http('POST', `/progress/tasks/${task.id}/ack`, {
      headers: { ...bearer(), 'content-type': 'application/json; charset=utf-8' },
      body: '{"seq":102}',
    });
    expect([ack.status, ack.json()]).toEqual([200, { taskId: task.id, seq: 102 }]);
  });

  it('a body that starts with a UTF-8 byte order mark is read without it (RFC 8259 §8.1)', async () => {
    // Before, JSON.parse met U+FEFF and the request got 400 "The body must be JSON": what some
    // Windows tools and editors write in front of a JSON file sent with `curl --data @file`.
    const { server } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    for (let i = 1; i <= 3; i++) await task.progress({ done: i });
    const ack = await http('POST', `/progress/tasks/${task.id}/ack`, {
      headers: jsonHeaders(),
      body: '\uFEFF{"seq":3}',
    });
    expect([ack.status, ack.json()]).toEqual([200, { taskId: task.id, seq: 3 }]);
    // One mark only: a second one (or one after whitespace) is not JSON.
    for (const body of ['\uFEFF\uFEFF{"seq":3}', ' \uFEFF{"seq":3}']) {
      const refused = await http('POST', `/progress/tasks/${task.id}/ack`, { headers: jsonHeaders(), body });
      expect([refused.status, refused.json().error]).toEqual([
        400,
        { code: 'invalid_input', message: 'The body must be JSON' },
      ]);
    }
  });

  it('HEAD of the stream gets the stream headers; the 204 at a task end carries the CORS headers', async () => {
    const { server, store } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    const head = await http('HEAD', `/progress/tasks/${task.id}/stream`, { headers: bearer() });
    expect([head.status, head.body]).toEqual([200, '']);
    expect(head.headers['cache-control']).toBe('no-store, no-transform');
    expect(head.headers['x-accel-buffering']).toBe('no');
    await task.complete();
    const epoch = await store.getEpoch();
    const end = await http('GET', `/progress/tasks/${task.id}/stream`, {
      headers: { ...bearer(), origin: ORIGIN, 'last-event-id': `1~${epoch}!` },
    });
    expect(end.status).toBe(204);
    expect(end.headers['access-control-allow-origin']).toBe(ORIGIN);
    expect(end.headers['access-control-allow-credentials']).toBe('true');
  });

  it('a store without epochs: ids are the seq alone, no epoch in answers, a cursor naming an epoch resumes from its seq', async () => {
    const memory = new MemoryProgressStore();
    const store = new Proxy(memory, {
      get(target, property) {
        if (property === 'getEpoch' || property === 'renewEpoch') return undefined;
        const value = Reflect.get(target, property, target);
        return typeof value === 'function' ? value.bind(target) : value;
      },
      has(target, property) {
        return property !== 'getEpoch' && property !== 'renewEpoch' && Reflect.has(target, property);
      },
    });
    const { server } = await start({ store });
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.progress({ done: 1 });
    await task.progress({ done: 2 });
    const one = (await http('GET', `/progress/tasks/${task.id}`, { headers: bearer() })).json();
    expect(Object.keys(one)).toEqual(['task']);
    const path = `/progress/tasks/${task.id}/stream`;
    const fresh = await stream(path, bearer(), (t) => t.includes('"snapshot"'));
    const snapshot = parseSse(fresh.text)[1]!;
    expect(snapshot.id).toBe('2');
    expect(snapshot.data).toEqual({ type: 'snapshot', task: expect.objectContaining({ seq: 2 }) });
    const resumed = await stream(path, { ...bearer(), 'last-event-id': '1~some-epoch' }, (t) =>
      t.includes('id: 2'),
    );
    expect(dataOf(resumed.text).map((f) => [f.type, f.event?.seq])).toEqual([['event', 2]]);
    await task.complete();
    const end = await http('GET', path, { headers: { ...bearer(), 'last-event-id': '3~some-epoch!' } });
    expect(end.status).toBe(204);
  });
});

describe('retention (doc: HTTP API events route, snapshot triggers)', () => {
  /** A memory store whose retention removed every event of a task up to `removedUpTo`. */
  function retainedStore(removedUpTo: () => number) {
    const memory = new MemoryProgressStore();
    return new Proxy(memory, {
      get(target, property) {
        if (property === 'readEvents') {
          return async (taskId: string, afterSeq: number, limit?: number) =>
            (await target.readEvents(taskId, Math.max(afterSeq, removedUpTo()), limit)).filter(
              (event) => event.seq > removedUpTo(),
            );
        }
        const value = Reflect.get(target, property, target);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    });
  }

  it('events removed by retention: a page not starting at afterSeq + 1, or empty below task.seq with hasMore false', async () => {
    let removed = 0;
    const { server } = await start({ store: retainedStore(() => removed) });
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    for (let i = 1; i <= 4; i++) await task.progress({ done: i });
    removed = 2;
    const path = `/progress/tasks/${task.id}/events`;
    const page = (await http('GET', `${path}?afterSeq=0`, { headers: bearer() })).json();
    expect([page.events.map((e: Json) => e.seq), page.hasMore, page.task.seq]).toEqual([[3, 4], false, 4]);
    removed = 4;
    const gone = (await http('GET', `${path}?afterSeq=1`, { headers: bearer() })).json();
    expect([gone.events, gone.hasMore, gone.task.seq]).toEqual([[], false, 4]);
  });

  it('an event stream resumed from a cursor whose events retention removed gets the task snapshot', async () => {
    let removed = 0;
    const { server } = await start({ store: retainedStore(() => removed) });
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    for (let i = 1; i <= 4; i++) await task.progress({ done: i });
    await task.complete();
    removed = 5;
    const answer = await http('GET', `/progress/tasks/${task.id}/stream?afterSeq=1`, { headers: bearer() });
    expect(dataOf(answer.body)).toEqual([
      {
        type: 'snapshot',
        task: expect.objectContaining({ seq: 5, status: 'completed' }),
        epoch: expect.any(String),
      },
    ]);
  });
});

describe('a client that stops reading (doc: HTTP API)', () => {
  it('an answer the client takes none of for sseStallTimeoutMs has its connection closed', async () => {
    const { server } = await start({ sseStallTimeoutMs: 200 });
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    // Some 15 MB: far more than loopback's socket buffers take without a reader (4 MB seen).
    for (let i = 1; i <= 1000; i++)
      await task.item({ key: `n${i}`, ok: true, detail: { pad: 'x'.repeat(15_000) } });
    const outcome = await new Promise<{ bytes: number; complete: boolean }>((resolve) => {
      const req = httpRequest(
        `${env!.httpUrl}/progress/tasks/${task.id}/events?limit=1000`,
        { headers: bearer() },
        (res) => {
          res.pause();
          let bytes = 0;
          setTimeout(() => {
            res.on('data', (chunk: Buffer) => {
              bytes += chunk.length;
            });
            res.on('end', () => resolve({ bytes, complete: res.complete }));
            res.on('error', () => resolve({ bytes, complete: false }));
            res.on('aborted', () => resolve({ bytes, complete: false }));
            res.resume();
          }, 1500);
        },
      );
      req.on('error', () => {});
      req.end();
    });
    expect(outcome.complete).toBe(false);
    // Less than the whole answer: what the socket buffers held when the connection was closed (a fixed bound
    // of 4,000,000 bytes, with an answer of 4 MB, failed where loopback buffers are large).
    const whole = await fetch(`${env!.httpUrl}/progress/tasks/${task.id}/events?limit=1000`, {
      headers: bearer(),
    });
    expect(whole.status).toBe(200);
    expect(outcome.bytes).toBeLessThan((await whole.arrayBuffer()).byteLength);
  });

  it('an event stream read slowly goes on from the last seq written, every event once and in order', async () => {
    const { server } = await start();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k', total: 400 });
    const text = await new Promise<string>((resolve, reject) => {
      const req = httpRequest(
        `${env!.httpUrl}/progress/tasks/${task.id}/stream`,
        { headers: bearer() },
        (res) => {
          let body = '';
          res.setEncoding('utf8');
          res.once('data', (first: string) => {
            body += first;
            res.pause();
            void (async () => {
              for (let i = 1; i <= 400; i++) {
                await task.item({ key: `node-${i}`, ok: true, detail: { pad: 'x'.repeat(4000) } });
              }
              await task.complete();
              await new Promise((r) => setTimeout(r, 200));
              res.on('data', (chunk: string) => {
                body += chunk;
              });
              res.on('end', () => resolve(body));
              res.resume();
            })().catch(reject);
          });
        },
      );
      req.on('error', reject);
      req.end();
    });
    const frames = dataOf(text);
    const snapshotSeq = frames[0]!.task.seq as number;
    const seqs = frames.slice(1).map((f) => f.event?.seq ?? f.task?.seq);
    expect(seqs).toEqual(Array.from({ length: 401 - snapshotSeq }, (_, i) => snapshotSeq + 1 + i));
    expect(frames.at(-1)).toMatchObject({ type: 'event', event: { type: 'completed', seq: 401 } });
  });
});

describe("the server's first read of its store's epoch (doc: Server-Sent Events, HTTP API)", () => {
  // Found by a review: a replica just started answered the readers reconnecting to it while its first read
  // of the store's epoch was under way as a server that knows no epoch: a Last-Event-ID of an older epoch
  // (the store restored and renewed across the restart) was resumed from its seq in another history, with
  // ids and answers carrying no epoch, so the reader could not tell either. A socket's hello already
  // waited for that read (at most 2 s); the HTTP routes now do too.
  it('a stream and the task routes wait for it: another epoch gets the reset snapshot, answers carry the epoch', async () => {
    const held = epochHeldStore();
    const { store, release } = held;
    const epoch = await held.epoch;
    const { server } = await start({ store });
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    for (let done = 1; done <= 3; done++) await task.progress({ done });
    const path = `/progress/tasks/${task.id}`;
    // Read up to its first frame (the task runs: the stream stays open).
    const reading = stream(`${path}/stream`, { ...bearer(), 'last-event-id': '1~older-epoch' }, (text) =>
      text.includes('\ndata: '),
    );
    const one = http('GET', path, { headers: bearer() });
    const events = http('GET', `${path}/events?afterSeq=1`, { headers: bearer() });
    // Longer than the server takes to answer these when it does not wait; far below its 2 s bound.
    await new Promise((resolve) => setTimeout(resolve, 150));
    release();
    const messages = parseSse((await reading).text).filter((m) => m.data !== undefined);
    expect(messages.map((m) => [m.id, m.data])).toEqual([
      [`3~${epoch}`, { type: 'snapshot', task: expect.objectContaining({ seq: 3 }), epoch, reset: true }],
    ]);
    expect((await one).json().epoch).toBe(epoch);
    expect((await events).json().epoch).toBe(epoch);
  });

  // Found by a review: the events route labelled its page with the epoch read after the task, before the
  // hook, and refused it only when this replica had noticed a renewal since. A restore and its renewal done
  // while the hook ran, unheard (another replica's, a feed that tells none), had the new log's events
  // answered with the old log's task under the old epoch: a client took them for the old log's, on from
  // its cursor. The epoch is read again after the events now, and a change refuses the page.
  it('GET /tasks/:id/events: a restore while the hook ran is answered 503 store_unavailable, not a page of two logs', async () => {
    const { store, both, restore } = restorableStore();
    await both((s) => s.createTask({ id: 't', owner: 'alice', kind: 'k' }));
    await both((s) => s.append('t', { type: 'progress', done: 1 }));
    // The live log goes on to seq 3; the backup stops at seq 1.
    for (let done = 2; done <= 3; done++) await store.append('t', { type: 'progress', done });
    let restoring = false;
    await start({
      store,
      authorize: async (principal, task) => {
        if (restoring) {
          restoring = false;
          // Restored (the backup's epoch is another one), and written to since: its seq 2 is another event.
          restore();
          await store.append('t', { type: 'progress', done: 99 });
        }
        return principal.id === task.owner;
      },
    });
    const before = (await http('GET', '/progress/tasks/t/events?afterSeq=1', { headers: bearer() })).json();
    expect(before.events.map((e: Json) => e.progress.done)).toEqual([2, 3]);
    restoring = true;
    const answer = await http('GET', '/progress/tasks/t/events?afterSeq=1', { headers: bearer() });
    expect([answer.status, answer.json().error?.code]).toEqual([503, 'store_unavailable']);
    // Asked again, all of the restored log, under its epoch.
    const again = (await http('GET', '/progress/tasks/t/events?afterSeq=1', { headers: bearer() })).json();
    expect(again).toMatchObject({
      task: { seq: 2 },
      events: [{ seq: 2, progress: { done: 99 } }],
      epoch: await store.getEpoch(),
    });
    expect(again.epoch).not.toBe(before.epoch);
  });

  // Found by a review: the answers carried the epoch as the replica last read it, their task and events as
  // the store has them now. A replica that had not heard a renewal yet (another replica's, after a
  // restore) labelled the new epoch's data with the old epoch: a client that knew the new one from another
  // replica started over back in the old one, then forward again; one that knew only the old one took the
  // restored log's events for the old log's. The epoch is read after the data now.
  it('a renewal this replica has not heard of: the answers carry the epoch read after their data', async () => {
    // A feed that tells the server of no renewal, and a heartbeat that does not come: until it reads the
    // epoch itself, the server knows only the one it started with.
    const { store } = restorableStore();
    const { server } = await start({ store });
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.progress({ done: 1 });
    const path = `/progress/tasks/${task.id}`;
    // Renewed before each route's request, so each route is checked on its own.
    let renewed = await store.renewEpoch();
    expect((await http('GET', path, { headers: bearer() })).json().epoch).toBe(renewed);
    renewed = await store.renewEpoch();
    expect((await http('GET', `${path}/events?afterSeq=0`, { headers: bearer() })).json().epoch).toBe(
      renewed,
    );
    renewed = await store.renewEpoch();
    const opened = await stream(`${path}/stream`, bearer(), (text) => text.includes('\ndata: '));
    expect(parseSse(opened.text).find((m) => m.data !== undefined)?.data).toMatchObject({
      type: 'snapshot',
      epoch: renewed,
    });
  });
});
