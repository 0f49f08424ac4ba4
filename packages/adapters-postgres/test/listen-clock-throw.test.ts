import type { ProgressError } from '@finishline/core';
import { describe, expect, it } from 'vitest';
import { storeFixtures } from './support.js';

const fx = storeFixtures('lclock');

describe('the LISTEN connection and a clock that throws', () => {
  // The time a connect succeeded (health's lastConnectedAt) was read bare, after the connection was up and
  // re-read: a clock that threw then (one that returned NaN once) failed the whole connect. On open() the
  // store refused to open; on a reconnect the working connection was ended and connected again, its rows
  // re-read. Elsewhere the connection reports such a read on onError and goes on (see `#time`).
  it('a clock that throws as the connection comes up is reported; the store opens', async () => {
    const schema = await fx.migrated();
    let reads = 0;
    const clock = () => {
      reads += 1;
      if (reads === 1) throw new Error('no time this once');
      return Date.now();
    };
    const errors: ProgressError[] = [];
    const store = await fx.open({ schema, clock, onError: (error) => errors.push(error) });
    expect(reads).toBeGreaterThanOrEqual(1);
    expect(errors.map((error) => error.message).join('\n')).toMatch(/no time this once/);
    expect(store.changes.health()).toMatchObject({ connected: true, lastConnectedAt: null });
    const task = await store.createTask({ owner: 'u', kind: 'k' });
    expect((await store.append(task.id, { type: 'progress' })).event.seq).toBe(1);
  });
});
