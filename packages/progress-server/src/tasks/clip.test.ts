import { MemoryProgressStore } from '@finishline/core';
import { afterEach, describe, expect, it } from 'vitest';
import { ProgressServer } from '../progress-server.js';

const servers: ProgressServer[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((server) => server.close({ timeoutMs: 500 })));
});

function setup(store = new MemoryProgressStore()) {
  const server = new ProgressServer({ store, authenticate: () => null });
  servers.push(server);
  return { server, store };
}

/**
 * Texts from workers and callers (item keys, error messages, cancel reasons) are made storable before they
 * reach the store: clipped without cutting a surrogate pair, U+0000 and lone surrogates replaced. Before,
 * every store refused such a text, which failed a whole batch (found by a review, 3 December 2026).
 */
describe('storable texts from workers and callers', () => {
  // 510 ASCII chars, then an emoji (2 UTF-16 code units) at 510..511: clip(…, 512) keeps 511 units, the lone high surrogate.
  const longKey = `${'k'.repeat(510)}😀${'x'.repeat(20)}`;

  it('runBatch clips a long item key without splitting a surrogate pair (the item is reported)', async () => {
    const { server, store } = setup();
    const task = await server.tasks.create({ owner: 'alice', kind: 'batch' });
    const result = await task.runBatch([longKey], () => undefined);
    const events = await store.readEvents(task.id, 0);
    expect(result.status).toBe('completed');
    expect(events.map((event) => event.type)).toEqual(['progress', 'item', 'completed']);
  });

  it('runBatch clips a long worker error message without splitting a surrogate pair', async () => {
    const { server, store } = setup();
    const task = await server.tasks.create({ owner: 'alice', kind: 'batch' });
    const message = `${'e'.repeat(4094)}😀 and more`;
    const result = await task.runBatch(['a'], () => {
      throw new Error(message);
    });
    const events = await store.readEvents(task.id, 0);
    expect(events.map((event) => event.type)).toEqual(['progress', 'item', 'failed']);
    expect(result.status).toBe('failed');
    expect(events.at(-1)).toMatchObject({ error: { code: 'all_items_failed' } });
  });

  it('runBatch reports an item whose worker error message holds a NUL (e.g. from binary output)', async () => {
    const { server, store } = setup();
    const task = await server.tasks.create({ owner: 'alice', kind: 'batch' });
    const result = await task.runBatch(['a', 'b'], (item) => {
      if (item === 'a') throw new Error('exit 1: \u0000\u0001 garbage');
      return undefined;
    });
    const events = await store.readEvents(task.id, 0);
    expect(events.map((event) => event.type)).toEqual(['progress', 'item', 'item', 'completed']);
    expect(result).toMatchObject({ status: 'completed', succeeded: 1, failed: 1 });
  });

  it('tasks.cancel clips a long reason without splitting a surrogate pair', async () => {
    const { server } = setup();
    const task = await server.tasks.create({ owner: 'alice', kind: 'batch' });
    await expect(server.tasks.cancel(task.id, longKey)).resolves.toMatchObject({ type: 'cancelled' });
  });
});
