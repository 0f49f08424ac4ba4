import { ErrorCode } from '../codes.js';
import type { OptionSpec, Resolved } from '../options.js';
import { finite, nested, refine, requireNumber, resolveOptions } from '../options.js';
import { ProgressError } from '../progress-error.js';

/**
 * Exponential backoff with full jitter, as used by the client's reconnect loop and the Postgres
 * listener. Full jitter (a uniform draw below the exponential ceiling, rather than the ceiling plus a
 * little noise) spreads out a crowd of clients that all lost the same replica at the same moment, so
 * they do not reconnect in lockstep.
 *
 * @module
 */

/** Options of {@link backoffDelayMs}. */
export interface BackoffOptions {
  /**
   * Ceiling of the first retry's delay (attempt 0), in milliseconds. Must be >= 0 and <= `maxDelayMs`.
   * @default 1000
   */
  initialDelayMs?: number | undefined;
  /**
   * Ceiling no delay ever exceeds, in milliseconds.
   * @default 30000
   */
  maxDelayMs?: number | undefined;
  /**
   * Factor by which the ceiling grows per attempt. Must be >= 1.
   * @default 2
   */
  multiplier?: number | undefined;
}

/** Defaults of {@link BackoffOptions}: 1 s, doubling, capped at 30 s. */
export const BACKOFF_DEFAULTS: Readonly<Resolved<BackoffOptions>> = Object.freeze({
  initialDelayMs: 1000,
  maxDelayMs: 30_000,
  multiplier: 2,
});

/**
 * One description per option of {@link BackoffOptions}, with the given defaults: a package nesting
 * backoff options (`reconnect: { … }`) checks them with the same rules and its own defaults.
 */
export function backoffOptionSpecs(defaults: Readonly<Resolved<BackoffOptions>> = BACKOFF_DEFAULTS) {
  return {
    initialDelayMs: finite(defaults.initialDelayMs, 0),
    maxDelayMs: finite(defaults.maxDelayMs, 0),
    multiplier: finite(defaults.multiplier, 1),
  };
}

/** Refuses a first ceiling above the cap; `where` names the group for the message. */
export function backoffInOrder<T extends Resolved<BackoffOptions>>(options: T, where: string): T {
  if (options.initialDelayMs > options.maxDelayMs) {
    throw new ProgressError(
      ErrorCode.InvalidInput,
      `${where}: initialDelayMs (${options.initialDelayMs}) must not exceed maxDelayMs (${options.maxDelayMs})`,
    );
  }
  return options;
}

/**
 * A nested `reconnect: { … }` group of backoff options with the given defaults, checked field by field
 * and for order.
 */
export function backoffOption(
  defaults: Readonly<Resolved<BackoffOptions>>,
): OptionSpec<Resolved<BackoffOptions>> {
  return refine(nested(backoffOptionSpecs(defaults)), backoffInOrder);
}

const BACKOFF_OPTIONS = /* @__PURE__ */ backoffOptionSpecs();

/**
 * The delay before retry number `attempt` (0 = the first retry): an integer drawn uniformly from
 * `[0, min(maxDelayMs, initialDelayMs * multiplier ** attempt))` (0 when that ceiling is 0).
 *
 * @param attempt - how many retries already happened; a non-negative integer.
 * @param options - merged over {@link BACKOFF_DEFAULTS} and validated on every call (cheap, and the
 *   function stays stateless).
 * @param random - a source of uniform numbers in `[0, 1)`; injected so tests are deterministic.
 * @throws ProgressError `invalid_input` for a bad attempt, contradictory options or a `random` that
 *   returns a value outside `[0, 1)`.
 *
 * @example
 * ```ts
 * let attempt = 0;
 * const retry = () => setTimeout(connect, backoffDelayMs(attempt++));
 * // on a successful connection: attempt = 0
 * ```
 */
export function backoffDelayMs(
  attempt: number,
  options?: BackoffOptions,
  random: () => number = Math.random,
): number {
  requireNumber('backoffDelayMs: attempt', attempt, { min: 0, integer: true });
  return resolvedBackoffDelayMs(attempt, resolveBackoffOptions(options), random);
}

/**
 * {@link backoffDelayMs} for options a caller resolved once (checked by {@link backoffOptionSpecs} and
 * {@link backoffInOrder}) and an `attempt` it counts itself: the same delay, without merging and checking
 * the options again on every retry (a page's bundle then leaves that out). `random` is still checked.
 *
 * @throws ProgressError `invalid_input` for a `random` that returns a value outside `[0, 1)`.
 */
export function resolvedBackoffDelayMs(
  attempt: number,
  { initialDelayMs, maxDelayMs, multiplier }: Readonly<Resolved<BackoffOptions>>,
  random: () => number,
): number {
  // initialDelayMs 0 would give 0 * Infinity = NaN once multiplier ** attempt overflows.
  const ceiling = initialDelayMs === 0 ? 0 : Math.min(maxDelayMs, initialDelayMs * multiplier ** attempt);
  const unit = random();
  if (!(unit >= 0 && unit < 1)) {
    throw new ProgressError(
      ErrorCode.InvalidInput,
      `backoffDelayMs: random() must return a number in [0, 1), got ${unit}`,
    );
  }
  return Math.floor(unit * ceiling);
}

function resolveBackoffOptions(options: BackoffOptions | undefined): Resolved<BackoffOptions> {
  return backoffInOrder(resolveOptions('Backoff', BACKOFF_OPTIONS, options), 'Backoff');
}
