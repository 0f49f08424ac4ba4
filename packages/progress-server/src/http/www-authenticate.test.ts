import { request as httpRequest } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { startServer, type TestServer } from '../testing/harness.js';

/**
 * RFC 9110 §15.5.2: a 401 carries a `WWW-Authenticate` challenge. The API's and the upgrade's 401s came
 * with none, so a client (or an HTTP library that retries with credentials only when challenged) could
 * not tell which scheme the server takes, nor an expired credential from a missing one.
 */
let env: TestServer | undefined;

afterEach(async () => {
  await env?.close();
  env = undefined;
});

/** The status and `WWW-Authenticate` of an upgrade request the server refuses. */
function refusedUpgrade(url: string): Promise<{ status: number; challenge: string | undefined }> {
  return new Promise((resolve, reject) => {
    const request = httpRequest(url, {
      headers: {
        connection: 'Upgrade',
        upgrade: 'websocket',
        'sec-websocket-version': '13',
        'sec-websocket-key': Buffer.from('0123456789abcdef').toString('base64'),
      },
    });
    request.on('upgrade', (_response, socket) => {
      socket.destroy();
      reject(new Error('the upgrade was accepted'));
    });
    request.on('response', (response) => {
      response.resume();
      const header = response.headers['www-authenticate'];
      resolve({ status: response.statusCode ?? 0, challenge: header });
    });
    request.on('error', reject);
    request.end();
  });
}

describe('401 answers', () => {
  it('carry a Bearer challenge on the API, invalid_token for an expired credential', async () => {
    env = await startServer({
      authenticate: (request) =>
        request.headers['x-user'] === 'late' ? { id: 'late', expiresAt: Date.now() - 1000 } : null,
    });
    const anonymous = await fetch(`${env.httpUrl}/progress/tasks`);
    expect(anonymous.status).toBe(401);
    expect(anonymous.headers.get('www-authenticate')).toBe('Bearer realm="finishline"');
    const expired = await fetch(`${env.httpUrl}/progress/tasks`, { headers: { 'x-user': 'late' } });
    expect(expired.status).toBe(401);
    expect(expired.headers.get('www-authenticate')).toMatch(
      /^Bearer realm="finishline", error="invalid_token"/,
    );
  });

  it('carry a Bearer challenge on a refused upgrade', async () => {
    env = await startServer();
    expect(await refusedUpgrade(`${env.httpUrl}/progress`)).toEqual({
      status: 401,
      challenge: 'Bearer realm="finishline"',
    });
  });

  it('are the only answers that challenge: an authenticated caller refused otherwise is not asked again', async () => {
    env = await startServer();
    const missing = await fetch(`${env.httpUrl}/progress/tasks/nope`, { headers: { 'x-user': 'alice' } });
    expect(missing.status).toBe(404);
    expect(missing.headers.get('www-authenticate')).toBeNull();
  });
});
