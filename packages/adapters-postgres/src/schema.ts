import type { ColumnType, Generated } from 'kysely';

/**
 * Kysely table types of the Postgres store. Every table lives in the configured schema
 * (`finishline` by default); queries reach it through `db.withSchema(schema)`.
 *
 * Times are epoch milliseconds in `int8` columns because they come from the store's injected clock
 * (so tests drive them with a manual clock); lease expiry and `created_at` come from the database's clock
 * unless the store was given one (see the `clock` option). The operator view converts them.
 *
 * @module
 */

/**
 * An `int8` column. `pg` returns `int8` as a string unless the caller installed a type parser, so reads
 * accept every representation and the store converts with `Number()` (values never exceed
 * `Number.MAX_SAFE_INTEGER`: inputs are validated against `LIMITS.maxCount`).
 */
export type Int8 = ColumnType<string | number | bigint, number, number>;

/** A nullable {@link Int8}. */
export type NullableInt8 = ColumnType<string | number | bigint | null, number | null, number | null>;

/** A `json` column: written as JSON text, read as whatever the pool's type parser returns. */
export type Json = ColumnType<unknown, string, string>;

/** A nullable {@link Json} column. */
export type NullableJson = ColumnType<unknown, string | null, string | null>;

/** `<schema>.tasks`: one row per task, the snapshot a watcher can be brought up to date from. */
export interface TasksTable {
  id: string;
  owner: string;
  kind: string;
  /** `running`, `completed`, `failed`, `cancelled` or `interrupted` (checked by a constraint). */
  status: string;
  total: NullableInt8;
  done: Int8;
  succeeded: Int8;
  failed: Int8;
  current: string | null;
  message: string | null;
  /** The `completed` event's result, JSON; `NULL` for none. */
  result: NullableJson;
  error_code: string | null;
  error_message: string | null;
  /** Seq of the last event; 0 before the first. */
  seq: Int8;
  /** Highest seq acknowledged by a watcher; events with `seq <= acked_seq` are processed. */
  acked_seq: Int8;
  created_at: Int8;
  updated_at: Int8;
  finished_at: NullableInt8;
  lease_owner: string | null;
  lease_expires_at: NullableInt8;
}

/** `<schema>.events`: the immutable event log, keyed by `(task_id, seq)`. */
export interface EventsTable {
  task_id: string;
  seq: Int8;
  type: string;
  time: Int8;
  /** The event without `taskId`, `seq`, `type` and `time` (its `progress`, `item`, `result`, …), JSON. */
  body: Json;
  /**
   * `pg_current_xact_id()` of the writing transaction. The change feed re-reads from a snapshot's
   * `xmin` after a reconnect: unlike a serial id, it never skips a transaction that committed late.
   */
  xid: Generated<string>;
}

/** `<schema>.unprocessed_events`: the operator view of events no watcher acknowledged yet. */
export interface UnprocessedEventsView {
  task_id: string;
  seq: Int8;
  type: string;
  time: Date;
  owner: string;
  kind: string;
  task_status: string;
  acked_seq: Int8;
  body: unknown;
}

/**
 * `<schema>.purged`: the ids retention deleted in the last hour, each with the deleting transaction's id,
 * keyed by `(xid, task_id)` (see "Purges" in `listen-connection.ts`).
 */
export interface PurgedTable {
  task_id: string;
  /** `pg_current_xact_id()` of the purging transaction. */
  xid: Generated<string>;
  /** Clock time of the purge (the store's clock): records are deleted an hour after it. */
  purged_at: Int8;
}

/** `<schema>.meta`: the schema's settings, by key (`epoch`, `purged_horizon`). */
export interface MetaTable {
  key: string;
  value: string;
}

/** The tables and views of one store schema, for `Kysely<ProgressDatabase>`. */
export interface ProgressDatabase {
  tasks: TasksTable;
  events: EventsTable;
  purged: PurgedTable;
  meta: MetaTable;
  unprocessed_events: UnprocessedEventsView;
}
