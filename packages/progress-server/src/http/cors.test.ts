import type { IncomingMessage } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { serverFrameViolations, startServer, type TestServer } from '../testing/harness.js';

/**
 * Found by a review: a page on an origin in `allowedOrigins` other than the server's own opened its socket,
 * but the browser refused every answer of the HTTP API (no CORS headers; a preflight got 405), so the
 * client's HTTP and SSE fallbacks, and its acks over HTTP, could not work from such a page.
 */

let env: TestServer | undefined;
const streams: IncomingMessage[] = [];

afterEach(async () => {
  for (const stream of streams.splice(0)) stream.destroy();
  await env?.close();
  env = undefined;
  expect(serverFrameViolations.splice(0)).toEqual([]);
});

const APP = 'https://app.example.com';

async function crossOriginServer(): Promise<TestServer> {
  return startServer({
    allowedOrigins: [APP],
    authenticate: (request) => {
      const match = /(?:^|;\s*)session=([a-z]+)/.exec(request.headers.cookie ?? '');
      return match?.[1] === undefined ? null : { id: match[1] };
    },
  });
}

function corsHeaders(response: Response) {
  return {
    origin: response.headers.get('access-control-allow-origin'),
    credentials: response.headers.get('access-control-allow-credentials'),
    vary: response.headers.get('vary'),
  };
}

describe('CORS for the allowed origins', () => {
  it("lets an allowed origin read the answers, errors included, with the user's cookies", async () => {
    env = await crossOriginServer();
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.item({ key: 'node-1', ok: true });
    const headers = { origin: APP, cookie: 'session=alice' };
    const read = await fetch(`${env.httpUrl}/progress/tasks/${task.id}`, { headers });
    expect(read.status).toBe(200);
    expect(corsHeaders(read)).toEqual({ origin: APP, credentials: 'true', vary: 'Origin' });
    // An error must be readable too: a client that sees a network error cannot tell 401 from an outage.
    const missing = await fetch(`${env.httpUrl}/progress/tasks/nope`, { headers });
    expect(missing.status).toBe(404);
    expect(corsHeaders(missing).origin).toBe(APP);
    const anonymous = await fetch(`${env.httpUrl}/progress/tasks/${task.id}`, { headers: { origin: APP } });
    expect(anonymous.status).toBe(401);
    expect(corsHeaders(anonymous).origin).toBe(APP);
    // Its challenge is for the page to read, not only the browser.
    expect(anonymous.headers.get('www-authenticate')).toMatch(/^Bearer /);
    expect(anonymous.headers.get('access-control-expose-headers')).toBe('WWW-Authenticate, Retry-After');
    const ack = await fetch(`${env.httpUrl}/progress/tasks/${task.id}/ack`, {
      method: 'POST',
      headers: { ...headers, 'content-type': 'application/json' },
      body: JSON.stringify({ seq: 1 }),
    });
    expect(ack.status).toBe(200);
    expect(corsHeaders(ack).origin).toBe(APP);
  });

  it('opens an event stream to an allowed origin with its CORS headers', async () => {
    env = await crossOriginServer();
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    const controller = new AbortController();
    const stream = await fetch(`${env.httpUrl}/progress/tasks/${task.id}/stream`, {
      headers: { origin: APP, cookie: 'session=alice', accept: 'text/event-stream' },
      signal: controller.signal,
    });
    expect(stream.status).toBe(200);
    expect(stream.headers.get('content-type')).toMatch(/^text\/event-stream/);
    expect(corsHeaders(stream).origin).toBe(APP);
    controller.abort();
  });

  it("answers an allowed origin's preflight with the route's methods and the headers asked for", async () => {
    env = await crossOriginServer();
    const preflight = (path: string, headers: Record<string, string>) =>
      fetch(`${env?.httpUrl}${path}`, { method: 'OPTIONS', headers: { origin: APP, ...headers } });
    const cancel = await preflight('/progress/tasks/t1/cancel', {
      'access-control-request-method': 'POST',
      'access-control-request-headers': 'authorization, content-type, x-csrf-token',
    });
    expect(cancel.status).toBe(204);
    expect(await cancel.text()).toBe('');
    expect(cancel.headers.get('access-control-allow-origin')).toBe(APP);
    expect(cancel.headers.get('access-control-allow-credentials')).toBe('true');
    expect(cancel.headers.get('access-control-allow-methods')).toBe('POST');
    expect(cancel.headers.get('access-control-allow-headers')).toBe(
      'authorization, content-type, x-csrf-token',
    );
    expect(Number(cancel.headers.get('access-control-max-age'))).toBeGreaterThan(0);
    const stream = await preflight('/progress/tasks/t1/stream', {
      'access-control-request-method': 'GET',
      'access-control-request-headers': 'authorization, last-event-id',
    });
    expect(stream.status).toBe(204);
    expect(stream.headers.get('access-control-allow-methods')).toBe('GET, HEAD');
    // Not a list of header names: left out, so the browser refuses the request.
    const odd = await preflight('/progress/tasks', {
      'access-control-request-method': 'GET',
      'access-control-request-headers': 'authorization, x:y',
    });
    expect(odd.status).toBe(204);
    expect(odd.headers.get('access-control-allow-headers')).toBeNull();
  });

  it('refuses the preflight and the requests of an origin not allowed, with no CORS header', async () => {
    env = await crossOriginServer();
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    const foreign = { origin: 'https://evil.example', cookie: 'session=alice' };
    const preflight = await fetch(`${env.httpUrl}/progress/tasks/${task.id}/cancel`, {
      method: 'OPTIONS',
      headers: { ...foreign, 'access-control-request-method': 'POST' },
    });
    expect(preflight.status).toBe(403);
    expect(preflight.headers.get('access-control-allow-origin')).toBeNull();
    const read = await fetch(`${env.httpUrl}/progress/tasks/${task.id}`, { headers: foreign });
    expect(read.status).toBe(403);
    expect(read.headers.get('access-control-allow-origin')).toBeNull();
  });

  it('sends no CORS header without an Origin, and names HEAD beside GET in a 405', async () => {
    env = await crossOriginServer();
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    const read = await fetch(`${env.httpUrl}/progress/tasks/${task.id}`, {
      headers: { cookie: 'session=alice' },
    });
    expect(read.status).toBe(200);
    expect(read.headers.get('access-control-allow-origin')).toBeNull();
    // An OPTIONS that is no preflight (no Origin) is a wrong method, as before.
    const options = await fetch(`${env.httpUrl}/progress/tasks/${task.id}`, { method: 'OPTIONS' });
    expect(options.status).toBe(405);
    expect(options.headers.get('allow')).toBe('GET, HEAD');
  });
});
