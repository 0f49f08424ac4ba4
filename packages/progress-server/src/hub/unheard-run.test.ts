import type { TaskEvent } from '@finishline/core';
import { LocalChangeFeed, MemoryProgressStore } from '@finishline/core';
import { ManualClock } from '@finishline/core/testing';
import { describe, expect, it } from 'vitest';
import { useHubs } from '../testing/hub-over.js';
import { useServerSession } from '../testing/session.js';
import { recorder, settle, until } from '../testing/stream-recorder.js';
import type { TaskHub } from './task-hub.js';

/**
 * A replica follows run 1 of an id at seq 3 and hears nothing of its end, its purge, or the id created
 * again (its feed missed them: a SQLite store polls after the purge deleted run 1's last events, a
 * Postgres listener was away). Run 2's changes then come at seqs the hub already holds: taken for
 * duplicates, they were dropped, and the watcher of run 1 waited for ever (no event, no reset, no
 * task_not_found); once run 2 passed seq 3, its events went out as run 1's. A change at or below what the
 * hub holds has it read the task once: another run (or none) restarts the task's streams.
 */

const session = useServerSession();
const { hubOver } = useHubs();

/**
 * Run 1 of `job-1` watched from its start through `hub` (its changes emitted, with their events) up to
 * seq 3; then, unheard, its end at seq 4, its purge and run 2's creation. Returns the watcher.
 */
async function runOneLeftAtThree(
  hub: TaskHub,
  emit: (change: { taskId: string; seq: number; terminal: boolean; events?: TaskEvent[] }) => void,
  store: MemoryProgressStore,
  clock: ManualClock,
) {
  await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' });
  const watcher = recorder();
  const stream = hub.stream('job-1', 'alice', watcher.sink);
  const loaded = await stream.load();
  stream.start(0, false, 0, loaded?.createdAt);
  await until(() => watcher.caughtUp() > 0);
  for (let i = 1; i <= 3; i++) {
    clock.advance(1);
    const { event } = await store.append('job-1', { type: 'progress', message: `old ${i}` });
    emit({ taskId: 'job-1', seq: event.seq, terminal: false, events: [event] });
  }
  await until(() => watcher.events.length === 3);
  // Never heard by this replica.
  clock.advance(1);
  await store.append('job-1', { type: 'completed' });
  clock.advance(1);
  expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(1);
  clock.advance(1);
  await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' });
  return watcher;
}

describe("a watcher of a run whose end, purge and the id's new run the hub never heard", () => {
  for (const withEvents of [true, false]) {
    it(`is restarted when the new run ends at a seq the hub holds (changes ${withEvents ? 'with' : 'without'} events)`, async () => {
      const clock = new ManualClock();
      const store = new MemoryProgressStore({ clock: clock.now });
      const { hub, emit } = hubOver(store, true);
      const watcher = await runOneLeftAtThree(hub, emit, store, clock);
      for (const input of [{ type: 'item', key: 'new-1', ok: true }, { type: 'completed' }] as const) {
        clock.advance(1);
        const { event } = await store.append('job-1', input);
        emit({
          taskId: 'job-1',
          seq: event.seq,
          terminal: event.type === 'completed',
          ...(withEvents ? { events: [event] } : {}),
        });
      }
      await until(() => watcher.calls.length > 0);
      await settle();
      expect(watcher.calls).toEqual(['restart']);
      expect(watcher.events).toEqual(['progress@1', 'progress@2', 'progress@3']);
    });
  }

  it("is restarted, not handed the new run's events past its seq as its own run's", async () => {
    const clock = new ManualClock();
    const store = new MemoryProgressStore({ clock: clock.now });
    const { hub, emit } = hubOver(store, true);
    const watcher = await runOneLeftAtThree(hub, emit, store, clock);
    for (let i = 1; i <= 5; i++) {
      clock.advance(1);
      const { event } = await store.append('job-1', { type: 'item', key: `new-${i}`, ok: true });
      emit({ taskId: 'job-1', seq: event.seq, terminal: false, events: [event] });
    }
    await until(() => watcher.calls.length > 0 || watcher.events.length > 3);
    await settle();
    expect(watcher.events).toEqual(['progress@1', 'progress@2', 'progress@3']);
    expect(watcher.calls).toEqual(['restart']);
  });

  for (const terminal of [false, true]) {
    it(`is restarted, not handed the new run's ${terminal ? 'end' : 'event'} heard first above its seq, by a feed that names no runs`, async () => {
      // A store whose feed does not name runs (`TaskChange.run` is optional): only a read tells them apart.
      // Run 2's first seqs went unheard too, and its change at seq 4 carries its event right after the seq
      // the hub holds: handed out from the change, it went out as run 1's own (its end, when terminal).
      const clock = new ManualClock();
      const store = new MemoryProgressStore({ clock: clock.now });
      const { hub, emit } = hubOver(store, true);
      const watcher = await runOneLeftAtThree(hub, emit, store, clock);
      for (let i = 1; i <= 3; i++) {
        clock.advance(1);
        await store.append('job-1', { type: 'item', key: `new-${i}`, ok: true });
      }
      clock.advance(1);
      const { event } = await store.append(
        'job-1',
        terminal ? { type: 'completed' } : { type: 'item', key: 'new-4', ok: true },
      );
      emit({ taskId: 'job-1', seq: event.seq, terminal, events: [event] });
      await until(() => watcher.calls.length > 0 || watcher.events.length > 3);
      await settle();
      expect(watcher.events).toEqual(['progress@1', 'progress@2', 'progress@3']);
      expect(watcher.calls).toEqual(['restart']);
    });
  }

  it('is restarted when the new run is gone too by the time the hub reads it', async () => {
    const clock = new ManualClock();
    const store = new MemoryProgressStore({ clock: clock.now });
    const { hub, emit } = hubOver(store, true);
    const watcher = await runOneLeftAtThree(hub, emit, store, clock);
    clock.advance(1);
    const { event } = await store.append('job-1', { type: 'completed' });
    clock.advance(1);
    expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(1);
    emit({ taskId: 'job-1', seq: event.seq, terminal: true, events: [event] });
    await until(() => watcher.calls.length > 0);
    await settle();
    expect(watcher.calls).toEqual(['restart']);
  });

  it('costs no read for a change the hub already heard of its own run', async () => {
    const clock = new ManualClock();
    const store = new MemoryProgressStore({ clock: clock.now });
    let getTasks = 0;
    const counted = new Proxy(store, {
      get(target, key) {
        if (key === 'getTask') {
          return (id: string) => {
            getTasks += 1;
            return target.getTask(id);
          };
        }
        const value: unknown = Reflect.get(target, key, target);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    });
    const { hub, emit } = hubOver(counted, true);
    await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' });
    const watcher = recorder();
    const stream = hub.stream('job-1', 'alice', watcher.sink);
    const loaded = await stream.load();
    stream.start(0, false, 0, loaded?.createdAt);
    await until(() => watcher.caughtUp() > 0);
    clock.advance(1);
    const { event } = await store.append('job-1', { type: 'progress', message: 'one' });
    // Read (a change without a run may be of a later run of the id), and held once handed out.
    emit({ taskId: 'job-1', seq: 1, terminal: false, events: [event] });
    await until(() => watcher.events.length === 1);
    const before = getTasks;
    // The same change again (at-least-once delivery): what the hub holds tells it is this run's.
    emit({ taskId: 'job-1', seq: 1, terminal: false, events: [event] });
    await settle();
    expect(watcher.events).toEqual(['progress@1']);
    expect(watcher.calls).toEqual([]);
    expect(getTasks).toBe(before);
  });
});

/**
 * A server over `store` whose change feed hears only while `hearing.on` (a replica whose feed missed
 * what happened meanwhile); the writes are another replica's, straight to the store.
 */
function deafAtTimes(store: MemoryProgressStore) {
  const hearing = { on: true };
  const feed = new LocalChangeFeed();
  store.changes.subscribe((change) => {
    if (hearing.on) feed.publish(change);
  });
  const seen = new Proxy(store, {
    get(target, key) {
      if (key === 'changes') return feed;
      const value: unknown = Reflect.get(target, key, target);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
  return { seen, hearing, feed };
}

/**
 * Run 1 of `job-1` at seq 3; the function returned then runs, unheard, run 1's end, its purge, run 2's
 * creation and its first event, and heard, run 2's end at seq 2.
 */
async function rerunUnheard(store: MemoryProgressStore, clock: ManualClock, hearing: { on: boolean }) {
  for (let i = 1; i <= 3; i++) {
    clock.advance(1);
    await store.append('job-1', { type: 'progress', message: `old ${i}` });
  }
  return async () => {
    hearing.on = false;
    clock.advance(1);
    await store.append('job-1', { type: 'completed' });
    clock.advance(1);
    expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(1);
    clock.advance(1);
    await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' });
    clock.advance(1);
    await store.append('job-1', { type: 'item', key: 'new-1', ok: true });
    hearing.on = true;
    clock.advance(1);
    await store.append('job-1', { type: 'completed' });
  };
}

describe('a socket subscription of a run the server never heard end', () => {
  it("gets a reset snapshot of the id's new run, ended at a seq the server held", async () => {
    const clock = new ManualClock();
    const store = new MemoryProgressStore({ clock: clock.now });
    const { seen, hearing } = deafAtTimes(store);
    await session.start({ store: seen });
    await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' });
    const watcher = await session.connect({ user: 'alice' });
    watcher.send({ type: 'subscribe', taskId: 'job-1', afterSeq: 0 });
    await watcher.next((frame) => frame.type === 'snapshot');
    const rerun = await rerunUnheard(store, clock, hearing);
    await watcher.next((frame) => frame.type === 'event' && (frame.event as { seq: number }).seq === 3);
    await rerun();
    const reset = await watcher.next((frame) => frame.type === 'snapshot' && frame.reset === true);
    expect(reset.task).toMatchObject({ seq: 2, status: 'completed', succeeded: 1 });
  });
});

describe('a socket subscription of a run the server never heard end, nor its id run again and purged', () => {
  it('gets task_not_found', async () => {
    const clock = new ManualClock();
    const store = new MemoryProgressStore({ clock: clock.now });
    const { seen, hearing, feed } = deafAtTimes(store);
    await session.start({ store: seen });
    await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' });
    const watcher = await session.connect({ user: 'alice' });
    watcher.send({ type: 'subscribe', taskId: 'job-1', afterSeq: 0 });
    await watcher.next((frame) => frame.type === 'snapshot');
    await rerunUnheard(store, clock, hearing);
    await watcher.next((frame) => frame.type === 'event' && (frame.event as { seq: number }).seq === 3);
    hearing.on = false;
    clock.advance(1);
    await store.append('job-1', { type: 'completed' });
    clock.advance(1);
    expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(1);
    clock.advance(1);
    await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' });
    clock.advance(1);
    await store.append('job-1', { type: 'completed' });
    clock.advance(1);
    expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(1);
    // Run 2's end, heard once it was purged too.
    feed.publish({ taskId: 'job-1', seq: 1, terminal: true });
    const gone = await watcher.next((frame) => frame.type === 'error');
    expect(gone).toMatchObject({ code: 'task_not_found', taskId: 'job-1' });
  });
});

describe('a Server-Sent Events stream of a run the server never heard end', () => {
  it("ends with a reset snapshot of the id's new run, ended at a seq the server held", async () => {
    const clock = new ManualClock();
    const store = new MemoryProgressStore({ clock: clock.now });
    const { seen, hearing } = deafAtTimes(store);
    const env = await session.start({ store: seen });
    await store.createTask({ id: 'job-1', owner: 'alice', kind: 'k' });
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
    /** Reads until `count` data messages arrived or the stream ended; gives up after a second. */
    const readUntil = async (count: number) => {
      const deadline = Date.now() + 1000;
      while (frames.length < count && !ended && Date.now() < deadline) {
        const next = await Promise.race([
          reader.read(),
          new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), deadline - Date.now())),
        ]);
        if (next === undefined) break;
        if (next.done) {
          ended = true;
          break;
        }
        text += decoder.decode(next.value, { stream: true });
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
    const rerun = await rerunUnheard(store, clock, hearing);
    await readUntil(4);
    expect(frames.length).toBe(4);
    await rerun();
    await readUntil(5);
    expect(frames[4]).toMatchObject({ type: 'snapshot', reset: true, task: { seq: 2, status: 'completed' } });
    await readUntil(6);
    expect(ended).toBe(true);
  });
});

/**
 * Found by a security review: alice's ended task `nightly` (seq 4), and, unheard and while `authorize`
 * answers about it, its purge and bob's task created under the id (ended at seq 6). The stream's resume read its
 * backlog from the store after the authorizing load, and the read names no run: bob's events went out as
 * alice's task's. Returns the server and the hook's calls (owners asked about).
 */
async function swappedWhileAuthorizing() {
  const clock = new ManualClock();
  const store = new MemoryProgressStore({ clock: clock.now });
  const { seen, hearing } = deafAtTimes(store);
  let swap: (() => Promise<void>) | undefined;
  const env = await session.start({
    store: seen,
    authorize: async (principal, task) => {
      const before = swap;
      swap = undefined;
      await before?.();
      return task.owner === principal.id;
    },
  });
  await store.createTask({ id: 'nightly', owner: 'alice', kind: 'k' });
  for (let i = 1; i <= 3; i++) await store.append('nightly', { type: 'progress', message: `alice ${i}` });
  await store.append('nightly', { type: 'completed' });
  swap = async () => {
    hearing.on = false;
    clock.advance(1);
    expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(1);
    await store.createTask({ id: 'nightly', owner: 'bob', kind: 'k' });
    for (let i = 1; i <= 5; i++) await store.append('nightly', { type: 'progress', message: `bob ${i}` });
    await store.append('nightly', { type: 'completed' });
  };
  return env;
}

describe("a resume whose task was purged and its id taken by another owner's, unheard, while authorize ran", () => {
  it("streams none of the new task's events over Server-Sent Events", async () => {
    const env = await swappedWhileAuthorizing();
    const response = await fetch(`${env.httpUrl}/progress/tasks/nightly/stream`, {
      headers: { 'x-user': 'alice', 'last-event-id': '1' },
    });
    // The stream starts over from a load of the id, bob's task, which alice may not watch: it ends.
    const text = await response.text();
    expect(text).not.toContain('bob');
    expect(text).not.toContain('data:');
  });

  it("sends none of the new task's events to a socket's subscription", async () => {
    await swappedWhileAuthorizing();
    const watcher = await session.connect({ user: 'alice' });
    watcher.send({ type: 'subscribe', taskId: 'nightly', afterSeq: 1 });
    const answer = await watcher.next((frame) => frame.type !== 'hello');
    expect(JSON.stringify(answer)).not.toContain('bob');
    expect(answer).toMatchObject({ type: 'error', code: 'task_not_found', taskId: 'nightly' });
  });
});
