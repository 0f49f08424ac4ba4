import type { AddressInfo } from 'node:net';
import { ProgressClient } from '@finishline/client';
import type { ProgressError } from '@finishline/core';
import { PostgresProgressStore } from '@finishline/postgres';
import { ProgressServer } from '@finishline/server';
import pg from 'pg';
import { afterEach, describe, expect, it, vi } from 'vitest';
import WebSocket from 'ws';
import { eventually, freshSchemaWithAdmin, headerAuthenticate, newPool, queryHookedPool } from './support.js';

/**
 * A failover to an asynchronous standby that had not received the last committed transactions: the
 * database goes back to an earlier state without any renewed epoch. The task's worker appends again, and
 * its new events take the seqs of the lost ones, the terminal one included. Every replica's change feed
 * and hub remember the lost seqs as published; a watcher must still see the task's end.
 */

const cleanups: Array<() => Promise<unknown>> = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {});
});

async function serveFreshSchema(prefix: string, workerHook?: Parameters<typeof queryHookedPool>[1]) {
  const { schema, admin } = freshSchemaWithAdmin(prefix, cleanups);
  const pool = newPool(4);
  const reported: ProgressError[] = [];
  const onError = (error: ProgressError) => reported.push(error);
  // A short safety-net poll: the failure must not hide behind a slow one.
  const store = await PostgresProgressStore.open({ pool, schema, pollIntervalMs: 100, onError });
  const server = await ProgressServer.listen(
    { store, authenticate: headerAuthenticate, heartbeatIntervalMs: 200 },
    { port: 0, host: '127.0.0.1' },
  );
  cleanups.push(async () => {
    await server.close({ timeoutMs: 500 });
    await store.close();
    await pool.end();
  });
  // The worker's process: a store of its own on the same schema.
  const workerPool = newPool(2);
  const worker = await PostgresProgressStore.open({
    pool: workerHook === undefined ? workerPool : queryHookedPool(workerPool, workerHook),
    schema,
    pollIntervalMs: 100,
    onError,
  });
  cleanups.push(async () => {
    await worker.close();
    await workerPool.end();
  });
  const { port } = server.httpServer!.address() as AddressInfo;
  const q = (table: string) => `${pg.escapeIdentifier(schema)}.${pg.escapeIdentifier(table)}`;
  return { admin, store, worker, port, q, reported };
}

/**
 * The failover: the standby (the task row copied to `tasks_standby` earlier), promoted, lacks every
 * transaction after the first event.
 */
function promoteStandby(admin: pg.Pool, q: (table: string) => string) {
  return admin.query(
    `BEGIN;
     DELETE FROM ${q('events')} WHERE seq > 1;
     DELETE FROM ${q('tasks')};
     INSERT INTO ${q('tasks')} SELECT * FROM ${q('tasks_standby')};
     COMMIT`,
  );
}

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

describe('a failover that lost committed transactions', () => {
  // Review of 6 December 2026: a renewal of the epoch that failed was tried again on a 1 s timer that
  // close() did not clear: the closed store left it behind.
  it('leaves no retry of a failed epoch renewal behind after close', async () => {
    const { schema, admin } = freshSchemaWithAdmin('failover_retry', cleanups);
    const realPool = newPool(3);
    cleanups.push(() => realPool.end());
    const pool = queryHookedPool(realPool, (_client, statement, run) => {
      if (/UPDATE .*meta/s.test(statement.text) && /pg_notify/.test(statement.text))
        throw new Error('renewal refused');
      return run();
    });
    const reported: ProgressError[] = [];
    const store = await PostgresProgressStore.open({ pool, schema, onError: (e) => reported.push(e) });
    cleanups.push(() => store.close());
    const q = (table: string) => `${pg.escapeIdentifier(schema)}.${pg.escapeIdentifier(table)}`;
    const unfollow = store.changes.follow('t');
    cleanups.push(async () => unfollow());
    await store.createTask({ id: 't', owner: 'alice', kind: 'k', total: 2 });
    await store.append('t', { type: 'progress', done: 0 });
    await admin.query(`CREATE TABLE ${q('tasks_standby')} AS SELECT * FROM ${q('tasks')}`);
    await store.append('t', { type: 'progress', done: 1 });
    await store.append('t', { type: 'progress', done: 1 });
    await promoteStandby(admin, q);
    // Fake timers count what the store schedules from here (its timers are unref'd, invisible to Node).
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    try {
      await store.append('t', { type: 'progress', done: 2 });
      await store.append('t', { type: 'completed', result: null });
      // Turning the event loop with setImmediate: setTimeout is faked.
      const failed = () => reported.some((error) => /renewEpoch: renewal refused/.test(error.message));
      for (const deadline = Date.now() + 10_000; !failed() && Date.now() < deadline; )
        await new Promise((resolve) => setImmediate(resolve));
      expect(reported.map((error) => error.message)).toContainEqual(
        expect.stringMatching(/renewEpoch: renewal refused/),
      );
      await store.close();
      expect(vi.getTimerCount(), 'timers left after close').toBe(0);
    } finally {
      vi.useRealTimers();
    }
  });

  for (const writer of ['worker', 'server'] as const) {
    it(`brings the watcher to the end written at a lost seq (appends by the ${writer}'s store)`, async () => {
      const { admin, store, worker, port, q, reported } = await serveFreshSchema(`failover_${writer}`);
      const appender = writer === 'worker' ? worker : store;
      await appender.createTask({ id: 't', owner: 'alice', kind: 'k', total: 2 });
      await appender.append('t', { type: 'progress', done: 0, message: 'one' });
      // The row as the standby has it: the transactions after this one never reached it.
      await admin.query(`CREATE TABLE ${q('tasks_standby')} AS SELECT * FROM ${q('tasks')}`);
      await appender.append('t', { type: 'progress', done: 1, message: 'two (lost)' });
      await appender.append('t', { type: 'progress', done: 1, message: 'three (lost)' });

      const client = aliceClient(port);
      const watch = client.watch('t');
      await eventually('the watcher is at seq 3', () => watch.getSnapshot().seq === 3);
      const epoch = await store.getEpoch();

      // The failover: the standby, promoted, lacks the last two transactions.
      await promoteStandby(admin, q);
      // The worker goes on: its new events take the lost seqs 2 and 3, the end at 3.
      await appender.append('t', { type: 'progress', done: 2, message: 'two (again)' });
      await appender.append('t', { type: 'completed', result: null });
      expect((await store.getTask('t'))?.seq).toBe(3);

      await eventually('the watcher sees the end', () => watch.getSnapshot().finished, 5000);
      expect(watch.getSnapshot()).toMatchObject({ seq: 3, status: 'completed', finished: true });
      // The stores that heard the end at a seq they had published renewed the epoch, once between them.
      expect(await store.getEpoch()).not.toBe(epoch);
      const renewals = reported.filter((error) => /The store epoch was renewed/.test(error.message));
      expect(renewals).toHaveLength(1);
      expect(renewals[0]).toMatchObject({ code: 'internal', taskId: 't' });
    });
  }

  it('renews the epoch once when a store that could not read it at open notices after another renewed it', async () => {
    const isEpochRead = (text: string) => /^SELECT value FROM .* WHERE key = 'epoch'$/.test(text.trim());
    let epochReads = 0;
    let admin: pg.Pool | undefined;
    let epochBefore: string | undefined;
    let q = (table: string) => table;
    const fixtures = await serveFreshSchema('failover_unread', async (_client, statement, run) => {
      if (!isEpochRead(statement.text)) return run();
      epochReads += 1;
      // The worker's open could not read the epoch (a blip): it reads it when it notices the loss.
      if (epochReads === 1) throw new Error('connection blip');
      // That read comes after the server's store renewed it (it noticed too): the worker's renewal from
      // what it reads now would be a second one.
      await eventually('the server renewed the epoch', async () => {
        const { rows } = await (admin as pg.Pool).query(`SELECT value FROM ${q('meta')} WHERE key = 'epoch'`);
        return rows[0]?.value !== epochBefore;
      });
      return run();
    });
    ({ admin, q } = fixtures);
    const { store, worker, reported } = fixtures;
    await worker.createTask({ id: 't', owner: 'alice', kind: 'k', total: 2 });
    await worker.append('t', { type: 'progress', done: 0, message: 'one' });
    await admin.query(`CREATE TABLE ${q('tasks_standby')} AS SELECT * FROM ${q('tasks')}`);
    await worker.append('t', { type: 'progress', done: 1, message: 'two (lost)' });
    const client = aliceClient(fixtures.port);
    const watch = client.watch('t');
    await eventually('the watcher is at seq 2', () => watch.getSnapshot().seq === 2);
    epochBefore = await store.getEpoch();
    await promoteStandby(admin, q);
    await worker.append('t', { type: 'completed', result: null });

    await eventually('the watcher sees the end', () => watch.getSnapshot().finished, 5000);
    await eventually(
      'both stores noticed',
      () => reported.filter((e) => /lost commits/.test(e.message)).length === 2,
    );
    // The worker's pool could not read the epoch at open, but its LISTEN connection read it as it
    // connected (since 6 December 2026): the worker knew it, and read it only to check the server's renewal
    // notice (read back since 7 December 2026: any role may NOTIFY on the channel).
    // One read more when the read-back is asked again (a second notice heard, or the epoch known changed,
    // during the first: `#epochNoticed` reads once more): seen once in CI under load, 7 December 2026.
    await eventually('the worker read the renewal notice back', () => epochReads >= 2);
    expect(epochReads).toBeLessThanOrEqual(3);
    const renewals = reported.filter((error) => /The store epoch was renewed/.test(error.message));
    expect(renewals, reported.map((error) => error.message).join('\n')).toHaveLength(1);
  });
});
