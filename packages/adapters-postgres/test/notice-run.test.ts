import type { TaskChange } from '@finishline/core';
import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { PostgresProgressStore } from '../src/index.js';
import { decodeNotice } from '../src/notify-payload.js';
import { eventually, freshSchemaWithAdmin, gatedListenClients, newPool, pgUrl } from './support.js';

/**
 * A task id is taken again once retention purged its task, and each run starts again at seq 1: the
 * changes the feed publishes name the run they are of (`TaskChange.run`, the task's `createdAt`), from
 * whichever path reported them: the store's own commits, `NOTIFY` (whose entries carry it), and the
 * re-read of a `LISTEN` connection back from a reconnect.
 */

const cleanups: Array<() => Promise<unknown>> = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {});
});

async function twoStores(options: { gated?: ReturnType<typeof gatedListenClients> } = {}) {
  const { schema, admin } = freshSchemaWithAdmin('run', cleanups);
  const poolA = newPool(4);
  const poolB = newPool(4);
  const a = await PostgresProgressStore.open({
    pool: poolA,
    schema,
    // No safety-net poll in the way: what A publishes comes from NOTIFY or the re-read.
    pollIntervalMs: 3_600_000,
    ...(options.gated === undefined
      ? {}
      : { listenClient: options.gated.factory, reconnect: { initialDelayMs: 5, maxDelayMs: 20 } }),
  });
  const b = await PostgresProgressStore.open({ pool: poolB, schema });
  cleanups.push(async () => {
    await a.close();
    await b.close();
    await poolA.end();
    await poolB.end();
  });
  const heardByA: TaskChange[] = [];
  const heardByB: TaskChange[] = [];
  a.changes.subscribe((change) => heardByA.push(change));
  b.changes.subscribe((change) => heardByB.push(change));
  return { schema, admin, a, b, heardByA, heardByB };
}

describe("the change feed's changes", () => {
  it("carry the task's run: the writer's own, the notification's, and every run of a reused id its own", async () => {
    const { schema, b, heardByA, heardByB } = await twoStores();
    // The notifications themselves, as any listener on the channel gets them.
    const listener = new pg.Client({ connectionString: pgUrl() });
    await listener.connect();
    cleanups.push(() => listener.end());
    const payloads: string[] = [];
    listener.on('notification', (message) => {
      if (message.payload !== undefined) payloads.push(message.payload);
    });
    await listener.query(`LISTEN ${pg.escapeIdentifier(`${schema}_changes`)}`);

    const one = await b.createTask({ id: 'job-1', owner: 'alice', kind: 'k' });
    await b.append('job-1', { type: 'item', key: 'old-1', ok: true });
    await b.append('job-1', { type: 'completed' });
    // Out of run 1's millisecond of the database's clock (a task is not purged in it).
    await new Promise((resolve) => setTimeout(resolve, 2));
    expect(await b.purgeFinished({ olderThanMs: 0 })).toBe(1);
    const two = await b.createTask({ id: 'job-1', owner: 'alice', kind: 'k' });
    expect(two.createdAt).toBeGreaterThan(one.createdAt);
    await b.append('job-1', { type: 'item', key: 'new-1', ok: true });
    await b.append('job-1', { type: 'item', key: 'new-2', ok: true });
    await b.append('job-1', { type: 'item', key: 'new-3', ok: true });
    const runs = (changes: TaskChange[]) => changes.map((change) => `${change.seq}:${change.run}`);
    const expected = [
      `1:${one.createdAt}`,
      `2:${one.createdAt}`,
      `1:${two.createdAt}`,
      `2:${two.createdAt}`,
      `3:${two.createdAt}`,
    ];
    await eventually('A hears every change', () => heardByA.length === 5);
    expect(runs(heardByA)).toEqual(expected);
    expect(runs(heardByB)).toEqual(expected);

    await eventually('the listener gets the notifications', () =>
      payloads.some((payload) => payload.includes(`"job-1",3,3,0`)),
    );
    const entries = payloads
      .map((payload) => decodeNotice(payload))
      .flatMap((notice) => (notice.kind === 'changes' ? notice.changes : []))
      .map((change) => `${change.seq}:${change.run}`);
    expect(entries).toEqual(expected);
  });

  it('carry the run when the re-read of a LISTEN connection back from a reconnect found them', async () => {
    const gated = gatedListenClients();
    const { admin, a, b, heardByA } = await twoStores({ gated });
    await b.createTask({ id: 'job-1', owner: 'alice', kind: 'k' });
    await b.append('job-1', { type: 'item', key: 'old-1', ok: true });
    await eventually('A hears run 1', () => heardByA.length === 1);
    gated.block();
    const pid = a.changes.health().listenerPid;
    await admin.query('SELECT pg_terminate_backend($1)', [pid]);
    await eventually('A notices', () => !a.changes.health().connected);
    await b.append('job-1', { type: 'completed' });
    expect(await b.purgeFinished({ olderThanMs: 0 })).toBe(1);
    const two = await b.createTask({ id: 'job-1', owner: 'alice', kind: 'k' });
    for (const key of ['new-1', 'new-2', 'new-3']) await b.append('job-1', { type: 'item', key, ok: true });
    gated.unblock();
    await eventually('A listens again', () => a.changes.health().connected);
    await eventually('A re-read run 2', () => heardByA.some((change) => change.seq === 3));
    const replayed = heardByA.slice(1);
    expect(replayed.length).toBeGreaterThan(0);
    for (const change of replayed) expect(change.run).toBe(two.createdAt);
  });
});
