import type { AddressInfo } from 'node:net';
import { ProgressClient } from '@finishline/client';
import { ErrorCode, isProgressError, type ProgressError } from '@finishline/core';
import { PostgresProgressStore } from '@finishline/postgres';
import { ProgressServer } from '@finishline/server';
import type pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { dropSchema, eventually, freshSchema, headerAuthenticate, newPool } from './support.js';

/**
 * An event row whose body is valid JSON of the wrong shape (a hand edit, a bad migration, another program
 * writing the table), or whose `int8` is above 2^53, is refused by the store's decoder with a typed error
 * for its task, never handed to a watcher as a malformed event frame.
 */

const cleanups: Array<() => Promise<unknown>> = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {});
});

async function openStore(
  prefix: string,
): Promise<{ store: PostgresProgressStore; pool: pg.Pool; schema: string }> {
  const schema = freshSchema(prefix);
  const pool = newPool(4);
  cleanups.push(async () => {
    await dropSchema(pool, schema);
    await pool.end();
  });
  const store = await PostgresProgressStore.open({ pool, schema });
  cleanups.push(() => store.close());
  return { store, pool, schema };
}

describe('a damaged event row', () => {
  it('is refused by readEvents with internal, naming its task and event', async () => {
    const { store, pool, schema } = await openStore('dmgread');
    await store.createTask({ id: 't1', owner: 'alice', kind: 'k', total: 2 });
    await store.append('t1', { type: 'item', key: 'a', ok: true, detail: { node: 'n1' } });
    await store.append('t1', { type: 'completed', result: { drained: 1 } });
    const healthy = await store.readEvents('t1', 0);
    const { rows } = await pool.query(
      `SELECT body::text AS body FROM ${schema}.events WHERE task_id = 't1' AND seq = 1`,
    );
    const body = rows[0].body as string;
    const item = JSON.parse(body);
    const damages: Array<[string, string, string, string]> = [
      ['a JSON string', 'body', `'"x"'`, 'body: must be an object'],
      ['an array', 'body', `'[]'`, 'body.progress: is required'],
      ['an empty object', 'body', `'{}'`, 'body.progress: is required'],
      ['null', 'body', `'null'`, 'body: must be an object'],
      ['no progress', 'body', `'${JSON.stringify({ item: item.item })}'`, 'body.progress: is required'],
      [
        'a mistyped field',
        'body',
        `'${JSON.stringify({ ...item, item: { ...item.item, ok: 'yes' } })}'`,
        'body.item.ok: must be boolean',
      ],
      [
        'an unknown field',
        'body',
        `'${JSON.stringify({ ...item, extra: 1 })}'`,
        'body.extra: is not a known field',
      ],
      [
        'a count above 2^53',
        'body',
        `'${JSON.stringify(item).replace('"done":1', '"done":9007199254740993')}'`,
        'body.progress.done: is too large',
      ],
      [
        'a seq of its own',
        'body',
        `'${JSON.stringify({ ...item, seq: 7 })}'`,
        'body.seq: is not a known field',
      ],
      [
        'a time above 2^53',
        'time',
        '9007199254740993',
        'seq 1, time 9007199254740993: not both safe integers',
      ],
    ];
    for (const [what, column, value, problem] of damages) {
      await pool.query(`UPDATE ${schema}.events SET ${column} = ${value} WHERE task_id = 't1' AND seq = 1`);
      const error = await store.readEvents('t1', 0).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(isProgressError(error, ErrorCode.Internal), what).toBe(true);
      expect((error as ProgressError).taskId, what).toBe('t1');
      expect((error as ProgressError).message, what).toBe(
        `Corrupt event 1 of task t1 in Postgres: ${problem}`,
      );
      await pool.query(`UPDATE ${schema}.events SET body = $1, time = $2 WHERE task_id = 't1' AND seq = 1`, [
        body,
        healthy[0]!.time,
      ]);
    }
    // The rows as written read back as they were; the next event is unaffected by its neighbour's damage.
    expect(await store.readEvents('t1', 0)).toEqual(healthy);
    await pool.query(`UPDATE ${schema}.events SET body = '"x"' WHERE task_id = 't1' AND seq = 1`);
    expect(await store.readEvents('t1', 1)).toEqual(healthy.slice(1));
  });

  it("fails its task's resume with internal, not as malformed frames the client resubscribes for; other watches end", async () => {
    const { store, pool, schema } = await openStore('dmgwatch');
    const serve = (port: number) =>
      ProgressServer.listen(
        { store, authenticate: headerAuthenticate, heartbeatIntervalMs: 200 },
        { port, host: '127.0.0.1' },
      );
    let server = await serve(0);
    cleanups.push(() => server.close({ timeoutMs: 500 }));
    const { port } = server.httpServer!.address() as AddressInfo;
    for (const id of ['t1', 't2']) {
      await store.createTask({ id, owner: 'alice', kind: 'k', total: 3 });
      await store.append(id, { type: 'item', key: 'a', ok: true });
    }
    const client = new ProgressClient({
      url: `ws://127.0.0.1:${port}/progress`,
      WebSocket,
      headers: { 'x-user': 'alice' },
      reconnect: { firstDelayMs: 20, initialDelayMs: 50, maxDelayMs: 200 },
    });
    cleanups.unshift(() => client.close());
    const errors: ProgressError[] = [];
    client.on('error', (error) => errors.push(error));
    const damaged = client.watch('t1');
    // Errors about a watched task reach its watch; invalid frames (whatever task) the client.
    damaged.on('error', (error) => errors.push(error));
    const healthy = client.watch('t2');
    await eventually(
      'both watches at seq 1',
      () => damaged.getSnapshot().seq === 1 && healthy.getSnapshot().seq === 1,
    );

    // The server goes away; meanwhile both tasks end, and t1's second event is damaged by hand. The new
    // server has none of it in memory: the resumes read the events from the store.
    await server.close({ timeoutMs: 500 });
    for (const id of ['t1', 't2']) {
      for (const key of ['b', 'c']) await store.append(id, { type: 'item', key, ok: true });
      await store.append(id, { type: 'completed', result: null });
    }
    await pool.query(`UPDATE ${schema}.events SET body = '"x"' WHERE task_id = 't1' AND seq = 2`);
    server = await serve(port);

    await eventually('the healthy watch ends', () => healthy.getSnapshot().finished, 5000);
    expect(healthy.getSnapshot()).toMatchObject({ seq: 4, status: 'completed' });
    await eventually('the damaged task is reported', () =>
      errors.some((error) => error.taskId === 't1' && error.code === ErrorCode.Internal),
    );
    // Paced as a refused subscribe is: a handful of retries, not one per round trip.
    errors.length = 0;
    await new Promise((resolve) => setTimeout(resolve, 1000));
    expect(errors.filter((error) => error.code === ErrorCode.InvalidFrame)).toEqual([]);
    expect(errors.length).toBeLessThan(20);
    expect(damaged.getSnapshot()).toMatchObject({ seq: 1, status: 'running' });
    // The server still serves: a fresh watch of t1 gets its snapshot (its row is sound).
    const again = client.watch('t2');
    await eventually('a later watch is answered', () => again.getSnapshot().finished, 5000);
  }, 20_000);
});

describe('a damaged task row (an int8 above 2^53)', () => {
  const BIG = '9007199254740993';

  async function withDamagedRow(onError?: (error: ProgressError) => void) {
    const schema = freshSchema('dmgtask');
    const pool = newPool(4);
    cleanups.push(async () => {
      await dropSchema(pool, schema);
      await pool.end();
    });
    const store = await PostgresProgressStore.open({ pool, schema, ...(onError ? { onError } : {}) });
    cleanups.push(() => store.close());
    for (const id of ['a', 'damaged', 'b']) {
      await store.createTask({ id, owner: 'alice', kind: 'k' });
      await store.append(id, { type: 'progress', done: 1 });
    }
    await pool.query(`UPDATE ${schema}.tasks SET done = ${BIG} WHERE id = 'damaged'`);
    return { store, pool, schema };
  }

  const expectDamaged = (error: unknown) => {
    expect(isProgressError(error, ErrorCode.Internal), String(error)).toBe(true);
    expect(error).toMatchObject({
      taskId: 'damaged',
      message: `Corrupt row of task damaged in Postgres: column done is not a non-negative safe integer (${BIG})`,
    });
  };

  it('fails getTask of it alone, in a batch with other reads', async () => {
    const { store } = await withDamagedRow();
    const [a, damaged, b] = await Promise.allSettled(['a', 'damaged', 'b'].map((id) => store.getTask(id)));
    expect(a).toMatchObject({ status: 'fulfilled', value: { id: 'a', done: 1 } });
    expect(b).toMatchObject({ status: 'fulfilled', value: { id: 'b', done: 1 } });
    expect(damaged?.status).toBe('rejected');
    expectDamaged((damaged as PromiseRejectedResult).reason);
  });

  it('is left out of listTasks, its place given to the next task, and reported once', async () => {
    const reported: ProgressError[] = [];
    const { store } = await withDamagedRow((error) => reported.push(error));
    // Newest first: b, damaged, a.
    expect((await store.listTasks({ owner: 'alice', limit: 2 })).map((task) => task.id)).toEqual(['b', 'a']);
    expect((await store.listTasks({ owner: 'alice' })).map((task) => task.id)).toEqual(['b', 'a']);
    expect(reported).toHaveLength(1);
    expect(reported[0]).toMatchObject({ code: ErrorCode.Internal, taskId: 'damaged' });
  });

  it('fails the acks of a task whose seq is above 2^53 alone, with internal, not their batch', async () => {
    const { store, pool, schema } = await withDamagedRow();
    await pool.query(`UPDATE ${schema}.tasks SET done = 1, seq = ${BIG} WHERE id = 'damaged'`);
    const acks = await Promise.allSettled(['a', 'damaged', 'b'].map((id) => store.ack(id, 1)));
    expect(acks.map((outcome) => outcome.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    expect((acks[1] as PromiseRejectedResult).reason).toMatchObject({
      code: ErrorCode.Internal,
      taskId: 'damaged',
      message: `Corrupt row of task damaged in Postgres: column seq is not a non-negative safe integer (${BIG})`,
    });
  });

  it('leaves a task whose seq is above 2^53 out of latestSeqs (never a rounded seq), reported once', async () => {
    const reported: ProgressError[] = [];
    const { store, pool, schema } = await withDamagedRow((error) => reported.push(error));
    await pool.query(`UPDATE ${schema}.tasks SET done = 1, seq = ${BIG} WHERE id = 'damaged'`);
    for (let read = 0; read < 2; read++) {
      expect(Object.fromEntries(await store.latestSeqs(['a', 'damaged', 'b']))).toEqual({ a: 1, b: 1 });
    }
    expect(reported).toHaveLength(1);
    expect(reported[0]).toMatchObject({ code: ErrorCode.Internal, taskId: 'damaged' });
  });

  it("is left out of the change feed's re-read (never a rounded seq published), and reported", async () => {
    const reported: ProgressError[] = [];
    const { store, pool, schema } = await withDamagedRow((error) => reported.push(error));
    await pool.query(`UPDATE ${schema}.tasks SET done = 1, seq = ${BIG} WHERE id = 'damaged'`);
    const changes: { taskId: string; seq: number }[] = [];
    const unsubscribe = store.changes.subscribe((change) => changes.push(change));
    cleanups.push(async () => unsubscribe());
    // A re-read from the start: every task's latest seq, from the tasks' rows.
    store.changes.forgetSeqs();
    await eventually('the re-read reports the other tasks', () =>
      changes.some((change) => change.taskId === 'b'),
    );
    await eventually('the feed is connected again', () => store.changes.health().connected);
    expect(changes.filter((change) => change.taskId === 'damaged')).toEqual([]);
    expect(reported.map((error) => [error.code, error.taskId])).toEqual([[ErrorCode.Internal, 'damaged']]);
  });

  it("fails its appends and lease renewals alone, not their batch's", async () => {
    const { pool, schema } = await withDamagedRow();
    // Another replica's store: the rows it appends to are read locked, not taken from its own last writes.
    const store = await PostgresProgressStore.open({ pool, schema });
    cleanups.push(() => store.close());
    const appends = await Promise.allSettled(
      ['a', 'damaged', 'b'].map((id) => store.append(id, { type: 'progress', done: 2 })),
    );
    expect(appends.map((outcome) => outcome.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    expectDamaged((appends[1] as PromiseRejectedResult).reason);
    const renewals = await Promise.allSettled(
      ['a', 'damaged', 'b'].map((id) => store.renewLease(id, 'worker', 60_000)),
    );
    expect(renewals.map((outcome) => outcome.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    expectDamaged((renewals[1] as PromiseRejectedResult).reason);
    expect(await store.getTask('a')).toMatchObject({ done: 2, seq: 2, leaseOwner: 'worker' });
  });

  it('is set aside by the lease reaper, which reports it once and reaps the others', async () => {
    const reported: ProgressError[] = [];
    const { store, pool, schema } = await withDamagedRow((error) => reported.push(error));
    await pool.query(`UPDATE ${schema}.tasks SET lease_owner = 'gone', lease_expires_at = 1`);
    const reaped = await store.reapExpiredLeases();
    expect(reaped.map((result) => result.task.id).sort()).toEqual(['a', 'b']);
    expect(reported).toHaveLength(1);
    expect(reported[0]).toMatchObject({ code: ErrorCode.Internal, taskId: 'damaged' });
    expect(await store.reapExpiredLeases()).toEqual([]);
    expect(reported).toHaveLength(1);
  });
});
