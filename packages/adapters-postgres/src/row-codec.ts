import type { Task, TaskEvent, TaskStatus } from '@finishline/core';
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

function nullableInt(value: string | number | bigint | null): number | null {
  return value === null ? null : int(value);
}

export function toTask(row: TaskRow): Task {
  return {
    id: row.id,
    owner: row.owner,
    kind: row.kind,
    status: row.status as TaskStatus,
    total: nullableInt(row.total),
    done: int(row.done),
    succeeded: int(row.succeeded),
    failed: int(row.failed),
    current: row.current,
    message: row.message,
    result: row.result === null ? null : JSON.parse(row.result),
    error: row.error_code === null ? null : { code: row.error_code, message: row.error_message ?? '' },
    seq: int(row.seq),
    ackedSeq: int(row.acked_seq),
    createdAt: int(row.created_at),
    updatedAt: int(row.updated_at),
    finishedAt: nullableInt(row.finished_at),
    leaseOwner: row.lease_owner,
    leaseExpiresAt: nullableInt(row.lease_expires_at),
  };
}

export function toEvent(row: EventRow): TaskEvent {
  return {
    taskId: row.task_id,
    seq: int(row.seq),
    type: row.type,
    time: int(row.time),
    ...JSON.parse(row.body),
  } as TaskEvent;
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
}

/**
 * The written columns of a task as one JSON record for `json_to_recordset`. Null columns are left out:
 * `json_to_recordset` reads a missing key as `NULL`, as it reads a JSON `null`, and a running task's row
 * is mostly nulls, so this halves what a batch over many tasks sends. With `from` (a conditional write),
 * the record carries the planned-from seq and creation time, and not the lease columns, which that write
 * keeps from the row.
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
    return `${json},"from_seq":${from.seq},"created_at":${from.createdAt},"from_updated_at":${from.updatedAt}}`;
  }
  if (task.leaseOwner !== null) json += `,"lease_owner":${JSON.stringify(task.leaseOwner)}`;
  if (task.leaseExpiresAt !== null) json += `,"lease_expires_at":${task.leaseExpiresAt}`;
  return `${json}}`;
}
