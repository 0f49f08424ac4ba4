import type { TaskEvent } from '@finishline/core';
import { MemoryProgressStore } from '@finishline/core';
import { describe, expect, it } from 'vitest';
import { ProgressServer } from '../progress-server.js';
import { useServerSession } from '../testing/session.js';

/**
 * Guarantee 3 at the server, on real timers: nobody calls `reap()`. A worker replica stops renewing its
 * lease (its lease timers are stopped, as a frozen or killed process's would be); the reaper timer of
 * another replica interrupts the task, and a watcher connected to that replica receives `interrupted`
 * within lease TTL + reap interval of the last renewal.
 */

const TTL_MS = 600;
const RENEW_MS = 150;
const REAP_MS = 300;
/** Scheduling and delivery slack on a loaded 2-core machine. */
const MARGIN_MS = 1_000;

const session = useServerSession();

describe('lease reaping on the timer', () => {
  it('a watcher on another replica gets interrupted within TTL + reap interval of the last renewal', async ({
    annotate,
  }) => {
    const store = new MemoryProgressStore();
    // The worker never reaps: only the other replica's timer can end the task.
    const worker = new ProgressServer({
      store,
      authenticate: () => null,
      serverId: 'replica-worker',
      leaseTtlMs: TTL_MS,
      leaseRenewIntervalMs: RENEW_MS,
      reapIntervalMs: 0,
    });
    session.onCleanup(() => worker.close({ timeoutMs: 200 }));
    const env = await session.start({
      store,
      serverId: 'replica-reaper',
      leaseTtlMs: TTL_MS,
      leaseRenewIntervalMs: RENEW_MS,
      reapIntervalMs: REAP_MS,
    });
    const task = await worker.tasks.create({ owner: 'alice', kind: 'k' });
    await task.progress({ done: 1, message: 'working' });
    const client = await session.connect({ user: 'alice' });
    client.send({ type: 'subscribe', taskId: task.id, afterSeq: 0 });
    await client.next((frame) => frame.type === 'snapshot');
    // The worker renews on its timer: after two TTLs the task is still running.
    await new Promise((resolve) => setTimeout(resolve, 2 * TTL_MS));
    expect((await store.getTask(task.id))?.status).toBe('running');
    // Its timers stop: no renewal from here on.
    await worker.leases.close();
    const stoppedAt = Date.now();
    const expiresAt = (await store.getTask(task.id))?.leaseExpiresAt as number;
    expect(expiresAt).toBeGreaterThan(stoppedAt);
    const frame = await client.next(
      (received) => received.type === 'event' && (received.event as TaskEvent).type === 'interrupted',
      { timeoutMs: TTL_MS + REAP_MS + MARGIN_MS },
    );
    const arrivedAt = Date.now();
    expect(frame.event).toMatchObject({
      taskId: task.id,
      seq: 2,
      reason: 'lease of worker replica-worker expired',
    });
    // Never before the lease expired; at most one reap interval (plus slack) after it.
    expect(arrivedAt).toBeGreaterThanOrEqual(expiresAt);
    const lastRenewal = expiresAt - TTL_MS;
    const elapsed = arrivedAt - lastRenewal;
    expect(elapsed).toBeLessThanOrEqual(TTL_MS + REAP_MS + MARGIN_MS);
    await annotate(
      `interrupted ${elapsed} ms after the last renewal (${arrivedAt - expiresAt} ms after expiry); bound TTL ${TTL_MS} + reap ${REAP_MS} ms`,
    );
    expect(await env.server.metrics.leasesReaped.get()).toMatchObject({ values: [{ value: 1 }] });
  });
});
