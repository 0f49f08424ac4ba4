/**
 * The replica launcher's round-robin proxy and the client address: it sent no X-Forwarded-For, so every
 * login reached the replicas from the proxy's address and shared one per-address throttle — one client's
 * failed logins locked everyone out. It now sets X-Forwarded-For (and X-Forwarded-Proto) to what it saw, the
 * replicas trust that one hop, and a client's own X-Forwarded-For is replaced, not believed.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { RoundRobinProxy } from '../src/server/round-robin-proxy.js';
import { type Harness, login, startHarness } from './harness.js';

let h: Harness | undefined;
let proxy: RoundRobinProxy | undefined;
let backend: http.Server | undefined;
afterEach(async () => {
  await proxy?.close();
  await h?.close();
  backend?.closeAllConnections();
  await new Promise<void>((resolve) => (backend === undefined ? resolve() : backend.close(() => resolve())));
  proxy = undefined;
  h = undefined;
  backend = undefined;
});

/** A POST /api/login through `url` from the loopback address `from` (Linux routes all of 127/8 to lo). */
function loginFrom(url: string, from: string, username: string, headers: Record<string, string> = {}) {
  const body = JSON.stringify({ username, password: 'wrong' });
  return new Promise<number>((resolve, reject) => {
    const req = http.request(
      `${url}/api/login`,
      {
        method: 'POST',
        localAddress: from,
        headers: {
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(body),
          ...headers,
        },
      },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

describe('the round-robin proxy and the client address', () => {
  it('throttles logins per client address behind the proxy, and a client cannot pick its address', async () => {
    // As the launcher starts a replica: trusting one hop, the round-robin proxy.
    h = await startHarness({
      app: { trustProxy: 1, loginThrottle: { accountFreeFailures: 1000, addressFreeFailures: 2 } },
    });
    proxy = new RoundRobinProxy([h.base]);
    const url = await proxy.listen(0);
    for (let i = 0; i < 3; i++) expect(await loginFrom(url, '127.0.0.2', `nobody-${i}`)).toBe(401);
    expect(await loginFrom(url, '127.0.0.2', 'nobody-3')).toBe(429);
    // Another client is not locked out by the first one's failures.
    expect(await loginFrom(url, '127.0.0.3', 'nobody-4')).toBe(401);
    // The locked client's own X-Forwarded-For is not believed.
    expect(await loginFrom(url, '127.0.0.2', 'nobody-5', { 'x-forwarded-for': '203.0.113.9' })).toBe(429);
  });

  it('does not believe the X-Forwarded-For of a client connecting to a replica directly, bypassing the proxy', async () => {
    // As the launcher starts a replica: it listens on loopback, where any local client can reach its port.
    const secret = 'a-proxy-secret-of-the-launcher';
    h = await startHarness({
      app: {
        trustProxy: 1,
        proxySecret: secret,
        loginThrottle: { accountFreeFailures: 1000, addressFreeFailures: 2 },
      },
    });
    proxy = new RoundRobinProxy([h.base], { secret });
    const url = await proxy.listen(0);
    // Directly, naming another address each time (or the proxy's secret header with a wrong value): the
    // throttle counts the client's own address all the same.
    for (let i = 0; i < 3; i++)
      expect(
        await loginFrom(h.base, '127.0.0.2', `nobody-${i}`, { 'x-forwarded-for': `203.0.113.${i}` }),
      ).toBe(401);
    expect(
      await loginFrom(h.base, '127.0.0.2', 'nobody-3', {
        'x-forwarded-for': '203.0.113.50',
        'x-knm-proxy-auth': 'guessed',
      }),
    ).toBe(429);
    // Nor can it pass for another client by sending a locked-out victim's address.
    expect(await loginFrom(h.base, '127.0.0.3', 'nobody-4', { 'x-forwarded-for': '127.0.0.2' })).toBe(401);
    // Through the proxy, the address it forwards is believed: 127.0.0.2 is locked out, 127.0.0.4 is not.
    expect(await loginFrom(url, '127.0.0.2', 'nobody-5')).toBe(429);
    expect(await loginFrom(url, '127.0.0.4', 'nobody-6')).toBe(401);
    // A client's own secret header through the proxy is replaced, not passed on: the locked-out client stays
    // locked out with it. (Passed on, the replica believed no forwarded address and counted the proxy's,
    // 127.0.0.1, which has no failures: 401, as the unlocked 127.0.0.4 got before this check used 127.0.0.2.)
    expect(await loginFrom(url, '127.0.0.2', 'nobody-7', { 'x-knm-proxy-auth': 'guessed' })).toBe(429);
  });

  // The Finishline server's own limit on failed authentications is kept per client address too. Left at
  // its default (the connection's peer), every client behind the proxy was the proxy's address: one
  // client's requests without a valid cookie spent the budget of all, and every signed-in user's
  // /progress requests and WebSocket upgrades got 429 for as long as it kept sending.
  it('keys the progress server’s failed-authentication limit by the client behind the proxy, not the proxy', async () => {
    h = await startHarness({ app: { trustProxy: 1, progress: { authRateLimitPerAddressPerSecond: 1 } } });
    proxy = new RoundRobinProxy([h.base]);
    const url = await proxy.listen(0);
    const anonymous = () =>
      new Promise<number>((resolve, reject) => {
        const req = http.get(`${url}/progress/tasks`, { localAddress: '127.0.0.2' }, (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode ?? 0));
        });
        req.on('error', reject);
      });
    let status = 0;
    for (let i = 0; i < 200 && status !== 429; i++) status = await anonymous();
    expect(status).toBe(429);
    const alice = await login(url, 'alice');
    expect((await alice.get('/progress/tasks')).status).toBe(200);
  });

  it('keeps a trusted front proxy’s X-Forwarded-For and -Proto and appends its peer, on requests and upgrades', async () => {
    const seen: http.IncomingHttpHeaders[] = [];
    backend = http.createServer((req, res) => {
      seen.push(req.headers);
      res.end('ok');
    });
    backend.on('upgrade', (req, socket) => {
      seen.push(req.headers);
      socket.destroy();
    });
    await new Promise<void>((resolve) => backend?.listen(0, '127.0.0.1', () => resolve()));
    const target = `http://127.0.0.1:${(backend.address() as AddressInfo).port}`;
    const spoof = { 'x-forwarded-for': '203.0.113.9', 'x-forwarded-proto': 'https' };
    const send = (url: string, upgrade: boolean) =>
      new Promise<void>((resolve) => {
        const req = http.request(url, {
          localAddress: '127.0.0.2',
          headers: upgrade ? { ...spoof, connection: 'Upgrade', upgrade: 'websocket' } : spoof,
        });
        req.on('response', (res) => res.resume().on('end', resolve));
        req.on('error', () => resolve());
        req.on('close', () => resolve());
        req.end();
      });
    for (const trustForwarded of [false, true]) {
      proxy = new RoundRobinProxy([target], { trustForwarded });
      const url = await proxy.listen(0);
      await send(url, false);
      await send(url, true);
      await proxy.close();
    }
    proxy = undefined;
    expect(seen.map((s) => [s['x-forwarded-for'], s['x-forwarded-proto']])).toEqual([
      ['127.0.0.2', 'http'],
      ['127.0.0.2', 'http'],
      ['203.0.113.9, 127.0.0.2', 'https'],
      ['203.0.113.9, 127.0.0.2', 'https'],
    ]);
  });
});
