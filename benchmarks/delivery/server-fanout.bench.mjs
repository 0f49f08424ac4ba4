// The server's own CPU per delivered event: one ProgressServer (in-memory store, so no database is
// measured) fans T tasks of M items out to W raw `ws` watchers that live in a child process (their CPU is
// not counted). Beside it, the floor: a bare `ws` server that JSON-encodes each event once and sends it
// to every socket of the task, nothing else (no acks, no queue, no metrics). Prints CPU µs per delivery
// (process.cpuUsage, user + system, from the first append to the last completion seen) for R rounds of
// each, alternating. Every loop is bounded: SERVER_FANOUT_ROUNDS (default 5) × SERVER_FANOUT_WATCHERS
// (default 2,000) sockets, T = 200 tasks of M = 10 items.
//
//   npm run build && node benchmarks/delivery/server-fanout.bench.mjs
import { fork } from 'node:child_process';
import { createServer } from 'node:http';
import { loadavg } from 'node:os';
import { fileURLToPath } from 'node:url';
import { MemoryProgressStore, PROTOCOL_NAME } from '@finishline/core';
import { ProgressServer, silentLogger } from '@finishline/server';
import { WebSocketServer } from 'ws';
import { toggleWindowProfile } from '../peers/window-profile.mjs';

const WATCHERS = Number(process.env.SERVER_FANOUT_WATCHERS ?? 2000);
const ROUNDS = Number(process.env.SERVER_FANOUT_ROUNDS ?? 5);
const TASKS = 200;
const ITEMS = 10;
const WAIT_MS = 60_000;

/** The child: W sockets, each following one task; acks the terminal event, then unsubscribes. */
async function watchers(url, mode, taskIds) {
  const { WebSocket } = await import('ws');
  let subscribed = 0;
  let finished = 0;
  let delivered = 0;
  const report = () => process.send({ subscribed, finished, delivered });
  for (let w = 0; w < WATCHERS; w++) {
    const taskId = taskIds[w % taskIds.length];
    const socket = new WebSocket(url, mode === 'finishline' ? [PROTOCOL_NAME] : [], {
      headers: { 'x-user': `w${w}` },
    });
    socket.on('error', () => undefined);
    let last = 0;
    socket.on('message', (data) => {
      const frame = JSON.parse(String(data));
      if (frame.type === 'hello') socket.send(JSON.stringify({ type: 'subscribe', taskId, afterSeq: 0 }));
      else if (frame.type === 'snapshot' || frame.type === 'subscribed') {
        if (++subscribed === WATCHERS) report();
      } else if (frame.type === 'event') {
        const { seq, type } = frame.event;
        if (seq <= last) return;
        last = seq;
        delivered++;
        if (type === 'completed') {
          socket.send(JSON.stringify({ type: 'ack', taskId, seq }));
          socket.send(JSON.stringify({ type: 'unsubscribe', taskId }));
          if (++finished === WATCHERS) report();
        }
      }
    });
    if (w % 200 === 199) await new Promise((resolve) => setTimeout(resolve, 5));
  }
  process.on('message', (message) => {
    if (message === 'exit') process.exit(0);
  });
}

function until(child, predicate, what) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), WAIT_MS);
    const onMessage = (message) => {
      if (!predicate(message)) return;
      clearTimeout(timer);
      child.off('message', onMessage);
      resolve();
    };
    child.on('message', onMessage);
  });
}

const tick = () => new Promise((resolve) => setImmediate(resolve));

/** Runs one round against `system` ({ url, ids, next(), item(id, n), complete(id), close() }); CPU µs per delivery. */
async function round(system, mode) {
  const child = fork(fileURLToPath(import.meta.url), ['watchers', system.url, mode, ...system.ids]);
  try {
    await until(child, (m) => m.subscribed === WATCHERS, 'subscriptions');
    await new Promise((resolve) => setTimeout(resolve, 200));
    await toggleWindowProfile(`server-${mode}`);
    const before = process.cpuUsage();
    const done = until(child, (m) => m.finished === WATCHERS, 'completions');
    for (let n = 1; n <= ITEMS; n++) {
      await Promise.all(system.ids.map((id) => system.item(id, n)));
      await tick();
    }
    await Promise.all(system.ids.map((id) => system.complete(id)));
    await done;
    const used = process.cpuUsage(before);
    await toggleWindowProfile(`server-${mode}`);
    return (used.user + used.system) / (WATCHERS * (ITEMS + 1));
  } finally {
    child.send('exit');
  }
}

async function finishline() {
  const store = new MemoryProgressStore();
  const server = await ProgressServer.listen(
    {
      store,
      logger: silentLogger,
      authenticate: (request) => ({ id: String(request.headers['x-user']) }),
      authorize: () => true,
      rateLimitBurst: 100_000,
      // 2,000 sockets opening at once from one address (the per-address cap is meant for silent connections).
      maxPendingConnectionsPerAddress: 100_000,
      // SERVER_FANOUT_RETRY_MS (diagnostic): the first terminal re-send's delay, to compare two builds
      // without the re-sends of a burst (which vary from round to round) in the figures.
      ...(process.env.SERVER_FANOUT_RETRY_MS
        ? { terminalRetry: { initialDelayMs: Number(process.env.SERVER_FANOUT_RETRY_MS) } }
        : {}),
    },
    { port: 0, host: '127.0.0.1' },
  );
  const handles = new Map();
  return {
    url: `ws://127.0.0.1:${server.httpServer.address().port}/progress`,
    ids: [],
    /** New tasks for the next round (one server for all rounds: what it learned, it keeps, as in production). */
    async next() {
      this.ids = [];
      for (let t = 0; t < TASKS; t++) {
        const handle = await server.tasks.create({ owner: 'bench', kind: 'bench', total: ITEMS });
        handles.set(handle.id, handle);
        this.ids.push(handle.id);
      }
    },
    item: (id, n) => handles.get(id).item({ key: `item-${n}`, ok: true }),
    complete: (id) => handles.get(id).complete(),
    resends: async () => (await server.metrics.terminalRetries.get()).values[0]?.value ?? 0,
    close: async () => {
      await server.close({ timeoutMs: 2000 });
      await store.close();
    },
  };
}

/** The floor: a room per task, one JSON.stringify per event, ws.send to each socket of the room. */
async function bareWs() {
  const http = createServer();
  const wss = new WebSocketServer({ server: http, perMessageDeflate: false });
  const rooms = new Map();
  const seqs = new Map();
  let round = 0;
  wss.on('connection', (socket) => {
    socket.send(JSON.stringify({ type: 'hello' }));
    socket.on('message', (data) => {
      const frame = JSON.parse(String(data));
      if (frame.type === 'subscribe') {
        rooms.get(frame.taskId).add(socket);
        socket.send(JSON.stringify({ type: 'subscribed' }));
      } else if (frame.type === 'unsubscribe') rooms.get(frame.taskId).delete(socket);
    });
    socket.on('close', () => {
      for (const room of rooms.values()) room.delete(socket);
    });
  });
  await new Promise((resolve) => http.listen(0, '127.0.0.1', resolve));
  const publish = (id, type, extra) => {
    const seq = seqs.get(id) + 1;
    seqs.set(id, seq);
    const done = type === 'completed' ? ITEMS : seq;
    const text = JSON.stringify({
      type: 'event',
      event: {
        taskId: id,
        seq,
        type,
        time: Date.now(),
        progress: { total: ITEMS, done, succeeded: done, failed: 0, current: null, message: null },
        ...extra,
      },
    });
    for (const socket of rooms.get(id)) socket.send(text);
  };
  return {
    url: `ws://127.0.0.1:${http.address().port}/`,
    ids: [],
    async next() {
      round++;
      this.ids = Array.from({ length: TASKS }, (_, t) => `task-${round}-${t}`);
      for (const id of this.ids) {
        rooms.set(id, new Set());
        seqs.set(id, 0);
      }
    },
    item: async (id, n) =>
      publish(id, 'item', { item: { key: `item-${n}`, ok: true, error: null, detail: null } }),
    complete: async (id) => publish(id, 'completed', { result: null }),
    close: async () => {
      for (const socket of wss.clients) socket.terminate();
      wss.close();
      await new Promise((resolve) => http.close(resolve));
    },
  };
}

async function main() {
  console.log(
    `server-fanout: ${TASKS} tasks × ${ITEMS + 1} events to ${WATCHERS} sockets, ${ROUNDS} rounds each; load ${loadavg()
      .map((l) => l.toFixed(2))
      .join(' ')}`,
  );
  const figures = { finishline: [], bare: [] };
  const resends = [];
  const systems = { finishline: await finishline(), bare: await bareWs() };
  try {
    for (let r = 0; r < ROUNDS; r++) {
      for (const [name, system] of Object.entries(systems)) {
        await system.next();
        const before = (await system.resends?.()) ?? 0;
        figures[name].push(await round(system, name));
        if (system.resends) resends.push((await system.resends()) - before);
      }
    }
  } finally {
    for (const system of Object.values(systems)) await system.close();
  }
  console.log(`terminal re-sends per Finishline round (of ${WATCHERS}): ${resends.join(' ')}`);
  for (const [name, list] of Object.entries(figures)) {
    const sorted = [...list].sort((a, b) => a - b);
    console.log(
      `${name.padEnd(10)} CPU µs per delivery: ${list.map((f) => f.toFixed(2)).join(' ')}  median ${sorted[list.length >> 1].toFixed(2)}`,
    );
  }
}

if (process.argv[2] === 'watchers') await watchers(process.argv[3], process.argv[4], process.argv.slice(5));
else await main();
