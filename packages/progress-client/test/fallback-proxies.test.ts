import { createServer, type IncomingMessage, request, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { MemoryProgressStore } from '@finishline/core';
import { ProgressServer } from '@finishline/server';
import { afterEach, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { ProgressClient } from '../src/progress-client.js';
import { sseFallback } from '../src/sse.js';
import { users } from './users.js';

/**
 * What stands between the client's fallback transports and a real server: a local HTTP server that either
 * answers a request itself (`answer` returns true) or passes it on, its answer's body through `rewrite` (a
 * proxy that rewrites line endings), chunk by chunk.
 */
async function proxy(
  target: string,
  answer: (incoming: IncomingMessage, outgoing: ServerResponse) => boolean,
  rewrite?: (chunk: string, outgoing: ServerResponse) => Promise<void>,
) {
  const upstream = new URL(target);
  const server: Server = createServer((incoming, outgoing) => {
    if (answer(incoming, outgoing)) return;
    const forwarded = request(
      {
        host: upstream.hostname,
        port: upstream.port,
        method: incoming.method,
        path: incoming.url,
        headers: incoming.headers,
      },
      async (reply) => {
        outgoing.writeHead(reply.statusCode ?? 502, reply.headers);
        if (rewrite === undefined) return void reply.pipe(outgoing);
        outgoing.flushHeaders();
        reply.setEncoding('utf8');
        // One chunk at a time, in order.
        for await (const chunk of reply) await rewrite(chunk as string, outgoing);
        outgoing.end();
      },
    );
    forwarded.on('error', () => outgoing.destroy());
    outgoing.on('close', () => forwarded.destroy());
    incoming.pipe(forwarded);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  return `http://127.0.0.1:${port}/progress`;
}

const cleanups: (() => Promise<void>)[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function realServer() {
  const server = await ProgressServer.listen(
    { store: new MemoryProgressStore(), authenticate: users, heartbeatIntervalMs: 200 },
    { port: 0, host: '127.0.0.1' },
  );
  cleanups.push(() => server.close({ timeoutMs: 1000 }));
  const { port } = (server.httpServer as Server).address() as AddressInfo;
  return { server, url: `http://127.0.0.1:${port}` };
}

function sseClient(url: string) {
  const client = new ProgressClient({
    url: url.replace('http:', 'ws:'),
    httpUrl: url,
    WebSocket,
    fetch: globalThis.fetch,
    preferFallback: true,
    fallbackTransport: sseFallback(),
    headers: { 'x-user': 'alice' },
    random: () => 0,
    connectTimeoutMs: 1000,
    httpPollIntervalMs: 50,
    reconnect: { initialDelayMs: 20, maxDelayMs: 50 },
  });
  client.on('error', () => undefined);
  cleanups.push(() => client.close());
  return client;
}

/** Resolves with true once `check` holds (polled every 20 ms), false after `limitMs`. */
async function within(limitMs: number, check: () => boolean): Promise<boolean> {
  const end = Date.now() + limitMs;
  while (Date.now() < end) {
    if (check()) return true;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return check();
}

describe('the fallback transports behind proxies and captive portals (a real server behind a local HTTP server)', () => {
  it.each([
    ['CRLF', '\r\n'],
    ['CR', '\r'],
  ])(
    'follows an SSE stream a proxy rewrites to %s line endings, each chunk cut after a CR',
    async (_, eol) => {
      // Split on LF LF alone (until 7 December 2026), such a stream yielded no frame: the watch saw only
      // heartbeats until its task ended, and not even the end (the stream ends after it, its block unread).
      const { server, url } = await realServer();
      const cut = await proxy(
        url,
        () => false,
        async (chunk, outgoing) => {
          // Every CR ends a write of its own, flushed before the rest: a CRLF split across two chunks.
          for (const part of chunk.replace(/\n/g, eol).split(/(?<=\r)/)) {
            outgoing.write(part);
            await new Promise((resolve) => setTimeout(resolve, 5));
          }
        },
      );
      const client = sseClient(cut);
      const task = await server.tasks.create({ owner: 'alice', kind: 'batch', total: 3 });
      const watch = client.watch(task.id);
      await task.progress({ done: 2 });
      expect(await within(3_000, () => watch.getSnapshot().progress?.done === 2)).toBe(true);
      await task.complete();
      expect(await within(3_000, () => watch.getSnapshot().finished)).toBe(true);
      expect(watch.getSnapshot()).toMatchObject({ finished: true, status: 'completed' });
    },
  );
});
