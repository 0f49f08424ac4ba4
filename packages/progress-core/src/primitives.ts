import * as v from 'valibot';
import { ID_PATTERN, LIMITS } from './limits.js';
import type { JsonValue } from './model.js';

/**
 * Valibot schemas for the values that recur in frames and store inputs. Kept in one place so the wire
 * and the stores agree on what a valid id, count or JSON payload is.
 */

/**
 * Names that ID_PATTERN allows but that misbehave as keys of plain objects (heartbeat `seqs` are keyed
 * by task id): `__proto__` cannot be assigned as an own property, and valibot's `record` silently drops
 * all three. Refusing them as ids keeps every id usable as an object key everywhere.
 */
const RESERVED_IDS: ReadonlySet<string> = new Set(['__proto__', 'constructor', 'prototype']);

/** A task id, owner, kind or server id. */
export const idSchema = v.pipe(
  v.string(),
  v.minLength(1, 'must not be empty'),
  v.maxLength(LIMITS.maxIdLength, `must be at most ${LIMITS.maxIdLength} characters`),
  v.regex(ID_PATTERN, 'may contain only letters, digits and _ . : @ / -'),
  v.check((id) => !RESERVED_IDS.has(id), 'must not be __proto__, constructor or prototype'),
);

/** A non-negative safe integer: counts, seqs. */
export const countSchema = v.pipe(
  v.number(),
  v.integer('must be an integer'),
  v.minValue(0, 'must not be negative'),
  v.maxValue(LIMITS.maxCount, 'is too large'),
);

/** A positive safe integer: the seq of an existing event. */
export const seqSchema = v.pipe(countSchema, v.minValue(1, 'must be at least 1'));

/** Epoch milliseconds. */
export const timeSchema = countSchema;

/**
 * U+0000 is refused in every text: Postgres `text` and `jsonb` cannot store it, and a value one store
 * accepts and another rejects would make the stores disagree.
 */
const noNulCharacter = v.check((text: string) => !text.includes('\u0000'), 'must not contain U+0000');

/** A short text: item key, `current`, reason. */
export const shortTextSchema = v.pipe(
  v.string(),
  noNulCharacter,
  v.maxLength(LIMITS.maxKeyLength, `must be at most ${LIMITS.maxKeyLength} characters`),
);

/** A message line. */
export const messageSchema = v.pipe(
  v.string(),
  noNulCharacter,
  v.maxLength(LIMITS.maxMessageLength, `must be at most ${LIMITS.maxMessageLength} characters`),
);

/** UTF-8 byte length of a string, without allocating a buffer. */
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

function isJsonValue(value: unknown, depth: number): value is JsonValue {
  if (depth > 64) return false;
  if (value === null || typeof value === 'boolean') return true;
  if (typeof value === 'string') return !value.includes('\u0000');
  if (typeof value === 'number') return Number.isFinite(value);
  if (Array.isArray(value)) return value.every((entry) => isJsonValue(entry, depth + 1));
  if (typeof value === 'object') {
    const proto = Object.getPrototypeOf(value);
    if (proto !== Object.prototype && proto !== null) return false;
    // An own `__proto__` key (JSON.parse creates one) turns into a prototype swap in the first
    // consumer that copies the object with assignment or a naive deep merge.
    if (Object.hasOwn(value, '__proto__')) return false;
    return Object.entries(value).every(
      ([key, entry]) => !key.includes('\u0000') && isJsonValue(entry, depth + 1),
    );
  }
  return false;
}

/**
 * A JSON value (plain objects, arrays, finite numbers, strings, booleans, null; at most 64 levels deep;
 * no `__proto__` key, no U+0000 in any string or key) whose serialized form fits in {@link LIMITS.maxJsonBytes}.
 */
export const jsonSchema = v.pipe(
  v.custom<JsonValue>(
    (value) => isJsonValue(value, 0),
    'must be a plain JSON value (at most 64 levels deep, no __proto__ key, no U+0000)',
  ),
  v.check(
    (value) => utf8Length(JSON.stringify(value)) <= LIMITS.maxJsonBytes,
    `must serialize to at most ${LIMITS.maxJsonBytes} bytes`,
  ),
);

/** Formats valibot issues as one readable line: `field.path: message; …`. */
export function describeIssues(issues: readonly v.BaseIssue<unknown>[]): string {
  return issues
    .slice(0, 5)
    .map((issue) => {
      const path = issue.path?.map((segment) => String(segment.key)).join('.');
      return path ? `${path}: ${issue.message}` : issue.message;
    })
    .join('; ');
}
