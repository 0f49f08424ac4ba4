import type { TaskEvent, TaskView } from '@finishline/core';
import { afterEach, describe, expect, it } from 'vitest';
import { restorableStore, startServer, type TestServer } from '../testing/harness.js';

/**
 * A restore and its renewal of the store's epoch straddling one `GET …/tasks/:id` or `…/events`
 * request, at every point between the route's store reads (the task, the epoch after it, the events,
 * the task again, the epoch again). Whatever the point, an answer is 503 `store_unavailable` or all of
 * one log, labelled with that log's epoch: the client takes the task for a snapshot of the log `epoch`
 * names and goes on from its seq there.
 *
 * Found by a review: the routes labelled the task with the epoch read right after it, and a renewal
 * between the two reads (a restore and `renewEpoch` while the task's read was answered) had the old log's
 * task, at seq 6, answered as the new epoch's, with the new log's events (seqs 1–2).
 */
let env: TestServer | undefined;

afterEach(async () => {
  await env?.close();
  env = undefined;
});

/** The route's store reads, in the order it makes them. */
const STEPS = ['getTask', 'getEpoch', 'readEvents', 'getTask', 'getEpoch'] as const;

/**
 * Task `t` at seq 6 in the live store (epoch `old-epoch`), at seq 2 in its backup. Once armed, the
 * restore and the renewal (to `new-epoch`) happen just before the route's store read number `restoreAt`
 * and `renewAt` (0-based in {@link STEPS}; past them: after the answer).
 */
async function straddled(restoreAt: number, renewAt: number) {
  const restorable = restorableStore();
  let epoch = 'old-epoch';
  let armed = false;
  let calls = 0;
  const before = (): void => {
    if (!armed) return;
    if (calls === restoreAt) restorable.restore();
    if (calls === renewAt) epoch = 'new-epoch';
    calls += 1;
  };
  const store = new Proxy(restorable.store, {
    get(target, property) {
      if (property === 'getEpoch')
        return async () => {
          before();
          return epoch;
        };
      if (property === 'renewEpoch') return undefined;
      if (property === 'getTask' || property === 'readEvents')
        return async (...args: unknown[]) => {
          before();
          // Looked up after `before`: of the store restored there, if it was.
          const read = Reflect.get(target, property) as (...args: unknown[]) => Promise<unknown>;
          return read(...args);
        };
      return Reflect.get(target, property);
    },
  });
  // No heartbeat tick reads the epoch during the request: the route's own reads are the only ones.
  env = await startServer({ store, heartbeatIntervalMs: 60_000 });
  await restorable.both((copy) => copy.createTask({ id: 't', owner: 'alice', kind: 'k' }));
  for (const message of ['one', 'two'])
    await restorable.both((copy) => copy.append('t', { type: 'progress', message }));
  for (let i = 3; i <= 6; i++) await restorable.store.append('t', { type: 'progress', message: `old ${i}` });
  // The server knows the old epoch before the request (an answer labelled with it read it).
  const known = await fetch(`${env.httpUrl}/progress/tasks/t`, { headers: { 'x-user': 'alice' } });
  expect(((await known.json()) as { epoch?: string }).epoch).toBe('old-epoch');
  armed = true;
  return async (suffix: string) => {
    const response = await fetch(`${env?.httpUrl}/progress/tasks/t${suffix}`, {
      headers: { 'x-user': 'alice' },
    });
    return {
      status: response.status,
      body: (await response.json()) as {
        task?: TaskView;
        events?: TaskEvent[];
        epoch?: string;
        error?: unknown;
      },
    };
  };
}

/** Every (restore, renewal) pair with the renewal before the route's last read of the epoch, and none. */
const POINTS: [number, number][] = [[STEPS.length, STEPS.length]];
for (let renewAt = 0; renewAt < STEPS.length; renewAt++)
  for (let restoreAt = 0; restoreAt <= renewAt; restoreAt++) POINTS.push([restoreAt, renewAt]);

describe('a restore and its renewal straddling an HTTP read of a task', () => {
  it.each(POINTS)(
    'answers GET …/tasks/t/events 503 or all of one log (restore before read %i, renewal before read %i)',
    async (restoreAt, renewAt) => {
      const get = await straddled(restoreAt, renewAt);
      const { status, body } = await get('/events');
      if (status === 503) {
        expect(body.error).toMatchObject({ code: 'store_unavailable' });
        return;
      }
      expect(status).toBe(200);
      // The old log: task at seq 6 and its 6 events; the new one: seq 2 and 2 events.
      const seq = body.epoch === 'new-epoch' ? 2 : 6;
      expect({ epoch: body.epoch, taskSeq: body.task?.seq, events: body.events?.map((e) => e.seq) }).toEqual({
        epoch: body.epoch,
        taskSeq: seq,
        events: Array.from({ length: seq }, (_, i) => i + 1),
      });
    },
  );

  // A renewal before the request that this replica had not heard of (another replica's, a feed that tells
  // none) is found by the read of the epoch after the task: the task is read again, not refused.
  it.each(['', '/events'])(
    'answers GET …/tasks/t%s from the new log after a renewal not heard of yet',
    async (suffix) => {
      const get = await straddled(0, 0);
      expect(await get(suffix)).toMatchObject({
        status: 200,
        body: { task: { seq: 2 }, epoch: 'new-epoch' },
      });
    },
  );

  // A stream's first frame is its task (a snapshot), its id the epoch it is of.
  it.each([
    [0, 1],
    [1, 1],
  ])(
    'starts GET …/tasks/t/stream 503 or with the task of the log its id names (restore before read %i, renewal before read %i)',
    async (restoreAt, renewAt) => {
      await straddled(restoreAt, renewAt);
      const abort = new AbortController();
      const response = await fetch(`${env?.httpUrl}/progress/tasks/t/stream`, {
        headers: { 'x-user': 'alice' },
        signal: abort.signal,
      });
      if (response.status === 503) return;
      expect(response.status).toBe(200);
      let text = '';
      const decoder = new TextDecoder();
      for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
        text += decoder.decode(chunk, { stream: true });
        if (/^data: .*\n\n/m.test(text)) break;
      }
      abort.abort();
      const id = /^id: (.*)$/m.exec(text)?.[1];
      const frame = JSON.parse(/^data: (.*)$/m.exec(text)?.[1] ?? '{}') as { task?: TaskView };
      expect({ id, taskSeq: frame.task?.seq }).toEqual(
        id?.endsWith('new-epoch') ? { id: '2~new-epoch', taskSeq: 2 } : { id: '6~old-epoch', taskSeq: 6 },
      );
    },
  );

  // The task route makes the first two reads only.
  it.each(POINTS.filter(([restoreAt, renewAt]) => renewAt <= 1 || restoreAt === STEPS.length))(
    'answers GET …/tasks/t 503 or the task of the log its epoch names (restore before read %i, renewal before read %i)',
    async (restoreAt, renewAt) => {
      const get = await straddled(restoreAt, renewAt);
      const { status, body } = await get('');
      if (status === 503) {
        expect(body.error).toMatchObject({ code: 'store_unavailable' });
        return;
      }
      expect(status).toBe(200);
      expect({ epoch: body.epoch, taskSeq: body.task?.seq }).toEqual({
        epoch: body.epoch,
        taskSeq: body.epoch === 'new-epoch' ? 2 : 6,
      });
    },
  );
});
