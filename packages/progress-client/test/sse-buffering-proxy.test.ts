import { createServer, type IncomingMessage, request, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { MemoryProgressStore } from '@finishline/core';
import { ProgressServer } from '@finishline/server';
import { afterEach, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { httpFallback } from '../src/http-fallback.js';
import { ProgressClient } from '../src/progress-client.js';
import { sseFallback } from '../src/sse.js';
import { users } from './users.js';

/**
 * A proxy that buffers event streams (nginx with `proxy_buffering on` and `proxy_ignore_headers
 * X-Accel-Buffering`, a corporate proxy scanning responses): the stream's answer comes, 200 and its
 * headers (or, with `holdHeaders`, not even those), and not a byte of its body until the server ends
 * it. Other requests (the HTTP API, acks) pass through as they are.
 */
async function bufferingProxy(target: string, holdHeaders: boolean) {
  const upstream = new URL(target);
  let streams = 0;
  const server: Server = createServer((incoming: IncomingMessage, outgoing: ServerResponse) => {
    const forwarded = request(
      {
        host: upstream.hostname,
        port: upstream.port,
        method: incoming.method,
        path: incoming.url,
        headers: incoming.headers,
      },
      (answer) => {
        const buffering = /\/stream(\?|$)/.test(incoming.url ?? '') && answer.statusCode === 200;
        if (!buffering) {
          outgoing.writeHead(answer.statusCode ?? 502, answer.headers);
          answer.pipe(outgoing);
          return;
        }
        streams++;
        if (!holdHeaders) {
          outgoing.writeHead(200, answer.headers);
          outgoing.flushHeaders();
        }
        const body: Buffer[] = [];
        answer.on('data', (chunk: Buffer) => body.push(chunk));
        answer.on('end', () => {
          if (holdHeaders) outgoing.writeHead(200, answer.headers);
          outgoing.end(Buffer.concat(body));
        });
      },
    );
    forwarded.on('error', () => outgoing.destroy());
    // The client gave up on it: so does the proxy, upstream.
    outgoing.on('close', () => forwarded.destroy());
    incoming.pipe(forwarded);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/progress`,
    streams: () => streams,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

const cleanups: (() => Promise<void>)[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** Scheduling slack on a loaded 2-core machine. */
const MARGIN_MS = 1_500;
const CONNECT_TIMEOUT_MS = 300;
const POLL_MS = 100;

async function rig(holdHeaders: boolean, withHttp: boolean) {
  const server = await ProgressServer.listen(
    { store: new MemoryProgressStore(), authenticate: users, heartbeatIntervalMs: 200 },
    { port: 0, host: '127.0.0.1' },
  );
  cleanups.push(() => server.close({ timeoutMs: 1000 }));
  const { port } = (server.httpServer as Server).address() as AddressInfo;
  const proxy = await bufferingProxy(`http://127.0.0.1:${port}`, holdHeaders);
  cleanups.push(() => proxy.close());
  const client = new ProgressClient({
    url: proxy.url.replace('http:', 'ws:'),
    httpUrl: proxy.url,
    WebSocket,
    fetch: globalThis.fetch,
    preferFallback: true,
    fallbackTransport: sseFallback(),
    ...(withHttp && { httpFallback: httpFallback() }),
    headers: { 'x-user': 'alice' },
    random: () => 0,
    connectTimeoutMs: CONNECT_TIMEOUT_MS,
    httpPollIntervalMs: POLL_MS,
    reconnect: { initialDelayMs: 20, maxDelayMs: 50 },
  });
  client.on('error', () => undefined);
  cleanups.push(() => client.close());
  return { server, proxy, client };
}

/** Resolves with the time `check` first held (polled every 20 ms), or undefined after `limitMs`. */
async function within(limitMs: number, check: () => boolean): Promise<number | undefined> {
  const end = Date.now() + limitMs;
  while (Date.now() < end) {
    if (check()) return Date.now();
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return undefined;
}

describe('SSE behind a proxy that buffers event streams until they end', () => {
  it('moves to HTTP polling after stalled opens (200 and headers at once, no body): the watcher follows the task live and reaches its end', async ({
    annotate,
  }) => {
    const { server, proxy, client } = await rig(false, true);
    const task = await server.tasks.create({ owner: 'alice', kind: 'batch', total: 5 });
    const watch = client.watch(task.id);
    const startedAt = Date.now();
    await task.progress({ done: 2 });
    // 2 stalled opens of CONNECT_TIMEOUT_MS, a short backoff, then a poll.
    const bound = 2 * CONNECT_TIMEOUT_MS + 2 * 50 + POLL_MS + MARGIN_MS;
    const liveAt = await within(bound, () => watch.getSnapshot().progress?.done === 2);
    expect(liveAt, 'the watcher saw the running task’s progress').toBeDefined();
    expect(proxy.streams()).toBeGreaterThanOrEqual(2);
    await annotate(`progress seen ${(liveAt as number) - startedAt} ms after the watch (bound ${bound} ms)`);
    // Polling now: no new stream while the task runs.
    const streams = proxy.streams();
    await new Promise((resolve) => setTimeout(resolve, 4 * CONNECT_TIMEOUT_MS));
    expect(proxy.streams()).toBe(streams);
    await task.complete();
    const completedAt = Date.now();
    const finishedAt = await within(POLL_MS + MARGIN_MS, () => watch.getSnapshot().finished);
    expect(finishedAt, 'the watcher reached the terminal state').toBeDefined();
    expect(watch.getSnapshot()).toMatchObject({ finished: true, status: 'completed' });
    await annotate(`finished ${(finishedAt as number) - completedAt} ms after the commit`);
  });

  it('keeps reopening streams when not even the headers come (a frozen replica looks the same): the end comes with the stream that ends with it', async () => {
    // An open never answered is no mark of a buffering proxy: a frozen replica behind a balancer does the
    // same, and took the client to polling for good (chaos: SSE watchers' terminal → callback p99 6.5 s).
    const { server, proxy, client } = await rig(true, true);
    const task = await server.tasks.create({ owner: 'alice', kind: 'batch', total: 5 });
    const watch = client.watch(task.id);
    await task.progress({ done: 2 });
    expect(await within(6 * CONNECT_TIMEOUT_MS, () => watch.getSnapshot().progress !== null)).toBeUndefined();
    expect(proxy.streams()).toBeGreaterThanOrEqual(3);
    await task.complete();
    expect(await within(CONNECT_TIMEOUT_MS + MARGIN_MS, () => watch.getSnapshot().finished)).toBeDefined();
  });

  it('without the HTTP fallback, keeps reopening the stream: the end comes when the stream ends with it', async () => {
    const { server, client } = await rig(false, false);
    const task = await server.tasks.create({ owner: 'alice', kind: 'batch', total: 5 });
    const watch = client.watch(task.id);
    await task.progress({ done: 2 });
    expect(await within(6 * CONNECT_TIMEOUT_MS, () => watch.getSnapshot().progress !== null)).toBeUndefined();
    await task.complete();
    // The stream open at the end ends with the terminal frame, which the proxy then lets through.
    expect(await within(CONNECT_TIMEOUT_MS + MARGIN_MS, () => watch.getSnapshot().finished)).toBeDefined();
  });
});
