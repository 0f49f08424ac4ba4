import type { Socket } from 'node:net';
import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { type PgListenClient, PostgresProgressStore } from '../src/index.js';
import { blackHoleProxy, eventually, settlesWithin, storeFixtures } from './support.js';

/**
 * `close()` while the network to Postgres drops every packet (a firewall, a dead host, a severed link).
 * pg's `end()` sends Terminate, half-closes the socket and resolves only once the socket closes, which
 * takes the server's answer: from a black hole none comes, and `close()` waited until TCP gave up
 * (many minutes; here, forever, as the proxy's kernel acknowledges everything). A graceful shutdown
 * must not hang on it.
 */

const { pool, migrated } = storeFixtures('blackhole');

const proxies: Array<{ close(): Promise<void> }> = [];
afterEach(async () => {
  // Destroying the proxy's sockets also ends a close() that the black hole held (unfixed code).
  await Promise.all(proxies.splice(0).map((proxy) => proxy.close()));
});

describe('close() with the LISTEN connection black-holed', () => {
  it('returns within a bound and leaves no socket of the listener open', async () => {
    const schema = await migrated();
    const proxy = await blackHoleProxy();
    proxies.push(proxy);
    // Not opened through the fixtures, whose cleanup would wait for a close that never returns.
    const store = await PostgresProgressStore.open({
      pool: pool(),
      migrate: false,
      schema,
      listenClient: () => new pg.Client({ connectionString: proxy.url }) as unknown as PgListenClient,
      // No barrier in flight when close() runs: pg's end() destroys the socket itself when a query is
      // active, which would hide the idle connection this test is about.
      watermarkIntervalMs: 3_600_000,
    });
    expect(store.changes.health().connected).toBe(true);
    expect(proxy.inbound()).toHaveLength(1);
    const [listener] = proxy.inbound() as [Socket];

    proxy.blackHole();
    // Generous next to the store's deadline for end() (about a second), short next to TCP's.
    expect(await settlesWithin(store.close(), 10_000), 'store.close() with a black-holed LISTEN').toBe(
      'closed',
    );

    // Closed, not half-closed: a half-closed client would still read what the proxy sends, while a
    // closed socket answers it with a reset, which a later write of the proxy's end fails on (it read
    // the client's FIN already, so it is not reading any more).
    await eventually('the client closed its socket (the proxy is reset)', () => {
      if (!listener.destroyed) listener.write('N');
      return listener.destroyed;
    });
  });
});
