import { MemoryProgressStore, PROTOCOL_NAME } from '@finishline/core';
import { afterEach, describe, expect, it } from 'vitest';
import {
  RawClient,
  renewedElsewhere,
  restorableStore,
  startServer,
  type TestServer,
} from '../testing/harness.js';

/**
 * Acks that name their epoch (`ack.epoch`, version 3: a version-2 socket refuses it, see
 * raw-protocol-3.test.ts). Before it, a replica could not tell an ack of a
 * renewed epoch it had not noticed yet from one of its own: taken as its own, the ack waited behind the
 * task's write in flight, and the replica's notice of the renewal dropped it with the old epoch's acks (the
 * full chaos run lost a terminal ack so, its task's `acked_seq` left below its end). And an ack of an epoch
 * the store left was recorded as a seq of the current one, which after a restore names another event.
 */
let env: TestServer | undefined;
const clients: RawClient[] = [];

afterEach(async () => {
  for (const client of clients.splice(0)) await client.close();
  await env?.close();
  env = undefined;
});

async function connect(): Promise<{ client: RawClient; epoch: string }> {
  const client = await RawClient.connect(env!.wsUrl, { user: 'alice', protocols: [PROTOCOL_NAME] });
  clients.push(client);
  const hello = await client.next((frame) => frame.type === 'hello');
  expect(hello.protocol).toBe(3);
  return { client, epoch: hello.epoch as string };
}

describe('an ack naming a renewed epoch the replica has not noticed yet', () => {
  it('is recorded: the replica reads the epoch, finds it current, and writes the ack', async () => {
    // No renewal hint, and the heartbeat is far off: nothing but the ack, and the change stamped with the
    // new epoch below, tells this replica of the renewal (another replica's clients heard of it first).
    const store = new MemoryProgressStore();
    const acks = renewedElsewhere(store);
    env = await startServer({ store: acks.store, heartbeatIntervalMs: 60_000 });
    for (const id of ['t', 'u']) await store.createTask({ id, owner: 'alice', kind: 'k' });
    for (let i = 1; i <= 3; i++) await store.append('t', { type: 'progress', message: `${i}` });
    const { client, epoch } = await connect();
    for (const taskId of ['t', 'u']) {
      client.send({ type: 'subscribe', taskId, afterSeq: 0 });
      await client.next((frame) => frame.type === 'snapshot' && (frame.task as { id: string }).id === taskId);
    }
    // An ack of the old epoch whose write is on its way when the renewal comes.
    acks.holdAcks();
    client.send({ type: 'ack', taskId: 't', seq: 2, epoch });
    await client.sync();
    const renewed = await store.renewEpoch();
    acks.stamp(renewed);
    // The terminal's ack, as a client that heard of the renewal elsewhere sends it, and its unsubscribe.
    client.send({ type: 'ack', taskId: 't', seq: 3, epoch: renewed });
    client.send({ type: 'unsubscribe', taskId: 't' });
    await client.sync();
    // A change of the new epoch: the replica notices the renewal now if the ack did not make it read the
    // epoch (before acks named it, the notice then dropped the ack of seq 3, waiting behind seq 2's write).
    await store.append('u', { type: 'progress', message: 'new epoch' });
    await client.next(
      (frame) => frame.type === 'snapshot' && frame.reset === true && frame.epoch === renewed,
    );
    acks.releaseAcks();
    await expect.poll(async () => (await store.getTask('t'))?.ackedSeq).toBe(3);
  });
});

describe('an ack naming an epoch the store has left', () => {
  it('records nothing, unanswered: after a restore its seq names another event', async () => {
    const restorable = restorableStore();
    const store = restorable.store;
    env = await startServer({ store, heartbeatIntervalMs: 50 });
    // The backup holds seq 1; the live store goes on to seq 3, and the client with it.
    await restorable.both((copy) => copy.createTask({ id: 't', owner: 'alice', kind: 'k' }));
    await restorable.both((copy) => copy.append('t', { type: 'progress', message: 'one' }));
    for (const message of ['two', 'three']) await store.append('t', { type: 'progress', message });
    const { client, epoch: old } = await connect();
    client.send({ type: 'subscribe', taskId: 't', afterSeq: 0 });
    await client.next((frame) => frame.type === 'snapshot');
    // Restored, renewed, and the restored task goes on to seq 3 with other events.
    restorable.restore();
    const renewed = await store.renewEpoch();
    for (const message of ['other two', 'other three'])
      await store.append('t', { type: 'progress', message });
    const reset = await client.next((frame) => frame.type === 'snapshot' && frame.reset === true);
    expect(reset).toMatchObject({ epoch: renewed, task: { seq: 3, message: 'other three' } });
    const before = client.frames.length;
    // The old epoch's ack of seq 3, late: "three" was processed, not "other three".
    client.send({ type: 'ack', taskId: 't', seq: 3, epoch: old });
    // Then the new epoch's ack of seq 1, which records: the store keeps the highest ack, so seq 1 is what
    // it holds only if the old epoch's seq 3 was not recorded.
    client.send({ type: 'ack', taskId: 't', seq: 1, epoch: renewed });
    await expect.poll(async () => (await store.getTask('t'))?.ackedSeq).toBe(1);
    await client.sync();
    expect((await store.getTask('t'))?.ackedSeq).toBe(1);
    expect(client.frames.slice(before).filter((frame) => frame.type === 'error')).toEqual([]);
  });
});
