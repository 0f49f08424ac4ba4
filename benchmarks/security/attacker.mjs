// The attacker of fairness.bench.mjs, in its own thread (its own event loop, sharing the machine's cores
// with the server): one principal at its caps. It keeps `sockets` sockets open (reopening any the server
// closes, after 1 s, as a client backing off would), follows `subscriptionsPerSocket` tasks on each, and resubscribes with a backlog
// at `framesPerSecond` per socket, so every frame costs the server a store read.
import { parentPort, workerData } from 'node:worker_threads';
import { WebSocket } from 'ws';

const { url, sockets, subscriptionsPerSocket, tasks, framesPerSecond, backlog } = workerData;
const slots = [];
let answered = 0;
let refused = 0;
let closedByServer = 0;
let sent = 0;
let running = true;

function open(index) {
  const ws = new WebSocket(url, ['finishline.v1'], { headers: { 'x-user': 'mallory' } });
  const mine = Array.from(
    { length: subscriptionsPerSocket },
    (_, k) => tasks[(index * subscriptionsPerSocket + k) % tasks.length],
  );
  const slot = { ws, mine, ready: false };
  slots[index] = slot;
  return new Promise((resolve) => {
    ws.on('message', (data) => {
      const text = data.toString();
      if (text.startsWith('{"type":"hello"')) {
        for (const task of mine) ws.send(JSON.stringify({ type: 'subscribe', taskId: task.id, afterSeq: 0 }));
        slot.ready = true;
        resolve();
      } else if (text.startsWith('{"type":"error"')) {
        refused += 1;
      } else {
        answered += 1;
      }
    });
    ws.on('close', () => {
      resolve();
      if (!running) return;
      closedByServer += 1;
      setTimeout(() => {
        if (running) void open(index);
      }, 1000);
    });
    ws.on('error', () => {});
  });
}

await Promise.all(Array.from({ length: sockets }, (_, index) => open(index)));
parentPort.postMessage({ type: 'ready', open: slots.filter((slot) => slot.ready).length });

// Each resubscribe asks for the last `backlog` events again: one readEvents of that many rows.
const intervalMs = Math.ceil(1000 / framesPerSecond);
const timers = slots.map((_, index) => {
  let turn = index;
  return setInterval(() => {
    const { ws, mine, ready } = slots[index];
    if (!ready || ws.readyState !== WebSocket.OPEN) return;
    const task = mine[turn % mine.length];
    turn += 1;
    ws.send(
      JSON.stringify({ type: 'subscribe', taskId: task.id, afterSeq: Math.max(1, task.seq - backlog) }),
    );
    sent += 1;
  }, intervalMs);
});

parentPort.on('message', (message) => {
  if (message !== 'stop') return;
  running = false;
  for (const timer of timers) clearInterval(timer);
  for (const { ws } of slots) ws.terminate();
  parentPort.postMessage({ type: 'stopped', sent, answered, refused, closedByServer });
});
