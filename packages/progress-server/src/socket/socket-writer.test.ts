import {
  ErrorCode,
  MemoryProgressStore,
  PROTOCOL_VERSION,
  type ServerFrame,
  type TaskEvent,
  type TaskView,
} from '@finishline/core';
import { TERMINAL_RETRY_DEFAULTS } from '@finishline/core/internal';
import { describe, expect, it, vi } from 'vitest';
import WebSocket from 'ws';
import { StoreEpoch } from '../hub/store-epoch.js';
import { silentLogger } from '../logger.js';
import { ServerMetrics } from '../metrics.js';
import { PrincipalLimits, type QueuedBytesBound } from '../principal-limits.js';
import type { WrittenLog } from './socket-writer.js';
import { SocketWriter } from './socket-writer.js';
import { Subscription, type SubscriptionContext } from './subscription.js';

/** A writer over a stand-in socket whose `bufferedAmount` the test sets; `sent` is what reached it. */
function writerOver(
  highWaterMarkBytes: number,
  maxQueuedFrames = 10_000,
  queuedBytes?: (delta: number) => QueuedBytesBound | undefined,
  maxQueuedBytes = 16 * 1024 * 1024,
) {
  const store = new MemoryProgressStore();
  const sent: string[] = [];
  const bounds: string[] = [];
  const ws = {
    readyState: WebSocket.OPEN,
    bufferedAmount: 0,
    send: (text: string) => sent.push(text),
    ping: () => undefined,
  };
  const metrics = new ServerMetrics({ registry: undefined, prefix: 'test_', feed: store.changes });
  const writer = new SocketWriter({
    ws: ws as unknown as WebSocket,
    options: {
      clock: Date.now,
      terminalRetry: TERMINAL_RETRY_DEFAULTS,
      highWaterMarkBytes,
      backpressurePollMs: 10,
      maxQueuedFrames,
      maxQueuedBytes,
    },
    metrics,
    logger: silentLogger,
    connectionId: 1,
    version: PROTOCOL_VERSION,
    epoch: new StoreEpoch(store, silentLogger),
    isOpen: () => true,
    guard: (fn) => fn(),
    queuedBytes,
    overflow: (bound) => {
      bounds.push(bound);
    },
    log: () => undefined,
  });
  return { writer, ws, sent, metrics, overflows: () => bounds.length, bounds };
}

/** The dropped-frames counter by frame type, as the registry exposes it. */
async function dropped(metrics: ServerMetrics): Promise<Record<string, number>> {
  const metric = await metrics.registry.getSingleMetric('test_frames_dropped_total')?.get();
  return Object.fromEntries((metric?.values ?? []).map((value) => [String(value.labels.type), value.value]));
}

describe('SocketWriter answers above the high-water mark', () => {
  it('counts each answer and heartbeat it drops in frames_dropped_total, by frame type', async () => {
    const { writer, ws, sent, metrics } = writerOver(1024);
    const pong: ServerFrame = { type: 'pong', requestId: 'p1', time: 1 };
    const heartbeat: ServerFrame = { type: 'heartbeat', time: 1, seqs: {} };

    // Below the mark: written, nothing counted.
    expect(writer.send(pong)).toBe(true);
    expect(sent).toHaveLength(1);
    expect(await dropped(metrics)).toEqual({});

    // A peer that stopped reading: every answer is dropped, and each drop is counted.
    ws.bufferedAmount = 4096;
    expect(writer.send(pong)).toBe(false);
    expect(writer.send(pong)).toBe(false);
    expect(writer.send(heartbeat)).toBe(false);
    writer.sendError(ErrorCode.InvalidInput, 'bad frame', {});
    expect(sent).toHaveLength(1);
    expect(await dropped(metrics)).toEqual({ pong: 2, heartbeat: 1, error: 1 });
    writer.stop();
  });
});

describe('SocketWriter over maxQueuedFrames', () => {
  /** An item of task `a` (untracked: each is an entry of its own in the queue; none is ever written). */
  const item = (seq: number) =>
    ({
      taskId: 'a',
      seq,
      time: 1,
      type: 'item',
      item: { key: `k${seq}`, ok: true },
      progress: { total: null, done: seq, succeeded: seq, failed: 0 },
    }) as unknown as TaskEvent;
  const log = { wrote: () => undefined } as unknown as WrittenLog;

  it('ends the socket once, at the first entry past the bound, and then holds and sends nothing', () => {
    const { writer, ws, sent, overflows } = writerOver(1024, 3);
    ws.bufferedAmount = 4096;
    for (let seq = 1; seq <= 3; seq++) writer.pushEvent(item(seq), log);
    // At the bound: still held for a reader that catches up.
    expect(overflows()).toBe(0);
    writer.pushEvent(item(4), log);
    expect(overflows()).toBe(1);
    // The socket is ending: what arrives meanwhile is neither queued nor a second end.
    writer.pushEvent(item(5), log);
    writer.pushSnapshot({ id: 'b', seq: 1 } as TaskView);
    writer.overflow('maxQueuedFrames');
    expect(overflows()).toBe(1);
    // Nothing was kept for it: a drain has nothing to write.
    ws.bufferedAmount = 0;
    writer.drain();
    expect(sent).toEqual([]);
    expect(writer.flushing).toBe(false);
    writer.stop();
  });

  it('counts snapshots toward the bound too', () => {
    const { writer, ws, overflows } = writerOver(1024, 2);
    ws.bufferedAmount = 4096;
    for (const id of ['a', 'b']) writer.pushSnapshot({ id, seq: 1 } as TaskView);
    expect(overflows()).toBe(0);
    writer.pushSnapshot({ id: 'c', seq: 1 } as TaskView);
    expect(overflows()).toBe(1);
    writer.stop();
  });
});

// Found by a review (7 December 2026): the queue was weighed by its frames' `length` (UTF-16 units), so
// frames of CJK text (one unit, three UTF-8 bytes a character) took a socket to three times
// `maxQueuedBytes` before it ended, and its principal to three times `maxQueuedBytesPerPrincipal`.
describe('SocketWriter over maxQueuedBytes', () => {
  const log = { wrote: () => undefined } as unknown as WrittenLog;
  const item = (seq: number, text: string) =>
    ({
      taskId: 'a',
      seq,
      time: 1,
      type: 'item',
      item: { key: text.slice(0, 512), ok: false, error: text, detail: null },
      progress: { total: null, done: seq, succeeded: 0, failed: seq },
    }) as unknown as TaskEvent;
  const bytesOf = (event: TaskEvent) => Buffer.byteLength(JSON.stringify({ type: 'event', event }), 'utf8');

  it.each([
    ['ASCII', 'x'.repeat(4096)],
    ['CJK (3 bytes a character)', '\u8282'.repeat(4096)],
    ['emoji (4 bytes, 2 units)', '\u{1F680}'.repeat(2048)],
  ])('counts the UTF-8 bytes of the frames it holds, and ends the socket past them (%s)', (_, text) => {
    const bound = 256 * 1024;
    let principal = 0;
    const { writer, ws, bounds } = writerOver(
      1024,
      10_000,
      (delta) => {
        principal += delta;
        return undefined;
      },
      bound,
    );
    ws.bufferedAmount = 4096;
    let held = 0;
    for (let seq = 1; bounds.length === 0; seq++) {
      const event = item(seq, text);
      writer.pushEvent(event, log);
      if (bounds.length === 0) {
        held += bytesOf(event);
        // What the principal's budget is told is the bytes as sent.
        expect(principal).toBe(held);
      } else {
        // Ended by the first frame that took the bytes held past the bound, not before, not later.
        expect(held).toBeLessThanOrEqual(bound);
        expect(held + bytesOf(event)).toBeGreaterThan(bound);
      }
    }
    expect(bounds).toEqual(['maxQueuedBytes']);
    writer.stop();
    expect(principal).toBe(0);
  });
});

// Found by a review (7 December 2026): maxQueuedBytes bounds one socket, and a principal may open 100:
// its stalled sockets held 16 MiB of frames each, 1.6 GB and the events behind them.
describe('SocketWriter over maxQueuedBytesPerPrincipal', () => {
  const detail = 'x'.repeat(16 * 1024);
  const bigItem = (taskId: string, seq: number) =>
    ({
      taskId,
      seq,
      time: 1,
      type: 'item',
      item: { key: `k${seq}`, ok: true, detail },
      progress: { total: null, done: seq, succeeded: seq, failed: 0 },
    }) as unknown as TaskEvent;
  const log = { wrote: () => undefined } as unknown as WrittenLog;

  it("keeps a principal's queued frames over all its stalled sockets within its budget; another principal is unaffected", () => {
    const budget = 1024 * 1024;
    const limits = new PrincipalLimits({
      maxSockets: 100,
      maxSubscriptions: 1000,
      ratePerSecond: 500,
      maxQueuedBytes: budget,
      clock: Date.now,
    });
    const writerOf = (principalId: string) => {
      const made = writerOver(1024, 10_000, (delta) => limits.addQueuedBytes(principalId, delta));
      made.ws.bufferedAmount = 4096;
      return made;
    };
    const alice = [writerOf('alice'), writerOf('alice'), writerOf('alice'), writerOf('alice')];
    const bob = writerOf('bob');
    // 4 sockets of 40 items of 16 KiB: 2.6 MB for alice, each socket far below its own 16 MiB.
    for (let seq = 1; seq <= 40; seq++) {
      for (const { writer } of alice) writer.pushEvent(bigItem('a', seq), log);
      bob.writer.pushEvent(bigItem('b', seq), log);
      expect(limits.usage('alice').queuedBytes).toBeLessThanOrEqual(budget);
    }
    const ended = alice.filter(({ overflows }) => overflows() > 0).length;
    expect(ended).toBeGreaterThanOrEqual(2);
    expect(ended).toBeLessThan(alice.length);
    expect(limits.usage('alice').queuedBytes).toBeGreaterThan(budget / 2);
    // Bob's 40 items (655 KB) are his own budget's, whatever alice holds.
    expect(bob.overflows()).toBe(0);
    expect(limits.usage('bob').queuedBytes).toBeGreaterThan(40 * 16 * 1024);

    // What a socket drains and what a closed socket held are given back.
    bob.ws.bufferedAmount = 0;
    bob.writer.drain();
    expect(limits.usage('bob').queuedBytes).toBe(0);
    for (const { writer } of alice) writer.stop();
    bob.writer.stop();
    expect(limits.usage('alice').queuedBytes).toBe(0);
  });
  it("counts what a renewal's re-check holds in the principal's budget, and gives it back when released", () => {
    const limits = new PrincipalLimits({
      maxSockets: 100,
      maxSubscriptions: 1000,
      ratePerSecond: 500,
      maxQueuedBytes: 100_000,
      clock: Date.now,
    });
    const { writer, bounds } = writerOver(1024, 10_000, (delta) => limits.addQueuedBytes('alice', delta));
    writer.hold(60_000);
    expect(limits.usage('alice').queuedBytes).toBe(60_000);
    writer.released(1, 60_000);
    expect(limits.usage('alice').queuedBytes).toBe(0);
    writer.hold(60_000);
    writer.hold(60_000);
    expect(bounds).toEqual(['maxQueuedBytesPerPrincipal']);
    // Held until the subscriptions let go, then given back.
    writer.released(2, 120_000);
    writer.stop();
    expect(limits.usage('alice').queuedBytes).toBe(0);
  });
});

describe('SocketWriter and a clock that throws', () => {
  // Found by a review (7 December 2026): the subscription reads the clock as its terminal frame first goes
  // out (the push→ack latency), and a clock that threw there (one that returned NaN once) failed the
  // write after the frame had gone: its re-sends were never scheduled, and a frame lost to a proxy was
  // never sent again on that socket.
  it('re-sends a terminal frame whose first send met a clock that threw', async () => {
    const store = new MemoryProgressStore();
    const sent: string[] = [];
    const ws = { readyState: WebSocket.OPEN, bufferedAmount: 0, send: (text: string) => sent.push(text) };
    const metrics = new ServerMetrics({ registry: undefined, prefix: 'test_', feed: store.changes });
    let throwNext = false;
    const clock = (): number => {
      if (!throwNext) return Date.now();
      throwNext = false;
      throw new Error('the clock returned NaN');
    };
    let sub: Subscription | undefined;
    const writer = new SocketWriter({
      ws: ws as unknown as WebSocket,
      options: {
        clock: Date.now,
        terminalRetry: { initialDelayMs: 10, multiplier: 1, maxDelayMs: 10 },
        highWaterMarkBytes: 1024,
        backpressurePollMs: 10,
        maxQueuedFrames: 100,
        maxQueuedBytes: 1024 * 1024,
      },
      metrics,
      logger: silentLogger,
      connectionId: 1,
      version: PROTOCOL_VERSION,
      epoch: new StoreEpoch(store, silentLogger),
      isOpen: () => true,
      guard: (fn) => fn(),
      overflow: () => undefined,
      log: () => sub,
    });
    sub = new Subscription('a', { writer, metrics, clock } as unknown as SubscriptionContext);
    const completed = {
      taskId: 'a',
      seq: 1,
      time: 1,
      type: 'completed',
      progress: { total: null, done: 0, succeeded: 0, failed: 0 },
    } as unknown as TaskEvent;
    throwNext = true;
    writer.pushEvent(completed, sub);
    await vi.waitFor(() => expect(sent.length).toBeGreaterThanOrEqual(2));
    expect(sent[1]).toBe(sent[0]);
    writer.stop();
  });
});
