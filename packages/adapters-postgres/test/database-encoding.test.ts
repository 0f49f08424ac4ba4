import { randomBytes } from 'node:crypto';
import { ErrorCode } from '@finishline/core';
import pg from 'pg';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { migrateProgressSchema, PostgresProgressStore } from '../src/index.js';
import { newPool, pgUrl } from './support.js';

/**
 * A database whose encoding cannot hold every text core accepts is refused at open: in LATIN1, the store
 * opened and then failed every append and task creation carrying a character LATIN1 lacks (an emoji, a CJK
 * result) with `invalid_input`.
 */

const admin = newPool(2, 'finishline-test-admin');
const databases: string[] = [];
const cleanups: Array<() => Promise<unknown>> = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {});
});

/** A new database in `encoding`, dropped after the file's tests; returns a pool on it. */
async function databaseIn(encoding: string): Promise<pg.Pool> {
  const name = `fl_enc_${randomBytes(5).toString('hex')}`;
  databases.push(name);
  await admin.query(
    `CREATE DATABASE ${name} ENCODING '${encoding}' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0`,
  );
  const url = new URL(pgUrl());
  url.pathname = `/${name}`;
  const pool = new pg.Pool({ connectionString: url.toString(), max: 4, idleTimeoutMillis: 0 });
  pool.on('error', () => {});
  return pool;
}

afterAll(async () => {
  for (const name of databases) await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  await admin.end();
});

describe('the database encoding', () => {
  it('refuses a LATIN1 database at open, before migrating it', async () => {
    const pool = await databaseIn('LATIN1');
    try {
      const opening = PostgresProgressStore.open({ pool, schema: 'enc' });
      await expect(opening).rejects.toMatchObject({
        code: ErrorCode.StoreUnavailable,
        message: expect.stringContaining('LATIN1'),
      });
      const { rows } = await pool.query(`SELECT to_regnamespace('enc') AS schema`);
      expect(rows[0].schema).toBeNull();
    } finally {
      await pool.end();
    }
  });

  it('refuses a LATIN1 database in migrateProgressSchema run alone, creating nothing', async () => {
    // A deployment step that migrates before any store opens: it prepared a database every store refuses.
    const pool = await databaseIn('LATIN1');
    try {
      await expect(migrateProgressSchema(pool, { schema: 'enc' })).rejects.toMatchObject({
        code: ErrorCode.StoreUnavailable,
        message: expect.stringMatching(/^migrateProgressSchema: the database's encoding is LATIN1/),
      });
      const { rows } = await pool.query(`SELECT to_regnamespace('enc') AS schema`);
      expect(rows[0].schema).toBeNull();
    } finally {
      await pool.end();
    }
  });

  it('opens a UTF8 or SQL_ASCII database, and an emoji and CJK text come back as they went in', async () => {
    for (const encoding of ['UTF8', 'SQL_ASCII']) {
      const pool = await databaseIn(encoding);
      // Migrated alone first, as a deployment step does: the encoding passes there too.
      expect(await migrateProgressSchema(pool, { schema: 'enc' }), encoding).not.toHaveLength(0);
      const store = await PostgresProgressStore.open({ pool, schema: 'enc', migrate: false });
      try {
        const task = await store.createTask({ owner: 'alice', kind: 'k', message: 'snow ☃' });
        await store.append(task.id, { type: 'item', key: 'node-😀', ok: true });
        await store.append(task.id, { type: 'completed', result: { note: '中文', ключ: 'é' } });
        expect(await store.getTask(task.id), encoding).toMatchObject({
          message: 'snow ☃',
          result: { note: '中文', ключ: 'é' },
        });
        const events = await store.readEvents(task.id, 0);
        expect(events[0], encoding).toMatchObject({ item: { key: 'node-😀' } });
      } finally {
        await store.close();
        await pool.end();
      }
    }
  });

  it('refuses a LATIN1 database at open with migrate: false, from the LISTEN connection (nothing sent on the pool)', async () => {
    // A schema made before the check existed, on a LATIN1 database (stood for by the one table the LISTEN
    // connection reads at connect). open() without migrating sends nothing on the pool: a store opened while
    // its pool's database is down serves once it is back (store.test.ts, "connection failures").
    const pool = await databaseIn('LATIN1');
    try {
      await pool.query(
        'CREATE SCHEMA enc; CREATE TABLE enc.meta (key text PRIMARY KEY, value text NOT NULL)',
      );
      const opening = PostgresProgressStore.open({ pool, schema: 'enc', migrate: false });
      await expect(opening).rejects.toMatchObject({
        code: ErrorCode.StoreUnavailable,
        message: expect.stringMatching(/^PostgresProgressStore: the database's encoding is LATIN1/),
      });
    } finally {
      await pool.end();
    }
  });
});
