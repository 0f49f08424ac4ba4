import { ErrorCode } from '@finishline/core';
import { Kysely, PostgresDialect } from 'kysely';
import type pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { migrateProgressSchema } from '../src/index.js';
import { dropSchema, eventually, freshSchema, newPool } from './support.js';

/**
 * pg-pool takes its `error` listener off a client while it is checked out, and a client whose backend ends
 * then (`pg_terminate_backend`, a restart, a failover) emits `error`: with no listener, an uncaught
 * exception that ended the caller's process, even with an `error` listener on the pool. The migration
 * holds its client for as long as it waits for another replica's lock (up to an hour). Given the pool, it
 * guards its clients as the store does (`guarded-pool.ts`) and rejects with `store_unavailable`.
 */

/** The advisory lock the migration queues on (`MIGRATION_LOCK_ID` in `migrations.ts`). */
const MIGRATION_LOCK_ID = '3853314791062309107';

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

function newTestPool(applicationName: string): pg.Pool {
  const pool = newPool(2, applicationName);
  cleanups.push(() => pool.end());
  return pool;
}

/** Records uncaught exceptions until the test ends (vitest would report them only after the run). */
function recordUncaught(): unknown[] {
  const uncaught: unknown[] = [];
  const record = (error: unknown) => uncaught.push(error);
  process.on('uncaughtException', record);
  cleanups.push(async () => {
    process.off('uncaughtException', record);
  });
  return uncaught;
}

describe('migrateProgressSchema given a pool', () => {
  it('rejects with store_unavailable, not an uncaught exception, when its backend is terminated while it waits for the lock', async () => {
    const uncaught = recordUncaught();
    const admin = newTestPool('finishline-test');
    const schema = freshSchema('mt');
    cleanups.push(() => dropSchema(admin, schema));
    const applicationName = `finishline-${schema}`;
    const pool = newTestPool(applicationName);

    // Another replica's migration, holding the lock.
    const holder = await admin.connect();
    cleanups.push(async () => {
      await holder.query('ROLLBACK');
      holder.release();
    });
    await holder.query('BEGIN');
    await holder.query(`SELECT pg_advisory_xact_lock(${MIGRATION_LOCK_ID})`);

    const migrating = migrateProgressSchema(pool, { schema });
    migrating.catch(() => {});
    let pid: number | undefined;
    await eventually('the migration waits for the lock', async () => {
      const { rows } = await admin.query<{ pid: number }>(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
        [applicationName],
      );
      pid = rows[0]?.pid;
      return pid !== undefined;
    });
    await admin.query('SELECT pg_terminate_backend($1)', [pid]);
    await expect(migrating).rejects.toMatchObject({ code: ErrorCode.StoreUnavailable });
    // The socket's end follows the FATAL message that failed the query: the 'error' it emits comes after.
    await eventually('the pool dropped the dead client', () => pool.totalCount === 0);

    await holder.query('ROLLBACK');
    await expect(migrateProgressSchema(pool, { schema })).resolves.toContain('0001_initial');
    expect(uncaught, 'errors no listener took').toEqual([]);
  });

  it('leaves the pool open, and applies nothing twice', async () => {
    const pool = newTestPool('finishline-test');
    const schema = freshSchema('mt');
    cleanups.push(() => dropSchema(pool, schema));
    await expect(migrateProgressSchema(pool, { schema })).resolves.toHaveLength(3);
    await expect(migrateProgressSchema(pool, { schema })).resolves.toEqual([]);
    // As a Kysely instance on the same pool sees it.
    const db = new Kysely<unknown>({ dialect: new PostgresDialect({ pool }) });
    await expect(migrateProgressSchema(db, { schema })).resolves.toEqual([]);
    await expect(pool.query('SELECT 1 AS one')).resolves.toMatchObject({ rows: [{ one: 1 }] });
  });

  it.each([{}, null, undefined])(
    'refuses a target that is neither a Kysely instance nor a pool with invalid_input (%s)',
    async (target) => {
      // null and undefined (a JavaScript caller's pool not made yet) too: they threw a TypeError.
      await expect(migrateProgressSchema(target as never)).rejects.toMatchObject({
        code: ErrorCode.InvalidInput,
      });
    },
  );
});
