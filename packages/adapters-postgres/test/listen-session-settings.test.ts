import { randomBytes } from 'node:crypto';
import type { ProgressError } from '@finishline/core';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { PostgresProgressStore } from '../src/index.js';
import { eventually, pgUrl, storeFixtures } from './support.js';

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
    const errors: ProgressError[] = [];
    const store = await PostgresProgressStore.open({
      pool,
      schema,
      migrate: false,
      watermarkIntervalMs: 400,
      reconnect: { initialDelayMs: 5, maxDelayMs: 20 },
      onError: (error) => errors.push(error),
    });
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
    const schema = await migrated();
    const applicationName = `tx_timeout_${randomBytes(4).toString('hex')}`;
    const pool = new pg.Pool({
      connectionString: pgUrl(),
      application_name: applicationName,
      options: '-c transaction_timeout=100',
    });
    pool.on('error', () => {});
    const errors: ProgressError[] = [];
    const store = await PostgresProgressStore.open({
      pool,
      schema,
      migrate: false,
      reconnect: { initialDelayMs: 5, maxDelayMs: 20 },
      onError: (error) => errors.push(error),
    });
    const endedByTimeout = () => errors.filter((error) => /transaction timeout/.test(error.message));
    // The re-read is made slow by a lock on the events table that the test holds.
    const locker = new pg.Client({ connectionString: pgUrl() });
    await locker.connect();
    try {
      await store.createTask({ id: 'a', owner: 'alice', kind: 'k' });
      await store.append('a', { type: 'progress' });
      await locker.query('BEGIN');
      await locker.query(`LOCK TABLE ${pg.escapeIdentifier(schema)}.events IN ACCESS EXCLUSIVE MODE`);
      await admin.query('SELECT pg_terminate_backend($1)', [store.changes.health().listenerPid]);
      // Either the re-read was ended, or it has waited for the lock ten times the timeout.
      await eventually('the re-read was ended, or waited for the lock past the timeout', async () => {
        if (endedByTimeout().length > 0) return true;
        const { rows: waiting } = await admin.query(
          `SELECT 1 FROM pg_stat_activity
           WHERE application_name = $1 AND wait_event_type = 'Lock' AND query LIKE '%horizon_passed%'
             AND now() - query_start > interval '1 second'`,
          [applicationName],
        );
        return waiting.length > 0;
      });
      expect(endedByTimeout().map((error) => error.message)).toEqual([]);
      await locker.query('ROLLBACK');
      await eventually('connected again', () => store.changes.health().connected);
      expect(store.changes.stats().reconnects).toBe(1);
    } finally {
      await locker.query('ROLLBACK').catch(() => {});
      await locker.end();
      await store.close();
      await pool.end();
    }
  });
});
