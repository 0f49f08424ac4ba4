import type { Task } from '@finishline/core';
import { newTask, planAppend } from '@finishline/core/internal';
import { describe, expect, it } from 'vitest';
import { RunningTaskCache } from './running-task-cache.js';

function running(id: string): Task {
  return newTask({ id, owner: 'alice', kind: 'test' }, 1_000);
}

describe('RunningTaskCache', () => {
  it('keeps running rows and drops a task once it ended', () => {
    const cache = new RunningTaskCache();
    const task = running('t1');
    cache.keep(task);
    expect(cache.get('t1')).toBe(task);
    const { task: ended } = planAppend(task, { type: 'completed' }, 2_000);
    cache.keep(ended);
    expect(cache.get('t1')).toBeUndefined();
  });

  it('forgets one row on request', () => {
    const cache = new RunningTaskCache();
    cache.keep(running('t1'));
    cache.keep(running('t2'));
    cache.forget('t1');
    expect(cache.get('t1')).toBeUndefined();
    expect(cache.get('t2')).toBeDefined();
  });

  it('keeps its rows while the write mark is the one its last commit left, and only then', () => {
    const cache = new RunningTaskCache();
    cache.committed('5:1');
    cache.keep(running('t1'));
    expect(cache.validate('5:1')).toBe(true);
    expect(cache.get('t1')).toBeDefined();
    expect(cache.validate('6:1')).toBe(false);
    expect(cache.get('t1')).toBeUndefined();
  });

  it('after a reset, trusts no write mark until the next commit', () => {
    const cache = new RunningTaskCache();
    cache.committed('5:1');
    cache.keep(running('t1'));
    cache.reset();
    expect(cache.get('t1')).toBeUndefined();
    cache.keep(running('t2'));
    expect(cache.validate('5:1')).toBe(false);
    expect(cache.get('t2')).toBeUndefined();
  });

  it('drops the least recently written row past its capacity of 10 000', () => {
    const cache = new RunningTaskCache();
    for (let index = 0; index < 10_000; index++) cache.keep(running(`t${index}`));
    // Writing t0 again makes t1 the oldest.
    cache.keep(running('t0'));
    cache.keep(running('t10000'));
    expect(cache.get('t1')).toBeUndefined();
    expect(cache.get('t0')).toBeDefined();
    expect(cache.get('t2')).toBeDefined();
    expect(cache.get('t10000')).toBeDefined();
  });
});
