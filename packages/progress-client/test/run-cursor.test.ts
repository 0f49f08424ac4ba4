import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { ProgressStore } from '@finishline/core';
import { MemoryProgressStore } from '@finishline/core';
import { ProgressServer } from '@finishline/server';
import { SqliteProgressStore } from '@finishline/sqlite';
import { afterEach, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { httpFallback } from '../src/http-fallback.js';
import type { ProgressClientOptions } from '../src/options.js';
import { ProgressClient } from '../src/progress-client.js';
import { type StreamingFetch, sseFallback } from '../src/sse.js';
import type { FetchLike } from '../src/transport-types.js';
import type { Watch } from '../src/watch.js';
import { FaultProxy } from './fault-proxy.js';
import { users } from './users.js';

/**
 * A cursor names no run of a task id. A watch following over HTTP polling (no socket) that comes back
 * (requests held here: a laptop asleep) once retention purged its run and a new task of the id ended at
 * the watch's very seq got `task` at its cursor's seq and no event: taken for a snapshot at the cursor,
 * stale once the watch applied frames, and the watch polled for ever. In one run an unfinished watch
 * never meets its task ended at its own seq (it would have applied that end), so that answer starts the
 * watch over from it, as the socket's reset snapshot does. Over the socket the server marks that snapshot
 * `reset` (@finishline/server, subscriptions.ts): unmarked, the client took it for stale and waited.
 */

const cleanups: (() => Promise<void>)[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

const stores: [string, () => ProgressStore][] = [
  ['memory', () => new MemoryProgressStore()],
  ['sqlite', () => new SqliteProgressStore({ database: ':memory:' })],
];

describe.each(stores)('a watch back after its run was purged (%s)', (_name, open) => {
  it("over HTTP polling, gets the end of the id's new run that ended at the watch's seq, instead of polling for ever", async () => {
    const { store, port, proxy, connect } = await serverBehindProxy(open);
    proxy.refuseNext = Number.MAX_SAFE_INTEGER;
    let held = false;
    const heldFetch: FetchLike = async (...args) => {
      while (held) await sleep(10);
      return (globalThis.fetch as FetchLike)(...args);
    };
    const client = connect({
      httpUrl: `http://127.0.0.1:${port}/progress`,
      httpFallback: httpFallback(),
      fetch: heldFetch,
      httpFallbackAfterAttempts: 2,
      httpPollIntervalMs: 100,
    });

    const watch = await watchRun1ToSeq3(store, client);

    // Away: no request goes out (those in flight land first), while run 1 ends, is purged, and run 2 of
    // the id ends at seq 3.
    held = true;
    await sleep(300);
    await endRun1ThenRun2AtSeq3(store);
    held = false;

    await expectRun2sEnd(watch);
  });

  it("over the socket, gets the end of the id's new run that ended at the watch's seq (the server's reset)", async () => {
    const { store, proxy, connect } = await serverBehindProxy(open);
    const client = connect();

    const watch = await watchRun1ToSeq3(store, client);

    // Away: the socket is cut and no other one opens while run 1 ends, is purged, and run 2 ends at seq 3.
    proxy.refuseNext = Number.MAX_SAFE_INTEGER;
    for (const connection of proxy.connections) connection.cut();
    await endRun1ThenRun2AtSeq3(store);
    proxy.refuseNext = 0;

    await expectRun2sEnd(watch);
  });

  it("over Server-Sent Events, gets the end of the id's new run that ended at the watch's seq (not a 204)", async () => {
    const { store, port, proxy, connect } = await serverBehindProxy(open);
    proxy.refuseNext = Number.MAX_SAFE_INTEGER;
    let held = false;
    const streams = new Set<AbortController>();
    // Streams held while `held`; those open are cut below (their connections lost).
    const heldFetch: StreamingFetch = async (url, init) => {
      while (held) await sleep(10);
      const abort = new AbortController();
      init.signal?.addEventListener('abort', () => abort.abort());
      streams.add(abort);
      return globalThis.fetch(url, { ...init, signal: abort.signal });
    };
    const client = connect({
      httpUrl: `http://127.0.0.1:${port}/progress`,
      preferFallback: true,
      fallbackTransport: sseFallback({ fetch: heldFetch }),
    });

    const watch = await watchRun1ToSeq3(store, client);

    held = true;
    for (const abort of streams) abort.abort();
    await sleep(100);
    await endRun1ThenRun2AtSeq3(store);
    held = false;

    await expectRun2sEnd(watch);
  });
});

/**
 * A server on `open()`'s store behind a fault proxy; `connect(options)`: a client of it (user alice) through
 * the proxy, retrying within 50 ms, with `options`.
 */
async function serverBehindProxy(open: () => ProgressStore) {
  const store = open();
  cleanups.push(async () => store.close?.());
  const server = await ProgressServer.listen(
    { store, authenticate: users, heartbeatIntervalMs: 300_000 },
    { port: 0, host: '127.0.0.1' },
  );
  cleanups.push(() => server.close({ timeoutMs: 1000 }));
  const { port } = (server.httpServer as Server).address() as AddressInfo;
  const proxy = await FaultProxy.start(`ws://127.0.0.1:${port}/progress`);
  cleanups.push(() => proxy.close());
  const connect = (options: Partial<ProgressClientOptions> = {}) => {
    const client = new ProgressClient({
      url: proxy.url,
      WebSocket,
      headers: { 'x-user': 'alice' },
      random: () => 0,
      reconnect: { initialDelayMs: 20, maxDelayMs: 50 },
      ...options,
    });
    client.on('error', () => undefined);
    cleanups.push(async () => client.close());
    return client;
  };
  return { store, port, proxy, connect };
}

/** Run 1 of `job-1` at seq 3, followed by a watch of `client` that has seen it. */
async function watchRun1ToSeq3(store: ProgressStore, client: ProgressClient): Promise<Watch> {
  await store.createTask({ id: 'job-1', owner: 'alice', kind: 'first' });
  const watch = client.watch('job-1');
  for (let i = 1; i <= 3; i++) await store.append('job-1', { type: 'progress', message: `run 1, ${i}` });
  const deadline = Date.now() + 5000;
  while (watch.getSnapshot().seq !== 3 && Date.now() < deadline) await sleep(20);
  expect(watch.getSnapshot()).toMatchObject({ seq: 3, finished: false });
  return watch;
}

/** Run 1 ends and is purged; run 2 of the id (kind `second`) ends at seq 3, the watch's cursor. */
async function endRun1ThenRun2AtSeq3(store: ProgressStore): Promise<void> {
  await store.append('job-1', { type: 'completed' });
  // Retention leaves a task in the millisecond it was created (its id taken again would be the same run).
  await sleep(2);
  expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(1);
  await store.createTask({ id: 'job-1', owner: 'alice', kind: 'second', total: 2 });
  await store.append('job-1', { type: 'item', key: 'a', ok: true });
  await store.append('job-1', { type: 'item', key: 'b', ok: true });
  await store.append('job-1', { type: 'completed', result: { run: 2 } });
}

/** The watch finishes, within 3 s, with run 2's end. */
async function expectRun2sEnd(watch: Watch): Promise<void> {
  const finished = await Promise.race([watch.done.then(() => true), sleep(3000).then(() => false)]);
  expect(finished).toBe(true);
  expect(watch.getSnapshot()).toMatchObject({ finished: true, status: 'completed', seq: 3, kind: 'second' });
}
