import { ManualClock } from '@finishline/core/testing';
import { describe, expect, it } from 'vitest';
import { TokenBucket } from './rate-limiter.js';

describe('TokenBucket', () => {
  it('allows a burst of capacity, then refills at the configured rate', () => {
    const clock = new ManualClock();
    const bucket = new TokenBucket({ capacity: 3, refillPerSecond: 10, clock: clock.now });
    expect([bucket.tryTake(), bucket.tryTake(), bucket.tryTake(), bucket.tryTake()]).toEqual([
      true,
      true,
      true,
      false,
    ]);
    clock.advance(99);
    expect(bucket.tryTake()).toBe(false);
    clock.advance(1);
    expect(bucket.tryTake()).toBe(true);
    expect(bucket.tryTake()).toBe(false);
  });

  it('never holds more than its capacity', () => {
    const clock = new ManualClock();
    const bucket = new TokenBucket({ capacity: 2, refillPerSecond: 1000, clock: clock.now });
    clock.advance(60_000);
    expect(bucket.tokens).toBe(2);
  });

  it('is not drained by a clock that steps backwards', () => {
    let now = 10_000;
    const bucket = new TokenBucket({ capacity: 2, refillPerSecond: 1, clock: () => now });
    now = 5_000;
    expect(bucket.tryTake()).toBe(true);
    expect(bucket.tryTake()).toBe(true);
  });
});
