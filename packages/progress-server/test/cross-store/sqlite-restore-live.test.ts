import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TaskEvent } from '@finishline/core';
import { SqliteProgressStore } from '@finishline/sqlite';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { RawClient, serverFrameViolations } from '../../src/testing/harness.js';
import { listenOn } from './stores.js';

/**
 * A SQLite file restored from an older backup while a server runs on it and another process writes to
 * it (SQLite's backup API into the live file, as `sqlite3 progress.db ".restore backup.db"` does). The
 * restored file assigns event ids below the ones the server's change feed already passed; a watcher of
 * a task the other process writes must still be told of its events or its end, and the store renews the
 * epoch once it notices the restore.
 */

const cleanups: Array<() => Promise<void> | void> = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  expect(serverFrameViolations.splice(0)).toEqual([]);
});

async function copyDatabase(from: string, to: string): Promise<void> {
  const source = new Database(from, { readonly: true });
  try {
    await source.backup(to);
  } finally {
    source.close();
  }
}

/**
 * A server on a SQLite file that `other` (another process's store: it writes, the server only watches)
 * writes too, and a client of the server watching task `taskId`, which `other` took to seq `lastSeq`
 * after the file was backed up at seq 1. `restore()` copies the backup into the live file.
 */
async function watchedPastBackup(taskId: string, lastSeq: number) {
  const dir = mkdtempSync(join(tmpdir(), 'finishline-live-restore-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'progress.db');
  const backup = join(dir, 'backup.db');
  const store = new SqliteProgressStore({ database: file, dataVersionPollMs: 5 });
  cleanups.push(() => store.close());
  const other = new SqliteProgressStore({ database: file, dataVersionPollMs: 0 });
  cleanups.push(() => other.close());
  const { server, wsUrl } = await listenOn(store, { heartbeatIntervalMs: 200 });
  cleanups.push(() => server.close({ timeoutMs: 1000 }));

  await other.createTask({ id: taskId, owner: 'alice', kind: 'job' });
  await other.append(taskId, { type: 'progress', done: 1 });
  await copyDatabase(file, backup);
  // Past the backup: the server's feed publishes these, and its mark passes their ids.
  const client = await RawClient.connect(wsUrl, { user: 'alice' });
  cleanups.push(async () => {
    await client.close();
  });
  client.send({ type: 'subscribe', taskId, afterSeq: 0 });
  for (let done = 2; done <= lastSeq; done++) await other.append(taskId, { type: 'progress', done });
  await client.next((frame) => frame.type === 'event' && (frame.event as TaskEvent).seq === lastSeq);
  return { other, client, restore: () => copyDatabase(backup, file) };
}

describe('a SQLite file restored under a running server', () => {
  it("brings a watcher of another process's task, written after the restore, to its terminal state", async () => {
    const { other, client, restore } = await watchedPastBackup('earlier', 30);

    await restore();
    await other.createTask({ id: 'later', owner: 'alice', kind: 'job', total: 1 });
    const from = client.frames.length;
    client.send({ type: 'subscribe', taskId: 'later', afterSeq: 0 });
    await client.next((frame) => frame.type === 'snapshot', { from });
    await other.append('later', { type: 'item', key: 'node-1', ok: true });
    await other.append('later', { type: 'completed' });

    // As an event, or in the snapshot of the reset that follows the epoch the store renewed on noticing
    // the restore (whichever came first).
    const terminal = await client.next(
      (frame) =>
        (frame.type === 'event' &&
          (frame.event as TaskEvent).taskId === 'later' &&
          (frame.event as TaskEvent).type === 'completed') ||
        (frame.type === 'snapshot' &&
          (frame.task as { id: string }).id === 'later' &&
          (frame.task as { status: string }).status === 'completed'),
      { from, timeoutMs: 3000 },
    );
    expect(terminal.type === 'event' ? terminal.event : terminal.task).toMatchObject({ seq: 2 });
  });

  it('brings a watcher of a task that ends at a seq lost by the restore (the epoch kept) to its end', async () => {
    const { other, client, restore } = await watchedPastBackup('t', 3);

    await restore();
    // The worker goes on: its end takes the lost seq 2.
    await other.append('t', { type: 'completed' });
    // The store renews the epoch on noticing the restore: the server resets the watcher from the store.
    const end = await client.next(
      (frame) =>
        (frame.type === 'event' && (frame.event as TaskEvent).type === 'completed') ||
        (frame.type === 'snapshot' && (frame.task as { status: string }).status === 'completed'),
      { timeoutMs: 3000 },
    );
    expect(end.type === 'event' ? end.event : end.task).toMatchObject({ seq: 2 });
  });
});
