import { Kysely, PostgresDialect } from 'kysely';
import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { type PgListenClient, PostgresProgressStore } from '../src/index.js';
import { newPool, pgUrl, settlesWithin, storeFixtures } from './support.js';

/**
 * `close()` while an append and an ack wait for a connection of a pool whose every connection the caller
 * holds (its own slow statements, its own Kysely's transactions). With `db` the store cannot stop a wait in
 * the caller's pool as it does its own pool's (`destroyHeld`): close() returned after `closeTimeoutMs`, the
 * append and the ack never settled, and the append was committed whenever a connection came back.
 */

const { migrated } = storeFixtures('exhausted');

const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** A store on a pool of 2 (as `db`: a Kysely instance on it). */
async function openStore(db: boolean) {
  const schema = await migrated();
  const pool = newPool(2);
  cleanups.push(() => pool.end());
  const store = await PostgresProgressStore.open({
    ...(db ? { db: new Kysely({ dialect: new PostgresDialect({ pool }) }) } : { pool }),
    migrate: false,
    schema,
    ...(db
      ? { listenClient: () => new pg.Client({ connectionString: pgUrl() }) as unknown as PgListenClient }
      : {}),
    closeTimeoutMs: 300,
  });
  cleanups.push(() => store.close());
  return { store, pool };
}

/** Takes both connections of `pool`, as the caller's own work would; `release` gives them back. */
async function exhaust(pool: pg.Pool) {
  const taken: pg.PoolClient[] = [];
  for (let i = 0; i < 2; i += 1) taken.push(await pool.connect());
  const release = () => {
    for (const client of taken.splice(0)) client.release();
  };
  cleanups.push(release);
  return release;
}

/** How `call` settled within a second: its error's code, `resolved`, or `still waiting`. */
async function outcome(call: Promise<unknown>): Promise<string | undefined> {
  const settled = call.then(
    () => 'resolved',
    (error: { code?: string }) => error.code,
  );
  const answered = settled.then(() => undefined);
  if ((await settlesWithin(answered, 1000)) === 'still waiting') return 'still waiting';
  return settled;
}

/**
 * A store whose pool's connections the test then took, and an append and an ack of a task sent 50 ms ago,
 * waiting for one.
 */
async function exhaustedStore(db: boolean) {
  const { store, pool } = await openStore(db);
  const task = await store.createTask({ owner: 'alice', kind: 'k' });
  const release = await exhaust(pool);
  const appended = store.append(task.id, { type: 'progress', done: 1 });
  appended.catch(() => undefined);
  const acked = store.ack(task.id, 0);
  acked.catch(() => undefined);
  await new Promise((resolve) => setTimeout(resolve, 50));
  return { store, task, appended, acked, release, pool };
}

describe('close() with an append waiting for a connection of an exhausted pool', () => {
  for (const db of [false, true]) {
    it(`returns within closeTimeoutMs and rejects the append with closed, nothing written${db ? ' (db)' : ''}`, async () => {
      const { store, task, appended, acked, release, pool } = await exhaustedStore(db);
      const started = Date.now();
      expect(await settlesWithin(store.close(), 5000), 'store.close()').toBe('closed');
      expect(Date.now() - started).toBeLessThan(2000);
      for (const [what, call] of [
        ['the append', appended],
        ['the ack', acked],
      ] as const) {
        expect(await outcome(call), `${what} waiting at close()`).toBe('closed');
      }
      // The connections come back: the append that close() rejected must not be written after it.
      release();
      await new Promise((resolve) => setTimeout(resolve, 300));
      const { rows } = await pool.query(`SELECT seq FROM "${store.schema}".tasks WHERE id = $1`, [task.id]);
      expect(Number(rows[0].seq)).toBe(0);
    }, 20_000);
  }
});

describe('close() with other calls waiting for a connection of an exhausted pool', () => {
  for (const db of [false, true]) {
    it(`rejects them with closed, and none writes after close() returned${db ? ' (db)' : ''}`, async () => {
      const { store, pool } = await openStore(db);
      const finished = await store.createTask({ owner: 'alice', kind: 'k' });
      await store.append(finished.id, { type: 'completed' });
      const expired = await store.createTask({ owner: 'alice', kind: 'k', lease: { owner: 'w', ttlMs: 1 } });
      const leased = await store.createTask({
        owner: 'alice',
        kind: 'k',
        lease: { owner: 'w', ttlMs: 60_000 },
      });
      // Past the finish and the short lease, by any clock.
      await new Promise((resolve) => setTimeout(resolve, 50));
      const release = await exhaust(pool);
      const calls = {
        createTask: store.createTask({ id: 'created-while-exhausted', owner: 'alice', kind: 'k' }),
        releaseLease: store.releaseLease(leased.id, 'w'),
        reapExpiredLeases: store.reapExpiredLeases(),
        purgeFinished: store.purgeFinished({ olderThanMs: 0 }),
        getTask: store.getTask(leased.id),
        readEvents: store.readEvents(leased.id, 0),
        getEpoch: store.getEpoch(),
      };
      for (const call of Object.values(calls)) call.catch(() => undefined);
      await new Promise((resolve) => setTimeout(resolve, 50));
      const started = Date.now();
      expect(await settlesWithin(store.close(), 5000), 'store.close()').toBe('closed');
      expect(Date.now() - started).toBeLessThan(2000);
      for (const [what, call] of Object.entries(calls)) {
        expect(await outcome(call), `${what} waiting at close()`).toBe('closed');
      }
      // The connections come back: nothing close() rejected may be written after it.
      release();
      await new Promise((resolve) => setTimeout(resolve, 300));
      const tasks = `"${store.schema}".tasks`;
      const { rows } = await pool.query(`SELECT id, status, lease_owner FROM ${tasks}`);
      const byId = (a: { id: string }, b: { id: string }) => (a.id < b.id ? -1 : 1);
      expect(rows.sort(byId)).toEqual(
        [
          { id: finished.id, status: 'completed', lease_owner: null },
          { id: expired.id, status: 'running', lease_owner: 'w' },
          { id: leased.id, status: 'running', lease_owner: 'w' },
        ].sort(byId),
      );
    }, 20_000);
  }
});
