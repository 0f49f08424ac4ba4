import { expect } from 'vitest';
import { ErrorCode } from '../codes.js';
import { isProgressError } from '../progress-error.js';

/**
 * Test support for core's own tests (not exported from the package, not shipped): the one check of "this
 * call is refused as invalid input" that the option and argument tests share.
 *
 * @internal
 * @module
 */

/**
 * The message of the `invalid_input` ProgressError that `run` throws; fails the test when `run` throws
 * anything else, or nothing.
 */
export function invalidInputMessage(run: () => unknown): string {
  try {
    run();
  } catch (error) {
    expect(isProgressError(error, ErrorCode.InvalidInput), `threw ${String(error)}`).toBe(true);
    return (error as Error).message;
  }
  return expect.fail('expected an invalid_input ProgressError');
}

/** Fails unless `run` throws an `invalid_input` ProgressError whose message matches `pattern`. */
export function expectInvalidInput(run: () => unknown, pattern: RegExp): void {
  expect(invalidInputMessage(run)).toMatch(pattern);
}
