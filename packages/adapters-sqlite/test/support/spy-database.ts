import type Database from 'better-sqlite3';
import type { SqliteDatabase, SqliteStatement } from '../../src/index.js';

/** Counts of statement runs by SQL text, and a hook to fail chosen runs. */
export interface SpyDatabase extends SqliteDatabase {
  /** How many times a statement whose SQL starts with `prefix` ran. */
  runs(prefix: string): number;
  /**
   * Makes the next run or read of a statement starting with `prefix` throw `error`; with `skip`, the one
   * after `skip` more that go through.
   */
  failNext(prefix: string, error: Error, skip?: number): void;
}

/**
 * A better-sqlite3 connection behind the store's structural driver interface, recording every run:
 * how the tests count transactions (`BEGIN IMMEDIATE`) and inject storage failures.
 */
export function spyDatabase(raw: Database.Database): SpyDatabase {
  const counts = new Map<string, number>();
  const failures: { prefix: string; error: Error; skip: number }[] = [];
  const failIfDue = (sql: string): void => {
    const failure = failures.find(({ prefix }) => sql.startsWith(prefix));
    if (failure === undefined) return;
    if (failure.skip > 0) {
      failure.skip -= 1;
      return;
    }
    failures.splice(failures.indexOf(failure), 1);
    throw failure.error;
  };
  const wrap = (sql: string, statement: SqliteStatement): SqliteStatement => ({
    run: (...parameters) => {
      counts.set(sql, (counts.get(sql) ?? 0) + 1);
      failIfDue(sql);
      return statement.run(...parameters);
    },
    get: (...parameters) => {
      failIfDue(sql);
      return statement.get(...parameters);
    },
    all: (...parameters) => {
      failIfDue(sql);
      return statement.all(...parameters);
    },
  });
  return {
    get memory() {
      return raw.memory;
    },
    close: () => raw.close(),
    prepare: (sql) => wrap(sql, raw.prepare(sql)),
    runs: (prefix) =>
      [...counts].filter(([sql]) => sql.startsWith(prefix)).reduce((sum, [, n]) => sum + n, 0),
    failNext: (prefix, error, skip = 0) => {
      failures.push({ prefix, error, skip });
    },
  };
}

/** An error shaped like better-sqlite3's `SqliteError`. */
export function sqliteError(code: string, message: string): Error {
  return Object.assign(new Error(message), { name: 'SqliteError', code });
}
