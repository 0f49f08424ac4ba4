/**
 * A replica cut off from its database went on changing nodes it could no longer record: a drain waiting out
 * a PodDisruptionBudget sent its evictions every few seconds for minutes without writing anything, while the
 * other replicas reaped the task after its lease and let a new batch take its nodes. The batch now waits for
 * the store before each change it sends to Kubernetes, and goes on once the store answers again.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { type Harness, login, startHarness, waitForTask } from './harness.js';

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Makes the store's reads and writes fail while `outage.down` (a lost connection). */
function breakable(harness: Harness): { down: boolean } {
  const outage = { down: false };
  const store = harness.store as unknown as Record<string, (...args: unknown[]) => Promise<unknown>>;
  for (const method of ['append', 'getTask', 'renewLease', 'readEvents', 'listTasks'] as const) {
    const original = (store[method] as (...args: unknown[]) => Promise<unknown>).bind(harness.store);
    store[method] = async (...args: unknown[]) => {
      if (outage.down) throw new Error('connection terminated unexpectedly');
      return original(...args);
    };
  }
  return outage;
}

describe('a batch whose replica loses its database', () => {
  it('sends no change to Kubernetes until the store answers again, then goes on', async () => {
    let evictions = 0;
    h = await startHarness({
      // Replacements never get ready in time: the budget of the web pods refuses all but the first.
      cluster: {
        podReadyMs: 60_000,
        onRequest: ({ method, path }) => {
          if (method === 'POST' && path.endsWith('/eviction')) evictions++;
        },
      },
      app: { evictionRetryMs: 50 },
    });
    const outage = breakable(h);
    const alice = await login(h.base, 'alice');
    const started = await alice.post('/api/batch', {
      operation: 'drain',
      nodes: ['worker-1', 'worker-2', 'worker-3', 'worker-4'],
    });
    expect(started.status).toBe(202);
    // The drain settles into retrying the refused evictions.
    for (let i = 0; i < 100 && evictions < 20; i++) await sleep(50);
    await sleep(1000);
    outage.down = true;
    await sleep(500); // the calls already on their way
    const atOutage = evictions;
    await sleep(1000);
    expect(evictions - atOutage).toBe(0);
    outage.down = false;
    for (let i = 0; i < 100 && evictions === atOutage; i++) await sleep(50);
    expect(evictions).toBeGreaterThan(atOutage);
    expect((await alice.get(`/progress/tasks/${started.body.taskId}`)).body.task.status).toBe('running');
    await alice.post(`/progress/tasks/${started.body.taskId}/cancel`, {});
    await waitForTask(alice, started.body.taskId);
  });

  it('hands in a node done during the outage once the store is back, and completes', async () => {
    let reached: () => void = () => undefined;
    const atPatch = new Promise<void>((resolve) => {
      reached = resolve;
    });
    let release: () => void = () => undefined;
    const held = new Promise<void>((resolve) => {
      release = resolve;
    });
    h = await startHarness({
      cluster: {
        onRequest: ({ method, node }) => {
          if (method !== 'PATCH' || node !== 'worker-2') return;
          reached();
          return held;
        },
      },
      app: { concurrency: 1 },
    });
    const outage = breakable(h);
    const alice = await login(h.base, 'alice');
    const started = await alice.post('/api/batch', {
      operation: 'label_add',
      key: 'pool',
      value: 'blue',
      nodes: ['worker-1', 'worker-2', 'worker-3'],
    });
    expect(started.status).toBe(202);
    await atPatch;
    // worker-2's PATCH lands while the store is unreachable; the store is back 1.5 s later.
    outage.down = true;
    release();
    await sleep(1500);
    outage.down = false;
    let status = 'running';
    for (let i = 0; i < 100 && status === 'running'; i++) {
      await sleep(50);
      status = (await alice.get(`/progress/tasks/${started.body.taskId}`)).body.task.status;
    }
    expect(status).toBe('completed');
    const { task, items } = await waitForTask(alice, started.body.taskId);
    expect(task).toMatchObject({ status: 'completed', succeeded: 3, failed: 0 });
    expect(items.map((e: { item: { key: string } }) => e.item.key)).toEqual([
      'worker-1',
      'worker-2',
      'worker-3',
    ]);
    expect(h.cluster.node('worker-3')?.metadata.labels?.pool).toBe('blue');
  });
});
