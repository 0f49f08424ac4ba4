import type { AddressInfo } from 'node:net';
import { ProgressClient } from '@finishline/client';
import { PostgresProgressStore } from '@finishline/postgres';
import { ProgressServer } from '@finishline/server';
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import {
  eventually,
  freshSchemaWithAdmin,
  gatedListenClients,
  headerAuthenticate,
  newPool,
} from './support.js';

/**
 * Retention purges a finished task while a replica's `LISTEN` connection is down, and the application
 * runs the job again under the same id. The replica never hears the purge notice; a watcher of the new
 * run on that replica must still see every event and the end, as on any other replica.
 */

const cleanups: Array<() => Promise<unknown>> = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {});
});

describe('a purged task id reused while a replica was not listening', () => {
  it("brings that replica's watcher of the new run to its end", async () => {
    const { schema, admin } = freshSchemaWithAdmin('reuse', cleanups);
    const poolA = newPool(4);
    const poolB = newPool(4);
    const listen = gatedListenClients();
    // Replica A serves the watcher; replica B runs the jobs and the retention.
    const a = await PostgresProgressStore.open({
      pool: poolA,
      schema,
      listenClient: listen.factory,
      reconnect: { initialDelayMs: 5, maxDelayMs: 20 },
    });
    const b = await PostgresProgressStore.open({ pool: poolB, schema });
    // The default heartbeat: at 100 ms, the process off the CPU for a few hundred ms (CI's shared host)
    // had the server terminate a watcher's socket for a missed pong (1006), and the test then waited for
    // its reconnect too. Nothing here needs a heartbeat.
    const server = await ProgressServer.listen(
      { store: a, authenticate: headerAuthenticate },
      { port: 0, host: '127.0.0.1' },
    );
    cleanups.push(async () => {
      await server.close({ timeoutMs: 500 });
      await a.close();
      await b.close();
      await poolA.end();
      await poolB.end();
    });
    const { port } = server.httpServer!.address() as AddressInfo;
    const connect = () => {
      const client = new ProgressClient({
        url: `ws://127.0.0.1:${port}/progress`,
        WebSocket,
        headers: { 'x-user': 'alice' },
      });
      cleanups.unshift(() => client.close());
      return client;
    };

    // The first run, watched through A to its end.
    await b.createTask({ id: 'taint-42', owner: 'alice', kind: 'batch_taint', total: 3 });
    const first = connect().watch('taint-42');
    for (const key of ['n1', 'n2', 'n3']) await b.append('taint-42', { type: 'item', key, ok: true });
    await b.append('taint-42', { type: 'completed', result: null });
    await eventually('the first run ends on the watcher', () => first.getSnapshot().finished);
    expect(first.getSnapshot()).toMatchObject({ seq: 4, status: 'completed' });
    // The watcher acks the end, and A writes that ack to the task's row: a purge skips a row another
    // transaction holds (SKIP LOCKED), so one that ran while the ack was being written purged nothing.
    await eventually('A wrote the ack of the end', async () => (await b.getTask('taint-42'))?.ackedSeq === 4);

    // A's LISTEN connection goes down; meanwhile B purges the run and starts the job again.
    listen.block();
    const pid = a.changes.health().listenerPid;
    await admin.query('SELECT pg_terminate_backend($1)', [pid]);
    await eventually('A notices', () => !a.changes.health().connected);
    expect(await b.purgeFinished({ olderThanMs: 0 })).toBe(1);
    await b.createTask({ id: 'taint-42', owner: 'alice', kind: 'batch_taint', total: 2 });
    // Another page watches the new run (A answers from the store: seq 0, running).
    const second = connect().watch('taint-42');
    await eventually('the new run is watched', () => second.getSnapshot().status === 'running');
    listen.unblock();
    await eventually('A listens again', () => a.changes.health().connected);

    // The new run, shorter than the first: its seqs are all below the 4 A saw of the first.
    await b.append('taint-42', { type: 'item', key: 'n1', ok: true });
    await b.append('taint-42', { type: 'failed', error: { code: 'node_gone', message: 'n2 is gone' } });
    await eventually('the new run ends on the watcher', () => second.getSnapshot().finished);
    expect(second.getSnapshot()).toMatchObject({ seq: 2, status: 'failed' });
  });
});
