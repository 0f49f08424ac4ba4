/**
 * Postgres array literals (`{"a","b"}`, `{1,2}`) for the append statements' column parameters, built in
 * one `join` each. Handed a JavaScript array, `pg` builds the same text element by element (a type check,
 * an escape and a concatenation per element): at 500 appends a statement that was the largest allocation
 * of an append (1.4 of its 8.8 KB, session 19) and a visible share of the store process's CPU.
 *
 * @module
 */

/** Matches the characters that need a backslash inside a quoted element. */
const NEEDS_ESCAPE = /["\\]/;

/**
 * `values` as a `text[]` literal, every element quoted. Task ids, event types and statuses never hold a
 * quote or a backslash (`ID_PATTERN`, fixed words), so they are joined as they are; any other string is
 * escaped, so the literal always stands for exactly `values`.
 */
export function textArrayLiteral(values: readonly string[]): string {
  if (values.length === 0) return '{}';
  const joined = values.join('","');
  if (!NEEDS_ESCAPE.test(joined)) return `{"${joined}"}`;
  return `{"${values.map((value) => value.replace(/["\\]/g, '\\$&')).join('","')}"}`;
}

/**
 * `values` as an `int8[]` literal. Safe integers only (every seq and time the store writes is one): their
 * decimal text is what `Number#toString` gives.
 */
export function integerArrayLiteral(values: readonly number[]): string {
  return `{${values.join(',')}}`;
}
