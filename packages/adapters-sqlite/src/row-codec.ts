import type { JsonValue, ProgressState, Task, TaskEvent, TaskFailure, TaskStatus } from '@finishline/core';
import { ErrorCode, isTerminalType, ProgressError, TASK_STATUSES } from '@finishline/core';
import { exhaustive } from '@finishline/core/internal';
import type { EventsTable, TasksTable } from './schema.js';

/**
 * Conversion between the model and SQLite rows. Reading is defensive: a row edited by hand or damaged
 * on disk becomes a `ProgressError` with code `internal` naming the task and column, never a raw
 * `SyntaxError` or a malformed object handed to a watcher.
 *
 * @module
 */

/** A task row as SQLite returns it (integers may be bigints when the caller enabled safe integers). */
export type TaskRow = { [K in keyof TasksTable]: TasksTable[K] | bigint };

/** An event row as read back, without its rowid. */
export type EventRow = { [K in Exclude<keyof EventsTable, 'id'>]: EventsTable[K] | bigint };

/** The columns of an event insert, in the order {@link pushEventValues} writes them. */
export const EVENT_COLUMNS = [
  'task_id',
  'seq',
  'type',
  'time',
  'total',
  'done',
  'succeeded',
  'failed',
  'current',
  'message',
  'payload',
] as const satisfies readonly (keyof EventsTable)[];

/** Appends the values of `event`'s row to `values`, in {@link EVENT_COLUMNS} order. */
export function pushEventValues(values: unknown[], event: TaskEvent): void {
  const { progress } = event;
  values.push(
    event.taskId,
    event.seq,
    event.type,
    event.time,
    progress.total,
    progress.done,
    progress.succeeded,
    progress.failed,
    progress.current,
    progress.message,
    encodePayload(event),
  );
}

function encodePayload(event: TaskEvent): string | null {
  switch (event.type) {
    case 'progress':
      return null;
    case 'item':
      return JSON.stringify({
        key: event.item.key,
        ok: event.item.ok,
        error: event.item.error,
        detail: event.item.detail,
      });
    case 'completed':
      return JSON.stringify({ result: event.result });
    case 'failed':
      return JSON.stringify({ code: event.error.code, message: event.error.message });
    case 'cancelled':
    case 'interrupted':
      return JSON.stringify({ reason: event.reason });
    default:
      exhaustive(event, 'event type');
  }
}

/** The columns a task row's values come in, for inserts. */
export function taskToRow(task: Task): TasksTable {
  return {
    id: task.id,
    owner: task.owner,
    kind: task.kind,
    status: task.status,
    total: task.total,
    done: task.done,
    succeeded: task.succeeded,
    failed: task.failed,
    current: task.current,
    message: task.message,
    result: task.result === null ? null : JSON.stringify(task.result),
    error_code: task.error?.code ?? null,
    error_message: task.error?.message ?? null,
    seq: task.seq,
    acked_seq: task.ackedSeq,
    created_at: task.createdAt,
    updated_at: task.updatedAt,
    finished_at: task.finishedAt,
    lease_owner: task.leaseOwner,
    lease_expires_at: task.leaseExpiresAt,
  };
}

/**
 * The values of a running task's row after an append: a task still running changed only its counters,
 * texts, seq and time (see `planAppend`), so it is bound from those, not from a whole row ({@link taskToRow}).
 */
export function runningTaskToRow(task: Task) {
  return {
    total: task.total,
    done: task.done,
    succeeded: task.succeeded,
    failed: task.failed,
    current: task.current,
    message: task.message,
    seq: task.seq,
    updated_at: task.updatedAt,
    id: task.id,
  };
}

class Reader {
  constructor(
    readonly taskId: string,
    readonly what: string,
  ) {}

  fail(column: string, detail: string, cause?: unknown): never {
    throw new ProgressError(
      ErrorCode.Internal,
      `Corrupt ${this.what} of task ${this.taskId} in SQLite: column ${column} ${detail}`,
      cause === undefined ? { taskId: this.taskId } : { taskId: this.taskId, cause },
    );
  }

  int(value: unknown, column: string): number {
    if (typeof value === 'number' && Number.isSafeInteger(value)) return value;
    if (typeof value === 'bigint' && value >= 0n && value <= BigInt(Number.MAX_SAFE_INTEGER)) {
      return Number(value);
    }
    return this.fail(column, `is not a safe integer (${String(value)})`);
  }

  intOrNull(value: unknown, column: string): number | null {
    return value === null ? null : this.int(value, column);
  }

  text(value: unknown, column: string): string {
    return typeof value === 'string' ? value : this.fail(column, 'is not text');
  }

  textOrNull(value: unknown, column: string): string | null {
    return value === null ? null : this.text(value, column);
  }

  json(value: unknown, column: string): unknown {
    const text = this.text(value, column);
    try {
      return JSON.parse(text);
    } catch (error) {
      return this.fail(column, 'is not valid JSON', error);
    }
  }

  object(value: unknown, column: string): Record<string, unknown> {
    const parsed = this.json(value, column);
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
      return this.fail(column, 'is not a JSON object');
    }
    return parsed as Record<string, unknown>;
  }
}

function readProgress(reader: Reader, row: Pick<EventRow, keyof ProgressState>): ProgressState {
  return {
    total: reader.intOrNull(row.total, 'total'),
    done: reader.int(row.done, 'done'),
    succeeded: reader.int(row.succeeded, 'succeeded'),
    failed: reader.int(row.failed, 'failed'),
    current: reader.textOrNull(row.current, 'current'),
    message: reader.textOrNull(row.message, 'message'),
  };
}

const STATUSES: ReadonlySet<string> = new Set(TASK_STATUSES);

/**
 * The task a row holds.
 *
 * @throws ProgressError `internal` when a column is missing, mistyped or not valid JSON.
 */
export function rowToTask(row: TaskRow): Task {
  const id = typeof row.id === 'string' ? row.id : '(unreadable id)';
  const reader = new Reader(id, 'row');
  const status = reader.text(row.status, 'status');
  if (!STATUSES.has(status)) reader.fail('status', `holds unknown status ${JSON.stringify(status)}`);
  const errorCode = reader.textOrNull(row.error_code, 'error_code');
  const errorMessage = reader.textOrNull(row.error_message, 'error_message');
  if ((errorCode === null) !== (errorMessage === null)) {
    reader.fail('error_code', 'and error_message must both be set or both be NULL');
  }
  const error: TaskFailure | null =
    errorCode === null || errorMessage === null ? null : { code: errorCode, message: errorMessage };
  return {
    id: reader.text(row.id, 'id'),
    owner: reader.text(row.owner, 'owner'),
    kind: reader.text(row.kind, 'kind'),
    status: status as TaskStatus,
    ...readProgress(reader, row),
    result: row.result === null ? null : (reader.json(row.result, 'result') as JsonValue),
    error,
    seq: reader.int(row.seq, 'seq'),
    ackedSeq: reader.int(row.acked_seq, 'acked_seq'),
    createdAt: reader.int(row.created_at, 'created_at'),
    updatedAt: reader.int(row.updated_at, 'updated_at'),
    finishedAt: reader.intOrNull(row.finished_at, 'finished_at'),
    leaseOwner: reader.textOrNull(row.lease_owner, 'lease_owner'),
    leaseExpiresAt: reader.intOrNull(row.lease_expires_at, 'lease_expires_at'),
  };
}

/**
 * The event a row holds.
 *
 * @throws ProgressError `internal` when a column is missing, mistyped, not valid JSON or its payload does
 * not have the fields of its type.
 */
export function rowToEvent(row: EventRow): TaskEvent {
  const taskId = typeof row.task_id === 'string' ? row.task_id : '(unreadable id)';
  const reader = new Reader(taskId, `event ${String(row.seq)}`);
  const base = {
    taskId: reader.text(row.task_id, 'task_id'),
    seq: reader.int(row.seq, 'seq'),
    time: reader.int(row.time, 'time'),
    progress: readProgress(reader, row),
  };
  const type = reader.text(row.type, 'type');
  if (type === 'progress') return { ...base, type };
  const payload = reader.object(row.payload, 'payload');
  const field = <T>(name: string, check: (value: unknown) => value is T, expected: string): T => {
    const value = payload[name];
    return check(value) ? value : reader.fail('payload', `field ${name} is not ${expected}`);
  };
  if (type === 'item') {
    return {
      ...base,
      type,
      item: {
        key: field('key', isString, 'a string'),
        ok: field('ok', isBoolean, 'a boolean'),
        error: field('error', isStringOrNull, 'a string or null'),
        detail: field('detail', isJson, 'present'),
      },
    };
  }
  if (!isTerminalType(type)) return reader.fail('type', `holds unknown type ${JSON.stringify(type)}`);
  switch (type) {
    case 'completed':
      return { ...base, type, result: field('result', isJson, 'present') };
    case 'failed':
      return {
        ...base,
        type,
        error: { code: field('code', isString, 'a string'), message: field('message', isString, 'a string') },
      };
    case 'cancelled':
      return { ...base, type, reason: field('reason', isStringOrNull, 'a string or null') };
    case 'interrupted':
      return { ...base, type, reason: field('reason', isString, 'a string') };
    default: {
      const unreachable: never = type;
      return reader.fail('type', `holds unknown type ${String(unreachable)}`);
    }
  }
}

function isString(value: unknown): value is string {
  return typeof value === 'string';
}

function isStringOrNull(value: unknown): value is string | null {
  return value === null || typeof value === 'string';
}

function isBoolean(value: unknown): value is boolean {
  return typeof value === 'boolean';
}

/** Anything `JSON.parse` produced; absent (`undefined`) is the only thing it cannot be. */
function isJson(value: unknown): value is JsonValue {
  return value !== undefined;
}
