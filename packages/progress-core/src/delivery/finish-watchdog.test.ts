import { describe, expect, it } from 'vitest';
import type { ProgressState, TaskStatus } from '../model.js';
import { expectInvalidInput } from '../testing/invalid-input.js';
import { ManualClock } from '../testing/manual-clock.js';
import { FINISH_WATCHDOG_DEFAULTS, FinishWatchdog, type WatchdogAction } from './finish-watchdog.js';

function progress(done: number, total: number | null): ProgressState {
  return { total, done, succeeded: done, failed: 0, current: null, message: null };
}

function view(status: TaskStatus, done: number, total: number | null) {
  return { status, progress: progress(done, total) };
}

/** Calls check() at each of `times` (absolute, from `start`) and lists what it returned. */
function timeline(
  watchdog: FinishWatchdog,
  clock: ManualClock,
  start: number,
  times: number[],
): WatchdogAction[] {
  return times.map((at) => {
    clock.set(start + at);
    return watchdog.check();
  });
}

describe('FinishWatchdog', () => {
  it('has frozen defaults: stuck after 3 s', () => {
    expect(FINISH_WATCHDOG_DEFAULTS).toEqual({ stuckAfterMs: 3000 });
    expect(Object.isFrozen(FINISH_WATCHDOG_DEFAULTS)).toBe(true);
  });

  it('escalates resync → reconnect → http, then http every 3 s', () => {
    const clock = new ManualClock(10_000);
    const watchdog = new FinishWatchdog(clock.now);
    watchdog.observe(view('running', 40, 40));
    expect(watchdog.nextCheckAt()).toBe(13_000);
    const actions = timeline(
      watchdog,
      clock,
      10_000,
      [0, 2999, 3000, 3000, 5999, 6000, 6001, 8999, 9000, 9000, 11_999, 12_000, 15_000, 17_999, 18_000],
    );
    expect(actions).toEqual([
      'none',
      'none',
      'resync',
      'none',
      'none',
      'reconnect',
      'none',
      'none',
      'http',
      'none',
      'none',
      'http',
      'http',
      'none',
      'http',
    ]);
    expect(watchdog.nextCheckAt()).toBe(10_000 + 21_000);
  });

  it('reports the next check time after each step, so the caller keeps one timer', () => {
    const clock = new ManualClock(0);
    const watchdog = new FinishWatchdog(clock.now, { stuckAfterMs: 500 });
    watchdog.observe(view('running', 3, 3));
    const fired: Array<[number, WatchdogAction]> = [];
    for (let i = 0; i < 5; i++) {
      const at = watchdog.nextCheckAt();
      if (at === undefined) throw new Error('disarmed');
      clock.set(at);
      fired.push([at, watchdog.check()]);
    }
    expect(fired).toEqual([
      [500, 'resync'],
      [1000, 'reconnect'],
      [1500, 'http'],
      [2000, 'http'],
      [2500, 'http'],
    ]);
  });

  it('keeps the anchor when more non-terminal deliveries arrive at 100%', () => {
    const clock = new ManualClock(0);
    const watchdog = new FinishWatchdog(clock.now);
    watchdog.observe(view('running', 5, 5));
    clock.set(2500);
    watchdog.observe(view('running', 5, 5)); // a progress message, or the resync's snapshot
    clock.set(3000);
    expect(watchdog.check()).toBe('resync');
    clock.set(5000);
    watchdog.observe({ status: 'running', progress: { ...progress(6, 5), message: 'still here' } });
    clock.set(6000);
    expect(watchdog.check()).toBe('reconnect');
  });

  it('disarms when progress drops below total, and re-arms from a new anchor', () => {
    const clock = new ManualClock(0);
    const watchdog = new FinishWatchdog(clock.now);
    watchdog.observe(view('running', 5, 5));
    clock.set(3000);
    expect(watchdog.check()).toBe('resync');
    watchdog.observe(view('running', 5, 8)); // total grew
    expect(watchdog.nextCheckAt()).toBeUndefined();
    clock.set(7000);
    expect(watchdog.check()).toBe('none');
    watchdog.observe(view('running', 8, 8));
    expect(timeline(watchdog, clock, 7000, [2999, 3000, 6000])).toEqual(['none', 'resync', 'reconnect']);
  });

  it('disarms for good on a terminal status', () => {
    for (const status of ['completed', 'failed', 'cancelled', 'interrupted'] as const) {
      const clock = new ManualClock(0);
      const watchdog = new FinishWatchdog(clock.now);
      watchdog.observe(view('running', 2, 2));
      clock.set(1000);
      watchdog.observe(view(status, 2, 2));
      expect(timeline(watchdog, clock, 0, [3000, 6000, 9000, 60_000])).toEqual([
        'none',
        'none',
        'none',
        'none',
      ]);
      expect(watchdog.nextCheckAt()).toBeUndefined();
    }
  });

  it('does not arm while the total is unknown, progress is missing or items remain', () => {
    const clock = new ManualClock(0);
    const watchdog = new FinishWatchdog(clock.now);
    watchdog.observe(view('running', 10, null));
    watchdog.observe({ status: 'running', progress: null });
    watchdog.observe(view('running', 9, 10));
    expect(watchdog.nextCheckAt()).toBeUndefined();
    expect(timeline(watchdog, clock, 0, [3000, 9000])).toEqual(['none', 'none']);
  });

  it('arms for a task with zero items', () => {
    const clock = new ManualClock(0);
    const watchdog = new FinishWatchdog(clock.now);
    watchdog.observe(view('running', 0, 0));
    expect(timeline(watchdog, clock, 0, [3000])).toEqual(['resync']);
  });

  it('after a late check, gives each step a full period before the next', () => {
    const clock = new ManualClock(0);
    const watchdog = new FinishWatchdog(clock.now);
    watchdog.observe(view('running', 1, 1));
    expect(timeline(watchdog, clock, 0, [10_000, 10_001, 12_999, 13_000, 16_000])).toEqual([
      'resync',
      'none',
      'none',
      'reconnect',
      'http',
    ]);
  });

  it('reset() disarms until the next observe at 100%', () => {
    const clock = new ManualClock(0);
    const watchdog = new FinishWatchdog(clock.now);
    watchdog.observe(view('running', 1, 1));
    clock.set(3000);
    expect(watchdog.check()).toBe('resync');
    watchdog.reset();
    expect(watchdog.check()).toBe('none');
    clock.set(4000);
    watchdog.observe(view('running', 1, 1));
    expect(timeline(watchdog, clock, 4000, [2999, 3000])).toEqual(['none', 'resync']);
  });

  it('rejects invalid options', () => {
    for (const stuckAfterMs of [0, -5, Number.NaN, Number.POSITIVE_INFINITY]) {
      expectInvalidInput(() => new FinishWatchdog(() => 0, { stuckAfterMs }), /stuckAfterMs/);
    }
  });

  it('rejects a clock that is not a function', () => {
    expectInvalidInput(() => new FinishWatchdog(1000 as unknown as () => number), /clock must be a function/);
  });
});
