import { describe, expect, it } from 'vitest';
import { useServerSession } from '../testing/session.js';

/**
 * docs/protocol.md, delivery rule 5: "The server accepts acks up to the highest seq it sent on this
 * socket for the task (in the current subscription or an earlier one, since frames of the old stream may
 * still be in flight after a resubscribe)". An earlier subscription ended by an `unsubscribe` is one: its
 * frames may be acknowledged after the client subscribed to the task again.
 */

const session = useServerSession();

describe('an ack of what an unsubscribed subscription sent, after the next subscribe', () => {
  it('is accepted and recorded, not refused as beyond what was sent', async () => {
    await session.start({ heartbeatIntervalMs: 60_000 });
    const task = await session.env.server.tasks.create({ owner: 'alice', kind: 'k', total: 1 });
    await task.item({ key: 'a', ok: true });
    await task.complete();
    const client = await session.connect({ user: 'alice' });
    client.send({ type: 'subscribe', taskId: task.id, afterSeq: 0 });
    await client.next((frame) => frame.type === 'snapshot');
    // The watch is left and taken up again (another tab, a remount); the terminal snapshot's ack, delayed,
    // arrives behind the new subscribe, before its answer.
    client.send({ type: 'unsubscribe', taskId: task.id });
    client.send({ type: 'subscribe', taskId: task.id, afterSeq: 0 });
    client.send({ type: 'ack', taskId: task.id, seq: 2 });
    await client.next(() => client.frames.filter((frame) => frame.type === 'snapshot').length === 2);
    await client.sync();
    expect(client.frames.filter((frame) => frame.type === 'error')).toEqual([]);
    await expect.poll(async () => (await session.env.store.getTask(task.id))?.ackedSeq).toBe(2);
  });
});
