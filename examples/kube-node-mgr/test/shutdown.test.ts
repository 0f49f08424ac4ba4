/**
 * Shutdown with a batch running: `main.ts` closes the app, then the database. The batch's node locks were
 * released in a callback after its run settled, which `App.close` did not wait for: the database closed
 * first, the unlock failed ("unlock failed" in the log) and the locks stayed behind.
 */
import http from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { type Harness, login, startHarness } from './harness.js';

let h: Harness | undefined;
afterEach(async () => {
  await h?.close().catch(() => undefined);
  h = undefined;
});

describe('closing the app with a batch running', () => {
  it('has released the batch’s node locks when close() resolves', async () => {
    const warnings: string[] = [];
    h = await startHarness({
      cluster: { latencyMs: 300 },
      app: {
        logger: {
          debug: () => {},
          info: () => {},
          warn: (_obj: unknown, msg?: string) => warnings.push(msg ?? ''),
          error: () => {},
        },
      },
    });
    // The unlock is a round trip to the database (Postgres), not SQLite in memory's next microtask.
    const db = h.db;
    const unlock = db.unlockTask.bind(db);
    db.unlockTask = async (taskId) => {
      await new Promise((resolve) => setTimeout(resolve, 50));
      await unlock(taskId);
    };
    const alice = await login(h.base, 'alice');
    const started = await alice.post('/api/batch', { operation: 'cordon', nodes: ['worker-1', 'worker-2'] });
    expect(started.status).toBe(202);
    expect(await h.db.locks('default')).toHaveLength(2);
    await h.app.close();
    expect(await h.db.locks('default')).toEqual([]);
    expect(warnings).toEqual([]);
  });

  // A review on 6 December 2026: close() went on accepting connections while it stopped the batches, then cut
  // every connection, answers still in progress included (a read waiting on Kubernetes or the database).
  it('stops accepting connections first and lets a request in progress finish', async () => {
    let gating = false;
    let arrived!: () => void;
    const reached = new Promise<void>((resolve) => {
      arrived = resolve;
    });
    let release!: () => void;
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    h = await startHarness({
      cluster: {
        onRequest: async ({ path }) => {
          if (!gating || path !== '/api/v1/nodes') return;
          arrived();
          await gate;
        },
      },
    });
    const alice = await login(h.base, 'alice');
    gating = true;
    const read = alice.get('/api/nodes').catch((error: unknown) => ({ status: 0, body: String(error) }));
    await reached;
    let closed = false;
    const closing = h.app.close().then(() => {
      closed = true;
    });
    // A new connection is refused at once.
    const fresh = await new Promise<string>((resolve) => {
      const req = http.get(`${h?.base}/healthz`, { agent: false }, (res) => {
        res.resume();
        resolve(`answered ${res.statusCode}`);
      });
      req.once('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? 'error'));
    });
    expect(fresh).toBe('ECONNREFUSED');
    await Promise.race([closing, new Promise((resolve) => setTimeout(resolve, 200))]);
    expect(closed).toBe(false);
    release();
    expect((await read).status).toBe(200);
    await closing;
  });
});
