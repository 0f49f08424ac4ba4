import { describe, expect, it } from 'vitest';
import type { TaskEvent } from '../model.js';
import { progressOf } from '../model.js';
import type { AppendInput } from '../store/inputs.js';
import { invalidInputMessage } from '../testing/invalid-input.js';
import { buildTaskLog, type TaskLog, viewAt } from '../testing/task-log-arbitrary.js';
import { type Delivery, WATCH_CURSOR_DEFAULTS, WatchCursor } from './watch-cursor.js';

const work: AppendInput[] = [
  { type: 'progress', message: 'starting' },
  { type: 'item', key: 'node-a', ok: true },
  { type: 'progress', current: 'node-b' },
  { type: 'item', key: 'node-b', ok: false, error: 'drain timed out' },
  { type: 'progress', message: 'finishing' },
  { type: 'item', key: 'node-c', ok: true },
];

function logEnding(terminal: AppendInput): TaskLog {
  return buildTaskLog('task-1', [...work, terminal], 3);
}

const log = logEnding({ type: 'completed', result: { tainted: 2 } });
const event = (seq: number): TaskEvent => log.events[seq - 1] as TaskEvent;
const seqs = (delivered: Delivery[]) =>
  delivered.map((delivery) => (delivery.kind === 'event' ? delivery.event.seq : `s${delivery.task.seq}`));

describe('WatchCursor', () => {
  it('has frozen defaults', () => {
    expect(WATCH_CURSOR_DEFAULTS).toEqual({ afterSeq: 0, maxBuffered: 256 });
    expect(Object.isFrozen(WATCH_CURSOR_DEFAULTS)).toBe(true);
  });

  it('starts knowing nothing but its cursor', () => {
    const cursor = new WatchCursor('task-1', { afterSeq: 4 });
    expect(cursor.seq).toBe(4);
    expect(cursor.finished).toBe(false);
    expect(cursor.view).toEqual({
      taskId: 'task-1',
      seq: 4,
      status: 'running',
      kind: null,
      progress: null,
      result: null,
      error: null,
      updatedAt: null,
      finishedAt: null,
    });
  });

  it('delivers events in order and drops duplicates', () => {
    const cursor = new WatchCursor('task-1');
    expect(cursor.applyEvent(event(1))).toEqual({
      delivered: [{ kind: 'event', event: event(1) }],
      duplicate: false,
      gap: false,
      resyncFrom: null,
      finished: false,
      foreign: false,
    });
    const again = cursor.applyEvent(event(1));
    expect(again.delivered).toEqual([]);
    expect(again.duplicate).toBe(true);
    expect(cursor.applyEvent(event(2)).delivered).toHaveLength(1);
    expect(cursor.seq).toBe(2);
    expect(cursor.view.progress).toEqual(event(2).progress);
  });

  it('buffers events ahead of a gap, asks for a resync, and releases them when the gap fills', () => {
    const cursor = new WatchCursor('task-1');
    cursor.applyEvent(event(1));
    const ahead = cursor.applyEvent(event(4));
    expect(ahead).toMatchObject({ delivered: [], gap: true, resyncFrom: 1, duplicate: false });
    expect(cursor.applyEvent(event(3))).toMatchObject({ gap: true, resyncFrom: 1 });
    expect(cursor.applyEvent(event(4))).toMatchObject({ gap: true, duplicate: true });
    expect(cursor.buffered).toBe(2);
    const filled = cursor.applyEvent(event(2));
    expect(seqs(filled.delivered)).toEqual([2, 3, 4]);
    expect(filled.gap).toBe(false);
    expect(cursor.seq).toBe(4);
    expect(cursor.buffered).toBe(0);
  });

  it('keeps the events nearest the cursor when the buffer is full', () => {
    const cursor = new WatchCursor('task-1', { maxBuffered: 2 });
    cursor.applyEvent(event(5));
    cursor.applyEvent(event(6));
    cursor.applyEvent(event(3)); // evicts 6
    cursor.applyEvent(event(7)); // farther than everything held: dropped
    expect(cursor.buffered).toBe(2);
    expect(seqs(cursor.applyEvent(event(1)).delivered)).toEqual([1]);
    expect(seqs(cursor.applyEvent(event(2)).delivered)).toEqual([2, 3]);
    expect(seqs(cursor.applyEvent(event(4)).delivered)).toEqual([4, 5]);
    expect(cursor.applyEvent(event(7))).toMatchObject({ gap: true, resyncFrom: 5 });
  });

  it('evicts the farthest held event, whatever order the held events arrived in', () => {
    const cursor = new WatchCursor('task-1', { maxBuffered: 2 });
    cursor.applyEvent(event(6));
    cursor.applyEvent(event(5)); // arrived last but is not the farthest
    cursor.applyEvent(event(3)); // evicts 6
    expect(seqs(cursor.applyEvent(event(1)).delivered)).toEqual([1]);
    expect(seqs(cursor.applyEvent(event(2)).delivered)).toEqual([2, 3]);
    expect(seqs(cursor.applyEvent(event(4)).delivered)).toEqual([4, 5]);
  });

  it('does not evict anything for an event it already holds', () => {
    const cursor = new WatchCursor('task-1', { maxBuffered: 2 });
    cursor.applyEvent(event(3));
    cursor.applyEvent(event(4)); // full
    expect(cursor.applyEvent(event(3))).toMatchObject({ delivered: [], duplicate: true, gap: true });
    expect(cursor.buffered).toBe(2);
    expect(seqs(cursor.applyEvent(event(1)).delivered)).toEqual([1]);
    expect(seqs(cursor.applyEvent(event(2)).delivered)).toEqual([2, 3, 4]);
  });

  it('buffers nothing with maxBuffered 0', () => {
    const cursor = new WatchCursor('task-1', { maxBuffered: 0 });
    expect(cursor.applyEvent(event(2))).toMatchObject({ gap: true, resyncFrom: 0 });
    expect(cursor.buffered).toBe(0);
    expect(seqs(cursor.applyEvent(event(1)).delivered)).toEqual([1]);
  });

  it('accepts a snapshot ahead of the cursor, discards what it covers and releases what follows', () => {
    const cursor = new WatchCursor('task-1');
    cursor.applyEvent(event(1));
    cursor.applyEvent(event(3));
    cursor.applyEvent(event(5));
    cursor.applyEvent(event(6));
    expect(cursor.buffered).toBe(3);
    const result = cursor.applySnapshot(viewAt(log, 4));
    expect(seqs(result.delivered)).toEqual(['s4', 5, 6]);
    expect(cursor.buffered).toBe(0);
    expect(cursor.seq).toBe(6);
    expect(cursor.view.kind).toBe('batch_taint');
  });

  it('hands over the snapshot itself and frees a held event at exactly its seq', () => {
    const cursor = new WatchCursor('task-1');
    cursor.applyEvent(event(3)); // held: 1 and 2 are missing
    const result = cursor.applySnapshot(viewAt(log, 3));
    expect(result.delivered).toEqual([{ kind: 'snapshot', task: viewAt(log, 3) }]);
    expect(cursor.buffered).toBe(0);
  });

  it('treats an event of an unknown type that slipped through as progress instead of throwing', () => {
    const cursor = new WatchCursor('task-1');
    const odd = { ...event(1), type: 'paused' } as unknown as TaskEvent;
    const result = cursor.applyEvent(odd);
    expect(result.delivered).toEqual([{ kind: 'event', event: odd }]);
    expect(cursor.view).toMatchObject({ seq: 1, status: 'running', updatedAt: odd.time, finishedAt: null });
    expect(cursor.finished).toBe(false);
  });

  it('ignores a snapshot at or behind the cursor once something was delivered', () => {
    const cursor = new WatchCursor('task-1');
    cursor.applyEvent(event(1));
    cursor.applyEvent(event(2));
    const before = cursor.view;
    expect(cursor.applySnapshot(viewAt(log, 2))).toMatchObject({ delivered: [], duplicate: true });
    expect(cursor.applySnapshot(viewAt(log, 1))).toMatchObject({ delivered: [], duplicate: true });
    expect(cursor.view).toBe(before);
  });

  it('accepts the first snapshot at its own cursor, so a fresh or resumed watcher learns the task', () => {
    const fresh = new WatchCursor('task-1');
    expect(seqs(fresh.applySnapshot(viewAt(log, 0)).delivered)).toEqual(['s0']);
    expect(fresh.view.progress).toEqual(progressOf(viewAt(log, 0)));
    expect(fresh.applySnapshot(viewAt(log, 0)).duplicate).toBe(true);

    // A page reloaded after the task ended resumes at the terminal seq: the snapshot finishes the watch.
    const n = log.events.length;
    const resumed = new WatchCursor('task-1', { afterSeq: n });
    expect(resumed.applyEvent(event(n)).duplicate).toBe(true);
    const result = resumed.applySnapshot(viewAt(log, n));
    expect(result.finished).toBe(true);
    expect(resumed.view.status).toBe('completed');
  });

  it('finishes exactly once on the terminal event and ignores everything after', () => {
    const cursor = new WatchCursor('task-1', { afterSeq: 6 });
    const n = log.events.length;
    const result = cursor.applyEvent(event(n));
    expect(result.finished).toBe(true);
    expect(cursor.finished).toBe(true);
    expect(cursor.view).toMatchObject({ status: 'completed', result: { tainted: 2 }, error: null });
    expect(cursor.view.finishedAt).toBe(event(n).time);
    for (const late of [cursor.applyEvent(event(n)), cursor.applySnapshot(viewAt(log, n))]) {
      expect(late).toMatchObject({ delivered: [], duplicate: true, finished: false });
    }
    expect(cursor.isBehind(n + 5)).toBe(false);
  });

  it('finishes when a buffered terminal event is released', () => {
    const cursor = new WatchCursor('task-1', { afterSeq: 5 });
    const n = log.events.length;
    expect(cursor.applyEvent(event(n)).finished).toBe(false);
    const result = cursor.applyEvent(event(6));
    expect(seqs(result.delivered)).toEqual([6, n]);
    expect(result.finished).toBe(true);
  });

  it('finishes on a terminal snapshot, dropping buffered events', () => {
    const cursor = new WatchCursor('task-1');
    cursor.applyEvent(event(3));
    const result = cursor.applySnapshot(viewAt(log, log.events.length));
    expect(seqs(result.delivered)).toEqual([`s${log.events.length}`]);
    expect(result.finished).toBe(true);
    expect(cursor.buffered).toBe(0);
  });

  it('builds the same view as the store for every terminal type (mirrors planAppend)', () => {
    const terminals: AppendInput[] = [
      { type: 'completed' },
      { type: 'failed', error: { code: 'quota', message: 'quota exceeded' } },
      { type: 'cancelled' },
      { type: 'cancelled', reason: 'user asked' },
      { type: 'interrupted', reason: 'lease of worker w1 expired' },
    ];
    for (const terminal of terminals) {
      const terminalLog = logEnding(terminal);
      const cursor = new WatchCursor('task-1');
      for (const each of terminalLog.events) cursor.applyEvent(each);
      const row = viewAt(terminalLog, terminalLog.events.length);
      expect(cursor.view).toEqual({
        taskId: 'task-1',
        seq: row.seq,
        status: row.status,
        kind: null,
        progress: progressOf(row),
        result: row.result,
        error: row.error,
        updatedAt: row.updatedAt,
        finishedAt: row.finishedAt,
      });
    }
  });

  it('replaces the view object on every change and freezes it', () => {
    const cursor = new WatchCursor('task-1');
    const first = cursor.view;
    cursor.applyEvent(event(1));
    expect(cursor.view).not.toBe(first);
    expect(Object.isFrozen(cursor.view)).toBe(true);
    const second = cursor.view;
    cursor.applyEvent(event(1));
    expect(cursor.view).toBe(second);
  });

  it('reports frames of another task without throwing or moving', () => {
    const cursor = new WatchCursor('task-2');
    expect(cursor.taskId).toBe('task-2');
    expect(cursor.applyEvent(event(1))).toMatchObject({ delivered: [], foreign: true, duplicate: false });
    expect(cursor.applySnapshot(viewAt(log, 3))).toMatchObject({ delivered: [], foreign: true });
    expect(cursor.seq).toBe(0);
  });

  it('is behind when a heartbeat names a later seq', () => {
    const cursor = new WatchCursor('task-1', { afterSeq: 3 });
    expect(cursor.isBehind(3)).toBe(false);
    expect(cursor.isBehind(4)).toBe(true);
  });

  it('names the option it refuses', () => {
    expect(() => new WatchCursor('task-1', { afterSeq: -1 })).toThrow(/afterSeq/);
    expect(() => new WatchCursor('task-1', { maxBuffered: -1 })).toThrow(/maxBuffered/);
  });

  it('rejects a bad task id or options', () => {
    const bad: Array<() => unknown> = [
      () => new WatchCursor(''),
      () => new WatchCursor('has space'),
      () => new WatchCursor('task-1', { afterSeq: -1 }),
      () => new WatchCursor('task-1', { afterSeq: 1.5 }),
      () => new WatchCursor('task-1', { maxBuffered: -1 }),
      () => new WatchCursor('task-1', { maxBuffered: 1.5 }),
    ];
    for (const run of bad) invalidInputMessage(run);
  });

  it('drops events held from the old log when a reset snapshot moves the cursor back', () => {
    const items = Array.from({ length: 12 }, (_, i) => ({ type: 'item' as const, key: `k${i}`, ok: true }));
    const oldLog = buildTaskLog('task-1', items, 1);
    const newLog = buildTaskLog(
      'task-1',
      items.map((item) => ({ ...item, key: `new-${item.key}` })),
      2,
    );
    const cursor = new WatchCursor('task-1', { afterSeq: 10 });
    // Event 12 of the old log arrives out of order: held, gap reported.
    expect(cursor.applyEvent(oldLog.events[11] as TaskEvent).gap).toBe(true);
    // The store was restored: the server answers the resync with a reset snapshot at seq 3 of the new log.
    cursor.applySnapshot(viewAt(newLog, 3), true);
    const delivered: number[] = [];
    const keys: string[] = [];
    for (let seq = 4; seq <= 12; seq++) {
      for (const d of cursor.applyEvent(newLog.events[seq - 1] as TaskEvent).delivered) {
        if (d.kind === 'event') {
          delivered.push(d.event.seq);
          keys.push(d.event.type === 'item' ? d.event.item.key : '');
        }
      }
    }
    expect(delivered).toEqual([4, 5, 6, 7, 8, 9, 10, 11, 12]);
    // Seq 12 must be the new log's event, not the one held from the old log.
    expect(keys.at(-1)).toBe('new-k11');
  });

  it('ignores a reset snapshot once the terminal state was delivered (it is never delivered twice)', () => {
    const log = buildTaskLog('task-1', [{ type: 'completed' }], 1);
    const cursor = new WatchCursor('task-1');
    expect(cursor.applySnapshot(viewAt(log, 1)).finished).toBe(true);
    expect(cursor.applySnapshot(viewAt(log, 1), true)).toMatchObject({ delivered: [], duplicate: true });
  });

  it('ignores events after the terminal state, even past its seq (a purged id reused by a new run)', () => {
    const ended = buildTaskLog('task-1', [{ type: 'completed' }], 1);
    const rerun = buildTaskLog('task-1', work, 2);
    const byEvent = new WatchCursor('task-1');
    expect(byEvent.applyEvent(ended.events[0] as TaskEvent).finished).toBe(true);
    const bySnapshot = new WatchCursor('task-1');
    expect(bySnapshot.applySnapshot(viewAt(ended, 1)).finished).toBe(true);
    for (const cursor of [byEvent, bySnapshot]) {
      // Seq 2 is the cursor's next seq and seq 4 is ahead of it: neither may reach the application.
      for (const seq of [2, 4]) {
        expect(cursor.applyEvent(rerun.events[seq - 1] as TaskEvent)).toMatchObject({
          delivered: [],
          duplicate: true,
          gap: false,
          finished: false,
        });
      }
      expect(cursor.buffered).toBe(0);
      expect(cursor.view).toMatchObject({ seq: 1, status: 'completed' });
    }
  });

  it('restarts from seq 0 without what it held, and takes the new epoch’s snapshot at seq 0', () => {
    const cursor = new WatchCursor('task-1');
    cursor.applyEvent(event(1));
    cursor.applyEvent(event(3));
    expect(cursor.buffered).toBe(1);
    cursor.restart();
    expect(cursor.seq).toBe(0);
    expect(cursor.buffered).toBe(0);
    // In the new epoch the task was created again and has no event yet: its snapshot is at seq 0.
    const newLog = buildTaskLog('task-1', work, 2);
    expect(seqs(cursor.applySnapshot(viewAt(newLog, 0)).delivered)).toEqual(['s0']);
    expect(seqs(cursor.applyEvent(newLog.events[0] as TaskEvent).delivered)).toEqual([1]);
    // Seq 3 was held from the old log; after seq 2 of the new one, nothing of the old log is released.
    expect(seqs(cursor.applyEvent(newLog.events[1] as TaskEvent).delivered)).toEqual([2]);
    expect(cursor.seq).toBe(2);
  });

  it('stays as it is when restarted after the terminal state', () => {
    const cursor = new WatchCursor('task-1', { afterSeq: 6 });
    const n = log.events.length;
    expect(cursor.applyEvent(event(n)).finished).toBe(true);
    const view = cursor.view;
    cursor.restart();
    expect(cursor.view).toBe(view);
    expect(cursor.seq).toBe(n);
    expect(cursor.isBehind(n + 1)).toBe(false);
  });

  it('lets go of every held event once finished, even those past the terminal seq', () => {
    const ended = buildTaskLog('task-1', [{ type: 'completed' }], 1);
    const other = buildTaskLog('task-1', work, 2);
    const cursor = new WatchCursor('task-1');
    // Held: seq 4 of a run the terminal snapshot below does not cover (a reused id's).
    expect(cursor.applyEvent(other.events[3] as TaskEvent).gap).toBe(true);
    expect(cursor.applySnapshot(viewAt(ended, 1)).finished).toBe(true);
    expect(cursor.buffered).toBe(0);
  });
});
