import type { TaskChange } from '@finishline/core';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { SqliteProgressStore } from '../src/index.js';
import { eventually, tempDatabase } from './support/temp-database.js';

/**
 * A database file restored from an older backup while stores run on it. Two stores on one file stand
 * for two processes: `server` watches the feed, `worker` writes. The restore goes through SQLite's
 * online backup API into the live file (what `sqlite3 progress.db ".restore backup.db"` does), so every
 * open connection sees the older content, and the event ids start again below the ones `server` saw.
 */

/** A poll interval no test waits for: the store then learns other commits only in its own writes. */
const NEVER_POLLS_MS = 3_600_000;

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/**
 * `openServer` opens the server's connection when the test needs a hand in it (the file's path by default:
 * the store opens and closes its own).
 */
function setUp(serverPollMs: number, openServer?: (file: string) => Database.Database) {
  const db = tempDatabase();
  const backup = `${db.file}.backup`;
  const serverDatabase = openServer?.(db.file);
  const server = new SqliteProgressStore({
    database: serverDatabase ?? db.file,
    dataVersionPollMs: serverPollMs,
  });
  const worker = new SqliteProgressStore({ database: db.file, dataVersionPollMs: 0 });
  cleanups.push(
    db.remove,
    () => {
      serverDatabase?.close();
    },
    () => server.close(),
    () => worker.close(),
  );
  const seen: TaskChange[] = [];
  // Seqs are what these tests are about: recorded without the run that own appends' changes carry.
  server.changes.subscribe(({ run: _run, ...change }) => seen.push(change));
  return {
    server,
    worker,
    seen,
    file: db.file,
    /** Copies the database as it is now. */
    async takeBackup(): Promise<void> {
      const source = new Database(db.file, { readonly: true });
      try {
        await source.backup(backup);
      } finally {
        source.close();
      }
    },
    /**
     * Writes the backup's rows over the live database's in one transaction on a connection of its own: the
     * same content as {@link restore}, synchronously, so that a test can land it between two statements.
     */
    restoreNow(): void {
      const restorer = new Database(db.file);
      try {
        restorer.prepare('ATTACH ? AS backup').run(backup);
        restorer.transaction(() => {
          for (const table of ['finishline_events', 'finishline_tasks']) {
            restorer.exec(
              `DELETE FROM main.${table}; INSERT INTO main.${table} SELECT * FROM backup.${table}`,
            );
          }
          restorer.exec(`UPDATE main.sqlite_sequence
            SET seq = (SELECT seq FROM backup.sqlite_sequence WHERE name = 'finishline_events')
            WHERE name = 'finishline_events'`);
        })();
      } finally {
        restorer.close();
      }
    },
    /** Writes the backup over the live database. */
    async restore(): Promise<void> {
      const source = new Database(backup, { readonly: true });
      try {
        await source.backup(db.file);
      } finally {
        source.close();
      }
    },
  };
}

/**
 * The worker's task `old` at seq 1 and the server's task `mine` at seq 0 in the backup; then `old` at
 * seq 31 in the live file, all of it published to the server: the server's mark is far above the ids
 * the restored file assigns next.
 */
async function runPastTheBackup(setup: ReturnType<typeof setUp>, pollMs: number): Promise<void> {
  const { server, worker, seen, takeBackup } = setup;
  await worker.createTask({ id: 'old', owner: 'alice', kind: 'batch_taint' });
  await worker.append('old', { type: 'progress', done: 1 });
  await server.createTask({ id: 'mine', owner: 'bob', kind: 'batch_taint' });
  await takeBackup();
  for (let done = 2; done <= 31; done++) await worker.append('old', { type: 'progress', done });
  // Without polls, the server finds them in its own write transaction.
  if (pollMs === NEVER_POLLS_MS) await server.append('mine', { type: 'progress', done: 1 });
  await eventually('the server saw the worker reach seq 31', () =>
    seen.some((change) => change.taskId === 'old' && change.seq === 31),
  );
}

describe('a database file restored from an older backup under a running store', () => {
  it("publishes other processes' commits to the restored file, whose ids are below the mark", async () => {
    const setup = setUp(5);
    await runPastTheBackup(setup, 5);
    const { worker, seen, restore } = setup;

    await restore();
    await worker.createTask({ id: 'new', owner: 'alice', kind: 'batch_taint' });
    await worker.append('new', { type: 'progress', done: 1 });
    await worker.append('new', { type: 'completed' });

    await eventually(
      'the terminal change of the task written to the restored file',
      () => seen.some((change) => change.taskId === 'new' && change.terminal),
      2_000,
    );
    // Read past the mark once a poll found the file gone back, or re-read as the task's latest seq (a
    // hint to read it) by the poll that found it: either way the last change names the end.
    expect(seen.filter((change) => change.taskId === 'new').at(-1)).toEqual({
      taskId: 'new',
      seq: 2,
      terminal: true,
    });
  });

  it("does not let its own append move the mark past other processes' commits below it", async () => {
    // The server's poll never runs: only its own write transaction can find the worker's commits.
    const setup = setUp(NEVER_POLLS_MS);
    await runPastTheBackup(setup, NEVER_POLLS_MS);
    const { server, worker, seen, restore } = setup;

    await restore();
    const restoredAt = seen.length;
    await worker.createTask({ id: 'new', owner: 'alice', kind: 'batch_taint' });
    await worker.append('new', { type: 'progress', done: 1 });
    await server.append('mine', { type: 'progress', done: 1 });
    // The append's transaction found the worker's commit, though its id is below the mark: the ids its
    // own insert got showed that the file had gone back, and the worker's task was reported.
    const after = seen.slice(restoredAt);
    expect(after).toContainEqual({ taskId: 'new', seq: 1, terminal: false });
    expect(after).toContainEqual({ taskId: 'mine', seq: 1, terminal: false });

    // And the mark follows the restored file: the worker's next commit is found by the next write.
    const before = seen.length;
    await worker.append('new', { type: 'completed' });
    await server.append('mine', { type: 'progress', done: 2 });
    expect(seen.slice(before)).toEqual([
      { taskId: 'new', seq: 2, terminal: true },
      { taskId: 'mine', seq: 2, terminal: false },
    ]);
  });

  it('forgetSeqs(): publishes nothing committed before it, and every commit after it', async () => {
    const setup = setUp(NEVER_POLLS_MS);
    await runPastTheBackup(setup, NEVER_POLLS_MS);
    const { server, worker, seen, restore } = setup;

    // A commit of the old epoch that the server's ack transaction reads but does not publish yet.
    await worker.append('old', { type: 'progress', done: 32 });
    await server.ack('mine', 0);
    await restore();
    await worker.renewEpoch();
    // Committed to the restored file before the server noticed the new epoch.
    await worker.createTask({ id: 'new', owner: 'alice', kind: 'batch_taint' });
    await worker.append('new', { type: 'progress', done: 1 });

    const before = seen.length;
    server.changes.forgetSeqs?.(); // what the server does once it read the renewed epoch
    await worker.append('new', { type: 'progress', done: 2 });
    await server.append('mine', { type: 'progress', done: 1 });
    // The restarted streams read what came before; the feed reports only what came after, in order.
    expect(seen.slice(before)).toEqual([
      { taskId: 'new', seq: 2, terminal: false },
      { taskId: 'mine', seq: 1, terminal: false },
    ]);
  });
});

/**
 * After the restore the worker commits task `quiet` (created, one progress, completed: ids at or below
 * the server's mark, which the server never reads past) and then enough events of task `busy` to take
 * the ids past the server's mark before the server looks. Neither `sqlite_sequence` (above the mark by
 * then) nor the server's own insert ids (above it too) show that the file went back.
 */
async function passTheMarkAfterRestore(setup: ReturnType<typeof setUp>): Promise<void> {
  const { worker, restore } = setup;
  await restore();
  await worker.createTask({ id: 'quiet', owner: 'alice', kind: 'batch_taint' });
  await worker.append('quiet', { type: 'progress', done: 1 });
  await worker.append('quiet', { type: 'completed' });
  await worker.createTask({ id: 'busy', owner: 'alice', kind: 'batch_taint' });
  for (let done = 1; done <= 40; done++) await worker.append('busy', { type: 'progress', done });
}

/** What {@link passTheMarkAfterRestore} committed, among the changes the server published after it. */
function expectPassedTheMark(after: TaskChange[]): void {
  expect(after).toContainEqual({ taskId: 'quiet', seq: 2, terminal: true });
  expect(after.filter((change) => change.taskId === 'busy').at(-1)).toEqual({
    taskId: 'busy',
    seq: 40,
    terminal: false,
  });
}

describe('the tasks of a restored file, each one hinted by its latest seq', () => {
  it('are read and published a page per event-loop turn, not all in one', async () => {
    const setup = setUp(5);
    const { worker, seen, restore } = setup;
    // 2,500 tasks at seq 1 (copies of one, written in one statement): three pages of the re-read.
    const bulk = 2_500;
    await worker.createTask({ id: 'bulk', owner: 'alice', kind: 'batch_taint' });
    await worker.append('bulk', { type: 'progress', done: 1 });
    const writer = new Database(setup.file);
    try {
      const columns = (
        writer.prepare("PRAGMA table_info('finishline_tasks')").all() as { name: string }[]
      ).map(({ name }) => name);
      const values = columns.map((name) => (name === 'id' ? "'bulk-' || n" : name)).join(', ');
      writer.exec(`WITH RECURSIVE count(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM count WHERE n < ${bulk - 1})
        INSERT INTO finishline_tasks (${columns.join(', ')})
        SELECT ${values} FROM count, finishline_tasks WHERE id = 'bulk'`);
    } finally {
      writer.close();
    }
    await runPastTheBackup(setup, 5);
    let seenBeforeNextTurn: number | undefined;
    const from = seen.length;
    // Distinct tasks: a poll that noticed the restore again would start over, which is no fault.
    const hinted = () =>
      new Set(seen.slice(from).flatMap(({ taskId }) => (taskId.startsWith('bulk') ? [taskId] : []))).size;
    let looked = false;
    setup.server.changes.subscribe(({ taskId }) => {
      if (looked || !taskId.startsWith('bulk')) return;
      looked = true;
      setImmediate(() => {
        seenBeforeNextTurn = hinted();
      });
    });
    await restore();
    await eventually('every task of the restored file hinted', () => hinted() === bulk, 5_000);
    // The event loop had a turn before the last page: better-sqlite3 is synchronous, so every task read
    // and published in one turn held the loop for all of it (100,000 tasks: 170–256 ms).
    expect(seenBeforeNextTurn).toBeLessThan(bulk);
  });
});

describe("a restored file whose ids passed the store's mark before the store looked", () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('is found by the next poll, which publishes the commits at or below the old mark', async () => {
    // Only the poll timer is fake: the server polls when the test says so, and never in between.
    vi.useFakeTimers({ toFake: ['setInterval', 'clearInterval'] });
    const setup = setUp(NEVER_POLLS_MS);
    // The server's own append is last: its mark is an event it wrote.
    await runPastTheBackup(setup, NEVER_POLLS_MS);
    const { seen } = setup;

    await passTheMarkAfterRestore(setup);
    const restoredAt = seen.length;
    vi.advanceTimersByTime(NEVER_POLLS_MS);

    const after = seen.slice(restoredAt);
    expectPassedTheMark(after);
  });

  it("is found by the store's next write transaction, which publishes them", async () => {
    const setup = setUp(NEVER_POLLS_MS);
    await runPastTheBackup(setup, NEVER_POLLS_MS);
    const { server, worker, seen } = setup;
    // The server's ack transaction reads the worker's commit: its mark is an event it read.
    await worker.append('old', { type: 'progress', done: 32 });
    await server.ack('mine', 0);

    await passTheMarkAfterRestore(setup);
    const restoredAt = seen.length;
    await server.append('mine', { type: 'progress', done: 1 });

    const after = seen.slice(restoredAt);
    expectPassedTheMark(after);
    expect(after).toContainEqual({ taskId: 'mine', seq: 1, terminal: false });
  });
});

describe('forgetSeqs() called by a listener while the feed publishes', () => {
  it('drops the changes queued before the call and publishes those committed after it', async () => {
    const setup = setUp(NEVER_POLLS_MS);
    const { server, worker, seen } = setup;
    await server.createTask({ id: 'mine', owner: 'bob', kind: 'batch_taint' });
    await worker.createTask({ id: 'theirs', owner: 'alice', kind: 'batch_taint' });
    let forgotten = false;
    server.changes.subscribe((change) => {
      if (forgotten || change.taskId !== 'mine') return;
      forgotten = true;
      server.changes.forgetSeqs?.();
      // Committed after the call (getTask commits the queued append now), and read into the outbox by
      // the server's ack transaction while the drain that called this listener still runs.
      void worker.append('theirs', { type: 'progress', done: 1 });
      void worker.getTask('theirs');
      void server.ack('mine', 0);
    });
    // One batch, two changes: the second one is still queued when the listener forgets.
    await Promise.all([
      server.append('mine', { type: 'progress', done: 1 }),
      server.append('mine', { type: 'progress', done: 2 }),
    ]);
    expect(seen).toEqual([
      { taskId: 'mine', seq: 1, terminal: false },
      { taskId: 'theirs', seq: 1, terminal: false },
    ]);
  });
});

describe('a restore landing inside a poll, after its check of the mark and before its read past it', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('reads one snapshot: the next poll finds the restore and publishes the commits below the old mark', async () => {
    vi.useFakeTimers({ toFake: ['setInterval', 'clearInterval'] });
    // The server's look-up of the event at its mark (the check's first read) runs `afterCheck` once.
    let afterCheck: (() => void) | undefined;
    const setup = setUp(NEVER_POLLS_MS, (file) => {
      const database = new Database(file);
      const prepare = database.prepare.bind(database);
      database.prepare = ((source: string) => {
        const statement = prepare(source);
        if (!/from "finishline_events" where "id" = \?$/.test(source)) return statement;
        const get = statement.get.bind(statement);
        statement.get = ((...values: unknown[]) => {
          const row = get(...values);
          const run = afterCheck;
          afterCheck = undefined;
          run?.();
          return row;
        }) as typeof statement.get;
        return statement;
      }) as typeof database.prepare;
      return database;
    });
    await runPastTheBackup(setup, NEVER_POLLS_MS);
    const { worker, seen } = setup;

    // passTheMarkAfterRestore, synchronously: each store call below does its writes when it is called,
    // and createTask() and getTask() commit the appends queued before them.
    afterCheck = () => {
      setup.restoreNow();
      void worker.createTask({ id: 'quiet', owner: 'alice', kind: 'batch_taint' });
      void worker.append('quiet', { type: 'progress', done: 1 });
      void worker.append('quiet', { type: 'completed' });
      void worker.createTask({ id: 'busy', owner: 'alice', kind: 'batch_taint' });
      for (let done = 1; done <= 40; done++) void worker.append('busy', { type: 'progress', done });
      void worker.getTask('busy');
    };
    const restoredAt = seen.length;
    vi.advanceTimersByTime(NEVER_POLLS_MS);
    expect(afterCheck).toBeUndefined();
    vi.advanceTimersByTime(NEVER_POLLS_MS);

    const after = seen.slice(restoredAt);
    expectPassedTheMark(after);
  });
});

describe('the epoch, once a store noticed the restore', () => {
  it('is renewed, once between the stores that notice it, and each tells its listeners', async () => {
    const setup = setUp(5);
    const { server, worker } = setup;
    await runPastTheBackup(setup, 5);
    const before = await server.getEpoch();
    const epochsHeard: string[] = [];
    server.changes.onEpochRenewed?.(() => void server.getEpoch().then((epoch) => epochsHeard.push(epoch)));
    worker.changes.onEpochRenewed?.(() => void worker.getEpoch().then((epoch) => epochsHeard.push(epoch)));
    await setup.restore();
    // The worker notices in its write (its own ids not above its mark), the server at its next poll.
    await worker.append('old', { type: 'completed' });
    await eventually('both stores heard a renewal', () => epochsHeard.length >= 2, 2000);
    await new Promise((resolve) => setTimeout(resolve, 50));
    const after = await server.getEpoch();
    expect(after).not.toBe(before);
    // One renewal: every store heard the same new epoch, and only it.
    expect(new Set(epochsHeard)).toEqual(new Set([after]));
    expect(epochsHeard).toHaveLength(2);
  });
});

describe('renewEpoch heard through the feed', () => {
  it("tells this store's listeners at once, and another process's at its next poll", async () => {
    const { server, worker } = setUp(5);
    const workerHeard: number[] = [];
    const serverHeard: number[] = [];
    worker.changes.onEpochRenewed?.(() => workerHeard.push(1));
    server.changes.onEpochRenewed?.(() => serverHeard.push(1));
    const epoch = await worker.renewEpoch();
    expect(workerHeard).toHaveLength(1);
    // The server's poll sees the commit, reads the epoch and tells its listeners (its server reads it then).
    await eventually('the server store hears the renewal', () => serverHeard.length === 1, 2000);
    expect(await server.getEpoch()).toBe(epoch);
    // Commits that leave the epoch alone say nothing more.
    await worker.createTask({ id: 't', owner: 'alice', kind: 'k' });
    await worker.append('t', { type: 'progress', done: 0 });
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(serverHeard).toHaveLength(1);
  });

  it('commits the appends called before it first: their changes come before the renewal, in the old epoch', async () => {
    const { worker } = setUp(NEVER_POLLS_MS);
    await worker.createTask({ id: 't', owner: 'alice', kind: 'k' });
    const heard: string[] = [];
    worker.changes.subscribe((change) => heard.push(`seq ${change.seq}`));
    worker.changes.onEpochRenewed?.(() => heard.push('renewed'));
    // Not awaited: queued for the next group commit when renewEpoch() is called, as a server's appends are.
    const appended = worker.append('t', { type: 'progress', done: 1 });
    await worker.renewEpoch();
    // Committed after the renewal, the append's change was heard after it: a server that read the new
    // epoch then took an event called before the renewal for one of the new epoch.
    expect(heard).toEqual(['seq 1', 'renewed']);
    expect((await appended).event.seq).toBe(1);
  });
});
