import * as v from 'valibot';
import { ID_PATTERN, LIMITS } from './limits.js';
import type { JsonValue } from './model.js';
import { CHECK_MESSAGES, fitsJsonLimit, isJsonValue, isReservedId, isStorableText } from './value-checks.js';

/**
 * The valibot schemas of the values that recur in frames and store inputs (ids, counts, texts, JSON).
 *
 * @module
 */

/**
 * Valibot schemas for the values that recur in frames and store inputs. Kept in one place so the wire
 * and the stores agree on what a valid id, count or JSON payload is.
 */

/** A task id, owner, kind or server id. */
export const idSchema = v.pipe(
  v.string(),
  v.minLength(1, CHECK_MESSAGES.empty),
  v.maxLength(LIMITS.maxIdLength, CHECK_MESSAGES.idTooLong),
  v.regex(ID_PATTERN, CHECK_MESSAGES.idPattern),
  v.check((id) => !isReservedId(id), CHECK_MESSAGES.idReserved),
);

/** A non-negative safe integer: counts, seqs. */
export const countSchema = v.pipe(
  v.number(),
  v.integer(CHECK_MESSAGES.integer),
  v.minValue(0, CHECK_MESSAGES.negative),
  v.maxValue(LIMITS.maxCount, CHECK_MESSAGES.tooLarge),
);

/** A positive safe integer: the seq of an existing event. */
export const seqSchema = v.pipe(countSchema, v.minValue(1, CHECK_MESSAGES.atLeastOne));

/** Epoch milliseconds. */
export const timeSchema = countSchema;

/** Every text must be storable by every store (see `isStorableText`). */
const storableText = v.check((text: string) => isStorableText(text), CHECK_MESSAGES.nul);

/** A short text: item key, `current`, reason. */
export const shortTextSchema = v.pipe(
  v.string(),
  storableText,
  v.maxLength(LIMITS.maxKeyLength, CHECK_MESSAGES.keyTooLong),
);

/** A message line. */
export const messageSchema = v.pipe(
  v.string(),
  storableText,
  v.maxLength(LIMITS.maxMessageLength, CHECK_MESSAGES.messageTooLong),
);

/**
 * A JSON value (plain objects, arrays, finite numbers, strings, booleans, null; at most 64 levels deep;
 * no `__proto__` key, no U+0000 in any string or key) whose serialized form fits in {@link LIMITS.maxJsonBytes}.
 */
export const jsonSchema = v.pipe(
  v.custom<JsonValue>((value) => isJsonValue(value), CHECK_MESSAGES.json),
  v.check(fitsJsonLimit, CHECK_MESSAGES.jsonTooLarge),
);

/** Formats valibot issues as one readable line: `field.path: message; …`. */
export function describeIssues(issues: readonly v.BaseIssue<unknown>[]): string {
  return issues
    .slice(0, 5)
    .map((issue) => {
      const path = issue.path?.map((segment) => String(segment.key)).join('.');
      return path ? `${path}: ${issueMessage(issue)}` : issueMessage(issue);
    })
    .join('; ');
}

/**
 * valibot words a strict object's key issues as `Invalid key: Expected never but received "completed"` (a
 * field the schema does not have) and `Invalid key: Expected "ok" but received undefined` (a field left
 * out), which read as an internal failure to a caller who misspelt a field of `task.progress()` or left one
 * out of `task.item()`: say which it is.
 */
function issueMessage(issue: v.BaseIssue<unknown>): string {
  if (issue.type !== 'strict_object' || issue.path?.at(-1)?.origin !== 'key') return issue.message;
  return issue.expected === 'never' ? 'unknown field' : 'required field missing';
}
