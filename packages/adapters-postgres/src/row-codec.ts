import type { Task, TaskEvent, TaskStatus } from '@finishline/core';
import { ErrorCode, isProgressError, ProgressError } from '@finishline/core';
import { eventBodyProblem, idProblem } from '@finishline/core/internal';
import { sql } from 'kysely';

/**
 * Conversion between the model and Postgres rows: rows as `pg` returns them (`int8` as text unless the
 * caller installed a parser, `json` selected as text), and the JSON records of task rows the write statements unpack
 * with `json_to_recordset`.
 *
 * @module
 */

/** A task row as selected (`int8` columns as `pg` returns them, `json` as text). */
export interface TaskRow {
  id: string;
  owner: string;
  kind: string;
  status: string;
  total: string | number | bigint | null;
  done: string | number | bigint;
  succeeded: string | number | bigint;
  failed: string | number | bigint;
  current: string | null;
  message: string | null;
  result: string | null;
  error_code: string | null;
  error_message: string | null;
  seq: string | number | bigint;
  acked_seq: string | number | bigint;
  created_at: string | number | bigint;
  updated_at: string | number | bigint;
  finished_at: string | number | bigint | null;
  lease_owner: string | null;
  lease_expires_at: string | number | bigint | null;
}

/** An event row as selected. */
export interface EventRow {
  task_id: string;
  seq: string | number | bigint;
  type: string;
  time: string | number | bigint;
  body: string;
}

/** The task columns, `json` as text so the caller's type parsers cannot change what comes back. */
export const taskColumns = sql`id, owner, kind, status, total, done, succeeded, failed, current, message,
  result::text AS result, error_code, error_message, seq, acked_seq, created_at, updated_at, finished_at,
  lease_owner, lease_expires_at`;

/** An `int8` as a number (values stay below `Number.MAX_SAFE_INTEGER`: inputs are validated). */
export function int(value: string | number | bigint): number {
  return typeof value === 'number' ? value : Number(value);
}

/** The `internal` error of a task row that does not hold a valid task, with its `taskId`. */
function damagedRow(row: TaskRow, problem: string): ProgressError {
  return new ProgressError(ErrorCode.Internal, `Corrupt row of task ${row.id} in Postgres: ${problem}`, {
    taskId: row.id,
  });
}

/**
 * One `int8` column of task `taskId` read alone (a latest seq, an acked seq, a run), as {@link toTask}
 * checks a whole row's: one above 2^53 came back rounded, and was used as such in comparisons.
 *
 * @throws ProgressError `internal` (with the `taskId`) when it is not a non-negative safe integer.
 */
export function intColumn(taskId: string, column: string, value: string | number | bigint): number {
  const number = int(value);
  if (Number.isSafeInteger(number) && number >= 0) return number;
  throw new ProgressError(
    ErrorCode.Internal,
    `Corrupt row of task ${taskId} in Postgres: column ${column} is not a non-negative safe integer (${String(value)})`,
    { taskId },
  );
}

/** The `int8` columns of a task row, for {@link toTask}'s error. */
const TASK_INT_COLUMNS = [
  'total',
  'done',
  'succeeded',
  'failed',
  'seq',
  'acked_seq',
  'created_at',
  'updated_at',
  'finished_at',
  'lease_expires_at',
] as const;

/** A non-negative safe integer, or `null` (a nullable column's). */
function isCount(value: number | null): boolean {
  return value === null || (Number.isSafeInteger(value) && value >= 0);
}

function nullableInt(value: string | number | bigint | null): number | null {
  return value === null ? null : int(value);
}

/**
 * The task a row holds. Its `int8` columns must be non-negative safe integers (one above 2^53 came back
 * rounded) and its kind an id (a snapshot of it is a frame clients refuse otherwise); the other columns'
 * rules are the table's `CHECK`s.
 *
 * @throws ProgressError `internal` (with the `taskId`) for a row damaged by hand or by another program.
 */
export function toTask(row: TaskRow): Task {
  const kindProblem = idProblem(row.kind);
  if (kindProblem !== undefined) throw damagedRow(row, `column kind ${kindProblem}`);
  const total = nullableInt(row.total);
  const done = int(row.done);
  const succeeded = int(row.succeeded);
  const failed = int(row.failed);
  const seq = int(row.seq);
  const ackedSeq = int(row.acked_seq);
  const createdAt = int(row.created_at);
  const updatedAt = int(row.updated_at);
  const finishedAt = nullableInt(row.finished_at);
  const leaseExpiresAt = nullableInt(row.lease_expires_at);
  if (
    !isCount(total) ||
    !isCount(done) ||
    !isCount(succeeded) ||
    !isCount(failed) ||
    !isCount(seq) ||
    !isCount(ackedSeq) ||
    !isCount(createdAt) ||
    !isCount(updatedAt) ||
    !isCount(finishedAt) ||
    !isCount(leaseExpiresAt)
  ) {
    const column = TASK_INT_COLUMNS.find((name) => !isCount(nullableInt(row[name])));
    throw damagedRow(
      row,
      `column ${column} is not a non-negative safe integer (${String(row[column ?? 'seq'])})`,
    );
  }
  return {
    id: row.id,
    owner: row.owner,
    kind: row.kind,
    status: row.status as TaskStatus,
    total,
    done,
    succeeded,
    failed,
    current: row.current,
    message: row.message,
    result: row.result === null ? null : JSON.parse(row.result),
    error: row.error_code === null ? null : { code: row.error_code, message: row.error_message ?? '' },
    seq,
    ackedSeq,
    createdAt,
    updatedAt,
    finishedAt,
    leaseOwner: row.lease_owner,
    leaseExpiresAt,
  };
}

/**
 * The tasks of `rows` by id; a damaged row's (see {@link toTask}) as its error, so that the statements
 * over many tasks (a batch of appends, of lease renewals) fail its calls alone.
 */
export function tasksById(rows: readonly TaskRow[]): Map<string, Task | ProgressError> {
  const tasks = new Map<string, Task | ProgressError>();
  for (const row of rows) {
    try {
      tasks.set(row.id, toTask(row));
    } catch (error) {
      if (!isProgressError(error)) throw error;
      tasks.set(row.id, error);
    }
  }
  return tasks;
}

/**
 * The event a row holds. Its body is checked for the shape of its type (core's `eventBodyProblem`: no
 * field missing, unknown or mistyped, counts non-negative safe integers; so no field overriding the
 * row's task id, seq, type or time either), and its seq and time for safe integers: a row edited by hand,
 * left by a bad migration or written by another program would otherwise reach watchers as a malformed
 * event frame, which clients refuse and resubscribe for, and an `int8` above 2^53 would come back rounded.
 * The check allocates nothing (the seq and time are checked before they go into the event: read back
 * from it, a number past 2^31 is boxed again).
 *
 * @throws ProgressError `internal` (with the `taskId`) for a row that does not hold a valid event.
 */
export function toEvent(row: EventRow): TaskEvent {
  const seq = int(row.seq);
  const time = int(row.time);
  // `json` selected as text, so valid JSON.
  const body = JSON.parse(row.body);
  const tail = eventBodyProblem(row.type, body);
  if (
    tail === undefined &&
    Number.isSafeInteger(seq) &&
    seq >= 1 &&
    Number.isSafeInteger(time) &&
    time >= 0
  ) {
    return { taskId: row.task_id, seq, type: row.type, time, ...body } as TaskEvent;
  }
  const problem =
    tail === undefined
      ? `seq ${String(row.seq)}, time ${String(row.time)}: not both safe integers`
      : `body${tail}`;
  throw new ProgressError(
    ErrorCode.Internal,
    `Corrupt event ${String(row.seq)} of task ${row.task_id} in Postgres: ${problem}`,
    { taskId: row.task_id },
  );
}

/** A JSON copy of a caller-supplied value, normalized as the database will return it. */
export function jsonCopy<T>(value: T): T {
  return value === null || typeof value !== 'object' ? value : (JSON.parse(JSON.stringify(value)) as T);
}

/**
 * What a conditional write checks a task row against: the seq, creation time and update time it was
 * planned from. Carried in the task's own record, so the statement reads one JSON document per task, not two.
 */
export interface PlannedFrom {
  seq: number;
  createdAt: number;
  /**
   * The row's `updated_at`, which only appends write: a row at the planned seq that another append wrote
   * (after a failover took back the one planned from) has another.
   */
  updatedAt: number;
  /**
   * The row's `lease_owner`, which a renewal by another owner (a takeover) changes without an append: an
   * append fenced to its owner (see `RunFence.owner`) was planned as that owner's.
   */
  leaseOwner: string | null;
}

/**
 * The written columns of a task as one JSON record for `json_to_recordset`. Null columns are left out:
 * `json_to_recordset` reads a missing key as `NULL`, as it reads a JSON `null`, and a running task's row
 * is mostly nulls, so this halves what a batch over many tasks sends. With `from` (a conditional write),
 * the record carries the planned-from seq, creation time, update time and lease owner, and not the lease
 * columns, which that write keeps from the row.
 */
export function taskRecordJson(task: Task, from?: PlannedFrom): string {
  let json = `{"id":${JSON.stringify(task.id)},"status":${JSON.stringify(task.status)},"done":${task.done},"succeeded":${task.succeeded},"failed":${task.failed},"seq":${task.seq},"updated_at":${task.updatedAt}`;
  if (task.total !== null) json += `,"total":${task.total}`;
  if (task.current !== null) json += `,"current":${JSON.stringify(task.current)}`;
  if (task.message !== null) json += `,"message":${JSON.stringify(task.message)}`;
  if (task.result !== null) json += `,"result":${JSON.stringify(task.result)}`;
  if (task.error !== null) {
    json += `,"error_code":${JSON.stringify(task.error.code)},"error_message":${JSON.stringify(task.error.message)}`;
  }
  if (task.finishedAt !== null) json += `,"finished_at":${task.finishedAt}`;
  if (from !== undefined) {
    json += `,"from_seq":${from.seq},"created_at":${from.createdAt},"from_updated_at":${from.updatedAt}`;
    // Left out when null, read as NULL (see above).
    if (from.leaseOwner !== null) json += `,"from_lease_owner":${JSON.stringify(from.leaseOwner)}`;
    return `${json}}`;
  }
  if (task.leaseOwner !== null) json += `,"lease_owner":${JSON.stringify(task.leaseOwner)}`;
  if (task.leaseExpiresAt !== null) json += `,"lease_expires_at":${task.leaseExpiresAt}`;
  return `${json}}`;
}
