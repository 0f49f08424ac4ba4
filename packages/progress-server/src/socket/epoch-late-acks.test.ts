import { afterEach, describe, expect, it } from 'vitest';
import { RawClient, restorableStore, startServer, type TestServer } from '../testing/harness.js';

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
