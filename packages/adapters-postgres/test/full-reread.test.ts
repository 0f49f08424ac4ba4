import { Kysely, PostgresDialect } from 'kysely';
import pg from 'pg';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import {
  migrateProgressSchema,
  type PgListenClient,
  PostgresProgressStore,
  type PostgresProgressStoreOptions,
} from '../src/index.js';
import { dropSchema, eventually, freshSchema, type Gate, gate, newPool, pgUrl, Recorder } from './support.js';

/**
 * The re-read from a mark of 0 (after `forgetSeqs()`, when the store's epoch was renewed by a restore):
 * what it reads, what it reports, and how the feed's health looks while it runs. A store keeps finished
 * tasks until retention purges them, so its events table can hold millions of rows, and every replica
 * runs this re-read at the same time right after a restore.
 */

const admin = newPool(4);
const pools: pg.Pool[] = [];
const stores: PostgresProgressStore[] = [];
const schemas: string[] = [];
/** Opens the gates a test left closed (when it failed), so closing the stores never waits for them. */
const releases: (() => void)[] = [];

afterEach(async () => {
  for (const release of releases.splice(0)) release();
  await Promise.all(stores.splice(0).map((store) => store.close()));
  await Promise.all(pools.splice(0).map((created) => created.end()));
});

afterAll(async () => {
  for (const schema of schemas) await dropSchema(admin, schema);
  await admin.end();
});

async function migrated(): Promise<string> {
  const schema = freshSchema('reread');
  schemas.push(schema);
  await migrateProgressSchema(new Kysely<unknown>({ dialect: new PostgresDialect({ pool: admin }) }), {
    schema,
  });
  return schema;
}

async function open(
  options: Partial<PostgresProgressStoreOptions> & { schema: string },
): Promise<PostgresProgressStore> {
  const pool = newPool(5);
  pools.push(pool);
  // No safety net: what the feed publishes comes from notifications and re-reads only.
  const store = await PostgresProgressStore.open({
    pool,
    migrate: false,
    pollIntervalMs: 3_600_000,
    ...options,
  });
  stores.push(store);
  return store;
}

/** A statement a `LISTEN` client ran. */
interface Ran {
  text: string;
  values: unknown[] | undefined;
}

/** True for the re-read (its snapshot's `xmin` and what changed), false for the barrier and the rest. */
function isReread(text: string): boolean {
  return text.includes('pg_snapshot_xmin') && !text.includes("'barrier'");
}

/**
 * `LISTEN` clients that record the re-reads they run once `arm()` was called (that is, those of the
 * connection `forgetSeqs()` opens), and hold each of them until `release()` when `hold()` was called.
 */
function recordingListenClients() {
  const reread: Ran[] = [];
  let armed = false;
  let held: Gate | undefined;
  let waiting = 0;
  const factory = (): PgListenClient => {
    const client = new pg.Client({ connectionString: pgUrl() });
    const query = client.query.bind(client) as (text: string, values?: unknown[]) => Promise<unknown>;
    Object.assign(client, {
      query: async (text: string, values?: unknown[]) => {
        if (armed && isReread(text)) {
          reread.push({ text, values });
          const wait = held?.promise;
          if (wait !== undefined) {
            waiting += 1;
            await wait;
            waiting -= 1;
          }
        }
        return query(text, values);
      },
    });
    return client as unknown as PgListenClient;
  };
  return {
    factory,
    reread,
    arm() {
      armed = true;
    },
    hold() {
      const closed = gate();
      held = closed;
      releases.push(closed.open);
    },
    waiting: () => waiting,
    release() {
      held?.open();
      held = undefined;
    },
  };
}

/** A node of `EXPLAIN (ANALYZE, FORMAT JSON)`, the parts read here. */
interface PlanNode {
  'Node Type': string;
  'Relation Name'?: string;
  'Actual Rows': number;
  'Actual Loops': number;
  'Rows Removed by Filter'?: number;
  Plans?: PlanNode[];
}

/** Rows each table scan of `plan` read (returned or filtered out), per table. */
function rowsReadPerTable(plan: PlanNode, into = new Map<string, number>()): Map<string, number> {
  const table = plan['Relation Name'];
  if (table !== undefined) {
    const read = plan['Actual Rows'] * plan['Actual Loops'] + (plan['Rows Removed by Filter'] ?? 0);
    into.set(table, (into.get(table) ?? 0) + read);
  }
  for (const child of plan.Plans ?? []) rowsReadPerTable(child, into);
  return into;
}

/**
 * Fills a schema as the store would have written it (each task's row and its events), `perTask` events
 * for each of `tasks` tasks, in two statements: even tasks completed (their last event terminal), odd
 * ones still running.
 */
async function fill(schema: string, tasks: number, perTask: number): Promise<void> {
  const name = (table: string) => `${pg.escapeIdentifier(schema)}.${table}`;
  await admin.query(
    `INSERT INTO ${name('tasks')} (id, owner, kind, status, total, done, succeeded, failed, seq, acked_seq,
       created_at, updated_at, finished_at)
     SELECT 'task-' || t, 'alice', 'k', CASE WHEN t % 2 = 0 THEN 'completed' ELSE 'running' END, $2, $2, $2, 0,
       $2, 0, 1000, 2000, CASE WHEN t % 2 = 0 THEN 2000 END
     FROM generate_series(1, $1::int) AS t`,
    [tasks, perTask],
  );
  await admin.query(
    `INSERT INTO ${name('events')} (task_id, seq, type, time, body)
     SELECT 'task-' || t, s, CASE WHEN s = $2 AND t % 2 = 0 THEN 'completed' ELSE 'item' END, 1000 + s, '{}'
     FROM generate_series(1, $1::int) AS t, generate_series(1, $2::int) AS s`,
    [tasks, perTask],
  );
  await admin.query(`ANALYZE ${name('tasks')}; ANALYZE ${name('events')}`);
}

describe('the re-read from a mark of 0', () => {
  it("reads one row per task, not one per event, and reports each task's latest seq and end", async () => {
    const schema = await migrated();
    const listen = recordingListenClients();
    const observer = await open({
      schema,
      listenClient: listen.factory,
      reconnect: { initialDelayMs: 5, maxDelayMs: 20 },
    });
    // Created, never appended to: nothing to report (seq 0), as before.
    await observer.createTask({ id: 'fresh', owner: 'alice', kind: 'k' });
    const tasks = 200;
    const perTask = 100;
    // Written without notifications: only the re-read can find them.
    await fill(schema, tasks, perTask);
    const recorder = new Recorder(observer);
    listen.arm();
    observer.changes.forgetSeqs();
    await eventually('the full re-read reports every task', () => recorder.changes.length >= tasks);
    await eventually('the feed is connected again', () => observer.changes.health().connected);

    const byTask = new Map(recorder.changes.map((change) => [change.taskId, change]));
    expect(recorder.changes).toHaveLength(tasks);
    for (let t = 1; t <= tasks; t++) {
      expect(byTask.get(`task-${t}`), `task-${t}`).toMatchObject({ seq: perTask, terminal: t % 2 === 0 });
    }
    expect(byTask.has('fresh')).toBe(false);

    // What the re-read statement reads, as Postgres runs it on this table.
    expect(listen.reread.length).toBeGreaterThan(0);
    for (const { text, values } of listen.reread) {
      const { rows } = await admin.query(`EXPLAIN (ANALYZE, FORMAT JSON) ${text}`, values);
      const [explained] = rows[0]['QUERY PLAN'] as [{ Plan: PlanNode }];
      const read = rowsReadPerTable(explained.Plan);
      const total = [...read.values()].reduce((sum, rowsRead) => sum + rowsRead, 0);
      const perTable = JSON.stringify(Object.fromEntries(read));
      expect(read.get('events') ?? 0, `no event read; rows read per table: ${perTable}`).toBe(0);
      expect(
        total,
        `one row per task (and the fresh one); rows read per table: ${perTable}`,
      ).toBeLessThanOrEqual(tasks + 1);
    }
  });
});
