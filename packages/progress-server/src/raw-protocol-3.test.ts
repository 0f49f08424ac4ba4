import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { startServer, type TestServer } from './testing/harness.js';
import { userTokens } from './testing/raw-http.js';
import { type Frame, Raw } from './testing/raw-socket.js';

/**
 * Version 3 from docs/protocol.md alone (plain `ws` and JSON, as raw-protocol-2.test.ts): what it adds
 * (the ack's `epoch`), and that a version-1 or -2 socket still refuses it, as a server released before
 * version 3 does: a client that sent it there would lose its acks to `invalid_frame` and, repeated, a
 * 1008 close (docs: Versioning, Changes, `ack`).
 */

let env: TestServer | undefined;
const clients: Raw[] = [];
afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close()));
  await env?.close();
  env = undefined;
});

const V3 = ['finishline.v3', 'finishline.v2', 'finishline.v1'];

async function start(overrides: Parameters<typeof startServer>[0] = {}): Promise<TestServer> {
  env = await startServer({ authenticateToken: userTokens, heartbeatIntervalMs: 60_000, ...overrides });
  return env;
}

/** Opens a socket offering `protocols`, sends `auth` in the selected version and waits for `hello`. */
async function connect(protocols: string[]): Promise<{ client: Raw; hello: Frame }> {
  const client = new Raw(env!.wsUrl, { protocols });
  clients.push(client);
  await client.open;
  const version = Number(client.ws.protocol.slice('finishline.v'.length));
  client.send({ type: 'auth', token: 'alice', protocol: version });
  return { client, hello: await client.next((f) => f.type === 'hello') };
}

/** A task of alice's at seq 2, followed by `client`. */
async function followed(client: Raw): Promise<string> {
  const task = await env!.server.tasks.create({ owner: 'alice', kind: 'k' });
  await task.progress({ done: 1 });
  await task.progress({ done: 2 });
  client.send({ type: 'subscribe', taskId: task.id, afterSeq: 0 });
  await client.next((f) => f.type === 'snapshot' && f.task.id === task.id);
  return task.id;
}

const ackedSeq = async (taskId: string) => (await env!.server.tasks.get(taskId))?.ackedSeq;

describe('version 3 (doc: Versioning)', () => {
  it('a client offering finishline.v3 first gets it: hello.protocol 3, with the epoch', async () => {
    await start();
    const { client, hello } = await connect(V3);
    expect(client.ws.protocol).toBe('finishline.v3');
    expect(hello).toMatchObject({ type: 'hello', protocol: 3, epoch: await env!.store.getEpoch() });
    // A renewal names the version of the socket, and is answered in it.
    const from = client.frames.length;
    client.send({ type: 'auth', token: 'alice', protocol: 3 });
    expect(await client.next((f) => f.type === 'hello', from)).toMatchObject({ protocol: 3 });
  });

  it("an ack naming its seq's epoch is recorded, unanswered", async () => {
    await start();
    const { client, hello } = await connect(V3);
    const taskId = await followed(client);
    const from = await client.sync();
    client.send({ type: 'ack', taskId, seq: 2, epoch: hello.epoch });
    expect((await client.sync()) - from).toBe(1); // the pong only
    await expect.poll(() => ackedSeq(taskId)).toBe(2);
  });
});

describe('an ack with epoch on an older socket (doc: Versioning, ack)', () => {
  for (const [name, protocols] of [
    ['version 2', ['finishline.v2', 'finishline.v1']],
    ['version 1', ['finishline.v1']],
  ] as const) {
    it(`${name}: invalid_frame (epoch is not a field there), counted toward maxInvalidFrames, and not recorded`, async () => {
      await start({ maxInvalidFrames: 2 });
      const { client, hello } = await connect([...protocols]);
      expect(hello.protocol).toBe(name === 'version 2' ? 2 : 1);
      const epoch = await env!.store.getEpoch();
      const taskId = await followed(client);
      client.send({ type: 'ack', taskId, seq: 1, epoch });
      const refused = await client.next((f) => f.type === 'error');
      expect(refused).toMatchObject({ code: 'invalid_frame', taskId });
      expect(refused.message).toContain('epoch: is not a known field');
      expect(client.ws.readyState).toBe(WebSocket.OPEN);
      // The same ack without it is what such a socket takes.
      client.send({ type: 'ack', taskId, seq: 1 });
      await client.sync();
      await expect.poll(() => ackedSeq(taskId)).toBe(1);
      client.send({ type: 'ack', taskId, seq: 2, epoch });
      expect((await client.closed).code).toBe(1008);
      expect(await ackedSeq(taskId)).toBe(1);
    });
  }
});
