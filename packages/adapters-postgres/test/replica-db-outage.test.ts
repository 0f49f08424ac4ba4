import type { AddressInfo } from 'node:net';
import { ProgressClient } from '@finishline/client';
import { PostgresProgressStore } from '@finishline/postgres';
import { ProgressServer } from '@finishline/server';
import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { eventually, freshSchemaWithAdmin, headerAuthenticate, newPool, pgUrl } from './support.js';

/**
 * Two replicas on one Postgres. Replica B, which holds the watcher's socket, loses its database: every
 * backend it has is killed with pg_terminate_backend and its LISTEN connection cannot come back for a
 * while. B keeps the socket, reports itself unhealthy, and once the database returns catches up by the
 * feed's re-read past its watermark, so the watcher sees the task that replica A finished meanwhile.
 *
 * The safety-net poll is turned off and the task has no total (so the client's 100% watchdog cannot
 * step in): the re-read after the reconnect is the only way the end can reach B.
 */

const cleanups: Array<() => Promise<unknown>> = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {});
});

async function replica(schema: string, name: string, options: { listenDown?: () => boolean } = {}) {
  const pool = newPool(4, name);
  const url = pgUrl();
  const store = await PostgresProgressStore.open({
    pool,
    schema,
    pollIntervalMs: 3_600_000,
    reconnect: { initialDelayMs: 50, maxDelayMs: 200 },
    // While "down", the LISTEN connection points at a closed port: connecting fails like an unreachable database.
    listenClient: () =>
      options.listenDown?.() === true
        ? new pg.Client({ host: '127.0.0.1', port: 1, connectionTimeoutMillis: 200 })
        : new pg.Client({ connectionString: url, application_name: `${name}-listen` }),
  });
  const server = await ProgressServer.listen(
    {
      store,
      authenticate: headerAuthenticate,
      serverId: name,
      heartbeatIntervalMs: 200,
      healthDetails: 'public',
    },
    { port: 0, host: '127.0.0.1' },
  );
  cleanups.push(async () => {
    await server.close({ timeoutMs: 500 });
    await store.close();
    await pool.end();
  });
  const address = server.httpServer?.address() as AddressInfo | undefined;
  if (address === undefined) throw new Error('replica is not listening');
  const port = address.port;
  return { pool, store, server, port };
}

describe('a replica that loses Postgres', () => {
  it('keeps its sockets, reports unhealthy on /healthz, and its watchers still see the end', async () => {
    const { schema, admin } = freshSchemaWithAdmin('outage', cleanups);
    const suffix = schema.slice(-6);
    const a = await replica(schema, `outage-a-${suffix}`);
    let down = false;
    const b = await replica(schema, `outage-b-${suffix}`, { listenDown: () => down });

    const task = await a.server.tasks.create({ owner: 'alice', kind: 'batch_taint' });
    await task.item({ key: 'node-1', ok: true });

    const client = new ProgressClient({
      url: `ws://127.0.0.1:${b.port}/progress`,
      WebSocket,
      headers: { 'x-user': 'alice' },
      // No HTTP fallback or reconnect escalation in the way: B's socket must carry the end.
      finishTimeoutMs: 600_000,
    });
    cleanups.unshift(() => client.close());
    let reconnects = 0;
    client.on('state', (change) => {
      if (change.state === 'reconnecting') reconnects += 1;
    });
    const watch = client.watch(task.id);
    await eventually('the watcher sees the first item', () => watch.getSnapshot().seq === 1);
    expect(b.server.health()).toMatchObject({ ok: true, store: { connected: true } });

    // The database goes away for B: every backend of B is killed and the LISTEN one cannot reconnect.
    down = true;
    const { rows } = await admin.query<{ killed: boolean }>(
      'SELECT pg_terminate_backend(pid) AS killed FROM pg_stat_activity WHERE application_name LIKE $1',
      [`outage-b-${suffix}%`],
    );
    expect(rows.filter((row) => row.killed).length).toBeGreaterThanOrEqual(1);
    await eventually('B reports itself unhealthy', () => !b.server.health().ok);
    const probe = await fetch(`http://127.0.0.1:${b.port}/progress/healthz`);
    expect(probe.status).toBe(503);
    expect(await probe.json()).toMatchObject({ ok: false, store: { connected: false }, sockets: 1 });

    // A finishes the task while B is blind to notifications.
    await task.item({ key: 'node-2', ok: false, error: 'PodDisruptionBudget' });
    await task.complete({ result: { tainted: 1 } });
    const stored = await a.store.getTask(task.id);

    // The database returns: B reconnects, re-reads past its watermark, and delivers.
    down = false;
    const final = await watch.done;
    expect(final).toMatchObject({ status: 'completed', seq: stored?.seq, finished: true });
    await eventually('B is healthy again', () => b.server.health().ok);
    expect((await fetch(`http://127.0.0.1:${b.port}/progress/healthz`)).status).toBe(200);
    // The socket stayed where it was the whole time.
    expect(reconnects).toBe(0);
    expect(b.server.health().sockets).toBe(1);
    expect(b.store.changes.stats().replayed).toBeGreaterThanOrEqual(1);
  });
});
