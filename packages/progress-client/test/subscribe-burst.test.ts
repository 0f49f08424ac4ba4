import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { MemoryProgressStore } from '@finishline/core';
import { ProgressServer, type ProgressServerOptions } from '@finishline/server';
import { afterEach, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { ProgressClient } from '../src/progress-client.js';
import { users } from './users.js';

// One honest client watching more tasks than a socket may follow sends all its subscribes in one batch
// after `hello`, on every reconnect too. With the server's default limits (burst 200, 50 violations), the
// batch's refusals counted one by one closed the socket with 4008 before the accepted subscribes were
// answered, and each reconnect sent the same batch: the application got no updates at all.

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function start(
  overrides: Partial<ProgressServerOptions> = {},
): Promise<{ server: ProgressServer; url: string }> {
  // Default limits: only the heartbeat is shortened (unless overridden).
  const server = await ProgressServer.listen(
    { store: new MemoryProgressStore(), authenticate: users, heartbeatIntervalMs: 1000, ...overrides },
    { port: 0, host: '127.0.0.1' },
  );
  cleanups.push(() => server.close({ timeoutMs: 1000 }));
  const { port } = (server.httpServer as Server).address() as AddressInfo;
  return { server, url: `ws://127.0.0.1:${port}/progress` };
}

describe('a batch of subscribes over the rate burst (default limits)', () => {
  it('300 watches on one client: no 4008; 100 served live to their end, the rest once slots free', async () => {
    const { server, url } = await start();
    const client = new ProgressClient({
      url,
      WebSocket,
      headers: { 'x-user': 'alice' },
      // Refused subscribes are retried sooner than by default, to keep the test short.
      reconnect: { initialDelayMs: 500, maxDelayMs: 2000 },
    });
    cleanups.push(() => client.close());
    const closes: number[] = [];
    client.on('state', (state) => {
      if (state.closeCode !== undefined) closes.push(state.closeCode);
    });
    const errors: Record<string, number> = {};
    const tasks = await Promise.all(
      Array.from({ length: 300 }, () => server.tasks.create({ owner: 'alice', kind: 'k', total: 2 })),
    );
    const watches = tasks.map((task) => {
      const watch = client.watch(task.id);
      watch.on('error', (error) => {
        errors[error.code] = (errors[error.code] ?? 0) + 1;
      });
      return watch;
    });
    // The socket's 100 subscriptions are answered (the total comes with the snapshot), no more.
    const answered = () => watches.flatMap((w, i) => (w.getSnapshot().progress?.total === 2 ? [i] : []));
    await expect.poll(() => answered().length, { timeout: 5000 }).toBe(100);
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const live = answered();
    expect(live).toHaveLength(100);
    for (const i of live) await tasks[i]?.progress({ done: 1 });
    for (const i of live) await tasks[i]?.complete();
    await Promise.all(live.map((i) => watches[i]?.done));
    // The rest were refused for the cap (each answered), and are served as the finished ones free slots.
    expect(errors.too_many_subscriptions).toBeGreaterThan(0);
    for (const [i, task] of tasks.entries()) if (!live.includes(i)) await task.complete();
    await Promise.all(watches.map((w) => w.done));
    expect(closes).toEqual([]);
  }, 30_000);

  it('a socket that goes on flooding after its refusals is still closed with 4008', async () => {
    const { url } = await start();
    const ws = new WebSocket(url, { headers: { 'x-user': 'alice' } });
    cleanups.push(async () => ws.terminate());
    const closed = new Promise<number>((resolve) => ws.on('close', (code) => resolve(code)));
    await new Promise((resolve) => ws.on('open', resolve));
    let refused = 0;
    ws.on('message', (data) => {
      if (String(data).includes('"rate_limited"')) refused += 1;
    });
    const startedAt = Date.now();
    let n = 0;
    // 1,000 frames a second, ten times the refill, whatever the answers say.
    const flood = setInterval(() => {
      for (let i = 0; i < 20; i++) ws.send(JSON.stringify({ type: 'ping', id: `p${n++}` }));
    }, 20);
    cleanups.push(async () => clearInterval(flood));
    expect(await closed).toBe(4008);
    clearInterval(flood);
    // 50 windows of 100 ms of refusals, after the burst: about 5 s.
    expect(Date.now() - startedAt).toBeLessThan(10_000);
    expect(refused).toBeGreaterThan(0);
  }, 15_000);
});

// Review of 7 December 2026: what a watch refused for the socket's cap goes through. It is reported on the
// watch (not fatal), kept, and subscribed again with the backoff of `reconnect` (full jitter, growing until
// something is delivered to it: no busy loop), so a slot freed by another watch's end serves it at the next
// retry. (Its pace, and close() clearing the retry's timer: progress-client.test.ts, with a manual clock.)
describe('a watch refused for the socket cap (maxSubscriptionsPerSocket)', () => {
  it('is kept and retried with backoff until a slot frees, then served to its end', async () => {
    const { server, url } = await start({ maxSubscriptionsPerSocket: 1 });
    const client = new ProgressClient({
      url,
      WebSocket,
      headers: { 'x-user': 'alice' },
      reconnect: { initialDelayMs: 100, maxDelayMs: 400 },
    });
    cleanups.push(() => client.close());
    const [first, second] = await Promise.all(
      [1, 2].map(() => server.tasks.create({ owner: 'alice', kind: 'k', total: 1 })),
    );
    const firstWatch = client.watch(first?.id as string);
    await expect.poll(() => firstWatch.getSnapshot().progress).not.toBeNull();
    const secondWatch = client.watch(second?.id as string);
    const refusals: string[] = [];
    secondWatch.on('error', (error) => refusals.push(error.code));
    await expect.poll(() => refusals.length).toBeGreaterThanOrEqual(3);
    expect(new Set(refusals)).toEqual(new Set(['too_many_subscriptions']));
    expect(secondWatch.getSnapshot()).toMatchObject({ progress: null, fatalError: null });
    await first?.complete();
    await firstWatch.done;
    await expect.poll(() => secondWatch.getSnapshot().progress).not.toBeNull();
    await second?.complete();
    await expect(secondWatch.done).resolves.toMatchObject({ status: 'completed' });
  });
});
