import { propertyParams } from '@finishline/core/testing';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { RateEstimator } from './rate-estimator.js';

describe('RateEstimator', () => {
  it('is unknown until two samples at different times exist', () => {
    const rate = new RateEstimator(10_000);
    expect(rate.rate()).toBeNull();
    rate.add(1000, 0);
    rate.add(1000, 3);
    expect(rate.rate()).toBeNull();
    rate.add(3000, 5);
    expect(rate.rate()).toBe(2.5); // 5 items in 2 s
    expect(rate.eta(10, 5)).toBe(2000);
    expect(rate.eta(null, 5)).toBeNull();
    expect(rate.eta(5, 5)).toBe(0);
  });

  it('has no ETA for a stalled task, and starts over when the count goes back', () => {
    const rate = new RateEstimator(10_000);
    rate.add(0, 4);
    rate.add(5000, 4);
    expect(rate.rate()).toBe(0);
    expect(rate.eta(10, 4)).toBeNull();
    rate.add(6000, 1);
    expect(rate.rate()).toBeNull();
  });

  it('matches the oracle: (done_last - done_anchor) / (t_last - t_anchor) over the window', () => {
    // Steps of 0 ms (samples of one millisecond, which the estimator thins) and of round sizes that a round
    // window meets exactly (a sample at the horizon, kept as the anchor), besides any step: drawn only from
    // 0–3000, the property passed with either of those two rules broken.
    const stepMs = fc.oneof(
      fc.constant(0),
      fc.constantFrom(250, 500, 1000),
      fc.integer({ min: 0, max: 3000 }),
    );
    const windows = fc.oneof(fc.constantFrom(500, 1000, 2000), fc.integer({ min: 1, max: 20_000 }));
    const samples = fc
      .array(fc.tuple(stepMs, fc.integer({ min: 0, max: 5 })), {
        minLength: 1,
        maxLength: 30,
        size: 'max',
      })
      .map((steps) => {
        let time = 0;
        let done = 0;
        return steps.map(([dt, dd]) => {
          time += dt;
          done += dd;
          return { time, done };
        });
      });
    fc.assert(
      fc.property(samples, windows, (points, windowMs) => {
        const rate = new RateEstimator(windowMs);
        for (const point of points) rate.add(point.time, point.done);
        const last = points[points.length - 1] as { time: number; done: number };
        // Oracle: the anchor is the newest sample at or before the window's start, else the oldest.
        const horizon = last.time - windowMs;
        const before = points.filter((point) => point.time <= horizon);
        const anchor = before[before.length - 1] ?? (points[0] as { time: number; done: number });
        const expected =
          last.time > anchor.time ? ((last.done - anchor.done) * 1000) / (last.time - anchor.time) : null;
        expect(rate.rate()).toBe(expected);
      }),
      propertyParams(300),
    );
  });

  it('holds a bounded window when a server stamps every event with one time (a batch, a stopped clock)', () => {
    const rate = new RateEstimator(10_000);
    const time = Date.UTC(2026, 0, 1);
    // Held while measured: every sample the window kept is still live.
    const before = process.memoryUsage().heapUsed;
    for (let done = 0; done < 2_000_000; done++) rate.add(time, done);
    const grownBytes = process.memoryUsage().heapUsed - before;
    // Two numbers a sample: 2,000,000 kept samples are 32 MB or more (unfixed: about 90 MB measured).
    expect(grownBytes).toBeLessThan(8_000_000);
    rate.add(time + 1000, 2_000_010);
    expect(rate.rate()).toBe(2_000_010); // from the first sample: the rate is unchanged
  });
});
