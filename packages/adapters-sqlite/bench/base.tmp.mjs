// Benchmark of @finishline/sqlite against plain better-sqlite3 on the same machine, in the same run.
//
//   cd packages/progress-core && npx tsup && cd ../adapters-sqlite && npx tsup && node bench/store.bench.mjs
//
// Every phase is bounded in count and in time (BENCH_SECONDS per phase, default 4). Prints one table.
import { fork } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { SqliteProgressStore } from '../dist-base/index.js';

const require = createRequire(import.meta.url);
const Database = require('better-sqlite3');

const SECONDS = Number(process.env.BENCH_SECONDS ?? 4);
/** Throughput phases alternate store and baseline runs this many times and report medians: the machine is shared. */
const ROUNDS = 3;
const directory = mkdtempSync(join(tmpdir(), 'finishline-sqlite-bench-'));
let files = 0;
const newFile = () => join(directory, `bench-${files++}.db`);
const now = () => performance.now();
const wallNow = () => performance.timeOrigin + performance.now();

/** CPU time (user + system) this process used since `start`, in microseconds. */
function cpuMicros(start) {
  const { user, system } = process.cpuUsage(start);
  return user + system;
}

function median(values) {
  return percentile(values, 50);
}

function percentile(samples, p) {
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

/** A store on a fresh file, plus N tasks. */
async function storeWithTasks(count, options = {}) {
  const file = newFile();
  const store = new SqliteProgressStore({ database: file, ...options });
  const ids = [];
  for (let i = 0; i < count; i++)
    ids.push((await store.createTask({ id: `task-${i}`, owner: 'bench', kind: 'bench' })).id);
  return { store, ids, file };
}

/**
 * The baseline connection: the store's own schema (created by a throwaway store), WAL + synchronous
 * NORMAL like the store, and one prepared INSERT of the same row the store writes for an item event.
 */
function rawConnection() {
  const file = newFile();
  new SqliteProgressStore({ database: file, dataVersionPollMs: 0 }).close();
  const db = new Database(file);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  const insert = db.prepare(
    'INSERT INTO finishline_events (task_id, seq, type, time, total, done, succeeded, failed, current, message, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
  );
  const begin = db.prepare('BEGIN IMMEDIATE');
  const commit = db.prepare('COMMIT');
  const row = (taskId, seq) => [
    taskId,
    seq,
    'item',
    Date.now(),
    null,
    seq,
    seq,
    0,
    null,
    null,
    JSON.stringify({ key: `n-${seq}`, ok: true, error: null, detail: null }),
  ];
  return { db, insert, begin, commit, row };
}

// ——— throughput ———

/** Appends in waves of `wave` (issued in one tick, one group commit each) until `limit` or time runs out. */
async function storeThroughput(taskCount, wave, limit) {
  const { store, ids } = await storeWithTasks(taskCount, { dataVersionPollMs: 0 });
  const seqs = new Map(ids.map((id) => [id, 0]));
  let appended = 0;
  const started = now();
  const cpu = process.cpuUsage();
  const deadline = started + (SECONDS * 1000) / ROUNDS;
  while (appended < limit && now() < deadline) {
    const pending = [];
    for (let i = 0; i < wave; i++) {
      const id = ids[(appended + i) % ids.length];
      seqs.set(id, seqs.get(id) + 1);
      pending.push(store.append(id, { type: 'item', key: `n-${seqs.get(id)}`, ok: true }));
    }
    await Promise.all(pending);
    appended += wave;
  }
  const rate = appended / ((now() - started) / 1000);
  const cpuUs = cpuMicros(cpu) / appended;
  await store.close();
  return { rate, cpuUs };
}

/** The same rows with plain batched INSERTs, one transaction per `wave` rows. */
function rawThroughput(taskCount, wave, limit) {
  const { db, insert, begin, commit, row } = rawConnection();
  const seqs = new Array(taskCount).fill(0);
  let inserted = 0;
  const started = now();
  const cpu = process.cpuUsage();
  const deadline = started + (SECONDS * 1000) / ROUNDS;
  while (inserted < limit && now() < deadline) {
    begin.run();
    for (let i = 0; i < wave; i++) {
      const task = (inserted + i) % taskCount;
      insert.run(row(`task-${task}`, ++seqs[task]));
    }
    commit.run();
    inserted += wave;
  }
  const rate = inserted / ((now() - started) / 1000);
  const cpuUs = cpuMicros(cpu) / inserted;
  db.close();
  return { rate, cpuUs };
}

// ——— latency, same process ———

async function storeLatencySameProcess(samples) {
  const file = newFile();
  const raw = new Database(file);
  let committedAt = 0;
  const database = {
    memory: false,
    close: () => raw.close(),
    prepare(sql) {
      const statement = raw.prepare(sql);
      if (sql !== 'COMMIT') return statement;
      return {
        run: (...parameters) => {
          const result = statement.run(...parameters);
          committedAt = now();
          return result;
        },
        get: (...parameters) => statement.get(...parameters),
        all: (...parameters) => statement.all(...parameters),
      };
    },
  };
  const store = new SqliteProgressStore({ database, dataVersionPollMs: 0 });
  await store.createTask({ id: 'hot', owner: 'bench', kind: 'bench' });
  const fromCommit = [];
  const fromCall = [];
  let calledAt = 0;
  store.changes.subscribe(() => {
    const at = now();
    fromCommit.push(at - committedAt);
    fromCall.push(at - calledAt);
  });
  const deadline = now() + SECONDS * 1000;
  for (let i = 0; i < samples && now() < deadline; i++) {
    calledAt = now();
    await store.append('hot', { type: 'item', key: `n-${i}`, ok: true });
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
  await store.close();
  raw.close();
  return { fromCommit, fromCall };
}

/** Baseline: INSERT + COMMIT, then an in-process emit, timed from before the INSERT. */
async function rawLatencySameProcess(samples) {
  const { db, insert, begin, commit, row } = rawConnection();
  const listeners = [];
  const latencies = [];
  listeners.push((startedAt) => latencies.push(now() - startedAt));
  const deadline = now() + SECONDS * 1000;
  for (let i = 0; i < samples && now() < deadline; i++) {
    const startedAt = now();
    begin.run();
    insert.run(row('hot', i + 1));
    commit.run();
    for (const listener of listeners) listener(startedAt);
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
  db.close();
  return latencies;
}

// ——— latency, other process ———

function runChild(args) {
  const child = fork(fileURLToPath(new URL('./feed-child.mjs', import.meta.url)), args, { stdio: 'inherit' });
  const messages = [];
  const waiters = [];
  child.on('message', (message) => {
    messages.push(message);
    for (const wake of waiters.splice(0)) wake();
  });
  const next = async (type) => {
    for (;;) {
      const found = messages.find((message) => message.type === type);
      if (found) return found;
      await new Promise((resolve) => waiters.push(resolve));
    }
  };
  return { child, next };
}

async function storeLatencyOtherProcess(samples, pollMs) {
  const { store, file } = await storeWithTasks(1, { dataVersionPollMs: pollMs });
  const received = [];
  store.changes.subscribe(() => received.push(wallNow()));
  const { child, next } = runChild(['store', file, 'task-0', String(samples)]);
  await next('ready');
  child.send('go');
  const { commits } = await next('commits');
  while (received.length < commits.length) await new Promise((resolve) => setTimeout(resolve, pollMs));
  await store.close();
  return commits.map((committedAt, index) => received[index] - committedAt);
}

/** Baseline: a raw child INSERTs; this process polls `PRAGMA data_version` and reads rows past a rowid. */
async function rawLatencyOtherProcess(samples, pollMs) {
  const file = newFile();
  const db = new Database(file);
  db.pragma('journal_mode = WAL');
  db.exec(
    'CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, task_id TEXT, seq INTEGER, payload TEXT)',
  );
  const version = db.prepare('PRAGMA data_version').pluck();
  const since = db.prepare('SELECT id FROM events WHERE id > ? ORDER BY id').pluck();
  let lastVersion = version.get();
  let highWaterMark = 0;
  const received = [];
  const timer = setInterval(() => {
    const current = version.get();
    if (current === lastVersion) return;
    lastVersion = current;
    for (const id of since.all(highWaterMark)) {
      received.push(wallNow());
      highWaterMark = id;
    }
  }, pollMs);
  const { child, next } = runChild(['raw', file, 'task-0', String(samples)]);
  await next('ready');
  child.send('go');
  const { commits } = await next('commits');
  while (received.length < commits.length) await new Promise((resolve) => setTimeout(resolve, pollMs));
  clearInterval(timer);
  db.close();
  return commits.map((committedAt, index) => received[index] - committedAt);
}

// ——— run ———

const rows = [];
const fmtRate = (value) => `${Math.round(value).toLocaleString('en-US')}/s`;
const fmtMs = (samples) => `${percentile(samples, 50).toFixed(3)} / ${percentile(samples, 99).toFixed(3)} ms`;
const ratio = (a, b) => `${((a / b) * 100).toFixed(0)}%`;
const fmtUs = (value) => `${value.toFixed(2)} µs`;

for (const [label, tasks, limit] of [
  ['appends/s, one hot task (waves of 1000)', 1, 400_000],
  ['appends/s, 1,000 tasks in parallel', 1000, 300_000],
]) {
  const raw = [];
  const store = [];
  for (let round = 0; round < ROUNDS; round++) {
    raw.push(rawThroughput(tasks, 1000, limit / ROUNDS));
    store.push(await storeThroughput(tasks, 1000, limit / ROUNDS));
  }
  const storeRate = median(store.map((run) => run.rate));
  const rawRate = median(raw.map((run) => run.rate));
  rows.push([label, fmtRate(storeRate), fmtRate(rawRate), ratio(storeRate, rawRate)]);
  const storeCpu = median(store.map((run) => run.cpuUs));
  const rawCpu = median(raw.map((run) => run.cpuUs));
  rows.push([
    `  CPU time per append (${tasks === 1 ? 'hot task' : '1,000 tasks'})`,
    fmtUs(storeCpu),
    fmtUs(rawCpu),
    ratio(storeCpu, rawCpu),
  ]);
}
{
  const raw = await rawLatencySameProcess(1500);
  const store = await storeLatencySameProcess(1500);
  rows.push(['feed p50/p99, same process, COMMIT → listener', fmtMs(store.fromCommit), fmtMs(raw), '']);
  rows.push(['feed p50/p99, same process, append() → listener', fmtMs(store.fromCall), fmtMs(raw), '']);
}
for (const pollMs of [50, 5]) {
  const samples = pollMs === 50 ? 300 : 600;
  const raw = await rawLatencyOtherProcess(samples, pollMs);
  const store = await storeLatencyOtherProcess(samples, pollMs);
  rows.push([`feed p50/p99, other process, poll ${pollMs} ms`, fmtMs(store), fmtMs(raw), '']);
}

rmSync(directory, { recursive: true, force: true });

const header = ['measurement', '@finishline/sqlite', 'raw better-sqlite3 baseline', 'store/baseline'];
const widths = header.map((title, column) =>
  Math.max(title.length, ...rows.map((row) => row[column].length)),
);
const line = (cells) => `| ${cells.map((cell, column) => cell.padEnd(widths[column])).join(' | ')} |`;
console.log(
  `Node ${process.version}, better-sqlite3 + SQLite ${new Database(':memory:').prepare('select sqlite_version()').pluck().get()}, WAL, synchronous=NORMAL`,
);
console.log(
  'Baselines: throughput = the same rows with prepared INSERTs, one transaction per 1000 rows (median of',
);
console.log(
  `${ROUNDS} alternating rounds each; CPU time = user + system of this process, less sensitive to other load);`,
);
console.log('same-process latency = INSERT + COMMIT + emit, timed from before the INSERT;');
console.log(
  'other-process latency = a raw child INSERTs, this process polls PRAGMA data_version at the same interval.',
);
console.log(line(header));
console.log(line(widths.map((width) => '-'.repeat(width))));
for (const row of rows) console.log(line(row));
// The machine may be shared: the load average says how far to trust the absolute figures.
console.log(
  `${cpus().length} CPUs, load average at the end ${loadavg()
    .map((load) => load.toFixed(2))
    .join(' ')} (1, 5, 15 min)`,
);
