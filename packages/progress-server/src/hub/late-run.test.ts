import type { AppendInput, TaskEvent } from '@finishline/core';
import { MemoryProgressStore } from '@finishline/core';
import { ManualClock } from '@finishline/core/testing';
import { describe, expect, it } from 'vitest';
import { HUB_READ, useHubs } from '../testing/hub-over.js';
import { useServerSession } from '../testing/session.js';
import { recorder, settle, until } from '../testing/stream-recorder.js';
import type { TaskHub } from './task-hub.js';

/**
 * A task id is taken again once retention purged its task: the runs of one id share their seqs (each
 * starts at 1). What the hub learnt of an older run (its events heard late, its events it holds in
 * memory, its seqs) must not reach the watchers of the run the id names now as theirs.
 */

const session = useServerSession();
const { hubOver } = useHubs();

/**
 * `job-1` run 1 (an item, then completed: seqs 1 and 2) ended, was purged and created again (run 2), one
 * millisecond of the store clock between each step. Returns run 1's events.
 */
async function runOneEndedAndPurged(store: MemoryProgressStore, clock: ManualClock): Promise<TaskEvent[]> {
  await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' });
  clock.advance(1);
  await store.append('job-1', { type: 'item', key: 'old-1', ok: true });
  clock.advance(1);
  await store.append('job-1', { type: 'completed' });
  const events = await store.readEvents('job-1', 0);
  clock.advance(1);
  expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(1);
  clock.advance(1);
  return events;
}

/**
 * Run 1 of `job-1` watched from its start by a stream that stays after the run's end (a client that does
 * not let go, so the hub keeps following the id), `events` appended to it, then purged, and run 2
 * created under the id. Returns what that stream was handed.
 */
async function oldRunKeptAcrossPurge(
  hub: TaskHub,
  store: MemoryProgressStore,
  clock: ManualClock,
  events: AppendInput[],
): Promise<ReturnType<typeof recorder>> {
  await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' });
  const stays = recorder();
  const staying = hub.stream('job-1', 'alice', stays.sink);
  const first = await staying.load();
  staying.start(0, false, 0, first?.createdAt);
  await until(() => stays.caughtUp() > 0);
  for (const event of events) {
    clock.advance(1);
    await store.append('job-1', event);
  }
  await until(() => stays.events.length === events.length);
  clock.advance(1);
  expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(1);
  clock.advance(1);
  await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' });
  return stays;
}

/** A watcher of `job-1` as it is now, loaded and started from the load's seq, caught up. */
async function liveWatcher(hub: TaskHub) {
  const watcher = recorder();
  const stream = hub.stream('job-1', 'alice', watcher.sink);
  const loaded = await stream.load();
  stream.start(loaded?.seq ?? 0, false, loaded?.seq ?? 0, loaded?.createdAt);
  await until(() => watcher.caughtUp() > 0);
  return { watcher, loaded };
}

describe('a change of an older run of the id heard late', () => {
  it("is not delivered to the new run's watchers as the new run's events", async () => {
    const clock = new ManualClock();
    const store = new MemoryProgressStore({ clock: clock.now });
    const { hub, emit } = hubOver(store, true);
    const old = await runOneEndedAndPurged(store, clock);
    // Run 2, at seq 1, watched from there.
    await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' });
    clock.advance(1);
    const first = (await store.append('job-1', { type: 'item', key: 'new-1', ok: true })).event;
    const { watcher, loaded } = await liveWatcher(hub);
    expect(loaded?.seq).toBe(1);
    emit({ taskId: 'job-1', seq: 1, terminal: false, events: [first] });

    // Run 1's terminal change, its notification in flight while run 2 was created: its seq is the next
    // one of run 2, and it carries run 1's `completed`.
    emit({ taskId: 'job-1', seq: 2, terminal: true, events: old.slice(1) });
    await settle();
    expect(watcher.events).toEqual([]);

    // Run 2's own second event goes out, as its own.
    clock.advance(1);
    const second = (await store.append('job-1', { type: 'progress', message: 'new' })).event;
    emit({ taskId: 'job-1', seq: 2, terminal: false, events: [second] });
    await until(() => watcher.events.length > 0);
    expect(watcher.events).toEqual(['progress@2']);
    clock.advance(1);
    const end = (await store.append('job-1', { type: 'completed' })).event;
    emit({ taskId: 'job-1', seq: 3, terminal: true, events: [end] });
    await until(() => watcher.events.length > 1);
    expect(watcher.events).toEqual(['progress@2', 'completed@3']);
    expect(watcher.calls).toEqual([]);
  });
});

describe('what the hub holds of an older run of the id', () => {
  it('is not served to a watcher of the new run when a watcher of the old run still follows the id', async () => {
    const clock = new ManualClock();
    const store = new MemoryProgressStore({ clock: clock.now });
    const { hub } = hubOver(store, false);
    const stays = await oldRunKeptAcrossPurge(hub, store, clock, [
      { type: 'item', key: 'old-1', ok: true },
      { type: 'completed' },
    ]);

    // Run 2, watched from its start.
    const { watcher, loaded } = await liveWatcher(hub);
    expect(loaded?.seq).toBe(0);
    expect(watcher.events).toEqual([]);
    expect(watcher.calls).toEqual([]);

    // Run 2's events, seqs 1 and 2 as run 1's were, reach its watcher live.
    clock.advance(1);
    await store.append('job-1', { type: 'progress', message: 'new' });
    clock.advance(1);
    await store.append('job-1', { type: 'item', key: 'new-1', ok: true });
    await until(() => watcher.events.length === 2);
    expect(watcher.events).toEqual(['progress@1', 'item@2']);
    expect(stays.events).toEqual(['item@1', 'completed@2']);
    // The old run's stream starts over once the hub follows the new run: nothing more of its own comes.
    expect(stays.calls).toEqual(['restart']);
  });
});

const eventsOf = (frames: readonly Record<string, unknown>[]) =>
  frames
    .filter((frame) => frame.type === 'event')
    .map((frame) => {
      const event = frame.event as { type: string; seq: number };
      return `${event.type}@${event.seq}`;
    });

/**
 * A server over a memory store on `clock`, where `job-1` run 1 (an item, then completed) was watched to
 * its end on a socket that never acknowledges it nor lets go (so the server's hub still follows the id),
 * then purged. Returns the server, and a socket subscriber's frames of run 1.
 */
async function oldRunStillFollowed(clock: ManualClock) {
  const store = new MemoryProgressStore({ clock: clock.now });
  const env = await session.start({ store });
  const old = await env.server.tasks.create({ id: 'job-1', owner: 'alice', kind: 'k' });
  const stays = await session.connect({ user: 'alice' });
  stays.send({ type: 'subscribe', taskId: 'job-1', afterSeq: 0 });
  await stays.next((frame) => frame.type === 'snapshot');
  clock.advance(1);
  await old.item({ key: 'old-1', ok: true });
  clock.advance(1);
  await old.complete();
  await stays.next((frame) => frame.type === 'event' && (frame.event as { seq: number }).seq === 2);
  clock.advance(1);
  expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(1);
  clock.advance(1);
  return { env, stays };
}

describe('a subscriber of the new run on a socket', () => {
  it('gets its own events only, while a socket that watched the old run still follows the id', async () => {
    const clock = new ManualClock();
    const {
      env: { server },
    } = await oldRunStillFollowed(clock);
    const current = await server.tasks.create({ id: 'job-1', owner: 'alice', kind: 'k' });
    const watcher = await session.connect({ user: 'alice' });
    watcher.send({ type: 'subscribe', taskId: 'job-1', afterSeq: 0 });
    const snapshot = await watcher.next((frame) => frame.type === 'snapshot');
    expect(snapshot.task).toMatchObject({ seq: 0, status: 'running' });
    await watcher.sync();
    expect(eventsOf(watcher.about('job-1'))).toEqual([]);

    clock.advance(1);
    await current.progress({ message: 'new' });
    clock.advance(1);
    await current.item({ key: 'new-1', ok: true });
    await watcher.next((frame) => frame.type === 'event' && (frame.event as { seq: number }).seq === 2);
    await watcher.sync();
    expect(eventsOf(watcher.about('job-1'))).toEqual(['progress@1', 'item@2']);
  });
});

describe('a Server-Sent Events stream of the new run', () => {
  it('gets its own events only, while a socket that watched the old run still follows the id', async () => {
    const clock = new ManualClock();
    const { env } = await oldRunStillFollowed(clock);
    const current = await env.server.tasks.create({ id: 'job-1', owner: 'alice', kind: 'k' });
    const abort = new AbortController();
    session.onCleanup(() => abort.abort());
    const response = await fetch(`${env.httpUrl}/progress/tasks/job-1/stream`, {
      headers: { 'x-user': 'alice' },
      signal: abort.signal,
    });
    expect(response.status).toBe(200);
    const reader = (response.body as ReadableStream<Uint8Array>).getReader();
    const decoder = new TextDecoder();
    const frames: Record<string, unknown>[] = [];
    let text = '';
    let ended = false;
    /** Reads until `count` data messages arrived or the stream ended. */
    const readUntil = async (count: number) => {
      while (frames.length < count && !ended) {
        const { done, value } = await reader.read();
        if (done) {
          ended = true;
          break;
        }
        text += decoder.decode(value, { stream: true });
        for (let end = text.indexOf('\n\n'); end >= 0; end = text.indexOf('\n\n')) {
          const data = text
            .slice(0, end)
            .split('\n')
            .filter((line) => line.startsWith('data: '))
            .map((line) => line.slice('data: '.length))
            .join('\n');
          text = text.slice(end + 2);
          if (data !== '') frames.push(JSON.parse(data) as Record<string, unknown>);
        }
      }
    };
    await readUntil(1);
    expect(frames[0]).toMatchObject({ type: 'snapshot', task: { seq: 0, status: 'running' } });

    clock.advance(1);
    await current.progress({ message: 'new' });
    clock.advance(1);
    await current.item({ key: 'new-1', ok: true });
    await readUntil(3);
    expect(eventsOf(frames)).toEqual(['progress@1', 'item@2']);
    expect(ended).toBe(false);
  });
});

describe('a commit of the new run between its first watcher load and its start', () => {
  it('is delivered, though the hub learnt of it before the reset to the new run', async () => {
    // Run 1 ends at seq 1 while a watcher stays on it (the hub's entry: run 1, at seq 1). Purged, created
    // again; run 2's first watcher loads at seq 0, and while its subscribe is authorized run 2 commits
    // completed@1: its change (seq 1, not above run 1's) is skipped. The watcher starts: the reset to run 2
    // forgot seq 1, the watcher went live at 0, and never got its run's end.
    const clock = new ManualClock();
    const store = new MemoryProgressStore({ clock: clock.now });
    const { hub, wentBack } = hubOver(store, false);
    await oldRunKeptAcrossPurge(hub, store, clock, [{ type: 'completed' }]);
    const watcher = recorder();
    const stream = hub.stream('job-1', 'alice', watcher.sink);
    const loaded = await stream.load();
    expect(loaded?.seq).toBe(0);
    clock.advance(1);
    await store.append('job-1', { type: 'completed' });
    await settle();
    stream.start(0, false, 0, loaded?.createdAt);
    await until(() => watcher.events.length > 0);
    await settle();
    expect(watcher.events.concat(watcher.calls)).toEqual(['completed@1']);
    expect(wentBack()).toBe(0);
  });
});

describe('a late change of the old run that cannot be told apart (no events)', () => {
  it('does not make the hub give up a commit of the new run announced during its last empty read', async () => {
    // Run 2's watcher is live at seq 0. Run 1's terminal change comes late without its events (too big for
    // a NOTIFY): seq 2, taken as run 2's, and every read of run 2 finds nothing after 0. During the read
    // the hub gives seq 2 up after (the fourth), run 2 commits completed@1 and its change comes, also
    // without events: seq 1 raises nothing (below 2), and the give-up dropped it: never read.
    const clock = new ManualClock();
    const store = new MemoryProgressStore({ clock: clock.now });
    let hubReads = 0;
    let duringFourthRead: (() => Promise<void>) | undefined;
    const { hub, emit } = hubOver(store, true, async (limit) => {
      if (limit !== HUB_READ) return;
      hubReads += 1;
      if (hubReads === 4) await duringFourthRead?.();
    });
    await runOneEndedAndPurged(store, clock);
    await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' });
    clock.advance(1);
    const { watcher } = await liveWatcher(hub);
    duringFourthRead = async () => {
      clock.advance(1);
      const end = (await store.append('job-1', { type: 'completed' })).event;
      emit({ taskId: 'job-1', seq: end.seq, terminal: true });
    };
    emit({ taskId: 'job-1', seq: 2, terminal: true });
    await until(() => hubReads >= 4);
    await settle();
    expect(watcher.events).toEqual(['completed@1']);
  });
});

describe('a late change of the old run told apart by its events', () => {
  it('costs one read of the new run and is not taken for a store that went back', async () => {
    // Run 2's watcher is live at seq 0. Run 1's terminal change comes late with its completed@2, stamped
    // before run 2 was created: only a hint. Its seq raised the seq the hub reads to, reads found nothing,
    // and the hub read again and again, then gave seq 2 up as a restore's and had the server read the
    // store's epoch. It is read once; nothing there settles it.
    const clock = new ManualClock();
    const store = new MemoryProgressStore({ clock: clock.now });
    let hubReads = 0;
    const { hub, emit, wentBack } = hubOver(store, true, async (limit) => {
      if (limit === HUB_READ) hubReads += 1;
    });
    const old = await runOneEndedAndPurged(store, clock);
    await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' });
    clock.advance(1);
    const { watcher } = await liveWatcher(hub);
    emit({ taskId: 'job-1', seq: 2, terminal: true, events: old.slice(1) });
    await until(() => hubReads > 0);
    await settle();
    expect(hubReads).toBe(1);
    expect(wentBack()).toBe(0);
    expect(hub.latestSeq('job-1')).toBe(0);
    // Run 2's own end, announced without events, is read as usual.
    clock.advance(1);
    const end = (await store.append('job-1', { type: 'completed' })).event;
    emit({ taskId: 'job-1', seq: end.seq, terminal: true });
    await until(() => watcher.events.length > 0);
    expect(watcher.events.concat(watcher.calls)).toEqual(['completed@1']);
  });
});

describe("a stream's read of the old run that resolves after the reset to the new run", () => {
  it('is not kept for the watchers of the new run', async () => {
    // Run 1 (item@1, completed@2). Watcher C resumes from 0: its backlog read of run 1 is held in flight.
    // Run 1 is purged, run 2 created (progress@1, item@2), and A's start of run 2 resets the hub. C's read
    // resolves: its run 1 events were kept as the hub's latest (readSeq 2 now), and B, resuming run 2
    // from 0, was served run 1's item@1 and completed@2 from memory. (C is started over, and handed nothing
    // of its read: one that resolves once the id is another run's cannot tell whose events it got, see
    // `TaskStream`'s `#ofRun`.)
    const clock = new ManualClock();
    const store = new MemoryProgressStore({ clock: clock.now });
    let gate: Promise<void> | undefined;
    const { hub } = hubOver(store, true, async (limit) => {
      if (limit === 100) await gate;
    });
    await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' });
    clock.advance(1);
    await store.append('job-1', { type: 'item', key: 'old-1', ok: true });
    clock.advance(1);
    await store.append('job-1', { type: 'completed' });
    let open!: () => void;
    gate = new Promise((resolve) => {
      open = resolve;
    });
    const c = recorder();
    const cs = hub.stream('job-1', 'bob', c.sink);
    const cl = await cs.load();
    cs.resume(0, 2, cl?.createdAt);
    await settle();
    clock.advance(1);
    expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(1);
    clock.advance(1);
    await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' });
    clock.advance(1);
    await store.append('job-1', { type: 'progress', message: 'new' });
    clock.advance(1);
    await store.append('job-1', { type: 'item', key: 'new-1', ok: true });
    const a = recorder();
    const as = hub.stream('job-1', 'alice', a.sink);
    const al = await as.load();
    as.start(2, false, 2, al?.createdAt);
    await settle();
    gate = undefined;
    open();
    await until(() => c.calls.length > 0);
    await settle();
    expect(c.events).toEqual([]);
    expect(c.calls).toContain('restart');
    const b = recorder();
    const bs = hub.stream('job-1', 'carol', b.sink);
    const bl = await bs.load();
    bs.resume(0, 2, bl?.createdAt);
    await until(() => b.events.length > 0);
    await settle();
    expect(b.events.concat(b.calls)).toEqual(['progress@1', 'item@2']);
  });
});
