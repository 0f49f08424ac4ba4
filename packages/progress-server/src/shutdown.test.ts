import { getEventListeners } from 'node:events';
import { createServer } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { connect } from 'node:net';
import { ErrorCode, MemoryProgressStore, ProgressError } from '@finishline/core';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ProgressServer } from './progress-server.js';
import { gate, RawClient, startServer, tokenAuth } from './testing/harness.js';

/**
 * Graceful shutdown leaves nothing behind. Alone in its file, so that the baseline of live handles is
 * not disturbed by other tests' servers.
 */

/**
 * Timers created and neither fired nor cleared. The server unrefs its timers, and Node does not list
 * unref'd timers among its active resources, so they are tracked by wrapping the timer functions.
 */
const pendingTimers = new Set<unknown>();
const real = { setTimeout, setInterval, clearTimeout, clearInterval };

beforeEach(() => {
  vi.spyOn(globalThis, 'setTimeout').mockImplementation(((
    fn: (...args: unknown[]) => void,
    ms?: number,
    ...args: unknown[]
  ) => {
    const timer = real.setTimeout(() => {
      pendingTimers.delete(timer);
      fn(...args);
    }, ms);
    pendingTimers.add(timer);
    return timer;
  }) as typeof setTimeout);
  vi.spyOn(globalThis, 'setInterval').mockImplementation(((
    fn: (...args: unknown[]) => void,
    ms?: number,
    ...args: unknown[]
  ) => {
    const timer = real.setInterval(fn, ms, ...args);
    pendingTimers.add(timer);
    return timer;
  }) as typeof setInterval);
  const clear = (timer: unknown) => {
    pendingTimers.delete(timer);
    real.clearTimeout(timer as NodeJS.Timeout);
  };
  vi.spyOn(globalThis, 'clearTimeout').mockImplementation(clear as typeof clearTimeout);
  vi.spyOn(globalThis, 'clearInterval').mockImplementation(clear as typeof clearInterval);
});

afterEach(() => {
  vi.restoreAllMocks();
  pendingTimers.clear();
});

/** TCP handles (servers and sockets), by kind: Node lists them among its active resources. */
function liveHandles(): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const kind of process.getActiveResourcesInfo()) {
    if (kind.startsWith('TCP')) counts[kind] = (counts[kind] ?? 0) + 1;
  }
  return counts;
}

/** The kinds of which more handles are alive now than in `baseline`. */
function beyond(baseline: Record<string, number>): Record<string, number> {
  const extra: Record<string, number> = {};
  for (const [kind, count] of Object.entries(liveHandles())) {
    if (count > (baseline[kind] ?? 0)) extra[kind] = count - (baseline[kind] ?? 0);
  }
  return extra;
}

/**
 * A server on the application's own http.Server, with a stall timeout far beyond the test (only close() may
 * end a stalled connection there), and the server side of each connection it accepted.
 */
async function onApplicationServer() {
  const httpServer = createServer();
  const progress = new ProgressServer({
    store: new MemoryProgressStore(),
    authenticateToken: tokenAuth,
    server: httpServer,
    sseStallTimeoutMs: 600_000,
  });
  httpServer.on('request', progress.httpHandler());
  const serverSide: Socket[] = [];
  httpServer.on('connection', (socket) => serverSide.push(socket));
  await new Promise<void>((resolve) => httpServer.listen(0, '127.0.0.1', resolve));
  const { port } = httpServer.address() as AddressInfo;
  return { progress, httpServer, serverSide, port };
}

describe('close()', () => {
  it('flushes, closes sockets with 1001, interrupts owned tasks and leaves no timer or socket behind', async () => {
    const before = liveHandles();
    const store = new MemoryProgressStore();
    const env = await startServer({
      store,
      authenticateToken: tokenAuth,
      // Armed all the same (close must clear it), but never due during the test: at 20 ms a loaded
      // machine's stall of one interval ran the liveness tick before the poll phase read the client's pong,
      // and the server terminated the socket (1006, or no snapshots at all) before close() was called.
      heartbeatIntervalMs: 60_000,
      // Never due during the test either: a re-send timer that fires drops out of pendingTimers by itself,
      // so at 5-10 ms a close() that left it armed still passed the poll below.
      terminalRetry: { initialDelayMs: 60_000, maxDelayMs: 60_000 },
      leaseRenewIntervalMs: 50,
      reapIntervalMs: 50,
    });
    const finished = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    const running = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    const client = await RawClient.connect(env.wsUrl, { user: 'alice' });
    client.send({ type: 'subscribe', taskId: finished.id, afterSeq: 0 });
    client.send({ type: 'subscribe', taskId: running.id, afterSeq: 0 });
    await client.next(() => client.frames.filter((frame) => frame.type === 'snapshot').length === 2);
    // An unacknowledged terminal event keeps a retry timer armed until close.
    await finished.complete();
    await client.next((frame) => frame.type === 'event');
    // A socket still waiting for its auth frame holds an auth timer.
    const pending = new RawClient(`${env.wsUrl}`, {});
    await pending.opened;
    const batch = running.runBatch([1, 2], async (_n, { signal }) => {
      await new Promise((_, reject) => signal.addEventListener('abort', () => reject(signal.reason)));
    });

    // A deadline far beyond what the close needs: one that passes terminates sockets that have not
    // finished their close handshake, and the client then sees 1006.
    await env.server.close({ timeoutMs: 10_000 });
    expect((await client.closed).code).toBe(1001);
    expect((await pending.closed).code).toBe(1001);
    expect(await batch).toMatchObject({ status: 'interrupted' });
    // The watcher saw the interruption before the socket closed.
    expect(client.frames.at(-1)).toMatchObject({
      type: 'event',
      event: { type: 'interrupted', taskId: running.id },
    });
    expect(env.server.connectionCount).toBe(0);
    // The store stays open: the server did not create it.
    expect((await store.getTask(running.id))?.status).toBe('interrupted');
    await expect.poll(() => beyond(before)).toEqual({});
    await expect.poll(() => pendingTimers.size).toBe(0);
  });

  it("destroys by its deadline an event stream whose reader stopped reading, on the application's http.Server", async () => {
    const { progress, httpServer, serverSide, port } = await onApplicationServer();
    const task = await progress.tasks.create({ owner: 'alice', kind: 'k' });
    const reader = connect(port, '127.0.0.1');
    try {
      await new Promise((resolve) => reader.once('connect', resolve));
      reader.write(
        `GET /progress/tasks/${task.id}/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer token-alice\r\n\r\n`,
      );
      await new Promise((resolve) => reader.once('data', resolve));
      // The reader stops reading; events go on until the kernel's buffers are full too, and what the
      // stream wrote waits in the process.
      reader.pause();
      const socket = serverSide[0] as Socket;
      const detail = { text: 'x'.repeat(15_000) };
      const stuck = async () => {
        await new Promise((resolve) => setImmediate(resolve));
        return socket.writableNeedDrain && socket.writableLength > 0;
      };
      for (let i = 0; i < 20_000 && !(await stuck()); i += 1) {
        await task.item({ key: `k${i}`, ok: true, detail });
      }
      expect(await stuck()).toBe(true);

      await progress.close({ timeoutMs: 200 });
      // Until 6 December 2026 its connection stayed open, and the stall timer armed, for
      // sseStallTimeoutMs after close() returned (30 s by default): the process could not exit.
      await expect.poll(() => socket.destroyed).toBe(true);
      await expect.poll(() => pendingTimers.size).toBe(0);
    } finally {
      reader.destroy();
      await new Promise((resolve) => httpServer.close(resolve));
    }
  });

  it("destroys by its deadline an HTTP answer whose reader stopped reading, on the application's http.Server", async () => {
    const { progress, httpServer, serverSide, port } = await onApplicationServer();
    const task = await progress.tasks.create({ owner: 'alice', kind: 'k' });
    // A page of 1,000 events of some 15 KB each: 15 MB, far more than the kernels' buffers hold.
    const detail = { text: 'x'.repeat(15_000) };
    for (let i = 0; i < 1000; i += 1) await task.item({ key: `k${i}`, ok: true, detail });
    const reader = connect(port, '127.0.0.1');
    try {
      await new Promise((resolve) => reader.once('connect', resolve));
      reader.write(
        `GET /progress/tasks/${task.id}/events?limit=1000 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer token-alice\r\n\r\n`,
      );
      await new Promise((resolve) => reader.once('data', resolve));
      // The reader stops reading: the rest of the answer waits in the process.
      reader.pause();
      const socket = serverSide[0] as Socket;
      await expect.poll(() => socket.writableNeedDrain && socket.writableLength > 0).toBe(true);

      await progress.close({ timeoutMs: 200 });
      // Its connection stayed open, and the stall timer armed, for sseStallTimeoutMs after close()
      // returned (30 s by default), as an event stream's did until 6 December 2026.
      await expect.poll(() => socket.destroyed).toBe(true);
      await expect.poll(() => pendingTimers.size).toBe(0);
    } finally {
      reader.destroy();
      await new Promise((resolve) => httpServer.close(resolve));
    }
  });

  it("leaves no timer of the answers waiting for the store's first epoch read, which never answers", async () => {
    class HungEpochStore extends MemoryProgressStore {
      override getEpoch(): Promise<string> {
        return new Promise(() => {});
      }
    }
    const env = await startServer({ store: new HungEpochStore(), authenticateToken: tokenAuth });
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    // A task route's answer and a socket's `hello` wait (at most 2 s) for the first read of the epoch.
    const arrived = new Promise((resolve) => env.server.httpServer?.once('request', resolve));
    const answer = fetch(`${env.httpUrl}/progress/tasks/${task.id}`, {
      headers: { authorization: 'Bearer token-alice' },
    }).catch(() => undefined);
    const client = new RawClient(env.wsUrl, { user: 'alice' });
    await client.opened;
    await arrived;
    await new Promise((resolve) => setImmediate(resolve));

    await env.server.close({ timeoutMs: 500 });
    // Until 6 December 2026 each wait's 2 s timer outlived close().
    await expect.poll(() => pendingTimers.size, { timeout: 1000 }).toBe(0);
    await answer;
    client.close();
  });

  it('answers at once the HTTP requests whose hooks hang when close() begins, and leaves no timer of theirs', async () => {
    const store = new MemoryProgressStore();
    const httpServer = createServer();
    const hang = () => new Promise<never>(() => {});
    const progress = new ProgressServer({
      store,
      server: httpServer,
      authenticate: (request) => (request.headers['x-user'] === 'hung' ? hang() : { id: 'alice' }),
      authorize: (principal) => (principal.id === 'alice' ? hang() : true),
    });
    httpServer.on('request', progress.httpHandler());
    await new Promise<void>((resolve) => httpServer.listen(0, '127.0.0.1', resolve));
    try {
      const { port } = httpServer.address() as AddressInfo;
      const task = await progress.tasks.create({ owner: 'alice', kind: 'k' });
      const url = `http://127.0.0.1:${port}/progress/tasks/${task.id}`;
      const arrived = new Promise<void>((resolve) => {
        let count = 0;
        httpServer.on('request', () => {
          count += 1;
          if (count === 3) resolve();
        });
      });
      // A hung authenticate, a hung authorize, and an event stream's hung authorize.
      const answers = [
        fetch(url, { headers: { 'x-user': 'hung' } }),
        fetch(url, { headers: { 'x-user': 'alice' } }),
        fetch(`${url}/stream`, { headers: { 'x-user': 'alice' } }),
      ].map((answer) =>
        answer.then(
          (response) => response.status,
          () => 'no answer',
        ),
      );
      await arrived;
      await new Promise((resolve) => setImmediate(resolve));

      await progress.close({ timeoutMs: 200 });
      // Until 6 December 2026 each waited for its hook until upgradeTimeoutMs (10 s by default), its
      // timer outliving close(), and was then answered 504.
      await expect.poll(() => pendingTimers.size, { timeout: 1000 }).toBe(0);
      expect(await Promise.all(answers)).toEqual([503, 503, 503]);
    } finally {
      httpServer.closeAllConnections();
      await new Promise((resolve) => httpServer.close(resolve));
    }
  });

  it('logs nothing after it resolved: an interrupt or a reap the store answers past the deadline is said before', async () => {
    const store = new MemoryProgressStore();
    const lines: string[] = [];
    const log = (level: string) => (fields: Record<string, unknown>, message?: string) =>
      lines.push(`${level} ${message} ${JSON.stringify(fields)}`);
    const progress = new ProgressServer({
      store,
      authenticateToken: tokenAuth,
      logger: { debug: log('debug'), info: log('info'), warn: log('warn'), error: log('error') },
      reapIntervalMs: 20,
    });
    const task = await progress.tasks.create({ owner: 'alice', kind: 'k' });
    // The store stops answering: the interrupt of the task and a reap are still out at the deadline, and
    // fail once close() resolved.
    const down = gate();
    const unavailable = async (): Promise<never> => {
      await down.promise;
      throw new ProgressError(ErrorCode.StoreUnavailable, 'store down');
    };
    let reaps = 0;
    store.reapExpiredLeases = () => {
      reaps += 1;
      return unavailable();
    };
    store.append = unavailable;
    await expect.poll(() => reaps).toBeGreaterThan(0);

    await progress.close({ timeoutMs: 100 });
    const atClose = lines.length;
    expect(lines.at(-1)).toMatch(/^info progress server closed/);
    // The task left running is logged before close() resolves, with what happens to it.
    expect(
      lines.some(
        (line) => line.startsWith('error could not interrupt a task at shutdown') && line.includes(task.id),
      ),
    ).toBe(true);
    down.open();
    await new Promise((resolve) => setTimeout(resolve, 50));
    // Until 7 December 2026 both failures were logged after "progress server closed".
    expect(lines.slice(atClose)).toEqual([]);
    await expect.poll(() => pendingTimers.size).toBe(0);
  });

  it("leaves no timer or listener of the task side behind: a batch in an outage's retry, a hand-driven task's append in flight, a caller's signal", async () => {
    const store = new MemoryProgressStore();
    const commit = store.append.bind(store);
    const sent = gate();
    const outage = new Set<string>();
    store.append = async (taskId, input, fence) => {
      // The batch's items meet an outage: it waits between attempts (a timer and a listener on its signal).
      if (outage.has(taskId) && input.type === 'item') {
        throw new ProgressError(ErrorCode.StoreUnavailable, 'store down');
      }
      // The hand-driven task's item is slow to commit: shutdown waits for it.
      if (!outage.has(taskId) && input.type === 'item') await sent.promise;
      return commit(taskId, input, fence);
    };
    const progress = new ProgressServer({
      store,
      authenticateToken: tokenAuth,
      leaseRenewIntervalMs: 50,
      reapIntervalMs: 50,
    });
    const batched = await progress.tasks.create({ owner: 'alice', kind: 'k' });
    outage.add(batched.id);
    const byHand = await progress.tasks.create({ owner: 'alice', kind: 'k' });
    const caller = new AbortController();
    const batch = batched.runBatch([1, 2, 3], () => 'ok', { signal: caller.signal });
    const item = byHand.item({ key: 'node-1', ok: true });
    await new Promise((resolve) => setTimeout(resolve, 120));
    expect(getEventListeners(caller.signal, 'abort')).toHaveLength(1);
    setTimeout(() => sent.open(), 50);
    await progress.close({ timeoutMs: 2000 });
    await expect(item).resolves.toMatchObject({ type: 'item' });
    await expect(batch).resolves.toMatchObject({ status: 'interrupted' });
    expect(await store.getTask(byHand.id)).toMatchObject({ status: 'interrupted', done: 1 });
    expect(getEventListeners(caller.signal, 'abort')).toHaveLength(0);
    expect(getEventListeners(batched.signal, 'abort')).toHaveLength(0);
    expect(getEventListeners(byHand.signal, 'abort')).toHaveLength(0);
    expect(pendingTimers.size).toBe(0);
  });

  it('listen() with an invalid httpBasePath rejects and leaves no server, timer or socket behind', async () => {
    const before = liveHandles();
    const store = new MemoryProgressStore();
    await expect(
      ProgressServer.listen({ store, authenticateToken: tokenAuth }, { httpBasePath: '/progress/' }),
    ).rejects.toMatchObject({ code: 'invalid_input' });
    // Before, the server built for it stayed open: its heartbeat, lease and reaper timers kept running.
    await expect.poll(() => pendingTimers.size).toBe(0);
    await expect.poll(() => beyond(before)).toEqual({});
  });
});
