// Side-by-side benchmark of Finishline against its peers (issue 7).
//
//   npm run build && node benchmarks/peers/run.mjs [--quick]
//
// One scenario, run for each system one after another in this process tree, on this machine, on
// loopback only: T tasks of M items each, W watchers per task (one socket each), replicas as child
// processes (replica.mjs) on 127.0.0.1 ports, watchers assigned round-robin to the replicas, every task
// run on replica 0; with and without injected disconnects (each watcher's socket cut once at a random
// point while its task runs). Then, for Finishline only: idle sockets held by one replica, and a
// reconnect storm. Systems:
//   finishline-sqlite  Finishline on SQLite, 1 replica
//   finishline-pg      Finishline on Postgres, 2 replicas
//   baseline           the original design (500 ms poller, global `processed` flag), Postgres, 2 replicas
//   socketio           Socket.IO 4 + @socket.io/postgres-adapter, recovery on, 2 replicas
// Postgres: FINISHLINE_TEST_PG_URL or postgres://postgres@127.0.0.1:5432/postgres; each run uses a scratch
// schema dropped afterwards. Every wait is bounded; a watchdog kills everything if the run overruns.
// Output: markdown tables on stdout, progress on stderr, raw figures in .tmp/peers-results.json
// (.tmp/peers-results-quick.json with --quick; PEERS_RESULTS overrides).
import { fork } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { collectHostGarbage, loopDelayMeter, machineStealMs } from './stalls.mjs';
import { baselineWatcher, finishlineWatcher, socketioWatcher } from './watchers.mjs';
import { toggleWindowProfile } from './window-profile.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const QUICK = process.argv.includes('--quick');
const PG_URL = process.env.FINISHLINE_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
// Under the repository's git-ignored .tmp/: raw output, not source.
const RESULTS =
  process.env.PEERS_RESULTS ??
  join(HERE, '..', '..', '.tmp', QUICK ? 'peers-results-quick.json' : 'peers-results.json');

/** PEERS_CONFIG=x10 runs one configuration (for debugging). */
const CONFIGS = (
  QUICK
    ? [
        { name: 'small', tasks: 5, watchers: 2, items: 10 },
        { name: 'x10', tasks: 50, watchers: 20, items: 10 },
      ]
    : [
        { name: 'small', tasks: 20, watchers: 2, items: 10 },
        { name: 'x10', tasks: 200, watchers: 20, items: 10 },
        // Issue 12 asks for an x30 row: three times x10's tasks (12,000 sockets per system).
        { name: 'x30', tasks: 600, watchers: 20, items: 10 },
      ]
).filter((c) => !process.env.PEERS_CONFIG || c.name === process.env.PEERS_CONFIG);
const ALL_SYSTEMS = [
  { name: 'finishline-sqlite', replicas: 1 },
  { name: 'finishline-pg', replicas: 2 },
  { name: 'baseline', replicas: 2 },
  { name: 'socketio', replicas: 2 },
];
/** PEERS_ONLY=baseline,socketio runs a subset (for debugging; the published figures run all four). */
const ONLY = process.env.PEERS_ONLY?.split(',');
const SYSTEMS = ONLY ? ALL_SYSTEMS.filter((s) => ONLY.includes(s.name)) : ALL_SYSTEMS;
const SKIP_CAPACITY = process.env.PEERS_SKIP_CAPACITY === '1';
/** The watcher host's longest event-loop delay since the previous call (see stalls.mjs). */
const hostLoopDelayMaxMs = loopDelayMeter();
/** Unmeasured passes of each scenario before the measured one, on the same replica processes. */
const WARMUP_PASSES = Number(process.env.PEERS_WARMUP_PASSES ?? 0);
if (!Number.isSafeInteger(WARMUP_PASSES) || WARMUP_PASSES < 0) {
  throw new Error(`PEERS_WARMUP_PASSES must be an integer ≥ 0, got ${process.env.PEERS_WARMUP_PASSES}`);
}
/**
 * Pause between two items of a task: a task lasts items × PACE_MS, long enough to cut sockets in it.
 * PEERS_PACE_MS (diagnostic, never for published figures) stretches the tasks with the same messages, to
 * see whether a cost follows the time tasks run rather than what they send.
 */
const PACE_MS = Number(process.env.PEERS_PACE_MS ?? 50);
if (!Number.isSafeInteger(PACE_MS) || PACE_MS < 1) {
  throw new Error(`PEERS_PACE_MS must be a positive integer, got ${process.env.PEERS_PACE_MS}`);
}
/**
 * Task starts are spread evenly over this window, so that the offered load is a stream of batches
 * rather than one burst (x10 offers ×100 messages over the same window: that is the growth measured).
 */
const WINDOW_MS = QUICK ? 2000 : 5000;
/** How long watchers get, after the last terminal commit, to see the completions. */
const GRACE_MS = QUICK ? 5000 : 10_000;
const CONNECT_BATCH = 200;
const READY_TIMEOUT_MS = 60_000;
const CAPACITY_SOCKETS = Number(process.env.PEERS_SOCKETS ?? (QUICK ? 2000 : 10_000));
const WATCHDOG_MS = QUICK ? 5 * 60_000 : 20 * 60_000;

const now = () => performance.timeOrigin + performance.now();
const log = (message) => process.stderr.write(`${message}\n`);
const children = new Set();
const schemas = new Set();
const tmp = mkdtempSync(join(tmpdir(), 'finishline-peers-'));

const watchdog = setTimeout(() => {
  log(`peers bench: still running after ${WATCHDOG_MS} ms, giving up`);
  for (const child of children) child.kill('SIGKILL');
  void dropSchemas().finally(() => process.exit(1));
}, WATCHDOG_MS);
watchdog.unref();

function within(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

// ── Postgres scratch schemas ─────────────────────────────────────────────────────────────────────

async function sql(text) {
  const client = new pg.Client({ connectionString: PG_URL });
  await client.connect();
  try {
    return await client.query(text);
  } finally {
    await client.end();
  }
}

async function newSchema(system) {
  const schema = `peers_${system.replace(/-/g, '_')}_${process.pid}_${Math.floor(Math.random() * 1e6)}`;
  schemas.add(schema);
  await sql(`CREATE SCHEMA ${schema}`);
  if (system === 'baseline') {
    await sql(`CREATE TABLE ${schema}.progress_messages (
      id bigserial PRIMARY KEY, task_id text NOT NULL, kind text NOT NULL, payload jsonb NOT NULL,
      created_at timestamptz NOT NULL DEFAULT clock_timestamp(), processed boolean NOT NULL DEFAULT false);
      CREATE INDEX ON ${schema}.progress_messages (processed, created_at)`);
  }
  if (system === 'socketio') {
    await sql(`CREATE TABLE ${schema}.socket_io_attachments (
      id bigserial UNIQUE, created_at timestamptz DEFAULT now(), payload bytea)`);
  }
  // Finishline's stores create their own tables (migrations) in the schema.
  return schema;
}

async function dropSchemas() {
  for (const schema of schemas) {
    try {
      await sql(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
      schemas.delete(schema);
    } catch (error) {
      log(`could not drop schema ${schema}: ${error.message}`);
    }
  }
}

// ── Replicas ─────────────────────────────────────────────────────────────────────────────────────

class Replica {
  constructor(system, index, env) {
    this.child = fork(join(HERE, 'replica.mjs'), [], {
      env: { ...process.env, PEER_SYSTEM: system, PEER_INDEX: String(index), ...env },
      // PEERS_CPU_PROF=<dir> writes a V8 CPU profile per replica there (docs/benchmarks.md, Reproduce).
      execArgv: [
        '--expose-gc',
        ...(process.env.PEERS_REPLICA_FLAGS?.split(' ').filter(Boolean) ?? []),
        ...(process.env.PEERS_CPU_PROF ? ['--cpu-prof', `--cpu-prof-dir=${process.env.PEERS_CPU_PROF}`] : []),
      ],
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    children.add(this.child);
    this.waiters = [];
    this.onTerminal = null;
    this.exited = new Promise((resolve) => this.child.once('exit', resolve));
    void this.exited.then(() => children.delete(this.child));
    this.child.on('message', (message) => {
      if (message.type === 'terminal') {
        this.onTerminal?.(message);
        return;
      }
      if (message.type === 'error') {
        const waiter = this.waiters.shift();
        waiter?.reject(new Error(message.message));
        return;
      }
      const index = this.waiters.findIndex((w) => w.type === message.type);
      if (index >= 0) this.waiters.splice(index, 1)[0].resolve(message);
    });
    this.child.on('exit', (code) => {
      for (const waiter of this.waiters.splice(0)) waiter.reject(new Error(`replica exited with ${code}`));
    });
  }

  expect(type, ms) {
    return within(
      new Promise((resolve, reject) => this.waiters.push({ type, resolve, reject })),
      ms,
      `replica ${type}`,
    );
  }

  request(message, reply, ms = 60_000) {
    const answer = this.expect(reply, ms);
    this.child.send(message);
    return answer;
  }

  async stop() {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    try {
      await this.request({ type: 'stop' }, 'stopped', 10_000);
    } catch {
      // fall through to the kill below
    }
    await within(this.exited, 3000, 'replica exit').catch(() => this.child.kill('SIGKILL'));
  }
}

async function startReplicas(system, count, env) {
  const replicas = [];
  for (let i = 0; i < count; i++) {
    const replica = new Replica(system, i, env);
    replicas.push(replica);
    replica.port = (await replica.expect('ready', 30_000)).port;
  }
  return replicas;
}

function urlOf(system, port) {
  switch (system) {
    case 'finishline-sqlite':
    case 'finishline-pg':
      return `ws://127.0.0.1:${port}/progress`;
    case 'baseline':
      return `ws://127.0.0.1:${port}/`;
    case 'socketio':
      return `http://127.0.0.1:${port}`;
    default:
      throw new Error(`unknown system ${system}`);
  }
}

// ── Figures ──────────────────────────────────────────────────────────────────────────────────────

function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

function latencySummary(samples) {
  const sorted = [...samples].sort((a, b) => a - b);
  return {
    count: sorted.length,
    p50: percentile(sorted, 50),
    p99: percentile(sorted, 99),
    max: sorted.at(-1) ?? null,
  };
}

// ── One scenario for one system ──────────────────────────────────────────────────────────────────

async function runScenario(systemSpec, config, disconnects) {
  const { name: system, replicas: replicaCount } = systemSpec;
  const env = {};
  let directory = null;
  if (system === 'finishline-sqlite') {
    directory = mkdtempSync(join(tmp, 'sqlite-'));
    env.PEER_SQLITE_FILE = join(directory, 'progress.db');
  } else {
    env.PEER_PG_URL = PG_URL;
    env.PEER_SCHEMA = await newSchema(system);
  }
  const replicas = await startReplicas(system, replicaCount, env);
  try {
    // Warm-up passes: the same scenario on the same replicas, figures discarded, so that the measured
    // pass sees processes whose hot paths are compiled, as a server that has run for a while does.
    for (let i = 0; i < WARMUP_PASSES; i++) await measurePass(system, replicas, config, disconnects, false);
    return await measurePass(system, replicas, config, disconnects, true);
  } finally {
    await Promise.all(replicas.map((r) => r.stop()));
    if (env.PEER_SCHEMA) {
      await sql(`DROP SCHEMA IF EXISTS ${env.PEER_SCHEMA} CASCADE`).catch((e) => log(`drop: ${e.message}`));
      schemas.delete(env.PEER_SCHEMA);
    }
    if (directory) rmSync(directory, { recursive: true, force: true });
  }
}

/**
 * One pass of the scenario on running replicas: new tasks, new watchers (closed at the end), figures. A
 * warm-up pass (`measured` false) writes no window profiles.
 */
async function measurePass(system, replicas, config, disconnects, measured) {
  const { tasks: T, watchers: W, items: M } = config;
  const replicaCount = replicas.length;
  const urls = replicas.map((r) => urlOf(system, r.port));
  const watchers = [];
  try {
    const { ids } = await replicas[0].request({ type: 'create', count: T, items: M }, 'created');
    // Watchers: round-robin over the replicas, connected in bounded batches.
    let next = 0;
    const plan = [];
    for (const taskId of ids)
      for (let w = 0; w < W; w++) plan.push({ taskId, replica: next++ % replicaCount });
    for (let start = 0; start < plan.length; start += CONNECT_BATCH) {
      const batch = plan.slice(start, start + CONNECT_BATCH).map(({ taskId, replica }) => {
        let watcher;
        if (system === 'baseline') watcher = baselineWatcher(urls, replica, taskId, M);
        else if (system === 'socketio') watcher = socketioWatcher(urls[replica], taskId);
        else watcher = finishlineWatcher(urls[replica], taskId);
        watcher.taskId = taskId;
        watcher.replica = replica;
        watchers.push(watcher);
        return watcher.ready;
      });
      await within(Promise.all(batch), READY_TIMEOUT_MS, `${batch.length} watchers subscribed`);
    }
    const messagesBefore = watchers.reduce((sum, w) => sum + w.messages, 0);
    let lastDelivery = 0;
    for (const watcher of watchers) {
      watcher.onMessage = () => {
        lastDelivery = now();
      };
    }
    const terminalAt = new Map();
    const writeMs = [];
    replicas[0].onTerminal = ({ id, t, called }) => {
      terminalAt.set(id, t);
      writeMs.push(t - called);
    };
    // The watcher host's garbage (earlier scenarios' clients, this one's set-up) collected now rather than
    // in a major GC inside the window: such a pause (62–125 ms measured) stalls every watcher at once and
    // lands in whichever system's row it falls, though no browser shares one heap with 4,000 others.
    collectHostGarbage();
    const before = await Promise.all(
      replicas.map((r) => r.request({ type: 'stats', profile: measured }, 'stats')),
    );

    // Cuts: each watcher once, uniformly within the task's running time.
    const cutTimers = [];
    const runMs = M * PACE_MS;
    const startsMs = ids.map((_, i) => Math.round((i * WINDOW_MS) / T));
    const startOf = new Map(ids.map((id, i) => [id, startsMs[i]]));
    if (disconnects) {
      for (const watcher of watchers) {
        cutTimers.push(setTimeout(() => watcher.cut(), startOf.get(watcher.taskId) + Math.random() * runMs));
      }
    }
    if (measured) await toggleWindowProfile(`host-${system}`);
    const hostCpuBefore = process.cpuUsage();
    const stealBefore = machineStealMs();
    hostLoopDelayMaxMs();
    const runStart = now();
    await replicas[0].request({ type: 'run', ids, items: M, paceMs: PACE_MS, startsMs }, 'ran', 120_000);
    const lastTerminal = Math.max(...terminalAt.values());
    // Wait for every watcher to finish, or the grace period.
    const deadline = lastTerminal + GRACE_MS;
    while (now() < deadline && watchers.some((w) => w.finishedAt === null)) await sleep(20);
    for (const timer of cutTimers) clearTimeout(timer);
    const after = await Promise.all(
      replicas.map((r) => r.request({ type: 'stats', profile: measured }, 'stats')),
    );
    const hostCpu = process.cpuUsage(hostCpuBefore);
    const hostLoopDelayMs = hostLoopDelayMaxMs();
    const stealAfter = machineStealMs();
    if (measured) await toggleWindowProfile(`host-${system}`);

    const latencies = [];
    const byReplica = replicas.map(() => []);
    const perTask = new Map();
    for (const watcher of watchers) {
      const t = terminalAt.get(watcher.taskId);
      if (watcher.finishedAt !== null && t !== undefined) {
        latencies.push(Math.max(0, watcher.finishedAt - t));
        byReplica[watcher.replica].push(Math.max(0, watcher.finishedAt - t));
      }
      const entry = perTask.get(watcher.taskId) ?? { all: true };
      entry.all &&= watcher.finishedAt !== null && t !== undefined;
      perTask.set(watcher.taskId, entry);
    }
    const delivered = watchers.reduce((sum, w) => sum + w.messages, 0) - messagesBefore;
    const tasksAllSeen = [...perTask.values()].filter((e) => e.all).length;
    const watchersSeen = watchers.filter((w) => w.finishedAt !== null).length;
    const result = {
      // 1-minute load average when the scenario ended: the machine may be shared with other work.
      loadAverage: loadavg()[0],
      system,
      replicas: replicaCount,
      config: config.name,
      tasks: T,
      watchersPerTask: W,
      items: M,
      disconnects,
      latencyMs: latencySummary(latencies),
      // Watchers on replica 0 (where the tasks run) and on the other replica(s).
      latencyMsByReplica: byReplica.map(latencySummary),
      // The terminal write itself (issued → committed) on replica 0; not part of latencyMs.
      terminalWriteMs: latencySummary(writeMs),
      completionShare: tasksAllSeen / T,
      watcherCompletionShare: watchersSeen / watchers.length,
      messagesDelivered: delivered,
      messagesExpected: watchers.length * (M + 1),
      deliverySeconds: Math.max(0.001, (lastDelivery - runStart) / 1000),
      messagesPerSecond: delivered / Math.max(0.001, (lastDelivery - runStart) / 1000),
      watcherHostCpuSeconds: (hostCpu.user + hostCpu.system) / 1e6,
      watcherHostSystemCpuSeconds: hostCpu.system / 1e6,
      // Stalls that no system's code accounts for: the longest event-loop delay of the watcher host, and
      // the CPU time the machine's hypervisor took away (steal, every CPU) in the window; see stalls.mjs.
      watcherHostLoopDelayMaxMs: hostLoopDelayMs,
      machineStealMs: stealBefore === null || stealAfter === null ? null : stealAfter - stealBefore,
      replicaStats: after.map((a, i) => ({
        cpuSeconds: a.cpuSeconds - before[i].cpuSeconds,
        systemCpuSeconds: a.systemCpuSeconds - before[i].systemCpuSeconds,
        // Finishline: terminal frames re-sent in the window for want of an ack (not counted as delivered).
        terminalResends: a.terminalResends === null ? null : a.terminalResends - before[i].terminalResends,
        cpuSecondsTotal: a.cpuSeconds,
        // PEER_DIAG_THREADS=1: the window's CPU of the main thread and of the helper threads apart.
        threads: a.threads && {
          main: a.threads.main - before[i].threads.main,
          helpers: a.threads.helpers - before[i].threads.helpers,
        },
        peakRssMb: a.peakRssMb,
        sockets: a.sockets,
        loopDelayMaxMs: a.loopDelayMaxMs,
      })),
    };
    return result;
  } finally {
    await Promise.all(watchers.map((w) => w.close().catch(() => undefined)));
  }
}

// ── Finishline: idle sockets per replica, then a reconnect storm ─────────────────────────────────

async function capacity(count) {
  const directory = mkdtempSync(join(tmp, 'capacity-'));
  const [replica] = await startReplicas('finishline-sqlite', 1, {
    PEER_SQLITE_FILE: join(directory, 'p.db'),
  });
  const url = urlOf('finishline-sqlite', replica.port);
  const watchers = [];
  const result = { target: count };
  try {
    const { ids } = await replica.request({ type: 'create', count: 1, items: 1 }, 'created');
    const taskId = ids[0];
    // With PEERS_CPU_PROF_WINDOW, the replica's and this process's profiles cover the storm alone.
    const empty = await replica.request({ type: 'stats', gc: true, profile: false }, 'stats');
    const start = now();
    try {
      for (let i = 0; i < count; i += 500) {
        const batch = [];
        for (let j = i; j < Math.min(count, i + 500); j++) {
          const watcher = finishlineWatcher(url, taskId);
          watchers.push(watcher);
          batch.push(watcher.ready);
        }
        await within(Promise.all(batch), READY_TIMEOUT_MS, `sockets ${i}..${i + batch.length}`);
      }
    } catch (error) {
      result.stoppedAt = watchers.length;
      result.error = String(error.message);
    }
    result.connectSeconds = (now() - start) / 1000;
    await sleep(1000);
    const full = await replica.request({ type: 'stats', gc: true }, 'stats');
    await toggleWindowProfile('host-storm');
    result.sockets = full.sockets;
    result.rssMbEmpty = empty.rssMb;
    result.rssMbFull = full.rssMb;
    result.heapMbEmpty = empty.heapUsedMb;
    result.heapMbFull = full.heapUsedMb;
    result.rssKbPerSocket = ((full.rssMb - empty.rssMb) * 1024) / Math.max(1, full.sockets);
    result.heapKbPerSocket = ((full.heapUsedMb - empty.heapUsedMb) * 1024) / Math.max(1, full.sockets);
    log(`capacity: ${full.sockets} sockets, ${result.rssKbPerSocket.toFixed(1)} KiB RSS per socket`);

    // Storm: every socket of the replica dropped at once; each client reconnects (its own backoff,
    // full jitter under 1 s) and resubscribes from its cursor. "Resumed" = reconnected, and a progress
    // event committed after the storm delivered to every watcher.
    const cpuBefore = full.cpuSeconds;
    const opensBefore = watchers.map((w) => w.opens);
    const t0 = now();
    for (const watcher of watchers) watcher.cut();
    const allOpen = () => watchers.every((w, i) => w.opens > opensBefore[i]);
    const stormDeadline = t0 + 60_000;
    while (now() < stormDeadline && !allOpen()) await sleep(20);
    result.stormAllReconnectedSeconds = allOpen() ? (now() - t0) / 1000 : null;
    result.stormReconnected = watchers.filter((w, i) => w.opens > opensBefore[i]).length;
    const { seq } = await replica.request({ type: 'bump', id: taskId, n: 1 }, 'bumped');
    const seen = () => watchers.filter((w) => w.lastSeq >= seq).length;
    while (now() < stormDeadline && seen() < watchers.length) await sleep(20);
    result.stormAllResumedSeconds = seen() === watchers.length ? (now() - t0) / 1000 : null;
    result.stormResumed = seen();
    const afterStorm = await replica.request({ type: 'stats' }, 'stats');
    await toggleWindowProfile('host-storm');
    result.stormCpuSeconds = afterStorm.cpuSeconds - cpuBefore;
    result.peakRssMb = afterStorm.peakRssMb;
    log(
      `storm: all reconnected in ${result.stormAllReconnectedSeconds} s, resumed in ${result.stormAllResumedSeconds} s`,
    );
  } finally {
    // Close in batches: thousands of client timers and sockets at once is fine, but bounded is kinder.
    for (let i = 0; i < watchers.length; i += 1000) {
      await Promise.all(watchers.slice(i, i + 1000).map((w) => w.close().catch(() => undefined)));
    }
    await replica.stop();
    rmSync(directory, { recursive: true, force: true });
  }
  return result;
}

// ── Report ───────────────────────────────────────────────────────────────────────────────────────

const fmt = (value, digits = 1) =>
  value === null || value === undefined ? '—' : Number(value).toFixed(digits);
const ratio = (value, reference) =>
  value === null || reference === null || reference === undefined || reference === 0
    ? '—'
    : `${(value / reference).toFixed(2)}×`;

function table(results) {
  const lines = [];
  for (const config of CONFIGS) {
    for (const disconnects of [false, true]) {
      const rows = results.filter((r) => r.config === config.name && r.disconnects === disconnects);
      if (rows.length === 0) continue;
      const ref = rows.find((r) => r.system === 'finishline-pg');
      lines.push(
        '',
        `### ${config.name}: T=${config.tasks} tasks × M=${config.items} items, W=${config.watchers} watchers/task, ${disconnects ? 'each socket cut once' : 'no disconnects'}`,
        '',
        '| system | replicas | p50 ms | p99 ms | max ms | terminal write p50/p99 ms | tasks all watchers saw end | msgs delivered | msgs/s | CPU s per replica | peak RSS MB per replica | watcher host CPU s | CPU ms per 1,000 msgs (replicas + host) | load avg | p99 vs FL-pg | CPU vs FL-pg (replicas + host) |',
        '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
      );
      for (const r of rows) {
        // Issue 12's CPU aim counts both ends: the replicas and the host running the watchers.
        const totalCpu = (x) =>
          x.replicaStats.reduce((s, y) => s + y.cpuSeconds, 0) + x.watcherHostCpuSeconds;
        const cpu = totalCpu(r);
        const refCpu = ref ? totalCpu(ref) : null;
        const cpuPerThousand = r.messagesDelivered > 0 ? (1e6 * cpu) / r.messagesDelivered : null;
        lines.push(
          `| ${r.system} | ${r.replicas} | ${fmt(r.latencyMs.p50)} | ${fmt(r.latencyMs.p99)} | ${fmt(r.latencyMs.max)} | ${fmt(r.terminalWriteMs.p50)} / ${fmt(r.terminalWriteMs.p99)} | ${(100 * r.completionShare).toFixed(1)}% (watchers ${(100 * r.watcherCompletionShare).toFixed(1)}%) | ${r.messagesDelivered}/${r.messagesExpected} | ${fmt(r.messagesPerSecond, 0)} | ${r.replicaStats.map((s) => fmt(s.cpuSeconds, 2)).join(' / ')} | ${r.replicaStats.map((s) => fmt(s.peakRssMb, 0)).join(' / ')} | ${fmt(r.watcherHostCpuSeconds, 2)} | ${fmt(cpuPerThousand, 1)} | ${fmt(r.loadAverage)} | ${ratio(r.latencyMs.p99, ref?.latencyMs.p99)} | ${ratio(cpu, refCpu)} |`,
        );
      }
    }
  }
  // Growth ×10 (T and W each ×10, so ×100 watchers): x10 figure / small figure per system.
  const small = CONFIGS.find((c) => c.name === 'small');
  const large = CONFIGS.find((c) => c.name === 'x10');
  if (small === undefined || large === undefined) return lines.join('\n');
  lines.push(
    '',
    `### Growth from ${small.name} to ${large.name} (T ×${large.tasks / small.tasks}, W ×${large.watchers / small.watchers}; large ÷ small)`,
    '',
    '| system | disconnects | p50 | p99 | max | msgs/s | CPU s (sum of replicas) | peak RSS (max replica) |',
    '| --- | --- | --- | --- | --- | --- | --- | --- |',
  );
  for (const { name } of SYSTEMS) {
    for (const disconnects of [false, true]) {
      const a = results.find(
        (r) => r.system === name && r.config === small.name && r.disconnects === disconnects,
      );
      const b = results.find(
        (r) => r.system === name && r.config === large.name && r.disconnects === disconnects,
      );
      if (!a || !b) continue;
      const cpu = (r) => r.replicaStats.reduce((s, x) => s + x.cpuSeconds, 0);
      const rss = (r) => Math.max(...r.replicaStats.map((x) => x.peakRssMb));
      lines.push(
        `| ${name} | ${disconnects ? 'yes' : 'no'} | ${ratio(b.latencyMs.p50, a.latencyMs.p50)} | ${ratio(b.latencyMs.p99, a.latencyMs.p99)} | ${ratio(b.latencyMs.max, a.latencyMs.max)} | ${ratio(b.messagesPerSecond, a.messagesPerSecond)} | ${ratio(cpu(b), cpu(a))} | ${ratio(rss(b), rss(a))} |`,
      );
    }
  }
  return lines.join('\n');
}

// ── Main ─────────────────────────────────────────────────────────────────────────────────────────

async function main() {
  const machine = {
    date: new Date().toISOString(),
    nproc: cpus().length,
    cpu: cpus()[0]?.model,
    memoryGb: totalmem() / 2 ** 30,
    node: process.version,
    postgres: (await sql('SHOW server_version')).rows[0].server_version,
    loadAverageAtStart: loadavg(),
    quick: QUICK,
    paceMs: PACE_MS,
    windowMs: WINDOW_MS,
    graceMs: GRACE_MS,
  };
  log(`machine: ${JSON.stringify(machine)}`);
  const finish = (extra) => Object.assign(machine, extra);
  const results = [];
  const failures = [];
  for (const config of CONFIGS) {
    for (const disconnects of process.env.PEERS_CUTS === '0' ? [false] : [false, true]) {
      for (const system of SYSTEMS) {
        const label = `${system.name} ${config.name} ${disconnects ? 'cuts' : 'no-cuts'}`;
        const started = now();
        try {
          const result = await runScenario(system, config, disconnects);
          results.push(result);
          log(
            `${label}: p50 ${fmt(result.latencyMs.p50)} p99 ${fmt(result.latencyMs.p99)} max ${fmt(result.latencyMs.max)} ms, ` +
              `${(100 * result.completionShare).toFixed(1)}% tasks, ${fmt(result.messagesPerSecond, 0)} msg/s, load ${fmt(result.loadAverage)} ` +
              `(${((now() - started) / 1000).toFixed(1)} s); longest event-loop delay: replicas ` +
              `${result.replicaStats.map((r) => fmt(r.loopDelayMaxMs)).join(' / ')} ms, watcher host ` +
              `${fmt(result.watcherHostLoopDelayMaxMs)} ms; machine steal ${result.machineStealMs ?? 'n/a'} ms`,
          );
        } catch (error) {
          failures.push({ label, error: String(error?.message ?? error) });
          log(`${label}: FAILED ${error?.stack ?? error}`);
        }
      }
    }
  }
  let capacityResult = null;
  if (!SKIP_CAPACITY)
    try {
      capacityResult = await capacity(CAPACITY_SOCKETS);
    } catch (error) {
      failures.push({ label: 'capacity', error: String(error?.message ?? error) });
      log(`capacity: FAILED ${error?.stack ?? error}`);
    }
  finish({ loadAverageAtEnd: loadavg() });
  mkdirSync(dirname(RESULTS), { recursive: true });
  writeFileSync(
    RESULTS,
    `${JSON.stringify({ machine, results, capacity: capacityResult, failures }, null, 2)}\n`,
  );
  process.stdout.write(`## Machine\n\n\`\`\`json\n${JSON.stringify(machine, null, 2)}\n\`\`\`\n`);
  process.stdout.write(`${table(results)}\n`);
  if (capacityResult) {
    process.stdout.write(
      `\n### Finishline: idle sockets on one replica, reconnect storm\n\n\`\`\`json\n${JSON.stringify(capacityResult, null, 2)}\n\`\`\`\n`,
    );
  }
  if (failures.length > 0)
    process.stdout.write(`\nFailures:\n${failures.map((f) => `- ${f.label}: ${f.error}`).join('\n')}\n`);
  process.stdout.write(`\nraw figures: ${RESULTS}\n`);
  return failures.length === 0 ? 0 : 1;
}

let code = 1;
try {
  code = await main();
} catch (error) {
  log(`peers bench: ${error?.stack ?? error}`);
} finally {
  for (const child of children) child.kill('SIGKILL');
  await dropSchemas();
  rmSync(tmp, { recursive: true, force: true });
  clearTimeout(watchdog);
}
process.exit(code);
