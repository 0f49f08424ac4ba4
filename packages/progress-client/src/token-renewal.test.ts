import type { HelloFrame } from '@finishline/core';
import { CloseCode, ErrorCode, LIMITS, PROTOCOL_VERSION } from '@finishline/core';
import { describe, expect, it } from 'vitest';
import { type FakeSocket, FakeTask } from './testing/fake-server.js';
import { record, setup } from './testing/harness.js';
import { flush, ManualScheduler } from './testing/manual-scheduler.js';

/** Issue 14, what-to-build 5, on the client: an expired credential, and a renewal on the open socket. */

const hello: HelloFrame = {
  type: 'hello',
  protocol: PROTOCOL_VERSION,
  serverId: 'r1',
  heartbeatIntervalMs: 15_000,
};

/** Opens `socket` and answers it with the server's hello. */
async function greet(socket: FakeSocket): Promise<void> {
  socket.open();
  await flush();
  socket.push(hello);
}

/** A token function whose first call answers `tok-1` and whose later calls never return. */
function answersOnce(): () => Promise<string> {
  let calls = 0;
  return () => (++calls === 1 ? Promise.resolve('tok-1') : new Promise<string>(() => undefined));
}

describe('token expiry', () => {
  it('a socket closed with 4011 mid-task fetches a fresh token and reconnects at once, resuming', async () => {
    let issued = 0;
    const { client, server, states, scheduler } = setup({ token: async () => `tok-${++issued}` });
    const errors: unknown[] = [];
    client.on('error', (error) => errors.push(error));
    const watch = client.watch('t1');
    const log = record(watch);
    const task = new FakeTask('t1', 3);
    const first = server.last;
    await greet(first);
    first.push({ type: 'snapshot', task: task.view() });
    first.push({ type: 'event', event: task.item('a') });
    // Up stableConnectionMs (1 s) at least: a socket closed for its credential sooner after its hello is
    // reconnected as after a failed attempt (below).
    await scheduler.advance(1000);
    first.push({ type: 'error', code: ErrorCode.TokenExpired, message: 'expired' });
    first.serverClose(CloseCode.TokenExpired, 'credential expired');
    // No backoff: the new socket opens at once.
    await scheduler.advance(0);
    expect(server.sockets).toHaveLength(2);
    expect(states).toContainEqual(
      expect.objectContaining({ state: 'reconnecting', closeCode: CloseCode.TokenExpired, delayMs: 0 }),
    );
    const second = server.last;
    second.open();
    await flush();
    expect(second.frames('auth')).toEqual([{ type: 'auth', token: 'tok-2', protocol: PROTOCOL_VERSION }]);
    second.push(hello);
    expect(second.frames('subscribe')).toEqual([{ type: 'subscribe', taskId: 't1', afterSeq: 1 }]);
    second.push({ type: 'event', event: task.item('b') });
    second.push({ type: 'event', event: task.end() });
    expect(log).toEqual(['snapshot@0', 'item@1', 'item@2', 'completed@3', 'finished@3']);
    // Recovered by itself: nothing for the application's error handler (it heard every expiry before).
    expect(errors).toEqual([]);
    await client.close();
  });

  it('a second 4011 before any hello is fatal: token_expired, no reconnect loop', async () => {
    const { client, server, scheduler } = setup({ token: async () => 'always-expired' });
    const watch = client.watch('t1');
    server.last.open();
    await flush();
    server.last.serverClose(CloseCode.TokenExpired, 'credential expired');
    await scheduler.advance(0); // at once: no socket said hello less than stableConnectionMs ago
    expect(server.sockets).toHaveLength(2);
    server.last.open();
    await flush();
    server.last.serverClose(CloseCode.TokenExpired, 'credential expired');
    await expect(watch.done).rejects.toMatchObject({ code: ErrorCode.TokenExpired });
    expect(client.state).toBe('closed');
    await scheduler.advance(60_000);
    expect(server.sockets).toHaveLength(2);
  });
});

describe('renewToken()', () => {
  it('sends a fresh token in an auth frame on the open socket, without reconnecting', async () => {
    let issued = 0;
    const { client, server } = setup({ token: async () => `tok-${++issued}` });
    client.watch('t1');
    const socket = server.last;
    await greet(socket);
    expect(await client.renewToken()).toBe(true);
    expect(socket.frames('auth')).toEqual([
      { type: 'auth', token: 'tok-1', protocol: PROTOCOL_VERSION },
      { type: 'auth', token: 'tok-2', protocol: PROTOCOL_VERSION },
    ]);
    socket.push(hello); // the server's answer: ignored, the socket stays as it was
    expect(client.state).toBe('open');
    expect(server.sockets).toHaveLength(1);
    await client.close();
  });

  it('resolves false with a static token or no open socket', async () => {
    const { client } = setup({ token: 'static' });
    expect(await client.renewToken()).toBe(false);
    await client.close();
  });

  it('reports a failing token function as an unauthenticated error and resolves false, keeping the socket', async () => {
    let calls = 0;
    const { client, server } = setup({
      token: async () => {
        calls += 1;
        if (calls > 1) throw new TypeError('refresh endpoint down');
        return 'tok-1';
      },
    });
    const errors: unknown[] = [];
    client.on('error', (error) => errors.push(error));
    client.watch('t1');
    const socket = server.last;
    await greet(socket);
    expect(await client.renewToken()).toBe(false);
    expect(errors).toEqual([
      expect.objectContaining({ code: ErrorCode.Unauthenticated, cause: expect.any(TypeError) }),
    ]);
    expect(socket.frames('auth')).toHaveLength(1);
    expect(client.state).toBe('open');
    await client.close();
  });

  it.each([
    ['undefined', undefined],
    ['an empty string', ''],
    ['a number', 42],
    ['an object', { accessToken: 'tok-2' }],
    ['a string over maxTokenLength', 'x'.repeat(LIMITS.maxTokenLength + 1)],
  ])(
    'refuses a token function that returns %s as one that throws: no auth frame, the socket keeps its credential',
    async (_name, bad) => {
      // Until 6 December 2026 renewToken() sent whatever the function returned: the server refused the
      // auth frame with 4001, which is fatal, and the client ended for a credential still valid.
      let calls = 0;
      const { client, server, errors } = setup({
        token: (async () => (++calls === 1 ? 'tok-1' : bad)) as () => Promise<string>,
      });
      client.watch('t1');
      const socket = server.last;
      await greet(socket);
      expect(await client.renewToken()).toBe(false);
      expect(socket.frames('auth')).toEqual([{ type: 'auth', token: 'tok-1', protocol: PROTOCOL_VERSION }]);
      expect(errors).toEqual([expect.objectContaining({ code: ErrorCode.Unauthenticated })]);
      expect(errors[0]?.message).toBe('The token provider failed');
      // An over-long string is a credential all the same: the error (which the app logs) carries its length.
      expect(errors[0]?.cause).toBe(typeof bad === 'string' && bad !== '' ? bad.length : bad);
      expect(client.state).toBe('open');
      await client.close();
    },
  );

  it('a renewal refused for what its token function returned leaves the next renewal free to succeed', async () => {
    let calls = 0;
    const { client, server } = setup({
      token: (async () => ['tok-1', '', 'tok-3'][calls++]) as () => Promise<string>,
    });
    client.watch('t1');
    const socket = server.last;
    await greet(socket);
    expect(await client.renewToken()).toBe(false);
    expect(await client.renewToken()).toBe(true);
    expect(socket.frames('auth').map((frame) => frame.token)).toEqual(['tok-1', 'tok-3']);
    await client.close();
  });

  it('overlapping renewals go one after another: the last auth sent carries the token of the last call, whatever order the token service answers in', async () => {
    // Each call of the token function asks the app's token service, answered here by hand.
    const asked: Array<{ token: string; answer: () => void }> = [];
    let issued = 0;
    const { client, server } = setup({
      token: () =>
        issued === 0
          ? `tok-${++issued}`
          : new Promise<string>((resolve) => {
              const token = `tok-${++issued}`;
              asked.push({ token, answer: () => resolve(token) });
            }),
    });
    client.watch('t1');
    const socket = server.last;
    await greet(socket);
    // Two refresh hooks fire close together (two tabs' storage events, a timer and a focus handler).
    const renewals = [client.renewToken(), client.renewToken()];
    let mostAtOnce = 0;
    for (let round = 0; round < 4; round++) {
      await flush();
      mostAtOnce = Math.max(mostAtOnce, asked.length);
      // The service answers the newest request first.
      for (const request of asked.splice(0).reverse()) request.answer();
    }
    expect(await Promise.all(renewals)).toEqual([true, true]);
    // Before, both calls asked at once and each sent what it got when it got it: tok-3, then tok-2, the
    // older credential last, in force on the server (which takes the newest auth it receives).
    expect(mostAtOnce).toBe(1);
    expect(socket.frames('auth').map((frame) => frame.token)).toEqual(['tok-1', 'tok-2', 'tok-3']);
    await client.close();
  });

  it('gives a token function that never returns connectTimeoutMs: resolves false with an unauthenticated error, keeping the socket, and after close() too', async () => {
    // Until 5 December 2026 it waited on the token function for ever: a caller awaiting it hung.
    const { client, server, scheduler } = setup({
      token: answersOnce(),
      connectTimeoutMs: 1000,
    });
    const errors: unknown[] = [];
    client.on('error', (error) => errors.push(error));
    client.watch('t1');
    const socket = server.last;
    await greet(socket);
    const outcomes: boolean[] = [];
    void client.renewToken().then((renewed) => outcomes.push(renewed));
    await scheduler.advance(999);
    expect(outcomes).toEqual([]);
    await scheduler.advance(1);
    expect(outcomes).toEqual([false]);
    expect(errors).toEqual([expect.objectContaining({ code: ErrorCode.Unauthenticated })]);
    expect(socket.frames('auth')).toHaveLength(1);
    expect(client.state).toBe('open');
    // One pending when the client closes settles too, quietly.
    void client.renewToken().then((renewed) => outcomes.push(renewed));
    await client.close();
    await scheduler.advance(1000);
    expect(outcomes).toEqual([false, false]);
    expect(errors).toHaveLength(1);
  });

  it("does not hold a Node process with its wait on a token function that never returns (the wait's timer is unref'd)", async () => {
    // Until 5 December 2026 a renewal pending when the client closed kept Node alive for connectTimeoutMs.
    const scheduler = new ManualScheduler();
    const unrefed = new Set<number>();
    const waits: { id: number; delayMs: number }[] = [];
    const { client, server } = setup({
      token: answersOnce(),
      connectTimeoutMs: 1234,
      clock: scheduler.now,
      timers: {
        setTimeout: (callback, delayMs) => {
          const id = scheduler.setTimeout(callback, delayMs) as number;
          waits.push({ id, delayMs });
          return { id, unref: () => unrefed.add(id) };
        },
        clearTimeout: (handle) => scheduler.clearTimeout((handle as { id: number } | undefined)?.id),
      },
    });
    client.watch('t1');
    await greet(server.last);
    const before = waits.length;
    void client.renewToken();
    await flush();
    const renewal = waits.slice(before).find((wait) => wait.delayMs === 1234);
    expect(renewal).toBeDefined();
    expect(unrefed.has(renewal?.id ?? -1)).toBe(true);
    await client.close();
  });

  it('waits out a connectTimeoutMs longer than a timer can hold (2^31 - 1 ms) instead of giving up at once', async () => {
    // Timer functions fire a longer delay after 1 ms, as Node's and browsers' do: until 5 December 2026
    // renewToken() handed them connectTimeoutMs as is, and with 2^31 gave up at once.
    const scheduler = new ManualScheduler();
    const { client, server } = setup({
      token: answersOnce(),
      connectTimeoutMs: 2 ** 31,
      timers: {
        setTimeout: (callback, delayMs) =>
          scheduler.setTimeout(callback, delayMs > 2 ** 31 - 1 ? 1 : delayMs),
        clearTimeout: scheduler.clearTimeout,
      },
      clock: scheduler.now,
    });
    client.watch('t1');
    const socket = server.last;
    await greet(socket);
    const outcomes: boolean[] = [];
    void client.renewToken().then((renewed) => outcomes.push(renewed));
    await scheduler.advance(1000);
    expect(outcomes).toEqual([]);
    await scheduler.advance(2 ** 31);
    expect(outcomes).toEqual([false]);
    await client.close();
  });
});
