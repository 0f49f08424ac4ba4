import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { MemoryProgressStore } from '@finishline/core';
import { ProgressServer } from '@finishline/server';
import { afterEach, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { httpFallback } from '../src/http-fallback.js';
import { ProgressClient } from '../src/progress-client.js';
import { FaultProxy } from './fault-proxy.js';
import { users } from './users.js';

/**
 * Each recovery path alone: the other three are switched off, and the one left must bring the watcher to
 * the terminal state in the scenario it exists for, within its own bound (measured). A control run with
 * every path off shows the scenario does need one.
 *
 * - terminal re-send (server): the terminal frame is dropped; the server sends it again until it is acked.
 * - 100% watchdog (client): the terminal frame is dropped; every item is done, so the client resyncs.
 * - heartbeat gap detection (client): the terminal frame is dropped; the next heartbeat shows the task
 *   ahead of the cursor, so the client resyncs after `behindGraceMs`.
 * - HTTP fallback (client): no WebSocket upgrade succeeds; the client polls the task over HTTP.
 */

const OFF_MS = 600_000;
/** Scheduling slack on a loaded 2-core machine. */
const MARGIN_MS = 1_500;
const ITEMS = ['node-1', 'node-2', 'node-3', 'node-4', 'node-5'];

interface Paths {
  terminalRetryMs: number;
  finishTimeoutMs: number;
  heartbeatIntervalMs: number;
  behindGraceMs: number;
  httpFallbackAfterAttempts: number;
  httpPollIntervalMs: number;
}

const ALL_OFF: Paths = {
  terminalRetryMs: OFF_MS,
  finishTimeoutMs: OFF_MS,
  // The server's longest (300,000 ms since 5 December 2026): no heartbeat is due within a test either way.
  heartbeatIntervalMs: 300_000,
  behindGraceMs: 0,
  httpFallbackAfterAttempts: 0,
  httpPollIntervalMs: OFF_MS,
};

const cleanups: (() => Promise<void>)[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function rig(paths: Paths) {
  const server = await ProgressServer.listen(
    {
      store: new MemoryProgressStore(),
      authenticate: users,
      heartbeatIntervalMs: paths.heartbeatIntervalMs,
      terminalRetry: { initialDelayMs: paths.terminalRetryMs, maxDelayMs: paths.terminalRetryMs },
    },
    { port: 0, host: '127.0.0.1' },
  );
  cleanups.push(() => server.close({ timeoutMs: 1000 }));
  const { port } = (server.httpServer as Server).address() as AddressInfo;
  const proxy = await FaultProxy.start(`ws://127.0.0.1:${port}/progress`);
  cleanups.push(() => proxy.close());
  const client = new ProgressClient({
    url: proxy.url,
    httpUrl: `http://127.0.0.1:${port}/progress`,
    httpFallback: httpFallback(),
    WebSocket,
    headers: { 'x-user': 'alice' },
    random: () => 0,
    reconnect: { initialDelayMs: 20, maxDelayMs: 50 },
    finishTimeoutMs: paths.finishTimeoutMs,
    behindGraceMs: paths.behindGraceMs,
    httpFallbackAfterAttempts: paths.httpFallbackAfterAttempts,
    httpPollIntervalMs: paths.httpPollIntervalMs,
  });
  client.on('error', () => undefined);
  cleanups.push(() => client.close());
  return { server, proxy, client };
}

/**
 * Drops the first terminal frame; tells when it was dropped and how many terminal frames (re-sends) the
 * proxy let through after it.
 */
function dropFirstTerminal(proxy: FaultProxy): {
  droppedAt: () => number | undefined;
  resent: () => number;
} {
  let droppedAt: number | undefined;
  let resent = 0;
  proxy.onServerFrame = (frame) => {
    const event = frame.event as { type?: string } | undefined;
    if (event?.type !== 'completed') return 'pass';
    if (droppedAt === undefined) {
      droppedAt = Date.now();
      return 'drop';
    }
    resent += 1;
    return 'pass';
  };
  return { droppedAt: () => droppedAt, resent: () => resent };
}

/** Runs the batch with a watcher attached; returns how long after the drop the watcher finished, or undefined. */
async function dropScenario(
  paths: Paths,
  limitMs: number,
): Promise<{ elapsed: number; resent: number } | undefined> {
  const { server, client, proxy } = await rig(paths);
  const task = await server.tasks.create({ owner: 'alice', kind: 'batch', total: ITEMS.length });
  const watch = client.watch(task.id);
  await new Promise((resolve) => watch.once('snapshot', resolve));
  const drop = dropFirstTerminal(proxy);
  await task.runBatch(ITEMS, async () => undefined, { key: (node: string) => node });
  const finished = await Promise.race([
    watch.done.then(() => Date.now()),
    new Promise<undefined>((resolve) => setTimeout(resolve, limitMs)),
  ]);
  expect(drop.droppedAt()).toBeDefined();
  if (finished === undefined) return undefined;
  expect(watch.getSnapshot()).toMatchObject({ finished: true, status: 'completed', seq: ITEMS.length + 1 });
  return { elapsed: finished - (drop.droppedAt() as number), resent: drop.resent() };
}

describe('one recovery path at a time', () => {
  it('control: with every path off, a dropped terminal frame is never recovered', async () => {
    expect(await dropScenario(ALL_OFF, 1_500)).toBeUndefined();
  });

  it('terminal re-send alone recovers a dropped terminal frame within the first retry delay', async ({
    annotate,
  }) => {
    const recovered = await dropScenario({ ...ALL_OFF, terminalRetryMs: 100 }, 100 + MARGIN_MS);
    expect(recovered).toBeDefined();
    await annotate(`recovered ${recovered?.elapsed} ms after the drop (bound: retry delay 100 ms)`);
    // What recovered it is the server's re-send of the terminal frame. (Until 5 December 2026 this was a
    // lower bound of 90 ms on the time from the drop: the server, the proxy and the client share this
    // process, and on a loaded machine the proxy read the first frame late enough that the re-send, timed
    // from the server's write, came less than 90 ms after the drop.)
    expect(recovered?.resent).toBeGreaterThanOrEqual(1);
  });

  it('the 100% watchdog alone recovers a dropped terminal frame within finishTimeoutMs', async ({
    annotate,
  }) => {
    const recovered = await dropScenario({ ...ALL_OFF, finishTimeoutMs: 300 }, 300 + MARGIN_MS);
    expect(recovered).toBeDefined();
    await annotate(`recovered ${recovered?.elapsed} ms after the drop (bound: finishTimeoutMs 300 ms)`);
  });

  it('heartbeat gap detection alone recovers a dropped terminal frame within heartbeat + behindGraceMs', async ({
    annotate,
  }) => {
    const recovered = await dropScenario(
      { ...ALL_OFF, heartbeatIntervalMs: 150, behindGraceMs: 100 },
      150 + 100 + MARGIN_MS,
    );
    expect(recovered).toBeDefined();
    await annotate(`recovered ${recovered?.elapsed} ms after the drop (bound: heartbeat 150 + grace 100 ms)`);
  });

  it('the HTTP fallback alone brings a watcher that can never open a socket to the terminal state', async ({
    annotate,
  }) => {
    const { server, client, proxy } = await rig({
      ...ALL_OFF,
      httpFallbackAfterAttempts: 2,
      httpPollIntervalMs: 100,
    });
    proxy.refuseNext = Number.MAX_SAFE_INTEGER;
    const task = await server.tasks.create({ owner: 'alice', kind: 'batch', total: ITEMS.length });
    const watch = client.watch(task.id);
    await task.runBatch(ITEMS, async () => undefined, { key: (node: string) => node });
    const completedAt = Date.now();
    const finishedAt = await Promise.race([
      watch.done.then(() => Date.now()),
      new Promise<undefined>((resolve) => setTimeout(resolve, 100 + MARGIN_MS)),
    ]);
    expect(finishedAt).toBeDefined();
    expect(watch.getSnapshot()).toMatchObject({ finished: true, status: 'completed', seq: ITEMS.length + 1 });
    expect(proxy.connections).toHaveLength(0);
    expect(proxy.refused).toBeGreaterThanOrEqual(2);
    await annotate(
      `finished ${(finishedAt as number) - completedAt} ms after the commit (poll interval 100 ms; limit 100 + ${MARGIN_MS} ms)`,
    );
  });
});
