import type { TaskEvent } from '@finishline/core';
import { ErrorCode } from '@finishline/core';
import { ManualClock } from '@finishline/core/testing';
import { Kysely, PostgresDialect } from 'kysely';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { migrateProgressSchema, PostgresProgressStore } from '../src/index.js';
import {
  commitHookedPool,
  dropSchema,
  eventually,
  freshSchema,
  type Gate,
  gate,
  newPool,
  queryHookedPool,
  Recorder,
} from './support.js';

/**
 * Writes that save round trips: appends planned from the rows a store last wrote or created (one
 * statement, no locking read; used whenever the store has the rows, never written over anything another writer, the
 * reaper, a purge, a lease or an ack did to them since: `writeAppendsIfUnchanged` in append-pipeline.ts),
 * and lease renewals of one tick in one transaction (`renewLeases` in lease-statements.ts).
 */

const pool = newPool(10);
const schemas: string[] = [];
const stores: PostgresProgressStore[] = [];
const clock = new ManualClock(1_000_000);

async function twoStores(): Promise<[PostgresProgressStore, PostgresProgressStore]> {
  const schema = freshSchema('lastw');
  schemas.push(schema);
  await migrateProgressSchema(new Kysely<unknown>({ dialect: new PostgresDialect({ pool }) }), { schema });
  const open = async () => {
    const store = await PostgresProgressStore.open({ pool, schema, migrate: false, clock: clock.now });
    stores.push(store);
    return store;
  };
  return [await open(), await open()];
}

const item = (key: string) => ({ type: 'item' as const, key, ok: true });

async function itemKeys(store: PostgresProgressStore, taskId: string): Promise<string[]> {
  const events = await store.readEvents(taskId, 0);
  expect(events.map((event) => event.seq)).toEqual(events.map((_, index) => index + 1));
  return events.map((event) =>
    event.type === 'item' ? (event as Extract<TaskEvent, { type: 'item' }>).item.key : event.type,
  );
}

afterEach(async () => {
  await Promise.all(stores.splice(0).map((store) => store.close()));
});

afterAll(async () => {
  for (const schema of schemas) await dropSchema(pool, schema);
  await pool.end();
});

describe('appends planned from the rows a store last wrote', () => {
  it('skip the locking read from the creation of the task on', async () => {
    const [store] = await twoStores();
    await store.createTask({ id: 't', owner: 'alice', kind: 'k', total: 3 });
    for (const key of ['a', 'b', 'c']) await store.append('t', item(key));
    expect(store.stats()).toMatchObject({ appends: 3, batches: 3, lockedBatches: 0 });
    expect(await itemKeys(store, 't')).toEqual(['a', 'b', 'c']);
    expect(await store.getTask('t')).toMatchObject({ seq: 3, done: 3, succeeded: 3 });
  });

  it("plan a task's first append from the row the store inserted, not from the object its caller got", async () => {
    const [a, b] = await twoStores();
    const created = await a.createTask({ id: 't', owner: 'alice', kind: 'k', total: 5 });
    Object.assign(created, { total: 99, done: 42 }); // the caller's object, the caller's business
    const first = await a.append('t', item('a'));
    expect(first.task).toMatchObject({ seq: 1, total: 5, done: 1 });
    expect(a.stats().lockedBatches).toBe(0);
    // Another store appends from its locked row (it did not create the task); `a`'s row moved on.
    await b.append('t', item('b'));
    expect(b.stats().lockedBatches).toBe(1);
    const third = await a.append('t', item('c'));
    expect(third.task).toMatchObject({ seq: 3, total: 5, done: 3 });
    expect(a.stats().lockedBatches).toBe(1);
    expect(await itemKeys(a, 't')).toEqual(['a', 'b', 'c']);
  });

  it('are planned again from the locked row when another writer appended meanwhile', async () => {
    const [a, b] = await twoStores();
    await a.createTask({ id: 't', owner: 'alice', kind: 'k' });
    await a.append('t', item('a1'));
    await a.append('t', item('a2'));
    await b.append('t', item('b3'));
    const result = await a.append('t', item('a4'));
    expect(result.event.seq).toBe(4);
    expect(result.task).toMatchObject({ seq: 4, done: 4 });
    expect(await itemKeys(a, 't')).toEqual(['a1', 'a2', 'b3', 'a4']);
    expect(a.stats()).toMatchObject({ batches: 3, lockedBatches: 1 });
  });

  it('write nothing of a batch from its remembered rows when one of them moved on', async () => {
    const [a, b] = await twoStores();
    for (const id of ['t1', 't2']) {
      await a.createTask({ id, owner: 'alice', kind: 'k' });
      await a.append(id, item(`${id}-1`));
    }
    await b.append('t2', item('t2-b'));
    // One tick: one batch for both tasks; t2's row moved on, so t1's part must not be written either.
    const [one, two] = await Promise.all([a.append('t1', item('t1-2')), a.append('t2', item('t2-3'))]);
    expect([one.event.seq, two.event.seq]).toEqual([2, 3]);
    expect(await itemKeys(a, 't1')).toEqual(['t1-1', 't1-2']);
    expect(await itemKeys(a, 't2')).toEqual(['t2-1', 't2-b', 't2-3']);
    expect(await a.getTask('t1')).toMatchObject({ seq: 2, done: 2 });
    expect(await a.getTask('t2')).toMatchObject({ seq: 3, done: 3 });
  });

  it('write the rest of a batch when one of its remembered rows is gone (purged by another store)', async () => {
    const [a, b] = await twoStores();
    await a.createTask({ id: 't1', owner: 'alice', kind: 'k' });
    await a.createTask({ id: 't2', owner: 'alice', kind: 'k', lease: { owner: 'w', ttlMs: 1000 } });
    await Promise.all([a.append('t1', item('t1-1')), a.append('t2', item('t2-1'))]);
    clock.advance(2000);
    await b.reapExpiredLeases();
    clock.advance(1000);
    expect(await b.purgeFinished({ olderThanMs: 500 })).toBe(1);
    // One batch for both: t2's row is gone, so the statement from remembered rows locks one row of two
    // and writes nothing; the locked path then commits t1 and finds t2 missing.
    const [one, two] = await Promise.allSettled([a.append('t1', item('t1-2')), a.append('t2', item('t2-2'))]);
    expect(one).toMatchObject({ status: 'fulfilled', value: { event: { seq: 2 } } });
    expect(two).toMatchObject({ status: 'rejected', reason: { code: ErrorCode.TaskNotFound } });
    expect(await itemKeys(a, 't1')).toEqual(['t1-1', 't1-2']);
    expect(a.stats()).toMatchObject({ lockedBatches: 1 });
  });

  it("do not write over an interruption by another store's reaper", async () => {
    const [a, b] = await twoStores();
    await a.createTask({ id: 't', owner: 'alice', kind: 'k', lease: { owner: 'w', ttlMs: 1000 } });
    await a.append('t', item('a1'));
    clock.advance(2000);
    expect(await b.reapExpiredLeases()).toHaveLength(1);
    await expect(a.append('t', item('a2'))).rejects.toMatchObject({ code: ErrorCode.TaskFinished });
    expect(await itemKeys(a, 't')).toEqual(['a1', 'interrupted']);
    expect(await a.getTask('t')).toMatchObject({ status: 'interrupted', seq: 2 });
  });

  it('do not write over a row that a failover took back, which another store then moved to the same seq', async () => {
    const [a, b] = await twoStores();
    const tasks = `${a.schema}.tasks`;
    await a.createTask({ id: 't', owner: 'alice', kind: 'k', lease: { owner: 'w', ttlMs: 1000 } });
    await a.append('t', item('a1'));
    const { rows } = await pool.query(`SELECT row_to_json(t) AS row FROM ${tasks} t WHERE id = 't'`);
    clock.advance(10);
    await a.append('t', item('a2'));
    // A failover to a replica that never got a2: the row and the log as they were at seq 1.
    await pool.query(
      `UPDATE ${tasks} t SET done = r.done, succeeded = r.succeeded, current = r.current, seq = r.seq,
        updated_at = r.updated_at FROM json_populate_record(NULL::${tasks}, $1) r WHERE t.id = 't'`,
      [rows[0].row],
    );
    await pool.query(`DELETE FROM ${a.schema}.events WHERE task_id = 't' AND seq = 2`);
    // Another store's reaper ends the task at seq 2, the seq of the lost append that `a` remembers.
    clock.advance(2000);
    expect(await b.reapExpiredLeases()).toHaveLength(1);
    await expect(a.append('t', item('a3'))).rejects.toMatchObject({ code: ErrorCode.TaskFinished });
    expect(await itemKeys(a, 't')).toEqual(['a1', 'interrupted']);
    expect(await a.getTask('t')).toMatchObject({ status: 'interrupted', seq: 2, done: 1 });
  });

  it('do not write over a task purged and created again under the same id at the same seq', async () => {
    const [a, b] = await twoStores();
    await a.createTask({ id: 't', owner: 'alice', kind: 'k', total: 10, lease: { owner: 'w', ttlMs: 1000 } });
    await a.append('t', item('old-1'));
    clock.advance(2000);
    await b.reapExpiredLeases();
    clock.advance(1000);
    expect(await b.purgeFinished({ olderThanMs: 500 })).toBe(1);
    await b.createTask({ id: 't', owner: 'alice', kind: 'k', total: 50 });
    // The new task at seq 1 too: only its creation time tells it from the row store `a` remembers.
    await b.append('t', item('new-1'));
    const result = await a.append('t', item('new-2'));
    expect(result.task).toMatchObject({ seq: 2, total: 50, done: 2 });
    expect(await itemKeys(a, 't')).toEqual(['new-1', 'new-2']);
    expect(await a.getTask('t')).toMatchObject({ seq: 2, total: 50, done: 2 });
  });

  it('keep a lease renewed and an ack written since, and return the row as stored', async () => {
    const [store] = await twoStores();
    await store.createTask({ id: 't', owner: 'alice', kind: 'k', lease: { owner: 'w', ttlMs: 1000 } });
    await store.append('t', item('a'));
    clock.advance(500);
    const renewed = await store.renewLease('t', 'w', 1000);
    await store.ack('t', 1);
    const result = await store.append('t', item('b'));
    expect(store.stats().lockedBatches).toBe(0);
    const stored = await store.getTask('t');
    expect(stored).toMatchObject({ leaseOwner: 'w', leaseExpiresAt: renewed.leaseExpiresAt, ackedSeq: 1 });
    expect(result.task).toEqual(stored);
  });

  it('clear the lease with the terminal event, as a locked append does', async () => {
    const [store] = await twoStores();
    await store.createTask({ id: 't', owner: 'alice', kind: 'k', lease: { owner: 'w', ttlMs: 1000 } });
    await store.append('t', item('a'));
    const result = await store.append('t', { type: 'completed' });
    expect(store.stats().lockedBatches).toBe(0);
    expect(result.task).toMatchObject({ status: 'completed', leaseOwner: null, leaseExpiresAt: null });
    expect(await store.getTask('t')).toEqual(result.task);
    // An ended task is not remembered: a later append is refused from the locked row.
    await expect(store.append('t', item('late'))).rejects.toMatchObject({ code: ErrorCode.TaskFinished });
    expect(store.stats().lockedBatches).toBe(0);
  });
});

describe('lease renewals', () => {
  it('of one tick go in one transaction, each with its own outcome', async () => {
    const [store, other] = await twoStores();
    const lease = { owner: 'w', ttlMs: 1000 };
    for (const id of ['r1', 'r2', 'r3']) await store.createTask({ id, owner: 'alice', kind: 'k', lease });
    await store.createTask({ id: 'ended', owner: 'alice', kind: 'k', lease });
    await store.append('ended', { type: 'completed' });
    await other.createTask({ id: 'theirs', owner: 'alice', kind: 'k', lease: { owner: 'v', ttlMs: 5000 } });
    clock.advance(400);
    const before = store.stats().renewalBatches;
    const outcomes = await Promise.allSettled(
      ['r1', 'r2', 'ended', 'theirs', 'missing', 'r3', 'r1'].map((id) => store.renewLease(id, 'w', 1000)),
    );
    expect(store.stats().renewalBatches - before).toBe(1);
    const codes = outcomes.map((outcome) =>
      outcome.status === 'fulfilled'
        ? outcome.value.leaseExpiresAt
        : (outcome.reason as { code: string }).code,
    );
    expect(codes).toEqual([
      clock.now() + 1000,
      clock.now() + 1000,
      ErrorCode.TaskFinished,
      ErrorCode.LeaseHeld,
      ErrorCode.TaskNotFound,
      clock.now() + 1000,
      clock.now() + 1000,
    ]);
    for (const id of ['r1', 'r2', 'r3']) {
      expect(await store.getTask(id)).toMatchObject({ leaseOwner: 'w', leaseExpiresAt: clock.now() + 1000 });
    }
    expect(await store.getTask('theirs')).toMatchObject({ leaseOwner: 'v' });
  });
});

describe('an append written in one statement', () => {
  /** The one-statement append (append-pipeline.ts, `writeAppendsIfUnchanged`) commits by itself. */
  const isOneStatementAppend = (text: string) => text.includes('-- Rows locked in id order first');

  async function hookedStores() {
    const schema = freshSchema('lastw');
    schemas.push(schema);
    await migrateProgressSchema(new Kysely<unknown>({ dialect: new PostgresDialect({ pool }) }), { schema });
    const real = newPool(5);
    const hooked = commitHookedPool(real, isOneStatementAppend);
    const store = await PostgresProgressStore.open({
      pool: hooked.pool,
      schema,
      migrate: false,
      clock: clock.now,
    });
    const observer = await PostgresProgressStore.open({ pool, schema, migrate: false, clock: clock.now });
    stores.push(store, observer);
    const own = new Recorder(store);
    const other = new Recorder(observer);
    await store.createTask({ id: 't', owner: 'alice', kind: 'k' });
    await store.append('t', item('first'));
    await eventually('both feeds publish seq 1', () => own.has('t', 1) && other.has('t', 1));
    const stored = async () => (await observer.readEvents('t', 0)).length;
    return { store, hooked, own, other, stored, real, end: () => real.end() };
  }

  it('with an unknown outcome (the connection drops after it committed) is rejected, stored, published by every feed, and the next append follows it', async () => {
    const { store, hooked, own, other, stored, end } = await hookedStores();
    try {
      hooked.onNextCommit(async (client, commit) => {
        const socket = (client as unknown as { connection: { stream: import('node:net').Socket } }).connection
          .stream;
        socket.pause();
        const pending = commit();
        await eventually('the statement is applied', async () => (await stored()) === 2, 5_000);
        socket.destroy();
        return pending;
      });
      await expect(store.append('t', item('lost answer'))).rejects.toMatchObject({
        code: ErrorCode.StoreUnavailable,
      });
      await eventually('both feeds publish seq 2', () => own.has('t', 2) && other.has('t', 2));
      const next = await store.append('t', item('next'));
      expect(next.event.seq).toBe(3);
      expect(await itemKeys(store, 't')).toEqual(['first', 'lost answer', 'next']);
      expect(await store.getTask('t')).toMatchObject({ seq: 3, done: 3 });
    } finally {
      await end();
    }
  });

  it('that fails (the backend killed as it is sent) stores and publishes nothing, and the next append commits', async () => {
    const { store, hooked, own, other, real, end } = await hookedStores();
    try {
      const processId = (client: unknown) => (client as { processID: number }).processID;
      const removed = new Set<number>();
      real.on('remove', (client) => removed.add(processId(client)));
      let killed: number | undefined;
      hooked.onNextCommit(async (client, commit) => {
        killed = processId(client);
        await pool.query('SELECT pg_terminate_backend($1)', [killed]);
        return commit();
      });
      await expect(store.append('t', item('never'))).rejects.toMatchObject({
        code: ErrorCode.StoreUnavailable,
      });
      // The pool drops the dead connection: released with the failure that ended it (guarded-pool.ts), or
      // dead already when released. Watched by its pid, not by the pool's count: the store's wait for the
      // failed write's rows (`#settleUnknown`) may open another connection in its place meanwhile.
      await eventually(
        'the pool dropped the dead connection',
        () => killed !== undefined && removed.has(killed),
      );
      const next = await store.append('t', item('next'));
      expect(next.event.seq).toBe(2);
      expect(await itemKeys(store, 't')).toEqual(['first', 'next']);
      await eventually('both feeds publish seq 2', () => own.has('t', 2) && other.has('t', 2));
      expect([own.seqs('t'), other.seqs('t')]).toEqual([
        [1, 2],
        [1, 2],
      ]);
    } finally {
      await end();
    }
  });
});

describe('task reads', () => {
  it('of one tick go in one statement, one row per task, each caller with its own copy', async () => {
    const [store, other] = await twoStores();
    await store.createTask({ id: 'a', owner: 'alice', kind: 'k', total: 2 });
    await other.createTask({ id: 'b', owner: 'bob', kind: 'k' });
    await other.append('b', { type: 'progress', done: 1 });
    const before = store.stats().taskReadBatches;
    const tasks = await Promise.all(['a', 'b', 'missing', 'a', 'a'].map((id) => store.getTask(id)));
    expect(store.stats().taskReadBatches - before).toBe(1);
    expect(tasks.map((task) => task?.seq)).toEqual([0, 1, undefined, 0, 0]);
    expect(tasks[1]).toMatchObject({ id: 'b', owner: 'bob', done: 1 });
    // The same task for three callers: three objects, so one caller's changes stay its own.
    expect(tasks[0]).not.toBe(tasks[3]);
    (tasks[0] as { message: string | null }).message = 'mine';
    expect(tasks[3]?.message).toBeNull();
    // Calls of later ticks make later statements.
    expect(await store.getTask('a')).toMatchObject({ id: 'a', seq: 0 });
    expect(store.stats().taskReadBatches - before).toBe(2);
  });

  it('of a later tick do not wait for a slow read in flight', async () => {
    const schema = freshSchema('lastw');
    schemas.push(schema);
    await migrateProgressSchema(new Kysely<unknown>({ dialect: new PostgresDialect({ pool }) }), { schema });
    let held: Gate | undefined;
    const hooked = queryHookedPool(pool, async (_client, { text }, run) => {
      const hold = held;
      if (hold !== undefined && text.includes('WHERE id = ANY(') && text.includes('result::text')) {
        held = undefined;
        await hold.promise;
      }
      return run();
    });
    const store = await PostgresProgressStore.open({
      pool: hooked,
      schema,
      migrate: false,
      clock: clock.now,
    });
    stores.push(store);
    await store.createTask({ id: 'a', owner: 'alice', kind: 'k' });
    const slow = gate();
    held = slow;
    const first = store.getTask('a');
    await eventually('the first read is held', () => held === undefined);
    try {
      // Another tick's read: before, it waited for the held one (one batch at a time).
      const waited = new Promise((resolve) => setTimeout(() => resolve('still waiting after 2 s'), 2000));
      await expect(Promise.race([store.getTask('a'), waited])).resolves.toMatchObject({ id: 'a' });
    } finally {
      slow.open();
    }
    await expect(first).resolves.toMatchObject({ id: 'a' });
  });

  it('refused before the batch (a bad id) fail alone, and those not sent when the store closes are refused', async () => {
    const [store] = await twoStores();
    await store.createTask({ id: 'a', owner: 'alice', kind: 'k' });
    const outcomes = await Promise.allSettled([
      store.getTask('a'),
      store.getTask('bad id!'),
      store.getTask('a'),
    ]);
    expect(outcomes.map((outcome) => outcome.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    expect((outcomes[1] as PromiseRejectedResult).reason).toMatchObject({ code: ErrorCode.InvalidInput });
    // Not sent yet when the store closes: refused like every later call (as queued acks are).
    const unsent = expect(store.getTask('a')).rejects.toMatchObject({ code: ErrorCode.Closed });
    await store.close();
    await unsent;
    await expect(store.getTask('a')).rejects.toMatchObject({ code: ErrorCode.Closed });
  });
});
