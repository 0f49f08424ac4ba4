import { describe, expect, it } from 'vitest';
import { PostgresProgressStore } from '../src/index.js';
import { eventually, gate, queryHookedPool, settlesWithin, storeFixtures } from './support.js';

/**
 * A lease renewal whose query hangs (a connection that died without the driver noticing, no statement
 * timeout). The server's lease keeper stops waiting for it after half a renewal interval and renews again
 * (`lease-keeper-hung.test.ts`), but until 7 December 2026 the store wrote one renewal batch at a time: the
 * new renewal queued behind the hung one, every lease of the replica expired, and the reapers interrupted
 * its running tasks while their workers were alive (seen on two replicas with a proxy freezing the one
 * connection a renewal was sent on).
 */

const { pool, migrated, releases } = storeFixtures('hungrenew');

describe('a lease renewal whose query hangs', () => {
  it('does not hold back the next renewal, which is written on another connection', async () => {
    const schema = await migrated();
    const hang = gate();
    releases.push(hang.open);
    let hung = false;
    // The renewal's first statement locks the task rows and reads the database's time (`db_now`).
    const hooked = queryHookedPool(pool(), (_client, { text }, run) => {
      if (!hung && text.includes('db_now') && text.includes('SKIP LOCKED')) {
        hung = true;
        return hang.promise.then(run);
      }
      return run();
    });
    const store = await PostgresProgressStore.open({ pool: hooked, migrate: false, schema });
    try {
      await store.createTask({
        id: 't',
        owner: 'alice',
        kind: 'k',
        lease: { owner: 'replica-a', ttlMs: 60_000 },
      });
      const stuck = store.renewLease('t', 'replica-a', 60_000);
      stuck.catch(() => {});
      await eventually('the first renewal hangs', () => hung);

      const next = store.renewLease('t', 'replica-a', 60_000);
      expect(
        await settlesWithin(
          next.then(() => undefined),
          5000,
        ),
      ).toBe('closed');
      await expect(next).resolves.toMatchObject({ id: 't', leaseOwner: 'replica-a' });
    } finally {
      hang.open();
      await store.close();
    }
  }, 20_000);
});
