import { describe, expect, it } from 'vitest';
import type { Task } from '../model.js';
import { toTaskView } from '../model.js';
import type { AppendInput } from '../store/inputs.js';
import { newTask, planAppend } from '../store/task-transitions.js';
import { terminalEventOfView, terminalFields, watchViewAfter, watchViewOfTask } from './event-view.js';

const created: Task = newTask({ id: 't1', owner: 'u', kind: 'k', total: 3 }, 1000);

/** The store's row after `inputs`, and the view a watcher builds from the events they produced. */
function rowAndView(inputs: AppendInput[]) {
  let task = created;
  let view = watchViewOfTask(toTaskView(created));
  for (const [index, input] of inputs.entries()) {
    const result = planAppend(task, input, 2000 + index);
    task = result.task;
    view = watchViewAfter(view, result.event);
  }
  return { row: watchViewOfTask(toTaskView(task)), view };
}

describe('event → view rule', () => {
  it.each<[string, AppendInput]>([
    ['completed', { type: 'completed', result: { ok: 1 }, message: 'done' }],
    ['failed', { type: 'failed', error: { code: 'boom', message: 'it broke' } }],
    ['cancelled without a reason', { type: 'cancelled' }],
    ['cancelled with a reason', { type: 'cancelled', reason: 'user asked' }],
    ['interrupted', { type: 'interrupted', reason: 'lease expired' }],
  ])('gives the store row and the watcher the same fields after %s', (_name, terminal) => {
    const { row, view } = rowAndView([
      { type: 'progress', done: 1, message: 'working' },
      { type: 'item', key: 'a', ok: false, error: 'bad' },
      terminal,
    ]);
    expect(view).toEqual({ ...row, kind: 'k' });
    expect(view.status).toBe(terminal.type);
    expect(view.finishedAt).toBe(2002);
  });

  it('gives a cancellation without a reason the message `cancelled`', () => {
    const fields = terminalFields({
      taskId: 't1',
      seq: 3,
      time: 5,
      type: 'cancelled',
      reason: null,
      progress: { total: null, done: 0, succeeded: 0, failed: 0, current: null, message: null },
    });
    expect(fields).toEqual({
      status: 'cancelled',
      result: null,
      error: { code: 'cancelled', message: 'cancelled' },
    });
  });

  it('turns a terminal snapshot view back into the terminal event it stands for', () => {
    const { view } = rowAndView([{ type: 'failed', error: { code: 'boom', message: 'it broke' } }]);
    expect(terminalEventOfView(view)).toMatchObject({
      type: 'failed',
      seq: 1,
      time: 2000,
      error: { code: 'boom', message: 'it broke' },
    });
    const cancelled = rowAndView([{ type: 'cancelled', reason: 'user asked' }]).view;
    expect(terminalEventOfView(cancelled)).toMatchObject({ type: 'cancelled', reason: 'user asked' });
  });
});
