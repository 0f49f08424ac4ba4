import { createServer, request as httpRequest, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { ProgressClient } from '@finishline/client';
import { sseFallback } from '@finishline/client/sse';
import { MemoryProgressStore } from '@finishline/core';
import { ProgressServer } from '@finishline/server';
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';

/**
 * Issue 14, what-to-build 3: behind a proxy that refuses WebSocket upgrades, the client follows its
 * watches over Server-Sent Events and still sees every task end.
 */

const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function listen(server: Server): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  cleanups.push(() => new Promise((resolve) => server.close(resolve)));
  return (server.address() as AddressInfo).port;
}

/** A reverse proxy that passes plain HTTP through (streaming) and answers every upgrade with 502. */
async function upgradeRefusingProxy(targetPort: number) {
  const seen = { upgrades: 0, streams: 0, acks: 0 };
  const proxy = createServer((req, res) => {
    if (req.url?.endsWith('/stream')) seen.streams += 1;
    if (req.url?.endsWith('/ack')) seen.acks += 1;
    const upstream = httpRequest(
      { host: '127.0.0.1', port: targetPort, path: req.url, method: req.method, headers: req.headers },
      (response) => {
        // A stream cut at either end resets the other: a proxy swallows that (CI once saw an unhandled
        // ECONNRESET here fail the run after every test had passed).
        response.on('error', () => res.destroy());
        res.writeHead(response.statusCode ?? 502, response.headers);
        response.pipe(res);
      },
    );
    upstream.on('error', () => res.destroy());
    req.on('error', () => upstream.destroy());
    res.on('error', () => upstream.destroy());
    res.on('close', () => upstream.destroy());
    req.pipe(upstream);
  });
  proxy.on('upgrade', (_req, socket) => {
    seen.upgrades += 1;
    socket.on('error', () => socket.destroy());
    socket.end('HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n');
  });
  const port = await listen(proxy);
  return { port, seen };
}

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
    const { port, seen } = await upgradeRefusingProxy(serverPort);

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
