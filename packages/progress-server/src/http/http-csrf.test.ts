import { request as httpRequest, type IncomingMessage } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import type { AllowedOrigins } from '../auth.js';
import { serverFrameViolations, startServer, type TestServer, upgradeStatus } from '../testing/harness.js';

/**
 * Issue 10, items 2 and 3: `POST {basePath}/tasks/:id/cancel` was open to cross-site requests under
 * cookie authentication (an empty or `text/plain` body from `https://evil.example` cancelled the
 * task), and same-origin compared only the host.
 */

let env: TestServer | undefined;
/** Event streams a test opened: destroyed after it. */
const streams: IncomingMessage[] = [];

afterEach(async () => {
  for (const stream of streams.splice(0)) stream.destroy();
  await env?.close();
  env = undefined;
  expect(serverFrameViolations.splice(0)).toEqual([]);
});

/** Cookie authentication, as in the README's quick start: `cookie: session=<user>`. */
const fromCookie = (request: IncomingMessage) => {
  const match = /(?:^|;\s*)session=([a-z]+)/.exec(request.headers.cookie ?? '');
  return match?.[1] === undefined ? null : { id: match[1] };
};

async function cookieServer(allowedOrigins?: AllowedOrigins): Promise<TestServer> {
  return startServer({
    authenticate: fromCookie,
    ...(allowedOrigins === undefined ? {} : { allowedOrigins }),
  });
}

async function post(
  path: string,
  headers: Record<string, string>,
  body?: string,
): Promise<{ status: number; body: { error?: { code: string } } }> {
  if (env === undefined) throw new Error('no server');
  const response = await fetch(`${env.httpUrl}${path}`, {
    method: 'POST',
    headers,
    ...(body === undefined ? {} : { body }),
  });
  const text = await response.text();
  return { status: response.status, body: text === '' ? {} : JSON.parse(text) };
}

describe('cross-site requests to the mutating HTTP routes', () => {
  it('refuses forged cancels and leaves the task running', async () => {
    env = await cookieServer();
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    const path = `/progress/tasks/${task.id}/cancel`;
    const cookie = 'session=alice';
    const self = env.httpUrl;
    const json = 'application/json';
    const forged: Array<[string, Record<string, string>, string | undefined, number]> = [
      ['empty body, no content type', { cookie, origin: self }, undefined, 415],
      ['text/plain', { cookie, origin: self, 'content-type': 'text/plain' }, '{"reason":"x"}', 415],
      [
        'form-encoded',
        { cookie, origin: self, 'content-type': 'application/x-www-form-urlencoded' },
        'reason=x',
        415,
      ],
      ['foreign Origin', { cookie, origin: 'https://evil.example', 'content-type': json }, '{}', 403],
      ['Origin: null', { cookie, origin: 'null', 'content-type': json }, '{}', 403],
      ['no Origin with a cookie', { cookie, 'content-type': json }, '{}', 403],
      ['foreign Origin, text/plain', { cookie, origin: 'https://evil.example' }, 'x', 403],
    ];
    for (const [name, headers, body, status] of forged) {
      const answer = await post(path, headers, body);
      expect(answer.status, name).toBe(status);
      expect(answer.body.error?.code, name).toBe(status === 403 ? 'forbidden' : 'invalid_input');
      expect((await env.store.getTask(task.id))?.status, name).toBe('running');
    }
    // The legitimate request: same origin, JSON.
    const ok = await post(path, { cookie, origin: self, 'content-type': json }, '{"reason":"mine"}');
    expect(ok.status).toBe(200);
    expect((await env.store.getTask(task.id))?.status).toBe('cancelled');
  });

  it('accepts a non-browser client (no Origin, no cookie) sending JSON', async () => {
    env = await startServer();
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    const answer = await post(
      `/progress/tasks/${task.id}/cancel`,
      { 'x-user': 'alice', 'content-type': 'application/json; charset=utf-8' },
      '{}',
    );
    expect(answer.status).toBe(200);
  });

  it('uses the same allow-list as the upgrade', async () => {
    env = await cookieServer(['https://app.example']);
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    const path = `/progress/tasks/${task.id}/cancel`;
    const headers = { cookie: 'session=alice', 'content-type': 'application/json' };
    expect((await post(path, { ...headers, origin: env.httpUrl }, '{}')).status).toBe(403);
    expect((await post(path, { ...headers, origin: 'https://app.example' }, '{}')).status).toBe(200);
  });

  it("refuses a cookie without an Origin under allowedOrigins '*' too", async () => {
    // '*' lets every origin in; it does not turn the check of a cookie without an Origin off (an old
    // browser's request without one may come from any site), as a predicate answering `true` does not.
    env = await cookieServer('*');
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    const path = `/progress/tasks/${task.id}/cancel`;
    const headers = { cookie: 'session=alice', 'content-type': 'application/json' };
    const refused = await post(path, headers, '{}');
    expect(refused.status).toBe(403);
    expect(refused.body.error?.code).toBe('forbidden');
    expect((await env.store.getTask(task.id))?.status).toBe('running');
    expect((await post(path, { ...headers, origin: 'https://anywhere.example' }, '{}')).status).toBe(200);
  });
});

/**
 * A GET or HEAD as a browser's `fetch` or `EventSource` sends it. An event stream that was served is
 * left open (as a page would leave it) and answers with its content type only; any other answer with
 * its JSON body.
 */
function read(
  path: string,
  options: { method?: 'GET' | 'HEAD'; headers: Record<string, string> },
): Promise<{ status: number; type: string; body: { error?: { code: string; message?: string } } }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      `${env?.httpUrl}${path}`,
      { method: options.method ?? 'GET', headers: options.headers },
      (response) => {
        const status = response.statusCode ?? 0;
        const type = response.headers['content-type'] ?? '';
        if (type.startsWith('text/event-stream') && options.method !== 'HEAD') {
          streams.push(response);
          resolve({ status, type, body: {} });
          return;
        }
        let text = '';
        response.setEncoding('utf8');
        response.on('data', (chunk: string) => {
          text += chunk;
        });
        response.on('end', () => resolve({ status, type, body: text === '' ? {} : JSON.parse(text) }));
      },
    );
    req.on('error', reject);
    req.end();
  });
}

describe('cross-site requests to the GET routes', () => {
  it('refuses a foreign Origin on every GET and HEAD route before authentication, holding no stream slot', async () => {
    let authentications = 0;
    env = await startServer({
      authenticate: (request) => {
        authentications += 1;
        return fromCookie(request);
      },
      maxSocketsPerPrincipal: 1,
    });
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    const routes = [
      '/progress/tasks',
      `/progress/tasks/${task.id}`,
      `/progress/tasks/${task.id}/events`,
      `/progress/tasks/${task.id}/stream`,
    ];
    const foreign = ['https://evil.example', 'null', `https://127.0.0.1:${env.port}`];
    for (const origin of foreign) {
      for (const method of ['GET', 'HEAD'] as const) {
        for (const path of routes) {
          const answer = await read(path, { method, headers: { cookie: 'session=alice', origin } });
          const name = `${method} ${path} from ${origin}`;
          expect(answer.status, name).toBe(403);
          expect(answer.type, name).toBe('application/json; charset=utf-8');
          if (method === 'GET') expect(answer.body.error?.code, name).toBe('forbidden');
        }
      }
    }
    // Refused before the application's hook ran, so before any store read.
    expect(authentications).toBe(0);
    // None of the twelve refused streams took the principal's one slot: the page's own stream gets it.
    const own = await read(`/progress/tasks/${task.id}/stream`, {
      headers: { cookie: 'session=alice', origin: env.httpUrl },
    });
    expect(own).toMatchObject({ status: 200, type: 'text/event-stream; charset=utf-8' });
  });

  it('refuses a request of another site without Origin (an iframe, an image, a script), holding no stream slot', async () => {
    // Browsers send the user's cookies (SameSite=Lax ones from a sibling subdomain too) and no Origin on
    // an <iframe>, <img> or <script> pointing at a route: the Origin check let them through, and a page of
    // iframes of GET …/stream took every stream slot of the principal.
    env = await startServer({ authenticate: fromCookie, maxSocketsPerPrincipal: 1 });
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    const cookie = 'session=alice';
    const stream = `/progress/tasks/${task.id}/stream`;
    const embeds = [
      { 'sec-fetch-site': 'same-site', 'sec-fetch-mode': 'navigate', 'sec-fetch-dest': 'iframe' },
      { 'sec-fetch-site': 'cross-site', 'sec-fetch-mode': 'no-cors', 'sec-fetch-dest': 'image' },
      { 'sec-fetch-site': 'same-site', 'sec-fetch-mode': 'no-cors', 'sec-fetch-dest': 'script' },
    ];
    for (const headers of embeds) {
      const answer = await read(stream, { headers: { cookie, ...headers } });
      expect(answer, headers['sec-fetch-dest']).toMatchObject({
        status: 403,
        body: { error: { code: 'forbidden' } },
      });
      expect((await read(`/progress/tasks/${task.id}`, { headers: { cookie, ...headers } })).status).toBe(
        403,
      );
    }
    // A link followed to a route is a top-level navigation: served, as a request of the page's own origin.
    const link = {
      'sec-fetch-site': 'cross-site',
      'sec-fetch-mode': 'navigate',
      'sec-fetch-dest': 'document',
    };
    expect((await read(`/progress/tasks/${task.id}`, { headers: { cookie, ...link } })).status).toBe(200);
    const own = await read(stream, {
      headers: {
        cookie,
        'sec-fetch-site': 'same-origin',
        'sec-fetch-mode': 'cors',
        'sec-fetch-dest': 'empty',
      },
    });
    expect(own).toMatchObject({ status: 200, type: 'text/event-stream; charset=utf-8' });
  });

  it('serves the allowed origins and requests without Origin, cookies or not', async () => {
    env = await cookieServer(['https://app.example']);
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    const cookie = 'session=alice';
    const path = `/progress/tasks/${task.id}`;
    expect((await read(path, { headers: { cookie, origin: 'https://app.example' } })).status).toBe(200);
    expect(
      (await read(path, { method: 'HEAD', headers: { cookie, origin: 'https://app.example' } })).status,
    ).toBe(200);
    // Browsers send no Origin on a same-origin GET (nor does curl): unlike a POST, that is no sign of forgery.
    expect((await read(path, { headers: { cookie } })).status).toBe(200);
    expect((await read(`${path}/stream`, { headers: { cookie } })).status).toBe(200);
    expect(
      (await read(`${path}/stream`, { headers: { cookie, origin: 'https://app.example' } })).status,
    ).toBe(200);
    // The allow-list replaces same-origin, as on the upgrade and the POST routes.
    expect((await read(path, { headers: { cookie, origin: env.httpUrl } })).status).toBe(403);
  });
});

describe('the refusal of a foreign Origin', () => {
  it('names the Origin and, under same-origin, the host it was compared with', async () => {
    // The beginner's case: a page on http://localhost:3000 fetching http://127.0.0.1:3000. "Origin not
    // allowed" alone did not say which of the two the server took for its own.
    env = await cookieServer();
    const answer = await read('/progress/tasks', {
      headers: { cookie: 'session=alice', origin: `http://localhost:${env.port}` },
    });
    expect(answer.status).toBe(403);
    expect(answer.body.error?.message).toBe(
      `Origin http://localhost:${env.port} not allowed: allowedOrigins is 'same-origin' and this request's Host is 127.0.0.1:${env.port}`,
    );
  });
});

describe('a foreign Origin is refused before any other answer', () => {
  it('gets 403 rather than the 405 of a wrong method, before authentication', async () => {
    let authentications = 0;
    env = await startServer({
      authenticate: (request) => {
        authentications += 1;
        return fromCookie(request);
      },
    });
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    const origin = 'https://evil.example';
    const cookie = 'session=alice';
    const wrongMethods: Array<[string, string]> = [
      ['POST', `/progress/tasks/${task.id}`],
      ['DELETE', `/progress/tasks/${task.id}/events`],
      ['GET', `/progress/tasks/${task.id}/cancel`],
      ['PUT', '/progress/tasks'],
    ];
    for (const [method, path] of wrongMethods) {
      const answer = await fetch(`${env.httpUrl}${path}`, { method, headers: { cookie, origin } });
      expect(answer.status, `${method} ${path}`).toBe(403);
      expect(((await answer.json()) as { error: { code: string } }).error.code).toBe('forbidden');
      // The same request from the page's own origin learns the method.
      const own = await fetch(`${env.httpUrl}${path}`, { method, headers: { cookie, origin: env.httpUrl } });
      expect(own.status, `${method} ${path} same-origin`).toBe(405);
    }
    expect(authentications).toBe(0);
  });
});

describe('same-origin', () => {
  it('compares scheme, host and port', async () => {
    env = await startServer();
    const host = `127.0.0.1:${env.port}`;
    const status = async (origin: string) =>
      (await upgradeStatus(env!.wsUrl, { 'x-user': 'a', origin })).status;
    expect(await status(`http://${host}`)).toBe(101);
    expect(await status(`http://localhost:${env.port}`)).toBe(403);
    expect(await status(`https://${host}`)).toBe(403);
    expect(await status(`http://127.0.0.1:${env.port + 1}`)).toBe(403);
    expect(await status('http://127.0.0.1')).toBe(403);
    expect(await status(`ftp://${host}`)).toBe(403);
    // And the same rule on the HTTP routes.
    const task = await env.server.tasks.create({ owner: 'a', kind: 'k' });
    const headers = { 'x-user': 'a', 'content-type': 'application/json' };
    const path = `/progress/tasks/${task.id}/cancel`;
    expect((await post(path, { ...headers, origin: `https://${host}` }, '{}')).status).toBe(403);
    expect((await post(path, { ...headers, origin: `http://${host}` }, '{}')).status).toBe(200);
  });
});
