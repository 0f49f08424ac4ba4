import { connect, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { headerAuth, startServer, type TestServer } from '../testing/harness.js';

/**
 * The HTTP routes bound the application's hooks as an upgrade does (`upgradeTimeoutMs`): a hook that hangs
 * (an auth backend down) gets its request answered 504 `timeout`, not held (with its connection) for ever.
 */

let env: TestServer | undefined;
const sockets: Socket[] = [];

afterEach(async () => {
  for (const socket of sockets.splice(0)) socket.destroy();
  await env?.close();
  env = undefined;
});

const hung = new Promise<never>(() => {});

/** The status and body of `GET path`, or a rejection if none comes within 3 s (the request hung). */
async function get(path: string, user = 'alice'): Promise<{ status: number; body: unknown }> {
  if (env === undefined) throw new Error('no server');
  const response = await fetch(`${env.httpUrl}${path}`, {
    headers: { 'x-user': user },
    signal: AbortSignal.timeout(3000),
  });
  return { status: response.status, body: await response.json() };
}

describe('HTTP hook deadline', () => {
  it('answers 504 timeout when the authenticate hook hangs past upgradeTimeoutMs', async () => {
    env = await startServer({
      upgradeTimeoutMs: 100,
      authenticate: (request) => (request.headers['x-user'] === 'hang' ? hung : headerAuth(request)),
    });
    await env.server.tasks.create({ id: 't1', owner: 'alice', kind: 'k' });
    const answer = await get('/progress/tasks/t1', 'hang');
    expect(answer.status).toBe(504);
    expect(answer.body).toEqual({ error: { code: 'timeout', message: expect.any(String) } });
    // Other requests are served as usual.
    expect((await get('/progress/tasks/t1')).status).toBe(200);
  });

  it('answers 504 timeout when the authorize hook hangs (a task route and the list)', async () => {
    env = await startServer({
      upgradeTimeoutMs: 100,
      authorize: (principal, task) => (task.kind === 'slow' ? hung : task.owner === principal.id),
    });
    await env.server.tasks.create({ id: 't1', owner: 'alice', kind: 'slow' });
    await env.server.tasks.create({ id: 't2', owner: 'alice', kind: 'k' });
    for (const path of ['/progress/tasks/t1', '/progress/tasks/t1/events', '/progress/tasks']) {
      const answer = await get(path);
      expect(answer.status, path).toBe(504);
      expect(answer.body, path).toMatchObject({ error: { code: 'timeout' } });
    }
    expect((await get('/progress/tasks/t2')).status).toBe(200);
  });

  it('asks the authorize hook about no more listed tasks once the list was answered 504', async () => {
    // A slow hook (not a hung one): each call answers when released. The list asks 8 at a time.
    const waiting: Array<() => void> = [];
    env = await startServer({
      upgradeTimeoutMs: 100,
      authorize: (principal, task) =>
        new Promise<boolean>((resolve) => waiting.push(() => resolve(task.owner === principal.id))),
    });
    for (let i = 0; i < 40; i += 1) await env.server.tasks.create({ id: `t${i}`, owner: 'alice', kind: 'k' });
    const answer = await get('/progress/tasks?limit=50');
    expect(answer.status).toBe(504);
    expect(waiting).toHaveLength(8);
    // The 8 calls answer after the 504: their workers take no next task (before, they went on through
    // all 40, for an answer already sent).
    for (const release of waiting.splice(0)) release();
    for (let turn = 0; turn < 5; turn += 1) await new Promise((resolve) => setImmediate(resolve));
    expect(waiting).toHaveLength(0);
  });

  it('answers a cancel that took 200 without the task when the watch check after it hangs, not 504', async () => {
    env = await startServer({
      upgradeTimeoutMs: 100,
      // May cancel; whether it may watch (asked once the cancel took, for the answer's task) never answers.
      authorize: (principal, task, action) => (action === 'watch' ? hung : task.owner === principal.id),
    });
    await env.server.tasks.create({ id: 't1', owner: 'alice', kind: 'k' });
    const response = await fetch(`${env.httpUrl}/progress/tasks/t1/cancel`, {
      method: 'POST',
      headers: { 'x-user': 'alice', 'content-type': 'application/json' },
      body: '{}',
      signal: AbortSignal.timeout(3000),
    });
    expect({ status: response.status, body: await response.json() }).toEqual({
      status: 200,
      body: { taskId: 't1' },
    });
    expect((await env.store.getTask('t1'))?.status).toBe('cancelled');
  });

  it("counts a request's connection as pending while its authenticate hook runs", async () => {
    let entered: () => void = () => undefined;
    const hookEntered = new Promise<void>((resolve) => {
      entered = resolve;
    });
    env = await startServer({
      upgradeTimeoutMs: 60_000,
      maxPendingConnectionsPerAddress: 2,
      authenticate: () => {
        entered();
        return hung;
      },
    });
    const closed: boolean[] = [];
    const open = (index: number) =>
      new Promise<Socket>((resolve) => {
        const socket = connect(env?.port ?? 0, '127.0.0.1', () => {
          socket.write('GET /progress/tasks HTTP/1.1\r\nHost: x\r\nx-user: alice\r\n\r\n');
          resolve(socket);
        });
        socket.on('error', () => undefined);
        socket.on('close', () => {
          closed[index] = true;
        });
        sockets.push(socket);
      });
    const first = await open(0);
    const firstClosed = new Promise<void>((resolve) => first.once('close', () => resolve()));
    // Its request reached the hook (it is no longer a connection without a request) before the next come.
    await hookEntered;
    await open(1);
    await open(2);
    // Over the address's cap of 2: the oldest pending connection, the first request's, is dropped.
    await Promise.race([
      firstClosed,
      new Promise((_, reject) => setTimeout(() => reject(new Error('first connection kept open')), 3000)),
    ]);
    expect(closed[0]).toBe(true);
  });
});

describe("HTTP hook waits on the server's shutdown signal", () => {
  it('warns of no listener leak with many requests waiting on hooks at once', async () => {
    // Each request waiting on a hook listens for the server's shutdown (to answer 503 at once), and takes
    // its listener off when answered: eleven at once made Node warn of a leak (MaxListenersExceededWarning,
    // seen in the chaos run's replicas under SSE clients' polls and acks), which there was not.
    const warnings: Error[] = [];
    const onWarning = (warning: Error) => warnings.push(warning);
    process.on('warning', onWarning);
    try {
      env = await startServer({
        upgradeTimeoutMs: 300,
        authenticate: (request) => (request.headers['x-user'] === 'hang' ? hung : headerAuth(request)),
      });
      await env.server.tasks.create({ id: 't1', owner: 'alice', kind: 'k' });
      const answers = await Promise.all(Array.from({ length: 20 }, () => get('/progress/tasks/t1', 'hang')));
      expect(answers.map((answer) => answer.status)).toEqual(Array(20).fill(504));
      // Node emits its process warnings on the next tick.
      await new Promise((resolve) => setImmediate(resolve));
      expect(warnings.filter((warning) => warning.name === 'MaxListenersExceededWarning')).toEqual([]);
    } finally {
      process.off('warning', onWarning);
    }
  });
});
