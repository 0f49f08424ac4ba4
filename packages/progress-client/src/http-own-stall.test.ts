import { type AddressInfo, createServer, type Socket } from 'node:net';
import type { ProgressError } from '@finishline/core';
import { expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { httpFallback } from './http-fallback.js';
import type { WebSocketConstructorLike } from './options.js';
import { ProgressClient } from './progress-client.js';

/** Blocks this thread for `ms`, as an app's synchronous task or a GC pause would. */
function block(ms: number): void {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    // busy: nothing else runs on this thread
  }
}

it("keeps an HTTP poll whose answer waits unread when its deadline passed as the client's event loop stood still", async () => {
  // Refuses every upgrade (the client turns to polling), and holds every poll until the test answers it.
  const held: Socket[] = [];
  const server = createServer((socket) => {
    socket.on('error', () => undefined);
    socket.once('data', (head) => {
      if (/^upgrade:/im.test(String(head)))
        socket.end('HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
      else held.push(socket);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  const client = new ProgressClient({
    url: `ws://127.0.0.1:${port}/progress`,
    WebSocket: WebSocket as unknown as WebSocketConstructorLike,
    httpFallback: httpFallback(),
    httpFallbackAfterAttempts: 1,
    connectTimeoutMs: 300,
    reconnect: { initialDelayMs: 5_000, maxDelayMs: 5_000 },
  });
  const errors: ProgressError[] = [];
  client.on('error', () => undefined);
  try {
    const watch = client.watch('t1');
    watch.on('error', (error) => errors.push(error));
    watch.done.catch(() => undefined);
    while (held.length === 0) await new Promise((resolve) => setTimeout(resolve, 5));
    // The answer reaches the client just before its loop blocks (the app's synchronous work) past the
    // request's deadline; in the check phase, as in an I/O callback, so the timers phase runs first.
    await new Promise((resolve) => setImmediate(resolve));
    const body = JSON.stringify({ error: { code: 'task_not_found', message: 'Task t1 not found' } });
    (held[0] as Socket).end(
      `HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`,
    );
    block(1000);
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(errors.map((error) => error.code)).not.toContain('store_unavailable');
  } finally {
    await client.close();
    for (const socket of held) socket.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}, 15_000);
