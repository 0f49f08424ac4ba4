import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { ClientFrame, ProgressError, ServerFrame } from '@finishline/core';
import { PROTOCOL_NAME, PROTOCOL_VERSION } from '@finishline/core';
import { afterEach, describe, expect, it } from 'vitest';
import { WebSocket, WebSocketServer, type WebSocket as WsSocket } from 'ws';
import type { ProgressClientOptions } from './options.js';
import { ProgressClient } from './progress-client.js';
import { FakeTask } from './testing/fake-server.js';

/**
 * The client against a misbehaving server: a raw `ws` server scripted per connection (what it says, when it
 * closes, with which code), the client with short timeouts. Each case checks that the watch goes on, retries
 * or ends with a typed error, and never shows another task's state.
 */

/** One server-side socket and what the client sent on it. */
interface Conn {
  socket: WsSocket;
  received: ClientFrame[];
  send(frame: ServerFrame | Record<string, unknown> | string): void;
  hello(extra?: Record<string, unknown>): void;
}

async function scripted(onConnection: (conn: Conn, index: number) => void) {
  const http = createServer();
  const wss = new WebSocketServer({
    server: http,
    handleProtocols: (protocols) => (protocols.has(PROTOCOL_NAME) ? PROTOCOL_NAME : false),
  });
  const conns: Conn[] = [];
  wss.on('connection', (socket) => {
    const conn: Conn = {
      socket,
      received: [],
      send: (frame) => {
        if (socket.readyState === 1) socket.send(typeof frame === 'string' ? frame : JSON.stringify(frame));
      },
      hello: (extra = {}) =>
        conn.send({
          type: 'hello',
          protocol: PROTOCOL_VERSION,
          serverId: 'adv',
          heartbeatIntervalMs: 60_000,
          ...extra,
        }),
    };
    socket.on('message', (data) => conn.received.push(JSON.parse(String(data)) as ClientFrame));
    conns.push(conn);
    onConnection(conn, conns.length - 1);
  });
  await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve));
  const { port } = http.address() as AddressInfo;
  return {
    url: `ws://127.0.0.1:${port}/progress`,
    conns,
    close: async () => {
      for (const client of wss.clients) client.terminate();
      await new Promise<void>((resolve) => wss.close(() => resolve()));
      await new Promise<void>((resolve) => http.close(() => resolve()));
    },
  };
}

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0)) await cleanup();
});

async function rig(
  onConnection: (conn: Conn, index: number) => void,
  options: Partial<ProgressClientOptions> = {},
) {
  const server = await scripted(onConnection);
  const client = new ProgressClient({
    url: server.url,
    WebSocket,
    httpFallback: false,
    connectTimeoutMs: 300,
    reconnect: { initialDelayMs: 20, maxDelayMs: 60, firstDelayMs: 5 },
    behindGraceMs: 100,
    ...options,
  });
  const errors: ProgressError[] = [];
  client.on('error', (error) => errors.push(error));
  cleanups.push(async () => {
    await client.close();
    await server.close();
  });
  return { server, client, errors };
}

async function waitFor(condition: () => boolean, limitMs = 4000): Promise<void> {
  const deadline = Date.now() + limitMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`condition still false after ${limitMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

const subscribes = (conn: Conn | undefined) =>
  (conn?.received ?? []).filter((frame) => frame.type === 'subscribe') as Extract<
    ClientFrame,
    { type: 'subscribe' }
  >[];

describe('hello', () => {
  it('unknown protocol version: fatal unsupported_protocol', async () => {
    const { client, server } = await rig((conn) => conn.hello({ protocol: 3 }));
    const watch = client.watch('t1');
    await expect(watch.done).rejects.toMatchObject({ code: 'unsupported_protocol' });
    expect(server.conns).toHaveLength(1);
  });

  it('missing fields: error, then reconnects and goes on', async () => {
    const task = new FakeTask('t1', 1);
    task.item('a');
    task.end();
    const { client, errors } = await rig((conn, index) => {
      if (index === 0) conn.send({ type: 'hello', protocol: PROTOCOL_VERSION });
      else conn.hello();
      conn.socket.on('message', () => {
        if (subscribes(conn).length === 1) {
          conn.send({ type: 'snapshot', task: task.view(0) });
          for (const event of task.events) conn.send({ type: 'event', event });
        }
      });
    });
    const watch = client.watch('t1');
    await expect(watch.done).resolves.toMatchObject({ status: 'completed' });
    expect(errors.some((e) => e.code === 'invalid_frame')).toBe(true);
  });

  it('never sent: reconnects after connectTimeoutMs', async () => {
    const { client, server } = await rig(() => undefined);
    client.watch('t1').done.catch(() => undefined);
    await waitFor(() => server.conns.length >= 3);
  });
});

describe('task frames', () => {
  it('frames of a task never subscribed do not reach another watch', async () => {
    const other = new FakeTask('other', 1);
    other.item('x');
    other.end();
    const mine = new FakeTask('mine', 2);
    mine.item('a');
    const { client } = await rig((conn) => {
      conn.hello();
      conn.socket.on('message', () => {
        if (subscribes(conn).length !== 1 || conn.received.length !== 1) return;
        conn.send({ type: 'snapshot', task: other.view() });
        for (const event of other.events) conn.send({ type: 'event', event });
        conn.send({ type: 'error', code: 'task_not_found', message: 'x', taskId: 'other' });
        conn.send({ type: 'snapshot', task: mine.view() });
      });
    });
    const watch = client.watch('mine');
    await waitFor(() => watch.getSnapshot().seq === 1);
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(watch.getSnapshot()).toMatchObject({ taskId: 'mine', status: 'running', seq: 1 });
  });

  it('a gap resubscribes from the cursor', async () => {
    const task = new FakeTask('t1', 5);
    for (const key of ['a', 'b', 'c', 'd']) task.item(key);
    task.end();
    const { client, server } = await rig((conn) => {
      conn.hello();
      conn.socket.on('message', () => {
        const subs = subscribes(conn);
        const last = conn.received[conn.received.length - 1];
        if (last?.type !== 'subscribe') return;
        if (subs.length === 1) {
          conn.send({ type: 'snapshot', task: task.view(0) });
          conn.send({ type: 'event', event: task.events[0] as never });
          conn.send({ type: 'event', event: task.events[2] as never }); // skips 2
        } else {
          for (const event of task.events.slice(last.afterSeq)) conn.send({ type: 'event', event });
        }
      });
    });
    const watch = client.watch('t1');
    await expect(watch.done).resolves.toMatchObject({ status: 'completed', seq: 5 });
    expect(subscribes(server.conns[0])[1]?.afterSeq).toBe(1);
  });

  it('events after the terminal one change nothing', async () => {
    const task = new FakeTask('t1', 5);
    task.item('a');
    task.end();
    const { client } = await rig((conn) => {
      conn.hello();
      conn.socket.on('message', () => {
        if (conn.received.length !== 1) return;
        conn.send({ type: 'snapshot', task: task.view(0) });
        for (const event of task.events) conn.send({ type: 'event', event });
        conn.send({ type: 'event', event: { ...(task.events[0] as object), seq: 3 } });
        conn.send({ type: 'snapshot', task: { ...task.view(), status: 'running', seq: 9 } });
      });
    });
    const watch = client.watch('t1');
    await watch.done;
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(watch.getSnapshot()).toMatchObject({ status: 'completed', seq: 2 });
  });

  it('a stale snapshot (below the cursor, no reset) is ignored', async () => {
    const task = new FakeTask('t1', 5);
    task.item('a');
    task.item('b');
    task.item('c');
    const { client } = await rig((conn) => {
      conn.hello();
      conn.socket.on('message', () => {
        if (conn.received.length !== 1) return;
        conn.send({ type: 'snapshot', task: task.view(3) });
        conn.send({ type: 'snapshot', task: task.view(1) });
      });
    });
    const watch = client.watch('t1');
    await waitFor(() => watch.getSnapshot().seq === 3);
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(watch.getSnapshot().seq).toBe(3);
  });

  it('an error frame with an unknown code: invalid_frame, and the watch retries', async () => {
    const task = new FakeTask('t1', 1);
    task.item('a');
    task.end();
    const { client, errors } = await rig((conn) => {
      conn.hello();
      conn.socket.on('message', () => {
        const subs = subscribes(conn);
        if (conn.received[conn.received.length - 1]?.type !== 'subscribe') return;
        if (subs.length === 1)
          conn.send({ type: 'error', code: 'brand_new_code', message: 'x', taskId: 't1' });
        else {
          conn.send({ type: 'snapshot', task: task.view(0) });
          for (const event of task.events) conn.send({ type: 'event', event });
        }
      });
    });
    const watch = client.watch('t1');
    await expect(watch.done).resolves.toMatchObject({ status: 'completed' });
    expect(errors.some((e) => e.code === 'invalid_frame')).toBe(true);
  });
});

describe('error frames', () => {
  it('an error frame with an unknown code and no taskId: a typed invalid_frame error, the socket and the watch go on', async () => {
    const task = new FakeTask('t1', 1);
    task.item('a');
    task.end();
    const { client, server, errors } = await rig((conn) => {
      conn.hello();
      conn.socket.on('message', () => {
        if (subscribes(conn).length !== 1 || conn.received.length !== 1) return;
        // A newer server's code, about no task in particular.
        conn.send({ type: 'error', code: 'brand_new_code', message: 'something new' });
        conn.send({ type: 'snapshot', task: task.view(0) });
        for (const event of task.events) conn.send({ type: 'event', event });
      });
    });
    const states: string[] = [];
    client.on('state', (change) => states.push(change.state));
    const watch = client.watch('t1');
    await expect(watch.done).resolves.toMatchObject({ status: 'completed' });
    expect(errors).toEqual([
      expect.objectContaining({
        name: 'ProgressError',
        code: 'invalid_frame',
        taskId: undefined,
        message: expect.stringContaining('Invalid error frame: code: must be one of'),
      }),
    ]);
    // The same socket all along: no reconnect for it.
    expect(server.conns).toHaveLength(1);
    expect(states).not.toContain('reconnecting');
  });
});

describe('close codes', () => {
  for (const code of [1000, 1001, 1008, 1011, 1013, 4004, 4005, 4008, 4009, 4010, 4999]) {
    it(`${code} after hello: reconnects`, async () => {
      const { client, server } = await rig(
        (conn, index) => {
          conn.hello();
          if (index < 2) setTimeout(() => conn.socket.close(code, 'x'), 5);
        },
        { token: 'tok' },
      );
      const watch = client.watch('t1');
      watch.done.catch(() => undefined);
      await waitFor(() => server.conns.length >= 3, 6000);
      expect(client.state).not.toBe('closed');
    }, 10_000);
  }
  for (const [code, error] of [
    [4001, 'unauthenticated'],
    [4002, 'unsupported_protocol'],
    [4003, 'forbidden'],
  ] as const) {
    it(`${code}: fatal ${error}`, async () => {
      const { client, server } = await rig((conn) => {
        conn.hello();
        setTimeout(() => conn.socket.close(code, 'x'), 5);
      });
      const watch = client.watch('t1');
      await expect(watch.done).rejects.toMatchObject({ code: error });
      expect(server.conns).toHaveLength(1);
    });
  }
  it('4011 right after every hello: reconnected with a growing backoff, not at once for ever', async () => {
    // Before 5 December 2026 each hello allowed the next immediate reconnect: 82 connections a second.
    let calls = 0;
    const { client, server } = await rig(
      (conn) => {
        conn.hello();
        setTimeout(() => conn.socket.close(4011, 'x'), 5);
      },
      {
        token: () => `t${++calls}`,
        random: () => 0.5,
        reconnect: { initialDelayMs: 200, maxDelayMs: 2000, firstDelayMs: 5 },
      },
    );
    client.watch('t1').done.catch(() => undefined);
    await new Promise((resolve) => setTimeout(resolve, 1200));
    // After 100, 200, 400 and 800 ms (half of each full-jitter step, random 0.5): four or five.
    expect(server.conns.length).toBeGreaterThanOrEqual(3);
    expect(server.conns.length).toBeLessThanOrEqual(7);
    expect(client.state).not.toBe('closed');
  });

  it('4011 a while after every hello (past stableConnectionMs): at once the first time, then a growing backoff', async () => {
    // Before 6 December 2026 each socket up stableConnectionMs allowed the next reconnect at once: a server
    // (or a token function) whose credentials expired a second or two after each hello was asked again
    // every second or two, for ever.
    let calls = 0;
    const { client, server } = await rig(
      (conn) => {
        conn.hello();
        setTimeout(() => conn.socket.close(4011, 'x'), 150);
      },
      {
        token: () => `t${++calls}`,
        random: () => 0.5,
        stableConnectionMs: 50,
        reconnect: { initialDelayMs: 200, maxDelayMs: 5000, firstDelayMs: 5 },
      },
    );
    const delays: number[] = [];
    client.on('state', (change) => {
      if (change.state === 'reconnecting' && change.closeCode === 4011) delays.push(change.delayMs ?? -1);
    });
    client.watch('t1').done.catch(() => undefined);
    await waitFor(() => server.conns.length >= 5, 6000);
    // At once, then half of each full-jitter step (random 0.5), growing: before, 0 every time.
    expect(delays.slice(0, 4)).toEqual([0, 100, 200, 400]);
    expect(client.state).not.toBe('closed');
  }, 10_000);

  it('4011 twice before hello: fatal token_expired', async () => {
    let calls = 0;
    const { client } = await rig(
      (conn, index) => {
        if (index === 0) conn.hello();
        setTimeout(() => conn.socket.close(4011, 'x'), 5);
      },
      { token: () => `t${++calls}` },
    );
    const watch = client.watch('t1');
    await expect(watch.done).rejects.toMatchObject({ code: 'token_expired' });
    expect(calls).toBe(2);
  });
});

describe('size and pace', () => {
  it('a 10 MB frame is refused and the socket goes on', async () => {
    const task = new FakeTask('t1', 1);
    task.item('a');
    task.end();
    const { client, errors } = await rig((conn) => {
      conn.hello();
      conn.socket.on('message', () => {
        if (conn.received.length !== 1) return;
        conn.send({
          type: 'snapshot',
          task: { ...task.view(0), message: 'x'.repeat(10 * 1024 * 1024) },
        });
        conn.send({ type: 'snapshot', task: task.view(0) });
        for (const event of task.events) conn.send({ type: 'event', event });
      });
    });
    const watch = client.watch('t1');
    await expect(watch.done).resolves.toMatchObject({ status: 'completed' });
    expect(errors.some((e) => e.code === 'frame_too_large')).toBe(true);
  });

  it('a silent server after hello: dropped after the heartbeat timeout', async () => {
    const { client, server } = await rig((conn) => conn.hello({ heartbeatIntervalMs: 50 }), {
      heartbeatMarginMs: 0,
    });
    client.watch('t1').done.catch(() => undefined);
    await waitFor(() => server.conns.length >= 3);
  });

  it("a frame waiting unread after the client's own event loop stood still past the heartbeat timeout keeps the socket", async () => {
    // A timeout of 1 s against frames every 100 ms: a loaded machine's lags before the stall (a full suite's
    // other worker) stay far from it (with 300 ms, one such lag once tore the socket down by itself).
    const { client, server } = await rig((conn) => conn.hello(), { heartbeatTimeoutMs: 1000 });
    client.watch('t1').done.catch(() => undefined);
    await waitFor(() => subscribes(server.conns[0]).length === 1);
    const conn = server.conns[0] as Conn;
    // A live server: a frame every 100 ms.
    const beat = setInterval(() => conn.send({ type: 'heartbeat', time: Date.now(), seqs: {} }), 100);
    cleanups.push(async () => clearInterval(beat));
    await new Promise((resolve) => setTimeout(resolve, 400));
    // The client's loop blocks (the app's synchronous work) for longer than the heartbeat timeout, just
    // after a frame reached its connection; in the check phase, as in an I/O callback, so the timers
    // phase runs before the poll phase that reads it.
    await new Promise((resolve) => setImmediate(resolve));
    conn.send({ type: 'heartbeat', time: Date.now(), seqs: {} });
    const until = Date.now() + 2500;
    while (Date.now() < until) {
      // busy: nothing else runs on this thread
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(server.conns).toHaveLength(1);
  });

  it('a flood of events stays responsive', async () => {
    const task = new FakeTask('t1', null);
    for (let i = 0; i < 20_000; i++) task.progress(i);
    task.end();
    const { client } = await rig((conn) => {
      conn.hello();
      conn.socket.on('message', () => {
        if (conn.received.length !== 1) return;
        conn.send({ type: 'snapshot', task: task.view(0) });
        for (const event of task.events) conn.send({ type: 'event', event });
      });
    });
    const watch = client.watch('t1');
    await expect(watch.done).resolves.toMatchObject({ status: 'completed', seq: 20_001 });
  }, 20_000);
});
