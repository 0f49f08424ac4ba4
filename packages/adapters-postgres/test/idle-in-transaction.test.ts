import { isProgressError } from '@finishline/core';
import { describe, expect, it } from 'vitest';
import { IDLE_IN_TRANSACTION_TIMEOUT_MS } from '../src/idle-in-transaction.js';
import { PostgresProgressStore } from '../src/index.js';
import { eventually, gate, queryHookedPool, settlesWithin, storeFixtures } from './support.js';

/**
 * A store that stops between two statements of its own transaction (a process frozen, an event loop
 * blocked, a client that hangs) holds the rows it locked for as long. Until 5 December 2026 nothing ended
 * such a transaction: the tasks' appends from other replicas, their acks and their reaping (which skip
 * rows another transaction holds) waited for as long as the hang lasted.
 */

const { pool, migrated, open, releases } = storeFixtures('idle');

describe("a store's transaction left open by its client", () => {
  it(`is ended by Postgres after ${IDLE_IN_TRANSACTION_TIMEOUT_MS} ms idle: the rows it locked are free again`, async () => {
    const schema = await migrated();
    const other = await open({ schema });
    await other.createTask({ id: 'x', owner: 'alice', kind: 'k' });
    // The hung store has not written 'x': its append locks the row, then its client hangs before the write.
    const hang = gate();
    releases.push(hang.open);
    let hung = false;
    const hooked = queryHookedPool(pool(), (_client, { text }, run) => {
      if (!hung && text.includes('json_to_recordset')) {
        hung = true;
        return hang.promise.then(run);
      }
      return run();
    });
    const frozen = await PostgresProgressStore.open({ pool: hooked, migrate: false, schema });
    try {
      const stuck = frozen.append('x', { type: 'progress', message: 'frozen' });
      stuck.catch(() => {});
      await eventually('the hung store locked the row', () => hung);
      // A liveness bound: the other store's append waits for the idle timeout, or for ever.
      const append = other.append('x', { type: 'progress', message: 'other' });
      expect(
        await settlesWithin(
          append.then(() => undefined),
          IDLE_IN_TRANSACTION_TIMEOUT_MS + 10_000,
        ),
      ).toBe('closed');
      await expect(append).resolves.toMatchObject({ event: { seq: 1 }, task: { message: 'other' } });
      // The hung client, resumed, finds its transaction ended: nothing of it was written.
      hang.open();
      const failure = await stuck.then(
        () => undefined,
        (error: unknown) => error,
      );
      expect(isProgressError(failure) && failure.code).toBe('store_unavailable');
      expect(await other.getTask('x')).toMatchObject({ seq: 1, message: 'other' });
    } finally {
      hang.open();
      await frozen.close();
    }
  }, 40_000);
});
