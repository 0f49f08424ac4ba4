import fc from 'fast-check';
import type { Task, TaskEvent, TaskView } from '../model.js';
import { toTaskView } from '../model.js';
import type { AppendInput } from '../store/inputs.js';
import { newTask, planAppend } from '../store/task-transitions.js';

/**
 * Test support for the delivery property tests (not exported from the package): realistic task logs
 * built with the stores' own `planAppend`, so events and snapshots agree to the field with what a real
 * store produces.
 *
 * @internal
 * @module
 */

/** A task's full history: `events[i]` has seq `i + 1`, `rows[s]` is the task row after seq `s`. */
export interface TaskLog {
  taskId: string;
  events: TaskEvent[];
  /** `rows[0]` is the new task; `rows[s]` the row after event `s`. */
  rows: Task[];
}

// A few fixed strings: their content does not matter to delivery, and fc.string() dominated the run time.
const text = fc.constantFrom('', 'node-1', 'drain timed out', 'ünïcødé ✓');

/** A non-terminal append: absolute progress or one finished item. */
export const workInputArb: fc.Arbitrary<AppendInput> = fc.oneof(
  fc.record(
    {
      type: fc.constant('progress' as const),
      total: fc.option(fc.nat(12)),
      done: fc.nat(12),
      current: fc.option(text),
      message: fc.option(text),
    },
    { requiredKeys: ['type'] },
  ),
  fc.record(
    {
      type: fc.constant('item' as const),
      key: fc.constantFrom('node-a', 'node-b', 'node-c'),
      ok: fc.boolean(),
      error: fc.option(text),
      current: fc.option(text),
    },
    { requiredKeys: ['type', 'key', 'ok'] },
  ),
);

/** One of the four terminal appends. */
export const terminalInputArb: fc.Arbitrary<AppendInput> = fc.oneof(
  fc.record(
    {
      type: fc.constant('completed' as const),
      result: fc.option(fc.oneof(fc.integer(), text)),
      message: text,
    },
    { requiredKeys: ['type'] },
  ),
  fc.record({ type: fc.constant('failed' as const), error: fc.record({ code: text, message: text }) }),
  fc.record({ type: fc.constant('cancelled' as const), reason: fc.option(text) }, { requiredKeys: ['type'] }),
  fc.record({ type: fc.constant('interrupted' as const), reason: text }),
);

/** Builds the log of `inputs` appended in order to a new task (time advances 7 ms per event). */
export function buildTaskLog(taskId: string, inputs: readonly AppendInput[], total: number | null): TaskLog {
  const start = Date.UTC(2026, 0, 1);
  let row = newTask({ id: taskId, owner: 'alice', kind: 'batch_taint', total }, start);
  const rows: Task[] = [row];
  const events: TaskEvent[] = [];
  for (const input of inputs) {
    const planned = planAppend(row, input, start + 7 * (events.length + 1));
    events.push(planned.event);
    row = planned.task;
    rows.push(row);
  }
  return { taskId, events, rows };
}

/** A task log of 0..`maxWork` work events ending with exactly one terminal event of a random type. */
export function taskLogArb(taskId: string, maxWork = 24): fc.Arbitrary<TaskLog> {
  return fc
    .tuple(
      fc.array(workInputArb, { maxLength: maxWork, size: 'max' }),
      terminalInputArb,
      fc.option(fc.nat(12)),
    )
    .map(([work, terminal, total]) => buildTaskLog(taskId, [...work, terminal], total));
}

/** The public snapshot of the task at `seq`. */
export function viewAt(log: TaskLog, seq: number): TaskView {
  const row = log.rows[seq];
  if (row === undefined) throw new RangeError(`no row at seq ${seq}`);
  return toTaskView(row);
}
