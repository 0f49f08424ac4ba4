import type { ChangeListener, ProgressStore, Task, TaskChange, TaskEvent, TaskView } from '@finishline/core';
import { ErrorCode, MemoryProgressStore, ProgressError } from '@finishline/core';
import { ManualClock, propertyParams, propertyTimeoutMs } from '@finishline/core/testing';
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../logger.js';
import { ServerMetrics } from '../metrics.js';
import { FairReads } from './fair-reads.js';
import { TaskHub } from './task-hub.js';
import type { StreamSink, TaskStream } from './task-stream.js';

/**
 * The hub and its streams against a hostile feed and store: change notices out of order, repeated,
 * dropped (a later safety-net poll covers them), with or without their events; local appends whose call
 * returns after the feed told their commit; store reads (loads, catch-ups, the hub's own) that answer in
 * any order, from the store as it was when they started or as it is when they answer, and that fail
 * (the client subscribes again from what it holds); subscribers that come at any cursor (replay from
 * it, or a resume) and go throughout; the id taken again after retention purged its ended run (the hub
 * restarts the old run's subscribers, who load the new one); and store epoch renewals (the hub forgets
 * its seqs with reads and notices in flight, every subscription starts over). Whatever the
 * interleaving, each stream hands over its run's log after its cursor, in order and nothing twice,
 * never another run's events, and every subscriber still open ends with its run's terminal event.
 */

const closers: Array<() => void> = [];
afterEach(() => {
  for (const close of closers.splice(0)) close();
});

type Op =
  | { kind: 'append' }
  | { kind: 'reuse'; tell: boolean; spanned: boolean }
  | { kind: 'renew' }
  | { kind: 'local' }
  | { kind: 'land'; index: number }
  | { kind: 'notify'; index: number; withEvents: boolean }
  | { kind: 'duplicate'; index: number }
  | { kind: 'drop'; index: number }
  | { kind: 'poll' }
  | { kind: 'subscribe'; cursor: number; resume: boolean }
  | { kind: 'unsubscribe'; index: number }
  | { kind: 'answer'; index: number; late: boolean }
  | { kind: 'fail' }
  | { kind: 'yield' };

const opArbitrary: fc.Arbitrary<Op> = fc.oneof(
  { weight: 4, arbitrary: fc.constant({ kind: 'append' as const }) },
  {
    weight: 1,
    arbitrary: fc.record({ kind: fc.constant('reuse' as const), tell: fc.boolean(), spanned: fc.boolean() }),
  },
  { weight: 1, arbitrary: fc.constant({ kind: 'renew' as const }) },
  { weight: 2, arbitrary: fc.constant({ kind: 'local' as const }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('land' as const), index: fc.nat(3) }) },
  {
    weight: 4,
    arbitrary: fc.record({
      kind: fc.constant('notify' as const),
      index: fc.nat(7),
      withEvents: fc.boolean(),
    }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('duplicate' as const), index: fc.nat(20) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('drop' as const), index: fc.nat(7) }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'poll' as const }) },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant('subscribe' as const),
      cursor: fc.double({ min: 0, max: 1, noNaN: true }),
      resume: fc.boolean(),
    }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('unsubscribe' as const), index: fc.nat(10) }) },
  {
    weight: 5,
    arbitrary: fc.record({ kind: fc.constant('answer' as const), index: fc.nat(5), late: fc.boolean() }),
  },
  { weight: 1, arbitrary: fc.constant({ kind: 'fail' as const }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'yield' as const }) },
);

/** One stream of a subscriber: from a load of one run of the id, after `cursor`. */
interface Segment {
  /** The `createdAt` of the run loaded. */
  run: number;
  cursor: number;
  /** What it was handed, in order: events, and snapshots (`view`). */
  items: Array<TaskEvent | { view: TaskView }>;
}

/** A socket's subscription to the id: a new stream (segment) each time the hub restarts it. */
interface Subscriber {
  segments: Segment[];
  /** Anything else its streams' sinks were told. */
  calls: string[];
  stream: TaskStream;
  closed: boolean;
}

/** A store read held until the test answers it. */
interface HeldRead {
  /** Reads the store (now, or as it was when the read started). */
  answer(late: boolean): void;
}

const noop = (): void => undefined;

/** The seq a segment reached: its last event's, or snapshot's. */
function positionOf(segment: Segment): number {
  const last = segment.items.at(-1);
  if (last === undefined) return segment.cursor;
  return 'view' in last ? last.view.seq : last.seq;
}

/** Lets every microtask and immediate queued so far run. */
const settle = () => new Promise((resolve) => setImmediate(resolve));

/**
 * One scenario. `knowsRuns`: the feed names each change's run, as the built-in stores' feeds do. One that
 * does not tells the hub of the id's new run only through the seqs of the old run's end: when the new
 * run's commits are heard before that end, above every seq the hub knows, they are read and handed out
 * as the old run's (see `TaskChange.run`), so such a feed here always tells a run's end before its purge.
 */
async function run(ops: Op[], knowsRuns: boolean): Promise<void> {
  const clock = new ManualClock(1_000_000);
  const store = new MemoryProgressStore({ clock: clock.now });
  let task = await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' });
  /** Each run's log (`createdAt` to events), once the run was purged. */
  const logs = new Map<number, TaskEvent[]>();
  const listeners = new Set<ChangeListener>();
  const held: HeldRead[] = [];
  let failNext = 0;
  let appended = 0;
  /** Appends committed through this process whose call has not returned yet. */
  const landing: Array<() => void> = [];

  /** A read answered when the test says, from the store as it was then or as it is now. */
  function hold<T>(read: () => Promise<T>): Promise<T> {
    const early = read();
    // An answer not taken (the read answered late) must not go unhandled.
    early.catch(noop);
    const failing = failNext > 0;
    if (failing) failNext -= 1;
    return new Promise<T>((resolve, reject) => {
      held.push({
        answer: (late) => {
          if (failing) reject(new ProgressError(ErrorCode.StoreUnavailable, 'read failed once'));
          else (late ? read() : early).then(resolve, reject);
        },
      });
    });
  }

  const seen = {
    changes: {
      subscribe: (listener: ChangeListener) => {
        listeners.add(listener);
        return () => listeners.delete(listener);
      },
    },
    getTask: (taskId: string) => hold(() => store.getTask(taskId)),
    readEvents: (taskId: string, afterSeq: number, limit?: number) =>
      hold(() => store.readEvents(taskId, afterSeq, limit)),
  } as unknown as ProgressStore;
  const reads = new FairReads({ maxConcurrent: 4, maxPerPrincipal: 2 });
  const hub = new TaskHub({
    store: seen,
    logger: silentLogger,
    metrics: new ServerMetrics({ registry: undefined, prefix: 'test_', feed: store.changes }),
    retryDelayMs: 1,
    reads,
    maxReplayEvents: 1000,
  });
  hub.start();
  closers.push(() => {
    hub.close();
    reads.close();
  });

  /** `change` as the feed tells it: without its run, for a feed that does not know it. */
  const told = (change: TaskChange): TaskChange => {
    if (knowsRuns) return change;
    const { run: _run, ...runless } = change;
    return runless;
  };
  const emit = (change: TaskChange) => {
    for (const listener of [...listeners]) listener(change);
  };
  /** Changes committed and not yet told (`unsent`), told (`sent`). */
  const unsent: TaskChange[] = [];
  const sent: TaskChange[] = [];
  const subscribers: Subscriber[] = [];

  const changeOf = (event: TaskEvent, run: number): TaskChange => ({
    taskId: task.id,
    seq: event.seq,
    terminal: event.type === 'completed',
    events: [event],
    run,
  });

  async function append(type: 'progress' | 'completed'): Promise<TaskEvent> {
    clock.advance(1);
    appended += 1;
    const input = type === 'progress' ? { type, done: appended } : { type };
    const { event } = await store.append(task.id, input);
    return event;
  }

  /**
   * Opens a stream for `subscriber` from a load: a subscribe after `fraction` of the loaded seq; for a
   * restart (`fraction` 1), after the reset snapshot of the run found, as a socket subscription starts
   * over; after a failed subscribe, again from what the subscriber holds (`after`, of run `run`), as a
   * client does.
   */
  function open(subscriber: Subscriber, fraction: number, resume: boolean, after?: Segment): void {
    let segment: Segment | undefined;
    /** The subscribe failed: the client subscribes again from where it is. */
    const again = () => {
      if (subscriber.closed || subscriber.stream !== stream) return;
      stream.close();
      open(subscriber, fraction, resume, segment ?? after);
    };
    const sink: StreamSink = {
      events: (events) => {
        for (const event of events) segment?.items.push(event);
      },
      snapshot: (view: TaskView) => segment?.items.push({ view }),
      reset: (view: TaskView) => subscriber.calls.push(`reset@${view.seq}`),
      gone: () => subscriber.calls.push('gone'),
      failed: again,
      caughtUp: noop,
      internalError: (error) => subscriber.calls.push(`internal:${String(error)}`),
      isOpen: () => true,
      restart: () => {
        if (subscriber.closed || subscriber.stream !== stream) return;
        stream.close();
        open(subscriber, 1, false);
      },
    };
    const stream = hub.stream(task.id, 'alice', sink);
    subscriber.stream = stream;
    void stream.load().then((loaded: Task | null | undefined) => {
      if (loaded === null) return;
      if (loaded === undefined) {
        subscriber.calls.push('load:gone');
        return;
      }
      const held = after !== undefined && after.run === loaded.createdAt ? positionOf(after) : undefined;
      const cursor = held ?? Math.floor(fraction * loaded.seq);
      segment = { run: loaded.createdAt, cursor, items: [] };
      subscriber.segments.push(segment);
      // As a socket subscribe does: a cursor inside the log resumes (answered by what the catch-up
      // finds), any other starts after a snapshot the subscribe sent itself.
      if ((resume || held !== undefined) && cursor > 0 && cursor < loaded.seq)
        stream.resume(cursor, loaded.seq, loaded.createdAt);
      else
        stream.start(
          cursor,
          cursor === loaded.seq && loaded.status !== 'running',
          loaded.seq,
          loaded.createdAt,
        );
    }, again);
  }

  /** Answers every read, and those they lead to (retries included), until none is asked for a while. */
  async function drain(): Promise<void> {
    failNext = 0;
    for (let quiet = 0; quiet < 5; ) {
      await settle();
      await new Promise((resolve) => setTimeout(resolve, 2));
      if (held.length === 0) quiet += 1;
      else quiet = 0;
      for (const read of held.splice(0)) read.answer(true);
    }
  }

  function subscribe(fraction: number, resume: boolean): void {
    const subscriber: Subscriber = {
      segments: [],
      calls: [],
      closed: false,
      stream: undefined as unknown as TaskStream,
    };
    subscribers.push(subscriber);
    open(subscriber, fraction, resume);
  }

  for (const op of ops) {
    switch (op.kind) {
      case 'append': {
        const event = await append('progress');
        unsent.push(changeOf(event, task.createdAt));
        break;
      }
      case 'reuse': {
        // The run ends, retention purges it, and the id is taken again: a new run from seq 1.
        const event = await append('completed');
        unsent.push(changeOf(event, task.createdAt));
        logs.set(task.createdAt, await store.readEvents(task.id, 0));
        // Retention's age passes: no notice is still on its way (told, or lost for good: a listener that
        // was away) and no append call is still to return. Repeats of notices already told may still come.
        // A feed that does not name runs must have told the old run's end (see `run`).
        for (const change of unsent.splice(0)) if (op.tell || !knowsRuns) emit(told(change));
        for (const land of landing.splice(0)) land();
        // `spanned`: the reads still held span the purge and re-creation, and may be answered from the
        // store as it is after them (a read names the id, not the run: the later run's events, at the
        // seqs after what the hub dispatched, passed for the earlier run's until 6 December 2026). Only
        // with a feed that names runs: without, a change of the later run that carries its events, heard
        // while the hub is still behind on the earlier run (its read held), is handed out as the earlier
        // run's (nothing tells the runs apart without a read per change).
        if (op.spanned && knowsRuns) await settle();
        else await drain();
        clock.advance(1);
        await store.purgeFinished({ olderThanMs: 0 });
        clock.advance(1);
        task = await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' });
        break;
      }
      case 'local': {
        // Committed (the feed may tell it from now on), its append call returning when the test says.
        const settled = hub.localAppend(task.id);
        const event = await append('progress');
        const run = task.createdAt;
        unsent.push(changeOf(event, run));
        landing.push(() => {
          // As the server's task API does: with the run appended to.
          hub.publishLocal(event, run);
          settled();
        });
        break;
      }
      case 'renew':
        // The server noticed an epoch renewal (no data lost here): the hub forgets its seqs, and every
        // subscription starts over from a reset snapshot.
        hub.forgetSeqs();
        for (const subscriber of subscribers) {
          if (subscriber.closed) continue;
          subscriber.stream.close();
          open(subscriber, 1, false);
        }
        break;
      case 'land':
        landing.splice(op.index % Math.max(landing.length, 1), 1)[0]?.();
        break;
      case 'notify': {
        const change = unsent.splice(op.index % Math.max(unsent.length, 1), 1)[0];
        if (change === undefined) break;
        const notice = told({ ...change });
        if (!op.withEvents) delete notice.events;
        sent.push(notice);
        emit(notice);
        break;
      }
      case 'duplicate': {
        const change = sent[op.index % Math.max(sent.length, 1)];
        if (change !== undefined) emit(change);
        break;
      }
      case 'drop':
        unsent.splice(op.index % Math.max(unsent.length, 1), 1);
        break;
      case 'poll': {
        const now = await store.getTask(task.id);
        if (now !== undefined && now.seq > 0)
          emit(
            told({ taskId: task.id, seq: now.seq, terminal: now.status !== 'running', run: now.createdAt }),
          );
        break;
      }
      case 'subscribe':
        subscribe(op.cursor, op.resume);
        break;
      case 'unsubscribe': {
        const subscriber = subscribers.filter((s) => !s.closed)[op.index % Math.max(subscribers.length, 1)];
        if (subscriber !== undefined) {
          subscriber.closed = true;
          subscriber.stream.close();
        }
        break;
      }
      case 'answer':
        held.splice(op.index % Math.max(held.length, 1), 1)[0]?.answer(op.late);
        break;
      case 'fail':
        failNext += 1;
        break;
      case 'yield':
        break;
      default: {
        const unreachable: never = op;
        throw new Error(`unknown op ${String(unreachable)}`);
      }
    }
    await settle();
  }

  // The end: the task completes, every notice not dropped arrives, then the safety net's poll, and every
  // read is answered (and retried) until nothing is left to do.
  failNext = 0;
  for (const land of landing.splice(0)) land();
  const terminal = await append('completed');
  unsent.push(changeOf(terminal, task.createdAt));
  for (const change of unsent.splice(0)) emit(told(change));
  emit(told({ taskId: task.id, seq: terminal.seq, terminal: true, run: task.createdAt }));
  await drain();

  logs.set(task.createdAt, await store.readEvents(task.id, 0));
  for (const subscriber of subscribers) {
    for (const segment of subscriber.segments) {
      // Each event the next of its run's log after the cursor, or after a snapshot (never behind).
      const log = logs.get(segment.run) as TaskEvent[];
      let position = segment.cursor;
      for (const item of segment.items) {
        if ('view' in item) {
          expect(item.view.seq).toBeGreaterThanOrEqual(position);
          position = item.view.seq;
        } else {
          expect(item).toEqual(log[position]);
          position = item.seq;
        }
      }
      if (segment !== subscriber.segments.at(-1)) continue;
      // One that left got what it got.
      if (subscriber.closed) continue;
      expect(subscriber.calls).toEqual([]);
      // Every open one reached the end of its run (a later run's stream, once restarted on it).
      expect(position).toBe(log.length);
    }
  }
}

const spannedReadBackfilled: Op[] = [
  { kind: 'local' },
  { kind: 'subscribe', cursor: 0, resume: false },
  { kind: 'append' },
  { kind: 'poll' },
  { kind: 'answer', index: 0, late: false },
  { kind: 'subscribe', cursor: 0, resume: false },
  { kind: 'fail' },
  { kind: 'answer', index: 2, late: false },
  { kind: 'reuse', tell: true, spanned: true },
  { kind: 'reuse', tell: false, spanned: false },
];

describe('hub interleavings', () => {
  it(
    'every open subscriber gets the log after its cursor once, in order, up to its terminal',
    async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.array(opArbitrary, { maxLength: 80, size: 'max' }),
          fc.boolean(),
          async (ops, knowsRuns) => {
            try {
              await run(ops, knowsRuns);
            } finally {
              for (const close of closers.splice(0)) close();
            }
          },
        ),
        {
          ...propertyParams(200),
          // Found by test:deep (seed 691300426): a stream's catch-up read, served after the run was purged
          // and the id written again, was kept in the hub's window before its run was checked, and the
          // next stream's catch-up took the later run's terminal from memory as the earlier run's.
          // fast-check runs it first and counts it among the runs: 199 generated at 200, 999 at 1,000.
          examples: [[spannedReadBackfilled, true]],
        },
      );
    },
    propertyTimeoutMs(200, 60_000),
  );
});
