/**
 * `@finishline/sqlite`: a `ProgressStore` on SQLite (kysely + better-sqlite3, WAL) with group commit and
 * a change feed that also sees other processes' commits on the same file.
 *
 * @packageDocumentation
 */

export type { CheckpointStats } from './background-checkpoints.js';
export { SQLITE_SCHEMA_VERSION } from './migrations.js';
export type {
  EventLogView,
  EventsTable,
  MetaTable,
  MigrationsTable,
  SqliteSchema,
  TasksTable,
  UnprocessedEventsView,
} from './schema.js';
export { TABLES } from './schema.js';
export type { SqliteDatabase, SqliteRunResult, SqliteStatement } from './sqlite-driver.js';
export { SqliteProgressStore } from './sqlite-progress-store.js';
export type {
  SqliteCheckpoints,
  SqliteProgressStoreOptions,
  SqliteSynchronous,
} from './sqlite-store-options.js';
export { SQLITE_STORE_DEFAULTS } from './sqlite-store-options.js';
