// The client's own cost per delivered frame, without a network or a server: N ProgressClients, each with
// one watch, over an in-process socket that hands them the frames a replica would send for one task of
// M items (hello, the subscribe's snapshot, M item events, the completion). Prints CPU µs per delivered
// event (process.cpuUsage: user + system) for R rounds, so a change to the client's frame path can be
// compared run against run on a noisy machine (the peers bench mixes it with the network, the replicas and
// Postgres). Rounds are bounded: CLIENT_FRAMES_ROUNDS (default 7) × CLIENT_FRAMES_WATCHERS (default 2,000).
//
//   npm run build && node benchmarks/delivery/client-frames.bench.mjs
import { loadavg } from 'node:os';
import { ProgressClient } from '@finishline/client';
import { toggleWindowProfile } from '../peers/window-profile.mjs';

const WATCHERS = Number(process.env.CLIENT_FRAMES_WATCHERS ?? 2000);
const ROUNDS = Number(process.env.CLIENT_FRAMES_ROUNDS ?? 7);
const ITEMS = 10;

/** A socket whose peer is this file: it opens on the next tick and records what the client sends. */
class LoopSocket {
  static all = [];
  readyState = 0;
  onopen = null;
  onmessage = null;
  onclose = null;
  onerror = null;
  sent = 0;
  constructor(url) {
    this.url = url;
    LoopSocket.all.push(this);
    setImmediate(() => {
      this.readyState = 1;
      this.onopen?.({});
      this.onmessage?.({ data: HELLO });
    });
  }
  send(data) {
    this.sent++;
    if (data.includes('"subscribe"')) this.taskId = JSON.parse(data).taskId;
  }
  close(code = 1000, reason = '') {
    if (this.readyState === 3) return;
    this.readyState = 3;
    queueMicrotask(() => this.onclose?.({ code, reason }));
  }
}

const HELLO = JSON.stringify({ type: 'hello', protocol: 1, serverId: 'bench', heartbeatIntervalMs: 15000 });
const T0 = 1767225600000;
const progress = (done, message = null) => ({
  total: ITEMS,
  done,
  succeeded: done,
  failed: 0,
  current: null,
  message,
});
const snapshot = (id) =>
  JSON.stringify({
    type: 'snapshot',
    task: {
      id,
      kind: 'bench',
      status: 'running',
      total: ITEMS,
      done: 0,
      succeeded: 0,
      failed: 0,
      current: null,
      message: null,
      result: null,
      error: null,
      seq: 1,
      createdAt: T0,
      updatedAt: T0,
      finishedAt: null,
    },
  });
const item = (id, seq, done) =>
  JSON.stringify({
    type: 'event',
    event: {
      taskId: id,
      seq,
      type: 'item',
      time: T0 + seq,
      progress: progress(done),
      item: { key: `item-${done}`, ok: true, error: null, detail: null },
    },
  });
const completed = (id, seq) =>
  JSON.stringify({
    type: 'event',
    event: {
      taskId: id,
      seq,
      type: 'completed',
      time: T0 + seq,
      progress: progress(ITEMS, 'done'),
      result: null,
    },
  });

const tick = () => new Promise((resolve) => setImmediate(resolve));

async function round() {
  LoopSocket.all = [];
  const clients = [];
  let finished = 0;
  for (let i = 0; i < WATCHERS; i++) {
    const client = new ProgressClient({ url: 'ws://bench.invalid/progress', WebSocket: LoopSocket });
    client.on('error', () => undefined);
    const watch = client.watch(`task-${i % 200}-${i}`);
    watch.on('error', () => undefined);
    let seen = 0;
    for (const type of ['snapshot', 'progress', 'item']) watch.on(type, () => seen++);
    watch.on('finished', () => finished++);
    clients.push({ client, watch });
  }
  while (LoopSocket.all.some((s) => s.taskId === undefined)) await tick();
  for (const s of LoopSocket.all) s.onmessage({ data: snapshot(s.taskId) });
  await tick();
  // Every frame's text is made before the measured part, which is then the client's work alone.
  const waves = [];
  for (let n = 1; n <= ITEMS + 1; n++) {
    waves.push(
      LoopSocket.all.map((s) => (n <= ITEMS ? item(s.taskId, n + 1, n) : completed(s.taskId, n + 1))),
    );
  }
  // The measured part: M item events and the completion to every watcher, a tick between waves as the
  // replicas' fan-out would leave them. (PEERS_CPU_PROF_WINDOW=<dir> profiles just this part.)
  await toggleWindowProfile('client-frames');
  const before = process.cpuUsage();
  for (const wave of waves) {
    for (let i = 0; i < wave.length; i++) LoopSocket.all[i].onmessage({ data: wave[i] });
    await tick();
  }
  await tick();
  const used = process.cpuUsage(before);
  await toggleWindowProfile('client-frames');
  if (finished !== WATCHERS) throw new Error(`only ${finished} of ${WATCHERS} watchers finished`);
  for (const { client } of clients) await client.close();
  return (used.user + used.system) / (WATCHERS * (ITEMS + 1));
}

console.log(
  `client-frames: ${WATCHERS} watchers × ${ITEMS + 1} events, ${ROUNDS} rounds; load ${loadavg()
    .map((l) => l.toFixed(2))
    .join(' ')}`,
);
const figures = [];
for (let r = 0; r < ROUNDS; r++) figures.push(await round());
const sorted = [...figures].sort((a, b) => a - b);
console.log(
  `CPU µs per delivered event: ${figures.map((f) => f.toFixed(2)).join(' ')}  median ${sorted[ROUNDS >> 1].toFixed(2)}`,
);
