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

  constructor(start = Date.UTC(2026, 0, 1)) {
    this.#now = start;
  }

  /** Pass this to whatever takes a {@link Clock}. */
  readonly now: Clock = () => this.#now;

  /** Moves time forward by `ms` (never backwards). */
  advance(ms: number): void {
    if (!(ms >= 0)) throw new RangeError(`ManualClock.advance: ms must be >= 0, got ${ms}`);
    this.#now += ms;
  }

  /** Sets the time, which must not move backwards. */
  set(time: number): void {
    if (time < this.#now) throw new RangeError('ManualClock.set: time must not move backwards');
    this.#now = time;
  }
}
