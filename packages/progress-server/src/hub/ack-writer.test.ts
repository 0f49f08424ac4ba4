import type { ProgressStore } from '@finishline/core';
import { MemoryProgressStore } from '@finishline/core';
import { describe, expect, it } from 'vitest';
import { silentLogger } from '../logger.js';
import { ServerMetrics } from '../metrics.js';
import { AckWriter } from './ack-writer.js';

describe('AckWriter', () => {
  it('flush waits for an ack queued behind the write in flight, not only for that write', async () => {
    const stored = new Map<string, number>();
    // A store whose ack writes take a while, as under load.
    const store = {
      ack: async (taskId: string, seq: number) => {
        await new Promise((resolve) => setTimeout(resolve, 30));
        stored.set(taskId, Math.max(stored.get(taskId) ?? 0, seq));
        return stored.get(taskId) as number;
      },
    } as unknown as ProgressStore;
    const metrics = new ServerMetrics({
      registry: undefined,
      prefix: 'test_',
      feed: new MemoryProgressStore().changes,
    });
    const acks = new AckWriter({ store, logger: silentLogger, metrics, retryDelayMs: 10 });
    acks.ack('t', 10);
    // The terminal ack arrives while 10 is being written: it is queued behind it.
    acks.ack('t', 13);
    await acks.flush(Date.now() + 5000);
    // What a graceful shutdown relies on: after flush, nothing acknowledged is left unwritten.
    expect(stored.get('t')).toBe(13);
    acks.close();
  });
});
