/**
 * A review on 7 December 2026: U+0000 in a request's text reached Postgres, which refuses it in `text`
 * ("invalid byte sequence for encoding UTF8: 0x00"). A batch's cordon reason was taken and the batch run,
 * cordoning its nodes, while every note of it failed to save (a warning in the log; the nodes showed no
 * reason); the task list's `cluster` and `beforeId` made the whole read fail, `500 internal`, logged as a
 * server error. Both are refused (or, the cursor, ignored as an over-long one is) before the database.
 */
import type { AddressInfo } from 'node:net';
import { PostgresProgressStore } from '@finishline/postgres';
import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { type App, createApp } from '../src/server/app.js';
import { AppDb } from '../src/server/app-db.js';
import { hashPassword, SessionManager } from '../src/server/auth.js';
import { DemoCluster } from '../src/server/demo-cluster.js';
import { KubeNodes, loadKubeConfig } from '../src/server/kube-nodes.js';
import { errorRecorder, type Harness, login, startHarness } from './harness.js';

const PG_URL = process.env.FINISHLINE_TEST_PG_URL;

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** The app on Postgres (a scratch schema for its tables, another for the store's) and a demo cluster. */
async function startOnPostgres(logger: ReturnType<typeof errorRecorder>['logger']) {
  const schema = `knm_nul_${process.pid}_${Date.now()}`;
  const admin = new pg.Client({ connectionString: PG_URL });
  await admin.connect();
  await admin.query(`create schema ${schema}`);
  const pool = new pg.Pool({ connectionString: PG_URL, max: 5, options: `-c search_path=${schema}` });
  const store = await PostgresProgressStore.open({ pool, schema: `${schema}_fl` });
  const db = await AppDb.postgres(pool);
  const cluster = new DemoCluster();
  const url = await cluster.listen(0);
  const app: App = createApp({
    store,
    db,
    nodes: new KubeNodes(loadKubeConfig({ type: 'server', url })),
    sessions: new SessionManager({
      secret: 'test-secret-test-secret',
      ttlMs: 3600_000,
      users: [{ username: 'alice', passwordHash: hashPassword('alice'), role: 'operator' }],
      db,
    }),
    logger,
  });
  await new Promise<void>((resolve) => app.server.listen(0, '127.0.0.1', () => resolve()));
  cleanups.push(async () => {
    await app.close();
    await db.close();
    await store.close();
    await pool.end();
    await cluster.close();
    await admin.query(`drop schema ${schema} cascade`);
    await admin.query(`drop schema if exists ${schema}_fl cascade`);
    await admin.end();
  });
  return { base: `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`, cluster };
}

describe('U+0000 in a request', () => {
  it('in a cordon reason is refused with 400 before any node is touched', async () => {
    const h: Harness = await startHarness();
    cleanups.push(() => h.close());
    const alice = await login(h.base, 'alice');
    const batch = await alice.post('/api/batch', {
      operation: 'cordon',
      nodes: ['worker-1'],
      reason: 'disk\u0000',
    });
    expect({ status: batch.status, error: batch.body.error }).toMatchObject({
      status: 400,
      error: { code: 'invalid_input', field: 'reason' },
    });
    expect(h.cluster.node('worker-1')?.spec.unschedulable).toBeUndefined();
  });

  it('in a cordon reason, as an unpaired surrogate, is refused with 400 too: no store keeps one', async () => {
    // Encoded as UTF-8 by both databases' drivers, a lone surrogate became U+FFFD: the batch ran and its
    // nodes' note read "disk\uFFFD", not what was sent (the library refuses such a text in a cancel's reason).
    const h: Harness = await startHarness();
    cleanups.push(() => h.close());
    const alice = await login(h.base, 'alice');
    for (const reason of ['disk \ud800 full', 'disk \udfff', '\ud83d']) {
      const batch = await alice.post('/api/batch', { operation: 'cordon', nodes: ['worker-1'], reason });
      expect({ reason, status: batch.status, error: batch.body.error }).toMatchObject({
        reason,
        status: 400,
        error: { code: 'invalid_input', field: 'reason' },
      });
    }
    expect(h.cluster.node('worker-1')?.spec.unschedulable).toBeUndefined();
    // A surrogate pair (an emoji) is a character like any other.
    const ok = await alice.post('/api/batch', {
      operation: 'cordon',
      nodes: ['worker-1'],
      reason: 'disk \ud83d\udca5',
    });
    expect(ok.status).toBe(202);
  });

  it.runIf(PG_URL !== undefined)(
    'on Postgres: a cordon reason is refused, not run with its notes lost; the task list answers 400 or ignores the cursor, not 500',
    async () => {
      const { errors, logger } = errorRecorder();
      const warnings: string[] = [];
      const { base, cluster } = await startOnPostgres({
        ...logger,
        warn: (_o, msg) => warnings.push(msg ?? ''),
      });
      const alice = await login(base, 'alice');
      const batch = await alice.post('/api/batch', {
        operation: 'cordon',
        nodes: ['worker-1'],
        reason: 'disk\u0000',
      });
      expect(batch.status).toBe(400);
      expect(cluster.node('worker-1')?.spec.unschedulable).toBeUndefined();
      expect(warnings).not.toContain('cordon note not saved');

      const byCluster = await alice.get('/api/tasks?cluster=%00');
      expect({ status: byCluster.status, error: byCluster.body.error }).toMatchObject({
        status: 400,
        error: { code: 'invalid_input', field: 'cluster' },
      });
      const byCursor = await alice.get('/api/tasks?before=5&beforeId=%00');
      expect(byCursor.status).toBe(200);
      expect(errors).toEqual([]);
    },
  );
});
