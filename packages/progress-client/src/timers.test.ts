import { describe, expect, it } from 'vitest';
import { type TimerApi, TimerSet } from './timers.js';

/** A TimerApi that records each timer and fires it on demand, as a host would after its delay. */
function recordingTimers() {
  const timers: { callback: () => void; delayMs: number; cleared: boolean }[] = [];
  const api: TimerApi = {
    setTimeout: (callback, delayMs) => {
      const timer = { callback, delayMs, cleared: false };
      timers.push(timer);
      return timer;
    },
    clearTimeout: (handle) => {
      (handle as { cleared: boolean }).cleared = true;
    },
  };
  const fireLast = (): void => {
    const timer = timers.at(-1);
    if (timer === undefined || timer.cleared) throw new Error('no live timer');
    timer.callback();
  };
  return { api, timers, fireLast };
}

describe('TimerSet', () => {
  const MAX = 2 ** 31 - 1;

  it('waits out a delay longer than setTimeout can hold in steps, and fires once at its end', () => {
    const { api, timers, fireLast } = recordingTimers();
    const set = new TimerSet(api);
    let fired = 0;
    set.start(() => {
      fired += 1;
    }, 2.5 * MAX);
    expect(timers.map((timer) => timer.delayMs)).toEqual([MAX]);
    fireLast();
    fireLast();
    expect(timers.map((timer) => timer.delayMs)).toEqual([MAX, MAX, 0.5 * MAX]);
    expect(fired).toBe(0);
    fireLast();
    expect(fired).toBe(1);
    // Fired, it is no longer live: dispose() has nothing to clear.
    set.dispose();
    expect(timers.some((timer) => timer.cleared)).toBe(false);
  });

  it('never fires an Infinity delay (watch.done({ timeoutMs: Infinity }) is no limit): each step is 2^31 - 1 ms, not 1 ms', () => {
    const { api, timers, fireLast } = recordingTimers();
    const set = new TimerSet(api);
    let fired = 0;
    set.start(() => {
      fired += 1;
    }, Number.POSITIVE_INFINITY);
    for (let step = 0; step < 5; step++) fireLast();
    expect(timers.map((timer) => timer.delayMs)).toEqual(Array(6).fill(MAX));
    expect(fired).toBe(0);
    set.dispose();
  });

  it('cancels a long wait between its steps', () => {
    const { api, timers, fireLast } = recordingTimers();
    const set = new TimerSet(api);
    let fired = 0;
    const cancel = set.start(() => {
      fired += 1;
    }, 3 * MAX);
    fireLast();
    cancel();
    expect(timers.at(-1)?.cleared).toBe(true);
    // Cancelled, it is no longer live: dispose() clears nothing more.
    set.dispose();
    expect(timers.filter((timer) => timer.cleared)).toHaveLength(1);
    expect(fired).toBe(0);
  });

  it('passes delays up to the limit through as they are, negative ones as 0', () => {
    const { api, timers } = recordingTimers();
    const set = new TimerSet(api);
    set.start(() => undefined, MAX);
    set.start(() => undefined, 250);
    set.start(() => undefined, -5);
    expect(timers.map((timer) => timer.delayMs)).toEqual([MAX, 250, 0]);
    set.dispose();
    expect(timers.every((timer) => timer.cleared)).toBe(true);
  });
});
