import { describe, expect, it } from 'vitest';
import { ErrorCode } from '../codes.js';
import { isProgressError } from '../progress-error.js';
import { mergeOptions, requireNumber } from './option-checks.js';

/** The message of the invalid_input ProgressError `run` throws. */
function invalidMessage(run: () => unknown): string {
  try {
    run();
  } catch (error) {
    expect(isProgressError(error, ErrorCode.InvalidInput)).toBe(true);
    return (error as Error).message;
  }
  return expect.fail('expected an invalid_input ProgressError');
}

describe('mergeOptions', () => {
  const defaults = Object.freeze({ a: 1, b: 2 });

  it('returns a copy of the defaults for undefined or null options', () => {
    const merged = mergeOptions(defaults, undefined);
    expect(merged).toEqual({ a: 1, b: 2 });
    expect(merged).not.toBe(defaults);
    expect(mergeOptions(defaults, null as unknown as undefined)).toEqual({ a: 1, b: 2 });
  });

  it('lays defined fields over the defaults and ignores undefined and unknown ones', () => {
    expect(
      mergeOptions(defaults, { a: 5, b: undefined, c: 9 } as unknown as Partial<typeof defaults>),
    ).toEqual({
      a: 5,
      b: 2,
    });
  });

  it('refuses options that are not an object, naming the type', () => {
    expect(invalidMessage(() => mergeOptions(defaults, 42 as unknown as undefined))).toBe(
      'Options must be an object, got number',
    );
  });
});

describe('requireNumber', () => {
  it('returns a value that meets the constraint, the bound included', () => {
    expect(requireNumber('X', 0, { min: 0, integer: true })).toBe(0);
    expect(requireNumber('X', 2.5, { min: 1 })).toBe(2.5);
    expect(requireNumber('X', -3)).toBe(-3);
  });

  it('names the option, the expected kind and bound, and the value', () => {
    expect(invalidMessage(() => requireNumber('W: n', -1, { min: 0, integer: true }))).toBe(
      'W: n must be an integer >= 0, got -1',
    );
    expect(invalidMessage(() => requireNumber('W: n', 1.5, { integer: true }))).toBe(
      'W: n must be an integer, got 1.5',
    );
    expect(invalidMessage(() => requireNumber('W: x', 0.5, { min: 1 }))).toBe(
      'W: x must be a finite number >= 1, got 0.5',
    );
    expect(invalidMessage(() => requireNumber('W: x', Number.NaN))).toBe(
      'W: x must be a finite number, got NaN',
    );
    expect(invalidMessage(() => requireNumber('W: x', Number.POSITIVE_INFINITY))).toBe(
      'W: x must be a finite number, got Infinity',
    );
    expect(invalidMessage(() => requireNumber('W: x', '3'))).toBe('W: x must be a finite number, got 3');
    expect(invalidMessage(() => requireNumber('W: n', 2 ** 53, { integer: true }))).toBe(
      `W: n must be an integer, got ${2 ** 53}`,
    );
  });
});
