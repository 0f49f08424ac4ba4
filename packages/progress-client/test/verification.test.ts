import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { MemoryProgressStore } from '@finishline/core';
import { ProgressServer } from '@finishline/server';
import { afterEach, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { httpFallback } from '../src/http-fallback.js';
import { ProgressClient } from '../src/progress-client.js';
import type { Watch } from '../src/watch.js';
import { FaultProxy } from './fault-proxy.js';
import { users } from './users.js';

/**
 * The original system's three manual verification cases, automated end to end: a real server on port 0,
 * the real client in Node, and a fault-injecting proxy between them.
 */

interface Rig {
  server: ProgressServer;
  proxy: FaultProxy;
  client: ProgressClient;
}

const rigs: Rig[] = [];

async function rig(serverOptions: { terminalRetryInitialMs?: number } = {}): Promise<Rig> {
  const server = await ProgressServer.listen(
    {
      store: new MemoryProgressStore(),
      authenticate: users,
      ...(serverOptions.terminalRetryInitialMs === undefined
        ? {}
        : {
            terminalRetry: {
              initialDelayMs: serverOptions.terminalRetryInitialMs,
              maxDelayMs: serverOptions.terminalRetryInitialMs,
            },
          }),
    },
    { port: 0, host: '127.0.0.1' },
  );
  const { port } = (server.httpServer as Server).address() as AddressInfo;
  const proxy = await FaultProxy.start(`ws://127.0.0.1:${port}/progress`);
  const client = new ProgressClient({
    url: proxy.url,
    httpUrl: `http://127.0.0.1:${port}/progress`,
    httpFallback: httpFallback(),
    WebSocket,
    headers: { 'x-user': 'alice' },
    random: () => 0, // reconnect at once: the tests are about what is delivered, not when
  });
  const created = { server, proxy, client };
  rigs.push(created);
  return created;
}

afterEach(async () => {
  for (const { client, proxy, server } of rigs.splice(0)) {
    // The client never provoked an error frame (an ack the server could not accept, a bad subscribe…).
    const errors = proxy.connections.flatMap((connection) =>
      connection.fromServer.map((text) => JSON.parse(text)).filter((frame) => frame.type === 'error'),
    );
    expect(errors).toEqual([]);
    await client.close();
    await proxy.close();
    await server.close({ timeoutMs: 1000 });
  }
});

/** What the application saw, in order. */
function record(watch: Watch): string[] {
  const log: string[] = [];
  watch.on('snapshot', (state) => log.push(`snapshot@${state.seq}`));
  watch.on('item', (event) => log.push(`item@${event.seq}:${event.item.key}`));
  watch.on('progress', (event) => log.push(`progress@${event.seq}`));
  watch.on('completed', (event) => log.push(`completed@${event.seq}`));
  watch.on('failed', (event) => log.push(`failed@${event.seq}`));
  watch.on('finished', (state) => log.push(`finished:${state.status}`));
  return log;
}

const NODES = ['node-1', 'node-2', 'node-3', 'node-4', 'node-5', 'node-6', 'node-7'];

/** Items applied after the snapshot, as `key`s, in the order the application saw them. */
const itemKeys = (log: string[]) =>
  log.filter((entry) => entry.startsWith('item@')).map((entry) => entry.split(':')[1]);

describe('the original verification cases, end to end', () => {
  it('a 7-item batch completes and the client sees completion', async () => {
    const { server, client } = await rig();
    const task = await server.tasks.create({ owner: 'alice', kind: 'batch_taint', total: NODES.length });
    const watch = client.watch(task.id);
    const log = record(watch);
    await new Promise((resolve) => watch.once('snapshot', resolve));
    await task.runBatch(NODES, async () => undefined, { key: (node: string) => node });
    const final = await watch.done;
    expect(final).toMatchObject({
      status: 'completed',
      finished: true,
      progress: { total: 7, done: 7, succeeded: 7 },
    });
    expect(itemKeys(log)).toEqual(NODES);
    expect(log.filter((entry) => entry.startsWith('completed@'))).toHaveLength(1);
    expect(log.at(-1)).toBe('finished:completed');
  });

  it('the connection is cut at 80%: the client resumes from its cursor with correct progress and completes', async ({
    annotate,
  }) => {
    const { server, client, proxy } = await rig();
    const task = await server.tasks.create({ owner: 'alice', kind: 'batch_taint', total: NODES.length });
    const watch = client.watch(task.id);
    const log = record(watch);
    await new Promise((resolve) => watch.once('snapshot', resolve));
    let cutDone = false;
    let cutAt = 0;
    proxy.onServerFrame = (frame) => {
      const event = frame.event as { type?: string; progress?: { done: number; total: number } } | undefined;
      if (!cutDone && event?.type === 'item' && event.progress !== undefined && event.progress.done >= 6) {
        cutDone = true; // 6 of 7 items: past 80%
        cutAt = Date.now();
        return 'cut';
      }
      return 'pass';
    };
    for (const node of NODES) await task.item({ key: node, ok: true });
    await task.complete();
    const final = await watch.done;
    // Reconnect at once (random 0), resubscribe, replay: well under the 3 s the case is known for.
    const recoveryMs = Date.now() - cutAt;
    await annotate(`completed ${recoveryMs} ms after the cut`);
    expect(recoveryMs).toBeLessThanOrEqual(3_000);
    expect(cutDone).toBe(true);
    expect(proxy.connections.length).toBeGreaterThanOrEqual(2);
    const resubscribe = proxy.connections[1]?.fromClient
      .map((text) => JSON.parse(text))
      .find((f) => f.type === 'subscribe');
    expect(resubscribe).toEqual({ type: 'subscribe', taskId: task.id, afterSeq: 5 });
    expect(final).toMatchObject({ status: 'completed', progress: { done: 7, total: 7 } });
    expect(itemKeys(log)).toEqual(NODES);
    expect(log.filter((entry) => entry.startsWith('completed@'))).toHaveLength(1);
  });

  it('the terminal frame is dropped: the 100% watchdog recovers it (resync after 3 s)', async ({
    annotate,
  }) => {
    // Server re-sends of the terminal event are pushed out of the way: the watchdog is what must work.
    const { server, client, proxy } = await rig({ terminalRetryInitialMs: 60_000 });
    const task = await server.tasks.create({ owner: 'alice', kind: 'batch_taint', total: NODES.length });
    const watch = client.watch(task.id);
    const log = record(watch);
    await new Promise((resolve) => watch.once('snapshot', resolve));
    let dropped = 0;
    let droppedAt = 0;
    proxy.onServerFrame = (frame) => {
      const event = frame.event as { type?: string } | undefined;
      if (event?.type === 'completed' && dropped === 0) {
        dropped++;
        droppedAt = Date.now();
        return 'drop';
      }
      return 'pass';
    };
    await task.runBatch(NODES, async () => undefined, { key: (node: string) => node });
    const final = await watch.done;
    const recoveryMs = Date.now() - droppedAt;
    expect(dropped).toBe(1);
    expect(final.status).toBe('completed');
    // The documented bound: finishTimeoutMs (3 s by default) after the last item, then one round trip.
    await annotate(
      `recovered ${recoveryMs} ms after the terminal frame was dropped (bound 3000 ms + round trip)`,
    );
    expect(recoveryMs).toBeGreaterThanOrEqual(2_900);
    expect(recoveryMs).toBeLessThanOrEqual(3_000 + 2_000);
    // Recovered by the watchdog's first step, a resync on the same socket.
    expect(proxy.connections).toHaveLength(1);
    const subscribes = proxy.clientFrames().filter((frame) => frame.type === 'subscribe');
    expect(subscribes).toEqual([
      { type: 'subscribe', taskId: task.id, afterSeq: 0 },
      { type: 'subscribe', taskId: task.id, afterSeq: 7 },
    ]);
    expect(log.filter((entry) => entry.startsWith('completed@'))).toHaveLength(1);
    // The terminal ack is on its way (sent in the same tick the application saw the end).
    await waitFor(() => proxy.clientFrames().some((frame) => frame.type === 'ack' && frame.seq === 8));
  }, 15_000);
});

/** Waits until `condition()` holds, for at most `limitMs`; then fails. */
async function waitFor(condition: () => boolean, limitMs = 5_000): Promise<void> {
  const deadline = Date.now() + limitMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`condition still false after ${limitMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}
