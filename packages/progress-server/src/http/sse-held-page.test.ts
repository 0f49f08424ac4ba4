import { EventEmitter } from 'node:events';
import { request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { Task, TaskEvent } from '@finishline/core';
import { MemoryProgressStore } from '@finishline/core';
import { afterEach, expect, it, vi } from 'vitest';
import { FairReads } from '../hub/fair-reads.js';
import { StoreEpoch } from '../hub/store-epoch.js';
import { TaskHub } from '../hub/task-hub.js';
import { silentLogger } from '../logger.js';
import { ServerMetrics } from '../metrics.js';
import { PrincipalLimits } from '../principal-limits.js';
import { sleep, startServer, type TestServer } from '../testing/harness.js';
import { MAX_HELD_BYTES, type OpenStream, streamTask } from './sse-stream.js';

/**
 * A stalled event stream holds at most `MAX_HELD_BYTES` of the page it was writing (sse-stream.ts). The
 * events a store read returns are this stream's own copies: each is watched through a WeakRef, and what a
 * full garbage collection leaves alive while the reader does not read is what the stream pins (with what
 * the hub keeps of the task, left out of the count).
 */

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

let env: TestServer | undefined;
afterEach(async () => {
  await env?.close();
  env = undefined;
});

/** A memory store that keeps a WeakRef to every event its reads return. */
class WatchedStore extends MemoryProgressStore {
  readonly read: Array<{ seq: number; ref: WeakRef<TaskEvent> }> = [];
  override async readEvents(taskId: string, afterSeq: number, limit?: number): Promise<TaskEvent[]> {
    const events = await super.readEvents(taskId, afterSeq, limit);
    for (const event of events) this.read.push({ seq: event.seq, ref: new WeakRef(event) });
    return events;
  }
}

// Found by measurement (7 December 2026): the whole rest of the page stayed held, a page of 1,000 events
// of 16 KiB items (some 20 MB) per stalled stream, 100 streams of one principal at once.
it('holds at most MAX_HELD_BYTES of a page for a reader that stopped reading, and still delivers every event', async () => {
  const { store, stream, task } = await stalledStreamOf1001Items({});
  // The hub keeps a task's latest events (up to 512, hub/recent-events.ts), these among them, for every
  // reader of the task alike: counted are the page's first 448, which only this stream can be holding.
  const alive = store.read.filter(({ seq, ref }) => seq < 450 && ref.deref() !== undefined).length;
  // 1 MiB of 16 KiB frames is 64 of them.
  expect(alive).toBeLessThan(100);

  // The reader reads again: every item arrives, once, in order, and the task's end (which ends the stream).
  await task.complete();
  const { keys, text } = await stream.readAll();
  expect(keys).toEqual(Array.from({ length: 1000 }, (_, i) => `k${i + 2}`));
  expect(text).toContain('"completed"');
}, 30_000);

/**
 * A server with `options` on a {@link WatchedStore}, a task of 1,001 items of 16 KiB, and a stream of it
 * resumed 1,000 events back whose reader reads nothing: one page of 1,000 events read from the store for
 * it. The server writes until the connection's buffers are full, then holds the rest; garbage is
 * collected before this returns, so what is still alive is what the stream and the hub pin.
 */
async function stalledStreamOf1001Items(options: Parameters<typeof startServer>[0]) {
  const store = new WatchedStore();
  env = await startServer({ store, sseStallTimeoutMs: 60_000, ...options });
  const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
  const detail = 'x'.repeat(16_000);
  for (let item = 1; item <= 1001; item++) await task.item({ key: `k${item}`, ok: true, detail });
  const stream = await pausedStream(env.httpUrl, task.id);
  await sleep(1000);
  gc();
  await sleep(10);
  gc();
  expect(store.read.length).toBeGreaterThanOrEqual(1000);
  return { store, stream, task, server: env.server };
}

/** A stream of `taskId` resumed after its seq 1 for alice, paused at once: its reader reads nothing. */
async function pausedStream(url: string, taskId: string) {
  const response: IncomingMessage = await new Promise((resolve, reject) => {
    const request = httpRequest(
      `${url}/progress/tasks/${taskId}/stream?afterSeq=1`,
      { headers: { 'x-user': 'alice' } },
      resolve,
    );
    request.on('error', reject);
    request.end();
  });
  expect(response.statusCode).toBe(200);
  const socket = response.socket as Socket;
  socket.pause();
  response.pause();
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  return {
    /** Reads again: resolves, once the stream ended (the server closed it), with its text and its item keys. */
    readAll: async (): Promise<{ text: string; keys: Array<string | undefined> }> => {
      let text = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => {
        text += chunk;
      });
      response.on('error', () => undefined);
      socket.resume();
      response.resume();
      await Promise.race([closed, sleep(10_000)]);
      const keys = text
        .split('\n')
        .filter((line) => line.startsWith('data: '))
        .map(
          (line) =>
            JSON.parse(line.slice('data: '.length)) as { event?: { type: string; item?: { key: string } } },
        )
        .flatMap((frame) => (frame.event?.type === 'item' ? [frame.event.item?.key] : []));
      return { text, keys };
    },
  };
}

// Found by a review (7 December 2026): each stalled stream's held page (up to 1 MiB) was counted in no
// budget: a principal's 100 streams held 100 MiB, beside the 64 MiB maxQueuedBytesPerPrincipal of its
// sockets' queues. What they hold now counts in that budget, and a stream whose page would take its
// principal past it ends, as such a socket does (its reader resumes from its Last-Event-ID). Measured
// here with a budget below one held page. And (same review) per principal only, any number of principals'
// streams held their pages: they count in the bound over all principals too, `maxQueuedBytesTotal`.
it.each(['maxQueuedBytesPerPrincipal', 'maxQueuedBytesTotal'] as const)(
  'counts the page a stalled stream holds in %s',
  async (bound) => {
    const budget = 512 * 1024;
    const { store, stream, task, server } = await stalledStreamOf1001Items({ [bound]: budget });
    // The events of the store's reads still alive: what this reader pins, its held page and what the hub
    // keeps of the task it follows for it. Before the fix 277 of them (4.4 MB), against a 512 KiB budget.
    const alive = store.read.filter(({ ref }) => ref.deref() !== undefined).length;
    expect(alive * 16_000).toBeLessThanOrEqual(budget);
    const { values } = await server.metrics.sseStreamsClosed.get();
    expect(values.map((value) => [value.labels.reason, value.value])).toEqual([['max_queued_bytes', 1]]);

    // Ended (destroyed, as a stalled one is: what its buffers held may be lost with the connection), never
    // out of order; the reader resumes from its Last-Event-ID.
    await task.complete();
    const { keys } = await stream.readAll();
    expect(keys.length).toBeLessThan(1000);
    expect(keys).toEqual(Array.from({ length: keys.length }, (_, i) => `k${i + 2}`));
  },
  60_000,
);

// Found by a review (7 December 2026): the page was cut once it had reached MAX_HELD_BYTES, the event that
// crossed the bound still held, so a stalled stream held up to 1 MiB and one more event (16 KiB frames:
// 66 of them, 1,060,000 bytes), where the documented bound is 1 MiB. With `maxQueuedBytesPerPrincipal` set
// to that 1 MiB, a principal's one stalled stream was ended (`max_queued_bytes`) for a page within it.
// Served by `streamTask` itself, to a response whose buffer the test says is full: no timing involved.
// Found by a review (7 December 2026): the page was weighed by its frames' `length` (UTF-16 units), so a
// page of CJK text (one unit, three UTF-8 bytes a character) held up to three times the documented 1 MiB:
// 205 frames of 15,100 bytes, 3 MB. The frames the stream writes once its reader drains are the page it
// held, weighed here by their bytes.
it.each([
  ['ASCII', 'x'.repeat(16_000)],
  ['CJK (3 bytes a character)', '\u8282'.repeat(5_000)],
])(
  'holds no more than MAX_HELD_BYTES of the page, the event that would cross it left to be read again (%s)',
  async (_, detail) => {
    const store = new MemoryProgressStore();
    const task = await store.createTask({ owner: 'alice', kind: 'k' });
    for (let item = 1; item <= 1001; item++) {
      await store.append(task.id, { type: 'item', key: `k${item}`, ok: true, detail });
    }
    const metrics = new ServerMetrics({ registry: undefined, prefix: 'test_', feed: store.changes });
    const reads = new FairReads({ maxConcurrent: 4, maxPerPrincipal: 2 });
    const hub = new TaskHub({
      store,
      logger: silentLogger,
      metrics,
      retryDelayMs: 10,
      reads,
      maxReplayEvents: 1000,
    });
    hub.start();
    const limits = new PrincipalLimits({
      maxSockets: 10,
      maxSubscriptions: 10,
      ratePerSecond: 100,
      maxQueuedBytes: MAX_HELD_BYTES,
      clock: Date.now,
    });
    // A response whose buffer is full from the third event frame on: `write` says so, as node's does.
    const written: string[] = [];
    let full = true;
    const response = Object.assign(new EventEmitter(), {
      destroyed: false,
      writableEnded: false,
      writableFinished: false,
      writeHead: () => undefined,
      write: (chunk: string) => {
        written.push(chunk);
        return !full || written.filter((text) => text.includes('"type":"event"')).length < 3;
      },
      end: () => {
        response.writableEnded = true;
      },
      destroy: () => {
        response.destroyed = true;
      },
    });
    // A GET without a body, read to its end (the stream answers a request with a body still coming apart).
    const request = Object.assign(new EventEmitter(), {
      socket: { destroyed: false },
      headers: {},
      complete: true,
    });
    const open = new Set<OpenStream>();
    let released = false;
    streamTask(
      {
        hub,
        epoch: new StoreEpoch(store, silentLogger),
        limits,
        logger: silentLogger,
        metrics,
        heartbeatIntervalMs: 60_000,
        sseStallTimeoutMs: 60_000,
        sseStreamLifetimeMs: 0,
        maxReplayEvents: 1000,
        clock: Date.now,
        reconnectsPerSecond: 0,
        open,
      },
      {
        task: (await store.getTask(task.id)) as Task,
        // A resume one event in: a page of 1,000 events read for this stream.
        from: { seq: 1 },
        principal: { id: 'alice' },
        authorize: async () => true,
        hookTimeoutMs: 1000,
        request: request as unknown as IncomingMessage,
        response: response as unknown as ServerResponse,
        release: () => {
          released = true;
        },
      },
    );
    try {
      // The page was read and written until the buffer said it was full: the rest of it is held (or, before
      // the fix, 66 frames of 16,070 bytes were, past the principal's 1 MiB, and the stream ended for them).
      await vi.waitFor(() => expect(limits.usage('alice').queuedBytes > 0 || released).toBe(true), {
        timeout: 10_000,
      });
      expect((await metrics.sseStreamsClosed.get()).values).toEqual([]);
      const held = limits.usage('alice').queuedBytes;
      expect(held).toBeLessThanOrEqual(MAX_HELD_BYTES);
      expect(held).toBeGreaterThan(MAX_HELD_BYTES - 20_000);
      // The reader drains: the held rest of the page is written at once, before anything is read again.
      const before = written.length;
      full = false;
      response.emit('drain');
      const frames = written.slice(before).map((chunk) => /\ndata: (.*)\n\n$/s.exec(chunk)?.[1] ?? '');
      expect(frames.length).toBeGreaterThan(0);
      const bytes = frames.reduce((sum, frame) => sum + Buffer.byteLength(frame, 'utf8'), 0);
      expect(bytes).toBe(held);
      expect(bytes).toBeLessThanOrEqual(MAX_HELD_BYTES);
    } finally {
      for (const stream of open) await stream.shutdown(Date.now());
      hub.close();
      reads.close();
    }
    expect(limits.usage('alice').queuedBytes).toBe(0);
  },
);
