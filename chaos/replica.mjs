// One Finishline replica as a child process of chaos/run.mjs: a ProgressServer over Postgres (or, with
// CHAOS_STORE=sqlite, over a SqliteProgressStore on the database file CHAOS_SQLITE_FILE that every replica
// shares) on a port chosen at run time. It talks to its parent over IPC:
//   → parent  { type: 'ready', port, serverId, pid, epoch }
//   ← parent  { type: 'start', requestId, owner, items, itemMs, run, id? }
//                                                 → { type: 'started', requestId, taskId } (or { …, error, exists })
//                                                 → { type: 'ended', taskId, status, endedElsewhere } (later)
//   ← parent  { type: 'purge', requestId, olderThanMs }  → { type: 'purged', requestId, count } (or { …, error })
//   ← parent  { type: 'renew', requestId }  → { type: 'renewed', requestId, epoch } (or { …, error })
//   → parent  { type: 'epoch-noticed', epoch, at }  (the server noticed a renewed epoch)
//   → parent  { type: 'acks-dropped', acks: [{ taskId, seq }], at }  (acks not written yet, dropped at that notice)
//   → parent  { type: 'stall', at, ms }  (this process's event loop ran nothing for `ms` after its tick at `at`: busy, starved or frozen)
//   ← parent  { type: 'metrics', requestId }  → { type: 'metrics', requestId, resyncs, rejected, tokenChecks, health, … }
//   → parent  { type: 'refused', method, code, taskId, status } (each write of a task the store refused)
// SIGTERM closes the server gracefully (owned tasks end with a terminal event) and exits 0.
// Imports the BUILT packages (npm run build first).
import { ProgressServer } from '@finishline/server';

const env = process.env;
const storeKind = env.CHAOS_STORE ?? 'postgres';
const name = required('CHAOS_REPLICA_NAME'); // e.g. chaos_ab12_r0 (also the application_name prefix)
const leaseTtlMs = Number(env.CHAOS_LEASE_TTL_MS ?? 3000);
const heartbeatIntervalMs = Number(env.CHAOS_HEARTBEAT_MS ?? 1000);

function required(key) {
  const value = env[key];
  if (value === undefined || value === '') {
    process.stderr.write(`replica: ${key} is required\n`);
    process.exit(2);
  }
  return value;
}

const send = (message) => {
  if (process.connected) process.send(message);
};

// ── the store: Postgres (one schema per run) or SQLite (one file shared by every replica) ──────────
let closeStoreResources = async () => {};
async function openPostgresStore() {
  const { PostgresProgressStore } = await import('@finishline/postgres');
  const { default: pg } = await import('pg');
  const url = required('CHAOS_PG_URL');
  const schema = required('CHAOS_SCHEMA');
  const pool = new pg.Pool({ connectionString: url, max: 6, application_name: `${name}-pool` });
  // A backend killed by pg_terminate_backend makes idle clients emit 'error'; the pool replaces them.
  pool.on('error', () => {});
  // A replica restarted while the database refuses connections (Postgres' max_connections on a shared
  // server) retries, as an orchestrator would restart it.
  const opened = await retried(() =>
    PostgresProgressStore.open({
      pool,
      schema,
      listenClient: { connectionString: url, application_name: `${name}-listen`, keepAlive: true },
      onError: () => {},
    }),
  );
  closeStoreResources = () => pool.end();
  return opened;
}

// Several processes on one file, as docs/api.md allows: WAL, each replica's change feed polls
// `PRAGMA data_version` (every 50 ms by default) for the others' commits. The adapter's defaults, as the
// example app uses them.
async function openSqliteStore() {
  const { SqliteProgressStore } = await import('@finishline/sqlite');
  const file = required('CHAOS_SQLITE_FILE');
  // A kill -9 mid-transaction leaves the WAL to recover and the write lock may be held a moment by
  // another replica's migration check: retry the open a few times, as an orchestrator would restart it.
  return retried(async () => new SqliteProgressStore({ database: file, onError: () => {} }));
}

/** `open()` until it succeeds: at most 20 attempts, backing off to 2 s (about 25 s in all). */
async function retried(open) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await open();
    } catch (error) {
      if (attempt >= 20) throw error;
      await new Promise((resolve) => setTimeout(resolve, Math.min(2000, 100 * 2 ** attempt)));
    }
  }
}

const store = reportRefusedWrites(
  storeKind === 'sqlite' ? await openSqliteStore() : await openPostgresStore(),
);

/**
 * Reports to the parent every write of a task (`append`, `renewLease`) the store refused, with its error
 * code and the task's status read just after: a replica frozen (SIGSTOP) past its lease wakes as a zombie
 * whose batch goes on appending to tasks another replica reaped meanwhile, and the store must refuse those
 * writes with a typed error (`task_finished`; chaos/README.md, "frozen replica"). The harness counts them
 * by code and treats a code other than the expected ones as a violation.
 */
function reportRefusedWrites(opened) {
  for (const method of ['append', 'renewLease']) {
    const write = opened[method].bind(opened);
    opened[method] = async (taskId, ...rest) => {
      try {
        return await write(taskId, ...rest);
      } catch (error) {
        // Reported aside: the server learns of the refusal at once, as without this wrapper.
        const code = error?.code ?? `untyped ${error?.name}`;
        void opened.getTask(taskId).then(
          (task) => send({ type: 'refused', method, code, taskId, status: task?.status ?? 'gone' }),
          () => send({ type: 'refused', method, code, taskId, status: 'unread' }),
        );
        throw error;
      }
    };
  }
  return opened;
}

// This process's event-loop stalls (a loaded machine starving it, a long task, a SIGSTOP): a frame relayed
// meanwhile waits in its socket until the stall ends, so the harness's epoch classification of an ack
// (checkAcks in run.mjs) knows how late this replica can have handled it.
// A stall is reported from the last tick that ran (the loop was last seen running then; a frame relayed
// between that tick and the next one's due time was not read either): counted from the due time, a freeze
// that began a few ms after a relay left that relay outside its stall.
{
  let last = Date.now();
  setInterval(() => {
    const now = Date.now();
    if (now - last > 20 + 50) send({ type: 'stall', at: last, ms: now - last });
    last = now;
  }, 20).unref();
}

// When this replica noticed each renewed epoch (the server logs it at info level): reported at once, so
// the harness knows which epoch an ack reaching this replica met (see checkAcks in run.mjs).
const noop = () => {};
const logger = {
  debug: noop,
  warn: noop,
  error: noop,
  info: (fields) => {
    if (typeof fields?.epoch === 'string' && typeof fields.previous === 'string')
      send({ type: 'epoch-noticed', epoch: fields.epoch, at: Date.now() });
    // Acks its writer dropped unwritten at that notice (acks carry no epoch: the known limitation).
    if (typeof fields?.droppedAcks === 'number' && Array.isArray(fields.acks))
      send({ type: 'acks-dropped', acks: fields.acks, at: Date.now() });
  },
};

const server = await ProgressServer.listen(
  {
    store,
    serverId: `${name}-${process.pid}`,
    logger,
    // The harness authenticates watchers by a header, or (--token-ttl-ms) by a token that expires; the
    // default authorization (owner only) applies.
    authenticate: (request) => {
      const user = request.headers['x-user'];
      return typeof user === 'string' && user !== '' ? { id: user } : null;
    },
    authenticateToken,
    allowedOrigins: '*',
    leaseTtlMs,
    reapIntervalMs: Math.max(100, Math.floor(leaseTtlMs / 6)),
    heartbeatIntervalMs,
    // The most the server accepts (a heartbeat of that many subscriptions with the longest ids fits a frame).
    maxSubscriptionsPerSocket: 885,
    rateLimitPerSecond: 1000,
    rateLimitBurst: 2000,
  },
  { port: 0, host: '127.0.0.1' },
);

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ── tokens (--token-ttl-ms) ─────────────────────────────────────────────────────────────────────
// A token is `<principal>.<expiresAtMs>` (the harness's token function makes them; nothing here needs a
// signature). The principal carries the expiry, so the server ends a socket whose credential expires
// with token_expired + 4011, refuses an expired one at once, and answers HTTP with 401 token_expired
// (docs/protocol.md, "Credential expiry"). What each check was is counted for the figures: the first
// check on a socket's upgrade request is its first `auth` frame, any later one a renewal on it.
const tokenChecks = { socketFirst: 0, socketRenewal: 0, http: 0, expiredPresented: 0, refused: 0 };
const checksOfSocket = new WeakMap();
function authenticateToken(token, request) {
  const isSocket = request.headers.upgrade !== undefined;
  if (isSocket) {
    const count = checksOfSocket.get(request) ?? 0;
    checksOfSocket.set(request, count + 1);
    if (count === 0) tokenChecks.socketFirst += 1;
    else tokenChecks.socketRenewal += 1;
  } else tokenChecks.http += 1;
  const match = /^([A-Za-z0-9_-]+)\.(\d+)$/.exec(token);
  if (match === null) {
    tokenChecks.refused += 1;
    return null;
  }
  const expiresAt = Number(match[2]);
  if (expiresAt <= Date.now()) tokenChecks.expiredPresented += 1;
  return { id: match[1], expiresAt };
}

// Every event a watcher can get of a run names the run (the retention fault re-creates purged ids, and a
// watcher of the new run must never get the old one's): the kind (in every snapshot) is `chaos_run<N>`,
// the item keys `run<N>-item-<i>` with detail { run: N }. runBatch's `completed` result is its own
// ({ succeeded, failed }); the harness tells a run's terminal by its time (after the run was created)
// and by the snapshot's kind.
async function start(message) {
  const { requestId, owner, items, itemMs, id } = message;
  const run = message.run ?? 1;
  let task;
  try {
    task = await server.tasks.create({
      owner,
      kind: `chaos_run${run}`,
      total: items,
      ...(id === undefined ? {} : { id }),
    });
  } catch (error) {
    const text = String(error?.message ?? error);
    send({ type: 'started', requestId, error: text, exists: /already exists/.test(text) });
    return;
  }
  try {
    send({ type: 'started', requestId, taskId: task.id });
    const keys = Array.from({ length: items }, (_, index) => `run${run}-item-${index}`);
    const result = await task.runBatch(
      keys,
      async (_key, { signal }) => {
        await sleep(itemMs);
        if (signal.aborted) throw signal.reason;
        return { run };
      },
      { concurrency: 2 },
    );
    // endedElsewhere: the task was ended by another replica (a reaper, after this one was frozen or its
    // lease lapsed) and the batch stopped on learning it.
    send({ type: 'ended', taskId: task.id, status: result.status, endedElsewhere: result.endedElsewhere });
  } catch {
    // The batch machinery failed (the store down): the lease lapses and the reaper ends the task.
  }
}

// Retention, as production runs it: one replica calls purgeFinished on its own store on a timer (the
// harness picks the replica and the moment).
async function purge(message) {
  try {
    const count = await store.purgeFinished({ olderThanMs: message.olderThanMs });
    send({ type: 'purged', requestId: message.requestId, count });
  } catch (error) {
    send({ type: 'purged', requestId: message.requestId, error: String(error?.message ?? error) });
  }
}

// An operator's renewEpoch() after a restore, on a live store (the harness picks the replica and the
// moment): nothing else changes, so every seq stays valid, and every watcher must start over cleanly.
async function renew(message) {
  try {
    const epoch = await store.renewEpoch();
    send({ type: 'renewed', requestId: message.requestId, epoch });
  } catch (error) {
    send({ type: 'renewed', requestId: message.requestId, error: String(error?.message ?? error) });
  }
}

async function metrics(message) {
  const json = await server.metrics.registry.getMetricsAsJSON();
  const resyncs = {};
  const counters = {};
  const rejected = {};
  for (const metric of json) {
    if (metric.name === 'finishline_resyncs_total') {
      for (const value of metric.values) resyncs[value.labels.reason] = value.value;
    } else if (metric.type === 'counter') {
      if (metric.name === 'finishline_frames_rejected_total')
        for (const value of metric.values) rejected[value.labels.code] = value.value;
      counters[metric.name] = metric.values.reduce((sum, value) => sum + value.value, 0);
    }
  }
  send({
    type: 'metrics',
    requestId: message.requestId,
    resyncs,
    counters,
    rejected,
    tokenChecks,
    health: server.health(),
    // The Postgres feed's figures; the SQLite feed has none.
    feed: store.changes.stats?.(),
  });
}

process.on('message', (message) => {
  switch (message?.type) {
    case 'start':
      void start(message);
      break;
    case 'metrics':
      void metrics(message).catch(() => {});
      break;
    case 'purge':
      void purge(message);
      break;
    case 'renew':
      void renew(message);
      break;
    default:
      break;
  }
});

let stopping = false;
async function stop(signal) {
  if (stopping) return;
  stopping = true;
  // close() interrupts owned tasks that do not end in time, so none stays `running` forever.
  await server.close({ timeoutMs: 3000 }).catch(() => {});
  await store.close().catch(() => {});
  await closeStoreResources().catch(() => {});
  send({ type: 'stopped', signal });
  process.exit(0);
}
process.on('SIGTERM', () => void stop('SIGTERM'));
process.on('SIGINT', () => void stop('SIGINT'));
process.on('disconnect', () => void stop('disconnect'));

const address = server.httpServer.address();
send({
  type: 'ready',
  port: address.port,
  serverId: server.serverId,
  pid: process.pid,
  // (A failed read leaves it unknown: the harness then counts no ack of this incarnation apart.)
  epoch: await store.getEpoch?.().catch(() => undefined),
});
