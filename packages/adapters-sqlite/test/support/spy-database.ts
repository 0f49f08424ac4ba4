import type Database from 'better-sqlite3';
import type { SqliteDatabase, SqliteStatement } from '../../src/index.js';

/** Counts of statement runs by SQL text, and a hook to fail chosen runs. */
export interface SpyDatabase extends SqliteDatabase {
  /** How many times a statement whose SQL starts with `prefix` ran. */
  runs(prefix: string): number;
  /** Makes the next run of a statement starting with `prefix` throw `error`. */
  failNext(prefix: string, error: Error): void;
}

/**
 * A better-sqlite3 connection behind the store's structural driver interface, recording every run:
 * how the tests count transactions (`BEGIN IMMEDIATE`) and inject storage failures.
 */
export function spyDatabase(raw: Database.Database): SpyDatabase {
  const counts = new Map<string, number>();
  const failures: { prefix: string; error: Error }[] = [];
  const wrap = (sql: string, statement: SqliteStatement): SqliteStatement => ({
    run: (...parameters) => {
      counts.set(sql, (counts.get(sql) ?? 0) + 1);
      const failure = failures.findIndex(({ prefix }) => sql.startsWith(prefix));
      if (failure >= 0) throw failures.splice(failure, 1)[0]!.error;
      return statement.run(...parameters);
    },
    get: (...parameters) => statement.get(...parameters),
    all: (...parameters) => statement.all(...parameters),
  });
  return {
    get memory() {
      return raw.memory;
    },
    close: () => raw.close(),
    prepare: (sql) => wrap(sql, raw.prepare(sql)),
    runs: (prefix) =>
      [...counts].filter(([sql]) => sql.startsWith(prefix)).reduce((sum, [, n]) => sum + n, 0),
    failNext: (prefix, error) => {
      failures.push({ prefix, error });
    },
  };
}

/** An error shaped like better-sqlite3's `SqliteError`. */
export function sqliteError(code: string, message: string): Error {
  return Object.assign(new Error(message), { name: 'SqliteError', code });
}
