import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LIMITS, MemoryProgressStore, ProgressError, type ProgressStore } from '@finishline/core';
import { propertyParams, propertyRuns, propertyTimeoutMs } from '@finishline/core/testing';
import { SqliteProgressStore } from '@finishline/sqlite';
import fc from 'fast-check';
import { Kysely, PostgresDialect } from 'kysely';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { migrateProgressSchema, PostgresProgressStore } from '../src/index.js';
import { dropSchema, eventually, freshSchema, newPool } from './support.js';

/**
 * The differential test of the stores: one random sequence of operations — creates (valid, taken and
 * invalid), appends of every event kind (terminal ones, after-terminal ones and invalid ones, with and
 * without a run fence), acks (with and without a run fence), lease renewals and releases by several
 * owners, reaps and purges under a clock that moves forward, now and then back, and now and then reads
 * `NaN` (re-creating purged ids),
 * `listTasks`, `readEvents` at various `afterSeq` and limits, `getTask` and `latestSeqs` — runs against
 * the memory, SQLite (`:memory:` and a file) and Postgres stores on one shared clock, and every result
 * (or error code) of the others must equal the memory
 * store's (under a `NaN` clock, `internal` may stand for another rejection: see `eitherInternal`). Every
 * input and every result is scribbled over once the call settled: no store may keep a reference to either.
 * At the end of a run the whole state (every task, log, list and latest seq) is compared, and
 * each store's change feed must publish what the memory store's did, in its order (the Postgres feed may
 * publish again a change of a task it forgot on a purge, as `postgres-change-feed.ts` documents).
 * Then the stores are closed and the first operations run again: every store must reject them alike.
 *
 * Runs: 30 in `npm test` (4–6 s at load average 2–5, 13 s at 15: sequences of 0–120 operations),
 * 1,000 in `npm run test:deep` (FC_MIN_RUNS) and CI's deep step (2–3.5 minutes at load average 5–8).
 * After a full run the test checks the lengths the generator reached (fast-check's default size would
 * keep them at 10 or fewer) and that every case it claims (each event kind committed, an append after
 * the end, an append and an ack refused by their run fence, a purged id re-created, a lease held by
 * another owner, a reap and a purge that did something, the clock stepped back, `internal` under a `NaN`
 * clock) occurred.
 * Before the feed rule above, seed 5 at 300 runs found a purged task's terminal change published twice
 * by the Postgres store: the documented re-publication after a purge, not a defect.
 */

const NUM_RUNS = 30;
const MAX_OPS = 120;
/** A run of 120 operations on Postgres takes well under a second; this bounds a stuck one. */
const TIMEOUT_MS = 120_000;

// Ids whose binary order (listTasks' tie-break, reap's and purge's) differs from a locale's, one at the
// length limit, and one that is never valid.
const IDS = ['a', 'b', 'B', 'a.1', 'a-1', '_x', '9', 'x'.repeat(LIMITS.maxIdLength), '__proto__'] as const;
const OWNERS = ['alice', 'bob'] as const;
const WORKERS = ['w1', 'w2', 'w3'] as const;

type Fence = 'none' | 'current' | 'stale' | 'bad' | 'empty' | 'string';

type Op =
  | { op: 'create'; input: Record<string, unknown> }
  | { op: 'append'; id: string; input: unknown; fence: Fence }
  | { op: 'ack'; id: string; seq: number; fence: Fence }
  | { op: 'renew'; id: string; owner: string; ttlMs: number; fence: Fence }
  | { op: 'release'; id: string; owner: string; fence: Fence }
  | { op: 'reap'; options: unknown }
  | { op: 'advance'; ms: number }
  | { op: 'broken clock'; inner: Op }
  | { op: 'purge'; options: unknown }
  | { op: 'list'; query: unknown }
  | { op: 'read'; id: string; afterSeq: number; limit: number | undefined }
  | { op: 'get'; id: string }
  | { op: 'latest'; ids: string[] };

/** Mostly `valid`, once in `1 + odds` times `invalid`: an invalid value anywhere rejects the whole call. */
function rarely<T>(valid: fc.Arbitrary<T>, invalid: fc.Arbitrary<T>, odds = 15): fc.Arbitrary<T> {
  return fc.oneof({ arbitrary: valid, weight: odds }, { arbitrary: invalid, weight: 1 });
}

// Three ids take most operations, so tasks live long enough to grow a log; the rest are for ordering.
const id = fc.oneof(
  { arbitrary: fc.constantFrom<string>('a', 'b', 'B'), weight: 20 },
  { arbitrary: fc.constantFrom<string>(...IDS.slice(3, -1)), weight: 8 },
  { arbitrary: fc.constant('__proto__'), weight: 1 },
);
const worker = fc.constantFrom(...WORKERS);
const ttl = rarely(fc.constantFrom(500, 1000, 2000), fc.constantFrom(0, 1.5));
const fence = fc.constantFrom<Fence>(
  'none',
  'none',
  'none',
  'current',
  'current',
  'stale',
  'bad',
  'empty',
  'string',
);
const text = rarely(
  fc.constantFrom('working', '', 'ünï ☃ 😀', 'x'.repeat(LIMITS.maxKeyLength)),
  fc.constantFrom('nul\u0000', '\ud800', 'x'.repeat(LIMITS.maxKeyLength + 1)),
  30,
);
const count = rarely(
  fc.oneof(
    { arbitrary: fc.nat({ max: 12 }), weight: 10 },
    { arbitrary: fc.constantFrom(LIMITS.maxCount, -0), weight: 1 },
  ),
  fc.constantFrom(-1, 1.5),
  30,
);
/** `depth` arrays nested in one another. */
function nested(depth: number): unknown {
  let value: unknown = 0;
  for (let level = 1; level < depth; level++) value = [value];
  return value;
}

const json = fc.oneof(
  {
    arbitrary: fc.constantFrom<unknown>(null, { n: -0, list: [1, null, 'two'] }, [], 'text', { b: 1, a: 2 }),
    weight: 6,
  },
  {
    // The edges of what `jsonSchema` accepts, and values a JSON column (jsonb) could store differently.
    arbitrary: fc.constantFrom<unknown>(
      { s: '\ud800' },
      { s: 'a\u2028b\u0001' },
      { 'ü 😀': [1e300, 5e-324, 0.1 + 0.2, -1.5e-7, 2 ** 53 + 2] },
      nested(64),
      nested(65),
      'x'.repeat(LIMITS.maxJsonBytes - 2),
      'x'.repeat(LIMITS.maxJsonBytes - 1),
      'é'.repeat(LIMITS.maxJsonBytes / 2 - 1),
      { s: 'nul\u0000' },
      { 'k\u0000': 1 },
      Number.NaN,
    ),
    weight: 1,
  },
);

const appendInput: fc.Arbitrary<unknown> = fc.oneof(
  {
    arbitrary: fc.record(
      {
        type: fc.constant('progress'),
        total: fc.option(count, { nil: null }),
        done: count,
        current: fc.option(text, { nil: null }),
        message: fc.option(text, { nil: null }),
      },
      { requiredKeys: ['type'] },
    ),
    weight: 5,
  },
  {
    arbitrary: fc.record(
      {
        type: fc.constant('item'),
        key: rarely(fc.constantFrom('node-1', 'node-2'), fc.constant('')),
        ok: fc.boolean(),
        error: fc.option(text, { nil: null }),
        detail: json,
        current: fc.option(text, { nil: null }),
      },
      { requiredKeys: ['type', 'key', 'ok'] },
    ),
    weight: 8,
  },
  {
    arbitrary: fc.record(
      { type: fc.constant('completed'), result: json, message: fc.option(text, { nil: null }) },
      { requiredKeys: ['type'] },
    ),
    weight: 1,
  },
  {
    arbitrary: fc.record({
      type: fc.constant('failed'),
      error: fc.record({ code: fc.constantFrom('boom', ''), message: text }),
    }),
    weight: 1,
  },
  {
    arbitrary: fc.record(
      { type: fc.constant('cancelled'), reason: fc.option(text, { nil: null }) },
      { requiredKeys: ['type'] },
    ),
    weight: 1,
  },
  { arbitrary: fc.record({ type: fc.constant('interrupted'), reason: text }), weight: 1 },
  {
    // Invalid: unknown type, missing fields, unknown keys, not an object.
    arbitrary: fc.constantFrom<unknown>(
      { type: 'bogus' },
      { type: 'failed' },
      { type: 'interrupted' },
      { type: 'item', ok: true },
      { type: 'progress', extra: 1 },
      { type: 'completed', result: () => 1 },
      null,
      'progress',
    ),
    weight: 1,
  },
);

const createInput = fc.record(
  {
    id,
    owner: rarely(fc.constantFrom<string>(...OWNERS), fc.constant('bad owner')),
    kind: fc.constantFrom('batch', 'other'),
    total: fc.option(count, { nil: null }),
    message: fc.option(text, { nil: null }),
    lease: fc.record({ owner: worker, ttlMs: ttl }),
  },
  { requiredKeys: ['id', 'owner', 'kind'] },
);

const limit = fc.option(rarely(fc.constantFrom(1, 2, 3, 100_000), fc.constant(0)), { nil: undefined });
const seq = rarely(
  fc.oneof({ arbitrary: fc.nat({ max: 3 }), weight: 3 }, { arbitrary: fc.nat({ max: 14 }), weight: 1 }),
  fc.constantFrom(-1, 0.5),
);

const opArbitrary: fc.Arbitrary<Op> = fc.oneof(
  { arbitrary: createInput.map((input): Op => ({ op: 'create', input })), weight: 4 },
  {
    arbitrary: fc
      .tuple(id, appendInput, fence)
      .map(([taskId, input, f]): Op => ({ op: 'append', id: taskId, input, fence: f })),
    weight: 10,
  },
  {
    arbitrary: fc
      .tuple(id, seq, fence)
      .map(([taskId, acked, f]): Op => ({ op: 'ack', id: taskId, seq: acked, fence: f })),
    weight: 2,
  },
  {
    arbitrary: fc
      .tuple(id, worker, ttl, fence)
      .map(([taskId, owner, ttlMs, f]): Op => ({ op: 'renew', id: taskId, owner, ttlMs, fence: f })),
    weight: 3,
  },
  {
    arbitrary: fc
      .tuple(id, worker, fence)
      .map(([taskId, owner, f]): Op => ({ op: 'release', id: taskId, owner, fence: f })),
    weight: 2,
  },
  {
    arbitrary: limit.map((l): Op => ({ op: 'reap', options: l === undefined ? undefined : { limit: l } })),
    weight: 2,
  },
  {
    arbitrary: fc
      .oneof(
        { arbitrary: fc.constantFrom(0, 1, 499, 500, 1000, 2000), weight: 4 },
        { arbitrary: fc.integer({ min: 0, max: 2500 }), weight: 4 },
        { arbitrary: fc.constant(0.5), weight: 1 },
        // Back: a clock stepped back, or the next call served by a replica whose clock is behind.
        { arbitrary: fc.constantFrom(-1, -500, -2500), weight: 1 },
      )
      .map((ms): Op => ({ op: 'advance', ms })),
    weight: 3,
  },
  {
    arbitrary: fc.tuple(rarely(fc.constantFrom(0, 500, 2000), fc.constant(-1)), limit).map(
      ([olderThanMs, l]): Op => ({
        op: 'purge',
        options: l === undefined ? { olderThanMs } : { olderThanMs, limit: l },
      }),
    ),
    weight: 2,
  },
  {
    arbitrary: fc
      .record(
        {
          owner: fc.constantFrom(...OWNERS),
          statuses: rarely(
            fc.subarray(['running', 'completed', 'failed', 'cancelled', 'interrupted']),
            fc.constant<string[]>(['bogus']),
          ),
          limit: rarely(fc.constantFrom(1, 2, 3, 5000), fc.constant(0)),
        },
        { requiredKeys: ['owner'] },
      )
      .map((query): Op => ({ op: 'list', query })),
    weight: 2,
  },
  {
    arbitrary: fc
      .tuple(id, seq, limit)
      .map(([taskId, afterSeq, l]): Op => ({ op: 'read', id: taskId, afterSeq, limit: l })),
    weight: 3,
  },
  { arbitrary: id.map((taskId): Op => ({ op: 'get', id: taskId })), weight: 2 },
  {
    arbitrary: rarely(
      fc.subarray([...IDS.filter((taskId) => taskId !== '__proto__'), 'never', 'a']),
      fc.constant<string[]>(['__proto__']),
    ).map((ids): Op => ({ op: 'latest', ids })),
    weight: 1,
  },
);

/** Now and then an operation while the clock reads `NaN` (no time): every store rejects it with `internal`. */
const opArbitraryWithBrokenClock = fc.oneof(
  { arbitrary: opArbitrary, weight: 40 },
  { arbitrary: opArbitrary.map((inner): Op => ({ op: 'broken clock', inner })), weight: 1 },
);

type Outcome = { ok: unknown } | { error: string };

/** Runs one operation on one store; `runs` holds each id's current run (its `createdAt`) as the memory store saw it. */
async function apply(
  store: ProgressStore,
  clock: SteppingClock,
  op: Op,
  runs: Map<string, number[]>,
  given: unknown[] = [],
) {
  const fenceOf = (taskId: string, f: Fence): { run?: number } | undefined => {
    const history = runs.get(taskId) ?? [];
    const current = history.at(-1) ?? 0;
    if (f === 'none') return undefined;
    if (f === 'current') return { run: current };
    if (f === 'stale') return { run: history.at(-2) ?? current + 1 };
    if (f === 'empty') return {};
    if (f === 'string') return 'run' as never;
    return { run: -1 };
  };
  // Each store gets its own copy of every input, scribbled over once the call settled (`given`): a store
  // keeps no reference to its inputs.
  const copy = <T>(value: T): T => {
    if (typeof value !== 'object' || value === null) return value;
    const copied = structuredCopy(value);
    given.push(copied);
    return copied;
  };
  switch (op.op) {
    case 'create':
      return store.createTask(copy(op.input) as never);
    case 'append': {
      const options = fenceOf(op.id, op.fence);
      return options === undefined
        ? store.append(op.id, copy(op.input) as never)
        : store.append(op.id, copy(op.input) as never, options);
    }
    case 'ack': {
      const options = fenceOf(op.id, op.fence);
      return options === undefined ? store.ack(op.id, op.seq) : store.ack(op.id, op.seq, options);
    }
    case 'renew': {
      const options = fenceOf(op.id, op.fence);
      return options === undefined
        ? store.renewLease(op.id, op.owner, op.ttlMs)
        : store.renewLease(op.id, op.owner, op.ttlMs, options);
    }
    case 'release': {
      const options = fenceOf(op.id, op.fence);
      return options === undefined
        ? store.releaseLease(op.id, op.owner)
        : store.releaseLease(op.id, op.owner, options);
    }
    case 'reap':
      return store.reapExpiredLeases(copy(op.options) as never);
    case 'advance':
      // The clock is shared: only the first store's turn moves it.
      return clock.now();
    case 'broken clock':
      clock.broken = true;
      try {
        return await apply(store, clock, op.inner, runs, given);
      } finally {
        clock.broken = false;
      }
    case 'purge':
      return store.purgeFinished(copy(op.options) as never);
    case 'list':
      return store.listTasks(copy(op.query) as never);
    case 'read':
      return op.limit === undefined
        ? store.readEvents(op.id, op.afterSeq)
        : store.readEvents(op.id, op.afterSeq, op.limit);
    case 'get':
      return store.getTask(op.id);
    case 'latest':
      return Object.fromEntries([...(await store.latestSeqs(op.ids))].sort(([x], [y]) => (x < y ? -1 : 1)));
  }
}

/**
 * Overwrites every field of `value`, deeply (arrays grow too): what a caller may do to the objects a
 * store returned, and to those it passed in once the call returned. Returned objects belong to the
 * caller, so the state read afterwards must not change.
 */
function scribble(value: unknown): void {
  if (typeof value !== 'object' || value === null || Object.isFrozen(value)) return;
  const record = value as Record<string, unknown>;
  for (const key of Object.keys(record)) {
    const field = record[key];
    if (typeof field === 'object' && field !== null) scribble(field);
    else record[key] = 'scribbled';
  }
  if (Array.isArray(value)) value.push('scribbled');
}

/** A deep copy that keeps functions (an invalid `result`) as they are. */
function structuredCopy<T>(value: T): T {
  if (Array.isArray(value)) return value.map(structuredCopy) as T;
  if (typeof value !== 'object' || value === null) return value;
  return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, structuredCopy(v)])) as T;
}

async function outcome(run: () => Promise<unknown>): Promise<Outcome> {
  try {
    return { ok: await run() };
  } catch (error) {
    if (error instanceof ProgressError) return { error: error.code };
    return { error: `not a ProgressError: ${String(error)}` };
  }
}

/** The whole state a store holds, read through its public methods. */
async function stateOf(store: ProgressStore): Promise<unknown> {
  const tasks: Record<string, unknown> = {};
  for (const taskId of IDS) {
    tasks[taskId] = {
      task: await outcome(() => store.getTask(taskId)),
      events: await outcome(() => store.readEvents(taskId, 0)),
    };
  }
  const lists: Record<string, unknown> = {};
  for (const owner of OWNERS) lists[owner] = await store.listTasks({ owner, limit: 1000 });
  const valid = IDS.filter((taskId) => taskId !== '__proto__');
  const latest = Object.fromEntries(
    [...(await store.latestSeqs(valid))].sort(([x], [y]) => (x < y ? -1 : 1)),
  );
  return { tasks, lists, latest };
}

const pool = newPool(10);
const schema = freshSchema('differential');

beforeAll(async () => {
  const db = new Kysely<unknown>({ dialect: new PostgresDialect({ pool }) });
  await migrateProgressSchema(db, { schema });
});

afterAll(async () => {
  await dropSchema(pool, schema);
  await pool.end();
});

/**
 * The shared clock: moves forward, and (unlike `ManualClock`) back too, as a clock stepped back or skewed
 * between replicas does — every timestamp is the clock's, so the stores must agree whatever it says.
 */
class SteppingClock {
  #now = Date.UTC(2026, 0, 1);
  /** While true the clock reads `NaN`. */
  broken = false;
  readonly now = (): number => (this.broken ? Number.NaN : this.#now);
  advance(ms: number): void {
    this.#now += ms;
  }
}

interface Stores {
  readonly clock: SteppingClock;
  readonly stores: ReadonlyArray<readonly [string, ProgressStore]>;
  close(): Promise<void>;
}

async function openStores(): Promise<Stores> {
  await pool.query(`TRUNCATE ${schema}.tasks, ${schema}.events`);
  const clock = new SteppingClock();
  const directory = mkdtempSync(join(tmpdir(), 'finishline-differential-'));
  const memory = new MemoryProgressStore({ clock: clock.now });
  const sqlite = new SqliteProgressStore({ database: ':memory:', clock: clock.now });
  // A file as a server uses it (WAL, its data-version watcher on): its own commits publish once too.
  const sqliteFile = new SqliteProgressStore({ database: join(directory, 'progress.db'), clock: clock.now });
  const postgres = await PostgresProgressStore.open({ pool, schema, migrate: false, clock: clock.now });
  return {
    clock,
    stores: [
      ['memory', memory],
      ['sqlite (:memory:)', sqlite],
      ['sqlite (file)', sqliteFile],
      ['postgres', postgres],
    ],
    close: async () => {
      await Promise.all([memory.close(), sqlite.close(), sqliteFile.close(), postgres.close()]);
      rmSync(directory, { recursive: true, force: true });
    },
  };
}

/** Runs `ops` on every store and fails at the first result that differs from the memory store's. */
async function runDifferential(ops: readonly Op[]): Promise<void> {
  const { clock, stores, close } = await openStores();
  const runs = new Map<string, number[]>();
  let closed = false;
  // What each change feed published, in order: every committed event once, after its commit.
  const feeds = stores.map(() => [] as string[]);
  const unsubscribe = stores.map(([, store], position) =>
    store.changes.subscribe((change) => {
      feeds[position]?.push(`${change.taskId}#${change.seq}${change.terminal ? ' terminal' : ''}`);
    }),
  );
  try {
    for (const [index, op] of ops.entries()) {
      if (op.op === 'advance') clock.advance(op.ms);
      const outcomes: Outcome[] = [];
      for (const [, store] of stores) {
        const given: unknown[] = [];
        outcomes.push(await outcome(() => apply(store, clock, op, runs, given)));
        scribble(given);
      }
      const [reference, ...others] = outcomes;
      if (reference !== undefined) noteCoverage(op, reference, runs);
      for (const [position, other] of others.entries()) {
        expect(
          op.op === 'broken clock' ? eitherInternal(other, reference) : other,
          `${stores[position + 1]?.[0]} vs memory at op ${index}: ${show(op)}`,
        ).toEqual(reference);
      }
      if (op.op === 'create' && reference !== undefined && 'ok' in reference) {
        const created = reference.ok as { id: string; createdAt: number };
        runs.set(created.id, [...(runs.get(created.id) ?? []), created.createdAt]);
      }
      for (const result of outcomes) if ('ok' in result) scribble(result.ok);
    }
    const [reference, ...others] = await Promise.all(stores.map(([, store]) => stateOf(store)));
    for (const [position, other] of others.entries()) {
      expect(other, `${stores[position + 1]?.[0]} vs memory: final state`).toEqual(reference);
    }
    // Postgres publishes its own commits right after them, but a re-read of the feed may hold them back.
    const published = feeds[0]?.length ?? 0;
    await eventually('every feed caught up with the memory store', () =>
      feeds.every((feed) => feed.length >= published),
    );
    for (const [position, feed] of feeds.entries()) {
      expect(unexplained(feeds[0] ?? [], feed), `${stores[position]?.[0]} vs memory: change feed`).toEqual(
        [],
      );
    }
    // Closed, every method rejects the same way (`closed`, or `invalid_input` where a store checks first).
    for (const stop of unsubscribe) stop();
    closed = true;
    await close();
    for (const [index, op] of ops.slice(0, 20).entries()) {
      const outcomes: Outcome[] = [];
      for (const [, store] of stores) outcomes.push(await outcome(() => apply(store, clock, op, runs)));
      const [reference, ...others] = outcomes;
      for (const [position, other] of others.entries()) {
        expect(other, `${stores[position + 1]?.[0]} vs memory, closed, op ${index}: ${show(op)}`).toEqual(
          reference,
        );
      }
    }
  } finally {
    if (!closed) {
      for (const stop of unsubscribe) stop();
      await close();
    }
  }
}

/**
 * What of `feed` the memory store's feed (`reference`) does not explain: `feed` must publish `reference`
 * in its order, and may publish again a change it already published (documented for the Postgres feed:
 * it forgets what it published of a purged task, and its own commit may then come back through `NOTIFY`
 * or a re-read). Anything else it publishes, and anything of `reference` it leaves out, is returned.
 */
function unexplained(reference: readonly string[], feed: readonly string[]): string[] {
  const problems: string[] = [];
  let next = 0;
  for (const [position, change] of feed.entries()) {
    if (change === reference[next]) next += 1;
    else if (!feed.slice(0, position).includes(change)) problems.push(`published ${change}`);
  }
  for (const change of reference.slice(next)) problems.push(`left out ${change}`);
  return problems;
}

/**
 * Under a clock that reads no time, a store rejects with `internal` once it reads the clock, and stores
 * read it at different points (the memory store after finding the task, SQLite before): `internal` where
 * the memory store rejected otherwise counts as the same answer. A success against a rejection does not.
 */
function eitherInternal(other: Outcome, reference: Outcome | undefined): Outcome | undefined {
  const bothRejected = reference !== undefined && 'error' in reference && 'error' in other;
  return bothRejected && other.error === 'internal' ? reference : other;
}

function show(op: Op): string {
  return JSON.stringify(op, (_key, value) => (typeof value === 'function' ? '<function>' : value));
}

const lengths: number[] = [];
const covered = new Set<string>();

/** What a property run must have reached at least once, or it proves less than it claims. */
const MUST_COVER = [
  ...['progress', 'item', 'completed', 'failed', 'cancelled', 'interrupted'].map((type) => `append ${type}`),
  'append after the end (task_finished)',
  'append refused by its run fence (task_not_found)',
  'append invalid_input',
  'create of a purged id',
  'create of a taken id',
  'renew ok',
  'renew lease_held',
  'release ok',
  'ack ok',
  'ack refused by its run fence (task_not_found)',
  'reap interrupted a task',
  'purge deleted a task',
  'list non-empty',
  'read non-empty',
  'clock stepped back',
  'internal under a clock that reads no time',
];

function noteCoverage(op: Op, result: Outcome, runs: ReadonlyMap<string, readonly number[]>): void {
  const error = 'error' in result ? result.error : undefined;
  if (op.op === 'advance' && op.ms < 0) covered.add('clock stepped back');
  if (op.op === 'broken clock' && error === 'internal')
    covered.add('internal under a clock that reads no time');
  if (op.op === 'append') {
    const type = (op.input as { type?: unknown } | null)?.type;
    if (error === undefined) covered.add(`append ${String(type)}`);
    else if (error === 'task_finished') covered.add('append after the end (task_finished)');
    else if (error === 'task_not_found' && op.fence === 'stale' && runs.has(op.id)) {
      covered.add('append refused by its run fence (task_not_found)');
    } else if (error === 'invalid_input') covered.add('append invalid_input');
  } else if (op.op === 'create') {
    const known = runs.get(String(op.input.id));
    if (error === undefined && known !== undefined) covered.add('create of a purged id');
    if (error === 'invalid_input' && known !== undefined) covered.add('create of a taken id');
  } else if (op.op === 'reap' || op.op === 'purge' || op.op === 'list' || op.op === 'read') {
    const value = 'ok' in result ? result.ok : undefined;
    const some = Array.isArray(value) ? value.length > 0 : typeof value === 'number' && value > 0;
    const label = {
      reap: 'reap interrupted a task',
      purge: 'purge deleted a task',
      list: 'list non-empty',
      read: 'read non-empty',
    }[op.op];
    if (some) covered.add(label);
  } else if (op.op === 'renew' || op.op === 'release' || op.op === 'ack') {
    covered.add(`${op.op} ${error ?? 'ok'}`);
    if (op.op === 'ack' && error === 'task_not_found' && op.fence === 'stale' && runs.has(op.id)) {
      covered.add('ack refused by its run fence (task_not_found)');
    }
  }
}

it(
  `memory, SQLite and Postgres agree on every result of random operation sequences (${propertyRuns(NUM_RUNS)} runs of 0–${MAX_OPS} operations)`,
  async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(opArbitraryWithBrokenClock, { maxLength: MAX_OPS, size: 'max' }),
        async (ops) => {
          lengths.push(ops.length);
          await runDifferential(ops);
        },
      ),
      propertyParams(NUM_RUNS),
    );
    // The sizes the generator claims (without `size: 'max'` fast-check keeps arrays at 10 or fewer), and
    // the cases it claims to reach; checked over a full run only (a replay of one run proves nothing here).
    if (lengths.length >= NUM_RUNS) {
      expect(Math.max(...lengths)).toBeGreaterThan(MAX_OPS * 0.8);
      expect(lengths.reduce((sum, n) => sum + n, 0) / lengths.length).toBeGreaterThan(MAX_OPS * 0.3);
      expect(MUST_COVER.filter((what) => !covered.has(what))).toEqual([]);
    }
  },
  propertyTimeoutMs(NUM_RUNS, TIMEOUT_MS),
);
