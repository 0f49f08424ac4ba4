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
});
