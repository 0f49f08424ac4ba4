import { afterEach, describe, expect, it } from 'vitest';
import { RawClient, serverFrameViolations } from '../../src/testing/harness.js';
import { listenOn, STORE_FIXTURES } from './stores.js';

/**
 * Issue 10, item 1: no frame of a subscription (ack included) may act before its authorization has
 * resolved and its task is loaded. A subscribe for another owner's task with `afterSeq` 2^53-1, with an
 * ack pipelined right behind it, used to move the victim's `ackedSeq` before `forbidden` was sent.
 */

const cleanups: Array<() => Promise<void>> = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  expect(serverFrameViolations.splice(0)).toEqual([]);
});

for (const fixture of STORE_FIXTURES) {
  describe(`on the ${fixture.name} store`, () => {
    it("a pipelined ack behind a subscribe for another owner's task never reaches the store", async () => {
      const { store, release } = await fixture.open();
      cleanups.push(release);
      const env = await listenOn(store, { heartbeatIntervalMs: 60_000 });
      cleanups.push(() => env.server.close({ timeoutMs: 1000 }));
      const victim = await env.server.tasks.create({ owner: 'bob', kind: 'k' });
      for (let done = 1; done <= 3; done += 1) await victim.progress({ done });
      expect((await store.getTask(victim.id))?.ackedSeq).toBe(0);

      const attacker = await RawClient.connect(env.wsUrl, { user: 'mallory' });
      cleanups.push(async () => {
        await attacker.close();
      });
      // Both frames leave in one write burst: the ack arrives while the subscribe is still being checked.
      attacker.send({ type: 'subscribe', id: 's', taskId: victim.id, afterSeq: Number.MAX_SAFE_INTEGER });
      attacker.send({ type: 'ack', taskId: victim.id, seq: 3 });
      attacker.send({ type: 'ack', taskId: victim.id, seq: 2 });
      const refused = await attacker.next((frame) => frame.type === 'error' && frame.requestId === 's');
      expect(refused).toMatchObject({ taskId: victim.id });
      await attacker.sync();
      // The ack writer batches per tick; give a wrongly accepted ack every chance to land.
      await new Promise((resolve) => setTimeout(resolve, 200));
      expect((await store.getTask(victim.id))?.ackedSeq).toBe(0);

      // The owner's own pipelined ack still works once its subscription is authorized.
      const owner = await RawClient.connect(env.wsUrl, { user: 'bob' });
      cleanups.push(async () => {
        await owner.close();
      });
      owner.send({ type: 'subscribe', taskId: victim.id, afterSeq: 3 });
      owner.send({ type: 'ack', taskId: victim.id, seq: 3 });
      await expect.poll(async () => (await store.getTask(victim.id))?.ackedSeq, { timeout: 5000 }).toBe(3);
      expect(owner.frames.filter((frame) => frame.type === 'error')).toEqual([]);
    });
  });
}
