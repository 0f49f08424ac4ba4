import type { TaskEvent } from '@finishline/core';
import { MemoryProgressStore } from '@finishline/core';
import { ManualClock } from '@finishline/core/testing';
import { describe, expect, it } from 'vitest';
import { useHubs } from '../testing/hub-over.js';
import { recorder, settle, until } from '../testing/stream-recorder.js';

/**
 * The first subscriber of an id loads run 1 (its load, or the application's authorization after it, still
 * under way) while run 1 ends, is purged, and run 2 is created and written past run 1's seq; the hub hears
 * run 2's changes, named with their run, before that subscriber tells it the run it loaded. No run was
 * followed yet, so the changes' run was not kept: the subscriber's start then fixed the hub on run 1, and
 * the hub (and the stream's own catch-up) read run 2's events after run 1's seq and handed them to run 1's
 * watcher as its own.
 */

const { hubOver } = useHubs();

describe("a later run of the id heard while the first subscriber's load of an earlier run is under way", () => {
  for (const withEvents of [false, true]) {
    it(`restarts that subscriber instead of handing it the later run's events (changes ${withEvents ? 'with' : 'without'} events)`, async () => {
      const clock = new ManualClock();
      const store = new MemoryProgressStore({ clock: clock.now });
      const { hub, emit } = hubOver(store, true);
      const one = (await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' })).createdAt;
      for (let i = 1; i <= 3; i++) {
        clock.advance(1);
        await store.append('job-1', { type: 'progress', message: `old ${i}` });
      }
      const watcher = recorder();
      const stream = hub.stream('job-1', 'alice', watcher.sink);
      const loaded = await stream.load();
      expect(loaded?.createdAt).toBe(one);
      // Before the subscriber starts: run 1's end, its purge, run 2 written past seq 4, all heard.
      clock.advance(1);
      const { event: end } = await store.append('job-1', { type: 'completed' });
      emit({ taskId: 'job-1', seq: 4, terminal: true, run: one, ...(withEvents ? { events: [end] } : {}) });
      clock.advance(1);
      expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(1);
      clock.advance(1);
      const two = (await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' })).createdAt;
      for (let i = 1; i <= 6; i++) {
        clock.advance(1);
        const { event } = await store.append('job-1', { type: 'item', key: `new-${i}`, ok: true });
        const events: TaskEvent[] = [event];
        emit({
          taskId: 'job-1',
          seq: event.seq,
          terminal: false,
          run: two,
          ...(withEvents ? { events } : {}),
        });
      }
      stream.start(3, false, 3, loaded?.createdAt);
      await until(() => watcher.calls.length > 0 || watcher.events.length > 0);
      await settle();
      expect(watcher.events).toEqual([]);
      expect(watcher.calls).toEqual(['restart']);

      // What the restarted subscriber's owner does: a new stream of the id, loaded again (run 2).
      const next = recorder();
      const again = hub.stream('job-1', 'alice', next.sink);
      stream.close();
      const reloaded = await again.load();
      expect(reloaded?.createdAt).toBe(two);
      again.start(reloaded?.seq ?? 0, false, reloaded?.seq ?? 0, reloaded?.createdAt);
      await until(() => next.caughtUp() > 0);
      clock.advance(1);
      const { event } = await store.append('job-1', { type: 'completed' });
      emit({ taskId: 'job-1', seq: event.seq, terminal: true, run: two, events: [event] });
      await until(() => next.events.length > 0);
      expect(next.events).toEqual(['completed@7']);
      expect(next.calls).toEqual([]);
    });
  }

  it('restarts that subscriber when this process appended to the later run meanwhile', async () => {
    const clock = new ManualClock();
    const store = new MemoryProgressStore({ clock: clock.now });
    const { hub } = hubOver(store, true);
    await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' });
    for (let i = 1; i <= 3; i++) {
      clock.advance(1);
      await store.append('job-1', { type: 'progress', message: `old ${i}` });
    }
    const watcher = recorder();
    const stream = hub.stream('job-1', 'alice', watcher.sink);
    const loaded = await stream.load();
    clock.advance(1);
    await store.append('job-1', { type: 'completed' });
    clock.advance(1);
    expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(1);
    clock.advance(1);
    await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' });
    for (let i = 1; i <= 6; i++) {
      clock.advance(1);
      const result = await store.append('job-1', { type: 'item', key: `new-${i}`, ok: true });
      hub.publishLocal(result.event, result.task.createdAt);
    }
    stream.start(3, false, 3, loaded?.createdAt);
    await until(() => watcher.calls.length > 0 || watcher.events.length > 0);
    await settle();
    expect(watcher.events).toEqual([]);
    expect(watcher.calls).toEqual(['restart']);
  });

  it('still starts a subscriber whose load began after the later run was heard and found the earlier one', async () => {
    // A change naming a run the store does not hold (a late notice of a store restored since): a load that
    // read after it is the truth, and refusing it restarted the subscriber for ever.
    const clock = new ManualClock();
    const store = new MemoryProgressStore({ clock: clock.now });
    const { hub, emit } = hubOver(store, true);
    const one = (await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' })).createdAt;
    const watcher = recorder();
    const stream = hub.stream('job-1', 'alice', watcher.sink);
    emit({ taskId: 'job-1', seq: 9, terminal: false, run: one + 100 });
    const loaded = await stream.load();
    stream.start(0, false, 0, loaded?.createdAt);
    await until(() => watcher.caughtUp() > 0);
    clock.advance(1);
    const { event } = await store.append('job-1', { type: 'progress', message: 'p' });
    emit({ taskId: 'job-1', seq: event.seq, terminal: false, run: one, events: [event] });
    await until(() => watcher.events.length > 0);
    expect(watcher.events).toEqual(['progress@1']);
    expect(watcher.calls.filter((call) => call === 'restart')).toEqual([]);
  });
});
