import type { Clock } from '../clock.js';

/**
 * `ManualClock`: a clock that moves only when a test says so.
 *
 * @module
 */

/**
 * A clock that moves only when told: stores and delivery logic take a {@link Clock}, so tests control
 * lease expiry and retry schedules without sleeping.
 */
export class ManualClock {
  #now: number;

  /** @throws RangeError for a `start` that is not a finite number. */
  constructor(start = Date.UTC(2026, 0, 1)) {
    if (!Number.isFinite(start))
      throw new RangeError(`ManualClock: start must be a finite number, got ${start}`);
    this.#now = start;
  }

  /** Pass this to whatever takes a {@link Clock}. */
  readonly now: Clock = () => this.#now;

  /**
   * Moves time forward by `ms` (never backwards).
   *
   * @throws RangeError for a negative or non-finite `ms`: a clock at `Infinity` (or `NaN`) is no time,
   *   and a store reading it failed every later call with `internal`, far from the line that broke it.
   */
  advance(ms: number): void {
    if (!(ms >= 0 && ms < Number.POSITIVE_INFINITY)) {
      throw new RangeError(`ManualClock.advance: ms must be a finite number >= 0, got ${ms}`);
    }
    this.#now += ms;
  }

  /**
   * Sets the time, which must not move backwards.
   *
   * @throws RangeError for an earlier or non-finite `time` (`NaN` passed `time < now` and was set).
   */
  set(time: number): void {
    if (!Number.isFinite(time))
      throw new RangeError(`ManualClock.set: time must be a finite number, got ${time}`);
    if (time < this.#now) throw new RangeError('ManualClock.set: time must not move backwards');
    this.#now = time;
  }
}
