import { afterEach, describe, expect, it, vi } from 'vitest';
import { PostgresProgressStore } from '../src/index.js';
import { freshSchemaWithAdmin, newPool } from './support.js';

/**
 * Replicas sharing one database whose clocks disagree (NTP drift, a VM resumed with its clock seconds off,
 * a container with a wrong clock). Without a `clock` option the stores take lease times from the
 * database's clock, so a replica's skew neither ends a healthy replica's running task nor spares a dead
 * one's. The replicas here share one process: a replica's skew is `Date.now` (the default clock's source)
 * moved for the duration of its call.
 */

const cleanups: Array<() => Promise<unknown>> = [];

afterEach(async () => {
  vi.restoreAllMocks();
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {});
});

/** Runs `call` as a replica whose clock is `skewMs` off (ahead when positive). */
async function skewed<T>(skewMs: number, call: () => Promise<T>): Promise<T> {
  const realNow = Date.now.bind(Date);
  const spy = vi.spyOn(Date, 'now').mockImplementation(() => realNow() + skewMs);
  try {
    return await call();
  } finally {
    spy.mockRestore();
  }
}

async function twoReplicas(
  onSchema?: (admin: ReturnType<typeof newPool>, schema: string) => void,
): Promise<[PostgresProgressStore, PostgresProgressStore]> {
  const { schema, admin } = freshSchemaWithAdmin('skew', cleanups);
  onSchema?.(admin, schema);
  const replicas: PostgresProgressStore[] = [];
  for (let i = 0; i < 2; i++) {
    const pool = newPool(4);
    const store = await PostgresProgressStore.open({ pool, schema });
    replicas.push(store);
    cleanups.push(async () => {
      await store.close();
      await pool.end();
    });
  }
  return replicas as [PostgresProgressStore, PostgresProgressStore];
}

const TTL_MS = 15_000;

describe('replicas with skewed clocks (lease times from the database)', () => {
  it("a replica whose clock runs 20 s ahead neither reaps nor takes a healthy replica's lease", async () => {
    const [healthy, ahead] = await twoReplicas();
    const task = await healthy.createTask({ owner: 'u', kind: 'k', lease: { owner: 'a', ttlMs: TTL_MS } });
    await healthy.renewLease(task.id, 'a', TTL_MS, { run: task.createdAt });

    expect(await skewed(20_000, () => ahead.reapExpiredLeases())).toEqual([]);
    await expect(skewed(20_000, () => ahead.renewLease(task.id, 'b', TTL_MS))).rejects.toMatchObject({
      code: 'lease_held',
    });
    expect(await healthy.getTask(task.id)).toMatchObject({ status: 'running', leaseOwner: 'a' });
  });

  it('a lease written by a replica whose clock runs 20 s behind is not expired for the others', async () => {
    const [behind, other] = await twoReplicas();
    const created = await skewed(-20_000, () =>
      behind.createTask({ owner: 'u', kind: 'k', lease: { owner: 'a', ttlMs: TTL_MS } }),
    );
    const fresh = await behind.createTask({ owner: 'u', kind: 'k' });
    await skewed(-20_000, () => behind.renewLease(fresh.id, 'a', TTL_MS));

    expect(await other.reapExpiredLeases()).toEqual([]);
    expect((await other.getTask(created.id))?.status).toBe('running');
    expect((await other.getTask(fresh.id))?.status).toBe('running');
    // The expiry the caller is told is the one written: the database's time plus the TTL.
    expect((await other.getTask(created.id))?.leaseExpiresAt).toBe(created.leaseExpiresAt);
  });

  it('a task id created again after a purge by a replica whose clock runs 60 s behind is a later run', async () => {
    const [first, behind] = await twoReplicas();
    const old = await first.createTask({ id: 'drain-node-7', owner: 'u', kind: 'k' });
    await first.append(old.id, { type: 'completed' });
    // Out of its creation's millisecond of the database's clock (a task is not purged in it).
    await new Promise((resolve) => setTimeout(resolve, 2));
    expect(await first.purgeFinished({ olderThanMs: 0 })).toBe(1);

    const again = await skewed(-60_000, () =>
      behind.createTask({ id: 'drain-node-7', owner: 'u', kind: 'k', lease: { owner: 'b', ttlMs: TTL_MS } }),
    );
    // Runs follow one another in the order they were created: the new run is the later one, and the old
    // run's fence does not reach it.
    expect(again.createdAt).toBeGreaterThan(old.createdAt);
    expect(await behind.getTask(again.id)).toEqual(again);
    await expect(
      first.append(again.id, { type: 'progress', done: 1 }, { run: old.createdAt }),
    ).rejects.toMatchObject({
      code: 'task_not_found',
    });
    await behind.append(again.id, { type: 'progress', done: 1 }, { run: again.createdAt });
  });

  it("a replica whose clock runs ahead does not purge a task created at or after the database's now", async () => {
    let sql: (text: string) => Promise<unknown> = async () => {};
    const [first, ahead] = await twoReplicas((admin, schema) => {
      sql = (text) => admin.query(text.replaceAll('$schema', schema));
    });
    const task = await first.createTask({ id: 'drain-node-8', owner: 'u', kind: 'k' });
    await first.append(task.id, { type: 'completed' });
    // Its run as the database's clock will next read it (the store reads `created_at` from that clock): a
    // purge by the replica's own clock, 60 s ahead, would take it, and the id created again within that
    // millisecond would be the same run.
    await sql(`UPDATE $schema.tasks SET created_at = created_at + 30000 WHERE id = 'drain-node-8'`);
    expect(await skewed(60_000, () => ahead.purgeFinished({ olderThanMs: 0 }))).toBe(0);
    expect((await first.getTask(task.id))?.status).toBe('completed');
    await sql(`UPDATE $schema.tasks SET created_at = created_at - 30000 WHERE id = 'drain-node-8'`);
    await new Promise((resolve) => setTimeout(resolve, 2));
    expect(await skewed(60_000, () => ahead.purgeFinished({ olderThanMs: 0 }))).toBe(1);
  });

  it("a replica whose clock runs 60 s behind still reaps a dead replica's expired lease", async () => {
    const [dead, behind] = await twoReplicas();
    const task = await dead.createTask({ owner: 'u', kind: 'k', lease: { owner: 'a', ttlMs: 50 } });
    await new Promise((resolve) => setTimeout(resolve, 120));

    const reaped = await skewed(-60_000, () => behind.reapExpiredLeases());
    expect(reaped.map((result) => [result.task.id, result.event.type])).toEqual([[task.id, 'interrupted']]);
  });
});
