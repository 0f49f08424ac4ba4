import { propertyParams } from '@finishline/core/testing';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { FlushTiming } from './group-commit.js';
import { GroupCommitQueue } from './group-commit.js';

function recorder(timing: FlushTiming, maxBatchSize = 1000) {
  const batches: number[][] = [];
  const queue = new GroupCommitQueue<number>({
    maxBatchSize,
    timing,
    commit: (batch) => {
      batches.push([...batch]);
      return true;
    },
  });
  return { queue, batches };
}

const nextTurn = () => new Promise((resolve) => setImmediate(resolve));

describe('GroupCommitQueue', () => {
  for (const timing of ['microtask', 'immediate'] as const) {
    it(`${timing}: commits everything queued in one synchronous run as one batch, in order`, async () => {
      const { queue, batches } = recorder(timing);
      for (let i = 0; i < 100; i++) queue.enqueue(i);
      expect(batches).toEqual([]);
      await nextTurn();
      await nextTurn();
      expect(batches).toEqual([Array.from({ length: 100 }, (_, i) => i)]);
      expect(queue.size).toBe(0);
    });
  }

  it('immediate: also gathers entries queued from later promise continuations of the same turn', async () => {
    const { queue, batches } = recorder('immediate');
    queue.enqueue(0);
    await Promise.resolve();
    queue.enqueue(1);
    await Promise.resolve().then(() => Promise.resolve());
    queue.enqueue(2);
    await nextTurn();
    expect(batches).toEqual([[0, 1, 2]]);
  });

  it('splits at maxBatchSize, keeps order, and lets the event loop turn between batches', async () => {
    const { queue, batches } = recorder('immediate', 3);
    for (let i = 0; i < 8; i++) queue.enqueue(i);
    await nextTurn();
    expect(batches).toEqual([[0, 1, 2]]);
    for (let turn = 0; turn < 3; turn++) await nextTurn();
    expect(batches).toEqual([
      [0, 1, 2],
      [3, 4, 5],
      [6, 7],
    ]);
  });

  it('a batch handed back (commit returned false) waits at the head for resume(), or a flush', async () => {
    const committed: { batch: number[]; urgent: boolean }[] = [];
    let handBack = true;
    const queue = new GroupCommitQueue<number>({
      maxBatchSize: 2,
      timing: 'immediate',
      commit: (batch, urgent) => {
        if (handBack && !urgent) {
          handBack = false;
          return false;
        }
        committed.push({ batch: [...batch], urgent });
        return true;
      },
    });
    queue.enqueue(0);
    queue.enqueue(1);
    await nextTurn();
    queue.enqueue(2);
    for (let turn = 0; turn < 3; turn++) await nextTurn();
    expect(committed, 'nothing committed before resume()').toEqual([]);
    queue.resume();
    for (let turn = 0; turn < 3; turn++) await nextTurn();
    expect(committed).toEqual([
      { batch: [0, 1], urgent: false },
      { batch: [2], urgent: false },
    ]);

    handBack = true;
    queue.enqueue(3);
    await nextTurn();
    queue.enqueue(4);
    queue.flush();
    expect(committed.slice(2)).toEqual([{ batch: [3, 4], urgent: true }]);
  });

  it('flush() commits what is queued synchronously, and the scheduled commit then finds nothing', async () => {
    const { queue, batches } = recorder('immediate', 2);
    for (let i = 0; i < 5; i++) queue.enqueue(i);
    queue.flush();
    expect(batches).toEqual([[0, 1], [2, 3], [4]]);
    await nextTurn();
    expect(batches).toHaveLength(3);
  });

  it('an entry queued by the commit itself goes to a later batch, never lost, never re-entrant', async () => {
    const batches: number[][] = [];
    let depth = 0;
    const queue: GroupCommitQueue<number> = new GroupCommitQueue<number>({
      maxBatchSize: 10,
      timing: 'microtask',
      commit: (batch) => {
        depth++;
        expect(depth).toBe(1);
        batches.push([...batch]);
        if (batch.includes(1)) {
          queue.enqueue(99);
          queue.flush(); // a read issued from a listener: must not commit inside this commit
        }
        depth--;
        return true;
      },
    });
    queue.enqueue(1);
    await nextTurn();
    await nextTurn();
    expect(batches).toEqual([[1], [99]]);
  });

  it('cancel() drops the scheduled commit but keeps the entries for an explicit flush', async () => {
    const { queue, batches } = recorder('immediate');
    queue.enqueue(7);
    queue.cancel();
    await nextTurn();
    expect(batches).toEqual([]);
    queue.flush();
    expect(batches).toEqual([[7]]);
  });

  it('clear() hands back what is still queued, and nothing of it is committed afterwards', async () => {
    const { queue, batches } = recorder('immediate');
    queue.enqueue(1);
    queue.enqueue(2);
    expect(queue.clear()).toEqual([1, 2]);
    expect(queue.size).toBe(0);
    queue.flush();
    await nextTurn();
    expect(batches).toEqual([]);
  });

  it('whatever the interleaving of enqueues, flushes and turns, every entry is committed once, in order', async () => {
    type Step = { kind: 'enqueue'; count: number } | { kind: 'flush' } | { kind: 'turn' };
    const step = fc.oneof(
      fc.record({ kind: fc.constant('enqueue' as const), count: fc.integer({ min: 1, max: 20 }) }),
      fc.record({ kind: fc.constant('flush' as const) }),
      fc.record({ kind: fc.constant('turn' as const) }),
    );
    await fc.assert(
      fc.asyncProperty(
        fc.array(step, { maxLength: 30, size: 'max' }),
        fc.integer({ min: 1, max: 8 }),
        fc.constantFrom<FlushTiming>('microtask', 'immediate'),
        async (steps: Step[], maxBatchSize, timing) => {
          const { queue, batches } = recorder(timing, maxBatchSize);
          let next = 0;
          for (const current of steps) {
            if (current.kind === 'enqueue') for (let i = 0; i < current.count; i++) queue.enqueue(next++);
            else if (current.kind === 'flush') queue.flush();
            else await nextTurn();
          }
          queue.flush();
          expect(batches.flat()).toEqual(Array.from({ length: next }, (_, i) => i));
          expect(batches.every((batch) => batch.length >= 1 && batch.length <= maxBatchSize)).toBe(true);
        },
      ),
      propertyParams(100),
    );
  });
});
