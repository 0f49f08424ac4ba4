import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { Resolved } from '../options.js';
import { expectInvalidInput } from '../testing/invalid-input.js';
import { propertyParams } from '../testing/property-config.js';
import { BACKOFF_DEFAULTS, type BackoffOptions, backoffDelayMs, resolvedBackoffDelayMs } from './backoff.js';

const almostOne = () => 0.999_999_999;
const zero = () => 0;

/** The ceiling computed the slow way: grow step by step, capping as we go (no overflow possible). */
function ceilingOracle(attempt: number, options: Resolved<BackoffOptions>): number {
  let ceiling = options.initialDelayMs;
  for (let i = 0; i < attempt && ceiling < options.maxDelayMs; i++) ceiling *= options.multiplier;
  return Math.min(ceiling, options.maxDelayMs);
}

describe('backoffDelayMs', () => {
  it('has frozen defaults of 1 s, doubling, capped at 30 s', () => {
    expect(BACKOFF_DEFAULTS).toEqual({ initialDelayMs: 1000, maxDelayMs: 30_000, multiplier: 2 });
    expect(Object.isFrozen(BACKOFF_DEFAULTS)).toBe(true);
  });

  it('draws below a ceiling that doubles from 1 s and stops at 30 s', () => {
    const highest = [0, 1, 2, 3, 4, 5, 6, 50, 5000].map((attempt) =>
      backoffDelayMs(attempt, undefined, almostOne),
    );
    expect(highest).toEqual([999, 1999, 3999, 7999, 15_999, 29_999, 29_999, 29_999, 29_999]);
    expect(backoffDelayMs(7, undefined, zero)).toBe(0);
    expect(backoffDelayMs(2, undefined, () => 0.5)).toBe(2000);
  });

  it('honours custom options', () => {
    const options = { initialDelayMs: 10, maxDelayMs: 100, multiplier: 3 };
    expect([0, 1, 2, 3].map((attempt) => backoffDelayMs(attempt, options, almostOne))).toEqual([
      9, 29, 89, 99,
    ]);
    expect(backoffDelayMs(3, { multiplier: 1 }, almostOne)).toBe(999);
  });

  it('stays 0 with a zero initial delay, even when the growth overflows', () => {
    expect(backoffDelayMs(10_000, { initialDelayMs: 0 }, almostOne)).toBe(0);
    expect(backoffDelayMs(10_000, { initialDelayMs: 0, maxDelayMs: 0 }, almostOne)).toBe(0);
  });

  it('uses Math.random by default and stays in range', () => {
    for (let i = 0; i < 50; i++) {
      const delay = backoffDelayMs(3);
      expect(delay).toBeGreaterThanOrEqual(0);
      expect(delay).toBeLessThan(8000);
    }
  });

  it('is an integer in [0, ceiling) that grows with the random draw (oracle)', () => {
    const optionsArb = fc
      .record({
        initialDelayMs: fc.integer({ min: 0, max: 5000 }),
        extra: fc.integer({ min: 0, max: 100_000 }),
        // Integer factors keep the oracle's products exact, so the floor below compares exactly.
        multiplier: fc.integer({ min: 1, max: 4 }),
      })
      .map(({ initialDelayMs, extra, multiplier }) => ({
        initialDelayMs,
        maxDelayMs: initialDelayMs + extra,
        multiplier,
      }));
    const unitArb = fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true });
    fc.assert(
      fc.property(fc.nat(2000), optionsArb, unitArb, unitArb, (attempt, options, a, b) => {
        const ceiling = ceilingOracle(attempt, options);
        const low = backoffDelayMs(attempt, options, () => Math.min(a, b));
        const high = backoffDelayMs(attempt, options, () => Math.max(a, b));
        expect(Number.isInteger(low)).toBe(true);
        expect(low).toBeGreaterThanOrEqual(0);
        expect(low).toBeLessThanOrEqual(high);
        if (ceiling === 0) expect(high).toBe(0);
        else expect(high).toBeLessThan(ceiling);
        expect(high).toBe(Math.floor(Math.max(a, b) * ceiling));
      }),
      propertyParams(300),
    );
  });

  it('rejects bad attempts, contradictory options and a broken random source', () => {
    expectInvalidInput(() => backoffDelayMs(-1), /attempt/);
    expectInvalidInput(() => backoffDelayMs(1.5), /attempt/);
    expectInvalidInput(() => backoffDelayMs(Number.NaN), /attempt/);
    expectInvalidInput(() => backoffDelayMs(0, { multiplier: 0.5 }), /multiplier/);
    expectInvalidInput(() => backoffDelayMs(0, { initialDelayMs: -1 }), /initialDelayMs/);
    expectInvalidInput(() => backoffDelayMs(0, { maxDelayMs: Number.POSITIVE_INFINITY }), /maxDelayMs/);
    expectInvalidInput(() => backoffDelayMs(0, { initialDelayMs: 500, maxDelayMs: 100 }), /must not exceed/);
    // Unknown keys are refused like everywhere else (they used to be ignored), naming the nearest option.
    expectInvalidInput(
      () => backoffDelayMs(0, { maxDelay: 100 } as BackoffOptions),
      /Backoff: unknown option "maxDelay" \(did you mean `maxDelayMs`\?\)/,
    );
    expectInvalidInput(() => backoffDelayMs(0, undefined, () => 1), /random/);
    expectInvalidInput(() => backoffDelayMs(0, undefined, () => Number.NaN), /random/);
    // Below the range too, not only at or above 1 (a mutant dropping `unit >= 0` survived without it).
    expectInvalidInput(() => backoffDelayMs(0, undefined, () => -0.25), /random/);
    // A negative cap is refused by its own check, naming it (not only as a contradiction with the initial delay).
    expectInvalidInput(() => backoffDelayMs(0, { initialDelayMs: 0, maxDelayMs: -1 }), /Backoff: maxDelayMs/);
  });
});

describe('resolvedBackoffDelayMs', () => {
  it('gives the delay backoffDelayMs gives for the same resolved options and draw (oracle)', () => {
    fc.assert(
      fc.property(
        fc.nat(60),
        fc.record({
          initialDelayMs: fc.integer({ min: 0, max: 10_000 }),
          maxDelayMs: fc.integer({ min: 10_000, max: 100_000 }),
          multiplier: fc.double({ min: 1, max: 4, noNaN: true }),
        }),
        fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }),
        (attempt, options, unit) => {
          expect(resolvedBackoffDelayMs(attempt, options, () => unit)).toBe(
            backoffDelayMs(attempt, options, () => unit),
          );
        },
      ),
      propertyParams(300),
    );
  });

  it('still refuses a broken random source', () => {
    expectInvalidInput(() => resolvedBackoffDelayMs(0, BACKOFF_DEFAULTS, () => 1), /random/);
    expectInvalidInput(() => resolvedBackoffDelayMs(0, BACKOFF_DEFAULTS, () => -0.25), /random/);
  });
});
