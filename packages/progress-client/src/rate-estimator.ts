/**
 * Items per second over a sliding window of `(time, done)` samples, and the ETA derived from it: what a
 * progress bar shows as "12 nodes/s, about 40 s left".
 *
 * Samples are timed with the events' own commit times, not with their arrival: after a reconnect a
 * replay delivers minutes of events in one burst, and arrival times would turn that into a huge rate.
 *
 * @internal
 * @module
 */

interface Sample {
  time: number;
  done: number;
}

/** @internal */
export class RateEstimator {
  readonly #windowMs: number;
  #samples: Sample[] = [];

  /** @param windowMs - how far back samples count, in milliseconds (> 0). */
  constructor(windowMs: number) {
    this.#windowMs = windowMs;
  }

  /** Records that `done` items were finished at `time` (epoch ms). */
  add(time: number, done: number): void {
    const last = this.#samples[this.#samples.length - 1];
    // A count or a clock that goes backwards (a snapshot from a replica with another clock, a restored
    // cursor) makes every older sample meaningless: start over rather than report a negative rate.
    if (last !== undefined && (done < last.done || time < last.time)) this.#samples = [];
    this.#samples.push({ time, done });
    const horizon = time - this.#windowMs;
    // Keep the newest sample at or before the horizon as the window's anchor, so a slow task (one item
    // per window) still has two samples to measure.
    let drop = 0;
    while (drop + 1 < this.#samples.length && (this.#samples[drop + 1] as Sample).time <= horizon) drop++;
    if (drop > 0) this.#samples.splice(0, drop);
  }

  /** Finished items per second, or `null` until two samples at different times exist. */
  rate(): number | null {
    const first = this.#samples[0];
    const last = this.#samples[this.#samples.length - 1];
    if (first === undefined || last === undefined || last.time <= first.time) return null;
    return ((last.done - first.done) * 1000) / (last.time - first.time);
  }

  /**
   * Milliseconds until `total` items are done at the current rate: `null` when the total or the rate is
   * unknown or the rate is zero (a stalled task has no honest ETA), 0 once `done >= total`.
   */
  eta(total: number | null, done: number): number | null {
    if (total === null) return null;
    if (done >= total) return 0;
    const rate = this.rate();
    if (rate === null || rate <= 0) return null;
    return Math.round(((total - done) * 1000) / rate);
  }
}
