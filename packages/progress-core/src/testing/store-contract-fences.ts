import { describe, expect, it } from 'vitest';
import { ErrorCode } from '../codes.js';
import type { Task } from '../model.js';
import type { ContractContext } from './store-contract-support.js';
import {
  bad,
  expectRejected,
  expectRejection,
  mustGet,
  seqsOf,
  show,
  taskInput,
} from './store-contract-support.js';

/**
 * Store contract: writes fenced to a run (`RunFence`). A task id purged and created again is another run;
 * a writer of the old run (a worker frozen past its lease, a job that outlived it) must not write into it.
 *
 * @module
 */

const TTL = 1000;
const OWNER = 'worker-1';

/** Fenced appends, acks, renewals and releases. */
export function describeFenceContract(ctx: ContractContext): void {
  /**
   * Run 1 of `task-1` leased by `worker-1`, reaped, purged, and run 2 created under the same id and lease
   * owner (one process's owner id is the same for every run), with one item appended: both runs' rows.
   */
  async function recreated(): Promise<{ old: Task; current: Task }> {
    const old = await ctx.store.createTask(taskInput({ id: 'task-1', lease: { owner: OWNER, ttlMs: TTL } }));
    await ctx.store.append('task-1', { type: 'item', key: 'old-1', ok: true }, { run: old.createdAt });
    ctx.clock.advance(TTL);
    expect((await ctx.store.reapExpiredLeases()).length, 'run 1 reaped').toBe(1);
    ctx.clock.advance(1);
    expect(await ctx.store.purgeFinished({ olderThanMs: 0 }), 'run 1 purged').toBe(1);
    ctx.clock.advance(1);
    const created = await ctx.store.createTask(
      taskInput({ id: 'task-1', lease: { owner: OWNER, ttlMs: TTL } }),
    );
    expect(created.createdAt, 'run 2 created after run 1').toBeGreaterThan(old.createdAt);
    await ctx.store.append('task-1', { type: 'item', key: 'new-1', ok: true }, { run: created.createdAt });
    return { old, current: await mustGet(ctx.store, 'task-1') };
  }

  /** Run 2 exactly as `current` left it: row (seq, snapshot, lease) and log. */
  async function expectUntouched(current: Task): Promise<void> {
    expect(await ctx.store.getTask('task-1'), 'run 2 row after the old run wrote').toEqual(current);
    const events = await ctx.store.readEvents('task-1', 0);
    expect(seqsOf(events), 'run 2 log').toEqual([1]);
    expect(events[0]?.type === 'item' && events[0].item.key, 'run 2 event').toBe('new-1');
  }

  describe('run fences', () => {
    it('an append fenced to a purged run of the id rejects with task_not_found; the new run is untouched', async () => {
      const { old, current } = await recreated();
      await expectRejection('item fenced to run 1', ErrorCode.TaskNotFound, () =>
        ctx.store.append('task-1', { type: 'item', key: 'old-2', ok: true }, { run: old.createdAt }),
      );
      await expectRejection('completed fenced to run 1', ErrorCode.TaskNotFound, () =>
        ctx.store.append('task-1', { type: 'completed' }, { run: old.createdAt }),
      );
      await expectUntouched(current);
    });

    it('in one batch, appends fenced to the purged run are refused and the new run keeps a gap-free log', async () => {
      const { old, current } = await recreated();
      const results = await Promise.allSettled([
        ctx.store.append('task-1', { type: 'item', key: 'old-2', ok: true }, { run: old.createdAt }),
        ctx.store.append('task-1', { type: 'item', key: 'new-2', ok: true }, { run: current.createdAt }),
        ctx.store.append('task-1', { type: 'completed' }, { run: old.createdAt }),
        ctx.store.append('task-1', { type: 'item', key: 'new-3', ok: false }, { run: current.createdAt }),
      ]);
      expectRejected('item fenced to run 1', ErrorCode.TaskNotFound, results[0]!);
      expectRejected('completed fenced to run 1', ErrorCode.TaskNotFound, results[2]!);
      const events = await ctx.store.readEvents('task-1', 0);
      expect(
        events.map((event) => (event.type === 'item' ? event.item.key : event.type)),
        'run 2 log',
      ).toEqual(['new-1', 'new-2', 'new-3']);
      expect(seqsOf(events), 'run 2 seqs').toEqual([1, 2, 3]);
      const task = await mustGet(ctx.store, 'task-1');
      expect([task.status, task.done, task.seq], 'run 2 status, done, seq').toEqual(['running', 3, 3]);
    });

    it('a renewal fenced to a purged run rejects with task_not_found, even by the same owner, and moves no lease', async () => {
      const { old, current } = await recreated();
      ctx.clock.advance(TTL - 1);
      await expectRejection('renewLease by the same owner fenced to run 1', ErrorCode.TaskNotFound, () =>
        ctx.store.renewLease('task-1', OWNER, TTL, { run: old.createdAt }),
      );
      ctx.clock.advance(1);
      // Run 2's lease expired: a takeover would be allowed, but not for run 1.
      await expectRejection('renewLease by another owner fenced to run 1', ErrorCode.TaskNotFound, () =>
        ctx.store.renewLease('task-1', 'worker-2', TTL, { run: old.createdAt }),
      );
      await expectUntouched(current);
      const renewed = await ctx.store.renewLease('task-1', OWNER, TTL, { run: current.createdAt });
      expect(renewed.leaseExpiresAt, 'run 2 renewed by its own fence').toBe(ctx.clock.now() + TTL);
    });

    it('a release fenced to a purged run rejects with task_not_found and keeps the new run leased', async () => {
      const { old, current } = await recreated();
      await expectRejection('releaseLease by the same owner fenced to run 1', ErrorCode.TaskNotFound, () =>
        ctx.store.releaseLease('task-1', OWNER, { run: old.createdAt }),
      );
      await expectUntouched(current);
      await ctx.store.releaseLease('task-1', OWNER, { run: current.createdAt });
      expect((await mustGet(ctx.store, 'task-1')).leaseOwner, 'released by its own fence').toBeNull();
    });

    it('an ack fenced to a purged run rejects with task_not_found and leaves the new run unacknowledged', async () => {
      const { old, current } = await recreated();
      // Run 2's event 1 was processed by none of its watchers: an ack of run 1's seq 1 must not say so.
      await expectRejection('ack of seq 1 fenced to run 1', ErrorCode.TaskNotFound, () =>
        ctx.store.ack('task-1', 1, { run: old.createdAt }),
      );
      // Refused as another run's before any seq check: run 1 may have been further along than run 2.
      await expectRejection('ack of seq 5 fenced to run 1', ErrorCode.TaskNotFound, () =>
        ctx.store.ack('task-1', 5, { run: old.createdAt }),
      );
      await expectUntouched(current);
      expect(await ctx.store.ack('task-1', 1, { run: current.createdAt }), 'ack fenced to run 2').toBe(1);
      expect((await mustGet(ctx.store, 'task-1')).ackedSeq, 'run 2 acked by its own fence').toBe(1);
    });

    it('in one batch, acks fenced to the purged run are refused and the new run keeps its own', async () => {
      const { old, current } = await recreated();
      await ctx.store.append('task-1', { type: 'item', key: 'new-2', ok: true }, { run: current.createdAt });
      const results = await Promise.allSettled([
        ctx.store.ack('task-1', 2, { run: old.createdAt }),
        ctx.store.ack('task-1', 1, { run: current.createdAt }),
        ctx.store.ack('task-1', 1, { run: old.createdAt }),
        ctx.store.ack('task-1', 2, { run: old.createdAt + 1 }),
      ]);
      expectRejected('ack of seq 2 fenced to run 1', ErrorCode.TaskNotFound, results[0]!);
      expectRejected('ack of seq 1 fenced to run 1', ErrorCode.TaskNotFound, results[2]!);
      expectRejected('ack fenced to no run of the id', ErrorCode.TaskNotFound, results[3]!);
      expect(results[1], 'ack fenced to run 2').toEqual({ status: 'fulfilled', value: 1 });
      expect((await mustGet(ctx.store, 'task-1')).ackedSeq, 'run 2 ackedSeq').toBe(1);
    });

    it('a task is not purged in the millisecond it was created, so its id taken again is a later run', async () => {
      // Run 1 created and cancelled by someone else while its writer still holds its fence; a purge with
      // `olderThanMs: 0` and a create of the id in that millisecond made run 2 with run 1's `createdAt`,
      // and the writer's fenced appends went into run 2.
      const old = await ctx.store.createTask(taskInput({ id: 'task-1' }));
      await ctx.store.append('task-1', { type: 'cancelled' });
      expect(await ctx.store.purgeFinished({ olderThanMs: 0 }), 'purged in its millisecond').toBe(0);
      await expectRejection('created again before the purge', ErrorCode.InvalidInput, () =>
        ctx.store.createTask(taskInput({ id: 'task-1' })),
      );
      expect((await mustGet(ctx.store, 'task-1')).status, 'run 1 kept').toBe('cancelled');
      ctx.clock.advance(1);
      expect(await ctx.store.purgeFinished({ olderThanMs: 0 }), 'purged a millisecond later').toBe(1);
      const created = await ctx.store.createTask(taskInput({ id: 'task-1' }));
      expect(created.createdAt, 'run 2 after run 1').toBeGreaterThan(old.createdAt);
      await expectRejection('item fenced to run 1', ErrorCode.TaskNotFound, () =>
        ctx.store.append('task-1', { type: 'item', key: 'old-1', ok: true }, { run: old.createdAt }),
      );
      expect(await ctx.store.readEvents('task-1', 0), 'run 2 log').toEqual([]);
    });

    it('a fence of the task it names changes nothing: ended rejects task_finished, unknown task_not_found', async () => {
      const task = await ctx.store.createTask(taskInput({ id: 'task-1' }));
      const fence = { run: task.createdAt };
      await ctx.store.append('task-1', { type: 'completed' }, fence);
      await expectRejection('append after the terminal, fenced', ErrorCode.TaskFinished, () =>
        ctx.store.append('task-1', { type: 'item', key: 'late', ok: true }, fence),
      );
      await expectRejection('renewLease of the ended task, fenced', ErrorCode.TaskFinished, () =>
        ctx.store.renewLease('task-1', OWNER, TTL, fence),
      );
      await ctx.store.releaseLease('task-1', OWNER, fence);
      expect(await ctx.store.ack('task-1', 1, fence), 'ack of the ended task, fenced').toBe(1);
      await expectRejection('ack beyond the seq, fenced', ErrorCode.InvalidInput, () =>
        ctx.store.ack('task-1', 2, fence),
      );
      await expectRejection('ack of an unknown id, fenced', ErrorCode.TaskNotFound, () =>
        ctx.store.ack('task-2', 0, fence),
      );
      await expectRejection('append to an unknown id, fenced', ErrorCode.TaskNotFound, () =>
        ctx.store.append('task-2', { type: 'completed' }, fence),
      );
      await expectRejection('renewLease of an unknown id, fenced', ErrorCode.TaskNotFound, () =>
        ctx.store.renewLease('task-2', OWNER, TTL, fence),
      );
      await expectRejection('releaseLease of an unknown id, fenced', ErrorCode.TaskNotFound, () =>
        ctx.store.releaseLease('task-2', OWNER, fence),
      );
    });

    it('rejects a bad fence with invalid_input and writes nothing', async () => {
      const task = await ctx.store.createTask(taskInput({ id: 'task-1' }));
      const cases: unknown[] = [null, 'run', { run: -1 }, { run: 1.5 }, { run: '1' }, { run: null }];
      for (const options of cases) {
        await expectRejection(`append(…, ${show(options)})`, ErrorCode.InvalidInput, () =>
          ctx.store.append('task-1', { type: 'completed' }, bad(options)),
        );
        await expectRejection(`renewLease(…, ${show(options)})`, ErrorCode.InvalidInput, () =>
          ctx.store.renewLease('task-1', OWNER, TTL, bad(options)),
        );
        await expectRejection(`releaseLease(…, ${show(options)})`, ErrorCode.InvalidInput, () =>
          ctx.store.releaseLease('task-1', OWNER, bad(options)),
        );
        await expectRejection(`ack(…, ${show(options)})`, ErrorCode.InvalidInput, () =>
          ctx.store.ack('task-1', 0, bad(options)),
        );
      }
      expect(await ctx.store.getTask('task-1'), 'task after the refused writes').toEqual(task);
    });

    it('rejects an argument whose reading throws (a getter, a Proxy) with invalid_input and writes nothing', async () => {
      // Until 7 December 2026 the memory and Postgres stores rejected with the bare error (no code) and the
      // SQLite store with `internal`: a caller's bad object is bad input, not a store failure.
      const task = await ctx.store.createTask(taskInput({ id: 'task-1' }));
      const fail = () => {
        throw new Error('reading failed');
      };
      const fence = Object.defineProperty({}, 'run', { get: fail, enumerable: true });
      const trapped = new Proxy({}, { get: fail, has: fail, ownKeys: fail, getOwnPropertyDescriptor: fail });
      const calls: Array<[string, () => Promise<unknown>]> = [
        ['append fence', () => ctx.store.append('task-1', { type: 'completed' }, bad(fence))],
        ['append fence (Proxy)', () => ctx.store.append('task-1', { type: 'completed' }, bad(trapped))],
        ['renewLease fence', () => ctx.store.renewLease('task-1', OWNER, TTL, bad(fence))],
        ['releaseLease fence', () => ctx.store.releaseLease('task-1', OWNER, bad(fence))],
        ['ack fence', () => ctx.store.ack('task-1', 0, bad(fence))],
        ['createTask', () => ctx.store.createTask(bad(trapped))],
        ['listTasks', () => ctx.store.listTasks(bad(trapped))],
        ['latestSeqs', () => ctx.store.latestSeqs(bad(new Proxy([], { get: fail })))],
        ['reapExpiredLeases', () => ctx.store.reapExpiredLeases(bad(trapped))],
        ['purgeFinished', () => ctx.store.purgeFinished(bad(trapped))],
      ];
      for (const [what, call] of calls) await expectRejection(what, ErrorCode.InvalidInput, call);
      expect(await ctx.store.getTask('task-1'), 'task after the refused writes').toEqual(task);
    });

    it('without a fence a write addresses whatever task has the id (no fencing)', async () => {
      const { current } = await recreated();
      const { event } = await ctx.store.append('task-1', { type: 'item', key: 'unfenced', ok: true });
      expect([event.seq, (await mustGet(ctx.store, 'task-1')).createdAt], 'unfenced append').toEqual([
        current.seq + 1,
        current.createdAt,
      ]);
      expect(await ctx.store.ack('task-1', event.seq), 'unfenced ack').toBe(event.seq);
    });
  });
}
