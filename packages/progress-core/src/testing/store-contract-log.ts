import { describe, expect, it } from 'vitest';
import { ErrorCode } from '../codes.js';
import type { TaskEvent } from '../model.js';
import { isTerminalEvent } from '../model.js';
import type { AppendInput } from '../store/inputs.js';
import { STORE_DEFAULTS } from '../store/progress-store.js';
import type { ContractContext } from './store-contract-support.js';
import {
  bad,
  expectRejected,
  expectRejection,
  fulfilled,
  mustGet,
  range,
  seqsOf,
  show,
  taskInput,
} from './store-contract-support.js';

/**
 * Store contract: reading the event log, latest seqs, acks and concurrent writers.
 *
 * @module
 */

/** Reading the log, latest seqs, acks and concurrent writers. */
export function describeLogContract(ctx: ContractContext): void {
  describe('readEvents', () => {
    async function taskWithEvents(count: number): Promise<TaskEvent[]> {
      await ctx.store.createTask(taskInput({ id: 'task-1' }));
      const events: TaskEvent[] = [];
      for (let i = 0; i < count; i++) {
        events.push(
          (await ctx.store.append('task-1', { type: 'item', key: `node-${i}`, ok: i % 2 === 0 })).event,
        );
      }
      return events;
    }

    it('returns the events after afterSeq, in seq order', async () => {
      const events = await taskWithEvents(6);
      expect(await ctx.store.readEvents('task-1', 0), 'afterSeq 0').toEqual(events);
      expect(await ctx.store.readEvents('task-1', 2), 'afterSeq 2').toEqual(events.slice(2));
      expect(await ctx.store.readEvents('task-1', 6), 'afterSeq = seq').toEqual([]);
      expect(await ctx.store.readEvents('task-1', 100), 'afterSeq beyond seq').toEqual([]);
    });

    it('returns at most limit events', async () => {
      const events = await taskWithEvents(6);
      expect(await ctx.store.readEvents('task-1', 0, 2), 'afterSeq 0, limit 2').toEqual(events.slice(0, 2));
      expect(await ctx.store.readEvents('task-1', 2, 3), 'afterSeq 2, limit 3').toEqual(events.slice(2, 5));
      expect(await ctx.store.readEvents('task-1', 5, 3), 'afterSeq 5, limit 3').toEqual(events.slice(5));
    });

    it(`clamps a limit above ${STORE_DEFAULTS.maxReadLimit} instead of rejecting it`, async () => {
      const events = await taskWithEvents(3);
      expect(
        await ctx.store.readEvents('task-1', 0, STORE_DEFAULTS.maxReadLimit + 1),
        'readEvents with an over-limit limit',
      ).toEqual(events);
    });

    it('rejects a bad afterSeq or limit with invalid_input', async () => {
      await taskWithEvents(1);
      for (const afterSeq of [-1, 1.5, Number.NaN, '0', null]) {
        await expectRejection(`readEvents afterSeq ${show(afterSeq)}`, ErrorCode.InvalidInput, () =>
          ctx.store.readEvents('task-1', bad(afterSeq)),
        );
      }
      for (const limit of [0, -1, 1.5, Number.NaN, '10', null]) {
        await expectRejection(`readEvents limit ${show(limit)}`, ErrorCode.InvalidInput, () =>
          ctx.store.readEvents('task-1', 0, bad(limit)),
        );
      }
    });

    it('rejects an unknown task with task_not_found', async () => {
      await expectRejection('readEvents of an unknown task', ErrorCode.TaskNotFound, () =>
        ctx.store.readEvents('no-such-task', 0),
      );
    });
  });

  describe('latestSeqs', () => {
    it('maps known ids to their seq in one call and leaves unknown ids out', async () => {
      await ctx.store.createTask(taskInput({ id: 'task-a' }));
      await ctx.store.createTask(taskInput({ id: 'task-b' }));
      await ctx.store.createTask({ id: 'task-c', owner: 'bob', kind: 'other' });
      for (let i = 0; i < 3; i++) await ctx.store.append('task-a', { type: 'progress', done: i });
      await ctx.store.append('task-c', { type: 'progress' });
      await ctx.store.append('task-c', { type: 'completed' });
      const seqs = await ctx.store.latestSeqs(['task-a', 'task-b', 'task-c', 'no-such-task', 'task-a']);
      expect(Object.fromEntries(seqs), 'latestSeqs').toEqual({ 'task-a': 3, 'task-b': 0, 'task-c': 2 });
      expect(seqs.has('no-such-task'), 'unknown id present in the map').toBe(false);
    });

    it('returns an empty map for no ids', async () => {
      expect((await ctx.store.latestSeqs([])).size, 'size for []').toBe(0);
    });

    it(`accepts ${STORE_DEFAULTS.maxLatestSeqsIds} ids and rejects more, or invalid ids, with invalid_input`, async () => {
      await ctx.store.createTask(taskInput({ id: 'task-0' }));
      const ids = range(0, STORE_DEFAULTS.maxLatestSeqsIds - 1).map((i) => `task-${i}`);
      expect(
        Object.fromEntries(await ctx.store.latestSeqs(ids)),
        'latestSeqs of the maximum id count',
      ).toEqual({
        'task-0': 0,
      });
      await expectRejection('latestSeqs with too many ids', ErrorCode.InvalidInput, () =>
        ctx.store.latestSeqs([...ids, 'task-extra']),
      );
      await expectRejection('latestSeqs with an invalid id', ErrorCode.InvalidInput, () =>
        ctx.store.latestSeqs(['task-0', 'has space']),
      );
      await expectRejection('latestSeqs("task-0")', ErrorCode.InvalidInput, () =>
        ctx.store.latestSeqs(bad('task-0')),
      );
    });
  });

  describe('ack', () => {
    async function taskWithSeq(seq: number): Promise<void> {
      await ctx.store.createTask(taskInput({ id: 'task-1' }));
      for (let i = 0; i < seq; i++) await ctx.store.append('task-1', { type: 'progress', done: i });
    }

    it('is cumulative and monotonic: it keeps the highest seq acknowledged', async () => {
      await taskWithSeq(5);
      const steps: [number, number][] = [
        [3, 3],
        [2, 3],
        [0, 3],
        [5, 5],
        [4, 5],
      ];
      for (const [seq, expected] of steps) {
        expect(await ctx.store.ack('task-1', seq), `ack(${seq}) returns`).toBe(expected);
        expect((await mustGet(ctx.store, 'task-1')).ackedSeq, `ackedSeq after ack(${seq})`).toBe(expected);
      }
    });

    it('beyond the task seq rejects with invalid_input and changes nothing', async () => {
      await taskWithSeq(2);
      await ctx.store.ack('task-1', 1);
      await expectRejection('ack(3) of a task at seq 2', ErrorCode.InvalidInput, () =>
        ctx.store.ack('task-1', 3),
      );
      expect((await mustGet(ctx.store, 'task-1')).ackedSeq, 'ackedSeq after the rejected ack').toBe(1);
    });

    it('acknowledges the terminal event of an ended task', async () => {
      await taskWithSeq(1);
      const { event } = await ctx.store.append('task-1', { type: 'completed' });
      expect(await ctx.store.ack('task-1', event.seq), 'ack of the terminal event').toBe(2);
      expect((await mustGet(ctx.store, 'task-1')).ackedSeq, 'ackedSeq').toBe(2);
    });

    it('changes neither the log nor the snapshot otherwise', async () => {
      await taskWithSeq(3);
      const before = await mustGet(ctx.store, 'task-1');
      ctx.clock.advance(100);
      await ctx.store.ack('task-1', 2);
      expect(await ctx.store.getTask('task-1'), 'task after ack').toEqual({ ...before, ackedSeq: 2 });
      expect(seqsOf(await ctx.store.readEvents('task-1', 0)), 'log after ack').toEqual([1, 2, 3]);
    });

    it('rejects a bad seq with invalid_input', async () => {
      await taskWithSeq(1);
      for (const seq of [-1, 0.5, Number.NaN, '1', null]) {
        await expectRejection(`ack(${show(seq)})`, ErrorCode.InvalidInput, () =>
          ctx.store.ack('task-1', bad(seq)),
        );
      }
    });
  });

  describe('concurrency', () => {
    it('concurrent appends to one task get seqs exactly 1..n and the snapshot matches', async () => {
      const n = ctx.options.concurrency;
      await ctx.store.createTask(taskInput({ id: 'task-1', total: n }));
      const results = await Promise.all(
        range(1, n).map((i) =>
          ctx.store.append('task-1', { type: 'item', key: `node-${i}`, ok: i % 3 !== 0 }),
        ),
      );
      expect(
        seqsOf(results.map((result) => result.event)).sort((a, b) => a - b),
        'seqs returned',
      ).toEqual(range(1, n));
      for (const { event, task } of results) {
        expect(task.seq, `snapshot returned with seq ${event.seq}`).toBe(event.seq);
        // Only items were appended, so the k-th committed event must have counted exactly k items.
        expect(event.progress.done, `done carried by event ${event.seq}`).toBe(event.seq);
      }
      const log = await ctx.store.readEvents('task-1', 0, n);
      expect(seqsOf(log), 'seqs in the log').toEqual(range(1, n));
      const okCount = range(1, n).filter((i) => i % 3 !== 0).length;
      const task = await mustGet(ctx.store, 'task-1');
      expect(
        { seq: task.seq, done: task.done, succeeded: task.succeeded, failed: task.failed },
        'snapshot after concurrent appends',
      ).toEqual({ seq: n, done: n, succeeded: okCount, failed: n - okCount });
    });

    it('concurrent appends to several tasks keep each log gap-free', async () => {
      const ids = ['task-a', 'task-b', 'task-c', 'task-d'];
      for (const id of ids) await ctx.store.createTask(taskInput({ id }));
      const perTask = Math.max(2, Math.floor(ctx.options.concurrency / ids.length));
      const calls = range(1, perTask).flatMap((i) =>
        ids.map((id) => ctx.store.append(id, { type: 'progress', message: `step ${i}` })),
      );
      await Promise.all(calls);
      for (const id of ids) {
        expect(seqsOf(await ctx.store.readEvents(id, 0)), `seqs of ${id}`).toEqual(range(1, perTask));
      }
    });

    it('concurrent acks keep the highest seq', async () => {
      await ctx.store.createTask(taskInput({ id: 'task-1' }));
      for (let i = 0; i < 10; i++) await ctx.store.append('task-1', { type: 'progress', done: i });
      const order = [3, 10, 1, 7, 10, 2, 9, 5, 0, 8, 4, 6];
      const results = await Promise.allSettled(order.map((seq) => ctx.store.ack('task-1', seq)));
      results.forEach((result, i) => {
        const returned = fulfilled(`ack(${order[i]})`, result);
        expect(returned, `ack(${order[i]}) returned less than it acknowledged`).toBeGreaterThanOrEqual(
          order[i] ?? 0,
        );
      });
      expect((await mustGet(ctx.store, 'task-1')).ackedSeq, 'ackedSeq after concurrent acks').toBe(10);
    });

    it('a terminal event is the last event even when raced by other appends', async () => {
      await ctx.store.createTask(taskInput({ id: 'task-1' }));
      const inputs: AppendInput[] = range(1, 9).map((i) => ({ type: 'item', key: `node-${i}`, ok: true }));
      inputs.splice(4, 0, { type: 'completed' });
      const results = await Promise.allSettled(inputs.map((input) => ctx.store.append('task-1', input)));
      results.forEach((result, i) => {
        if (result.status === 'rejected') expectRejected(`append #${i}`, ErrorCode.TaskFinished, result);
      });
      const log = await ctx.store.readEvents('task-1', 0);
      expect(seqsOf(log), 'seqs').toEqual(range(1, log.length));
      expect(
        log.map((event) => isTerminalEvent(event)),
        'only the last event is terminal',
      ).toEqual([...log.slice(1).map(() => false), true]);
      const succeeded = results.filter((result) => result.status === 'fulfilled').length;
      expect(log.length, 'events in the log = appends that succeeded').toBe(succeeded);
    });
  });
}
