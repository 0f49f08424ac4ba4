import { ErrorCode, MemoryProgressStore, PROTOCOL_VERSION, type ServerFrame } from '@finishline/core';
import { TERMINAL_RETRY_DEFAULTS } from '@finishline/core/internal';
import { describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { StoreEpoch } from '../hub/store-epoch.js';
import { silentLogger } from '../logger.js';
import { ServerMetrics } from '../metrics.js';
import { SocketWriter } from './socket-writer.js';

/** A writer over a stand-in socket whose `bufferedAmount` the test sets; `sent` is what reached it. */
function writerOver(highWaterMarkBytes: number) {
  const store = new MemoryProgressStore();
  const sent: string[] = [];
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
      maxQueuedFrames: 10_000,
    },
    metrics,
    logger: silentLogger,
    connectionId: 1,
    version: PROTOCOL_VERSION,
    epoch: new StoreEpoch(store, silentLogger),
    isOpen: () => true,
    guard: (fn) => fn(),
    overflow: () => undefined,
    log: () => undefined,
  });
  return { writer, ws, sent, metrics };
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
