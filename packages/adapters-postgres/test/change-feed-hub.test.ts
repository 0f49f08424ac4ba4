import type { TaskChange, TaskEvent } from '@finishline/core';
import { ErrorCode, ProgressError } from '@finishline/core';
import { ManualClock, propertyParams } from '@finishline/core/testing';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ChangeFeedHub, type ChangeSource } from '../src/postgres-change-feed.js';
import { SafetyNetPoll } from '../src/safety-net-poll.js';

/**
 * The hub decides what local subscribers see: each (task, seq) once, in seq order, whatever mix of own
 * commits, notifications, re-reads and polls reported it, duplicated and out of date as they may be.
 * Checked against the truth those reports were drawn from.
 */

const TASKS = ['a', 'b', 'c'] as const;
const SOURCES: readonly ChangeSource[] = ['commit', 'notification', 'replay', 'poll'];

type Step =
  | { kind: 'commit'; task: number; count: number; terminal: boolean }
  | { kind: 'report'; task: number; source: ChangeSource; back: number; width: number }
  // This store's own transaction in flight up to `ahead` seqs past what is committed, then its end.
  | { kind: 'expect'; task: number; ahead: number }
  | { kind: 'settle'; task: number };

const step: fc.Arbitrary<Step> = fc.oneof(
  fc.record({
    kind: fc.constant('commit' as const),
    task: fc.nat({ max: TASKS.length - 1 }),
    count: fc.integer({ min: 1, max: 4 }),
    terminal: fc.boolean(),
  }),
  fc.record({
    kind: fc.constant('report' as const),
    task: fc.nat({ max: TASKS.length - 1 }),
    source: fc.constantFrom(...SOURCES),
    back: fc.nat({ max: 5 }),
    width: fc.nat({ max: 5 }),
  }),
  fc.record({
    kind: fc.constant('expect' as const),
    task: fc.nat({ max: TASKS.length - 1 }),
    ahead: fc.integer({ min: 0, max: 4 }),
  }),
  fc.record({ kind: fc.constant('settle' as const), task: fc.nat({ max: TASKS.length - 1 }) }),
);

describe('ChangeFeedHub', () => {
  it('publishes each seq once, in order, from 1 up to the highest reported, whatever the reports', () => {
    fc.assert(
      fc.property(fc.array(step, { maxLength: 60, size: 'max' }), (steps) => {
        const hub = new ChangeFeedHub(
          new ManualClock().now,
          (error) => {
            throw error;
          },
          // Never in a history without lost commits: it renews the store's epoch.
          (taskId, seq) => {
            throw new Error(`taken for lost commits: ${taskId} at ${seq}`);
          },
        );
        const seen: TaskChange[] = [];
        hub.subscribe((change) => seen.push(change));
        const truth = TASKS.map(() => ({ seq: 0, terminal: false }));
        const reported = TASKS.map(() => 0);
        let missed = 0;
        for (const task of TASKS) hub.resetTask(task);
        for (const s of steps) {
          const state = truth[s.task];
          const taskId = TASKS[s.task];
          if (state === undefined || taskId === undefined) throw new Error('bad index');
          if (s.kind === 'expect') {
            hub.expectCommit(taskId, state.seq + s.ahead);
            continue;
          }
          if (s.kind === 'settle') {
            hub.settled([taskId]);
            continue;
          }
          if (s.kind === 'commit') {
            if (state.terminal) continue;
            state.seq += s.count;
            state.terminal = s.terminal;
            continue; // committed, but not reported yet: later reports must fill it in
          }
          // A report of a range that is committed: possibly stale, possibly a duplicate.
          if (state.seq === 0) continue;
          const seq = Math.max(1, state.seq - s.back);
          const firstSeq = Math.max(1, seq - s.width);
          const before = reported[s.task] ?? 0;
          hub.report({ taskId, firstSeq, seq, terminal: state.terminal && seq === state.seq }, s.source);
          if (s.source === 'poll' && seq > before) missed += seq - before;
          reported[s.task] = Math.max(before, seq);
        }
        // Every transaction ends: what was held for one is reported then.
        hub.settled(TASKS);
        TASKS.forEach((taskId, index) => {
          const seqs = seen.filter((change) => change.taskId === taskId).map((change) => change.seq);
          const highest = reported[index] ?? 0;
          expect(seqs, `seqs of ${taskId}`).toEqual(Array.from({ length: highest }, (_, i) => i + 1));
          const terminal = seen.filter((change) => change.taskId === taskId && change.terminal);
          const state = truth[index];
          if (state?.terminal && highest === state.seq)
            expect(terminal.map((c) => c.seq)).toEqual([state.seq]);
          else expect(terminal).toEqual([]);
        });
        expect(hub.stats().missedByNotifications).toBe(missed);
        expect(hub.stats().published).toBe(seen.length);
      }),
      propertyParams(500),
    );
  });

  /** A hub with task `x` reset and a subscriber recording what it publishes. */
  function hubOfTaskX() {
    const hub = new ChangeFeedHub(new ManualClock().now, () => {});
    const seen: TaskChange[] = [];
    hub.subscribe((change) => seen.push(change));
    hub.resetTask('x');
    return { hub, seen };
  }

  /** A progress event of task `x` at `seq`. */
  const event = (seq: number): TaskEvent => ({
    taskId: 'x',
    seq,
    time: seq,
    type: 'progress',
    progress: { total: null, done: seq, succeeded: 0, failed: 0, current: null, message: null },
  });

  it('hands each published change its own event when the report carries them, and none to filled-in seqs', () => {
    const { hub, seen } = hubOfTaskX();
    hub.report(
      { taskId: 'x', firstSeq: 1, seq: 2, terminal: false, events: [event(1), event(2)] },
      'notification',
    );
    // Seq 3 was never reported: filled in without an event; 4..5 duplicate-free with theirs.
    hub.report(
      { taskId: 'x', firstSeq: 4, seq: 5, terminal: false, events: [event(4), event(5)] },
      'notification',
    );
    expect(hub.isNew({ taskId: 'x', firstSeq: 5, seq: 5, terminal: false })).toBe(false);
    expect(hub.isNew({ taskId: 'x', firstSeq: 6, seq: 6, terminal: false })).toBe(true);
    // Own commits carry their event through publishCommitted.
    hub.publishCommitted({ taskId: 'x', seq: 6, terminal: false, events: [event(6)] });
    expect(seen.map((change) => [change.seq, change.events?.map((e) => e.seq)])).toEqual([
      [1, [1]],
      [2, [2]],
      [3, undefined],
      [4, [4]],
      [5, [5]],
      [6, [6]],
    ]);
    expect(seen.every((change) => Object.isFrozen(change))).toBe(true);
  });

  it('holds a notification of seqs its own transaction is committing until that settles, and never drops it', () => {
    const { hub, seen } = hubOfTaskX();
    const own = (seq: number): TaskChange => Object.freeze({ taskId: 'x', seq, terminal: false });

    // The notification outruns the commit's reply: held, and its events are not worth parsing.
    hub.expectCommit('x', 2);
    const notice = { taskId: 'x', firstSeq: 1, seq: 2, terminal: false };
    expect(hub.isNew(notice)).toBe(false);
    expect(hub.report({ ...notice, events: [event(1), event(2)] }, 'notification')).toBe(0);
    expect(seen).toEqual([]);
    // The reply comes: the pipeline publishes its own changes, then settles; the held report is a duplicate.
    const first = own(1);
    const second = own(2);
    hub.publishCommitted(first);
    hub.publishCommitted(second);
    hub.settled(['x']);
    expect(seen).toEqual([first, second]);
    expect(seen[0]).toBe(first);
    expect(hub.stats()).toMatchObject({ published: 2, fromCommits: 2, fromNotifications: 0, duplicates: 1 });

    // The transaction failed from here (say the connection dropped after COMMIT): the held report publishes.
    hub.expectCommit('x', 3);
    expect(hub.report({ taskId: 'x', firstSeq: 3, seq: 3, terminal: false }, 'notification')).toBe(0);
    hub.settled(['x']);
    expect(seen.map((change) => change.seq)).toEqual([1, 2, 3]);

    // Only notifications within the pending seqs are held: another writer's later seqs, and re-reads, publish.
    hub.expectCommit('x', 4);
    expect(hub.report({ taskId: 'x', firstSeq: 5, seq: 5, terminal: false }, 'notification')).toBe(2);
    expect(hub.report({ taskId: 'x', firstSeq: 6, seq: 6, terminal: false }, 'replay')).toBe(1);
    hub.publishCommitted(own(4));
    hub.settled(['x']);
    expect(seen.map((change) => change.seq)).toEqual([1, 2, 3, 4, 5, 6]);
    // Settled: nothing is held any more.
    expect(hub.report({ taskId: 'x', firstSeq: 7, seq: 7, terminal: false }, 'notification')).toBe(1);
  });

  it('publishes nothing of a transaction sent before forgetAll (a restore), held notification or own commit', () => {
    const { hub, seen } = hubOfTaskX();
    hub.report({ taskId: 'x', firstSeq: 1, seq: 4, terminal: false }, 'notification');
    // This store's transaction commits seq 5 in the old epoch; its notification outruns the reply, which
    // is lost. The server finds the store restored (to seq 2) and renewed before the transaction settles.
    hub.expectCommit('x', 5);
    hub.report({ taskId: 'x', firstSeq: 5, seq: 5, terminal: false, events: [event(5)] }, 'notification');
    hub.forgetAll();
    hub.settled(['x']);
    expect(seen.map((change) => change.seq)).toEqual([1, 2, 3, 4]);
    // The same, the reply coming after the reset.
    hub.expectCommit('x', 5);
    hub.forgetAll();
    hub.publishCommitted(Object.freeze({ taskId: 'x', seq: 5, terminal: false, events: [event(5)] }));
    hub.settled(['x']);
    expect(seen.map((change) => change.seq)).toEqual([1, 2, 3, 4]);

    // The restored store's own seq 3, from a transaction sent after the reset, is published as usual.
    hub.expectCommit('x', 3);
    hub.publishCommitted(Object.freeze({ taskId: 'x', seq: 3, terminal: false, events: [event(3)] }));
    hub.settled(['x']);
    expect(seen.map((change) => change.seq)).toEqual([1, 2, 3, 4, 3]);
  });

  it('publishes a task it knows nothing about from the first reported seq, and a first poll is no miss', () => {
    const hub = new ChangeFeedHub(new ManualClock().now, () => {});
    const seen: number[] = [];
    hub.subscribe((change) => seen.push(change.seq));
    hub.report({ taskId: 'x', firstSeq: 7, seq: 7, terminal: false }, 'poll');
    hub.report({ taskId: 'x', firstSeq: 5, seq: 9, terminal: false }, 'notification');
    expect(seen).toEqual([7, 8, 9]);
    expect(hub.stats()).toMatchObject({ missedByNotifications: 0, fromNotifications: 2, duplicates: 0 });
    hub.report({ taskId: 'x', firstSeq: 9, seq: 9, terminal: false }, 'commit');
    expect(hub.stats().duplicates).toBe(1);
  });

  it('follow is reference-counted, and unfollowing twice is harmless', () => {
    const hub = new ChangeFeedHub(new ManualClock().now, () => {});
    const first = hub.follow('x');
    const second = hub.follow('x');
    first();
    first();
    expect(hub.followedTaskIds()).toEqual(['x']);
    second();
    expect(hub.followedTaskIds()).toEqual([]);
  });

  it('forgets purged tasks, so a new task reusing the id is published from seq 1', () => {
    const clock = new ManualClock();
    const hub = new ChangeFeedHub(clock.now, () => {});
    const seen: number[] = [];
    hub.subscribe((change) => seen.push(change.seq));
    hub.report({ taskId: 'x', firstSeq: 1, seq: 3, terminal: true }, 'commit');
    hub.forget(['x']);
    hub.report({ taskId: 'x', firstSeq: 1, seq: 1, terminal: false }, 'notification');
    expect(seen).toEqual([1, 2, 3, 1]);
  });

  it('forgetPublished forgets every task, but keeps notifications held for its own transaction in flight', () => {
    // Unlike forgetAll (a restore), nothing received before is suspect: records of purges were only lost.
    const hub = new ChangeFeedHub(new ManualClock().now, () => {});
    const seen: string[] = [];
    hub.subscribe((change) => seen.push(`${change.taskId}:${change.seq}`));
    hub.report({ taskId: 'x', firstSeq: 1, seq: 3, terminal: true }, 'notification');
    hub.report({ taskId: 'y', firstSeq: 1, seq: 1, terminal: false }, 'notification');
    hub.expectCommit('y', 2);
    hub.report({ taskId: 'y', firstSeq: 2, seq: 2, terminal: false }, 'notification'); // held
    hub.forgetPublished();
    expect([hub.publishedSeq('x'), hub.publishedSeq('y')]).toEqual([undefined, undefined]);
    hub.report({ taskId: 'x', firstSeq: 1, seq: 1, terminal: false }, 'replay');
    hub.settled(['y']);
    expect(seen).toEqual(['x:1', 'x:2', 'x:3', 'y:1', 'x:1', 'y:2']);
  });

  it('on create, starts a reused id afresh but keeps what another process already published', () => {
    const hub = new ChangeFeedHub(new ManualClock().now, () => {});
    const seen: string[] = [];
    hub.subscribe((change) => seen.push(`${change.taskId}:${change.seq}`));
    hub.report({ taskId: 'ended', firstSeq: 1, seq: 2, terminal: true }, 'commit');
    hub.resetTask('ended'); // same id, new task
    hub.report({ taskId: 'ended', firstSeq: 1, seq: 1, terminal: false }, 'notification');
    hub.report({ taskId: 'fresh', firstSeq: 1, seq: 1, terminal: false }, 'notification'); // another process appended first
    hub.resetTask('fresh');
    hub.report({ taskId: 'fresh', firstSeq: 1, seq: 2, terminal: false }, 'notification');
    expect(seen).toEqual(['ended:1', 'ended:2', 'ended:1', 'fresh:1', 'fresh:2']);
  });

  it('sweeps terminal tasks a minute after their end unless followed', () => {
    const clock = new ManualClock();
    const hub = new ChangeFeedHub(clock.now, () => {});
    hub.report({ taskId: 'done', firstSeq: 1, seq: 2, terminal: true }, 'commit');
    hub.report({ taskId: 'followed', firstSeq: 1, seq: 2, terminal: true }, 'commit');
    hub.report({ taskId: 'running', firstSeq: 1, seq: 2, terminal: false }, 'commit');
    const unfollow = hub.follow('followed');
    clock.advance(59_999);
    hub.sweep();
    expect(hub.publishedSeq('done')).toBe(2);
    clock.advance(1);
    hub.sweep();
    expect([hub.publishedSeq('done'), hub.publishedSeq('followed'), hub.publishedSeq('running')]).toEqual([
      undefined,
      2,
      2,
    ]);
    unfollow();
  });

  it('past its capacity forgets the least recently changed unfollowed tasks in a batch, not one per change', () => {
    // A re-read from the start reports every task of the store at once (see listen-connection.ts):
    // forgetting one per change walked the remembered tasks from the start each time, over the entries
    // deleted before (quadratic: 200,000 reports took seconds of one event-loop turn).
    const hub = new ChangeFeedHub(
      () => 0,
      () => {},
    );
    const unfollow = hub.follow('task-1');
    const tasks = 50_001; // one past the capacity
    for (let i = 1; i <= tasks; i++) {
      hub.report({ taskId: `task-${i}`, firstSeq: 3, seq: 3, terminal: true }, 'replay');
    }
    const remembered = (i: number) => hub.publishedSeq(`task-${i}`) !== undefined;
    expect(remembered(1), 'followed: kept').toBe(true);
    expect([remembered(2), remembered(3), remembered(1000)], 'the oldest: forgotten together').toEqual([
      false,
      false,
      false,
    ]);
    expect(remembered(tasks - 40_000) && remembered(tasks), 'the latest: kept').toBe(true);
    // A forgotten task's next change is published from the seq it carries.
    const seen: number[] = [];
    hub.subscribe((change) => seen.push(change.seq));
    hub.report({ taskId: 'task-2', firstSeq: 4, seq: 4, terminal: false }, 'notification');
    expect(seen).toEqual([4]);
    unfollow();
  });

  describe('after the store lost commits whose changes it published (a failover, a restore kept unrenewed)', () => {
    /** A hub that published seqs 1..3 of task `x` (run 7) as running, and the losses it was told of. */
    function hubPastLostSeqs() {
      const lost: Array<[string, number, number]> = [];
      const hub = new ChangeFeedHub(
        new ManualClock().now,
        () => {},
        (...args) => lost.push(args),
      );
      const seen: TaskChange[] = [];
      hub.subscribe((change) => seen.push(change));
      hub.resetTask('x');
      hub.report({ taskId: 'x', firstSeq: 1, seq: 3, terminal: false, run: 7 }, 'notification');
      return { hub, seen, lost };
    }

    it('tells the end heard at a seq published as running, once, where it dropped it as a duplicate', () => {
      for (const source of SOURCES) {
        const { hub, seen, lost } = hubPastLostSeqs();
        // The worker's new events took the lost seqs 2 and 3, the end at 3.
        hub.report({ taskId: 'x', firstSeq: 2, seq: 3, terminal: true, run: 7 }, source);
        expect(lost, source).toEqual([['x', 3, 3]]);
        hub.report({ taskId: 'x', firstSeq: 3, seq: 3, terminal: true, run: 7 }, source);
        expect(lost, source).toHaveLength(1);
        expect(seen.map((change) => change.seq)).toEqual([1, 2, 3]);
      }
      // An end below the seqs published.
      const { hub, lost } = hubPastLostSeqs();
      hub.report({ taskId: 'x', firstSeq: 2, seq: 2, terminal: true }, 'notification');
      expect(lost).toEqual([['x', 2, 3]]);
    });

    it('takes neither a duplicate of the end nor an end of another run for lost commits', () => {
      const { hub, lost } = hubPastLostSeqs();
      hub.report({ taskId: 'x', firstSeq: 1, seq: 2, terminal: true, run: 6 }, 'notification');
      hub.report({ taskId: 'x', firstSeq: 4, seq: 4, terminal: true, run: 7 }, 'notification');
      hub.report({ taskId: 'x', firstSeq: 4, seq: 4, terminal: true, run: 7 }, 'poll');
      hub.report({ taskId: 'x', firstSeq: 4, seq: 4, terminal: true }, 'replay');
      expect(hub.wentBack('x', 4, true, 7)).toBe(false);
      expect(lost).toEqual([]);
      expect(hub.stats().duplicates).toBe(3);
    });

    it('is told by the safety-net poll, which compared seqs only', async () => {
      const { hub, lost } = hubPastLostSeqs();
      const unfollow = hub.follow('x');
      const poll = new SafetyNetPoll({
        hub,
        intervalMs: 60_000,
        readLatest: async () => new Map([['x', { seq: 3, terminal: true, run: 7 }]]),
        rereading: () => false,
        onError: (error) => {
          throw error;
        },
      });
      await poll.pollOnce();
      await poll.pollOnce();
      expect(lost).toEqual([['x', 3, 3]]);
      unfollow();
    });
  });

  it("publishes a task's end when the store's clock throws, and reports the clock once per streak", () => {
    const clock = new ManualClock();
    let broken = true;
    const clockErrors: unknown[] = [];
    const hub = new ChangeFeedHub(
      () => {
        if (broken) throw new ProgressError(ErrorCode.Internal, 'clock returned NaN');
        return clock.now();
      },
      () => {},
      () => {},
      (error) => clockErrors.push(error),
    );
    const published: string[] = [];
    hub.subscribe((change) => published.push(`${change.taskId}#${change.seq}${change.terminal ? '!' : ''}`));
    // Until 7 December 2026 both threw: from the LISTEN connection's notification handler (an uncaught
    // exception in pg's socket handler), and from a committed append's publication (its batch's appends
    // never settled), the end published to no one.
    expect(() =>
      hub.report({ taskId: 'a', firstSeq: 1, seq: 2, terminal: true }, 'notification'),
    ).not.toThrow();
    expect(() => hub.publishCommitted({ taskId: 'b', seq: 1, terminal: true })).not.toThrow();
    expect(published).toEqual(['a#1', 'a#2!', 'b#1!']);
    expect(clockErrors).toHaveLength(1);
    expect((clockErrors[0] as ProgressError).code).toBe(ErrorCode.Internal);
    // A read that succeeds ends the streak: the next failure is reported again.
    broken = false;
    hub.report({ taskId: 'c', firstSeq: 1, seq: 1, terminal: true }, 'poll');
    broken = true;
    hub.report({ taskId: 'd', firstSeq: 1, seq: 1, terminal: true }, 'replay');
    expect(published).toEqual(['a#1', 'a#2!', 'b#1!', 'c#1!', 'd#1!']);
    expect(clockErrors).toHaveLength(2);
  });
});

describe('SafetyNetPoll', () => {
  it('resolves, counts and reports a poll whose hub reads a clock that throws, and polls on after it', async () => {
    const clock = new ManualClock();
    let broken = true;
    const hub = new ChangeFeedHub(
      () => {
        if (broken) throw new ProgressError(ErrorCode.Internal, 'clock returned NaN');
        return clock.now();
      },
      () => {},
    );
    const unfollow = hub.follow('x');
    const published: string[] = [];
    const stop = hub.subscribe((change) => published.push(`${change.taskId}#${change.seq}`));
    const errors: ProgressError[] = [];
    const poll = new SafetyNetPoll({
      hub,
      intervalMs: 60_000,
      readLatest: async () => new Map([['x', { seq: 1, terminal: true, run: 1 }]]),
      rereading: () => false,
      onError: (error) => errors.push(error),
    });
    // Rejected until 7 December 2026: the timer's poll never ran again, beside an unhandled rejection.
    await expect(poll.pollOnce()).resolves.toBeUndefined();
    expect(errors.map((error) => error.code)).toEqual([ErrorCode.Internal]);
    expect(poll.stats().pollErrors).toBe(1);
    broken = false;
    await poll.pollOnce();
    expect(published).toEqual(['x#1']);
    poll.stop();
    stop();
    unfollow();
  });

  it('reports a streak of failed reads once, counts every one, and reports again after a read succeeded', async () => {
    const hub = new ChangeFeedHub(new ManualClock().now, () => {});
    const unfollow = hub.follow('x');
    let failing = true;
    const errors: unknown[] = [];
    const poll = new SafetyNetPoll({
      hub,
      intervalMs: 60_000,
      readLatest: async () => {
        if (failing) throw new Error('connect ECONNREFUSED');
        return new Map();
      },
      rereading: () => false,
      onError: (error) => errors.push(error),
    });
    for (let attempt = 0; attempt < 5; attempt++) await poll.pollOnce();
    expect(errors).toHaveLength(1);
    expect(poll.stats().pollErrors).toBe(5);
    failing = false;
    await poll.pollOnce();
    failing = true;
    await poll.pollOnce();
    await poll.pollOnce();
    expect(errors).toHaveLength(2);
    expect(poll.stats().pollErrors).toBe(7);
    poll.stop();
    unfollow();
  });
});
