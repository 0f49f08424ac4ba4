import { describe, expect, it } from 'vitest';
import { ManualClock } from './manual-clock.js';

describe('ManualClock', () => {
  it('moves only forward, by finite amounts', () => {
    const clock = new ManualClock(1000);
    clock.advance(5);
    clock.set(2000);
    expect(clock.now()).toBe(2000);
    expect(() => clock.advance(-1)).toThrow(RangeError);
    expect(() => clock.set(1999)).toThrow(RangeError);
    expect(clock.now()).toBe(2000);
  });

  it('refuses a time that is no number of milliseconds, and keeps its own', () => {
    const clock = new ManualClock(1000);
    for (const bad of [Number.NaN, Number.POSITIVE_INFINITY]) {
      expect(() => clock.set(bad), `set(${bad})`).toThrow(RangeError);
      expect(() => clock.advance(bad), `advance(${bad})`).toThrow(RangeError);
      expect(() => new ManualClock(bad), `new ManualClock(${bad})`).toThrow(RangeError);
    }
    expect(() => new ManualClock(Number.NEGATIVE_INFINITY)).toThrow(RangeError);
    expect(clock.now()).toBe(1000);
  });
});
