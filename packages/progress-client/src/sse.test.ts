import { getEventListeners } from 'node:events';
import { type AddressInfo, createServer, type Socket } from 'node:net';
import { ErrorCode, type ServerFrame } from '@finishline/core';
import { describe, expect, it, vi } from 'vitest';
import { WebSocket } from 'ws';
import type { WebSocketConstructorLike } from './options.js';
import { PROGRESS_CLIENT_DEFAULTS } from './options.js';
import { MemoryCursorStorage } from './persist.js';
import { ProgressClient } from './progress-client.js';
import { type StreamingFetch, sseFallback } from './sse.js';
import { fakePage } from './testing/fake-page.js';
import { FakeTask } from './testing/fake-server.js';
import { record, setup } from './testing/harness.js';
import { flush } from './testing/manual-scheduler.js';

/** One request the SSE transport made; a stream's body is fed by the test. */
interface SseRequest {
  url: string;
  method: string;
  headers: Record<string, string>;
  credentials: string;
  body: string | undefined;
  /** Writes one SSE block carrying `frame` (with its `id:` line, as the server sends it). */
  send(frame: ServerFrame, id?: number): void;
  /** Writes a heartbeat comment, as the server does every `heartbeatIntervalMs`. */
  heartbeat(): void;
  /** Writes raw text (the stream's opening block, say). */
  write(text: string): void;
  /** The server ends the stream. */
  end(): void;
  aborted(): boolean;
  /** Open as the server sees it: served, and neither aborted by the client nor ended by the server. */
  live(): boolean;
}

/** The server's SSE routes as a `fetch`: every GET a stream the test feeds, every POST a 204. */
class FakeSse {
  readonly requests: SseRequest[] = [];
  /** Set: every stream is refused with this status and body (`withStatus: false` as a fetch without one). */
  refusal: { status: number; text: string; withStatus?: boolean } | undefined;
  /** Set: refuses the streams whose request headers it answers with a refusal for. */
  refuses: ((headers: Record<string, string>) => FakeSse['refusal']) | undefined;
  /**
   * Set: the server's socket cap (`maxSocketsPerPrincipal`): a stream asked for while this many are open
   * (neither aborted by the client nor ended, plus {@link ghosts}) is refused with `too_many_sockets`.
   */
  cap: number | undefined;
  /** Streams the server still counts though the client let go of them (dead without a word, say). */
  ghosts = 0;
  /** Acks (POSTs) still to be answered with this status before the next ones are answered 204. */
  ackRefusals: number[] = [];
  /** Acks (POSTs) still to be left unanswered (a request a proxy holds), until the client aborts them. */
  ackHangs = 0;

  readonly fetch: StreamingFetch = async (url, init) => {
    const open = this.streams.filter((stream) => stream.live()).length + this.ghosts;
    const refusal =
      init.method !== 'GET'
        ? undefined
        : this.cap !== undefined && open >= this.cap
          ? { status: 429, text: JSON.stringify({ error: { code: 'too_many_sockets', message: 'cap' } }) }
          : (this.refuses?.(init.headers) ?? this.refusal);
    let controller: ReadableStreamDefaultController<Uint8Array> | undefined;
    const body =
      init.method === 'GET' && refusal === undefined
        ? new ReadableStream<Uint8Array>({
            start(c) {
              controller = c;
            },
          })
        : null;
    const encoder = new TextEncoder();
    let ended = false;
    const write = (text: string) => {
      try {
        controller?.enqueue(encoder.encode(text));
      } catch {
        // Closed already: a stream the client stopped.
      }
    };
    init.signal?.addEventListener('abort', () => {
      try {
        controller?.error(new Error('aborted'));
      } catch {
        // Closed already.
      }
    });
    this.requests.push({
      url,
      method: init.method,
      headers: init.headers,
      credentials: init.credentials,
      body: init.body,
      send: (frame, id) =>
        write(`${id === undefined ? '' : `id: ${id}\n`}data: ${JSON.stringify(frame)}\n\n`),
      heartbeat: () => write(': heartbeat 1767225615000\n\n'),
      write,
      end: () => {
        ended = true;
        try {
          controller?.close();
        } catch {
          // Closed already.
        }
      },
      aborted: () => init.signal?.aborted === true,
      live: () => body !== null && !ended && init.signal?.aborted !== true,
    });
    if (init.method === 'POST' && this.ackHangs > 0) {
      this.ackHangs--;
      return new Promise((_, reject) =>
        init.signal?.addEventListener('abort', () => reject(new Error('aborted'))),
      );
    }
    const ackStatus = init.method === 'POST' ? this.ackRefusals.shift() : undefined;
    if (ackStatus !== undefined) return { ok: false, status: ackStatus, body: null, text: async () => '' };
    if (refusal?.withStatus === false) return { ok: false, body: null };
    if (refusal !== undefined)
      return { ok: false, status: refusal.status, body: null, text: async () => refusal.text };
    return { ok: true, body };
  };

  get streams(): SseRequest[] {
    return this.requests.filter((request) => request.method === 'GET');
  }

  get acks(): SseRequest[] {
    return this.requests.filter((request) => request.method === 'POST');
  }
}

/** What @finishline/server writes first on a stream, with its default heartbeat interval. */
const OPENING = 'retry: 1000\n: hello heartbeatIntervalMs=15000\n\n';

/** Waits (on the manual clock) for the client's next socket. */
async function nextSocket(ctx: ReturnType<typeof setup>, count: number): Promise<void> {
  for (let ms = 0; ctx.server.sockets.length < count; ms += 10) {
    if (ms > 60_000) throw new Error('no new socket');
    await ctx.scheduler.advance(10);
  }
}

function sseSetup(overrides: Parameters<typeof setup>[0] = {}) {
  const sse = new FakeSse();
  const ctx = setup({ fallbackTransport: sseFallback({ fetch: sse.fetch }), ...overrides });
  return { ...ctx, sse };
}

describe('the SSE fallback transport', () => {
  it('opens no stream for a token function that returns no credential: retried as one that throws, not refused with 401, which closes the client', async () => {
    // Until 6 December 2026 the stream was asked for with what the function returned (`undefined`: no
    // header): the server refused it with 401, and the client closed for good.
    let calls = 0;
    const { client, scheduler, sse, errors } = sseSetup({
      preferFallback: true,
      token: (async () => (++calls === 1 ? undefined : 'tok')) as () => Promise<string>,
    });
    sse.refuses = (headers) =>
      headers.authorization === 'Bearer tok'
        ? undefined
        : { status: 401, text: JSON.stringify({ error: { code: 'unauthenticated', message: 'no' } }) };
    const watch = client.watch('t1');
    const log = record(watch);
    await flush();
    expect(sse.streams).toEqual([]);
    expect(client.state).not.toBe('closed');
    await scheduler.advance(10_000);
    expect(sse.streams.map((stream) => stream.headers.authorization)).toEqual(['Bearer tok']);
    sse.streams[0]?.send({ type: 'snapshot', task: new FakeTask('t1', 1).view() });
    await flush();
    // Reported on the watch as a token function that throws is (below), not the client's fatal error.
    expect(log).toEqual(['error:unauthenticated', 'snapshot@0']);
    expect(client.state).not.toBe('closed');
    expect(errors).toEqual([]);
    await client.close();
  });

  it('reports a token function that fails on the watch (unauthenticated, its error as the cause) each time it fails, and opens the stream once it answers', async () => {
    // Until 6 December 2026 the stream was asked for again and again without a word: a watch whose token
    // function kept failing showed nothing, and nothing said why (the socket reports it on the client).
    const failure = new Error('refresh failed');
    let failing = true;
    const { client, scheduler, sse, errors } = sseSetup({
      preferFallback: true,
      token: async () => {
        if (failing) throw failure;
        return 'tok';
      },
    });
    const watch = client.watch('t1');
    const reported: unknown[] = [];
    watch.on('error', (error) => reported.push(error));
    await flush();
    expect(reported).toEqual([expect.objectContaining({ code: ErrorCode.Unauthenticated, cause: failure })]);
    // Asked again with the backoff of a failed open: 0.5 s, then 1.5 s (random 0.5).
    await scheduler.advance(2000);
    expect(reported).toHaveLength(3);
    expect(sse.streams).toEqual([]);
    failing = false;
    await scheduler.advance(10_000);
    expect(sse.streams.map((stream) => stream.headers.authorization)).toEqual(['Bearer tok']);
    expect(client.state).not.toBe('closed');
    expect(errors).toEqual([]);
    await client.close();
  });

  it('follows a watch over a stream, reopens a cut one from the cursor and acknowledges the end once', async () => {
    const { client, server, scheduler, http, sse } = sseSetup({
      preferFallback: true,
      token: async () => 'tok',
      httpPollIntervalMs: 1000,
    });
    const task = new FakeTask('t1', 3);
    const watch = client.watch('t1');
    const log = record(watch);
    await flush();
    expect(server.sockets).toHaveLength(0);
    expect(sse.streams).toHaveLength(1);
    const first = sse.streams[0] as SseRequest;
    expect(first.url).toBe('http://example.test/progress/tasks/t1/stream');
    expect(first.headers).toEqual({ authorization: 'Bearer tok', accept: 'text/event-stream' });
    expect(first.credentials).toBe('include');

    first.send({ type: 'snapshot', task: task.view() });
    first.send({ type: 'event', event: task.item('a') }, 1);
    first.send({ type: 'event', event: task.item('b') }, 2);
    await flush();
    expect(log).toEqual(['snapshot@0', 'item@1', 'item@2']);

    first.end(); // a proxy timeout: reopened from the cursor at once (see the pace's tests below)
    await scheduler.advance(49);
    expect(sse.streams).toHaveLength(1);
    await scheduler.advance(1);
    expect(sse.streams).toHaveLength(2);
    const second = sse.streams[1] as SseRequest;
    expect(second.headers['last-event-id']).toBe('2');

    second.send({ type: 'event', event: task.item('c') }, 3);
    second.send({ type: 'event', event: task.end() }, 4);
    second.end();
    expect((await watch.done).status).toBe('completed');
    await scheduler.advance(10_000);
    expect(sse.streams).toHaveLength(2);
    expect(sse.acks).toHaveLength(1);
    const ack = sse.acks[0] as SseRequest;
    expect(ack.url).toBe('http://example.test/progress/tasks/t1/ack');
    expect(ack.headers).toEqual({ authorization: 'Bearer tok', 'content-type': 'application/json' });
    expect(JSON.parse(ack.body ?? '')).toEqual({ seq: 4 });
    expect(http.requests).toEqual([]);
    await client.close();
    expect(scheduler.pending).toBe(0);
  });

  it('drops a block its stream ends before the blank line that ends it (a cut mid-block), and asks for it again', async () => {
    // The server ends every block it writes, in one write: a block the stream ends before its blank line is
    // one a proxy or the network cut, and may lack lines (its `data:` cut short, an `id:` without its data).
    // Dropped, as the SSE spec drops it: the reopened stream brings it again from the cursor.
    const { client, scheduler, sse } = sseSetup({ preferFallback: true });
    const task = new FakeTask('t1', 2);
    const log = record(client.watch('t1'));
    await flush();
    const first = sse.streams[0] as SseRequest;
    first.send({ type: 'snapshot', task: task.view() });
    const item = { type: 'event' as const, event: task.item('a') };
    first.write(`id: 1\ndata: ${JSON.stringify(item)}\n`);
    first.end();
    await scheduler.advance(100);
    expect(log).toEqual(['snapshot@0']);
    const second = sse.streams[1] as SseRequest;
    expect(second.headers['last-event-id']).toBeUndefined();
    second.send(item, 1);
    await flush();
    expect(log).toEqual(['snapshot@0', 'item@1']);
    await client.close();
  });

  it('ends a stream once its watch’s end is applied, whether or not its body ends: acknowledged at once', async () => {
    // The stream waited for its body to end (the server ends it after the terminal frame): one that a proxy
    // held open held the end's ack, and the watch, until the silence timeout (32 s), or for ever behind a
    // proxy that writes comments of its own.
    const { client, scheduler, sse } = sseSetup({ preferFallback: true });
    const task = new FakeTask('t1', 2);
    const watch = client.watch('t1');
    await flush();
    const stream = sse.streams[0] as SseRequest;
    stream.write(OPENING);
    stream.send({ type: 'snapshot', task: task.view() }, 0);
    stream.send({ type: 'event', event: task.item('a') }, 1);
    stream.send({ type: 'event', event: task.end() }, 2);
    expect((await watch.done).status).toBe('completed');
    await flush();
    expect(stream.aborted()).toBe(true);
    expect(sse.acks.map((ack) => JSON.parse(ack.body ?? ''))).toEqual([{ seq: 2 }]);
    expect(watch.closed).toBe(true);
    await scheduler.advance(60_000);
    expect(sse.streams).toHaveLength(1);
    expect(sse.acks).toHaveLength(1);
    await client.close();
  });

  it('takes an ack answered with no response (a fetch of your own that returns nothing) for no answer, leaving no rejection unhandled', async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    try {
      const sse = new FakeSse();
      let broken = 1;
      const fetch: StreamingFetch = async (url, init) => {
        const answer = await sse.fetch(url, init);
        if (init.method === 'POST' && broken-- > 0) return undefined as never;
        return answer;
      };
      const { client, scheduler } = setup({
        preferFallback: true,
        fallbackTransport: sseFallback({ fetch }),
      });
      const task = new FakeTask('t1', 1);
      const watch = client.watch('t1');
      await flush();
      const stream = sse.streams[0] as SseRequest;
      stream.send({ type: 'snapshot', task: task.view() });
      stream.send({ type: 'event', event: task.end() }, 1);
      stream.end();
      expect((await watch.done).status).toBe('completed');
      await scheduler.advance(10_000);
      await new Promise((resolve) => setImmediate(resolve));
      expect(unhandled).toEqual([]);
      expect(sse.acks.map((ack) => JSON.parse(ack.body ?? ''))).toEqual([{ seq: 1 }, { seq: 1 }]);
      await client.close();
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  });

  it('acknowledges the end of a task created again under the id of one whose handle closed at its end', async () => {
    const { client, scheduler, sse } = sseSetup({ preferFallback: true });
    const old = new FakeTask('t1', 1);
    old.item('a');
    old.end();
    const first = client.watch('t1');
    first.on('finished', () => first.close()); // closed at its end: its stream stops while it is applied
    await flush();
    (sse.streams[0] as SseRequest).send({ type: 'snapshot', task: old.view() }, 2);
    await scheduler.advance(1000);
    expect(sse.acks.map((ack) => JSON.parse(ack.body ?? ''))).toEqual([{ seq: 2 }]);
    // The id purged and a task created again under it: a new watch of the id, and its own end.
    const again = new FakeTask('t1', 1);
    again.end();
    const second = client.watch('t1');
    await flush();
    const stream = sse.streams[1] as SseRequest;
    stream.send({ type: 'snapshot', task: again.view() }, 1);
    stream.end();
    expect((await second.done).seq).toBe(1);
    await scheduler.advance(1000);
    // Until 5 December 2026 the first watch's ack was remembered after its handle let go of the id (its
    // stream's end, run by that close, came after the close forgot it), and this end was never acknowledged.
    expect(sse.acks.map((ack) => JSON.parse(ack.body ?? ''))).toEqual([{ seq: 2 }, { seq: 1 }]);
    await client.close();
  });

  it('gives up on a stream silent past the heartbeat timeout and resumes from the cursor, as on a socket', async () => {
    // A stream that died without a word (a laptop's sleep, a NAT that forgot the connection) never ends
    // for `fetch`: its read waits for the operating system's TCP timeout, and the watch stood still.
    const { client, scheduler, sse } = sseSetup({ preferFallback: true, httpPollIntervalMs: 1000 });
    const task = new FakeTask('t1', 3);
    const watch = client.watch('t1');
    const log = record(watch);
    await flush();
    const first = sse.streams[0] as SseRequest;
    first.send({ type: 'snapshot', task: task.view(), epoch: 'e1' }, 0);
    first.send({ type: 'event', event: task.item('a') }, 1);
    await scheduler.advance(20_000);
    first.heartbeat(); // a quiet task: heartbeats alone keep the stream
    await scheduler.advance(31_000);
    expect(first.aborted()).toBe(false);
    // Silent from here on: 2 × the server's default heartbeat interval (15 s) + heartbeatMarginMs (2 s).
    await scheduler.advance(1000);
    expect(first.aborted()).toBe(true);
    await scheduler.advance(1000);
    expect(sse.streams).toHaveLength(2);
    const second = sse.streams[1] as SseRequest;
    expect(second.headers['last-event-id']).toBe('1~e1');
    second.send({ type: 'event', event: task.item('b') }, 2);
    second.send({ type: 'event', event: task.end() }, 3);
    second.end();
    expect((await watch.done).status).toBe('completed');
    expect(log).toEqual(['snapshot@0', 'item@1', 'item@2', 'completed@3', 'finished@3']);
    await client.close();
    // (The ack's deadline goes with its answer.)
    await flush();
    expect(scheduler.pending).toBe(0);
  });

  it('lets go of the body of a stream it stopped when the fetch ignores its signal: silent, the client closed, or answered after the stop', async () => {
    // Until 6 December 2026 a `fetch` of the application's that drops `signal` left every stream the client
    // stopped being read for as long as the server kept it open, each holding a connection (six per host
    // in HTTP/1.1: the next streams never opened).
    const bodies: { cancelled: boolean; write(text: string): void }[] = [];
    let answer: (() => void) | undefined;
    const fetch: StreamingFetch = async () => {
      const body = { cancelled: false, write: (_text: string) => {} };
      const stream = new ReadableStream<Uint8Array>({
        start(controller) {
          body.write = (text) => controller.enqueue(new TextEncoder().encode(text));
        },
        cancel() {
          body.cancelled = true;
        },
      });
      bodies.push(body);
      // The fourth open is answered only when the test says so.
      if (bodies.length === 4) await new Promise<void>((resolve) => (answer = resolve));
      return { ok: true, status: 200, body: stream };
    };
    const { client, scheduler } = setup({ preferFallback: true, fallbackTransport: sseFallback({ fetch }) });
    client.watch('t1');
    await flush();
    const first = bodies[0];
    first?.write(OPENING);
    await flush();
    // Silent past the heartbeat timeout (32 s): stopped, and reopened.
    await scheduler.advance(33_000);
    expect(first?.cancelled).toBe(true);
    expect(bodies).toHaveLength(2);
    bodies[1]?.write(OPENING);
    await scheduler.advance(1000);
    // Another watch's stream; both are stopped by the close below.
    client.watch('t2');
    await flush();
    expect(bodies).toHaveLength(3);
    bodies[2]?.write(OPENING);
    await flush();
    // Answered after the client closed: not read either.
    client.watch('t3');
    await flush();
    await client.close();
    expect(bodies.slice(1, 3).map((body) => body.cancelled)).toEqual([true, true]);
    answer?.();
    await flush();
    expect(bodies[3]?.cancelled).toBe(true);
  });

  it('takes the heartbeat interval a stream states when it opens: 2 × it + heartbeatMarginMs of silence', async () => {
    const { client, scheduler, sse } = sseSetup({ preferFallback: true, httpPollIntervalMs: 1000 });
    client.watch('t1');
    await flush();
    const stream = sse.streams[0] as SseRequest;
    // What @finishline/server writes first, with `heartbeatIntervalMs: 60_000`.
    stream.write('retry: 1000\n: hello heartbeatIntervalMs=60000\n\n');
    await flush();
    await scheduler.advance(121_999);
    expect(stream.aborted()).toBe(false);
    await scheduler.advance(1);
    expect(stream.aborted()).toBe(true);
    await client.close();
    expect(scheduler.pending).toBe(0);
  });

  it('takes at most 5 minutes of a stated heartbeat interval, as the socket does of its hello', async () => {
    // Before, a misconfigured or broken server's interval was taken whole: a dead stream of one stating
    // a week of it held its watch for two weeks. (The socket has held its hello's to 5 minutes since 4
    // December 2026.)
    const { client, scheduler, sse } = sseSetup({ preferFallback: true, httpPollIntervalMs: 1000 });
    client.watch('t1');
    await flush();
    const stream = sse.streams[0] as SseRequest;
    stream.write('retry: 1000\n: hello heartbeatIntervalMs=604800000\n\n');
    await flush();
    // 2 × 300,000 + heartbeatMarginMs (2 s).
    await scheduler.advance(601_999);
    expect(stream.aborted()).toBe(false);
    await scheduler.advance(1);
    expect(stream.aborted()).toBe(true);
    await client.close();
    expect(scheduler.pending).toBe(0);
  });

  it('takes the heartbeat interval from a comment line only, not from a frame whose text holds U+2028 (a line end to a regex, not to SSE)', async () => {
    // A task's message is the application's (a file name a user chose, say), and JSON keeps U+2028 raw:
    // read with a multiline regex, a message `\u2028: hello heartbeatIntervalMs=300000` set the stream's
    // silence timeout to 10 minutes, and a stream that died after it held its watch that long.
    const { client, scheduler, sse } = sseSetup({ preferFallback: true, httpPollIntervalMs: 1000 });
    const task = new FakeTask('t1', 3);
    client.watch('t1');
    await flush();
    const stream = sse.streams[0] as SseRequest;
    stream.write(OPENING);
    stream.send({ type: 'snapshot', task: task.view() }, 0);
    const event = task.progress(1, 'x\u2028: hello heartbeatIntervalMs=300000\u2028y');
    stream.send({ type: 'event', event }, 1);
    await flush();
    // 2 × 15,000 + heartbeatMarginMs (2 s) of silence.
    await scheduler.advance(31_999);
    expect(stream.aborted()).toBe(false);
    await scheduler.advance(1);
    expect(stream.aborted()).toBe(true);
    await client.close();
  });

  it('takes heartbeatTimeoutMs as the longest silence of a stream when it is given', async () => {
    const { client, scheduler, sse } = sseSetup({ preferFallback: true, heartbeatTimeoutMs: 5000 });
    client.watch('t1');
    await flush();
    // (Served: until a stream delivers anything, connectTimeoutMs applies, below.)
    (sse.streams[0] as SseRequest).write(OPENING);
    await flush();
    await scheduler.advance(4999);
    expect((sse.streams[0] as SseRequest).aborted()).toBe(false);
    await scheduler.advance(1);
    expect((sse.streams[0] as SseRequest).aborted()).toBe(true);
    await client.close();
  });

  it('resumes with the epoch of the watch’s cursor in Last-Event-ID, the new one after a reset snapshot', async () => {
    const { client, scheduler, sse } = sseSetup({ preferFallback: true, httpPollIntervalMs: 1000 });
    const task = new FakeTask('t1', 5);
    const watch = client.watch('t1');
    const log = record(watch);
    await flush();
    const first = sse.streams[0] as SseRequest;
    first.send({ type: 'snapshot', task: task.view(), epoch: 'epoch-1' });
    first.send({ type: 'event', event: task.item('a') });
    first.send({ type: 'event', event: task.item('b') });
    first.end();
    await scheduler.advance(1000);
    const second = sse.streams[1] as SseRequest;
    expect(second.headers['last-event-id']).toBe('2~epoch-1');

    // The store was restored (epoch-2): the server starts the watch over, at seq 1 of the new log.
    const restored = new FakeTask('t1', 5);
    restored.item('x');
    second.send({ type: 'snapshot', task: restored.view(), epoch: 'epoch-2', reset: true });
    second.end();
    await scheduler.advance(1000);
    expect(sse.streams[2]?.headers['last-event-id']).toBe('1~epoch-2');
    expect(log).toEqual(['snapshot@0', 'item@1', 'item@2', 'snapshot@1']);
    await client.close();
  });

  it('resumes through a server older than epochs in ids (400 for `<seq>~<epoch>`) by asking again with the seq alone', async () => {
    const { client, scheduler, sse } = sseSetup({ preferFallback: true, httpPollIntervalMs: 1000 });
    // The first servers of the route wrote ids of the seq alone, and read Last-Event-ID as an integer.
    sse.refuses = (headers) =>
      headers['last-event-id']?.includes('~')
        ? {
            status: 400,
            text: JSON.stringify({
              error: { code: 'invalid_input', message: 'Last-Event-ID (afterSeq) must be an integer' },
            }),
          }
        : undefined;
    const task = new FakeTask('t1', 3);
    const watch = client.watch('t1');
    const log = record(watch);
    await flush();
    const first = sse.streams[0] as SseRequest;
    first.send({ type: 'snapshot', task: task.view(), epoch: 'e1' }, 0);
    first.send({ type: 'event', event: task.item('a') }, 1);
    first.end();
    await scheduler.advance(1000);
    await flush();
    // Before, the 400 was taken for a cut: the same id again every httpPollIntervalMs, and the watch never
    // got past seq 1.
    expect(sse.streams.map((request) => request.headers['last-event-id'])).toEqual([undefined, '1~e1', '1']);
    const resumed = sse.streams[2] as SseRequest;
    resumed.send({ type: 'event', event: task.item('b') }, 2);
    resumed.send({ type: 'event', event: task.end() }, 3);
    resumed.end();
    expect((await watch.done).status).toBe('completed');
    expect(log).toEqual(['snapshot@0', 'item@1', 'item@2', 'completed@3', 'finished@3']);
    await client.close();
  });

  it('after a reload, resumes a saved cursor with the epoch saved with it', async () => {
    const storage = new MemoryCursorStorage();
    const first = sseSetup({ preferFallback: true, persistence: storage });
    const task = new FakeTask('t1', 5);
    first.client.watch('t1');
    await flush();
    const stream = first.sse.streams[0] as SseRequest;
    stream.send({ type: 'snapshot', task: task.view(), epoch: 'epoch-1' });
    stream.send({ type: 'event', event: task.item('a') });
    stream.send({ type: 'event', event: task.item('b') });
    await first.scheduler.advance(PROGRESS_CLIENT_DEFAULTS.ackDelayMs); // the save
    // The page reloads: the old client is gone without a goodbye.
    const second = sseSetup({ preferFallback: true, persistence: storage });
    second.client.watch('t1');
    await flush();
    expect(second.sse.streams[0]?.headers['last-event-id']).toBe('2~epoch-1');
    await first.client.close();
    await second.client.close();
  });

  it('drops the saved cursor of a watch whose end it acknowledged: a later watch of the id starts from 0', async () => {
    // The entry stayed: the next watch of the id (after a reload, or of a new task created under the
    // purged id) restored the finished cursor and showed the old end at once, without asking the server
    // (found by the chaos suite's SSE watchers of re-created ids, 5 December 2026).
    const storage = new MemoryCursorStorage();
    const first = sseSetup({ preferFallback: true, persistence: storage });
    const old = new FakeTask('t1', 2);
    const watch = first.client.watch('t1');
    await flush();
    const stream = first.sse.streams[0] as SseRequest;
    stream.send({ type: 'snapshot', task: old.view() });
    stream.send({ type: 'event', event: old.item('a') }, 1);
    await first.scheduler.advance(1000); // the coalesced save of seq 1
    expect(storage.size).toBe(1);
    stream.send({ type: 'event', event: old.end() }, 2);
    stream.end();
    expect((await watch.done).status).toBe('completed');
    await first.scheduler.advance(5000);
    expect(first.sse.acks).toHaveLength(1);
    expect(storage.size).toBe(0);
    await first.client.close(); // a reload: no handle closed

    const second = sseSetup({ preferFallback: true, persistence: storage });
    const again = second.client.watch('t1');
    await flush();
    expect(again.getSnapshot()).toMatchObject({ seq: 0, status: 'running' });
    expect(second.sse.streams).toHaveLength(1);
    expect(second.sse.streams[0]?.headers['last-event-id']).toBeUndefined();
    await second.client.close();
  });

  it('sends a terminal ack refused for its credential (401: expired as the task ended) again, with a fresh token', async () => {
    // Until 6 December 2026 the 401 was taken for an answer, as a 404 is: the ack was lost, and the task's
    // acked_seq stayed below its end.
    let issued = 0;
    const { client, sse, scheduler } = sseSetup({
      preferFallback: true,
      httpPollIntervalMs: 1000,
      token: async () => `tok-${++issued}`,
    });
    const task = new FakeTask('t1', 1);
    const watch = client.watch('t1');
    await flush();
    const stream = sse.streams[0] as SseRequest;
    sse.ackRefusals = [401];
    stream.send({ type: 'snapshot', task: task.view() });
    stream.send({ type: 'event', event: task.end() }, 1);
    stream.end();
    await watch.done;
    await scheduler.advance(60_000);
    expect(sse.acks.map((ack) => ack.headers.authorization)).toEqual(['Bearer tok-2', 'Bearer tok-3']);
    expect(sse.acks.map((ack) => JSON.parse(ack.body ?? ''))).toEqual([{ seq: 1 }, { seq: 1 }]);
    await client.close();
  });

  it('sends a terminal ack again after a failure answer (502, 503, 429), with backoff, until answered, 8 times at most; not after another 4xx', async () => {
    // Sent once: a proxy's 502 (the replica died under the request) lost it for good, and the server, which
    // re-sends a terminal frame on a socket until acknowledged, has nothing to re-send over SSE: the task's
    // acked_seq stayed below its end (found by the chaos suite's SSE watchers, 5 December 2026).
    const { client, sse, scheduler } = sseSetup({ preferFallback: true, httpPollIntervalMs: 1000 });
    /** Watches a one-item task `taskId` to its end over its own stream (the `index`th opened). */
    const endOverStream = async (taskId: string, index: number) => {
      const task = new FakeTask(taskId, 1);
      const watch = client.watch(taskId);
      await flush();
      const stream = sse.streams[index] as SseRequest;
      stream.send({ type: 'snapshot', task: task.view() });
      stream.send({ type: 'event', event: task.end() }, 1);
      stream.end();
      return watch.done;
    };
    sse.ackRefusals = [502, 503];
    expect((await endOverStream('t1', 0)).status).toBe('completed');
    await flush();
    expect(sse.acks).toHaveLength(1);
    await scheduler.advance(60_000);
    expect(sse.acks.map((ack) => JSON.parse(ack.body ?? ''))).toEqual([{ seq: 1 }, { seq: 1 }, { seq: 1 }]);
    // Refused for good (400, 404: the task is gone or the seq is not its): not asked again.
    sse.ackRefusals = [404];
    await endOverStream('t2', 1);
    await scheduler.advance(60_000);
    expect(sse.acks).toHaveLength(4);
    // Refused for now (429: the principal's rate budget, shared by its streams and acks, ran out): asked
    // again, as after a 503. Taken for an answer, it was lost.
    sse.ackRefusals = [429];
    await endOverStream('t4', 2);
    await scheduler.advance(60_000);
    expect(sse.acks).toHaveLength(6);
    // Never answered: sent 8 times in all, then left.
    sse.ackRefusals = Array.from({ length: 20 }, () => 503);
    await endOverStream('t3', 3);
    await scheduler.advance(600_000);
    expect(sse.acks).toHaveLength(6 + 8);
    expect(scheduler.pending).toBe(0);
    await client.close();
    expect(scheduler.pending).toBe(0);
  });

  it('gives up on an ack left unanswered at connectTimeoutMs and sends it again with the ack backoff', async () => {
    // No deadline: an ack a proxy held (no answer, no error) was never settled, so never sent again, and the
    // task's acked seq stayed below its end.
    const { client, sse, scheduler } = sseSetup({
      preferFallback: true,
      httpPollIntervalMs: 1000,
      connectTimeoutMs: 4000,
    });
    const task = new FakeTask('t1', 1);
    const watch = client.watch('t1');
    await flush();
    const stream = sse.streams[0] as SseRequest;
    sse.ackHangs = 2;
    stream.send({ type: 'snapshot', task: task.view() });
    stream.send({ type: 'event', event: task.end() }, 1);
    stream.end();
    await watch.done;
    await flush();
    expect(sse.acks).toHaveLength(1);
    await scheduler.advance(3999);
    expect(sse.acks[0]?.aborted()).toBe(false);
    await scheduler.advance(1);
    expect(sse.acks[0]?.aborted()).toBe(true);
    // Then the ack backoff (httpPollIntervalMs's full-jitter step, random 0.5), the deadline again, and so on.
    await scheduler.advance(60_000);
    expect(sse.acks.map((ack) => JSON.parse(ack.body ?? ''))).toEqual([{ seq: 1 }, { seq: 1 }, { seq: 1 }]);
    expect(scheduler.pending).toBe(0);
    await client.close();
  });

  it('gives an ack the whole of a connectTimeoutMs above 2^31 - 1 ms, not 1 ms (the timer functions fire a longer delay at once)', async () => {
    // Until 7 December 2026 the ack's deadline took connectTimeoutMs as is: a host's setTimeout fires a delay
    // above 2^31 - 1 ms after 1 ms (Node warns), so every ack over HTTP was aborted as it went out, 8 times.
    const { client, sse, scheduler } = sseSetup({ preferFallback: true, connectTimeoutMs: 2 ** 40 });
    const task = new FakeTask('t1', 1);
    const watch = client.watch('t1');
    await flush();
    const stream = sse.streams[0] as SseRequest;
    sse.ackHangs = 1;
    stream.send({ type: 'snapshot', task: task.view() });
    stream.send({ type: 'event', event: task.end() }, 1);
    stream.end();
    await watch.done;
    await flush();
    expect(sse.acks).toHaveLength(1);
    expect(Math.max(...scheduler.delays)).toBeLessThanOrEqual(2 ** 31 - 1);
    await client.close();
  });

  it('gives up at connectTimeoutMs on an ack still unanswered when the client closes (no request left behind)', async () => {
    // close() cleared the ack's deadline with the client's other timers, and nothing else ended the request:
    // a server or proxy holding it kept it out for good, and a Node process with it (undici's socket, 300 s).
    const { client, sse, scheduler } = sseSetup({ preferFallback: true, connectTimeoutMs: 4000 });
    const task = new FakeTask('t1', 1);
    const watch = client.watch('t1');
    await flush();
    const stream = sse.streams[0] as SseRequest;
    sse.ackHangs = 1;
    stream.send({ type: 'snapshot', task: task.view() });
    stream.send({ type: 'event', event: task.end() }, 1);
    stream.end();
    await watch.done;
    await flush();
    expect(sse.acks).toHaveLength(1);
    await client.close();
    await scheduler.advance(3999);
    expect(sse.acks[0]?.aborted()).toBe(false);
    await scheduler.advance(1);
    expect(sse.acks[0]?.aborted()).toBe(true);
    // Not sent again after the close, and nothing left.
    await scheduler.advance(60_000);
    expect(sse.acks).toHaveLength(1);
    expect(scheduler.pending).toBe(0);
  });

  it('gives up on an ack whose token function never returns at connectTimeoutMs, and sends it again', async () => {
    // The deadline aborted a `fetch` that was never called: the ack waited on the token for ever, with no
    // timer left, and was never sent.
    let calls = 0;
    let hang = false;
    const token = () =>
      hang && ++calls === 1 ? new Promise<string>(() => undefined) : Promise.resolve('tok');
    const { client, sse, scheduler } = sseSetup({ preferFallback: true, httpPollIntervalMs: 1000, token });
    const task = new FakeTask('t1', 1);
    const watch = client.watch('t1');
    await flush();
    const stream = sse.streams[0] as SseRequest;
    hang = true;
    stream.send({ type: 'snapshot', task: task.view() });
    stream.send({ type: 'event', event: task.end() }, 1);
    stream.end();
    await watch.done;
    await scheduler.advance(9_999);
    expect(sse.acks).toHaveLength(0);
    // connectTimeoutMs (10 s), then the ack backoff's first step (httpPollIntervalMs + a full-jitter step of
    // it, random 0.5).
    await scheduler.advance(1 + 1499);
    expect(sse.acks).toHaveLength(0);
    await scheduler.advance(1);
    expect(sse.acks.map((ack) => JSON.parse(ack.body ?? ''))).toEqual([{ seq: 1 }]);
    expect(sse.acks[0]?.headers.authorization).toBe('Bearer tok');
    await scheduler.advance(60_000);
    expect(sse.acks).toHaveLength(1);
    await client.close();
  });

  it('reports a frame it rejects on the watch (invalid_frame) and reopens the stream from the cursor, backing off when it comes again', async () => {
    // Dropped without a word: the watch stalled on the missing event (every later one out of order) until
    // the stream ended, perhaps not before the task did.
    const { client, sse, scheduler } = sseSetup({ preferFallback: true });
    const task = new FakeTask('t1', 4);
    task.item('z');
    const watch = client.watch('t1');
    const log = record(watch);
    const errors: unknown[] = [];
    watch.on('error', (error) => errors.push(error));
    await flush();
    const first = sse.streams[0] as SseRequest;
    first.write(OPENING);
    first.send({ type: 'snapshot', task: task.view() });
    const a = task.item('a');
    const b = task.item('b');
    const invalid = `id: 2\ndata: ${JSON.stringify({ type: 'event', event: { ...a, seq: 'one' } })}\n\n`;
    first.write(invalid);
    first.send({ type: 'event', event: b }, 3);
    await flush();
    expect(log).toEqual(['snapshot@1', 'error:invalid_frame']);
    expect(errors[0]).toMatchObject({ code: 'invalid_frame', taskId: 't1' });
    expect(first.aborted()).toBe(true);
    // Reopened from the cursor after a step of backoff (reconnect.initialDelayMs, full jitter, random 0.5).
    await scheduler.advance(499);
    expect(sse.streams).toHaveLength(1);
    await scheduler.advance(1);
    const second = sse.streams[1] as SseRequest;
    expect(second.headers['last-event-id']).toBe('1');
    // The same frame again: reported again, and the next open waits longer (a server repeating it is not
    // asked again at once, for ever).
    second.write(invalid);
    await flush();
    expect(second.aborted()).toBe(true);
    await scheduler.advance(999);
    expect(sse.streams).toHaveLength(2);
    await scheduler.advance(1);
    const third = sse.streams[2] as SseRequest;
    third.send({ type: 'event', event: a }, 2);
    third.send({ type: 'event', event: b }, 3);
    // A frame type it does not know (a newer server's): reported, and the stream goes on.
    third.write(`data: ${JSON.stringify({ type: 'hint', taskId: 't1' })}\n\n`);
    third.send({ type: 'event', event: task.end() }, 4);
    expect((await watch.done).status).toBe('completed');
    expect(log).toEqual([
      'snapshot@1',
      'error:invalid_frame',
      'error:invalid_frame',
      'item@2',
      'item@3',
      'error:unknown_frame',
      'completed@4',
      'finished@4',
    ]);
    expect(third.aborted()).toBe(false);
    await client.close();
  });

  it('takes over from HTTP polling once the socket fails, and leaves at the first hello', async () => {
    const ctx = sseSetup({
      httpFallbackAfterAttempts: 1,
      httpPollIntervalMs: 1000,
      headers: { 'x-app': 'a' },
    });
    const { client, server, scheduler, http, sse } = ctx;
    client.watch('t1');
    server.last.serverClose(1006);
    await scheduler.advance(0);
    expect(sse.streams).toHaveLength(1);
    expect(sse.streams[0]?.headers).toEqual({ 'x-app': 'a', accept: 'text/event-stream' });
    expect(http.requests).toEqual([]);

    await nextSocket(ctx, 2);
    (sse.streams[0] as SseRequest).end(); // cut: a reopen is due in 1000 ms
    await flush();
    const socket = server.accept(); // the socket comes back before it
    expect(socket.frames('subscribe')).toEqual([{ type: 'subscribe', taskId: 't1', afterSeq: 0 }]);
    client.watch('t2');
    await scheduler.advance(5000);
    // Neither the due reopen nor the new watch opened a stream: the socket serves both.
    expect(sse.streams).toHaveLength(1);
    await client.close();
  });

  it('stops its streams at a hello and when the client closes', async () => {
    const ctx = sseSetup({ httpFallbackAfterAttempts: 1 });
    const { client, server, scheduler, sse } = ctx;
    client.watch('t1');
    server.last.serverClose(1006);
    await scheduler.advance(0);
    const stream = sse.streams[0] as SseRequest;
    await nextSocket(ctx, 2);
    expect(stream.aborted()).toBe(false);
    server.accept();
    expect(stream.aborted()).toBe(true);

    server.last.serverClose(1006); // the open socket lost, then an attempt that fails
    await nextSocket(ctx, 3);
    server.last.serverClose(1006);
    await scheduler.advance(0);
    const again = sse.streams[1] as SseRequest;
    expect(again.aborted()).toBe(false);
    await client.close();
    expect(again.aborted()).toBe(true);
    expect(scheduler.pending).toBe(0);
  });

  it('stops the stream of a watch whose last handle closed, and a new watch of the task gets its own', async () => {
    const { client, sse, scheduler } = sseSetup({ preferFallback: true, httpPollIntervalMs: 1000 });
    const task = new FakeTask('t1', 3);
    const first = client.watch('t1');
    await flush();
    const stream = sse.streams[0] as SseRequest;
    stream.send({ type: 'snapshot', task: task.view() }, 0);
    stream.send({ type: 'event', event: task.item('a') }, 1);
    await flush();
    first.close();
    await flush();
    expect(stream.aborted()).toBe(true);

    const second = client.watch('t1');
    const log = record(second);
    await flush();
    expect(sse.streams).toHaveLength(2);
    const fresh = sse.streams[1] as SseRequest;
    task.item('b');
    task.item('c');
    task.end();
    fresh.send({ type: 'snapshot', task: task.view() }, task.seq);
    fresh.end();
    await scheduler.advance(5000);
    expect(second.getSnapshot()).toMatchObject({ seq: 4, finished: true });
    expect(log).toEqual(['snapshot@4', 'completed@4', 'finished@4']);
    await client.close();
  });

  it('with preferFallback, a watch of an id whose end was acknowledged over a stream, its handle held open, asks the server again', async () => {
    // As over a socket: the id may name a new run by now (purged and created again). Before, the old
    // subscription was shared, the socket never having acknowledged its end: the new watch resolved at once
    // with the old run's end, and no stream asked the server.
    const { client, scheduler, sse } = sseSetup({ preferFallback: true });
    const old = new FakeTask('t1', 1);
    old.end();
    const first = client.watch('t1'); // held open by the page (a list of jobs)
    await flush();
    const stream = sse.streams[0] as SseRequest;
    stream.send({ type: 'snapshot', task: old.view() }, old.seq);
    stream.end();
    expect((await first.done).seq).toBe(1);
    await scheduler.advance(1000);
    expect(sse.acks).toHaveLength(1);
    const rerun = new FakeTask('t1', 3);
    rerun.item('a');
    const second = client.watch('t1');
    let settled = false;
    void second.done.then(
      () => (settled = true),
      () => undefined,
    );
    await flush();
    expect(settled).toBe(false);
    expect(sse.streams).toHaveLength(2);
    (sse.streams[1] as SseRequest).send({ type: 'snapshot', task: rerun.view() }, rerun.seq);
    await flush();
    expect(second.getSnapshot()).toMatchObject({ status: 'running', seq: 1, finished: false });
    // The old handle keeps its run's end.
    expect(first.getSnapshot()).toMatchObject({ status: 'completed', seq: 1 });
    await client.close();
  });

  it('with preferFallback, lets go of a task whose end it acknowledged over its stream: a long-lived page keeps none of them', async () => {
    // No socket, so no heartbeat to let go of it at: until 6 December 2026 every job a page watched over
    // SSE stayed in the client with its handles, their listeners and their listener on the signal.
    const { client, scheduler, sse } = sseSetup({ preferFallback: true });
    const controller = new AbortController();
    const listeners = () => getEventListeners(controller.signal, 'abort').length;
    const handles = [];
    for (let i = 0; i < 5; i++) {
      const job = new FakeTask(`job-${i}`, 1);
      job.item('a');
      job.end();
      const handle = client.watch(job.id, { signal: controller.signal });
      const onFinished = vi.fn();
      handle.on('finished', onFinished);
      await flush();
      const stream = sse.streams.at(-1) as SseRequest;
      stream.send({ type: 'snapshot', task: job.view() }, job.seq);
      stream.end();
      expect((await handle.done).status).toBe('completed');
      await flush();
      expect(onFinished).toHaveBeenCalledTimes(1);
      handles.push(handle);
    }
    await scheduler.advance(1000);
    expect(sse.acks).toHaveLength(5);
    for (const handle of handles) {
      expect(handle.closed).toBe(true);
      // It keeps its final state; its listeners are gone.
      expect(handle.getSnapshot()).toMatchObject({ status: 'completed', seq: 2 });
      expect(handle.listenerCount('finished')).toBe(0);
    }
    expect(listeners()).toBe(0);
    await client.close();
  });

  it('acknowledges the end of a new run of an id whose old run, still held open, ended over a stream', async () => {
    const ctx = sseSetup({ httpFallbackAfterAttempts: 1 });
    const { client, server, scheduler, sse } = ctx;
    const old = new FakeTask('t1', 1);
    old.end();
    const first = client.watch('t1'); // held open by the page (a list of jobs)
    server.last.serverClose(1006);
    await scheduler.advance(0);
    const stream = sse.streams[0] as SseRequest;
    stream.send({ type: 'snapshot', task: old.view() }, old.seq);
    stream.end();
    expect((await first.done).seq).toBe(1);
    await flush();
    expect(sse.acks).toHaveLength(1);
    // Its end acknowledged over the stream, the socket has nothing more to ask about the task (until 5
    // December 2026 it reconnected to acknowledge it again, and a new watch of the id shared the old run).
    await scheduler.advance(60_000);
    expect(server.sockets).toHaveLength(1);
    // The id purged and created again: a new watch of it, followed over a stream once the socket fails.
    const rerun = new FakeTask('t1', 1);
    rerun.item('a');
    rerun.end();
    const second = client.watch('t1');
    await nextSocket(ctx, 2);
    server.last.serverClose(1006);
    await scheduler.advance(0);
    const next = sse.streams.at(-1) as SseRequest;
    next.send({ type: 'snapshot', task: rerun.view() }, rerun.seq);
    next.end();
    expect((await second.done).seq).toBe(2);
    await flush();
    // Before, the old run's ack over the fallback was remembered by task id: the new run's was never sent.
    expect(sse.acks.map((ack) => JSON.parse(ack.body ?? ''))).toEqual([{ seq: 1 }, { seq: 2 }]);
    await client.close();
  });

  it('forgets a finished watch whose last handle closed: a new watch of the task acknowledges its own end', async () => {
    // The set of tasks acknowledged over the fallback held every finished task for the client's life
    // (a page watching many jobs one after another); a new watch of one of them never acknowledged.
    const { client, sse, scheduler } = sseSetup({ preferFallback: true, httpPollIntervalMs: 1000 });
    const task = new FakeTask('t1', 1);
    task.end();
    for (const round of [1, 2]) {
      const watch = client.watch('t1');
      await flush();
      const stream = sse.streams[round - 1] as SseRequest;
      stream.send({ type: 'snapshot', task: task.view() }, task.seq);
      stream.end();
      expect((await watch.done).status).toBe('completed');
      await scheduler.advance(5000);
      expect(sse.acks, `acks after watch ${round}`).toHaveLength(round);
      watch.close();
      await flush();
    }
    await client.close();
  });

  it.each([
    [404, 'task_not_found'],
    [403, 'forbidden'],
  ])(
    'ends a watch whose stream the server refuses with %i (%s), without asking again',
    async (status, code) => {
      const { client, sse, scheduler } = sseSetup({ preferFallback: true, httpPollIntervalMs: 1000 });
      sse.refusal = { status, text: JSON.stringify({ error: { code, message: 'no' } }) };
      const watch = client.watch('t1');
      const outcome = watch.done.then(
        () => 'resolved',
        (error: { code?: string }) => `rejected:${error.code}`,
      );
      await scheduler.advance(60_000);
      expect(await outcome).toBe(`rejected:${code}`);
      expect(sse.streams).toHaveLength(1);
      await client.close();
    },
  );

  it('closes the client when the stream is refused for lack of credentials (401), as the HTTP fallback does', async () => {
    const { client, sse, scheduler } = sseSetup({ preferFallback: true });
    sse.refusal = { status: 401, text: '' };
    const errors: string[] = [];
    client.on('error', (error) => errors.push(error.code));
    const watch = client.watch('t1');
    const outcome = watch.done.catch((error: { code?: string }) => error.code);
    await scheduler.advance(1000);
    expect(client.state).toBe('closed');
    expect(errors).toContain('unauthenticated');
    // The watch ends with the refusal, as over the HTTP fallback (toBeDefined held for any code, or a state).
    expect(await outcome).toBe('unauthenticated');
  });

  it('asks again at once with a fresh token for a stream refused as expired (401 token_expired); closes the client with token_expired when the fresh one is too', async () => {
    // Until 6 December 2026 a stream refused as expired was reported on the watch and asked again after a
    // failed open's backoff, for ever, where the socket reconnects at once with a fresh token (and HTTP
    // polling asks again at once), and stops at a second expiry before any hello.
    let issued = 0;
    const { client, sse, scheduler, errors } = sseSetup({
      preferFallback: true,
      token: async () => `tok-${++issued}`,
    });
    /** Tokens the server takes for expired: the first, then (from `alwaysExpired`) every one. */
    let alwaysExpired = false;
    sse.refuses = (headers) =>
      alwaysExpired || headers.authorization === 'Bearer tok-1'
        ? { status: 401, text: JSON.stringify({ error: { code: 'token_expired', message: 'expired' } }) }
        : undefined;
    const task = new FakeTask('t1', 3);
    const watch = client.watch('t1');
    const log = record(watch);
    await flush();
    // The expired token's request, then at once the same with a fresh one, which is served.
    expect(sse.streams.map((stream) => stream.headers.authorization)).toEqual([
      'Bearer tok-1',
      'Bearer tok-2',
    ]);
    const served = sse.streams[1] as SseRequest;
    served.write(OPENING);
    served.send({ type: 'snapshot', task: task.view() }, 0);
    await flush();
    expect(log).toEqual(['snapshot@0']);
    expect(errors).toEqual([]);
    // The token function hands out expired credentials from now on: the stream's reopen is refused, and its
    // fresh token's too: the client stops, as the socket does.
    alwaysExpired = true;
    served.end();
    await scheduler.advance(1000);
    expect(sse.streams.slice(2).map((stream) => stream.headers.authorization)).toEqual([
      'Bearer tok-3',
      'Bearer tok-4',
    ]);
    expect(client.state).toBe('closed');
    expect(errors.map((error) => error.code)).toEqual([ErrorCode.TokenExpired]);
    await expect(watch.done).rejects.toMatchObject({ code: ErrorCode.TokenExpired });
    await scheduler.advance(60_000);
    expect(sse.streams).toHaveLength(4);
  });

  it('asks again for a stream the server refuses for now (503, 429) with backoff, as the socket reconnects, and reports it', async () => {
    // Asked again every httpPollIntervalMs whatever the refusal, a watch sent a server out of store or
    // over its socket cap a request every 2 s for ever, and every watch of the page did the same.
    const { client, sse, scheduler } = sseSetup({ preferFallback: true });
    sse.refusal = {
      status: 503,
      text: JSON.stringify({ error: { code: 'store_unavailable', message: 'down' } }),
    };
    const task = new FakeTask('t1', 3);
    const watch = client.watch('t1');
    const log = record(watch);
    await scheduler.advance(60_000);
    // A full-jitter step of 1 s doubling, up to 30 s (random 0.5): at 0, 0.5, 1.5, 3.5, 7.5, 15.5, 30.5, 45.5 s.
    expect(sse.streams).toHaveLength(8);
    expect(log).toEqual(Array(8).fill('error:store_unavailable'));
    // Served again (the next request at 60.5 s): the stream delivers and stays up stableConnectionMs, so
    // the count starts over and its cut is reopened at once.
    sse.refusal = undefined;
    await scheduler.advance(500);
    expect(sse.streams).toHaveLength(9);
    const served = sse.streams[8] as SseRequest;
    served.send({ type: 'snapshot', task: task.view() }, 0);
    await scheduler.advance(1000);
    served.end();
    await scheduler.advance(50);
    expect(sse.streams).toHaveLength(10);
    await client.close();
  });

  it('keeps the backoff of a refused stream while the socket goes on failing: a failed attempt does not ask again', async () => {
    // Each failed socket attempt past httpFallbackAfterAttempts started the fallback again, which opened a
    // stream for every watch without one: a refused one too, before its backoff was over.
    const ctx = sseSetup({ httpFallbackAfterAttempts: 1 });
    const { client, server, scheduler, sse } = ctx;
    sse.refusal = {
      status: 429,
      text: JSON.stringify({ error: { code: 'too_many_sockets', message: 'cap' } }),
    };
    const start = scheduler.now();
    const attempts: number[] = [];
    client.watch('t1');
    server.last.serverClose(1006);
    await scheduler.advance(0);
    expect(sse.streams).toHaveLength(1);
    // Socket attempts fail meanwhile (at 0.5, 1.5 and 3.5 s with random 0.5): the stream is asked again at
    // the pace of its own refusals (the same: at 0.5, 1.5, 3.5 s), once each time, not again at each attempt.
    for (let attempt = 2; attempt <= 4; attempt++) {
      await nextSocket(ctx, attempt);
      server.last.serverClose(1006);
      attempts.push(scheduler.now() - start);
      await flush();
      expect(sse.streams).toHaveLength(attempt);
    }
    expect(attempts).toEqual([500, 1500, 3500]);
    await scheduler.advance(start + 7499 - scheduler.now());
    expect(sse.streams).toHaveLength(4);
    await scheduler.advance(1);
    expect(sse.streams).toHaveLength(5);
    await client.close();
  });

  it('takes a refusal without a status (a fetch that gives none) for a cut, and asks again', async () => {
    const { client, sse, scheduler } = sseSetup({ preferFallback: true, httpPollIntervalMs: 1000 });
    sse.refusal = { status: 404, text: '', withStatus: false };
    client.watch('t1');
    await scheduler.advance(5500);
    expect(sse.streams.length).toBeGreaterThan(3);
    await client.close();
  });

  it('with preferFallback, the 100% watchdog starts the stream over instead of opening a socket', async () => {
    const { client, server, sse, scheduler } = sseSetup({ preferFallback: true, finishTimeoutMs: 1000 });
    const task = new FakeTask('t1', 1);
    task.item('a');
    client.watch('t1');
    await flush();
    (sse.streams[0] as SseRequest).send({ type: 'snapshot', task: task.view() }, 1);
    await scheduler.advance(10_000);
    expect(server.sockets).toHaveLength(0);
    // Its steps (resync, then what would have been a reconnect) each started the stream over.
    expect(sse.streams.length).toBeGreaterThanOrEqual(3);
    expect((sse.streams[0] as SseRequest).aborted()).toBe(true);
    expect(sse.streams.at(-1)?.headers['last-event-id']).toBe('1');
    await client.close();
  });
});

describe('the SSE fallback transport when a watch ends another way', () => {
  it('stops the stream of a watch ended while it streamed (the 100% watchdog read task_not_found over HTTP): a new watch of the id gets a stream of its own', async () => {
    // Left open, the old watch's stream kept the id's place: the new watch opened none, got the old
    // stream's frames from the old cursor (a gap it could not resync), and none once that stream ended.
    const { client, sse, scheduler, http } = sseSetup({ preferFallback: true, finishTimeoutMs: 1000 });
    const task = new FakeTask('t1', 1);
    task.item('a');
    const first = client.watch('t1');
    const outcome = first.done.catch((error: { code?: string }) => error.code);
    await flush();
    const stream = sse.streams[0] as SseRequest;
    stream.write(OPENING);
    stream.send({ type: 'snapshot', task: task.view() }, 1);
    // At 100% without its end: the watchdog's steps restart the stream, then read the task over HTTP,
    // which the store no longer has (404).
    for (let i = 0; i < 20 && first.closed === false; i++) {
      await scheduler.advance(1000);
      (sse.streams.at(-1) as SseRequest).write(OPENING);
    }
    expect(await outcome).toBe('task_not_found');
    expect(http.count('/tasks/t1/events')).toBeGreaterThan(0);
    expect(sse.streams.filter((request) => request.live())).toHaveLength(0);
    // The id is created again, and watched again: over a stream of its own, from 0.
    const again = new FakeTask('t1', 2);
    const second = client.watch('t1');
    await flush();
    const fresh = sse.streams.at(-1) as SseRequest;
    expect(fresh.live()).toBe(true);
    expect(fresh.headers['last-event-id']).toBeUndefined();
    fresh.send({ type: 'snapshot', task: again.view() }, 0);
    fresh.send({ type: 'event', event: again.item('x') }, 1);
    await flush();
    expect(second.getSnapshot()).toMatchObject({ status: 'running', seq: 1 });
    await client.close();
  });
});

describe('the SSE fallback transport when a watch ends while its stream waits to reopen', () => {
  it('acknowledges an end the 100% watchdog read over HTTP while the stream was refused, and lets go of the task', async () => {
    // Its stream refused for now (a 503, the principal's stream cap), the watch got its end from the
    // watchdog's HTTP step; the stream's retry then found the watch finished and opened nothing, and
    // nothing else acknowledged the end or let go of the task: with preferFallback, never.
    const { client, sse, scheduler, http } = sseSetup({ preferFallback: true, finishTimeoutMs: 1000 });
    const task = new FakeTask('t1', 1);
    task.item('a');
    http.tasks.set('t1', task);
    const watch = client.watch('t1');
    await flush();
    const stream = sse.streams[0] as SseRequest;
    stream.write(OPENING);
    stream.send({ type: 'snapshot', task: task.view() }, 1);
    await flush();
    sse.refusal = {
      status: 503,
      text: JSON.stringify({ error: { code: 'store_unavailable', message: 'down' } }),
    };
    stream.end(); // cut: every reopen is refused from now on
    task.end();
    for (let i = 0; i < 60 && watch.closed === false; i++) await scheduler.advance(1000);
    expect(http.count('/tasks/t1/events')).toBeGreaterThan(0);
    expect((await watch.done).status).toBe('completed');
    expect(sse.acks.map((ack) => JSON.parse(ack.body ?? ''))).toEqual([{ seq: 2 }]);
    expect(watch.closed).toBe(true);
    await client.close();
  });
});

describe('the pace of reopening an SSE stream (the socket’s: reconnect-pacing.ts)', () => {
  // A stream cut after it delivered was reopened only after httpPollIntervalMs (2 s), as after a failed
  // open: in the chaos run, SSE watchers were the tail of terminal commit → callback (max 4,158 ms,
  // against 2,687 without them). A failed open was asked again every 2 s for ever, never backing off.

  it('reopens a stream cut after it delivered at once, from Last-Event-ID; one up less than stableConnectionMs after a step at most', async () => {
    const { client, sse, scheduler } = sseSetup({ preferFallback: true }); // httpPollIntervalMs 2 s
    const task = new FakeTask('t1', 5);
    const log = record(client.watch('t1'));
    await flush();
    const first = sse.streams[0] as SseRequest;
    first.send({ type: 'snapshot', task: task.view(), epoch: 'e1' }, 0);
    first.send({ type: 'event', event: task.item('a') }, 1);
    await scheduler.advance(5000);
    first.end(); // a proxy's timeout, a replica's restart: within reconnect.firstDelayMs (100 ms; random 0.5)
    await scheduler.advance(49);
    expect(sse.streams).toHaveLength(1);
    await scheduler.advance(1);
    expect(sse.streams).toHaveLength(2);
    const second = sse.streams[1] as SseRequest;
    expect(second.headers['last-event-id']).toBe('1~e1');
    // Served (a heartbeat counts) but cut within stableConnectionMs, as by a flapping server: one step of
    // reconnect.initialDelayMs (1 s; random 0.5), never a tight loop.
    second.heartbeat();
    await scheduler.advance(100);
    second.end();
    await scheduler.advance(499);
    expect(sse.streams).toHaveLength(2);
    await scheduler.advance(1);
    expect(sse.streams).toHaveLength(3);
    const third = sse.streams[2] as SseRequest;
    expect(third.headers['last-event-id']).toBe('1~e1');
    third.send({ type: 'event', event: task.item('b') }, 2);
    await scheduler.advance(1000); // up stableConnectionMs: its cut is reopened at once again
    third.end();
    await scheduler.advance(50);
    expect(sse.streams).toHaveLength(4);
    expect(sse.streams[3]?.headers['last-event-id']).toBe('2~e1');
    expect(log).toEqual(['snapshot@0', 'item@1', 'item@2']);
    await client.close();
    expect(scheduler.pending).toBe(0);
  });

  it('backs off over failed opens (no answer, a 503, a stream ended with nothing) until a stream stays up', async () => {
    const sse = new FakeSse();
    const asked: number[] = [];
    let now = () => 0;
    /** Whether the next stream is served for good; else it fails in turn each of the three ways. */
    let serve = false;
    const fetch: StreamingFetch = async (url, init) => {
      asked.push(now());
      const failure = asked.length % 3;
      sse.refusal = serve
        ? undefined
        : failure === 1
          ? { status: 0, text: '', withStatus: false }
          : failure === 2
            ? { status: 503, text: JSON.stringify({ error: { code: 'store_unavailable', message: 'down' } }) }
            : undefined;
      const response = await sse.fetch(url, init);
      if (!serve && failure === 0) sse.streams.at(-1)?.end();
      return response;
    };
    const { client, scheduler } = setup({ preferFallback: true, fallbackTransport: sseFallback({ fetch }) });
    const start = scheduler.now();
    now = () => scheduler.now() - start;
    const task = new FakeTask('t1', 5);
    client.on('error', () => undefined);
    client.watch('t1');
    await scheduler.advance(60_000);
    // A full-jitter step of reconnect.initialDelayMs (1 s) doubling to 30 s (random 0.5).
    expect(asked).toEqual([0, 500, 1500, 3500, 7500, 15_500, 30_500, 45_500]);
    serve = true;
    await scheduler.advance(500);
    expect(asked).toHaveLength(9);
    const served = sse.streams.at(-1) as SseRequest;
    served.send({ type: 'snapshot', task: task.view() }, 0);
    await scheduler.advance(1000);
    serve = false;
    served.end(); // up stableConnectionMs: the backoff starts over, and this cut is reopened at once
    await scheduler.advance(2000);
    expect(asked.slice(8)).toEqual([60_500, 61_550, 62_050, 63_050]);
    await client.close();
  });

  it('backs off over 200 answers that are not an event stream (a captive portal’s or an SPA’s HTML page), as over failed opens', async () => {
    // Taken for a stream that was served and cut, such a page was asked for again within a second, for ever,
    // by every watch of the page.
    const asked: number[] = [];
    let now = () => 0;
    const fetch: StreamingFetch = async () => {
      asked.push(now());
      const html = new TextEncoder().encode(
        '<!doctype html>\n<html>\n\n<body>Sign in to the Wi-Fi</body></html>\n',
      );
      return {
        ok: true,
        status: 200,
        headers: { get: (name) => (name === 'content-type' ? 'text/html; charset=utf-8' : null) },
        body: new ReadableStream<Uint8Array>({
          start(controller) {
            controller.enqueue(html);
            controller.close();
          },
        }),
      };
    };
    const { client, scheduler } = setup({ preferFallback: true, fallbackTransport: sseFallback({ fetch }) });
    const start = scheduler.now();
    now = () => scheduler.now() - start;
    client.on('error', () => undefined);
    client.watch('t1');
    await scheduler.advance(20_000);
    // A full-jitter step of reconnect.initialDelayMs (1 s) doubling (random 0.5), as after any failed open.
    expect(asked).toEqual([0, 500, 1500, 3500, 7500, 15_500]);
    await client.close();
    expect(scheduler.pending).toBe(0);
  });

  // An open a frozen replica (a SIGSTOP'd process: its kernel accepts the connection) or a proxy holding
  // the request never answered waited the whole silence timeout (32 s by default), where a socket that
  // gets no `hello` waits connectTimeoutMs (10 s); and each reopen waited as long again.
  const unanswered: [string, (sse: FakeSse) => StreamingFetch][] = [
    [
      'no answer at all',
      (sse) => async (url, init) => {
        sse.requests.push({
          url,
          method: init.method,
          aborted: () => init.signal?.aborted === true,
        } as SseRequest);
        // As `fetch` does: it rejects when its signal aborts, and not before.
        return new Promise((_, reject) =>
          init.signal?.addEventListener('abort', () => reject(new Error('aborted'))),
        );
      },
    ],
    ['response headers, then not a byte', (sse) => sse.fetch],
  ];

  it.each(unanswered)(
    'gives up on an open that heard nothing (%s) at connectTimeoutMs, and backs off as after a failed open',
    async (_, fetchOf) => {
      const sse = new FakeSse();
      const { client, scheduler } = setup({
        preferFallback: true,
        // (The streams alone: by default, two such opens in a row move the client to HTTP polling, below.)
        fallbackTransport: sseFallback({ fetch: fetchOf(sse), pollAfterStalls: 0 }),
      });
      client.watch('t1');
      await flush();
      const at: number[] = [];
      const start = scheduler.now();
      for (let ms = 0; ms <= 40_000; ms += 50) {
        // Each stream's abort, seen within the 50 ms step it happened in.
        for (const stream of sse.streams.slice(at.length))
          if (stream.aborted()) at.push(scheduler.now() - start);
        await scheduler.advance(50);
      }
      const opened = sse.streams.length;
      // connectTimeoutMs (10 s) after each open; reopened after full-jitter steps of reconnect.initialDelayMs
      // (1 s, random 0.5) doubling, as a failed open: not within reconnect.firstDelayMs, as a served cut.
      expect(at).toEqual([10_000, 20_500, 31_500]);
      expect(opened).toBe(4); // the fourth opened at 33,500 ms, still waiting
      await client.close();
      expect(scheduler.pending).toBe(0);
    },
  );

  it('polls over HTTP after pollAfterStalls opens in a row that brought nothing (a proxy buffering the streams), until a hello; at once in the next fallback', async () => {
    // Behind a proxy that holds an event stream's bytes until it ends, every open stalled and was opened
    // again, for ever: the watch showed nothing of its task before the task's end.
    const ctx = sseSetup({ httpFallbackAfterAttempts: 1, httpPollIntervalMs: 1000 });
    const { client, server, scheduler, http, sse } = ctx;
    const task = new FakeTask('t1', 5);
    http.tasks.set('t1', task);
    const watch = client.watch('t1');
    server.last.serverClose(1006);
    await scheduler.advance(0);
    expect(sse.streams).toHaveLength(1);
    // Two opens of connectTimeoutMs (10 s), a failed open's step (1 s, random 0.5) between them.
    await scheduler.advance(20_499);
    expect(sse.streams).toHaveLength(2);
    expect(http.requests).toEqual([]);
    await scheduler.advance(1);
    expect(sse.streams.every((stream) => stream.aborted())).toBe(true);
    await flush();
    expect(http.requests.map((request) => request.url)).toEqual([
      'http://example.test/progress/tasks/t1',
      'http://example.test/progress/tasks/t1/events?afterSeq=0',
    ]);
    expect(watch.getSnapshot().progress).not.toBeNull();
    // Polling from now on; the socket's failed attempts meanwhile open no stream.
    await scheduler.advance(30_000);
    expect(sse.streams).toHaveLength(2);
    expect(http.requests.length).toBeGreaterThan(20);
    // A hello ends the polling; the next fallback polls at once, without stalling on streams first.
    await nextSocket(ctx, server.sockets.length + 1);
    server.accept();
    await scheduler.advance(0);
    const polled = http.requests.length;
    await scheduler.advance(10_000);
    expect(http.requests).toHaveLength(polled);
    server.last.serverClose(1006); // a cut, then a failed attempt
    await nextSocket(ctx, server.sockets.length + 1);
    server.last.serverClose(1006);
    await scheduler.advance(0);
    await flush();
    expect(http.requests.length).toBeGreaterThan(polled);
    expect(sse.streams).toHaveLength(2);
    await client.close();
  });

  it('counts stalled opens in a row only: a stream served in between starts the count over; without the HTTP fallback the streams go on', async () => {
    for (const withHttp of [true, false]) {
      const { client, scheduler, http, sse } = sseSetup({
        preferFallback: true,
        ...(!withHttp && { httpFallback: false }),
      });
      client.watch('t1');
      await flush();
      await scheduler.advance(10_000); // stalled
      await scheduler.advance(500);
      const served = sse.streams[1] as SseRequest;
      served.write(OPENING);
      await flush();
      served.end(); // served, then cut: reopened after a step at most
      await scheduler.advance(1000);
      expect(sse.streams).toHaveLength(3);
      await scheduler.advance(10_000); // stalled: one in a row
      expect(http.requests).toEqual([]);
      await scheduler.advance(2000);
      expect(sse.streams).toHaveLength(4);
      await scheduler.advance(10_000); // stalled: two in a row
      await flush();
      expect(http.requests.length > 0).toBe(withHttp);
      await scheduler.advance(60_000);
      if (withHttp) expect(sse.streams).toHaveLength(4);
      else expect(sse.streams.length).toBeGreaterThan(4);
      await client.close();
    }
  });

  it('gives up on an open whose token function never returns at connectTimeoutMs, and opens again', async () => {
    // The deadline aborted a `fetch` that was never called: the stream waited on the token for ever, with
    // no timer left, and its watch was stuck until the socket came back (or the page woke).
    const sse = new FakeSse();
    let calls = 0;
    const token = () => (++calls === 1 ? new Promise<string>(() => undefined) : Promise.resolve('tok'));
    const { client, scheduler } = setup({
      preferFallback: true,
      token,
      fallbackTransport: sseFallback({ fetch: sse.fetch }),
    });
    client.watch('t1');
    await scheduler.advance(9_999);
    expect(sse.streams).toHaveLength(0);
    // connectTimeoutMs (10 s), then a failed open's step (reconnect.initialDelayMs, 1 s; random 0.5).
    await scheduler.advance(501);
    expect(calls).toBe(2);
    expect(sse.streams).toHaveLength(1);
    expect(sse.streams[0]?.headers.authorization).toBe('Bearer tok');
    await client.close();
    expect(scheduler.pending).toBe(0);
  });

  it('takes connectTimeoutMs as given, and not a moment before it', async () => {
    const { client, sse, scheduler } = sseSetup({ preferFallback: true, connectTimeoutMs: 4000 });
    client.watch('t1');
    await flush();
    const first = sse.streams[0] as SseRequest;
    await scheduler.advance(3999);
    expect(first.aborted()).toBe(false);
    await scheduler.advance(1);
    expect(first.aborted()).toBe(true);
    await client.close();
  });

  it('keeps a stream that delivered its opening comment past connectTimeoutMs, until the silence timeout', async () => {
    const { client, sse, scheduler } = sseSetup({ preferFallback: true });
    client.watch('t1');
    await flush();
    const first = sse.streams[0] as SseRequest;
    first.write(OPENING);
    await flush();
    // 2 × the stated 15 s + heartbeatMarginMs (2 s) from the comment.
    await scheduler.advance(31_999);
    expect(first.aborted()).toBe(false);
    await scheduler.advance(1);
    expect(first.aborted()).toBe(true);
    // Served, then silent: a cut, reopened at once (within reconnect.firstDelayMs), not a failed open.
    await scheduler.advance(50);
    expect(sse.streams).toHaveLength(2);
    await client.close();
    expect(scheduler.pending).toBe(0);
  });
});

describe('the SSE fallback transport against a real server that accepts and never answers', () => {
  it('gives up on the open at connectTimeoutMs and opens again (a frozen replica: its kernel accepts)', async () => {
    const sockets: Socket[] = [];
    const server = createServer((socket) => {
      sockets.push(socket);
      socket.on('error', () => undefined);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    /** The signal of each open, Node's own `fetch` doing the request. */
    const signals: (AbortSignal | undefined)[] = [];
    const client = new ProgressClient({
      url: `ws://127.0.0.1:${port}/progress`,
      WebSocket: WebSocket as unknown as WebSocketConstructorLike, // (never opened: preferFallback)
      preferFallback: true,
      fallbackTransport: sseFallback({
        fetch: (url, init) => {
          signals.push(init.signal);
          return (globalThis.fetch as unknown as StreamingFetch)(url, init);
        },
      }),
      connectTimeoutMs: 100,
      reconnect: { initialDelayMs: 5, maxDelayMs: 10 },
    });
    try {
      client.watch('t1');
      // Without connectTimeoutMs the open would wait the silence timeout, 32 s, past this wait. (Whether
      // the aborted request's connection closes is up to Node's fetch: its pool closes some at once,
      // others only later.)
      await vi.waitFor(
        () => {
          expect(signals[0]?.aborted).toBe(true);
          expect(signals.length).toBeGreaterThanOrEqual(2);
          expect(sockets.length).toBeGreaterThanOrEqual(2);
        },
        { timeout: 4000, interval: 20 },
      );
    } finally {
      await client.close();
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });
});

describe("the SSE fallback transport after the client's own stall", () => {
  it('keeps a stream whose chunk waits unread when its silence timeout passed as the event loop stood still', async () => {
    const sockets: Socket[] = [];
    const server = createServer((socket) => {
      sockets.push(socket);
      socket.on('error', () => undefined);
      socket.once('data', () =>
        socket.write(
          'HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n: hello heartbeatIntervalMs=60000\n\n',
        ),
      );
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    // A live server: a heartbeat every 100 ms on every stream.
    const beat = () => {
      for (const socket of sockets) socket.write(': heartbeat\n\n');
    };
    const beats = setInterval(beat, 100);
    const client = new ProgressClient({
      url: `ws://127.0.0.1:${port}/progress`,
      WebSocket: WebSocket as unknown as WebSocketConstructorLike, // (never opened: preferFallback)
      preferFallback: true,
      fallbackTransport: sseFallback(),
      heartbeatTimeoutMs: 300,
      reconnect: { initialDelayMs: 5, maxDelayMs: 10 },
    });
    try {
      client.watch('t1');
      await new Promise((resolve) => setTimeout(resolve, 400));
      expect(sockets).toHaveLength(1);
      // The client's loop blocks (the app's synchronous work) for longer than the silence timeout, just
      // after a heartbeat reached its stream; in the check phase, as in an I/O callback, so the timers
      // phase runs before the poll phase that reads it.
      await new Promise((resolve) => setImmediate(resolve));
      beat();
      const until = Date.now() + 1500;
      while (Date.now() < until) {
        // busy: nothing else runs on this thread
      }
      await new Promise((resolve) => setTimeout(resolve, 200));
      expect(sockets).toHaveLength(1);
    } finally {
      clearInterval(beats);
      await client.close();
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });
});

describe('the SSE fallback transport when the page wakes', () => {
  // A stream that lived through a sleep (or an offline spell, a frozen or throttled tab) is usually dead
  // without a word, like a socket; and it has no ping to ask. Without this, only the silence timeout
  // (2 × the heartbeat interval + heartbeatMarginMs: 32 s by default) noticed it.

  /**
   * A client following `t1` over SSE (preferFallback), with page events and a clock that can jump (time
   * that passed while the page did not run), shown seq 1 by its stream.
   */
  async function streaming(overrides: Parameters<typeof setup>[0] = {}) {
    const page = fakePage();
    let jumpedMs = 0;
    let now: () => number = () => 0;
    const ctx = sseSetup({
      preferFallback: true,
      pageEvents: page.sources,
      clock: () => now() + jumpedMs,
      ...overrides,
    });
    now = ctx.scheduler.now;
    const task = new FakeTask('t1', 5);
    const watch = ctx.client.watch('t1');
    const log = record(watch);
    await flush();
    const first = ctx.sse.streams[0] as SseRequest;
    first.send({ type: 'snapshot', task: task.view(), epoch: 'e1' }, 0);
    first.send({ type: 'event', event: task.item('a') }, 1);
    await flush();
    expect(log).toEqual(['snapshot@0', 'item@1']);
    // Past wakePingTimeoutMs: a wake starts the stream over (one opened since is taken as alive).
    await ctx.scheduler.advance(5000);
    const sleep = (ms: number) => {
      jumpedMs += ms;
    };
    return { ...ctx, page, task, watch, log, first, sleep };
  }

  type Woken = Awaited<ReturnType<typeof streaming>>;

  /**
   * Checks that the wake left `count` streams, the last one resuming from the cursor (seq 1) with the item
   * committed meanwhile, and that none opens after it; then closes the client, leaving no timer.
   */
  async function resumesAlone({ client, sse, task, log, scheduler }: Woken, count: number) {
    expect(sse.streams).toHaveLength(count);
    const reopened = sse.streams[count - 1] as SseRequest;
    expect(reopened.headers['last-event-id']).toBe('1~e1');
    reopened.send({ type: 'event', event: task.events[1] as never }, 2);
    await flush();
    expect(log).toEqual(['snapshot@0', 'item@1', 'item@2']);
    await scheduler.advance(10_000);
    expect(sse.streams).toHaveLength(count);
    await client.close();
    expect(scheduler.pending).toBe(0);
  }
  const wakes: [string, (ctx: Woken) => Promise<unknown>][] = [
    ['visibilitychange to visible', async ({ page }) => page.show()],
    ['online', async ({ page }) => page.online()],
    ['pageshow from the back/forward cache', async ({ page }) => page.pageshow(true)],
    ['resume', async ({ page }) => page.resume()],
    [
      'a clock jump',
      async ({ sleep, scheduler }) => {
        sleep(60_000); // the machine slept a minute: the clock check's next tick is that late
        await scheduler.advance(2000);
      },
    ],
  ];

  it.each(wakes)(
    'on %s: reopens the stream from the cursor at once, not after the silence timeout',
    async (_, wake) => {
      const ctx = await streaming();
      ctx.task.item('b'); // committed while the page slept: the dead stream never brings it
      await wake(ctx);
      await flush();
      expect(ctx.first.aborted()).toBe(true);
      // One reopen: the cut of the old stream schedules none on top of it.
      await resumesAlone(ctx, 2);
    },
  );

  it('leaves the stream alone when the page is hidden, or shown by a normal load', async () => {
    const { client, sse, page, first } = await streaming();
    page.hide();
    page.pageshow(false);
    await flush();
    expect(first.aborted()).toBe(false);
    expect(sse.streams).toHaveLength(1);
    await client.close();
  });

  it('keeps the backoff of a stream the server refuses for now: a wake does not ask again before it', async () => {
    const page = fakePage();
    const { client, sse, scheduler } = sseSetup({ preferFallback: true, pageEvents: page.sources });
    sse.refusal = {
      status: 429,
      text: JSON.stringify({ error: { code: 'too_many_sockets', message: 'cap' } }),
    };
    client.watch('t1');
    await scheduler.advance(0);
    expect(sse.streams).toHaveLength(1);
    // Asked again at 0.5 s (a backoff step of 1 s, random 0.5): wakes before then change nothing.
    page.show();
    page.online();
    await scheduler.advance(499);
    expect(sse.streams).toHaveLength(1);
    await scheduler.advance(1);
    expect(sse.streams).toHaveLength(2);
    await client.close();
  });

  it('takes the events of one wake together (a clock jump, visible, pageshow, online, resume): each stream reopens once', async () => {
    // Each event restarted every stream: two to five requests per watch for one wake, each aborting the
    // stream the one before had just opened.
    const ctx = await streaming();
    const { client, sse, page, first, scheduler, sleep } = ctx;
    const other = new FakeTask('t2', 5);
    client.watch('t2');
    await flush();
    const second = sse.streams[1] as SseRequest;
    second.send({ type: 'snapshot', task: other.view() }, 0);
    await flush();
    sleep(60_000);
    await scheduler.advance(2000); // the clock check's tick, a minute late
    page.show();
    page.pageshow(true);
    page.online();
    page.resume();
    await flush();
    expect([first.aborted(), second.aborted()]).toEqual([true, true]);
    expect(sse.streams.map((stream) => stream.url.split('/').at(-2))).toEqual(['t1', 't2', 't1', 't2']);
    expect(sse.streams.filter((stream) => stream.live())).toHaveLength(2);
    // Served, as the server serves them (one that delivered nothing would give up at connectTimeoutMs).
    for (const stream of sse.streams.slice(2)) stream.write(OPENING);
    await scheduler.advance(10_000);
    expect(sse.streams).toHaveLength(4);
    // A wake later on (past wakePingTimeoutMs) is another wake.
    page.show();
    await flush();
    expect(sse.streams).toHaveLength(6);
    await client.close();
  });

  it('opens a stream cut and waiting to reopen at once on a wake, not after its backoff', async () => {
    const ctx = await streaming();
    const { sse, page, first, task, scheduler } = ctx;
    first.end(); // a proxy's timeout: reopened at once…
    await scheduler.advance(50);
    expect(sse.streams).toHaveLength(2);
    (sse.streams[1] as SseRequest).end(); // …and that one ended with nothing: reopened after 0.5 s
    await scheduler.advance(250);
    expect(sse.streams).toHaveLength(2);
    task.item('b');
    page.online();
    await flush();
    // The wait it was in opens nothing more.
    await resumesAlone(ctx, 3);
  });

  it('opens at once a stream that a wake reopened and that was cut at once, when the next event of the wake comes', async () => {
    // Shown while still offline: the reopened stream fails at once; the network comes back half a second
    // later, and the stream need not wait out the rest of httpPollIntervalMs.
    const { client, sse, page, first, scheduler } = await streaming();
    page.show();
    await flush();
    expect(first.aborted()).toBe(true);
    expect(sse.streams).toHaveLength(2);
    (sse.streams[1] as SseRequest).end();
    await scheduler.advance(500);
    page.online();
    await flush();
    expect(sse.streams).toHaveLength(3);
    expect(sse.streams[2]?.live()).toBe(true);
    await client.close();
  });

  it('stops the old stream before asking for its replacement: under a socket cap of one, the reopen is served', async () => {
    const { client, sse, page, first, scheduler, sleep, log } = await streaming();
    sse.cap = 1;
    sleep(60_000);
    page.show();
    await flush();
    expect(first.aborted()).toBe(true);
    expect(sse.streams).toHaveLength(2);
    expect(sse.streams[1]?.live()).toBe(true);
    expect(log).toEqual(['snapshot@0', 'item@1']);
    await scheduler.advance(0);
    await client.close();
  });

  it('asks again after a backoff when the reopen meets too_many_sockets (the server still counts the dead stream): the watch goes on', async () => {
    const { client, sse, page, first, task, log, scheduler, sleep, watch } = await streaming();
    sse.cap = 1;
    sse.ghosts = 1; // the stream that died in the sleep, still open as the server sees it
    task.item('b');
    sleep(60_000);
    page.show();
    await flush();
    expect(first.aborted()).toBe(true);
    expect(sse.streams).toHaveLength(2);
    expect(sse.streams[1]?.live()).toBe(false);
    expect(log).toEqual(['snapshot@0', 'item@1', 'error:too_many_sockets']);
    // Refused for now: another event of the page does not hurry it past its backoff (0.5 s, random 0.5).
    page.online();
    await flush();
    expect(sse.streams).toHaveLength(2);
    sse.ghosts = 0; // the server saw the dead connection go
    await scheduler.advance(499);
    expect(sse.streams).toHaveLength(2);
    await scheduler.advance(1);
    expect(sse.streams).toHaveLength(3);
    const third = sse.streams[2] as SseRequest;
    expect(third.live()).toBe(true);
    expect(third.headers['last-event-id']).toBe('1~e1');
    third.send({ type: 'event', event: task.events[1] as never }, 2);
    third.send({ type: 'event', event: task.end() }, 3);
    expect((await watch.done).status).toBe('completed');
    expect(log).toEqual([
      'snapshot@0',
      'item@1',
      'error:too_many_sockets',
      'item@2',
      'completed@3',
      'finished@3',
    ]);
    await client.close();
  });

  it('opens nothing for a watch that finished over its stream', async () => {
    const { client, sse, page, task, first, watch } = await streaming();
    first.send({ type: 'event', event: task.end() }, 2);
    first.end();
    await watch.done;
    page.show();
    page.online();
    await flush();
    expect(sse.streams).toHaveLength(1);
    await client.close();
  });

  it('polls at once when the page wakes after the streams made way for polling (a proxy buffering them), as the HTTP fallback alone does', async () => {
    // The wake went to the streams alone, none of which was open any more: the polls waited out their
    // backoff (up to 30 s and more while HTTP had failed), where a client with the HTTP fallback alone
    // polls at once.
    const page = fakePage();
    const { client, scheduler, http, sse } = sseSetup({
      preferFallback: true,
      pageEvents: page.sources,
      httpPollIntervalMs: 60_000,
    });
    http.tasks.set('t1', new FakeTask('t1', 5));
    client.watch('t1');
    await flush();
    await scheduler.advance(21_000); // two opens stalled: polling from now on
    await flush();
    const polled = http.requests.length;
    expect(polled).toBeGreaterThan(0);
    expect(sse.streams).toHaveLength(2);
    await scheduler.advance(5000);
    expect(http.requests).toHaveLength(polled);
    page.online();
    await scheduler.advance(0);
    await flush();
    expect(http.requests.length).toBeGreaterThan(polled);
    expect(sse.streams).toHaveLength(2);
    await client.close();
  });

  it('with preferFallback, polls nothing once no watch is left after the streams made way for polling (no timer left firing), and polls a new watch at once', async () => {
    // The socket's `idle` stops polling when the last watch goes; with preferFallback the socket is never
    // used, and the poll timer fired every httpPollIntervalMs with nothing to poll until close() (keeping a
    // Node process alive).
    const { client, scheduler, http, sse } = sseSetup({ preferFallback: true, httpPollIntervalMs: 1000 });
    const task = new FakeTask('t1', 1);
    http.tasks.set('t1', task);
    const watch = client.watch('t1');
    await flush();
    await scheduler.advance(21_000); // two opens stalled: polling from now on
    await flush();
    expect(sse.streams).toHaveLength(2);
    task.item('a');
    task.end();
    await scheduler.advance(1000);
    await flush();
    await watch.done;
    await scheduler.advance(1000);
    await flush();
    expect(scheduler.pending).toBe(0);
    // A new watch is polled at once, and again each httpPollIntervalMs.
    http.tasks.set('t2', new FakeTask('t2', 5));
    const polled = http.requests.length;
    client.watch('t2');
    await scheduler.advance(0);
    await flush();
    expect(http.requests.slice(polled).map((request) => request.url)).toEqual([
      'http://example.test/progress/tasks/t2',
      'http://example.test/progress/tasks/t2/events?afterSeq=0',
    ]);
    await scheduler.advance(1000);
    await flush();
    expect(http.requests.slice(polled + 2).map((request) => request.url)).toEqual([
      'http://example.test/progress/tasks/t2/events?afterSeq=0',
    ]);
    expect(sse.streams).toHaveLength(2);
    await client.close();
  });

  it('while the socket is unreachable: tries the socket at once and reopens the stream', async () => {
    const page = fakePage();
    const ctx = sseSetup({
      httpFallbackAfterAttempts: 1,
      pageEvents: page.sources,
      random: () => 0.99,
      reconnect: { initialDelayMs: 10_000 },
    });
    const { client, server, scheduler, sse } = ctx;
    const task = new FakeTask('t1', 5);
    client.watch('t1');
    server.last.serverClose(1006);
    await scheduler.advance(0);
    const first = sse.streams[0] as SseRequest;
    first.send({ type: 'snapshot', task: task.view() }, 0);
    await flush();
    await scheduler.advance(2000); // past wakePingTimeoutMs: the stream is started over
    const sockets = server.sockets.length;
    page.online();
    await flush();
    expect(server.sockets).toHaveLength(sockets + 1); // the reconnect waiting out its backoff went now
    expect(first.aborted()).toBe(true);
    expect(sse.streams).toHaveLength(2);
    expect(sse.streams[1]?.headers['last-event-id']).toBeUndefined(); // cursor 0: from the start
    await client.close();
  });
});

describe('sseFallback() options', () => {
  it('refuses a bad option with invalid_input naming it, as the client refuses its own (before, taken without a word)', () => {
    const refusal = (options: unknown) => {
      try {
        return typeof sseFallback(options as Parameters<typeof sseFallback>[0]).attach === 'function'
          ? 'accepted'
          : 'no transport';
      } catch (error) {
        return error;
      }
    };
    for (const [options, message] of [
      [{ pollAfterStalls: -1 }, 'sseFallback: pollAfterStalls must be an integer >= 0, got -1'],
      [{ pollAfterStalls: 1.5 }, 'sseFallback: pollAfterStalls must be an integer >= 0, got 1.5'],
      [{ pollAfterStalls: Number.NaN }, 'sseFallback: pollAfterStalls must be an integer >= 0, got NaN'],
      [{ pollAfterStalls: '2' }, 'sseFallback: pollAfterStalls must be an integer >= 0, got "2"'],
      // Before: a TypeError from `bind`, not the client's error.
      [{ fetch: 'fetch' }, 'sseFallback: fetch must be a function, got "fetch"'],
      // A typo: before, the default (2) was used without a word.
      [
        { pollAfterStall: 0 },
        'sseFallback: unknown option "pollAfterStall" (did you mean `pollAfterStalls`?)',
      ],
      [null, 'sseFallback: options must be an object, got null'],
    ] as const)
      expect(refusal(options)).toMatchObject({ code: 'invalid_input', message });
    for (const options of [
      undefined,
      {},
      { pollAfterStalls: 0 },
      { pollAfterStalls: undefined, fetch: vi.fn() },
    ])
      expect(refusal(options)).toBe('accepted');
  });
});

describe('the SSE fallback’s line endings', () => {
  // The SSE spec ends a line with CRLF, LF or CR. A stream split on LF LF alone (until 7 December 2026)
  // yielded no frame through a proxy that rewrote the server's LFs as CRLFs: the watch saw nothing.
  const frames = (task: FakeTask) => [
    `id: 0\ndata: ${JSON.stringify({ type: 'snapshot', task: task.view() })}\n\n`,
    `id: 1\ndata: ${JSON.stringify({ type: 'event', event: task.item('a') })}\n\n`,
    `id: 2\ndata: ${JSON.stringify({ type: 'event', event: task.end() })}\n\n`,
  ];
  it.each([
    ['CRLF', '\r\n', false],
    ['CRLF, each CRLF split across two chunks', '\r\n', true],
    ['CR', '\r', false],
    ['CR, cut after each CR', '\r', true],
  ])('reads a stream whose lines end with %s', async (_, eol, split) => {
    const { client, sse } = sseSetup({ preferFallback: true });
    const task = new FakeTask('t1', 2);
    const watch = client.watch('t1');
    const log = record(watch);
    await flush();
    const stream = sse.streams[0] as SseRequest;
    const text = [OPENING, ...frames(task)].join('').replace(/\n/g, eol);
    // Split: every chunk ends with a CR (the LF of its CRLF, if any, opens the next one).
    for (const chunk of split ? text.split(/(?<=\r)/) : [text]) {
      stream.write(chunk);
      await flush();
    }
    expect(log).toEqual(['snapshot@0', 'item@1', 'completed@2', 'finished@2']);
    expect((await watch.done).status).toBe('completed');
    await client.close();
  });
});

describe('the SSE fallback transport when a watch of the id is made again before its finished stream ends', () => {
  it('opens a stream for a new watch of an id whose finished watch’s stream is still open (its end read over HTTP by the 100% watchdog)', async () => {
    // The old subscription's stream kept the id's place in the streams (keyed by task id) until its next
    // chunk ended it, up to a heartbeat interval later: a new watch of the id made meanwhile (its old
    // handle closed at its end) opened none, and the old stream's end reopened nothing for it: with
    // preferFallback the new watch waited for ever.
    const { client, sse, scheduler, http } = sseSetup({ preferFallback: true, finishTimeoutMs: 1000 });
    const task = new FakeTask('t1', 1);
    task.item('a');
    http.tasks.set('t1', task);
    const first = client.watch('t1');
    await flush();
    const opening = () => (sse.streams.at(-1) as SseRequest).write(OPENING);
    opening();
    (sse.streams[0] as SseRequest).send({ type: 'snapshot', task: task.view() }, 1);
    task.end(); // committed, and never sent on the stream (a server that lost it): the watchdog reads it
    for (let i = 0; i < 20 && !first.getSnapshot().finished; i++) {
      await scheduler.advance(1000);
      opening();
    }
    expect(first.getSnapshot()).toMatchObject({ status: 'completed', finished: true });
    const old = sse.streams.at(-1) as SseRequest;
    expect(old.live()).toBe(true);
    first.close();
    const second = client.watch('t1');
    await flush();
    const fresh = sse.streams.at(-1) as SseRequest;
    expect(fresh).not.toBe(old);
    expect(fresh.live()).toBe(true);
    expect(fresh.headers['last-event-id']).toBeUndefined();
    fresh.send({ type: 'snapshot', task: task.view() }, task.seq);
    expect((await second.done).status).toBe('completed');
    await flush();
    // Each subscription's end acknowledged: the old one's as its stream was stopped.
    expect(old.live()).toBe(false);
    expect(sse.acks.map((ack) => JSON.parse(ack.body ?? ''))).toEqual([{ seq: 2 }, { seq: 2 }]);
    await client.close();
  });
});

describe('the SSE fallback transport against a stream that never ends a block', () => {
  it('takes bytes that end no block for silence: a stream of them is dropped at the silence timeout and reopened from the cursor', async () => {
    // A broken proxy trickling bytes without a blank line, its upstream gone: every chunk counted as life
    // (no frame, no heartbeat ever came), and the watch waited on it for as long as the proxy went on.
    const { client, scheduler, sse } = sseSetup({ preferFallback: true });
    const task = new FakeTask('t1', 2);
    const watch = client.watch('t1');
    await flush();
    const first = sse.streams[0] as SseRequest;
    first.write(OPENING);
    first.send({ type: 'snapshot', task: task.view() }, 0);
    await flush();
    // 2 × 15,000 + heartbeatMarginMs (2 s) of silence, however many bytes came meanwhile.
    for (let ms = 0; ms < 31_000; ms += 1000) {
      first.write(': proxy\n');
      await scheduler.advance(1000);
    }
    expect(first.aborted()).toBe(false);
    await scheduler.advance(1000);
    expect(first.aborted()).toBe(true);
    await scheduler.advance(1000);
    const second = sse.streams[1] as SseRequest;
    second.send({ type: 'event', event: task.item('a') }, 1);
    second.send({ type: 'event', event: task.end() }, 2);
    expect((await watch.done).status).toBe('completed');
    await client.close();
  });

  it('keeps no more than a frame’s worth of an unended block: a stream of garbage without a blank line is dropped, reported, and reopened with backoff', async () => {
    // A broken proxy (or a server gone wrong) streaming bytes without ever ending a block: each chunk counted
    // as life, and the unended block was kept whole, growing the page's memory for as long as it streamed.
    const { client, scheduler, sse } = sseSetup({ preferFallback: true });
    const task = new FakeTask('t1', 2);
    const watch = client.watch('t1');
    const log = record(watch);
    const errors: unknown[] = [];
    watch.on('error', (error) => errors.push(error));
    await flush();
    const first = sse.streams[0] as SseRequest;
    first.write(OPENING);
    first.send({ type: 'snapshot', task: task.view() }, 0);
    await flush();
    const garbage = `data: ${'x'.repeat(65_535)}\n`;
    for (let i = 0; i < 8 && !first.aborted(); i++) {
      first.write(garbage);
      await flush();
    }
    expect(first.aborted()).toBe(true);
    expect(errors[0]).toMatchObject({ code: 'frame_too_large' });
    // Reopened from the cursor after a step of backoff, as for a frame it rejects (not at once, for ever).
    await scheduler.advance(499);
    expect(sse.streams).toHaveLength(1);
    await scheduler.advance(1);
    const second = sse.streams[1] as SseRequest;
    expect(second.headers['last-event-id']).toBeUndefined(); // (the cursor's seq, 0: none)
    second.send({ type: 'event', event: task.item('a') }, 1);
    second.send({ type: 'event', event: task.end() }, 2);
    expect((await watch.done).status).toBe('completed');
    expect(log).toEqual(['snapshot@0', 'error:frame_too_large', 'item@1', 'completed@2', 'finished@2']);
    await client.close();
  });
});
