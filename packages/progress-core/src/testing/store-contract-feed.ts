import { describe, expect, it } from 'vitest';
import { ErrorCode } from '../codes.js';
import type { TaskEvent } from '../model.js';
import type { TaskChange } from '../store/change-feed.js';
import type { ContractContext } from './store-contract-support.js';
import { ChangeRecorder, changeOf, expectRejection, taskInput } from './store-contract-support.js';

/**
 * Store contract: the change feed (order, no loss, no foreign changes).
 *
 * @module
 */

/**
 * The change feed. A store may deliver changes asynchronously (Postgres `NOTIFY`), so every test waits,
 * boundedly, for a sentinel change that must come after the ones it checks: changes of one task arrive in
 * commit order, so once its later seq has arrived, any earlier change (or duplicate) has too.
 */
export function describeFeedContract(ctx: ContractContext): void {
  describe('change feed', () => {
    it('publishes one change per committed event, with its seq and terminal flag, in commit order', async () => {
      const recorder = new ChangeRecorder(ctx.store);
      try {
        await ctx.store.createTask(taskInput({ id: 'task-1' }));
        await ctx.store.createTask(taskInput({ id: 'task-2', lease: { owner: 'worker-1', ttlMs: 1000 } }));
        const events: TaskEvent[] = [];
        events.push((await ctx.store.append('task-1', { type: 'progress', total: 2 })).event);
        events.push((await ctx.store.append('task-1', { type: 'item', key: 'node-1', ok: true })).event);
        events.push((await ctx.store.append('task-1', { type: 'item', key: 'node-2', ok: false })).event);
        events.push((await ctx.store.append('task-1', { type: 'completed' })).event);
        ctx.clock.advance(1000);
        const [reaped] = await ctx.store.reapExpiredLeases();
        if (reaped === undefined) throw new Error('reapExpiredLeases reaped nothing; the lease had expired');
        await recorder.waitFor('task-1', 4);
        await recorder.waitFor('task-2', 1);
        expect(recorder.of('task-1'), 'changes of task-1').toEqual(events.map(changeOf));
        expect(recorder.of('task-2'), 'changes of task-2 (reaped)').toEqual<TaskChange[]>([
          { taskId: 'task-2', seq: 1, terminal: true },
        ]);
      } finally {
        recorder.stop();
      }
    });

    it('publishes nothing for creates, acks, lease changes and rejected appends', async () => {
      const recorder = new ChangeRecorder(ctx.store);
      try {
        await ctx.store.createTask(taskInput({ id: 'task-1' }));
        await ctx.store.ack('task-1', 0);
        await ctx.store.renewLease('task-1', 'worker-1', 1000);
        await ctx.store.releaseLease('task-1', 'worker-1');
        await expectRejection('an invalid append', ErrorCode.InvalidInput, () =>
          ctx.store.append('task-1', { type: 'progress', done: -1 }),
        );
        await ctx.store.createTask(taskInput({ id: 'task-2' }));
        await ctx.store.append('task-2', { type: 'cancelled' });
        await expectRejection('an append after the terminal event', ErrorCode.TaskFinished, () =>
          ctx.store.append('task-2', { type: 'progress' }),
        );
        await ctx.store.append('task-1', { type: 'progress' });
        await recorder.waitFor('task-1', 1);
        // The sentinel is task-1's seq 1, committed last. A stray change of task-2 that arrived after it
        // would go unnoticed here, never the reverse: this test cannot fail spuriously.
        expect(recorder.of('task-1'), 'changes of task-1').toEqual([
          { taskId: 'task-1', seq: 1, terminal: false },
        ]);
        expect(recorder.of('task-2'), 'changes of task-2').toEqual([
          { taskId: 'task-2', seq: 1, terminal: true },
        ]);
      } finally {
        recorder.stop();
      }
    });

    it('keeps commit order for every listener when a listener appends', async () => {
      // An app's cascade: the listener ends the task once its last item is in. A store that publishes from
      // inside append (the memory store) handed the terminal change to the later listeners first.
      let ended: Promise<unknown> | undefined;
      const stopCascade = ctx.store.changes.subscribe((change) => {
        if (change.taskId === 'task-1' && change.seq === 1 && ended === undefined) {
          ended = ctx.store.append('task-1', { type: 'completed' });
        }
      });
      const recorder = new ChangeRecorder(ctx.store);
      try {
        await ctx.store.createTask(taskInput({ id: 'task-1', total: 1 }));
        await ctx.store.append('task-1', { type: 'item', key: 'node-1', ok: true });
        await recorder.waitFor('task-1', 2);
        await ended;
        expect(recorder.of('task-1'), 'changes seen by the listener after the appending one').toEqual([
          { taskId: 'task-1', seq: 1, terminal: false },
          { taskId: 'task-1', seq: 2, terminal: true },
        ]);
      } finally {
        stopCascade();
        recorder.stop();
      }
    });

    it('unsubscribe stops a listener', async () => {
      const stopped = new ChangeRecorder(ctx.store);
      const witness = new ChangeRecorder(ctx.store);
      try {
        await ctx.store.createTask(taskInput({ id: 'task-1' }));
        await ctx.store.append('task-1', { type: 'progress' });
        await stopped.waitFor('task-1', 1);
        stopped.stop();
        stopped.stop(); // twice is harmless
        await ctx.store.append('task-1', { type: 'progress' });
        await witness.waitFor('task-1', 2);
        expect(
          stopped.of('task-1').map((change) => change.seq),
          'seqs seen by the unsubscribed listener',
        ).toEqual([1]);
      } finally {
        witness.stop();
      }
    });

    it('a throwing listener breaks neither appends nor other listeners', async () => {
      const stopThrowing = ctx.store.changes.subscribe(() => {
        throw new Error('listener failure (expected by the test)');
      });
      const recorder = new ChangeRecorder(ctx.store);
      try {
        await ctx.store.createTask(taskInput({ id: 'task-1' }));
        const first = await ctx.store.append('task-1', { type: 'progress' });
        const second = await ctx.store.append('task-1', { type: 'completed' });
        expect([first.event.seq, second.event.seq], 'seqs of appends with a throwing listener').toEqual([
          1, 2,
        ]);
        await recorder.waitFor('task-1', 2);
        expect(
          recorder.of('task-1').map((change) => change.seq),
          'changes seen by the other listener',
        ).toEqual([1, 2]);
      } finally {
        stopThrowing();
        recorder.stop();
      }
    });

    it("a change that carries a run carries its task's createdAt, each run of a reused id its own", async () => {
      // Optional (see TaskChange.run), but a wrong one misleads a server: a run above the one it follows
      // starts every watcher of the id over, one below has the change dropped.
      const received: TaskChange[] = [];
      const stop = ctx.store.changes.subscribe((change) => received.push(change));
      const recorder = new ChangeRecorder(ctx.store);
      try {
        const first = await ctx.store.createTask(taskInput({ id: 'task-1' }));
        ctx.clock.advance(1);
        await ctx.store.append('task-1', { type: 'item', key: 'node-1', ok: true });
        ctx.clock.advance(1);
        await ctx.store.append('task-1', { type: 'completed' });
        ctx.clock.advance(1);
        expect(await ctx.store.purgeFinished({ olderThanMs: 0 }), 'tasks purged').toBe(1);
        ctx.clock.advance(1);
        const second = await ctx.store.createTask(taskInput({ id: 'task-1' }));
        for (let i = 0; i < 3; i++) {
          ctx.clock.advance(1);
          await ctx.store.append('task-1', { type: 'progress', done: i });
        }
        // Only the second run reaches seq 3. A feed may deliver a change late or twice (a notice of the first
        // run heard after the second was created), so changes are told apart by what only one run has.
        await recorder.waitFor('task-1', 3);
        const changes = received.filter((change) => change.taskId === 'task-1');
        const runs = new Set([first.createdAt, second.createdAt]);
        expect(changes[0]?.seq, 'the first change is of the first run').toBe(1);
        if (changes[0]?.run !== undefined) {
          expect(changes[0].run, "run of the first run's first change").toBe(first.createdAt);
        }
        for (const change of changes) {
          if (change.run === undefined) continue;
          const what = `run of the change at seq ${change.seq}`;
          if (change.seq === 3) expect(change.run, what).toBe(second.createdAt);
          else expect(runs.has(change.run), `${what}: ${change.run}`).toBe(true);
        }
      } finally {
        stop();
        recorder.stop();
      }
    });

    it('a change that carries events carries the committed ones ending at its seq, as readEvents returns them', async () => {
      const received: TaskChange[] = [];
      const stop = ctx.store.changes.subscribe((change) => received.push(change));
      const recorder = new ChangeRecorder(ctx.store);
      try {
        await ctx.store.createTask(taskInput({ id: 'task-1' }));
        await ctx.store.append('task-1', { type: 'progress', total: 2, message: 'starting' });
        const item = await ctx.store.append('task-1', {
          type: 'item',
          key: 'node-1',
          ok: false,
          error: 'drain timed out',
          detail: { pods: ['a', 'b'], nested: { n: 1 } },
        });
        await ctx.store.append('task-1', { type: 'completed', result: { drained: 1 } });
        // Neither the caller's copy nor the input may be what the feed hands out.
        (item.event as { item: { detail: unknown } }).item.detail = 'mutated by the caller';
        await recorder.waitFor('task-1', 3);
        const log = await ctx.store.readEvents('task-1', 0);
        for (const change of received) {
          if (change.events === undefined) continue;
          expect(change.events.length, 'events of a change').toBeGreaterThan(0);
          expect(change.events.at(-1)?.seq, 'the last event of a change is its seq').toBe(change.seq);
          const first = change.seq - change.events.length;
          expect(change.events, `events of the change at seq ${change.seq}`).toEqual(
            log.slice(first, change.seq),
          );
        }
      } finally {
        stop();
        recorder.stop();
      }
    });
  });
}
