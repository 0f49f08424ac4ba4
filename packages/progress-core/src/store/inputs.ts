import * as v from 'valibot';
import { ErrorCode } from '../codes.js';
import { LIMITS } from '../limits.js';
import type { JsonValue, TaskFailure, TaskStatus } from '../model.js';
import { TASK_STATUSES } from '../model.js';
import { countSchema, describeIssues, idSchema, messageSchema, shortTextSchema } from '../primitives.js';
import { ProgressError } from '../progress-error.js';
import { CHECK_MESSAGES, idProblem, isJsonValue, isStorableText, utf8Length } from '../value-checks.js';
import { STORE_DEFAULTS } from './store-defaults.js';

/**
 * The parsers that validate what callers pass to a store (task creation, appends, leases, queries) once,
 * for every store.
 *
 * @module
 */

/** A lease request: the worker `owner` holds the task for `ttlMs` unless it renews. */
export interface LeaseInput {
  /** Identifies the worker or replica, for example its server id. */
  owner: string;
  /** Lease length in milliseconds (1 ms … 1 day). */
  ttlMs: number;
}

/** What {@link ProgressStore.createTask} needs. */
export interface CreateTaskInput {
  /** The task id; the store generates a random UUID when omitted. */
  id?: string;
  /** The principal allowed to watch the task. */
  owner: string;
  /** What the task does, for example `batch_taint`. */
  kind: string;
  /** Number of items, or `null`/omitted while unknown. */
  total?: number | null;
  message?: string | null;
  /** Take a lease at creation; a running task without one is never interrupted by reaping. */
  lease?: LeaseInput;
}

/** Set absolute progress values; omitted fields keep their value. */
export interface ProgressInput {
  type: 'progress';
  total?: number | null;
  done?: number;
  current?: string | null;
  message?: string | null;
}

/** One item finished: counts it in `done` and in `succeeded` or `failed`. */
export interface ItemInput {
  type: 'item';
  key: string;
  ok: boolean;
  error?: string | null;
  detail?: JsonValue | null;
  /** Optionally move `current` to the next item in the same event. */
  current?: string | null;
}

export interface CompleteInput {
  type: 'completed';
  result?: JsonValue | null;
  message?: string | null;
}

export interface FailInput {
  type: 'failed';
  error: TaskFailure;
}

export interface CancelInput {
  type: 'cancelled';
  reason?: string | null;
}

export interface InterruptInput {
  type: 'interrupted';
  reason: string;
}

/** What {@link ProgressStore.append} accepts. */
export type AppendInput =
  | ProgressInput
  | ItemInput
  | CompleteInput
  | FailInput
  | CancelInput
  | InterruptInput;

/**
 * A result or item detail as JSON reads it back: -0 becomes 0 and an array's hole null. Stores that keep
 * JSON text (SQLite, Postgres) return that on every read, and the wire carries it; without this the memory
 * store kept -0 and holes (a hole is not even a JsonValue), as did every store's append result.
 * The output is a copy the caller does not hold, so a store that writes the input later (group commit)
 * keeps it as it is: {@link parseAppendInput} promises that, and the stores rely on it.
 */
const storedJsonSchema = v.pipe(
  v.custom<JsonValue>((value) => isJsonValue(value), CHECK_MESSAGES.json),
  // What is stored is what JSON.stringify makes of the value, so that copy is what must pass the JSON
  // rules (depth, `__proto__`, U+0000 and lone surrogates, size), not just the value checked above: a
  // `toJSON` the walk does not see (an array's own, an Array subclass's) or a getter that answers
  // differently on its second read made the copy anything. Stored unchecked, such a result or detail was
  // refused by every watcher's decoder (core's `decodeServerFrame`): no one ever saw the task's final
  // state. Checked on the text's size first, so an oversized copy is never parsed.
  v.rawTransform(({ dataset, addIssue, NEVER }) => {
    const text: string | undefined = JSON.stringify(dataset.value);
    if (text !== undefined && utf8Length(text) > LIMITS.maxJsonBytes) {
      addIssue({ message: CHECK_MESSAGES.jsonTooLarge });
      return NEVER;
    }
    const copy: unknown = text === undefined ? undefined : JSON.parse(text);
    if (!isJsonValue(copy)) {
      addIssue({ message: CHECK_MESSAGES.json });
      return NEVER;
    }
    return copy;
  }),
);

const nullableText = v.optional(v.nullable(shortTextSchema));
const nullableMessage = v.optional(v.nullable(messageSchema));

const leaseSchema = v.strictObject({
  owner: idSchema,
  ttlMs: v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(86_400_000)),
});

const createTaskSchema = v.strictObject({
  id: v.optional(idSchema),
  owner: idSchema,
  kind: idSchema,
  total: v.optional(v.nullable(countSchema)),
  message: nullableMessage,
  lease: v.optional(leaseSchema),
});

const failureSchema = v.strictObject({ code: shortTextSchema, message: messageSchema });

/**
 * The schema of {@link AppendInput}; exported for the test that holds {@link commonAppend} to it. Typed
 * loosely on purpose: its full valibot type in the declarations made a consumer's `tsc` give up (TS2589).
 * @internal
 */
export const appendSchema: v.GenericSchema = v.variant('type', [
  v.strictObject({
    type: v.literal('progress'),
    total: v.optional(v.nullable(countSchema)),
    done: v.optional(countSchema),
    current: nullableText,
    message: nullableMessage,
  }),
  v.strictObject({
    type: v.literal('item'),
    key: v.pipe(shortTextSchema, v.minLength(1, 'must not be empty')),
    ok: v.boolean(),
    error: nullableMessage,
    detail: v.optional(v.nullable(storedJsonSchema)),
    current: nullableText,
  }),
  v.strictObject({
    type: v.literal('completed'),
    result: v.optional(v.nullable(storedJsonSchema)),
    message: nullableMessage,
  }),
  v.strictObject({ type: v.literal('failed'), error: failureSchema }),
  v.strictObject({ type: v.literal('cancelled'), reason: nullableText }),
  v.strictObject({ type: v.literal('interrupted'), reason: shortTextSchema }),
]);

/**
 * `invalid_input` for an argument whose reading threw (a getter, a Proxy trap): bad input, not a store
 * failure. Until 7 December 2026 every store but for events let it through bare, without a code.
 */
function readingThrew(error: unknown, what: string): ProgressError {
  const reason = error instanceof Error && typeof error.message === 'string' ? `: ${error.message}` : '';
  return new ProgressError(ErrorCode.InvalidInput, `Invalid ${what}: reading it threw${reason}`, {
    cause: error,
  });
}

function parseOrThrow<T>(schema: v.GenericSchema<unknown, T>, input: unknown, what: string): T {
  let parsed: v.SafeParseResult<v.GenericSchema<unknown, T>>;
  try {
    parsed = v.safeParse(schema, input);
  } catch (error) {
    throw readingThrew(error, what);
  }
  if (!parsed.success) {
    throw new ProgressError(ErrorCode.InvalidInput, `Invalid ${what}: ${describeIssues(parsed.issues)}`);
  }
  return parsed.output;
}

// Hand-written (no valibot) so that the browser client, which checks ids too, can skip this module.
export { assertTaskId } from '../value-checks.js';

/** Validates a seq or count argument; throws `invalid_input` otherwise. */
export function assertCount(value: unknown, what: string): asserts value is number {
  parseOrThrow(countSchema, value, what);
}

/** Validates {@link CreateTaskInput}; throws `invalid_input` with the offending fields otherwise. */
export function parseCreateTaskInput(input: unknown): CreateTaskInput {
  return withoutNegativeZero(parseOrThrow(createTaskSchema, input, 'task') as CreateTaskInput);
}

/**
 * A count given as -0 as 0 (on the parsed copy): SQL columns read it back as 0, while the memory store
 * kept -0, and so did every store's append result (`Object.is` and `toEqual` tell them apart).
 */
function withoutNegativeZero<T extends { total?: number | null; done?: number }>(parsed: T): T {
  if (parsed.total === 0) parsed.total = 0;
  if (parsed.done === 0) parsed.done = 0;
  return parsed;
}

/**
 * Validates {@link AppendInput}; throws `invalid_input` with the offending fields otherwise. A `detail` or
 * `result` in the output is the parse's own copy, not the caller's object: a store may keep it and write
 * it later though the caller changes or reuses its objects once `append` returned.
 */
export function parseAppendInput(input: unknown): AppendInput {
  try {
    const parsed = commonAppend(input) ?? (parseOrThrow(appendSchema, input, 'event') as AppendInput);
    return parsed.type === 'progress' ? withoutNegativeZero(parsed) : parsed;
  } catch (error) {
    if (error instanceof ProgressError) throw error;
    // Reading the input threw (a getter, a Proxy trap; a worker's return value becomes `detail`). Untyped,
    // the SQLite store called it `internal` and the memory store rejected with the bare error, so
    // `runBatch` could not drop the value and failed the whole batch.
    throw readingThrew(error, 'event');
  }
}

const ITEM_KEYS = ['type', 'key', 'ok', 'error', 'detail', 'current'] as const;
const PROGRESS_KEYS = ['type', 'total', 'done', 'current', 'message'] as const;

/**
 * The appends a running task makes by the thousand, checked without valibot: an item without `detail`
 * and a progress update. Returns what the schema would (a new object with the input's keys in the
 * schema's order), or `undefined` for anything else, which the schema then checks and describes. It
 * accepts nothing the schema refuses (a property test compares the two). Why: valibot's pipeline was a
 * few percent of a replica's CPU at load and of every store's append throughput.
 */
export function commonAppend(input: unknown): AppendInput | undefined {
  // Any object, as the schema takes it; `in` and `for … in` see inherited keys as its checks do.
  if (typeof input !== 'object' || input === null) return undefined;
  const type = (input as { type?: unknown }).type;
  const keys = type === 'item' ? ITEM_KEYS : type === 'progress' ? PROGRESS_KEYS : undefined;
  if (keys === undefined) return undefined;
  // Copied first and checked after, so each value is read once.
  const output: Record<string, unknown> = {};
  let unknownKeys = 0;
  for (const _key in input) unknownKeys += 1;
  for (const key of keys) {
    if (key in input) {
      output[key] = (input as Record<string, unknown>)[key];
      unknownKeys -= 1;
    }
  }
  // An unknown key is the schema's to report (it is strict).
  if (unknownKeys !== 0 || output.type !== type) return undefined;
  return (type === 'item' ? isCommonItem(output) : isCommonProgress(output))
    ? (output as unknown as AppendInput)
    : undefined;
}

function isCommonItem(item: Record<string, unknown>): boolean {
  const key = item.key;
  return (
    typeof key === 'string' &&
    key.length > 0 &&
    isOptionalText(key, LIMITS.maxKeyLength) &&
    typeof item.ok === 'boolean' &&
    isOptionalText(item.error, LIMITS.maxMessageLength) &&
    isOptionalText(item.current, LIMITS.maxKeyLength) &&
    // JSON is left to the schema (its depth and size rules); a missing or null detail is not JSON.
    (item.detail === undefined || item.detail === null)
  );
}

function isCommonProgress(progress: Record<string, unknown>): boolean {
  const { total, done } = progress;
  return (
    (total === undefined || total === null || isCount(total)) &&
    (done === undefined || isCount(done)) &&
    isOptionalText(progress.current, LIMITS.maxKeyLength) &&
    isOptionalText(progress.message, LIMITS.maxMessageLength)
  );
}

/** `undefined`, `null`, or a storable text of at most `maxLength`. */
function isOptionalText(value: unknown, maxLength: number): boolean {
  if (value === undefined || value === null) return true;
  return typeof value === 'string' && value.length <= maxLength && isStorableText(value);
}

function isCount(value: unknown): boolean {
  return Number.isInteger(value) && (value as number) >= 0 && (value as number) <= LIMITS.maxCount;
}

/** Validates {@link LeaseInput}; throws `invalid_input` otherwise. */
export function parseLeaseInput(input: unknown): LeaseInput {
  return parseOrThrow(leaseSchema, input, 'lease');
}

/**
 * The `run` of a fence argument (see `RunFence`): `undefined` when the options or their `run` are
 * omitted, else an integer ≥ 0 (a `createdAt`); anything else → `invalid_input`.
 */
export function parseRunFence(options: unknown): number | undefined {
  if (options === undefined) return undefined;
  if (typeof options !== 'object' || options === null) {
    throw new ProgressError(ErrorCode.InvalidInput, 'Fence options must be an object');
  }
  let run: unknown;
  try {
    run = (options as { run?: unknown }).run;
  } catch (error) {
    throw readingThrew(error, 'fence options');
  }
  if (run === undefined) return undefined;
  if (typeof run !== 'number' || !Number.isSafeInteger(run) || run < 0) {
    throw new ProgressError(ErrorCode.InvalidInput, "run must be an integer ≥ 0 (a task's createdAt)");
  }
  return run;
}

/**
 * The `owner` of an append's fence (see `RunFence.owner`): `undefined` when the options or their `owner`
 * are omitted, else an id (see `ID_PATTERN`); anything else → `invalid_input`. Checked without valibot: a
 * server passes it with every append.
 */
export function parseFenceOwner(options: unknown): string | undefined {
  if (typeof options !== 'object' || options === null) return undefined;
  let owner: unknown;
  try {
    owner = (options as { owner?: unknown }).owner;
  } catch (error) {
    throw readingThrew(error, 'fence options');
  }
  if (owner === undefined) return undefined;
  const problem = idProblem(owner);
  if (problem !== undefined)
    throw new ProgressError(ErrorCode.InvalidInput, `Invalid fence owner: ${problem}`);
  return owner as string;
}

/** Validates an id-like argument (for example a lease owner); throws `invalid_input` naming `what`. */
export function assertId(value: unknown, what: string): asserts value is string {
  parseOrThrow(idSchema, value, what);
}

/**
 * A `limit` argument, following the rule every store shares (see `ProgressStore`): omitted → `fallback`;
 * an integer ≥ 1 → itself, clamped to `max`; anything else → `invalid_input`.
 */
/* @__NO_SIDE_EFFECTS__ */
function limitSchema(fallback: number, max: number) {
  return v.optional(
    v.pipe(
      v.number(),
      v.integer('must be an integer'),
      v.minValue(1, 'must be at least 1'),
      v.transform((limit) => Math.min(limit, max)),
    ),
    fallback,
  );
}

/** A `ListTasksQuery` with its limit resolved. */
export interface ParsedListTasksQuery {
  owner: string;
  /** `undefined` means every status; an empty array matches nothing. */
  statuses: readonly TaskStatus[] | undefined;
  limit: number;
}

const listTasksQuerySchema = v.strictObject({
  owner: idSchema,
  statuses: v.optional(v.array(v.picklist(TASK_STATUSES, 'must be a task status'))),
  limit: limitSchema(STORE_DEFAULTS.listLimit, STORE_DEFAULTS.maxListLimit),
});

/** Validates a `listTasks` query and resolves its limit; throws `invalid_input` otherwise. */
export function parseListTasksQuery(query: unknown): ParsedListTasksQuery {
  const parsed = parseOrThrow(listTasksQuerySchema, query, 'task query');
  return { owner: parsed.owner, statuses: parsed.statuses, limit: parsed.limit };
}

const readLimitSchema = limitSchema(STORE_DEFAULTS.readLimit, STORE_DEFAULTS.maxReadLimit);

/** Resolves the `limit` of `readEvents`; throws `invalid_input` for a bad one. */
export function parseReadLimit(limit: unknown): number {
  return parseOrThrow(readLimitSchema, limit, 'readEvents limit');
}

const taskIdsSchema = v.pipe(
  v.array(idSchema),
  v.maxLength(STORE_DEFAULTS.maxLatestSeqsIds, `must hold at most ${STORE_DEFAULTS.maxLatestSeqsIds} ids`),
);

/** Validates the ids of `latestSeqs` (at most `STORE_DEFAULTS.maxLatestSeqsIds`); throws `invalid_input`. */
export function parseTaskIds(taskIds: unknown): string[] {
  return parseOrThrow(taskIdsSchema, taskIds, 'task ids');
}

const reapOptionsSchema = v.optional(
  v.strictObject({ limit: limitSchema(STORE_DEFAULTS.reapLimit, STORE_DEFAULTS.maxReapLimit) }),
  {},
);

/** Validates `reapExpiredLeases` options and resolves the limit; throws `invalid_input` otherwise. */
export function parseReapOptions(options: unknown): { limit: number } {
  const parsed = parseOrThrow(reapOptionsSchema, options, 'reap options');
  return { limit: parsed.limit ?? STORE_DEFAULTS.reapLimit };
}

const purgeOptionsSchema = v.strictObject({
  olderThanMs: countSchema,
  limit: limitSchema(STORE_DEFAULTS.purgeLimit, STORE_DEFAULTS.maxPurgeLimit),
});

/** Validates `purgeFinished` options and resolves the limit; throws `invalid_input` otherwise. */
export function parsePurgeOptions(options: unknown): { olderThanMs: number; limit: number } {
  const parsed = parseOrThrow(purgeOptionsSchema, options, 'purge options');
  return { olderThanMs: parsed.olderThanMs, limit: parsed.limit };
}
