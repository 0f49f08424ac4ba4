import type { TaskEvent } from '@finishline/core';
import { MemoryProgressStore } from '@finishline/core';
import { ManualClock } from '@finishline/core/testing';
import { describe, expect, it } from 'vitest';
import { HUB_READ, useHubs } from '../testing/hub-over.js';
import { recorder, settle, until } from '../testing/stream-recorder.js';
import type { TaskHub } from './task-hub.js';

/**
 * A change names its task's run (`TaskChange.run`) when the feed knows it. A replica follows run 1 of an
 * id at seq 3 and hears nothing of its end, its purge, or the id created again and written past seq 3
 * (a Postgres listener back from a reconnect, run 2 quickly passing run 1's seq). The first change it
 * hears of run 2 is above the seq it holds: without the run, the hub read run 2's events after seq 3 and
 * handed them to run 1's watcher as its own (a terminal of another run included). With it, the hub
 * starts over on run 2 and restarts the watcher before anything of run 2 goes out.
 */

const { hubOver } = useHubs();

type Emit = (change: {
  taskId: string;
  seq: number;
  terminal: boolean;
  run?: number;
  events?: TaskEvent[];
}) => void;

/**
 * Run 1 of `job-1` created and watched through `hub` from its start, `heard` events appended to it and
 * their changes emitted with their run and events. Returns the watcher and run 1's task.
 */
async function runOneThenRunTwo(
  hub: TaskHub,
  emit: Emit,
  store: MemoryProgressStore,
  clock: ManualClock,
  heard: number,
) {
  const one = await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' });
  const watcher = recorder();
  const stream = hub.stream('job-1', 'alice', watcher.sink);
  const loaded = await stream.load();
  stream.start(0, false, 0, loaded?.createdAt);
  await until(() => watcher.caughtUp() > 0);
  for (let i = 1; i <= heard; i++) {
    clock.advance(1);
    const { event } = await store.append('job-1', { type: 'progress', message: `old ${i}` });
    emit({ taskId: 'job-1', seq: event.seq, terminal: false, run: one.createdAt, events: [event] });
  }
  await until(() => watcher.events.length === heard);
  return { watcher, one };
}

/** Run 1's end (unheard), its purge, and run 2 created; returns run 2's creation time. */
async function purgedAndCreatedAgain(store: MemoryProgressStore, clock: ManualClock): Promise<number> {
  clock.advance(1);
  await store.append('job-1', { type: 'completed' });
  return createdAgain(store, clock);
}

/** Run 1, ended already, purged by retention and its id taken again: the new run's `createdAt`. */
async function createdAgain(store: MemoryProgressStore, clock: ManualClock): Promise<number> {
  clock.advance(1);
  expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(1);
  clock.advance(1);
  return (await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' })).createdAt;
}

/** `count` items appended to run 2, unheard; returns their events. */
async function runTwoItems(store: MemoryProgressStore, clock: ManualClock, count: number) {
  const events: TaskEvent[] = [];
  for (let i = 1; i <= count; i++) {
    clock.advance(1);
    events.push((await store.append('job-1', { type: 'item', key: `new-${i}`, ok: true })).event);
  }
  return events;
}

/** Counts the reads of a task the hub makes from now on (its checks of the task's run). */
function countTaskReads(store: MemoryProgressStore): () => number {
  let reads = 0;
  const getTask = store.getTask.bind(store);
  store.getTask = (taskId) => {
    reads += 1;
    return getTask(taskId);
  };
  return () => reads;
}

/** A store on a manual clock and a hub over it whose change feed the test drives through `emit`. */
function drivenHub() {
  const clock = new ManualClock();
  const store = new MemoryProgressStore({ clock: clock.now });
  return { clock, store, ...hubOver(store, true) };
}

/**
 * Waits for the watcher's restart (or for an event past `kept`), then asserts it was restarted once and
 * handed `kept` only.
 */
async function expectRestarted(watcher: ReturnType<typeof recorder>, kept: string[]) {
  await until(() => watcher.calls.length > 0 || watcher.events.length > kept.length);
  await settle();
  expect(watcher.events).toEqual(kept);
  expect(watcher.calls).toEqual(['restart']);
}

/** A watcher of `job-1` from its start, through `hub`, whose load found the run created at `run`. */
async function watchFromStart(hub: TaskHub, run: number) {
  const watcher = recorder();
  const stream = hub.stream('job-1', 'alice', watcher.sink);
  const loaded = await stream.load();
  expect(loaded?.createdAt).toBe(run);
  stream.start(0, false, 0, loaded?.createdAt);
  await until(() => watcher.caughtUp() > 0);
  return watcher;
}

/** A first event appended to the run created at `run` and heard with it: `watcher` gets it and nothing else. */
async function expectOwnEventHandedOver(
  { clock, store, emit }: { clock: ManualClock; store: MemoryProgressStore; emit: Emit },
  watcher: ReturnType<typeof recorder>,
  run: number,
) {
  clock.advance(1);
  const { event } = await store.append('job-1', { type: 'progress', message: 'new' });
  emit({ taskId: 'job-1', seq: event.seq, terminal: false, run, events: [event] });
  await until(() => watcher.events.length > 0);
  expect(watcher.events).toEqual(['progress@1']);
  expect(watcher.calls).toEqual([]);
}

describe("a change of the id's later run, heard first above the seq the hub holds", () => {
  for (const withEvents of [false, true]) {
    it(`restarts the old run's watcher before any of the new run's events go out (change ${withEvents ? 'with' : 'without'} events)`, async () => {
      const { clock, store, hub, emit } = drivenHub();
      const { watcher } = await runOneThenRunTwo(hub, emit, store, clock, 3);
      const two = await purgedAndCreatedAgain(store, clock);
      const items = await runTwoItems(store, clock, 5);
      emit({
        taskId: 'job-1',
        seq: 5,
        terminal: false,
        run: two,
        ...(withEvents ? { events: items.slice(3) } : {}),
      });
      await expectRestarted(watcher, ['progress@1', 'progress@2', 'progress@3']);
    });
  }

  it("hands the new run's events to a watcher of the new run once it loaded it", async () => {
    const { clock, store, hub, emit } = drivenHub();
    const { watcher } = await runOneThenRunTwo(hub, emit, store, clock, 3);
    const two = await purgedAndCreatedAgain(store, clock);
    await runTwoItems(store, clock, 5);
    emit({ taskId: 'job-1', seq: 5, terminal: false, run: two });
    await until(() => watcher.calls.length > 0);
    // What a restarted subscriber's owner does: a new stream of the id, from its load.
    const next = recorder();
    const stream = hub.stream('job-1', 'alice', next.sink);
    const loaded = await stream.load();
    expect(loaded?.createdAt).toBe(two);
    stream.start(loaded?.seq ?? 0, false, loaded?.seq ?? 0, loaded?.createdAt);
    await until(() => next.caughtUp() > 0);
    clock.advance(1);
    const { event } = await store.append('job-1', { type: 'completed' });
    emit({ taskId: 'job-1', seq: event.seq, terminal: true, run: two, events: [event] });
    await until(() => next.events.length > 0);
    expect(next.events).toEqual(['completed@6']);
  });

  it("restarts the old run's watcher when this process appended to the new run", async () => {
    const { clock, store, hub, emit } = drivenHub();
    const { watcher } = await runOneThenRunTwo(hub, emit, store, clock, 3);
    await purgedAndCreatedAgain(store, clock);
    await runTwoItems(store, clock, 3);
    clock.advance(1);
    const result = await store.append('job-1', { type: 'item', key: 'new-4', ok: true });
    hub.publishLocal(result.event, result.task.createdAt);
    await expectRestarted(watcher, ['progress@1', 'progress@2', 'progress@3']);
  });
});

describe('a change of an earlier run of the id than the one followed', () => {
  it('is dropped: no read for it, no sign of a restore', async () => {
    const { clock, store, hub, emit, wentBack } = drivenHub();
    const one = (await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' })).createdAt;
    const two = await purgedAndCreatedAgain(store, clock);
    const watcher = await watchFromStart(hub, two);
    // Run 1's changes heard late, ids only: above anything run 2 holds, and never to be found in it.
    emit({ taskId: 'job-1', seq: 9, terminal: false, run: one });
    emit({ taskId: 'job-1', seq: 10, terminal: true, run: one });
    await settle();
    await settle();
    expect(wentBack()).toBe(0);
    await expectOwnEventHandedOver({ clock, store, emit }, watcher, two);
  });
});

describe('a change of a purged run of the id, delivered again after the id was created again', () => {
  // The Postgres feed may deliver a change late or twice (its contract allows it): seen once in 150 runs,
  // run 1's change re-delivered after its purge and the id's re-creation, its events included. Its run
  // alone tells it apart: its seq is the next one run 2's watcher waits for, and its event is stamped at
  // run 2's creation (replicas' clocks skewed), so neither its seq nor its time gives it away.
  it("hands none of its events to the new run's watcher, whose own events follow", async () => {
    const { clock, store, hub, emit, wentBack } = drivenHub();
    const one = (await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' })).createdAt;
    clock.advance(1);
    const { event: old } = await store.append('job-1', { type: 'item', key: 'old', ok: true });
    const two = await purgedAndCreatedAgain(store, clock);
    const watcher = await watchFromStart(hub, two);
    emit({ taskId: 'job-1', seq: old.seq, terminal: false, run: one, events: [{ ...old, time: two }] });
    await settle();
    await settle();
    expect(watcher.events).toEqual([]);
    expect(wentBack()).toBe(0);
    await expectOwnEventHandedOver({ clock, store, emit }, watcher, two);
  });
});

describe("a read of the hub's that finds events past the end of the run it follows", () => {
  it("restarts the watcher instead of handing it another run's events after its run's end", async () => {
    const { clock, store, hub, emit } = drivenHub();
    const { watcher, one } = await runOneThenRunTwo(hub, emit, store, clock, 3);
    clock.advance(1);
    const { event: end } = await store.append('job-1', { type: 'completed' });
    emit({ taskId: 'job-1', seq: 4, terminal: true, run: one.createdAt, events: [end] });
    await until(() => watcher.events.length === 4);
    await createdAgain(store, clock);
    await runTwoItems(store, clock, 6);
    // Heard without its run (a safety-net poll, a store of an older version): only a read sees it.
    emit({ taskId: 'job-1', seq: 6, terminal: false });
    await expectRestarted(watcher, ['progress@1', 'progress@2', 'progress@3', 'completed@4']);
  });

  it('hands over none of a read that holds an event past the end, not even those before it', async () => {
    // The hub heard its run's end (seq 5) while it held seq 3, and read the id after retention purged that
    // run and the id was written again up to seq 6: one store read is one run's, so run 2's seq 4, before
    // the end, is run 2's as much as its seq 5. Handed over, run 1's watcher got it as its own.
    const { clock, store, hub, emit } = drivenHub();
    const { watcher, one } = await runOneThenRunTwo(hub, emit, store, clock, 3);
    clock.advance(1);
    await store.append('job-1', { type: 'progress', message: 'old 4' });
    await purgedAndCreatedAgain(store, clock);
    await runTwoItems(store, clock, 6);
    // Run 1's end, heard late and ids only (its events did not fit the notice).
    emit({ taskId: 'job-1', seq: 5, terminal: true, run: one.createdAt });
    await expectRestarted(watcher, ['progress@1', 'progress@2', 'progress@3']);
  });
});

describe("a read of the hub's that stops short of the end of the run it follows", () => {
  it("restarts the watcher instead of handing it the later run's events below that end", async () => {
    // The hub held seq 3 of run 1 and heard its end (seq 5, ids only) after retention purged that run and
    // the id was written again up to seq 4 only: the read it starts after that end finds run 2's seq 4,
    // which follows on from seq 3 and stays below the end, and went out to run 1's watcher as its own.
    const { clock, store, hub, emit } = drivenHub();
    const { watcher, one } = await runOneThenRunTwo(hub, emit, store, clock, 3);
    clock.advance(1);
    await store.append('job-1', { type: 'progress', message: 'old 4' });
    await purgedAndCreatedAgain(store, clock);
    await runTwoItems(store, clock, 4);
    emit({ taskId: 'job-1', seq: 5, terminal: true, run: one.createdAt });
    await expectRestarted(watcher, ['progress@1', 'progress@2', 'progress@3']);
  });

  it('reads again at once, not the task, when the end was heard while the read ran: the run is its own', async () => {
    // The read of seq 4 was served before the run's end (seq 5) was committed and heard: it stops short of
    // that end, its own run's all the same. Read again, it finds the end; checked for its run, the end
    // waited for that read and a retry delay (a second by default) on a task that ended under a read.
    const clock = new ManualClock();
    const store = new MemoryProgressStore({ clock: clock.now });
    let ending = false;
    let one: Awaited<ReturnType<typeof runOneThenRunTwo>>['one'] | undefined;
    const { hub, emit } = hubOver(store, true, async (limit) => {
      if (!ending || limit !== HUB_READ || one === undefined) return;
      ending = false;
      clock.advance(1);
      const { event } = await store.append('job-1', { type: 'completed' });
      emit({ taskId: 'job-1', seq: event.seq, terminal: true, run: one.createdAt });
    });
    const run = await runOneThenRunTwo(hub, emit, store, clock, 3);
    one = run.one;
    const taskReads = countTaskReads(store);
    clock.advance(1);
    await store.append('job-1', { type: 'progress', message: 'old 4' });
    ending = true;
    emit({ taskId: 'job-1', seq: 4, terminal: false, run: one.createdAt });
    await until(() => run.watcher.events.length === 5);
    expect(run.watcher.events).toEqual([
      'progress@1',
      'progress@2',
      'progress@3',
      'progress@4',
      'completed@5',
    ]);
    expect(run.watcher.calls).toEqual([]);
    expect(taskReads()).toBe(0);
  });
});

/**
 * A watcher of run 1 of `job-1` (ended at seq 5) resumed from `cursor` once run 1 was purged and the id
 * written again up to seq `laterSeq`, all unheard: restarted, and handed nothing of run 2. As its owners
 * do, a restarted stream is replaced, and nothing of it reaches them any more.
 */
async function expectRestartedOnly(laterSeq: number, cursor: number): Promise<void> {
  const clock = new ManualClock();
  const store = new MemoryProgressStore({ clock: clock.now });
  const { hub } = hubOver(store, true);
  await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' });
  for (let i = 1; i <= 4; i++) {
    clock.advance(1);
    await store.append('job-1', { type: 'progress', message: `old ${i}` });
  }
  clock.advance(1);
  await store.append('job-1', { type: 'completed' });
  const watcher = recorder();
  const stream = hub.stream('job-1', 'alice', {
    ...watcher.sink,
    restart: () => {
      watcher.sink.restart();
      stream.close();
    },
  });
  const loaded = await stream.load();
  await createdAgain(store, clock);
  await runTwoItems(store, clock, laterSeq);
  stream.resume(cursor, loaded?.seq ?? 0, loaded?.createdAt);
  await until(() => watcher.calls.length > 0 || watcher.events.length > 0);
  await settle();
  expect(loaded?.seq).toBe(5);
  expect(watcher.events).toEqual([]);
  expect(watcher.calls).toEqual(['restart']);
}

describe("a stream's catch-up read that stops short of the seq its load found", () => {
  it("restarts the watcher instead of handing it the later run's events as its own", async () => {
    // A resume from seq 3 loaded run 1 at its end (seq 5); its catch-up read ran after retention purged
    // run 1 and the id was written again up to seq 4, all unheard: the read found run 2's seq 4, which
    // follows on from the cursor, and it went out to the watcher as run 1's.
    await expectRestartedOnly(4, 3);
  });
});

describe("a resume's answer read after its run was purged and the id created again", () => {
  it('restarts the watcher and hands it nothing of the later run', async () => {
    // A resume at run 1's seq (nothing to read after it: the catch-up reads the task to answer it) whose
    // read of the task found run 2: the hub restarted the watcher (its owner replaced the stream), and the
    // stream, stale, still handed it a reset snapshot of run 2 as its answer. The owners drop it (they
    // check that the stream is current); the stream does not hand it over, as its catch-up's load does not.
    await expectRestartedOnly(2, 5);
  });
});

describe('a read of the hub that finds the task gone', () => {
  it('restarts the watcher once instead of reading again every retry delay for ever', async () => {
    // The hub held seq 3 of run 1 and heard its end (seq 4, ids only) after retention purged it, with no
    // run of the id since: its read of seq 4 fails task_not_found. Taken for a store failure, it was retried
    // every retryDelayMs while the watcher followed, and the watcher, told nothing, waited for ever.
    const clock = new ManualClock();
    const store = new MemoryProgressStore({ clock: clock.now });
    let reads = 0;
    const { hub, emit } = hubOver(store, true);
    const { watcher, one } = await runOneThenRunTwo(hub, emit, store, clock, 3);
    clock.advance(1);
    await store.append('job-1', { type: 'completed' });
    clock.advance(1);
    expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(1);
    const readEvents = store.readEvents.bind(store);
    store.readEvents = (...args) => {
      reads += 1;
      return readEvents(...args);
    };
    emit({ taskId: 'job-1', seq: 4, terminal: true, run: one.createdAt });
    await expectRestarted(watcher, ['progress@1', 'progress@2', 'progress@3']);
    // One read found the task gone, and none followed it (retried, one per 5 ms).
    expect(reads).toBe(1);
  });
});

describe("a seq of the run followed that the hub's reads never find", () => {
  for (const named of [true, false]) {
    it(`restarts the watcher when the id holds a later run below that seq (change ${named ? 'naming its run' : 'without a run'})`, async () => {
      // The hub held seq 2 of run 1 and heard its end (seq 4, ids only) after retention purged it and run 2
      // was created with one event: its reads find nothing after seq 2. It gave the seq up as a restore's
      // (a sign the server found no restore in) and the watcher, told nothing, waited for ever.
      const { clock, store, hub, emit } = drivenHub();
      const { watcher, one } = await runOneThenRunTwo(hub, emit, store, clock, 2);
      clock.advance(1);
      await store.append('job-1', { type: 'progress', message: 'old 3' });
      await purgedAndCreatedAgain(store, clock);
      await runTwoItems(store, clock, 1);
      emit({ taskId: 'job-1', seq: 4, terminal: true, ...(named ? { run: one.createdAt } : {}) });
      await expectRestarted(watcher, ['progress@1', 'progress@2']);
    });
  }
});

describe('the end of the run followed, however the hub heard it, bounds what a later read hands out', () => {
  // Each way the hub learns the run's end sets that end on its own; the read after it finds run 2's
  // events past it (unheard: a safety-net poll's change without a run) and restarts the watcher.
  const ends = [
    'a local append',
    'a change with events and no run',
    'a change of ids only and no run',
  ] as const;
  for (const how of ends) {
    it(`restarts the watcher instead of handing it run 2's events (end heard by ${how})`, async () => {
      const { clock, store, hub, emit } = drivenHub();
      const { watcher } = await runOneThenRunTwo(hub, emit, store, clock, 3);
      clock.advance(1);
      const result = await store.append('job-1', { type: 'completed' });
      if (how === 'a local append') hub.publishLocal(result.event, result.task.createdAt);
      else if (how === 'a change with events and no run')
        emit({ taskId: 'job-1', seq: 4, terminal: true, events: [result.event] });
      else emit({ taskId: 'job-1', seq: 4, terminal: true });
      await until(() => watcher.events.length === 4);
      await createdAgain(store, clock);
      await runTwoItems(store, clock, 6);
      emit({ taskId: 'job-1', seq: 6, terminal: false });
      await expectRestarted(watcher, ['progress@1', 'progress@2', 'progress@3', 'completed@4']);
    });
  }

  it("takes an event of run 2 at the end's seq, read after a change named run 1's end, for another run's", async () => {
    const { clock, store, hub, emit } = drivenHub();
    const { watcher, one } = await runOneThenRunTwo(hub, emit, store, clock, 3);
    // Run 1 ends, is purged and created again, and run 2 reaches seq 4 with an item, all unheard; then
    // run 1's end is heard, ids only: the read it starts finds run 2's item at the end's seq.
    await purgedAndCreatedAgain(store, clock);
    await runTwoItems(store, clock, 4);
    emit({ taskId: 'job-1', seq: 4, terminal: true, run: one.createdAt });
    await expectRestarted(watcher, ['progress@1', 'progress@2', 'progress@3']);
  });

  it("hands out the run's own end, read after a change of ids only that named it", async () => {
    const { clock, store, hub, emit } = drivenHub();
    const { watcher, one } = await runOneThenRunTwo(hub, emit, store, clock, 3);
    clock.advance(1);
    await store.append('job-1', { type: 'completed' });
    emit({ taskId: 'job-1', seq: 4, terminal: true, run: one.createdAt });
    await until(() => watcher.events.length === 4 || watcher.calls.length > 0);
    await settle();
    expect(watcher.events).toEqual(['progress@1', 'progress@2', 'progress@3', 'completed@4']);
    expect(watcher.calls).toEqual([]);
  });
});
