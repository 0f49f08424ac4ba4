import type { TaskEvent } from '@finishline/core';
import { describe, expect, it } from 'vitest';
import { RECENT_EVENTS_TOTAL_BYTES, RecentEvents } from './recent-events.js';

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

  it("takes a read not known to be of the window's run only if it holds the window's first event", () => {
    const recent = new RecentEvents({ perTask: 10, total: 100 });
    recent.backfill('a', run('a', 4, 6), 6, false); // no window to check it against: not kept
    expect(recent.size).toBe(0);
    recent.extend('a', run('a', 4, 6));
    // A later run's events below the window (read after the run was purged and its id written again).
    const later = run('a', 1, 3).map((e) => ({ ...e, time: e.time + 100 }));
    recent.backfill('a', later, 6, false); // ends right before the window: nothing to check
    recent.backfill('a', [...later, { ...event('a', 4), time: 104 }], 6, false); // its event 4 is not the window's
    expect(recent.between('a', 0, 6)).toBeUndefined();
    recent.backfill('a', run('a', 1, 5), 6, false); // holds the window's event 4 itself
    expect(seqs(recent.between('a', 0, 6))).toEqual([1, 2, 3, 4, 5, 6]);
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

  // Found by a review (7 December 2026): the total was a count, assumed ~15 MB at 250 bytes an event;
  // at 16 KiB an item the 65,536 events held were about 1 GB, and as much again in their frame texts.
  it('holds at most RECENT_EVENTS_TOTAL_BYTES of frames, dropping the least recently used windows', () => {
    const detail = 'x'.repeat(16 * 1024);
    const item = (taskId: string, seq: number): TaskEvent =>
      Object.freeze({
        taskId,
        seq,
        type: 'item' as const,
        time: seq,
        item: { key: `k${seq}`, ok: true, detail },
        progress: { total: null, done: seq, succeeded: seq, failed: 0, current: null, message: null },
      }) as unknown as TaskEvent;
    const recent = new RecentEvents();
    // 64 tasks of 100 items, one task after the other: 6,400 events, far below the count, 105 MB of frames.
    for (let task = 0; task < 64; task++) {
      for (let seq = 1; seq <= 100; seq++) recent.extend(`t${task}`, [item(`t${task}`, seq)]);
      if (task === 30) recent.between('t0', 0, 100); // t0 is now more recent than t1 … t30
      expect(recent.bytes).toBeLessThanOrEqual(RECENT_EVENTS_TOTAL_BYTES);
    }
    expect(recent.bytes).toBeGreaterThan(RECENT_EVENTS_TOTAL_BYTES / 2);
    expect(recent.size).toBeLessThan(6400);
    // The windows used last are whole; the least recently used are gone.
    expect(recent.between('t63', 0, 100)).toHaveLength(100);
    expect(recent.between('t0', 0, 100)).toHaveLength(100);
    expect(recent.between('t1', 0, 100)).toBeUndefined();
    for (let task = 0; task < 64; task++) recent.drop(`t${task}`);
    expect(recent.bytes).toBe(0);
    expect(recent.size).toBe(0);
  });

  // Found by a review (7 December 2026): events were weighed by their frame's `length` (UTF-16 units), so a
  // window of CJK text (one unit, three UTF-8 bytes a character) held up to three times its bytes.
  it('weighs events by the UTF-8 bytes of their frames, CJK text too', () => {
    const message = '\u8282'.repeat(4000);
    const cjk = (taskId: string, seq: number): TaskEvent =>
      Object.freeze({
        taskId,
        seq,
        type: 'progress' as const,
        time: seq,
        progress: { total: null, done: seq, succeeded: 0, failed: 0, current: null, message },
      });
    const totalBytes = 1024 * 1024;
    const recent = new RecentEvents({ totalBytes });
    let bytes = 0;
    for (let seq = 1; seq <= 200; seq++) {
      const added = cjk(`t${seq}`, 1);
      recent.extend(`t${seq}`, [added]);
      bytes += Buffer.byteLength(JSON.stringify({ type: 'event', event: added }), 'utf8');
      expect(recent.bytes).toBeLessThanOrEqual(totalBytes);
    }
    // 200 events of 12 KB: the window keeps what fits in 1 MiB, some 87 of them, not 260 of 4 K units.
    expect(recent.size).toBeLessThan(Math.ceil((200 * totalBytes) / bytes));
    expect(recent.size).toBeGreaterThanOrEqual(Math.floor((200 * totalBytes) / bytes) - 1);
  });

  it('weighs a window trimmed to perTask by what it still holds', () => {
    const recent = new RecentEvents({ perTask: 4, total: 100, totalBytes: 70, weigh: () => 10 });
    for (let seq = 1; seq <= 19; seq++) {
      recent.extend('a', [event('a', seq)]);
      expect(recent.bytes).toBe(recent.size * 10);
    }
    recent.extend('a', [event('a', 20)]); // trimmed to its last 4: 40
    recent.extend('b', run('b', 1, 4));
    // 'a' (40) and 'b' (40) are over 70: 'a', the least recent, is dropped.
    expect(recent.between('a', 19, 20)).toBeUndefined();
    expect(recent.bytes).toBe(40);
  });
});
