import { ErrorCode } from './codes.js';
import { ID_PATTERN, LIMITS, MAX_ID_LENGTH } from './limits.js';
import type { JsonValue } from './model.js';
import { ProgressError } from './progress-error.js';

/**
 * The rules for ids, texts and JSON payloads as plain functions, with no dependency on valibot. The
 * valibot schemas of `primitives.ts` (stores, client frames on the server) and the hand-written server
 * frame decoder (the browser client) both build on them, so the two cannot drift apart on what a valid
 * id or payload is, and the browser bundle does not carry a validation library.
 *
 * @internal
 * @module
 */

/**
 * Names that ID_PATTERN allows but that misbehave as keys of plain objects (heartbeat `seqs` are keyed
 * by task id): `__proto__` cannot be assigned as an own property, and valibot's `record` silently drops
 * all three. Refusing them as ids keeps every id usable as an object key everywhere.
 */
const RESERVED_IDS: ReadonlySet<string> = new Set(['__proto__', 'constructor', 'prototype']);

// The messages of an id, apart: the client checks ids and nothing else here, so a browser bundle that
// does not reference CHECK_MESSAGES leaves the others out.
const EMPTY = 'must not be empty';
const ID_TOO_LONG = `must be at most ${MAX_ID_LENGTH} characters`;
const ID_PATTERN_MESSAGE = 'may contain only letters, digits and _ . : @ / -';
const ID_RESERVED = 'must not be __proto__, constructor or prototype';

/** Messages shared by the schemas and the hand-written decoder. @internal */
// (Built in a pure call: templates of LIMITS fields would otherwise count as side effects.)
export const CHECK_MESSAGES = /* @__PURE__ */ (() =>
  Object.freeze({
    empty: EMPTY,
    idTooLong: ID_TOO_LONG,
    idPattern: ID_PATTERN_MESSAGE,
    idReserved: ID_RESERVED,
    nul: 'must not contain U+0000 or an unpaired surrogate',
    keyTooLong: `must be at most ${LIMITS.maxKeyLength} characters`,
    messageTooLong: `must be at most ${LIMITS.maxMessageLength} characters`,
    integer: 'must be an integer',
    negative: 'must not be negative',
    tooLarge: 'is too large',
    atLeastOne: 'must be at least 1',
    json: 'must be a plain JSON value (at most 64 levels deep, no __proto__ key, no U+0000 or unpaired surrogate)',
    jsonTooLarge: `must serialize to at most ${LIMITS.maxJsonBytes} bytes`,
  }))();

/** A UTF-16 surrogate without its partner: not valid Unicode, so not storable as UTF-8 text. */
const UNPAIRED_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/**
 * True when every store can keep `text` exactly: no U+0000 (Postgres `text` and `jsonb` refuse it) and no
 * unpaired surrogate (not valid Unicode; Postgres refuses it, SQLite would store replacement bytes). A value
 * one store accepts and another rejects would make the stores disagree. @internal
 */
export function isStorableText(text: string): boolean {
  return !text.includes('\u0000') && !UNPAIRED_SURROGATE.test(text);
}

/** True for ids that are not object-key safe (see {@link RESERVED_IDS}). @internal */
export function isReservedId(id: string): boolean {
  return RESERVED_IDS.has(id);
}

/**
 * The first rule `id` breaks, in the order the id schema checks them, or `undefined` for a valid task id,
 * owner, kind or server id.
 *
 * @internal
 */
export function idProblem(id: unknown): string | undefined {
  if (typeof id !== 'string') return 'must be string';
  if (id.length < 1) return EMPTY;
  if (id.length > MAX_ID_LENGTH) return ID_TOO_LONG;
  if (!ID_PATTERN.test(id)) return ID_PATTERN_MESSAGE;
  if (RESERVED_IDS.has(id)) return ID_RESERVED;
  return undefined;
}

/**
 * Validates a task id; throws `invalid_input` naming the first rule it breaks otherwise.
 *
 * @throws ProgressError `invalid_input`.
 */
export function assertTaskId(taskId: unknown): asserts taskId is string {
  const problem = idProblem(taskId);
  if (problem !== undefined) {
    throw new ProgressError(ErrorCode.InvalidInput, `Invalid task id: ${problem}`);
  }
}

/** UTF-8 byte length of a string, without allocating a buffer. @internal */
export function utf8Length(text: string): number {
  let bytes = 0;
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i);
    if (unit < 0x80) bytes += 1;
    else if (unit < 0x800) bytes += 2;
    else if (unit >= 0xd800 && unit <= 0xdbff && i + 1 < text.length) {
      const next = text.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) {
        bytes += 4;
        i++;
      } else bytes += 3;
    } else bytes += 3;
  }
  return bytes;
}

/**
 * A plain JSON value: plain objects, arrays, finite numbers, strings, booleans, null; at most 64 levels
 * deep (64 arrays or objects nested in each other); no `__proto__` key, no U+0000 in any string or key.
 * The size limit is checked separately.
 *
 * @internal
 */
export function isJsonValue(value: unknown, depth = 0): value is JsonValue {
  if (value === null || typeof value === 'boolean') return true;
  if (typeof value === 'string') return isStorableText(value);
  if (typeof value === 'number') return Number.isFinite(value);
  // `depth` arrays or objects hold this one: it is level depth + 1. Checked on the container, not on its
  // entries, so an empty array or object counts as a level as one holding a scalar does (65 nested empty
  // arrays passed, 65 holding a 1 did not).
  if (depth >= 64) return false;
  if (Array.isArray(value)) return value.every((entry) => isJsonValue(entry, depth + 1));
  if (typeof value === 'object') {
    const proto = Object.getPrototypeOf(value);
    if (proto !== Object.prototype && proto !== null) return false;
    // An own `__proto__` key (JSON.parse creates one) turns into a prototype swap in the first
    // consumer that copies the object with assignment or a naive deep merge.
    if (Object.hasOwn(value, '__proto__')) return false;
    return Object.entries(value).every(
      ([key, entry]) => isStorableText(key) && isJsonValue(entry, depth + 1),
    );
  }
  return false;
}

/** True when `value` (a JSON value) serializes to at most {@link LIMITS.maxJsonBytes}. @internal */
export function fitsJsonLimit(value: JsonValue): boolean {
  return utf8Length(JSON.stringify(value)) <= LIMITS.maxJsonBytes;
}
