import { existsSync, rmSync } from 'node:fs';
import type { ProgressError, TaskChange, TaskEvent } from '@finishline/core';
import { ErrorCode } from '@finishline/core';
import { ManualClock } from '@finishline/core/testing';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteProgressStore } from '../src/index.js';
import type { FreezePoint } from './fixtures/child-store.js';
import type { ChildRequest } from './support/child-process.js';
import { bundleChildScript, messageOfType, StoreChild } from './support/child-process.js';
import { eventually, tempDatabase } from './support/temp-database.js';

// Real second processes on the same database file: forked children run the store (bundled from the
// sources) while this process watches, verifies or competes.

let child: { path: string; remove(): void };
beforeAll(async () => {
  child = await bundleChildScript();
});
afterAll(() => child?.remove());

async function readAll(store: SqliteProgressStore, taskId: string): Promise<TaskEvent[]> {
  const events: TaskEvent[] = [];
  for (;;) {
    const page = await store.readEvents(taskId, events.length, 10_000);
    events.push(...page);
    if (page.length < 10_000) return events;
  }
}

function range(from: number, to: number): number[] {
  return Array.from({ length: to - from + 1 }, (_, index) => from + index);
}

describe('cross-process change feed', () => {
  it('publishes every seq another process commits, in order and once, while this process writes too', async () => {
    const db = tempDatabase();
    const store = new SqliteProgressStore({ database: db.file, dataVersionPollMs: 5 });
    try {
      await store.createTask({ id: 'shared', owner: 'alice', kind: 'batch_taint' });
      await store.createTask({ id: 'local', owner: 'alice', kind: 'batch_taint' });
      const seen: TaskChange[] = [];
      store.changes.subscribe((change) => seen.push(change));

      const count = 600;
      const worker = new StoreChild(child.path, {
        mode: 'append',
        file: db.file,
        taskId: 'shared',
        count,
        burst: 7,
      });
      await worker.waitFor(messageOfType('ready'));
      // Our own commits run the write-path catch-up (other connections' events read inside our
      // transaction) while the poller runs too: neither may drop or repeat a change.
      let localAppends = 0;
      while (worker.process.exitCode === null && !worker.messages.some((m) => m.type === 'done')) {
        await store.append('local', { type: 'progress', done: ++localAppends });
        await new Promise((resolve) => setTimeout(resolve, 1));
      }
      await worker.waitFor(messageOfType('done'));
      await worker.exited;
      await eventually('the terminal change of the shared task', () =>
        seen.some((change) => change.taskId === 'shared' && change.terminal),
      );

      const shared = seen.filter((change) => change.taskId === 'shared');
      expect(shared.map((change) => change.seq)).toEqual(range(1, count + 1));
      expect(shared.filter((change) => change.terminal).map((change) => change.seq)).toEqual([count + 1]);
      expect(seen.filter((change) => change.taskId === 'local').map((change) => change.seq)).toEqual(
        range(1, localAppends),
      );
      expect(localAppends).toBeGreaterThan(0);
      const events = await readAll(store, 'shared');
      expect(events.map((event) => event.seq)).toEqual(range(1, count + 1));
      expect((await store.getTask('shared'))?.status).toBe('completed');
    } finally {
      await store.close();
      db.remove();
    }
  }, 60_000);
});

describe('appends to the same task from two processes', () => {
  it('all resolve, gap-free: neither process plans an append on a row the other one changed', async () => {
    const db = tempDatabase();
    const store = new SqliteProgressStore({ database: db.file, dataVersionPollMs: 5 });
    try {
      await store.createTask({ id: 'shared', owner: 'alice', kind: 'batch_taint' });
      const count = 3000;
      const worker = new StoreChild(child.path, {
        mode: 'append',
        file: db.file,
        taskId: 'shared',
        count,
        burst: 3,
      });
      await worker.waitFor(messageOfType('ready'));
      // Appends of both processes interleave on one row, each process's commit right after the other's:
      // a write mark taken for this store's own while it counted the other's commit (read after COMMIT)
      // left a stale row in the cache, and the next batch took a seq already taken (rejected `internal`).
      const failures: unknown[] = [];
      let local = 0;
      while (worker.process.exitCode === null && !worker.messages.some((m) => m.type === 'done')) {
        const burst = Array.from({ length: 3 }, () =>
          store.append('shared', { type: 'progress', done: ++local }).catch((error: unknown) => {
            failures.push(error);
          }),
        );
        await Promise.all(burst);
        await new Promise((resolve) => setImmediate(resolve));
      }
      const done = await worker.waitFor(messageOfType('done'));
      await worker.exited;
      // The child checkpointed in the background, as a real process does (not inline in its commits).
      expect(done.checkpointWorker).toBe('running');
      // Only the appends that came after the child completed the task may fail, and as such.
      expect(
        failures.filter((error) => (error as ProgressError).code !== ErrorCode.TaskFinished).map(String),
      ).toEqual([]);
      const events = await readAll(store, 'shared');
      // The child's completion is the last event: this process's appends after it were rejected.
      const accepted = events.filter((event) => event.type === 'progress').length;
      expect(events.map((event) => event.seq)).toEqual(range(1, events.length));
      expect(events.length).toBe(count + 1 + accepted);
    } finally {
      await store.close();
      db.remove();
    }
  }, 60_000);
});

describe('crash safety', () => {
  it('a process killed with SIGKILL mid-stream leaves no partial append: logs are 1..n and snapshots match', async () => {
    const db = tempDatabase();
    const taskIds = Array.from({ length: 20 }, (_, index) => `crash-${index}`);
    const setup = new SqliteProgressStore({ database: db.file });
    for (const id of taskIds) await setup.createTask({ id, owner: 'alice', kind: 'batch_taint' });
    await setup.close();
    const marker = `${db.file}.frozen`;
    // Where each round's kill lands: for certain inside a transaction, after some of a batch's events
    // were inserted (and again after some snapshots were updated), then at whatever point the stream
    // is in when the kill arrives.
    const rounds: { freeze?: FreezePoint; killAfterAppends: number }[] = [
      { freeze: { statement: 'events-insert', after: 40, marker }, killAfterAppends: 0 },
      { freeze: { statement: 'task-update', after: 50, marker }, killAfterAppends: 0 },
      { killAfterAppends: 5_000 },
    ];
    try {
      let committed = 0;
      for (const [round, { freeze, killAfterAppends }] of rounds.entries()) {
        rmSync(marker, { force: true });
        const request: ChildRequest = { mode: 'stream', file: db.file, taskIds, burst: 500 };
        const worker = new StoreChild(child.path, freeze ? { ...request, freeze } : request);
        await worker.waitFor(messageOfType('ready'));
        if (freeze)
          await eventually(`round ${round}: the child froze mid-transaction`, () => existsSync(marker));
        else {
          await worker.waitFor(
            (message): message is { type: 'committed'; appends: number } =>
              message.type === 'committed' && message.appends >= killAfterAppends,
          );
        }
        await worker.kill('SIGKILL');
        expect((await worker.exited).signal, `round ${round}: killed`).toBe('SIGKILL');
        const acknowledged = Math.max(
          0,
          ...worker.messages.map((message) => (message.type === 'committed' ? message.appends : 0)),
        );

        const raw = new Database(db.file);
        expect(raw.prepare('PRAGMA integrity_check').pluck().get(), `round ${round}: integrity`).toBe('ok');
        raw.close();
        const store = new SqliteProgressStore({ database: db.file });
        let total = 0;
        for (const taskId of taskIds) {
          const events = await readAll(store, taskId);
          const task = await store.getTask(taskId);
          expect(
            events.map((event) => event.seq),
            `round ${round}: ${taskId} log`,
          ).toEqual(range(1, events.length));
          expect(task?.seq, `round ${round}: ${taskId} snapshot seq`).toBe(events.length);
          // The snapshot counts exactly the item events that exist: row and events committed together.
          expect(task?.succeeded, `round ${round}: ${taskId} succeeded`).toBe(
            events.filter((event) => event.type === 'item').length,
          );
          expect(task?.updatedAt, `round ${round}: ${taskId} updatedAt`).toBe(
            events.at(-1)?.time ?? task?.createdAt,
          );
          total += events.length;
        }
        await store.close();
        // Whole batches only (each burst of 500 is one transaction): every append the child saw resolve
        // is there, and nothing of a batch the kill interrupted. The last report may not have left the
        // child before the kill, hence at least, not exactly, `acknowledged`.
        const written = total - committed;
        expect(written % 500, `round ${round}: ${written} events are whole batches`).toBe(0);
        expect(written, `round ${round}: events committed by this child`).toBeGreaterThanOrEqual(
          acknowledged,
        );
        expect(written, `round ${round}: at most one unreported batch`).toBeLessThanOrEqual(
          acknowledged + 500,
        );
        committed = total;
      }
    } finally {
      db.remove();
    }
  }, 120_000);
});

describe('reaping across processes', () => {
  it('two processes reaping the same expired leases interrupt each task exactly once', async () => {
    const db = tempDatabase();
    const clock = new ManualClock();
    const store = new SqliteProgressStore({ database: db.file, clock: clock.now, dataVersionPollMs: 0 });
    try {
      const ids = Array.from({ length: 120 }, (_, index) => `lease-${String(index).padStart(3, '0')}`);
      for (const id of ids) {
        await store.createTask({
          id,
          owner: 'alice',
          kind: 'batch_taint',
          lease: { owner: 'worker-a', ttlMs: 1000 },
        });
      }
      const now = clock.now() + 10_000;
      const reapers = [0, 1].map(() => new StoreChild(child.path, { mode: 'reap', file: db.file, now }));
      for (const reaper of reapers) await reaper.waitFor(messageOfType('ready'));
      for (const reaper of reapers) reaper.process.send('go');
      const results = await Promise.all(reapers.map((reaper) => reaper.waitFor(messageOfType('reaped'))));
      await Promise.all(reapers.map((reaper) => reaper.exited));

      const all = results.flatMap((result) => result.taskIds);
      expect([...all].sort()).toEqual(ids);
      expect(new Set(all).size).toBe(ids.length);
      for (const id of ids) {
        const events = await store.readEvents(id, 0);
        expect(
          events.map((event) => event.type),
          id,
        ).toEqual(['interrupted']);
      }
    } finally {
      await store.close();
      db.remove();
    }
  }, 60_000);
});
