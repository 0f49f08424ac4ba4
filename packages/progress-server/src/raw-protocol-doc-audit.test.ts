import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { decodeClientFrame, decodeServerFrame } from '@finishline/core/internal';
import { afterEach, describe, expect, it } from 'vitest';
import { startServer, type TestServer } from './testing/harness.js';
import { bearer, jsonHeaders, RAW_SOCKET_SERVER_OPTIONS, rawHttp } from './testing/raw-http.js';
import { type Frame, Raw } from './testing/raw-socket.js';

/**
 * An audit of docs/protocol.md's promise that it alone is enough to write a client: its examples
 * checked as written (every JSON frame decoded by the rules it states, its `curl` commands run against
 * a server, its example session replayed), and statements no other raw test checked. The client side is
 * plain `ws`, `node:http` and `curl`; the decoders of `@finishline/core/internal` are used only to
 * check that the document's own frames are valid by its rules (the document names them as the rules).
 */

let env: TestServer | undefined;
const clients: Raw[] = [];
afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close()));
  await env?.close();
  env = undefined;
});

async function start(overrides: Parameters<typeof startServer>[0] = {}): Promise<TestServer> {
  env = await startServer({ ...RAW_SOCKET_SERVER_OPTIONS, ...overrides });
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

const http = (method: string, path: string, opts?: Parameters<typeof rawHttp>[3]) =>
  rawHttp(env!.httpUrl, method, path, opts);
const errorOf = (code: string) => (f: Frame) => f.type === 'error' && f.code === code;
const eventAt = (taskId: string, seq: number) => (f: Frame) =>
  f.type === 'event' && f.event.taskId === taskId && f.event.seq === seq;

const doc = readFileSync(new URL('../../../docs/protocol.md', import.meta.url), 'utf8');
/** The fenced blocks of the document in `lang`, in order. */
const blocks = (lang: string): string[] =>
  [...doc.matchAll(new RegExp(`\`\`\`${lang}\\n([\\s\\S]*?)\\n\\s*\`\`\``, 'g'))].map((m) => m[1] as string);
const sessionAt = doc.indexOf('## Example session');
/** The example session's frames, in order: `[direction, frame]`. */
const sessionFrames = (): Array<['→' | '←', Frame]> =>
  doc
    .slice(sessionAt)
    .split('\n')
    .filter((line) => line.startsWith('→ ') || line.startsWith('← '))
    .map((line) => [line.slice(0, 1) as '→' | '←', JSON.parse(line.slice(2)) as Frame]);

describe("the document's examples are valid by its own rules (doc: Example session, Authentication, HTTP API)", () => {
  it('every frame of the example session, and the auth frame of Authentication, decodes', () => {
    const frames = sessionFrames();
    expect(frames.length).toBeGreaterThan(15);
    for (const [direction, frame] of frames) {
      const text = JSON.stringify(frame);
      if (direction === '→') {
        const decoded = decodeClientFrame(text);
        // The session's one invalid request is there to show its refusal.
        if (frame.afterSeq === -1) expect(decoded.ok).toBe(false);
        else expect([text, decoded.ok]).toEqual([text, true]);
      } else expect([text, decodeServerFrame(text).ok]).toEqual([text, true]);
    }
    const auth = blocks('json').find((b) => b.includes('"type":"auth"')) as string;
    expect(decodeClientFrame(auth.trim()).ok).toBe(true);
  });

  it('the example session replays against a server: the frames shown, with the shown fields', async () => {
    const { server } = await start({ serverId: 'replica-a', heartbeatIntervalMs: 15_000 });
    const task = await server.tasks.create({ id: 'taint-42', owner: 'alice', kind: 'batch_taint', total: 2 });
    await task.item({ key: 'node-1', ok: true });
    await task.progress({ current: 'node-2' });
    const shown = sessionFrames();
    const client = await connect('alice', ['finishline.v1']);
    const ignoreTimes = (f: Frame): Frame => JSON.parse(JSON.stringify(f), (k, v) =>
      ['time', 'createdAt', 'updatedAt', 'finishedAt'].includes(k) && typeof v === 'number' ? 0 : v,
    );
    expect(ignoreTimes(client.frames[0] as Frame)).toEqual(ignoreTimes(shown[0]![1]));
    client.send(shown[1]![1]);
    const snapshot = await client.next((f) => f.type === 'snapshot');
    expect(ignoreTimes(snapshot)).toEqual(ignoreTimes(shown[2]![1]));
    // seq 3 and 4 as the session shows them; the client subscribed from 0 and got them live.
    await task.item({ key: 'node-2', ok: false, error: 'node is cordoned', current: null });
    const event3 = await client.next(eventAt('taint-42', 3));
    expect(ignoreTimes(event3)).toEqual(ignoreTimes(shown.find(([, f]) => f.event?.seq === 3)![1]));
    client.send({ type: 'ack', taskId: 'taint-42', seq: 3 });
    await task.complete({ message: '1 of 2 nodes tainted', result: { tainted: ['node-1'] } });
    const event4 = await client.next(eventAt('taint-42', 4));
    expect(ignoreTimes(event4)).toEqual(ignoreTimes(shown.find(([, f]) => f.event?.seq === 4)![1]));
    // Not acknowledged: re-sent, the same frame; its ack ends the re-sending.
    const from = client.frames.indexOf(event4) + 1;
    expect(await client.next(eventAt('taint-42', 4), from)).toEqual(event4);
    client.send({ type: 'ack', taskId: 'taint-42', seq: 4 });
    client.send({ type: 'unsubscribe', taskId: 'taint-42' });
    const quiet = await client.sync();
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(client.frames.slice(quiet).filter((f) => f.type !== 'heartbeat')).toEqual([]);
  });
});

/** Runs a `sh` command of the document as written, the example host replaced by the test server's. */
function sh(command: string): Promise<{ code: number; stdout: string }> {
  const script = command.replaceAll('https://app.example.com', env!.httpUrl);
  return new Promise((resolve) => {
    execFile('sh', ['-c', script], { env: { ...process.env, TOKEN: 'alice' }, timeout: 10_000 }, (error, stdout) =>
      resolve({ code: error === null ? 0 : ((error as { code?: number }).code ?? -1), stdout }),
    );
  });
}

describe("the document's curl commands work as written (doc: HTTP API, Server-Sent Events)", () => {
  /** The commands of the `sh` blocks, comments dropped, continuation lines joined. */
  const commands = blocks('sh').flatMap((block) =>
    block
      .replaceAll('\\\n', ' ')
      .split('\n')
      .filter((line) => line.startsWith('curl ')),
  );

  it('the HTTP examples: the running tasks, the snapshot, the events after seq 2, the cancel', async () => {
    const { server, store } = await start();
    const task = await server.tasks.create({ id: 'taint-42', owner: 'alice', kind: 'batch_taint', total: 2 });
    await task.item({ key: 'node-1', ok: true });
    await task.progress({ current: 'node-2' });
    await task.item({ key: 'node-2', ok: true });
    const epoch = await store.getEpoch();
    const [list, one, events, cancel] = commands.filter((c) => !c.startsWith('curl -N'));
    expect(commands).toHaveLength(5);
    const listed = await sh(list as string);
    expect([listed.code, JSON.parse(listed.stdout).tasks.map((t: Frame) => t.id)]).toEqual([0, ['taint-42']]);
    const snapshot = await sh(one as string);
    expect(JSON.parse(snapshot.stdout)).toMatchObject({ task: { id: 'taint-42', seq: 3 }, epoch });
    const page = JSON.parse((await sh(events as string)).stdout);
    expect([page.events.map((e: Frame) => e.seq), page.hasMore, page.epoch]).toEqual([[3], false, epoch]);
    const cancelled = JSON.parse((await sh(cancel as string)).stdout);
    expect(cancelled).toMatchObject({ taskId: 'taint-42', task: { status: 'cancelled', seq: 4 } });
    expect((await store.readEvents('taint-42', 3, 10))[0]).toMatchObject({ type: 'cancelled', reason: 'wrong cluster' });
  });

  it('the stream example, and its resume with the Last-Event-ID its comment shows', async () => {
    const { server, store } = await start();
    const task = await server.tasks.create({ id: 'taint-42', owner: 'alice', kind: 'batch_taint', total: 2 });
    await task.item({ key: 'node-1', ok: true });
    await task.progress({ current: 'node-2' });
    const stream = commands.find((c) => c.startsWith('curl -N')) as string;
    const watched = sh(stream);
    await new Promise((resolve) => setTimeout(resolve, 300));
    await task.item({ key: 'node-2', ok: false, error: 'node is cordoned' });
    await task.complete({ result: { tainted: ['node-1'] } });
    const { code, stdout } = await watched;
    const epoch = (await store.getEpoch()) as string;
    const ids = stdout.split('\n').filter((l) => l.startsWith('id: '));
    expect([code, ids]).toEqual([0, [`id: 2~${epoch}`, `id: 3~${epoch}`, `id: 4~${epoch}!`]]);
    // "resume after a cut with -H 'Last-Event-ID: <last id seen>' (e.g. 3~5f0c…)"
    const resumed = await sh(stream.replace('curl -N', `curl -N -H 'Last-Event-ID: 3~${epoch}'`));
    expect(resumed.stdout.split('\n').filter((l) => l.startsWith('id: '))).toEqual([`id: 4~${epoch}!`]);
  });
});
