import { ErrorCode, isProgressError } from '@finishline/core';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { SqliteProgressStore } from '../src/index.js';
import { tempDatabase } from './support/temp-database.js';

/**
 * Opening a store whose file is already at the current schema writes nothing, so it must not wait for
 * the write lock: another process may hold it for longer than `busyTimeoutMs` (a long purge, a
 * checkpoint, an application's own transaction).
 */
describe('opening a store while another connection holds the write lock', () => {
  const cleanups: (() => void)[] = [];
  afterEach(() => {
    for (const cleanup of cleanups.splice(0).reverse()) cleanup();
  });

  function lockedFile(): { file: string; holder: Database.Database } {
    const temp = tempDatabase();
    cleanups.push(temp.remove);
    return { file: temp.file, holder: new Database(temp.file) };
  }

  it('opens a file already at the current schema and reads from it', async () => {
    const { file, holder } = lockedFile();
    const first = new SqliteProgressStore({ database: file });
    const task = await first.createTask({ id: 'a', kind: 'import', owner: 'worker-1' });
    await first.close();

    holder.prepare('BEGIN IMMEDIATE').run();
    cleanups.push(() => {
      if (holder.inTransaction) holder.prepare('ROLLBACK').run();
      holder.close();
    });

    const store = new SqliteProgressStore({ database: file, busyTimeoutMs: 20, dataVersionPollMs: 0 });
    cleanups.push(() => void store.close());
    expect((await store.getTask(task.id))?.id).toBe(task.id);
    // Writes still wait for the lock, and fail once it is held past busyTimeoutMs.
    const blocked = await store.createTask({ id: 'b', kind: 'import', owner: 'worker-1' }).then(
      () => undefined,
      (error: unknown) => error,
    );
    expect(isProgressError(blocked, ErrorCode.StoreUnavailable), String(blocked)).toBe(true);
    holder.prepare('COMMIT').run();
    await expect(store.createTask({ id: 'c', kind: 'import', owner: 'worker-1' })).resolves.toMatchObject({
      kind: 'import',
    });
  });

  it('still fails with store_unavailable on a new file, which it has to migrate', () => {
    const { file, holder } = lockedFile();
    // The holder makes the file WAL first, as a store would: switching to WAL needs the lock too.
    holder.pragma('journal_mode = WAL');
    holder.prepare('BEGIN IMMEDIATE').run();
    cleanups.push(() => {
      if (holder.inTransaction) holder.prepare('ROLLBACK').run();
      holder.close();
    });
    let thrown: unknown;
    try {
      new SqliteProgressStore({ database: file, busyTimeoutMs: 20, dataVersionPollMs: 0 });
    } catch (error) {
      thrown = error;
    }
    expect(isProgressError(thrown, ErrorCode.StoreUnavailable), String(thrown)).toBe(true);
  });
});
