import { createServer, request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { ErrorCode, MemoryProgressStore, ProgressError } from '@finishline/core';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { PROGRESS_SERVER_DEFAULTS } from '../options.js';
import { ProgressServer } from '../progress-server.js';
import type { TaskHandle } from '../tasks/task-handle.js';
import { headerAuth, restorableStore, sleep, startServer, type TestServer } from '../testing/harness.js';
import { sseRetryMs } from './sse-stream.js';

/** Issue 14, what-to-build 3: `GET {basePath}/tasks/:id/stream` (Server-Sent Events) and `POST …/ack`. */

let env: TestServer | undefined;
const open: IncomingMessage[] = [];

afterEach(async () => {
  for (const response of open.splice(0)) response.destroy();
  await env?.close();
  env = undefined;
});

interface SseMessage {
  id?: string;
  data?: string;
  comment?: string;
}

/** An event stream read the way `curl -N` shows it: raw text, split into SSE messages as it arrives. */
class Stream {
  readonly messages: SseMessage[] = [];
  readonly ended: Promise<void>;
  #buffer = '';
  /**
   * The data messages parsed once as they arrive: `until` runs its predicate on every chunk, and parsing
   * every message again each time made a reader of 10,000 4 KB frames quadratic: slower than the test's
   * wait (it read 8,413 of 14,400 in 10 s).
   */
  readonly #frames: Array<{ id: string; frame: Record<string, unknown> }> = [];
  #waiters: Array<() => void> = [];

  constructor(readonly response: IncomingMessage) {
    open.push(response);
    response.setEncoding('utf8');
    response.on('data', (chunk: string) => {
      this.#buffer += chunk;
      let cut = this.#buffer.indexOf('\n\n');
      while (cut >= 0) {
        const block = this.#buffer.slice(0, cut);
        this.#buffer = this.#buffer.slice(cut + 2);
        const message: SseMessage = {};
        for (const line of block.split('\n')) {
          if (line.startsWith(':')) message.comment = line.slice(1).trim();
          else if (line.startsWith('id: ')) message.id = line.slice(4);
          else if (line.startsWith('data: ')) message.data = line.slice(6);
        }
        this.messages.push(message);
        if (message.data !== undefined)
          this.#frames.push({ id: message.id ?? '', frame: JSON.parse(message.data) });
        cut = this.#buffer.indexOf('\n\n');
      }
      for (const wake of this.#waiters.splice(0)) wake();
    });
    this.ended = new Promise((resolve) => response.on('end', () => resolve()));
  }

  frames(): Array<{ id: string; frame: Record<string, unknown> }> {
    return [...this.#frames];
  }

  /** The last data message, for a predicate run on every chunk of a long stream (frames() is O(n)). */
  lastFrame(): { id: string; frame: Record<string, unknown> } | undefined {
    return this.#frames.at(-1);
  }

  async until(predicate: () => boolean, timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!predicate()) {
      if (Date.now() > deadline) throw new Error(`timed out; got ${JSON.stringify(this.messages)}`);
      await new Promise<void>((resolve) => {
        this.#waiters.push(resolve);
        setTimeout(resolve, 50);
      });
    }
  }
}

function get(path: string, headers: Record<string, string> = {}): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(`${env?.httpUrl}/progress${path}`, { headers }, resolve);
    req.on('error', reject);
    req.end();
  });
}

/** `promise`, or a rejection naming `what` after `ms`: a hang fails with its cause, not the test's timeout. */
async function within<T>(promise: Promise<T>, what: string, ms = 5000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** The server's `sse_streams_closed_total`, by reason. */
async function streamsClosed(server: TestServer): Promise<Record<string, number>> {
  const { values } = await server.server.metrics.sseStreamsClosed.get();
  return Object.fromEntries(values.map((value) => [String(value.labels.reason), value.value]));
}

/** The server's `resumes_total`, and its `resyncs_total` by reason. */
async function resumesAndResyncs(server: TestServer) {
  const resumes = (await server.server.metrics.resumes.get()).values[0]?.value ?? 0;
  const { values } = await server.server.metrics.resyncs.get();
  return {
    resumes,
    resyncs: Object.fromEntries(values.map((value) => [String(value.labels.reason), value.value])),
  };
}

const seqOf = ({ frame }: { frame: Record<string, unknown> }) =>
  frame.type === 'event' ? (frame.event as { seq: number }).seq : (frame.task as { seq: number }).seq;

/** The server's side of the first stream opened on `server`, to watch its buffer. */
function serverSideOfStream(server: TestServer): () => ServerResponse {
  let held: ServerResponse | undefined;
  server.server.httpServer?.on('request', (request: IncomingMessage, response: ServerResponse) => {
    if (request.url?.endsWith('/stream') === true) held ??= response;
  });
  return () => held as ServerResponse;
}

/** About 4 KiB per event: loopback's kernel buffers fill after some thousands. */
const BIG_MESSAGE = 'x'.repeat(4000);

/**
 * Commits ~4 KiB progress events after seq `after` until the stream of a client that stopped reading has
 * its writes refused for good (both kernels' buffers full), or is dropped; returns the last seq committed.
 * In batches: until the receiving kernel's buffer is full, a refused write is taken a moment later.
 */
async function fillUntilStalled(task: TaskHandle, server: () => ServerResponse, after = 0): Promise<number> {
  let done = after;
  while (done < after + 20_000) {
    for (const end = done + 200; done < end; ) {
      done += 1;
      await task.progress({ done, message: BIG_MESSAGE });
    }
    await sleep(20);
    if (server().writableNeedDrain || server().destroyed) return done;
  }
  throw new Error('the stream never stalled: 80 MB went through a paused reader');
}

type Restorable = ReturnType<typeof restorableStore>;

/**
 * `memory` as the server's store, counting its task and event reads; `afterGetTask` runs after each task
 * read, before its answer is handed back (a commit landing just after the read, say).
 */
function countingReads(memory: MemoryProgressStore, afterGetTask?: (taskId: string) => Promise<unknown>) {
  const calls = { readEvents: 0, getTask: 0 };
  const store = new Proxy(memory, {
    get(target, property) {
      if (property === 'readEvents' || property === 'getTask') {
        const read = Reflect.get(target, property).bind(target) as (...args: unknown[]) => Promise<unknown>;
        return async (...args: unknown[]) => {
          calls[property] += 1;
          const answer = await read(...args);
          if (property === 'getTask') await afterGetTask?.(args[0] as string);
          return answer;
        };
      }
      // Bound: the store's own methods (getEpoch among them) read its private fields.
      const value = Reflect.get(target, property);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
  return { store, calls };
}

/**
 * Task `t` at seq 1 in both the live store and its backup copy, then at seq 4 in the live one only
 * (appended through `store`), and alice's stream of it, read up to seq 4.
 */
async function streamAheadOfTheCopy(restorable: Restorable, store: Restorable['store']): Promise<Stream> {
  await restorable.both((copy) => copy.createTask({ id: 't', owner: 'alice', kind: 'k' }));
  await restorable.both((copy) => copy.append('t', { type: 'progress', message: 'one' }));
  for (let i = 2; i <= 4; i++) await store.append('t', { type: 'progress', message: `live ${i}` });
  const stream = new Stream(await get('/tasks/t/stream', { 'x-user': 'alice' }));
  await stream.until(() => stream.frames().some((entry) => seqOf(entry) === 4));
  return stream;
}

/** Completes `t` in `store`, waits for the stream to end, and returns its frames from the reset snapshot on. */
async function framesFromResetToEnd(stream: Stream, store: Restorable['store']) {
  await store.append('t', { type: 'completed', result: null });
  await stream.ended;
  return stream.frames().slice(stream.frames().findIndex((entry) => entry.frame.reset === true));
}

describe('GET /tasks/:id/stream', () => {
  it('streams a job live: snapshot, events with id = seq~epoch, heartbeat comments, the terminal event, then the end', async () => {
    env = await startServer({ heartbeatIntervalMs: 100 });
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k', total: 2 });
    const response = await get(`/tasks/${task.id}/stream`, { 'x-user': 'alice' });
    expect(response.statusCode).toBe(200);
    expect(response.headers['content-type']).toBe('text/event-stream; charset=utf-8');
    const stream = new Stream(response);
    await stream.until(() => stream.frames().length === 1);
    await task.item({ key: 'a', ok: true });
    await task.item({ key: 'b', ok: true });
    await stream.until(() => stream.messages.some((message) => message.comment?.startsWith('heartbeat')));
    await task.complete({ result: { done: true } });
    await stream.ended;
    const frames = stream.frames();
    const epoch = await env.store.getEpoch();
    expect(frames.map((entry) => [entry.id, entry.frame.type])).toEqual([
      [`0~${epoch}`, 'snapshot'],
      [`1~${epoch}`, 'event'],
      [`2~${epoch}`, 'event'],
      [`3~${epoch}!`, 'event'],
    ]);
    expect(frames.map(seqOf)).toEqual([0, 1, 2, 3]);
    expect(frames[3]?.frame).toMatchObject({ event: { type: 'completed', result: { done: true } } });
    expect(frames[0]?.frame).toMatchObject({ epoch });
    // The stream opens saying how often heartbeats come, as a socket's hello does: a client takes a
    // stream silent for about twice that for dead.
    expect(stream.messages[0]?.comment).toBe('hello heartbeatIntervalMs=100');
    // Counted with a socket's frames: an operator's frame rates include the streams.
    const sent = async (counter: 'eventsSent' | 'snapshotsSent') =>
      (await env!.server.metrics[counter].get()).values[0]?.value ?? 0;
    expect({ events: await sent('eventsSent'), snapshots: await sent('snapshotsSent') }).toEqual({
      events: 3,
      snapshots: 1,
    });
  });

  it('jitters retry per stream, so the readers of a replica that shut down do not all reconnect at once', async () => {
    env = await startServer();
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    const retries: number[] = [];
    // Ten streams, one after the other: each draws its own retry from 1000–2999 ms. All ten equal by
    // chance is a 1 in 2000^9 event; one fixed value (the herd) fails every time.
    for (let i = 0; i < 10; i++) {
      const response = await get(`/tasks/${task.id}/stream`, { 'x-user': 'alice' });
      open.push(response);
      response.setEncoding('utf8');
      const first = await within(
        new Promise<string>((resolve) => response.once('data', (chunk: string) => resolve(chunk))),
        'the stream’s first block',
      );
      response.destroy();
      retries.push(Number(/^retry: (\d+)\n/.exec(first)?.[1]));
    }
    for (const retry of retries) {
      expect(retry).toBeGreaterThanOrEqual(1000);
      expect(retry).toBeLessThan(3000);
    }
    expect(new Set(retries).size).toBeGreaterThan(1);
  });

  it('spreads retry over open streams / reconnectsPerSecond when that is longer than 2 s', () => {
    const random = vi.spyOn(Math, 'random').mockReturnValue(0.999_999);
    try {
      // 100,000 streams at 20,000 reconnects/s: 5 s.
      expect(sseRetryMs(100_000, 20_000)).toBe(1000 + 4999);
      expect(sseRetryMs(10, 20_000)).toBe(1000 + 1999);
      // Capped at 30 s, as the socket's hint; 0 asks for no pace.
      expect(sseRetryMs(10_000_000, 20_000)).toBe(1000 + 29_999);
      expect(sseRetryMs(100_000, 0)).toBe(1000 + 1999);
      random.mockReturnValue(0);
      expect(sseRetryMs(100_000, 20_000)).toBe(1000);
    } finally {
      random.mockRestore();
    }
  });

  it('tells proxies and compression middleware to pass the stream through unbuffered and untransformed', async () => {
    env = await startServer();
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    const response = await get(`/tasks/${task.id}/stream`, { 'x-user': 'alice', 'accept-encoding': 'gzip' });
    open.push(response);
    // Express's `compression` (and CDNs) compress text/event-stream, buffering it, unless the response
    // says `no-transform`; nginx buffers unless told `X-Accel-Buffering: no`.
    expect(response.headers['cache-control']?.split(/,\s*/)).toEqual(['no-store', 'no-transform']);
    expect(response.headers['x-accel-buffering']).toBe('no');
  });

  it('answers 204 to a reconnect from the terminal frame’s id, so EventSource stops instead of reconnecting every second', async () => {
    // EventSource reconnects whenever a stream ends, `retry` (1 s) later, with the last id it saw: a
    // 200 answering it with the terminal snapshot again ended again, and the page asked once a second
    // for as long as it stayed open. A 204 is what makes EventSource stop.
    env = await startServer();
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.item({ key: 'a', ok: true });
    const stream = new Stream(await get(`/tasks/${task.id}/stream`, { 'x-user': 'alice' }));
    await stream.until(() => stream.frames().length === 1);
    await task.complete({ result: null });
    await stream.ended;
    const last = stream.frames().at(-1)?.id as string;
    // The terminal frame's id carries the end mark.
    expect(last).toMatch(/^2~.+!$/);
    const again = await get(`/tasks/${task.id}/stream`, { 'x-user': 'alice', 'last-event-id': last });
    open.push(again);
    expect(again.statusCode).toBe(204);
    // A cursor below the end, or of another epoch, still gets what it misses; so does one at the end
    // without the mark (maybe of a purged run of the id: run-cursor.test.ts): the end again, once.
    for (const id of ['1', '2~0ther-epoch', '2', last.slice(0, -1)]) {
      const behind = new Stream(
        await get(`/tasks/${task.id}/stream`, { 'x-user': 'alice', 'last-event-id': id }),
      );
      expect(behind.response.statusCode).toBe(200);
      await behind.ended;
      expect(behind.frames().at(-1)?.id).toBe(last);
    }
  });

  it('a stream cut mid-task resumes from Last-Event-ID with nothing lost or repeated', async () => {
    env = await startServer();
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.progress({ done: 1 });
    const first = new Stream(await get(`/tasks/${task.id}/stream`, { 'x-user': 'alice' }));
    await task.progress({ done: 2 });
    await first.until(() => first.frames().some((entry) => seqOf(entry) === 2));
    first.response.destroy(); // the cut
    await task.progress({ done: 3 });
    await task.progress({ done: 4 });
    const lastId = first.frames().at(-1)?.id as string;
    expect(lastId).toBe(`2~${await env.store.getEpoch()}`);
    const second = new Stream(
      await get(`/tasks/${task.id}/stream`, { 'x-user': 'alice', 'last-event-id': lastId }),
    );
    // A seq alone (a client written before ids carried the epoch, a hand-written header) is a seq of the
    // current epoch, as before.
    const bare = new Stream(
      await get(`/tasks/${task.id}/stream`, { 'x-user': 'alice', 'last-event-id': '2' }),
    );
    await task.complete();
    await second.ended;
    await bare.ended;
    for (const stream of [second, bare]) {
      expect(stream.frames().map((entry) => [entry.frame.type, seqOf(entry)])).toEqual([
        ['event', 3],
        ['event', 4],
        ['event', 5],
      ]);
    }
  });

  it('a Last-Event-ID of the epoch before a restore gets a reset snapshot, even with a seq below the task’s, then every later event once', async () => {
    const restorable = restorableStore();
    const store = restorable.store;
    env = await startServer({ store, heartbeatIntervalMs: 50 });
    // The backup copy is taken at seq 1; the live store goes on to seq 5, and the stream with it.
    await restorable.both((copy) => copy.createTask({ id: 't', owner: 'alice', kind: 'k' }));
    await restorable.both((copy) => copy.append('t', { type: 'progress', message: 'one' }));
    for (let i = 2; i <= 5; i++) await store.append('t', { type: 'progress', message: `live ${i}` });
    const first = new Stream(await get('/tasks/t/stream', { 'x-user': 'alice' }));
    await first.until(() => first.frames().some((entry) => seqOf(entry) === 5));
    // Open across the restore: its reset tells when the server has read the new epoch.
    const probe = new Stream(await get('/tasks/t/stream', { 'x-user': 'alice' }));
    first.response.destroy(); // the cut, before the restore
    const lastId = first.frames().at(-1)?.id as string;

    // Restored from the copy, which goes on to seq 8 with other events than the lost log had.
    restorable.restore();
    for (let i = 2; i <= 8; i++) await store.append('t', { type: 'progress', message: `restored ${i}` });
    const epoch = await store.renewEpoch();
    await probe.until(() => probe.frames().some((entry) => entry.frame.reset === true));

    // What EventSource sends when it reconnects: the last id it saw, of the old epoch, seq 5 < 8.
    const second = new Stream(await get('/tasks/t/stream', { 'x-user': 'alice', 'last-event-id': lastId }));
    await second.until(() => second.frames().length > 0);
    await store.append('t', { type: 'progress', message: 'restored 9' });
    await store.append('t', { type: 'completed', result: null });
    await within(second.ended, 'the end of the stream');
    const frames = second.frames();
    expect(frames.map((entry) => [entry.id, entry.frame.type])).toEqual([
      [`8~${epoch}`, 'snapshot'],
      [`9~${epoch}`, 'event'],
      [`10~${epoch}!`, 'event'],
    ]);
    expect(frames[0]?.frame).toMatchObject({ epoch, reset: true, task: { seq: 8 } });
    expect(frames[1]?.frame).toMatchObject({ event: { progress: { message: 'restored 9' } } });
  });

  it('answers a resume whose store was restored between its load and its first read with a reset snapshot', async () => {
    const restorable = restorableStore();
    // Once armed, the stream's first catch-up read waits at the gate while the copy is restored.
    let gate: Promise<void> | undefined;
    let gated = 0;
    const store = new Proxy(restorable.store, {
      get(target, property) {
        if (property === 'readEvents')
          return async (...args: Parameters<Restorable['store']['readEvents']>) => {
            if (gate !== undefined) {
              gated += 1;
              await gate;
            }
            return target.readEvents(...args);
          };
        return Reflect.get(target, property);
      },
    });
    // The epoch is read at start only: the restored copy's is not noticed during the test.
    env = await startServer({ store, heartbeatIntervalMs: 60_000 });
    await restorable.both((copy) => copy.createTask({ id: 't', owner: 'alice', kind: 'k' }));
    await restorable.both((copy) => copy.append('t', { type: 'progress', message: 'one' }));
    for (let i = 2; i <= 4; i++) await store.append('t', { type: 'progress', message: `live ${i}` });
    let open: () => void = () => {};
    gate = new Promise((resolve) => {
      open = resolve;
    });
    const stream = new Stream(await get('/tasks/t/stream', { 'x-user': 'alice', 'last-event-id': '3' }));
    await stream.until(() => gated > 0);
    restorable.restore();
    gate = undefined;
    open();
    // Before: the read found nothing after 3, the stream took itself for caught up and stayed silent on
    // heartbeats, its client holding seq 3 of a log the store no longer has.
    await stream.until(() => stream.frames().length > 0, 2000);
    expect(stream.frames()[0]?.frame).toMatchObject({ type: 'snapshot', reset: true, task: { seq: 1 } });
  });

  it.each([
    ['x', 'not a seq'],
    ['-1', 'a negative seq'],
    ['5~', 'an empty epoch'],
    ['5~not an id', 'an epoch that is not an id'],
    ['~5', 'no seq'],
  ])('refuses Last-Event-ID %j (%s) with 400 invalid_input, before the stream starts', async (id) => {
    env = await startServer();
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    const response = await fetch(`${env.httpUrl}/progress/tasks/${task.id}/stream`, {
      headers: { 'x-user': 'alice', 'last-event-id': id },
    });
    expect(response.status).toBe(400);
    expect(((await response.json()) as { error: { code: string } }).error.code).toBe('invalid_input');
  });

  it('a Last-Event-ID ahead of the task gets a reset snapshot (found #1 over SSE)', async () => {
    env = await startServer();
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.complete();
    const stream = new Stream(
      await get(`/tasks/${task.id}/stream`, { 'x-user': 'alice', 'last-event-id': '9' }),
    );
    await stream.ended;
    expect(stream.frames()).toEqual([
      expect.objectContaining({
        id: `1~${await env.store.getEpoch()}!`,
        frame: expect.objectContaining({ type: 'snapshot', reset: true }),
      }),
    ]);
  });

  it('starts over with a reset snapshot of the new epoch when the store is restored and renewed under it', async () => {
    const restorable = restorableStore();
    const store = restorable.store;
    env = await startServer({ store, heartbeatIntervalMs: 50 });
    // The backup copy is taken at seq 1; the live store goes on to seq 4.
    const stream = await streamAheadOfTheCopy(restorable, store);
    restorable.restore();
    const epoch = await store.renewEpoch();
    await stream.until(() => stream.frames().some((entry) => entry.frame.reset === true));
    // The task ends in the restored store at seq 3, below the stream's 4.
    await store.append('t', { type: 'progress', message: 'restored 2' });
    const after = await framesFromResetToEnd(stream, store);
    expect(after.map((entry) => [entry.id, entry.frame.type])).toEqual([
      [`1~${epoch}`, 'snapshot'],
      [`2~${epoch}`, 'event'],
      [`3~${epoch}!`, 'event'],
    ]);
    expect(after[0]?.frame).toMatchObject({ epoch, reset: true });
  });

  it('authorizes the task again when it starts over in a new epoch: a restored copy’s task of that id may be another owner’s', async () => {
    const restorable = restorableStore();
    const store = restorable.store;
    env = await startServer({ store, heartbeatIntervalMs: 50 });
    // The backup holds a task `shared` of bob's; the live store, after the backup was taken, one of alice's.
    let copies = 0;
    await restorable.both(async (copy) => {
      if (copies++ === 1)
        await copy.createTask({ id: 'shared', owner: 'bob', kind: 'k', message: 'bob secret' });
    });
    await store.createTask({ id: 'shared', owner: 'alice', kind: 'k' });
    const stream = new Stream(await get('/tasks/shared/stream', { 'x-user': 'alice' }));
    await stream.until(() => stream.frames().length === 1);
    restorable.restore();
    await store.renewEpoch();
    // Either the restart's answer (a reset snapshot) or the end of the stream.
    await within(
      Promise.race([
        stream.ended,
        stream.until(() => stream.frames().some((entry) => entry.frame.reset === true)),
      ]),
      'the restart in the new epoch',
    );
    // Alice may not watch bob's task: nothing of it reaches her, and the stream ends as for a task gone
    // (she reconnects and gets the 404 any request for it gets), as a socket's subscription restarted by
    // the same epoch change is authorized again and refused.
    expect(JSON.stringify(stream.messages)).not.toContain('bob secret');
    await within(stream.ended, 'the end of the stream');
    expect(await streamsClosed(env)).toEqual({ task_gone: 1 });
  });

  it('ends the stream when its authorize hook, asked again in a new epoch, does not answer within upgradeTimeoutMs', async () => {
    const store = new MemoryProgressStore();
    let hang = false;
    const warnings: string[] = [];
    const noop = () => {};
    env = await startServer({
      store,
      heartbeatIntervalMs: 50,
      upgradeTimeoutMs: 300,
      logger: {
        debug: noop,
        info: noop,
        error: noop,
        warn: (_fields, message) => warnings.push(String(message)),
      },
      authorize: (principal, task) =>
        hang ? new Promise<boolean>(() => {}) : Promise.resolve(task.owner === principal.id),
    });
    await store.createTask({ id: 'held', owner: 'alice', kind: 'k' });
    const stream = new Stream(await get('/tasks/held/stream', { 'x-user': 'alice' }));
    await stream.until(() => stream.frames().length === 1);
    hang = true;
    await store.renewEpoch();
    // Before, the stream waited on the hook for as long as it hung (up to sseStreamLifetimeMs, for ever
    // with 0), sending heartbeats and nothing else, and held its slot.
    await within(stream.ended, 'the end of the stream', 3000);
    expect(stream.frames()).toHaveLength(1);
    expect(await streamsClosed(env)).toEqual({ hook_timeout: 1 });
    expect(warnings).toContain(
      'authorize hook did not answer within upgradeTimeoutMs; ending the event stream',
    );
  });

  it('drops a read of the old epoch still in flight when it starts over in the new one', async () => {
    const restorable = restorableStore();
    // The streams' own reads (limit 500, its maxReplayEvents; the hub reads 1000) read the store at once
    // but answer only when `hold` opens: a read of the old epoch answering after the reset.
    let hold: Promise<void> | undefined;
    let held = 0;
    const store = new Proxy(restorable.store, {
      get(target, property) {
        if (property === 'readEvents')
          return async (id: string, afterSeq: number, limit: number) => {
            const events = await target.readEvents(id, afterSeq, limit);
            if (hold !== undefined && limit === 500) {
              held += 1;
              await hold;
            }
            return events;
          };
        return Reflect.get(target, property);
      },
    });
    env = await startServer({ store, heartbeatIntervalMs: 50, maxReplayEvents: 500 });
    // A stream at seq 4 keeps the hub following the task; live events reach it without a read.
    await streamAheadOfTheCopy(restorable, store);
    let open: () => void = () => {};
    hold = new Promise((resolve) => {
      open = resolve;
    });
    // Resumed from seq 1: the hub holds none of seqs 2–4 (it learned seq 4 from a load), so this stream
    // reads them from the store, seqs of the old epoch, and the answer waits.
    const oldEpoch = await store.getEpoch();
    const stream = new Stream(
      await get('/tasks/t/stream', { 'x-user': 'alice', 'last-event-id': `1~${oldEpoch}` }),
    );
    await stream.until(() => held > 0);
    restorable.restore();
    for (let i = 2; i <= 4; i++) await store.append('t', { type: 'progress', message: `restored ${i}` });
    const epoch = await store.renewEpoch();
    await stream.until(() => stream.frames().some((entry) => entry.frame.reset === true));
    hold = undefined;
    open();
    await store.append('t', { type: 'progress', message: 'restored 5' });
    await store.append('t', { type: 'completed', result: null });
    await within(stream.ended, 'the end of the stream');
    // Nothing of the old read: the reset is the stream's first frame.
    expect(stream.frames().map((entry) => [entry.id, entry.frame.type])).toEqual([
      [`4~${epoch}`, 'snapshot'],
      [`5~${epoch}`, 'event'],
      [`6~${epoch}!`, 'event'],
    ]);
    expect(stream.frames()[0]?.frame).toMatchObject({ epoch, reset: true });
    expect(stream.frames()[1]?.frame).toMatchObject({ event: { progress: { message: 'restored 5' } } });
  });

  it('ends a stream whose task was purged before its first read of events as gone, not as a store failure', async () => {
    env = await startServer();
    const task = await env.server.tasks.create({ id: 't', owner: 'alice', kind: 'k' });
    for (let i = 1; i <= 3; i++) await task.progress({ done: i });
    // Retention removed the task between the stream's load and its read of the events after the cursor:
    // a socket's subscribe is answered task_not_found then, nothing counted. The stream was ended as a
    // failed read, logged at warn and counted in store_errors_total, an operator's alert for nothing.
    vi.spyOn(env.store, 'readEvents').mockRejectedValueOnce(
      new ProgressError(ErrorCode.TaskNotFound, 'Task t does not exist'),
    );
    const stream = new Stream(await get('/tasks/t/stream', { 'x-user': 'alice', 'last-event-id': '1' }));
    await within(stream.ended, 'the end of the stream', 2000);
    expect(await streamsClosed(env)).toEqual({ task_gone: 1 });
    expect((await env.server.metrics.storeErrors.get()).values[0]?.value ?? 0).toBe(0);
  });

  it('answers a resume whose events the store no longer holds at all with the snapshot, and ends', async () => {
    env = await startServer();
    const task = await env.server.tasks.create({ id: 't', owner: 'alice', kind: 'k' });
    for (let i = 1; i <= 3; i++) await task.progress({ done: i });
    await task.complete();
    // Retention kept the finished task's row and removed its events: a read of its log finds nothing.
    vi.spyOn(env.store, 'readEvents').mockResolvedValue([]);
    const stream = new Stream(await get('/tasks/t/stream', { 'x-user': 'alice', 'last-event-id': '2' }));
    // Taken as caught up, the stream stayed open on heartbeats and never told the watcher the task ended.
    await within(stream.ended, 'the end of the stream', 2000);
    expect(
      stream.frames().map(({ frame }) => [frame.type, (frame.task as { status?: string })?.status]),
    ).toEqual([['snapshot', 'completed']]);
  });

  it('reads on after the snapshot that stands for trimmed events: a terminal committed during that read still arrives', async () => {
    const memory = new MemoryProgressStore();
    // Once armed, one read of the stream answers as if retention had removed the event after its cursor,
    // and the task read that follows answers only when `release` is called, with the task as it was.
    let trim = false;
    let holdTaskRead = false;
    let release: () => void = () => {};
    let taskReadHeld = false;
    const store = new Proxy(memory, {
      get(target, property) {
        if (property === 'readEvents')
          return async (id: string, afterSeq: number, limit: number) => {
            // The stream's reads only (limit 500, its maxReplayEvents; the hub reads 1000).
            if (!trim || limit !== 500) return target.readEvents(id, afterSeq, limit);
            const events = await target.readEvents(id, afterSeq + 1, limit);
            if (events.length > 0) {
              trim = false;
              holdTaskRead = true;
            }
            return events;
          };
        if (property === 'getTask')
          return async (id: string) => {
            const task = await target.getTask(id);
            if (!holdTaskRead) return task;
            holdTaskRead = false;
            taskReadHeld = true;
            await new Promise<void>((resolve) => {
              release = resolve;
            });
            return task;
          };
        // Bound: the store's own methods (getEpoch among them) read its private fields.
        const value = Reflect.get(target, property);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    });
    env = await startServer({ store, heartbeatIntervalMs: 50, maxReplayEvents: 500 });
    await memory.createTask({ id: 't', owner: 'alice', kind: 'k' });
    for (const message of ['one', 'two', 'three']) await memory.append('t', { type: 'progress', message });
    trim = true;
    // Resumed from seq 1 with nothing else following the task: its backlog is read from the store.
    const stream = new Stream(await get('/tasks/t/stream', { 'x-user': 'alice', 'last-event-id': '1' }));
    await stream.until(() => taskReadHeld);
    // Committed while the stream waits for the task: the read that follows the snapshot must include it.
    await memory.append('t', { type: 'completed', result: null });
    release();
    await within(stream.ended, 'the end of the stream');
    const epoch = await memory.getEpoch();
    expect(stream.frames()).toEqual([
      {
        id: `3~${epoch}`,
        frame: expect.objectContaining({
          type: 'snapshot',
          task: expect.objectContaining({ status: 'running' }),
        }),
      },
      {
        id: `4~${epoch}!`,
        frame: expect.objectContaining({
          type: 'event',
          event: expect.objectContaining({ type: 'completed' }),
        }),
      },
    ]);
  });

  it('K streams of one task cost the replica no store read per stream and commit: the hub hands them its events', async () => {
    const memory = new MemoryProgressStore();
    const { store, calls } = countingReads(memory);
    env = await startServer({ store, heartbeatIntervalMs: 60_000 });
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    const K = 20;
    const M = 10;
    const streams: Stream[] = [];
    for (let i = 0; i < K; i++) {
      const stream = new Stream(await get(`/tasks/${task.id}/stream`, { 'x-user': 'alice' }));
      await stream.until(() => stream.frames().length === 1);
      streams.push(stream);
    }
    const readsAt = () => calls.readEvents + calls.getTask;
    // One commit at a time, each written to every stream before the next: a stream that reads the store
    // for each commit it is told of reads at least once per commit, K × M reads in all. M commits through
    // the server's task API (the hub hands them over as their appends resolve), then M through the store
    // (the hub learns of them from the change feed, as of another process's commits).
    const commitThrough = {
      server: (done: number) => task.progress({ done }),
      feed: (done: number) => memory.append(task.id, { type: 'progress', done }),
    };
    const reads: Record<string, number> = {};
    let seq = 0;
    for (const [path, commit] of Object.entries(commitThrough)) {
      const before = readsAt();
      for (let i = 1; i <= M; i++) {
        seq += 1;
        await commit(i);
        for (const stream of streams)
          await stream.until(() => stream.frames().some((entry) => seqOf(entry) === seq));
      }
      reads[path] = readsAt() - before;
    }
    await task.complete();
    await within(Promise.all(streams.map((stream) => stream.ended)), 'the end of every stream');
    for (const stream of streams) {
      expect(stream.frames().map(seqOf)).toEqual(Array.from({ length: 2 * M + 2 }, (_, seq) => seq));
    }
    // The hub's promise for sockets, now for streams too: at most one read per commit on the replica,
    // whatever the number of streams (none for a commit of its own).
    expect(reads.server).toBeLessThanOrEqual(M);
    expect(reads.feed).toBeLessThanOrEqual(M);
  });

  it('counts resumes in resumes_total and resets in resyncs_total, as a socket’s subscribes are', async () => {
    const restorable = restorableStore();
    const store = restorable.store;
    env = await startServer({ store, heartbeatIntervalMs: 50, maxReplayEvents: 2 });
    await restorable.both((copy) => copy.createTask({ id: 't', owner: 'alice', kind: 'k' }));
    for (let i = 1; i <= 5; i++) await store.append('t', { type: 'progress', message: `live ${i}` });
    const epoch = await store.getEpoch();
    const open = async (lastEventId?: string) => {
      const headers = lastEventId === undefined ? {} : { 'last-event-id': lastEventId };
      const stream = new Stream(await get('/tasks/t/stream', { 'x-user': 'alice', ...headers }));
      await stream.until(() => stream.frames().length > 0);
      return stream;
    };
    const streams = [
      await open(), // no cursor: a new watch, not a resume
      await open(`4~${epoch}`), // one event behind: a resume, nothing reset
      await open(`1~${epoch}`), // four behind, above maxReplayEvents: a snapshot stands for them
      await open('9'), // ahead of the task: a reset snapshot
      await open('3~an-epoch-before-a-restore'), // of another epoch: a reset snapshot
    ];
    expect(await resumesAndResyncs(env)).toEqual({
      resumes: 4,
      resyncs: { replay_limit: 1, cursor_ahead: 1, epoch: 1 },
    });
    // The store is restored and its epoch renewed: every open stream starts over with a reset snapshot.
    restorable.restore();
    const renewed = await store.renewEpoch();
    for (const stream of streams) {
      await stream.until(() =>
        stream.frames().some((entry) => entry.frame.reset === true && entry.frame.epoch === renewed),
      );
    }
    await expect
      .poll(() => resumesAndResyncs(env as TestServer))
      .toEqual({
        resumes: 4,
        resyncs: { replay_limit: 1, cursor_ahead: 1, epoch: 1 + streams.length },
      });
  });

  it('a reader that stops reading holds the server to a bounded buffer, then gets every seq once, in order, to the end', async () => {
    env = await startServer({ heartbeatIntervalMs: 60_000 });
    let held: ServerResponse | undefined;
    env.server.httpServer?.on('request', (request: IncomingMessage, response: ServerResponse) => {
      if (request.url?.endsWith('/stream') === true) held = response;
    });
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    const response = await get(`/tasks/${task.id}/stream`, { 'x-user': 'alice' });
    // The client stops reading: its socket buffer, then both kernels' buffers fill, then the server's
    // writes are refused (write() returns false) and whatever it writes next stays in its own memory.
    response.pause();
    const server = held as ServerResponse;
    // About 4 KiB per frame, 12 MiB in all: well beyond what loopback's kernel buffers absorb.
    const message = 'x'.repeat(4000);
    const count = 3000;
    let most = 0;
    const measure = () => {
      most = Math.max(most, server.writableLength);
    };
    for (let done = 1; done <= count; done++) {
      await task.progress({ done, message });
      measure();
    }
    await task.complete();
    // The stream's reads of the last commits are asynchronous: give them turns to write (or not).
    for (let turn = 0; turn < 20; turn++) {
      await sleep(5);
      measure();
    }
    // The stall is real: the server's writes are refused. (After each 'drain' the stream reads on in its
    // principal's next turn, so one look may fall between the two.)
    await expect.poll(() => server.socket?.writableNeedDrain, { timeout: 5000 }).toBe(true);
    // What one frame past the socket's high-water mark (16 KiB) can hold; the unbounded stream held MiBs.
    expect(most).toBeLessThan(64 * 1024);
    const stream = new Stream(response);
    response.resume();
    await stream.ended;
    const seqs = stream.frames().map(seqOf);
    expect(seqs).toEqual(Array.from({ length: count + 2 }, (_, seq) => seq));
    expect(stream.frames().at(-1)?.frame).toMatchObject({ type: 'event', event: { type: 'completed' } });
  });

  it('drops a stream whose reader stopped reading after sseStallTimeoutMs, freeing its slot', async () => {
    env = await startServer({
      heartbeatIntervalMs: 60_000,
      maxSocketsPerPrincipal: 1,
      sseStallTimeoutMs: 300,
    });
    const server = serverSideOfStream(env);
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    const response = await get(`/tasks/${task.id}/stream`, { 'x-user': 'alice' });
    open.push(response);
    response.pause(); // and never reads again
    // Filled until the server's writes stay refused; should the kernel take a little more later, the
    // stream drains and is filled again, so the stall ends only with the drop (or the deadline).
    let seq = 0;
    const deadline = Date.now() + 10_000;
    while (!server().destroyed && Date.now() < deadline) {
      if (server().writableNeedDrain) await sleep(50);
      else seq = await fillUntilStalled(task, server, seq);
    }
    expect(server().destroyed).toBe(true);
    // The stalled reader's connection is still open on its side: only the drop freed the one slot.
    const next = await get(`/tasks/${task.id}/stream`, { 'x-user': 'alice' });
    open.push(next);
    expect(next.statusCode).toBe(200);
    expect(await streamsClosed(env)).toEqual({ stalled: 1 });
  });

  it('drops the stalled reader of a quiet task: a refused heartbeat starts the stall wait, and no more heartbeats are written', async () => {
    env = await startServer({ heartbeatIntervalMs: 20, maxSocketsPerPrincipal: 1, sseStallTimeoutMs: 300 });
    const server = serverSideOfStream(env);
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    const stream = new Stream(await get(`/tasks/${task.id}/stream`, { 'x-user': 'alice' }));
    await stream.until(() => stream.frames().length === 1);
    // Nothing is committed from here: only heartbeats are written. The connection takes no more: each
    // write is refused, as once both kernels' buffers are full (simulated: a paused reader on loopback
    // took 4.1 MB before the first refusal, some 125,000 heartbeats of 33 bytes, three weeks at 15 s).
    const response = server();
    const refused: string[] = [];
    response.write = ((chunk: string) => {
      refused.push(chunk);
      return false;
    }) as typeof response.write;
    await within(new Promise((resolve) => response.once('close', resolve)), 'the drop of the stalled stream');
    expect(response.destroyed).toBe(true);
    // One refused heartbeat started the wait; none was written after it, while the stream waited.
    expect(refused).toEqual([expect.stringMatching(/^: heartbeat \d+\n\n$/)]);
    // The drop freed the principal's one slot, though the reader's side never closed.
    const next = await get(`/tasks/${task.id}/stream`, { 'x-user': 'alice' });
    open.push(next);
    expect(next.statusCode).toBe(200);
    expect(await streamsClosed(env)).toEqual({ stalled: 1 });
  });

  it('ends a stream after sseStreamLifetimeMs: a stalled reader of a quiet task frees its slot, and a reader resumes', async () => {
    // Reported: the stall timeout starts only once the connection's buffers are full, which a quiet task's
    // heartbeats take weeks to fill, so a reader that stopped reading (a suspended process) kept its slot,
    // hub follow and connection until the task ended or its credential expired.
    env = await startServer({
      heartbeatIntervalMs: 60_000,
      maxSocketsPerPrincipal: 1,
      sseStreamLifetimeMs: 1000,
    });
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.progress({ done: 1 });
    const stalled = new Stream(await get(`/tasks/${task.id}/stream`, { 'x-user': 'alice' }));
    await stalled.until(() => stalled.frames().length === 1);
    stalled.response.pause(); // and never reads again
    const lastId = stalled.lastFrame()?.id ?? '';
    await vi.waitFor(async () => expect(await streamsClosed(env as TestServer)).toEqual({ lifetime: 1 }), {
      timeout: 5000,
    });
    await task.progress({ done: 2 });
    // The paused reader's connection is still open on its side: the end freed the one slot.
    const next = new Stream(
      await get(`/tasks/${task.id}/stream`, { 'x-user': 'alice', 'last-event-id': lastId }),
    );
    expect(next.response.statusCode).toBe(200);
    await task.complete();
    await next.ended;
    // Resumed after the last frame: the events since, once each, and nothing before.
    expect(next.frames().map(seqOf)).toEqual([2, 3]);
  });

  it('counts every end of a stream once, by reason: finished, client_left, expired, shutdown', async () => {
    env = await startServer({
      heartbeatIntervalMs: 60_000,
      // carol's credential expires 300 ms after each request; the others' never.
      authenticate: (request) => {
        const user = request.headers['x-user'];
        if (typeof user !== 'string' || user === '') return null;
        return user === 'carol' ? { id: user, expiresAt: Date.now() + 300 } : { id: user };
      },
    });
    const server = env;
    const open = async (owner: string) => {
      const task = await server.server.tasks.create({ owner, kind: 'k' });
      return { task, stream: await follow(task.id, owner) };
    };
    const follow = async (taskId: string, owner: string) => {
      const stream = new Stream(await get(`/tasks/${taskId}/stream`, { 'x-user': owner }));
      await stream.until(() => stream.frames().length === 1);
      return stream;
    };
    const finished = await open('alice');
    const left = await open('bob');
    const expiring = await open('carol');
    // Not this server's own task: its shutdown would interrupt that one, and the stream end 'finished'.
    await server.store.createTask({ id: 'elsewhere', owner: 'dave', kind: 'k' });
    const atShutdown = await follow('elsewhere', 'dave');

    await finished.task.complete();
    await within(finished.stream.ended, 'the end after the terminal frame');
    left.stream.response.destroy();
    await within(expiring.stream.ended, 'the end at the credential’s expiry');
    await expect.poll(() => streamsClosed(server)).toEqual({ finished: 1, client_left: 1, expired: 1 });
    await server.close();
    await within(atShutdown.ended, 'the end at shutdown');
    expect(await streamsClosed(server)).toEqual({ finished: 1, client_left: 1, expired: 1, shutdown: 1 });
  });

  it('still drops a stalled reader whose stream ended meanwhile (shutdown on an application’s http.Server)', async () => {
    const store = new MemoryProgressStore();
    const httpServer = createServer();
    const progress = new ProgressServer({
      store,
      server: httpServer,
      authenticate: headerAuth,
      heartbeatIntervalMs: 60_000,
      // Long enough for the shutdown below to come first, once the writes are refused.
      sseStallTimeoutMs: 1500,
    });
    let held: ServerResponse | undefined;
    const handler = progress.httpHandler();
    httpServer.on('request', (request: IncomingMessage, response: ServerResponse) => {
      held ??= response;
      handler(request, response);
    });
    await new Promise<void>((resolve) => httpServer.listen(0, '127.0.0.1', resolve));
    try {
      const port = (httpServer.address() as AddressInfo).port;
      const task = await progress.tasks.create({ owner: 'alice', kind: 'k' });
      const response = await new Promise<IncomingMessage>((resolve, reject) => {
        const request = httpRequest(`http://127.0.0.1:${port}/progress/tasks/${task.id}/stream`, {
          headers: { 'x-user': 'alice' },
        });
        request.on('response', resolve);
        request.on('error', reject);
        request.end();
      });
      open.push(response);
      response.pause(); // and never reads again
      const server = () => held as ServerResponse;
      await fillUntilStalled(task, server);
      const closed = new Promise((resolve) => server().once('close', resolve));
      // The shutdown ends the stream while its buffers are full: the end waits behind them, for ever
      // since the reader does not read, unless the stall timeout still drops the connection.
      await progress.close({ timeoutMs: 200 });
      expect(await streamsClosed({ server: progress } as TestServer)).toEqual({ shutdown: 1 });
      await within(closed, 'the drop of the stalled connection', 10_000);
      expect(server().destroyed).toBe(true);
    } finally {
      httpServer.closeAllConnections();
      await new Promise((resolve) => httpServer.close(resolve));
    }
  });

  it('keeps a reader that is only slow: it reads again before the timeout and gets every seq once to the end', async () => {
    env = await startServer({ heartbeatIntervalMs: 60_000, sseStallTimeoutMs: 5000 });
    const server = serverSideOfStream(env);
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    const response = await get(`/tasks/${task.id}/stream`, { 'x-user': 'alice' });
    response.pause();
    const last = await fillUntilStalled(task, server);
    // Stalled for a fifth of the timeout. The timeout leaves the reader 4 s to drain enough of what both
    // kernels buffered (a few MB) for the first 'drain': 2 s was too short for a reader sharing one process
    // with its server under a full suite's load, and the test failed with the stream ended as stalled
    // under a reader that read.
    await sleep(1000);
    const stream = new Stream(response);
    response.resume();
    // Read to `last` however long a loaded machine takes: the backlog is however far the stream fell
    // behind the fill before it stalled (9,000 frames and more under load), and a reader sharing two
    // cores with a full suite read some 900 a second (a 10 s wait timed out). Each 'drain' re-arms the
    // stall wait only for the next one, so a reader that reads is never dropped for a long backlog. A
    // stream that ends first (dropped as stalled) stops the wait at once: its frames and the server's
    // count of ends say why.
    await stream.until(() => {
      const frame = stream.lastFrame();
      return response.closed || (frame !== undefined && seqOf(frame) === last);
    }, 40_000);
    expect(await streamsClosed(env)).toEqual({});
    // Seqs arrive in order and nothing follows `last` until the task completes.
    expect(stream.frames().map(seqOf)).toEqual(Array.from({ length: last + 1 }, (_, seq) => seq));
    // Longer than the timeout since the stall: a stall timer that 'drain' left running drops it now.
    await sleep(5500);
    expect(await streamsClosed(env)).toEqual({});
    await task.complete();
    await within(stream.ended, 'the end of the stream', 10_000);
    expect(stream.frames().map(seqOf)).toEqual(Array.from({ length: last + 2 }, (_, seq) => seq));
    expect(stream.frames().at(-1)?.frame).toMatchObject({ type: 'event', event: { type: 'completed' } });
    expect(await streamsClosed(env)).toEqual({ finished: 1 });
  }, 60_000);

  it('catches a reader up with one store read per page, not one per drain: the rest of a page the full buffer refused is written at the drain', async () => {
    // Each 'drain' lets through one socket buffer (some 16 KiB: four of these frames). Read again from the
    // cursor after each, a backlog cost a page read per four frames (1,570 reads of 1,000 events for 5,880
    // frames), and a reader catching up on a loaded machine got a few hundred frames a second.
    const memory = new MemoryProgressStore();
    const { store, calls } = countingReads(memory);
    const page = 500;
    env = await startServer({
      store,
      heartbeatIntervalMs: 60_000,
      sseStallTimeoutMs: 60_000,
      maxReplayEvents: page,
    });
    const server = serverSideOfStream(env);
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    const response = await get(`/tasks/${task.id}/stream`, { 'x-user': 'alice' });
    response.pause();
    let last = await fillUntilStalled(task, server);
    // A backlog well beyond the hub's memory of the task (its last 256 events): read from the store.
    for (const end = last + 2000; last < end; ) {
      last += 1;
      await task.progress({ done: last, message: BIG_MESSAGE });
    }
    const before = calls.readEvents;
    const stream = new Stream(response);
    response.resume();
    await stream.until(() => {
      const frame = stream.lastFrame();
      return frame !== undefined && seqOf(frame) === last;
    }, 60_000);
    const reads = calls.readEvents - before;
    expect(stream.frames().map(seqOf)).toEqual(Array.from({ length: last + 1 }, (_, seq) => seq));
    // The backlog is at most `last` events: a read per page of it, and one that finds the end.
    expect(reads).toBeLessThanOrEqual(Math.ceil(last / page) + 1);
  });

  it.each([0, -1, 1.5, 2 ** 31, '30000'])('refuses sseStallTimeoutMs %s with invalid_input', (value) => {
    expect(PROGRESS_SERVER_DEFAULTS.sseStallTimeoutMs).toBe(30_000);
    expect(
      () =>
        new ProgressServer({
          store: new MemoryProgressStore(),
          authenticate: () => null,
          sseStallTimeoutMs: value as number,
        }),
    ).toThrow(
      expect.objectContaining({
        code: 'invalid_input',
        message: expect.stringContaining('sseStallTimeoutMs'),
      }),
    );
  });

  it('opens a stream with one read of the task, the one that authorizes it, whether it starts with a snapshot or resumes', async () => {
    // The handler read the task to authorize the stream, then the stream read it again to start: two
    // reads per open, and SSE watchers open one stream per watch and per reopen. (A resume whose backlog
    // comes from the store reads the task once more, after the events: the check that they are of the run
    // authorized, see `TaskStream`'s `#ofRun`.)
    const memory = new MemoryProgressStore();
    const { store, calls } = countingReads(memory);
    env = await startServer({ store, heartbeatIntervalMs: 60_000 });
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    for (let done = 1; done <= 3; done++) await task.progress({ done });
    const opens = [
      { name: 'from the start', headers: {}, first: 3 },
      { name: 'resumed', headers: { 'last-event-id': '1' }, first: 2, reads: 2 },
    ];
    for (const { name, headers, first, reads = 1 } of opens) {
      const before = calls.getTask;
      const stream = new Stream(await get(`/tasks/${task.id}/stream`, { 'x-user': 'alice', ...headers }));
      await stream.until(() => stream.frames().some((entry) => seqOf(entry) === 3));
      expect(stream.frames().map(seqOf), name).toEqual(first === 3 ? [3] : [2, 3]);
      expect(calls.getTask - before, name).toBe(reads);
      stream.response.destroy();
    }
  });

  it('a commit right after the authorizing read is streamed at once, not at the next commit: the hub followed the task before that read', async () => {
    const memory = new MemoryProgressStore();
    let landed = false;
    const { store } = countingReads(memory, async (taskId) => {
      // Committed elsewhere (another replica: the hub hears of it from the change feed) just after the
      // handler's read, before the stream follows the task itself.
      if (landed || taskId !== 't') return;
      landed = true;
      await memory.append('t', { type: 'progress', done: 2 });
    });
    env = await startServer({ store, heartbeatIntervalMs: 60_000 });
    await memory.createTask({ id: 't', owner: 'alice', kind: 'k' });
    await memory.append('t', { type: 'progress', done: 1 });
    const stream = new Stream(await get('/tasks/t/stream', { 'x-user': 'alice' }));
    // (A snapshot at 1 then the event 2, as read now; a snapshot at 2 when the stream read the task again.)
    await stream.until(() => stream.frames().some((entry) => seqOf(entry) === 2), 2000);
    expect(stream.frames().map(seqOf).at(-1)).toBe(2);
  });

  it('hands the change feed no id it refuses as invalid: the id is checked before the hub follows it', async () => {
    // A Postgres feed's safety-net poll asks the store about every id followed: an id no task can have
    // (a U+0000, which Postgres text refuses; one beyond the id length; bad percent-encoding) gets its
    // 400 without being followed, even for the moment before the check.
    const store = new MemoryProgressStore();
    const followed: string[] = [];
    Object.assign(store.changes, {
      follow: (taskId: string) => {
        followed.push(taskId);
        return () => undefined;
      },
    });
    env = await startServer({ store });
    for (const id of ['a%00b', 'x'.repeat(300), '%ZZ']) {
      const refused = await get(`/tasks/${id}/stream`, { 'x-user': 'alice' });
      refused.resume();
      expect(refused.statusCode, id).toBe(400);
    }
    await store.createTask({ id: 'ok', owner: 'alice', kind: 'k' });
    const stream = new Stream(await get('/tasks/ok/stream', { 'x-user': 'alice' }));
    await stream.until(() => stream.frames().length === 1);
    expect(followed).toEqual(['ok']);
  });

  it('answers HEAD at once with the stream’s headers and an end, holding no stream slot', async () => {
    env = await startServer({ maxSocketsPerPrincipal: 1 });
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    const head = await within(
      new Promise<IncomingMessage>((resolve, reject) => {
        const req = httpRequest(
          `${env?.httpUrl}/progress/tasks/${task.id}/stream`,
          { method: 'HEAD', headers: { 'x-user': 'alice' } },
          resolve,
        );
        req.on('error', reject);
        req.end();
      }),
      'the HEAD response headers',
    );
    open.push(head);
    expect(head.statusCode).toBe(200);
    expect(head.headers['content-type']).toBe('text/event-stream; charset=utf-8');
    head.resume();
    await within(new Promise((resolve) => head.on('end', resolve)), 'the end of the HEAD response');
    // The HEAD's connection is still open (keep-alive): the principal's one slot must be free.
    const stream = new Stream(await get(`/tasks/${task.id}/stream`, { 'x-user': 'alice' }));
    expect(stream.response.statusCode).toBe(200);
  });

  it('respects authentication, the same not-found answer, and the per-principal cap', async () => {
    env = await startServer({ maxSocketsPerPrincipal: 1 });
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    expect((await get(`/tasks/${task.id}/stream`)).statusCode).toBe(401);
    const hidden = await get(`/tasks/${task.id}/stream`, { 'x-user': 'bob' });
    const missing = await get('/tasks/nope/stream', { 'x-user': 'bob' });
    const body = (response: IncomingMessage) =>
      new Promise<string>((resolve) => {
        let text = '';
        response.setEncoding('utf8');
        response.on('data', (chunk: string) => {
          text += chunk;
        });
        response.on('end', () => resolve(text));
      });
    expect([hidden.statusCode, missing.statusCode]).toEqual([404, 404]);
    expect(JSON.parse(await body(hidden)).error.code).toBe('task_not_found');
    await body(missing);
    const held = new Stream(await get(`/tasks/${task.id}/stream`, { 'x-user': 'alice' }));
    await held.until(() => held.frames().length === 1);
    const refused = await get(`/tasks/${task.id}/stream`, { 'x-user': 'alice' });
    expect(refused.statusCode).toBe(429);
    expect(JSON.parse(await body(refused)).error.code).toBe('too_many_sockets');
    // Ending the stream gives the slot back, once the server has seen the close: asked until then, not
    // after a fixed sleep (a loaded machine can take longer than any sleep).
    held.response.destroy();
    const deadline = Date.now() + 5000;
    let again = await get(`/tasks/${task.id}/stream`, { 'x-user': 'alice' });
    while (again.statusCode === 429 && Date.now() < deadline) {
      await body(again);
      await new Promise((resolve) => setTimeout(resolve, 20));
      again = await get(`/tasks/${task.id}/stream`, { 'x-user': 'alice' });
    }
    expect(new Stream(again).response.statusCode).toBe(200);
  });
});

describe('POST /tasks/:id/ack', () => {
  it('records an ack over HTTP, refusing one above the task’s seq', async () => {
    env = await startServer();
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    await task.progress({ done: 1 });
    const post = (seq: number) =>
      fetch(`${env?.httpUrl}/progress/tasks/${task.id}/ack`, {
        method: 'POST',
        headers: { 'x-user': 'alice', 'content-type': 'application/json' },
        body: JSON.stringify({ seq }),
      });
    const refused = await post(5);
    expect(refused.status).toBe(400);
    expect(((await refused.json()) as { error: { code: string } }).error.code).toBe('invalid_input');
    const accepted = await post(1);
    expect(accepted.status).toBe(200);
    expect(await accepted.json()).toEqual({ taskId: task.id, seq: 1 });
    await expect.poll(async () => (await env?.store.getTask(task.id))?.ackedSeq).toBe(1);
  });
});
