// What K Server-Sent Events streams of one task cost the replica that serves them: store reads per commit
// and the server process's CPU per delivered event. A ProgressServer on SQLite (a file in a temporary
// directory) runs in a child process, its store wrapped to count `readEvents` and `getTask`; this process
// opens K streams of one task (`GET …/tasks/:id/stream`, one principal each) and reads them; the server
// then commits M progress events one at a time through its task API, each once every stream has the one
// before (events a few milliseconds apart, as progress comes, rather than one burst that streams could
// coalesce). Counted from the first commit to the last event read on every stream: the store calls, and
// the child's process.cpuUsage (user + system), divided by K × M. SSE_FANOUT_COMMIT=store appends through
// the store instead of the server's task API, so the server learns of each commit from the store's change
// feed, as of a commit made by another process, rather than from its own append.
//
// To compare two trees in the same run, point SSE_FANOUT_BEFORE at the root of another built worktree
// (e.g. `git worktree add --detach ../before HEAD~1`, then `npm ci && npm run build` there, or copy
// node_modules): the rounds alternate between it and this tree. Bounded: SSE_FANOUT_STREAMS (default
// 200) streams × SSE_FANOUT_COMMITS (default 200) commits × SSE_FANOUT_ROUNDS (default 3) rounds per
// tree, every wait at most 60 s. Loopback only.
//
//   npm run build && SSE_FANOUT_BEFORE=../before node benchmarks/delivery/sse-fanout.bench.mjs
import { fork } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const STREAMS = Number(process.env.SSE_FANOUT_STREAMS ?? 200);
const COMMITS = Number(process.env.SSE_FANOUT_COMMITS ?? 200);
const ROUNDS = Number(process.env.SSE_FANOUT_ROUNDS ?? 3);
const COMMIT_THROUGH = process.env.SSE_FANOUT_COMMIT ?? 'server';
const WAIT_MS = 60_000;
const HERE = fileURLToPath(import.meta.url);
const THIS_TREE = resolve(HERE, '../../..');

if (COMMIT_THROUGH !== 'server' && COMMIT_THROUGH !== 'store') {
  throw new Error('SSE_FANOUT_COMMIT must be server or store');
}
if (!(STREAMS >= 1 && STREAMS <= 2000 && COMMITS >= 1 && COMMITS <= 10_000 && ROUNDS >= 1 && ROUNDS <= 20)) {
  throw new Error('SSE_FANOUT_STREAMS must be 1–2000, SSE_FANOUT_COMMITS 1–10000, SSE_FANOUT_ROUNDS 1–20');
}

/** The child: a server of the tree at `root` on SQLite, driven by messages from the parent. */
async function serve(root) {
  const load = (path) => import(pathToFileURL(join(root, path)).href);
  const { ProgressServer, silentLogger } = await load('packages/progress-server/dist/index.js');
  const { SqliteProgressStore } = await load('packages/adapters-sqlite/dist/index.js');
  const dir = mkdtempSync(join(tmpdir(), 'sse-fanout-'));
  const sqlite = new SqliteProgressStore({ database: join(dir, 'bench.db') });
  const reads = { readEvents: 0, getTask: 0 };
  // Bound methods: the store's own fields are private.
  const store = new Proxy(sqlite, {
    get(target, property) {
      const value = Reflect.get(target, property);
      if (typeof value !== 'function') return value;
      const bound = value.bind(target);
      if (property !== 'readEvents' && property !== 'getTask') return bound;
      return (...args) => {
        reads[property] += 1;
        return bound(...args);
      };
    },
  });
  const server = await ProgressServer.listen(
    {
      store,
      logger: silentLogger,
      authenticate: (req) => ({ id: String(req.headers['x-user']) }),
      authorize: () => true,
      heartbeatIntervalMs: 60_000,
    },
    { port: 0, host: '127.0.0.1' },
  );
  const task = await server.tasks.create({ owner: 'bench', kind: 'bench', total: COMMITS });
  let cpu;
  let readsAt;
  process.on('message', async (message) => {
    if (message.type === 'start') {
      readsAt = reads.readEvents + reads.getTask;
      cpu = process.cpuUsage();
      process.send({ type: 'started' });
    } else if (message.type === 'commit') {
      if (COMMIT_THROUGH === 'server') await task.progress({ done: message.done });
      else await sqlite.append(task.id, { type: 'progress', done: message.done });
      process.send({ type: 'committed' });
    } else if (message.type === 'stop') {
      const used = process.cpuUsage(cpu);
      process.send({
        type: 'stopped',
        cpuUs: used.user + used.system,
        reads: reads.readEvents + reads.getTask - readsAt,
      });
    } else if (message.type === 'exit') {
      await task.complete();
      await server.close({ timeoutMs: 2000 });
      await sqlite.close();
      rmSync(dir, { recursive: true, force: true });
      process.exit(0);
    }
  });
  process.send({ type: 'ready', port: server.httpServer.address().port, taskId: task.id });
}

/** The next message of `type` from `child`, or a rejection after WAIT_MS. */
function next(child, type) {
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${type}`)), WAIT_MS);
    const onMessage = (message) => {
      if (message.type !== type) return;
      clearTimeout(timer);
      child.off('message', onMessage);
      resolvePromise(message);
    };
    child.on('message', onMessage);
  });
}

/** One stream: counts the event frames it reads and the highest seq; `until(seq)` waits for that seq. */
function openStream(port, taskId, user) {
  return new Promise((resolveStream, reject) => {
    const stream = { seq: -1, events: 0, waiters: [], response: undefined };
    const req = request(
      {
        host: '127.0.0.1',
        port,
        path: `/progress/tasks/${taskId}/stream`,
        headers: { 'x-user': user },
        agent: false,
      },
      (response) => {
        if (response.statusCode !== 200) {
          reject(new Error(`stream answered ${response.statusCode}`));
          return;
        }
        stream.response = response;
        response.setEncoding('utf8');
        let buffer = '';
        response.on('data', (chunk) => {
          buffer += chunk;
          let cut = buffer.indexOf('\n\n');
          while (cut >= 0) {
            const block = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            const data = block.split('\n').find((line) => line.startsWith('data: '));
            if (data !== undefined) {
              const frame = JSON.parse(data.slice(6));
              const seq = frame.type === 'event' ? frame.event.seq : frame.task.seq;
              if (seq <= stream.seq) throw new Error(`seq ${seq} after ${stream.seq}`);
              if (frame.type === 'event') stream.events += 1;
              stream.seq = seq;
              if (stream.seq >= 0 && stream.response !== undefined) resolveStream(stream);
            }
            cut = buffer.indexOf('\n\n');
          }
          const due = stream.waiters.filter(({ seq }) => stream.seq >= seq);
          stream.waiters = stream.waiters.filter(({ seq }) => stream.seq < seq);
          for (const { wake } of due) wake();
        });
      },
    );
    req.on('error', reject);
    req.end();
  });
}

function until(stream, seq) {
  if (stream.seq >= seq) return Promise.resolve();
  return new Promise((wake, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`stream stuck at seq ${stream.seq}, waiting for ${seq}`)),
      WAIT_MS,
    );
    stream.waiters.push({
      seq,
      wake: () => {
        clearTimeout(timer);
        wake();
      },
    });
  });
}

/** One round against the tree at `root`: store reads per commit, server CPU µs per delivered event. */
async function round(root) {
  const child = fork(HERE, ['serve', root], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  try {
    const { port, taskId } = await next(child, 'ready');
    const streams = [];
    for (let i = 0; i < STREAMS; i++) streams.push(await openStream(port, taskId, `reader-${i}`));
    // Let the opens settle (their loads and first reads are not what is measured).
    await new Promise((done) => setTimeout(done, 300));
    child.send({ type: 'start' });
    await next(child, 'started');
    for (let done = 1; done <= COMMITS; done++) {
      child.send({ type: 'commit', done });
      await next(child, 'committed');
      await Promise.all(streams.map((stream) => until(stream, done)));
    }
    child.send({ type: 'stop' });
    const { cpuUs, reads } = await next(child, 'stopped');
    const delivered = streams.reduce((sum, stream) => sum + stream.events, 0);
    if (delivered !== STREAMS * COMMITS)
      throw new Error(`delivered ${delivered}, expected ${STREAMS * COMMITS}`);
    for (const stream of streams) stream.response.destroy();
    return { readsPerCommit: reads / COMMITS, cpuUsPerEvent: cpuUs / delivered };
  } finally {
    child.send({ type: 'exit' });
    await new Promise((done) => {
      const timer = setTimeout(() => {
        child.kill();
        done();
      }, 5000);
      child.on('exit', () => {
        clearTimeout(timer);
        done();
      });
    });
  }
}

const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
const load = () =>
  loadavg()
    .map((value) => value.toFixed(2))
    .join(' ');

async function main() {
  const before = process.env.SSE_FANOUT_BEFORE ? resolve(process.env.SSE_FANOUT_BEFORE) : undefined;
  const trees =
    before === undefined
      ? [['this tree', THIS_TREE]]
      : [
          ['before', before],
          ['after (this tree)', THIS_TREE],
        ];
  console.log(
    `sse-fanout: ${STREAMS} streams × ${COMMITS} commits through the ${COMMIT_THROUGH}, SQLite, ${ROUNDS} rounds per tree, alternating`,
  );
  console.log(`load average (1, 5, 15 min) at the start: ${load()}`);
  const results = new Map(trees.map(([name]) => [name, []]));
  for (let r = 0; r < ROUNDS; r++) {
    for (const [name, root] of trees) {
      const result = await round(root);
      results.get(name).push(result);
      console.log(
        `  round ${r + 1} ${name}: ${result.readsPerCommit.toFixed(2)} store reads per commit, ` +
          `${result.cpuUsPerEvent.toFixed(1)} µs server CPU per delivered event (load ${load()})`,
      );
    }
  }
  for (const [name, rows] of results) {
    console.log(
      `${name}: median ${median(rows.map((row) => row.readsPerCommit)).toFixed(2)} reads per commit, ` +
        `${median(rows.map((row) => row.cpuUsPerEvent)).toFixed(1)} µs CPU per delivered event ` +
        `(rounds: ${rows.map((row) => row.cpuUsPerEvent.toFixed(1)).join(' / ')})`,
    );
  }
  console.log(`load average (1, 5, 15 min) at the end: ${load()}`);
}

if (process.argv[2] === 'serve') await serve(process.argv[3]);
else await main();
