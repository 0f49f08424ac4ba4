import type { Parameters as FcParameters } from 'fast-check';

/**
 * The fast-check settings every property test shares (seed, run count).
 *
 * @module
 */

/**
 * fast-check settings shared by every property test of the project: a fixed seed that is printed once
 * per process and can be overridden to replay a failure, and a run count that CI can raise.
 *
 * - `FC_SEED=123 npm test` replays a failure (fast-check prints the seed and path of a counterexample).
 * - `FC_NUM_RUNS=5000 npm test` sets every property's run count; each test's own count is the default.
 * - `FC_MIN_RUNS=1000` raises every property to at least that many runs and leaves larger counts alone
 *   (`npm run test:deep` sets it, with a fresh random `FC_SEED`).
 */

/** The seed used when `FC_SEED` is not set. Fixed, so a red CI run reproduces locally. */
export const DEFAULT_FC_SEED = 20261126;

function readIntegerEnv(name: string): number | undefined {
  const raw = typeof process === 'undefined' ? undefined : process.env[name];
  if (raw === undefined || raw === '') return undefined;
  const value = Number(raw);
  if (!Number.isSafeInteger(value)) throw new Error(`${name} must be an integer, got ${JSON.stringify(raw)}`);
  return value;
}

let announced = false;

/** The seed in force: `FC_SEED` or {@link DEFAULT_FC_SEED}. Printed once per process. */
export function propertySeed(): number {
  const seed = readIntegerEnv('FC_SEED') ?? DEFAULT_FC_SEED;
  if (!announced) {
    announced = true;
    process.stdout.write(`[fast-check] seed ${seed} (replay with FC_SEED=${seed})\n`);
  }
  return seed;
}

/**
 * Parameters for `fc.assert`: the project seed and `numRuns` (overridden by `FC_NUM_RUNS` when set).
 *
 * @example
 * ```ts
 * fc.assert(fc.property(fc.nat(), (n) => n >= 0), propertyParams(1000));
 * ```
 */
export function propertyParams<T = unknown>(numRuns: number): FcParameters<T> {
  return { seed: propertySeed(), numRuns: propertyRuns(numRuns) };
}

/** The run count in force for a property whose own count is `numRuns` (`FC_NUM_RUNS`, `FC_MIN_RUNS`). */
export function propertyRuns(numRuns: number): number {
  return readIntegerEnv('FC_NUM_RUNS') ?? Math.max(numRuns, readIntegerEnv('FC_MIN_RUNS') ?? 0);
}

/**
 * A test timeout for a property of `numRuns` own runs that takes up to `timeoutMs` at that count, scaled
 * by the run count in force, so `FC_MIN_RUNS` / `FC_NUM_RUNS` do not turn a deep run into a timeout.
 */
export function propertyTimeoutMs(numRuns: number, timeoutMs: number): number {
  return Math.ceil((timeoutMs * Math.max(propertyRuns(numRuns), numRuns)) / numRuns);
}
