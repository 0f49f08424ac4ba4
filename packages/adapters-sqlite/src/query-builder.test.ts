import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { migrate } from './migrations.js';
import { createQueryBuilder, PreparedInsert, PreparedQuery, param } from './query-builder.js';
import { TABLES } from './schema.js';
import { prepareStatements } from './sqlite-statements.js';

const builder = createQueryBuilder();

describe('prepared queries', () => {
  it('bind placeholders by name and constants as parameters, never as SQL text', () => {
    const database = new Database(':memory:');
    migrate(database, builder, { now: 1 });
    const query = new PreparedQuery(
      database,
      builder
        .selectFrom(TABLES.migrations)
        .select('name')
        .where('version', '=', param('version'))
        .where('name', '<>', "x' OR '1'='1"),
      ['version'],
    );
    expect(query.sql).not.toContain("'1'='1");
    expect(query.all({ version: 2 })).toEqual([{ name: 'create_operator_views' }]);
    database.close();
  });

  it('fail at construction when the placeholders do not match the declared names', () => {
    const database = new Database(':memory:');
    migrate(database, builder, { now: 1 });
    const select = builder.selectFrom(TABLES.migrations).selectAll().where('version', '=', param('version'));
    expect(() => new PreparedQuery(database, select, ['versoin' as never])).toThrow(/do not match/);
    expect(
      () =>
        new PreparedInsert(
          database,
          builder
            .insertInto(TABLES.migrations)
            .values({ version: param('a#0'), name: param('b#0'), applied_at: param('c#0') }),
          {
            columns: ['a', 'c', 'b'],
            rows: 1,
          },
        ),
    ).toThrow(/parameter layout/);
    database.close();
  });

  it('reap, purge, list and read use their indexes (the partial ones need the literal status)', () => {
    const database = new Database(':memory:');
    migrate(database, builder, { now: 1 });
    const statements = prepareStatements(database, builder);
    const plan = (sql: string, parameters: unknown[]) =>
      (database.prepare(`EXPLAIN QUERY PLAN ${sql}`).all(parameters) as { detail: string }[])
        .map((row) => row.detail)
        .join('\n');
    expect(plan(statements.expiredLeases.sql, [1, 10])).toContain('finishline_tasks_lease_expiry');
    expect(plan(statements.finishedBefore.sql, [1, 2, 10])).toContain('finishline_tasks_finished');
    expect(plan(statements.listTasks.sql, ['alice', 10])).toContain('finishline_tasks_owner_created');
    expect(plan(statements.selectEvents.sql, ['t', 0, 10])).toMatch(
      /USING .*INDEX \S+ \(task_id=\? AND seq>\?\)/,
    );
    database.close();
  });
});
