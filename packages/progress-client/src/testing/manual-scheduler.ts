import type { Clock } from '@finishline/core';
import type { TimerApi } from '../timers.js';

/**
 * Test support: a clock and timer functions that move only when a test says so.
 *
 * @module
 */

/**
 * A clock and timer functions that move only when a test says so. Pass it as both `timers` and (its
 * `now`) `clock`; `pending` counts live timers, which is how tests prove `close()` leaves none.
 *
 * @internal Test support, not part of the public API.
 */
export class ManualScheduler implements TimerApi {
  #now: number;
  #nextId = 1;
  readonly #timers = new Map<number, { at: number; order: number; callback: () => void }>();

  constructor(start = Date.UTC(2026, 0, 1)) {
    this.#now = start;
  }

  /** The scheduler's time, for the `clock` option. */
  readonly now: Clock = () => this.#now;

  /** Number of timers started and neither fired nor cleared. */
  get pending(): number {
    return this.#timers.size;
  }

  /** Delays of the pending timers from now, soonest first. */
  get delays(): number[] {
    return [...this.#timers.values()].map((timer) => timer.at - this.#now).sort((a, b) => a - b);
  }

  readonly setTimeout = (callback: () => void, delayMs: number): unknown => {
    const id = this.#nextId++;
    this.#timers.set(id, { at: this.#now + Math.max(0, delayMs), order: id, callback });
    return id;
  };

  readonly clearTimeout = (handle: unknown): void => {
    this.#timers.delete(handle as number);
  };

  /**
   * Moves time forward by `ms`, firing due timers in order (each at its own time), letting promises
   * settle after each one.
   */
  async advance(ms: number): Promise<void> {
    const end = this.#now + ms;
    await flush();
    for (;;) {
      const next = this.#due(end);
      if (next === undefined) break;
      this.#timers.delete(next.id);
      this.#now = Math.max(this.#now, next.at);
      next.callback();
      await flush();
    }
    this.#now = end;
    await flush();
  }

  #due(end: number): { id: number; at: number; callback: () => void } | undefined {
    let best: { id: number; at: number; order: number; callback: () => void } | undefined;
    for (const [id, timer] of this.#timers) {
      if (timer.at > end) continue;
      if (best === undefined || timer.at < best.at || (timer.at === best.at && timer.order < best.order)) {
        best = { id, ...timer };
      }
    }
    return best;
  }
}

/** Lets pending promise callbacks (and the microtasks they queue) run. */
export async function flush(): Promise<void> {
  for (let i = 0; i < 10; i++) await new Promise<void>((resolve) => setImmediate(resolve));
}
