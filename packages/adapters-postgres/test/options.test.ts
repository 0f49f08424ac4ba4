import { readFileSync } from 'node:fs';
import { ErrorCode, isProgressError } from '@finishline/core';
import { Kysely, PostgresDialect } from 'kysely';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { compareTsdocDefaults, defaultLiteral } from '../../../scripts/tsdoc-defaults.mjs';
import {
  assertSchemaName,
  changeChannel,
  migrateProgressSchema,
  POSTGRES_STORE_DEFAULTS,
  PostgresProgressStore,
} from '../src/index.js';
import { resolveStoreOptions } from '../src/postgres-store-options.js';

// A pool that is never connected: option checks happen before any I/O.
const pool = new pg.Pool({ connectionString: 'postgres://nobody@127.0.0.1:1/none' });

function rejection(options: unknown): Promise<unknown> {
  return PostgresProgressStore.open(options as never).then(
    () => {
      throw new Error('open() resolved with bad options');
    },
    (error: unknown) => error,
  );
}

/**
 * The options table of this package's README (`| \`pollIntervalMs\` | \`500\` | meaning |`): each option's
 * default cell, where it is a literal in code quotes (not prose such as "ignore").
 */
function readmeDefaults(): Map<string, string> {
  const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
  return new Map(
    [...readme.matchAll(/^\| `(\w+)` +\| (.+?) +\|/gm)].map(([, name, cell]) => [
      name as string,
      cell as string,
    ]),
  );
}

describe('options', () => {
  it('states in the TSDoc of its options the defaults it has', () => {
    const source = readFileSync(new URL('../src/postgres-store-options.ts', import.meta.url), 'utf8');
    const { checked, wrong } = compareTsdocDefaults(source, POSTGRES_STORE_DEFAULTS);
    expect(wrong).toEqual([]);
    expect(checked).toBeGreaterThan(0);
  });

  it('states in the README the defaults it has', () => {
    const stated = readmeDefaults();
    for (const [name, value] of Object.entries(POSTGRES_STORE_DEFAULTS)) {
      const cell = stated.get(name);
      expect(cell, `README row of ${name}`).toBeDefined();
      if (typeof value === 'function' || !/^`[^`]+`$/.test(cell as string)) continue;
      expect(cell, name).toBe(`\`${defaultLiteral(value)}\``);
    }
  });

  it('exports frozen defaults that resolve unchanged', () => {
    expect(Object.isFrozen(POSTGRES_STORE_DEFAULTS)).toBe(true);
    expect(Object.isFrozen(POSTGRES_STORE_DEFAULTS.reconnect)).toBe(true);
    const resolved = resolveStoreOptions({ pool });
    expect(resolved).toMatchObject({
      schema: 'finishline',
      migrate: true,
      pollIntervalMs: 500,
      watermarkIntervalMs: 1000,
      listenConnectTimeoutMs: 10_000,
      maxBatchSize: 500,
      maxConcurrentBatches: 2,
      reconnect: { initialDelayMs: 250, maxDelayMs: 10_000, multiplier: 2 },
    });
    expect(resolved.pool).toBe(pool);
  });

  it.each([
    ['no pool nor db', {}],
    ['both pool and db', { pool, db: new Kysely({ dialect: new PostgresDialect({ pool }) }) }],
    ['db without listenClient', { db: new Kysely({ dialect: new PostgresDialect({ pool }) }) }],
    ['a pool that is not one', { pool: {} }],
    ['an unknown option', { pool, pollIntervalMS: 100 }],
    ['an upper-case schema', { pool, schema: 'Finishline' }],
    ['a schema with a quote', { pool, schema: 'a"; DROP TABLE x; --' }],
    ['a pg_ schema', { pool, schema: 'pg_catalog' }],
    ['a too long schema', { pool, schema: 'a'.repeat(49) }],
    ['an empty schema', { pool, schema: '' }],
    ['a zero poll interval', { pool, pollIntervalMs: 0 }],
    ['a fractional watermark interval', { pool, watermarkIntervalMs: 1.5 }],
    ['a batch size of 0', { pool, maxBatchSize: 0 }],
    ['a huge batch size', { pool, maxBatchSize: 1_000_000 }],
    ['zero concurrent batches', { pool, maxConcurrentBatches: 0 }],
    ['an ack batch size of 0', { pool, maxAckBatchSize: 0 }],
    ['a fractional ack batch size', { pool, maxAckBatchSize: 2.5 }],
    ['contradictory backoff', { pool, reconnect: { initialDelayMs: 5000, maxDelayMs: 10 } }],
    // Taken until 5 December 2026: setTimeout fired the longer delays after 1 ms (a reconnect loop).
    ['a backoff longer than a timer waits', { pool, reconnect: { maxDelayMs: 2 ** 31 } }],
    ['a clock that is not a function', { pool, clock: 5 }],
    ['migrate as a string', { pool, migrate: 'yes' }],
    ['a numeric listenClient', { pool, listenClient: 5 }],
  ])('rejects %s with invalid_input, before any I/O', async (_name, options) => {
    const error = await rejection(options);
    expect(isProgressError(error, ErrorCode.InvalidInput), String(error)).toBe(true);
  });

  it('rejects a non-object', async () => {
    expect(isProgressError(await rejection(null), ErrorCode.InvalidInput)).toBe(true);
  });

  it('rejects options whose reading throws (a getter, a Proxy trap) with invalid_input naming the option', async () => {
    // Until 8 December 2026 the getter's or trap's own error rejected open() without a code.
    const broke = new Error('getter broke');
    const getter = {
      pool,
      get clock(): never {
        throw broke;
      },
    };
    expect(await rejection(getter)).toMatchObject({
      code: ErrorCode.InvalidInput,
      message: 'PostgresProgressStore: clock threw: getter broke',
      cause: broke,
    });
    // The check for pg's connection settings asks the object first (its getOwnPropertyDescriptor trap).
    const trap = new Proxy(
      { pool },
      {
        getOwnPropertyDescriptor() {
          throw broke;
        },
      },
    );
    expect(await rejection(trap)).toMatchObject({ code: ErrorCode.InvalidInput, cause: broke });
    const { proxy, revoke } = Proxy.revocable({ pool }, {});
    revoke();
    const error = await rejection(proxy);
    expect(isProgressError(error, ErrorCode.InvalidInput), String(error)).toBe(true);
  });

  it('refuses a connection string given as pool or db without repeating it (its password would reach the logs)', async () => {
    // `pool: process.env.DATABASE_URL` is an easy slip; the error is logged at startup, often shipped to a
    // log service that many can read.
    const url = 'postgres://app:s3cret-pw@db.internal:5432/app?sslpassword=k3y';
    for (const name of ['pool', 'db'] as const) {
      const error = await rejection({ [name]: url });
      expect(isProgressError(error, ErrorCode.InvalidInput), String(error)).toBe(true);
      const message = (error as Error).message;
      expect(message).toContain(`PostgresProgressStore: ${name} must be`);
      expect(message).toContain('got a string');
      expect(message).not.toContain('s3cret-pw');
      expect(message).not.toContain('k3y');
      expect(JSON.stringify(error)).not.toContain('s3cret-pw');
    }
  });

  it('refuses `new PostgresProgressStore(options)` with a typed error pointing to open()', () => {
    // The constructor is private in the types; JavaScript callers (and casts) reach it anyway.
    const Store = PostgresProgressStore as unknown as new (options: unknown) => unknown;
    for (const options of [{}, { pool }, undefined]) {
      let thrown: unknown;
      try {
        new Store(options);
      } catch (error) {
        thrown = error;
      }
      expect(isProgressError(thrown, ErrorCode.InvalidInput), String(thrown)).toBe(true);
      expect(String((thrown as Error).message)).toContain('PostgresProgressStore.open(');
    }
  });

  it('validates schema names strictly and derives the channel from them', () => {
    for (const ok of ['finishline', '_x', 'a1_b2', 'a'.repeat(48)])
      expect(() => assertSchemaName(ok)).not.toThrow();
    for (const bad of ['1abc', 'a-b', 'a.b', 'ä', 'pg_x', ' a', 'a ', 'A']) {
      expect(() => assertSchemaName(bad), bad).toThrow(/Invalid schema name/);
    }
    expect(changeChannel('finishline')).toBe('finishline_changes');
    expect(changeChannel('a'.repeat(48)).length).toBeLessThan(64);
  });

  // Review of 6 December 2026: `open({ connectionString })` was told "did you mean `reconnect`?".
  it("names the pool for pg's own connection settings, not the nearest option", () => {
    for (const setting of ['connectionString', 'host', 'database']) {
      expect(() => resolveStoreOptions({ [setting]: 'x' } as never)).toThrow(
        expect.objectContaining({
          code: ErrorCode.InvalidInput,
          message: `PostgresProgressStore: unknown option "${setting}": the store takes a pool, not its settings: \`pool: new pg.Pool({ ${setting}: … })\``,
        }),
      );
    }
  });

  it('migrateProgressSchema refuses an unknown option, naming the nearest, before any query', async () => {
    // `schemaName` was ignored: the `finishline` schema was migrated instead of the tenant's.
    const db = new Kysely<unknown>({ dialect: new PostgresDialect({ pool }) });
    await expect(migrateProgressSchema(db, { schemaName: 'tenant_a' } as never)).rejects.toMatchObject({
      code: ErrorCode.InvalidInput,
      message: 'migrateProgressSchema: unknown option "schemaName" (did you mean `schema`?)',
    });
    await expect(migrateProgressSchema(db, { schema: 'A' })).rejects.toThrow(/Invalid schema name "A"/);
  });
});
