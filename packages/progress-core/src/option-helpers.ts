import { ErrorCode } from './codes.js';
import { ProgressError } from './progress-error.js';

/**
 * Helpers every options resolver and every exhaustive `switch` needs, written once.
 *
 * @module
 */

/** The `invalid_input` error of a bad option, prefixed with the component that refused it. */
export function invalidOption(component: string, message: string): ProgressError {
  return new ProgressError(ErrorCode.InvalidInput, `${component}: ${message}`);
}

/** A copy of `value` without its `undefined` entries, so that spreading it over defaults keeps them. */
export function stripUndefined<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, entry]) => entry !== undefined)) as Partial<T>;
}

/**
 * The `default` branch of an exhaustive `switch`: the compiler proves it unreachable, and a value from
 * outside the types (a newer peer, a cast) gets an `internal` error naming it instead of going unnoticed.
 */
export function exhaustive(value: never, what = 'value'): never {
  throw new ProgressError(ErrorCode.Internal, `Unknown ${what} ${String(value)}`);
}
