import type { ServerFrame, TerminalType } from '@finishline/core';
import { ErrorCode, PROTOCOL_VERSION } from '@finishline/core';
import { propertyParams, propertyTimeoutMs } from '@finishline/core/testing';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { httpFallback } from './http-fallback.js';
import { MemoryCursorStorage } from './persist.js';
import { ProgressClient } from './progress-client.js';
import { FakeServer, type FakeSocket, FakeTask } from './testing/fake-server.js';
import { FakeHttp } from './testing/harness.js';
import { ManualScheduler } from './testing/manual-scheduler.js';
import { WatchLog } from './testing/watch-log.js';
import type { Watch } from './watch.js';

/**
 * Guarantees 1 and 2 of the design, on the client side, under random fault schedules: whatever frames are
 * dropped, duplicated or swapped, however often the connection is cut or refused and the page reloaded,
 * every watch's application callbacks see its task's events in seq order with no gap and no duplicate,
 * and the final page sees the terminal event exactly once.
 *
 * The server is a model that follows docs/protocol.md (snapshot or replay on subscribe, live events,
 * heartbeats with the latest seqs, terminal re-sends until acked, `invalid_input` for an ack beyond what
 * was sent); the network between it and the client is where the faults happen.
 */

type Step =
  | { kind: 'publish'; task: number }
  | { kind: 'deliver' }
  | { kind: 'drop' }
  | { kind: 'duplicate' }
  | { kind: 'swap' }
  | { kind: 'heartbeat' }
  | { kind: 'accept' }
  | { kind: 'refuse' }
  | { kind: 'cut' }
  | { kind: 'advance'; ms: number }
  | { kind: 'reload' }
  | { kind: 'lose' };

/** The faults a run can contain, counted when they really happened (a drop with nothing queued is none). */
const FAULTS = [
  'event dropped',
  'event duplicated',
  'events reordered',
  'terminal dropped',
  'socket cut',
  'reconnect refused',
  'reload',
  'ack lost',
  'subscribe lost',
] as const;
type Fault = (typeof FAULTS)[number];

/**
 * The least share of runs each fault must occur in: a third to a half of the share measured with the default
 * seed (docs/testing.md lists both), so another seed does not fail by chance. Checked after
 * the property, so a generator change that stops producing one fails the test instead of silently testing less.
 */
const MIN_SHARE: Record<Fault, number> = {
  'event dropped': 0.15,
  'event duplicated': 0.15,
  'events reordered': 0.12,
  'terminal dropped': 0.04,
  'socket cut': 0.3,
  'reconnect refused': 0.15,
  reload: 0.4,
  'ack lost': 0.03,
  'subscribe lost': 0.05,
};

const TERMINAL_TYPES = new Set(['completed', 'failed', 'cancelled', 'interrupted']);

/** Delivers the frames queued before the first event frame; returns that event frame (left queued). */
function toEvent(side: ServerSide): ServerFrame | undefined {
  while (side.queue.length > 0 && eventKind(side.queue[0]) === undefined) {
    side.socket.push(side.queue.shift() as ServerFrame);
  }
  return side.queue[0];
}

function eventKind(frame: ServerFrame | undefined): 'event' | 'terminal' | undefined {
  if (frame?.type !== 'event') return undefined;
  return TERMINAL_TYPES.has(frame.event.type) ? 'terminal' : 'event';
}

interface Plan {
  kind: 'item' | 'progress';
}

/** One socket as the model server sees it. */
class ServerSide {
  readonly queue: ServerFrame[] = [];
  readonly subs = new Map<string, { sent: number; acked: number; ackable: number }>();
  read = 0;

  constructor(readonly socket: FakeSocket) {}
}

class ModelServer {
  readonly sides: ServerSide[] = [];
  readonly invalidAcks: string[] = [];

  constructor(
    readonly fake: FakeServer,
    readonly tasks: Map<string, FakeTask>,
  ) {}

  side(socket: FakeSocket): ServerSide {
    let side = this.sides.find((each) => each.socket === socket);
    if (side === undefined) {
      side = new ServerSide(socket);
      this.sides.push(side);
    }
    return side;
  }

  /** Sockets the client opened that are still waiting for the upgrade. */
  pending(): FakeSocket[] {
    return this.fake.sockets.filter((socket) => socket.readyState === 0);
  }

  open(): ServerSide[] {
    return this.sides.filter((side) => side.socket.readyState === 1);
  }

  accept(socket: FakeSocket): void {
    socket.open();
    const side = this.side(socket);
    side.queue.push({
      type: 'hello',
      protocol: PROTOCOL_VERSION,
      serverId: 'model',
      heartbeatIntervalMs: 1000,
    });
  }

  /** Skips the next frame a client sent that the server has not read yet; returns its type. */
  loseNext(): string | undefined {
    for (const side of this.sides) {
      const frame = side.socket.sent[side.read];
      if (frame !== undefined) {
        side.read += 1;
        return frame.type;
      }
    }
    return undefined;
  }

  /** Reads what the clients sent since last time. */
  receive(): void {
    for (const side of this.sides) {
      while (side.read < side.socket.sent.length) {
        const frame = side.socket.sent[side.read++];
        if (frame === undefined) break;
        switch (frame.type) {
          case 'subscribe': {
            const task = this.tasks.get(frame.taskId);
            if (task === undefined) break;
            const sub = { sent: frame.afterSeq, acked: 0, ackable: frame.afterSeq };
            side.subs.set(frame.taskId, sub);
            if (frame.afterSeq === 0 || frame.afterSeq >= task.seq) {
              side.queue.push({ type: 'snapshot', task: task.view() });
              sub.sent = task.seq;
            }
            for (const event of task.events.slice(sub.sent)) side.queue.push({ type: 'event', event });
            sub.sent = Math.max(sub.sent, task.seq);
            sub.ackable = Math.max(sub.ackable, sub.sent);
            break;
          }
          case 'unsubscribe':
            side.subs.delete(frame.taskId);
            break;
          case 'ack': {
            const sub = side.subs.get(frame.taskId);
            if (sub === undefined) break;
            if (frame.seq > sub.ackable) {
              this.invalidAcks.push(`${frame.taskId}@${frame.seq}>${sub.ackable}`);
              side.queue.push({
                type: 'error',
                code: ErrorCode.InvalidInput,
                message: 'ack beyond',
                taskId: frame.taskId,
              });
            } else sub.acked = Math.max(sub.acked, frame.seq);
            break;
          }
          case 'auth':
          case 'ping':
            break;
        }
      }
    }
  }

  publish(task: FakeTask): void {
    for (const side of this.open()) {
      const sub = side.subs.get(task.id);
      if (sub === undefined || sub.sent !== task.seq - 1) continue;
      const event = task.events[task.seq - 1];
      if (event !== undefined) side.queue.push({ type: 'event', event });
      sub.sent = task.seq;
      sub.ackable = task.seq;
    }
  }

  /** Heartbeats, plus the re-send of terminal events not acknowledged yet. */
  heartbeat(): void {
    for (const side of this.open()) {
      const seqs: Record<string, number> = {};
      for (const [taskId, sub] of side.subs) {
        const task = this.tasks.get(taskId) as FakeTask;
        seqs[taskId] = task.seq;
        const last = task.events[task.seq - 1];
        if (task.ended && sub.sent >= task.seq && sub.acked < task.seq && last !== undefined) {
          side.queue.push({ type: 'event', event: last });
        }
      }
      side.queue.push({ type: 'heartbeat', time: 1, seqs });
    }
  }

  /** The first open socket with something queued. */
  busy(): ServerSide | undefined {
    return this.open().find((side) => side.queue.length > 0);
  }
}

const stepArbitrary = (tasks: number): fc.Arbitrary<Step> =>
  fc.oneof(
    {
      weight: 6,
      arbitrary: fc.integer({ min: 0, max: tasks - 1 }).map((task) => ({ kind: 'publish' as const, task })),
    },
    { weight: 4, arbitrary: fc.constant({ kind: 'deliver' as const }) },
    { weight: 3, arbitrary: fc.constant({ kind: 'drop' as const }) },
    { weight: 3, arbitrary: fc.constant({ kind: 'duplicate' as const }) },
    { weight: 3, arbitrary: fc.constant({ kind: 'swap' as const }) },
    { weight: 2, arbitrary: fc.constant({ kind: 'heartbeat' as const }) },
    { weight: 3, arbitrary: fc.constant({ kind: 'accept' as const }) },
    { weight: 1, arbitrary: fc.constant({ kind: 'refuse' as const }) },
    { weight: 1, arbitrary: fc.constant({ kind: 'cut' as const }) },
    {
      weight: 3,
      arbitrary: fc.integer({ min: 0, max: 5000 }).map((ms) => ({ kind: 'advance' as const, ms })),
    },
    { weight: 1, arbitrary: fc.constant({ kind: 'reload' as const }) },
    { weight: 2, arbitrary: fc.constant({ kind: 'lose' as const }) },
  );

const taskArbitrary = fc.record({
  plan: fc.array(fc.constantFrom<Plan>({ kind: 'item' }, { kind: 'progress' }), {
    minLength: 0,
    maxLength: 8,
    size: 'max',
  }),
  end: fc.constantFrom<TerminalType>('completed', 'failed', 'cancelled', 'interrupted'),
});

describe('random fault schedules', () => {
  it(
    'every page sees a gap-free sequence, and the last one sees every terminal event exactly once',
    async () => {
      const runsWith = new Map<Fault, number>(FAULTS.map((fault) => [fault, 0]));
      let runs = 0;
      await fc.assert(
        fc.asyncProperty(
          fc.array(taskArbitrary, { minLength: 1, maxLength: 3, size: 'max' }),
          fc
            .integer({ min: 1, max: 4 })
            .chain((tasks) => fc.array(stepArbitrary(tasks), { maxLength: 120, size: 'max' })),
          async (specs, steps) => {
            const happened = new Set<Fault>();
            // Totals are known up front when the plan has items, so the 100% watchdog has work to do.
            const fakeTasks = specs.map((spec, index) => {
              const items = spec.plan.filter((plan) => plan.kind === 'item').length;
              return new FakeTask(`task-${index}`, items === 0 ? null : items);
            });
            const tasks = new Map(fakeTasks.map((task) => [task.id, task]));
            const progressOf = specs.map(() => 0);
            const fake = new FakeServer();
            const model = new ModelServer(fake, tasks);
            const http = new FakeHttp();
            for (const task of fakeTasks) http.tasks.set(task.id, task);
            const storage = new MemoryCursorStorage();
            const pages: {
              client: ProgressClient;
              scheduler: ManualScheduler;
              logs: WatchLog[];
              watches: Watch[];
            }[] = [];

            const openPage = () => {
              const scheduler = new ManualScheduler();
              const client = new ProgressClient({
                url: 'ws://model.test/progress',
                WebSocket: fake.WebSocket,
                fetch: http.fetch,
                httpFallback: httpFallback(),
                timers: scheduler,
                clock: scheduler.now,
                random: () => 0.5,
                persistence: storage,
              });
              client.on('error', () => undefined);
              const watches = fakeTasks.map((task) => client.watch(task.id));
              pages.push({ client, scheduler, watches, logs: watches.map((watch) => new WatchLog(watch)) });
            };
            const page = () => pages[pages.length - 1] as (typeof pages)[number];

            const publish = (index: number) => {
              const task = fakeTasks[index];
              const spec = specs[index];
              if (task === undefined || spec === undefined || task.ended) return;
              const next = spec.plan[progressOf[index] ?? 0];
              if (next === undefined) task.end(spec.end);
              else {
                progressOf[index] = (progressOf[index] ?? 0) + 1;
                if (next.kind === 'item') task.item(`item-${task.seq}`);
                else task.progress(0, `step ${task.seq}`);
              }
              model.publish(task);
            };

            openPage();
            // The first connection succeeds, so the fault phase has live streams to tamper with.
            for (const socket of model.pending()) model.accept(socket);
            for (const step of steps) {
              if (step.kind === 'lose') {
                // Client → server: the next frame a client sent (an ack, a subscribe…) never reaches the server.
                const lost = model.loseNext();
                if (lost === 'ack') happened.add('ack lost');
                if (lost === 'subscribe') happened.add('subscribe lost');
              }
              model.receive();
              const side = model.busy();
              switch (step.kind) {
                case 'publish':
                  publish(step.task % fakeTasks.length);
                  break;
                case 'deliver': {
                  const frame = side?.queue.shift();
                  if (side !== undefined && frame !== undefined) side.socket.push(frame);
                  break;
                }
                // Frame faults hit the first event frame queued: the frames before it are delivered.
                case 'drop': {
                  const kind = eventKind(side === undefined ? undefined : toEvent(side));
                  side?.queue.shift();
                  if (kind !== undefined)
                    happened.add(kind === 'terminal' ? 'terminal dropped' : 'event dropped');
                  break;
                }
                case 'duplicate': {
                  const frame = side === undefined ? undefined : toEvent(side);
                  if (side !== undefined && frame !== undefined) side.socket.push(frame);
                  if (eventKind(frame) !== undefined) happened.add('event duplicated');
                  break;
                }
                case 'swap':
                  if (side !== undefined) toEvent(side);
                  if (side !== undefined && side.queue.length >= 2) {
                    const [a, b] = side.queue;
                    if (eventKind(a) !== undefined || eventKind(b) !== undefined)
                      happened.add('events reordered');
                    side.queue[0] = b as ServerFrame;
                    side.queue[1] = a as ServerFrame;
                  }
                  break;
                case 'heartbeat':
                  model.heartbeat();
                  break;
                case 'accept': {
                  const socket = model.pending()[0];
                  if (socket !== undefined) model.accept(socket);
                  break;
                }
                case 'refuse': {
                  const socket = model.pending()[0];
                  if (socket !== undefined) happened.add('reconnect refused');
                  socket?.serverClose(1006);
                  break;
                }
                case 'cut': {
                  const open = model.open()[0];
                  if (open !== undefined) happened.add('socket cut');
                  open?.socket.serverClose(1006);
                  break;
                }
                case 'lose':
                  break;
                case 'advance':
                  await page().scheduler.advance(step.ms);
                  break;
                case 'reload': {
                  // The page goes away without a goodbye: its sockets die, its timers with it.
                  const sockets = fake.sockets.filter((socket) => socket.readyState !== 3);
                  for (const socket of sockets) socket.serverClose(1006);
                  happened.add('reload');
                  openPage();
                  break;
                }
              }
              await Promise.resolve();
            }

            // Heal: no more faults. Everything is published, delivered and given time.
            for (let index = 0; index < fakeTasks.length; index++) {
              while (!(fakeTasks[index] as FakeTask).ended) publish(index);
            }
            for (let round = 0; round < 200; round++) {
              if (page().watches.every((watch) => watch.getSnapshot().finished)) break;
              for (const socket of model.pending()) model.accept(socket);
              for (let guard = 0; guard < 1000; guard++) {
                model.receive();
                const side = model.busy();
                const frame = side?.queue.shift();
                if (side === undefined || frame === undefined) break;
                side.socket.push(frame);
              }
              model.heartbeat();
              await page().scheduler.advance(1000);
            }

            for (const each of pages) {
              for (const log of each.logs) {
                expect(log.problems).toEqual([]);
                expect(log.terminals.length).toBeLessThanOrEqual(1);
                expect(log.finished).toBe(log.terminals.length);
              }
            }
            const last = page();
            for (const [index, watch] of last.watches.entries()) {
              const task = fakeTasks[index] as FakeTask;
              const expected = task.view();
              expect(watch.getSnapshot()).toMatchObject({
                finished: true,
                status: expected.status,
                seq: expected.seq,
                progress: { done: expected.done },
              });
              expect(last.logs[index]?.terminals.length).toBe(1);
            }
            expect(model.invalidAcks).toEqual([]);
            for (const each of pages) await each.client.close();
            runs += 1;
            for (const fault of happened) runsWith.set(fault, (runsWith.get(fault) ?? 0) + 1);
          },
        ),
        propertyParams(150),
      );
      const shares = Object.fromEntries(FAULTS.map((fault) => [fault, (runsWith.get(fault) ?? 0) / runs]));
      for (const fault of FAULTS) {
        expect(
          shares[fault],
          `share of runs with "${fault}": ${JSON.stringify(shares)}`,
        ).toBeGreaterThanOrEqual(MIN_SHARE[fault]);
      }
      // ~2 s here; the full-size schedules need more than vitest's 5 s default on a loaded machine.
    },
    propertyTimeoutMs(150, 30_000),
  );
});
