import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ErrorCode, isProgressError } from '@finishline/core';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import type { Migration } from './migrations.js';
import { MIGRATIONS, migrate, SQLITE_SCHEMA_VERSION } from './migrations.js';
import { createQueryBuilder } from './query-builder.js';
import { TABLES } from './schema.js';
import type { SqliteDatabase } from './sqlite-driver.js';

const builder = createQueryBuilder();

function schemaObjects(database: Database.Database): string[] {
  return (
    database
      .prepare(
        "SELECT type || ' ' || name AS object FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY 1",
      )
      .pluck()
      .all() as string[]
  ).sort();
}

describe('migrations', () => {
  it('create the whole schema, record each version once, and do nothing the second time', () => {
    const database = new Database(':memory:');
    expect(migrate(database, builder, { now: 42 })).toEqual([1, 2, 3]);
    expect(SQLITE_SCHEMA_VERSION).toBe(3);
    expect(
      database.prepare(`SELECT version, name, applied_at FROM ${TABLES.migrations} ORDER BY version`).all(),
    ).toEqual([
      { version: 1, name: 'create_tasks_and_events', applied_at: 42 },
      { version: 2, name: 'create_operator_views', applied_at: 42 },
      { version: 3, name: 'create_meta_with_epoch', applied_at: 42 },
    ]);
    // The epoch is created with the schema: 128 random bits.
    const epoch = database.prepare(`SELECT value FROM ${TABLES.meta} WHERE key = 'epoch'`).pluck().get();
    expect(epoch).toMatch(/^[0-9a-f]{32}$/);
    expect(schemaObjects(database)).toEqual([
      'index finishline_tasks_finished',
      'index finishline_tasks_lease_expiry',
      'index finishline_tasks_owner_created',
      'table finishline_events',
      'table finishline_meta',
      'table finishline_migrations',
      'table finishline_tasks',
      'view finishline_event_log',
      'view finishline_unprocessed_events',
    ]);
    const before = schemaObjects(database);
    expect(migrate(database, builder, { now: 43 })).toEqual([]);
    expect(schemaObjects(database)).toEqual(before);
    database.close();
  });

  it('apply only the versions a database lacks', () => {
    const database = new Database(':memory:');
    expect(migrate(database, builder, { now: 1, migrations: MIGRATIONS.slice(0, 1) })).toEqual([1]);
    expect(schemaObjects(database)).not.toContain('view finishline_unprocessed_events');
    expect(migrate(database, builder, { now: 2 })).toEqual([2, 3]);
    expect(schemaObjects(database)).toContain('view finishline_unprocessed_events');
    database.close();
  });

  it('re-read the versions under the write lock: a process that migrated first is not migrated over', () => {
    const directory = mkdtempSync(join(tmpdir(), 'finishline-migrations-'));
    const file = join(directory, 'progress.db');
    const first = new Database(file);
    const second = new Database(file);
    try {
      // The second process migrates between the first one's unlocked read (nothing applied yet) and
      // its BEGIN IMMEDIATE: the moment two processes opening a new file at once can interleave.
      let raced = false;
      const racing: SqliteDatabase = {
        prepare(text) {
          if (text === 'BEGIN IMMEDIATE' && !raced) {
            raced = true;
            expect(migrate(second, builder, { now: 1 })).toEqual([1, 2, 3]);
          }
          return first.prepare(text);
        },
        close: () => first.close(),
      };
      expect(migrate(racing, builder, { now: 2 })).toEqual([]);
      expect(raced).toBe(true);
      expect(
        first.prepare(`SELECT version, applied_at FROM ${TABLES.migrations} ORDER BY version`).all(),
      ).toEqual([
        { version: 1, applied_at: 1 },
        { version: 2, applied_at: 1 },
        { version: 3, applied_at: 1 },
      ]);
      expect(first.inTransaction).toBe(false);
    } finally {
      first.close();
      second.close();
      rmSync(directory, { recursive: true, force: true });
    }
  });

  it('take no write lock on a database already at the current version', () => {
    const database = new Database(':memory:');
    migrate(database, builder, { now: 1 });
    const prepared: string[] = [];
    const spy: SqliteDatabase = {
      prepare(text) {
        prepared.push(text);
        return database.prepare(text);
      },
      close: () => database.close(),
    };
    expect(migrate(spy, builder, { now: 2 })).toEqual([]);
    expect(prepared.filter((text) => /^(BEGIN|CREATE|INSERT)/i.test(text))).toEqual([]);
    database.close();
  });

  it('roll back a migration that fails half-way, leaving the previous version intact', () => {
    const database = new Database(':memory:');
    const broken: Migration = {
      version: 4,
      name: 'broken',
      statements: (kysely) => [
        kysely.schema.createTable('finishline_extra').addColumn('id', 'integer'),
        kysely.schema.createTable('finishline_extra').addColumn('id', 'integer'), // already exists
      ],
    };
    migrate(database, builder, { now: 1 });
    expect(() => migrate(database, builder, { now: 2, migrations: [...MIGRATIONS, broken] })).toThrow();
    expect(schemaObjects(database)).not.toContain('table finishline_extra');
    expect(database.prepare(`SELECT max(version) FROM ${TABLES.migrations}`).pluck().get()).toBe(3);
    expect(database.inTransaction).toBe(false);
    database.close();
  });

  it('refuse a database migrated by a newer release (store_unavailable) or with a gap (internal)', () => {
    const database = new Database(':memory:');
    migrate(database, builder, { now: 1 });
    database
      .prepare(`INSERT INTO ${TABLES.migrations} (version, name, applied_at) VALUES (4, 'future', 1)`)
      .run();
    try {
      migrate(database, builder, { now: 2 });
      expect.unreachable();
    } catch (error) {
      expect(isProgressError(error, ErrorCode.StoreUnavailable), String(error)).toBe(true);
    }
    database.prepare(`DELETE FROM ${TABLES.migrations} WHERE version = 2`).run();
    try {
      migrate(database, builder, { now: 2 });
      expect.unreachable();
    } catch (error) {
      expect(isProgressError(error, ErrorCode.Internal), String(error)).toBe(true);
    }
    database.close();
  });
});
