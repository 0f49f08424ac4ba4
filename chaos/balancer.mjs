// A tiny round-robin load balancer for the chaos suite: plain HTTP requests and WebSocket upgrades go to
// the next replica in turn, with no session affinity. Upgraded connections are relayed as raw TCP, and
// the server → client direction is parsed into WebSocket frames so that whole frames can be dropped,
// duplicated or delayed (a delay holds every later frame of the connection too, so per-connection order
// is kept, as on TCP), or the connection cut. The client → server direction is parsed too, and its acks,
// subscribes and pings can be dropped, duplicated or delayed the same way. Each frame carries its own mask
// (client frames) or none (server frames), so dropping or repeating a whole frame keeps the stream valid.
// Plain HTTP answers are piped as they come, so Server-Sent Events streams pass unbuffered; those streams
// can be cut (their connection destroyed) and die with their replica, but their frames are not tampered
// with (frame faults are WebSocket-only). Acks sent over HTTP (`POST …/tasks/:id/ack`) answered 2xx are
// reported as WebSocket acks are.
//
// Usable as a module (run.mjs) or standalone: node chaos/balancer.mjs <port> <backendPort>...
import { createServer, request as httpRequest } from 'node:http';
import { connect } from 'node:net';

let nextConnId = 1;
const TERMINAL = new Set(['completed', 'failed', 'cancelled', 'interrupted']);
/** Frames the balancer may tamper with: never the handshake's `hello` (that is a connect failure, not a lost frame). */
const TAMPERABLE = new Set(['event', 'snapshot', 'heartbeat', 'pong', 'error']);

/** Client frames the balancer may tamper with: never `auth` (that is a connect failure, not a lost frame). */
const CLIENT_TAMPERABLE = new Set(['ack', 'subscribe', 'ping']);

/**
 * @typedef {{ drop: number, duplicate: number, delay: number, cut: number, delayMinMs: number, delayMaxMs: number }} FrameFaults
 * Probabilities per server → client text frame (0 disables), and the delay range.
 */
/**
 * @typedef {{ drop: number, duplicate: number, delay: number, delayMinMs: number, delayMaxMs: number }} ClientFrameFaults
 * Probabilities per client → server `ack`, `subscribe` or `ping` frame (0 disables), and the delay range.
 */

export class Balancer {
  /** @type {Array<{ name: string, port: number }>} */
  #backends = [];
  #next = 0;
  #server;
  /** @type {Set<Relay>} */
  #relays = new Set();
  /** @type {Set<HttpStream>} */
  #streams = new Set();
  /** Client tags whose upgrades are refused, and until when (refuseUpgrades). */
  #refused = new Map();
  /** @type {FrameFaults} */
  faults = { drop: 0, duplicate: 0, delay: 0, cut: 0, delayMinMs: 20, delayMaxMs: 400 };
  /** @type {ClientFrameFaults} */
  clientFaults = { drop: 0, duplicate: 0, delay: 0, delayMinMs: 20, delayMaxMs: 400 };
  /** Counters of what the balancer did, by kind. */
  counts = {
    upgrades: 0,
    upgradeFailures: 0,
    httpRequests: 0,
    framesRelayed: 0,
    dropped: 0,
    droppedTerminal: 0,
    duplicated: 0,
    duplicatedTerminal: 0,
    delayed: 0,
    delayedTerminal: 0,
    cutByFrame: 0,
    /** Server → client frames held by a delay (their own or one before them): the longest hold, and how many exceeded 400 ms. */
    maxHeldMs: 0,
    heldOver400: 0,
    cutOnDemand: 0,
    /** Event streams (SSE) relayed, cut on demand, and acks relayed over HTTP (`POST …/ack`, answered 2xx). */
    sseStreams: 0,
    /** Streams asked for and answered otherwise (refused by the replica, or 502: the replica unreachable). */
    sseStreamsUnserved: 0,
    sseUnservedByStatus: {},
    sseCutOnDemand: 0,
    httpAcksRelayed: 0,
    /** HTTP acks answered otherwise, by status (or the balancer's 502 and its upstream error). */
    httpAcksFailed: {},
    sseFramesRelayed: 0,
    /** Upgrades refused with 502 because their client's tag was in a WebSocket outage (refuseUpgrades). */
    upgradesRefused: 0,
    acksRelayed: 0,
    clientFramesRelayed: 0,
    /** Client frames dropped / duplicated / delayed, by frame type (`ack`, `subscribe`, `ping`). */
    clientDropped: { ack: 0, subscribe: 0, ping: 0 },
    clientDuplicated: { ack: 0, subscribe: 0, ping: 0 },
    clientDelayed: { ack: 0, subscribe: 0, ping: 0 },
  };
  random = Math.random;
  /**
   * Called for each `ack` frame relayed to a replica: `{ taskId, seq, at, backend, conn }`, where
   * `conn.closedAt` is set once that connection closes; and for each HTTP ack the replica answered 2xx
   * (`conn.http` true, `conn.closedAt` never set: the answer settled it, only the replica's death can lose it).
   */
  onAck = () => {};
  /** Every relayed connection's record (`conn`): tag (the `x-chaos-tag` header), backend, times, how it ended. */
  history = [];

  constructor() {
    this.#server = createServer((req, res) => this.#http(req, res));
    this.#server.on('upgrade', (req, socket, head) => this.#upgrade(req, socket, head));
  }

  /** Listens on `port` (0 = a free one) on loopback; resolves with the port. */
  listen(port = 0) {
    return new Promise((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(port, '127.0.0.1', () => resolve(this.#server.address().port));
    });
  }

  /** Replaces the replica list (a restarted replica comes back on a new port). */
  setBackends(backends) {
    this.#backends = [...backends];
  }

  /**
   * A WebSocket outage for one client (its `x-chaos-tag`): its upgrades are refused with 502 until `untilMs`
   * and its open connections are cut, as behind a proxy that stopped passing upgrades. HTTP still passes,
   * so the client falls back to the HTTP API. Returns how many connections were cut.
   */
  refuseUpgrades(tag, untilMs) {
    this.#refused.set(tag, untilMs);
    let cut = 0;
    for (const relay of [...this.#relays]) {
      if (relay.conn.tag !== tag) continue;
      relay.cut('outage');
      cut += 1;
    }
    return cut;
  }

  /** Open relayed WebSocket connections. */
  get connectionCount() {
    return this.#relays.size;
  }

  /** Cuts `count` random open connections (both sides at once, like a network failure). */
  cutRandom(count) {
    const relays = [...this.#relays];
    let cut = 0;
    while (cut < count && relays.length > 0) {
      const index = Math.floor(this.random() * relays.length);
      const [relay] = relays.splice(index, 1);
      relay.cut('cut on demand');
      this.counts.cutOnDemand += 1;
      cut += 1;
    }
    return cut;
  }

  async close() {
    for (const relay of this.#relays) relay.cut();
    for (const stream of this.#streams) stream.cut();
    await new Promise((resolve) => {
      this.#server.close(() => resolve());
      this.#server.closeAllConnections();
    });
  }

  #pick() {
    if (this.#backends.length === 0) return undefined;
    const backend = this.#backends[this.#next % this.#backends.length];
    this.#next = (this.#next + 1) % Math.max(1, this.#backends.length);
    return backend;
  }

  // ── plain HTTP: Server-Sent Events streams and the acks sent over HTTP (chaos/README.md) ─────────
  /**
   * Relays one HTTP exchange. Responses are piped chunk by chunk as they come (an event stream is never
   * buffered: each `write` leaves at once, both sockets without Nagle). An event stream is tracked as an
   * {@link HttpStream} while open, so {@link cutRandomStreams} can cut it and a replica that dies under it
   * cuts it too (its client connection destroyed, as a proxy does when its upstream goes; ended cleanly
   * only when the replica ended it). A `POST …/tasks/:id/ack` answered 2xx is reported to `onAck` like a
   * WebSocket `ack` (the request body is read as it is relayed).
   */
  #http(req, res) {
    this.counts.httpRequests += 1;
    const backend = this.#pick();
    if (backend === undefined) {
      res.writeHead(502).end();
      return;
    }
    req.socket.setNoDelay(true);
    const ackTaskId = req.method === 'POST' ? routeTaskId(req.url, 'ack') : undefined;
    const body = [];
    if (ackTaskId !== undefined) req.on('data', (chunk) => body.push(chunk));
    // A stream asked for and not served (refused, or its replica unreachable): in the history too, so
    // --explain shows why a watch over SSE waited.
    const streamTaskId = req.method === 'GET' ? routeTaskId(req.url, 'stream') : undefined;
    // An HTTP ack not answered 2xx: the SSE transport sends each once (best effort), so it is never written.
    const ackFailed = (status) => {
      if (ackTaskId === undefined) return;
      this.counts.httpAcksFailed[status] = (this.counts.httpAcksFailed[status] ?? 0) + 1;
    };
    // When the stream was asked for (a request routed to a frozen replica waits for its answer), and whether
    // its client left before an answer (its own timeout, a reload), which is not the replica's failure.
    const requestedAt = Date.now();
    let clientLeft = false;
    const unserved = (status, why) => {
      if (streamTaskId === undefined) return;
      this.counts.sseStreamsUnserved += 1;
      this.counts.sseUnservedByStatus[status] = (this.counts.sseUnservedByStatus[status] ?? 0) + 1;
      const at = Date.now();
      this.history.push({
        id: nextConnId++,
        tag: req.headers['x-chaos-tag'],
        taskId: streamTaskId,
        backend: backend.name,
        sse: true,
        openedAt: at,
        requestedAt,
        closedAt: at,
        status,
        end: why,
      });
    };
    const upstream = httpRequest(
      // A connection of its own per request (as the upgrades have): a pooled keep-alive connection the replica
      // closes as it is reused would fail the request with ECONNRESET, a 502 that no replica death caused.
      {
        host: '127.0.0.1',
        port: backend.port,
        method: req.method,
        path: req.url,
        headers: req.headers,
        agent: false,
      },
      (response) => {
        const status = response.statusCode ?? 502;
        const streaming = String(response.headers['content-type'] ?? '').startsWith('text/event-stream');
        if (streaming) {
          // A stream is long-lived: the request timeout below is for ordinary answers.
          upstream.setTimeout(0);
          this.#trackStream(req, res, upstream, response, backend.name).requestedAt = requestedAt;
        } else unserved(`HTTP/1.1 ${status}`, 'not served');
        res.writeHead(status, response.headers);
        // Headers at once (node holds them until the first body byte): a stream's client sees it open.
        if (streaming) res.flushHeaders();
        response.pipe(res);
        // The replica went away mid-answer (killed): the client's connection goes too, as a proxy's would.
        response.on('error', () => {});
        response.on('close', () => {
          if (!response.complete) res.destroy();
        });
        if (status < 200 || status >= 300) ackFailed(`HTTP/1.1 ${status}`);
        else if (ackTaskId !== undefined) {
          const at = Date.now();
          let seq;
          try {
            seq = JSON.parse(Buffer.concat(body).toString('utf8')).seq;
          } catch {
            // Not JSON: the replica would not have answered 2xx.
          }
          if (typeof seq === 'number') {
            this.counts.httpAcksRelayed += 1;
            // An HTTP ack needs no open connection once answered: only its replica's death can lose it.
            const conn = {
              id: nextConnId++,
              tag: req.headers['x-chaos-tag'],
              http: true,
              closedAt: undefined,
            };
            // (`arrivedAt`: the request's arrival; the client sent the ack before it.)
            const ack = { taskId: ackTaskId, seq, at, arrivedAt: requestedAt, backend: backend.name, conn };
            this.onClientFrame?.({ type: 'ack', ...ack });
            this.onAck(ack);
          }
        }
      },
    );
    upstream.on('socket', (socket) => socket.setNoDelay(true));
    // The client left before the whole answer (a closed stream, a reload): the replica must see it leave
    // too, or its stream would hold a slot of the principal's socket cap for as long as it lived.
    res.on('close', () => {
      if (!res.headersSent) clientLeft = true;
      if (!res.writableFinished) upstream.destroy();
    });
    upstream.setTimeout(10_000, () => upstream.destroy(new Error('upstream timeout')));
    upstream.on('error', (error) => {
      if (!res.headersSent) {
        if (clientLeft) unserved('no answer before the client left', 'client left');
        else unserved(`502 from the balancer (${error?.code ?? error?.message})`, 'replica unreachable');
        ackFailed(`502 from the balancer (${error?.code ?? error?.message})`);
        res.writeHead(502);
      }
      res.end();
    });
    req.pipe(upstream);
  }

  /** Keeps an open event stream (until either side ends it) for cuts, and records it like a connection. */
  #trackStream(req, res, upstream, response, backendName) {
    const stream = new HttpStream(this, req, upstream, backendName);
    stream.conn.tag = req.headers['x-chaos-tag'];
    // One stream follows one task (`…/tasks/:id/stream`): --explain lists a task's own streams only.
    stream.conn.taskId = routeTaskId(req.url, 'stream');
    stream.conn.status = `HTTP/1.1 ${response.statusCode}`;
    this.history.push(stream.conn);
    this.#streams.add(stream);
    this.counts.sseStreams += 1;
    stream.onClose = () => this.#streams.delete(stream);
    response.on('data', (chunk) => stream.read(chunk));
    response.on('close', () => stream.closed(response.complete ? 'upstream ended' : 'upstream closed'));
    // (On a clean end the answer finished first: the replica ended the stream, not the client.)
    res.on('close', () => stream.closed(res.writableFinished ? 'upstream ended' : 'client closed'));
    return stream.conn;
  }

  /** Open event streams (Server-Sent Events). */
  get streamCount() {
    return this.#streams.size;
  }

  /** Cuts each open event stream with probability `probability` (its HTTP connection destroyed). */
  cutRandomStreams(probability) {
    let cut = 0;
    for (const stream of [...this.#streams]) {
      if (this.random() >= probability) continue;
      stream.cut('cut on demand');
      this.counts.sseCutOnDemand += 1;
      cut += 1;
    }
    return cut;
  }

  #upgrade(req, socket, head) {
    socket.on('error', () => {});
    if ((this.#refused.get(req.headers['x-chaos-tag']) ?? 0) > Date.now()) {
      this.counts.upgradesRefused += 1;
      socket.end('HTTP/1.1 502 Bad Gateway\r\nconnection: close\r\ncontent-length: 0\r\n\r\n');
      return;
    }
    const backend = this.#pick();
    if (backend === undefined) {
      this.counts.upgradeFailures += 1;
      socket.end('HTTP/1.1 502 Bad Gateway\r\nconnection: close\r\ncontent-length: 0\r\n\r\n');
      return;
    }
    this.counts.upgrades += 1;
    const upstream = connect(backend.port, '127.0.0.1');
    // Frames are small and latency is measured: Nagle's algorithm would hold them for a delayed ACK (~40 ms).
    upstream.setNoDelay(true);
    socket.setNoDelay(true);
    const relay = new Relay(this, socket, upstream, backend.name);
    relay.conn.tag = req.headers['x-chaos-tag'];
    relay.conn.backend = backend.name;
    relay.conn.openedAt = Date.now();
    this.history.push(relay.conn);
    this.#relays.add(relay);
    relay.onClose = () => this.#relays.delete(relay);
    upstream.on('error', () => {
      if (!relay.opened) this.counts.upgradeFailures += 1;
      relay.cut('upstream error');
    });
    upstream.on('connect', () => {
      let text = `${req.method} ${req.url} HTTP/1.1\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2)
        text += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
      upstream.write(`${text}\r\n`);
      if (head.length > 0) upstream.write(head);
      relay.opened = true;
    });
  }
}

/** One relayed connection. */
class Relay {
  opened = false;
  onClose = () => {};
  /** Shared with the acks it relayed, so the harness knows whether the connection outlived them. */
  conn = { id: nextConnId++, closedAt: undefined, openedAt: Date.now(), hellos: [] };
  #backend;
  #balancer;
  #client;
  #upstream;
  #closed = false;
  /** Server → client bytes not yet parsed. */
  #down = Buffer.alloc(0);
  #handshakeDone = false;
  /** Client → server bytes not yet parsed. */
  #up = Buffer.alloc(0);
  /** Client → server frames held back by a delay, in order. */
  #upQueue = [];
  #upHoldUntil = 0;
  #upFlushTimer;
  /** Frames held back by a delay, in order. */
  #queue = [];
  #holdUntil = 0;
  #flushTimer;

  constructor(balancer, client, upstream, backend) {
    this.#balancer = balancer;
    this.#backend = backend;
    this.#client = client;
    this.#upstream = upstream;
    client.on('data', (chunk) => this.#readUp(chunk));
    upstream.on('data', (chunk) => this.#readDown(chunk));
    client.on('close', () => this.cut('client closed'));
    // A client that gives up on an attempt before its upgrade is answered (its connectTimeoutMs, a reload)
    // only half-closes (FIN), and the server socket allows half-open connections: the relay would keep the
    // replica's side open until the replica answered or a cut, so a replica that was frozen got the upgrade
    // on waking and --explain counted the attempt open on it after the client had left.
    client.on('end', () => {
      if (!this.#handshakeDone) this.cut('client closed');
    });
    upstream.on('close', () => this.#upstreamClosed());
    client.on('error', () => {});
  }

  /** Destroys both sides at once. */
  cut(why = 'cut') {
    if (this.#closed) return;
    this.conn.end ??= why;
    this.#closed = true;
    this.conn.closedAt = Date.now();
    clearTimeout(this.#flushTimer);
    clearTimeout(this.#upFlushTimer);
    this.#client.destroy();
    this.#upstream.destroy();
    this.onClose();
  }

  /** The replica went away (killed or closing): what it sent gets through first, then the client's side closes. */
  #upstreamClosed() {
    if (this.#closed) return;
    this.conn.end ??= 'upstream closed';
    if (this.#queue.length > 0) {
      // Let the held frames out before closing, as a TCP connection would.
      const wait = Math.max(0, this.#holdUntil - Date.now()) + 5;
      setTimeout(() => this.#endClient(), wait).unref();
      return;
    }
    this.#endClient();
  }

  #endClient() {
    if (this.#closed) return;
    this.#flush();
    this.#closed = true;
    this.conn.closedAt = Date.now();
    clearTimeout(this.#flushTimer);
    this.#client.end();
    this.#client.destroySoon?.();
    setTimeout(() => this.#client.destroy(), 1000).unref();
    this.onClose();
  }

  #readUp(chunk) {
    if (this.#closed) return;
    this.#up = this.#up.length === 0 ? chunk : Buffer.concat([this.#up, chunk]);
    for (;;) {
      const frame = parseFrame(this.#up);
      if (frame === undefined) return;
      const bytes = Buffer.from(this.#up.subarray(0, frame.length));
      this.#up = this.#up.subarray(frame.length);
      this.#routeUp(frame, bytes);
      if (this.#closed) return;
    }
  }

  /** One client → server frame: relayed, or dropped, duplicated or delayed by the client faults. */
  #routeUp(frame, bytes) {
    const balancer = this.#balancer;
    const counts = balancer.counts;
    counts.clientFramesRelayed += 1;
    let message;
    if (frame.opcode === 1 && frame.fin) {
      try {
        message = JSON.parse(frame.payload);
      } catch {
        // Not JSON: the server will refuse it.
      }
    }
    const kind = message?.type;
    // Every subscribe, unsubscribe and ack seen, for explaining a violation (chaos/run.mjs prints them).
    let seen;
    if (message?.taskId !== undefined) {
      seen = {
        type: kind,
        taskId: message.taskId,
        seq: message.seq ?? message.afterSeq,
        at: Date.now(),
        conn: this.conn,
        backend: this.#backend,
      };
      balancer.onClientFrame?.(seen);
    }
    if (!CLIENT_TAMPERABLE.has(kind)) {
      this.#writeUp(bytes);
      return;
    }
    const faults = balancer.clientFaults;
    const roll = balancer.random();
    let edge = faults.drop;
    if (roll < edge) {
      counts.clientDropped[kind] += 1;
      if (seen) seen.fate = 'dropped';
      return;
    }
    edge += faults.duplicate;
    let copies = 1;
    let delayMs = 0;
    if (roll < edge) {
      counts.clientDuplicated[kind] += 1;
      if (seen) seen.fate = 'duplicated';
      copies = 2;
    } else {
      edge += faults.delay;
      if (roll < edge) {
        counts.clientDelayed[kind] += 1;
        delayMs = faults.delayMinMs + Math.floor(balancer.random() * (faults.delayMaxMs - faults.delayMinMs));
        if (seen) seen.fate = `delayed ${delayMs} ms`;
      }
    }
    // An ack is recorded when it is written to the replica (a held one may die with its connection), with
    // when it arrived here: the client sent it before that, whatever the delay drawn above.
    const written =
      kind === 'ack'
        ? () => {
            counts.acksRelayed += 1;
            balancer.onAck({
              taskId: message.taskId,
              seq: message.seq,
              at: Date.now(),
              arrivedAt: seen.at,
              backend: this.#backend,
              conn: this.conn,
            });
          }
        : undefined;
    for (let copy = 0; copy < copies; copy++) this.#writeUp(bytes, written, delayMs);
  }

  /**
   * Writes to the replica in order, each frame `delayMs` after it arrived or right after the frame before
   * it (as {@link #write} does the other way); then calls `written`.
   */
  #writeUp(bytes, written, delayMs = 0) {
    const now = Date.now();
    const releaseAt = Math.max(this.#upHoldUntil, now + delayMs);
    this.#upHoldUntil = releaseAt;
    if (this.#upQueue.length === 0 && releaseAt <= now) {
      this.#upstream.write(bytes);
      written?.();
      return;
    }
    this.#upQueue.push({ bytes, written, releaseAt });
    const flushLater = () => {
      const first = this.#upQueue[0];
      if (first === undefined) return;
      this.#upFlushTimer = setTimeout(
        () => {
          this.#upFlushTimer = undefined;
          if (this.#closed) return;
          const until = Date.now();
          while (this.#upQueue.length > 0 && this.#upQueue[0].releaseAt <= until) {
            const each = this.#upQueue.shift();
            this.#upstream.write(each.bytes);
            each.written?.();
          }
          flushLater();
        },
        Math.max(0, first.releaseAt - Date.now()),
      );
    };
    if (this.#upFlushTimer === undefined) flushLater();
  }

  #readDown(chunk) {
    if (this.#closed) return;
    this.#down = this.#down.length === 0 ? chunk : Buffer.concat([this.#down, chunk]);
    if (!this.#handshakeDone) {
      const end = this.#down.indexOf('\r\n\r\n');
      if (end < 0) return;
      this.conn.status = this.#down.subarray(0, this.#down.indexOf('\r\n')).toString('latin1');
      this.#client.write(this.#down.subarray(0, end + 4));
      this.#down = this.#down.subarray(end + 4);
      this.#handshakeDone = true;
    }
    for (;;) {
      const frame = parseFrame(this.#down);
      if (frame === undefined) return;
      const bytes = this.#down.subarray(0, frame.length);
      this.#down = this.#down.subarray(frame.length);
      this.#route(frame, Buffer.from(bytes));
      if (this.#closed) return;
    }
  }

  #route(frame, bytes) {
    const balancer = this.#balancer;
    const counts = balancer.counts;
    counts.framesRelayed += 1;
    const faults = balancer.faults;
    let kind;
    let terminal = false;
    /** This frame as the violation report shows it, when it is about a task (its fate is set below). */
    let seen;
    /** A `hello`'s record in `conn.hellos`: it learns when it went out, as `seen` does (see {@link #write}). */
    let hello;
    if (frame.opcode === 1 && frame.fin) {
      try {
        const message = JSON.parse(frame.payload);
        kind = message.type;
        if (kind === 'hello') {
          // The first hello: a token renewal's hello (an `auth` frame on the open socket) comes again later.
          this.conn.helloAt ??= Date.now();
          // With its time: which epoch the client had when it sent an ack (chaos/run.mjs, ackEpochs). The
          // first only: the client takes no epoch from a renewal's hello (connection.ts: a hello on a socket
          // already open is ignored), which names the replica's cached epoch. One field overwritten by each
          // renewal's hello, read by the ack check seconds later, gave acks the epoch of the LAST hello; a
          // list of them all still counted a renewal's hello named after a renewal of the epoch.
          if (this.conn.hellos.length === 0) {
            hello = { epoch: message.epoch, at: Date.now() };
            this.conn.hellos.push(hello);
          }
        }
        const taskId = message.event?.taskId ?? message.task?.id ?? message.taskId;
        if (taskId !== undefined) {
          seen = { type: kind, taskId, seq: message.event?.seq ?? message.task?.seq, code: message.code };
          // The event's own type: the harness's wire check tells a terminal event's re-send by it.
          if (kind === 'event') seen.eventType = message.event?.type;
          if (message.reset === true) seen.reset = true;
          if (message.epoch !== undefined) seen.epoch = message.epoch;
          seen.at = Date.now();
          seen.conn = this.conn;
          balancer.onServerFrame?.(seen);
        } else if (kind === 'heartbeat' && balancer.onHeartbeat !== undefined) {
          // One record per heartbeat (its seqs by task), for explaining slow deliveries; its fate is set below.
          seen = { type: kind, seqs: message.seqs ?? {}, at: Date.now(), conn: this.conn };
          balancer.onHeartbeat(seen);
        }
        terminal =
          (kind === 'event' && TERMINAL.has(message.event?.type)) ||
          (kind === 'snapshot' && message.task?.status !== undefined && message.task.status !== 'running');
      } catch {
        kind = undefined;
      }
    }
    if (kind === undefined || !TAMPERABLE.has(kind)) {
      this.#write(bytes, seen ?? hello);
      return;
    }
    const roll = balancer.random();
    let edge = faults.cut;
    if (roll < edge) {
      counts.cutByFrame += 1;
      if (seen) seen.fate = 'cut';
      this.cut('frame cut');
      return;
    }
    edge += faults.drop;
    if (roll < edge) {
      counts.dropped += 1;
      if (terminal) counts.droppedTerminal += 1;
      if (seen) seen.fate = 'dropped';
      return;
    }
    edge += faults.duplicate;
    if (roll < edge) {
      counts.duplicated += 1;
      if (terminal) counts.duplicatedTerminal += 1;
      if (seen) seen.fate = 'duplicated';
      this.#write(bytes, seen);
      this.#write(bytes, seen);
      return;
    }
    edge += faults.delay;
    let delayMs = 0;
    if (roll < edge) {
      counts.delayed += 1;
      if (terminal) counts.delayedTerminal += 1;
      delayMs = faults.delayMinMs + Math.floor(balancer.random() * (faults.delayMaxMs - faults.delayMinMs));
      if (seen) seen.fate = `delayed ${delayMs} ms`;
    }
    this.#write(bytes, seen, delayMs);
  }

  /**
   * Writes in order: a frame leaves `delayMs` after it arrived, or when the frame before it leaves if that
   * is later (order is kept, as on TCP). Each frame has its own release time: a frame is never held by a
   * delay drawn for a frame that arrived after it. (A single hold for the whole queue, extended by every
   * delayed arrival, held frames up to 0.9 s in a 2,000-task run where the faults say 400 ms at most.)
   * `seen`, the frame's log record, learns when it went out.
   */
  #write(bytes, seen, delayMs = 0) {
    const now = Date.now();
    const releaseAt = Math.max(this.#holdUntil, now + delayMs);
    this.#holdUntil = releaseAt;
    if (this.#queue.length === 0 && releaseAt <= now) {
      this.#client.write(bytes);
      return;
    }
    if (seen) seen.held = true;
    this.#queue.push({ bytes, seen, at: now, releaseAt });
    if (this.#flushTimer === undefined) this.#flushLater();
  }

  /** Sets the timer for the first queued frame's release. */
  #flushLater() {
    const first = this.#queue[0];
    if (first === undefined) return;
    this.#flushTimer = setTimeout(
      () => {
        this.#flushTimer = undefined;
        if (this.#closed) return;
        this.#flush(Date.now());
        this.#flushLater();
      },
      Math.max(0, first.releaseAt - Date.now()),
    );
  }

  /** Writes the queued frames released by `until` (all of them by default), in order. */
  #flush(until = Number.POSITIVE_INFINITY) {
    const now = Date.now();
    const counts = this.#balancer.counts;
    let released = 0;
    while (released < this.#queue.length && this.#queue[released].releaseAt <= until) released++;
    const queued = this.#queue.splice(0, released);
    for (const { bytes, seen, at } of queued) {
      if (seen) seen.outAt = now;
      counts.maxHeldMs = Math.max(counts.maxHeldMs, now - at);
      if (now - at > 400) counts.heldOver400 += 1;
      this.#client.write(bytes);
    }
  }
}

/** The task id of a `{basePath}/tasks/:id/<route>` URL (`ack`, `stream`), else `undefined`. */
function routeTaskId(url, route) {
  const match = new RegExp(`/tasks/([^/?]+)/${route}(?:\\?|$)`).exec(url ?? '');
  if (match === null) return undefined;
  try {
    return decodeURIComponent(match[1]);
  } catch {
    return undefined;
  }
}

/**
 * One relayed event stream (`GET …/tasks/:id/stream`): its events are parsed as they pass (untouched:
 * frame-level drop, duplicate and delay are WebSocket-only) to log them for `--explain`; a cut destroys
 * its HTTP connection on both sides.
 */
class HttpStream {
  onClose = () => {};
  conn = { id: nextConnId++, closedAt: undefined, openedAt: Date.now(), sse: true };
  #balancer;
  #req;
  #upstream;
  #text = '';
  #decoder = new TextDecoder();
  #closed = false;

  constructor(balancer, req, upstream, backendName) {
    this.#balancer = balancer;
    this.#req = req;
    this.#upstream = upstream;
    this.conn.backend = backendName;
  }

  /** A chunk from the replica (already on its way to the client): logs the frames it completes. */
  read(chunk) {
    this.#text += this.#decoder.decode(chunk, { stream: true });
    let cut = this.#text.indexOf('\n\n');
    while (cut >= 0) {
      const block = this.#text.slice(0, cut);
      this.#text = this.#text.slice(cut + 2);
      cut = this.#text.indexOf('\n\n');
      // The stream's opening comment says it is served: the counterpart of a socket's `hello`.
      if (block.includes(': hello')) this.conn.helloAt ??= Date.now();
      const data = block
        .split('\n')
        .filter((line) => line.startsWith('data:'))
        .map((line) => line.slice(line.startsWith('data: ') ? 6 : 5))
        .join('\n');
      if (data === '') continue;
      this.#balancer.counts.sseFramesRelayed += 1;
      let message;
      try {
        message = JSON.parse(data);
      } catch {
        continue;
      }
      const taskId = message.event?.taskId ?? message.task?.id ?? message.taskId;
      if (taskId === undefined) continue;
      // The id names the epoch of the frame's seq (`<seq>~<epoch>`).
      const id = block.split('\n').find((line) => line.startsWith('id:'));
      const epoch = id?.includes('~') ? id.slice(id.indexOf('~') + 1).trim() : undefined;
      this.#balancer.onServerFrame?.({
        type: message.type,
        taskId,
        seq: message.event?.seq ?? message.task?.seq,
        code: message.code,
        ...(message.reset === true ? { reset: true } : {}),
        ...(epoch === undefined ? {} : { epoch }),
        at: Date.now(),
        conn: this.conn,
      });
    }
  }

  /** Destroys the stream's connection on both sides (a network failure). */
  cut(why = 'cut') {
    if (this.#closed) return;
    this.conn.end ??= why;
    this.#req.socket.destroy();
    this.#upstream.destroy();
    this.closed(why);
  }

  /** Either side ended or lost the stream. */
  closed(why) {
    if (this.#closed) return;
    this.#closed = true;
    this.conn.end ??= why;
    this.conn.closedAt = Date.now();
    this.onClose();
  }
}

/**
 * Parses one WebSocket frame at the start of `buffer` (RFC 6455 §5.2): `undefined` until it is complete.
 * The payload is unmasked into text for inspection; the caller relays the original bytes.
 */
export function parseFrame(buffer) {
  if (buffer.length < 2) return undefined;
  const b0 = buffer[0];
  const b1 = buffer[1];
  let length = b1 & 0x7f;
  let offset = 2;
  if (length === 126) {
    if (buffer.length < 4) return undefined;
    length = buffer.readUInt16BE(2);
    offset = 4;
  } else if (length === 127) {
    if (buffer.length < 10) return undefined;
    length = Number(buffer.readBigUInt64BE(2));
    offset = 10;
  }
  const masked = (b1 & 0x80) !== 0;
  const maskOffset = offset;
  if (masked) offset += 4;
  if (buffer.length < offset + length) return undefined;
  const opcode = b0 & 0x0f;
  let payload = '';
  if (opcode === 1) {
    const data = Buffer.from(buffer.subarray(offset, offset + length));
    if (masked) for (let i = 0; i < data.length; i++) data[i] ^= buffer[maskOffset + (i % 4)];
    payload = data.toString('utf8');
  }
  return { fin: (b0 & 0x80) !== 0, opcode, payload, length: offset + length };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const [port = '0', ...backendPorts] = process.argv.slice(2);
  const balancer = new Balancer();
  balancer.setBackends(backendPorts.map((p, i) => ({ name: `r${i}`, port: Number(p) })));
  const actual = await balancer.listen(Number(port));
  process.stdout.write(`balancer on 127.0.0.1:${actual} → ${backendPorts.join(', ')}\n`);
}
