import type { AppendResult, ProgressStore } from '@finishline/core';
import { describe, expect, it } from 'vitest';
import { silentLogger } from '../logger.js';
import type { ServerMetrics } from '../metrics.js';
import { LeaseKeeper } from './lease-keeper.js';

/**
 * A store call that hangs (a query on a dead connection, with no timeout) must not hold back the next
 * renewal of its task, nor the replica's next reap: shared for ever, it let the lease expire while the
 * worker was alive and the store answered every other call.
 */

const hung = new Promise<never>(() => {});
const counter = { inc: () => undefined };
const metrics = {
  storeErrors: counter,
  handlerErrors: counter,
  leasesReaped: counter,
} as unknown as ServerMetrics;

function keeper(store: Partial<ProgressStore>, now: () => number): LeaseKeeper {
  return new LeaseKeeper({
    store: store as ProgressStore,
    serverId: 'replica-a',
    ttlMs: 3000,
    renewIntervalMs: 1000,
    reapIntervalMs: 1000,
    logger: silentLogger,
    metrics,
    onLost: () => undefined,
    onReaped: () => undefined,
    now,
  });
}

describe('lease keeper with a hung store call', () => {
  it("renews again at the next interval while a task's earlier renewal hangs", async () => {
    let time = 0;
    const calls: string[] = [];
    const leases = keeper(
      {
        renewLease: async (taskId) => {
          calls.push(taskId);
          if (calls.length === 1) return hung;
          return undefined as never;
        },
      },
      () => time,
    );
    leases.add('t1', 1);
    void leases.renewAll();
    expect(calls).toEqual(['t1']);
    // Well within the interval: the renewal in flight is shared, not repeated.
    time = 200;
    void leases.renewAll();
    expect(calls).toEqual(['t1']);
    // The next interval: the hung renewal is not waited on; a new one is sent, and answers.
    time = 1000;
    await leases.renewAll();
    expect(calls).toEqual(['t1', 't1']);
  });

  it('reaps again at the next interval while an earlier reap hangs', async () => {
    let time = 0;
    let calls = 0;
    const leases = keeper(
      {
        reapExpiredLeases: async () => {
          calls += 1;
          if (calls === 1) return hung;
          return [] as AppendResult[];
        },
      },
      () => time,
    );
    void leases.reap();
    time = 200;
    void leases.reap();
    expect(calls).toBe(1);
    time = 1000;
    expect(await leases.reap()).toEqual([]);
    expect(calls).toBe(2);
  });
});
