/**
 * A token bucket on an injected clock, the unit of every frame rate limit.
 *
 * @module
 */
import type { Clock } from '@finishline/core';

/**
 * A token bucket: `capacity` tokens, refilled continuously at `refillPerSecond`. Each accepted frame
 * takes one token; an empty bucket refuses. Time comes from an injected clock, so tests drive it by
 * hand.
 *
 * @example
 * ```ts
 * const bucket = new TokenBucket({ capacity: 200, refillPerSecond: 100, clock: Date.now });
 * if (!bucket.tryTake()) reject('rate_limited');
 * ```
 */
export class TokenBucket {
  readonly #capacity: number;
  readonly #refillPerMs: number;
  readonly #clock: Clock;
  #tokens: number;
  #updatedAt: number;

  /** Options are validated by the server's option parser; the bucket trusts them. */
  constructor(options: { capacity: number; refillPerSecond: number; clock: Clock }) {
    this.#capacity = options.capacity;
    this.#refillPerMs = options.refillPerSecond / 1000;
    this.#clock = options.clock;
    this.#tokens = options.capacity;
    this.#updatedAt = options.clock();
  }

  /** Takes `cost` tokens if there are that many; returns whether it did. */
  tryTake(cost = 1): boolean {
    this.#refill();
    if (this.#tokens < cost) return false;
    this.#tokens -= cost;
    return true;
  }

  /** Gives back one token taken for something that turned out free (never above `capacity`). */
  giveBack(): void {
    this.#refill();
    this.#tokens = Math.min(this.#capacity, this.#tokens + 1);
  }

  /** Tokens available now (fractional). */
  get tokens(): number {
    this.#refill();
    return this.#tokens;
  }

  /** True when the bucket is as a new one would be: forgetting it changes nothing. */
  get full(): boolean {
    return this.tokens >= this.#capacity;
  }

  #refill(): void {
    const now = this.#clock();
    // A clock that steps backwards (wall-clock adjustment) must not drain the bucket.
    const elapsed = Math.max(0, now - this.#updatedAt);
    this.#updatedAt = now;
    this.#tokens = Math.min(this.#capacity, this.#tokens + elapsed * this.#refillPerMs);
  }
}
