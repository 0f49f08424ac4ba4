import type { Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import { seqOf } from '../testing/harness.js';
import { useServerSession } from '../testing/session.js';

/**
 * What the server writes to one socket in one tick leaves in one system call (issue 12: at load, a
 * `writev` per frame was where the server's time went).
 */

const session = useServerSession();

describe('socket writes', () => {
  it('sends a catch-up of 99 events to one socket in a handful of writes', async () => {
    const env = await session.start();
    // Every TCP write the server makes, counted on its side of each accepted socket.
    let writes = 0;
    env.server.httpServer?.on('connection', (socket: Socket) => {
      const writable = socket as unknown as {
        _write: (...args: unknown[]) => unknown;
        _writev: (...args: unknown[]) => unknown;
      };
      for (const method of ['_write', '_writev'] as const) {
        const original = writable[method].bind(socket);
        writable[method] = (...args: unknown[]) => {
          writes += 1;
          return original(...args);
        };
      }
    });
    const task = await env.store.createTask({ owner: 'alice', kind: 'k' });
    // Items: a run of progress events this long would be coalesced into a snapshot.
    for (let i = 1; i <= 100; i++)
      await env.store.append(task.id, { type: 'item', key: `node-${i}`, ok: true });
    const client = await session.connect({ user: 'alice' });
    await client.sync();
    const before = writes;
    client.send({ type: 'subscribe', taskId: task.id, afterSeq: 1 });
    await client.next((frame) => frame.type === 'event' && seqOf(frame) === 100);
    const events = client.about(task.id).filter((frame) => frame.type === 'event');
    expect(events).toHaveLength(99);
    // One per tick of the catch-up, not one per frame (a hundred before).
    expect(writes - before).toBeLessThanOrEqual(5);
  });
});
