import fc from 'fast-check';
import * as v from 'valibot';
import { describe, expect, it } from 'vitest';
import { ErrorCode } from './codes.js';
import { LIMITS } from './limits.js';
import type { JsonValue } from './model.js';
import { idSchema, jsonSchema } from './primitives.js';
import { isProgressError } from './progress-error.js';
import { idArbitrary, jsonArbitrary } from './testing/frame-arbitraries.js';
import { propertyParams, propertySeed } from './testing/property-config.js';
import { assertTaskId, fitsJsonLimit, idProblem, isJsonValue } from './value-checks.js';

/** The first issue valibot reports, as the codec asks for it (abort early). */
function firstIssue(schema: v.GenericSchema, value: unknown): string | undefined {
  const parsed = v.safeParse(schema, value, { abortEarly: true });
  return parsed.success ? undefined : parsed.issues[0].message;
}

const ID_EDGES = fc.oneof(
  idArbitrary,
  // size 'max': fast-check's default size stops strings near 10 characters, far below the limit.
  fc.string({ maxLength: LIMITS.maxIdLength + 2, size: 'max' }),
  // At the limit, with characters an id may not hold: length and pattern broken at once.
  fc.string({
    unit: fc.constantFrom('a', ' ', '/', 'é', '\u0000'),
    minLength: LIMITS.maxIdLength - 1,
    maxLength: LIMITS.maxIdLength + 1,
  }),
  fc.string({ unit: fc.constantFrom('a', ' ', '/', 'é', '\u0000'), maxLength: 6 }),
  fc.constantFrom('', '__proto__', 'constructor', 'prototype', 'x'.repeat(LIMITS.maxIdLength + 1)),
);

describe('ID_EDGES', () => {
  it('reaches the length limit with generated strings, not only with the constants', () => {
    // A fixed sample, independent of FC_NUM_RUNS: this checks the generator, not idProblem.
    const lengths = new Set(
      fc
        .sample(ID_EDGES, { seed: propertySeed(), numRuns: 1000 })
        .filter((id) => id !== 'x'.repeat(LIMITS.maxIdLength + 1) && !/^[A-Za-z0-9_.:@/-]+$/.test(id))
        .map((id) => id.length),
    );
    for (const length of [LIMITS.maxIdLength - 1, LIMITS.maxIdLength, LIMITS.maxIdLength + 1]) {
      expect(lengths.has(length), `a generated non-id string of ${length} characters`).toBe(true);
    }
    expect(
      [...lengths].some((length) => length > 20 && length < LIMITS.maxIdLength - 1),
      'a generated string between short and the limit',
    ).toBe(true);
  });
});

describe('idProblem', () => {
  it('accepts exactly what idSchema accepts, naming the same first problem', () => {
    fc.assert(
      fc.property(ID_EDGES, (id) => {
        expect(idProblem(id)).toBe(firstIssue(idSchema, id));
      }),
      propertyParams(1000),
    );
  });

  it('refuses non-strings', () => {
    for (const value of [undefined, null, 1, {}, ['a']]) expect(idProblem(value)).toBe('must be string');
  });
});

describe('assertTaskId', () => {
  it('throws invalid_input naming the problem, and passes valid ids', () => {
    expect(() => assertTaskId('task-1')).not.toThrow();
    for (const [id, problem] of [
      ['', 'must not be empty'],
      ['a b', 'may contain only'],
      ['__proto__', 'must not be __proto__'],
      [7, 'must be string'],
    ] as const) {
      let caught: unknown;
      try {
        assertTaskId(id);
      } catch (error) {
        caught = error;
      }
      expect(isProgressError(caught, ErrorCode.InvalidInput)).toBe(true);
      expect((caught as Error).message).toContain(problem);
    }
  });
});

/**
 * The JSON rules read from their statement, not from `isJsonValue`: what `JSON.stringify` keeps exactly
 * (a round trip gives back equal plain objects, arrays, finite numbers, strings, booleans and nulls), at
 * most 64 arrays or objects deep, no `__proto__` key, no U+0000 or unpaired surrogate in a string or key,
 * and at most `maxJsonBytes` bytes of UTF-8 text. (`jsonSchema` is built from `isJsonValue` and
 * `fitsJsonLimit`, so comparing those with it could not fail.)
 */
function isJsonByTheRules(value: unknown): boolean {
  let text: string | undefined;
  try {
    text = JSON.stringify(value);
  } catch {
    return false; // a bigint, a cycle
  }
  if (text === undefined || Buffer.byteLength(text) > LIMITS.maxJsonBytes) return false;
  const storable = (s: string) => !s.includes('\u0000') && Buffer.from(s).toString() === s;
  const keeps = (original: unknown, copy: unknown, level: number): boolean => {
    if (typeof original === 'string') return copy === original && storable(original);
    if (typeof original === 'number') return copy === original; // NaN and ±Infinity come back as null
    if (original === null || typeof original !== 'object') return copy === original;
    if (level > 64 || copy === null || typeof copy !== 'object') return false;
    if (Array.isArray(original)) {
      return (
        Array.isArray(copy) &&
        copy.length === original.length &&
        original.every((entry, index) => keeps(entry, copy[index], level + 1))
      );
    }
    const prototype = Object.getPrototypeOf(original);
    if (prototype !== Object.prototype && prototype !== null) return false;
    const keys = Object.keys(original);
    if (Array.isArray(copy) || Object.keys(copy).length !== keys.length) return false;
    return keys.every(
      (key) =>
        key !== '__proto__' &&
        storable(key) &&
        Object.hasOwn(copy, key) &&
        keeps((original as Record<string, unknown>)[key], (copy as Record<string, unknown>)[key], level + 1),
    );
  };
  return keeps(value, JSON.parse(text), 1);
}

/** A string whose JSON text is `maxJsonBytes + delta` bytes, of characters of 1 to 4 UTF-8 bytes. */
const nearTheByteLimit = fc
  .tuple(fc.constantFrom('x', 'é', '€', '😀'), fc.integer({ min: -3, max: 3 }))
  .map(([character, delta]) => {
    const bytes = LIMITS.maxJsonBytes - 2 + delta; // the quotes are two more
    const count = Math.floor(bytes / Buffer.byteLength(character));
    return character.repeat(count) + 'x'.repeat(bytes - count * Buffer.byteLength(character));
  });

describe('isJsonValue and fitsJsonLimit', () => {
  it('together accept exactly what the JSON rules accept, as jsonSchema does', () => {
    const values = fc.oneof(
      jsonArbitrary,
      fc.anything({ maxDepth: 3, withNullPrototype: true, withMap: true, withSet: true, withDate: true }),
      fc.constant(JSON.parse('{"a":{"__proto__":1}}')),
      fc.constantFrom(Number.NaN, Number.POSITIVE_INFINITY, -0, [1, Number.NEGATIVE_INFINITY], {
        a: undefined,
      }),
      nearTheByteLimit,
      nearTheByteLimit.map((text) => [text.slice(0, -2)]),
    );
    fc.assert(
      fc.property(values, (value) => {
        const expected = isJsonByTheRules(value);
        expect(isJsonValue(value) && fitsJsonLimit(value)).toBe(expected);
        expect(v.is(jsonSchema, value)).toBe(expected);
      }),
      propertyParams(1000),
    );
  });
});

describe('isJsonValue depth', () => {
  /** `levels` arrays or objects nested in each other, the innermost holding `leaf` (nothing if undefined). */
  function nested(levels: number, container: 'array' | 'object', leaf?: JsonValue): unknown {
    const inner = container === 'array' ? '[]' : '{}';
    const wrap = (text: string) => (container === 'array' ? `[${text}]` : `{"a":${text}}`);
    let text = leaf === undefined ? inner : wrap(JSON.stringify(leaf));
    for (let level = 1; level < levels; level++) text = wrap(text);
    return JSON.parse(text);
  }

  it('accepts 64 nested arrays or objects and refuses 65, empty or holding a scalar alike', () => {
    for (const container of ['array', 'object'] as const) {
      for (const leaf of [undefined, 1, 'x', null]) {
        const what = `${container}s around ${leaf === undefined ? 'nothing' : JSON.stringify(leaf)}`;
        expect(isJsonValue(nested(64, container, leaf)), `64 ${what}`).toBe(true);
        expect(isJsonValue(nested(65, container, leaf)), `65 ${what}`).toBe(false);
        expect(v.is(jsonSchema, nested(65, container, leaf)), `jsonSchema, 65 ${what}`).toBe(false);
      }
    }
    // Arrays and objects count alike, mixed.
    const mixed = (levels: number) => {
      let value: unknown = {};
      for (let level = 1; level < levels; level++) value = level % 2 ? [value] : { a: value };
      return value;
    };
    expect(isJsonValue(mixed(64))).toBe(true);
    expect(isJsonValue(mixed(65))).toBe(false);
  });
});
