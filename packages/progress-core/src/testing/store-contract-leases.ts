import { describe, expect, it } from 'vitest';
import { ErrorCode } from '../codes.js';
import type { Task } from '../model.js';
import { isTerminalEvent } from '../model.js';
import type { AppendResult } from '../store/task-transitions.js';
import { leaseExpiredReason, planAppend, planLease } from '../store/task-transitions.js';
import type { ContractContext } from './store-contract-support.js';
import { bad, expectRejection, mustGet, seqsOf, show, taskInput } from './store-contract-support.js';

/**
 * Store contract: leases, reaping of expired leases, and retention.
 *
 * @module
 */

const TTL = 1000;
const DAY_MS = 86_400_000;

/** Leases, reaping of expired leases, and retention. */
export function describeLeaseContract(ctx: ContractContext): void {
  async function leased(id: string, owner = 'worker-1', ttlMs = TTL): Promise<Task> {
    return ctx.store.createTask(taskInput({ id, lease: { owner, ttlMs } }));
  }

  describe('leases', () => {
    it('renewLease takes the lease of a task that has none, as planLease plans', async () => {
      const created = await ctx.store.createTask(taskInput({ id: 'task-1' }));
      ctx.clock.advance(50);
      const now = ctx.clock.now();
      const task = await ctx.store.renewLease('task-1', 'worker-1', TTL);
      expect(task, 'renewLease result').toEqual(planLease(created, 'worker-1', TTL, now));
      expect(await ctx.store.getTask('task-1'), 'getTask after renewLease').toEqual(task);
    });

    it('the holder renews its lease from now', async () => {
      await leased('task-1');
      ctx.clock.advance(TTL - 1);
      const renewed = await ctx.store.renewLease('task-1', 'worker-1', TTL);
      expect([renewed.leaseOwner, renewed.leaseExpiresAt], 'lease after renewal').toEqual([
        'worker-1',
        ctx.clock.now() + TTL,
      ]);
      ctx.clock.advance(TTL - 1);
      expect(await ctx.store.reapExpiredLeases(), 'reaping a renewed lease before its new expiry').toEqual(
        [],
      );
    });

    it('another owner gets lease_held until the lease expires', async () => {
      const created = await leased('task-1');
      ctx.clock.advance(TTL - 1);
      await expectRejection('renewLease by worker-2 before expiry', ErrorCode.LeaseHeld, () =>
        ctx.store.renewLease('task-1', 'worker-2', TTL),
      );
      const task = await mustGet(ctx.store, 'task-1');
      expect([task.leaseOwner, task.leaseExpiresAt], 'lease after the refused takeover').toEqual([
        'worker-1',
        created.leaseExpiresAt,
      ]);
    });

    it('another owner takes over a lease from the moment it expires', async () => {
      await leased('task-1');
      ctx.clock.advance(TTL);
      const task = await ctx.store.renewLease('task-1', 'worker-2', TTL * 2);
      expect([task.leaseOwner, task.leaseExpiresAt], 'lease after takeover').toEqual([
        'worker-2',
        ctx.clock.now() + TTL * 2,
      ]);
      await expectRejection('renewLease by the former holder', ErrorCode.LeaseHeld, () =>
        ctx.store.renewLease('task-1', 'worker-1', TTL),
      );
    });

    it('an append fenced to its lease owner is refused lease_held once another owner took the lease over', async () => {
      const created = await leased('task-1');
      const own = { run: created.createdAt, owner: 'worker-1' };
      await ctx.store.append('task-1', { type: 'item', key: 'node-1', ok: true }, own);
      ctx.clock.advance(TTL);
      // Expired, not taken over: still the holder's to write (a reaper would end it).
      await ctx.store.append('task-1', { type: 'progress', message: 'late but alone' }, own);
      await ctx.store.renewLease('task-1', 'worker-2', TTL);
      const taken = await mustGet(ctx.store, 'task-1');
      await expectRejection('item fenced to the former holder', ErrorCode.LeaseHeld, () =>
        ctx.store.append('task-1', { type: 'item', key: 'node-2', ok: true }, own),
      );
      await expectRejection('terminal fenced to the former holder', ErrorCode.LeaseHeld, () =>
        ctx.store.append('task-1', { type: 'completed' }, own),
      );
      expect(await ctx.store.getTask('task-1'), 'task after the refused appends').toEqual(taken);
      expect(seqsOf(await ctx.store.readEvents('task-1', 0)), 'log after the refused appends').toEqual([
        1, 2,
      ]);
      // The new holder writes, and so does an append without an owner (a cancel from elsewhere).
      await ctx.store.append('task-1', { type: 'item', key: 'node-2', ok: true }, { owner: 'worker-2' });
      await ctx.store.append('task-1', { type: 'progress', message: 'anyone' });
      // A lease nobody holds (released) refuses no one.
      await ctx.store.releaseLease('task-1', 'worker-2');
      await ctx.store.append('task-1', { type: 'completed' }, own);
      // Ended: task_finished, whoever asks.
      await expectRejection('append fenced to the new holder after the end', ErrorCode.TaskFinished, () =>
        ctx.store.append('task-1', { type: 'progress' }, { owner: 'worker-2' }),
      );
      expect(seqsOf(await ctx.store.readEvents('task-1', 0)), 'final log').toEqual([1, 2, 3, 4, 5]);
    });

    it('rejects a bad fence owner with invalid_input', async () => {
      await leased('task-1');
      for (const owner of ['', 'has space', 'x'.repeat(129), 42, null]) {
        await expectRejection(`append fence owner ${show(owner)}`, ErrorCode.InvalidInput, () =>
          ctx.store.append('task-1', { type: 'progress' }, { owner: bad(owner) }),
        );
      }
      expect((await mustGet(ctx.store, 'task-1')).seq, 'seq after rejected appends').toBe(0);
    });

    it('releaseLease by the holder drops the lease; by another owner it does nothing', async () => {
      const created = await leased('task-1');
      await ctx.store.releaseLease('task-1', 'worker-2');
      expect(await ctx.store.getTask('task-1'), 'task after a release by another owner').toEqual(created);
      await ctx.store.releaseLease('task-1', 'worker-1');
      const released = await mustGet(ctx.store, 'task-1');
      expect([released.leaseOwner, released.leaseExpiresAt], 'lease after release').toEqual([null, null]);
      expect(released.status, 'status after release').toBe('running');
      await ctx.store.releaseLease('task-1', 'worker-1');
      const taken = await ctx.store.renewLease('task-1', 'worker-2', TTL);
      expect(taken.leaseOwner, 'anyone may take a released lease').toBe('worker-2');
    });

    it('releaseLease on an ended task resolves and changes nothing', async () => {
      await leased('task-1');
      await ctx.store.append('task-1', { type: 'completed' });
      const ended = await mustGet(ctx.store, 'task-1');
      await ctx.store.releaseLease('task-1', 'worker-1');
      expect(await ctx.store.getTask('task-1'), 'ended task after releaseLease').toEqual(ended);
    });

    it('a terminal event clears the lease', async () => {
      await leased('task-1');
      const { task } = await ctx.store.append('task-1', {
        type: 'failed',
        error: { code: 'E', message: 'no' },
      });
      expect([task.leaseOwner, task.leaseExpiresAt], 'lease in the append result').toEqual([null, null]);
      const stored = await mustGet(ctx.store, 'task-1');
      expect([stored.leaseOwner, stored.leaseExpiresAt], 'lease in getTask').toEqual([null, null]);
    });

    it('rejects bad owners and ttls with invalid_input', async () => {
      await ctx.store.createTask(taskInput({ id: 'task-1' }));
      for (const owner of ['', 'has space', 'x'.repeat(129), 42, null]) {
        await expectRejection(`renewLease owner ${show(owner)}`, ErrorCode.InvalidInput, () =>
          ctx.store.renewLease('task-1', bad(owner), TTL),
        );
        await expectRejection(`releaseLease owner ${show(owner)}`, ErrorCode.InvalidInput, () =>
          ctx.store.releaseLease('task-1', bad(owner)),
        );
      }
      for (const ttl of [0, -1, 1.5, Number.NaN, DAY_MS + 1, '1000']) {
        await expectRejection(`renewLease ttl ${show(ttl)}`, ErrorCode.InvalidInput, () =>
          ctx.store.renewLease('task-1', 'worker-1', bad(ttl)),
        );
      }
      expect((await mustGet(ctx.store, 'task-1')).leaseOwner, 'lease after rejected calls').toBeNull();
    });
  });

  describe('reapExpiredLeases', () => {
    it('turns an expired lease into exactly one interrupted event with the lease-expired reason', async () => {
      await leased('task-1');
      await ctx.store.append('task-1', { type: 'item', key: 'node-1', ok: true, current: 'node-2' });
      ctx.clock.advance(TTL);
      const before = await mustGet(ctx.store, 'task-1');
      const reason = leaseExpiredReason(before);
      const reaped = await ctx.store.reapExpiredLeases();
      expect(reaped, 'reap result').toEqual([
        planAppend(before, { type: 'interrupted', reason }, ctx.clock.now()),
      ]);
      expect(await ctx.store.getTask('task-1'), 'task after reaping').toEqual(reaped[0]?.task);
      const log = await ctx.store.readEvents('task-1', 0);
      expect(
        log.map((event) => event.type),
        'log after reaping',
      ).toEqual(['item', 'interrupted']);
      ctx.clock.advance(TTL);
      expect(await ctx.store.reapExpiredLeases(), 'a second reap').toEqual([]);
      expect(seqsOf(await ctx.store.readEvents('task-1', 0)), 'log after a second reap').toEqual([1, 2]);
    });

    it('leaves an unexpired lease alone', async () => {
      const created = await leased('task-1');
      ctx.clock.advance(TTL - 1);
      expect(await ctx.store.reapExpiredLeases(), 'reap one millisecond before expiry').toEqual([]);
      expect(await ctx.store.getTask('task-1'), 'task').toEqual(created);
    });

    it('never reaps running tasks without a lease, however old', async () => {
      const created = await ctx.store.createTask(taskInput({ id: 'task-1' }));
      ctx.clock.advance(365 * DAY_MS);
      expect(await ctx.store.reapExpiredLeases(), 'reap').toEqual([]);
      expect(await ctx.store.getTask('task-1'), 'task').toEqual(created);
    });

    it('never reaps ended tasks', async () => {
      await leased('task-1');
      await ctx.store.append('task-1', { type: 'completed' });
      ctx.clock.advance(TTL * 10);
      expect(await ctx.store.reapExpiredLeases(), 'reap').toEqual([]);
      expect((await mustGet(ctx.store, 'task-1')).status, 'status').toBe('completed');
    });

    it('two concurrent reapers interrupt each expired task exactly once', async () => {
      const ids = ['task-1', 'task-2', 'task-3', 'task-4', 'task-5'];
      for (const id of ids) await leased(id);
      ctx.clock.advance(TTL);
      const [first, second] = await Promise.all([
        ctx.store.reapExpiredLeases(),
        ctx.store.reapExpiredLeases(),
      ]);
      const reapedIds = [...first, ...second].map((result) => result.event.taskId).sort();
      expect(reapedIds, 'tasks reaped by both reapers together').toEqual(ids);
      for (const id of ids) {
        const log = await ctx.store.readEvents(id, 0);
        expect(
          log.map((event) => event.type),
          `log of ${id}`,
        ).toEqual(['interrupted']);
      }
    });

    it('reaps at most limit tasks per call, oldest expiry first', async () => {
      await leased('task-late', 'worker-1', TTL * 3);
      await leased('task-early', 'worker-2', TTL);
      await leased('task-middle', 'worker-3', TTL * 2);
      ctx.clock.advance(TTL * 3);
      const expiries = (results: AppendResult[]) => results.map((result) => result.event.taskId);
      expect(expiries(await ctx.store.reapExpiredLeases({ limit: 2 })), 'first reap with limit 2').toEqual([
        'task-early',
        'task-middle',
      ]);
      expect(expiries(await ctx.store.reapExpiredLeases({ limit: 2 })), 'second reap with limit 2').toEqual([
        'task-late',
      ]);
      expect(await ctx.store.reapExpiredLeases({ limit: 2 }), 'third reap').toEqual([]);
    });

    it('a reaped task rejects the returning worker with task_finished', async () => {
      await leased('task-1');
      ctx.clock.advance(TTL);
      await ctx.store.reapExpiredLeases();
      await expectRejection('append by the worker after reaping', ErrorCode.TaskFinished, () =>
        ctx.store.append('task-1', { type: 'item', key: 'node-1', ok: true }),
      );
      await expectRejection('renewLease by the worker after reaping', ErrorCode.TaskFinished, () =>
        ctx.store.renewLease('task-1', 'worker-1', TTL),
      );
      await expectRejection('completing after reaping', ErrorCode.TaskFinished, () =>
        ctx.store.append('task-1', { type: 'completed' }),
      );
    });

    it('rejects bad options with invalid_input', async () => {
      for (const options of [
        { limit: 0 },
        { limit: -1 },
        { limit: 1.5 },
        { limit: '5' },
        { colour: 'red' },
        42,
      ]) {
        await expectRejection(`reapExpiredLeases(${show(options)})`, ErrorCode.InvalidInput, () =>
          ctx.store.reapExpiredLeases(bad(options)),
        );
      }
    });
  });

  describe('purgeFinished', () => {
    async function finished(id: string): Promise<Task> {
      await ctx.store.createTask(taskInput({ id }));
      await ctx.store.append(id, { type: 'progress', done: 1 });
      return (await ctx.store.append(id, { type: 'completed' })).task;
    }

    it('deletes only terminal tasks that finished at least olderThanMs ago', async () => {
      await finished('task-old');
      await ctx.store.createTask(taskInput({ id: 'task-running' }));
      await leased('task-leased');
      ctx.clock.advance(1);
      await finished('task-recent');
      ctx.clock.advance(999);
      // task-old finished exactly 1000 ms ago (the boundary), task-recent 999 ms ago.
      expect(await ctx.store.purgeFinished({ olderThanMs: 1000 }), 'tasks purged').toBe(1);
      expect(await ctx.store.getTask('task-old'), 'task-old').toBeUndefined();
      for (const id of ['task-running', 'task-leased', 'task-recent']) {
        expect(await ctx.store.getTask(id), `${id} after purge`).toBeDefined();
      }
    });

    it('removes a purged task with its events, and its id can be used again', async () => {
      await finished('task-1');
      ctx.clock.advance(10);
      expect(await ctx.store.purgeFinished({ olderThanMs: 0 }), 'tasks purged').toBe(1);
      expect(await ctx.store.getTask('task-1'), 'getTask').toBeUndefined();
      await expectRejection('readEvents of a purged task', ErrorCode.TaskNotFound, () =>
        ctx.store.readEvents('task-1', 0),
      );
      await expectRejection('append to a purged task', ErrorCode.TaskNotFound, () =>
        ctx.store.append('task-1', { type: 'progress' }),
      );
      expect((await ctx.store.latestSeqs(['task-1'])).size, 'latestSeqs of a purged task').toBe(0);
      expect(await ctx.store.listTasks({ owner: taskInput().owner }), 'listTasks').toEqual([]);
      await ctx.store.createTask(taskInput({ id: 'task-1' }));
      expect(await ctx.store.readEvents('task-1', 0), 'events of a new task with a purged id').toEqual([]);
      const { event } = await ctx.store.append('task-1', { type: 'progress' });
      expect(event.seq, 'first seq of a new task with a purged id').toBe(1);
    });

    it('works in batches of limit, oldest first', async () => {
      const ids = ['task-e', 'task-d', 'task-c', 'task-b', 'task-a'];
      for (const id of ids) {
        await finished(id);
        ctx.clock.advance(1);
      }
      const remaining = async () =>
        (await ctx.store.listTasks({ owner: taskInput().owner })).map((t) => t.id).sort();
      expect(await ctx.store.purgeFinished({ olderThanMs: 0, limit: 2 }), 'first batch').toBe(2);
      expect(await remaining(), 'after the first batch').toEqual(['task-a', 'task-b', 'task-c']);
      expect(await ctx.store.purgeFinished({ olderThanMs: 0, limit: 2 }), 'second batch').toBe(2);
      expect(await remaining(), 'after the second batch').toEqual(['task-a']);
      expect(await ctx.store.purgeFinished({ olderThanMs: 0, limit: 2 }), 'third batch').toBe(1);
      expect(await ctx.store.purgeFinished({ olderThanMs: 0, limit: 2 }), 'fourth batch').toBe(0);
    });

    it('never deletes running tasks, however old', async () => {
      const plain = await ctx.store.createTask(taskInput({ id: 'task-1' }));
      await leased('task-2');
      ctx.clock.advance(3650 * DAY_MS);
      expect(await ctx.store.purgeFinished({ olderThanMs: 0 }), 'tasks purged').toBe(0);
      expect(await ctx.store.getTask('task-1'), 'running task').toEqual(plain);
      expect(await ctx.store.getTask('task-2'), 'running leased task').toBeDefined();
    });

    it('rejects bad options with invalid_input', async () => {
      const cases: unknown[] = [
        undefined,
        {},
        { olderThanMs: -1 },
        { olderThanMs: 1.5 },
        { olderThanMs: '0' },
        { olderThanMs: 0, limit: 0 },
        { olderThanMs: 0, limit: -2 },
        { olderThanMs: 0, colour: 'red' },
      ];
      for (const options of cases) {
        await expectRejection(`purgeFinished(${show(options)})`, ErrorCode.InvalidInput, () =>
          ctx.store.purgeFinished(bad(options)),
        );
      }
    });
  });

  describe('interrupted events from reaping', () => {
    it('are terminal and counted like any other terminal event', async () => {
      await leased('task-1');
      ctx.clock.advance(TTL);
      const [result] = await ctx.store.reapExpiredLeases();
      expect(result !== undefined && isTerminalEvent(result.event), 'reaped event is terminal').toBe(true);
      expect(result?.task.finishedAt, 'finishedAt of the reaped task').toBe(ctx.clock.now());
      ctx.clock.advance(5);
      expect(await ctx.store.purgeFinished({ olderThanMs: 5 }), 'the reaped task is purgeable').toBe(1);
    });
  });
}
