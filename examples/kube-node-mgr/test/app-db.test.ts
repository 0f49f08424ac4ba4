/**
 * The example's tables on both databases: SQLite (always) and Postgres (when FINISHLINE_TEST_PG_URL is
 * set; each run in a scratch schema): sessions are revoked for every reader, node locks are all-or-none
 * and exclusive, stale locks are taken over, task records keep their order and links.
 */
import Database from 'better-sqlite3';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { MAX_NODES_PER_BATCH } from '../src/server/app.js';
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
  it.runIf(enabled)('pages tasks after (createdAt, id), keeping the batches of one millisecond', async () => {
    const [a] = (await open()) as [AppDb];
    const at = 1_700_000_000_000;
    for (const [taskId, createdAt] of [
      ['p-a', at],
      ['p-b', at],
      ['p-c', at],
      ['p-d', at - 1],
    ] as const) {
      await a.recordTask({
        taskId,
        cluster: 'paging',
        username: 'alice',
        operation: { type: 'cordon' },
        nodes: ['worker-1'],
        parentTaskId: null,
        relation: null,
        createdAt,
      });
    }
    const first = await a.tasks({ cluster: 'paging', limit: 2 });
    expect(first.map((t) => t.taskId)).toEqual(['p-a', 'p-b']);
    const next = await a.tasks({ cluster: 'paging', limit: 2, before: at, beforeId: 'p-b' });
    expect(next.map((t) => t.taskId)).toEqual(['p-c', 'p-d']);
  });

  it.runIf(enabled)(
    'purges audit events and batch records older than a time, a bounded number per call',
    async () => {
      const [a, b] = (await open()) as [AppDb, AppDb];
      const now = Date.now();
      const record = (taskId: string, createdAt: number): TaskRecord => ({
        taskId,
        cluster: 'retention',
        username: 'alice',
        operation: { type: 'cordon' },
        nodes: ['worker-1'],
        parentTaskId: null,
        relation: null,
        createdAt,
      });
      for (let i = 0; i < 3; i++) {
        await a.recordEvent({ username: 'ret', action: 'login', taskId: null, at: now - 10_000 - i });
        await a.recordTask(record(`old-${i}`, now - 10_000 - i));
      }
      await a.recordEvent({ username: 'ret', action: 'logout', taskId: null, at: now });
      await a.recordTask(record('new', now));
      // Two of each table per call: the oldest first is not promised, only that the next call takes the rest.
      expect(await b.purgeAudit(now - 5_000, 2)).toBe(4);
      expect(await b.purgeAudit(now - 5_000, 2)).toBe(2);
      expect(await b.purgeAudit(now - 5_000, 2)).toBe(0);
      expect((await a.events({ username: 'ret', limit: 10 })).map((e) => e.action)).toEqual(['logout']);
      expect((await a.tasks({ cluster: 'retention', limit: 10 })).map((t) => t.taskId)).toEqual(['new']);
    },
  );

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

  it.runIf(enabled)('locks the largest batch the app allows, and reads its locks back', async () => {
    // Found by a review: the cap was 100,000 nodes, and a batch above about 6,500 (SQLite) or 13,000
    // (Postgres) nodes failed at its start, its locks' INSERT past the database's parameter limit.
    const [a] = (await open()) as [AppDb, AppDb];
    const nodes = Array.from({ length: MAX_NODES_PER_BATCH }, (_, i) => `node-${i}`);
    const never = async () => false;
    expect(await a.lockNodes('big', nodes, { taskId: 'tbig', username: 'alice' }, never)).toEqual([]);
    expect((await a.locks('big', nodes)).length).toBe(MAX_NODES_PER_BATCH);
    await a.unlockTask('tbig');
  });

  it.runIf(enabled)('locks nodes all or none, exclusively, and takes over stale locks', async () => {
    const [a, b] = (await open()) as [AppDb, AppDb];
    const never = async () => false;
    expect(await a.lockNodes('c1', ['n1', 'n2'], { taskId: 't1', username: 'alice' }, never)).toEqual([]);
    const blocked = await b.lockNodes('c1', ['n2', 'n3'], { taskId: 't2', username: 'bob' }, never);
    expect(blocked.map((l) => [l.node, l.taskId, l.username])).toEqual([['n2', 't1', 'alice']]);
    // All or none: n3 was not taken.
    expect((await a.locks('c1', ['n3'])).length).toBe(0);
    // Racing for the same free node: exactly one wins.
    const race = await Promise.all([
      a.lockNodes('c1', ['n9'], { taskId: 'ta', username: 'alice' }, never),
      b.lockNodes('c1', ['n9'], { taskId: 'tb', username: 'bob' }, never),
    ]);
    expect(race.filter((r) => r.length === 0).length).toBe(1);
    // t1 ended without unlocking: its locks are taken over.
    const stale = async (lock: { taskId: string }) => lock.taskId === 't1';
    expect(await b.lockNodes('c1', ['n2', 'n3'], { taskId: 't2', username: 'bob' }, stale)).toEqual([]);
    expect((await a.locks('c1', ['n1', 'n2', 'n3'])).map((l) => `${l.node}:${l.taskId}`)).toEqual([
      'n1:t1',
      'n2:t2',
      'n3:t2',
    ]);
    await a.unlockTask('t2');
    expect((await b.locks('c1', ['n2', 'n3'])).length).toBe(0);
    // Another cluster's n1 is another node: t1's lock on c1/n1 is not in its way.
    expect(await b.lockNodes('c2', ['n1'], { taskId: 't3', username: 'bob' }, never)).toEqual([]);
    expect((await a.locks('c2')).map((l) => `${l.cluster}/${l.node}:${l.taskId}`)).toEqual(['c2/n1:t3']);
    expect((await a.locks('c1', ['n1'])).map((l) => l.taskId)).toEqual(['t1']);
  });

  it.runIf(enabled)(
    'claims an Idempotency-Key once, across connections, and hands it over by its holder',
    async () => {
      const [a, b] = (await open()) as [AppDb, AppDb];
      const claim = (db: AppDb, taskId: string, createdAt = 1000) =>
        db.claimIdempotencyKey({ username: 'alice', key: 'k', fingerprint: 'f', taskId, createdAt });
      const race = await Promise.all([claim(a, 'ta'), claim(b, 'tb')]);
      expect(race[0].taskId).toBe(race[1].taskId);
      const holder = race[0].taskId;
      // Another user's key of that name is another key.
      expect(
        (
          await b.claimIdempotencyKey({
            username: 'bob',
            key: 'k',
            fingerprint: 'g',
            taskId: 'tc',
            createdAt: 1,
          })
        ).taskId,
      ).toBe('tc');
      const next = { username: 'alice', key: 'k', fingerprint: 'h', taskId: 'td', createdAt: 2000 };
      expect(await a.takeOverIdempotencyKey({ taskId: 'not-the-holder', createdAt: 1 }, next)).toBe(false);
      // Renewed since it was read (its request went on to start its batch): not taken over.
      expect(await a.renewIdempotencyKey('alice', 'k', holder, 5)).toBe(true);
      expect(await a.takeOverIdempotencyKey({ taskId: holder, createdAt: 1 }, next)).toBe(false);
      expect(await a.renewIdempotencyKey('alice', 'k', 'not-the-holder', 5)).toBe(false);
      expect(await a.takeOverIdempotencyKey({ taskId: holder, createdAt: 5 }, next)).toBe(true);
      expect(await b.claimIdempotencyKey({ ...next, taskId: 'te' })).toEqual(next);
      await a.releaseIdempotencyKey('alice', 'k', holder);
      expect((await claim(b, 'tf')).taskId).toBe('td');
      await a.purgeIdempotencyKeys(1500);
      expect((await claim(b, 'tg')).taskId).toBe('td');
      expect(
        (
          await b.claimIdempotencyKey({
            username: 'bob',
            key: 'k',
            fingerprint: 'g',
            taskId: 'th',
            createdAt: 3,
          })
        ).taskId,
      ).toBe('th');
      await a.releaseIdempotencyKey('alice', 'k', 'td');
      expect((await claim(b, 'ti')).taskId).toBe('ti');
    },
  );

  it.runIf(enabled)('keeps task records newest first with their links, per user and paged', async () => {
    const [a, b] = (await open()) as [AppDb, AppDb];
    const base = {
      cluster: 'c1',
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
    await a.recordTask({ ...base, cluster: 'c2', taskId: 'y1', username: 'alice', createdAt: 4000 });
    expect((await b.tasks({ limit: 10, cluster: 'c2' })).map((t) => t.taskId)).toEqual(['y1']);
    expect((await b.tasks({ limit: 10, cluster: 'c1' })).map((t) => t.taskId)).toEqual(['x3', 'x2', 'x1']);
    await b.setCordon({ cluster: 'c1', node: 'n1', reason: 'r', username: 'alice', at: 5 });
    await a.setCordon({ cluster: 'c1', node: 'n1', reason: 'r2', username: 'bob', at: 6 });
    await a.setCordon({ cluster: 'c2', node: 'n1', reason: 'other', username: 'bob', at: 7 });
    expect(await b.cordons('c1')).toEqual([
      { cluster: 'c1', node: 'n1', reason: 'r2', username: 'bob', at: 6 },
    ]);
    await a.clearCordon('c2', 'n1');
    expect(await b.cordons('c2')).toEqual([]);
    expect((await b.cordons('c1')).length).toBe(1);
  });

  it.runIf(enabled)('keeps sign-ins, sign-outs and cancels newest first, per user', async () => {
    const [a, b] = (await open()) as [AppDb, AppDb];
    await a.recordEvent({ username: 'alice', action: 'login', taskId: null, at: 1 });
    await b.recordEvent({ username: 'bob', action: 'login', taskId: null, at: 2 });
    await a.recordEvent({ username: 'alice', action: 'cancel', taskId: 't1', at: 3 });
    expect((await b.events({ limit: 10 })).map((e) => `${e.username} ${e.action}`)).toEqual([
      'alice cancel',
      'bob login',
      'alice login',
    ]);
    expect(await b.events({ limit: 10, username: 'alice' })).toEqual([
      { username: 'alice', action: 'cancel', taskId: 't1', at: 3 },
      { username: 'alice', action: 'login', taskId: null, at: 1 },
    ]);
  });

  // Two saves of one name at once (two tabs, two replicas): both read the name as free, and the second
  // INSERT hit the primary key, a 500 `internal` instead of 409 `template_exists`.
  it.runIf(enabled)('saves one of two templates of one name saved at once, refusing the other', async () => {
    const [a, b] = (await open()) as [AppDb, AppDb];
    const template = (createdBy: string) => ({
      name: 'gpu',
      kind: 'label' as const,
      key: 'gpu',
      value: createdBy,
      effect: null,
      createdBy,
      createdAt: 1,
    });
    const saved = await Promise.all([a.addTemplate(template('alice')), b.addTemplate(template('bob'))]);
    expect(saved.filter(Boolean)).toHaveLength(1);
    const [kept] = await a.templates();
    expect(kept?.createdBy).toBe(saved[0] ? 'alice' : 'bob');
    expect(await b.templates()).toHaveLength(1);
  });
});

describe('AppDb migration from before clusters (SQLite)', () => {
  it('moves locks and cordon notes to the keyed tables and gives old rows to the default cluster', async () => {
    const database = new Database(':memory:');
    database.exec(`
      create table knm_tasks (task_id text primary key, username text not null, operation text not null,
        nodes text not null, parent_task_id text, relation text, created_at integer not null);
      create table knm_node_locks (node text primary key, task_id text not null, username text not null,
        acquired_at integer not null);
      create table knm_cordons (node text primary key, reason text not null, username text not null,
        at integer not null);
      insert into knm_tasks values ('old', 'alice', '{"type":"cordon"}', '["n1"]', null, null, 1);
      insert into knm_node_locks values ('n1', 'old', 'alice', 1);
      insert into knm_cordons values ('n1', 'kernel', 'alice', 1);
    `);
    const db = await AppDb.sqlite(database);
    cleanups.push(() => db.close());
    await db.adoptUnassigned('prod');
    expect((await db.tasks({ limit: 5, cluster: 'prod' })).map((t) => t.taskId)).toEqual(['old']);
    expect((await db.locks('prod')).map((l) => `${l.node}:${l.taskId}`)).toEqual(['n1:old']);
    expect(await db.cordons('prod')).toEqual([
      { cluster: 'prod', node: 'n1', reason: 'kernel', username: 'alice', at: 1 },
    ]);
    const tables = database
      .prepare(
        "select name from sqlite_master where type = 'table' and name in ('knm_node_locks', 'knm_cordons')",
      )
      .all();
    expect(tables).toEqual([]);
  });
});
