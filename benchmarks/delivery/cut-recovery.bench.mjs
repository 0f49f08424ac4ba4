// Cut-recovery benchmark (issue 12, aim 3): after a single cut of a healthy socket, how long until the
// watcher shows the completion that was committed while it was away?
//
// One ProgressServer (SQLite store) and W ProgressClients, each watching its own running task. Half the
// clients use today's defaults, half the reconnect pacing of before issue 12 (first retry uniform below
// 1 s, backoff reset only after 10 s up), interleaved, so both halves run under the same load. Once every
// socket has been up for 1.5 s, each watcher's socket is cut (TCP torn down, no close handshake) at a
// random moment in a CUT_WINDOW_MS window, and its task completes at that same moment; measured: cut →
// the watcher's `finished` callback. Every watcher must finish (exit 1 otherwise).
//
// Imports the BUILT packages: `npm run bench:cut` builds first. CUT_WATCHERS (default 400) sets W.
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { ProgressClient } from '@finishline/client';
import { httpFallback } from '@finishline/client/http';
import { ProgressServer } from '@finishline/server';
import { SqliteProgressStore } from '@finishline/sqlite';
import { WebSocket } from 'ws';

const WATCHERS = Number(process.env.CUT_WATCHERS ?? 400);
const CUT_WINDOW_MS = 2000;
const STABLE_WAIT_MS = 1500;
const DEADLINE_MS = 30_000;
const MODES = {
  current: {},
  'before issue 12': { reconnect: { firstDelayMs: 1000 }, stableConnectionMs: 10_000 },
};

const now = () => performance.now();

/** A `ws` WebSocket that remembers the client's latest socket, so the bench can cut it. */
function recordingWebSocket(slot) {
  return class RecordingWebSocket extends WebSocket {
    constructor(...args) {
      super(...args);
      slot.socket = this;
      this.on('error', () => undefined);
    }
  };
}

function quantile(sorted, q) {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

const dir = mkdtempSync(join(tmpdir(), 'finishline-cut-'));
const store = new SqliteProgressStore({ database: join(dir, 'bench.db') });
const server = await ProgressServer.listen(
  {
    store,
    // One principal per watcher, as with browsers: the per-principal read fairness does not serialize them.
    authenticate: (request) => ({ id: String(request.headers['x-user']) }),
    rateLimitBurst: 10_000,
    maxSocketsPerPrincipal: 100_000,
    maxSubscriptionsPerPrincipal: 100_000,
    rateLimitPerPrincipalPerSecond: 1_000_000,
  },
  { port: 0, host: '127.0.0.1' },
);
const { port } = server.httpServer.address();
const url = `ws://127.0.0.1:${port}/progress`;
const watchers = [];
const loadAtStart = loadavg();
let exitCode = 0;
try {
  const modeNames = Object.keys(MODES);
  for (let i = 0; i < WATCHERS; i++) {
    const mode = modeNames[i % modeNames.length];
    const handle = await server.tasks.create({ owner: `user-${i}`, kind: 'bench', total: 2 });
    await handle.item({ key: 'a', ok: true });
    const slot = { socket: null };
    const client = new ProgressClient({
      url,
      WebSocket: recordingWebSocket(slot),
      headers: { 'x-user': `user-${i}` },
      httpFallback: httpFallback(),
      ...MODES[mode],
    });
    client.on('error', () => undefined);
    const watch = client.watch(handle.id);
    watch.on('error', () => undefined);
    const watcher = { mode, handle, slot, client, watch, cutAt: 0, finishedAt: 0 };
    watcher.ready = new Promise((resolve) => watch.once('snapshot', resolve));
    watcher.finished = new Promise((resolve) =>
      watch.on('finished', () => {
        watcher.finishedAt = now();
        resolve();
      }),
    );
    watchers.push(watcher);
  }
  await Promise.all(watchers.map((watcher) => watcher.ready));
  await new Promise((resolve) => setTimeout(resolve, STABLE_WAIT_MS));
  const timers = watchers.map(
    (watcher) =>
      new Promise((resolve) =>
        setTimeout(() => {
          watcher.cutAt = now();
          watcher.slot.socket?.terminate();
          watcher.handle.complete().then(resolve, resolve);
        }, Math.random() * CUT_WINDOW_MS),
      ),
  );
  await Promise.all(timers);
  let deadline;
  await Promise.race([
    Promise.all(watchers.map((watcher) => watcher.finished)),
    new Promise((resolve) => {
      deadline = setTimeout(resolve, DEADLINE_MS);
    }),
  ]);
  clearTimeout(deadline);
  const rows = [];
  for (const mode of modeNames) {
    const mine = watchers.filter((watcher) => watcher.mode === mode);
    const done = mine.filter((watcher) => watcher.finishedAt > 0);
    const samples = done.map((watcher) => watcher.finishedAt - watcher.cutAt).sort((a, b) => a - b);
    if (done.length < mine.length) exitCode = 1;
    rows.push(
      `| ${mode} | ${done.length}/${mine.length} | ${quantile(samples, 0.5).toFixed(1)} | ${quantile(samples, 0.99).toFixed(1)} | ${samples.at(-1)?.toFixed(1)} |`,
    );
  }
  console.log(
    `Cut → completion shown, ${WATCHERS} watchers (one socket and one task each), one cut each within ${CUT_WINDOW_MS} ms, ` +
      `${cpus().length} CPUs, load average at start ${loadAtStart.map((l) => l.toFixed(2)).join(' ')}, at the end ${loadavg()
        .map((l) => l.toFixed(2))
        .join(' ')}\n`,
  );
  console.log('| client reconnect pacing | finished | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|');
  for (const row of rows) console.log(row);
} finally {
  await Promise.all(watchers.map((watcher) => watcher.client.close()));
  await server.close();
  await store.close?.();
  rmSync(dir, { recursive: true, force: true });
}
process.exit(exitCode);
