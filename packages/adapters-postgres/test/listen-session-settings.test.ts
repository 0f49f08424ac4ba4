import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { openRecordingErrors, pgUrl, reReadBehindLock, storeFixtures } from './support.js';

/**
 * Session settings a DBA puts on the role or the database (here passed as connection options, which Postgres
 * applies the same way) reach the `LISTEN` connection too, which is derived from the pool's options. An
 * `idle_session_timeout` shorter than the connection's quiet periods (between two barriers, every
 * `watermarkIntervalMs`) made Postgres end the connection each time it had been idle that long: the
 * listener reconnected and re-read over and over, reporting an error each time. A `transaction_timeout`
 * (Postgres 17) ends the session whose statement runs longer, as `statement_timeout` cuts the statement: a
 * re-read after a long outage that took longer was ended at every attempt, and the listener stayed down.
 */

const { admin, migrated } = storeFixtures('session_settings');

describe("the LISTEN connection under a role's or database's session settings", () => {
  it('is not ended by an idle_session_timeout shorter than its quiet periods', async () => {
    const schema = await migrated();
    const pool = new pg.Pool({ connectionString: pgUrl(), options: '-c idle_session_timeout=100' });
    pool.on('error', () => {});
    const { store, errors } = await openRecordingErrors(pool, schema, { watermarkIntervalMs: 400 });
    try {
      const pid = store.changes.health().listenerPid;
      // Three barrier intervals, each one quiet for longer than the timeout.
      await new Promise((resolve) => setTimeout(resolve, 1300));
      expect(errors.map((error) => error.message)).toEqual([]);
      expect(store.changes.stats().reconnects).toBe(0);
      expect(store.changes.health()).toMatchObject({ connected: true, listenerPid: pid });
    } finally {
      await store.close();
      await pool.end();
    }
  });

  it('is not ended by a transaction_timeout (Postgres 17) shorter than its re-read', async (context) => {
    const { rows } = await admin.query("SELECT current_setting('server_version_num')::int AS version");
    if ((rows[0] as { version: number }).version < 170000) context.skip();
    await reReadBehindLock(
      admin,
      await migrated(),
      'tx_timeout',
      { options: '-c transaction_timeout=100' },
      (error) => /transaction timeout/.test(error.message),
      'ended',
    );
  });
});
