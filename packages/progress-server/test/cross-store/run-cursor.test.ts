import type { ProgressStore, TaskEvent, TaskView } from '@finishline/core';
import { PROTOCOL_NAME_V1 } from '@finishline/core';
import { WatchCursor } from '@finishline/core/internal';
import { afterEach, describe, expect, it } from 'vitest';
import { RawClient, type Received, serverFrameViolations } from '../../src/testing/harness.js';
import { listenOn, STORE_FIXTURES } from './stores.js';

/**
 * A cursor carries no run: a watcher of a task id's purged run that comes back (a laptop asleep longer
 * than retention's age) subscribes from its cursor into the id's new run. When the new run has ended at
 * that very seq, the server answered with an unmarked snapshot at the cursor, which a client that already
 * applied frames ignores as stale (delivery rule 3), and did not re-send it (the client "had" that seq):
 * the watch waited for ever on a task that had ended. In one run a watch at seq n with the task ended at
 * n has that end, so only a cursor of another run (or one that knows only its seq) can be unfinished
 * there: the snapshot is marked `reset`, which such a client applies and which a finished watch ignores.
 */

const cleanups: Array<() => Promise<void>> = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  expect(serverFrameViolations.splice(0)).toEqual([]);
});

/** Feeds `client`'s frames about `taskId` from index `from` to `cursor` (rules of docs/protocol.md). */
function feed(client: RawClient, taskId: string, cursor: WatchCursor, from: number): number {
  let index = from;
  for (; index < client.frames.length; index += 1) {
    const frame = client.frames[index] as Received;
    if (frame.type === 'snapshot' && (frame.task as TaskView).id === taskId) {
      cursor.applySnapshot(frame.task as TaskView, frame.reset === true);
    } else if (frame.type === 'event' && (frame.event as TaskEvent).taskId === taskId) {
      cursor.applyEvent(frame.event as TaskEvent);
    }
  }
  return index;
}

async function until(condition: () => boolean, timeoutMs = 3000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  return true;
}

describe.each(STORE_FIXTURES)('a cursor of a purged run of the id ($name)', (fixture) => {
  async function serve(): Promise<{ store: ProgressStore; wsUrl: string; httpUrl: string }> {
    const { store, release } = await fixture.open();
    const { server, wsUrl, httpUrl } = await listenOn(store, {
      heartbeatIntervalMs: 200,
      terminalRetry: { initialDelayMs: 20, maxDelayMs: 40 },
    });
    cleanups.push(release);
    cleanups.push(() => server.close({ timeoutMs: 1000 }));
    return { store, wsUrl, httpUrl };
  }

  async function connect(wsUrl: string, protocols?: string[]): Promise<RawClient> {
    const client = await RawClient.connect(wsUrl, { user: 'alice', ...(protocols ? { protocols } : {}) });
    cleanups.push(async () => {
      await client.close();
    });
    return client;
  }

  /**
   * Run 1 of `job-1` watched to seq 3 (a snapshot, then three events applied), the watcher gone; run 1
   * then ends, is purged, and run 2 of the id ends at seq 3. Returns the watcher's cursor.
   */
  async function watcherOfRunOneAtThree(store: ProgressStore, wsUrl: string): Promise<WatchCursor> {
    await store.createTask({ id: 'job-1', owner: 'alice', kind: 'first' });
    const cursor = new WatchCursor('job-1');
    const first = await connect(wsUrl);
    first.send({ type: 'subscribe', taskId: 'job-1', afterSeq: 0 });
    await first.next((frame) => frame.type === 'snapshot');
    let read = 0;
    for (let i = 1; i <= 3; i++) await store.append('job-1', { type: 'progress', message: `run 1, ${i}` });
    const caughtUp = await until(() => {
      read = feed(first, 'job-1', cursor, read);
      return cursor.seq === 3;
    });
    expect(caughtUp).toBe(true);
    await first.close();
    await store.append('job-1', { type: 'completed' });
    // Retention leaves a task in the millisecond it was created (its id taken again would be the same run).
    await new Promise((resolve) => setTimeout(resolve, 2));
    expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(1);
    await store.createTask({ id: 'job-1', owner: 'alice', kind: 'second', total: 2 });
    await store.append('job-1', { type: 'item', key: 'a', ok: true });
    await store.append('job-1', { type: 'item', key: 'b', ok: true });
    await store.append('job-1', { type: 'completed', result: { run: 2 } });
    return cursor;
  }

  it("comes back at the seq the new run ended at: the watch gets the new run's end, not silence", async () => {
    const { store, wsUrl } = await serve();
    const cursor = await watcherOfRunOneAtThree(store, wsUrl);
    expect(cursor.finished).toBe(false);
    const second = await connect(wsUrl);
    second.send({ type: 'subscribe', taskId: 'job-1', afterSeq: cursor.seq });
    let read = 0;
    await until(() => {
      read = feed(second, 'job-1', cursor, read);
      return cursor.finished;
    });
    expect(cursor.finished).toBe(true);
    expect(cursor.view).toMatchObject({ kind: 'second', status: 'completed', result: { run: 2 }, seq: 3 });
    second.send({ type: 'ack', taskId: 'job-1', seq: 3 });
    await second.sync();
    expect(second.frames.filter((frame) => frame.type === 'error')).toEqual([]);
  });

  it('a finished watch resumed at its end stays finished, and the end is not re-sent (it said it has it)', async () => {
    const { store, wsUrl } = await serve();
    await store.createTask({ id: 'job-2', owner: 'alice', kind: 'k' });
    await store.append('job-2', { type: 'completed', result: 1 });
    const cursor = new WatchCursor('job-2');
    const client = await connect(wsUrl);
    client.send({ type: 'subscribe', taskId: 'job-2', afterSeq: 0 });
    await client.next((frame) => frame.type === 'snapshot');
    let read = feed(client, 'job-2', cursor, 0);
    expect(cursor.finished).toBe(true);
    client.send({ type: 'ack', taskId: 'job-2', seq: 1 });
    const from = client.frames.length;
    client.send({ type: 'subscribe', taskId: 'job-2', afterSeq: 1 });
    const answer = await client.next((frame) => frame.type === 'snapshot', { from });
    expect(answer).toMatchObject({ reset: true, task: { seq: 1, status: 'completed' } });
    read = feed(client, 'job-2', cursor, read);
    expect(cursor.view).toMatchObject({ status: 'completed', seq: 1, result: 1 });
    await new Promise((resolve) => setTimeout(resolve, 400));
    expect(client.frames.slice(from).filter((frame) => frame.type === 'snapshot')).toHaveLength(1);
    expect(client.frames.filter((frame) => frame.type === 'error')).toEqual([]);
  });

  it('a version-1 socket is answered as before: an unmarked snapshot', async () => {
    const { store, wsUrl } = await serve();
    await store.createTask({ id: 'job-3', owner: 'alice', kind: 'k' });
    await store.append('job-3', { type: 'completed' });
    const client = await connect(wsUrl, [PROTOCOL_NAME_V1]);
    client.send({ type: 'subscribe', taskId: 'job-3', afterSeq: 1 });
    const snapshot = await client.next((frame) => frame.type === 'snapshot');
    expect(snapshot.reset).toBeUndefined();
  });

  it("over Server-Sent Events, the purged run's Last-Event-ID at the seq the new run ended at gets that end, not a 204", async () => {
    const { store, httpUrl } = await serve();
    await store.createTask({ id: 'job-4', owner: 'alice', kind: 'first' });
    for (let i = 1; i <= 3; i++) await store.append('job-4', { type: 'progress', message: `run 1, ${i}` });
    const url = `${httpUrl}/progress/tasks/job-4/stream`;
    // The id the stream of run 1 wrote for seq 3, as EventSource keeps it when the stream is cut there.
    const abort = new AbortController();
    const first = await fetch(url, { headers: { 'x-user': 'alice' }, signal: abort.signal });
    const reader = (first.body as ReadableStream<Uint8Array>).getReader();
    let text = '';
    while (!/^id: 3\S*$/m.test(text)) {
      const { value, done } = await reader.read();
      if (done) break;
      text += new TextDecoder().decode(value);
    }
    abort.abort();
    const lastEventId = /^id: (3\S*)$/m.exec(text)?.[1] as string;
    expect(lastEventId).toMatch(/^3~/);
    await store.append('job-4', { type: 'completed' });
    await new Promise((resolve) => setTimeout(resolve, 2));
    expect(await store.purgeFinished({ olderThanMs: 0 })).toBe(1);
    await store.createTask({ id: 'job-4', owner: 'alice', kind: 'second', total: 2 });
    await store.append('job-4', { type: 'item', key: 'a', ok: true });
    await store.append('job-4', { type: 'item', key: 'b', ok: true });
    await store.append('job-4', { type: 'completed', result: { run: 2 } });
    const again = await fetch(url, { headers: { 'x-user': 'alice', 'last-event-id': lastEventId } });
    expect(again.status).toBe(200);
    const frames = [...(await again.text()).matchAll(/^data: (.*)$/gm)].map((line) =>
      JSON.parse(line[1] as string),
    );
    expect(frames).toEqual([
      expect.objectContaining({
        type: 'snapshot',
        reset: true,
        task: expect.objectContaining({ kind: 'second', status: 'completed', seq: 3, result: { run: 2 } }),
      }),
    ]);
  });
});
