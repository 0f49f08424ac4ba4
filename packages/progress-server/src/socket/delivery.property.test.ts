import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { TaskEvent, TaskView } from '@finishline/core';
import { MemoryProgressStore, PROTOCOL_NAME } from '@finishline/core';
import { propertyParams, propertyTimeoutMs } from '@finishline/core/testing';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import { ProgressServer } from '../progress-server.js';
import {
  headerAuth,
  RawClient,
  type Received,
  seqOf,
  serverFrameViolations,
  WAIT_MS,
} from '../testing/harness.js';

/**
 * Guarantee 2 at the server: whatever the interleaving of commits, resume points and congestion, each
 * socket receives a task's log in seq order, with nothing but `progress` skipped, every skip bridged by a
 * snapshot that matches the log, every item event intact, and the terminal event exactly once.
 */

const congestion = { on: false };
const store = new MemoryProgressStore();
let server: ProgressServer;
let url: string;
const cleanups: Array<() => Promise<unknown>> = [];

beforeAll(async () => {
  const httpServer = createServer();
  const wss = new WebSocketServer({ server: httpServer, handleProtocols: () => PROTOCOL_NAME });
  const real = Object.getOwnPropertyDescriptor(WebSocket.prototype, 'bufferedAmount')?.get;
  wss.on('connection', (ws) => {
    Object.defineProperty(ws, 'bufferedAmount', {
      get: () => (congestion.on ? Number.MAX_SAFE_INTEGER : (real?.call(ws) as number)),
    });
  });
  await new Promise<void>((resolve) => httpServer.listen(0, '127.0.0.1', resolve));
  server = new ProgressServer({
    store,
    wss,
    authenticate: headerAuth,
    backpressurePollMs: 1,
    // Retries would repeat the terminal frame; this test checks the first delivery.
    terminalRetry: { initialDelayMs: 60_000, maxDelayMs: 60_000 },
    // Every run is principal `alice`, three frames each: at 1,000 runs on a fast machine that is about 900
    // frames a second (measured), above the principal's default budget of 500, whose refusals this raw
    // client does not retry (a ProgressClient does). Rate limits have their own tests.
    rateLimitPerPrincipalPerSecond: 1_000_000,
  });
  url = `ws://127.0.0.1:${(httpServer.address() as AddressInfo).port}/`;
  cleanups.push(async () => {
    await server.close({ timeoutMs: 500 });
    wss.close();
    await new Promise((resolve) => httpServer.close(resolve));
  });
});

afterAll(async () => {
  for (const cleanup of cleanups.splice(0)) await cleanup();
  // Checked last, once every frame arrived and the cleanup ran.
  expect(serverFrameViolations.splice(0)).toEqual([]);
});

type Op =
  | { kind: 'progress'; task: number }
  | { kind: 'item'; task: number; ok: boolean }
  | { kind: 'congest'; on: boolean }
  | { kind: 'yield' };

const opArbitrary: fc.Arbitrary<Op> = fc.oneof(
  { weight: 5, arbitrary: fc.record({ kind: fc.constant('progress' as const), task: fc.nat(1) }) },
  {
    weight: 3,
    arbitrary: fc.record({ kind: fc.constant('item' as const), task: fc.nat(1), ok: fc.boolean() }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('congest' as const), on: fc.boolean() }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'yield' as const }) },
);

/** From the start, from the current seq (nothing to replay) or anywhere between, each a third of the time. */
const resumeArbitrary = fc.oneof(fc.constant(0), fc.constant(1), fc.double({ min: 0, max: 1, noNaN: true }));

const scenario = fc.record({
  initial: fc.tuple(fc.nat(6), fc.nat(6)),
  /** Where each subscription resumes, as a fraction of the task's seq at that moment. */
  resume: fc.tuple(resumeArbitrary, resumeArbitrary),
  ops: fc.array(opArbitrary, { maxLength: 60, size: 'max' }),
});

/** Checks one task's frames against its log. */
function checkStream(frames: Received[], log: TaskEvent[], afterSeq: number): void {
  const terminal = log.at(-1) as TaskEvent;
  expect(frames.length).toBeGreaterThan(0);
  let previous = afterSeq;
  let first = true;
  for (const frame of frames) {
    const seq = seqOf(frame);
    if (frame.type === 'event') {
      // Events arrive exactly as committed, in order.
      expect(frame.event).toEqual(log[seq - 1]);
      expect(seq).toBeGreaterThan(previous);
    } else {
      const view = frame.task as TaskView;
      // The first frame of a fresh subscribe may be a snapshot restating the resume point, never one
      // behind it; any later snapshot moves forward.
      expect(seq).toBeGreaterThanOrEqual(first ? previous : previous + 1);
      if (seq > 0) expect(view.done).toBe(log[seq - 1]?.progress.done);
      if (seq > 0) expect(view.message).toBe(log[seq - 1]?.progress.message);
    }
    // Whatever was skipped between two frames is progress only.
    for (let skipped = previous + 1; skipped < seq; skipped++) {
      expect(log[skipped - 1]?.type).toBe('progress');
    }
    previous = Math.max(previous, seq);
    first = false;
  }
  const terminals = frames.filter((frame) => frame.type === 'event' && seqOf(frame) === terminal.seq);
  expect(terminals).toHaveLength(1);
  expect(previous).toBe(terminal.seq);
}

/** How long the property may run (its 40 runs took 0.2–1.5 s here), scaled with its run count. */
const TIME_LIMIT_MS = 40_000;

describe('delivery property', () => {
  it(
    'every socket sees each log in order, skipping only progress, with its terminal event once',
    async () => {
      await fc.assert(
        fc.asyncProperty(scenario, async ({ initial, resume, ops }) => {
          congestion.on = false;
          const tasks = await Promise.all(
            [0, 1].map(() => server.tasks.create({ owner: 'alice', kind: 'prop' })),
          );
          for (const [index, count] of initial.entries()) {
            for (let i = 0; i < count; i++) await tasks[index]?.progress({ done: i, message: `init ${i}` });
          }
          const client = await RawClient.connect(url, { user: 'alice' });
          try {
            const afterSeqs = tasks.map((task, index) => Math.floor((resume[index] ?? 0) * task.task.seq));
            for (const [index, task] of tasks.entries()) {
              client.send({ type: 'subscribe', taskId: task.id, afterSeq: afterSeqs[index] });
            }
            await client.sync();
            let step = 0;
            for (const op of ops) {
              step += 1;
              switch (op.kind) {
                case 'progress':
                  await tasks[op.task]?.progress({ done: step, message: `step ${step}` });
                  break;
                case 'item':
                  await tasks[op.task]?.item({ key: `item-${step}`, ok: op.ok });
                  break;
                case 'congest':
                  congestion.on = op.on;
                  break;
                case 'yield':
                  await new Promise((resolve) => setImmediate(resolve));
                  break;
                default: {
                  const unreachable: never = op;
                  throw new Error(`unknown op ${String(unreachable)}`);
                }
              }
            }
            for (const task of tasks) await task.complete();
            congestion.on = false;
            for (const task of tasks) {
              await client.next(
                (frame) =>
                  frame.type === 'event' &&
                  (frame.event as TaskEvent).taskId === task.id &&
                  (frame.event as TaskEvent).type === 'completed',
              );
            }
            for (const [index, task] of tasks.entries()) {
              checkStream(client.about(task.id), await store.readEvents(task.id, 0), afterSeqs[index] ?? 0);
            }
          } finally {
            congestion.on = false;
            await client.close();
          }
        }),
        {
          ...propertyParams(40),
          // A failing run may wait WAIT_MS for a frame that never comes, and so may each shrink step: without
          // a limit the test timed out first, and fast-check reported no seed, path or counterexample. Stopped
          // here (shrinking cut short), it reports them, the smallest counterexample found so far included.
          interruptAfterTimeLimit: propertyTimeoutMs(40, TIME_LIMIT_MS),
          markInterruptAsFailure: true,
        },
      );
    },
    propertyTimeoutMs(40, TIME_LIMIT_MS + 2 * WAIT_MS),
  );
});
