import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { TaskEvent } from '../model.js';
import type { AppendInput } from '../store/inputs.js';
import { expectInvalidInput } from '../testing/invalid-input.js';
import { propertyParams } from '../testing/property-config.js';
import { buildTaskLog, type TaskLog, taskLogArb, viewAt } from '../testing/task-log-arbitrary.js';
import { type OutgoingEntry, SEND_QUEUE_DEFAULTS, SendQueue } from './send-queue.js';

const progress = (done: number): AppendInput => ({ type: 'progress', done });
const item = (key: string): AppendInput => ({ type: 'item', key, ok: true });

/** Seqs 1–5 progress, 6 item, 7–8 progress, 9 completed. */
const logA = buildTaskLog(
  'a',
  [
    progress(1),
    progress(2),
    progress(3),
    progress(4),
    progress(5),
    item('x'),
    progress(7),
    progress(8),
    { type: 'completed' },
  ],
  10,
);
/** Seqs 1–3 progress, 4 item, 5 failed. */
const logB = buildTaskLog(
  'b',
  [
    progress(1),
    progress(2),
    progress(3),
    item('y'),
    { type: 'failed', error: { code: 'boom', message: 'boom' } },
  ],
  5,
);

const ev = (log: TaskLog, seq: number): TaskEvent => log.events[seq - 1] as TaskEvent;
const meta = (log: TaskLog) => viewAt(log, 0);

function label(entry: OutgoingEntry | undefined): string {
  if (entry === undefined) return '-';
  return entry.kind === 'event'
    ? `${entry.event.taskId}${entry.event.seq}`
    : `${entry.task.id}:s${entry.task.seq}`;
}

function drain(queue: SendQueue, congested: boolean): string[] {
  const out: string[] = [];
  for (let entry = queue.shift(congested); entry !== undefined; entry = queue.shift(congested))
    out.push(label(entry));
  return out;
}

function pushAll(queue: SendQueue, log: TaskLog, from: number, to: number): void {
  for (let seq = from; seq <= to; seq++) queue.pushEvent(ev(log, seq));
}

describe('SendQueue', () => {
  it('has frozen defaults', () => {
    expect(SEND_QUEUE_DEFAULTS).toEqual({ maxProgressRun: 64 });
    expect(Object.isFrozen(SEND_QUEUE_DEFAULTS)).toBe(true);
  });

  it('sends everything in arrival order when nothing is urgent and nothing is congested', () => {
    const queue = new SendQueue();
    queue.track(meta(logA));
    queue.pushEvent(ev(logA, 1));
    queue.pushEvent(ev(logB, 1));
    queue.pushEvent(ev(logA, 2));
    expect(queue.size).toBe(3);
    expect(drain(queue, false)).toEqual(['a1', 'b1', 'a2']);
    expect(queue.size).toBe(0);
  });

  it('serves a task holding a terminal first, but never reorders that task', () => {
    const queue = new SendQueue();
    pushAll(queue, logA, 1, 2);
    pushAll(queue, logB, 1, 5); // b holds an item and its terminal
    expect(drain(queue, false)).toEqual(['b1', 'b2', 'b3', 'b4', 'b5', 'a1', 'a2']);
  });

  it('prefers a snapshot over a terminal, and an item over progress', () => {
    const queue = new SendQueue();
    pushAll(queue, logA, 1, 1);
    pushAll(queue, logB, 1, 5);
    queue.pushSnapshot(viewAt(logA, 3));
    expect(drain(queue, false)).toEqual(['a:s3', 'b1', 'b2', 'b3', 'b4', 'b5']);

    const items = new SendQueue();
    pushAll(items, logA, 1, 2);
    pushAll(items, logB, 1, 4);
    expect(drain(items, false)).toEqual(['b1', 'b2', 'b3', 'b4', 'a1', 'a2']);
  });

  it('breaks priority ties by the oldest queued entry', () => {
    const queue = new SendQueue();
    pushAll(queue, logB, 1, 1);
    pushAll(queue, logA, 1, 6); // a: item at 6
    pushAll(queue, logB, 2, 4); // b: item at 4 too
    // b1 is the oldest entry; once it is gone, a's oldest (a1) predates b2.
    expect(drain(queue, false)).toEqual(['b1', 'a1', 'a2', 'a3', 'a4', 'a5', 'a6', 'b2', 'b3', 'b4']);
  });

  it('folds a congested run of progress into one snapshot rendered from the task meta', () => {
    const queue = new SendQueue();
    queue.track(meta(logA));
    pushAll(queue, logA, 1, 9);
    const first = queue.shift(true);
    expect(first).toEqual({ kind: 'snapshot', task: viewAt(logA, 5) });
    expect(drain(queue, true)).toEqual(['a6', 'a:s8', 'a9']);
  });

  it('sends a run of one as the event itself', () => {
    const queue = new SendQueue();
    queue.track(meta(logB));
    pushAll(queue, logB, 3, 5);
    expect(drain(queue, true)).toEqual(['b3', 'b4', 'b5']);
  });

  it('does not fold the progress of an untracked task', () => {
    const queue = new SendQueue();
    pushAll(queue, logA, 1, 6);
    expect(drain(queue, true)).toEqual(['a1', 'a2', 'a3', 'a4', 'a5', 'a6']);
  });

  it('collapses a run longer than maxProgressRun at push time and sends it as a snapshot', () => {
    const queue = new SendQueue({ maxProgressRun: 2 });
    queue.track(meta(logA));
    pushAll(queue, logA, 1, 2);
    expect(queue.size).toBe(2);
    pushAll(queue, logA, 3, 5);
    expect(queue.size).toBe(1);
    pushAll(queue, logA, 6, 8);
    expect(queue.size).toBe(4);
    expect(queue.shift(false)).toEqual({ kind: 'snapshot', task: viewAt(logA, 5) });
    expect(drain(queue, false)).toEqual(['a6', 'a7', 'a8']);
  });

  it('does not collapse an untracked run', () => {
    const queue = new SendQueue({ maxProgressRun: 1 });
    pushAll(queue, logA, 1, 5);
    expect(queue.size).toBe(5);
  });

  it('lets a snapshot replace the entries it covers, before the later ones', () => {
    const queue = new SendQueue();
    pushAll(queue, logA, 1, 7);
    expect(queue.pushSnapshot(viewAt(logA, 6))).toBe(true);
    expect(queue.size).toBe(2);
    expect(drain(queue, false)).toEqual(['a:s6', 'a7']);
  });

  it('truncates a collapsed run that a snapshot covers in part', () => {
    const queue = new SendQueue({ maxProgressRun: 1 });
    queue.track(meta(logA));
    pushAll(queue, logA, 1, 5);
    queue.pushSnapshot(viewAt(logA, 3));
    expect(queue.shift(false)).toEqual({ kind: 'snapshot', task: viewAt(logA, 3) });
    expect(queue.shift(false)).toEqual({ kind: 'snapshot', task: viewAt(logA, 5) });

    const single = new SendQueue({ maxProgressRun: 1 });
    single.track(meta(logA));
    pushAll(single, logA, 1, 5);
    single.pushSnapshot(viewAt(logA, 4));
    expect(drain(single, false)).toEqual(['a:s4', 'a5']);
  });

  it('keeps the arrival of a collapsed run that a snapshot cuts, for the tie-break', () => {
    const queue = new SendQueue({ maxProgressRun: 1 });
    queue.track(meta(logA));
    pushAll(queue, logA, 1, 2); // a1–a2 collapse into one run that arrived with a1
    pushAll(queue, logB, 4, 4); // b: item
    pushAll(queue, logA, 3, 6); // the run grows to a1–a5; a: item at 6
    queue.pushSnapshot(viewAt(logA, 3)); // cuts the run to a4–a5, which arrived after b4
    // After the snapshot, a and b tie on priority (an item each). a's run still counts as arrived with
    // a1, before b4, so it goes first; had a's events stayed apart, b4 would have.
    expect(drain(queue, false)).toEqual(['a:s3', 'a:s5', 'b4', 'a6']);
  });

  it('removes a collapsed run that a snapshot covers up to its last seq or beyond', () => {
    const exact = new SendQueue({ maxProgressRun: 1 });
    exact.track(meta(logA));
    pushAll(exact, logA, 1, 5); // one run, a1–a5
    exact.pushSnapshot(viewAt(logA, 5));
    expect(exact.size).toBe(1);
    expect(drain(exact, false)).toEqual(['a:s5']); // no stale snapshot of the run after it

    const beyond = new SendQueue({ maxProgressRun: 1 });
    beyond.track(meta(logA));
    pushAll(beyond, logA, 1, 6); // run a1–a5, item a6
    beyond.pushSnapshot(viewAt(logA, 6));
    expect(drain(beyond, false)).toEqual(['a:s6']);
  });

  it('keeps refusing events that a snapshot older than the queued ones did not cover', () => {
    const queue = new SendQueue();
    pushAll(queue, logA, 1, 5);
    queue.pushSnapshot(viewAt(logA, 3)); // replaces a1–a3; a4 and a5 are still queued
    expect(queue.pushEvent(ev(logA, 4))).toBe(false);
    expect(queue.pushEvent(ev(logA, 5))).toBe(false);
    expect(drain(queue, false)).toEqual(['a:s3', 'a4', 'a5']);
  });

  it('never folds progress across a seq it was not given, so the watcher still sees the gap', () => {
    // A folded snapshot moves the client's cursor over every seq it spans: spanning a missing seq (an
    // item, say) would hide it. Each case leaves out seq 3.
    const congested = new SendQueue();
    congested.track(meta(logA));
    for (const seq of [1, 2, 4, 5]) congested.pushEvent(ev(logA, seq));
    expect(drain(congested, true)).toEqual(['a:s2', 'a:s5']);

    const afterRun = new SendQueue({ maxProgressRun: 1 });
    afterRun.track(meta(logA));
    for (const seq of [1, 2, 4]) afterRun.pushEvent(ev(logA, seq)); // run a1–a2, then a4
    expect(drain(afterRun, false)).toEqual(['a:s2', 'a4']);

    const single = new SendQueue({ maxProgressRun: 1 });
    single.track(meta(logA));
    for (const seq of [1, 4]) single.pushEvent(ev(logA, seq));
    expect(single.size).toBe(2);
    expect(drain(single, false)).toEqual(['a1', 'a4']);

    const runAhead = new SendQueue({ maxProgressRun: 1 });
    runAhead.track(meta(logA));
    for (const seq of [1, 4, 5]) runAhead.pushEvent(ev(logA, seq)); // a1, then run a4–a5
    expect(drain(runAhead, true)).toEqual(['a1', 'a:s5']);
  });

  it('folds a collapsed run into the congested progress that it continues', () => {
    const queue = new SendQueue({ maxProgressRun: 1 });
    pushAll(queue, logA, 1, 4); // untracked: kept as events
    queue.track(meta(logA));
    pushAll(queue, logA, 5, 5); // a4–a5 collapse into a run behind a1–a3
    expect(queue.shift(true)).toEqual({ kind: 'snapshot', task: viewAt(logA, 5) });
    expect(queue.size).toBe(0);
  });

  it('ignores events a snapshot already covered and snapshots not newer than what was sent', () => {
    const queue = new SendQueue();
    queue.pushSnapshot(viewAt(logA, 4));
    expect(queue.pushEvent(ev(logA, 3))).toBe(false);
    expect(queue.pushEvent(ev(logA, 4))).toBe(false);
    expect(queue.pushEvent(ev(logA, 5))).toBe(true);
    expect(drain(queue, false)).toEqual(['a:s4', 'a5']);
    expect(queue.pushSnapshot(viewAt(logA, 5))).toBe(false);
    expect(queue.pushSnapshot(viewAt(logA, 2))).toBe(false);
    expect(queue.pushSnapshot(viewAt(logA, 6))).toBe(true);
  });

  it('accepts a snapshot at seq 0 for a task without events', () => {
    const queue = new SendQueue();
    expect(queue.pushSnapshot(viewAt(logA, 0))).toBe(true);
    expect(drain(queue, false)).toEqual(['a:s0']);
  });

  it('ignores duplicate pushes', () => {
    const queue = new SendQueue();
    expect(queue.pushEvent(ev(logA, 1))).toBe(true);
    expect(queue.pushEvent(ev(logA, 1))).toBe(false);
    expect(queue.pushEvent(ev(logA, 2))).toBe(true);
    expect(queue.shift(false)).toBeDefined();
    expect(queue.pushEvent(ev(logA, 1))).toBe(false);
    expect(queue.size).toBe(1);
  });

  it('forgets a task on untrack, so a re-subscription can start over', () => {
    const queue = new SendQueue();
    queue.track(meta(logA));
    pushAll(queue, logA, 1, 3);
    pushAll(queue, logB, 1, 1);
    expect(drain(queue, false).length).toBe(4);
    pushAll(queue, logA, 4, 5);
    queue.untrack('a');
    expect(queue.size).toBe(0);
    queue.untrack('nobody');
    expect(queue.pushEvent(ev(logA, 2))).toBe(true);
    expect(queue.pushSnapshot(viewAt(logA, 1))).toBe(true);
    expect(drain(queue, true)).toEqual(['a:s1', 'a2']);
  });

  it('clear() empties the queue and forgets every task', () => {
    const queue = new SendQueue();
    queue.track(meta(logA));
    pushAll(queue, logA, 1, 4);
    queue.clear();
    expect(queue.size).toBe(0);
    expect(queue.shift(true)).toBeUndefined();
    pushAll(queue, logA, 1, 3);
    expect(drain(queue, true)).toEqual(['a1', 'a2', 'a3']); // untracked again: nothing folded
  });

  it('grows past its initial capacity and keeps order', () => {
    const queue = new SendQueue();
    const long = buildTaskLog(
      'long',
      Array.from({ length: 100 }, (_, i) => item(`k${i}`)),
      100,
    );
    pushAll(queue, long, 1, 40);
    queue.pushSnapshot(viewAt(long, 10));
    pushAll(queue, long, 41, 100);
    const out = drain(queue, true);
    expect(out[0]).toBe('long:s10');
    expect(out.slice(1)).toEqual(Array.from({ length: 90 }, (_, i) => `long${i + 11}`));
  });

  // A socket bounds what its queue weighs (server `maxQueuedBytes`): a leak in the count would end a
  // socket that holds nothing, a miss would let one hold without bound.
  it('bytes is what the queued events weigh: never negative, 0 once the queue is empty', () => {
    const commandArb = fc.oneof(
      fc.record({ kind: fc.constant('next' as const), task: fc.nat(1) }),
      fc.record({ kind: fc.constant('snapshot' as const), task: fc.nat(1), pick: fc.nat() }),
      fc.record({ kind: fc.constant('shift' as const), congested: fc.boolean() }),
      fc.record({ kind: fc.constant('untrack' as const), task: fc.nat(1) }),
    );
    const scenarioArb = fc.record({
      logs: fc.tuple(taskLogArb('t0', 12), taskLogArb('t1', 12)),
      tracked: fc.tuple(fc.boolean(), fc.boolean()),
      commands: fc.array(commandArb, { maxLength: 80, size: 'max' }),
    });
    fc.assert(
      fc.property(scenarioArb, ({ logs, tracked, commands }) => {
        const queue = new SendQueue({ maxProgressRun: 2 }, (event) => 1000 + event.seq);
        logs.forEach((log, i) => {
          if (tracked[i]) queue.track(meta(log));
        });
        const next = [1, 1];
        let pushed = 0;
        for (const command of commands) {
          const log = logs[command.kind === 'shift' ? 0 : command.task] as TaskLog;
          if (command.kind === 'shift') queue.shift(command.congested);
          else if (command.kind === 'untrack') queue.untrack(log.taskId);
          else if (command.kind === 'snapshot') {
            queue.pushSnapshot(viewAt(log, command.pick % (log.events.length + 1)));
          } else {
            const seq = next[command.task] as number;
            if (seq <= log.events.length) {
              const event = ev(log, seq);
              if (queue.pushEvent(event)) pushed += 1000 + event.seq;
              next[command.task] = seq + 1;
            }
          }
          expect(queue.bytes).toBeGreaterThanOrEqual(0);
          expect(queue.bytes).toBeLessThanOrEqual(pushed);
          if (queue.size === 0) expect(queue.bytes).toBe(0);
        }
        drain(queue, true);
        expect(queue.bytes).toBe(0);
      }),
      propertyParams(300),
    );
  });

  it('passEvent on an empty queue does what pushEvent then shift do, and later entries see no difference', () => {
    // Two queues fed the same commands; `direct` hands each event that meets it empty to passEvent.
    const commandArb = fc.oneof(
      fc.record({ kind: fc.constant('next' as const), task: fc.nat(1) }),
      fc.record({ kind: fc.constant('again' as const), task: fc.nat(1), pick: fc.nat() }),
      fc.record({ kind: fc.constant('snapshot' as const), task: fc.nat(1), pick: fc.nat() }),
      fc.record({ kind: fc.constant('shift' as const), congested: fc.boolean() }),
    );
    const scenarioArb = fc.record({
      logs: fc.tuple(taskLogArb('t0', 12), taskLogArb('t1', 12)),
      tracked: fc.tuple(fc.boolean(), fc.boolean()),
      commands: fc.array(commandArb, { maxLength: 80, size: 'max' }),
    });
    fc.assert(
      fc.property(scenarioArb, ({ logs, tracked, commands }) => {
        const queued = new SendQueue({ maxProgressRun: 2 });
        const direct = new SendQueue({ maxProgressRun: 2 });
        logs.forEach((log, i) => {
          if (!tracked[i]) return;
          queued.track(meta(log));
          direct.track(meta(log));
        });
        const next = [1, 1];
        const push = (event: TaskEvent): void => {
          if (direct.size > 0) {
            expect(direct.pushEvent(event)).toBe(queued.pushEvent(event));
            return;
          }
          const passed = direct.passEvent(event);
          queued.pushEvent(event);
          expect(passed ? { kind: 'event', event } : undefined).toEqual(queued.shift(false));
        };
        for (const command of commands) {
          if (command.kind === 'shift') {
            expect(direct.shift(command.congested)).toEqual(queued.shift(command.congested));
          } else {
            const log = logs[command.task] as TaskLog;
            const last = log.events.length;
            if (command.kind === 'snapshot') {
              const view = viewAt(log, command.pick % (last + 1));
              expect(direct.pushSnapshot(view)).toBe(queued.pushSnapshot(view));
            } else {
              const seq = next[command.task] as number;
              if (command.kind === 'again') {
                if (seq > 1) push(ev(log, 1 + (command.pick % (seq - 1))));
              } else if (seq <= last) {
                push(ev(log, seq));
                next[command.task] = seq + 1;
              }
            }
          }
          expect(direct.size).toBe(queued.size);
        }
        expect(drain(direct, true)).toEqual(drain(queued, true));
      }),
      propertyParams(300),
    );
  });

  it('passEvent refuses to jump entries already queued', () => {
    const queue = new SendQueue();
    queue.pushEvent(ev(logA, 1));
    expect(() => queue.passEvent(ev(logA, 2))).toThrow(RangeError);
  });

  it('rejects invalid options', () => {
    for (const maxProgressRun of [0, 1.5, -1, Number.NaN]) {
      expectInvalidInput(() => new SendQueue({ maxProgressRun }), /maxProgressRun/);
    }
  });
});
