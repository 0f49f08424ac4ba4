import { ErrorCode } from '@finishline/core';
import { ManualClock } from '@finishline/core/testing';
import { Kysely, PostgresDialect, sql } from 'kysely';
import type pg from 'pg';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { PostgresProgressStore } from '../src/index.js';
import { PreparedStatement, param } from '../src/prepared-statement.js';
import type { ProgressDatabase } from '../src/schema.js';
import { dropSchema, freshSchema, newPool, queryHookedPool, type SentStatement } from './support.js';

/**
 * The store's frequent statements run as named prepared statements on a pool it was given
 * (`prepared-statement.ts`, `guarded-pool.ts`), and as plain ones with `preparedStatements: false`.
 */

const pool = newPool(4);
const schemas: string[] = [];
const stores: PostgresProgressStore[] = [];
const clock = new ManualClock(1_000_000);

/** `pool`, recording how each statement was sent: by name (a prepared statement) or as text. */
function recordingPool(): { pool: pg.Pool; sent: SentStatement[] } {
  const sent: SentStatement[] = [];
  const recording = queryHookedPool(pool, (_client, statement, run) => {
    sent.push(statement);
    return run();
  });
  return { pool: recording, sent };
}

async function openStore(options: { pool: pg.Pool; preparedStatements?: boolean; schema?: string }) {
  const schema = options.schema ?? freshSchema('prep');
  if (!schemas.includes(schema)) schemas.push(schema);
  const store = await PostgresProgressStore.open({ ...options, schema, clock: clock.now });
  stores.push(store);
  return store;
}

/** Creates a task, appends to it, acks it and reads it back: every kind of frequent statement. */
async function exercise(store: PostgresProgressStore, id: string): Promise<void> {
  await store.createTask({ id, owner: 'alice', kind: 'k', total: 2 });
  await store.append(id, { type: 'item', key: 'a', ok: true });
  await store.append(id, { type: 'completed' });
  await store.ack(id, 2);
  expect(await store.getTask(id)).toMatchObject({ seq: 2, ackedSeq: 2, status: 'completed' });
  expect((await store.readEvents(id, 0)).map((event) => event.seq)).toEqual([1, 2]);
  expect(await store.latestSeqs([id])).toEqual(new Map([[id, 2]]));
}

const appendStatement = (text: string) => text.includes('-- Rows locked in id order first');

afterEach(async () => {
  await Promise.all(stores.splice(0).map((store) => store.close()));
});

afterAll(async () => {
  for (const schema of schemas) await dropSchema(pool, schema);
  await pool.end();
});

describe('prepared statements', () => {
  it('run the appends, acks and reads by name on a pool the store was given', async () => {
    const recording = recordingPool();
    const store = await openStore({ pool: recording.pool });
    recording.sent.length = 0;
    await exercise(store, 't');
    const named = recording.sent.filter((statement) => statement.name !== undefined);
    // The append, the ack, the task read, the events read, the latest seqs; the insert of a task is not one.
    expect(new Set(named.map((statement) => statement.name)).size).toBe(5);
    for (const statement of named) expect(statement.name).toMatch(/^finishline_[0-9a-f]{32}$/);
    expect(named.filter((statement) => appendStatement(statement.text))).toHaveLength(2);
    expect(recording.sent.filter((statement) => statement.name === undefined).map((s) => s.text)).toEqual([
      expect.stringContaining('INSERT INTO'),
    ]);
  });

  it('are not used with preparedStatements: false', async () => {
    const recording = recordingPool();
    const store = await openStore({ pool: recording.pool, preparedStatements: false });
    recording.sent.length = 0;
    await exercise(store, 't');
    expect(recording.sent.filter((statement) => appendStatement(statement.text))).toHaveLength(2);
    expect(recording.sent.every((statement) => statement.name === undefined)).toBe(true);
  });

  it('keep one name per text, so two schemas share the pool connections without a clash', async () => {
    const recording = recordingPool();
    const first = await openStore({ pool: recording.pool });
    const second = await openStore({ pool: recording.pool });
    // A second store on the first one's schema: the same texts, so the same names.
    const again = await openStore({ pool: recording.pool, schema: first.schema });
    for (const [index, store] of [first, second, again].entries()) await exercise(store, `t${index}`);
    const namesByText = new Map<string, Set<string>>();
    for (const { name, text } of recording.sent) {
      if (name === undefined) continue;
      const names = namesByText.get(text) ?? new Set();
      names.add(name);
      namesByText.set(text, names);
    }
    for (const names of namesByText.values()) expect(names.size).toBe(1);
    const firstAppend = [...namesByText.keys()].filter((text) => appendStatement(text));
    // One append text per schema, each with its own name.
    expect(firstAppend).toHaveLength(2);
    expect(new Set(firstAppend.map((text) => [...(namesByText.get(text) ?? [])][0])).size).toBe(2);
  });

  it('survive a connection that lost them (a new backend prepares them again)', async () => {
    const store = await openStore({ pool });
    await exercise(store, 'before');
    // Every connection of the pool is replaced: the next statements go to backends that never saw them.
    const { rows } = await pool.query<{ pid: number }>(
      `SELECT pid FROM pg_stat_activity WHERE application_name = 'finishline-test' AND pid <> pg_backend_pid()`,
    );
    for (const { pid } of rows) await pool.query('SELECT pg_terminate_backend($1)', [pid]);
    // The pool drops each dead client when its next query fails or it sees the end; retry until it has.
    let done = false;
    for (let attempt = 0; attempt < 20 && !done; attempt++) {
      try {
        await exercise(store, `after-${attempt}`);
        done = true;
      } catch {
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    }
    expect(done).toBe(true);
  });

  it('lost by the connection (DEALLOCATE ALL, a transaction-mode pooler) fail with a hint to turn them off', async () => {
    const single = newPool(1);
    try {
      const store = await openStore({ pool: single });
      await exercise(store, 'before');
      await store.createTask({ id: 'next', owner: 'alice', kind: 'k' });
      await single.query('DEALLOCATE ALL');
      const failure = await store
        .append('next', { type: 'progress', done: 1 })
        .catch((error: unknown) => error);
      expect(failure).toMatchObject({
        code: ErrorCode.StoreUnavailable,
        message: expect.stringContaining('open the store with preparedStatements: false'),
      });
      // Turned off, the same pool works.
      const plain = await openStore({ pool: single, preparedStatements: false });
      await exercise(plain, 'after');
    } finally {
      await Promise.all(stores.splice(0).map((store) => store.close()));
      await single.end();
    }
  });

  it('refuse a template with a plain value, which would be bound once for every run', () => {
    const db = new Kysely<ProgressDatabase>({ dialect: new PostgresDialect({ pool }) });
    expect(() => new PreparedStatement(db, sql`SELECT ${1} AS one`)).toThrow(/param\(\) markers/);
    const statement = new PreparedStatement<{ a: number; b: number }, { sum: number }>(
      db,
      sql<{ sum: number }>`SELECT ${param('b')}::int - ${param('a')}::int AS sum`,
    );
    return expect(statement.run(db, { a: 1, b: 5 })).resolves.toMatchObject({ rows: [{ sum: 4 }] });
  });

  it('keep one name per text across two copies of the module (an ESM and a CommonJS load sharing a pool)', async () => {
    const db = new Kysely<ProgressDatabase>({ dialect: new PostgresDialect({ pool }) });
    const loadCopy = async () => {
      vi.resetModules();
      return import('../src/prepared-statement.js');
    };
    const first = await loadCopy();
    const second = await loadCopy();
    expect(second).not.toBe(first);
    // Each copy prepares a different text first.
    const one = sql`SELECT ${first.param('a')}::int AS copy_one`;
    const two = sql`SELECT ${second.param('a')}::int AS copy_two`;
    new first.PreparedStatement(db, one);
    new second.PreparedStatement(db, two);
    const textOne = one.compile(db).sql;
    const textTwo = two.compile(db).sql;
    // A connection both copies' stores use must never be asked for one name with two texts.
    expect(first.preparedStatementName(textOne)).toBeDefined();
    expect(first.preparedStatementName(textOne)).not.toBe(second.preparedStatementName(textTwo));
  });
});
