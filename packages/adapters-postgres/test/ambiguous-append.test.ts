import { ErrorCode } from '@finishline/core';
import { ProgressServer } from '@finishline/server';
import { Kysely, PostgresDialect } from 'kysely';
import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { PostgresProgressStore } from '../src/index.js';
import {
  eventually,
  freshSchemaWithAdmin,
  headerAuthenticate,
  newPool,
  pgUrl,
  queryHookedPool,
} from './support.js';

/**
 * An append whose connection drops while Postgres still runs its statement (as after a lost connection, or a
 * `query_timeout` that gave up on it): the store answers `store_unavailable`, and the statement commits a
 * moment later all the same (the backend notices the lost client only when it answers). Here the statement
 * is slow because a trigger of the test sleeps in its insert, after the statement locked the task's row.
 * A read after the rejection must see the append's final outcome: `runBatch` reads the task's log for an
 * item before writing it again, and read too early it wrote the item twice (`done` 2 for one item).
 */

const cleanups: Array<() => Promise<unknown>> = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {});
});

/** `db`: the store opened on a Kysely instance of the pool (its clients given the `error` listener, as the option asks). */
async function setup({ db = false, closeTimeoutMs }: { db?: boolean; closeTimeoutMs?: number } = {}) {
  const { schema, admin } = freshSchemaWithAdmin('ambig', cleanups, 3);
  const real = newPool(6, 'ambiguous-append');
  cleanups.push(() => real.end());
  const dropped = { armed: false, count: 0 };
  // Once armed, the next append written in one statement is sent, then its connection drops.
  const pool = queryHookedPool(real, (client, statement, run) => {
    if (!dropped.armed || !statement.text.includes('(SELECT count(*) FROM locked)')) return run();
    dropped.armed = false;
    dropped.count += 1;
    const sent = run();
    setTimeout(() => {
      (client as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy();
    }, 100);
    return sent;
  });
  // Once armed, the next connect fails as an exhausted pool's does (connectionTimeoutMillis ran out).
  const refused = { armed: false, connects: 0 };
  const connect = pool.connect.bind(pool) as () => Promise<pg.PoolClient>;
  (pool as { connect: () => Promise<pg.PoolClient> }).connect = async () => {
    refused.connects += 1;
    if (!refused.armed) return connect();
    refused.armed = false;
    throw new Error('timeout exceeded when trying to connect');
  };
  if (db) real.on('connect', (client) => client.on('error', () => {}));
  const store = await PostgresProgressStore.open(
    db
      ? { db: new Kysely({ dialect: new PostgresDialect({ pool }) }), listenClient: pgUrl(), schema }
      : { pool, schema, closeTimeoutMs },
  );
  cleanups.push(() => store.close());
  /** The next insert into the events table sleeps a second (once), holding the row its statement locked. */
  const slowNextInsert = async () => {
    const s = pg.escapeIdentifier(schema);
    await admin.query(`CREATE TABLE ${s}.slow_once (x int); INSERT INTO ${s}.slow_once VALUES (1);
      CREATE FUNCTION ${s}.slow_once() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        DELETE FROM ${s}.slow_once;
        IF FOUND THEN PERFORM pg_sleep(1); END IF;
        RETURN NEW;
      END $$;
      CREATE TRIGGER slow_once BEFORE INSERT ON ${s}.events FOR EACH ROW EXECUTE FUNCTION ${s}.slow_once();`);
  };
  const itemEvents = async (taskId: string) => {
    const { rows } = await admin.query<{ seq: string }>(
      `SELECT seq FROM ${pg.escapeIdentifier(schema)}.events WHERE task_id = $1 AND type = 'item'`,
      [taskId],
    );
    return rows.length;
  };
  /** The pids of the store's backends (the pool's, not the admin's) that match `where` in pg_stat_activity. */
  const storePids = async (where: string) => {
    const { rows } = await admin.query<{ pid: number }>(
      `SELECT pid FROM pg_stat_activity WHERE application_name = 'ambiguous-append' AND ${where}`,
    );
    return rows.map((row) => row.pid);
  };
  /**
   * Appends an item to a new task `t` whose insert sleeps, holding the task's row, then terminates the append's
   * backend while another transaction queues for that row: the holder has it once the terminated statement lets
   * it go, and keeps it until `release`. `settledAt()`: when the append settled, if it has.
   */
  const appendTerminatedBehindHolder = async () => {
    await store.createTask({ id: 't', owner: 'alice', kind: 'k' });
    await slowNextInsert();
    let settledAt: number | undefined;
    const appended = store.append('t', { type: 'item', key: 'x', ok: true });
    appended.then(
      () => (settledAt = Date.now()),
      () => (settledAt = Date.now()),
    );
    let sleeping: number[] = [];
    await eventually('the append sleeps in its insert', async () => {
      sleeping = await storePids(`wait_event = 'PgSleep'`);
      return sleeping.length === 1;
    });
    const holder = await admin.connect();
    const release = async () => {
      await holder.query('ROLLBACK').catch(() => {});
      holder.release();
    };
    try {
      const { rows: backend } = await holder.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
      await holder.query('BEGIN');
      const locking = holder.query(
        `SELECT 1 FROM ${pg.escapeIdentifier(schema)}.tasks WHERE id = 't' FOR UPDATE`,
      );
      await eventually('the holder queues for the row', async () => {
        const { rows } = await admin.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'`,
          [backend[0]?.pid],
        );
        return rows[0]?.n === 1;
      });
      await admin.query('SELECT pg_terminate_backend($1)', [sleeping[0]]);
      await locking;
    } catch (error) {
      await release();
      throw error;
    }
    return { appended, settledAt: () => settledAt, release };
  };
  return { store, dropped, refused, slowNextInsert, itemEvents, storePids, appendTerminatedBehindHolder };
}

describe('an append whose connection dropped and that commits afterwards', () => {
  it('is rejected only once its statement ended: a read after the rejection sees it', async () => {
    const { store, dropped, slowNextInsert, itemEvents } = await setup();
    await store.createTask({ id: 't', owner: 'alice', kind: 'k' });
    await slowNextInsert();
    dropped.armed = true;
    await expect(store.append('t', { type: 'item', key: 'x', ok: true })).rejects.toMatchObject({
      code: ErrorCode.StoreUnavailable,
    });
    expect(dropped.count).toBe(1);
    // Read at once: the append committed before its rejection, not after.
    expect(await store.getTask('t')).toMatchObject({ seq: 1, done: 1 });
    expect(await itemEvents('t')).toBe(1);
  }, 30_000);

  it.each([
    { with: 'pool', db: false },
    { with: 'db', db: true },
  ])(
    'whose backend is terminated mid-statement waits for its rows on a live connection, not the dead one (with $with)',
    async ({ db }) => {
      // A backend ended by the server (pg_terminate_backend, a fast shutdown) sends its FATAL before its socket
      // closes; the append's statement fails on the FATAL, and its connection went back to the pool before the
      // driver saw the close. The wait for the append's rows (`#settleUnknown`) drew that dead connection again,
      // failed at once, and the append was rejected without waiting: a read then could come before a commit
      // the server did not report.
      const { store, storePids, appendTerminatedBehindHolder } = await setup({ db });
      // The append's statement sleeps in the trigger, holding the task's row.
      const { appended, settledAt, release } = await appendTerminatedBehindHolder();
      try {
        // The append's wait for its rows queues behind the holder, on a connection other than the dead one.
        await eventually(
          'the append is rejected or waits for its rows',
          async () => settledAt() !== undefined || (await storePids(`wait_event_type = 'Lock'`)).length === 1,
        );
        expect(settledAt()).toBeUndefined();
      } finally {
        await release();
      }
      await expect(appended).rejects.toMatchObject({ code: ErrorCode.StoreUnavailable });
      // And the store goes on, on live connections.
      expect((await store.append('t', { type: 'item', key: 'y', ok: true })).event.seq).toBe(1);
    },
    30_000,
  );

  it('whose wait for its rows close() cut is rejected then, not waited for again on another connection', async () => {
    // close() past closeTimeoutMs destroys the connections the store holds, this wait's among them; it failed
    // as a dead connection does, and was tried again on a new one, after close() (on a pool the caller may be
    // ending), waiting for the held row until its own bound, seconds after close() returned.
    const { store, storePids, appendTerminatedBehindHolder } = await setup({ closeTimeoutMs: 200 });
    // The holder has the row once the terminated statement lets it go, and keeps it: the wait waits.
    const { appended, settledAt, release } = await appendTerminatedBehindHolder();
    try {
      await eventually(
        'the append waits for its rows',
        async () => (await storePids(`wait_event_type = 'Lock'`)).length === 1,
      );
      const closedAt = Date.now();
      await store.close();
      await expect(appended).rejects.toMatchObject({ code: ErrorCode.StoreUnavailable });
      expect((settledAt() ?? Number.POSITIVE_INFINITY) - closedAt).toBeLessThan(2000);
    } finally {
      await release();
    }
  }, 30_000);

  it('an append that got no connection (nothing sent) is rejected at once: no wait for its rows', async () => {
    const { store, refused, itemEvents } = await setup();
    await store.createTask({ id: 't', owner: 'alice', kind: 'k' });
    refused.armed = true;
    const before = refused.connects;
    await expect(store.append('t', { type: 'item', key: 'x', ok: true })).rejects.toMatchObject({
      code: ErrorCode.StoreUnavailable,
    });
    // The failed connect alone: waiting for the rows would have asked the (exhausted) pool once more.
    expect(refused.connects - before).toBe(1);
    expect(await itemEvents('t')).toBe(0);
  });

  it('is not written a second time by runBatch', async () => {
    const { store, dropped, slowNextInsert, itemEvents } = await setup();
    const server = new ProgressServer({ store, authenticate: headerAuthenticate, leaseTtlMs: 20_000 });
    cleanups.push(() => server.close({ timeoutMs: 1000 }));
    // Total set at creation: the batch's first insert is then its item's.
    const task = await server.tasks.create({ owner: 'alice', kind: 'k', total: 1 });
    await slowNextInsert();
    dropped.armed = true;

    const result = await task.runBatch(['only'], () => 'done');

    expect(dropped.count).toBe(1);
    expect(await itemEvents(task.id)).toBe(1);
    expect(result).toMatchObject({ status: 'completed', succeeded: 1, failed: 0 });
    expect(await store.getTask(task.id)).toMatchObject({ done: 1, succeeded: 1, status: 'completed' });
  }, 30_000);
});
