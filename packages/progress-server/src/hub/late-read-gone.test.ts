import { MemoryProgressStore } from '@finishline/core';
import { ManualClock } from '@finishline/core/testing';
import { describe, expect, it } from 'vitest';
import { HUB_READ, useHubs } from '../testing/hub-over.js';
import { recorder, settle, until } from '../testing/stream-recorder.js';

/**
 * The hub's live read of run 1, made after retention purged run 1 and before the id was written again,
 * fails with `task_not_found`; its answer comes late (a busy pool), once the hub started over on run 2 and
 * its subscriber of run 2 went live. A failure of the old run's read says nothing of run 2: taken for run
 * 2's, it gave up run 2's seqs announced meanwhile (and the read of run 1's last seq that `#newRun` asked
 * for), and nothing read them again, so run 2's watcher never got its events, its end included.
 */

const { hubOver } = useHubs();

describe("the hub's live read of a purged run, failing once the hub follows the id's later run", () => {
  it("does not give up the later run's seqs", async () => {
    const clock = new ManualClock();
    const store = new MemoryProgressStore({ clock: clock.now });
    let gate: Promise<void> | undefined;
    let open: () => void = () => undefined;
    let hubReads = 0;
    const { hub, emit } = hubOver(
      {
        changes: store.changes,
        getTask: (taskId: string) => store.getTask(taskId),
        // The hub's own reads are made when asked and answered when the test opens the gate.
        readEvents: (taskId: string, afterSeq: number, limit?: number) => {
          const read = store.readEvents(taskId, afterSeq, limit);
          if (limit === undefined || limit < HUB_READ || gate === undefined) return read;
          hubReads += 1;
          const held = gate;
          return read.then(
            async (events) => {
              await held;
              return events;
            },
            async (error: unknown) => {
              await held;
              throw error;
            },
          );
        },
      },
      true,
    );
    const one = (await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' })).createdAt;
    const first = recorder();
    const stream = hub.stream('job-1', 'alice', first.sink);
    const loaded = await stream.load();
    stream.start(0, false, 0, loaded?.createdAt);
    await until(() => first.caughtUp() > 0);

    // Run 1 ends and is purged before its change is heard: the hub's read of it fails, answered late.
    clock.advance(1);
    await store.append('job-1', { type: 'completed' });
    clock.advance(1);
    expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(1);
    gate = new Promise((resolve) => {
      open = resolve;
    });
    emit({ taskId: 'job-1', seq: 1, terminal: true, run: one });
    await until(() => hubReads === 1);

    // The id is written again; its first change starts the hub over on run 2, its subscriber restarted.
    clock.advance(1);
    const two = (await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' })).createdAt;
    clock.advance(1);
    await store.append('job-1', { type: 'progress', message: 'new 1' });
    emit({ taskId: 'job-1', seq: 1, terminal: false, run: two });
    await until(() => first.calls.includes('restart'));
    expect(first.events).toEqual([]);
    // As a subscription's restart does: the new stream follows the id before the old one lets go.
    const next = recorder();
    const again = hub.stream('job-1', 'alice', next.sink);
    stream.close();
    const reloaded = await again.load();
    expect(reloaded?.createdAt).toBe(two);
    again.start(1, false, 1, reloaded?.createdAt);
    await until(() => next.caughtUp() > 0);

    // Run 2 goes on to its end, heard without the events (too big for a notification): the hub reads.
    clock.advance(1);
    await store.append('job-1', { type: 'progress', message: 'new 2' });
    emit({ taskId: 'job-1', seq: 2, terminal: false, run: two });
    clock.advance(1);
    await store.append('job-1', { type: 'completed' });
    emit({ taskId: 'job-1', seq: 3, terminal: true, run: two });
    // The read of run 1 fails now.
    gate = undefined;
    open();
    await until(() => next.events.length === 2);
    await settle();
    expect(next.events).toEqual(['progress@2', 'completed@3']);
    expect(next.calls).toEqual([]);
  });
});
