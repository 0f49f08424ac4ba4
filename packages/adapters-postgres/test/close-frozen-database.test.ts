import { Kysely, PostgresDialect } from 'kysely';
import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { type PgListenClient, PostgresProgressStore } from '../src/index.js';
import { blackHoleProxy, pgUrl, settlesWithin, storeFixtures } from './support.js';

/**
 * `close()` while the database stopped answering the statements already sent (its host frozen, a network
 * that drops every packet): close waited for the appends in flight until TCP gave up (here, for ever: the
 * proxy's kernel acknowledges everything). It waits `closeTimeoutMs`, then destroys the connections the
 * store holds, which fails their statements.
 */

const { migrated } = storeFixtures('frozenclose');

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  // Destroying the proxy's sockets also ends a close() that the black hole held (unfixed code).
  for (const cleanup of cleanups.splice(0)) await cleanup();
});

/**
 * A store whose pool (of 4) reaches the database through a proxy that can black-hole it, opened with
 * `closeTimeoutMs` 300 and `options` (`db`: given as a Kysely instance on it, with the client `error`
 * listener the option asks for); its LISTEN connection goes straight to the database.
 */
async function storeBehindProxy({
  db = false,
  ...options
}: {
  maxConcurrentBatches?: number;
  closeTimeoutMs?: number;
  db?: boolean;
} = {}) {
  const schema = await migrated();
  const proxy = await blackHoleProxy();
  cleanups.push(() => proxy.close());
  const pool = new pg.Pool({ connectionString: proxy.url, max: 4 });
  pool.on('error', () => {});
  if (db) pool.on('connect', (client) => client.on('error', () => {}));
  // Not opened through the fixtures, whose cleanup would wait for a close that never returns.
  const store = await PostgresProgressStore.open({
    ...(db ? { db: new Kysely({ dialect: new PostgresDialect({ pool }) }) } : { pool }),
    migrate: false,
    schema,
    // The LISTEN connection's own bounded end is `listen-close-blackholed.test.ts`'s subject.
    listenClient: () => new pg.Client({ connectionString: pgUrl() }) as unknown as PgListenClient,
    closeTimeoutMs: 300,
    ...options,
  });
  return { proxy, pool, store };
}

/** A task given one event, then the database black-holed, and a second append sent into it 50 ms ago. */
async function appendedIntoBlackHole({ proxy, store }: Awaited<ReturnType<typeof storeBehindProxy>>) {
  const task = await store.createTask({ owner: 'alice', kind: 'k' });
  await store.append(task.id, { type: 'progress', done: 1 });
  proxy.blackHole();
  const appended = store.append(task.id, { type: 'progress', done: 2 });
  appended.catch(() => undefined);
  // The append's transaction is sent (into the black hole) before close() starts.
  await new Promise((resolve) => setTimeout(resolve, 50));
  return { appended }; // in an object: an async function's return would wait for it
}

/** `store.close()` returns within 10 s, `what` (the message) in flight at it. */
async function expectCloses(store: PostgresProgressStore, what: string) {
  expect(await settlesWithin(store.close(), 10_000), `store.close() with ${what}`).toBe('closed');
}

/** `promise`, in flight at close(), settles (either way) within 2 s of its return. */
async function expectSettles(promise: Promise<unknown>, what: string) {
  const settled = promise.then(
    () => undefined,
    () => undefined,
  );
  expect(await settlesWithin(settled, 2000), what).toBe('closed');
}

describe('close() with statements in flight to a database that stopped answering', () => {
  it('returns after closeTimeoutMs, failing the append in flight, and leaves the pool able to end', async () => {
    const stored = await storeBehindProxy();
    const { pool, store } = stored;
    const { appended } = await appendedIntoBlackHole(stored);
    const started = Date.now();
    await expectCloses(store, 'an append unanswered');
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
    await expect(appended).rejects.toMatchObject({ code: 'store_unavailable' });
    // Only the client holding the append was destroyed, and the pool let it go: what is left of the pool
    // is idle, and the caller's end() of it (through the black hole) is not held by the store.
    expect(pool.totalCount).toBe(pool.idleCount);
  }, 30_000);

  it('with db, returns after closeTimeoutMs, not twice that: it cannot cut the connections, so nothing more can settle', async () => {
    // Past closeTimeoutMs it waited as long again for the statements that destroyHeld fails at once with
    // pool; with db nothing is destroyed, and close() took twice the bound the option documents.
    const stored = await storeBehindProxy({ db: true, closeTimeoutMs: 1500 });
    await appendedIntoBlackHole(stored);
    const started = Date.now();
    await expectCloses(stored.store, 'an append unanswered');
    const tookMs = Date.now() - started;
    expect(tookMs).toBeGreaterThanOrEqual(1400);
    expect(tookMs, 'close() past closeTimeoutMs (1500 ms) with db').toBeLessThan(2900);
  }, 30_000);

  it('rejects with closed the appends queued behind those in flight, instead of sending them after it returned', async () => {
    // One transaction at a time: the second append waits in the queue for the first one's.
    const { proxy, pool, store } = await storeBehindProxy({ maxConcurrentBatches: 1 });
    const first = await store.createTask({ owner: 'alice', kind: 'k' });
    const second = await store.createTask({ owner: 'alice', kind: 'k' });
    await store.append(first.id, { type: 'progress', done: 1 });
    await store.append(second.id, { type: 'progress', done: 1 });

    proxy.blackHole();
    const sent = store.append(first.id, { type: 'progress', done: 2 });
    sent.catch(() => undefined);
    await new Promise((resolve) => setTimeout(resolve, 20));
    const queued = store.append(second.id, { type: 'progress', done: 2 });
    queued.catch(() => undefined);
    await new Promise((resolve) => setTimeout(resolve, 50));
    await expectCloses(store, 'an append unanswered');
    await expect(sent).rejects.toMatchObject({ code: 'store_unavailable' });
    // Sent once close() stopped waiting, it went to a new connection through the black hole, and never
    // settled (nor would the caller's end() of the pool, which waits for that connection).
    await expectSettles(queued, 'the append queued at close()');
    await expect(queued).rejects.toMatchObject({ code: 'closed' });
    expect(pool.totalCount).toBe(pool.idleCount);
  }, 30_000);

  it('fails a read in flight whose connection it destroyed, instead of sending it again into the black hole', async () => {
    // A read whose connection turned out dead is sent again (readOnLiveConnection); one cut by close() was
    // too, on a new connection to the database that no longer answered, and never settled.
    const { proxy, pool, store } = await storeBehindProxy();
    const task = await store.createTask({ owner: 'alice', kind: 'k' });
    await store.append(task.id, { type: 'progress', done: 1 });
    // Two connections open, one for each: a connect through the black hole would never end.
    await Promise.all([pool.query('SELECT 1'), pool.query('SELECT 1')]);

    proxy.blackHole();
    // The append holds close() past closeTimeoutMs; the read is in flight on a connection of its own.
    const appended = store.append(task.id, { type: 'progress', done: 2 });
    appended.catch(() => undefined);
    const read = store.readEvents(task.id, 0);
    read.catch(() => undefined);
    await new Promise((resolve) => setTimeout(resolve, 50));
    await expectCloses(store, 'an append unanswered');
    await expectSettles(read, 'the read in flight at close()');
    await expect(read).rejects.toMatchObject({ code: 'store_unavailable' });
    expect(pool.totalCount).toBe(pool.idleCount);
  }, 30_000);

  it('rejects with closed an append still waiting for a new connection through the black hole', async () => {
    // Its transaction waited for pool.connect(), which (no connectionTimeoutMillis, pg's default) waits for a
    // connection the database never answers: close() returned, and the append never settled.
    const { proxy, pool, store } = await storeBehindProxy();
    const task = await store.createTask({ owner: 'alice', kind: 'k' });
    // The pool's idle connections taken, so that the append needs a new one.
    const taken = await Promise.all(Array.from({ length: pool.idleCount }, () => pool.connect()));
    proxy.blackHole();
    const appended = store.append(task.id, { type: 'progress', done: 1 });
    appended.catch(() => undefined);
    await new Promise((resolve) => setTimeout(resolve, 50));
    await expectCloses(store, 'an append connecting');
    await expectSettles(appended, 'the append connecting at close()');
    await expect(appended).rejects.toMatchObject({ code: 'closed' });
    for (const client of taken) client.release();
  }, 30_000);
});
