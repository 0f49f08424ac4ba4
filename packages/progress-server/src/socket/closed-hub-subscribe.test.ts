import { EventEmitter } from 'node:events';
import type { IncomingMessage } from 'node:http';
import { MemoryProgressStore, PROTOCOL_NAME } from '@finishline/core';
import { RoundTripPool } from '@finishline/core/internal';
import { describe, expect, it } from 'vitest';
import type WebSocket from 'ws';
import type { Principal } from '../auth.js';
import { Authenticator } from '../authenticator.js';
import { AckWriter } from '../hub/ack-writer.js';
import { FairReads } from '../hub/fair-reads.js';
import { StoreEpoch } from '../hub/store-epoch.js';
import { TaskHub } from '../hub/task-hub.js';
import type { ProgressLogger } from '../logger.js';
import { silentLogger } from '../logger.js';
import { ServerMetrics } from '../metrics.js';
import { resolveServerOptions } from '../options.js';
import { PrincipalLimits } from '../principal-limits.js';
import { Connection } from './connection.js';

/** A `ws` socket that records the frames sent. */
class FakeSocket extends EventEmitter {
  readonly protocol = PROTOCOL_NAME;
  readyState: number = 1;
  bufferedAmount = 0;
  readonly frames: Array<Record<string, unknown>> = [];

  send(text: string, sent: (error?: Error | null) => void): void {
    this.frames.push(JSON.parse(text) as Record<string, unknown>);
    sent();
  }

  ping(): void {}

  close(): void {
    this.readyState = 2;
  }

  terminate(): void {
    this.readyState = 3;
  }
}

describe('a subscribe refused by a closed hub (the server shutting down)', () => {
  // Found by a review, with the same defect of event streams: the hub refuses a subscriber with `closed`
  // once it is closed, and the socket took that for a failed store read, counted in store_errors_total and
  // logged "subscribe failed" at warn: a clean shutdown reported as a failing store.
  it('counts no store error and logs no failure; the client is still answered (it subscribes again elsewhere)', async () => {
    const store = new MemoryProgressStore();
    const task = await store.createTask({ owner: 'alice', kind: 'k' });
    const options = resolveServerOptions<Principal>({ store, authenticate: () => ({ id: 'alice' }) });
    const metrics = new ServerMetrics({ registry: undefined, prefix: 'test_', feed: store.changes });
    const warnings: string[] = [];
    const logger: ProgressLogger = { ...silentLogger, warn: (_obj, msg) => warnings.push(msg ?? '') };
    const shared = { store, logger, metrics };
    const reads = new FairReads({ maxConcurrent: 4, maxPerPrincipal: 1 });
    const hub = new TaskHub({ ...shared, retryDelayMs: 1000, reads, maxReplayEvents: 1000 });
    hub.start();
    const ws = new FakeSocket();
    new Connection<Principal>(
      { ws: ws as unknown as WebSocket, request: {} as IncomingMessage, principal: { id: 'alice' } },
      {
        options,
        auth: new Authenticator<Principal>({
          authenticate: options.authenticate,
          authenticateToken: undefined,
          authorize: options.authorize,
          tokenQueryParam: false,
          logger,
        }),
        hub,
        acks: new AckWriter({ ...shared, retryDelayMs: 1000 }),
        metrics,
        logger,
        limits: new PrincipalLimits({
          maxSockets: 10,
          maxSubscriptions: 100,
          ratePerSecond: 1000,
          clock: Date.now,
        }),
        epoch: new StoreEpoch(store, logger),
        roundTrips: new RoundTripPool(),
      },
      { socketCount: () => 1, onClose: () => {}, onAuthenticated: () => {} },
    );
    hub.close();
    reads.close();
    ws.emit(
      'message',
      Buffer.from(JSON.stringify({ type: 'subscribe', taskId: task.id, afterSeq: 0 })),
      false,
    );
    await expect.poll(() => ws.frames.some((frame) => frame.type === 'error')).toBe(true);
    expect(ws.frames.find((frame) => frame.type === 'error')).toMatchObject({
      code: 'store_unavailable',
      taskId: task.id,
    });
    const storeErrors = (await metrics.storeErrors.get()).values.reduce((sum, value) => sum + value.value, 0);
    expect(storeErrors).toBe(0);
    expect(warnings).toEqual([]);
  });
});
