// One replica of one system under test, run as a child process by run.mjs (never by hand).
//
//   PEER_SYSTEM = finishline-sqlite | finishline-pg | baseline | socketio
//   PEER_INDEX  = 0, 1 …     (tasks run on replica 0)
//   PEER_PG_URL, PEER_SCHEMA (Postgres systems), PEER_SQLITE_FILE (finishline-sqlite)
//
// It listens on 127.0.0.1 (a free port), says `ready` over IPC, and then obeys the orchestrator:
// `create` (T tasks), `run` (M items each, then the terminal event; reports each terminal's time),
// `bump` (one progress event on one task), `stats` (CPU seconds, peak RSS, heap, sockets), `stop`.
// Times are epoch milliseconds with sub-millisecond resolution (performance.timeOrigin + now()), so the
// orchestrator can subtract them from its own clock on the same machine.
import { readdirSync, readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { loopDelayMeter } from './stalls.mjs';
import { toggleWindowProfile } from './window-profile.mjs';

const SYSTEM = process.env.PEER_SYSTEM;
const INDEX = Number(process.env.PEER_INDEX ?? 0);
const PG_URL = process.env.PEER_PG_URL;
const SCHEMA = process.env.PEER_SCHEMA;
const now = () => performance.timeOrigin + performance.now();
const send = (message) => process.send?.(message);

// Never outlive the orchestrator: if the IPC channel closes, leave.
process.on('disconnect', () => process.exit(0));
process.on('uncaughtException', (error) => {
  process.stderr.write(`replica ${SYSTEM}#${INDEX}: ${error?.stack ?? error}\n`);
  process.exit(1);
});
process.on('unhandledRejection', (error) => {
  process.stderr.write(`replica ${SYSTEM}#${INDEX}: unhandled ${error?.stack ?? error}\n`);
  process.exit(1);
});

// ── Finishline ────────────────────────────────────────────────────────────────────────────────────

async function finishline() {
  const { ProgressServer } = await import('@finishline/server');
  let store;
  let pool;
  if (SYSTEM === 'finishline-sqlite') {
    const { SqliteProgressStore } = await import('@finishline/sqlite');
    store = new SqliteProgressStore({ database: process.env.PEER_SQLITE_FILE });
  } else {
    const pg = (await import('pg')).default;
    const { PostgresProgressStore } = await import('@finishline/postgres');
    // PEER_DIAG_COUNTS=1 (diagnostic): count the replica's Postgres statements by their text, printed at stop.
    if (process.env.PEER_DIAG_COUNTS === '1') countStatements(pg.Client.prototype);
    pool = new pg.Pool({ connectionString: PG_URL, max: Number(process.env.PEER_PG_POOL_MAX ?? 10) });
    pool.on('error', () => undefined);
    store = await PostgresProgressStore.open({ pool, schema: SCHEMA });
  }
  // Diagnostic only (never set for published figures): drop the watchers' ack writes, to see how much
  // of the delivery latency they cost.
  if (process.env.PEER_DIAG_NO_ACK_WRITES === '1') store.ack = async (_taskId, seq) => seq;
  // Diagnostic only (never set for published figures): each task's row read once, the first answer kept
  // for every later load of the id (stale: the subscribes' catch-up repairs it), to see how much of the
  // replicas' CPU the per-subscribe loads cost.
  if (process.env.PEER_DIAG_CACHE_GETTASK === '1') {
    const loaded = new Map();
    const getTask = store.getTask.bind(store);
    store.getTask = (taskId) => {
      if (!loaded.has(taskId)) loaded.set(taskId, getTask(taskId));
      return loaded.get(taskId);
    };
  }
  const server = await ProgressServer.listen(
    {
      store,
      // One principal per watcher, as with browser users: the per-principal caps (100 sockets) and the
      // per-principal read fairness are meant for one user's tabs, not for 4,000 watchers sharing one id.
      authenticate: (request) => ({ id: `watcher-${request.headers['x-watcher'] ?? 'anonymous'}` }),
      // Every watcher may follow every bench task (the default lets only the task's owner).
      authorize: () => true,
      // Every watcher connects from 127.0.0.1: the cap on unauthenticated connections per address is
      // meant for many addresses, and would evict the bench's own reconnects after a cut.
      maxPendingConnectionsPerAddress: 100_000,
      serverId: `${SYSTEM}-${INDEX}`,
      // PEER_DIAG_HEARTBEAT_MS (diagnostic, never for published figures): another heartbeat interval, to see
      // what the sweep (a ping, its pong and a heartbeat frame per socket) costs when it falls in the window.
      ...(process.env.PEER_DIAG_HEARTBEAT_MS
        ? { heartbeatIntervalMs: Number(process.env.PEER_DIAG_HEARTBEAT_MS) }
        : {}),
      // PEER_DIAG_RECONNECTS_PER_SECOND (diagnostic): another reconnect pace in `hello`'s hint.
      ...(process.env.PEER_DIAG_RECONNECTS_PER_SECOND
        ? { reconnectsPerSecond: Number(process.env.PEER_DIAG_RECONNECTS_PER_SECOND) }
        : {}),
    },
    // PEER_DIAG_BACKLOG (diagnostic): another listen backlog (511 is Node's default, the one before
    // session 48), to see what the storm loses to connections the kernel drops.
    {
      port: 0,
      host: '127.0.0.1',
      ...(process.env.PEER_DIAG_BACKLOG ? { backlog: Number(process.env.PEER_DIAG_BACKLOG) } : {}),
    },
  );
  const handles = new Map();
  return {
    port: server.httpServer.address().port,
    async create(count, total) {
      const ids = [];
      for (let i = 0; i < count; i++) {
        const handle = await server.tasks.create({ owner: 'bench', kind: 'bench', total });
        handles.set(handle.id, handle);
        ids.push(handle.id);
      }
      return ids;
    },
    async item(id, i) {
      await handles.get(id).item({ key: `item-${i}`, ok: true });
    },
    async terminal(id) {
      await handles.get(id).complete({ result: { ok: true } });
    },
    async bump(id, i) {
      return (await handles.get(id).progress({ message: `bump ${i}` })).seq;
    },
    sockets: () => server.health().sockets,
    // Terminal frames re-sent for want of an ack (each one more frame written, decoded, and acked).
    terminalResends: async () => (await server.metrics.terminalRetries.get()).values[0]?.value ?? 0,
    async stop() {
      if (process.env.PEER_DIAG_COUNTS === '1') await printCounts(server);
      await server.close({ timeoutMs: 2000 });
      await store.close();
      await pool?.end();
    },
  };
}

/** Wraps `query` to count statements by their first 90 characters (PEER_DIAG_COUNTS). */
const statementCounts = new Map();
function countStatements(clientPrototype) {
  const query = clientPrototype.query;
  clientPrototype.query = function (config, ...rest) {
    const text = typeof config === 'string' ? config : (config?.text ?? '?');
    const key = text.replace(/\s+/g, ' ').trim().slice(0, 90);
    statementCounts.set(key, (statementCounts.get(key) ?? 0) + 1);
    return query.call(this, config, ...rest);
  };
}

/** Frames sent and re-sent, terminal-ack latency and statements of this replica, on stderr. */
async function printCounts(server) {
  const wanted =
    /^finishline_(events_sent|snapshots_sent|resyncs_total|terminal_retries|terminal_ack_latency_seconds_(sum|count))/;
  const metrics = (await server.metrics.registry.metrics()).split('\n').filter((line) => wanted.test(line));
  const statements = [...statementCounts]
    .sort((a, b) => b[1] - a[1])
    .map(([text, count]) => `${String(count).padStart(7)}  ${text}`);
  process.stderr.write(`counts of ${SYSTEM}#${INDEX}:\n${[...metrics, ...statements].join('\n')}\n`);
}

// ── The original design, rebuilt small ──────────────────────────────────────────────────────────
// A `progress_messages` table with one global `processed` flag; each replica polls it every 500 ms for
// unprocessed rows (completion messages first), pushes each row to the sockets *it* holds for the task,
// and marks the rows processed — whether or not it held any socket of that task (the flaw: the replica
// holding the watcher's socket may never see the row). A completion with no local socket is retried
// every 100 ms (up to 3 s) before its row is marked. The worker also force-pushes the completion to its
// own local sockets. Messages are not replayed on (re)subscribe: the table is a queue, not a log.

const BASELINE_POLL_MS = 500;
const BASELINE_RETRY_MS = 100;
const BASELINE_RETRIES = 30;

async function baseline() {
  const pg = (await import('pg')).default;
  const { WebSocketServer } = await import('ws');
  const pool = new pg.Pool({ connectionString: PG_URL, max: 5 });
  pool.on('error', () => undefined);
  const table = `${SCHEMA}.progress_messages`;
  const http = createServer();
  const wss = new WebSocketServer({ server: http });
  /** taskId → sockets on this replica */
  const local = new Map();
  wss.on('connection', (socket) => {
    const mine = new Set();
    socket.on('message', (data) => {
      let frame;
      try {
        frame = JSON.parse(String(data));
      } catch {
        return;
      }
      if (frame.type === 'subscribe' && typeof frame.taskId === 'string') {
        if (!local.has(frame.taskId)) local.set(frame.taskId, new Set());
        local.get(frame.taskId).add(socket);
        mine.add(frame.taskId);
        socket.send(JSON.stringify({ type: 'subscribed', taskId: frame.taskId }));
      }
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      for (const taskId of mine) local.get(taskId)?.delete(socket);
    });
  });
  const push = (taskId, message) => {
    const sockets = local.get(taskId);
    let sent = 0;
    for (const socket of sockets ?? []) {
      if (socket.readyState === 1) {
        socket.send(message);
        sent++;
      }
    }
    return sent;
  };
  let stopping = false;
  const retries = new Set();
  const retryCompletion = (row) =>
    new Promise((resolve) => {
      let attempts = 0;
      const timer = setInterval(() => {
        attempts++;
        if (stopping || push(row.task_id, row.message) > 0 || attempts >= BASELINE_RETRIES) {
          clearInterval(timer);
          retries.delete(timer);
          resolve();
        }
      }, BASELINE_RETRY_MS);
      retries.add(timer);
    });
  let polling = Promise.resolve();
  const poll = async () => {
    const { rows } = await pool.query(
      `SELECT id, task_id, kind, payload::text AS message FROM ${table}
       WHERE processed = false ORDER BY (kind = 'completion') DESC, created_at LIMIT 2000`,
    );
    if (rows.length === 0) return;
    const waits = [];
    for (const row of rows) {
      const sent = push(row.task_id, row.message);
      if (sent === 0 && row.kind === 'completion') waits.push(retryCompletion(row));
    }
    await Promise.all(waits);
    await pool.query(`UPDATE ${table} SET processed = true WHERE id = ANY($1::bigint[])`, [
      rows.map((r) => r.id),
    ]);
  };
  const poller = setInterval(() => {
    polling = polling.then(poll).catch((error) => {
      if (!stopping) process.stderr.write(`baseline poll: ${error.message}\n`);
    });
  }, BASELINE_POLL_MS);
  await new Promise((resolve) => http.listen(0, '127.0.0.1', resolve));
  let nextId = 0;
  const insert = (taskId, kind, payload) =>
    pool.query(`INSERT INTO ${table} (task_id, kind, payload) VALUES ($1, $2, $3)`, [
      taskId,
      kind,
      JSON.stringify(payload),
    ]);
  return {
    port: http.address().port,
    async create(count) {
      const ids = [];
      for (let i = 0; i < count; i++) ids.push(`b${INDEX}-${process.pid}-${nextId++}`);
      return ids;
    },
    async item(id, i) {
      await insert(id, 'progress', { type: 'progress', taskId: id, done: i + 1 });
    },
    async terminal(id) {
      const payload = { type: 'completion', taskId: id };
      await insert(id, 'completion', payload);
      // The forced completion push, to this replica's sockets; it runs after the commit, so the commit
      // time is taken before it (else the push would count before the commit).
      return () => push(id, JSON.stringify(payload));
    },
    async bump(id, i) {
      await insert(id, 'progress', { type: 'progress', taskId: id, message: `bump ${i}` });
    },
    sockets: () => wss.clients.size,
    async stop() {
      stopping = true;
      clearInterval(poller);
      for (const timer of retries) clearInterval(timer);
      await polling.catch(() => undefined);
      for (const socket of wss.clients) socket.terminate();
      await new Promise((resolve) => wss.close(() => resolve()));
      await new Promise((resolve) => http.close(() => resolve()));
      await pool.end();
    },
  };
}

// ── Socket.IO 4 + @socket.io/postgres-adapter, connection-state recovery on ─────────────────────
// The way its docs present progress updates: a room per task, `io.to(room).emit(…)` for each update and
// for the completion; the adapter relays broadcasts to the other replicas through Postgres NOTIFY.
// Note: the adapter's README lists connection-state recovery as unsupported, so the option is accepted
// and silently has no effect across this adapter; watchers re-join their room on every `connect`.

/**
 * PEERS_SIO_PAYLOAD=full (diagnostic, not the published rows): Socket.IO sends what a Finishline `item` event
 * carries (seq, type, time, the whole progress, the item), to see how much of the gap is the message's size.
 */
const SIO_FULL_PAYLOAD = process.env.PEERS_SIO_PAYLOAD === 'full';

function fullItem(id, i) {
  return {
    taskId: id,
    seq: i + 1,
    type: 'item',
    time: Date.now(),
    item: { key: `item-${i}`, ok: true, error: null, detail: null },
    progress: { total: 10, done: i + 1, succeeded: i + 1, failed: 0, current: null, message: null },
  };
}

async function socketio() {
  const pg = (await import('pg')).default;
  const { Server } = await import('socket.io');
  const { createAdapter } = await import('@socket.io/postgres-adapter');
  const pool = new pg.Pool({ connectionString: PG_URL, max: 5 });
  pool.on('error', () => undefined);
  const http = createServer();
  const io = new Server(http, {
    transports: ['websocket'],
    connectionStateRecovery: { maxDisconnectionDuration: 2 * 60 * 1000, skipMiddlewares: true },
  });
  io.adapter(
    createAdapter(pool, {
      channelPrefix: `${SCHEMA}_sio`,
      tableName: `${SCHEMA}.socket_io_attachments`,
      errorHandler: () => undefined,
    }),
  );
  io.on('connection', (socket) => {
    socket.on('watch', (taskId, ack) => {
      if (typeof taskId === 'string') socket.join(`task:${taskId}`);
      if (typeof ack === 'function') ack({ ok: true, recovered: socket.recovered });
    });
  });
  await new Promise((resolve) => http.listen(0, '127.0.0.1', resolve));
  let nextId = 0;
  return {
    port: http.address().port,
    async create(count) {
      const ids = [];
      for (let i = 0; i < count; i++) ids.push(`s${INDEX}-${process.pid}-${nextId++}`);
      return ids;
    },
    async item(id, i) {
      io.to(`task:${id}`).emit('item', SIO_FULL_PAYLOAD ? fullItem(id, i) : { taskId: id, done: i + 1 });
    },
    async terminal(id) {
      // Nothing is committed anywhere: the emit is the terminal write.
      return () => io.to(`task:${id}`).emit('completed', { taskId: id });
    },
    async bump(id, i) {
      io.to(`task:${id}`).emit('item', { taskId: id, message: `bump ${i}` });
    },
    sockets: () => io.engine.clientsCount,
    async stop() {
      io.disconnectSockets(true);
      await new Promise((resolve) => io.close(() => resolve()));
      await pool.end();
    },
  };
}

// ── IPC loop ─────────────────────────────────────────────────────────────────────────────────────

const factories = { 'finishline-sqlite': finishline, 'finishline-pg': finishline, baseline, socketio };
const factory = factories[SYSTEM];
if (!factory) throw new Error(`unknown PEER_SYSTEM ${SYSTEM}`);
const system = await factory();

const loopDelayMaxMs = loopDelayMeter();

const stats = () => {
  const cpu = process.cpuUsage();
  const usage = process.resourceUsage();
  const memory = process.memoryUsage();
  return {
    cpuSeconds: (cpu.user + cpu.system) / 1e6,
    // The kernel's share (system calls: socket writes and reads) apart from the process's own code.
    systemCpuSeconds: cpu.system / 1e6,
    peakRssMb: usage.maxRSS / 1024,
    rssMb: memory.rss / 2 ** 20,
    heapUsedMb: memory.heapUsed / 2 ** 20,
    sockets: system.sockets(),
    threads: process.env.PEER_DIAG_THREADS === '1' ? threadCpu() : undefined,
    // The longest event-loop delay since the previous `stats` (the window's, in the one after it).
    loopDelayMaxMs: loopDelayMaxMs(),
  };
};

/**
 * PEER_DIAG_THREADS=1 (Linux): CPU seconds per thread of this process from /proc, the main thread apart
 * from V8's and libuv's helpers (concurrent GC marking and sweeping, parallel scavenges, compilation).
 */
function threadCpu() {
  const ticksPerSecond = 100; // USER_HZ, 100 on every Linux this runs on
  const seconds = { main: 0, helpers: 0 };
  for (const tid of readdirSync('/proc/self/task')) {
    const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
    // Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const cpu = (Number(fields[11]) + Number(fields[12])) / ticksPerSecond;
    seconds[tid === String(process.pid) ? 'main' : 'helpers'] += cpu;
  }
  return seconds;
}

async function runTasks(ids, items, paceMs, startsMs) {
  await Promise.all(
    ids.map(async (id, index) => {
      if (startsMs?.[index] > 0) await sleep(startsMs[index]);
      for (let i = 0; i < items; i++) {
        if (paceMs > 0) await sleep(paceMs);
        await system.item(id, i);
      }
      // `called`: the terminal write was issued; `t`: it is committed (the call resolved). Latency is
      // measured from `t`; `t - called` is the write's own latency.
      const called = now();
      const after = await system.terminal(id);
      const t = now();
      if (typeof after === 'function') after();
      send({ type: 'terminal', id, t, called });
    }),
  );
}

process.on('message', async (message) => {
  try {
    switch (message.type) {
      case 'create':
        send({ type: 'created', ids: await system.create(message.count, message.items) });
        break;
      case 'run':
        await runTasks(message.ids, message.items, message.paceMs, message.startsMs);
        send({ type: 'ran' });
        break;
      case 'bump':
        send({ type: 'bumped', seq: (await system.bump(message.id, message.n)) ?? null, t: now() });
        break;
      case 'stats':
        // A warm-up pass's window is not profiled (run.mjs, PEERS_WARMUP_PASSES).
        if (message.profile !== false) await toggleWindowProfile(`replica-${SYSTEM}`);
        if (message.gc && global.gc) global.gc();
        send({ type: 'stats', ...stats(), terminalResends: (await system.terminalResends?.()) ?? null });
        break;
      case 'stop':
        await system.stop();
        send({ type: 'stopped', ...stats() });
        process.disconnect();
        setTimeout(() => process.exit(0), 200).unref();
        break;
      default:
        throw new Error(`unknown message ${message.type}`);
    }
  } catch (error) {
    send({ type: 'error', message: String(error?.stack ?? error) });
  }
});

send({ type: 'ready', port: system.port });
