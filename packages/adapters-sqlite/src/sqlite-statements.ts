import type { Task } from '@finishline/core';
import { taskNotFound } from '@finishline/core/internal';
import type { Kysely } from 'kysely';
import { sql } from 'kysely';
import { PreparedInsert, PreparedQuery, param } from './query-builder.js';
import type { TaskRow } from './row-codec.js';
import { EVENT_COLUMNS, rowToTask } from './row-codec.js';
import type { SqliteSchema, TasksTable } from './schema.js';
import { TABLES } from './schema.js';
import type { SqliteDatabase } from './sqlite-driver.js';

/**
 * The SQLite store's prepared statements, the column lists they read and write, and the task reads
 * every role shares.
 *
 * @module
 */

/** Rows per multi-row event insert; a batch's remainder is inserted row by row. */
export const EVENT_INSERT_ROWS = 32;

/** The columns an append rewrites (everything but identity, owner, creation and acks). */
const APPEND_COLUMNS = [
  'status',
  'total',
  'done',
  'succeeded',
  'failed',
  'current',
  'message',
  'result',
  'error_code',
  'error_message',
  'seq',
  'updated_at',
  'finished_at',
  'lease_owner',
  'lease_expires_at',
] as const satisfies readonly (keyof TasksTable)[];

/**
 * The columns an append that leaves its task running can change: status, result, error, finish time and
 * lease stay as they were, so the partial indexes on them (lease expiry, finished) are not touched.
 */
const RUNNING_APPEND_COLUMNS = [
  'total',
  'done',
  'succeeded',
  'failed',
  'current',
  'message',
  'seq',
  'updated_at',
] as const satisfies readonly (typeof APPEND_COLUMNS)[number][];

const TASK_COLUMNS = [
  'id',
  'owner',
  'kind',
  ...APPEND_COLUMNS,
  'acked_seq',
  'created_at',
] as const satisfies readonly (keyof TasksTable)[];

function placeholders<const K extends string>(columns: readonly K[], suffix = ''): Record<K, never> {
  return Object.fromEntries(columns.map((column) => [column, param(`${column}${suffix}`)])) as Record<
    K,
    never
  >;
}

/**
 * Every statement the store runs, built and type-checked with kysely once and prepared on the store's
 * connection. Constant values (`'running'`) that must select a partial index are SQL literals; every
 * other value is a bound parameter.
 */
export function prepareStatements(database: SqliteDatabase, builder: Kysely<SqliteSchema>) {
  const running = sql.lit('running');
  const jsonIds = (name: string) => sql<string>`(select value from json_each(${param(name)}))`;
  const raw = (text: string) => database.prepare(text);
  return {
    // Transactions and pragmas have no kysely builder; they are constant text.
    begin: raw('BEGIN IMMEDIATE'),
    commit: raw('COMMIT'),
    // A poll's reads in one snapshot (see ChangePublisher): a savepoint rather than BEGIN, so that it also
    // works on a connection the caller left inside a transaction of its own.
    pollSnapshot: raw('SAVEPOINT finishline_poll'),
    endPollSnapshot: raw('RELEASE finishline_poll'),
    // One task's writes inside a write transaction, undone alone when a damaged row refuses them (see
    // `writeAppendsOrRefusal`).
    savepoint: raw('SAVEPOINT finishline_write'),
    releaseSavepoint: raw('RELEASE finishline_write'),
    rollbackToSavepoint: raw('ROLLBACK TO finishline_write'),
    // What tells whether anything but this store's appends wrote since: other connections' commits move
    // data_version, any write on this connection (this store's other calls included) moves total_changes.
    writeMark: raw(
      'SELECT total_changes() AS changes, (SELECT data_version FROM pragma_data_version) AS version',
    ),

    selectTask: new PreparedQuery(
      database,
      builder.selectFrom(TABLES.tasks).selectAll().where('id', '=', param('id')),
      ['id'],
    ),
    selectTasks: new PreparedQuery(
      database,
      builder.selectFrom(TABLES.tasks).selectAll().where('id', 'in', jsonIds('ids')),
      ['ids'],
    ),
    insertTask: new PreparedQuery(
      database,
      builder
        .insertInto(TABLES.tasks)
        .values(placeholders(TASK_COLUMNS))
        .onConflict((conflict) => conflict.column('id').doNothing()),
      TASK_COLUMNS,
    ),
    updateTaskAfterAppend: new PreparedQuery(
      database,
      builder.updateTable(TABLES.tasks).set(placeholders(APPEND_COLUMNS)).where('id', '=', param('id')),
      [...APPEND_COLUMNS, 'id'],
    ),
    updateRunningTaskAfterAppend: new PreparedQuery(
      database,
      builder
        .updateTable(TABLES.tasks)
        .set(placeholders(RUNNING_APPEND_COLUMNS))
        .where('id', '=', param('id'))
        .where(sql.ref('status'), '=', running),
      [...RUNNING_APPEND_COLUMNS, 'id'],
    ),
    updateLease: new PreparedQuery(
      database,
      builder
        .updateTable(TABLES.tasks)
        .set({ lease_owner: param('leaseOwner'), lease_expires_at: param('leaseExpiresAt') })
        .where('id', '=', param('id')),
      ['leaseOwner', 'leaseExpiresAt', 'id'],
    ),
    updateAckedSeq: new PreparedQuery(
      database,
      builder
        .updateTable(TABLES.tasks)
        .set({ acked_seq: param('ackedSeq') })
        .where('id', '=', param('id')),
      ['ackedSeq', 'id'],
    ),
    listTasks: new PreparedQuery(
      database,
      builder
        .selectFrom(TABLES.tasks)
        .selectAll()
        .where('owner', '=', param('owner'))
        .orderBy('created_at', 'desc')
        .orderBy('id', 'desc')
        .limit(param('limit')),
      ['owner', 'limit'],
    ),
    listTasksByStatus: new PreparedQuery(
      database,
      builder
        .selectFrom(TABLES.tasks)
        .selectAll()
        .where('owner', '=', param('owner'))
        .where('status', 'in', jsonIds('statuses'))
        .orderBy('created_at', 'desc')
        .orderBy('id', 'desc')
        .limit(param('limit')),
      ['owner', 'statuses', 'limit'],
    ),
    latestSeqs: new PreparedQuery(
      database,
      builder.selectFrom(TABLES.tasks).select(['id', 'seq']).where('id', 'in', jsonIds('ids')),
      ['ids'],
    ),
    expiredLeases: new PreparedQuery(
      database,
      builder
        .selectFrom(TABLES.tasks)
        .selectAll()
        .where('status', '=', running)
        .where('lease_expires_at', 'is not', null)
        .where('lease_expires_at', '<=', param('now'))
        .orderBy('lease_expires_at')
        .orderBy('id')
        .limit(param('limit')),
      ['now', 'limit'],
    ),
    finishedBefore: new PreparedQuery(
      database,
      builder
        .selectFrom(TABLES.tasks)
        .select(['id', 'seq'])
        .where('status', '<>', running)
        .where('finished_at', '<=', param('cutoff'))
        // Not in the millisecond it was created: its id taken again would be the same run (`isPurgeable`).
        .where('created_at', '<', param('now'))
        .orderBy('finished_at')
        .orderBy('id')
        .limit(param('limit')),
      ['cutoff', 'now', 'limit'],
    ),
    deleteEventsOfTasks: new PreparedQuery(
      database,
      builder.deleteFrom(TABLES.events).where('task_id', 'in', jsonIds('ids')),
      ['ids'],
    ),
    deleteTasks: new PreparedQuery(
      database,
      builder.deleteFrom(TABLES.tasks).where('id', 'in', jsonIds('ids')),
      ['ids'],
    ),

    insertEvent: new PreparedInsert(
      database,
      builder.insertInto(TABLES.events).values(placeholders(EVENT_COLUMNS, '#0')),
      {
        columns: EVENT_COLUMNS,
        rows: 1,
      },
    ),
    insertEvents: new PreparedInsert(
      database,
      builder
        .insertInto(TABLES.events)
        .values(
          Array.from({ length: EVENT_INSERT_ROWS }, (_, row) => placeholders(EVENT_COLUMNS, `#${row}`)),
        ),
      { columns: EVENT_COLUMNS, rows: EVENT_INSERT_ROWS },
    ),
    selectEvents: new PreparedQuery(
      database,
      builder
        .selectFrom(TABLES.events)
        .select(EVENT_COLUMNS)
        .where('task_id', '=', param('taskId'))
        .where('seq', '>', param('afterSeq'))
        .orderBy('seq')
        .limit(param('limit')),
      ['taskId', 'afterSeq', 'limit'],
    ),
    eventsSince: new PreparedQuery(
      database,
      builder
        .selectFrom(TABLES.events)
        .select(['id', 'task_id', 'seq', 'type', 'time'])
        .where('id', '>', param('afterId'))
        .orderBy('id')
        .limit(param('limit')),
      ['afterId', 'limit'],
    ),
    selectEpoch: new PreparedQuery(
      database,
      builder.selectFrom(TABLES.meta).select('value').where('key', '=', sql.lit('epoch')),
      [],
    ),
    updateEpoch: new PreparedQuery(
      database,
      builder
        .updateTable(TABLES.meta)
        .set({ value: sql<string>`lower(hex(randomblob(16)))` })
        .where('key', '=', sql.lit('epoch')),
      [],
    ),
    // Renewed only from the epoch the caller knew: the processes that notice the same restore renew it once.
    renewEpochFrom: new PreparedQuery(
      database,
      builder
        .updateTable(TABLES.meta)
        .set({ value: sql<string>`lower(hex(randomblob(16)))` })
        .where('key', '=', sql.lit('epoch'))
        .where('value', '=', param('from')),
      ['from'],
    ),
    // The newest event and what tells it from another event that a restored file gave its id.
    lastEvent: new PreparedQuery(
      database,
      builder
        .selectFrom(TABLES.events)
        .select(['id', 'task_id', 'seq', 'time'])
        .orderBy('id', 'desc')
        .limit(1),
      [],
    ),
    eventAt: new PreparedQuery(
      database,
      builder.selectFrom(TABLES.events).select(['task_id', 'seq', 'time']).where('id', '=', param('id')),
      ['id'],
    ),
    // The largest event id ever assigned (AUTOINCREMENT keeps it, deletes never lower it); no row until
    // the first event. sqlite_sequence is SQLite's own table, outside the schema kysely knows.
    eventIdSequence: raw(`SELECT seq FROM sqlite_sequence WHERE name = '${TABLES.events}'`),
    // A page of the tasks that have events (their latest seq), in id order from past `afterId`: the re-read
    // of a restored file (see `ChangePublisher.committed`).
    tasksAfter: new PreparedQuery(
      database,
      builder
        .selectFrom(TABLES.tasks)
        .select(['id', 'seq', 'status'])
        .where('seq', '>', sql.lit(0))
        .where('id', '>', param('afterId'))
        .orderBy('id')
        .limit(param('limit')),
      ['afterId', 'limit'],
    ),
  };
}

/** The store's prepared statements. */
export type SqliteStatements = ReturnType<typeof prepareStatements>;

/** The task's row, or `undefined` when there is none. */
export function loadTask(q: SqliteStatements, taskId: string): Task | undefined {
  const row = q.selectTask.get({ id: taskId });
  return row === undefined ? undefined : rowToTask(row as TaskRow);
}

/** The task's row; `task_not_found` when there is none. */
export function requireTask(q: SqliteStatements, taskId: string): Task {
  const task = loadTask(q, taskId);
  if (task === undefined) throw taskNotFound(taskId);
  return task;
}
