import type { AppendResult } from '@finishline/core';
import { ErrorCode, isProgressError } from '@finishline/core';
import { Kysely, PostgresDialect } from 'kysely';
import type pg from 'pg';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { migrateProgressSchema, PostgresProgressStore } from '../src/index.js';
import { commitHookedPool, dropSchema, eventually, freshSchema, newPool, Recorder } from './support.js';

/**
 * COMMIT itself fails. Known outcome (the server refused it, or the backend died before it committed):
 * every append of the batch rejects with `store_unavailable`, nothing reaches any change feed, and a
 * retry commits. Unknown outcome (the connection drops after COMMIT was sent): the append rejects with
 * `store_unavailable` as documented in docs/guarantees.md (guarantee 5), the event may be committed, and
 * then every change feed still publishes it (its NOTIFY committed with it).
 */

const admin = newPool(4);
const pools: pg.Pool[] = [];
const stores: PostgresProgressStore[] = [];
const schemas: string[] = [];

/** A pool whose next COMMIT is replaced by `hook` (which may run the real one). */
function commitHookPool(): ReturnType<typeof commitHookedPool> {
  const real = newPool(5);
  pools.push(real);
  return commitHookedPool(real);
}

async function setup() {
  const schema = freshSchema('commit');
  schemas.push(schema);
  await migrateProgressSchema(new Kysely<unknown>({ dialect: new PostgresDialect({ pool: admin }) }), {
    schema,
  });
  const hooked = commitHookPool();
  const store = await PostgresProgressStore.open({ pool: hooked.pool, migrate: false, schema });
  const observerPool = newPool(3);
  pools.push(observerPool);
  const observer = await PostgresProgressStore.open({ pool: observerPool, migrate: false, schema });
  stores.push(store, observer);
  // Created through the observer: the store under test then plans its first batch in a locking
  // transaction, whose COMMIT the hook replaces (a store's own new tasks take one autocommit statement).
  for (const id of ['a', 'b', 'sentinel']) await observer.createTask({ id, owner: 'alice', kind: 'k' });
  return { schema, store, observer, hooked, own: new Recorder(store), other: new Recorder(observer) };
}

function outcome(result: PromiseSettledResult<AppendResult>): string {
  if (result.status === 'fulfilled') return `seq ${result.value.event.seq}`;
  return isProgressError(result.reason) ? result.reason.code : `non-ProgressError ${String(result.reason)}`;
}

/** One batch over two tasks, the second ending with its terminal event. */
function batch(store: PostgresProgressStore): Promise<PromiseSettledResult<AppendResult>[]> {
  return Promise.allSettled([
    ...Array.from({ length: 5 }, (_, i) => store.append('a', { type: 'item', key: `n-${i}`, ok: true })),
    store.append('b', { type: 'progress', done: 1 }),
    store.append('b', { type: 'completed' }),
  ]);
}

async function rowCounts(schema: string): Promise<{ seqs: number[]; events: number }> {
  const tasks = await admin.query(
    `SELECT seq::int AS seq FROM ${schema}.tasks WHERE id IN ('a', 'b') ORDER BY id`,
  );
  const events = await admin.query(
    `SELECT count(*)::int AS n FROM ${schema}.events WHERE task_id IN ('a', 'b')`,
  );
  return { seqs: tasks.rows.map((row) => row.seq as number), events: events.rows[0].n as number };
}

/** Both feeds are in commit order per store: once the sentinel's change arrived, any earlier one would have. */
async function feedsSettled(store: PostgresProgressStore, own: Recorder, other: Recorder, seq: number) {
  await store.append('sentinel', { type: 'progress', done: seq });
  await eventually(
    'the sentinel change reaches both feeds',
    () => own.has('sentinel', seq) && other.has('sentinel', seq),
  );
}

async function expectRetrySucceeds(store: PostgresProgressStore, own: Recorder, other: Recorder) {
  const retried = await Promise.all([
    store.append('a', { type: 'item', key: 'n-0', ok: true }),
    store.append('b', { type: 'completed' }),
  ]);
  expect(retried.map((result) => result.event.seq)).toEqual([1, 1]);
  await eventually('the retried changes reach both feeds', () => other.has('a', 1) && other.has('b', 1));
  expect(own.seqs('a')).toEqual([1]);
  expect(own.seqs('b')).toEqual([1]);
  expect(other.seqs('a')).toEqual([1]);
  expect(other.seqs('b')).toEqual([1]);
}

afterEach(async () => {
  await Promise.all(stores.splice(0).map((store) => store.close()));
  await Promise.all(pools.splice(0).map((created) => created.end()));
});

afterAll(async () => {
  for (const schema of schemas) await dropSchema(admin, schema);
  await admin.end();
});

describe('COMMIT failure (known outcome)', () => {
  it('a serialization failure at COMMIT rejects the whole batch with store_unavailable; nothing is published; a retry commits', async () => {
    const { schema, store, hooked, own, other } = await setup();
    // The server itself answers the COMMIT with SQLSTATE 40001; the transaction is then aborted.
    hooked.onNextCommit((client) =>
      client.query(
        `DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '40001', MESSAGE = 'could not serialize access due to concurrent update'; END $$`,
      ),
    );
    const settled = await batch(store);
    expect(settled.map(outcome)).toEqual(Array.from({ length: 7 }, () => ErrorCode.StoreUnavailable));
    for (const result of settled) {
      if (result.status !== 'rejected') continue;
      expect(result.reason.cause).toMatchObject({ code: '40001' });
      // A batch of two tasks failed whole: its error names neither (naming the first misled a caller of the other).
      expect(result.reason.taskId).toBeUndefined();
    }
    expect(await rowCounts(schema)).toEqual({ seqs: [0, 0], events: 0 });
    await feedsSettled(store, own, other, 1);
    expect([...own.seqs('a'), ...own.seqs('b'), ...other.seqs('a'), ...other.seqs('b')]).toEqual([]);
    await expectRetrySucceeds(store, own, other);
  });

  it('the backend killed as COMMIT is sent rejects the whole batch with store_unavailable; nothing is published; a retry commits', async () => {
    const { schema, store, hooked, own, other } = await setup();
    hooked.onNextCommit(async (client, commit) => {
      const pid = (client as unknown as { processID: number }).processID;
      const { rows } = await admin.query('SELECT pg_terminate_backend($1) AS done', [pid]);
      expect(rows[0].done).toBe(true);
      return commit();
    });
    const settled = await batch(store);
    expect(settled.map(outcome)).toEqual(Array.from({ length: 7 }, () => ErrorCode.StoreUnavailable));
    expect(await rowCounts(schema)).toEqual({ seqs: [0, 0], events: 0 });
    await feedsSettled(store, own, other, 1);
    expect([...own.seqs('a'), ...own.seqs('b'), ...other.seqs('a'), ...other.seqs('b')]).toEqual([]);
    await expectRetrySucceeds(store, own, other);
  });
});

describe('COMMIT with an unknown outcome', () => {
  it('the connection drops after COMMIT committed: the append rejects with store_unavailable, the event is stored and every feed publishes it; a retried terminal is task_finished', async () => {
    const { schema, store, hooked, own, other } = await setup();
    hooked.onNextCommit(async (client, commit) => {
      const socket = (client as unknown as { connection: { stream: import('node:net').Socket } }).connection
        .stream;
      // Stop reading: the server's answer to COMMIT never reaches the client...
      socket.pause();
      const pending = commit();
      // ...until the server committed; then the connection drops before the client learns it.
      await eventually('the COMMIT is applied', async () => (await rowCounts(schema)).events === 7, 5_000);
      socket.destroy();
      return pending;
    });
    const settled = await batch(store);
    expect(settled.map(outcome)).toEqual(Array.from({ length: 7 }, () => ErrorCode.StoreUnavailable));
    expect(await rowCounts(schema)).toEqual({ seqs: [5, 2], events: 7 });
    // The NOTIFY committed with the rows: both feeds publish every seq, through LISTEN.
    await eventually(
      'the committed changes reach both feeds',
      () => own.has('b', 2) && other.has('b', 2) && own.has('a', 5) && other.has('a', 5),
    );
    expect(own.seqs('a')).toEqual([1, 2, 3, 4, 5]);
    expect(other.seqs('b')).toEqual([1, 2]);
    // A caller that retries learns the outcome: the terminal event is already there.
    const retry = await store.append('b', { type: 'completed' }).then(
      () => 'resolved',
      (error: unknown) => (isProgressError(error) ? error.code : String(error)),
    );
    expect(retry).toBe(ErrorCode.TaskFinished);
  });
});
