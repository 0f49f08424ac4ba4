import type { IncomingMessage } from 'node:http';
import { ProgressError } from '@finishline/core';
import { afterEach, describe, expect, it } from 'vitest';
import { AddressAuthLimits, forwardedClientAddress, MAX_TRACKED_ADDRESSES } from './address-auth-limits.js';
import type { Principal } from './auth.js';
import { RawClient, startServer, type TestServer, tokenAuth, upgradeStatus } from './testing/harness.js';

/**
 * Security review, 5 December 2026: nothing bounded how often one address made the application's
 * authentication hooks (a database, an identity provider) run with bad credentials, over HTTP, upgrades
 * and `auth` frames, but the connection caps. Time stands still in these tests: no token refills.
 */

let env: TestServer | undefined;
const clients: RawClient[] = [];

afterEach(async () => {
  await Promise.all(clients.splice(0).map((client) => client.close()));
  await env?.close();
  env = undefined;
});

const NOW = 1_800_000_000_000;

/** A server whose token hook counts its calls. */
async function countingServer(overrides: Record<string, unknown> = {}) {
  const calls = { count: 0 };
  env = await startServer({
    authenticate: undefined,
    authenticateToken: (token: string) => {
      calls.count += 1;
      return tokenAuth(token);
    },
    clock: () => NOW,
    ...overrides,
  });
  return calls;
}

/** `total` requests, `concurrency` at a time; the answers' statuses and Retry-After headers. */
async function requests(
  url: string,
  token: string,
  total: number,
  concurrency = 50,
  extraHeaders: Record<string, string> = {},
) {
  const statuses: number[] = [];
  const retryAfter = new Set<string | null>();
  let sent = 0;
  const worker = async () => {
    while (sent < total) {
      sent += 1;
      const response = await fetch(url, { headers: { authorization: `Bearer ${token}`, ...extraHeaders } });
      await response.arrayBuffer();
      statuses.push(response.status);
      if (response.status === 429) retryAfter.add(response.headers.get('retry-after'));
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return { statuses, retryAfter };
}

const count = (values: number[], value: number) => values.filter((v) => v === value).length;

describe('failed authentication attempts per address', () => {
  it('runs the hook for at most the burst of bad tokens from one address, then answers 429 with Retry-After', async () => {
    const calls = await countingServer();
    const { statuses, retryAfter } = await requests(`${env!.httpUrl}/progress/tasks/t1`, 'bad', 2000);
    // The default: 20/s with a burst of 50 s of it. Unlimited, the hook ran 2,000 times.
    expect(calls.count).toBe(1000);
    expect(count(statuses, 401)).toBe(1000);
    expect(count(statuses, 429)).toBe(1000);
    expect([...retryAfter]).toEqual(['1']);
    // Upgrades and auth frames from the address are out of attempts too, and run no hook.
    expect(await upgradeStatus(env!.wsUrl, { authorization: 'Bearer bad' })).toMatchObject({ status: 429 });
    const raw = new RawClient(env!.wsUrl);
    clients.push(raw);
    await raw.opened;
    raw.send({ type: 'auth', token: 'bad', protocol: 2 });
    expect(await raw.next((frame) => frame.type === 'error')).toMatchObject({ code: 'rate_limited' });
    expect((await raw.closed).code).toBe(4008);
    expect(calls.count).toBe(1000);
  });

  it('bounds auth frames with bad tokens the same way (rate_limited, then close 4008)', async () => {
    const calls = await countingServer({ authRateLimitPerAddressPerSecond: 1 });
    const codes: number[] = [];
    for (let i = 0; i < 60; i += 1) {
      const raw = new RawClient(env!.wsUrl);
      clients.push(raw);
      await raw.opened;
      raw.send({ type: 'auth', token: 'bad', protocol: 2 });
      codes.push((await raw.closed).code);
    }
    expect(calls.count).toBe(50);
    expect(count(codes, 4001)).toBe(50);
    expect(count(codes, 4008)).toBe(10);
  });

  it('never refuses valid credentials, however many come from one address (a NAT reload storm)', async () => {
    // Time stands still: the principal's own request budget would run out first.
    const calls = await countingServer({ rateLimitPerPrincipalPerSecond: 1_000_000 });
    const http = await requests(`${env!.httpUrl}/progress/tasks/t1`, 'token-alice', 1500);
    // 404: authenticated, and no such task.
    expect(count(http.statuses, 404)).toBe(1500);
    for (let i = 0; i < 300; i += 1) {
      const raw = new RawClient(env!.wsUrl);
      clients.push(raw);
      await raw.opened;
      raw.send({ type: 'auth', token: `token-user${i}`, protocol: 2 });
      await raw.next((frame) => frame.type === 'hello');
    }
    const upgrades = await Promise.all(
      Array.from({ length: 300 }, (_, i) =>
        RawClient.connect(env!.wsUrl, { headers: { authorization: `Bearer token-u${i}` } }),
      ),
    );
    clients.push(...upgrades);
    expect(calls.count).toBe(2100);
  });

  it('charges an upgrade deferred to its auth frame nothing once the frame authenticates', async () => {
    // A cookie hook that finds no session at the upgrade, and a token in the first frame: the browser
    // client's way. The upgrade's run of `authenticate` was kept as a failure even when the frame then
    // authenticated, so behind one NAT the 51st such client (here: burst 50) was refused 429.
    const calls = await countingServer({ authenticate: () => null, authRateLimitPerAddressPerSecond: 1 });
    for (let i = 0; i < 80; i += 1) {
      const raw = new RawClient(env!.wsUrl);
      clients.push(raw);
      await raw.opened;
      raw.send({ type: 'auth', token: `token-user${i}`, protocol: 2 });
      await raw.next((frame) => frame.type === 'hello');
    }
    expect(calls.count).toBe(80);
    // Deferred upgrades that never authenticate still pay: the `authenticate` hook ran for nothing.
    const statuses: number[] = [];
    for (let i = 0; i < 60; i += 1) {
      const raw = new RawClient(env!.wsUrl);
      clients.push(raw);
      const opened = await raw.opened.then(
        () => true,
        () => false,
      );
      if (!opened) statuses.push(429);
      else {
        statuses.push(101);
        await raw.close();
      }
    }
    expect(count(statuses, 101)).toBe(50);
    expect(count(statuses, 429)).toBe(10);
  });

  it('keeps the attempt of an upgrade whose Authorization header authenticate refused, whatever its frame does', async () => {
    // An `authenticate` hook checking a password (Basic): paid back once the socket's frame authenticated,
    // a client holding one valid token guessed passwords at the upgrade for free, one socket a guess.
    const basic = `Basic ${Buffer.from('alice:secret').toString('base64')}`;
    const guesses = { count: 0 };
    await countingServer({
      authenticate: (request: IncomingMessage) => {
        guesses.count += 1;
        return request.headers.authorization === basic ? { id: 'alice' } : null;
      },
      authRateLimitPerAddressPerSecond: 1,
    });
    const statuses: number[] = [];
    for (let i = 0; i < 60; i += 1) {
      const guess = `Basic ${Buffer.from(`alice:guess${i}`).toString('base64')}`;
      const raw = new RawClient(env!.wsUrl, { headers: { authorization: guess } });
      clients.push(raw);
      const opened = await raw.opened.then(
        () => true,
        () => false,
      );
      if (!opened) {
        statuses.push(429);
        continue;
      }
      statuses.push(101);
      raw.send({ type: 'auth', token: 'token-mallory', protocol: 2 });
      // (The 50th socket's frame finds the budget spent: rate_limited.)
      await raw.next((frame) => frame.type === 'hello' || frame.type === 'error');
    }
    expect(guesses.count).toBe(50);
    expect(count(statuses, 101)).toBe(50);
    expect(count(statuses, 429)).toBe(10);
  });

  // Review, 7 December 2026: a renewal (an `auth` frame on an open socket) was refused for its address's
  // budget like a first frame, and its working socket closed with 4008: anyone behind the same NAT or
  // proxy spending the budget with bad tokens disconnected every user there at their next renewal.
  it('renews an open socket whatever its address spent, and charges a failed renewal to the address', async () => {
    const calls = await countingServer({ authRateLimitPerAddressPerSecond: 1 });
    const alice = await RawClient.connect(env!.wsUrl, { headers: { authorization: 'Bearer token-alice' } });
    const bob = await RawClient.connect(env!.wsUrl, { headers: { authorization: 'Bearer token-bob' } });
    clients.push(alice, bob);
    // Someone else at the address spends 49 of its 50 attempts.
    for (let i = 0; i < 49; i += 1) {
      const raw = new RawClient(env!.wsUrl);
      clients.push(raw);
      await raw.opened;
      raw.send({ type: 'auth', token: 'bad', protocol: 2 });
      expect((await raw.closed).code).toBe(4001);
    }
    // Bob's renewal fails: the hook runs, the socket closes 4001, and the last attempt is spent.
    bob.send({ type: 'auth', token: 'bad', protocol: 2 });
    expect((await bob.closed).code).toBe(4001);
    expect(calls.count).toBe(2 + 49 + 1);
    const late = new RawClient(env!.wsUrl);
    clients.push(late);
    await late.opened;
    late.send({ type: 'auth', token: 'bad', protocol: 2 });
    expect((await late.closed).code).toBe(4008);
    // Alice's renewals still go through (before: rate_limited and 4008), and give the address nothing back.
    for (let i = 0; i < 3; i += 1) {
      const from = alice.frames.length;
      alice.send({ type: 'auth', token: 'token-alice', protocol: 2 });
      await alice.next((frame) => frame.type === 'hello' || frame.type === 'error', { from });
      expect(alice.frames.slice(from).map((frame) => frame.type)).toEqual(['hello']);
    }
    const after = new RawClient(env!.wsUrl);
    clients.push(after);
    await after.opened;
    after.send({ type: 'auth', token: 'bad', protocol: 2 });
    expect((await after.closed).code).toBe(4008);
    expect(calls.count).toBe(2 + 49 + 1 + 3);
  });

  it('counts every refusal in auth_rate_limited_total, by where it came from', async () => {
    await countingServer({ authRateLimitPerAddressPerSecond: 1 });
    const http = await requests(`${env!.httpUrl}/progress/tasks/t1`, 'bad', 55, 1);
    expect(count(http.statuses, 429)).toBe(5);
    const stream = await fetch(`${env!.httpUrl}/progress/tasks/t1/stream`, {
      headers: { authorization: 'Bearer token-alice' },
    });
    await stream.arrayBuffer();
    expect(stream.status).toBe(429);
    expect(await upgradeStatus(env!.wsUrl, { authorization: 'Bearer bad' })).toMatchObject({ status: 429 });
    const raw = new RawClient(env!.wsUrl);
    clients.push(raw);
    await raw.opened;
    raw.send({ type: 'auth', token: 'token-alice', protocol: 2 });
    expect((await raw.closed).code).toBe(4008);
    const text = await env!.server.metrics.registry.metrics();
    // Before: answered 429 / 4008 with nothing counted (over HTTP, nowhere at all).
    expect(text).toContain('finishline_auth_rate_limited_total{via="http"} 6');
    expect(text).toContain('finishline_auth_rate_limited_total{via="upgrade"} 1');
    expect(text).toContain('finishline_auth_rate_limited_total{via="auth_frame"} 1');
  });

  it("spends nothing on probes without credentials: a node's kubelet does not get its address's clients refused", async () => {
    // Reported: each anonymous GET of healthz ran `authenticate` (to decide on details) and, finding no
    // principal, kept its attempt. One address's probes (a node's kubelet, a proxy) spent the budget,
    // after which that address's real clients were refused 429, valid credentials and all.
    let calls = 0;
    env = await startServer({
      authenticate: (request) => {
        calls += 1;
        return request.headers.cookie === 'session=alice' ? { id: 'alice' } : null;
      },
      clock: () => NOW,
      authRateLimitPerAddressPerSecond: 1, // a burst of 50 failed attempts, and no refill: time stands still
    });
    const probes: number[] = [];
    for (let i = 0; i < 60; i += 1) {
      const response = await fetch(`${env.httpUrl}/progress/healthz`, {
        method: i % 2 === 0 ? 'GET' : 'HEAD',
        headers: { 'user-agent': 'kube-probe/1.31' },
      });
      await response.arrayBuffer();
      probes.push(response.status);
    }
    expect(count(probes, 200)).toBe(60);
    const real = await fetch(`${env.httpUrl}/progress/tasks`, { headers: { cookie: 'session=alice' } });
    expect({ status: real.status, body: await real.json() }).toMatchObject({
      status: 200,
      body: { tasks: [] },
    });
    expect(calls).toBe(1);
    // A health request with credentials is an attempt like any other: refused ones keep theirs.
    const refused = await fetch(`${env.httpUrl}/progress/healthz`, {
      headers: { cookie: 'session=mallory' },
    });
    expect(await refused.json()).toEqual({ ok: true });
    expect(calls).toBe(2);
  });

  it('is off at 0', async () => {
    const calls = await countingServer({ authRateLimitPerAddressPerSecond: 0 });
    const { statuses } = await requests(`${env!.httpUrl}/progress/tasks/t1`, 'bad', 1200);
    expect(count(statuses, 401)).toBe(1200);
    expect(calls.count).toBe(1200);
  });
});

describe('the client address behind a reverse proxy (clientAddress)', () => {
  const status = async (url: string, headers: Record<string, string>) => {
    const response = await fetch(url, { headers });
    await response.arrayBuffer();
    return response.status;
  };
  /** The close code of a socket whose auth frame carries `token`. */
  const authFrameClose = async (headers: Record<string, string>, token: string) => {
    const raw = new RawClient(env!.wsUrl, { headers });
    clients.push(raw);
    await raw.opened;
    raw.send({ type: 'auth', token, protocol: 2 });
    return (await raw.closed).code;
  };

  it("keys the budget by the proxy's X-Forwarded-For: one client's failures do not refuse the others behind it", async () => {
    // Every request comes from 127.0.0.1, the "proxy". Keyed by it, the attacker's 50 failures refused
    // every other client: HTTP, SSE, upgrades and auth frames alike answered 429 / 4008.
    const calls = await countingServer({
      authRateLimitPerAddressPerSecond: 1,
      clientAddress: forwardedClientAddress({ trustedProxies: 1 }),
    });
    const attacker = { 'x-forwarded-for': '198.51.100.1, 203.0.113.66' };
    const bad = await requests(`${env!.httpUrl}/progress/tasks/t1`, 'bad', 55, 1, attacker);
    expect(count(bad.statuses, 401)).toBe(50);
    expect(count(bad.statuses, 429)).toBe(5);
    const task = `${env!.httpUrl}/progress/tasks/t1`;
    const other = { 'x-forwarded-for': '203.0.113.7' };
    expect(await status(task, { authorization: 'Bearer bad', ...other })).toBe(401);
    expect(await status(`${task}/stream`, { authorization: 'Bearer bad', ...other })).toBe(401);
    expect(await upgradeStatus(env!.wsUrl, { authorization: 'Bearer bad', ...other })).toMatchObject({
      status: 401,
    });
    expect(await authFrameClose(other, 'bad')).toBe(4001);
    // The attacker's own address is out of attempts on every path, whatever it puts left of the proxy's entry.
    const again = { 'x-forwarded-for': '192.0.2.9, 203.0.113.66' };
    expect(await status(`${task}/stream`, { authorization: 'Bearer token-alice', ...again })).toBe(429);
    expect(await upgradeStatus(env!.wsUrl, { authorization: 'Bearer bad', ...again })).toMatchObject({
      status: 429,
    });
    expect(await authFrameClose(again, 'token-alice')).toBe(4008);
    expect(calls.count).toBe(54);
  });

  it("falls back to the connection's address when the hook throws or answers no usable address, never failing the request", async () => {
    const warnings: string[] = [];
    const logger = {
      debug() {},
      info() {},
      error() {},
      warn: (_: unknown, msg: string) => warnings.push(msg),
    };
    const answers: Record<string, () => unknown> = {
      throw: () => {
        throw new Error('broken hook');
      },
      empty: () => '',
      number: () => 42,
      long: () => 'x'.repeat(300),
      none: () => undefined,
    };
    await countingServer({
      authRateLimitPerAddressPerSecond: 1,
      logger,
      clientAddress: (request: IncomingMessage) => answers[String(request.headers['x-case'])]?.(),
    });
    const statuses: number[] = [];
    for (let i = 0; i < 60; i += 1) {
      const which = Object.keys(answers)[i % 5] as string;
      statuses.push(
        await status(`${env!.httpUrl}/progress/tasks/t1`, { authorization: 'Bearer bad', 'x-case': which }),
      );
    }
    // One budget, the peer's, for all of them: no 500, and no fresh budget from a bad answer.
    expect(count(statuses, 401)).toBe(50);
    expect(count(statuses, 429)).toBe(10);
    expect(await upgradeStatus(env!.wsUrl, { authorization: 'Bearer bad', 'x-case': 'throw' })).toMatchObject(
      {
        status: 429,
      },
    );
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain('clientAddress hook threw');
  });

  it('refuses a bad clientAddress option with invalid_input', async () => {
    await expect(countingServer({ clientAddress: 'x-forwarded-for' })).rejects.toMatchObject({
      code: 'invalid_input',
    });
  });
});

describe('forwardedClientAddress', () => {
  const request = (xff: string | string[] | undefined) =>
    ({
      headers: xff === undefined ? {} : { 'x-forwarded-for': xff },
      socket: {},
    }) as unknown as IncomingMessage;

  it("takes the entry the outermost trusted proxy wrote, not the client's own", () => {
    const one = forwardedClientAddress({ trustedProxies: 1 });
    expect(one(request('198.51.100.1, 203.0.113.66'))).toBe('203.0.113.66');
    expect(one(request(['198.51.100.1', '203.0.113.66']))).toBe('203.0.113.66');
    const two = forwardedClientAddress({ trustedProxies: 2 });
    expect(two(request('198.51.100.1, 203.0.113.66, 10.0.0.2'))).toBe('203.0.113.66');
    // Through fewer proxies than configured: the leftmost entry; through none, the peer.
    expect(two(request('203.0.113.66'))).toBe('203.0.113.66');
    expect(one(request(undefined))).toBeUndefined();
    expect(one(request(' , '))).toBeUndefined();
  });

  it('strips ports and brackets, and ignores what is not an IP address', () => {
    const one = forwardedClientAddress({ trustedProxies: 1 });
    expect(one(request('203.0.113.66:51234'))).toBe('203.0.113.66');
    expect(one(request('[2001:db8::1]:443'))).toBe('2001:db8::1');
    expect(one(request('2001:db8::1'))).toBe('2001:db8::1');
    expect(one(request('unknown'))).toBeUndefined();
    expect(one(request('evil.example'))).toBeUndefined();
  });

  it('refuses a trustedProxies that is not an integer from 1 to 32', () => {
    for (const trustedProxies of [0, -1, 1.5, 33, Number.NaN, '1' as unknown as number]) {
      expect(() => forwardedClientAddress({ trustedProxies })).toThrow(ProgressError);
    }
    expect(() => forwardedClientAddress(undefined as never)).toThrow(/trustedProxies/);
  });

  it('refuses an unknown option beside trustedProxies, naming the nearest', () => {
    // A second key (a typo, or a guess at an option) was ignored without a word.
    expect(() => forwardedClientAddress({ trustedProxies: 1, trustProxy: true } as never)).toThrow(
      'forwardedClientAddress: unknown option "trustProxy" (did you mean `trustedProxies`?)',
    );
  });
});

describe('AddressAuthLimits', () => {
  const from = (remoteAddress: string) => ({ socket: { remoteAddress } }) as unknown as IncomingMessage;

  it('keeps a bounded number of addresses, and forgets those whose budget refilled', () => {
    let now = 0;
    const limits = new AddressAuthLimits({ ratePerSecond: 1, clock: () => now });
    for (let i = 0; i < MAX_TRACKED_ADDRESSES + 5000; i += 1) {
      expect(limits.take(from(`10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`))).toBeUndefined();
    }
    expect(limits.size).toBe(MAX_TRACKED_ADDRESSES);
    now += 2000;
    limits.take(from('192.0.2.1'));
    expect(limits.size).toBe(1);
  });

  it('falls back to the peer when the clientAddress hook is async, and its rejection never goes unhandled', async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    try {
      const warnings: string[] = [];
      const logger = {
        debug() {},
        info() {},
        error() {},
        warn: (_: unknown, msg?: string) => {
          warnings.push(String(msg));
        },
      };
      const limits = new AddressAuthLimits({
        ratePerSecond: 1,
        clock: () => 0,
        logger,
        clientAddress: (async () => {
          throw new Error('address lookup failed');
        }) as never,
      });
      for (let i = 0; i < 50; i += 1) expect(limits.take(from('192.0.2.1'))).toBeUndefined();
      // One budget, the peer's: a promise is no address.
      expect(limits.take(from('192.0.2.1'))).toBe(1);
      await new Promise((resolve) => setImmediate(resolve));
      await new Promise((resolve) => setImmediate(resolve));
      expect(unhandled).toEqual([]);
      expect(warnings).toHaveLength(1);
      expect(warnings[0]).toContain('clientAddress hook returned a promise');
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  });

  it('counts an IPv6 /64 as one address, and gives back the attempts that succeeded', () => {
    const limits = new AddressAuthLimits({ ratePerSecond: 1, clock: () => 0 });
    for (let i = 0; i < 50; i += 1) expect(limits.take(from(`2001:db8::${i.toString(16)}`))).toBeUndefined();
    expect(limits.take(from('2001:db8::ffff'))).toBe(1);
    limits.succeeded(from('2001:db8::1'));
    expect(limits.take(from('2001:db8::2'))).toBeUndefined();
  });

  it('counts an IPv4-mapped address as its IPv4 address however it is written, never as one shared /64', () => {
    // As a proxy's X-Forwarded-For may carry them: hex (a WHATWG URL's spelling), expanded, dotted.
    const forwarded = (address: string) =>
      ({
        headers: { 'x-forwarded-for': address },
        socket: { remoteAddress: '192.0.2.254' },
      }) as unknown as IncomingMessage;
    const limits = new AddressAuthLimits({
      ratePerSecond: 1,
      clock: () => 0,
      clientAddress: forwardedClientAddress({ trustedProxies: 1 }),
    });
    // 10.0.0.1 spends its burst (50 at 1/s) under three spellings.
    for (let i = 0; i < 20; i += 1) expect(limits.take(forwarded('::ffff:a00:1'))).toBeUndefined();
    for (let i = 0; i < 20; i += 1) expect(limits.take(forwarded('0:0:0:0:0:ffff:10.0.0.1'))).toBeUndefined();
    for (let i = 0; i < 10; i += 1) expect(limits.take(forwarded('[::ffff:10.0.0.1]:443'))).toBeUndefined();
    expect(limits.take(forwarded('::FFFF:0A00:0001'))).toBe(1);
    expect(limits.take(forwarded('10.0.0.1'))).toBe(1);
    // Other IPv4 clients, and loopback, keep budgets of their own.
    expect(limits.take(forwarded('::ffff:a00:2'))).toBeUndefined();
    expect(limits.take(forwarded('0:0:0:0:0:ffff:a00:3'))).toBeUndefined();
    expect(limits.take(forwarded('::1'))).toBeUndefined();
    expect(limits.size).toBe(4);
  });
});

export type { Principal };
