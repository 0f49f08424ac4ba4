/**
 * `@finishline/postgres`: a `ProgressStore` on Postgres (kysely + pg). Versioned migrations in a
 * configurable schema, group-committed appends with a gap-free seq per task, a `LISTEN/NOTIFY` change
 * feed that re-reads what it missed after every reconnect, a safety-net poll of followed tasks,
 * `FOR UPDATE SKIP LOCKED` lease reaping, batched retention and an operator view of unprocessed events.
 *
 * @packageDocumentation
 */

export type { AppendStats } from './append-pipeline.js';
export type { PgListenClient, PgNotification } from './listen-connection.js';
export type { MigrateOptions } from './migrations.js';
export {
  assertSchemaName,
  changeChannel,
  MIGRATION_NAMES,
  MIGRATION_TABLE,
  migrateProgressSchema,
  SCHEMA_NAME_PATTERN,
} from './migrations.js';
export type { ChangeNotice } from './notify-payload.js';
export {
  NOTIFY_EVENTS_PAYLOAD_BUDGET_BYTES,
  NOTIFY_PAYLOAD_BUDGET_BYTES,
  PG_NOTIFY_PAYLOAD_LIMIT_BYTES,
} from './notify-payload.js';
export type { ChangeFeedHealth, ChangeFeedStats, PostgresChangeFeed } from './postgres-change-feed.js';
export type { PostgresStoreStats } from './postgres-progress-store.js';
export { PostgresProgressStore } from './postgres-progress-store.js';
export type { ListenClientSource, PgPool, PostgresProgressStoreOptions } from './postgres-store-options.js';
export { POSTGRES_STORE_DEFAULTS } from './postgres-store-options.js';
export type {
  EventsTable,
  Int8,
  Json,
  MetaTable,
  NullableInt8,
  NullableJson,
  ProgressDatabase,
  PurgedTable,
  TasksTable,
  UnprocessedEventsView,
} from './schema.js';
