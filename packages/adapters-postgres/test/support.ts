import { randomBytes } from 'node:crypto';
import {
  type AddressInfo,
  connect as connectTcp,
  createServer,
  type ServerOpts,
  type Socket,
} from 'node:net';
import type { ProgressError, ProgressStore, TaskChange } from '@finishline/core';
import { Kysely, PostgresDialect } from 'kysely';
import pg from 'pg';
import { afterAll, afterEach, expect, inject } from 'vitest';
import {
  migrateProgressSchema,
  type PgListenClient,
  PostgresProgressStore,
  type PostgresProgressStoreOptions,
} from '../src/index.js';

/** Helpers shared by the Postgres tests. */

/** The test server's URL (see global-setup.ts). */
export function pgUrl(): string {
  return inject('pgUrl');
}

/** A pool on the test server; the caller ends it. */
export function newPool(max = 10, applicationName = 'finishline-test'): pg.Pool {
  // idleTimeoutMillis 0: no idle timers, so a test can count the timers a store leaves behind.
  const pool = new pg.Pool({
    connectionString: pgUrl(),
    max,
    application_name: applicationName,
    idleTimeoutMillis: 0,
  });
  // Idle clients of a pool can be terminated by the fault tests; without a listener that would crash.
  pool.on('error', () => {});
  return pool;
}

/** A schema name no other test uses. */
export function freshSchema(prefix = 't'): string {
  return `${prefix}_${randomBytes(6).toString('hex')}`;
}

/**
 * A fresh schema's name (see {@link freshSchema}) and an admin pool of `max` connections, the schema dropped
 * and the pool ended by the cleanup pushed on `cleanups`.
 */
export function freshSchemaWithAdmin(
  prefix: string,
  cleanups: { push(cleanup: () => Promise<void>): unknown },
  max = 2,
): { schema: string; admin: pg.Pool } {
  const schema = freshSchema(prefix);
  const admin = newPool(max, 'finishline-test-admin');
  cleanups.push(async () => {
    await dropSchema(admin, schema);
    await admin.end();
  });
  return { schema, admin };
}

/** Drops a test schema and everything in it. */
export async function dropSchema(pool: pg.Pool, schema: string): Promise<void> {
  await pool.query(`DROP SCHEMA IF EXISTS ${pg.escapeIdentifier(schema)} CASCADE`);
}

/** Waits until `condition()` holds, checking every few ms, for at most `limitMs`; then fails with `what`. */
export async function eventually(
  what: string,
  condition: () => boolean | Promise<boolean>,
  limitMs = 10_000,
) {
  const deadline = Date.now() + limitMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`${what}: still not true after ${limitMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/**
 * Whether `closing` settled within `limitMs`: a liveness bound (a close that is waiting for nothing
 * returns in milliseconds), so a close that never returns fails the test with a message instead of
 * the test's timeout.
 */
export async function settlesWithin(
  closing: Promise<void>,
  limitMs = 5000,
): Promise<'closed' | 'still waiting'> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const waited = new Promise<'still waiting'>((resolve) => {
    timer = setTimeout(() => resolve('still waiting'), limitMs);
  });
  try {
    return await Promise.race([closing.then(() => 'closed' as const), waited]);
  } finally {
    clearTimeout(timer);
  }
}

/** Records what a store's change feed publishes. */
export class Recorder {
  readonly changes: TaskChange[] = [];
  readonly stop: () => void;

  constructor(store: ProgressStore) {
    this.stop = store.changes.subscribe((change) => this.changes.push({ ...change }));
  }

  /** Seqs published for `taskId`, in arrival order. */
  seqs(taskId: string): number[] {
    return this.changes.filter((change) => change.taskId === taskId).map((change) => change.seq);
  }

  has(taskId: string, seq: number): boolean {
    return this.changes.some((change) => change.taskId === taskId && change.seq === seq);
  }
}

/** `[1, 2, …, n]`. */
export function oneTo(n: number): number[] {
  return Array.from({ length: n }, (_, index) => index + 1);
}

/** A promise with its resolve function, for gates in fault tests. */
export interface Gate {
  promise: Promise<void>;
  open(): void;
}

export function gate(): Gate {
  let open!: () => void;
  const promise = new Promise<void>((resolve) => {
    open = resolve;
  });
  return { promise, open };
}

/** Replaces a COMMIT: `commit` runs the real one; the hook decides when, whether, and what comes back. */
export type CommitHook = (client: pg.PoolClient, commit: () => Promise<unknown>) => Promise<unknown>;

/** A statement as a pool client's `query` gets it: its text, or (a prepared one) `{ name, text, values }`. */
export interface SentStatement {
  /** The statement's name when it runs as a prepared statement. */
  name: string | undefined;
  text: string;
}

/**
 * `real` as a pool whose clients' `query` calls go through `hook(client, statement, run)` (`run` sends the
 * call as it was made). One proxy per client, as a pool hands out the same client object again and again.
 */
export function queryHookedPool(
  real: pg.Pool,
  hook: (client: pg.PoolClient, statement: SentStatement, run: () => Promise<unknown>) => unknown,
): pg.Pool {
  const proxies = new WeakMap<pg.PoolClient, pg.PoolClient>();
  const pool = {
    options: real.options,
    Client: (real as unknown as { Client: unknown }).Client,
    async connect() {
      const client = await real.connect();
      const known = proxies.get(client);
      if (known !== undefined) return known;
      const proxy = new Proxy(client, {
        get(target, property) {
          if (property === 'query') {
            return (config: unknown, values?: unknown[]) => {
              const named =
                typeof config === 'string' ? undefined : (config as { name?: string; text: string });
              const statement = {
                name: named?.name,
                text: named === undefined ? (config as string) : named.text,
              };
              return hook(target, statement, () => target.query(config as string, values));
            };
          }
          const value = Reflect.get(target, property, target);
          return typeof value === 'function' ? value.bind(target) : value;
        },
      });
      proxies.set(client, proxy);
      return proxy;
    },
    end: () => real.end(),
  };
  return pool as unknown as pg.Pool;
}

/**
 * Wraps a pool so that the next COMMIT sent on any of its clients goes through `onNextCommit`'s hook.
 * `commits` tells which statements commit (by default `COMMIT` itself; an append written in one autocommit
 * statement is its own commit).
 */
export function commitHookedPool(
  real: pg.Pool,
  commits: (text: string) => boolean = (text) => text.trim().toLowerCase() === 'commit',
): {
  pool: pg.Pool;
  onNextCommit(hook: CommitHook): void;
} {
  let next: CommitHook | undefined;
  const pool = queryHookedPool(real, (client, { text }, run) => {
    const hook = next;
    if (hook === undefined || !commits(text)) return run();
    next = undefined;
    return hook(client, run);
  });
  return {
    pool,
    onNextCommit(hook) {
      next = hook;
    },
  };
}

/**
 * Wraps a pool so a test can stop an append transaction just before its COMMIT: `arm()` makes the next
 * `commit` wait; `reached` resolves (with the backend pid) when one is waiting; `release()` lets it go on.
 */
export function commitGatedPool(real: pg.Pool) {
  const hooked = commitHookedPool(real);
  let reached = gate();
  let release = gate();
  let pid = 0;
  const control = {
    arm() {
      reached = gate();
      release = gate();
      hooked.onNextCommit(async (client, commit) => {
        pid = (client as unknown as { processID: number }).processID;
        reached.open();
        await release.promise;
        return commit();
      });
    },
    async reached(): Promise<number> {
      await reached.promise;
      return pid;
    },
    release() {
      release.open();
    },
  };
  return { pool: hooked.pool, control };
}

/**
 * What a test file of stores on fresh schemas needs, with its cleanup registered (`afterEach`: the gates a
 * failed test left closed are released, then its stores closed and its pools ended; `afterAll`: the schemas
 * dropped). `defaults` go under each `open`'s options.
 */
export function storeFixtures(prefix: string, defaults: Partial<PostgresProgressStoreOptions> = {}) {
  const admin = newPool(4);
  const pools: pg.Pool[] = [];
  const stores: PostgresProgressStore[] = [];
  const schemas: string[] = [];
  /** Opens what a test held (a transaction at its COMMIT, a gate), so closing the stores never waits for it. */
  const releases: (() => void)[] = [];

  afterEach(async () => {
    for (const release of releases.splice(0)) release();
    await Promise.all(stores.splice(0).map((store) => store.close()));
    await Promise.all(pools.splice(0).map((created) => created.end()));
  });

  afterAll(async () => {
    for (const schema of schemas) await dropSchema(admin, schema);
    await admin.end();
  });

  const pool = (max = 5): pg.Pool => {
    const created = newPool(max);
    pools.push(created);
    return created;
  };

  return {
    /** A pool for the test's own statements, ended after the file. */
    admin,
    releases,
    /** A new pool, ended after the test. */
    pool,
    /** A fresh schema with the store's tables. */
    async migrated(): Promise<string> {
      const schema = freshSchema(prefix);
      schemas.push(schema);
      await migrateProgressSchema(new Kysely<unknown>({ dialect: new PostgresDialect({ pool: admin }) }), {
        schema,
      });
      return schema;
    },
    /** A store on a new pool, on a schema `migrated()` made, closed after the test. */
    async open(
      options: Partial<PostgresProgressStoreOptions> & { schema: string },
    ): Promise<PostgresProgressStore> {
      const store = await PostgresProgressStore.open({
        pool: pool(),
        migrate: false,
        ...defaults,
        ...options,
      });
      stores.push(store);
      return store;
    },
  };
}

/**
 * Opens a store on `schema` over `pool` (migrated already), reconnecting after 5 to 20 ms, the errors it
 * reports kept in `errors`; `options` on top.
 */
export async function openRecordingErrors(
  pool: pg.Pool,
  schema: string,
  options: Partial<PostgresProgressStoreOptions> = {},
): Promise<{ store: PostgresProgressStore; errors: ProgressError[] }> {
  const errors: ProgressError[] = [];
  const store = await PostgresProgressStore.open({
    pool,
    schema,
    migrate: false,
    reconnect: { initialDelayMs: 5, maxDelayMs: 20 },
    onError: (error) => errors.push(error),
    ...options,
  });
  return { store, errors };
}

/**
 * Opens a store on `schema` over a pool of `poolConfig` (named `${prefix}_<random>`), ends its `LISTEN`
 * connection while the test holds a lock on the events table, and waits until the listener's re-read was
 * ended (an error `cut` tells it) or has waited for the lock ten times the pool's 100 ms timeout. Checks
 * that none was ended, then unlocks and checks that the listener reconnected once. `cutWord` names the
 * ending in the wait's label.
 */
export async function reReadBehindLock(
  admin: pg.Pool,
  schema: string,
  prefix: string,
  poolConfig: pg.PoolConfig,
  cut: (error: ProgressError) => boolean,
  cutWord: string,
): Promise<void> {
  const applicationName = `${prefix}_${randomBytes(4).toString('hex')}`;
  const pool = new pg.Pool({ connectionString: pgUrl(), application_name: applicationName, ...poolConfig });
  pool.on('error', () => {});
  const { store, errors } = await openRecordingErrors(pool, schema);
  const locker = new pg.Client({ connectionString: pgUrl() });
  await locker.connect();
  try {
    await store.createTask({ id: 'a', owner: 'alice', kind: 'k' });
    await store.append('a', { type: 'progress' });
    await locker.query('BEGIN');
    await locker.query(`LOCK TABLE ${pg.escapeIdentifier(schema)}.events IN ACCESS EXCLUSIVE MODE`);
    await admin.query('SELECT pg_terminate_backend($1)', [store.changes.health().listenerPid]);
    // Either the re-read was ended, or it has waited for the lock ten times the timeout.
    await eventually(`the re-read was ${cutWord}, or waited for the lock past the timeout`, async () => {
      if (errors.some(cut)) return true;
      const { rows } = await admin.query(
        `SELECT 1 FROM pg_stat_activity
         WHERE application_name = $1 AND wait_event_type = 'Lock' AND query LIKE '%horizon_passed%'
           AND now() - query_start > interval '1 second'`,
        [applicationName],
      );
      return rows.length > 0;
    });
    expect(errors.filter(cut).map((error) => error.message)).toEqual([]);
    await locker.query('ROLLBACK');
    await eventually('connected again', () => store.changes.health().connected);
    expect(store.changes.stats().reconnects).toBe(1);
  } finally {
    await locker.query('ROLLBACK').catch(() => {});
    await locker.end();
    await store.close();
    await pool.end();
  }
}

/** A loopback TCP server of a test, standing in for Postgres (see {@link loopbackServer}). */
export interface LoopbackServer {
  /** The test server's URL with this server's address: what a pg client connects to. */
  url: string;
  /** Sockets still open on this server's side, accepted or added by the test (`track`). */
  sockets: Set<Socket>;
  /** Counts `socket` among {@link sockets} until it closes, its errors ignored. */
  track(socket: Socket): void;
  /** Destroys every socket still open (a silent or black-holed peer never ends one), then closes. */
  close(): Promise<void>;
}

/** Listens on 127.0.0.1 and hands each accepted socket, tracked, to `accepted`. */
export async function loopbackServer(
  options: ServerOpts,
  accepted: (socket: Socket) => void,
): Promise<LoopbackServer> {
  const sockets = new Set<Socket>();
  const track = (socket: Socket) => {
    sockets.add(socket);
    socket.on('error', () => {});
    socket.on('close', () => sockets.delete(socket));
  };
  const server = createServer(options, (socket) => {
    track(socket);
    accepted(socket);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = new URL(pgUrl());
  url.hostname = '127.0.0.1';
  url.port = String((server.address() as AddressInfo).port);
  return {
    url: url.toString(),
    sockets,
    track,
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/**
 * A TCP proxy to the test server that can be switched to a black hole: from then on it forwards
 * nothing in either direction and neither ends nor closes a socket, as a dead peer behind a firewall.
 * Half-open sockets are allowed, so a client's FIN gets no FIN back.
 */
export async function blackHoleProxy() {
  const target = new URL(pgUrl());
  /** The proxy's ends of the connections clients opened to it. */
  const inbound = new Set<Socket>();
  let blackHoled = false;
  const proxy = await loopbackServer({ allowHalfOpen: true }, (client) => {
    const upstream = connectTcp({
      host: target.hostname,
      port: Number(target.port || 5432),
      allowHalfOpen: true,
    });
    proxy.track(upstream);
    inbound.add(client);
    client.on('close', () => inbound.delete(client));
    client.on('data', (chunk) => {
      if (!blackHoled) upstream.write(chunk);
    });
    upstream.on('data', (chunk) => {
      if (!blackHoled) client.write(chunk);
    });
    client.on('end', () => {
      if (!blackHoled) upstream.end();
    });
    upstream.on('end', () => {
      if (!blackHoled) client.end();
    });
  });
  return {
    url: proxy.url,
    /** Connections from clients that are open on the proxy's side. */
    inbound: () => [...inbound],
    blackHole() {
      blackHoled = true;
    },
    close: () => proxy.close(),
  };
}

/**
 * A LISTEN client factory whose reconnects wait while `blocked` holds a closed gate: lets a test keep a
 * listener down for exactly as long as it needs, whatever the jittered backoff draws.
 */
export function gatedListenClients(): { factory: () => PgListenClient; block(): void; unblock(): void } {
  let blocked: Gate | undefined;
  return {
    factory: () => {
      const client = new pg.Client({ connectionString: pgUrl() });
      const connect = client.connect.bind(client);
      const wait = blocked?.promise;
      Object.assign(client, {
        connect: async () => {
          await wait;
          return connect();
        },
      });
      return client as unknown as PgListenClient;
    },
    block() {
      blocked = gate();
    },
    unblock() {
      blocked?.open();
      blocked = undefined;
    },
  };
}

/**
 * The servers' `authenticate` in these tests: the principal is the `x-user` header's value, or none.
 */
export const headerAuthenticate = (request: { headers: Record<string, string | string[] | undefined> }) => {
  const user = request.headers['x-user'];
  return typeof user === 'string' ? { id: user } : null;
};
