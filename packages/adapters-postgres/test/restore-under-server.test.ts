import type { AddressInfo } from 'node:net';
import { ProgressClient } from '@finishline/client';
import { PostgresProgressStore } from '@finishline/postgres';
import { ProgressServer } from '@finishline/server';
import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { eventually, freshSchemaWithAdmin, headerAuthenticate, newPool } from './support.js';

/**
 * An operator restores a task's rows from an older copy and renews the epoch while the server runs on
 * Postgres. The server notices the new epoch at a heartbeat and resets its watchers; the store's change
 * feed must then publish the restored task's seqs again, although it already published higher ones.
 */

const cleanups: Array<() => Promise<unknown>> = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {});
});

/** A server on a store of a fresh schema (dropped after the test), and an admin pool on the same database. */
async function serveFreshSchema(prefix: string, heartbeatIntervalMs: number) {
  const { schema, admin } = freshSchemaWithAdmin(prefix, cleanups);
  const pool = newPool(4);
  const store = await PostgresProgressStore.open({ pool, schema });
  const server = await ProgressServer.listen(
    { store, authenticate: headerAuthenticate, heartbeatIntervalMs },
    { port: 0, host: '127.0.0.1' },
  );
  cleanups.push(async () => {
    await server.close({ timeoutMs: 500 });
    await store.close();
    await pool.end();
  });
  const { port } = server.httpServer!.address() as AddressInfo;
  return { schema, admin, store, port };
}

/** Alice's client of the server on `port`, closed after the test; its watchdog never steps in. */
function aliceClient(port: number): ProgressClient {
  const client = new ProgressClient({
    url: `ws://127.0.0.1:${port}/progress`,
    WebSocket,
    headers: { 'x-user': 'alice' },
    finishTimeoutMs: 600_000,
  });
  cleanups.unshift(() => client.close());
  return client;
}

describe('a Postgres store restored and renewed under a running server', () => {
  it('brings the watchers to the end of the restored task, whose seqs are below the ones they saw', async () => {
    const { schema, admin, store, port } = await serveFreshSchema('restore', 50);

    await store.createTask({ id: 't', owner: 'alice', kind: 'k', total: 2 });
    await store.append('t', { type: 'progress', done: 0, message: 'one' });
    await store.append('t', { type: 'progress', done: 0, message: 'two' });
    const q = (table: string) => `${pg.escapeIdentifier(schema)}.${pg.escapeIdentifier(table)}`;
    // The backup copy, taken at seq 2.
    await admin.query(`CREATE TABLE ${q('tasks_copy')} AS SELECT * FROM ${q('tasks')}`);
    await admin.query(`CREATE TABLE ${q('events_copy')} AS SELECT * FROM ${q('events')}`);
    for (let i = 3; i <= 6; i++) await store.append('t', { type: 'progress', done: 0, message: `live ${i}` });

    const client = aliceClient(port);
    const watch = client.watch('t');
    await eventually('the watcher is at seq 6', () => watch.getSnapshot().seq === 6);

    // The restore: the task's rows as they were in the copy.
    await admin.query(
      `BEGIN;
       DELETE FROM ${q('events')};
       DELETE FROM ${q('tasks')};
       INSERT INTO ${q('tasks')} SELECT * FROM ${q('tasks_copy')};
       INSERT INTO ${q('events')} SELECT * FROM ${q('events_copy')};
       COMMIT`,
    );
    await store.renewEpoch();
    await eventually('the watcher starts over at seq 2', () => watch.getSnapshot().seq === 2, 3000);
    await store.append('t', { type: 'item', key: 'a', ok: true });
    await store.append('t', { type: 'item', key: 'b', ok: true });
    await store.append('t', { type: 'completed', result: null });
    await eventually('the watcher reaches the end', () => watch.getSnapshot().finished, 3000);
    expect(watch.getSnapshot()).toMatchObject({ seq: 5, status: 'completed', finished: true });
  });
});

describe('an epoch renewed by another process on the same schema', () => {
  it('resets the watchers of every replica at once, not at their next heartbeat tick', async () => {
    const { schema, store, port } = await serveFreshSchema('renew', 60_000);
    // The operator's process: a store of its own on the same schema, as `renewEpoch` after a restore runs.
    const operatorPool = newPool(2);
    const operator = await PostgresProgressStore.open({ pool: operatorPool, schema });
    cleanups.push(async () => {
      await operator.close();
      await operatorPool.end();
    });
    await store.createTask({ id: 't', owner: 'alice', kind: 'k', total: 2 });
    await store.append('t', { type: 'progress', done: 0, message: 'one' });

    const client = aliceClient(port);
    const watch = client.watch('t');
    let snapshots = 0;
    watch.on('snapshot', () => {
      snapshots += 1;
    });
    await eventually('the watcher is at seq 1', () => watch.getSnapshot().seq === 1);
    const before = snapshots;
    await operator.renewEpoch();
    // Before, this server read the epoch at its heartbeat tick only: a minute here, 15 s by default.
    await eventually('the watcher is reset into the new epoch', () => snapshots > before, 3000);
    expect(watch.getSnapshot()).toMatchObject({ seq: 1, finished: false });
  });
});
