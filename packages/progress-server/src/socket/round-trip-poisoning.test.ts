import { TerminalRetryTracker } from '@finishline/core/internal';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { RawClient, Received } from '../testing/harness.js';
import { useServerSession } from '../testing/session.js';

/**
 * The first terminal re-send waits the round-trip timeout the server learnt from terminal acks. One
 * client's acks (late, or at once), or one principal's on many sockets, must not set the wait of everyone
 * else's sockets: a client acking its terminal frames a minute late made every other socket's first
 * re-send wait 5 s instead of 100 ms.
 *
 * The server runs on a frozen clock that the test moves: an ack's round trip is what the clock moved
 * between the terminal frame and the ack, and each first re-send delay is read from the socket's retry
 * tracker when the terminal frame is sent (no real time is measured).
 */

const session = useServerSession();
let now = Date.now();

/** The first re-send delay each terminal frame got, by task id. */
const firstDelay = new Map<string, number>();

function recordFirstDelays(): void {
  const sent = TerminalRetryTracker.prototype.sent;
  vi.spyOn(TerminalRetryTracker.prototype, 'sent').mockImplementation(function (
    this: TerminalRetryTracker,
    taskId: string,
    seq: number,
  ) {
    const pending = this.size;
    sent.call(this, taskId, seq);
    // A first send: the socket's one new pending entry (honest sockets here have no other).
    if (this.size === pending + 1 && !firstDelay.has(taskId))
      firstDelay.set(taskId, (this.nextDueAt() ?? 0) - now);
  });
}

afterEach(() => {
  vi.restoreAllMocks();
  firstDelay.clear();
});

const isTerminal = (taskId: string) => (frame: Received) =>
  frame.type === 'event' &&
  (frame.event as { taskId: string }).taskId === taskId &&
  (frame.event as { type: string }).type === 'completed';

/** Subscribes `client` to a new task, completes it, and waits for the terminal frame; returns the task id. */
async function terminalOn(client: RawClient, user: string): Promise<string> {
  const task = await session.env.server.tasks.create({ owner: user, kind: 'k' });
  client.send({ type: 'subscribe', taskId: task.id, afterSeq: 0 });
  await client.next((frame) => frame.type === 'snapshot' && (frame.task as { id: string }).id === task.id);
  await task.complete();
  await client.next(isTerminal(task.id));
  return task.id;
}

/** A terminal frame acknowledged `afterMs` after it was sent (the frozen clock moved that much). */
async function ackedAfter(client: RawClient, user: string, afterMs: number): Promise<void> {
  const taskId = await terminalOn(client, user);
  now += afterMs;
  client.send({ type: 'ack', taskId, seq: 1 });
  await client.sync();
}

async function start(): Promise<void> {
  recordFirstDelays();
  await session.start({ clock: () => now });
}

describe('the round-trip timeout of the first terminal re-send', () => {
  it('is not stretched for everyone by a client that acknowledges its terminal frames late', async () => {
    await start();
    const honest = [await session.connect({ user: 'alice' }), await session.connect({ user: 'bob' })];
    for (const [i, client] of honest.entries()) await ackedAfter(client, i === 0 ? 'alice' : 'bob', 0);
    // Two sockets of one principal, each acking its terminal frames a minute late, several times.
    for (let i = 0; i < 2; i++) {
      const late = await session.connect({ user: 'mallory' });
      for (let j = 0; j < 3; j++) await ackedAfter(late, 'mallory', 60_000);
    }
    // An honest socket that has acked before, and one that never has: both wait the default 100 ms.
    const known = await terminalOn(honest[0] as RawClient, 'alice');
    const fresh = await terminalOn(await session.connect({ user: 'carol' }), 'carol');
    expect(firstDelay.get(known)).toBe(100);
    expect(firstDelay.get(fresh)).toBe(100);
    // The late client waits its own timeout (capped at 5 s): it slowed down no one but itself.
    const late = await session.connect({ user: 'mallory' });
    await ackedAfter(late, 'mallory', 60_000);
    expect(firstDelay.get(await terminalOn(late, 'mallory'))).toBe(5000);
  });

  it('is not stretched by one principal acking late on more sockets than the others have', async () => {
    await start();
    for (const user of ['alice', 'bob']) await ackedAfter(await session.connect({ user }), user, 0);
    for (let i = 0; i < 5; i++)
      await ackedAfter(await session.connect({ user: 'mallory' }), 'mallory', 60_000);
    const fresh = await terminalOn(await session.connect({ user: 'carol' }), 'carol');
    expect(firstDelay.get(fresh)).toBe(100);
  });

  it('still learns that acks are slow when most principals say so, and a client acking at once cannot undo it', async () => {
    await start();
    for (const user of ['alice', 'bob', 'carol']) {
      await ackedAfter(await session.connect({ user }), user, 300);
    }
    // A client acknowledging every terminal frame the moment it arrives (as if the server were idle).
    const eager = await session.connect({ user: 'mallory' });
    for (let j = 0; j < 20; j++) await ackedAfter(eager, 'mallory', 0);
    const fresh = await terminalOn(await session.connect({ user: 'dave' }), 'dave');
    // SRTT + 4 · RTTVAR of one 300 ms sample: 900 ms (the server keeps it to within a 2^(1/4) step).
    expect(firstDelay.get(fresh)).toBeGreaterThanOrEqual(900);
    expect(firstDelay.get(fresh)).toBeLessThanOrEqual(900 * 2 ** 0.25);
    // And the eager client, whatever it does, gets no re-send sooner than the 100 ms floor.
    expect(firstDelay.get(await terminalOn(eager, 'mallory'))).toBe(100);
  });
});
