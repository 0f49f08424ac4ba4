import { createServer } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
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
  sleep,
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
/** A raw socket of `user` subscribed to a new task of theirs, terminated after the test. */
async function subscribedWatcher(server: ProgressServer, url: string, user: string) {
  const task = await server.tasks.create({ owner: user, kind: 'k' });
  const raw = await RawClient.connect(url, { user });
  cleanups.push(async () => raw.ws.terminate());
  raw.send({ type: 'subscribe', taskId: task.id, afterSeq: 0 });
  await raw.next((frame) => frame.type === 'snapshot');
  return { task, raw };
}

/** Whether `raw` is still open 300 ms from now. */
function openAfter300Ms(raw: RawClient): Promise<boolean> {
  return Promise.race([raw.closed.then(() => false), sleep(300).then(() => true)]);
}

async function congestibleServer(
  overrides: {
    maxQueuedFrames?: number;
    maxQueuedBytesPerPrincipal?: number;
    maxQueuedBytesTotal?: number;
  } = {},
): Promise<{
  server: ProgressServer;
  url: string;
  congested: { on: boolean };
  /** The bounds named by the server's "send queue over …" log lines, in order. */
  overflows: string[];
}> {
  const overflows: string[] = [];
  const noop = () => undefined;
  const logger = {
    debug: noop,
    warn: noop,
    error: noop,
    info: (obj: Record<string, unknown>, msg?: string) => {
      if (msg?.startsWith('send queue over')) {
        // The message and its `bound` field name the same bound, with that bound's value.
        expect(msg).toBe(
          `send queue over ${String(obj.bound)} (client reads too slowly); terminating socket`,
        );
        expect(obj[String(obj.bound)]).toEqual(expect.any(Number));
        overflows.push(String(obj.bound));
      }
    },
  };
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
    logger,
    ...overrides,
  });
  cleanups.push(async () => {
    await server.close({ timeoutMs: 500 });
    wss.close();
    await new Promise((resolve) => httpServer.close(resolve));
  });
  return {
    server,
    url: `ws://127.0.0.1:${(httpServer.address() as AddressInfo).port}/`,
    congested,
    overflows,
  };
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

  // Found by a review: items and terminal events are never dropped, so a reader slower than its tasks'
  // items (or one that stopped reading, until the liveness check noticed) made the queue grow without bound.
  it('terminates a socket whose queue outgrows maxQueuedFrames; the client resumes from its cursor', async () => {
    const { server, url, congested, overflows } = await congestibleServer({ maxQueuedFrames: 50 });
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    client = await RawClient.connect(url, { user: 'alice' });
    client.send({ type: 'subscribe', taskId: task.id, afterSeq: 0 });
    await client.next((frame) => frame.type === 'snapshot');
    congested.on = true;
    // Items are neither dropped nor merged: each waits in the queue, past the bound.
    for (let item = 1; item <= 60; item++) await task.item({ key: `node-${item}`, ok: true });
    const closed = await Promise.race([client.closed, sleep(5000).then(() => ({ code: 'still open' }))]);
    expect(closed.code).toBe(1006);
    expect(overflows).toEqual(['maxQueuedFrames']);
    congested.on = false;
    // The client comes back (resuming from its cursor, here from the start) and is answered.
    client = await RawClient.connect(url, { user: 'alice' });
    client.send({ type: 'subscribe', taskId: task.id, afterSeq: 0 });
    const snapshot = await client.next((frame) => frame.type === 'snapshot');
    expect(seqOf(snapshot)).toBe(60);
  });

  // Found by measurement (7 December 2026): maxQueuedFrames counts entries, and an item carries up to
  // 16 KiB, so a socket that stopped reading held 10,000 of them (copies of its own when a catch-up read
  // them from the store): 75 MB for a socket following five tasks, until the liveness check noticed.
  it('terminates a socket whose queued frames outweigh maxQueuedBytes, well before maxQueuedFrames', async () => {
    const { server, url, congested, overflows } = await congestibleServer();
    const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
    client = await RawClient.connect(url, { user: 'alice' });
    client.send({ type: 'subscribe', taskId: task.id, afterSeq: 0 });
    await client.next((frame) => frame.type === 'snapshot');
    congested.on = true;
    // 1,100 items of 16,000 bytes: 17.6 MB queued, past the default 16 MiB, in 1,100 of 10,000 entries.
    const detail = 'x'.repeat(16_000);
    for (let item = 1; item <= 1100; item++) await task.item({ key: `node-${item}`, ok: true, detail });
    const closed = await Promise.race([client.closed, sleep(5000).then(() => ({ code: 'still open' }))]);
    expect(closed.code).toBe(1006);
    // The log names the bound that tripped: it said maxQueuedFrames whichever did, until 7 December 2026,
    // and an operator raising that one changed nothing.
    expect(overflows).toEqual(['maxQueuedBytes']);
  });

  // Found by a review (7 December 2026): maxQueuedBytes bounds one socket, and a principal may open 100 of
  // them: its stalled sockets held 16 MiB of frames each, 1.6 GB and the events behind them.
  it("terminates the socket that takes its principal's queued frames past maxQueuedBytesPerPrincipal; others go on", async () => {
    const { server, url, congested, overflows } = await congestibleServer({
      maxQueuedBytesPerPrincipal: 1024 * 1024,
    });
    const detail = 'x'.repeat(16_000);
    const watch = (user: string) => subscribedWatcher(server, url, user);
    const alice = [await watch('alice'), await watch('alice'), await watch('alice')];
    const bob = await watch('bob');
    congested.on = true;
    // 30 items of 16 KB per socket: 480 KB each, far below maxQueuedBytes; 1.4 MB for alice's three.
    for (let item = 1; item <= 30; item++) {
      for (const { task } of [...alice, bob]) await task.item({ key: `node-${item}`, ok: true, detail });
    }
    const aliceOpen = await Promise.all(alice.map(({ raw }) => openAfter300Ms(raw)));
    expect(aliceOpen.filter((isOpen) => !isOpen).length).toBeGreaterThanOrEqual(1);
    expect(aliceOpen.filter((isOpen) => isOpen).length).toBeGreaterThanOrEqual(1);
    expect(new Set(overflows)).toEqual(new Set(['maxQueuedBytesPerPrincipal']));
    // Bob's socket holds his own queue, whatever alice's hold: it goes on, and gets every item.
    expect(await openAfter300Ms(bob.raw)).toBe(true);
    congested.on = false;
    await bob.raw.next((frame) => frame.type === 'event' && seqOf(frame) === 30);
  });

  // Found by a review (7 December 2026): maxQueuedBytesPerPrincipal bounds one principal, and nothing bounded
  // the principals: clients of 100 principals (anyone may sign up, or one user holds tokens of many) that
  // stopped reading held 64 MiB each, 6.4 GB, however the per-principal bound was set.
  it('terminates the socket that takes all principals’ queued frames past maxQueuedBytesTotal; others go on', async () => {
    const { server, url, congested, overflows } = await congestibleServer({
      maxQueuedBytesTotal: 1024 * 1024,
    });
    const detail = 'x'.repeat(16_000);
    const watch = (user: string) => subscribedWatcher(server, url, user);
    // Three principals, each far below its own 64 MiB: 30 items of 16 KB, 480 KB each, 1.4 MB together.
    const users = [await watch('alice'), await watch('bob'), await watch('carol')];
    congested.on = true;
    for (let item = 1; item <= 30; item++) {
      for (const { task } of users) await task.item({ key: `node-${item}`, ok: true, detail });
    }
    const stillOpen = await Promise.all(users.map(({ raw }) => openAfter300Ms(raw)));
    expect(stillOpen.filter((isOpen) => !isOpen)).toHaveLength(1);
    expect(new Set(overflows)).toEqual(new Set(['maxQueuedBytesTotal']));
    // The ended socket's bytes were given back: the others hold theirs, and get every item once they read.
    congested.on = false;
    for (const [index, { raw }] of users.entries()) {
      if (stillOpen[index]) await raw.next((frame) => frame.type === 'event' && seqOf(frame) === 30);
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

describe('a client that stops reading', () => {
  /** The server side of every upgraded TCP socket (what `ws.bufferedAmount` measures, less the kernel's). */
  function serverSockets(server: TestServer): Socket[] {
    const sockets: Socket[] = [];
    server.server.httpServer!.on('upgrade', (_request, socket) => sockets.push(socket as Socket));
    return sockets;
  }

  /** A server whose only bound on a socket's buffer is the high-water mark, and a client that stops reading. */
  async function stalledClient(
    highWaterMarkBytes: number,
    overrides: { terminalRetry?: { initialDelayMs: number; multiplier: number; maxDelayMs: number } } = {},
  ): Promise<{ paused: RawClient; buffered: () => number }> {
    env = await startServer({
      ...overrides,
      highWaterMarkBytes,
      // No liveness check and no rate limit within the test.
      heartbeatIntervalMs: 300_000,
      rateLimitPerSecond: 1_000_000,
      rateLimitBurst: 1_000_000,
      rateLimitPerPrincipalPerSecond: 1_000_000,
      maxSubscriptionsPerSocket: 500,
      maxSubscriptionsPerPrincipal: 1000,
    });
    const raw = serverSockets(env);
    const paused = await RawClient.connect(env.wsUrl, { user: 'alice' });
    // Not `client`: closing it would wait for a close handshake the paused client never reads.
    cleanups.push(async () => paused.ws.terminate());
    (paused.ws as unknown as { _socket: Socket })._socket.pause();
    return { paused, buffered: () => raw[0]!.writableLength };
  }

  // Found by a review: pong, error and hello frames went straight to the socket, past the high-water mark,
  // so a client that stopped reading but kept sending pings (or frames answered with an error) had the
  // server buffer every answer until the liveness check ended the socket, a heartbeat interval or two later.
  it('writes no pong or error into a socket above the high-water mark', async () => {
    const highWaterMarkBytes = 64 * 1024;
    const { paused, buffered } = await stalledClient(highWaterMarkBytes);
    // The socket is taken above the mark first, by a task's progress: the answers alone (some 4 MB) can
    // all fit in the kernel's buffers, and then the socket was never above the mark (0 B buffered) and
    // the test passed with every answer written whatever the mark.
    const task = await env!.server.tasks.create({ owner: 'alice', kind: 'k' });
    paused.send({ type: 'subscribe', taskId: task.id, afterSeq: 0 });
    for (let i = 0; i < 10_000 && buffered() <= highWaterMarkBytes; i += 1) {
      await task.progress({ message: 'm'.repeat(4000) });
      if (i % 50 === 49) await sleep(1);
    }
    expect(buffered()).toBeGreaterThan(highWaterMarkBytes);
    const id = 'p'.repeat(64);
    // Far more answers than the kernel's socket buffers hold on loopback (about 7 MB of them).
    for (let round = 0; round < 10; round += 1) {
      for (let i = 0; i < 2000; i += 1) {
        paused.send({ type: 'ping', id });
        paused.send({ type: 'nonsense', id });
      }
      await sleep(10);
    }
    await sleep(200);
    expect(env!.server.connectionCount).toBe(1);
    process.stdout.write(`[answers] server-side buffered: ${buffered()} B (HWM ${highWaterMarkBytes})\n`);
    // Past the mark by at most the one frame that crossed it.
    expect(buffered()).toBeLessThan(highWaterMarkBytes + 8 * 1024);
    // And answers were dropped at the mark (the kernel may take more of the buffer later, and a socket
    // back below the mark gets its answers again, so the bound alone can hold without any drop).
    const dropped = new Map(
      (await env!.server.metrics.framesDropped.get()).values.map((one) => [one.labels.type, one.value]),
    );
    expect(dropped.get('pong')).toBeGreaterThan(0);
    expect(dropped.get('error')).toBeGreaterThan(0);
  }, 30_000);

  // Found with the above: the reset snapshot answering a subscribe whose cursor is ahead of the task went
  // out at once whatever the buffer held, up to 128 KiB per subscribe.
  it('holds reset snapshots while the socket is above the high-water mark', async () => {
    const highWaterMarkBytes = 64 * 1024;
    const { paused, buffered } = await stalledClient(highWaterMarkBytes);
    const first = await env!.server.tasks.create({ owner: 'alice', kind: 'k' });
    const ids: string[] = [first.id];
    for (let i = 1; i < 500; i += 1) {
      const task = await env!.server.tasks.create({ owner: 'alice', kind: 'k' });
      await task.progress({ message: 'm'.repeat(4000) });
      ids.push(task.id);
    }
    // The socket is taken above the mark first, by the first task's progress: the reset snapshots alone
    // could all fit in the kernel's loopback buffers (0 B buffered), whatever the writer did with them.
    paused.send({ type: 'subscribe', taskId: first.id, afterSeq: 0 });
    for (let i = 0; i < 10_000 && buffered() <= highWaterMarkBytes; i += 1) {
      await first.progress({ message: 'm'.repeat(4000) });
      if (i % 50 === 49) await sleep(1);
    }
    expect(buffered()).toBeGreaterThan(highWaterMarkBytes);
    // Each round restarts every subscription: 500 reset snapshots of 4 KB (10 MB in all).
    for (let round = 0; round < 5; round += 1) {
      for (const taskId of ids) paused.send({ type: 'subscribe', taskId, afterSeq: 1000 + round });
      await sleep(300);
    }
    expect(env!.server.connectionCount).toBe(1);
    process.stdout.write(`[resets] server-side buffered: ${buffered()} B (HWM ${highWaterMarkBytes})\n`);
    expect(buffered()).toBeLessThan(highWaterMarkBytes + 8 * 1024);
  }, 30_000);

  // Found by a review: a terminal re-send wrote every frame that fell due in one go once the buffer was
  // below the mark, never looking at it again: a client that stopped reading with 100 unacknowledged
  // terminals of 16 KiB results had 1.6 MB written past the mark at once (12.8 MiB at the frame limit).
  it('re-sends terminal frames only while the socket is below the high-water mark', async () => {
    const highWaterMarkBytes = 16 * 1024;
    const { paused, buffered } = await stalledClient(highWaterMarkBytes, {
      terminalRetry: { initialDelayMs: 20, multiplier: 1, maxDelayMs: 20 },
    });
    const result = { log: 'r'.repeat(16 * 1024 - 20) };
    for (let i = 0; i < 100; i += 1) {
      const task = await env!.server.tasks.create({ owner: 'alice', kind: 'k' });
      await task.complete({ result });
      // Answered by a terminal snapshot of some 16 KiB that the paused client never acknowledges: re-sent
      // every 20 ms, 1.6 MB a round, until the kernel's buffers are full and the server's own fills up.
      paused.send({ type: 'subscribe', taskId: task.id, afterSeq: 0 });
    }
    // Re-sends until the kernel's buffers are full (a few MB on loopback) and the server's own is in use,
    // then 25 more rounds of them.
    for (let wait = 0; wait < 200 && buffered() === 0; wait += 1) await sleep(100);
    expect(buffered()).toBeGreaterThan(0);
    await sleep(500);
    expect(env!.server.connectionCount).toBe(1);
    process.stdout.write(`[re-sends] server-side buffered: ${buffered()} B (HWM ${highWaterMarkBytes})\n`);
    // Past the mark by at most the one frame that crossed it (with its framing), not by a round of them.
    expect(buffered()).toBeLessThan(highWaterMarkBytes + 2 * 17 * 1024);
  }, 60_000);
});
