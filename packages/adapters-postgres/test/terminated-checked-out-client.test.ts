import { ErrorCode } from '@finishline/core';
import { Kysely, PostgresDialect } from 'kysely';
import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { PostgresProgressStore } from '../src/index.js';
import { eventually, freshSchemaWithAdmin, pgUrl } from './support.js';

/**
 * A backend terminated (`pg_terminate_backend`, a fast shutdown) while the store holds its pool client, in
 * a transaction: the statement fails on the FATAL, kysely sends ROLLBACK on the same client, and pg emits
 * `error` on the client when it reads the socket's close, the client still checked out. pg-pool's listener
 * is on idle clients only, and an `error` with no listener ends the process. With `pool` the store adds
 * one; with `db` it cannot reach the clients (kysely keeps them private), and the caller adds it as the
 * option's doc asks (without it, this test ends in an uncaught "Connection terminated unexpectedly").
 */

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {});
});

describe('a backend terminated while the store holds its client', () => {
  it.each([{ with: 'db' }, { with: 'pool' }])(
    'fails the call, not the process (with $with)',
    async (mode) => {
      const { schema, admin } = freshSchemaWithAdmin('term', cleanups, 3);
      // What the docs ask of a pool, and no more.
      const pool = new pg.Pool({ connectionString: pgUrl(), max: 4, application_name: 'term-checked-out' });
      pool.on('error', () => {});
      if (mode.with === 'db') pool.on('connect', (client) => client.on('error', () => {}));
      cleanups.push(() => pool.end());
      const store = await PostgresProgressStore.open(
        mode.with === 'db'
          ? { db: new Kysely({ dialect: new PostgresDialect({ pool }) }), listenClient: pgUrl(), schema }
          : { pool, schema },
      );
      cleanups.push(() => store.close());
      // Created by another replica: this store's first append to it locks its row in a transaction.
      const other = await PostgresProgressStore.open({ pool: admin, schema });
      await other.createTask({ id: 't', owner: 'alice', kind: 'k' });
      await other.close();
      const s = pg.escapeIdentifier(schema);
      await admin.query(`CREATE FUNCTION ${s}.slow() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN PERFORM pg_sleep(30); RETURN NEW; END $$;
      CREATE TRIGGER slow BEFORE INSERT ON ${s}.events FOR EACH ROW EXECUTE FUNCTION ${s}.slow();`);
      const appended = store.append('t', { type: 'item', key: 'x', ok: true });
      appended.catch(() => {});
      let pid: number | undefined;
      await eventually('the append sleeps in its insert', async () => {
        const { rows } = await admin.query<{ pid: number }>(
          `SELECT pid FROM pg_stat_activity WHERE application_name = 'term-checked-out' AND wait_event = 'PgSleep'`,
        );
        pid = rows[0]?.pid;
        return pid !== undefined;
      });
      await admin.query('SELECT pg_terminate_backend($1)', [pid]);
      await expect(appended).rejects.toMatchObject({ code: ErrorCode.StoreUnavailable });
      await admin.query(`DROP TRIGGER slow ON ${s}.events`);
      expect((await store.append('t', { type: 'item', key: 'y', ok: true })).event.seq).toBe(1);
    },
    60_000,
  );
});
