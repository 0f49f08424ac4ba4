import { describe, expect, it } from 'vitest';
import { AnswerWait } from './answer-wait.js';
import { type StuckAction, TaskSubscription } from './task-subscription.js';
import { FakeTask } from './testing/fake-server.js';
import { ManualScheduler } from './testing/manual-scheduler.js';
import { TimerSet } from './timers.js';

function subscription(stuck: StuckAction[] = []) {
  const scheduler = new ManualScheduler();
  /** Clock times at which the subscription asked to subscribe again (no answer, a gap, a heartbeat). */
  const resyncs: number[] = [];
  const sub = new TaskSubscription(
    't1',
    {
      clock: scheduler.now,
      finishTimeoutMs: 3000,
      rateWindowMs: 10_000,
      storage: undefined,
    },
    {
      timers: new TimerSet(scheduler),
      answerWait: new AnswerWait(1000),
      onStuck: (_task, action) => stuck.push(action),
      resync: () => resyncs.push(scheduler.now()),
    },
  );
  return { sub, scheduler, resyncs, task: new FakeTask('t1', 3) };
}

describe('TaskSubscription', () => {
  it('acks nothing before the subscribe is answered, then the cursor, then unsubscribes after the terminal ack', () => {
    const { sub, task } = subscription();
    sub.subscribed();
    sub.task.deliver(sub.cursor.applySnapshot(task.view()).delivered, sub.cursor.view);
    sub.task.deliver(sub.cursor.applyEvent(task.item('a')).delivered, sub.cursor.view);
    expect(sub.ackable()).toBeUndefined(); // no frame answered the subscribe yet
    expect(sub.answer()).toBe(true);
    expect(sub.answer()).toBe(false);
    expect(sub.ackable()).toBe(1);
    sub.acked(1);
    expect(sub.ackable()).toBeUndefined();
    expect(sub.ackDue(32)).toBe(false);
    expect(sub.readyToUnsubscribe).toBe(false);
    sub.cursor.applyEvent(task.end());
    expect(sub.ackDue(32)).toBe(true); // terminal: at once
    expect(sub.ackable()).toBe(2);
    expect(sub.readyToUnsubscribe).toBe(false); // not before the terminal seq is acked
    sub.acked(2);
    expect(sub.readyToUnsubscribe).toBe(true);
    sub.done();
    expect(sub.socketDone).toBe(true);
    expect(sub.wantsSocket).toBe(false);
    expect(sub.readyToUnsubscribe).toBe(false);
    expect(sub.ackable()).toBeUndefined();
  });

  it('a new subscribe needs a new answer before acks, and the same gap resyncs once until it is overdue', async () => {
    const { sub, scheduler, resyncs, task } = subscription();
    sub.subscribed();
    sub.answer();
    task.item('a');
    const gap = sub.cursor.applyEvent(task.item('b')); // seq 2 while the cursor is at 0
    expect(gap.gap).toBe(true);
    sub.onGap(gap, 1000);
    expect(resyncs).toEqual([]); // the subscribe from 0 is pending and recent
    await scheduler.advance(999);
    expect(resyncs).toEqual([]);
    await scheduler.advance(1); // overdue with the gap still there: its answer was lost too
    expect(resyncs).toHaveLength(1);
    sub.onGap(gap, 1000); // the same gap again, its subscribe overdue: at once
    expect(resyncs).toHaveLength(2);
    sub.subscribed();
    expect(sub.ackable()).toBeUndefined();
    sub.heartbeat(undefined, 1); // crossed the subscribe that just went out
    expect(resyncs).toHaveLength(2);
    await scheduler.advance(1);
    sub.heartbeat(undefined, 1); // the server no longer lists the task: subscribe again
    expect(resyncs).toHaveLength(3);
  });

  it('another epoch starts the cursor over, with its ack bookkeeping', () => {
    const { sub, task } = subscription();
    sub.adoptEpoch('e1');
    sub.subscribed();
    sub.answer();
    sub.task.deliver(sub.cursor.applySnapshot(task.view()).delivered, sub.cursor.view);
    sub.task.deliver(sub.cursor.applyEvent(task.item('a')).delivered, sub.cursor.view);
    sub.acked(1);
    sub.adoptEpoch('e1');
    expect(sub.cursor.seq).toBe(1);
    sub.adoptEpoch('e2');
    expect(sub.epoch).toBe('e2');
    expect(sub.cursor.seq).toBe(0);
    // Its ack bookkeeping starts over too: seq 1 of the new epoch is acknowledged again.
    sub.cursor.applySnapshot(task.view());
    expect(sub.ackable()).toBe(1);
  });

  it('escalates a task stuck at 100% through onStuck, and stops once released', async () => {
    const stuck: StuckAction[] = [];
    const { sub, scheduler, task } = subscription(stuck);
    sub.cursor.applySnapshot(task.view());
    for (const key of ['a', 'b', 'c']) sub.cursor.applyEvent(task.item(key));
    sub.armWatchdog();
    await scheduler.advance(3000);
    await scheduler.advance(3000);
    expect(stuck).toEqual(['resync', 'reconnect']);
    sub.release();
    await scheduler.advance(30_000);
    expect(stuck).toEqual(['resync', 'reconnect']);
    expect(scheduler.pending).toBe(0);
  });
});
