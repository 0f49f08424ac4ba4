import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { expectInvalidInput } from '../testing/invalid-input.js';
import { ManualClock } from '../testing/manual-clock.js';
import { propertyParams } from '../testing/property-config.js';
import { RoundTripPool } from './round-trip-estimate.js';
import { TERMINAL_RETRY_DEFAULTS, TerminalRetryTracker, terminalRetryDelayMs } from './terminal-retry.js';

describe('terminalRetryDelayMs', () => {
  it('has frozen defaults of 100 ms, doubling, capped at 5 s', () => {
    expect(TERMINAL_RETRY_DEFAULTS).toEqual({ initialDelayMs: 100, multiplier: 2, maxDelayMs: 5000 });
    expect(Object.isFrozen(TERMINAL_RETRY_DEFAULTS)).toBe(true);
  });

  it('waits 100, 200, 400 … ms and never more than 5 s', () => {
    const delays = [1, 2, 3, 4, 5, 6, 7, 8].map((attempt) => terminalRetryDelayMs(attempt));
    expect(delays).toEqual([100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    expect(terminalRetryDelayMs(100_000)).toBe(5000);
  });

  it('honours custom options', () => {
    const options = { initialDelayMs: 50, multiplier: 3, maxDelayMs: 1000 };
    expect([1, 2, 3, 4].map((attempt) => terminalRetryDelayMs(attempt, options))).toEqual([
      50, 150, 450, 1000,
    ]);
    expect(terminalRetryDelayMs(9, { multiplier: 1 })).toBe(100);
    // A constant delay: the first delay may equal the cap.
    expect(terminalRetryDelayMs(3, { initialDelayMs: 500, maxDelayMs: 500 })).toBe(500);
  });

  it('rejects attempt 0, fractions and bad options', () => {
    expectInvalidInput(() => terminalRetryDelayMs(0), /attempt/);
    expectInvalidInput(() => terminalRetryDelayMs(2.5), /attempt/);
    expectInvalidInput(() => terminalRetryDelayMs(1, { initialDelayMs: 0 }), /initialDelayMs/);
    expectInvalidInput(() => terminalRetryDelayMs(1, { multiplier: 0.9 }), /multiplier/);
    expectInvalidInput(
      () => terminalRetryDelayMs(1, { initialDelayMs: 200, maxDelayMs: 100 }),
      /must not exceed/,
    );
    expectInvalidInput(() => new TerminalRetryTracker(() => 0, { maxDelayMs: Number.NaN }), /maxDelayMs/);
  });

  it('refuses delays longer than a timer can wait (2^31 - 1 ms), and takes the longest it can', () => {
    // Until 5 December 2026 they were taken: a timer asked for longer fires after 1 ms, and the server's
    // retry timer, finding nothing due, was set again every millisecond for each such socket.
    expectInvalidInput(() => terminalRetryDelayMs(1, { maxDelayMs: 2 ** 31 }), /maxDelayMs .*2147483647/);
    expectInvalidInput(
      () => new TerminalRetryTracker(() => 0, { initialDelayMs: 2 ** 31, maxDelayMs: 2 ** 32 }),
      /initialDelayMs/,
    );
    expect(terminalRetryDelayMs(40, { maxDelayMs: 2 ** 31 - 1 })).toBe(2 ** 31 - 1);
  });
});

/** A manual clock, a round-trip pool for trackers to share, and `ackAfter`: a terminal sent, acked `ms` later. */
function sharedPool() {
  const clock = new ManualClock(0);
  const pool = new RoundTripPool();
  const ackAfter = (tracker: TerminalRetryTracker, taskId: string, ms: number): void => {
    tracker.sent(taskId, 1);
    clock.advance(ms);
    tracker.acked(taskId, 1);
  };
  return { clock, pool, ackAfter };
}

describe('TerminalRetryTracker', () => {
  it('re-sends at 100, 300, 700 … ms after the first send while the caller keeps one timer', () => {
    const clock = new ManualClock(0);
    const tracker = new TerminalRetryTracker(clock.now);
    tracker.sent('t1', 9);
    expect(tracker.size).toBe(1);
    const resends: number[] = [];
    const attempts: number[] = [];
    while (resends.length < 9) {
      const at = tracker.nextDueAt();
      if (at === undefined) throw new Error('nothing scheduled');
      clock.set(at);
      for (const due of tracker.due()) {
        expect(due).toMatchObject({ taskId: 't1', seq: 9 });
        resends.push(clock.now());
        attempts.push(due.attempt);
        tracker.sent(due.taskId, due.seq);
      }
    }
    expect(resends).toEqual([100, 300, 700, 1500, 3100, 6300, 11_300, 16_300, 21_300]);
    expect(attempts).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9]);
  });

  it("waits its socket's round-trip timeout when it is longer than 100 ms, the pool's before its first ack", () => {
    const clock = new ManualClock(0);
    const pool = new RoundTripPool();
    const tracker = new TerminalRetryTracker(clock.now, undefined, pool, () => 'alice');
    const other = new TerminalRetryTracker(clock.now, undefined, pool, () => 'bob');
    // No sample yet: the 100 ms floor.
    tracker.sent('t1', 4);
    expect(tracker.nextDueAt()).toBe(100);
    // Acked 250 ms after its first send, one re-send in between: the sample counts from the first send.
    clock.set(100);
    tracker.sent('t1', 4);
    clock.set(250);
    tracker.acked('t1', 4);
    expect(pool.votes).toBe(1);
    // Its own timeout, 3 × 250 ms; the pool's is the top of the 2^(1/4) step holding 750 (2^(39/4), 861 ms).
    tracker.sent('t0', 1);
    expect(tracker.nextDueAt()).toBe(250 + 750);
    tracker.acked('t0', 1);
    const learnt = 2 ** (39 / 4);
    expect(pool.timeoutMs).toBe(learnt);
    // Another socket's tracker, with no ack of its own yet, waits the pool's, then doubles, capped at 5 s.
    other.sent('t2', 9);
    const resends: number[] = [];
    while (resends.length < 4) {
      const at = other.nextDueAt() as number;
      clock.set(at);
      resends.push(at - 250);
      other.sent('t2', 9);
    }
    expect(resends).toEqual([learnt, learnt * 3, learnt * 7, learnt * 7 + 5000]);
    // Acks quicker than the floor bring the timeout down, never the delay below 100 ms.
    for (let i = 0; i < 60; i++) {
      tracker.sent(`fast-${i}`, 1);
      clock.advance(2);
      tracker.acked(`fast-${i}`, 1);
    }
    expect(pool.timeoutMs).toBeLessThan(100);
    tracker.sent('t3', 2);
    expect(tracker.nextDueAt()).toBe(clock.now() + 100);
    // An ack that clears nothing (already acked, or below the terminal seq) is not a sample.
    const before = pool.timeoutMs;
    clock.advance(10_000);
    tracker.acked('t3', 1);
    tracker.acked('fast-0', 1);
    expect(pool.timeoutMs).toBe(before);
    // Closing withdraws the socket's vote, once.
    tracker.close();
    tracker.close();
    expect(pool.votes).toBe(0);
    expect(pool.timeoutMs).toBe(0);
  });

  it('does not let one principal of three move the first delay of the others, late or early, with any number of sockets', () => {
    const { clock, pool, ackAfter } = sharedPool();
    const honest = ['alice', 'bob'].map(
      (who) => new TerminalRetryTracker(clock.now, undefined, pool, () => who),
    );
    for (const [i, tracker] of honest.entries()) ackAfter(tracker, `h${i}`, 20);
    // Ten sockets of one principal, each acking a minute late: one vote.
    const lateSockets = Array.from(
      { length: 10 },
      () => new TerminalRetryTracker(clock.now, undefined, pool, () => 'mallory'),
    );
    for (const socket of lateSockets) ackAfter(socket, 'x', 60_000);
    expect(pool.votes).toBe(3);
    const late = lateSockets[0] as TerminalRetryTracker;
    for (let i = 0; i < 50; i++) ackAfter(late, `l${i}`, 60_000);
    const fresh = new TerminalRetryTracker(clock.now, undefined, pool, () => 'carol');
    fresh.sent('f', 1);
    expect(fresh.nextDueAt()).toBe(clock.now() + 100);
    // The late socket waits its own timeout (capped); the honest ones theirs.
    late.sent('l', 1);
    expect(late.nextDueAt()).toBe(clock.now() + 5000);
    honest[0]?.sent('h', 1);
    expect(honest[0]?.nextDueAt()).toBe(clock.now() + 100);
    // Slow acks on most sockets, one acking at once: the fresh socket still waits the slow ones' timeout.
    for (const [i, tracker] of honest.entries()) {
      for (let j = 0; j < 20; j++) ackAfter(tracker, `s${i}-${j}`, 400);
    }
    for (let i = 0; i < 50; i++) ackAfter(late, `e${i}`, 0);
    const again = new TerminalRetryTracker(clock.now, undefined, pool, () => 'carol');
    again.sent('a', 1);
    expect((again.nextDueAt() as number) - clock.now()).toBeGreaterThan(400);
    // The principal's vote goes with its last socket that voted.
    for (const socket of lateSockets.slice(1)) socket.close();
    expect(pool.votes).toBe(3);
    late.close();
    late.close();
    expect(pool.votes).toBe(2);
  });

  it('withdraws a closed socket’s vote once, and takes no vote from an ack that reaches it after close', () => {
    const { clock, pool, ackAfter } = sharedPool();
    const first = new TerminalRetryTracker(clock.now, undefined, pool, () => 'alice');
    const second = new TerminalRetryTracker(clock.now, undefined, pool, () => 'alice');
    ackAfter(first, 'a', 20);
    ackAfter(second, 'b', 20);
    expect(pool.votes).toBe(1);
    // Closing one socket twice leaves alice's vote to her other socket.
    first.close();
    first.close();
    expect(pool.votes).toBe(1);
    // An ack in flight when the socket closed clears the entry but votes nothing: the vote is gone with it.
    second.sent('c', 1);
    second.close();
    expect(pool.votes).toBe(0);
    clock.advance(20);
    second.acked('c', 1);
    expect(second.size).toBe(0);
    expect(pool.votes).toBe(0);
  });

  it('is not due a millisecond early and stays due until the re-send is reported', () => {
    const clock = new ManualClock(1000);
    const tracker = new TerminalRetryTracker(clock.now);
    tracker.sent('t1', 3);
    clock.advance(99);
    expect(tracker.due()).toEqual([]);
    clock.advance(1);
    expect(tracker.due()).toEqual([{ taskId: 't1', seq: 3, attempt: 1 }]);
    clock.advance(500);
    expect(tracker.due()).toEqual([{ taskId: 't1', seq: 3, attempt: 1 }]);
    tracker.sent('t1', 3);
    expect(tracker.due()).toEqual([]);
    expect(tracker.nextDueAt()).toBe(1600 + 200);
  });

  it('stops on a cumulative ack at or above the terminal seq, not below', () => {
    const clock = new ManualClock(0);
    const tracker = new TerminalRetryTracker(clock.now);
    tracker.sent('t1', 5);
    tracker.acked('t1', 4);
    expect(tracker.size).toBe(1);
    tracker.acked('t2', 99);
    expect(tracker.size).toBe(1);
    tracker.acked('t1', 5);
    expect(tracker.size).toBe(0);
    expect(tracker.nextDueAt()).toBeUndefined();

    tracker.sent('t3', 7);
    tracker.acked('t3', 8);
    expect(tracker.size).toBe(0);
  });

  it('ignores a send reported after its ack, and a send of an older seq', () => {
    const clock = new ManualClock(0);
    const tracker = new TerminalRetryTracker(clock.now);
    tracker.acked('t1', 5);
    tracker.sent('t1', 5);
    expect(tracker.size).toBe(0);
    tracker.sent('t2', 8);
    clock.advance(100);
    tracker.sent('t2', 6);
    expect(tracker.due()).toEqual([{ taskId: 't2', seq: 8, attempt: 1 }]);
    // A newer terminal seq (a different task incarnation) starts over.
    tracker.sent('t2', 9);
    expect(tracker.due()).toEqual([]);
    expect(tracker.nextDueAt()).toBe(200);
  });

  it('forgets a task, including its ack', () => {
    const clock = new ManualClock(0);
    const tracker = new TerminalRetryTracker(clock.now);
    tracker.sent('t1', 2);
    tracker.forget('t1');
    expect(tracker.size).toBe(0);
    tracker.acked('t2', 4);
    tracker.forget('t2');
    tracker.sent('t2', 4);
    expect(tracker.size).toBe(1);
  });

  it('lists due entries earliest first, ties in the order they were first sent', () => {
    const clock = new ManualClock(0);
    const tracker = new TerminalRetryTracker(clock.now);
    tracker.sent('b', 1);
    tracker.sent('a', 1);
    clock.advance(50);
    tracker.sent('c', 1);
    clock.advance(100);
    tracker.sent('a', 1); // a is re-sent: now due at 350
    clock.set(160);
    expect(tracker.due().map((due) => due.taskId)).toEqual(['b', 'c']);
    expect(tracker.nextDueAt()).toBe(100);
    clock.set(400);
    expect(tracker.due().map((due) => due.taskId)).toEqual(['b', 'c', 'a']);
  });

  it('breaks ties at the same millisecond by first send, a replacing seq counting as a new send', () => {
    const clock = new ManualClock(0);
    const tracker = new TerminalRetryTracker(clock.now);
    tracker.sent('b', 1);
    tracker.sent('a', 1);
    tracker.sent('c', 1);
    clock.set(100);
    expect(tracker.due().map((due) => due.taskId)).toEqual(['b', 'a', 'c']);

    const replaced = new TerminalRetryTracker(clock.now);
    replaced.sent('a', 1);
    replaced.sent('b', 1);
    replaced.sent('a', 2); // a's newer terminal was sent after b's
    clock.set(200);
    expect(replaced.due()).toEqual([
      { taskId: 'b', seq: 1, attempt: 1 },
      { taskId: 'a', seq: 2, attempt: 1 },
    ]);
  });

  it('ignores a non-finite ack, which would otherwise silence every later re-send of the task', () => {
    const clock = new ManualClock(0);
    const tracker = new TerminalRetryTracker(clock.now);
    tracker.sent('t1', 5);
    tracker.acked('t1', Number.POSITIVE_INFINITY);
    tracker.acked('t1', Number.NaN);
    expect(tracker.size).toBe(1);
    tracker.acked('t1', 5);
    tracker.sent('t1', 6);
    expect(tracker.size).toBe(1);
  });

  it('rejects a bad seq or clock', () => {
    const tracker = new TerminalRetryTracker(() => 0);
    expectInvalidInput(() => tracker.sent('t1', 0), /seq/);
    expectInvalidInput(() => tracker.sent('t1', 1.5), /seq/);
    expectInvalidInput(() => new TerminalRetryTracker(undefined as unknown as () => number), /clock/);
  });

  it('matches a simple model under any mix of sends, acks, forgets and time (oracle)', () => {
    type Op =
      | { op: 'sent'; task: number; seq: number }
      | { op: 'acked'; task: number; seq: number }
      | { op: 'forget'; task: number }
      | { op: 'advance'; ms: number };
    const opArb: fc.Arbitrary<Op> = fc.oneof(
      fc.record({ op: fc.constant('sent' as const), task: fc.nat(2), seq: fc.integer({ min: 1, max: 4 }) }),
      fc.record({ op: fc.constant('acked' as const), task: fc.nat(2), seq: fc.nat(4) }),
      fc.record({ op: fc.constant('forget' as const), task: fc.nat(2) }),
      fc.record({ op: fc.constant('advance' as const), ms: fc.nat(3000) }),
    );
    fc.assert(
      fc.property(fc.array(opArb, { maxLength: 40, size: 'max' }), (ops) => {
        const clock = new ManualClock(0);
        const tracker = new TerminalRetryTracker(clock.now);
        const pending = new Map<string, { seq: number; attempt: number; dueAt: number }>();
        const acked = new Map<string, number>();
        for (const op of ops) {
          if (op.op === 'advance') clock.advance(op.ms);
          else if (op.op === 'forget') {
            tracker.forget(`t${op.task}`);
            pending.delete(`t${op.task}`);
            acked.delete(`t${op.task}`);
          } else if (op.op === 'acked') {
            const id = `t${op.task}`;
            tracker.acked(id, op.seq);
            acked.set(id, Math.max(acked.get(id) ?? 0, op.seq));
            if ((pending.get(id)?.seq ?? Number.POSITIVE_INFINITY) <= op.seq) pending.delete(id);
          } else {
            const id = `t${op.task}`;
            tracker.sent(id, op.seq);
            const current = pending.get(id);
            if (op.seq <= (acked.get(id) ?? 0) || (current !== undefined && op.seq < current.seq)) continue;
            const attempt = current?.seq === op.seq ? current.attempt + 1 : 1;
            pending.set(id, { seq: op.seq, attempt, dueAt: clock.now() + terminalRetryDelayMs(attempt) });
          }
          expect(tracker.size).toBe(pending.size);
          const dueAts = [...pending.values()].map((entry) => entry.dueAt);
          expect(tracker.nextDueAt()).toBe(dueAts.length === 0 ? undefined : Math.min(...dueAts));
          const due = [...pending]
            .filter(([, entry]) => entry.dueAt <= clock.now())
            .map(([taskId, { seq, attempt }]) => ({ taskId, seq, attempt }));
          expect(new Set(tracker.due().map((entry) => JSON.stringify(entry)))).toEqual(
            new Set(due.map((entry) => JSON.stringify(entry))),
          );
        }
      }),
      propertyParams(300),
    );
  });
});
