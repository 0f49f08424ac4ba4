import fc from 'fast-check';
import * as v from 'valibot';
import { describe, expect, it } from 'vitest';
import { ErrorCode } from './codes.js';
import { LIMITS } from './limits.js';
import { idSchema, jsonSchema } from './primitives.js';
import { isProgressError } from './progress-error.js';
import { idArbitrary, jsonArbitrary } from './testing/frame-arbitraries.js';
import { propertyParams } from './testing/property-config.js';
import { assertTaskId, fitsJsonLimit, idProblem, isJsonValue } from './value-checks.js';

/** The first issue valibot reports, as the codec asks for it (abort early). */
function firstIssue(schema: v.GenericSchema, value: unknown): string | undefined {
  const parsed = v.safeParse(schema, value, { abortEarly: true });
  return parsed.success ? undefined : parsed.issues[0].message;
}

const ID_EDGES = fc.oneof(
  idArbitrary,
  fc.string({ maxLength: LIMITS.maxIdLength + 2 }),
  fc.string({ unit: fc.constantFrom('a', ' ', '/', 'é', '\u0000'), maxLength: 6 }),
  fc.constantFrom('', '__proto__', 'constructor', 'prototype', 'x'.repeat(LIMITS.maxIdLength + 1)),
);

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
