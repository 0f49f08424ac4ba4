import { Kysely, PostgresDialect, type PostgresPool, type PostgresPoolClient } from 'kysely';
import pg from 'pg';
import { afterAll, expect, it } from 'vitest';
import { MIGRATION_NAMES, migrateProgressSchema } from '../src/index.js';
import { dropSchema, freshSchema, newPool, pgUrl } from './support.js';

/**
 * A pool behind a transaction-mode pooler (PgBouncer `pool_mode = transaction`, which the README supports
 * for the store's pool): each statement outside a transaction may run on another server connection, and
 * a transaction stays on one from its `BEGIN` to its end. Emulated here with three connections, the next
 * one for each statement outside a transaction, so a session-level state (an advisory lock) taken by one
 * statement is not the session the next statement runs in.
 */
function transactionPooled(servers: pg.Client[]): PostgresPool {
  let next = 0;
  let pinned: pg.Client | undefined;
  const client: PostgresPoolClient = {
    async query(text: unknown, values?: readonly unknown[]) {
      const statement = String(text).trimStart().toLowerCase();
      const server = pinned ?? (servers[next++ % servers.length] as pg.Client);
      if (statement.startsWith('begin') || statement.startsWith('start transaction')) pinned = server;
      try {
        return await server.query(text as string, values as unknown[]);
      } finally {
        if (statement.startsWith('commit') || statement.startsWith('rollback')) pinned = undefined;
      }
    },
    release() {},
  } as unknown as PostgresPoolClient;
  return { connect: async () => client, end: async () => {} };
}

const admin = newPool(2);
const schemas: string[] = [];

afterAll(async () => {
  for (const schema of schemas) await dropSchema(admin, schema);
  await admin.end();
});

it('migrating through a transaction-mode pooler leaves no advisory lock held on any server connection', async () => {
  // Kysely's Migrator took a session-level advisory lock in one autocommit statement and released it in
  // another: through such a pooler, the release ran on another server connection (a no-op with a warning),
  // and the lock stayed held by the first for as long as that connection lived, so the next replica's
  // open() waited up to an hour (the Migrator's lock_timeout) for it.
  const servers = [0, 1, 2].map(() => new pg.Client({ connectionString: pgUrl() }));
  for (const server of servers) {
    server.on('notice', () => {});
    await server.connect();
  }
  try {
    const pids = servers.map((server) => (server as unknown as { processID: number }).processID);
    const db = new Kysely<unknown>({ dialect: new PostgresDialect({ pool: transactionPooled(servers) }) });
    const schema = freshSchema('txpool');
    schemas.push(schema);
    const advisoryLocks = async () =>
      (
        await admin.query(
          `SELECT pid, objid FROM pg_locks WHERE locktype = 'advisory' AND pid = ANY($1::int[])`,
          [pids],
        )
      ).rows;
    expect(await migrateProgressSchema(db, { schema })).toEqual([...MIGRATION_NAMES]);
    expect(await advisoryLocks()).toEqual([]);
    // A second replica's migration (here through the same pooler) is not held up by the first's.
    expect(await migrateProgressSchema(db, { schema })).toEqual([]);
    expect(await advisoryLocks()).toEqual([]);
  } finally {
    await Promise.all(servers.map((server) => server.end()));
  }
});

it('replicas at a serializable session default migrating one schema at once apply each migration once', async () => {
  // The migration transaction waits for the lock in its first statement: at a stricter default its snapshot
  // would date from before the wait, and the replica behind would apply again what the first one committed.
  const schema = freshSchema('txser');
  schemas.push(schema);
  const replicas = [0, 1, 2].map(
    () =>
      new pg.Pool({
        connectionString: pgUrl(),
        max: 2,
        options: '-c default_transaction_isolation=serializable',
      }),
  );
  try {
    const results = await Promise.all(
      replicas.map((pool) =>
        migrateProgressSchema(new Kysely<unknown>({ dialect: new PostgresDialect({ pool }) }), { schema }),
      ),
    );
    expect(results.flat()).toEqual([...MIGRATION_NAMES]);
  } finally {
    await Promise.all(replicas.map((pool) => pool.end()));
  }
});

it('a migration the database refuses reports why, not that its transaction was aborted', async () => {
  // A role that may not create schemas. The Migrator checks again, after a failed CREATE, whether the
  // schema exists; in the failed transaction that check fails too, and its error hid the refusal.
  const role = freshSchema('noddl');
  await admin.query(`CREATE ROLE ${role} LOGIN PASSWORD 'noddl'`);
  const url = new URL(pgUrl());
  url.username = role;
  url.password = 'noddl';
  const pool = new pg.Pool({ connectionString: url.toString(), max: 1 });
  try {
    const db = new Kysely<unknown>({ dialect: new PostgresDialect({ pool }) });
    await expect(migrateProgressSchema(db, { schema: freshSchema('denied') })).rejects.toMatchObject({
      code: 'store_unavailable',
      message: expect.stringMatching(/permission denied/),
    });
  } finally {
    await pool.end();
    await admin.query(`DROP ROLE ${role}`);
  }
});
