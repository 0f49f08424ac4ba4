import { describe, expect, it } from 'vitest';
import { ErrorCode } from '../codes.js';
import { isProgressError } from '../progress-error.js';
import type { AppendInput } from './inputs.js';
import { leaseExpiredReason, newTask, planAppend, planLease } from './task-transitions.js';

/**
 * The transitions checked directly. The store model folds logs with these same functions, so a mistake
 * in them is invisible to the model-based tests; mutation testing showed which ones went unnoticed.
 */

const task = () => newTask({ id: 't1', owner: 'alice', kind: 'k' }, 1_000);

function thrown(run: () => unknown): { code: string; message: string; taskId: unknown } {
  try {
    run();
  } catch (error) {
    expect(isProgressError(error)).toBe(true);
    const { code, message, taskId } = error as { code: string; message: string; taskId: unknown };
    return { code, message, taskId };
  }
  return expect.fail('expected a ProgressError');
}

describe('planAppend', () => {
  it('an item without `current` keeps the current item named before', () => {
    const first = planAppend(task(), { type: 'item', key: 'a', ok: true, current: 'node-1' }, 1_001);
    const second = planAppend(first.task, { type: 'item', key: 'b', ok: true }, 1_002);
    expect(second.task.current).toBe('node-1');
    expect(second.event.progress.current).toBe('node-1');
  });

  it('ending clears the current item, in the row and in the terminal event (docs/protocol.md, ProgressState)', () => {
    const ends: AppendInput[] = [
      { type: 'completed' },
      { type: 'failed', error: { code: 'x', message: 'y' } },
      { type: 'cancelled' },
      { type: 'interrupted', reason: 'lease expired' },
    ];
    for (const input of ends) {
      const working = planAppend(task(), { type: 'progress', current: 'node-12' }, 1_001);
      const ended = planAppend(working.task, input, 1_002);
      expect([ended.task.current, ended.event.progress.current], input.type).toEqual([null, null]);
    }
  });

  it('completing without a message keeps the last message', () => {
    const progressed = planAppend(task(), { type: 'progress', message: 'almost' }, 1_001);
    const completed = planAppend(progressed.task, { type: 'completed' }, 1_002);
    expect(completed.task.message).toBe('almost');
  });

  it('a cancellation keeps its reason in the event and the error', () => {
    const cancelled = planAppend(task(), { type: 'cancelled', reason: 'operator said so' }, 1_001);
    expect(cancelled.event).toMatchObject({ type: 'cancelled', reason: 'operator said so' });
    expect(cancelled.task.error).toMatchObject({ message: 'operator said so' });
  });

  it('refuses an append after the terminal event with task_finished naming the task', () => {
    const done = planAppend(task(), { type: 'completed' }, 1_001).task;
    expect(thrown(() => planAppend(done, { type: 'progress' }, 1_002))).toEqual({
      code: ErrorCode.TaskFinished,
      message: 'Task t1 already ended (completed); nothing can be appended after its terminal event',
      taskId: 't1',
    });
  });
});

describe('planLease', () => {
  it('refuses a finished task and a lease held by another owner, naming the task', () => {
    const done = planAppend(task(), { type: 'failed', error: { code: 'boom', message: 'boom' } }, 1_001).task;
    expect(thrown(() => planLease(done, 'w1', 1_000, 1_002))).toEqual({
      code: ErrorCode.TaskFinished,
      message: 'Task t1 already ended (failed)',
      taskId: 't1',
    });
    const held = planLease(task(), 'w1', 1_000, 1_000);
    expect(thrown(() => planLease(held, 'w2', 1_000, 1_500))).toEqual({
      code: ErrorCode.LeaseHeld,
      message: 'Task t1 is leased by w1',
      taskId: 't1',
    });
  });

  it('names the worker whose lease expired', () => {
    expect(leaseExpiredReason({ leaseOwner: 'replica-a' })).toBe('lease of worker replica-a expired');
  });
});
