import { isDeepStrictEqual } from 'node:util';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { isTerminalEvent, isTerminalType, progressOf } from '../model.js';
import { propertyParams, propertyTimeoutMs } from '../testing/property-config.js';
import { type TaskLog, taskLogArb, viewAt } from '../testing/task-log-arbitrary.js';
import { type ApplyResult, type Delivery, WatchCursor } from './watch-cursor.js';

/**
 * Guarantee 1 (and 2, client side): whatever the network does to the frames of a task (duplicates,
 * reordering, drops, stale and terminal snapshots, reconnections that replay from the cursor or send a
 * snapshot), as long as everything is eventually delivered, the application sees the task in seq order,
 * without gaps or duplicates, and the terminal state exactly once, last.
 */

/** One thing the network or the server does. `pick` values are reduced modulo the current range. */
type Step =
  /** The server's log grows by one event, which is pushed live unless the frame is lost. */
  | { kind: 'write'; lost: boolean }
  /** A stray copy of an event already written (duplicate, late, reordered, from another replica). */
  | { kind: 'event'; pick: number }
  /** A snapshot of the task at any written seq (often stale). */
  | { kind: 'snapshot'; pick: number }
  /** The client reconnects from its cursor; the server replays what follows (maybe cut) or sends its snapshot. */
  | { kind: 'reconnect'; mode: 'replay' | 'snapshot'; cut: number };

const stepArb: fc.Arbitrary<Step> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('write' as const), lost: fc.boolean() }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('event' as const), pick: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('snapshot' as const), pick: fc.nat() }) },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant('reconnect' as const),
      mode: fc.constantFrom('replay' as const, 'snapshot' as const),
      cut: fc.nat(6),
    }),
  },
);

const scenarioArb = fc
  .record({
    log: taskLogArb('task-1', 24),
    steps: fc.array(stepArb, { maxLength: 70, size: 'max' }),
    maxBuffered: fc.nat(6),
    resyncOnGap: fc.boolean(),
    startPick: fc.nat(),
    resumePick: fc.nat(),
  })
  .map((scenario) => {
    const n = scenario.log.events.length;
    // How much the server had written when the watch began, and the cursor a reloaded page resumed from.
    const written = scenario.startPick % (n + 1);
    const afterSeq = scenario.resumePick % 3 === 0 ? scenario.resumePick % (written + 1) : 0;
    return { ...scenario, written, afterSeq };
  });

interface Trace {
  results: ApplyResult[];
}

function runScenario(
  log: TaskLog,
  steps: readonly Step[],
  options: { maxBuffered: number; resyncOnGap: boolean; written: number; afterSeq: number },
): { cursor: WatchCursor; trace: Trace } {
  const n = log.events.length;
  const cursor = new WatchCursor(log.taskId, {
    afterSeq: options.afterSeq,
    maxBuffered: options.maxBuffered,
  });
  const trace: Trace = { results: [] };
  let written = options.written;

  const eventAt = (seq: number) => {
    const event = log.events[seq - 1];
    if (event === undefined) throw new RangeError(`no event ${seq}`);
    return event;
  };
  const replay = (from: number, limit: number) => {
    for (let seq = from + 1; seq <= Math.min(written, from + limit); seq++)
      record(cursor.applyEvent(eventAt(seq)), false);
  };
  function record(result: ApplyResult, mayResync: boolean): void {
    trace.results.push(result);
    checkView(cursor, log);
    if (mayResync && options.resyncOnGap && result.gap && result.resyncFrom !== null) {
      replay(result.resyncFrom, Number.POSITIVE_INFINITY);
    }
  }

  for (const step of steps) {
    switch (step.kind) {
      case 'write':
        if (written < n) {
          written += 1;
          if (!step.lost) record(cursor.applyEvent(eventAt(written)), true);
        }
        break;
      case 'event':
        if (written > 0) record(cursor.applyEvent(eventAt((step.pick % written) + 1)), true);
        break;
      case 'snapshot':
        record(cursor.applySnapshot(viewAt(log, step.pick % (written + 1))), true);
        break;
      case 'reconnect':
        if (step.mode === 'snapshot' || cursor.seq >= written)
          record(cursor.applySnapshot(viewAt(log, written)), true);
        else replay(cursor.seq, step.cut);
        break;
      default: {
        const unreachable: never = step;
        throw new TypeError(String(unreachable));
      }
    }
  }

  // Eventually everything is written and the client reconnects until it has the terminal state.
  written = n;
  for (let attempt = 0; attempt < 3 && !cursor.finished; attempt++) {
    if (cursor.seq >= n) record(cursor.applySnapshot(viewAt(log, n)), false);
    else replay(cursor.seq, Number.POSITIVE_INFINITY);
  }
  // Frames still in flight after the end change nothing.
  record(cursor.applyEvent(eventAt(n)), false);
  record(cursor.applySnapshot(viewAt(log, n)), false);
  // Not even a reset snapshot (a restored store) re-delivers an end already delivered.
  record(cursor.applySnapshot(viewAt(log, n), true), false);
  return { cursor, trace };
}

/** A cheap assertion for the hot loop: vitest's `expect` is too slow for ~10^5 checks per property. */
function ensure(condition: boolean, message: string): asserts condition {
  if (!condition) throw new Error(message);
}

/** The view always describes the task exactly as it stood at the cursor. */
function checkView(cursor: WatchCursor, log: TaskLog): void {
  const view = cursor.view;
  ensure(view.seq === cursor.seq, `view.seq ${view.seq} != cursor ${cursor.seq}`);
  if (view.progress === null) return;
  const row = viewAt(log, view.seq);
  const same = isDeepStrictEqual;
  ensure(same(view.progress, progressOf(row)), `progress at ${view.seq}`);
  ensure(view.updatedAt === row.updatedAt && view.finishedAt === row.finishedAt, `times at ${view.seq}`);
  ensure(view.status === row.status, `status at ${view.seq}: ${view.status} != ${row.status}`);
  ensure(same(view.result, row.result) && same(view.error, row.error), `result/error at ${view.seq}`);
}

function isTerminalDelivery(delivery: Delivery): boolean {
  return delivery.kind === 'event' ? isTerminalEvent(delivery.event) : isTerminalType(delivery.task.status);
}

describe('guarantee 1: the application sees every task in order, gap-free, and its end exactly once', () => {
  it('holds for any log and any delivery schedule that eventually delivers everything', {
    // Scaled with the run count in force (FC_NUM_RUNS, FC_MIN_RUNS), as testing.md says timeouts are.
    timeout: propertyTimeoutMs(1000, 30_000),
  }, () => {
    fc.assert(
      fc.property(scenarioArb, ({ log, steps, maxBuffered, resyncOnGap, written, afterSeq }) => {
        const n = log.events.length;
        const { cursor, trace } = runScenario(log, steps, { maxBuffered, resyncOnGap, written, afterSeq });

        const deliveries = trace.results.flatMap((result) => result.delivered);
        let position = afterSeq;
        const seen = new Set<number>();
        const jumped = new Set<number>();
        deliveries.forEach((delivery, index) => {
          if (delivery.kind === 'event') {
            // In order and gap-free: exactly the next event of the log, the very object the server sent.
            expect(delivery.event.seq).toBe(position + 1);
            expect(delivery.event).toBe(log.events[position]);
            position = delivery.event.seq;
            seen.add(position);
          } else {
            // A snapshot moves the cursor forward, except the first delivery of a watcher that knows nothing.
            const atStart = index === 0 && delivery.task.seq === afterSeq;
            expect(delivery.task.seq > position || atStart).toBe(true);
            expect(delivery.task).toEqual(viewAt(log, delivery.task.seq));
            for (let seq = position + 1; seq <= delivery.task.seq; seq++) jumped.add(seq);
            position = delivery.task.seq;
          }
          // The terminal state comes last and only once.
          expect(isTerminalDelivery(delivery)).toBe(index === deliveries.length - 1);
        });

        expect(position).toBe(n);
        expect(deliveries.length).toBeGreaterThan(0);
        // Every item event not jumped over by a snapshot reached the application.
        for (const event of log.events) {
          if (event.type === 'item' && event.seq > afterSeq && !jumped.has(event.seq)) {
            expect(seen.has(event.seq)).toBe(true);
          }
        }

        // `finished` is reported once, on the apply that delivered the terminal state, and nothing follows.
        const finishing = trace.results.flatMap((result, index) => (result.finished ? [index] : []));
        expect(finishing).toHaveLength(1);
        const finishedAt = finishing[0] ?? -1;
        expect(trace.results[finishedAt]?.delivered.at(-1)).toBe(deliveries.at(-1));
        for (const later of trace.results.slice(finishedAt + 1)) {
          expect(later.delivered).toHaveLength(0);
          expect(later.duplicate || later.foreign).toBe(true);
        }

        expect(cursor.finished).toBe(true);
        expect(cursor.seq).toBe(n);
        expect(cursor.isBehind(n)).toBe(false);
        expect(cursor.view.status).toBe(viewAt(log, n).status);
      }),
      propertyParams(1000),
    );
  });
});
