import type { AppendResult } from '@finishline/core';
import { ErrorCode, isProgressError } from '@finishline/core';
import { ManualClock } from '@finishline/core/testing';
import pg from 'pg';
import { describe, expect, it, vi } from 'vitest';
import {
  changeChannel,
  type PgListenClient,
  POSTGRES_STORE_DEFAULTS,
  PostgresProgressStore,
  type PostgresProgressStoreOptions,
} from '../src/index.js';
import { HELD_NOTIFICATIONS_CAPACITY, REREAD_CHUNK_ROWS } from '../src/listen-connection.js';
import { PURGED_RECORD_MS } from '../src/task-statements.js';
import {
  commitGatedPool,
  eventually,
  type Gate,
  gate,
  gatedListenClients,
  oneTo,
  pgUrl,
  queryHookedPool,
  Recorder,
  settlesWithin,
  storeFixtures,
} from './support.js';

/**
 * Fault tests on a real server: killed connections and backends, concurrent writers and reapers,
 * suppressed notifications. Each builds what it needs and checks the guarantee against the database.
 */

const { admin, releases, pool, migrated, open } = storeFixtures('fault');

/**
 * LISTEN clients (gated like {@link gatedListenClients}) that see transaction ids `offset` higher than the
 * server's: the xmin of each re-read and of each barrier is raised by `offset`, and the mark a re-read
 * sends is lowered by as much. The feed's mark so grows far above the server's xids; `restore()` then
 * stops the shift, and the server's xids are far below the mark the feed remembers — as after a
 * physical restore, or a restore into a new cluster, whose transaction ids start again lower.
 * `deafen()` drops every change notification from then on (barriers still arrive): only a re-read can
 * find a change committed after it.
 */
function restorableListenClients(offset: bigint) {
  const gated = gatedListenClients();
  let shift = offset;
  let deaf = false;
  const factory = (): PgListenClient => {
    const client = gated.factory() as unknown as pg.Client;
    const query = client.query.bind(client) as (
      text: string,
      values?: unknown[],
    ) => Promise<{ rows: Array<Record<string, unknown>> }>;
    const on = client.on.bind(client) as (event: string, listener: (...args: unknown[]) => void) => unknown;
    Object.assign(client, {
      query: async (text: string, values?: unknown[]) => {
        if (!text.includes('pg_snapshot_xmin') || text.includes("'barrier'")) return query(text, values);
        // The re-read: its mark (if it takes one; not from the start) from the feed's ids to the
        // server's, its xmin back.
        const at = shift;
        const given = values?.[0];
        const mark = typeof given === 'string' ? String(BigInt(given) > at ? BigInt(given) - at : 0n) : null;
        const result = await query(
          text,
          values?.map(() => mark),
        );
        return {
          ...result,
          rows: result.rows.map((row) => ({ ...row, xmin: String(BigInt(String(row.xmin)) + at) })),
        };
      },
      on: (event: string, listener: (...args: unknown[]) => void) =>
        on(event, (...args) => {
          if (event !== 'notification') return listener(...args);
          const message = args[0] as { channel: string; payload?: string };
          const payload = message.payload ?? '';
          if (payload.startsWith('[')) return deaf ? undefined : listener(message);
          const parsed = JSON.parse(payload) as { barrier?: string; xmin?: string };
          if (parsed.barrier === undefined || parsed.xmin === undefined) return listener(message);
          const xmin = String(BigInt(parsed.xmin) + shift);
          return listener({ ...message, payload: JSON.stringify({ barrier: parsed.barrier, xmin }) });
        }),
    });
    return client as unknown as PgListenClient;
  };
  return {
    factory,
    block: gated.block,
    unblock: gated.unblock,
    restore() {
      shift = 0n;
    },
    deafen() {
      deaf = true;
    },
  };
}

/** Waits until `condition()` holds, turning the event loop with setImmediate (timers are faked), up to 10 s. */
async function eventuallyWithFakeTimers(condition: () => boolean): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!condition() && Date.now() < deadline) await new Promise((resolve) => setImmediate(resolve));
  expect(condition()).toBe(true);
}

async function terminate(pid: number): Promise<void> {
  const { rows } = await admin.query('SELECT pg_terminate_backend($1) AS done', [pid]);
  expect(rows[0].done).toBe(true);
}

async function currentXmin(): Promise<bigint> {
  const { rows } = await admin.query('SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS xmin');
  return BigInt(rows[0].xmin);
}

/** A store whose LISTEN connection reconnects within 5-20 ms (plus `options`): the fault tests wait for that. */
function openObserver(
  schema: string,
  options: Partial<PostgresProgressStoreOptions>,
): Promise<PostgresProgressStore> {
  return open({ reconnect: { initialDelayMs: 5, maxDelayMs: 20 }, ...options, schema });
}

/**
 * An observer ({@link openObserver} with `observerOptions`), a writer store and a recorder of the
 * observer's feed, once the writer's first change to task 'x' has reached the observer: the steady start
 * from which the LISTEN fault tests break something.
 */
async function observingFirstChange(
  schema: string,
  observerOptions: Partial<PostgresProgressStoreOptions>,
): Promise<{ observer: PostgresProgressStore; writer: PostgresProgressStore; recorder: Recorder }> {
  const observer = await openObserver(schema, observerOptions);
  const writer = await open({ schema });
  const recorder = new Recorder(observer);
  await writer.createTask({ id: 'x', owner: 'alice', kind: 'k' });
  await writer.append('x', { type: 'progress' });
  await eventually('the first change', () => recorder.has('x', 1));
  return { observer, writer, recorder };
}

/**
 * A store on a commit-gated pool. `holdAtCommit(start)` runs `start` (an append of this store, which takes
 * a locking transaction when another store created its task) and resolves once that transaction is held
 * just before its COMMIT, with the pending append and the backend's pid; `release()` lets it commit.
 */
async function commitHoldingStore(schema: string) {
  const gated = commitGatedPool(pool());
  const store = await open({ schema, pool: gated.pool });
  const release = () => gated.control.release();
  const holdAtCommit = async <T>(start: () => Promise<T>): Promise<{ pending: Promise<T>; pid: number }> => {
    gated.control.arm();
    const pending = start();
    // Whatever fails below, afterEach lets the held transaction go before closing the stores.
    releases.push(release);
    return { pending, pid: await gated.control.reached() };
  };
  return { store, holdAtCommit, release };
}

describe('the LISTEN connection', () => {
  it('killed in the middle of a stream of appends: every change still arrives, seqs 1..n per task', async () => {
    const schema = await migrated();
    const listen = gatedListenClients();
    const observer = await openObserver(schema, { listenClient: listen.factory, watermarkIntervalMs: 10 });
    const writer = await open({ schema });
    const recorder = new Recorder(observer);
    const tasks = ['s1', 's2', 's3'];
    for (const id of tasks) await writer.createTask({ id, owner: 'alice', kind: 'k' });
    const total = 300;
    let whileBlocked = 0;
    for (let i = 0; i < total; i += 3) {
      if (i === 99) {
        // The mark has moved past the first third (barriers work), then the listener dies.
        const xmin = await currentXmin();
        await eventually('the watermark passes the first appends', () => {
          const mark = observer.changes.health().watermark;
          return mark !== null && BigInt(mark) >= xmin;
        });
        listen.block();
        const pid = observer.changes.health().listenerPid;
        expect(pid).not.toBeNull();
        await terminate(pid ?? 0);
        await eventually('the observer notices', () => !observer.changes.health().connected);
      }
      if (i === 201) {
        listen.unblock();
        // Hold the writer until the re-read is done: a newer notification racing it could fill the gap
        // first (also correct, but then this test would not show that the re-read finds it).
        await eventually('the observer reconnects', () => observer.changes.health().connected);
      }
      if (i >= 99 && i < 201) whileBlocked += 3;
      // Three appends at once: group commits that touch several tasks.
      await Promise.all(tasks.map((id) => writer.append(id, { type: 'progress', done: i })));
    }
    await eventually('every task reaches its last seq on the observer', () =>
      tasks.every((id) => recorder.has(id, total / tasks.length)),
    );
    for (const id of tasks) expect(recorder.seqs(id), `seqs of ${id}`).toEqual(oneTo(total / tasks.length));
    const stats = observer.changes.stats();
    // Everything committed while the listener was down can only have come from the re-read.
    expect(stats.replayed, JSON.stringify(stats)).toBeGreaterThanOrEqual(whileBlocked);
    expect(stats.reconnects).toBeGreaterThanOrEqual(1);
    expect(stats.missedByNotifications).toBe(0);
    const health = observer.changes.health();
    expect(health.connected).toBe(true);
    expect(isProgressError(health.lastError, ErrorCode.StoreUnavailable)).toBe(true);
  });

  it('does not skip a transaction that took its id before, and committed after, ones it already saw', async () => {
    const schema = await migrated();
    const listen = gatedListenClients();
    const observer = await openObserver(schema, { listenClient: listen.factory, watermarkIntervalMs: 10 });
    const { store: slow, holdAtCommit, release } = await commitHoldingStore(schema);
    const fast = await open({ schema });
    const recorder = new Recorder(observer);
    // Created by another store, so that `slow` appends in a locking transaction, held at its COMMIT.
    await fast.createTask({ id: 'late', owner: 'alice', kind: 'k' });
    await fast.createTask({ id: 'early', owner: 'alice', kind: 'k' });
    const { pending: lateAppend, pid } = await holdAtCommit(() =>
      slow.append('late', { type: 'progress', done: 1 }),
    );
    const { rows } = await admin.query(
      'SELECT backend_xid::text AS xid FROM pg_stat_activity WHERE pid = $1',
      [pid],
    );
    const lateXid = BigInt(rows[0].xid);
    // A later transaction commits and is delivered; the mark may advance, but never past the open one.
    await fast.append('early', { type: 'progress', done: 1 });
    await eventually('the early change arrives', () => recorder.has('early', 1));
    const xmin = await currentXmin(); // at most lateXid: that transaction is still open
    const mark = () => BigInt(observer.changes.health().watermark ?? '0');
    await eventually('the mark advances up to the open transaction', () => mark() >= xmin);
    const seen = observer.changes.stats().notifications;
    await eventually('five more barriers', () => observer.changes.stats().notifications >= seen + 5);
    expect(mark() <= lateXid, `mark ${mark()} must not pass the open transaction ${lateXid}`).toBe(true);
    listen.block();
    await terminate(observer.changes.health().listenerPid ?? 0);
    await eventually('the observer notices', () => !observer.changes.health().connected);
    release();
    expect((await lateAppend).event.seq).toBe(1);
    expect(recorder.has('late', 1)).toBe(false);
    listen.unblock();
    await eventually('the late commit is found by the re-read', () => recorder.has('late', 1));
    expect(observer.changes.stats().replayed).toBeGreaterThanOrEqual(1);
  });
  it('replaces a connection that stops answering, as a silently dead socket would', async () => {
    const schema = await migrated();
    let deaf = false;
    let created = 0;
    const factory = (): PgListenClient => {
      const client = new pg.Client({ connectionString: pgUrl() });
      const first = created++ === 0;
      const query = client.query.bind(client) as (text: string, values?: unknown[]) => Promise<unknown>;
      Object.assign(client, {
        // Only the first connection goes deaf: its barrier queries never get an answer.
        query: (text: string, values?: unknown[]) =>
          first && deaf && text.includes("'barrier'") ? new Promise(() => {}) : query(text, values),
      });
      return client as unknown as PgListenClient;
    };
    const { observer, writer, recorder } = await observingFirstChange(schema, {
      listenClient: factory,
      watermarkIntervalMs: 20,
    });
    deaf = true;
    await eventually(
      'a new connection replaces the deaf one',
      () => observer.changes.stats().reconnects >= 1,
    );
    expect(observer.changes.health().lastError?.message).toContain('did not answer');
    await writer.append('x', { type: 'progress' });
    await eventually('changes flow again', () => recorder.has('x', 2));
    expect(recorder.seqs('x')).toEqual([1, 2]);
  });

  it("ignores a late barrier of its replaced connection, which would move the new one's re-read past a commit", async () => {
    const schema = await migrated();
    // The old connection's socket is dead but its backend is not: the backend ran the barrier statement
    // (its snapshot taken after a commit the dead socket never delivered) and commits it late, once the
    // new connection listens. `lateBarrier` is that backend's transaction.
    const lateBarrier = new pg.Client({ connectionString: pgUrl() });
    await lateBarrier.connect();
    releases.push(() => void lateBarrier.end().catch(() => {}));
    let deaf = false;
    let barrier: { text: string; values: unknown[] | undefined } | undefined;
    let created = 0;
    const factory = (): PgListenClient => {
      const client = new pg.Client({ connectionString: pgUrl() });
      const first = created++ === 0;
      const query = client.query.bind(client) as (text: string, values?: unknown[]) => Promise<unknown>;
      const on = client.on.bind(client) as (event: string, listener: (...args: unknown[]) => void) => unknown;
      let heard: (() => void) | undefined;
      Object.assign(client, {
        // The first connection's socket dies: nothing reaches it any more, its barriers get no answer.
        on: (event: string, listener: (...args: unknown[]) => void) =>
          on(event, (...args) => {
            if (!(first && deaf && event === 'notification')) listener(...args);
          }),
        query: async (text: string, values?: unknown[]) => {
          if (first && deaf && text.includes("'barrier'")) {
            barrier ??= { text, values };
            return new Promise(() => {});
          }
          if (first || !text.startsWith('LISTEN') || barrier === undefined) return query(text, values);
          // The new connection listens; the old barrier commits and reaches it before LISTEN's answer is
          // read (Postgres sends pending notifications ahead of ReadyForQuery).
          const result = await query(text, values);
          const arrived = new Promise<void>((resolve) => {
            heard = resolve;
          });
          await lateBarrier.query('COMMIT');
          await arrived;
          return result;
        },
      });
      on('notification', () => heard?.());
      return client as unknown as PgListenClient;
    };
    const { observer, writer, recorder } = await observingFirstChange(schema, {
      listenClient: factory,
      watermarkIntervalMs: 20,
    });
    const afterFirst = await currentXmin();
    await eventually('the mark passes the first change', () => {
      const mark = observer.changes.health().watermark;
      return mark !== null && BigInt(mark) >= afterFirst;
    });
    deaf = true;
    await eventually('the old connection sends a barrier', () => barrier !== undefined);
    // Committed while the socket is dead: only the new connection's re-read can find it.
    await writer.append('x', { type: 'progress' });
    await lateBarrier.query('BEGIN ISOLATION LEVEL REPEATABLE READ');
    await lateBarrier.query(barrier?.text ?? '', barrier?.values);
    await eventually(
      'a new connection replaces the dead one',
      () => observer.changes.stats().reconnects >= 1,
    );
    await eventually('the re-read finds the commit the dead socket missed', () => recorder.has('x', 2), 3000);
    expect(recorder.seqs('x')).toEqual([1, 2]);
  });
});

/** The re-read from a mark, or the first page of the re-read from the start: the statements that read an xmin. */
function isFirstRereadStatement(text: string): boolean {
  return text.includes('pg_snapshot_xmin') && !text.includes("'barrier'");
}

/** A later page of the re-read from the start: the tasks after the last id of the page before. */
function isLaterRereadPage(text: string): boolean {
  return text.includes('AND id >');
}

/**
 * LISTEN clients gated like {@link gatedListenClients}, whose re-read can be held once it has its rows:
 * `duringReread(step)` runs `step` (commits of another store, and the wait for their notifications, which
 * reach the connection meanwhile) after the next re-read's statement answered and before the listener
 * gets its rows, as a commit between the re-read's snapshot and its reply does. `heard()` counts the
 * notifications the clients received, barriers left out.
 */
function rereadHoldingListenClients() {
  const gated = gatedListenClients();
  let step: (() => Promise<void>) | undefined;
  let which: (text: string) => boolean = isFirstRereadStatement;
  let heard = 0;
  const factory = (): PgListenClient => {
    const client = gated.factory() as unknown as pg.Client;
    const query = client.query.bind(client) as (text: string, values?: unknown[]) => Promise<unknown>;
    client.on('notification', (message) => {
      // Not the barriers: any store's (the writer's, every second by default) would count too early.
      if (!message.payload?.includes('"barrier"')) heard += 1;
    });
    Object.assign(client, {
      query: async (text: string, values?: unknown[]) => {
        const result = await query(text, values);
        if (step !== undefined && which(text)) {
          const run = step;
          step = undefined;
          await run();
        }
        return result;
      },
    });
    return client as unknown as PgListenClient;
  };
  return {
    factory,
    block: gated.block,
    unblock: gated.unblock,
    /** `page`: which statement to hold, by default the first one of a re-read (from a mark, or the start's first page). */
    duringReread(run: () => Promise<void>, page: (text: string) => boolean = isFirstRereadStatement) {
      step = run;
      which = page;
    },
    heard: () => heard,
  };
}

/** The changes of `taskId` a recorder got from its `from`-th change on, as `seq` and `T` for terminal. */
function changesOf(recorder: Recorder, taskId: string, from: number): string[] {
  return recorder.changes
    .slice(from)
    .filter((change) => change.taskId === taskId)
    .map((change) => `${change.seq}${change.terminal ? 'T' : ''}`);
}

/**
 * An observer whose LISTEN connection the test takes down and lets back (`listen`), a writer, and a
 * recorder of the observer's feed, once the observer has published the writer's four-event run of task
 * 'job' (three items, completed), which a watcher on the observer follows throughout.
 */
async function observingFirstRun(
  schema: string,
  listen: { factory: () => PgListenClient },
  options: Partial<PostgresProgressStoreOptions> = {},
) {
  const observer = await openObserver(schema, { listenClient: listen.factory, ...options });
  const writer = await open({ schema });
  const recorder = new Recorder(observer);
  // As TaskHub.follow does for a subscribed socket: the safety-net poll asks about it too.
  observer.changes.follow('job');
  await writer.createTask({ id: 'job', owner: 'alice', kind: 'k' });
  for (const key of ['n1', 'n2', 'n3']) await writer.append('job', { type: 'item', key, ok: true });
  await writer.append('job', { type: 'completed' });
  await eventually('the observer sees the first run end', () => recorder.has('job', 4));
  return { observer, writer, recorder };
}

/**
 * With the observer's `LISTEN` connection down: `job` (finished) purged and created again, finished at seq
 * 1, then the record of that purge deleted by a later purge an hour on (on a replica whose clock the test
 * moves), so the observer can never hear of it. Brings the connection back and returns the recorder's
 * length before it.
 */
async function purgeUnheardThenExpireItsRecord(
  schema: string,
  observer: PostgresProgressStore,
  listen: { block(): void; unblock(): void },
  recorder: { changes: readonly unknown[] },
): Promise<number> {
  const clock = new ManualClock(Date.now());
  const retention = await open({ schema, clock: clock.now });
  await takeListenerDown(observer, listen);
  expect(await retention.purgeFinished({ olderThanMs: 0 })).toBe(1);
  await retention.createTask({ id: 'job', owner: 'alice', kind: 'k' });
  await retention.append('job', { type: 'completed' });
  clock.advance(PURGED_RECORD_MS);
  // Purges nothing more, but deletes the record of the first purge, which the observer never heard.
  expect(await retention.purgeFinished({ olderThanMs: PURGED_RECORD_MS + 1 })).toBe(0);
  const records = await admin.query(`SELECT count(*)::int AS n FROM ${schema}.purged`);
  expect(records.rows).toEqual([{ n: 0 }]);
  return letListenerBack(observer, listen, recorder);
}

/** Takes the observer's LISTEN connection down (its reconnects wait for `listen.unblock()`). */
async function takeListenerDown(observer: PostgresProgressStore, listen: { block(): void }): Promise<void> {
  listen.block();
  await terminate(observer.changes.health().listenerPid ?? 0);
  await eventually('the observer notices', () => !observer.changes.health().connected);
}

/**
 * Lets the observer's LISTEN connection back (see {@link takeListenerDown}) and waits until it is
 * connected. Returns the recorder's length before, from which the test reads what came after.
 */
async function letListenerBack(
  observer: PostgresProgressStore,
  listen: { unblock(): void },
  recorder: { changes: readonly unknown[] },
): Promise<number> {
  const before = recorder.changes.length;
  listen.unblock();
  await eventually('the observer reconnects', () => observer.changes.health().connected);
  return before;
}

/** The writer ends `job`'s new run; by then the observer published exactly `1`, `2T` of it since `before`. */
async function expectNewRunEnded(writer: PostgresProgressStore, recorder: Recorder, before: number) {
  await writer.append('job', { type: 'completed' });
  await eventually('the second run ends on the observer', () =>
    changesOf(recorder, 'job', before).includes('2T'),
  );
  expect(changesOf(recorder, 'job', before)).toEqual(['1', '2T']);
}

/**
 * {@link observingFirstRun} in a new schema with a re-read the test can hold
 * ({@link rereadHoldingListenClients}), no barrier moving the mark and no timed poll, and the LISTEN
 * connection taken down.
 */
async function awayWithRereadHeld() {
  const schema = await migrated();
  const listen = rereadHoldingListenClients();
  const { observer, writer, recorder } = await observingFirstRun(schema, listen, {
    watermarkIntervalMs: 3_600_000,
    pollIntervalMs: 3_600_000,
  });
  await takeListenerDown(observer, listen);
  return { observer, writer, recorder, listen };
}

describe('retention while the LISTEN connection is away', () => {
  it('hears, by its re-read, a purge committed while it was away: a reused id is published from seq 1', async () => {
    const schema = await migrated();
    const listen = gatedListenClients();
    const { observer, writer, recorder } = await observingFirstRun(schema, listen, {
      watermarkIntervalMs: 10,
      pollIntervalMs: 20,
    });
    await takeListenerDown(observer, listen);
    // Retention on the writer removes the job while the observer's listener is away (its purge notice
    // is lost with it), and the job runs again under the same id, shorter: seqs 1 and 2, both at most
    // the 4 the observer remembers. (Before the purge records, the observer dropped them as duplicates
    // for as long as the job was followed: neither the re-read nor the poll published them.)
    expect(await writer.purgeFinished({ olderThanMs: 0 })).toBe(1);
    await writer.createTask({ id: 'job', owner: 'alice', kind: 'k' });
    await writer.append('job', { type: 'item', key: 'n1', ok: true });
    await writer.append('job', { type: 'completed' });
    const before = await letListenerBack(observer, listen, recorder);
    await eventually(
      "the observer publishes the second run's end",
      () => changesOf(recorder, 'job', before).includes('2T'),
      3000,
    ).catch(() => {});
    await observer.pollNow();
    expect(changesOf(recorder, 'job', before)).toEqual(['1', '2T']);
  });

  it('a new run committed only after the reconnect is published too: the re-read found the purge alone', async () => {
    const schema = await migrated();
    const listen = gatedListenClients();
    // No poll: on a loaded machine it could find the new run before its notifications, which the
    // missedByNotifications check below is about.
    const { observer, writer, recorder } = await observingFirstRun(schema, listen, {
      watermarkIntervalMs: 10,
      pollIntervalMs: 3_600_000,
    });
    await takeListenerDown(observer, listen);
    expect(await writer.purgeFinished({ olderThanMs: 0 })).toBe(1);
    await writer.createTask({ id: 'job', owner: 'alice', kind: 'k' });
    const before = await letListenerBack(observer, listen, recorder);
    await writer.append('job', { type: 'item', key: 'n1', ok: true });
    await expectNewRunEnded(writer, recorder, before);
    expect(observer.changes.stats().missedByNotifications).toBe(0);
  });

  it('a record of a purge it heard before going away is not acted on again: nothing is published twice', async () => {
    const schema = await migrated();
    const listen = gatedListenClients();
    // No barrier advances the mark: the re-read after the reconnect covers the purge and the new run,
    // which the observer heard and published before it went away. No poll either.
    const { observer, writer, recorder } = await observingFirstRun(schema, listen, {
      watermarkIntervalMs: 3_600_000,
      pollIntervalMs: 3_600_000,
    });
    const before = recorder.changes.length;
    expect(await writer.purgeFinished({ olderThanMs: 0 })).toBe(1);
    await writer.createTask({ id: 'job', owner: 'alice', kind: 'k' });
    await writer.append('job', { type: 'item', key: 'n1', ok: true });
    await eventually('the observer publishes the new run', () =>
      changesOf(recorder, 'job', before).includes('1'),
    );
    await takeListenerDown(observer, listen);
    listen.unblock();
    await eventually('the observer reconnects', () => observer.changes.stats().reconnects >= 1);
    await expectNewRunEnded(writer, recorder, before);
  });

  it('knows its own purge, made while away, when the re-read finds its record: nothing is published twice', async () => {
    const schema = await migrated();
    const listen = gatedListenClients();
    const { observer, writer, recorder } = await observingFirstRun(schema, listen, {
      watermarkIntervalMs: 10,
      pollIntervalMs: 20,
    });
    await takeListenerDown(observer, listen);
    const before = recorder.changes.length;
    // The observer's own retention: it forgets the job at once, and its poll finds the new run's seq 1.
    expect(await observer.purgeFinished({ olderThanMs: 0 })).toBe(1);
    await writer.createTask({ id: 'job', owner: 'alice', kind: 'k' });
    await writer.append('job', { type: 'item', key: 'n1', ok: true });
    await eventually('the poll publishes the new run', () =>
      changesOf(recorder, 'job', before).includes('1'),
    );
    listen.unblock();
    await eventually('the observer reconnects', () => observer.changes.health().connected);
    await expectNewRunEnded(writer, recorder, before);
  });

  it("reports the notifications that arrive during its re-read after the re-read's rows", async () => {
    const schema = await migrated();
    const listen = rereadHoldingListenClients();
    // No poll: only the order in which the listener reports decides what is published.
    const { observer, writer, recorder } = await observingFirstRun(schema, listen, {
      watermarkIntervalMs: 10,
      pollIntervalMs: 3_600_000,
    });
    await takeListenerDown(observer, listen);
    expect(await writer.purgeFinished({ olderThanMs: 0 })).toBe(1);
    await writer.createTask({ id: 'job', owner: 'alice', kind: 'k' });
    await writer.append('job', { type: 'item', key: 'n1', ok: true });
    // Committed after the re-read's snapshot, their notifications reach the new connection before the
    // re-read's rows reach the listener: reported first, seqs 2 and 3 would pass for the first run's.
    listen.duringReread(async () => {
      const heard = listen.heard();
      await writer.append('job', { type: 'item', key: 'n2', ok: true });
      await writer.append('job', { type: 'completed' });
      await eventually('both notifications reach the connection', () => listen.heard() >= heard + 2);
    });
    const before = await letListenerBack(observer, listen, recorder);
    await eventually(
      'the second run ends on the observer',
      () => changesOf(recorder, 'job', before).includes('3T'),
      3000,
    );
    expect(changesOf(recorder, 'job', before)).toEqual(['1', '2', '3T']);
  });

  it("does not take a re-read's rows of a purged run for the new run that a notification during it announced", async () => {
    // The mark stays below the first run, whose events the re-read therefore reads again.
    const { observer, writer, recorder, listen } = await awayWithRereadHeld();
    // After the re-read's snapshot (which still holds the first run's seqs 1..4), the run is purged and
    // started again. Reported before those rows, the purge notice and seq 1 of the new run would make the
    // rows' seqs 2..4 look like the new run's (a terminal one among them), and the new run's own seq 2
    // a duplicate.
    listen.duringReread(async () => {
      const heard = listen.heard();
      expect(await writer.purgeFinished({ olderThanMs: 0 })).toBe(1);
      await writer.createTask({ id: 'job', owner: 'alice', kind: 'k' });
      await writer.append('job', { type: 'item', key: 'n1', ok: true });
      await eventually('both notifications reach the connection', () => listen.heard() >= heard + 2);
    });
    const before = await letListenerBack(observer, listen, recorder);
    await eventually(
      'the new run starts on the observer',
      () => changesOf(recorder, 'job', before).includes('1'),
      3000,
    );
    await writer.append('job', { type: 'completed' });
    await eventually(
      'the second run ends on the observer',
      () => changesOf(recorder, 'job', before).includes('2T'),
      3000,
    );
    expect(changesOf(recorder, 'job', before)).toEqual(['1', '2T']);
  });

  // After the re-read's snapshot (which still holds the first run's seqs 1..4), the run is purged (by the
  // observer itself, or by the writer with its notice held with the re-read) and the observer starts it
  // again. Acted on before those rows, the observer's own purge and seq 1 would make the rows' seqs 2..4 look
  // like the new run's and the new run's own seq 2 a duplicate, never published; with the writer's purge,
  // the new seq 1 published at once would be followed by the rows' 2..4T of the purged run (a phantom end).
  it.each([
    ['its own purge and commits', 'observer'],
    ["another store's purge and its own commits", 'writer'],
  ] as const)("orders %s, made during its re-read, after the re-read's rows", async (_, purger) => {
    const { observer, writer, recorder, listen } = await awayWithRereadHeld();
    listen.duringReread(async () => {
      const heard = listen.heard();
      expect(await (purger === 'observer' ? observer : writer).purgeFinished({ olderThanMs: 0 })).toBe(1);
      await observer.createTask({ id: 'job', owner: 'alice', kind: 'k' });
      await observer.append('job', { type: 'item', key: 'n1', ok: true });
      await eventually('both notifications reach the connection', () => listen.heard() >= heard + 2);
    });
    const before = await letListenerBack(observer, listen, recorder);
    expect(await newRunEnded({ observer, writer, recorder }, before)).toEqual(['1', '2T']);
  });

  it('reports nothing its safety-net poll finds during its re-read (the poll retries)', async () => {
    const { observer, writer, recorder, listen } = await awayWithRereadHeld();
    // The writer purges the run (its notice held with the re-read) and runs it again past seq 4; a poll
    // then finds seq 5. Reported at once, against the first run's 4, it would publish a lone 5 of the new run
    // before the notice, after which the new run is published again from seq 1.
    listen.duringReread(async () => {
      const heard = listen.heard();
      expect(await writer.purgeFinished({ olderThanMs: 0 })).toBe(1);
      await writer.createTask({ id: 'job', owner: 'alice', kind: 'k' });
      for (const key of ['n1', 'n2', 'n3', 'n4', 'n5'])
        await writer.append('job', { type: 'item', key, ok: true });
      await eventually('the notifications reach the connection', () => listen.heard() >= heard + 6);
      await observer.pollNow();
    });
    const before = await letListenerBack(observer, listen, recorder);
    await writer.append('job', { type: 'completed' });
    await eventually(
      'the second run ends on the observer',
      () => changesOf(recorder, 'job', before).includes('6T'),
      3000,
    ).catch(() => {});
    expect(changesOf(recorder, 'job', before)).toEqual(['1', '2', '3', '4', '5', '6T']);
  });

  it(`holds at most ${HELD_NOTIFICATIONS_CAPACITY} notifications during its re-read, then re-reads from its snapshot`, async () => {
    // The purge and the new run are found by the second re-read, from the first one's snapshot.
    expect(await afterHeldOverflow('re-read from the mark')).toEqual(['1', '2T']);
  });

  it('forgets every task when records of purges it may have missed were deleted', async () => {
    const schema = await migrated();
    const listen = gatedListenClients();
    const { observer, recorder } = await observingFirstRun(schema, listen, {
      watermarkIntervalMs: 10,
      pollIntervalMs: 3_600_000,
    });
    const before = await purgeUnheardThenExpireItsRecord(schema, observer, listen, recorder);
    await eventually(
      'the second run ends on the observer',
      () => changesOf(recorder, 'job', before).includes('1T'),
      3000,
    );
    expect(changesOf(recorder, 'job', before)).toEqual(['1T']);
  });
});

describe("the store's own purge", () => {
  it('is not acted on again when its reply comes after a barrier passed it: nothing is published twice', async () => {
    const schema = await migrated();
    let hold: Gate | undefined;
    const replied = gate();
    const hooked = queryHookedPool(pool(), async (_client, { text }, run) => {
      const result = await run();
      if (hold !== undefined && text.includes('purged_horizon')) {
        replied.open();
        await hold.promise;
      }
      return result;
    });
    const listen = gatedListenClients();
    const { observer, writer, recorder } = await observingFirstRun(schema, listen, {
      pool: hooked,
      watermarkIntervalMs: 10,
      pollIntervalMs: 3_600_000,
    });
    const before = recorder.changes.length;
    // The purge commits, but its reply waits, as a reply can behind a busy pool connection's socket. Its
    // notice comes meanwhile, and barriers move the mark past the purge, which then needs no memory of
    // its own: the mark says its record is below every later re-read.
    const held = gate();
    hold = held;
    releases.push(held.open);
    const purging = observer.purgeFinished({ olderThanMs: 0 });
    await replied.promise;
    const { rows } = await admin.query(
      `SELECT xid::text AS xid FROM ${pg.escapeIdentifier(schema)}.purged WHERE task_id = 'job'`,
    );
    const purgeXid = BigInt(rows[0].xid);
    await eventually(
      'the mark passes the purge',
      () => BigInt(observer.changes.health().watermark ?? '0') > purgeXid,
    );
    await writer.createTask({ id: 'job', owner: 'alice', kind: 'k' });
    await writer.append('job', { type: 'item', key: 'n1', ok: true });
    await eventually('the new run starts on the observer', () =>
      changesOf(recorder, 'job', before).includes('1'),
    );
    held.open();
    expect(await purging).toBe(1);
    // Before, the reply forgot the new run's seq 1 (the barrier had pruned the purge from those heard),
    // and the poll published it a second time.
    await observer.pollNow();
    expect(changesOf(recorder, 'job', before)).toEqual(['1']);
  });
});

describe('a horizon of deleted purge records at the mark', () => {
  // A record of a purge whose transaction id is the mark (running when the mark's snapshot was taken: its
  // notice may have come after the mark) is one the re-read from the mark would find (xid >= mark): once
  // it is deleted, the re-read must forget every task, or it may miss that purge. One below the mark is
  // of a purge delivered before the mark: forgetting would publish again what the re-read finds.
  it.each([
    [
      'at the mark: every task is forgotten, what the re-read finds published again',
      0n,
      ['1', '2', '3', '4T'],
    ],
    ['just below the mark: nothing is forgotten, nothing published twice', -1n, []],
  ] as const)('a deleted record %s', async (_, offset, republished) => {
    const schema = await migrated();
    const listen = gatedListenClients();
    // No barrier: the mark stays below the first run, which the re-read therefore reads again.
    const { observer, recorder } = await observingFirstRun(schema, listen, {
      watermarkIntervalMs: 3_600_000,
      pollIntervalMs: 3_600_000,
    });
    await takeListenerDown(observer, listen);
    const mark = BigInt(observer.changes.health().watermark ?? '0');
    const clock = new ManualClock(Date.now());
    await admin.query(
      `INSERT INTO ${pg.escapeIdentifier(schema)}.purged (task_id, xid, purged_at) VALUES ('gone', $1, $2)`,
      [String(mark + offset), clock.now() - PURGED_RECORD_MS],
    );
    // Retention deletes the expired record (and purges nothing: the job ended less than two hours ago).
    const retention = await open({ schema, clock: clock.now });
    expect(await retention.purgeFinished({ olderThanMs: 2 * PURGED_RECORD_MS })).toBe(0);
    const meta = await admin.query(
      `SELECT value FROM ${pg.escapeIdentifier(schema)}.meta WHERE key = 'purged_horizon'`,
    );
    expect(meta.rows).toEqual([{ value: String(mark + offset) }]);
    const before = await letListenerBack(observer, listen, recorder);
    expect(changesOf(recorder, 'job', before)).toEqual(republished);
  });
});

describe('retention during the re-read from the start', () => {
  // The re-read after forgetSeqs() reads the tasks table in pages, each in its own snapshot. After the
  // snapshot of the page that holds the job (still its first run, ended at seq 4), the run is purged (by the
  // observer itself, or by the writer) and the observer starts it again. Reported before that page's rows,
  // the purge and the new seq 1 were followed by the page's 4T of the purged run: 2, 3 and a phantom end 4T
  // published as the new run's, and the new run's own seq 2 and end dropped as duplicates.
  it.each([
    ['its first page', 'writer'],
    ['its first page', 'observer'],
    ['a later page', 'writer'],
    ['a later page', 'observer'],
  ] as const)(
    "orders a purge and a new run made during %s (purged by the %s) after the page's rows",
    async (page, purger) => {
      const schema = await migrated();
      const listen = rereadHoldingListenClients();
      const { observer, writer, recorder } = await observingFirstRun(schema, listen, {
        watermarkIntervalMs: 3_600_000,
        pollIntervalMs: 3_600_000,
      });
      if (page === 'a later page') {
        // A first page of other tasks, whose ids sort before the job's: the job is on the second page.
        await admin.query(
          `INSERT INTO ${pg.escapeIdentifier(schema)}.tasks (id, owner, kind, status, total, done, succeeded,
           failed, seq, acked_seq, created_at, updated_at)
         SELECT 'filler-' || lpad(t::text, 5, '0'), 'alice', 'k', 'running', 0, 0, 0, 0, 1, 0, 1000, 1000
         FROM generate_series(1, $1::int) AS t`,
          [REREAD_CHUNK_ROWS],
        );
      }
      listen.duringReread(
        async () => {
          const heard = listen.heard();
          expect(await (purger === 'observer' ? observer : writer).purgeFinished({ olderThanMs: 0 })).toBe(1);
          await observer.createTask({ id: 'job', owner: 'alice', kind: 'k' });
          await observer.append('job', { type: 'item', key: 'n1', ok: true });
          await eventually('both notifications reach the connection', () => listen.heard() >= heard + 2);
        },
        page === 'a later page' ? isLaterRereadPage : isFirstRereadStatement,
      );
      const before = recorder.changes.length;
      observer.changes.forgetSeqs(); // as a server does once it finds the store's epoch renewed
      await eventually('the observer reconnects', () => observer.changes.stats().reconnects >= 1);
      // The first run's end again (the feed forgot what it published), then the new run, every seq once.
      expect(await newRunEnded({ observer, writer, recorder }, before)).toEqual(['4T', '1', '2T']);
    },
  );

  it(`holds at most ${HELD_NOTIFICATIONS_CAPACITY} notifications during a page, then re-reads from the first page's snapshot`, async () => {
    // Only a re-read past the page's snapshot finds them; without it the new run's seqs up to the purged
    // run's 4 pass for duplicates. The first run's end comes again (the feed forgot what it published).
    expect(await afterHeldOverflow('re-read from the start')).toEqual(['4T', '1', '2T']);
  });
});

/**
 * A listener's re-read (from its mark after its connection was taken down, or from the start after
 * `forgetSeqs()`) during which a purge and a new run of the first run's id commit, their notices among more
 * notifications than are held. Returns what the observer published of the id from the re-read on, after
 * the new run ended and a poll (which can only add a seq the feed missed, never hide a dropped or phantom
 * one); checks that the flood was dropped, not held and reported.
 */
async function afterHeldOverflow(
  reread: 're-read from the mark' | 're-read from the start',
): Promise<string[]> {
  const schema = await migrated();
  const listen = rereadHoldingListenClients();
  const { observer, writer, recorder } = await observingFirstRun(schema, listen, {
    watermarkIntervalMs: 3_600_000,
    pollIntervalMs: 3_600_000,
  });
  if (reread === 're-read from the mark') await takeListenerDown(observer, listen);
  const malformed = observer.changes.stats().malformedNotifications;
  const flood = HELD_NOTIFICATIONS_CAPACITY + 10;
  listen.duringReread(async () => {
    const heard = listen.heard();
    expect(await writer.purgeFinished({ olderThanMs: 0 })).toBe(1);
    await writer.createTask({ id: 'job', owner: 'alice', kind: 'k' });
    await writer.append('job', { type: 'item', key: 'n1', ok: true });
    // Other stores' messages, ignored once reported.
    await admin.query('SELECT pg_notify($1, $2 || i) FROM generate_series(1, $3::int) AS i', [
      changeChannel(schema),
      'not-ours-',
      flood,
    ]);
    await eventually('the notifications reach the connection', () => listen.heard() >= heard + 2 + flood);
  });
  const before = recorder.changes.length;
  if (reread === 're-read from the mark') {
    listen.unblock();
    await eventually('the observer reconnects', () => observer.changes.health().connected);
  } else {
    observer.changes.forgetSeqs();
    await eventually('the observer reconnects', () => observer.changes.stats().reconnects >= 1);
  }
  const changes = await newRunEnded({ observer, writer, recorder }, before);
  expect(observer.changes.stats().malformedNotifications - malformed).toBeLessThan(flood);
  return changes;
}

/**
 * Waits (up to 3 s, not failing) for the new run of `job` to start on the observer, ends it through the
 * writer, waits for its end, polls, and returns what the observer published of `job` since `before`. A
 * poll cannot hide a dropped or phantom seq: what it finds was published or is the task's latest.
 */
async function newRunEnded(
  {
    observer,
    writer,
    recorder,
  }: Pick<Awaited<ReturnType<typeof observingFirstRun>>, 'observer' | 'writer' | 'recorder'>,
  before: number,
): Promise<string[]> {
  await eventually(
    'the new run starts on the observer',
    () => changesOf(recorder, 'job', before).includes('1'),
    3000,
  ).catch(() => {});
  await writer.append('job', { type: 'completed' });
  await eventually(
    'the second run ends on the observer',
    () => changesOf(recorder, 'job', before).includes('2T'),
    3000,
  ).catch(() => {});
  await observer.pollNow();
  return changesOf(recorder, 'job', before);
}

describe('a logical restore into another cluster', () => {
  /**
   * What `pg_dump` of the schema restored into another cluster leaves: every `xid` column and
   * `purged_horizon` copied from the old cluster, whose transaction ids here run far above the new one's.
   */
  async function copyFromHigherCluster(schema: string): Promise<void> {
    const name = (table: string) => `${pg.escapeIdentifier(schema)}.${table}`;
    const shift = `(xid::text::numeric + ${2n ** 40n})::text::xid8`;
    await admin.query(`UPDATE ${name('events')} SET xid = ${shift}`);
    await admin.query(`UPDATE ${name('purged')} SET xid = ${shift}`);
    await admin.query(
      `UPDATE ${name('meta')} SET value = (pg_current_xact_id()::text::numeric + ${2n ** 40n})::text
       WHERE key = 'purged_horizon'`,
    );
  }

  it('re-reads after a reconnect what this cluster committed since the mark, not the copied rows, and forgets nothing', async () => {
    const schema = await migrated();
    const listen = gatedListenClients();
    const { observer, writer, recorder } = await observingFirstRun(schema, listen, {
      watermarkIntervalMs: 10,
      pollIntervalMs: 3_600_000,
    });
    // A purge record among the copied rows too.
    await writer.createTask({ id: 'old', owner: 'alice', kind: 'k' });
    await writer.append('old', { type: 'completed' });
    await writer.createTask({ id: 'kept', owner: 'alice', kind: 'k' });
    await writer.append('kept', { type: 'completed' });
    await eventually('the observer sees the task end', () => recorder.has('kept', 1));
    expect(await writer.purgeFinished({ olderThanMs: 0 })).toBe(3);
    await writer.createTask({ id: 'job', owner: 'alice', kind: 'k' });
    for (const key of ['n1', 'n2', 'n3']) await writer.append('job', { type: 'item', key, ok: true });
    await writer.append('job', { type: 'completed' });
    await writer.createTask({ id: 'old', owner: 'alice', kind: 'k' });
    await writer.append('old', { type: 'item', key: 'n1', ok: true });
    await eventually(
      'the observer sees the new runs',
      () => recorder.has('job', 4) && recorder.has('old', 1),
    );
    await copyFromHigherCluster(schema);
    // The renewed epoch (renewEpoch() after the restore), found by a server: a re-read from the start.
    const restored = recorder.changes.length;
    observer.changes.forgetSeqs();
    await eventually('the re-read from the start reports the job', () =>
      changesOf(recorder, 'job', restored).includes('4T'),
    );
    const mark = BigInt(observer.changes.health().watermark ?? '0');
    await eventually('the mark moves on', () => BigInt(observer.changes.health().watermark ?? '0') > mark);
    await takeListenerDown(observer, listen);
    await writer.append('old', { type: 'completed' }); // unheard: only the re-read finds it
    const before = recorder.changes.length;
    const replayed = observer.changes.stats().replayed;
    listen.unblock();
    await eventually('the observer reconnects', () => observer.changes.health().connected);
    await eventually('the re-read finds the unheard commit', () => recorder.has('old', 2), 3000);
    // Before, the copied horizon (above every mark of this cluster) made every re-read forget every task,
    // and the copied rows (above every mark) were re-read each time: each task's copied events published
    // again.
    expect(recorder.changes.slice(before).map((change) => `${change.taskId} ${change.seq}`)).toEqual([
      'old 2',
    ]);
    expect(observer.changes.stats().replayed - replayed).toBe(1);
  });

  it('a copied horizon is replaced by the first record this cluster deletes: a listener away past it forgets every task', async () => {
    const schema = await migrated();
    const listen = gatedListenClients();
    const { observer, writer, recorder } = await observingFirstRun(schema, listen, {
      watermarkIntervalMs: 10,
      pollIntervalMs: 3_600_000,
    });
    // A copied record, deleted with this cluster's below: its id must not become the horizon.
    await writer.createTask({ id: 'old', owner: 'alice', kind: 'k' });
    await writer.append('old', { type: 'completed' });
    await eventually('the observer sees the task end', () => recorder.has('old', 1));
    await admin.query(
      `DELETE FROM ${pg.escapeIdentifier(schema)}.events WHERE task_id = 'old';
       DELETE FROM ${pg.escapeIdentifier(schema)}.tasks WHERE id = 'old';
       INSERT INTO ${pg.escapeIdentifier(schema)}.purged (task_id, purged_at) VALUES ('old', ${Date.now()})`,
    );
    await copyFromHigherCluster(schema);
    const restored = recorder.changes.length;
    observer.changes.forgetSeqs();
    await eventually('the re-read from the start reports the job', () =>
      changesOf(recorder, 'job', restored).includes('4T'),
    );
    const mark = BigInt(observer.changes.health().watermark ?? '0');
    await eventually('the mark moves on', () => BigInt(observer.changes.health().watermark ?? '0') > mark);
    // As in "forgets every task when records of purges it may have missed were deleted", in this cluster.
    const before = await purgeUnheardThenExpireItsRecord(schema, observer, listen, recorder);
    await eventually(
      'the second run ends on the observer',
      () => changesOf(recorder, 'job', before).includes('1T'),
      3000,
    ).catch(() => {});
    const horizon = await admin.query(
      `SELECT value::xid8 < pg_current_xact_id() AS ours FROM ${schema}.meta WHERE key = 'purged_horizon'`,
    );
    expect(horizon.rows).toEqual([{ ours: true }]);
    expect(changesOf(recorder, 'job', before)).toEqual(['1T']);
  });
});

describe('the records of purges', () => {
  it('purges with the table in a publication, which requires a replica identity of every table it deletes from', async () => {
    const schema = await migrated();
    const store = await open({ schema });
    // FOR TABLE, not FOR ALL TABLES as CDC tools often do: the same check, without touching other tests' tables.
    await admin.query(`CREATE PUBLICATION "${schema}_pub" FOR TABLE "${schema}".purged`);
    try {
      await store.createTask({ id: 'job', owner: 'alice', kind: 'k' });
      await store.append('job', { type: 'completed' });
      expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(1);
    } finally {
      await admin.query(`DROP PUBLICATION "${schema}_pub"`);
    }
  });
});

describe('the watermark after a restore', () => {
  // Transaction ids the feed saw before the simulated restore, above the server's.
  const offset = 1_000_000_000n;

  async function highMarkedObserver(schema: string) {
    const listen = restorableListenClients(offset);
    const { observer, writer, recorder } = await observingFirstChange(schema, {
      listenClient: listen.factory,
      watermarkIntervalMs: 10,
      // No safety net: a change must come by notification or by a re-read.
      pollIntervalMs: 3_600_000,
    });
    const high = offset + (await currentXmin());
    const mark = () => BigInt(observer.changes.health().watermark ?? '0');
    await eventually('the mark passes the first change', () => mark() >= high);
    return { listen, observer, writer, recorder, high, mark };
  }

  it("forgetSeqs() resets it: the restored cluster's commits below the old mark are re-read", async () => {
    const schema = await migrated();
    const { listen, observer, writer, recorder, high, mark } = await highMarkedObserver(schema);
    listen.restore();
    // A change of the restored store whose notification this listener never got (committed while it
    // was away, its re-read then skipped by the old mark): only a re-read from a reset mark finds it.
    listen.deafen();
    await writer.append('x', { type: 'progress' });
    observer.changes.forgetSeqs(); // the server found the renewed epoch
    await eventually('the re-read finds the change below the old mark', () => recorder.has('x', 2), 3000);
    // The full re-read publishes each task's latest seq only: the rest were forgotten, not missed.
    expect(recorder.seqs('x')).toEqual([1, 2]);
    expect(observer.changes.stats().replayed).toBe(1);
    await eventually('the mark follows the restored cluster', () => mark() < high);
  });

  it('a reconnect whose snapshot is below the mark re-reads from the start, even with the epoch kept', async () => {
    const schema = await migrated();
    const { listen, observer, writer, recorder, high, mark } = await highMarkedObserver(schema);
    listen.block();
    await terminate(observer.changes.health().listenerPid ?? 0);
    await eventually('the observer notices', () => !observer.changes.health().connected);
    listen.restore();
    await writer.append('x', { type: 'progress' }); // while the listener is away: no notification
    listen.unblock();
    await eventually('the re-read finds the change below the old mark', () => recorder.has('x', 2), 3000);
    expect(recorder.seqs('x')).toEqual([1, 2]);
    expect(mark() < high, `mark ${mark()} must follow the restored cluster, below ${high}`).toBe(true);
  });
});

describe('concurrent writers and reapers', () => {
  it('two pools appending to one task at once keep seq 1..n, each in its own call order', async () => {
    const schema = await migrated();
    const a = await open({ schema });
    const b = await open({ schema });
    await a.createTask({ id: 'shared', owner: 'alice', kind: 'k' });
    const perStore = 150;
    const run = (store: PostgresProgressStore, name: string) =>
      Promise.all(
        oneTo(perStore).map((i) => store.append('shared', { type: 'item', key: `${name}-${i}`, ok: true })),
      );
    const [fromA, fromB] = await Promise.all([run(a, 'a'), run(b, 'b')]);
    const seqs = (results: AppendResult[]) => results.map((result) => result.event.seq);
    expect([...seqs(fromA), ...seqs(fromB)].sort((x, y) => x - y)).toEqual(oneTo(2 * perStore));
    for (const results of [fromA, fromB]) {
      const own = seqs(results);
      expect(own, 'one store appends commit in call order').toEqual([...own].sort((x, y) => x - y));
    }
    const events = await a.readEvents('shared', 0);
    expect(events.map((event) => event.seq)).toEqual(oneTo(2 * perStore));
    const task = await b.getTask('shared');
    expect(task).toMatchObject({ seq: 2 * perStore, done: 2 * perStore, succeeded: 2 * perStore });
  });

  it('two reapers on the same expired leases interrupt each task exactly once', async () => {
    const schema = await migrated();
    const clock = new ManualClock();
    const a = await open({ schema, clock: clock.now });
    const b = await open({ schema, clock: clock.now });
    const ids = oneTo(40).map((i) => `lease-${String(i).padStart(2, '0')}`);
    for (const id of ids)
      await a.createTask({ id, owner: 'alice', kind: 'k', lease: { owner: 'worker-1', ttlMs: 1000 } });
    await a.createTask({
      id: 'renewed',
      owner: 'alice',
      kind: 'k',
      lease: { owner: 'worker-2', ttlMs: 5000 },
    });
    clock.advance(1000);
    const reapAll = async (store: PostgresProgressStore) => {
      const reaped: AppendResult[] = [];
      // Bounded: a reaper that keeps finding leases past any plausible count is a bug, not a slow test.
      for (let round = 0; round < 1_000; round++) {
        const batch = await store.reapExpiredLeases({ limit: 3 });
        if (batch.length === 0) return reaped;
        reaped.push(...batch);
      }
      throw new Error('reapExpiredLeases still returned leases after 1,000 rounds');
    };
    const [fromA, fromB] = await Promise.all([reapAll(a), reapAll(b)]);
    const reapedIds = [...fromA, ...fromB].map((result) => result.event.taskId).sort();
    expect(reapedIds).toEqual(ids);
    for (const id of ids) {
      const events = await a.readEvents(id, 0);
      expect(
        events.map((event) => event.type),
        id,
      ).toEqual(['interrupted']);
    }
    expect((await a.getTask('renewed'))?.status).toBe('running');
    // And for one task, both at the very same moment:
    await a.createTask({ id: 'one', owner: 'alice', kind: 'k', lease: { owner: 'worker-1', ttlMs: 1000 } });
    clock.advance(1000);
    const both = await Promise.all([a.reapExpiredLeases(), b.reapExpiredLeases()]);
    expect(both.flat().map((result) => result.event.taskId)).toEqual(['one']);
    expect((await a.readEvents('one', 0)).map((event) => event.type)).toEqual(['interrupted']);
  });
});

describe('a backend killed mid-transaction', () => {
  it('leaves no partial append visible, sends no notification, and releases the task', async () => {
    const schema = await migrated();
    const { store, holdAtCommit, release } = await commitHoldingStore(schema);
    const observer = await open({ schema });
    const recorder = new Recorder(observer);
    // Created by another store, so that `store` appends in a locking transaction, held at its COMMIT.
    await observer.createTask({ id: 'victim', owner: 'alice', kind: 'k' });
    await observer.createTask({ id: 'sentinel', owner: 'alice', kind: 'k' });
    const { pending: append, pid } = await holdAtCommit(() =>
      store.append('victim', { type: 'item', key: 'node-1', ok: true }),
    );
    // The transaction wrote its rows and is about to commit; nobody else sees them.
    const before = await admin.query(`SELECT seq::int AS seq FROM ${schema}.tasks WHERE id = 'victim'`);
    expect(before.rows).toEqual([{ seq: 0 }]);
    await terminate(pid);
    release();
    const error = await append.then(
      () => undefined,
      (reason: unknown) => reason,
    );
    expect(isProgressError(error, ErrorCode.StoreUnavailable), String(error)).toBe(true);
    const task = await admin.query(
      `SELECT seq::int AS seq, done::int AS done FROM ${schema}.tasks WHERE id = 'victim'`,
    );
    const events = await admin.query(
      `SELECT count(*)::int AS n FROM ${schema}.events WHERE task_id = 'victim'`,
    );
    expect(task.rows).toEqual([{ seq: 0, done: 0 }]);
    expect(events.rows).toEqual([{ n: 0 }]);
    // Changes of one store arrive in commit order: once the sentinel's has, a victim's would have.
    await store.append('sentinel', { type: 'progress' });
    await eventually('the sentinel change arrives', () => recorder.has('sentinel', 1));
    expect(recorder.seqs('victim')).toEqual([]);
    // The lock died with the backend: the next append takes seq 1, through the same (healed) pool.
    expect((await store.append('victim', { type: 'item', key: 'node-1', ok: true })).event.seq).toBe(1);
  });
});

/**
 * A pool whose next statement matching `pattern` after `holdNext()` gets its answer and then waits for the
 * returned `held` to open; `reached` opens when it waits.
 */
function answerHoldingPool(pattern: RegExp) {
  let hold: Gate | undefined;
  let reached: Gate | undefined;
  const hooked = queryHookedPool(pool(), async (_client, statement, run) => {
    const result = await run();
    if (hold !== undefined && pattern.test(statement.text)) {
      const held = hold;
      hold = undefined;
      reached?.open();
      await held.promise;
    }
    return result;
  });
  const holdNext = () => {
    hold = gate();
    reached = gate();
    return { held: hold, reached };
  };
  return { pool: hooked, holdNext };
}

describe('the safety-net poll', () => {
  it('does not report what it read before a purge after the purge was heard: a reused id starts from seq 1', async () => {
    const schema = await migrated();
    const hooked = answerHoldingPool(/SELECT id, seq, status, created_at FROM \S+ WHERE id = ANY/);
    const observer = await open({
      schema,
      pool: hooked.pool,
      pollIntervalMs: 3_600_000,
      watermarkIntervalMs: 10,
    });
    const writer = await open({ schema });
    const recorder = new Recorder(observer);
    observer.changes.follow('job');
    await writer.createTask({ id: 'job', owner: 'alice', kind: 'k' });
    for (const key of ['n1', 'n2', 'n3']) await writer.append('job', { type: 'item', key, ok: true });
    await writer.append('job', { type: 'completed' });
    await eventually('the observer sees the first run end', () => recorder.has('job', 4));
    const before = recorder.changes.length;
    const { held, reached } = hooked.holdNext();
    const polling = observer.pollNow();
    await reached.promise; // the poll has read the job at 4T, and waits
    const notifications = observer.changes.stats().notifications;
    expect(await writer.purgeFinished({ olderThanMs: 0 })).toBe(1);
    await eventually(
      'the purge notice is heard',
      () => observer.changes.stats().notifications > notifications,
    );
    // Reported now, into the memory the notice emptied, 4T would be published, and the new run's 1 and 2T
    // dropped as duplicates of it.
    held.open();
    await polling;
    await writer.createTask({ id: 'job', owner: 'alice', kind: 'k' });
    await writer.append('job', { type: 'item', key: 'n1', ok: true });
    await writer.append('job', { type: 'completed' });
    await eventually(
      'the second run ends on the observer',
      () => changesOf(recorder, 'job', before).includes('2T'),
      3000,
    ).catch(() => {});
    await observer.pollNow();
    expect(changesOf(recorder, 'job', before)).toEqual(['1', '2T']);
  });

  it('finds a followed task change whose notification never came, counts it, and ignores unfollowed tasks', async () => {
    const schema = await migrated();
    const store = await open({ schema, pollIntervalMs: 20 });
    const recorder = new Recorder(store);
    for (const id of ['followed', 'other']) {
      await store.createTask({ id, owner: 'alice', kind: 'k' });
      await store.append(id, { type: 'progress', done: 1 });
    }
    const unfollow = store.changes.follow('followed');
    // An append that bypasses NOTIFY: straight into the tables, as a buggy or foreign writer might.
    const bypass = async (id: string, seq: number) => {
      const client = await admin.connect();
      try {
        await client.query('BEGIN');
        await client.query(`UPDATE ${schema}.tasks SET seq = $2 WHERE id = $1`, [id, seq]);
        await client.query(
          `INSERT INTO ${schema}.events (task_id, seq, type, time, body) VALUES ($1, $2, 'progress', 0, '{}')`,
          [id, seq],
        );
        await client.query('COMMIT');
      } finally {
        client.release();
      }
    };
    await bypass('followed', 2);
    await bypass('other', 2);
    await eventually('the poll publishes the silent change', () => recorder.has('followed', 2));
    expect(store.changes.stats().missedByNotifications).toBe(1);
    unfollow();
    await bypass('followed', 3);
    await store.pollNow();
    await store.pollNow();
    expect(recorder.seqs('followed')).toEqual([1, 2]);
    expect(recorder.seqs('other')).toEqual([1]);
    expect(store.changes.stats().missedByNotifications).toBe(1);
    expect(store.changes.stats().pollErrors).toBe(0);
  });
});

describe('close', () => {
  it('waits for the appends it accepted, in a transaction or queued: each commits and settles before it returns', async () => {
    const schema = await migrated();
    const { store, holdAtCommit, release } = await commitHoldingStore(schema);
    const other = await open({ schema });
    // Created by another store, so that `store` appends in locking transactions, the first held at its COMMIT.
    for (const id of ['sent', 'queued']) await other.createTask({ id, owner: 'alice', kind: 'k' });
    const { pending: sent } = await holdAtCommit(() => store.append('sent', { type: 'progress' }));
    const queued = store.append('queued', { type: 'progress' });
    const settled: string[] = [];
    for (const [id, append] of [
      ['sent', sent],
      ['queued', queued],
    ] as const) {
      append.then(
        () => settled.push(id),
        () => settled.push(`${id} rejected`),
      );
    }
    const closing = store.close();
    // A liveness bound turned around: a close() that did not wait for the transaction would be done by now.
    expect(await settlesWithin(closing, 500)).toBe('still waiting');
    expect(settled).not.toContain('sent');
    const late = await store.append('queued', { type: 'progress' }).then(
      () => undefined,
      (reason: unknown) => reason,
    );
    expect(isProgressError(late, ErrorCode.Closed), String(late)).toBe(true);
    release();
    await closing;
    expect([...settled].sort()).toEqual(['queued', 'sent']);
    expect((await sent).event.seq).toBe(1);
    expect((await queued).event.seq).toBe(1);
    const { rows } = await admin.query(`SELECT id, seq::int AS seq FROM ${schema}.tasks ORDER BY id`);
    expect(rows).toEqual([
      { id: 'queued', seq: 1 },
      { id: 'sent', seq: 1 },
    ]);
  });

  it('does not wait for a getTask read the database never answers; the read settles when it answers', async () => {
    // close() awaited the batched task reads in flight: one on a frozen database held it until TCP gave up.
    const schema = await migrated();
    const hooked = answerHoldingPool(/^\s*SELECT id, owner/);
    const store = await open({ schema, pool: hooked.pool, pollIntervalMs: 3_600_000 });
    await store.createTask({ id: 'job', owner: 'alice', kind: 'k' });
    const { held, reached } = hooked.holdNext();
    releases.push(held.open);
    const read = store.getTask('job');
    await reached.promise; // the read is out, its answer held
    expect(await settlesWithin(store.close(), 3000)).toBe('closed');
    held.open();
    expect(await read).toMatchObject({ id: 'job', status: 'running' });
  });

  it('does not wait for a safety-net poll the database never answers, and reports nothing it reads after', async () => {
    // close() awaited the poll in progress: a poll's read on a frozen database (a host that stopped
    // answering, a connection black-holed) held close() until TCP gave up on it, some 15 minutes, though
    // nothing it could read matters once the store is closed.
    const schema = await migrated();
    const hooked = answerHoldingPool(/SELECT id, seq, status, created_at FROM \S+ WHERE id = ANY/);
    const store = await open({ schema, pool: hooked.pool, pollIntervalMs: 3_600_000 });
    const writer = await open({ schema });
    const recorder = new Recorder(store);
    store.changes.follow('job');
    await writer.createTask({ id: 'job', owner: 'alice', kind: 'k' });
    await writer.append('job', { type: 'progress', done: 1 });
    await eventually('the store hears the append', () => recorder.has('job', 1));
    // A change no notification announces (straight into the tables), which the poll's read finds.
    await admin.query(`UPDATE ${schema}.tasks SET seq = 2 WHERE id = 'job'`);
    await admin.query(
      `INSERT INTO ${schema}.events (task_id, seq, type, time, body) VALUES ('job', 2, 'progress', 0, '{}')`,
    );
    const { held, reached } = hooked.holdNext();
    releases.push(held.open);
    const polling = store.pollNow();
    await reached.promise; // the poll's read is out, its answer held
    expect(await settlesWithin(store.close(), 3000)).toBe('closed');
    held.open();
    await polling;
    expect(recorder.seqs('job')).toEqual([1]);
  });

  it('leaves no timer and no connection behind, and never ends the caller pool', async () => {
    const schema = await migrated();
    const name = `fl-close-${schema}`;
    const callerPool = pool(3);
    const backends = async () =>
      (
        await admin.query('SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1', [
          name,
        ])
      ).rows[0].n as number;
    // Fake timers count what the store schedules (its timers are unref'd, invisible to Node's resource list).
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    try {
      const store = await PostgresProgressStore.open({
        pool: callerPool,
        schema,
        migrate: false,
        listenClient: { connectionString: pgUrl(), application_name: name },
      });
      const unfollow = store.changes.follow('x');
      await store.createTask({ id: 'x', owner: 'alice', kind: 'k' });
      await store.append('x', { type: 'progress' });
      expect(vi.getTimerCount(), 'the poll and the watermark timers run').toBe(2);
      // Let both fire once: they reschedule themselves, and close must clear the new ones too.
      vi.advanceTimersByTime(POSTGRES_STORE_DEFAULTS.watermarkIntervalMs);
      await eventuallyWithFakeTimers(() => vi.getTimerCount() === 2);
      expect(await backends()).toBe(1);
      await store.close();
      expect(vi.getTimerCount(), 'timers left after close').toBe(0);
      unfollow();
      vi.useRealTimers();
      await eventually('the LISTEN backend is gone', async () => (await backends()) === 0);
      expect((await callerPool.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
      expect(callerPool.ending).toBe(false);
      const error = await store.getTask('x').then(
        () => undefined,
        (reason: unknown) => reason,
      );
      expect(isProgressError(error, ErrorCode.Closed)).toBe(true);
    } finally {
      vi.useRealTimers();
    }
  });
});
