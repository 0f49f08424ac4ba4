import type { Generated } from 'kysely';

/**
 * The tables and views of the SQLite store, as kysely types. The schema itself is created only by
 * `migrations.ts`; these types let kysely check the store's queries against it.
 *
 * Column names are snake_case; integers are SQLite `INTEGER` (64-bit), times epoch milliseconds from the
 * store's injected clock, JSON columns `TEXT` holding `JSON.stringify` output.
 *
 * @module
 */

/** One row per task: the snapshot a watcher that knows nothing can be brought up to date from. */
export interface TasksTable {
  id: string;
  owner: string;
  kind: string;
  /** `running`, `completed`, `failed`, `cancelled` or `interrupted`. */
  status: string;
  total: number | null;
  done: number;
  succeeded: number;
  failed: number;
  current: string | null;
  message: string | null;
  /** JSON of the `completed` result; `NULL` for none. */
  result: string | null;
  /** `TaskFailure.code`; `NULL` unless the task failed, was cancelled or interrupted. */
  error_code: string | null;
  error_message: string | null;
  /** Seq of the last event. */
  seq: number;
  /** Highest seq a watcher acknowledged: events with `seq <= acked_seq` are processed. */
  acked_seq: number;
  created_at: number;
  updated_at: number;
  finished_at: number | null;
  lease_owner: string | null;
  lease_expires_at: number | null;
}

/**
 * The event log. `id` is an `AUTOINCREMENT` rowid: SQLite admits one writer at a time and never reuses
 * an `AUTOINCREMENT` id, so id order is commit order and a reader can follow every commit, including
 * other processes', with a high-water mark.
 */
export interface EventsTable {
  id: Generated<number>;
  task_id: string;
  seq: number;
  type: string;
  time: number;
  /** The task's progress after the event. */
  total: number | null;
  done: number;
  succeeded: number;
  failed: number;
  current: string | null;
  message: string | null;
  /**
   * JSON of the type's own fields: `{key, ok, error, detail}` for `item`, `{result}` for `completed`,
   * `{code, message}` for `failed`, `{reason}` for `cancelled` and `interrupted`; `NULL` for `progress`.
   */
  payload: string | null;
}

/** Applied migrations, one row per version. */
export interface MigrationsTable {
  version: number;
  name: string;
  applied_at: number;
}

/** Store-wide values, one row per key: `epoch` (created with the schema, replaced by `renewEpoch`). */
export interface MetaTable {
  key: string;
  value: string;
}

/** Operator view: every event with its task and a `processed` flag (1 once a watcher acked it). */
export interface EventLogView {
  task_id: string;
  seq: number;
  type: string;
  time: number;
  processed: number;
  owner: string;
  kind: string;
  task_status: string;
  acked_seq: number;
  payload: string | null;
}

/** Operator view: the events no watcher acknowledged yet (`seq > acked_seq`). */
export type UnprocessedEventsView = Omit<EventLogView, 'processed'>;

/** The whole schema, for `Kysely<SqliteSchema>`. */
export interface SqliteSchema {
  finishline_tasks: TasksTable;
  finishline_events: EventsTable;
  finishline_migrations: MigrationsTable;
  finishline_meta: MetaTable;
  finishline_event_log: EventLogView;
  finishline_unprocessed_events: UnprocessedEventsView;
}

/** Table and view names, in one place. */
export const TABLES = Object.freeze({
  tasks: 'finishline_tasks',
  events: 'finishline_events',
  migrations: 'finishline_migrations',
  meta: 'finishline_meta',
  eventLog: 'finishline_event_log',
  unprocessedEvents: 'finishline_unprocessed_events',
} as const);
