import { MemoryProgressStore } from '@finishline/core';
import { afterEach, describe, expect, it } from 'vitest';
import {
  RawClient,
  renewedElsewhere,
  restorableStore,
  startServer,
  type TestServer,
} from '../testing/harness.js';

/**
 * `POST …/tasks/:id/ack` with the `epoch` its seq belongs to (what an SSE or polling client sends). The
 * balancer may send it to a replica that has not noticed a renewal yet: before the body's epoch was read,
 * that replica took the seq as one of its own epoch, and its notice of the renewal dropped the ack if its
 * write waited behind another. An ack of an epoch the store left was recorded as a seq of the current one.
 */
let env: TestServer | undefined;
const clients: RawClient[] = [];

afterEach(async () => {
  for (const client of clients.splice(0)) await client.close();
  await env?.close();
  env = undefined;
});

async function postAck(
  taskId: string,
  body: Record<string, unknown>,
): Promise<{ status: number; body: Record<string, unknown> }> {
  const response = await fetch(`${env!.httpUrl}/progress/tasks/${taskId}/ack`, {
    method: 'POST',
    headers: { 'x-user': 'alice', 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  return { status: response.status, body: (await response.json()) as Record<string, unknown> };
}

describe('POST …/ack naming an epoch', () => {
  it('of a renewal the replica has not noticed yet: read, found current, recorded', async () => {
    // No renewal hint, and the heartbeat is far off: only the ack, and the change stamped with the new
    // epoch below, tell this replica of the renewal.
    const store = new MemoryProgressStore();
    const acks = renewedElsewhere(store);
    env = await startServer({ store: acks.store, heartbeatIntervalMs: 60_000 });
    for (const id of ['t', 'u']) await store.createTask({ id, owner: 'alice', kind: 'k' });
    for (let i = 1; i <= 3; i++) await store.append('t', { type: 'progress', message: `${i}` });
    // A socket following u, to see when the replica has noticed the renewal (its reset).
    const watcher = await RawClient.connect(env.wsUrl, { user: 'alice' });
    clients.push(watcher);
    const epoch = (await watcher.next((frame) => frame.type === 'hello')).epoch as string;
    watcher.send({ type: 'subscribe', taskId: 'u', afterSeq: 0 });
    await watcher.next((frame) => frame.type === 'snapshot');
    // An ack of the old epoch whose write is on its way when the renewal comes.
    acks.holdAcks();
    expect((await postAck('t', { seq: 2, epoch })).status).toBe(200);
    const renewed = await store.renewEpoch();
    acks.stamp(renewed);
    expect(await postAck('t', { seq: 3, epoch: renewed })).toEqual({
      status: 200,
      body: { taskId: 't', seq: 3 },
    });
    // A change of the new epoch: the replica notices the renewal now if the ack did not make it read the
    // epoch (before, the notice dropped the ack of seq 3, waiting behind seq 2's write).
    await store.append('u', { type: 'progress', message: 'new epoch' });
    await watcher.next(
      (frame) => frame.type === 'snapshot' && frame.reset === true && frame.epoch === renewed,
    );
    acks.releaseAcks();
    await expect.poll(async () => (await store.getTask('t'))?.ackedSeq).toBe(3);
  });

  it('the store has left: 409 invalid_input, nothing recorded (after a restore its seq names another event)', async () => {
    const restorable = restorableStore();
    const store = restorable.store;
    env = await startServer({ store, heartbeatIntervalMs: 50 });
    await restorable.both((copy) => copy.createTask({ id: 't', owner: 'alice', kind: 'k' }));
    await restorable.both((copy) => copy.append('t', { type: 'progress', message: 'one' }));
    for (const message of ['two', 'three']) await store.append('t', { type: 'progress', message });
    const epochOfTask = async (): Promise<string> => {
      const answer = await fetch(`${env!.httpUrl}/progress/tasks/t`, { headers: { 'x-user': 'alice' } });
      return ((await answer.json()) as { epoch: string }).epoch;
    };
    const old = await epochOfTask();
    restorable.restore();
    const renewed = await store.renewEpoch();
    for (const message of ['other two', 'other three'])
      await store.append('t', { type: 'progress', message });
    // The replica noticed the renewal (a heartbeat tick read the epoch).
    await expect.poll(epochOfTask).toBe(renewed);
    const stale = await postAck('t', { seq: 3, epoch: old });
    expect(stale).toMatchObject({ status: 409, body: { error: { code: 'invalid_input' } } });
    expect((await store.getTask('t'))?.ackedSeq).toBe(0);
    // The current epoch's ack records; one without an epoch too, as before.
    expect((await postAck('t', { seq: 2, epoch: renewed })).status).toBe(200);
    expect((await postAck('t', { seq: 3 })).status).toBe(200);
    await expect.poll(async () => (await store.getTask('t'))?.ackedSeq).toBe(3);
  });

  it('refuses an epoch that is not an id (400 invalid_input), as a frame would', async () => {
    env = await startServer();
    await env.store.createTask({ id: 't', owner: 'alice', kind: 'k' });
    await env.store.append('t', { type: 'progress', message: 'one' });
    for (const epoch of ['', 'a b', 7]) {
      expect(await postAck('t', { seq: 1, epoch })).toMatchObject({
        status: 400,
        body: { error: { code: 'invalid_input' } },
      });
    }
    expect((await env.store.getTask('t'))?.ackedSeq).toBe(0);
  });
});
