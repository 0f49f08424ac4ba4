import { describe, expect, it } from 'vitest';
import { StatementBatcher } from '../src/statement-batcher.js';

describe('StatementBatcher', () => {
  it('rejects the calls of a batch whose write rejected instead of leaving them unsettled', async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    try {
      let writes = 0;
      const batcher = new StatementBatcher<number, number>(async (batch) => {
        writes += 1;
        // The second batch is written as usual: a failed one does not stop the batcher.
        if (writes === 1) throw new TypeError('a bug after the statement');
        for (const call of batch) call.resolve(call.input * 2);
      }, 10);
      const first = [batcher.enqueue(1), batcher.enqueue(2)];
      await expect(Promise.all(first)).rejects.toThrow('a bug after the statement');
      await expect(Promise.allSettled(first)).resolves.toEqual([
        { status: 'rejected', reason: expect.any(TypeError) },
        { status: 'rejected', reason: expect.any(TypeError) },
      ]);
      await expect(batcher.enqueue(3)).resolves.toBe(6);
      await batcher.close();
      await new Promise((resolve) => setImmediate(resolve));
      expect(unhandled).toEqual([]);
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  });

  it('writes nothing enqueued after close: the call rejects with closed', async () => {
    let writes = 0;
    const batcher = new StatementBatcher<number, number>(async (batch) => {
      writes += 1;
      for (const call of batch) call.resolve(call.input);
    }, 10);
    await batcher.close();
    await expect(batcher.enqueue(1)).rejects.toMatchObject({ code: 'closed' });
    await new Promise((resolve) => setImmediate(resolve));
    expect(writes).toBe(0);
  });
  it('writes a burst larger than one batch in as many batches as there are free slots, each full', async () => {
    const sizes: number[] = [];
    const release: (() => void)[] = [];
    const batcher = new StatementBatcher<number, number>(
      async (batch) => {
        sizes.push(batch.length);
        await new Promise<void>((resolve) => release.push(resolve));
        for (const call of batch) call.resolve(call.input);
      },
      2,
      3,
    );
    // One turn's burst of four batches' worth, beside three free slots.
    const calls = Array.from({ length: 8 }, (_, index) => batcher.enqueue(index));
    await new Promise((resolve) => setImmediate(resolve));
    // Three statements at once, each a full batch; the fourth batch waits for a slot.
    expect(sizes).toEqual([2, 2, 2]);
    release.shift()!();
    await new Promise((resolve) => setImmediate(resolve));
    expect(sizes).toEqual([2, 2, 2, 2]);
    for (const resolve of release.splice(0)) resolve();
    await expect(Promise.all(calls)).resolves.toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(batcher.batches).toBe(4);
    await batcher.close();
  });
});
