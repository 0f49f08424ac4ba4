import { ErrorCode } from '@finishline/core';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { SqliteProgressStore } from '../src/index.js';
import { spyDatabase, sqliteError } from './support/spy-database.js';
import { eventually, tempDatabase } from './support/temp-database.js';

/**
 * A poll that finds a large backlog of other connections' commits (another process's large transaction, or
 * this process paused for a while) read and published all of it in one event-loop turn: 100,000 events held
 * the loop some 0.8 s, and the server's sockets and timers (heartbeats, acks) waited. It reads and publishes
 * a page (1,000 events) per turn, every event once, in commit order, and this store's own commits made
 * meanwhile after the events committed before them.
 */

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** Counts event-loop turns (one per `setImmediate`) until stopped. */
function turnCounter(): { turn(): number; stop(): void } {
  let turn = 0;
  let timer: ReturnType<typeof setImmediate> | undefined;
  const tick = () => {
    turn += 1;
    timer = setImmediate(tick);
  };
  timer = setImmediate(tick);
  return { turn: () => turn, stop: () => clearImmediate(timer) };
}

let acted: Promise<unknown> | undefined;

/** `act(store)` runs in the change listener once the store heard the poll's first page (1,000 changes). */
/** The statement that reads other connections' events past the mark. */
const EVENTS_SINCE = 'select "id", "task_id", "seq", "type", "time" from "finishline_events" where "id" >';

async function backlog(
  theirs: number,
  act?: (store: SqliteProgressStore) => Promise<unknown>,
  failPage?: number,
  dataVersionPollMs = 5,
) {
  acted = undefined;
  const file = tempDatabase();
  cleanups.push(() => file.remove());
  const raw = new Database(file.file);
  cleanups.push(() => {
    raw.close();
  });
  const database = spyDatabase(raw);
  const errors: unknown[] = [];
  const store = new SqliteProgressStore({
    database,
    dataVersionPollMs,
    onError: (error) => errors.push(error),
  });
  cleanups.push(() => store.close());
  // Another process's store (its own connection), committing the whole backlog in one transaction.
  const other = new SqliteProgressStore({ database: file.file, dataVersionPollMs: 0, maxBatchSize: 100_000 });
  cleanups.push(() => other.close());
  await store.createTask({ id: 'mine', owner: 'alice', kind: 'k' });
  await other.createTask({ id: 'theirs', owner: 'alice', kind: 'k' });
  const counter = turnCounter();
  cleanups.push(() => counter.stop());
  const heard: string[] = [];
  const perTurn = new Map<number, number>();
  store.changes.subscribe((change) => {
    heard.push(`${change.taskId}:${change.seq}`);
    perTurn.set(counter.turn(), (perTurn.get(counter.turn()) ?? 0) + 1);
    if (heard.length === 1000 && act !== undefined) acted = act(store);
  });
  if (failPage !== undefined) database.failNext(EVENTS_SINCE, new Error('disk I/O error'), failPage - 1);
  await Promise.all(
    Array.from({ length: theirs }, (_, i) => other.append('theirs', { type: 'progress', done: i })),
  );
  return { store, heard, perTurn, errors, database, raw };
}

describe('a poll that finds a large backlog of other connections’ commits', () => {
  it('publishes it a page per event-loop turn, every event once, in commit order', async () => {
    const theirs = 5000;
    const { heard, perTurn } = await backlog(theirs);
    await eventually('every event heard', () => heard.length >= theirs);
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(heard).toEqual(Array.from({ length: theirs }, (_, i) => `theirs:${i + 1}`));
    expect(Math.max(...perTurn.values()), 'changes published in one turn').toBeLessThanOrEqual(1000);
  });

  it("publishes this store's own commit made meanwhile after the events committed before it, still a page per turn", async () => {
    const theirs = 5000;
    // Appended once the poll published its first page, while the rest waits: the append waits for it (it
    // read the rest in one turn, before its own write).
    const { heard, perTurn } = await backlog(theirs, (store) =>
      store.append('mine', { type: 'progress', done: 1 }),
    );
    await eventually('appended', () => acted !== undefined);
    await acted;
    await eventually('every event heard', () => heard.length >= theirs + 1);
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(heard).toEqual([...Array.from({ length: theirs }, (_, i) => `theirs:${i + 1}`), 'mine:1']);
    expect(Math.max(...perTurn.values()), 'changes published in one turn').toBeLessThanOrEqual(1000);
  });

  it('is paged for an append that finds it, without polling, and the append is published after it', async () => {
    const theirs = 5000;
    const { store, heard, perTurn, errors } = await backlog(theirs, undefined, undefined, 0);
    // Nothing polls: the append is the first to find the backlog. It read the rest in one turn.
    await expect(store.append('mine', { type: 'progress', done: 1 })).resolves.toMatchObject({
      event: { seq: 1 },
    });
    expect(heard).toEqual([...Array.from({ length: theirs }, (_, i) => `theirs:${i + 1}`), 'mine:1']);
    expect(Math.max(...perTurn.values()), 'changes published in one turn').toBeLessThanOrEqual(1000);
    expect(errors).toEqual([]);
  });

  it('lets the waiting append go once the paging read what was there when it began, beside a process that keeps committing', async () => {
    const theirs = 5000;
    const { store, heard, raw } = await backlog(theirs, undefined, undefined, 0);
    // Another process committing a page of events for each page this store publishes: the paging never
    // reads up to the newest commit while it goes on, and the append waited for it to stop.
    const insert = raw.prepare(
      "INSERT INTO finishline_events (task_id, seq, type, time, done, succeeded, failed) VALUES ('theirs', ?, 'progress', 0, 0, 0, 0)",
    );
    let committed = theirs;
    const rounds = 20;
    let round = 0;
    store.changes.subscribe(() => {
      if (heard.length % 1000 !== 0 || round >= rounds) return;
      round += 1;
      raw.transaction(() => {
        for (let i = 0; i < 1000; i++) insert.run(++committed);
      })();
    });
    await expect(store.append('mine', { type: 'progress', done: 1 })).resolves.toMatchObject({
      event: { seq: 1 },
    });
    expect(round, 'pages the other process committed before the append').toBeLessThan(rounds);
    // Its event after every event committed before its transaction, in order.
    const mine = heard.indexOf('mine:1');
    expect(heard.slice(0, mine)).toEqual(Array.from({ length: mine }, (_, i) => `theirs:${i + 1}`));
  });

  it('is read at once, with the append waiting for its paging, by a read that must see the append', async () => {
    const theirs = 5000;
    // Called once the paging published its first page, after the append: it sees it, so the append
    // commits now, the rest of the backlog read first.
    const { store, heard } = await backlog(theirs, (store) => store.getTask('mine'), undefined, 0);
    const appended = store.append('mine', { type: 'progress', done: 1 });
    await expect(appended).resolves.toMatchObject({ event: { seq: 1 } });
    await eventually('read', () => acted !== undefined);
    await expect(acted).resolves.toMatchObject({ seq: 1 });
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(heard).toEqual([...Array.from({ length: theirs }, (_, i) => `theirs:${i + 1}`), 'mine:1']);
  });

  it('fails the waiting append with a typed error when reading the backlog fails, reports the failure, and loses nothing', async () => {
    const theirs = 5000;
    const { store, heard, errors, database } = await backlog(theirs, undefined, undefined, 0);
    // Two failures after one read each: the paging's page fails, then the append's own read of it again.
    database.failNext(EVENTS_SINCE, sqliteError('SQLITE_IOERR', 'disk I/O error'), 1);
    database.failNext(EVENTS_SINCE, sqliteError('SQLITE_IOERR', 'disk I/O error'), 1);
    await expect(store.append('mine', { type: 'progress', done: 1 })).rejects.toMatchObject({
      code: ErrorCode.StoreUnavailable,
    });
    // The paging's failure, reported as a poll's.
    expect(errors).toMatchObject([{ code: ErrorCode.StoreUnavailable }]);
    // Nothing was lost: the next append reads the rest, and is published after it.
    await expect(store.append('mine', { type: 'progress', done: 1 })).resolves.toMatchObject({
      event: { seq: 1 },
    });
    expect(heard).toEqual([...Array.from({ length: theirs }, (_, i) => `theirs:${i + 1}`), 'mine:1']);
  });

  it('reads the rest at the next poll when reading a later page fails, with no commit since', async () => {
    const theirs = 5000;
    const { heard, errors } = await backlog(theirs, undefined, 3);
    await eventually('every event heard', () => heard.length >= theirs);
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(heard).toEqual(Array.from({ length: theirs }, (_, i) => `theirs:${i + 1}`));
    expect(errors).toHaveLength(1);
  });

  it('is left to the poll by the acks, leases and creates made meanwhile, which publish nothing of their own', async () => {
    const theirs = 5000;
    // Once the poll published its first page: each of these read the rest in one turn, and published it.
    const { heard, perTurn } = await backlog(theirs, async (store) => {
      await store.ack('mine', 0);
      await store.renewLease('mine', 'alice', 60_000);
      await store.releaseLease('mine', 'alice');
      await store.createTask({ id: 'another', owner: 'alice', kind: 'k' });
    });
    await eventually('acted', () => acted !== undefined);
    await acted;
    await eventually('every event heard', () => heard.length >= theirs);
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(heard).toEqual(Array.from({ length: theirs }, (_, i) => `theirs:${i + 1}`));
    expect(Math.max(...perTurn.values()), 'changes published in one turn').toBeLessThanOrEqual(1000);
  });
});
