import { request as httpRequest, type IncomingMessage } from 'node:http';
import { ErrorCode, isProgressError } from '@finishline/core';
import { describe, expect, it } from 'vitest';
import { resolveServerOptions } from '../options.js';
import { headerAuth } from '../testing/harness.js';
import { useServerSession } from '../testing/session.js';

/**
 * The server's `clock` option puts its time into frames (`heartbeat`, `pong`) and SSE heartbeats, where
 * the protocol allows only whole milliseconds: a clock of sub-millisecond precision is read rounded down.
 */

const session = useServerSession();

/** `performance.timeOrigin + performance.now()`, always with a fraction. */
const fractionalClock = (): number => Date.now() + 0.25;

describe('the server clock in frames', () => {
  it('sends heartbeat and pong times in whole milliseconds when the clock has a fraction', async () => {
    // Not shorter: a socket whose pong has not come back by the next tick is terminated, and a loaded
    // machine held this process's own client past a 20 ms interval (no pong, no more frames).
    await session.start({ clock: fractionalClock, heartbeatIntervalMs: 500 });
    const client = await session.connect({ user: 'alice' });
    client.send({ type: 'ping', id: 'p' });
    const pong = await client.next((frame) => frame.type === 'pong');
    const heartbeat = await client.next((frame) => frame.type === 'heartbeat');
    // The session also checks every frame with decodeServerFrame after the test.
    expect(Number.isInteger(pong.time)).toBe(true);
    expect(Number.isInteger(heartbeat.time)).toBe(true);
  });

  it('writes SSE heartbeat times in whole milliseconds', async () => {
    const env = await session.start({ clock: fractionalClock, heartbeatIntervalMs: 20 });
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    const response = await new Promise<IncomingMessage>((resolve, reject) => {
      const req = httpRequest(
        `${env.httpUrl}/progress/tasks/${task.id}/stream`,
        { headers: { 'x-user': 'alice' } },
        resolve,
      );
      req.on('error', reject);
      req.end();
    });
    try {
      response.setEncoding('utf8');
      let text = '';
      const heartbeat = await new Promise<string>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no heartbeat; got ${text}`)), 5000);
        response.on('data', (chunk: string) => {
          text += chunk;
          const match = /^: heartbeat (\S+)$/m.exec(text);
          if (match?.[1] !== undefined) {
            clearTimeout(timer);
            resolve(match[1]);
          }
        });
      });
      expect(heartbeat).toMatch(/^\d+$/);
    } finally {
      response.destroy();
    }
  });

  it('keeps an SSE stream and the process up when the clock throws at a heartbeat, and counts it', async () => {
    let broken = false;
    const clock = (): number => (broken ? Number.NaN : Date.now());
    const env = await session.start({ clock, heartbeatIntervalMs: 20 });
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    const response = await new Promise<IncomingMessage>((resolve, reject) => {
      const req = httpRequest(
        `${env.httpUrl}/progress/tasks/${task.id}/stream`,
        { headers: { 'x-user': 'alice' } },
        resolve,
      );
      req.on('error', reject);
      req.end();
    });
    try {
      response.setEncoding('utf8');
      let text = '';
      // Until 7 December 2026 the clock's throw left the heartbeat's timer: an uncaught exception (which
      // ends a Node process by default), and no heartbeat without a time ever came.
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no heartbeat without a time; got ${text}`)), 5000);
        response.on('data', (chunk: string) => {
          text += chunk;
          if (/^: heartbeat \d+$/m.test(text)) broken = true;
          if (/^: heartbeat$/m.test(text)) {
            clearTimeout(timer);
            resolve();
          }
        });
      });
      const errors = await env.server.metrics.registry.getSingleMetricAsString(
        'finishline_handler_errors_total',
      );
      expect(errors).toMatch(/finishline_handler_errors_total [1-9]/);
    } finally {
      broken = false;
      response.destroy();
    }
  });

  it("ends an SSE stream whose credential's expiry it cannot time (the clock threw), and counts it", async () => {
    let broken = false;
    const env = await session.start({
      clock: () => (broken ? Number.NaN : Date.now()),
      heartbeatIntervalMs: 60_000,
      authenticate: (request) => {
        const principal = headerAuth(request);
        return principal === null ? null : { ...principal, expiresAt: Date.now() + 3_600_000 };
      },
      // The last hook before the stream sets its expiry timer, the next read of the clock.
      authorize: () => {
        broken = true;
        return true;
      },
    });
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    const response = await new Promise<IncomingMessage>((resolve, reject) => {
      const req = httpRequest(
        `${env.httpUrl}/progress/tasks/${task.id}/stream`,
        { headers: { 'x-user': 'alice' } },
        resolve,
      );
      req.on('error', reject);
      req.end();
    });
    try {
      response.resume();
      // Until 7 December 2026 the throw left the stream open, its first read never started, its timers
      // set: nothing but heartbeats for as long as the reader stayed (the expiry never timed).
      const ended = await new Promise<boolean>((resolve) => {
        const bound = setTimeout(() => resolve(false), 3000);
        response.on('end', () => {
          clearTimeout(bound);
          resolve(true);
        });
      });
      broken = false;
      expect(ended).toBe(true);
      const errors = await env.server.metrics.registry.getSingleMetricAsString(
        'finishline_handler_errors_total',
      );
      expect(errors).toMatch(/finishline_handler_errors_total [1-9]/);
    } finally {
      broken = false;
      response.destroy();
    }
  });

  it('fails a read of a clock that returns no time with internal, naming the option', () => {
    const options = resolveServerOptions({
      store: { getTask: () => undefined } as never,
      authenticate: headerAuth,
      clock: () => Number.NaN,
    });
    let error: unknown;
    try {
      options.clock();
    } catch (caught) {
      error = caught;
    }
    expect(isProgressError(error, ErrorCode.Internal)).toBe(true);
    expect((error as Error).message).toContain('ProgressServer: clock');
  });
});

describe('a clock that throws while an ack is handled', () => {
  // Found by a review (7 December 2026): the ack of a terminal event reads the clock twice (its push→ack
  // latency, its round trip for the terminal re-send's timeout), and a clock that threw at either (one
  // that returned NaN once) failed the frame before its ack reached the store: the task's processed mark
  // was lost, and the client's re-ack was taken for a repeat.
  it.each([
    ['its latency', 0],
    ['its round trip', 1],
  ])('records the ack of a terminal event when the clock throws as %s is read', async (_read, skip) => {
    let readsToSkip = Number.POSITIVE_INFINITY;
    const env = await session.start({
      clock: () => {
        if (readsToSkip-- === 0) return Number.NaN;
        return Date.now();
      },
      // No re-send timer reads the clock while the ack is on its way.
      terminalRetry: { initialDelayMs: 60_000, maxDelayMs: 60_000 },
      heartbeatIntervalMs: 60_000,
    });
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    const client = await session.connect({ user: 'alice' });
    client.send({ type: 'subscribe', taskId: task.id, afterSeq: 0 });
    await client.next((frame) => frame.type === 'snapshot');
    await task.complete();
    const terminal = await client.next((frame) => frame.type === 'event');
    readsToSkip = skip;
    client.send({ type: 'ack', taskId: task.id, seq: (terminal.event as { seq: number }).seq });
    await client.sync();
    readsToSkip = Number.POSITIVE_INFINITY;
    await env.server.close({ timeoutMs: 1000 });
    expect((await env.store.getTask(task.id))?.ackedSeq).toBe(1);
  });
});

describe('a clock that throws while a ping is answered', () => {
  // Found by a review (7 December 2026): the ping's `internal` error carried no `requestId`, so the client
  // could not match it to its ping, as it matches every other frame's error.
  it('answers the ping with an internal error that echoes its id', async () => {
    let readsToSkip = Number.POSITIVE_INFINITY;
    await session.start({
      // A clock that fails once (returns NaN), at the pong's read.
      clock: () => (readsToSkip-- === 0 ? Number.NaN : Date.now()),
      heartbeatIntervalMs: 60_000,
    });
    const client = await session.connect({ user: 'alice' });
    // The frame budget reads it five times before the ping is handled (a socket's bucket, the principal's).
    readsToSkip = 5;
    client.send({ type: 'ping', id: 'p1' });
    const error = await client.next((frame) => frame.type === 'error');
    readsToSkip = Number.POSITIVE_INFINITY;
    expect(error).toMatchObject({ type: 'error', code: 'internal', requestId: 'p1' });
    // The socket goes on: the next ping is answered.
    client.send({ type: 'ping', id: 'p2' });
    expect(await client.next((frame) => frame.type === 'pong')).toMatchObject({ requestId: 'p2' });
  });
});

describe('a clock that throws inside the frame budget', () => {
  // Found by a review (7 December 2026): the budget reads the clock (the socket's bucket, the principal's,
  // a refusal's time) before the frame is handled, and its throw reached the connection's guard, whose
  // `internal` error named no frame: the client could not match it to its request (docs/protocol.md: an
  // error answering a request carries its `requestId`).
  it.each([
    ["the socket's bucket", 0],
    // Its second read is the principal budgets' sweep, which skips itself when the clock throws.
    ["the principal's bucket", 2],
    ["the socket's bucket as the token is taken", 3],
  ])('answers a ping with an internal error that echoes its id when %s reads it', async (_read, skip) => {
    let readsToSkip = Number.POSITIVE_INFINITY;
    await session.start({
      clock: () => (readsToSkip-- === 0 ? Number.NaN : Date.now()),
      heartbeatIntervalMs: 60_000,
    });
    const client = await session.connect({ user: 'alice' });
    readsToSkip = skip;
    client.send({ type: 'ping', id: 'p1' });
    const error = await client.next((frame) => frame.type === 'error');
    readsToSkip = Number.POSITIVE_INFINITY;
    expect(error).toMatchObject({ type: 'error', code: 'internal', requestId: 'p1' });
    client.send({ type: 'ping', id: 'p2' });
    expect(await client.next((frame) => frame.type === 'pong')).toMatchObject({ requestId: 'p2' });
  });

  it("answers a subscribe with an internal error that echoes its id and task when the budget's clock throws", async () => {
    let broken = false;
    const env = await session.start({
      clock: () => (broken ? Number.NaN : Date.now()),
      heartbeatIntervalMs: 60_000,
    });
    const task = await env.server.tasks.create({ owner: 'alice', kind: 'k' });
    const client = await session.connect({ user: 'alice' });
    broken = true;
    client.send({ type: 'subscribe', id: 's1', taskId: task.id, afterSeq: 0 });
    const error = await client.next((frame) => frame.type === 'error');
    broken = false;
    expect(error).toMatchObject({ type: 'error', code: 'internal', requestId: 's1', taskId: task.id });
  });

  it('answers an invalid frame with an internal error that echoes its id when the budget reads it', async () => {
    let broken = false;
    await session.start({
      clock: () => (broken ? Number.NaN : Date.now()),
      heartbeatIntervalMs: 60_000,
    });
    const client = await session.connect({ user: 'alice' });
    broken = true;
    client.sendRaw(JSON.stringify({ type: 'subscribe', id: 's2', taskId: 't', afterSeq: -1 }));
    const error = await client.next((frame) => frame.type === 'error');
    broken = false;
    expect(error).toMatchObject({ type: 'error', code: 'internal', requestId: 's2' });
  });
});
