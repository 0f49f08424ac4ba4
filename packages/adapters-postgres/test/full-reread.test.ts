import type { AddressInfo } from 'node:net';
import { ManualClock } from '@finishline/core/testing';
import { ProgressServer } from '@finishline/server';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import type { PgListenClient, PostgresProgressStore } from '../src/index.js';
import { REREAD_CHUNK_ROWS } from '../src/listen-connection.js';
import { eventually, type Gate, gate, pgUrl, Recorder, storeFixtures } from './support.js';

/**
 * The re-read from a mark of 0 (after `forgetSeqs()`, when the store's epoch was renewed by a restore):
 * what it reads, what it reports, and how the feed's health looks while it runs. A store keeps finished
 * tasks until retention purges them, so its events table can hold millions of rows, and every replica
 * runs this re-read at the same time right after a restore.
 */

// No safety net: what the feed publishes comes from notifications and re-reads only.
const { admin, releases, migrated, open } = storeFixtures('reread', { pollIntervalMs: 3_600_000 });

/** A statement a `LISTEN` client ran. */
interface Ran {
  text: string;
  values: unknown[] | undefined;
}

/**
 * True for the re-read (its snapshot's `xmin` and what changed, or a later page of the tasks table), false
 * for the barrier and the rest.
 */
function isReread(text: string): boolean {
  return (text.includes('pg_snapshot_xmin') && !text.includes("'barrier'")) || text.includes('"tasks"');
}

/**
 * `LISTEN` clients that record the re-reads they run once `arm()` was called (that is, those of the
 * connection `forgetSeqs()` opens), and hold each of them until `release()` when `hold()` was called.
 * After `failNext(error)`, the next one recorded fails with `error` instead of running. After
 * `holdConnect()`, the clients made once armed wait in `connect()` until `releaseConnect(error?)`, which lets
 * them connect, or fails them with `error`.
 */
function recordingListenClients() {
  const reread: Ran[] = [];
  let armed = false;
  let held: Gate | undefined;
  let waiting = 0;
  let failing: Error | undefined;
  let connectHeld: Gate | undefined;
  let connectFailure: Error | undefined;
  let connecting = 0;
  const factory = (): PgListenClient => {
    const client = new pg.Client({ connectionString: pgUrl() });
    const query = client.query.bind(client) as (text: string, values?: unknown[]) => Promise<unknown>;
    const connect = client.connect.bind(client) as () => Promise<void>;
    const end = client.end.bind(client) as () => Promise<void>;
    const connectGate = armed ? connectHeld : undefined;
    let ended = false;
    Object.assign(client, {
      connect: async () => {
        if (connectGate !== undefined) {
          connecting += 1;
          await connectGate.promise;
          connecting -= 1;
          if (connectFailure !== undefined) throw connectFailure;
          // Ended while held: connecting now would open a connection that nobody ends.
          if (ended) throw new Error('The client was ended while connecting');
        }
        return connect();
      },
      end: async () => {
        ended = true;
        return end();
      },
      query: async (text: string, values?: unknown[]) => {
        if (armed && isReread(text)) {
          reread.push({ text, values });
          const wait = held?.promise;
          if (wait !== undefined) {
            waiting += 1;
            await wait;
            waiting -= 1;
          }
          const error = failing;
          failing = undefined;
          if (error !== undefined) throw error;
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
    holdConnect() {
      const closed = gate();
      connectHeld = closed;
      // A failed test's cleanup fails the held connect, so nothing is left waiting on its gate (close()
      // does not wait for a connect it interrupted: listen-connect-interrupted.test.ts).
      releases.push(() => {
        if (connectHeld !== closed) return;
        connectFailure = new Error('Released by the cleanup of a failed test');
        closed.open();
      });
    },
    connecting: () => connecting,
    releaseConnect(error?: Error) {
      connectFailure = error;
      connectHeld?.open();
      connectHeld = undefined;
    },
    failNext(error: Error) {
      failing = error;
    },
    release() {
      held?.open();
      held = undefined;
    },
  };
}

/**
 * A migrated schema and a store on it whose `LISTEN` clients `listen` records, reconnecting within 5–20 ms,
 * with `extra` options.
 */
async function observedStore(extra: Partial<Parameters<typeof open>[0]> = {}) {
  const schema = await migrated();
  const listen = recordingListenClients();
  const observer = await open({
    schema,
    listenClient: listen.factory,
    reconnect: { initialDelayMs: 5, maxDelayMs: 20 },
    ...extra,
  });
  return { schema, listen, observer };
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
  it('starts at once after forgetSeqs(), not after a backoff delay, and counts no failed attempt', async () => {
    const schema = await migrated();
    // A backoff of a minute: a reconnect scheduled as after a failure would most likely wait seconds.
    const observer = await open({ schema, reconnect: { initialDelayMs: 60_000, maxDelayMs: 60_000 } });
    expect(observer.changes.health()).toMatchObject({ connected: true, failedAttempts: 0 });
    const reconnects = observer.changes.stats().reconnects;
    observer.changes.forgetSeqs();
    await eventually(
      'the connection is replaced',
      () => observer.changes.stats().reconnects > reconnects,
      1000,
    );
    expect(observer.changes.health()).toMatchObject({ connected: true, failedAttempts: 0, lastError: null });
  });

  it('counts as connected while the replacement of a healthy connection connects, until it fails', async () => {
    const errors: string[] = [];
    // The health right after the failure was handled (its reconnect scheduled): read later, the next
    // attempt, 5–20 ms on, may have connected already (it did in CI).
    const afterFailure: Array<ReturnType<typeof observer.changes.health>> = [];
    const { listen, observer } = await observedStore({
      onError: (error) => {
        errors.push(error.message);
        queueMicrotask(() => afterFailure.push(observer.changes.health()));
      },
    });
    listen.holdConnect();
    listen.arm();
    observer.changes.forgetSeqs();
    expect(observer.changes.health()).toMatchObject({ connected: true, failedAttempts: 0, lastError: null });
    await eventually('the replacement connects', () => listen.connecting() > 0);
    expect(observer.changes.health()).toMatchObject({ connected: true, failedAttempts: 0, lastError: null });

    // Nothing deliberate about a failed connect: unhealthy, as after any failure.
    listen.releaseConnect(new Error('connection refused (simulated)'));
    await eventually('the failure is reported', () => afterFailure.length > 0);
    expect(errors[0]).toContain('connection refused');
    expect(afterFailure[0]).toMatchObject({ connected: false, failedAttempts: 1 });
    await eventually('a later attempt connects', () => observer.changes.health().connected);
  });

  it('counts as disconnected once the replacement has not listened within the barrier timeout', async () => {
    const clock = new ManualClock(1_000_000);
    const { listen, observer } = await observedStore({ clock: clock.now, watermarkIntervalMs: 1000 });
    listen.holdConnect();
    listen.arm();
    observer.changes.forgetSeqs();
    await eventually('the replacement connects', () => listen.connecting() > 0);
    // A live connection that left a barrier unanswered this long would be deemed dead (5 intervals).
    clock.advance(4999);
    expect(observer.changes.health().connected).toBe(true);
    clock.advance(1);
    expect(observer.changes.health()).toMatchObject({ connected: false, failedAttempts: 0 });
    listen.releaseConnect();
    await eventually('the replacement listens', () => observer.changes.health().connected);
  });

  it('stays disconnected when the connection it replaces was down', async () => {
    const { listen, observer } = await observedStore();
    listen.holdConnect();
    listen.arm();
    const pid = observer.changes.health().listenerPid;
    await admin.query('SELECT pg_terminate_backend($1)', [pid]);
    await eventually('the reconnect connects', () => listen.connecting() > 0);
    expect(observer.changes.health().connected).toBe(false);
    observer.changes.forgetSeqs();
    expect(observer.changes.health().connected).toBe(false);
    listen.releaseConnect();
    await eventually('the feed is connected again', () => observer.changes.health().connected);
  });

  it("reads one row per task, not one per event, and reports each task's latest seq and end", async () => {
    const { schema, listen, observer } = await observedStore();
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

  it(`reads the tasks in pages of at most ${REREAD_CHUNK_ROWS} rows, so its memory stays bounded`, async () => {
    const { schema, listen, observer } = await observedStore();
    const tasks = 2 * REREAD_CHUNK_ROWS + 500;
    await fill(schema, tasks, 1);
    const recorder = new Recorder(observer);
    listen.arm();
    observer.changes.forgetSeqs();
    await eventually('the full re-read reports every task', () => recorder.changes.length >= tasks);
    await eventually('the feed is connected again', () => observer.changes.health().connected);
    expect(new Set(recorder.changes.map((change) => change.taskId)).size).toBe(tasks);
    expect(recorder.changes).toHaveLength(tasks);

    // What each statement hands the client at once, as Postgres runs it on this table.
    expect(listen.reread.length).toBe(3);
    for (const { text, values } of listen.reread) {
      const { rows } = await admin.query(text, values);
      expect(rows.length, text).toBeLessThanOrEqual(REREAD_CHUNK_ROWS);
    }
  });

  it.each(['forgetSeqs()', 'a reconnect'])(
    'publishes a large re-read after %s in chunks, the event loop turning in between, in order',
    async (cause) => {
      const { schema, observer } = await observedStore();
      const tasks = 3 * REREAD_CHUNK_ROWS + 1;
      // Written without notifications: only the re-read can find them.
      await fill(schema, tasks, 2);
      const recorder = new Recorder(observer);
      let publishedAtTurn: number | undefined;
      const stop = observer.changes.subscribe(() => {
        if (publishedAtTurn !== undefined || recorder.changes.length !== 1) return;
        setImmediate(() => {
          publishedAtTurn = recorder.changes.length;
        });
      });
      if (cause === 'a reconnect') {
        await admin.query('SELECT pg_terminate_backend($1)', [observer.changes.health().listenerPid]);
      } else {
        observer.changes.forgetSeqs();
      }
      await eventually(
        'the re-read reports every task',
        () => recorder.changes.length >= tasks * (cause === 'a reconnect' ? 2 : 1),
      );
      stop();
      expect(publishedAtTurn, 'changes published when a setImmediate after the first one ran').toBeLessThan(
        recorder.changes.length,
      );
      // Each task's seqs in order, each once.
      const perTask = cause === 'a reconnect' ? [1, 2] : [2];
      for (const t of [1, REREAD_CHUNK_ROWS + 1, tasks]) expect(recorder.seqs(`task-${t}`)).toEqual(perTask);
      expect(recorder.changes).toHaveLength(tasks * perTask.length);
    },
  );

  it('counts as connected while it runs: LISTEN is on, so commits made meanwhile are published after the page in flight', async () => {
    const { schema, listen, observer } = await observedStore();
    const writer = await open({ schema });
    // Two pages: task-1 … task-999 sort before task-1000 … (ids compare as text).
    const tasks = REREAD_CHUNK_ROWS + 10;
    await fill(schema, tasks, 3);
    const recorder = new Recorder(observer);
    listen.hold();
    listen.arm();
    observer.changes.forgetSeqs();
    await eventually('the new connection runs its full re-read', () => listen.waiting() > 0);

    const during = observer.changes.health();
    expect(during).toMatchObject({ connected: true, lastError: null });
    expect(typeof during.listenerPid).toBe('number');
    // Committed while the first page is in flight: its notification is held with that page (reported
    // first, a purge's notice would be followed by the page's rows of the purged task; see faults.test.ts),
    // and published once the page is, not after the whole re-read. Its id sorts after every page's.
    await writer.createTask({ id: 'zz-meanwhile', owner: 'alice', kind: 'k' });
    await writer.append('zz-meanwhile', { type: 'progress' });
    listen.release();
    listen.hold(); // the second page waits
    await eventually(
      'the second page is in flight',
      () => listen.reread.length === 2 && listen.waiting() > 0,
    );
    await eventually('the commit made during the re-read is published', () =>
      recorder.has('zz-meanwhile', 1),
    );
    expect(recorder.changes.filter((change) => change.taskId.startsWith('task-'))).toHaveLength(
      REREAD_CHUNK_ROWS,
    );

    listen.release();
    await eventually('the re-read reports the stored tasks', () => recorder.changes.length >= tasks + 1);
    expect(observer.changes.health().connected).toBe(true);
    expect(recorder.seqs('zz-meanwhile')).toEqual([1]);
  });

  it('counts as disconnected again when it fails, and is retried until it reports every task', async () => {
    const schema = await migrated();
    const listen = recordingListenClients();
    let observer: PostgresProgressStore | undefined;
    const failures: Array<{ message: string; connected: boolean | undefined }> = [];
    const store = await open({
      schema,
      listenClient: listen.factory,
      reconnect: { initialDelayMs: 5, maxDelayMs: 20 },
      onError: (error) =>
        failures.push({ message: error.message, connected: observer?.changes.health().connected }),
    });
    observer = store;
    await fill(schema, 10, 3);
    const recorder = new Recorder(store);
    listen.hold();
    listen.arm();
    listen.failNext(new Error('statement timeout (simulated)'));
    store.changes.forgetSeqs();
    await eventually('the new connection runs its full re-read', () => listen.waiting() > 0);
    expect(store.changes.health().connected).toBe(true);

    listen.release();
    await eventually('the failure is reported', () => failures.length > 0);
    expect(failures[0]).toEqual({ message: expect.stringContaining('statement timeout'), connected: false });
    await eventually('a new connection re-reads every task', () => recorder.changes.length >= 10);
    await eventually('the feed is connected again', () => store.changes.health().connected === true);
    expect(recorder.changes.map((change) => change.seq)).toEqual(Array(10).fill(3));
    expect(store.changes.health().failedAttempts).toBe(0);
  });
});

describe('the re-read from a non-zero mark', () => {
  it('takes the mark as its one parameter, and reads only the events past it, by an index range', async () => {
    const { schema, listen, observer } = await observedStore({ watermarkIntervalMs: 10 });
    const tasks = 200;
    const perTask = 10;
    await fill(schema, tasks, perTask);
    const filled = await admin.query('SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS xmin');
    await eventually(
      'the mark passes the filled events',
      () => BigInt(observer.changes.health().watermark ?? '0') >= BigInt(filled.rows[0].xmin),
    );
    await observer.append('task-1', { type: 'item', key: 'late', ok: true });
    listen.arm();
    await admin.query('SELECT pg_terminate_backend($1)', [observer.changes.health().listenerPid]);
    await eventually('the re-read runs', () => listen.reread.length > 0);
    await eventually('the feed is connected again', () => observer.changes.health().connected);

    const [ran] = listen.reread;
    expect(ran?.values).toEqual([expect.any(String)]);
    const { rows } = await admin.query(`EXPLAIN (ANALYZE, FORMAT JSON) ${ran?.text}`, ran?.values);
    const [explained] = rows[0]['QUERY PLAN'] as [{ Plan: PlanNode }];
    const read = rowsReadPerTable(explained.Plan);
    // The one event committed past the mark, not the table's 2,000 others.
    expect(read.get('events') ?? 0, JSON.stringify(Object.fromEntries(read))).toBeLessThanOrEqual(1);
  });
});

describe('a server on the store while the re-read from a mark of 0 runs', () => {
  it('stays ready: GET /healthz answers 200 after the epoch was renewed, while the new connection connects, until and after the re-read', async () => {
    const { schema, listen, observer: store } = await observedStore();
    const server = await ProgressServer.listen(
      { store, authenticate: () => ({ id: 'alice' }), heartbeatIntervalMs: 50, healthDetails: 'public' },
      { port: 0, host: '127.0.0.1' },
    );
    try {
      const { port } = server.httpServer!.address() as AddressInfo;
      const probe = async () => {
        const answer = await fetch(`http://127.0.0.1:${port}/progress/healthz`);
        return { status: answer.status, body: (await answer.json()) as { store: { connected: boolean } } };
      };
      expect((await probe()).status).toBe(200);
      await fill(schema, 10, 3);
      const recorder = new Recorder(store);
      listen.holdConnect();
      listen.hold();
      listen.arm();
      await store.renewEpoch(); // a restore: the server notices at its next heartbeat and resets the feed
      await eventually('the new connection connects', () => listen.connecting() > 0, 3000);
      expect(await probe()).toMatchObject({ status: 200, body: { store: { connected: true } } });
      listen.releaseConnect();
      await eventually('the new connection runs its full re-read', () => listen.waiting() > 0, 3000);
      expect(await probe()).toMatchObject({ status: 200, body: { store: { connected: true } } });
      listen.release();
      await eventually('the re-read reports the stored tasks', () => recorder.has('task-10', 3));
      expect((await probe()).status).toBe(200);
    } finally {
      await server.close({ timeoutMs: 500 });
    }
  });
});
