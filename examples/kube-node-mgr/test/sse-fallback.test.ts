import type { AddressInfo } from 'node:net';
import { ProgressClient } from '@finishline/client';
import { sseFallback } from '@finishline/client/sse';
import { MemoryProgressStore } from '@finishline/core';
import { ProgressServer } from '@finishline/server';
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { upgradeRefusingProxy } from './harness.js';

/**
 * Issue 14, what-to-build 3: behind a proxy that refuses WebSocket upgrades, the client follows its
 * watches over Server-Sent Events and still sees every task end.
 */

const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

describe('SSE fallback through a proxy that refuses WebSocket upgrades', () => {
  it('every watch reaches its terminal state over Server-Sent Events', async () => {
    const store = new MemoryProgressStore();
    const server = await ProgressServer.listen(
      {
        store,
        authenticate: (request) => {
          const user = request.headers['x-user'];
          return typeof user === 'string' ? { id: user } : null;
        },
      },
      { port: 0, host: '127.0.0.1' },
    );
    cleanups.push(() => server.close({ timeoutMs: 1000 }));
    const address = server.httpServer?.address();
    if (address === undefined || address === null || typeof address === 'string') throw new Error('no port');
    const serverPort = (address as AddressInfo).port;
    const { port, seen } = await upgradeRefusingProxy(serverPort, cleanups);

    const tasks = await Promise.all(
      [1, 2, 3].map(() => server.tasks.create({ owner: 'alice', kind: 'batch_taint', total: 2 })),
    );
    const client = new ProgressClient({
      url: `ws://127.0.0.1:${port}/progress`,
      WebSocket: WebSocket as never,
      headers: { 'x-user': 'alice' },
      fallbackTransport: sseFallback(),
      httpFallbackAfterAttempts: 2,
      reconnect: { initialDelayMs: 20, maxDelayMs: 50 },
      pageEvents: false,
    });
    client.on('error', () => {});
    cleanups.push(() => client.close());
    const watches = tasks.map((task) => client.watch(task.id));
    await expect.poll(() => seen.streams, { timeout: 5000 }).toBeGreaterThanOrEqual(3);
    for (const task of tasks) {
      await task.item({ key: 'node-1', ok: true });
      await task.item({ key: 'node-2', ok: true });
      await task.complete({ result: { tainted: 2 } });
    }
    const finals = await Promise.all(watches.map((watch) => watch.done));
    for (const final of finals) {
      expect(final).toMatchObject({ status: 'completed', finished: true, result: { tainted: 2 } });
      expect(final.progress).toMatchObject({ done: 2, total: 2 });
    }
    expect(seen.upgrades).toBeGreaterThanOrEqual(2);
    // Acks went over HTTP and reached the store.
    for (const task of tasks) {
      await expect.poll(async () => (await store.getTask(task.id))?.ackedSeq, { timeout: 5000 }).toBe(3);
    }
  });
});
