import { randomBytes } from 'node:crypto';
import type { ProgressError } from '@finishline/core';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { PostgresProgressStore } from '../src/index.js';
import { eventually, pgUrl, storeFixtures } from './support.js';

/**
 * A pool configured with a per-statement timeout (`statement_timeout`, server-side, or `query_timeout`,
 * pg's client-side one), as production pools often are. The `LISTEN` client is derived from the pool's
 * options, so it inherited the timeout, and a re-read after a reconnect that took longer (a large one
 * after a long outage) was cut by it every time: the listener reconnected, re-read from the same mark,
 * was cut again, and stayed down for good. The store bounds each step of a (re)connect itself.
 *
 * The re-read is made slow here by a lock on the events table that the test holds.
 */

const { admin, migrated } = storeFixtures('stmt_timeout');

/** What cancelled a statement: Postgres's `statement_timeout` (57014), or pg's `query_timeout`. */
function cutByTimeout(error: ProgressError): boolean {
  const cause = error.cause as { code?: unknown; message?: unknown } | undefined;
  return cause?.code === '57014' || cause?.message === 'Query read timeout';
}

describe.each([
  ['statement_timeout', { statement_timeout: 100 }],
  ['query_timeout', { query_timeout: 100 }],
])("a pool's %s", (_name, timeout) => {
  it("does not cut the LISTEN connection's re-read after a reconnect", async () => {
    const schema = await migrated();
    const applicationName = `stmt_timeout_${randomBytes(4).toString('hex')}`;
    const pool = new pg.Pool({ connectionString: pgUrl(), application_name: applicationName, ...timeout });
    pool.on('error', () => {});
    const errors: ProgressError[] = [];
    const store = await PostgresProgressStore.open({
      pool,
      schema,
      migrate: false,
      reconnect: { initialDelayMs: 5, maxDelayMs: 20 },
      onError: (error) => errors.push(error),
    });
    const locker = new pg.Client({ connectionString: pgUrl() });
    await locker.connect();
    try {
      await store.createTask({ id: 'a', owner: 'alice', kind: 'k' });
      await store.append('a', { type: 'progress' });
      await locker.query('BEGIN');
      await locker.query(`LOCK TABLE ${pg.escapeIdentifier(schema)}.events IN ACCESS EXCLUSIVE MODE`);
      await admin.query('SELECT pg_terminate_backend($1)', [store.changes.health().listenerPid]);
      // Either the re-read was cut, or it has waited for the lock ten times the timeout.
      await eventually('the re-read was cut, or waited for the lock past the timeout', async () => {
        if (errors.some(cutByTimeout)) return true;
        const { rows } = await admin.query(
          `SELECT 1 FROM pg_stat_activity
           WHERE application_name = $1 AND wait_event_type = 'Lock' AND query LIKE '%horizon_passed%'
             AND now() - query_start > interval '1 second'`,
          [applicationName],
        );
        return rows.length > 0;
      });
      expect(errors.filter(cutByTimeout)).toEqual([]);
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
