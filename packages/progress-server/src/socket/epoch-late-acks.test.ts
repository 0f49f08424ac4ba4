import type { TaskEvent } from '@finishline/core';
import { afterEach, describe, expect, it } from 'vitest';
import {
  RawClient,
  type Received,
  restorableStore,
  startServer,
  type TestServer,
} from '../testing/harness.js';

/**
 * A client's acks of the epoch before a restore, sent before it read the reset snapshot that started
 * the task over (rule 5's `invalid_input`: "resync the task"), were counted as invalid frames, and
 * `maxInvalidFrames` of them closed the socket with 1008: a client following as many tasks as that lost
 * its socket for having been one round trip behind the restore. An ack beyond what the socket may
 * acknowledge is answered, records nothing, and pays its frame's rate-limit token; it no longer counts
 * toward the close.
 */
let env: TestServer | undefined;
const clients: RawClient[] = [];

afterEach(async () => {
  for (const client of clients.splice(0)) await client.close();
  await env?.close();
  env = undefined;
});

describe('acks of the epoch before a restore', () => {
  it('are answered invalid_input without closing the socket', async () => {
    const restorable = restorableStore();
    const store = restorable.store;
    env = await startServer({ store, heartbeatIntervalMs: 50, maxInvalidFrames: 3 });
    // The backup is taken at seq 1; the live store goes on to seq 6, and the client with it.
    await restorable.both((copy) => copy.createTask({ id: 't', owner: 'alice', kind: 'k' }));
    await restorable.both((copy) => copy.append('t', { type: 'progress', message: 'one' }));
    for (let i = 2; i <= 6; i++) await store.append('t', { type: 'progress', message: `live ${i}` });
    const client = await RawClient.connect(env.wsUrl, { user: 'alice' });
    clients.push(client);
    client.send({ type: 'subscribe', taskId: 't', afterSeq: 0 });
    await client.next((frame) => frame.type === 'snapshot');
    restorable.restore();
    await store.renewEpoch();
    await client.next((frame) => frame.type === 'snapshot' && frame.reset === true);
    // What the client acked as it applied the old epoch's frames, before it read the reset.
    for (const seq of [4, 5, 6]) client.send({ type: 'ack', taskId: 't', seq });
    await client.sync();
    expect(client.frames.filter((frame) => frame.type === 'error')).toEqual([
      expect.objectContaining({ code: 'invalid_input', taskId: 't' }),
      expect.objectContaining({ code: 'invalid_input', taskId: 't' }),
      expect.objectContaining({ code: 'invalid_input', taskId: 't' }),
    ]);
    expect(client.ws.readyState).toBe(client.ws.OPEN);
    // Not counted toward the close, but still counted as rejected frames, as every other refused ack is.
    expect(await env.server.metrics.registry.metrics()).toMatch(
      /frames_rejected_total\{code="invalid_input"\} 3\n/,
    );
    // The new epoch's ack still records.
    client.send({ type: 'ack', taskId: 't', seq: 1 });
    await client.sync();
    await expect.poll(async () => (await store.getTask('t'))?.ackedSeq).toBe(1);
  });
});

describe('an ack of the old epoch at the seq the restored task ended at', () => {
  // Asked by a review: acks carry no epoch, so a client's ack of the old epoch's seq 5, sent before it read
  // the reset, that reaches the server once the restored task ended at seq 5 and that end was written to
  // the socket, passes for an ack of the new end: the server stops re-sending it and the store marks it
  // processed. No watcher misses the end for it: the frame went out on the socket after the reset, and a
  // client that lost it still sees the task's seq in the heartbeat (rule 6) and subscribes again.
  it('records it, and a watcher that did not get the new end still learns it from the heartbeat', async () => {
    const restorable = restorableStore();
    const store = restorable.store;
    env = await startServer({
      store,
      heartbeatIntervalMs: 100,
      terminalRetry: { initialDelayMs: 50, multiplier: 1, maxDelayMs: 50 },
    });
    // The backup is taken at seq 1; the live store goes on to seq 6.
    await restorable.both((copy) => copy.createTask({ id: 't', owner: 'alice', kind: 'k' }));
    await restorable.both((copy) => copy.append('t', { type: 'progress', message: 'one' }));
    for (let i = 2; i <= 6; i++) await store.append('t', { type: 'progress', message: `old ${i}` });
    const client = await RawClient.connect(env.wsUrl, { user: 'alice' });
    clients.push(client);
    client.send({ type: 'subscribe', taskId: 't', afterSeq: 0 });
    await client.next((frame) => frame.type === 'snapshot');
    restorable.restore();
    await store.renewEpoch();
    await client.next((frame) => frame.type === 'snapshot' && frame.reset === true);
    // The restored task runs to its end at seq 5, written to the socket.
    for (let i = 2; i <= 4; i++) await store.append('t', { type: 'progress', message: `new ${i}` });
    await store.append('t', { type: 'completed', result: 'new' });
    const isNewEnd = (frame: Received) =>
      frame.type === 'event' &&
      (frame.event as TaskEvent).type === 'completed' &&
      (frame.event as TaskEvent).seq === 5;
    await client.next(isNewEnd);
    // The old epoch's ack of seq 5 arrives now: taken for the new end's.
    client.send({ type: 'ack', taskId: 't', seq: 5 });
    await client.sync();
    await expect.poll(async () => (await store.getTask('t'))?.ackedSeq).toBe(5);
    // The client lost the end (say): the heartbeat still reports seq 5, above its cursor at 4.
    const from = client.frames.length;
    const heartbeat = await client.next(
      (frame) => frame.type === 'heartbeat' && (frame.seqs as Record<string, number>).t !== undefined,
      { from },
    );
    expect((heartbeat.seqs as Record<string, number>).t).toBe(5);
    client.send({ type: 'subscribe', taskId: 't', afterSeq: 4 });
    await client.next(isNewEnd, { from });
  });
});
