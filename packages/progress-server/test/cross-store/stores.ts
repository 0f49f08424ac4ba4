import { randomBytes } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import type { ProgressStore } from '@finishline/core';
import { MemoryProgressStore } from '@finishline/core';
import { PostgresProgressStore } from '@finishline/postgres';
import { SqliteProgressStore } from '@finishline/sqlite';
import pg from 'pg';
import { inject } from 'vitest';
import type { ProgressServerOptions } from '../../src/options.js';
import { ProgressServer } from '../../src/progress-server.js';
import { headerAuth } from '../../src/testing/harness.js';

/**
 * The three stores the server's security tests run on (tests only). Postgres is `PG_URL`; each Postgres
 * store lives in a scratch schema dropped on release.
 */
export interface StoreFixture {
  name: 'memory' | 'sqlite' | 'postgres';
  open(): Promise<{ store: ProgressStore; release(): Promise<void> }>;
}

declare module 'vitest' {
  export interface ProvidedContext {
    /** Connection string of the Postgres server the tests use (the Postgres package's global setup). */
    pgUrl: string;
  }
}

/**
 * The Postgres URL of the test database: `FINISHLINE_TEST_PG_URL`, or the embedded server the project's
 * global setup started. Always set: a missing Postgres fails the tests instead of skipping them.
 */
export const PG_URL: string = inject('pgUrl');

export const STORE_FIXTURES: readonly StoreFixture[] = [
  {
    name: 'memory',
    open: async () => ({ store: new MemoryProgressStore(), release: async () => {} }),
  },
  {
    name: 'sqlite',
    open: async () => {
      const store = new SqliteProgressStore({ database: ':memory:' });
      return { store, release: () => store.close() };
    },
  },
  {
    name: 'postgres',
    open: async () => {
      const pool = new pg.Pool({ connectionString: PG_URL, max: 8 });
      pool.on('error', () => {});
      const schema = `sec_${randomBytes(6).toString('hex')}`;
      const store = await PostgresProgressStore.open({ pool, schema });
      return {
        store,
        release: async () => {
          await store.close();
          await pool.query(`DROP SCHEMA IF EXISTS ${pg.escapeIdentifier(schema)} CASCADE`);
          await pool.end();
        },
      };
    },
  },
];

/** A server on port 0 over `store`, with `x-user` header authentication. */
export async function listenOn(
  store: ProgressStore,
  overrides: Partial<ProgressServerOptions> = {},
): Promise<{ server: ProgressServer; wsUrl: string; httpUrl: string }> {
  const server = await ProgressServer.listen(
    { authenticate: headerAuth, ...overrides, store },
    { port: 0, host: '127.0.0.1' },
  );
  const port = (server.httpServer!.address() as AddressInfo).port;
  return { server, wsUrl: `ws://127.0.0.1:${port}/progress`, httpUrl: `http://127.0.0.1:${port}` };
}
