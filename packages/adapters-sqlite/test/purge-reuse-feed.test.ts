import type { TaskChange } from '@finishline/core';
import { ManualClock } from '@finishline/core/testing';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { SqliteProgressStore } from '../src/index.js';
import { tempDatabase } from './support/temp-database.js';

/**
 * Retention deletes a finished task and a new task takes its id, starting again at seq 1. A feed that
 * remembered each task's last published seq would drop the new task's seqs up to the old one as
 * duplicates, and its watchers would never see its end (the Postgres store's defect, fixed with a purge
 * log). The SQLite feed remembers no seq: it reads past an `AUTOINCREMENT` event id, which retention never
 * lowers, so the new task's events lie past the mark of every store on the file, whether that store did
 * the purge, polled between it and the new task, or polled only after all of it. Each store publishes every
 * seq of both runs. These tests fail if the feed filters by seq (all of them), if event ids are reused
 * after a purge (the first two: the restore check then takes the file for restored and publishes only each
 * task's latest seq), or if a store keeps a running row it remembered across another store's writes (the
 * last: its append to the new task gets the old run's next seq). Two stores on one file stand for two
 * processes; only the poll timer is fake, so `a` polls when the test says so and never in between.
 */

const POLL_MS = 3_600_000;

type Who = 'a' | 'b';

/** When `a` looks at what `b` committed: polls, or the catch-up of its own write transactions only. */
type Learns = 'poll-after-each-step' | 'poll-after-purge-and-at-end' | 'poll-at-end' | 'own-writes';

interface Scenario {
  name: string;
  /** Writes the old run's five running events (and so keeps its running row between batches). */
  oldRunning: Who;
  oldTerminal: Who;
  purger: Who;
  creator: Who;
  /** Appends the new run: `newItems` running events, then `completed`. */
  appender: Who;
  newItems: number;
  learns: Learns;
}

const scenarios: Scenario[] = [
  {
    name: 'one store purges the task and runs it again, with fewer events than the old run',
    ...{ oldRunning: 'a', oldTerminal: 'a', purger: 'a', creator: 'a', appender: 'a' },
    ...{ newItems: 2, learns: 'poll-after-each-step' },
  },
  {
    name: 'the other store purges it and runs it again with fewer events, all before this store polls',
    ...{ oldRunning: 'b', oldTerminal: 'b', purger: 'b', creator: 'b', appender: 'b' },
    ...{ newItems: 2, learns: 'poll-at-end' },
  },
  {
    name: 'the other store purges it and runs it again with as many events, this store polling at each step',
    ...{ oldRunning: 'b', oldTerminal: 'b', purger: 'b', creator: 'b', appender: 'b' },
    ...{ newItems: 5, learns: 'poll-after-each-step' },
  },
  {
    name: 'the other store purges it and runs it again with more events, this store polling after the purge',
    ...{ oldRunning: 'b', oldTerminal: 'b', purger: 'b', creator: 'b', appender: 'b' },
    ...{ newItems: 8, learns: 'poll-after-purge-and-at-end' },
  },
  {
    name: 'the other store purges it, this store creates it again and ends it at once, never polling',
    ...{ oldRunning: 'a', oldTerminal: 'b', purger: 'b', creator: 'a', appender: 'a' },
    ...{ newItems: 0, learns: 'own-writes' },
  },
  {
    name: 'the other store purges it and creates it again, this store (which kept the old running row) ends it',
    ...{ oldRunning: 'a', oldTerminal: 'b', purger: 'b', creator: 'b', appender: 'a' },
    ...{ newItems: 0, learns: 'own-writes' },
  },
];

const OLD_SEQS = 6;

function run(seqs: number): TaskChange[] {
  return Array.from({ length: seqs }, (_, index) => ({
    taskId: 'job',
    seq: index + 1,
    terminal: index + 1 === seqs,
  }));
}

afterEach(() => {
  vi.useRealTimers();
});

describe('a task created again under an id that retention purged', () => {
  it.each(scenarios.map((scenario) => [scenario.name, scenario] as const))('%s', async (_name, s) => {
    vi.useFakeTimers({ toFake: ['setInterval', 'clearInterval'] });
    const clock = new ManualClock();
    const db = tempDatabase();
    const stores = {
      a: new SqliteProgressStore({ database: db.file, clock: clock.now, dataVersionPollMs: POLL_MS }),
      b: new SqliteProgressStore({ database: db.file, clock: clock.now, dataVersionPollMs: POLL_MS }),
    };
    const seen: TaskChange[] = [];
    stores.a.changes.subscribe((change) => {
      // The seqs are what this test is about; only the own appends' changes name their run.
      const { run: _run, ...rest } = change;
      if (change.taskId === 'job') seen.push(rest);
    });
    await stores.a.createTask({ id: 'other', owner: 'alice', kind: 'k' });
    let otherDone = 0;
    /** `a` learns what `b` committed: by a poll, or by the catch-up of a write transaction of its own. */
    const look = async (): Promise<void> => {
      if (s.learns === 'own-writes') await stores.a.append('other', { type: 'progress', done: ++otherDone });
      else vi.advanceTimersByTime(POLL_MS);
    };
    try {
      await stores.b.createTask({ id: 'job', owner: 'alice', kind: 'k' });
      for (let done = 1; done < OLD_SEQS; done++)
        await stores[s.oldRunning].append('job', { type: 'progress', done });
      await stores[s.oldTerminal].append('job', { type: 'completed' });
      await look();
      expect(seen).toEqual(run(OLD_SEQS));

      clock.advance(1000);
      expect(await stores[s.purger].purgeFinished({ olderThanMs: 0 })).toBe(1);
      if (s.learns === 'poll-after-each-step' || s.learns === 'poll-after-purge-and-at-end') await look();
      await stores[s.creator].createTask({ id: 'job', owner: 'alice', kind: 'k' });
      if (s.learns === 'poll-after-each-step') await look();
      for (let done = 1; done <= s.newItems; done++) {
        await stores[s.appender].append('job', { type: 'progress', done });
        if (s.learns === 'poll-after-each-step') await look();
      }
      const end = await stores[s.appender].append('job', { type: 'completed' });
      expect(end.event.seq).toBe(s.newItems + 1);
      await look();

      expect(seen).toEqual([...run(OLD_SEQS), ...run(s.newItems + 1)]);
      expect((await stores.a.readEvents('job', 0)).map((event) => event.seq)).toEqual(
        run(s.newItems + 1).map((change) => change.seq),
      );
    } finally {
      await stores.a.close();
      await stores.b.close();
      db.remove();
    }
  });
});
