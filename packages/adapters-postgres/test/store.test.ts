import type { TaskChange, TaskEvent } from '@finishline/core';
import { ErrorCode, isProgressError } from '@finishline/core';
import { ManualClock } from '@finishline/core/testing';
import { CamelCasePlugin, Kysely, ParseJSONResultsPlugin, PostgresDialect, sql } from 'kysely';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  changeChannel,
  MIGRATION_NAMES,
  migrateProgressSchema,
  NOTIFY_PAYLOAD_BUDGET_BYTES,
  PostgresProgressStore,
  type PostgresProgressStoreOptions,
} from '../src/index.js';
import { decodeNotice } from '../src/notify-payload.js';
import { PURGE_EVENT_BUDGET, PURGED_RECORD_MS } from '../src/task-statements.js';
import {
  dropSchema,
  eventually,
  freshSchema,
  gate,
  newPool,
  oneTo,
  pgUrl,
  queryHookedPool,
  Recorder,
  settlesWithin,
} from './support.js';

const pool = newPool(10);
const schemas: string[] = [];
const stores: PostgresProgressStore[] = [];

async function migrated(): Promise<string> {
  const schema = freshSchema('store');
  schemas.push(schema);
  await migrateProgressSchema(new Kysely<unknown>({ dialect: new PostgresDialect({ pool }) }), { schema });
  return schema;
}

async function open(
  options: Partial<PostgresProgressStoreOptions> & { schema: string },
): Promise<PostgresProgressStore> {
  const store = await PostgresProgressStore.open({ pool, migrate: false, ...options });
  stores.push(store);
  return store;
}

/** A plain client listening on the store's channel, collecting every payload. */
async function listenTo(schema: string): Promise<{ listener: pg.Client; payloads: string[] }> {
  const listener = new pg.Client({ connectionString: pgUrl() });
  await listener.connect();
  const payloads: string[] = [];
  listener.on('notification', (message) => {
    if (message.channel === changeChannel(schema)) payloads.push(message.payload ?? '');
  });
  await listener.query(`LISTEN ${pg.escapeIdentifier(changeChannel(schema))}`);
  return { listener, payloads };
}

async function rejectionOf(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error('expected a rejection');
}

/**
 * A transaction outside the store (a program, an operator's psql session, an append of a replica frozen
 * before its COMMIT) holding the rows of tasks `ids`; `end()` rolls back whatever is left and disconnects.
 */
async function holdRows(schema: string, ids: string[]) {
  const holder = new pg.Client({ connectionString: pgUrl() });
  await holder.connect();
  await holder.query('BEGIN');
  const tasks = `${pg.escapeIdentifier(schema)}.tasks`;
  await holder.query(`SELECT id FROM ${tasks} WHERE id = ANY($1) FOR UPDATE`, [ids]);
  return {
    query: (text: string) => holder.query(text),
    end: async () => {
      await holder.query('ROLLBACK');
      await holder.end();
    },
  };
}

/** `promise` settles within 5 s: a liveness bound, not a timing assertion (milliseconds, or waits for a holder). */
async function expectSettles(promise: Promise<unknown>) {
  expect(
    await settlesWithin(
      promise.then(() => undefined),
      5000,
    ),
  ).toBe('closed');
}

afterEach(async () => {
  await Promise.all(stores.splice(0).map((store) => store.close()));
});

afterAll(async () => {
  for (const schema of schemas) await dropSchema(pool, schema);
  await pool.end();
});

/**
 * Migrates a fresh schema through `replica` (one connection, named `applicationName`, with a timeout of
 * 200 ms) while another replica's migration holds the migration lock for longer (600 ms): the migration
 * waits for the lock and migrates. `cleanUp` runs on the holder before it ends.
 */
async function migratesBehindAnotherReplica(
  replica: pg.Pool,
  applicationName: string,
  waiting: string,
  cleanUp: (holder: pg.Client) => Promise<void> = async () => {},
): Promise<void> {
  const schema = freshSchema('mig');
  schemas.push(schema);
  const holder = new pg.Client({ connectionString: pgUrl() });
  await holder.connect();
  try {
    // Another replica's migration, holding the lock.
    await holder.query('BEGIN');
    await holder.query('SELECT pg_advisory_xact_lock(3853314791062309107)');
    const migration = migrateProgressSchema(
      new Kysely<unknown>({ dialect: new PostgresDialect({ pool: replica }) }),
      {
        schema,
      },
    );
    const settled = migration.then(
      () => 'migrated',
      (error: unknown) => error,
    );
    await eventually(waiting, async () => {
      const { rows } = await pool.query(
        `SELECT 1 FROM pg_locks l JOIN pg_stat_activity a USING (pid)
         WHERE l.locktype = 'advisory' AND NOT l.granted AND a.application_name = $1`,
        [applicationName],
      );
      return rows.length > 0;
    });
    // Longer than the replica's timeout: the other migration takes its time.
    await new Promise((resolve) => setTimeout(resolve, 600));
    await holder.query('COMMIT');
    expect(await settled).toBe('migrated');
    expect(await migration).toEqual([...MIGRATION_NAMES]);
  } finally {
    await cleanUp(holder);
    await holder.end();
    await replica.end();
  }
}

describe('migrations', () => {
  let db: Kysely<unknown>;
  beforeAll(() => {
    db = new Kysely<unknown>({ dialect: new PostgresDialect({ pool }) });
  });

  it('are versioned and recorded in <schema>.migrations; a second run applies nothing', async () => {
    const schema = freshSchema('mig');
    schemas.push(schema);
    expect(await migrateProgressSchema(db, { schema })).toEqual([...MIGRATION_NAMES]);
    const { rows } = await pool.query(`SELECT name FROM ${schema}.migrations ORDER BY name`);
    expect(rows.map((row) => row.name)).toEqual([...MIGRATION_NAMES]);
    expect(await migrateProgressSchema(db, { schema })).toEqual([]);
  });

  it('are safe when several replicas migrate the same schema at once', async () => {
    const schema = freshSchema('mig');
    schemas.push(schema);
    const others = [newPool(2), newPool(2), newPool(2)];
    try {
      const results = await Promise.all(
        others.map((other) =>
          migrateProgressSchema(new Kysely<unknown>({ dialect: new PostgresDialect({ pool: other }) }), {
            schema,
          }),
        ),
      );
      expect(results.flat()).toEqual([...MIGRATION_NAMES]);
      const { rows } = await pool.query(`SELECT count(*)::int AS n FROM ${schema}.migrations`);
      expect(rows[0].n).toBe(MIGRATION_NAMES.length);
    } finally {
      await Promise.all(others.map((other) => other.end()));
    }
  });

  // Review of 6 December 2026: the wait for the advisory lock ran under the session's statement_timeout, so a
  // replica whose pool set a short one (1 s) failed to open with "canceling statement due to statement
  // timeout" while another replica's migration took longer. The wait is bounded by its lock_timeout (an hour).
  it("wait for another replica's migration beyond the pool's statement_timeout", async () => {
    const replica = new pg.Pool({
      connectionString: pgUrl(),
      max: 1,
      application_name: 'finishline-test-short-timeout',
      statement_timeout: 200,
    });
    await migratesBehindAnotherReplica(
      replica,
      'finishline-test-short-timeout',
      'the replica waits for the lock',
    );
  });

  // The same with Postgres 17's transaction_timeout, which ends the session whose transaction lasts longer:
  // a replica whose role or database set one shorter than another replica's migration failed to open with
  // "terminating connection due to transaction timeout". The migration's transaction turns it off.
  it("wait for another replica's migration beyond the sessions' transaction_timeout (Postgres 17)", async (context) => {
    const { rows: version } = await pool.query("SELECT current_setting('server_version_num')::int AS v");
    if ((version[0] as { v: number }).v < 170000) context.skip();
    const replica = new pg.Pool({
      connectionString: pgUrl(),
      max: 1,
      application_name: 'finishline-test-short-tx-timeout',
      options: '-c transaction_timeout=200',
    });
    replica.on('error', () => {});
    await migratesBehindAnotherReplica(
      replica,
      'finishline-test-short-tx-timeout',
      'the replica waits for the lock, or failed',
      async (holder) => {
        await holder.query('ROLLBACK').catch(() => {});
      },
    );
  });

  it('are not failed by tables and schemas that other sessions drop meanwhile (other tenants, other tests)', async () => {
    // Kysely's introspector, which the Migrator asked whether its tables exist, listed every table of the
    // database and looked each name up again: one dropped meanwhile failed the migration, and open().
    const churn = freshSchema('churn');
    const churner = newPool(1);
    let churning = true;
    const churned = (async () => {
      for (let n = 0; churning; n++) {
        const other = pg.escapeIdentifier(`${churn}_${n % 4}`);
        await churner.query(
          `CREATE SCHEMA ${other}; CREATE TABLE ${other}.t (id serial PRIMARY KEY, a int, b int)`,
        );
        await churner.query(`DROP SCHEMA ${other} CASCADE`);
      }
    })();
    try {
      for (let attempt = 0; attempt < 5; attempt++) {
        const schema = freshSchema('mig');
        schemas.push(schema);
        expect(await migrateProgressSchema(db, { schema })).toEqual([...MIGRATION_NAMES]);
        expect(await migrateProgressSchema(db, { schema })).toEqual([]);
      }
    } finally {
      churning = false;
      await churned;
      await churner.end();
    }
  });

  it('refuse a schema that a newer version of the package migrated', async () => {
    const schema = await migrated();
    await pool.query(`INSERT INTO ${schema}.migrations (name, timestamp) VALUES ('9999_future', 'now')`);
    const error = await rejectionOf(migrateProgressSchema(db, { schema }));
    expect(isProgressError(error, ErrorCode.StoreUnavailable), String(error)).toBe(true);
  });

  it('a store opened without migrating on an empty schema fails to open with store_unavailable', async () => {
    const error = await rejectionOf(
      PostgresProgressStore.open({ pool, schema: freshSchema('none'), migrate: false }),
    );
    expect(isProgressError(error, ErrorCode.StoreUnavailable), String(error)).toBe(true);
  });

  it('open() migrates by default, in the configured schema only', async () => {
    const schema = freshSchema('auto');
    schemas.push(schema);
    const store = await open({ schema, migrate: true });
    await store.createTask({ id: 'x', owner: 'alice', kind: 'k' });
    const { rows } = await pool.query(
      `SELECT table_name FROM information_schema.tables WHERE table_schema = $1 ORDER BY table_name`,
      [schema],
    );
    expect(rows.map((row) => row.table_name)).toEqual([
      'events',
      'meta',
      'migrations',
      'migrations_lock',
      'purged',
      'tasks',
      'unprocessed_events',
    ]);
  });
});

describe('appends', () => {
  it("to a free task are not held back by a transaction in flight that waits for another task's row", async () => {
    const schema = await migrated();
    // Armed once the store's transaction for 'held' is sent: the append to 'free' must come after it.
    const sent = gate();
    const hooked = queryHookedPool(pool, (_client, { text }, run) => {
      const result = run();
      if (text.includes('FOR UPDATE')) sent.open();
      return result;
    });
    const store = await open({ schema, pool: hooked });
    for (const id of ['held', 'free']) await store.createTask({ id, owner: 'alice', kind: 'k' });
    // As an append transaction of a replica frozen before its COMMIT holds its task's row.
    const holder = await holdRows(schema, ['held']);
    try {
      const held = store.append('held', { type: 'progress' });
      await sent.promise;
      const free = store.append('free', { type: 'progress' });
      // A liveness bound, not a timing assertion: the append takes milliseconds, or waits for the holder.
      await expectSettles(free);
      await expect(free).resolves.toMatchObject({ event: { taskId: 'free', seq: 1 } });
      await holder.query('ROLLBACK');
      await expect(held).resolves.toMatchObject({ event: { taskId: 'held', seq: 1 } });
    } finally {
      await holder.end();
    }
  });

  it('to free tasks are not held back when every transaction in flight waits for a row another transaction holds', async () => {
    // Until 5 December 2026 an append waited for its rows' locks: two appends to rows a frozen replica
    // held (maxConcurrentBatches transactions, both waiting) stopped every append of the store.
    const schema = await migrated();
    const store = await open({ schema, maxConcurrentBatches: 2 });
    for (const id of ['held-1', 'held-2', 'free']) await store.createTask({ id, owner: 'alice', kind: 'k' });
    const holder = await holdRows(schema, ['held-1', 'held-2']);
    try {
      const first = store.append('held-1', { type: 'progress' });
      const again = store.append('held-1', { type: 'progress', message: 'second' });
      // The second is a transaction of its own once the first has waited past the throttle.
      await new Promise((resolve) => setTimeout(resolve, 20));
      const second = store.append('held-2', { type: 'progress' });
      await new Promise((resolve) => setTimeout(resolve, 300));
      const free = store.append('free', { type: 'progress' });
      // A liveness bound, not a timing assertion: the append takes milliseconds, or waits for the holder.
      await expectSettles(free);
      await expect(free).resolves.toMatchObject({ event: { taskId: 'free', seq: 1 } });
      await holder.query('ROLLBACK');
      await expect(first).resolves.toMatchObject({ event: { taskId: 'held-1', seq: 1 } });
      await expect(again).resolves.toMatchObject({
        event: { taskId: 'held-1', seq: 2 },
        task: { message: 'second' },
      });
      await expect(second).resolves.toMatchObject({ event: { taskId: 'held-2', seq: 1 } });
    } finally {
      await holder.end();
    }
  });

  it('that wait for a row another transaction holds do not hold close(): they reject with closed', async () => {
    // A row held by a transaction outside the store (a program, or an operator's psql session, in BEGIN;
    // SELECT … FOR UPDATE) was waited for by close() as long as it was held: appends retried, and close()
    // with them, for ever.
    const schema = await migrated();
    const store = await open({ schema });
    for (const id of ['held', 'free']) await store.createTask({ id, owner: 'alice', kind: 'k' });
    const holder = await holdRows(schema, ['held']);
    try {
      const held = store.append('held', { type: 'progress' });
      const later = store.append('held', { type: 'progress', message: 'second' });
      const free = store.append('free', { type: 'progress' });
      held.catch(() => {});
      later.catch(() => {});
      await expect(free).resolves.toMatchObject({ event: { taskId: 'free', seq: 1 } });
      // A liveness bound, not a timing assertion: close() waits at most one lock wait, or for the holder.
      expect(await settlesWithin(store.close(), 5000)).toBe('closed');
      await expect(held).rejects.toMatchObject({ code: 'closed' });
      await expect(later).rejects.toMatchObject({ code: 'closed' });
      await holder.query('ROLLBACK');
      // Never written: the row is as before.
      const { rows } = await pool.query(
        `SELECT seq FROM ${pg.escapeIdentifier(schema)}.tasks WHERE id = 'held'`,
      );
      expect(Number(rows[0].seq)).toBe(0);
    } finally {
      await holder.end();
    }
  });

  it('notify in the same transaction with ids only when the events do not fit, far below the payload limit', async () => {
    const schema = await migrated();
    const store = await open({ schema });
    const { listener, payloads } = await listenTo(schema);
    try {
      const { createdAt: run } = await store.createTask({ id: 'big', owner: 'alice', kind: 'k' });
      const detail = { blob: 'x'.repeat(15_000) };
      await store.append('big', { type: 'item', key: 'node-1', ok: true, detail });
      await store.append('big', { type: 'completed', result: { blob: 'y'.repeat(15_000) } });
      await eventually('two notifications', () => payloads.length >= 2);
      expect(payloads.map((payload) => decodeNotice(payload))).toEqual([
        { kind: 'changes', changes: [{ taskId: 'big', firstSeq: 1, seq: 1, terminal: false, run }] },
        { kind: 'changes', changes: [{ taskId: 'big', firstSeq: 2, seq: 2, terminal: true, run }] },
      ]);
      for (const payload of payloads) {
        expect(payload).not.toContain('xxx');
        expect(Buffer.byteLength(payload)).toBeLessThanOrEqual(NOTIFY_PAYLOAD_BUDGET_BYTES);
      }
    } finally {
      await listener.end();
    }
  });

  it('group-commit appends of one tick, keeping each task in call order', async () => {
    const schema = await migrated();
    const store = await open({ schema, maxConcurrentBatches: 3, maxBatchSize: 50 });
    const taskIds = ['t1', 't2', 't3', 't4', 't5'];
    for (const id of taskIds) await store.createTask({ id, owner: 'alice', kind: 'k' });
    const calls = oneTo(400).map((i) => ({ taskId: taskIds[i % taskIds.length] ?? 't1', key: `item-${i}` }));
    const results = await Promise.all(
      calls.map(({ taskId, key }) => store.append(taskId, { type: 'item', key, ok: true })),
    );
    const stats = store.stats();
    expect(stats.appends).toBe(400);
    expect(stats.batches).toBeLessThan(400 / 5);
    expect(stats.largestBatch).toBeLessThanOrEqual(50);
    for (const taskId of taskIds) {
      const called = calls.filter((call) => call.taskId === taskId).map((call) => call.key);
      const returned = results.filter((result) => result.event.taskId === taskId);
      expect(returned.map((result) => result.event.seq)).toEqual(oneTo(called.length));
      const stored = (await store.readEvents(taskId, 0)) as Extract<TaskEvent, { type: 'item' }>[];
      expect(
        stored.map((event) => event.item.key),
        `${taskId} items in call order`,
      ).toEqual(called);
      expect((await store.getTask(taskId))?.done).toBe(called.length);
    }
  });

  it('a value Postgres could not store is refused by validation alone; appends of the same tick commit', async () => {
    const schema = await migrated();
    const store = await open({ schema });
    await store.createTask({ id: 'a', owner: 'alice', kind: 'k' });
    await store.createTask({ id: 'b', owner: 'alice', kind: 'k' });
    const [good, bad, other] = await Promise.allSettled([
      store.append('a', { type: 'progress', done: 1 }),
      // Postgres refuses a lone surrogate (not Unicode text); core's validation refuses it first, so the
      // batch never reaches SQL with it and no batch fails.
      store.append('a', { type: 'progress', message: 'lone \ud800 surrogate' }),
      store.append('b', { type: 'progress', done: 2 }),
    ]);
    expect(good).toMatchObject({ status: 'fulfilled', value: { event: { seq: 1 } } });
    expect(other).toMatchObject({ status: 'fulfilled', value: { event: { seq: 1 } } });
    expect(bad?.status).toBe('rejected');
    const reason = (bad as PromiseRejectedResult).reason;
    expect(isProgressError(reason, ErrorCode.InvalidInput)).toBe(true);
    expect((reason as Error).message).toContain('unpaired surrogate');
    expect(store.stats().failedBatches, 'validation refused it before SQL').toBe(0);
    expect((await store.append('a', { type: 'progress', done: 3 })).event.seq).toBe(2);
  });

  it("of a damaged task row fail alone: the other tasks' appends of the same batch commit", async () => {
    const schema = await migrated();
    const store = await open({ schema });
    for (const id of ['damaged', 'a', 'b']) {
      await store.createTask({ id, owner: 'alice', kind: 'k' });
      await store.append(id, { type: 'progress', done: 1 });
    }
    // Written by hand (a partial restore, an operator's edit): the row's seq fell behind its log, so its next
    // event collides with one the log holds (a unique violation, not a value Postgres refuses).
    await pool.query(`UPDATE ${pg.escapeIdentifier(schema)}.tasks SET seq = 0 WHERE id = 'damaged'`);
    // One tick: one batch. Before, the whole batch failed, and so did every batch the damaged task's
    // appends went into: a busy server's appends of every other task with them.
    const [damaged, a, b] = await Promise.allSettled([
      store.append('damaged', { type: 'progress', done: 2 }),
      store.append('a', { type: 'progress', done: 2 }),
      store.append('b', { type: 'progress', done: 2 }),
    ]);
    expect(a).toMatchObject({ status: 'fulfilled', value: { event: { seq: 2 } } });
    expect(b).toMatchObject({ status: 'fulfilled', value: { event: { seq: 2 } } });
    expect(damaged.status).toBe('rejected');
    const reason = (damaged as PromiseRejectedResult).reason;
    expect(isProgressError(reason, ErrorCode.StoreUnavailable), String(reason)).toBe(true);
    expect(reason).toMatchObject({ taskId: 'damaged' });
  });

  it('of a task whose row another transaction holds keep call order when their batch is retried one by one', async () => {
    // A damaged row fails its batch, which is then retried one append at a time. The first append of a held
    // task waited for the row, then went back to the queue; the second was tried next, before it, and took
    // the lower seq once the row was free (or went back to the queue ahead of it).
    const schema = await migrated();
    const name = `order-${schema}`;
    const own = newPool(4, name);
    let holder: Awaited<ReturnType<typeof holdRows>> | undefined;
    try {
      const store = await open({ schema, pool: own });
      for (const id of ['damaged', 'held']) {
        await store.createTask({ id, owner: 'alice', kind: 'k' });
        await store.append(id, { type: 'progress', done: 1 });
      }
      await pool.query(`UPDATE ${pg.escapeIdentifier(schema)}.tasks SET seq = 0 WHERE id = 'damaged'`);
      holder = await holdRows(schema, ['held']);
      const waiting = async () =>
        (
          await pool.query(
            `SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'`,
            [name],
          )
        ).rows[0].n as number;
      // One tick: one batch, which the damaged row fails.
      const [damaged, first, second] = [
        rejectionOf(store.append('damaged', { type: 'progress', done: 2 })),
        store.append('held', { type: 'progress', message: 'first' }),
        store.append('held', { type: 'progress', message: 'second' }),
      ];
      first.catch(() => {});
      second.catch(() => {});
      await eventually('the first append waits for the row', async () => (await waiting()) > 0);
      await eventually('it gave up (lock_timeout)', async () => (await waiting()) === 0);
      await holder.query('ROLLBACK');
      expect(isProgressError(await damaged, ErrorCode.StoreUnavailable)).toBe(true);
      await expect(first).resolves.toMatchObject({ event: { seq: 2 }, task: { message: 'first' } });
      await expect(second).resolves.toMatchObject({ event: { seq: 3 }, task: { message: 'second' } });
    } finally {
      await holder?.end();
      await Promise.all(stores.splice(0).map((store) => store.close()));
      await own.end();
    }
  });

  it("to a held row reject with store_unavailable when the sessions' statement_timeout ends the lock wait first", async () => {
    const schema = await migrated();
    const timed = new pg.Pool({ connectionString: pgUrl(), max: 4, options: '-c statement_timeout=100' });
    timed.on('error', () => {});
    let holder: Awaited<ReturnType<typeof holdRows>> | undefined;
    try {
      const store = await open({ schema, pool: timed });
      for (const id of ['held', 'free']) await store.createTask({ id, owner: 'alice', kind: 'k' });
      holder = await holdRows(schema, ['held']);
      const [held, free] = [
        rejectionOf(store.append('held', { type: 'progress' })),
        store.append('free', { type: 'progress' }),
      ];
      await expect(free).resolves.toMatchObject({ event: { taskId: 'free', seq: 1 } });
      const error = await held;
      expect(isProgressError(error, ErrorCode.StoreUnavailable), String(error)).toBe(true);
      expect(error).toMatchObject({ taskId: 'held', message: expect.stringContaining('statement timeout') });
      await holder.query('ROLLBACK');
      const { rows } = await pool.query(
        `SELECT count(*)::int AS n FROM ${schema}.events WHERE task_id = 'held'`,
      );
      expect(rows[0].n).toBe(0);
      await expect(store.append('held', { type: 'progress' })).resolves.toMatchObject({ event: { seq: 1 } });
    } finally {
      await holder?.end();
      await Promise.all(stores.splice(0).map((store) => store.close()));
      await timed.end();
    }
  });

  it('reject oversized payloads, invalid ids and unknown tasks with typed errors, before any SQL', async () => {
    const schema = await migrated();
    const store = await open({ schema });
    await store.createTask({ id: 'a', owner: 'alice', kind: 'k' });
    const cases: [string, ErrorCode, () => Promise<unknown>][] = [
      [
        'oversized detail',
        ErrorCode.InvalidInput,
        () => store.append('a', { type: 'item', key: 'k', ok: true, detail: 'x'.repeat(20_000) }),
      ],
      [
        'id with a quote',
        ErrorCode.InvalidInput,
        () => store.append("a'; DROP TABLE tasks; --", { type: 'progress' }),
      ],
      ['empty id', ErrorCode.InvalidInput, () => store.getTask('')],
      ['unknown task', ErrorCode.TaskNotFound, () => store.append('nope', { type: 'progress' })],
      ['unknown task events', ErrorCode.TaskNotFound, () => store.readEvents('nope', 0)],
      ['unknown task ack', ErrorCode.TaskNotFound, () => store.ack('nope', 0)],
      ['unknown task lease', ErrorCode.TaskNotFound, () => store.renewLease('nope', 'w', 1000)],
      ['unknown task release', ErrorCode.TaskNotFound, () => store.releaseLease('nope', 'w')],
      ['ack beyond seq', ErrorCode.InvalidInput, () => store.ack('a', 1)],
      [
        'duplicate id',
        ErrorCode.InvalidInput,
        () => store.createTask({ id: 'a', owner: 'alice', kind: 'k' }),
      ],
    ];
    for (const [what, code, call] of cases) {
      const error = await rejectionOf(call());
      expect(isProgressError(error, code), `${what}: ${String(error)}`).toBe(true);
    }
    const { rows } = await pool.query(`SELECT count(*)::int AS n FROM ${schema}.tasks`);
    expect(rows[0].n).toBe(1);
  });
});

describe('acks', () => {
  /** Creates tasks `ids`, each with `events` progress events. */
  async function tasksWithEvents(store: PostgresProgressStore, ids: string[], events: number) {
    for (const id of ids) {
      await store.createTask({ id, owner: 'alice', kind: 'k' });
      for (const done of oneTo(events)) await store.append(id, { type: 'progress', done });
    }
  }

  it("are not held back by another transaction's lock on one task's row (a replica frozen inside an append)", async () => {
    // Until 5 December 2026 the ack statement waited for every row lock of its batch, and a store writes
    // one ack batch at a time: a replica frozen between an append's locking read and its COMMIT held back
    // every ack of every other replica that acked one of its tasks, of any task, until it woke (the chaos
    // suite's frozen replica: acks stored up to 14 s late).
    const schema = await migrated();
    const store = await open({ schema });
    await tasksWithEvents(store, ['a', 'b'], 2);
    const holder = await holdRows(schema, ['a']);
    try {
      // One batch with both, then one of 'b' alone in a later batch: neither may wait for 'a'.
      const ackA = store.ack('a', 2);
      const first = store.ack('b', 1);
      await expectSettles(first);
      await expectSettles(store.ack('b', 2));
      expect((await store.getTask('b'))?.ackedSeq).toBe(2);
      expect(await Promise.race([ackA.then(() => 'written'), Promise.resolve('waiting')])).toBe('waiting');
      await holder.query('COMMIT');
      // The locked one is written once the lock goes.
      expect(await ackA).toBe(2);
      expect((await store.getTask('a'))?.ackedSeq).toBe(2);
    } finally {
      await holder.end();
    }
  });

  it('that wait for a held row reject with closed when the store closes, with no timer left behind', async () => {
    const schema = await migrated();
    const store = await open({ schema });
    await tasksWithEvents(store, ['a'], 2);
    const holder = await holdRows(schema, ['a']);
    try {
      const ack = store.ack('a', 2);
      let outcome: unknown;
      ack.then(
        () => (outcome = 'written'),
        (error: unknown) => (outcome = error),
      );
      // Skipped at 0, 50, 150 and 350 ms: the next ask is due around 750 ms, well after the close below.
      await new Promise((resolve) => setTimeout(resolve, 400));
      await store.close();
      await Promise.resolve();
      expect(outcome).toMatchObject({ code: 'closed' });
    } finally {
      await holder.end();
    }
  });

  it('whose statement is in flight when the store closes, and finds the row held, reject with closed', async () => {
    const schema = await migrated();
    // The ack statement waits at the gate until the store is closing.
    let armed = false;
    const reached = gate();
    const release = gate();
    const hooked = queryHookedPool(pool, async (_client, { text }, run) => {
      if (armed && text.includes('SKIP LOCKED') && text.includes('acked_seq')) {
        armed = false;
        reached.open();
        await release.promise;
      }
      return run();
    });
    const store = await open({ schema, pool: hooked });
    await tasksWithEvents(store, ['a'], 2);
    const holder = await holdRows(schema, ['a']);
    try {
      armed = true;
      const ack = store.ack('a', 2);
      let outcome: unknown;
      ack.then(
        () => (outcome = 'written'),
        (error: unknown) => (outcome = error),
      );
      await reached.promise;
      const closing = store.close();
      // The statement runs now, while close() waits for it, and skips the held row.
      release.open();
      await closing;
      await Promise.resolve();
      expect(outcome).toMatchObject({ code: 'closed' });
    } finally {
      await holder.end();
    }
  });

  it('of one tick go in one statement; each task moves to the highest seq acked', async () => {
    const schema = await migrated();
    const store = await open({ schema });
    const ids = ['a', 'b', 'c', 'd'];
    await tasksWithEvents(store, ids, 5);
    await store.ack('d', 4);
    // Several acks per task, out of order, and one stale ack ('d' is at 4 already).
    const calls = ids.flatMap((id, index) => [
      { id, seq: (index % 3) + 1 },
      { id, seq: 5 - index },
      { id, seq: 2 },
    ]);
    const before = store.stats().ackBatches;
    const results = await Promise.all(calls.map(({ id, seq }) => store.ack(id, seq)));
    expect(store.stats().ackBatches - before).toBe(1);
    for (const id of ids) {
      const acked = Math.max(
        ...calls.filter((call) => call.id === id).map((call) => call.seq),
        id === 'd' ? 4 : 0,
      );
      expect((await store.getTask(id))?.ackedSeq, id).toBe(acked);
      calls.forEach((call, index) => {
        if (call.id === id) expect(results[index], `${id}@${call.seq}`).toBe(acked);
      });
    }
  });

  it('are written in statements of at most maxAckBatchSize, in call order', async () => {
    const schema = await migrated();
    const store = await open({ schema, maxAckBatchSize: 10 });
    await tasksWithEvents(store, ['a'], 35);
    const before = store.stats().ackBatches;
    const results = await Promise.all(oneTo(35).map((seq) => store.ack('a', seq)));
    expect(store.stats().ackBatches - before).toBe(4);
    // Each statement sees only its own acks and those before it: acks of a later statement never leak back.
    expect(results).toEqual(oneTo(35).map((seq) => Math.min(35, Math.ceil(seq / 10) * 10)));
    expect((await store.getTask('a'))?.ackedSeq).toBe(35);
  });

  it('valid, stale, unknown and beyond-seq acks in one batch each get their own result', async () => {
    const schema = await migrated();
    const store = await open({ schema });
    await tasksWithEvents(store, ['a', 'b', 'c'], 3);
    await store.ack('c', 3);
    const before = store.stats().ackBatches;
    const [validA, beyondA, unknown, validB, staleC, beyondC, zero] = await Promise.allSettled([
      store.ack('a', 2),
      // Beyond 'a''s seq, in the same batch as a valid ack of 'a': rejected alone, 'a' still moves.
      store.ack('a', 9),
      store.ack('nope', 1),
      store.ack('b', 3),
      store.ack('c', 1),
      store.ack('c', 4),
      store.ack('b', 0),
    ]);
    expect(store.stats().ackBatches - before).toBe(1);
    expect(validA).toEqual({ status: 'fulfilled', value: 2 });
    expect(validB).toEqual({ status: 'fulfilled', value: 3 });
    expect(staleC).toEqual({ status: 'fulfilled', value: 3 });
    expect(zero).toEqual({ status: 'fulfilled', value: 3 });
    for (const [what, settled, code] of [
      ['beyond a', beyondA, ErrorCode.InvalidInput],
      ['unknown', unknown, ErrorCode.TaskNotFound],
      ['beyond c', beyondC, ErrorCode.InvalidInput],
    ] as const) {
      expect(settled?.status, what).toBe('rejected');
      const reason = (settled as PromiseRejectedResult).reason;
      expect(isProgressError(reason, code), `${what}: ${String(reason)}`).toBe(true);
      expect((reason as { taskId?: string }).taskId, what).toBe(what === 'unknown' ? 'nope' : what.slice(-1));
    }
    const acked = await Promise.all(['a', 'b', 'c'].map(async (id) => (await store.getTask(id))?.ackedSeq));
    expect(acked).toEqual([2, 3, 3]);
  });

  it('interleaved with appends of the same tasks, on two stores, never deadlock', async () => {
    const schema = await migrated();
    const options = { schema, maxBatchSize: 8, maxConcurrentBatches: 3, maxAckBatchSize: 8 };
    const stores2 = [await open(options), await open(options)];
    const ids = oneTo(50).map((i) => `task-${String(i).padStart(2, '0')}`);
    // Enough events that every ack can move its task forward: an ack that moves nothing locks nothing.
    const preloaded = 30;
    for (const id of ids) await stores2[0]?.createTask({ id, owner: 'alice', kind: 'k' });
    await Promise.all(
      ids.flatMap((id) => oneTo(preloaded).map((done) => stores2[0]?.append(id, { type: 'progress', done }))),
    );
    // A fixed pseudo-random mix, so a failure replays.
    let state = 20261126;
    const next = (n: number) => {
      state = (state * 1103515245 + 12345) % 2 ** 31;
      return state % n;
    };
    const lastAck = new Map<string, number>();
    type Op = { kind: 'append' | 'ack' | 'beyond'; id: string; seq: number; store: PostgresProgressStore };
    const ops: Op[] = oneTo(2000).map(() => {
      const roll = next(10);
      const store = stores2[next(2)] as PostgresProgressStore;
      const id = ids[next(ids.length)] as string;
      if (roll < 5) return { kind: 'append', id, seq: 0, store };
      if (roll < 9) {
        const seq = Math.min(preloaded, (lastAck.get(id) ?? 0) + 1 + next(2));
        lastAck.set(id, seq);
        return { kind: 'ack', id, seq, store };
      }
      return { kind: 'beyond', id, seq: 1_000_000, store };
    });
    const settled = await Promise.allSettled(
      ops.map((op) =>
        op.kind === 'append'
          ? op.store.append(op.id, { type: 'progress', message: 'x' })
          : op.store.ack(op.id, op.seq),
      ),
    );
    const appendSeqs = new Map<string, number[]>();
    settled.forEach((result, index) => {
      const op = ops[index] as Op;
      const what = `${op.kind} ${op.id}@${op.seq}: ${result.status === 'rejected' ? String(result.reason) : ''}`;
      switch (op.kind) {
        case 'append':
          expect(result.status, what).toBe('fulfilled');
          appendSeqs.set(op.id, [
            ...(appendSeqs.get(op.id) ?? []),
            (result as PromiseFulfilledResult<{ event: { seq: number } }>).value.event.seq,
          ]);
          break;
        case 'ack':
          expect(result.status, what).toBe('fulfilled');
          expect((result as PromiseFulfilledResult<number>).value, what).toBeGreaterThanOrEqual(op.seq);
          break;
        case 'beyond':
          expect(result.status, what).toBe('rejected');
          expect(
            isProgressError((result as PromiseRejectedResult).reason, ErrorCode.InvalidInput),
            what,
          ).toBe(true);
          break;
        default: {
          const unreachable: never = op.kind;
          throw new Error(`unknown op ${String(unreachable)}`);
        }
      }
    });
    for (const id of ids) {
      const seqs = (appendSeqs.get(id) ?? []).sort((a, b) => a - b);
      expect(seqs, `${id} seqs gap-free`).toEqual(oneTo(seqs.length).map((n) => n + preloaded));
      const acks = ops.filter((op) => op.kind === 'ack' && op.id === id).map((op) => op.seq);
      const task = await stores2[0]?.getTask(id);
      expect(task?.seq, id).toBe(preloaded + seqs.length);
      expect(task?.ackedSeq, `${id} acked the highest valid ack`).toBe(Math.max(0, ...acks));
    }
    expect(stores2.reduce((sum, store) => sum + store.stats().failedBatches, 0)).toBe(0);
  });

  it('queued when the store closes are rejected with closed and never written', async () => {
    const schema = await migrated();
    const store = await open({ schema });
    await tasksWithEvents(store, ['a'], 1);
    const before = store.stats().ackBatches;
    const queued = rejectionOf(store.ack('a', 1));
    await store.close();
    await new Promise((resolve) => setImmediate(resolve));
    const error = await queued;
    expect(isProgressError(error, ErrorCode.Closed), String(error)).toBe(true);
    expect(store.stats().ackBatches).toBe(before);
    expect(isProgressError(await rejectionOf(store.ack('a', 1)), ErrorCode.Closed)).toBe(true);
    const { rows } = await pool.query(`SELECT acked_seq::int AS acked FROM ${schema}.tasks WHERE id = 'a'`);
    expect(rows[0].acked).toBe(0);
  });
});

describe('lease renewals', () => {
  it("of one tick are not held back by a row another transaction holds: the other tasks' leases renew", async () => {
    const schema = await migrated();
    const store = await open({ schema });
    for (const id of ['held', 'free']) await store.createTask({ id, owner: 'alice', kind: 'k' });
    // As an append transaction of a replica frozen before its COMMIT holds its task's row.
    const holder = await holdRows(schema, ['held']);
    try {
      // One tick: one batch. The lease of 'free' must not wait for 'held' (nor for its next renewal).
      const held = store.renewLease('held', 'replica', 60_000);
      const free = store.renewLease('free', 'replica', 60_000);
      // A liveness bound, not a timing assertion: the renewal takes milliseconds, or waits for the holder.
      await expectSettles(free);
      await expect(free).resolves.toMatchObject({ id: 'free', leaseOwner: 'replica' });
      const next = store.renewLease('free', 'replica', 60_000);
      await expectSettles(next);
      await holder.query('ROLLBACK');
      // Once the row is free again the held one renews too.
      await expect(held).resolves.toMatchObject({ id: 'held', leaseOwner: 'replica' });
    } finally {
      await holder.end();
    }
  });
  it('that wait for a held row reject with closed when the store closes', async () => {
    const schema = await migrated();
    const store = await open({ schema });
    await store.createTask({ id: 'held', owner: 'alice', kind: 'k' });
    const holder = await holdRows(schema, ['held']);
    try {
      let outcome: unknown;
      store.renewLease('held', 'replica', 60_000).then(
        () => (outcome = 'renewed'),
        (error: unknown) => (outcome = error),
      );
      // Wherever the renewal is then (in a pass, or waiting to be asked again), close settles it.
      await new Promise((resolve) => setTimeout(resolve, 700));
      await store.close();
      await Promise.resolve();
      expect(outcome).toMatchObject({ code: 'closed' });
    } finally {
      await holder.end();
    }
  });
});

describe('renewEpoch', () => {
  it('commits the appends called before it first: their notices come before the renewal, in commit order', async () => {
    const schema = await migrated();
    const worker = await open({ schema });
    // Another replica on the schema: it hears the commits' notices in commit order.
    const observer = await open({ schema });
    await worker.createTask({ id: 't', owner: 'alice', kind: 'k' });
    const heard: string[] = [];
    observer.changes.subscribe((change) => heard.push(`seq ${change.seq}`));
    observer.changes.onEpochRenewed(() => heard.push('renewed'));
    // Connections at hand in the pool, as a running server has: the renewal does not wait for a new one.
    await Promise.all(oneTo(4).map(() => pool.query('SELECT pg_sleep(0.02)')));
    // Not awaited, as a server's appends are: one batch in flight, the next queued behind it (same task).
    const first = worker.append('t', { type: 'progress', done: 1 });
    await Promise.resolve();
    const second = worker.append('t', { type: 'progress', done: 2 });
    await worker.renewEpoch();
    await eventually('the observer heard the renewal', () => heard.includes('renewed'), 5000);
    await Promise.all([first, second]);
    await eventually('the observer heard both appends', () => heard.length === 3, 5000);
    // Committed after the renewal, an append called before it reached every server after the new epoch:
    // a server that had read the new epoch took an old-epoch event for one of the new epoch.
    expect(heard).toEqual(['seq 1', 'seq 2', 'renewed']);
  });
});

describe('renewEpoch and an append in a transaction', () => {
  it('waits for an append whose transaction is in flight, not only for those queued', async () => {
    // Found by a mutation run: the test above has one batch queued behind the one in flight, so waiting
    // for the queued appends alone passed it. Here the only append is in a transaction (waiting for a row
    // another transaction holds) when renewEpoch() is called.
    const schema = await migrated();
    const worker = await open({ schema });
    const observer = await open({ schema });
    await worker.createTask({ id: 't', owner: 'alice', kind: 'k' });
    const heard: string[] = [];
    observer.changes.subscribe((change) => heard.push(`seq ${change.seq}`));
    observer.changes.onEpochRenewed(() => heard.push('renewed'));
    const holder = await holdRows(schema, ['t']);
    try {
      const first = worker.append('t', { type: 'progress', done: 1 });
      // In its transaction, waiting for the row (this schema's statement, not another test's).
      await eventually('the append waits for the row', async () => {
        const { rows } = await pool.query(
          `SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND position($1 in query) > 0`,
          [schema],
        );
        return rows.length > 0;
      });
      const renewed = worker.renewEpoch();
      // Time for a renewal that did not wait to commit (one statement) before the row is let go; a
      // renewal that waits commits after the append whenever the row is let go.
      await new Promise((resolve) => setTimeout(resolve, 100));
      await holder.query('ROLLBACK');
      await Promise.all([first, renewed]);
      await eventually('the observer heard both', () => heard.length === 2, 5000);
      expect(heard).toEqual(['seq 1', 'renewed']);
    } finally {
      await holder.end();
    }
  });
});

describe('lease releases', () => {
  it('wait a bounded time for a row another transaction holds, then reject with store_unavailable', async () => {
    const schema = await migrated();
    const store = await open({ schema });
    await store.createTask({ id: 'held', owner: 'alice', kind: 'k' });
    await store.renewLease('held', 'replica', 60_000);
    // Another program's transaction (or an operator's) holding the task's row for as long as it likes.
    const holder = await holdRows(schema, ['held']);
    try {
      let outcome: unknown;
      const released = store.releaseLease('held', 'replica').then(
        () => (outcome = 'released'),
        (error: unknown) => (outcome = error),
      );
      // A liveness bound, not a timing assertion: before, the release waited for the holder, however long.
      await expectSettles(released);
      expect(isProgressError(outcome, ErrorCode.StoreUnavailable), String(outcome)).toBe(true);
      expect(outcome).toMatchObject({ taskId: 'held' });
      await holder.query('ROLLBACK');
      // Nothing was written; once the row is free the release goes through.
      expect((await store.getTask('held'))?.leaseOwner).toBe('replica');
      await store.releaseLease('held', 'replica');
      expect((await store.getTask('held'))?.leaseOwner).toBeNull();
    } finally {
      await holder.end();
    }
  });
});

describe('the lease reaper', () => {
  it('drops the lease of a damaged row it cannot interrupt, reports it once, and interrupts the tasks behind it', async () => {
    const schema = await migrated();
    const clock = new ManualClock();
    const reported: unknown[] = [];
    const store = await open({ schema, clock: clock.now, onError: (error) => reported.push(error) });
    for (const id of ['damaged', 'live']) {
      await store.createTask({ id, owner: 'alice', kind: 'k' });
      await store.append(id, { type: 'progress', done: 1 });
    }
    await store.renewLease('damaged', 'gone', 1000);
    clock.advance(1);
    await store.renewLease('live', 'gone', 1000);
    // Written by hand (a partial restore, an operator's edit): the row's seq fell behind its log, so the
    // interruption's event (seq 1) collides with the event the log holds.
    await pool.query(`UPDATE ${pg.escapeIdentifier(schema)}.tasks SET seq = 0 WHERE id = 'damaged'`);
    clock.advance(10_000);
    // Before: the damaged row, oldest expiry first, failed every pass whole: no expired task was ever interrupted.
    // One slot: the damaged row, set aside, gives it to the next expired task in the same pass.
    const reaped = await store.reapExpiredLeases({ limit: 1 });
    expect(reaped.map((result) => `${result.task.id}:${result.event.type}`)).toEqual(['live:interrupted']);
    expect((await store.getTask('live'))?.status).toBe('interrupted');
    expect(await store.getTask('damaged')).toMatchObject({
      status: 'running',
      leaseOwner: null,
      leaseExpiresAt: null,
    });
    expect(reported).toHaveLength(1);
    expect(isProgressError(reported[0], ErrorCode.Internal), String(reported[0])).toBe(true);
    expect(reported[0]).toMatchObject({ taskId: 'damaged' });
    // Its lease gone, the next passes neither find it nor report it again.
    expect(await store.reapExpiredLeases()).toEqual([]);
    expect(reported).toHaveLength(1);
  });

  it('takes no more than its limit in the careful pass that sets a damaged row aside', async () => {
    const schema = await migrated();
    const clock = new ManualClock();
    const store = await open({ schema, clock: clock.now, onError: () => undefined });
    // In the reaper's order (oldest expiry first): live-a, damaged, live-b, live-c.
    for (const id of ['live-a', 'damaged', 'live-b', 'live-c']) {
      await store.createTask({ id, owner: 'alice', kind: 'k' });
      await store.append(id, { type: 'progress', done: 1 });
      await store.renewLease(id, 'gone', 1000);
      clock.advance(1);
    }
    await pool.query(`UPDATE ${pg.escapeIdentifier(schema)}.tasks SET seq = 0 WHERE id = 'damaged'`);
    clock.advance(10_000);
    // Two slots: live-a, then (the damaged row set aside) live-b; live-c is the next pass's.
    const ids = (results: { task: { id: string } }[]) => results.map((result) => result.task.id);
    expect(ids(await store.reapExpiredLeases({ limit: 2 }))).toEqual(['live-a', 'live-b']);
    expect(ids(await store.reapExpiredLeases({ limit: 2 }))).toEqual(['live-c']);
  });
});

describe('connection failures', () => {
  it('turn into store_unavailable with the driver error as cause', async () => {
    const schema = await migrated();
    const dead = new pg.Pool({ connectionString: 'postgres://postgres@127.0.0.1:1/postgres', max: 1 });
    try {
      // The LISTEN connection works (it has its own settings); the pool does not.
      const store = await open({ schema, pool: dead, listenClient: pgUrl() });
      for (const call of [
        () => store.getTask('a'),
        () => store.append('a', { type: 'progress' }),
        () => store.ack('a', 0),
        () => store.reapExpiredLeases(),
        () => store.purgeFinished({ olderThanMs: 0 }),
      ]) {
        const error = await rejectionOf(call());
        expect(isProgressError(error, ErrorCode.StoreUnavailable), String(error)).toBe(true);
        expect((error as Error).cause).toBeInstanceOf(Error);
      }
      const failed = await rejectionOf(PostgresProgressStore.open({ pool: dead, schema }));
      expect(isProgressError(failed, ErrorCode.StoreUnavailable), String(failed)).toBe(true);
    } finally {
      await Promise.all(stores.splice(0).map((store) => store.close()));
      await dead.end();
    }
  });
});

describe("the caller's pool", () => {
  it('gets one error listener per client however many stores used it', async () => {
    const schema = await migrated();
    const single = new pg.Pool({ connectionString: pgUrl(), max: 1 });
    const clients = new Set<pg.PoolClient>();
    single.on('connect', (client) => clients.add(client));
    try {
      // More stores than Node's listener warning threshold (10), one after the other, as tests and
      // short-lived scripts open them.
      for (let i = 0; i < 12; i++) {
        const store = await PostgresProgressStore.open({ pool: single, schema, migrate: false });
        await store.getTask('any');
        await store.close();
      }
      expect(clients.size).toBe(1);
      // The store's guard and the pool's own idle listener.
      for (const client of clients) expect(client.listenerCount('error')).toBe(2);
    } finally {
      await single.end();
    }
  });
});

describe('operator view and retention', () => {
  it('<schema>.unprocessed_events lists exactly the events past each task acked seq', async () => {
    const schema = await migrated();
    const store = await open({ schema });
    const expected: string[] = [];
    for (const [id, events, acked] of [
      ['a', 5, 2],
      ['b', 3, 3],
      ['c', 4, 0],
    ] as const) {
      await store.createTask({ id, owner: 'alice', kind: 'k' });
      for (let i = 0; i < events; i++) await store.append(id, { type: 'progress', done: i });
      await store.ack(id, acked);
      for (let seq = acked + 1; seq <= events; seq++) expected.push(`${id}:${seq}`);
    }
    const { rows } = await pool.query(
      `SELECT task_id, seq::int AS seq, time, owner FROM ${schema}.unprocessed_events ORDER BY task_id, seq`,
    );
    expect(rows.map((row) => `${row.task_id}:${row.seq}`)).toEqual(expected);
    expect(rows[0].time).toBeInstanceOf(Date);
    expect(rows[0].owner).toBe('alice');
  });

  it('purgeFinished really deletes old finished tasks and their events, in batches', async () => {
    const schema = await migrated();
    const clock = new ManualClock();
    const store = await open({ schema, clock: clock.now });
    for (const id of ['f1', 'f2', 'f3', 'run']) {
      await store.createTask({ id, owner: 'alice', kind: 'k' });
      await store.append(id, { type: 'progress', done: 1 });
      if (id !== 'run') await store.append(id, { type: 'completed' });
    }
    clock.advance(10_000);
    expect(await store.purgeFinished({ olderThanMs: 10_001 })).toBe(0);
    expect(await store.purgeFinished({ olderThanMs: 10_000, limit: 2 })).toBe(2);
    expect(await store.purgeFinished({ olderThanMs: 10_000, limit: 2 })).toBe(1);
    expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(0);
    const tasks = await pool.query(`SELECT id FROM ${schema}.tasks`);
    const events = await pool.query(
      `SELECT task_id, count(*)::int AS n FROM ${schema}.events GROUP BY task_id`,
    );
    expect(tasks.rows).toEqual([{ id: 'run' }]);
    expect(events.rows).toEqual([{ task_id: 'run', n: 1 }]);
    // The id is free again, and its new life starts at seq 1 on the feed.
    const recorder = new Recorder(store);
    await store.createTask({ id: 'f1', owner: 'alice', kind: 'k' });
    await store.append('f1', { type: 'progress' });
    expect(recorder.seqs('f1')).toEqual([1]);
    recorder.stop();
  });

  it(`stops a purge once its tasks' events pass ${PURGE_EVENT_BUDGET}, taking at least one task`, async () => {
    // Until 6 December 2026 one purge deleted up to `limit` tasks whatever their events numbered: millions
    // of event rows in one statement's transaction (the SQLite store stopped at the same budget).
    const schema = await migrated();
    const store = await open({ schema });
    const part = Math.ceil(PURGE_EVENT_BUDGET * 0.4);
    // Oldest first: three of `part` events (two fit), one of 1, then one alone past the budget.
    const sizes: [string, number][] = [
      ['a', part],
      ['b', part],
      ['c', part],
      ['d', 1],
      ['e', PURGE_EVENT_BUDGET + 1],
    ];
    for (const [index, [id, seq]] of sizes.entries()) {
      await pool.query(
        `INSERT INTO ${schema}.tasks (id, owner, kind, status, done, succeeded, failed, seq, acked_seq, created_at, updated_at, finished_at)
         VALUES ($1, 'alice', 'k', 'completed', 0, 0, 0, $2, 0, 0, 0, $3)`,
        [id, seq, index + 1],
      );
      await pool.query(
        `INSERT INTO ${schema}.events (task_id, seq, type, time, body)
         SELECT $1, s, CASE WHEN s = $2 THEN 'completed' ELSE 'progress' END, 0, '{}' FROM generate_series(1, $2::int8) AS s`,
        [id, seq],
      );
    }
    const left = async () =>
      (await pool.query(`SELECT id FROM ${schema}.tasks ORDER BY id`)).rows.map((row) => row.id);
    const events = async () =>
      (await pool.query(`SELECT count(*)::int AS n FROM ${schema}.events`)).rows[0].n as number;
    expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(2);
    expect(await left()).toEqual(['c', 'd', 'e']);
    expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(2);
    expect(await left()).toEqual(['e']);
    expect(await events()).toBe(PURGE_EVENT_BUDGET + 1);
    // Alone past the budget, it is still purged (one task per call at least).
    expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(1);
    expect(await left()).toEqual([]);
    expect(await events()).toBe(0);
  });

  it('a replica that remembers a purged run of an id cannot write into the run created again by another', async () => {
    // A remembers run 1's row (it created and appended to it), so its next append is planned from that row
    // and written without a locking read: the write's guard (seq and created_at) must send it to the
    // locked path, where the fence refuses it. B reaps, purges and creates run 2 meanwhile (A was frozen).
    const schema = await migrated();
    const clock = new ManualClock();
    const a = await open({ schema, clock: clock.now });
    const b = await open({ schema, clock: clock.now });
    const lease = { owner: 'replica', ttlMs: 1000 };
    const old = await a.createTask({ id: 'job-1', owner: 'alice', kind: 'k', lease });
    await a.append('job-1', { type: 'item', key: 'old-1', ok: true }, { run: old.createdAt });
    clock.advance(1000);
    expect((await b.reapExpiredLeases()).length).toBe(1);
    clock.advance(1);
    expect(await b.purgeFinished({ olderThanMs: 0 })).toBe(1);
    clock.advance(1);
    const created = await b.createTask({ id: 'job-1', owner: 'alice', kind: 'k', lease });
    await b.append('job-1', { type: 'item', key: 'new-1', ok: true }, { run: created.createdAt });
    const row = await b.getTask('job-1');
    const fence = { run: old.createdAt };
    for (const input of [{ type: 'item', key: 'old-2', ok: true } as const, { type: 'completed' } as const]) {
      const error = await rejectionOf(a.append('job-1', input, fence));
      expect(isProgressError(error, ErrorCode.TaskNotFound), String(error)).toBe(true);
    }
    const renewal = await rejectionOf(a.renewLease('job-1', 'replica', 1000, fence));
    expect(isProgressError(renewal, ErrorCode.TaskNotFound), String(renewal)).toBe(true);
    const release = await rejectionOf(a.releaseLease('job-1', 'replica', fence));
    expect(isProgressError(release, ErrorCode.TaskNotFound), String(release)).toBe(true);
    expect(await a.getTask('job-1')).toEqual(row);
    expect((await a.readEvents('job-1', 0)).map((event) => event.seq)).toEqual([1]);
  });

  it('purgeFinished tells every store on the channel: another replica publishes a reused id from seq 1', async () => {
    const schema = await migrated();
    const a = await open({ schema, pollIntervalMs: 20 });
    const b = await open({ schema, pollIntervalMs: 20 });
    const recorder = new Recorder(b);
    // A watcher on B follows the task (as TaskHub.follow does for a subscribed socket).
    b.changes.follow('taint-42');
    await a.createTask({ id: 'taint-42', owner: 'alice', kind: 'k' });
    await a.append('taint-42', { type: 'item', key: 'n1', ok: true });
    await a.append('taint-42', { type: 'item', key: 'n2', ok: true });
    await a.append('taint-42', { type: 'completed' });
    await eventually('B sees the first run end', () => recorder.has('taint-42', 3));
    // Retention on A removes it; the application runs the same job again under the same id. (Before the
    // purge notice, B remembered seq 3 and dropped the new run's seqs 1 and 2 as duplicates for ever.)
    expect(await a.purgeFinished({ olderThanMs: 0 })).toBe(1);
    const before = recorder.changes.length;
    await a.createTask({ id: 'taint-42', owner: 'alice', kind: 'k' });
    await a.append('taint-42', { type: 'item', key: 'n1', ok: true });
    await a.append('taint-42', { type: 'completed' });
    await eventually('B publishes the second run', () => recorder.changes.length - before >= 2);
    await b.pollNow();
    const after = recorder.changes
      .slice(before)
      .map((change) => `${change.seq}${change.terminal ? 'T' : ''}`);
    expect(after).toEqual(['1', '2T']);
    recorder.stop();
  });

  it('purgeFinished records each purged id with its transaction id, which its notice names; records expire after an hour', async () => {
    const schema = await migrated();
    const clock = new ManualClock();
    const store = await open({ schema, clock: clock.now });
    const listening = await listenTo(schema);
    for (const id of ['p1', 'p2']) {
      await store.createTask({ id, owner: 'alice', kind: 'k' });
      await store.append(id, { type: 'completed' });
    }
    // Out of their creation's millisecond (a task is not purged in it).
    clock.advance(1);
    expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(2);
    const records = await pool.query(
      `SELECT task_id, xid::text AS xid, purged_at::float8 AS purged_at FROM ${schema}.purged ORDER BY task_id`,
    );
    expect(records.rows.map((row) => [row.task_id, row.purged_at])).toEqual([
      ['p1', clock.now()],
      ['p2', clock.now()],
    ]);
    const xid = records.rows[0].xid;
    expect(records.rows[1].xid).toBe(xid);
    await eventually('the purge notice', () =>
      listening.payloads.some((payload) => payload.startsWith('{"purged"')),
    );
    const notice = listening.payloads.find((payload) => payload.startsWith('{"purged"'));
    expect(decodeNotice(notice)).toEqual({ kind: 'purged', taskIds: ['p1', 'p2'], xid: BigInt(xid) });
    const horizon = async () =>
      (await pool.query(`SELECT value FROM ${schema}.meta WHERE key = 'purged_horizon'`)).rows[0].value;
    expect(await horizon()).toBe('0');
    // An hour less a millisecond later, the records stay; an hour later, the next purge deletes them
    // (up to its limit) and raises the horizon to the newest xid it deleted.
    clock.advance(PURGED_RECORD_MS - 1);
    expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(0);
    expect((await pool.query(`SELECT count(*)::int AS n FROM ${schema}.purged`)).rows).toEqual([{ n: 2 }]);
    clock.advance(1);
    expect(await store.purgeFinished({ olderThanMs: 0, limit: 1 })).toBe(0);
    expect((await pool.query(`SELECT count(*)::int AS n FROM ${schema}.purged`)).rows).toEqual([{ n: 1 }]);
    expect(await horizon()).toBe(xid);
    expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(0);
    expect((await pool.query(`SELECT count(*)::int AS n FROM ${schema}.purged`)).rows).toEqual([{ n: 0 }]);
    expect(await horizon()).toBe(xid);
    await listening.listener.end();
  });

  it('sends purge notices of at most 50 ids each, within the payload limit', async () => {
    const schema = await migrated();
    const store = await open({ schema });
    const listening = await listenTo(schema);
    const purges = () => listening.payloads.filter((payload) => payload.startsWith('{"purged"'));
    const longId = (i: number) => `${String(i).padStart(3, '0')}-${'x'.repeat(124)}`;
    for (let i = 0; i < 120; i++) {
      await store.createTask({ id: longId(i), owner: 'alice', kind: 'k' });
      await store.append(longId(i), { type: 'completed' });
    }
    expect(await store.purgeFinished({ olderThanMs: 0, limit: 1000 })).toBe(120);
    await eventually('three purge notices', () => purges().length === 3);
    const notices = purges().map((payload) => (decodeNotice(payload) as { taskIds: string[] }).taskIds);
    // 50, 50 and the 20 left: three notices alone would also come of any chunk from 41 to 59 ids.
    expect(notices.map((taskIds) => taskIds.length).sort((a, b) => b - a)).toEqual([50, 50, 20]);
    expect(notices.flat().sort()).toEqual(Array.from({ length: 120 }, (_, i) => longId(i)));
    expect(Math.max(...purges().map((payload) => Buffer.byteLength(payload)))).toBeLessThan(8000);
    await listening.listener.end();
  });
});

describe('clients', () => {
  it('works on a caller-built Kysely with a LISTEN connection string, and never ends it', async () => {
    const schema = await migrated();
    const db = new Kysely<unknown>({ dialect: new PostgresDialect({ pool }) });
    const writer = await PostgresProgressStore.open({ db, schema, migrate: false, listenClient: pgUrl() });
    stores.push(writer);
    const observer = await open({ schema });
    const recorder = new Recorder(observer);
    const { createdAt: run } = await writer.createTask({ id: 'k', owner: 'alice', kind: 'k' });
    for (let i = 1; i <= 5; i++) await writer.append('k', { type: 'progress', done: i });
    await writer.append('k', { type: 'cancelled' });
    await eventually('the observer sees all six', () => recorder.has('k', 6));
    expect(recorder.seqs('k')).toEqual(oneTo(6));
    const { events: lastEvents, ...last } = recorder.changes.at(-1) ?? {};
    expect(last).toEqual({ taskId: 'k', seq: 6, terminal: true, run });
    // The notifications carried the events: each change holds its own, as the table has it.
    expect(lastEvents?.map((event) => event.seq)).toEqual([6]);
    expect(recorder.changes.flatMap((change) => change.events ?? [])).toEqual(
      await observer.readEvents('k', 0),
    );
    expect(observer.changes.stats()).toMatchObject({ fromNotifications: 6, fromCommits: 0, replayed: 0 });
    await writer.close();
    expect((await sql<{ one: number }>`SELECT 1 AS one`.execute(db)).rows).toEqual([{ one: 1 }]);
    expect((await pool.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
  });

  it("reads its rows as it wrote them on a caller's Kysely with result plugins (CamelCasePlugin, ParseJSONResultsPlugin)", async () => {
    const schema = await migrated();
    const reference = await open({ schema });
    for (const plugin of [new CamelCasePlugin(), new ParseJSONResultsPlugin()]) {
      const what = plugin.constructor.name;
      const db = new Kysely<unknown>({ dialect: new PostgresDialect({ pool }), plugins: [plugin] });
      const store = await PostgresProgressStore.open({ db, schema, migrate: false, listenClient: pgUrl() });
      stores.push(store);
      const id = `with-${what}`;
      const created = await store.createTask({
        id,
        owner: 'alice',
        kind: 'k',
        lease: { owner: 'w', ttlMs: 1000 },
      });
      const appended = [
        await store.append(id, { type: 'item', key: 'n-1', ok: false, error: 'no', detail: { a: [1] } }),
        await store.append(id, { type: 'completed', result: { drained: 1 } }),
      ];
      expect(appended[0]?.task, `${what}: the running task returned`).toMatchObject({
        ackedSeq: 0,
        createdAt: created.createdAt,
        leaseOwner: 'w',
        error: null,
      });
      expect(await store.getTask(id), `${what}: getTask`).toEqual(await reference.getTask(id));
      expect(await store.getTask(id), `${what}: getTask as returned`).toEqual(appended[1]?.task);
      expect(await store.readEvents(id, 0), `${what}: readEvents`).toEqual(
        appended.map(({ event }) => event),
      );
      expect(await store.listTasks({ owner: 'alice' }), `${what}: listTasks`).toEqual(
        await reference.listTasks({ owner: 'alice' }),
      );
      expect(await store.ack(id, 2), `${what}: ack`).toBe(2);
      expect(await store.latestSeqs([id]), `${what}: latestSeqs`).toEqual(new Map([[id, 2]]));
    }
  });

  it('publishes its own commits with their events, which a spread or JSON of the change keeps', async () => {
    const schema = await migrated();
    const store = await open({ schema });
    const changes: TaskChange[] = [];
    const stop = store.changes.subscribe((change) => changes.push(change));
    await store.createTask({ id: 'k', owner: 'alice', kind: 'k' });
    const { event } = await store.append('k', { type: 'item', key: 'n-1', ok: true });
    stop();
    const own = changes.find((change) => change.taskId === 'k' && change.seq === 1);
    expect(own?.events).toEqual([event]);
    expect({ ...own }.events).toEqual([event]);
    expect(JSON.parse(JSON.stringify(own)).events).toEqual([JSON.parse(JSON.stringify(event))]);
  });

  it('publishes each own commit once although it also comes back by NOTIFY', async () => {
    const schema = await migrated();
    const store = await open({ schema });
    const recorder = new Recorder(store);
    await store.createTask({ id: 'k', owner: 'alice', kind: 'k' });
    await Promise.all(oneTo(50).map((i) => store.append('k', { type: 'progress', done: i })));
    await eventually('own notifications came back', () => store.changes.stats().duplicates >= 1);
    expect(recorder.seqs('k')).toEqual(oneTo(50));
    // Usually the commit publishes first; sometimes its own notification wins the race. Never both.
    const stats = store.changes.stats();
    expect(stats.published).toBe(50);
    expect(stats.fromCommits + stats.fromNotifications).toBe(50);
    expect(store.changes.health()).toMatchObject({ connected: true, lastError: null });
  });
});
