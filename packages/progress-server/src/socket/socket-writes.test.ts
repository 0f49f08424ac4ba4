import type { Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import type { TestServer } from '../testing/harness.js';
import { seqOf } from '../testing/harness.js';
import { useServerSession } from '../testing/session.js';

/**
 * What the server writes to one socket in one tick leaves in one system call (issue 12: at load, a
 * `writev` per frame was where the server's time went).
 */

const session = useServerSession();

/** Counts every TCP write the server makes, on its side of each socket it accepts. */
function countWrites(env: TestServer): { readonly count: number } {
  const counter = { count: 0 };
  env.server.httpServer?.on('connection', (socket: Socket) => {
    const writable = socket as unknown as {
      _write: (...args: unknown[]) => unknown;
      _writev: (...args: unknown[]) => unknown;
    };
    for (const method of ['_write', '_writev'] as const) {
      const original = writable[method].bind(socket);
      writable[method] = (...args: unknown[]) => {
        counter.count += 1;
        return original(...args);
      };
    }
  });
  return counter;
}

describe('socket writes', () => {
  it('sends a catch-up of 99 events to one socket in a handful of writes', async () => {
    const env = await session.start();
    const writes = countWrites(env);
    const task = await env.store.createTask({ owner: 'alice', kind: 'k' });
    // Items: a run of progress events this long would be coalesced into a snapshot.
    for (let i = 1; i <= 100; i++)
      await env.store.append(task.id, { type: 'item', key: `node-${i}`, ok: true });
    const client = await session.connect({ user: 'alice' });
    await client.sync();
    const before = writes.count;
    client.send({ type: 'subscribe', taskId: task.id, afterSeq: 1 });
    await client.next((frame) => frame.type === 'event' && seqOf(frame) === 100);
    const events = client.about(task.id).filter((frame) => frame.type === 'event');
    expect(events).toHaveLength(99);
    // One per tick of the catch-up, not one per frame (a hundred before).
    expect(writes.count - before).toBeLessThanOrEqual(5);
  });

  it("sends the heartbeat tick's ping and heartbeat frame in one write", async () => {
    const env = await session.start({ heartbeatIntervalMs: 30 });
    const writes = countWrites(env);
    const client = await session.connect({ user: 'alice' });
    await client.sync();
    const heartbeat = (frame: { type: string }) => frame.type === 'heartbeat';
    // Each wait starts after the frames received so far: the next heartbeat, not one already seen.
    const nextHeartbeat = () => client.next(heartbeat, { from: client.frames.length });
    await nextHeartbeat();
    const before = writes.count;
    await nextHeartbeat();
    await nextHeartbeat();
    // Two ticks, nothing else to write: one write each (the ping went out on its own before, two each).
    expect(writes.count - before).toBe(2);
  });
});
