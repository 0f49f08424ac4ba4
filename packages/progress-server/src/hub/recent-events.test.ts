import type { TaskEvent } from '@finishline/core';
import { describe, expect, it } from 'vitest';
import { RecentEvents } from './recent-events.js';

const event = (taskId: string, seq: number): TaskEvent =>
  Object.freeze({
    taskId,
    seq,
    type: 'progress' as const,
    time: seq,
    progress: { total: null, done: seq, succeeded: 0, failed: 0, current: null, message: null },
  });
const run = (taskId: string, from: number, to: number): TaskEvent[] =>
  Array.from({ length: to - from + 1 }, (_, i) => event(taskId, from + i));
const seqs = (events: readonly TaskEvent[] | undefined) => events?.map((e) => e.seq);

describe('RecentEvents', () => {
  it('serves a range only when it holds every event of it, as the same objects', () => {
    const recent = new RecentEvents({ perTask: 10, total: 100 });
    const events = run('a', 1, 5);
    recent.extend('a', events.slice(0, 3));
    recent.extend('a', events.slice(3));
    expect(seqs(recent.between('a', 2, 5))).toEqual([3, 4, 5]);
    expect(recent.between('a', 0, 5)?.[0]).toBe(events[0]);
    expect(recent.between('a', 2, 6)).toBeUndefined(); // 6 is not held
    expect(recent.between('a', 5, 5)).toBeUndefined(); // nothing asked
    expect(recent.between('b', 0, 1)).toBeUndefined();
  });

  it('starts over when a dispatched run does not continue the window', () => {
    const recent = new RecentEvents({ perTask: 10, total: 100 });
    recent.extend('a', run('a', 1, 3));
    recent.extend('a', run('a', 7, 8));
    expect(recent.between('a', 0, 3)).toBeUndefined();
    expect(seqs(recent.between('a', 6, 8))).toEqual([7, 8]);
    expect(recent.size).toBe(2);
  });

  it('keeps at least the last perTask events of a task and fewer than twice as many', () => {
    const recent = new RecentEvents({ perTask: 4, total: 100 });
    for (let seq = 1; seq <= 50; seq++) {
      recent.extend('a', [event('a', seq)]);
      expect(seqs(recent.between('a', Math.max(seq - 4, 0), seq))).toHaveLength(Math.min(seq, 4));
      expect(recent.size).toBeLessThan(8);
    }
  });

  it('takes a store read that ends at the dispatched seq, or joins the front of the window', () => {
    const recent = new RecentEvents({ perTask: 10, total: 100 });
    recent.backfill('a', run('a', 3, 5), 6); // ends before the hub's position: not joined
    expect(recent.size).toBe(0);
    recent.backfill('a', run('a', 4, 6), 6);
    expect(seqs(recent.between('a', 3, 6))).toEqual([4, 5, 6]);
    recent.backfill('a', run('a', 1, 4), 6); // overlaps the front
    expect(seqs(recent.between('a', 0, 6))).toEqual([1, 2, 3, 4, 5, 6]);
    recent.backfill('b', run('b', 1, 2), 6);
    recent.extend('b', run('b', 7, 7));
    recent.backfill('b', run('b', 1, 5), 7); // leaves a gap before the window: not joined
    expect(recent.between('b', 0, 7)).toBeUndefined();
    expect(seqs(recent.between('b', 6, 7))).toEqual([7]);
  });

  it('drops the least recently used windows past the total, never the one being written', () => {
    const recent = new RecentEvents({ perTask: 10, total: 6 });
    recent.extend('a', run('a', 1, 3));
    recent.extend('b', run('b', 1, 3));
    recent.between('a', 0, 3); // a is now more recent than b
    recent.extend('c', run('c', 1, 2));
    expect(recent.between('b', 0, 1)).toBeUndefined();
    expect(seqs(recent.between('a', 0, 3))).toEqual([1, 2, 3]);
    expect(seqs(recent.between('c', 0, 2))).toEqual([1, 2]);
    expect(recent.size).toBe(5);
    recent.extend('d', run('d', 1, 9)); // alone over the total: kept, all others dropped
    expect(recent.size).toBe(9);
    expect(recent.between('a', 0, 1)).toBeUndefined();
    recent.drop('d');
    expect(recent.size).toBe(0);
  });
});
