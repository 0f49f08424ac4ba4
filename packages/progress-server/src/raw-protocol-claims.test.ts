import { afterEach, describe, expect, it } from 'vitest';
import { startServer, type TestServer } from './testing/harness.js';
import { userTokens } from './testing/raw-http.js';
import { type Frame, Raw } from './testing/raw-socket.js';

/**
 * Claims of docs/protocol.md that no other raw test checked, each checked with a client written from the
 * document alone (plain `ws`, `node:http`): the server side uses the harness only to start a server and
 * drive tasks. Each test names the section it relies on.
 */

let env: TestServer | undefined;
const clients: Raw[] = [];
afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close()));
  await env?.close();
  env = undefined;
});

async function start(overrides: Parameters<typeof startServer>[0] = {}): Promise<TestServer> {
  env = await startServer({
    authenticate: (req) => {
      const auth = req.headers.authorization;
      return auth?.startsWith('Bearer ') ? userTokens(auth.slice(7)) : null;
    },
    authenticateToken: userTokens,
    allowedOrigins: ['https://app.example.com'],
    heartbeatIntervalMs: 60_000,
    ...overrides,
  });
  return env;
}

/** A socket opened without credentials, its first frame not sent yet. */
async function unauthenticated(protocols?: string[]): Promise<Raw> {
  const client = new Raw(env!.wsUrl, protocols === undefined ? {} : { protocols });
  clients.push(client);
  await client.open;
  return client;
}

/** Opens a socket, authenticates with an `auth` first frame (doc: Authentication 2) and waits for `hello`. */
async function connect(token = 'alice', protocols?: string[]): Promise<Raw> {
  const client = await unauthenticated(protocols);
  const version = client.ws.protocol === 'finishline.v2' ? 2 : 1;
  client.send({ type: 'auth', token, protocol: version });
  await client.next((f) => f.type === 'hello');
  return client;
}

const snapshotOf = (taskId: string) => (f: Frame) => f.type === 'snapshot' && f.task.id === taskId;

describe('the server answers every subscribe (doc: delivery rule 1, Errors)', () => {
  it('a subscribe whose authorize hook does not answer within upgradeTimeoutMs is answered timeout; a repeat is answered too', async () => {
    let hang = true;
    const { server } = await start({
      upgradeTimeoutMs: 200,
      authorize: (principal, task) => (hang ? new Promise(() => {}) : task.owner === principal.id),
    });
    await server.tasks.create({ id: 't', owner: 'alice', kind: 'k' });
    const client = await connect();
    client.send({ type: 'subscribe', id: 's1', taskId: 't', afterSeq: 0 });
    expect(await client.next((f) => f.type === 'error')).toMatchObject({
      code: 'timeout',
      requestId: 's1',
      taskId: 't',
    });
    // The client asks again (rule 1): answered again, not joined to the check that never answered.
    client.send({ type: 'subscribe', id: 's2', taskId: 't', afterSeq: 0 });
    expect(await client.next((f) => f.type === 'error' && f.requestId === 's2')).toMatchObject({
      code: 'timeout',
      taskId: 't',
    });
    // Counted as the HTTP API's 504 of the same hook is (docs/operations.md).
    expect((await server.metrics.handlerErrors.get()).values[0]?.value).toBe(2);
    hang = false;
    client.send({ type: 'subscribe', id: 's3', taskId: 't', afterSeq: 0 });
    expect((await client.next(snapshotOf('t'))).task.seq).toBe(0);
  });

  it('a renewal whose re-check of a followed task does not answer in time ends that subscription with timeout', async () => {
    let hang = false;
    const { server } = await start({
      upgradeTimeoutMs: 200,
      authorize: (principal, task) => (hang ? new Promise(() => {}) : task.owner === principal.id),
    });
    const task = await server.tasks.create({ id: 't', owner: 'alice', kind: 'k' });
    const client = await connect();
    client.send({ type: 'subscribe', taskId: 't', afterSeq: 0 });
    await client.next(snapshotOf('t'));
    hang = true;
    const from = client.frames.length;
    client.send({ type: 'auth', token: 'alice', protocol: 2 });
    await client.next((f) => f.type === 'hello', from);
    await task.progress({ done: 1 });
    expect(await client.next((f) => f.type === 'error', from)).toMatchObject({
      code: 'timeout',
      taskId: 't',
    });
    hang = false;
    client.send({ type: 'subscribe', taskId: 't', afterSeq: 0 });
    expect((await client.next(snapshotOf('t'), from)).task.seq).toBe(1);
  });
});
