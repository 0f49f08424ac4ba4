import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { propertyParams } from '../testing/property-config.js';
import { RoundTripEstimate, RoundTripPool } from './round-trip-estimate.js';

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

describe('RoundTripPool', () => {
  it('has no timeout without votes, and gives the lower median of its votes, each socket one', () => {
    const pool = new RoundTripPool();
    expect(pool.timeoutMs).toBe(0);
    const at = (ms: number) => RoundTripPool.bucketOf(ms);
    pool.move(-1, at(64));
    expect(pool.timeoutMs).toBe(64);
    // One socket voting a minute, one 1 ms: the lower median of three is still 64 ms.
    pool.move(-1, at(60_000));
    expect(pool.timeoutMs).toBe(64);
    pool.move(-1, at(0.5));
    expect(pool.timeoutMs).toBe(64);
    // The socket of 64 ms moves to 2 s: the middle one of 0.5 ms, 2 s and a minute.
    pool.move(at(64), at(2048));
    expect(pool.timeoutMs).toBe(2048);
    // It closes: the lower of the two left, the bucket of 1 ms and under.
    pool.move(at(2048), -1);
    expect(pool.votes).toBe(2);
    expect(pool.timeoutMs).toBe(1);
  });

  it('keeps one vote per voter, the last one its sockets gave, until its last voting socket leaves', () => {
    const pool = new RoundTripPool();
    const at = (ms: number) => RoundTripPool.bucketOf(ms);
    pool.vote('alice', at(64), true);
    pool.vote('mallory', at(60_000), true);
    pool.vote('mallory', at(60_000), true);
    pool.vote('mallory', at(30_000), false);
    expect(pool.votes).toBe(2);
    expect(pool.timeoutMs).toBe(64);
    pool.vote('bob', at(16), true);
    expect(pool.timeoutMs).toBe(64);
    pool.leave('mallory');
    expect(pool.votes).toBe(3);
    pool.leave('mallory');
    expect(pool.votes).toBe(2);
    expect(pool.timeoutMs).toBe(16);
    pool.leave('mallory');
    expect(pool.votes).toBe(2);
  });

  it('is, for any votes and removals, the lower median of the remaining ones to within one 2^(1/4) step above', () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 1, max: 10_000_000 }), { minLength: 1, maxLength: 60, size: 'max' }),
        fc.array(fc.nat(), { maxLength: 30, size: 'max' }),
        (timeouts, removals) => {
          const pool = new RoundTripPool();
          const votes = [...timeouts];
          for (const ms of votes) pool.move(-1, RoundTripPool.bucketOf(ms));
          for (const pick of removals) {
            if (votes.length === 1) break;
            const [ms] = votes.splice(pick % votes.length, 1);
            pool.move(RoundTripPool.bucketOf(ms as number), -1);
          }
          const sorted = votes.sort((a, b) => a - b);
          const median = sorted[(sorted.length - 1) >> 1] as number;
          expect(pool.votes).toBe(sorted.length);
          expect(pool.timeoutMs).toBeGreaterThanOrEqual(median);
          expect(pool.timeoutMs).toBeLessThanOrEqual(median * 2 ** 0.25 * (1 + 1e-12));
        },
      ),
      propertyParams(300),
    );
  });
});
