import pg from 'pg';
import { describe, expect, it, vi } from 'vitest';
import { PostgresProgressStore } from '../src/index.js';
import { pgUrl, storeFixtures } from './support.js';

/**
 * `close()` while the `LISTEN` connection is down and reconnecting (its backoff timer pending, each attempt
 * refused) and the safety-net poll runs: no timer of the store and no connection of the listener is left
 * behind, so a process that closed its store can exit.
 */

const { admin, migrated, pool } = storeFixtures('closedown');

/** Turns the event loop (setTimeout is faked) until `condition` holds, at most 10 s. */
async function until(condition: () => boolean): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!condition() && Date.now() < deadline) await new Promise((resolve) => setImmediate(resolve));
  expect(condition()).toBe(true);
}

describe('close() while the LISTEN connection reconnects', () => {
  it('leaves no timer and no connection of the listener behind', async () => {
    const schema = await migrated();
    const name = `fl-closedown-${schema}`;
    const backends = async () =>
      (
        await admin.query('SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1', [
          name,
        ])
      ).rows[0].n as number;
    let attempts = 0;
    const clients: pg.Client[] = [];
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    try {
      const store = await PostgresProgressStore.open({
        pool: pool(),
        schema,
        migrate: false,
        pollIntervalMs: 50,
        reconnect: { initialDelayMs: 10, maxDelayMs: 20 },
        // The first connects; every later one is refused (nothing listens on port 1).
        listenClient: () => {
          attempts += 1;
          const client = new pg.Client(
            attempts === 1
              ? { connectionString: pgUrl(), application_name: name }
              : { host: '127.0.0.1', port: 1, user: 'postgres', database: 'postgres' },
          );
          clients.push(client);
          return client;
        },
        onError: () => {},
      });
      store.changes.follow('x');
      await vi.advanceTimersByTimeAsync(60);
      await admin.query(
        'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1',
        [name],
      );
      await until(() => !store.changes.health().connected);
      // Several refused attempts, each followed by a backoff timer.
      for (let turn = 0; turn < 50 && attempts < 4; turn++) {
        await vi.advanceTimersByTimeAsync(25);
        await new Promise((resolve) => setImmediate(resolve));
      }
      expect(attempts).toBeGreaterThanOrEqual(4);
      await store.close();
      expect(vi.getTimerCount(), 'timers left after close').toBe(0);
      const before = attempts;
      await vi.advanceTimersByTimeAsync(1000);
      expect(attempts, 'no reconnect after close').toBe(before);
      vi.useRealTimers();
      expect(await backends()).toBe(0);
      for (const client of clients) {
        const socket = (client as unknown as { connection: { stream: { destroyed: boolean } } }).connection
          .stream;
        expect(socket.destroyed).toBe(true);
      }
    } finally {
      vi.useRealTimers();
    }
  });
});
