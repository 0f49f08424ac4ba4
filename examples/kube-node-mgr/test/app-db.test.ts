/**
 * The example's tables on both databases: SQLite (always) and Postgres (when FINISHLINE_TEST_PG_URL is
 * set; each run in a scratch schema): sessions are revoked for every reader, node locks are all-or-none
 * and exclusive, stale locks are taken over, task records keep their order and links.
 */
import Database from 'better-sqlite3';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { AppDb, type TaskRecord } from '../src/server/app-db.js';

const PG_URL = process.env.FINISHLINE_TEST_PG_URL;
const cleanups: (() => Promise<void>)[] = [];
afterAll(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

/** SQLite is the one-process setup: one connection, shared by every request (kysely serializes them). */
async function sqlite(): Promise<AppDb[]> {
  const a = await AppDb.sqlite(new Database(':memory:'));
  cleanups.push(() => a.close());
  return [a, a];
}

async function postgres(): Promise<AppDb[]> {
  const schema = `knm_test_${process.pid}_${Date.now()}`;
  const admin = new pg.Client({ connectionString: PG_URL });
  await admin.connect();
  await admin.query(`create schema ${schema}`);
  const pools = [0, 1].map(
    () => new pg.Pool({ connectionString: PG_URL, max: 3, options: `-c search_path=${schema}` }),
  );
  // Two "replicas" migrating at once, as the replica set starts them.
  const dbs = await Promise.all(pools.map((pool) => AppDb.postgres(pool)));
  cleanups.push(async () => {
    for (const pool of pools) await pool.end();
    await admin.query(`drop schema ${schema} cascade`);
    await admin.end();
  });
  return dbs;
}

const dialects: [string, () => Promise<AppDb[]>, boolean][] = [
  ['SQLite', sqlite, true],
  ['Postgres', postgres, PG_URL !== undefined],
];

describe.each(dialects)('AppDb on %s', (_name, open, enabled) => {
  it.runIf(enabled)('revokes a session for every replica', async () => {
    const [a, b] = (await open()) as [AppDb, AppDb];
    await a.createSession({ sid: 's1', username: 'alice', expiresAt: Date.now() + 60_000 });
    await a.createSession({ sid: 's2', username: 'alice', expiresAt: Date.now() - 1 });
    expect(await b.sessionActive('s1')).toBe(true);
    expect(await b.sessionActive('s2')).toBe(false);
    expect(await b.sessionActive('nope')).toBe(false);
    await b.revokeSession('s1');
    expect(await a.sessionActive('s1')).toBe(false);
    await a.purgeSessions();
    expect(await a.sessionActive('s2')).toBe(false);
  });

  it.runIf(enabled)('locks nodes all or none, exclusively, and takes over stale locks', async () => {
    const [a, b] = (await open()) as [AppDb, AppDb];
    const never = async () => false;
    expect(await a.lockNodes(['n1', 'n2'], { taskId: 't1', username: 'alice' }, never)).toEqual([]);
    const blocked = await b.lockNodes(['n2', 'n3'], { taskId: 't2', username: 'bob' }, never);
    expect(blocked.map((l) => [l.node, l.taskId, l.username])).toEqual([['n2', 't1', 'alice']]);
    // All or none: n3 was not taken.
    expect((await a.locks(['n3'])).length).toBe(0);
    // Racing for the same free node: exactly one wins.
    const race = await Promise.all([
      a.lockNodes(['n9'], { taskId: 'ta', username: 'alice' }, never),
      b.lockNodes(['n9'], { taskId: 'tb', username: 'bob' }, never),
    ]);
    expect(race.filter((r) => r.length === 0).length).toBe(1);
    // t1 ended without unlocking: its locks are taken over.
    const stale = async (lock: { taskId: string }) => lock.taskId === 't1';
    expect(await b.lockNodes(['n2', 'n3'], { taskId: 't2', username: 'bob' }, stale)).toEqual([]);
    expect((await a.locks(['n1', 'n2', 'n3'])).map((l) => `${l.node}:${l.taskId}`)).toEqual([
      'n1:t1',
      'n2:t2',
      'n3:t2',
    ]);
    await a.unlockTask('t2');
    expect((await b.locks(['n2', 'n3'])).length).toBe(0);
  });

  it.runIf(enabled)('keeps task records newest first with their links, per user and paged', async () => {
    const [a, b] = (await open()) as [AppDb, AppDb];
    const base = {
      operation: { type: 'cordon' },
      nodes: ['n1'],
      parentTaskId: null,
      relation: null,
    } satisfies Partial<TaskRecord>;
    await a.recordTask({ ...base, taskId: 'x1', username: 'alice', createdAt: 1000 });
    await a.recordTask({ ...base, taskId: 'x2', username: 'bob', createdAt: 2000 });
    await a.recordTask({
      ...base,
      taskId: 'x3',
      username: 'alice',
      createdAt: 3000,
      parentTaskId: 'x1',
      relation: 'retry_failed',
    });
    expect((await b.tasks({ limit: 10 })).map((t) => t.taskId)).toEqual(['x3', 'x2', 'x1']);
    expect((await b.tasks({ limit: 10, username: 'alice' })).map((t) => t.taskId)).toEqual(['x3', 'x1']);
    expect((await b.tasks({ limit: 10, before: 3000 })).map((t) => t.taskId)).toEqual(['x2', 'x1']);
    expect(await b.task('x3')).toMatchObject({
      parentTaskId: 'x1',
      relation: 'retry_failed',
      createdAt: 3000,
    });
    await b.setCordon({ node: 'n1', reason: 'r', username: 'alice', at: 5 });
    await a.setCordon({ node: 'n1', reason: 'r2', username: 'bob', at: 6 });
    expect(await b.cordons()).toEqual([{ node: 'n1', reason: 'r2', username: 'bob', at: 6 }]);
  });
});
