import { Kysely, PostgresDialect } from 'kysely';
import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { PostgresProgressStore } from '../src/index.js';
import { eventually, freshSchemaWithAdmin, newPool, pgUrl } from './support.js';

/**
 * A read whose backend the server ends while it runs (`pg_terminate_backend`, `idle_session_timeout`, a
 * failover): Postgres sends its FATAL before it closes the socket, and pg fails the read on the FATAL but
 * marks the client dead only once it reads the close. The read is tried again on a live connection. With
 * `db` the dead client goes back to the caller's pool as healthy, and pg-pool hands it out first again: the
 * second try fails on it (which gets it discarded), and a third reaches the database. Until 7 December 2026
 * the read failed with `store_unavailable` (with `db`, the caller's next statement too).
 */

const cleanups: Array<() => Promise<unknown>> = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {});
});

describe('a read whose backend is terminated mid-statement', () => {
  it.each([
    { with: 'pool', db: false },
    { with: 'db', db: true },
  ])('is read again on a live connection (with $with)', async ({ db }) => {
    const { schema, admin } = freshSchemaWithAdmin('deadread', cleanups, 3);
    const pool = newPool(4, 'dead-connection-read');
    // What the db option asks of the caller (see its doc): an error listener on each client.
    if (db) pool.on('connect', (client) => client.on('error', () => {}));
    cleanups.push(() => pool.end());
    const store = await PostgresProgressStore.open(
      db
        ? { db: new Kysely({ dialect: new PostgresDialect({ pool }) }), listenClient: pgUrl(), schema }
        : { pool, schema },
    );
    cleanups.push(() => store.close());
    await store.createTask({ id: 't', owner: 'alice', kind: 'k' });

    // The read waits for a table lock, so that its backend can be terminated while it runs.
    const holder = await admin.connect();
    cleanups.push(async () => {
      await holder.query('ROLLBACK').catch(() => {});
      holder.release();
    });
    await holder.query('BEGIN');
    await holder.query(`LOCK TABLE ${pg.escapeIdentifier(schema)}.tasks IN ACCESS EXCLUSIVE MODE`);
    const read = store.getTask('t');
    read.catch(() => {});
    let pid: number | undefined;
    await eventually('the read waits for the lock', async () => {
      const { rows } = await admin.query<{ pid: number }>(
        `SELECT pid FROM pg_stat_activity WHERE application_name = 'dead-connection-read' AND wait_event_type = 'Lock'`,
      );
      pid = rows[0]?.pid;
      return pid !== undefined;
    });
    await admin.query('SELECT pg_terminate_backend($1)', [pid]);
    await holder.query('ROLLBACK');

    await expect(read).resolves.toMatchObject({ id: 't', seq: 0 });
    // And the store goes on, on live connections.
    expect((await store.append('t', { type: 'item', key: 'x', ok: true })).event.seq).toBe(1);
  });
});
