import type { TaskChange } from '@finishline/core';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { type PgListenClient, PostgresProgressStore } from '../src/index.js';
import { eventually, pgUrl, storeFixtures } from './support.js';

/**
 * A re-read of the `LISTEN` connection whose statement never answers, as on a connection whose network
 * died silently (no reset: a failover, a NAT that dropped the flow) right after it connected. The barrier
 * watchdog, which catches such a connection once it is connected, does not run during the re-read; until
 * 5 December 2026 nothing else did: the re-read waited for TCP to give up (hours), the feed held this
 * store's own commits for it meanwhile (published after its rows), and a re-read from the start counted
 * as connected throughout.
 */

const { admin, pool, migrated } = storeFixtures('unanswered');

/** Statements of the re-reads: from a mark (reads `horizon_passed`), and the first page of the one from the start. */
const isReread = (text: string) =>
  text.includes('horizon_passed') || (text.includes('pg_current_snapshot') && text.includes('ORDER BY t.id'));

/**
 * A store whose `LISTEN` clients, once `stall()` was called, leave the next re-read unanswered (its
 * promise never settles, as pg's on a dead socket); later clients answer again.
 */
async function storeWithStallableReread() {
  const schema = await migrated();
  let stalls = 0;
  let stalled = 0;
  const factory = (): PgListenClient => {
    const client = new pg.Client({ connectionString: pgUrl() });
    const query = client.query.bind(client) as (text: string, values?: unknown[]) => Promise<unknown>;
    Object.assign(client, {
      query: (text: string, values?: unknown[]) => {
        if (stalls > 0 && isReread(text)) {
          stalls -= 1;
          stalled += 1;
          return new Promise(() => {});
        }
        return query(text, values);
      },
    });
    return client as unknown as PgListenClient;
  };
  const store = await PostgresProgressStore.open({
    pool: pool(),
    migrate: false,
    schema,
    listenClient: factory,
    watermarkIntervalMs: 20,
    reconnect: { initialDelayMs: 5, maxDelayMs: 20 },
  });
  return {
    store,
    stall() {
      stalls += 1;
    },
    stalled: () => stalled,
    async close() {
      await store.close();
    },
  };
}

describe('a re-read of the LISTEN connection that is never answered', () => {
  it("does not hold this store's own commits back: the connection is replaced, and they are published", async () => {
    const { store, stall, stalled, close } = await storeWithStallableReread();
    try {
      const changes: TaskChange[] = [];
      store.changes.subscribe((change) => changes.push(change));
      await store.createTask({ id: 'own', owner: 'alice', kind: 'k' });
      stall();
      await admin.query('SELECT pg_terminate_backend($1)', [store.changes.health().listenerPid]);
      await eventually('the reconnect sent its re-read, unanswered', () => stalled() === 1);
      await store.append('own', { type: 'progress' });
      // A liveness bound, far above the store's bound for the re-read's answer (3 s here).
      await eventually(
        'the own commit is published',
        () => changes.some((change) => change.seq === 1),
        15_000,
      );
      await eventually('connected again', () => store.changes.health().connected, 15_000);
    } finally {
      await close();
    }
  });

  it('from the start (after forgetSeqs) does not count as connected for ever', async () => {
    const { store, stall, stalled, close } = await storeWithStallableReread();
    try {
      stall();
      store.changes.forgetSeqs();
      await eventually('the replacement sent its re-read, unanswered', () => stalled() === 1);
      // The re-read from the start counts as connected while it runs (see `listen-connection.ts`); one that
      // is never answered must end in a reconnect, the replaced connection's (forgetSeqs) never completed.
      await eventually('a reconnect completed', () => store.changes.stats().reconnects >= 1, 15_000);
      expect(store.changes.health().lastError?.code).toBe('store_unavailable');
    } finally {
      await close();
    }
  });
});
