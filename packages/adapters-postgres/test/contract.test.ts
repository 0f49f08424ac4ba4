import { describeProgressStoreContract, ManualClock } from '@finishline/core/testing';
import { Kysely, PostgresDialect } from 'kysely';
import { afterAll, beforeAll } from 'vitest';
import { migrateProgressSchema, PostgresProgressStore } from '../src/index.js';
import { dropSchema, freshSchema, newPool } from './support.js';

// One schema for the file, migrated once; every harness starts from empty tables (TRUNCATE is much
// faster than a schema per test, and the model-based test builds a harness per run).
const pool = newPool(20);
const schema = freshSchema('contract');

beforeAll(async () => {
  const db = new Kysely<unknown>({ dialect: new PostgresDialect({ pool }) });
  await migrateProgressSchema(db, { schema });
});

afterAll(async () => {
  await dropSchema(pool, schema);
  await pool.end();
});

describeProgressStoreContract('postgres', async () => {
  await pool.query(`TRUNCATE ${schema}.tasks, ${schema}.events`);
  const clock = new ManualClock();
  const store = await PostgresProgressStore.open({ pool, schema, migrate: false, clock: clock.now });
  return { store, clock, close: () => store.close() };
});
