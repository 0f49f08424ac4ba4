import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { propertyParams } from '../testing/property-config.js';
import { RoundTripEstimate } from './round-trip-estimate.js';

describe('RoundTripEstimate', () => {
  it('has no timeout before its first sample, then three times that sample (SRTT + 4 · SRTT/2)', () => {
    const estimate = new RoundTripEstimate();
    expect(estimate.timeoutMs).toBe(0);
    estimate.sample(40);
    expect(estimate.timeoutMs).toBe(120);
  });

  it('follows RFC 6298: gains 1/8 for the mean and 1/4 for the deviation', () => {
    const estimate = new RoundTripEstimate();
    estimate.sample(100); // SRTT 100, RTTVAR 50
    estimate.sample(200); // RTTVAR 0.75·50 + 0.25·100 = 62.5; SRTT 0.875·100 + 0.125·200 = 112.5
    expect(estimate.timeoutMs).toBeCloseTo(112.5 + 4 * 62.5, 9);
  });

  it('settles on a steady round trip and rises when acks slow down', () => {
    const estimate = new RoundTripEstimate();
    for (let i = 0; i < 100; i++) estimate.sample(5);
    expect(estimate.timeoutMs).toBeGreaterThanOrEqual(5);
    expect(estimate.timeoutMs).toBeLessThan(5.01);
    for (let i = 0; i < 20; i++) estimate.sample(300);
    expect(estimate.timeoutMs).toBeGreaterThan(250);
  });

  it('ignores samples a clock step makes negative or non-finite', () => {
    const estimate = new RoundTripEstimate();
    for (const bad of [-1, Number.NaN, Number.POSITIVE_INFINITY]) estimate.sample(bad);
    expect(estimate.timeoutMs).toBe(0);
    estimate.sample(10);
    estimate.sample(-50);
    expect(estimate.timeoutMs).toBe(30);
  });

  it('stays between the smallest sample and five times the largest for any sequence (SRTT and RTTVAR never exceed it)', () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 0, max: 60_000 }), { minLength: 1, maxLength: 200, size: 'max' }),
        (samples) => {
          const estimate = new RoundTripEstimate();
          for (const ms of samples) estimate.sample(ms);
          expect(estimate.timeoutMs).toBeGreaterThanOrEqual(Math.min(...samples) - 1e-9);
          expect(estimate.timeoutMs).toBeLessThanOrEqual(5 * Math.max(...samples) + 1e-9);
        },
      ),
      propertyParams(300),
    );
  });
});
