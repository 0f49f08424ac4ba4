import { describe, expect, it } from 'vitest';
import { guardHook } from './hook-guard.js';

describe('guardHook', () => {
  it('tells the first rejection of an async hook once, and never leaves it unhandled', async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    try {
      const told: [unknown, string][] = [];
      const guarded = guardHook<string>(
        async () => {
          throw new Error('the log shipper is down');
        },
        (thrown, reported) => told.push([thrown, reported]),
      );
      guarded('first');
      guarded('second');
      await new Promise((resolve) => setImmediate(resolve));
      await new Promise((resolve) => setImmediate(resolve));
      expect(unhandled).toEqual([]);
      expect(told).toHaveLength(1);
      expect(told[0]).toMatchObject([{ message: 'the log shipper is down' }, 'first']);
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  });

  it('tells the first synchronous throw once', () => {
    const told: unknown[] = [];
    const guarded = guardHook<string>(
      () => {
        throw new Error('bug');
      },
      (thrown) => told.push(thrown),
    );
    guarded('a');
    guarded('b');
    expect(told).toHaveLength(1);
  });
});
