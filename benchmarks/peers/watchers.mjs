// The watcher side of each system under test: one watcher = one socket following one task, as a browser
// tab would. Every watcher exposes the same shape to run.mjs:
//   ready      resolves once the watcher is subscribed (it has its first state / its room)
//   cut()      drops its current socket abruptly (TCP torn down, no close handshake)
//   finishedAt epoch ms (performance.timeOrigin + now()) when the completion callback ran, or null
//   messages   application messages delivered to the watcher's callbacks
//   onMessage  optional hook, called with (watcher) on each delivered message
//   close()    stops it (clears every timer, closes the socket)
import { ProgressClient } from '@finishline/client';
import { httpFallback } from '@finishline/client/http';
import { PROTOCOL_NAME } from '@finishline/core';
import { io as ioClient } from 'socket.io-client';
import { WebSocket } from 'ws';

const now = () => performance.timeOrigin + performance.now();

// ── Finishline ────────────────────────────────────────────────────────────────────────────────────

/** Each Finishline watcher's current socket, by its `x-watcher` header (so the bench can cut it). */
const socketSlots = new Map();

/**
 * A `ws` WebSocket that records itself in its watcher's slot. One class for every watcher: a class made per
 * watcher (as this bench did until 2 December 2026) gave each of the 4,000 sockets its own hidden classes, so
 * every property read in `ws` and in the client went megamorphic, and the watcher host's CPU measured the
 * harness as much as the library.
 */
class RecordingWebSocket extends WebSocket {
  constructor(url, protocols, options) {
    super(url, protocols, options);
    const slot = socketSlots.get(options?.headers?.['x-watcher']);
    if (slot !== undefined) slot.socket = this;
    this.on('error', () => undefined);
  }
}

/**
 * PEERS_CLIENT_RECONNECT=legacy gives the client the reconnect pacing it had before issue 12 (first retry
 * uniform below 1 s, backoff reset only after 10 s up), to compare both in one run on one build.
 */
const RECONNECT_OPTIONS =
  process.env.PEERS_CLIENT_RECONNECT === 'legacy'
    ? { reconnect: { firstDelayMs: 1000 }, stableConnectionMs: 10_000 }
    : {};

let watcherCount = 0;

export function finishlineWatcher(url, taskId) {
  if (process.env.PEERS_FINISHLINE_WATCHERS === 'raw') return rawFinishlineWatcher(url, taskId);
  const slot = { socket: null };
  const id = String(++watcherCount);
  socketSlots.set(id, slot);
  const client = new ProgressClient({
    url,
    WebSocket: RecordingWebSocket,
    // Its own principal (see replica.mjs), as each browser user would be.
    headers: { 'x-watcher': id },
    httpFallback: httpFallback(),
    ...RECONNECT_OPTIONS,
    ...(process.env.PEERS_ACK_DELAY_MS ? { ackDelayMs: Number(process.env.PEERS_ACK_DELAY_MS) } : {}),
  });
  client.on('error', () => undefined);
  const watch = client.watch(taskId);
  watch.on('error', () => undefined);
  const watcher = {
    finishedAt: null,
    messages: 0,
    lastSeq: 0,
    opens: 0,
    onMessage: null,
    ready: new Promise((resolve) => watch.once('snapshot', resolve)),
    cut() {
      slot.socket?.terminate();
    },
    async close() {
      watch.close();
      await client.close();
      socketSlots.delete(id);
    },
  };
  client.on('state', (change) => {
    if (change.state === 'open') watcher.opens++;
  });
  const delivered = () => {
    watcher.messages++;
    watcher.lastSeq = watch.getSnapshot().seq;
    watcher.onMessage?.(watcher);
  };
  for (const type of ['snapshot', 'progress', 'item']) watch.on(type, delivered);
  watch.on('finished', () => {
    watcher.finishedAt ??= now();
    delivered();
  });
  watch.done.catch(() => undefined);
  return watcher;
}

// ── The original design ──────────────────────────────────────────────────────────────────────────
// Its client: reconnect after a lost socket (1 s, jittered); if the bar sits at 100% with no completion
// for 3 s, reconnect (to the next replica, as a load balancer would pick another backend).

const BASELINE_STUCK_MS = 3000;

export function baselineWatcher(urls, first, taskId, items) {
  let index = first;
  let socket = null;
  let closed = false;
  let stuckTimer = null;
  let reconnectTimer = null;
  let resolveReady;
  let done = 0;
  const watcher = {
    finishedAt: null,
    messages: 0,
    onMessage: null,
    ready: new Promise((resolve) => {
      resolveReady = resolve;
    }),
    cut() {
      socket?.terminate();
    },
    async close() {
      closed = true;
      clearTimeout(stuckTimer);
      clearTimeout(reconnectTimer);
      socket?.terminate();
    },
  };
  const connect = () => {
    if (closed) return;
    const ws = new WebSocket(urls[index % urls.length]);
    socket = ws;
    ws.on('error', () => undefined);
    ws.on('open', () => ws.send(JSON.stringify({ type: 'subscribe', taskId })));
    ws.on('message', (data) => {
      const frame = JSON.parse(String(data));
      if (frame.type === 'subscribed') {
        resolveReady();
        return;
      }
      watcher.messages++;
      if (frame.type === 'completion') {
        watcher.finishedAt ??= now();
        clearTimeout(stuckTimer);
      } else if (typeof frame.done === 'number') {
        done = Math.max(done, frame.done);
        if (done >= items && watcher.finishedAt === null) {
          clearTimeout(stuckTimer);
          stuckTimer = setTimeout(() => {
            index++;
            ws.terminate();
          }, BASELINE_STUCK_MS);
        }
      }
      watcher.onMessage?.(watcher);
    });
    ws.on('close', () => {
      if (closed || socket !== ws) return;
      reconnectTimer = setTimeout(connect, 500 + Math.random() * 1000);
    });
  };
  connect();
  return watcher;
}

// ── Socket.IO ────────────────────────────────────────────────────────────────────────────────────

export function socketioWatcher(url, taskId) {
  const socket = ioClient(url, { transports: ['websocket'], forceNew: true });
  let resolveReady;
  const watcher = {
    finishedAt: null,
    messages: 0,
    onMessage: null,
    ready: new Promise((resolve) => {
      resolveReady = resolve;
    }),
    cut() {
      // The engine's WebSocket (a `ws` instance in Node): tear the TCP connection down.
      const ws = socket.io.engine?.transport?.ws;
      if (ws && typeof ws.terminate === 'function') ws.terminate();
      else socket.io.engine?.close();
    },
    async close() {
      socket.disconnect();
    },
  };
  // Rooms are lost with the connection (recovery does not work across this adapter), so join on
  // every connect, as an application following the docs' caveat would.
  socket.on('connect', () => {
    socket.emit('watch', taskId, () => resolveReady());
  });
  socket.on('item', () => {
    watcher.messages++;
    watcher.onMessage?.(watcher);
  });
  socket.on('completed', () => {
    watcher.finishedAt ??= now();
    watcher.messages++;
    watcher.onMessage?.(watcher);
  });
  return watcher;
}

/**
 * PEERS_FINISHLINE_WATCHERS=raw (diagnostic, never for published figures): each Finishline watcher is a
 * bare `ws` socket that speaks the protocol itself (subscribe, count the events, ack the terminal one and
 * unsubscribe, as the client does) instead of a ProgressClient, so that the watcher host's CPU shows what
 * the client library costs. It reconnects after a cut and resumes from its cursor, but acknowledges only
 * terminal events (the client acknowledges every event it applies).
 */
function rawFinishlineWatcher(url, taskId) {
  const id = String(++watcherCount);
  let socket;
  let closed = false;
  let resolveReady;
  const watcher = {
    finishedAt: null,
    messages: 0,
    lastSeq: 0,
    opens: 0,
    onMessage: null,
    ready: new Promise((resolve) => {
      resolveReady = resolve;
    }),
    cut() {
      socket.terminate();
    },
    async close() {
      closed = true;
      socket.terminate();
    },
  };
  // Reconnects as the client does after the loss of a healthy socket (within the server's hint, 500 ms
  // for 10,000 sockets at the default 20,000/s) and resumes from its cursor: the storm's floor without
  // the client library.
  const open = () => {
    socket = new WebSocket(url, [PROTOCOL_NAME], { headers: { 'x-watcher': id } });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      if (!closed) setTimeout(open, Math.random() * 500);
    });
    socket.on('message', (data) => {
      const frame = JSON.parse(String(data));
      if (frame.type === 'hello') {
        watcher.opens++;
        socket.send(JSON.stringify({ type: 'subscribe', taskId, afterSeq: watcher.lastSeq }));
      } else if (frame.type === 'snapshot') {
        watcher.lastSeq = Math.max(watcher.lastSeq, frame.task.seq);
        watcher.messages++;
        resolveReady();
      } else if (frame.type === 'event') {
        const { seq, type } = frame.event;
        // A terminal event is re-sent until its ack arrives: count each seq once.
        if (seq <= watcher.lastSeq) return;
        watcher.lastSeq = seq;
        watcher.messages++;
        watcher.onMessage?.(watcher);
        if (type === 'completed') {
          watcher.finishedAt ??= now();
          socket.send(JSON.stringify({ type: 'ack', taskId, seq }));
          socket.send(JSON.stringify({ type: 'unsubscribe', taskId }));
        }
      }
    });
  };
  open();
  return watcher;
}
