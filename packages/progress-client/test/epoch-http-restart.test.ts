import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { MemoryProgressStore } from '@finishline/core';
import { ProgressServer } from '@finishline/server';
import { afterEach, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { httpFallback } from '../src/http-fallback.js';
import { ProgressClient } from '../src/progress-client.js';
import { FaultProxy } from './fault-proxy.js';
import { users } from './users.js';

/**
 * A `hello` with another epoch starts a watch's cursor over from 0 and keeps what it shows until a
 * snapshot replaces it (protocol.md, delivery rule 1). A socket lost right after that `hello`, before the
 * answer to its subscribe, and HTTP polling took over: the poll read the events after seq 0 and applied
 * them on top of the old epoch's view, so the application was shown event 1 after event 3, with no
 * snapshot between (the chaos suite's "duplicate event", lastSeq 10, seq 1). The poll now reads the task
 * first for a cursor at 0, as it does for a watch that has nothing yet.
 */

const cleanups: (() => Promise<void>)[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

const shown: string[] = [];

async function until(condition: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 5000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(shown)}`);
    await sleep(10);
  }
}

it('a watch whose socket is lost right after a hello of a new epoch is shown a snapshot before the events polled over HTTP', async () => {
  const store = new MemoryProgressStore();
  const server = await ProgressServer.listen(
    { store, authenticate: users, heartbeatIntervalMs: 300_000 },
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
    httpFallbackAfterAttempts: 2,
    httpPollIntervalMs: 100,
  });
  client.on('error', () => undefined);
  cleanups.push(async () => client.close());

  await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' });
  const watch = client.watch('job-1');
  shown.length = 0;
  watch.on('snapshot', (state) => shown.push(`snap:${state.seq}`));
  watch.on('progress', (event) => shown.push(`p:${event.seq}`));
  for (let i = 1; i <= 3; i++) await store.append('job-1', { type: 'progress', done: i, total: 10 });
  await until(() => watch.getSnapshot().seq === 3, 'the watch at seq 3');

  // The socket goes and the store's epoch is renewed before the client is back. Its next connection's
  // hello names the new epoch, and that connection is lost as the client subscribes; every later upgrade
  // is refused, so the client polls over HTTP from the cursor the hello set to 0.
  proxy.onClientFrame = (frame) => {
    if (frame.type !== 'subscribe') return 'pass';
    proxy.refuseNext = Number.MAX_SAFE_INTEGER;
    return 'cut';
  };
  const before = proxy.connections.length;
  for (const connection of proxy.connections) connection.cut();
  await store.renewEpoch();
  const shownBefore = shown.length;
  await until(() => proxy.connections.length > before, 'a new connection');
  await until(() => shown.length > shownBefore, 'the poll');
  await store.append('job-1', { type: 'progress', done: 4, total: 10 });
  await store.append('job-1', { type: 'progress', done: 5, total: 10 });
  await until(() => watch.getSnapshot().progress?.done === 5, 'the watch at done 5');

  // Shown in order: each event the next seq after what was shown, or after a snapshot (a restart).
  let last = 0;
  const outOfOrder: string[] = [];
  for (const entry of shown) {
    const [kind, seq] = entry.split(':') as [string, string];
    if (kind === 'p' && Number(seq) !== last + 1)
      outOfOrder.push(`${entry} after ${last} in ${shown.join(' ')}`);
    last = Number(seq);
  }
  expect(outOfOrder).toEqual([]);
  expect(shown.filter((entry) => entry.startsWith('snap:')).length).toBeGreaterThan(0);
}, 15_000);
