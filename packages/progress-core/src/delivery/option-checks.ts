import { ErrorCode } from '../codes.js';
import { ProgressError } from '../progress-error.js';

/**
 * Shared by the delivery components: merge caller options over frozen defaults once, and validate
 * numeric options with one message format. Internal to `delivery/`, not part of the public API.
 *
 * @internal
 * @module
 */

/**
 * `defaults` with every field of `options` that is not `undefined` laid over it. Keys absent from
 * `defaults` are ignored, so a stray key cannot smuggle a value past validation.
 *
 * @internal
 */
export function mergeOptions<T extends object>(defaults: Readonly<T>, options: Partial<T> | undefined): T {
  const merged = { ...defaults } as T;
  if (options === undefined || options === null) return merged;
  if (typeof options !== 'object') {
    throw new ProgressError(ErrorCode.InvalidInput, `Options must be an object, got ${typeof options}`);
  }
  for (const key of Object.keys(defaults) as (keyof T)[]) {
    const value = options[key];
    if (value !== undefined) merged[key] = value as T[keyof T];
  }
  return merged;
}

/** Constraints for {@link requireNumber}. @internal */
export interface NumberConstraint {
  /** Smallest allowed value (inclusive). */
  min?: number;
  /** Must be a safe integer. */
  integer?: boolean;
}

/**
 * Throws ProgressError `invalid_input` unless `value` is a finite number meeting `constraint`.
 * `where` names the option for the message, for example `FinishWatchdog: stuckAfterMs`.
 *
 * @internal
 */
export function requireNumber(where: string, value: unknown, constraint: NumberConstraint = {}): number {
  const ok =
    typeof value === 'number' &&
    Number.isFinite(value) &&
    (constraint.integer !== true || Number.isSafeInteger(value)) &&
    (constraint.min === undefined || value >= constraint.min);
  if (!ok) {
    const kind = constraint.integer === true ? 'an integer' : 'a finite number';
    const bound = constraint.min === undefined ? '' : ` >= ${constraint.min}`;
    throw new ProgressError(ErrorCode.InvalidInput, `${where} must be ${kind}${bound}, got ${String(value)}`);
  }
  return value;
}
