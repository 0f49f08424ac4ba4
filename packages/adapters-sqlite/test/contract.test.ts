import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describeProgressStoreContract, ManualClock } from '@finishline/core/testing';
import { SqliteProgressStore } from '../src/index.js';

// The same contract every store passes, on a real database file (WAL, other-connection polling on) and
// on an in-memory database.
describeProgressStoreContract('sqlite (temp file)', async () => {
  const directory = mkdtempSync(join(tmpdir(), 'finishline-sqlite-contract-'));
  const clock = new ManualClock();
  const store = new SqliteProgressStore({ database: join(directory, 'progress.db'), clock: clock.now });
  return {
    store,
    clock,
    close: async () => {
      await store.close();
      rmSync(directory, { recursive: true, force: true });
    },
  };
});

describeProgressStoreContract('sqlite (:memory:)', async () => {
  const clock = new ManualClock();
  const store = new SqliteProgressStore({ database: ':memory:', clock: clock.now });
  return { store, clock, close: () => store.close() };
});
