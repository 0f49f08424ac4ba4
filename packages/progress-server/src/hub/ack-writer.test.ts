import type { ProgressStore } from '@finishline/core';
import { ErrorCode, MemoryProgressStore, ProgressError } from '@finishline/core';
import { ManualClock } from '@finishline/core/testing';
import { describe, expect, it, vi } from 'vitest';
import type { ProgressLogger } from '../logger.js';
import { silentLogger } from '../logger.js';
import { ServerMetrics } from '../metrics.js';
import { gate, sleep } from '../testing/harness.js';
import { AckWriter } from './ack-writer.js';

/** An AckWriter over a store whose `ack` is `write` (the stored seqs kept in `stored`). */
function writerOver(
  write: (stored: Map<string, number>, taskId: string, seq: number) => Promise<void>,
  retryDelayMs: number,
  logger: ProgressLogger = silentLogger,
): { acks: AckWriter; stored: Map<string, number> } {
  const stored = new Map<string, number>();
  const store = {
    ack: async (taskId: string, seq: number) => {
      await write(stored, taskId, seq);
      stored.set(taskId, Math.max(stored.get(taskId) ?? 0, seq));
      return stored.get(taskId) as number;
    },
  } as unknown as ProgressStore;
  return { acks: writerOn(store, { retryDelayMs, logger }), stored };
}

/**
 * A writer on a store whose task reads (of run 100, at seq 9) wait until `reads[i]()` releases them, and whose
 * ack writes are recorded in `written`.
 */
function heldRunReads(): { reads: Array<() => void>; written: number[]; acks: AckWriter } {
  const reads: Array<() => void> = [];
  const written: number[] = [];
  const store = {
    getTask: (taskId: string) =>
      new Promise((resolve) => reads.push(() => resolve({ id: taskId, seq: 9, createdAt: 100 }))),
    ack: async (_taskId: string, seq: number) => {
      written.push(seq);
      return seq;
    },
  } as unknown as ProgressStore;
  return { reads, written, acks: writerOn(store) };
}

/** An AckWriter over `store`, its metrics over `feed` (a store's change feed; an unused one by default). */
function writerOn(
  store: ProgressStore,
  { feed = new MemoryProgressStore().changes, retryDelayMs = 10, logger = silentLogger } = {},
): AckWriter {
  const metrics = new ServerMetrics({ registry: undefined, prefix: 'test_', feed });
  return new AckWriter({ store, logger, metrics, retryDelayMs });
}

/** A memory store on a manual clock (at 1000), and an AckWriter over it: for the runs of an id. */
function overClockedStore() {
  const clock = new ManualClock(1000);
  const store = new MemoryProgressStore({ clock: clock.now });
  /** Purges the ended run of `t` (a millisecond on) and creates the id's next run, owned by `owner`. */
  const takeAgain = async (owner: string) => {
    clock.advance(1);
    await store.purgeFinished({ olderThanMs: 0 });
    return store.createTask({ id: 't', owner, kind: 'k' });
  };
  return { clock, store, acks: writerOn(store, { feed: store.changes }), takeAgain };
}

describe('AckWriter', () => {
  it('says which acks not written yet it dropped at an epoch change, not the one in flight', async () => {
    const said: unknown[] = [];
    const logger = { ...silentLogger, info: (fields: unknown) => said.push(fields) };
    const held: Array<() => void> = [];
    const { acks, stored } = writerOver(() => new Promise<void>((resolve) => held.push(resolve)), 10, logger);
    acks.ack('a', 4);
    acks.ack('a', 5);
    acks.ack('b', 2);
    acks.forgetSeqs();
    // 'a' 5 waited behind 4, in flight; 'b' 2 was in flight alone: only 5 is dropped.
    expect(said).toEqual([{ droppedAcks: 1, acks: [{ taskId: 'a', seq: 5 }] }]);
    for (const release of held) release();
    await acks.flush(Date.now() + 2000);
    expect(stored.get('a')).toBe(4);
    acks.forgetSeqs();
    expect(said).toHaveLength(1);
    acks.close();
  });

  it('flush waits for an ack queued behind the write in flight, not only for that write', async () => {
    // A store whose ack writes take a while, as under load.
    const { acks, stored } = writerOver(() => new Promise((resolve) => setTimeout(resolve, 30)), 10);
    acks.ack('t', 10);
    // The terminal ack arrives while 10 is being written: it is queued behind it.
    acks.ack('t', 13);
    await acks.flush(Date.now() + 5000);
    // What a graceful shutdown relies on: after flush, nothing acknowledged is left unwritten.
    expect(stored.get('t')).toBe(13);
    acks.close();
  });

  it('flush() writes an ack waiting on its retry timer instead of losing it at close()', async () => {
    let calls = 0;
    // One transient failure (a Postgres failover, SQLITE_BUSY): the writer retries after retryDelayMs.
    const { acks, stored } = writerOver(async () => {
      calls += 1;
      if (calls === 1) throw new ProgressError(ErrorCode.StoreUnavailable, 'store hiccup');
    }, 50);
    acks.ack('t', 7);
    // The failed write settled; the retry is on its timer.
    await sleep(5);
    // ProgressServer.#close: flush(deadline) then close().
    await acks.flush(Date.now() + 2000);
    acks.close();
    await sleep(100);
    expect(stored.get('t')).toBe(7);
  });

  it('flush() after forgetSeqs() still waits for the write that was in flight, and records the new epoch acks', async () => {
    let release: () => void = () => {};
    const held = new Promise<void>((resolve) => {
      release = resolve;
    });
    const writes: [string, number][] = [];
    // The old epoch's write of 5 is held by the store; the restored store's acks go through at once.
    const { acks, stored } = writerOver(async (_stored, taskId, seq) => {
      writes.push([taskId, seq]);
      if (seq === 5) await held;
    }, 10);
    acks.ack('t', 5);
    // The store's epoch changed while that write runs (ProgressServer's StoreEpoch callback).
    acks.forgetSeqs();
    // The restored task is at a lower seq: its ack must not be skipped as already written.
    acks.ack('t', 2);
    let flushed = false;
    const flush = acks.flush(Date.now() + 5000).then(() => {
      flushed = true;
    });
    await sleep(30);
    // A graceful shutdown now would close the writer with the acknowledged 5 still being written.
    expect(flushed).toBe(false);
    release();
    await flush;
    expect(stored.get('t')).toBe(5);
    expect(writes).toEqual([
      ['t', 5],
      ['t', 2],
    ]);
    acks.close();
  });

  it('leaves no retry timer behind for a write of the old epoch that fails after forgetSeqs()', async () => {
    vi.useFakeTimers();
    try {
      let fail: (error: unknown) => void = () => {};
      const failing = new Promise<void>((_resolve, reject) => {
        fail = reject;
      });
      const writes: number[] = [];
      // The old epoch's write of 5 is in flight when the restore is noticed, and fails (the database was
      // being restored); the restored store takes the new epoch's acks.
      const { acks, stored } = writerOver(async (_stored, _taskId, seq) => {
        writes.push(seq);
        if (seq === 5) await failing;
      }, 10);
      acks.ack('t', 5);
      acks.forgetSeqs();
      acks.ack('t', 2);
      fail(new ProgressError(ErrorCode.StoreUnavailable, 'the database is being restored'));
      await vi.advanceTimersByTimeAsync(0);
      acks.close();
      // A retry of the dropped state would run after close(), for an ack of the old epoch.
      expect(vi.getTimerCount()).toBe(0);
      await vi.advanceTimersByTimeAsync(100);
      expect(writes).toEqual([5, 2]);
      expect(stored.get('t')).toBe(2);
    } finally {
      vi.useRealTimers();
    }
  });

  it('writes an ack sent again after a store outage made it give up, not skipped as written', async () => {
    vi.useFakeTimers();
    try {
      let down = true;
      const writes: number[] = [];
      const { acks, stored } = writerOver(async (_stored, _taskId, seq) => {
        writes.push(seq);
        if (down) throw new ProgressError(ErrorCode.StoreUnavailable, 'the database is down');
      }, 10);
      acks.ack('t', 5);
      // The outage outlasts the writer's attempts: it gives up on 5.
      await vi.advanceTimersByTimeAsync(100);
      expect(writes).toEqual([5, 5, 5]);
      expect(stored.get('t')).toBeUndefined();
      down = false;
      // Another watcher (or this one, resubscribed) acknowledges 5 once the store is back: given up on,
      // 5 was taken as written and this ack skipped as a duplicate, and the store never got it.
      acks.ack('t', 5);
      await acks.flush(Date.now() + 2000);
      expect(stored.get('t')).toBe(5);
      acks.close();
    } finally {
      vi.useRealTimers();
    }
  });

  it('still writes a higher ack that came in while the write it gave up on was in flight', async () => {
    vi.useFakeTimers();
    try {
      let down = true;
      const writes: number[] = [];
      const { acks, stored } = writerOver(async (_stored, _taskId, seq) => {
        writes.push(seq);
        await sleep(5);
        if (down) throw new ProgressError(ErrorCode.StoreUnavailable, 'the database is down');
      }, 10);
      acks.ack('t', 5);
      // Attempts of 5 at 0, 15 and 30 ms, each failing 5 ms later.
      await vi.advanceTimersByTimeAsync(32);
      expect(writes).toEqual([5, 5, 5]);
      acks.ack('t', 7);
      down = false;
      await vi.advanceTimersByTimeAsync(100);
      expect(stored.get('t')).toBe(7);
      acks.close();
    } finally {
      vi.useRealTimers();
    }
  });

  it.each([
    ['a new run of a purged id, at a lower seq', 2, 2],
    ['a new run of a purged id, at the same seq', 9, 2],
    ['the same run, restored to a lower seq', 2, 1],
  ])('seen() of %s forgets what it wrote: that run gets its acks written', async (_, seq, run) => {
    const { acks, stored } = writerOver(async () => undefined, 10);
    acks.seen('t', 9, 1);
    acks.ack('t', 9);
    await acks.flush(Date.now() + 2000);
    // The same run read again: nothing forgotten, a repeated ack is still a duplicate.
    stored.delete('t');
    acks.seen('t', 9, 1);
    acks.ack('t', 9);
    await acks.flush(Date.now() + 2000);
    expect(stored.get('t')).toBeUndefined();
    // The id purged and taken again (or the store restored): the stored row starts over.
    acks.seen('t', seq, run);
    acks.ack('t', seq);
    await acks.flush(Date.now() + 2000);
    expect(stored.get('t')).toBe(seq);
    acks.close();
  });

  it('reads a task once for the acks of one run that no authorization vouches for, and writes the highest', async () => {
    const { reads, written, acks } = heldRunReads();
    // A reconnect storm: the watchers of one task flush their acks while their resubscribes load.
    acks.ackOfRun('t', 5, 100);
    acks.ackOfRun('t', 7, 100);
    acks.ackOfRun('t', 6, 100);
    expect(reads).toHaveLength(1);
    // Another run of the id is checked on its own.
    acks.ackOfRun('t', 3, 99);
    expect(reads).toHaveLength(2);
    for (const release of reads) release();
    await acks.flush(Date.now() + 2000);
    // The other run's ack is not written: the id is run 100's.
    expect(written).toEqual([7]);
    // Once the read is over, a later ack above what was written reads again.
    acks.ackOfRun('t', 8, 100);
    expect(reads).toHaveLength(3);
    reads[2]!();
    await acks.flush(Date.now() + 2000);
    expect(written).toEqual([7, 8]);
    acks.close();
  });
  it('drops an ack whose run was being read when the epoch changed, and reads again for one of the new epoch', async () => {
    // Found by a review: forgetSeqs() dropped the acks waiting to be written, not one waiting on the read of
    // its run. A restore keeps a run's `createdAt`, so that read, answered by the restored store, vouched
    // for the run, and the old epoch's seq 7 was written onto the restored log's seq 7 (another event,
    // which no watcher had processed). An ack of the new epoch asked meanwhile joined that read instead of
    // one of its own.
    const { reads, written, acks } = heldRunReads();
    acks.ackOfRun('t', 7, 100);
    acks.forgetSeqs();
    acks.ackOfRun('t', 2, 100);
    expect(reads).toHaveLength(2);
    for (const release of reads) release();
    await acks.flush(Date.now() + 2000);
    expect(written).toEqual([2]);
    acks.close();
  });

  it('does not check again the run of a failed write of a replaced state once the epoch changed', async () => {
    // The write of a state a read of another run replaced is checked against the store when it fails
    // (which run is stale is not known): after an epoch change its seq is of the old epoch, dropped as the
    // failed write of any state forgetSeqs() dropped is.
    const held: Array<() => void> = [];
    let reads = 0;
    const written: number[] = [];
    const store = {
      getTask: async (taskId: string) => {
        reads += 1;
        return { id: taskId, seq: 9, createdAt: 100 };
      },
      ack: (_taskId: string, seq: number) =>
        new Promise((resolve, reject) =>
          held.push(() => {
            if (seq === 5) reject(new ProgressError(ErrorCode.StoreUnavailable, 'the database is down'));
            else {
              written.push(seq);
              resolve(seq);
            }
          }),
        ),
    } as unknown as ProgressStore;
    const acks = writerOn(store);
    acks.seen('t', 4, 100);
    acks.ack('t', 5);
    acks.seen('t', 3, 200);
    acks.forgetSeqs();
    for (const release of held.splice(0)) release();
    await acks.flush(Date.now() + 2000);
    expect(reads).toBe(0);
    expect(written).toEqual([]);
    acks.close();
  });

  it('reads again, after a store outage, the run of an ack no authorization vouches for, instead of dropping it', async () => {
    vi.useFakeTimers();
    try {
      let failures = 1;
      const written: number[] = [];
      const store = {
        getTask: async (taskId: string) => {
          if (failures-- > 0) throw new ProgressError(ErrorCode.StoreUnavailable, 'the database is down');
          return { id: taskId, seq: 9, createdAt: 100 };
        },
        ack: async (_taskId: string, seq: number) => {
          written.push(seq);
          return seq;
        },
      } as unknown as ProgressStore;
      const acks = writerOn(store);
      // The re-ack of a terminal frame behind the socket's unsubscribe: the client sends it once.
      acks.ackOfRun('t', 9, 100);
      await vi.advanceTimersByTimeAsync(50);
      expect(written).toEqual([9]);
      // During a graceful shutdown the read is not left waiting for its retry delay.
      failures = 1;
      acks.ackOfRun('u', 9, 100);
      await vi.advanceTimersByTimeAsync(0);
      await acks.flush(Date.now() + 5);
      expect(written).toEqual([9, 9]);
      acks.close();
    } finally {
      vi.useRealTimers();
    }
  });

  it("writes an ack fenced to the run it read: not onto a new task that took a purged run's id, and once", async () => {
    // A server read run 1 of `t` (a watcher subscribed), and its hub never heard that run 1 ended, was
    // purged and that the id was taken again (by another owner): the live watcher's ack of run 1's seq 2
    // went onto run 2 and marked its events processed, which none of run 2's watchers had processed.
    const { clock, store, acks } = overClockedStore();
    const writes = vi.spyOn(store, 'ack');
    const old = await store.createTask({ id: 't', owner: 'alice', kind: 'k' });
    await store.append('t', { type: 'progress', message: 'old 1' });
    await store.append('t', { type: 'progress', message: 'old 2' });
    acks.seen('t', 2, old.createdAt);
    await store.append('t', { type: 'cancelled' });
    clock.advance(1);
    expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(1);
    const current = await store.createTask({ id: 't', owner: 'bob', kind: 'k' });
    await store.append('t', { type: 'progress', message: 'new 1' });
    await store.append('t', { type: 'progress', message: 'new 2' });
    acks.ack('t', 2);
    await acks.flush(Date.now() + 2000);
    expect((await store.getTask('t'))?.ackedSeq, "run 2's ackedSeq").toBe(0);
    // Refused (task_not_found) and not retried: the task it was meant for is gone.
    expect(writes.mock.calls, 'store acks').toEqual([['t', 2, { run: old.createdAt }]]);
    // Once a read tells it run 2, its acks are written, fenced to run 2.
    acks.seen('t', 2, current.createdAt);
    acks.ack('t', 2);
    await acks.flush(Date.now() + 2000);
    expect((await store.getTask('t'))?.ackedSeq, "run 2's ackedSeq after its own ack").toBe(2);
    expect(writes.mock.calls[1], 'the write of run 2').toEqual(['t', 2, { run: current.createdAt }]);
    acks.close();
  });
  it("does not write a watcher's ack of a purged run onto the run a later read told it, nor skip that run's acks", async () => {
    // Watcher A still follows run 1 of `t` (its terminal frame re-sent until acked) while retention purged
    // it and a new task took the id; watcher B's subscribe read run 2 (`seen`). A's ack, of run 1's seq 2,
    // was written fenced to the state's run, run 2: it marked run 2's events processed, which none of its
    // watchers had, and B's own ack of seq 2 was then skipped as already written.
    const { store, acks, takeAgain } = overClockedStore();
    const old = await store.createTask({ id: 't', owner: 'alice', kind: 'k' });
    await store.append('t', { type: 'progress', message: 'old 1' });
    await store.append('t', { type: 'cancelled' });
    const current = await takeAgain('alice');
    await store.append('t', { type: 'progress', message: 'new 1' });
    await store.append('t', { type: 'progress', message: 'new 2' });
    await store.append('t', { type: 'progress', message: 'new 3' });
    acks.seen('t', 3, current.createdAt);
    acks.ack('t', 2, old.createdAt);
    await acks.flush(Date.now() + 2000);
    expect((await store.getTask('t'))?.ackedSeq, "run 2's ackedSeq after run 1's ack").toBe(0);
    acks.ack('t', 1, current.createdAt);
    acks.ack('t', 2, current.createdAt);
    await acks.flush(Date.now() + 2000);
    expect((await store.getTask('t'))?.ackedSeq, "run 2's ackedSeq after its own acks").toBe(2);
    acks.close();
  });

  it("writes a watcher's ack of the id's current run when the writer's state is of a run purged since", async () => {
    // The reverse: the writer's state was made by a read of run 1 (a watcher that left), and a watcher of
    // run 2 acks before any read told the writer run 2. Fenced to run 1, the write was refused
    // (task_not_found), counted as written, and the ack lost.
    const { store, acks, takeAgain } = overClockedStore();
    const old = await store.createTask({ id: 't', owner: 'alice', kind: 'k' });
    await store.append('t', { type: 'cancelled' });
    acks.seen('t', 1, old.createdAt);
    const current = await takeAgain('alice');
    await store.append('t', { type: 'progress', message: 'new 1' });
    await store.append('t', { type: 'cancelled' });
    acks.ack('t', 2, current.createdAt);
    await acks.flush(Date.now() + 2000);
    expect((await store.getTask('t'))?.ackedSeq, "run 2's terminal ack").toBe(2);
    acks.close();
  });

  it("writes a later run's ack waiting behind a write in flight when a stale load of the earlier run answers", async () => {
    // A subscriber's load read run 1 of `t`, then the run ended, was purged and the id taken again; a load
    // of run 2 told the writer run 2, whose watcher acked seq 1 (held in the store) and seq 2 (waiting
    // behind it). The stale load of run 1 answered last: the writer took run 1 for the id's run now and
    // dropped the waiting ack of run 2, which its watcher never sends again.
    const { store, acks, takeAgain } = overClockedStore();
    const old = await store.createTask({ id: 't', owner: 'alice', kind: 'k' });
    await store.append('t', { type: 'cancelled' });
    const staleMark = acks.mark();
    const current = await takeAgain('alice');
    await store.append('t', { type: 'progress', message: 'new 1' });
    await store.append('t', { type: 'cancelled' });
    acks.seen('t', 0, current.createdAt, acks.mark());
    const held = gate();
    const write = store.ack.bind(store);
    vi.spyOn(store, 'ack').mockImplementationOnce(async (...args) => {
      await held.promise;
      return write(...args);
    });
    acks.ack('t', 1, current.createdAt);
    acks.ack('t', 2, current.createdAt);
    acks.seen('t', 1, old.createdAt, staleMark);
    held.open();
    await acks.flush(Date.now() + 2000);
    expect((await store.getTask('t'))?.ackedSeq, "run 2's terminal ack").toBe(2);
    acks.close();
  });

  it("retries a later run's ack whose write in flight fails after a stale load of the earlier run answered", async () => {
    // As above, with run 2's ack of seq 1 in flight rather than waiting: the stale load of run 1 replaced
    // the writer's state, and the write, failing once (a store blip), was taken for one of a state an
    // epoch change dropped: not retried, and lost.
    const { store, acks, takeAgain } = overClockedStore();
    const old = await store.createTask({ id: 't', owner: 'alice', kind: 'k' });
    await store.append('t', { type: 'cancelled' });
    const staleMark = acks.mark();
    const current = await takeAgain('alice');
    await store.append('t', { type: 'cancelled' });
    acks.seen('t', 0, current.createdAt, acks.mark());
    const held = gate();
    vi.spyOn(store, 'ack').mockImplementationOnce(async () => {
      await held.promise;
      throw new ProgressError(ErrorCode.StoreUnavailable, 'the database restarts');
    });
    acks.ack('t', 1, current.createdAt);
    acks.seen('t', 1, old.createdAt, staleMark);
    held.open();
    await acks.flush(Date.now() + 2000);
    expect((await store.getTask('t'))?.ackedSeq, "run 2's terminal ack").toBe(1);
    acks.close();
  });

  it('looks at a bounded number of remembered tasks per new task while the store holds every write', async () => {
    // A long store outage whose writes hang: every task's state is busy and none can be forgotten. Each
    // new task's ack rescanned all of them (10,000 and more) for one to forget: quadratic in the outage.
    const held = gate();
    const writes: number[] = [];
    const { acks } = writerOver(async (_stored, _taskId, seq) => {
      writes.push(seq);
      if (seq === 1) await held.promise;
    }, 10);
    for (let i = 0; i < 10_100; i++) acks.ack(`t${i}`, 1);
    // Every step of an iteration over a Map (the writer's states are one) while the next tasks are acked.
    let steps = 0;
    const spies = (['entries', 'keys', 'values', Symbol.iterator] as const).map((method) => {
      const original = Map.prototype[method] as () => Iterator<unknown>;
      return vi.spyOn(Map.prototype, method).mockImplementation(function (this: Map<unknown, unknown>) {
        const iterator = original.call(this);
        const next = iterator.next.bind(iterator);
        iterator.next = () => {
          steps += 1;
          return next();
        };
        return iterator as MapIterator<never>;
      });
    });
    try {
      for (let i = 0; i < 100; i++) acks.ack(`u${i}`, 1);
    } finally {
      for (const spy of spies) spy.mockRestore();
    }
    // A few per task, not the 10,100 remembered.
    expect(steps).toBeLessThanOrEqual(100 * 4);
    // The outage ends: states are forgotten again, oldest first, as tasks come: 400 here, t400 to t799
    // (t0 to t399, looked at while held, went to the back). A repeated ack of a task forgotten is written
    // again; one of a task remembered is skipped as written.
    held.open();
    await acks.flush(Date.now() + 2000);
    for (let i = 0; i < 200; i++) acks.ack(`v${i}`, 2);
    await acks.flush(Date.now() + 2000);
    writes.length = 0;
    acks.ack('t600', 1);
    acks.ack('v199', 2);
    await acks.flush(Date.now() + 2000);
    expect(writes).toEqual([1]);
    acks.close();
  });

  it('fences the write of a task no read told it to the run its caller gives (state evicted or dropped)', async () => {
    const { store, acks, takeAgain } = overClockedStore();
    const old = await store.createTask({ id: 't', owner: 'alice', kind: 'k' });
    await store.append('t', { type: 'cancelled' });
    await takeAgain('bob');
    await store.append('t', { type: 'progress', message: 'new 1' });
    // No seen() of `t` in this writer: its state evicted after 10,000 other tasks, or dropped at an epoch
    // change. The live watcher's subscription knows its run: run 1.
    acks.ack('t', 1, old.createdAt);
    await acks.flush(Date.now() + 2000);
    expect((await store.getTask('t'))?.ackedSeq, "run 2's ackedSeq").toBe(0);
    acks.close();
  });
});
