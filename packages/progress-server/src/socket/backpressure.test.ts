import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { MemoryProgressStore, PROTOCOL_NAME } from '@finishline/core';
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import { ProgressServer } from '../progress-server.js';
import {
  headerAuth,
  RawClient,
  type Received,
  seqOf,
  serverFrameViolations,
  startServer,
  type TestServer,
} from '../testing/harness.js';

/**
 * Backpressure. On loopback a socket's buffer empties as soon as it is written, so the congested test
 * owns the WebSocketServer (the `wss` option) and reports a large `bufferedAmount` on the server side
 * of the socket while a burst is committed: exactly what a slow client on a real network looks like.
 */

let env: TestServer | undefined;
let client: RawClient | undefined;
const cleanups: Array<() => Promise<unknown>> = [];

afterEach(async () => {
  await client?.close();
  client = undefined;
  await env?.close();
  env = undefined;
  for (const cleanup of cleanups.splice(0)) await cleanup();
  // Checked last, once every frame arrived and the cleanup ran.
  expect(serverFrameViolations.splice(0)).toEqual([]);
});

/** A server on the caller's WebSocketServer whose sockets look congested while `congested.on`. */
async function congestibleServer(): Promise<{
  server: ProgressServer;
  url: string;
  congested: { on: boolean };
}> {
  const congested = { on: false };
  const httpServer = createServer();
  const wss = new WebSocketServer({ server: httpServer, handleProtocols: () => PROTOCOL_NAME });
  const real = Object.getOwnPropertyDescriptor(WebSocket.prototype, 'bufferedAmount')?.get;
  // Registered before the server's listener, so the socket is patched before the server sees it.
  wss.on('connection', (ws) => {
    Object.defineProperty(ws, 'bufferedAmount', {
      get: () => (congested.on ? 10 * 1024 * 1024 : (real?.call(ws) as number)),
    });
  });
  await new Promise<void>((resolve) => httpServer.listen(0, '127.0.0.1', resolve));
  const server = new ProgressServer({
    store: new MemoryProgressStore(),
    wss,
    authenticate: headerAuth,
    backpressurePollMs: 5,
  });
  cleanups.push(async () => {
    await server.close({ timeoutMs: 500 });
    wss.close();
    await new Promise((resolve) => httpServer.close(resolve));
  });
  return { server, url: `ws://127.0.0.1:${(httpServer.address() as AddressInfo).port}/`, congested };
}

const typeOf = (frame: Received) =>
  frame.type === 'event' ? (frame.event as { type: string }).type : frame.type;

describe('backpressure', () => {
  it('coalesces progress into snapshots while congested, and keeps every item and the terminal event', async () => {
    const { server, url, congested } = await congestibleServer();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k', total: 20 });
    client = await RawClient.connect(url, { user: 'alice' });
    client.send({ type: 'subscribe', taskId: task.id, afterSeq: 0 });
    await client.next((frame) => frame.type === 'snapshot');

    // A burst while the socket is congested: 20 items, each preceded by 10 progress updates.
    congested.on = true;
    const sentBefore = (await server.metrics.eventsSent.get()).values[0]?.value;
    let progressEvents = 0;
    for (let item = 1; item <= 20; item++) {
      for (let step = 0; step < 10; step++) {
        await task.progress({ message: `item ${item} step ${step}` });
        progressEvents += 1;
      }
      await task.item({ key: `node-${item}`, ok: item % 7 !== 0 });
    }
    const terminal = await task.complete();
    // Nothing was written while congested: it all waited in the queue.
    expect((await server.metrics.eventsSent.get()).values[0]?.value).toBe(sentBefore);
    congested.on = false;
    await client.next((frame) => typeOf(frame) === 'completed');

    const stream = client.about(task.id);
    const seqs = stream.map(seqOf);
    // The cursor only moves forward, and ends at the terminal event.
    for (let i = 1; i < seqs.length; i++) expect(seqs[i]).toBeGreaterThan(seqs[i - 1] as number);
    expect(seqs.at(-1)).toBe(terminal.seq);
    // Every item arrived, once, in order.
    const items = stream
      .filter((frame) => typeOf(frame) === 'item')
      .map((frame) => (frame.event as { item: { key: string } }).item.key);
    expect(items).toEqual(Array.from({ length: 20 }, (_, i) => `node-${i + 1}`));
    // Progress runs were folded: fewer progress frames than progress events, and extra snapshots.
    const progressFrames = stream.filter((frame) => typeOf(frame) === 'progress').length;
    const snapshots = stream.filter((frame) => frame.type === 'snapshot').length;
    expect(progressFrames).toBeLessThan(progressEvents);
    expect(snapshots).toBeGreaterThan(1);
    // Nothing between two delivered seqs was lost except progress (each gap is closed by a snapshot).
    for (let i = 1; i < stream.length; i++) {
      const frame = stream[i] as Received;
      if (seqOf(frame) !== seqOf(stream[i - 1] as Received) + 1) expect(frame.type).toBe('snapshot');
    }
  });

  it('sends everything as events when the socket keeps up', async () => {
    env = await startServer();
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    client = await RawClient.connect(env.wsUrl, { user: 'alice' });
    client.send({ type: 'subscribe', taskId: task.id, afterSeq: 0 });
    await client.next((frame) => frame.type === 'snapshot');
    for (let i = 1; i <= 30; i++) {
      await task.progress({ done: i });
      await client.next((frame) => frame.type === 'event' && seqOf(frame) === i);
    }
    expect(client.about(task.id).filter((frame) => frame.type === 'snapshot')).toHaveLength(1);
  });
});
