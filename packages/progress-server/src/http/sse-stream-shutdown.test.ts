import { createServer, get as httpGet, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { MemoryProgressStore } from '@finishline/core';
import { afterEach, describe, expect, it } from 'vitest';
import { FairReads } from '../hub/fair-reads.js';
import { StoreEpoch } from '../hub/store-epoch.js';
import { TaskHub } from '../hub/task-hub.js';
import type { ProgressLogger } from '../logger.js';
import { silentLogger } from '../logger.js';
import { ServerMetrics } from '../metrics.js';
import { PrincipalLimits } from '../principal-limits.js';
import { type OpenStream, streamTask } from './sse-stream.js';

const cleanups: Array<() => void | Promise<void>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/**
 * An event stream whose hub closed before it started (the server shutting down: the hub refuses it with
 * `closed`), served by `streamTask` itself over a real connection.
 */
async function streamOnClosedHub() {
  const store = new MemoryProgressStore();
  const task = await store.createTask({ owner: 'alice', kind: 'k' });
  const metrics = new ServerMetrics({ registry: undefined, prefix: 'test_', feed: store.changes });
  const warnings: string[] = [];
  const logger: ProgressLogger = { ...silentLogger, warn: (_obj, msg) => warnings.push(msg ?? '') };
  const reads = new FairReads({ maxConcurrent: 4, maxPerPrincipal: 2 });
  const hub = new TaskHub({ store, logger, metrics, retryDelayMs: 10, reads, maxReplayEvents: 100 });
  hub.start();
  hub.close();
  reads.close();
  const open = new Set<OpenStream>();
  let released = 0;
  const http = createServer((request, response) => {
    streamTask(
      {
        hub,
        epoch: new StoreEpoch(store, logger),
        limits: new PrincipalLimits({
          maxSockets: 10,
          maxSubscriptions: 10,
          ratePerSecond: 100,
          clock: Date.now,
        }),
        logger,
        metrics,
        heartbeatIntervalMs: 60_000,
        sseStallTimeoutMs: 5000,
        sseStreamLifetimeMs: 0,
        maxReplayEvents: 100,
        clock: Date.now,
        reconnectsPerSecond: 0,
        open,
      },
      {
        task,
        from: { seq: 0 },
        principal: { id: 'alice' },
        authorize: async () => true,
        hookTimeoutMs: 1000,
        request,
        response,
        release: () => {
          released += 1;
        },
      },
    );
  });
  await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve));
  cleanups.push(() => new Promise<void>((resolve) => http.close(() => resolve())));
  cleanups.push(() => http.closeAllConnections());
  const port = (http.address() as AddressInfo).port;
  const body = await new Promise<string>((resolve, reject) => {
    httpGet(`http://127.0.0.1:${port}/`, (response: IncomingMessage) => {
      let text = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => {
        text += chunk;
      });
      response.on('end', () => resolve(text));
      response.on('error', reject);
    }).on('error', reject);
  });
  const closed = (await metrics.sseStreamsClosed.get()).values.map((value) => [
    value.labels.reason,
    value.value,
  ]);
  const storeErrors = (await metrics.storeErrors.get()).values.reduce((sum, value) => sum + value.value, 0);
  return { body, closed, storeErrors, warnings, released, open };
}

describe('an event stream whose hub closed (the server shutting down)', () => {
  // Found by a review: the hub refuses a stream with `closed` once it is closed (the server shutting down),
  // and the stream took that for a failed store read: counted in store_errors_total, logged "SSE stream
  // read failed" and ended `read_failed`, which the operator's alert on dropped streams reports as the
  // store failing, for a clean shutdown.
  it('ends as a shutdown: no store error counted, nothing logged as a failed read, the stream released', async () => {
    const { body, closed, storeErrors, warnings, released, open } = await streamOnClosedHub();
    // The snapshot of the handler's load, then the end: the stream followed nothing.
    expect(body).toMatch(/^data: \{"type":"snapshot"/m);
    expect(closed).toEqual([['shutdown', 1]]);
    expect(storeErrors).toBe(0);
    expect(warnings).toEqual([]);
    expect(released).toBe(1);
    expect(open.size).toBe(0);
  });
});
