import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { IDLE_IN_TRANSACTION_TIMEOUT_MS } from '../src/idle-in-transaction.js';
import { eventually, pgUrl, queryHookedPool, storeFixtures } from './support.js';

/**
 * The store's locking transactions wait for a row another transaction holds (an append's or a renewal's
 * second try, after a first that skipped it), then build on the row as that transaction left it: what
 * `READ COMMITTED` gives. Until 6 December 2026 they ran at the session's default isolation, and a role
 * or database with `default_transaction_isolation` set to `repeatable read` or `serializable` (a common
 * hardening) made each such wait end in "could not serialize access due to concurrent update": the append
 * or renewal rejected with `store_unavailable` (with two replicas appending to the same tasks, half of
 * their appends). The store's single statements (an ack, an append planned from the row it last wrote) run
 * at the default: one that finds its row changed since it began fails with that error, having written
 * nothing, and is done again in a `READ COMMITTED` transaction (until 6 December 2026 it rejected: half of
 * two replicas' acks of the same tasks).
 */

const { admin, migrated, open } = storeFixtures('isolation');

const APPLICATION = 'finishline-isolation-test';
const pools: pg.Pool[] = [];

afterEach(async () => {
  await Promise.all(pools.splice(0).map((pool) => pool.end()));
});

/** A pool whose sessions default to `level`, as a role's or database's setting makes them. */
function poolAt(level: string): pg.Pool {
  const pool = new pg.Pool({
    connectionString: pgUrl(),
    max: 5,
    application_name: APPLICATION,
    idleTimeoutMillis: 0,
    options: `-c default_transaction_isolation=${level.replace(' ', '\\ ')}`,
  });
  pool.on('error', () => {});
  pools.push(pool);
  return pool;
}

/** How many of the test pool's backends wait for a lock. */
async function waitingForLocks(): Promise<number> {
  const { rows } = await admin.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'`,
    [APPLICATION],
  );
  return rows[0]?.n ?? 0;
}

for (const level of ['repeatable read', 'serializable']) {
  describe(`a pool whose sessions default to ${level}`, () => {
    it('appends to and renews a task whose row another transaction updated while the store waited for it', async () => {
      const schema = await migrated();
      const pool = poolAt(level);
      const store = await open({ schema, pool });
      await store.createTask({ id: 'held', owner: 'alice', kind: 'k' });
      await store.renewLease('held', 'worker', 60_000);
      const { rows } = await pool.query<{ level: string }>(
        "SELECT current_setting('transaction_isolation') AS level",
      );
      expect(rows[0]?.level, 'the setting reached the sessions').toBe(level);

      const holder = await admin.connect();
      await holder.query('BEGIN');
      await holder.query(`SELECT 1 FROM ${schema}.tasks WHERE id = 'held' FOR UPDATE`);
      const appending = store.append('held', { type: 'item', key: 'a', ok: true });
      const renewing = store.renewLease('held', 'worker', 60_000);
      appending.catch(() => {});
      renewing.catch(() => {});
      try {
        // Both wait for the row (each at most 500 ms, then tries again later: the update must come first).
        await eventually(
          'the append and the renewal wait for the row',
          async () => (await waitingForLocks()) >= 2,
        );
        // A new version of the row, committed after the waiting transactions took their snapshot.
        await holder.query(`UPDATE ${schema}.tasks SET acked_seq = acked_seq WHERE id = 'held'`);
        await holder.query('COMMIT');
      } finally {
        holder.release();
      }
      await expect(appending).resolves.toMatchObject({ event: { seq: 1 } });
      await expect(renewing).resolves.toMatchObject({ leaseOwner: 'worker' });
      await expect(store.getTask('held')).resolves.toMatchObject({ seq: 1, done: 1 });
    });

    it('acks and appends (its single statements) when the row changed after the statement began', async () => {
      const schema = await migrated();
      const pool = poolAt(level);
      const store = await open({ schema, pool });
      await store.createTask({ id: 'moved', owner: 'alice', kind: 'k' });
      // Remembered as written: the next append is one autocommit statement, planned from this row.
      await store.append('moved', { type: 'item', key: 'a', ok: true });

      // The table locked: each statement takes its snapshot, then waits for the table before its row lock.
      const holder = await admin.connect();
      await holder.query('BEGIN');
      await holder.query(`LOCK TABLE ${schema}.tasks IN EXCLUSIVE MODE`);
      const acking = store.ack('moved', 1);
      const appending = store.append('moved', { type: 'item', key: 'b', ok: true });
      acking.catch(() => {});
      appending.catch(() => {});
      try {
        await eventually(
          'the ack and the append wait for the table',
          async () => (await waitingForLocks()) >= 2,
        );
        // A new version of the row, committed after both statements took their snapshot.
        await holder.query(`UPDATE ${schema}.tasks SET acked_seq = acked_seq WHERE id = 'moved'`);
        await holder.query('COMMIT');
      } finally {
        holder.release();
      }
      await expect(acking).resolves.toBe(1);
      await expect(appending).resolves.toMatchObject({ event: { seq: 2 } });
      await expect(store.getTask('moved')).resolves.toMatchObject({ seq: 2, ackedSeq: 1, done: 2 });
    });

    it('creates, purges, releases leases and renews the epoch when a row changed after the statement began', async () => {
      // Until 6 December 2026 these single statements ran at the session's default, and each failed with
      // "could not serialize access due to concurrent update" (`store_unavailable`): a createTask racing
      // another replica's for the same id (instead of "already exists", `invalid_input`), a purge racing an ack of a
      // finished task, a lease release racing an ack, and two replicas renewing the epoch at once (the
      // renewal after lost commits).
      const schema = await migrated();
      const pool = poolAt(level);
      const store = await open({ schema, pool });
      await store.createTask({ id: 'done', owner: 'alice', kind: 'k' });
      await store.append('done', { type: 'completed' });
      await store.createTask({
        id: 'leased',
        owner: 'alice',
        kind: 'k',
        lease: { owner: 'worker', ttlMs: 60_000 },
      });
      await store.append('leased', { type: 'item', key: 'a', ok: true });
      const epoch = await store.getEpoch();
      // Out of its creation's millisecond (a task is not purged in it).
      await new Promise((resolve) => setTimeout(resolve, 5));

      // The tables locked: each statement takes its snapshot, then waits for its table.
      const holder = await admin.connect();
      await holder.query('BEGIN');
      await holder.query(`LOCK TABLE ${schema}.tasks, ${schema}.meta IN EXCLUSIVE MODE`);
      const creating = store.createTask({ id: 'taken', owner: 'alice', kind: 'k' });
      const purging = store.purgeFinished({ olderThanMs: 0 });
      const renewing = store.renewEpoch();
      const releasing = store.releaseLease('leased', 'worker');
      releasing.catch(() => {});
      creating.catch(() => {});
      purging.catch(() => {});
      renewing.catch(() => {});
      try {
        await eventually(
          'the create, the purge, the renewal and the release wait for the tables',
          async () => (await waitingForLocks()) >= 4,
        );
        // Another replica's create of the same id, an ack and a renewal, committed after their snapshots.
        await holder.query(
          `INSERT INTO ${schema}.tasks (id, owner, kind, status, done, succeeded, failed, seq, acked_seq, created_at, updated_at)
           VALUES ('taken', 'bob', 'k', 'running', 0, 0, 0, 0, 0, 0, 0)`,
        );
        await holder.query(`UPDATE ${schema}.tasks SET acked_seq = acked_seq WHERE id IN ('done', 'leased')`);
        await holder.query(`UPDATE ${schema}.meta SET value = 'elsewhere' WHERE key = 'epoch'`);
        await holder.query('COMMIT');
      } finally {
        holder.release();
      }
      // All three first, so that a failure names each that failed.
      const outcomes = await Promise.allSettled([creating, purging, renewing, releasing]);
      expect(
        outcomes.map((outcome) =>
          outcome.status === 'rejected' ? (outcome.reason as Error).message : typeof outcome.value,
        ),
      ).toEqual(['Task taken already exists', 'number', 'string', 'undefined']);
      await expect(purging).resolves.toBe(1);
      const renewed = await renewing;
      expect(renewed).not.toBe(epoch);
      expect(renewed).not.toBe('elsewhere');
      await expect(store.getTask('done')).resolves.toBeUndefined();
      await expect(store.getTask('taken')).resolves.toMatchObject({ owner: 'bob' });
      await expect(store.getEpoch()).resolves.toBe(renewed);
      await expect(store.getTask('leased')).resolves.toMatchObject({ leaseOwner: null, seq: 1 });
    });

    for (const call of ['releaseLease', 'ack'] as const) {
      it(`redoes ${call === 'ack' ? 'an ack' : 'a lease release'} in a transaction that sets the idle timeout before it locks a row`, async () => {
        // Until 6 December 2026 the READ COMMITTED transaction of a redone statement (a lease release, an
        // ack, a create, a purge, a renewal of the epoch) set no idle timeout: a client stopped between the
        // statement and its COMMIT held the rows it locked (the task's, the epoch's) for as long as it
        // stayed stopped.
        const schema = await migrated();
        const pool = poolAt(level);
        const seen: string[] = [];
        const hooked = queryHookedPool(pool, (client, { text }, run) => {
          if (text !== 'commit' && text !== 'COMMIT') return run();
          return client
            .query<{ timeout: string }>(
              "SELECT current_setting('idle_in_transaction_session_timeout') AS timeout",
            )
            .then(({ rows }) => {
              seen.push(rows[0]?.timeout ?? 'none');
              return run();
            });
        });
        const store = await open({ schema, pool: hooked });
        await store.createTask({
          id: 'held',
          owner: 'alice',
          kind: 'k',
          lease: { owner: 'worker', ttlMs: 60_000 },
        });
        await store.append('held', { type: 'item', key: 'a', ok: true });
        seen.length = 0;
        const holder = await admin.connect();
        await holder.query('BEGIN');
        await holder.query(`LOCK TABLE ${schema}.tasks IN EXCLUSIVE MODE`);
        const calling = call === 'ack' ? store.ack('held', 1) : store.releaseLease('held', 'worker');
        calling.catch(() => {});
        try {
          await eventually(`the ${call} waits for the table`, async () => (await waitingForLocks()) >= 1);
          // A new version of the row, committed after the statement took its snapshot: it is redone.
          await holder.query(`UPDATE ${schema}.tasks SET updated_at = updated_at WHERE id = 'held'`);
          await holder.query('COMMIT');
        } finally {
          holder.release();
        }
        await expect(calling).resolves.toBe(call === 'ack' ? 1 : undefined);
        await expect(store.getTask('held')).resolves.toMatchObject(
          call === 'ack' ? { ackedSeq: 1 } : { leaseOwner: null },
        );
        expect(seen, "the redone statement's transaction, as it commits").toEqual([
          `${IDLE_IN_TRANSACTION_TIMEOUT_MS / 1000}s`,
        ]);
      });
    }

    it('two replicas run every call on the same tasks at once without a store_unavailable', async () => {
      // The calls of a replica at once with the other's, on the same ids: creates of one id, appends,
      // renewals, acks, releases, purges, epoch renewals, reaps and reads. Before the fixes of 6 December
      // 2026 creates, releases and renewals of the epoch failed here in every run.
      const schema = await migrated();
      const failures: string[] = [];
      const onError = (error: Error) => failures.push(`onError: ${error.message}`);
      const stores = [
        await open({ schema, pool: poolAt(level), onError }),
        await open({ schema, pool: poolAt(level), onError }),
      ];
      const failed = (what: string) => (error: { code?: string; message?: string }) => {
        // Refusals (an id taken, a task finished, a lease another's) are the answers of a race; not these.
        if (error.code === 'store_unavailable' || error.code === 'internal')
          failures.push(`${what}: ${error.message}`);
      };
      for (let round = 0; round < 15; round++) {
        const ids = [`r${round}a`, `r${round}b`];
        const lease = { owner: 'worker', ttlMs: 60_000 };
        await Promise.all(
          ids.flatMap((id) =>
            stores.map((store) =>
              store.createTask({ id, owner: 'alice', kind: 'k', lease }).catch(failed('createTask')),
            ),
          ),
        );
        await Promise.all(
          ids.flatMap((id) =>
            stores.flatMap((store, index) => [
              store.append(id, { type: 'item', key: `${index}`, ok: true }).catch(failed('append')),
              store.renewLease(id, 'worker', 60_000).catch(failed('renewLease')),
              store.ack(id, 1).catch(failed('ack')),
              store.readEvents(id, 0).catch(failed('readEvents')),
            ]),
          ),
        );
        await Promise.all(
          ids.flatMap((id) =>
            stores.flatMap((store) => [
              store.releaseLease(id, 'worker').catch(failed('releaseLease')),
              store.ack(id, 1).catch(failed('ack')),
              store.append(id, { type: 'completed' }).catch(failed('append')),
            ]),
          ),
        );
        // Out of their creation's millisecond (a task is not purged in it).
        await new Promise((resolve) => setTimeout(resolve, 2));
        await Promise.all(
          stores.flatMap((store) => [
            store.purgeFinished({ olderThanMs: 0 }).catch(failed('purgeFinished')),
            store.renewEpoch().catch(failed('renewEpoch')),
            store.listTasks({ owner: 'alice' }).catch(failed('listTasks')),
            store.reapExpiredLeases().catch(failed('reapExpiredLeases')),
            store.latestSeqs(ids).catch(failed('latestSeqs')),
          ]),
        );
      }
      expect(failures).toEqual([]);
    });
  });
}
