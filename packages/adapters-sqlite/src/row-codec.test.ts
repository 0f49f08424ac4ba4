import type { TaskEvent } from '@finishline/core';
import { ErrorCode, isProgressError } from '@finishline/core';
import { newTask, planAppend } from '@finishline/core/internal';
import { propertyParams, taskEventArbitrary } from '@finishline/core/testing';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { EventRow, TaskRow } from './row-codec.js';
import { EVENT_COLUMNS, pushEventValues, rowToEvent, rowToTask, taskToRow } from './row-codec.js';

function eventRow(event: TaskEvent): EventRow {
  const values: unknown[] = [];
  pushEventValues(values, event);
  return Object.fromEntries(EVENT_COLUMNS.map((column, index) => [column, values[index]])) as EventRow;
}

function expectInternal(action: () => unknown, mentions: string): void {
  try {
    action();
  } catch (error) {
    expect(isProgressError(error, ErrorCode.Internal), String(error)).toBe(true);
    expect((error as Error).message).toContain(mentions);
    return;
  }
  throw new Error('expected a ProgressError internal');
}

describe('row codec', () => {
  it('every event survives a round trip through its row', () => {
    fc.assert(
      fc.property(taskEventArbitrary, (event) => {
        expect(rowToEvent(eventRow(event))).toEqual(event);
      }),
      propertyParams(300),
    );
  });

  it('a task survives a round trip through its row, bigints included', () => {
    const created = newTask(
      { id: 't-1', owner: 'alice', kind: 'k', total: 3, lease: { owner: 'w', ttlMs: 10 } },
      1_000,
    );
    const { task } = planAppend(created, { type: 'completed', result: { nodes: ['a', 'b'], n: 2 } }, 2_000);
    expect(rowToTask(taskToRow(task))).toEqual(task);
    const failed = planAppend(created, { type: 'failed', error: { code: 'E', message: 'boom' } }, 3_000).task;
    const asBigints = Object.fromEntries(
      Object.entries(taskToRow(failed)).map(([key, value]) => [
        key,
        typeof value === 'number' ? BigInt(value) : value,
      ]),
    ) as TaskRow;
    expect(rowToTask(asBigints)).toEqual(failed);
  });

  it('damaged columns become ProgressError internal naming the column, never a raw crash', () => {
    const task = taskToRow(newTask({ id: 't-1', owner: 'alice', kind: 'k' }, 1));
    expectInternal(() => rowToTask({ ...task, result: '{not json' }), 'result');
    expectInternal(() => rowToTask({ ...task, status: 'paused' }), 'status');
    expectInternal(() => rowToTask({ ...task, seq: 'x' as unknown as number }), 'seq');
    expectInternal(() => rowToTask({ ...task, seq: 2n ** 60n }), 'seq');
    expectInternal(() => rowToTask({ ...task, error_code: 'E' }), 'error_code');
    const item = eventRow(
      planAppend(newTask({ id: 't-1', owner: 'a', kind: 'k' }, 1), { type: 'item', key: 'n', ok: true }, 2)
        .event,
    );
    expectInternal(() => rowToEvent({ ...item, payload: '{"key": "n", "ok": tr' }), 'payload');
    expectInternal(() => rowToEvent({ ...item, payload: '[]' }), 'payload');
    expectInternal(
      () => rowToEvent({ ...item, payload: '{"key": 1, "ok": true, "error": null, "detail": null}' }),
      'key',
    );
    expectInternal(() => rowToEvent({ ...item, payload: null }), 'payload');
    expectInternal(() => rowToEvent({ ...item, type: 'paused' }), 'type');
    expectInternal(() => rowToEvent({ ...item, done: 1.5 }), 'done');
  });
});
