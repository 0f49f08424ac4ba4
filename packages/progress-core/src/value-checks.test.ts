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

describe('isJsonValue and fitsJsonLimit', () => {
  it('together accept exactly what jsonSchema accepts', () => {
    const values = fc.oneof(
      jsonArbitrary,
      fc.anything({ maxDepth: 3, withNullPrototype: true, withMap: true }),
      fc.constant(JSON.parse('{"a":{"__proto__":1}}')),
      fc.constant('x'.repeat(LIMITS.maxJsonBytes - 1)),
    );
    fc.assert(
      fc.property(values, (value) => {
        expect(isJsonValue(value) && fitsJsonLimit(value)).toBe(v.is(jsonSchema, value));
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
