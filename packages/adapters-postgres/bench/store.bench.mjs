// Benchmark of @finishline/postgres against raw baselines measured in the same run.
//
//   cd packages/progress-core && npx tsup && cd ../adapters-postgres && npx tsup
//   node bench/store.bench.mjs
//
// Env: FINISHLINE_TEST_PG_URL (default postgres://postgres@127.0.0.1:5432/postgres), BENCH_EVENTS (appends
// per throughput run, default 20000), BENCH_WINDOW (appends in flight on the hot task, default 512; the
// 1,000-task scenario runs one worker per task), BENCH_SAMPLES
// (latency samples, default 1000), BENCH_RUNS (timed runs per throughput figure after one untimed warm-up,
// default 3; the figure is their median). Works in a scratch schema that it drops at the end. Bounded: every
// scenario has a fixed count, and the whole run aborts after BENCH_TIMEOUT_MS (default 180000).
import { randomBytes } from 'node:crypto';
import { cpus, loadavg } from 'node:os';
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { PostgresProgressStore } from '../dist/index.js';

const url = process.env.FINISHLINE_TEST_PG_URL || 'postgres://postgres@127.0.0.1:5432/postgres';
const EVENTS = Number(process.env.BENCH_EVENTS ?? 20_000);
const WINDOW = Number(process.env.BENCH_WINDOW ?? 512);
const SAMPLES = Number(process.env.BENCH_SAMPLES ?? 1000);
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const TASKS = 1000;
const BATCH = 500;
const TIMEOUT_MS = Number(process.env.BENCH_TIMEOUT_MS ?? 180_000);
const schema = `bench_${randomBytes(4).toString('hex')}`;
const rawChannel = `${schema}_raw`;

const watchdog = setTimeout(() => {
  console.error(`benchmark exceeded ${TIMEOUT_MS} ms; aborting (scratch schema ${schema} may remain)`);
  process.exit(2);
}, TIMEOUT_MS);
watchdog.unref();

const poolA = new pg.Pool({ connectionString: url, max: 8, application_name: 'finishline-bench-a' });
const poolB = new pg.Pool({ connectionString: url, max: 4, application_name: 'finishline-bench-b' });
const q = (name) => `${pg.escapeIdentifier(schema)}.${pg.escapeIdentifier(name)}`;

function itemInput(i) {
  return { type: 'item', key: `node-${String(i).padStart(6, '0')}`, ok: true };
}

/** Runs `count` calls of `call(i, worker)` from `window` workers, each awaiting its own calls in turn. */
async function windowed(count, window, call) {
  let next = 0;
  const start = performance.now();
  async function worker(w) {
    while (next < count) {
      const i = next++;
      await call(i, w);
    }
  }
  await Promise.all(Array.from({ length: Math.min(window, count) }, (_, w) => worker(w)));
  return performance.now() - start;
}

function percentile(sorted, p) {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

function summarize(samples) {
  const sorted = [...samples].sort((a, b) => a - b);
  return { p50: percentile(sorted, 50), p99: percentile(sorted, 99) };
}

/** Plain batched INSERTs of the event row shape (same table definition, same indexes), 2 connections. */
async function rawInsertRate(taskIdOf) {
  const table = q('raw_events');
  await poolA.query(`TRUNCATE ${table}`);
  const batches = Math.ceil(EVENTS / BATCH);
  let nextBatch = 0;
  const start = performance.now();
  const body = JSON.stringify({
    item: { key: 'node-000000', ok: true, error: null, detail: null },
    progress: { total: null, done: 1, succeeded: 1, failed: 0, current: null, message: null },
  });
  async function worker() {
    while (nextBatch < batches) {
      const b = nextBatch++;
      const ids = [];
      const seqs = [];
      for (let i = b * BATCH; i < Math.min(EVENTS, (b + 1) * BATCH); i++) {
        ids.push(taskIdOf(i));
        seqs.push(i + 1);
      }
      await poolA.query(
        `INSERT INTO ${table} (task_id, seq, type, time, body)
         SELECT id, seq, 'item', $3, $4::json FROM unnest($1::text[], $2::int8[]) AS v(id, seq)`,
        [ids, seqs, Date.now(), body],
      );
    }
  }
  await Promise.all([worker(), worker()]);
  return EVENTS / ((performance.now() - start) / 1000);
}

/**
 * Appends/s: `window` workers, worker `w` appending to task `w mod n` and awaiting each append, as a job
 * runner with one worker per task (or `window` workers on one hot task) would.
 */
async function storeAppendRate(store, taskIds, window) {
  const elapsed = await windowed(EVENTS, window, (i, w) =>
    store.append(taskIds[w % taskIds.length], itemInput(i)),
  );
  return EVENTS / (elapsed / 1000);
}

/**
 * Latency, three ways, interleaved sample by sample so that all three see the same machine (a shared VM's
 * disk and CPU drift over seconds): a bare `SELECT pg_notify` on one connection handled on another; a raw
 * transaction shaped like one append (lock, update, insert + notify, commit); and a store append on one
 * store (pool A) handled by another store's change feed (pool B, its own LISTEN connection).
 */
async function latencies() {
  const listener = new pg.Client({ connectionString: url });
  const sender = new pg.Client({ connectionString: url });
  await listener.connect();
  await sender.connect();
  await listener.query(`LISTEN ${pg.escapeIdentifier(rawChannel)}`);
  await sender.query(`INSERT INTO ${q('raw_tasks')} (id, seq) VALUES ('lat', 0)`);
  await sender.query(`TRUNCATE ${q('raw_events')}`);
  let onRaw;
  listener.on('notification', (message) => onRaw?.(message.payload));
  const rawReceived = (payload) =>
    new Promise((resolve) => {
      onRaw = (received) => {
        if (received === payload) resolve(performance.now());
      };
    });

  // The writer's pool notes when each statement leaves. An append's last statement commits it (its
  // COMMIT, or the one autocommit statement of an append planned from the row the store wrote last), so
  // the feed's own latency (commit → handled on another connection) can be told apart from the append's
  // cost before it; appends run one at a time here, so the last statement sent is the append's.
  let commitSentAt = 0;
  let appending = false;
  const proxies = new WeakMap();
  const timedPool = {
    options: poolA.options,
    Client: poolA.Client,
    end: async () => {},
    async connect() {
      const client = await poolA.connect();
      if (!proxies.has(client)) {
        proxies.set(
          client,
          new Proxy(client, {
            get(target, property) {
              if (property === 'query') {
                return (text, values) => {
                  if (appending) commitSentAt = performance.now();
                  return target.query(text, values);
                };
              }
              const value = Reflect.get(target, property, target);
              return typeof value === 'function' ? value.bind(target) : value;
            },
          }),
        );
      }
      return proxies.get(client);
    },
  };
  const writer = await PostgresProgressStore.open({ pool: timedPool, schema, migrate: false });
  const observer = await PostgresProgressStore.open({ pool: poolB, schema, migrate: false });
  const task = await writer.createTask({ owner: 'bench', kind: 'latency' });
  let onFeed;
  const stop = observer.changes.subscribe((change) => {
    if (change.taskId === task.id) onFeed?.(change.seq);
  });
  const feedReceived = (seq) =>
    new Promise((resolve) => {
      onFeed = (received) => {
        if (received === seq) resolve(performance.now());
      };
    });

  const bare = [];
  const rawTx = [];
  const rawCommit = [];
  const feed = [];
  const feedCommit = [];
  const append = [];
  for (let i = 1; i <= SAMPLES; i++) {
    let received = rawReceived(`n${i}`);
    let start = performance.now();
    await sender.query('SELECT pg_notify($1, $2)', [rawChannel, `n${i}`]);
    bare.push((await received) - start);

    received = rawReceived(`t${i}`);
    start = performance.now();
    await sender.query('BEGIN');
    await sender.query(`SELECT seq FROM ${q('raw_tasks')} WHERE id = 'lat' FOR UPDATE`);
    await sender.query(
      `WITH u AS (UPDATE ${q('raw_tasks')} SET seq = $2 WHERE id = 'lat'),
            e AS (INSERT INTO ${q('raw_events')} (task_id, seq, type, time, body) VALUES ('lat', $2, 'progress', 0, '{}'))
       SELECT pg_notify($1, $3)`,
      [rawChannel, i, `t${i}`],
    );
    const rawCommitAt = performance.now();
    await sender.query('COMMIT');
    const rawAt = await received;
    rawTx.push(rawAt - start);
    rawCommit.push(rawAt - rawCommitAt);

    received = feedReceived(i);
    start = performance.now();
    appending = true;
    await writer.append(task.id, { type: 'progress', done: i });
    appending = false;
    append.push(performance.now() - start);
    const feedAt = await received;
    feed.push(feedAt - start);
    feedCommit.push(feedAt - commitSentAt);
  }
  stop();
  const stats = observer.changes.stats();
  await writer.close();
  await observer.close();
  await listener.end();
  await sender.end();
  return {
    bare: summarize(bare),
    rawTx: summarize(rawTx),
    rawCommit: summarize(rawCommit),
    feed: summarize(feed),
    feedCommit: summarize(feedCommit),
    append: summarize(append),
    stats,
  };
}

/**
 * Runs `measure` (which returns a rate) once untimed to warm up, then RUNS times; returns the median and
 * notes every run in `notes`.
 */
async function steadyRate(label, measure, notes) {
  const warmUp = await measure();
  const rates = [];
  for (let run = 0; run < RUNS; run++) rates.push(await measure());
  const sorted = [...rates].sort((a, b) => a - b);
  notes.push(`${label}: warm-up ${fmtRate(warmUp)}, runs ${rates.map(fmtRate).join(', ')}`);
  return sorted[Math.floor(sorted.length / 2)];
}

function fmtRate(value) {
  return `${Math.round(value).toLocaleString('en-US')} /s`;
}
function fmtMs(value) {
  return `${value.toFixed(3)} ms`;
}

async function main() {
  const setup = await PostgresProgressStore.open({ pool: poolA, schema });
  await setup.close();
  await poolA.query(`CREATE TABLE ${q('raw_tasks')} (id text COLLATE "C" PRIMARY KEY, seq int8 NOT NULL)`);
  await poolA.query(
    `CREATE TABLE ${q('raw_events')} (LIKE ${q('events')} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)`,
  );
  const server = (await poolA.query('SHOW server_version')).rows[0].server_version;
  console.log(
    `${cpus().length} CPUs, load average at the start ${loadavg()
      .map((load) => load.toFixed(2))
      .join(' ')} (1, 5, 15 min)`,
  );
  console.log(
    `Postgres ${server}; ${EVENTS} appends per run (hot task: ${WINDOW} in flight; ${TASKS} tasks: one worker each); ${SAMPLES} latency samples`,
  );

  const rows = [];
  const runsNote = [];
  const store = await PostgresProgressStore.open({ pool: poolA, schema, migrate: false });
  const rawHot = await steadyRate('raw hot', () => rawInsertRate(() => 'hot'), runsNote);
  const hotBefore = store.stats().batches;
  const hotRate = await steadyRate(
    'store hot',
    async () =>
      storeAppendRate(store, [(await store.createTask({ owner: 'bench', kind: 'hot' })).id], WINDOW),
    runsNote,
  );
  const hotBatches = store.stats().batches - hotBefore;
  rows.push([
    'appends/s, one hot task',
    fmtRate(hotRate),
    fmtRate(rawHot),
    `${(hotRate / rawHot).toFixed(2)}×`,
  ]);

  let taskSet = 0;
  const rawMany = await steadyRate('raw many', () => rawInsertRate((i) => `t-${i % TASKS}`), runsNote);
  const manyBefore = store.stats().batches;
  const manyRate = await steadyRate(
    `store ${TASKS} tasks`,
    async () => {
      // A fresh set of tasks per run, created before the clock starts, so every run appends to new rows.
      const set = taskSet++;
      const tasks = [];
      for (let i = 0; i < TASKS; i += 100) {
        const created = await Promise.all(
          Array.from({ length: 100 }, (_, k) =>
            store.createTask({ id: `t${set}-${i + k}`, owner: 'bench', kind: 'many' }),
          ),
        );
        tasks.push(...created.map((task) => task.id));
      }
      return storeAppendRate(store, tasks, TASKS);
    },
    runsNote,
  );
  const manyBatches = store.stats().batches - manyBefore;
  const { largestBatch } = store.stats();
  rows.push([
    `appends/s, ${TASKS} tasks in parallel`,
    fmtRate(manyRate),
    fmtRate(rawMany),
    `${(manyRate / rawMany).toFixed(2)}×`,
  ]);
  await store.close();

  const latency = await latencies();
  const ratio = (a, b) => `${(a / b).toFixed(2)}×`;
  const vsBare = (label, value) => {
    rows.push([
      `${label} p50`,
      fmtMs(value.p50),
      fmtMs(latency.bare.p50),
      ratio(value.p50, latency.bare.p50),
    ]);
    rows.push([
      `${label} p99`,
      fmtMs(value.p99),
      fmtMs(latency.bare.p99),
      ratio(value.p99, latency.bare.p99),
    ]);
  };
  vsBare('change feed, commit sent → other store handled,', latency.feedCommit);
  vsBare('  raw tx, COMMIT sent → listener handled,', latency.rawCommit);
  vsBare('change feed, append() called → other store handled,', latency.feed);
  vsBare('  raw append-shaped tx, BEGIN → listener handled,', latency.rawTx);
  rows.push([
    'store append call → resolve p50 / p99',
    `${fmtMs(latency.append.p50)} / ${fmtMs(latency.append.p99)}`,
    '',
    '',
  ]);

  const header = ['scenario', 'store', 'baseline', 'ratio'];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)));
  const line = (cells) => cells.map((cell, i) => cell.padEnd(widths[i])).join(' | ');
  console.log();
  console.log(line(header));
  console.log(widths.map((w) => '-'.repeat(w)).join('-|-'));
  for (const row of rows) console.log(line(row));
  console.log(
    `load average at the end ${loadavg()
      .map((load) => load.toFixed(2))
      .join(' ')}`,
  );
  console.log();
  console.log(
    'baselines: appends = plain batched INSERTs (500 rows/statement, 2 connections) into a copy of the',
  );
  console.log(
    'events table. Latency = a bare `SELECT pg_notify` on one connection, handled on another. The raw',
  );
  console.log(
    'append-shaped transaction (BEGIN; lock; update + insert + notify; COMMIT) is what any transactional',
  );
  console.log('append costs. Latency samples of all kinds are interleaved, so they see the same machine.');
  console.log(
    `throughput: the median of ${RUNS} timed runs after one untimed warm-up run (a cold process's first appends ` +
      'measure V8 compiling the code, not the store); every run:',
  );
  for (const note of runsNote) console.log(`  ${note}`);
  console.log(
    `group commit: hot task ${hotBatches} transactions over ${RUNS + 1} runs; ` +
      `${TASKS} tasks ${manyBatches}; largest ${largestBatch} appends`,
  );
  console.log(
    `observer feed: ${latency.stats.fromNotifications} by NOTIFY, ${latency.stats.duplicates} duplicates dropped, ` +
      `${latency.stats.missedByNotifications} found by the poll`,
  );
}

try {
  await main();
} finally {
  await poolA.query(`DROP SCHEMA IF EXISTS ${pg.escapeIdentifier(schema)} CASCADE`).catch(() => {});
  await poolA.end();
  await poolB.end();
  clearTimeout(watchdog);
}
