import { describe, expect, it, vi } from 'vitest';
import { gate } from '../testing/harness.js';
import { useServerSession } from '../testing/session.js';

/**
 * A subscriber's load tells the ack writer the task's seq and run (`AckWriter.seen`), so that acks of a
 * purged id's old run, or of a store restored below them, are not taken for the new log's. A load that
 * read the task before its latest events were committed, and answers after their acks came, is no such
 * sign: the ack waiting behind the write in flight is still written.
 */

const session = useServerSession();

/**
 * The first watcher's ack of seq 1 is held in the store; `lateReader` starts a read of the task (at seq 1)
 * that answers only when `loaded` opens; seq 2 is committed and acknowledged meanwhile, its ack waiting
 * behind the held write. Resolves once the late read answered and the held write was let go.
 */
async function ackBehindALateRead(lateReader: (taskId: string) => Promise<() => Promise<void>>) {
  await session.start({ heartbeatIntervalMs: 60_000 });
  const { store, server } = session.env;
  const task = await server.tasks.create({ owner: 'alice', kind: 'k' });
  await task.progress({ done: 1 });
  const watcher = await session.connect({ user: 'alice' });
  watcher.send({ type: 'subscribe', taskId: task.id, afterSeq: 0 });
  await watcher.next((frame) => frame.type === 'snapshot');

  // The first ack's write is held in the store.
  const written = gate();
  const ack = store.ack.bind(store);
  const ackCalled = gate();
  vi.spyOn(store, 'ack').mockImplementationOnce(async (taskId, seq) => {
    ackCalled.open();
    await written.promise;
    return ack(taskId, seq);
  });
  watcher.send({ type: 'ack', taskId: task.id, seq: 1 });
  await ackCalled.promise;

  // The late reader's load reads the task at seq 1 and answers only later.
  const getTask = store.getTask.bind(store);
  const loaded = gate();
  const read = gate();
  vi.spyOn(store, 'getTask').mockImplementationOnce(async (taskId) => {
    const found = await getTask(taskId);
    read.open();
    await loaded.promise;
    return found;
  });
  const answered = await lateReader(task.id);
  await read.promise;

  // Seq 2 is committed, sent and acknowledged meanwhile: its ack waits behind the write of 1.
  await task.complete();
  await watcher.next((frame) => frame.type === 'event');
  watcher.send({ type: 'ack', taskId: task.id, seq: 2 });
  await watcher.sync();

  loaded.open();
  await answered();
  written.open();
  return () => getTask(task.id).then((found) => found?.ackedSeq);
}

describe('acks and a load older than them', () => {
  it('writes an ack queued behind a write in flight when a load that started before its event answers after it', async () => {
    const ackedSeq = await ackBehindALateRead(async (taskId) => {
      const other = await session.connect({ user: 'alice' });
      other.send({ type: 'subscribe', taskId, afterSeq: 0 });
      return async () => {
        await other.next((frame) => frame.type === 'snapshot');
      };
    });
    await expect.poll(ackedSeq).toBe(2);
  });

  it('writes it too when the load that answers late is an HTTP ack’s', async () => {
    const ackedSeq = await ackBehindALateRead(async (taskId) => {
      // An SSE client's ack of seq 1.
      const httpAck = fetch(`${session.env.httpUrl}/progress/tasks/${taskId}/ack`, {
        method: 'POST',
        headers: { 'x-user': 'alice', 'content-type': 'application/json' },
        body: JSON.stringify({ seq: 1 }),
      });
      return async () => {
        expect((await httpAck).status).toBe(200);
      };
    });
    await expect.poll(ackedSeq).toBe(2);
  });
});
