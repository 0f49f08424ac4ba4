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

/** @internal */
export class RateEstimator {
  readonly #windowMs: number;
  // Two parallel arrays of numbers rather than one object per sample: one sample per delivered event.
  #times: number[] = [];
  #done: number[] = [];

  /** @param windowMs - how far back samples count, in milliseconds (> 0). */
  constructor(windowMs: number) {
    this.#windowMs = windowMs;
  }

  /** Records that `done` items were finished at `time` (epoch ms). */
  add(time: number, done: number): void {
    const times = this.#times;
    const n = times.length;
    // A count or a clock that goes backwards (a snapshot from a replica with another clock, a restored
    // cursor) makes every older sample meaningless: start over rather than report a negative rate. (On an
    // empty window both compare with `undefined`: false.)
    if (done < (this.#done[n - 1] as number) || time < (times[n - 1] as number))
      times.length = this.#done.length = 0;
    // Of the samples of one millisecond only the first and the latest can be the anchor or the last one:
    // a third replaces the second. Kept, every sample counted: a server that stamped its events with one
    // time (a batch of items, a clock that stopped) grew the window without bound, and a task of many
    // events a millisecond grew it to one sample each.
    else if (time === times[n - 2]) times.length = this.#done.length = n - 1;
    times.push(time);
    this.#done.push(done);
    // Keep the newest sample at or before the horizon (`time - windowMs`) as the window's anchor, so a slow
    // task (one item per window) still has two samples to measure. (Past the end, `undefined <= …` is false.)
    let drop = 0;
    while ((times[drop + 1] as number) <= time - this.#windowMs) drop++;
    if (drop > 0) {
      times.splice(0, drop);
      this.#done.splice(0, drop);
    }
  }

  rate(): number | null {
    const times = this.#times;
    const last = times.length - 1;
    if (last < 1 || (times[last] as number) <= (times[0] as number)) return null;
    return (
      (((this.#done[last] as number) - (this.#done[0] as number)) * 1000) /
      ((times[last] as number) - (times[0] as number))
    );
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
