import { request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import { connect } from 'node:net';
import { afterEach, describe, expect, it, onTestFinished } from 'vitest';
import type { ProgressLogger } from '../logger.js';
import { sleep, startServer, type TestServer } from '../testing/harness.js';

/** How streams end when their client leaves at an awkward moment: nothing of them may outlive it. */

let env: TestServer | undefined;
const open: IncomingMessage[] = [];

afterEach(async () => {
  for (const response of open.splice(0)) response.destroy();
  await env?.close();
  env = undefined;
});

function get(path: string, headers: Record<string, string> = {}): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(`${env?.httpUrl}/progress${path}`, { headers }, (response) => {
      open.push(response);
      resolve(response);
    });
    req.on('error', reject);
    req.end();
  });
}

/** A logger recording its `info` messages. */
function recordingLogger(): { logger: ProgressLogger; infos: string[] } {
  const infos: string[] = [];
  const ignore = () => undefined;
  return {
    infos,
    logger: {
      debug: ignore,
      warn: ignore,
      error: ignore,
      info: (_fields, message) => infos.push(String(message)),
    },
  };
}

/** The server's `sse_streams_closed_total`, by reason. */
async function streamsClosed(server: TestServer): Promise<Record<string, number>> {
  const { values } = await server.server.metrics.sseStreamsClosed.get();
  return Object.fromEntries(values.map((value) => [String(value.labels.reason), value.value]));
}

describe('an event stream whose client leaves', () => {
  it('while it waits for drain: its stall timer is cleared with it, and the stream is counted once, as client_left', async () => {
    const { logger, infos } = recordingLogger();
    env = await startServer({ heartbeatIntervalMs: 20, sseStallTimeoutMs: 300, logger });
    let held: ServerResponse | undefined;
    env.server.httpServer?.on('request', (request: IncomingMessage, response: ServerResponse) => {
      if (request.url?.endsWith('/stream') === true) held ??= response;
    });
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    const response = await get(`/tasks/${task.id}/stream`, { 'x-user': 'alice' });
    response.resume();
    const server = held as ServerResponse;
    // Every write refused from here, as once both kernels' buffers are full: a heartbeat starts the wait.
    const write = server.write.bind(server);
    let refused = 0;
    server.write = ((chunk: string) => {
      write(chunk);
      refused += 1;
      return false;
    }) as typeof server.write;
    while (refused === 0) await sleep(10);
    response.destroy();
    await new Promise((resolve) => (server.closed ? resolve(undefined) : server.once('close', resolve)));
    await sleep(600);
    expect(await streamsClosed(env)).toEqual({ client_left: 1 });
    // Not dropped as a stalled reader 300 ms after it left: no timer of it was left running.
    expect(infos.filter((message) => message.includes('stopped reading'))).toEqual([]);
  });
});

describe('an event stream whose task is purged and created again', () => {
  it('while its reader is behind: it gets a reset snapshot of the new run, then its events to the end, and lets go of the task', async () => {
    env = await startServer({ heartbeatIntervalMs: 60_000, maxSocketsPerPrincipal: 1 });
    let held: ServerResponse | undefined;
    env.server.httpServer?.on('request', (request: IncomingMessage, response: ServerResponse) => {
      if (request.url?.endsWith('/stream') === true) held ??= response;
    });
    const store = env.store;
    await store.createTask({ id: 't', owner: 'alice', kind: 'k' });
    await store.append('t', { type: 'progress', message: 'one' });
    const response = await get('/tasks/t/stream', { 'x-user': 'alice' });
    response.setEncoding('utf8');
    let text = '';
    response.on('data', (chunk: string) => {
      text += chunk;
    });
    const ended = new Promise((resolve) => response.on('end', resolve));
    while (!text.includes('"seq":1')) await sleep(10);
    const server = held as ServerResponse;
    // The next write is refused, as once the reader's buffers are full: the stream waits for 'drain'.
    const write = server.write.bind(server);
    server.write = ((chunk: string) => {
      write(chunk);
      server.write = write;
      return false;
    }) as typeof server.write;
    await store.append('t', { type: 'progress', message: 'two' });
    await sleep(50);
    // Run 1 ends, is purged, and the id is taken again, all while the stream waits.
    await store.append('t', { type: 'completed', result: null });
    expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(1);
    await sleep(5);
    await store.createTask({ id: 't', owner: 'alice', kind: 'k', message: 'run two' });
    await store.append('t', { type: 'progress', message: 'run two, one' });
    await sleep(50);
    server.emit('drain');
    await store.append('t', { type: 'completed', result: 2 });
    await Promise.race([ended, sleep(5000)]);
    const frames = text
      .split('\n')
      .filter((line) => line.startsWith('data: '))
      .map((line) => JSON.parse(line.slice(6)) as Record<string, unknown>);
    const summary = frames.map((frame) =>
      frame.type === 'snapshot'
        ? `snapshot ${(frame.task as { seq: number }).seq}${frame.reset === true ? ' reset' : ''}`
        : `${(frame.event as { type: string }).type} ${(frame.event as { seq: number }).seq}`,
    );
    expect(summary).toEqual(['snapshot 1', 'progress 2', 'snapshot 1 reset', 'completed 2']);
    expect(await streamsClosed(env)).toEqual({ finished: 1 });
    expect(env.server.health().followedTasks).toBe(0);
  });
});

describe('an event stream whose client asked to close the connection', () => {
  // Found by a review: the stream's headers said `Connection: keep-alive` whatever the request asked, and a
  // `Connection` header set by the handler overrides Node's own choice: a request with `Connection: close`
  // was answered keep-alive, and its connection left open after the stream's end (until the server's
  // keepAliveTimeout), against RFC 9112 §9.6.
  it('is answered Connection: close, and its connection closed once the stream ends', async () => {
    env = await startServer();
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.complete({ result: null });
    const client = connect(env.port, '127.0.0.1');
    const closed = new Promise((resolve) => client.once('close', resolve));
    onTestFinished(() => {
      client.destroy();
    });
    let text = '';
    client.on('data', (chunk: Buffer) => {
      text += chunk.toString('latin1');
    });
    client.write(
      `GET /progress/tasks/${task.id}/stream HTTP/1.1\r\nHost: test\r\nX-User: alice\r\nConnection: close\r\n\r\n`,
    );
    // The header arrives with the stream's first block; the terminal snapshot ends the stream.
    await new Promise<void>((resolve) => {
      const check = () => {
        if (text.includes('"snapshot"')) resolve();
        else client.once('data', check);
      };
      check();
    });
    const head = text.slice(0, text.indexOf('\r\n\r\n')).toLowerCase();
    expect(head).toMatch(/^http\/1\.1 200 /);
    expect(head).toContain('\r\nconnection: close');
    expect(head).not.toContain('keep-alive');
    await closed;
  });
});

describe('an event stream request that came with a body', () => {
  // Found by a review: the JSON answers to a request whose body is still coming (a large Content-Length, a
  // chunked body) say `Connection: close`, the stream's answers (its 200, its HEAD, its 204) did not: once
  // answered, Node kept the connection and read the rest of the body, however long, until requestTimeout.
  it('is answered Connection: close, and its connection closed once answered, for a GET, a HEAD and a 204', async () => {
    env = await startServer();
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.complete({ result: null });
    /** Sends `head` then a part of a body that never ends; resolves with the answer once its head is in. */
    const ask = async (head: string, body: string, until: (text: string) => boolean) => {
      const client = connect(env?.port as number, '127.0.0.1');
      onTestFinished(() => {
        client.destroy();
      });
      const ended = new Promise<void>((resolve) => client.once('end', resolve));
      let text = '';
      client.on('data', (chunk: Buffer) => {
        text += chunk.toString('latin1');
      });
      client.write(`${head}\r\nHost: test\r\nX-User: alice\r\n${body}`);
      await new Promise<void>((resolve) => {
        const check = () => {
          if (until(text)) resolve();
          else client.once('data', check);
        };
        check();
      });
      return { text, ended };
    };
    const path = `/progress/tasks/${task.id}/stream`;
    const headEnd = (text: string) => text.includes('\r\n\r\n');
    // The terminal frame's id, from a request without a body: what a reconnect answered 204 sends.
    const first = await ask(`GET ${path} HTTP/1.1`, '\r\n', (text) => text.includes('"snapshot"'));
    const last = /\nid: (\S+)\n/.exec(first.text)?.[1] as string;
    expect(last).toMatch(/!$/);
    // 1 GiB announced, 1 KiB sent; or a chunked body whose end never comes.
    const bodies = [
      `Content-Length: ${2 ** 30}\r\n\r\n${'x'.repeat(1024)}`,
      `Transfer-Encoding: chunked\r\n\r\n400\r\n${'x'.repeat(1024)}\r\n`,
    ];
    for (const body of bodies) {
      const cases = [
        { head: `GET ${path} HTTP/1.1`, status: 200, until: (text: string) => text.includes('"snapshot"') },
        { head: `HEAD ${path} HTTP/1.1`, status: 200, until: headEnd },
        { head: `GET ${path} HTTP/1.1\r\nLast-Event-ID: ${last}`, status: 204, until: headEnd },
      ];
      for (const { head, status, until } of cases) {
        const answer = await ask(head, body, until);
        const headers = answer.text.slice(0, answer.text.indexOf('\r\n\r\n')).toLowerCase();
        expect(headers).toMatch(new RegExp(`^http/1\\.1 ${status} `));
        expect(headers).toContain('\r\nconnection: close');
        await answer.ended;
      }
    }
  });
});
