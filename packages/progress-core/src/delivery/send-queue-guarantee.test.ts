import { isDeepStrictEqual } from 'node:util';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { TaskEvent } from '../model.js';
import { isTerminalType, Priority, priorityOf } from '../model.js';
import { propertyParams, propertyTimeoutMs } from '../testing/property-config.js';
import { buildTaskLog, type TaskLog, taskLogArb, viewAt } from '../testing/task-log-arbitrary.js';
import { type OutgoingEntry, SendQueue } from './send-queue.js';
import { WatchCursor } from './watch-cursor.js';

/**
 * Guarantee 2, server side: whatever the interleaving of pushes (several tasks; progress, items,
 * terminals, duplicates, snapshots fresh and stale) and shifts (congested or not), the queue emits every
 * item and terminal event exactly once unless a snapshot that covers it replaced it, keeps each task's
 * outputs in seq order, never makes a watcher see a gap, and always serves the task with the most
 * urgent entry first.
 *
 * The oracle is a plain model of the queue without coalescing: per task, the list of entries pushed and
 * not yet sent. Every output must consume a prefix of its task's model list: one event (exactly the
 * model's head), the queued snapshot at the head, or a run of progress events folded into a snapshot.
 *
 * The tie-break between equally urgent tasks is the arrival of a task's oldest queued *entry*, and a
 * progress run the queue collapsed at push time (`maxProgressRun`) is one entry that arrived with its
 * first event. When a snapshot later replaces the front of such a run, the rest keeps that arrival: the
 * queue keeps only the run's first seq and last event, so it no longer knows when the surviving events
 * arrived (remembering it would cost memory per event, which is what the collapse bounds). The model
 * therefore charges collapsed events the arrival of their run (`arrival`), not their own (`order`); see
 * the replay of seed 1986713388 below, where task-2's cut run keeps its place ahead of task-0.
 */

type Command =
  /** The server pushes its task's next event (the change feed woke it). */
  | { kind: 'next'; task: number }
  /** A stale wake-up re-pushes an event already pushed. */
  | { kind: 'again'; task: number; pick: number }
  /** A (re)subscription pushes the task's snapshot at some seq (often behind, sometimes ahead of pushes). */
  | { kind: 'snapshot'; task: number; pick: number }
  | { kind: 'shift'; congested: boolean };

interface ModelEntry {
  seq: number;
  priority: Priority;
  /** Arrival order across the whole queue. */
  order: number;
  /** What the tie-break counts: `order`, or the first event's `order` once collapsed into a run. */
  arrival: number;
  /** Part of a progress run the queue collapsed at push time (tracked tasks only). */
  collapsed: boolean;
}

interface ModelTask {
  log: TaskLog;
  tracked: boolean;
  /** The server's next event to push. */
  next: number;
  queued: ModelEntry[];
  lastPushed: number;
  lastEmitted: number;
  cursor: WatchCursor;
  /** Seqs of item/terminal events the queue accepted. */
  accepted: Set<number>;
  /** Seqs of item/terminal events replaced by a snapshot before being sent. */
  superseded: Set<number>;
  /** Seqs of item/terminal events sent as events. */
  emitted: Set<number>;
}

const commandArb = (tasks: number): fc.Arbitrary<Command> =>
  fc.oneof(
    { weight: 6, arbitrary: fc.record({ kind: fc.constant('next' as const), task: fc.nat(tasks - 1) }) },
    {
      weight: 1,
      arbitrary: fc.record({ kind: fc.constant('again' as const), task: fc.nat(tasks - 1), pick: fc.nat() }),
    },
    {
      weight: 1,
      arbitrary: fc.record({
        kind: fc.constant('snapshot' as const),
        task: fc.nat(tasks - 1),
        pick: fc.nat(),
      }),
    },
    { weight: 5, arbitrary: fc.record({ kind: fc.constant('shift' as const), congested: fc.boolean() }) },
  );

const scenarioArb = fc.integer({ min: 1, max: 4 }).chain((taskCount) =>
  fc.record({
    logs: fc.tuple(...Array.from({ length: taskCount }, (_, i) => taskLogArb(`task-${i}`, 20))),
    tracked: fc.array(fc.boolean(), { minLength: taskCount, maxLength: taskCount, size: 'max' }),
    commands: fc.array(commandArb(taskCount), { maxLength: 120, size: 'max' }),
    finalCongestion: fc.array(fc.boolean(), { minLength: 1, maxLength: 8, size: 'max' }),
    maxProgressRun: fc.integer({ min: 1, max: 5 }),
  }),
);

type Scenario = typeof scenarioArb extends fc.Arbitrary<infer T> ? T : never;

/** A cheap assertion for the hot loop: vitest's `expect` is too slow for ~10^5 checks per property. */
function ensure(condition: boolean, message: string): asserts condition {
  if (!condition) throw new Error(message);
}

function priorityOfSeq(log: TaskLog, seq: number): Priority {
  const event = log.events[seq - 1] as TaskEvent;
  return priorityOf(event.type);
}

function highest(task: ModelTask): number {
  return task.queued.reduce((best, entry) => Math.max(best, entry.priority), -1);
}

function oldest(task: ModelTask): number {
  return task.queued.reduce((best, entry) => Math.min(best, entry.arrival), Number.POSITIVE_INFINITY);
}

/**
 * Mirrors the queue's push-time collapse for a fresh progress `entry` of a tracked task, before it is
 * queued: it joins a collapsed run ending just before it, or, with the consecutive uncollapsed progress
 * before it, becomes a run once that is longer than `maxProgressRun`.
 */
function collapse(queued: ModelEntry[], entry: ModelEntry, maxProgressRun: number): void {
  const tail = queued.at(-1);
  if (tail?.collapsed && tail.seq + 1 === entry.seq) {
    entry.collapsed = true;
    entry.arrival = tail.arrival;
    return;
  }
  const run = [entry];
  for (let i = queued.length - 1; i >= 0; i--) {
    const before = queued[i] as ModelEntry;
    const first = run[0] as ModelEntry;
    if (before.collapsed || before.priority !== Priority.progress || before.seq + 1 !== first.seq) break;
    run.unshift(before);
  }
  if (run.length <= maxProgressRun) return;
  const arrival = (run[0] as ModelEntry).arrival;
  for (const member of run) {
    member.collapsed = true;
    member.arrival = arrival;
  }
}

/** Runs one scenario against the queue and the model; throws on the first disagreement. */
function checkScenario({ logs, tracked, commands, finalCongestion, maxProgressRun }: Scenario): void {
  const queue = new SendQueue({ maxProgressRun });
  let order = 0;
  const model: ModelTask[] = logs.map((log, i) => ({
    log,
    tracked: tracked[i] ?? true,
    next: 1,
    queued: [],
    lastPushed: 0,
    lastEmitted: -1,
    cursor: new WatchCursor(log.taskId),
    accepted: new Set(),
    superseded: new Set(),
    emitted: new Set(),
  }));
  for (const task of model) {
    if (task.tracked) queue.track(viewAt(task.log, 0));
  }

  const pushEvent = (task: ModelTask, seq: number) => {
    const event = task.log.events[seq - 1] as TaskEvent;
    const fresh = seq > task.lastPushed;
    ensure(queue.pushEvent(event) === fresh, `pushEvent(${event.taskId}#${seq}) should return ${fresh}`);
    if (!fresh) return;
    task.lastPushed = seq;
    const entry: ModelEntry = {
      seq,
      priority: priorityOf(event.type),
      order,
      arrival: order,
      collapsed: false,
    };
    order += 1;
    if (event.type === 'progress' && task.tracked) collapse(task.queued, entry, maxProgressRun);
    task.queued.push(entry);
    if (event.type !== 'progress') task.accepted.add(seq);
  };

  const pushSnapshot = (task: ModelTask, seq: number) => {
    const fresh = seq > task.lastEmitted;
    const pushed = queue.pushSnapshot(viewAt(task.log, seq));
    ensure(pushed === fresh, `pushSnapshot(${task.log.taskId}@${seq}) should return ${fresh}`);
    if (!fresh) return;
    for (const entry of task.queued) {
      if (entry.seq <= seq && entry.priority !== Priority.progress && entry.priority !== Priority.snapshot) {
        task.superseded.add(entry.seq);
      }
    }
    task.queued = [
      { seq, priority: Priority.snapshot, order, arrival: order++, collapsed: false },
      ...task.queued.filter((entry) => entry.seq > seq),
    ];
    task.lastPushed = Math.max(task.lastPushed, seq);
    task.next = Math.max(task.next, seq + 1);
  };

  const shift = (congested: boolean) => {
    // Which task the oracle expects: the most urgent, then the one waiting longest.
    const waiting = model.filter((task) => task.queued.length > 0);
    const expected = waiting.reduce<ModelTask | undefined>((best, task) => {
      if (best === undefined) return task;
      const byPriority = highest(task) - highest(best);
      return byPriority > 0 || (byPriority === 0 && oldest(task) < oldest(best)) ? task : best;
    }, undefined);

    const out = queue.shift(congested);
    if (expected === undefined) {
      ensure(out === undefined, 'shift() on an empty queue must return undefined');
      return;
    }
    ensure(out !== undefined, 'shift() returned nothing while entries are queued');
    const entry: OutgoingEntry = out;
    const taskId = entry.kind === 'event' ? entry.event.taskId : entry.task.id;
    const task = model.find((candidate) => candidate.log.taskId === taskId);
    ensure(task !== undefined, `unknown task ${taskId}`);
    // The guarantee as stated: the emitted task's most urgent entry is at least every other's.
    for (const other of waiting) {
      ensure(highest(task) >= highest(other), `served ${taskId} while ${other.log.taskId} was more urgent`);
    }
    // And the full rule: most urgent first, then the one whose oldest entry waited longest.
    ensure(task === expected, `served ${taskId}, expected ${expected.log.taskId}`);
    consume(task, entry);
  };

  const consume = (task: ModelTask, entry: OutgoingEntry) => {
    const seq = entry.kind === 'event' ? entry.event.seq : entry.task.seq;
    ensure(seq > task.lastEmitted, `${task.log.taskId}: output ${seq} after ${task.lastEmitted}`);
    const taken = task.queued.filter((queued) => queued.seq <= seq);
    task.queued = task.queued.filter((queued) => queued.seq > seq);
    task.lastEmitted = seq;
    const head = taken[0];
    ensure(head !== undefined, `${task.log.taskId}: output ${seq} matches nothing queued`);
    if (entry.kind === 'event') {
      // Exactly the task's head entry, the very event pushed.
      ensure(taken.length === 1 && head.seq === seq, `${task.log.taskId}: event ${seq} skipped entries`);
      ensure(head.priority === priorityOfSeq(task.log, seq), `${task.log.taskId}: event ${seq} kind`);
      ensure(
        entry.event === task.log.events[seq - 1],
        `${task.log.taskId}: event ${seq} is not the one pushed`,
      );
      if (entry.event.type !== 'progress') {
        ensure(!task.emitted.has(seq), `${task.log.taskId}: ${entry.event.type} ${seq} sent twice`);
        task.emitted.add(seq);
      }
    } else {
      // A queued snapshot as pushed, or consecutive progress folded into the snapshot at the last one.
      ensure(
        isDeepStrictEqual(entry.task, viewAt(task.log, seq)),
        `${task.log.taskId}: snapshot ${seq} differs from the store's`,
      );
      if (head.priority === Priority.snapshot) {
        ensure(
          taken.length === 1 && head.seq === seq,
          `${task.log.taskId}: snapshot ${seq} swallowed entries`,
        );
      } else {
        ensure(task.tracked, `${task.log.taskId}: folded progress of an untracked task`);
        ensure(taken.length > 1, `${task.log.taskId}: folded a run of one at ${seq}`);
        taken.forEach((queued, index) => {
          ensure(
            queued.priority === Priority.progress && queued.seq === head.seq + index,
            `${task.log.taskId}: snapshot ${seq} swallowed seq ${queued.seq}, which is not consecutive progress`,
          );
        });
      }
    }
    // Applied in order by the watcher, every output is news: no duplicate, no gap.
    const result =
      entry.kind === 'event' ? task.cursor.applyEvent(entry.event) : task.cursor.applySnapshot(entry.task);
    ensure(!result.gap && !result.duplicate, `${task.log.taskId}: output ${seq} made a gap or duplicate`);
    ensure(result.delivered.length > 0 && task.cursor.seq === seq, `${task.log.taskId}: ${seq} not applied`);
  };

  const step = (command: Command) => {
    switch (command.kind) {
      case 'next': {
        const task = model[command.task] as ModelTask;
        if (task.next <= task.log.events.length) pushEvent(task, task.next++);
        break;
      }
      case 'again': {
        const task = model[command.task] as ModelTask;
        if (task.next > 1) pushEvent(task, (command.pick % (task.next - 1)) + 1);
        break;
      }
      case 'snapshot': {
        const task = model[command.task] as ModelTask;
        pushSnapshot(task, command.pick % (task.log.events.length + 1));
        break;
      }
      case 'shift':
        shift(command.congested);
        break;
      default: {
        const unreachable: never = command;
        throw new TypeError(String(unreachable));
      }
    }
    const modelSize = model.reduce((sum, task) => sum + task.queued.length, 0);
    ensure((queue.size === 0) === (modelSize === 0), `size ${queue.size} but ${modelSize} entries queued`);
    ensure(queue.size <= modelSize, `size ${queue.size} exceeds the ${modelSize} entries pushed`);
  };

  for (const command of commands) step(command);
  // Eventually the server pushes everything and the socket drains.
  for (const task of model) while (task.next <= task.log.events.length) pushEvent(task, task.next++);
  for (let i = 0; queue.size > 0; i++) shift(finalCongestion[i % finalCongestion.length] ?? false);
  expect(queue.shift(false)).toBeUndefined();

  for (const task of model) {
    const n = task.log.events.length;
    expect(task.queued).toHaveLength(0);
    // Every item and terminal event the queue accepted went out exactly once, unless a snapshot replaced it.
    for (const seq of task.accepted) expect(task.emitted.has(seq) !== task.superseded.has(seq)).toBe(true);
    for (const seq of task.emitted) expect(task.accepted.has(seq)).toBe(true);
    // And every watcher ends with the terminal state.
    expect(task.cursor.seq).toBe(n);
    expect(task.cursor.finished).toBe(true);
    expect(isTerminalType(task.cursor.view.status)).toBe(true);
  }
}

describe('guarantee 2: the send queue', () => {
  it('keeps order, drops no item or terminal, never opens a gap, and serves the most urgent task first', {
    // Scaled with the run count in force (FC_NUM_RUNS, FC_MIN_RUNS), as testing.md says timeouts are.
    timeout: propertyTimeoutMs(1000, 30_000),
  }, () => {
    fc.assert(fc.property(scenarioArb, checkScenario), propertyParams(1000));
  });

  it('replays seed 1986713388: a collapsed run cut by a snapshot keeps its arrival in the tie-break', () => {
    // The shrunk counterexample, exactly. task-2's progress 2–3 collapse (maxProgressRun 1) into a run
    // that arrived with seq 2, before task-0's `completed`; the snapshot at 2 cuts the run to seq 3 alone.
    // After the snapshots go out, task-2 (cancelled queued) and task-0 (completed) tie on priority, and
    // task-2's run still counts as arrived first, so task-2 is served before task-0.
    const logs = [
      buildTaskLog('task-0', [{ type: 'completed' }], null),
      buildTaskLog('task-1', [{ type: 'cancelled' }], null),
      buildTaskLog(
        'task-2',
        [
          { type: 'item', key: 'node-a', ok: false, error: 'failed' },
          { type: 'progress' },
          { type: 'progress' },
          { type: 'cancelled' },
        ],
        null,
      ),
    ];
    checkScenario({
      logs,
      tracked: [false, false, true],
      commands: [
        { kind: 'snapshot', task: 2, pick: 2122255061 },
        { kind: 'next', task: 2 },
        { kind: 'next', task: 0 },
        { kind: 'next', task: 2 },
        { kind: 'snapshot', task: 2, pick: 970241852 },
      ],
      finalCongestion: [false],
      maxProgressRun: 1,
    });
  });

  it('replays seed 1055625773: a snapshot queued in front of another snapshot keeps the oldest arrival of its task', () => {
    // The shrunk counterexample. task-0 gets snapshots at seq 2, then 1, then 0, each put at the head, so
    // its oldest entry (the snapshot at 2, arrival 0) sits third; task-1 has its terminal (arrival 1) and a
    // snapshot at 0 (arrival 3). Both tie on priority; task-0 arrived first and must be served first.
    const logs = [
      buildTaskLog(
        'task-0',
        [{ type: 'progress' }, { type: 'progress' }, { type: 'interrupted', reason: '' }],
        null,
      ),
      buildTaskLog('task-1', [{ type: 'interrupted', reason: '' }], null),
    ];
    checkScenario({
      logs,
      tracked: [false, false],
      commands: [
        { kind: 'snapshot', task: 0, pick: 420217418 },
        { kind: 'next', task: 1 },
        { kind: 'snapshot', task: 0, pick: 494400969 },
        { kind: 'snapshot', task: 1, pick: 0 },
        { kind: 'snapshot', task: 0, pick: 0 },
      ],
      finalCongestion: [false],
      maxProgressRun: 1,
    });
  });
});
