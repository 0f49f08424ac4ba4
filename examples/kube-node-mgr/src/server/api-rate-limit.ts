/** The limit of `/api` requests per user (a token bucket each), so one user cannot hammer the cluster. */

/** Options of {@link ApiRateLimit}. */
export interface ApiRateLimitOptions {
  /**
   * Requests a user may make at once before the limit applies (a page's start makes about ten).
   * @default 60
   */
  burst?: number;
  /**
   * Requests per second a user may make after its burst (the page's polls make well under one).
   * @default 10
   */
  perSecond?: number;
}

/** The defaults of {@link ApiRateLimitOptions}. */
export const API_RATE_LIMIT_DEFAULTS = Object.freeze({ burst: 60, perSecond: 10 });

/**
 * A token bucket per user, in this process (behind N replicas a user gets N times the rate, as with the
 * login throttle). Its keys are the configured users' names, whose number the users file bounds, so the
 * map needs no sweeping.
 */
export class ApiRateLimit {
  readonly #burst: number;
  readonly #perMs: number;
  readonly #buckets = new Map<string, { tokens: number; at: number }>();

  constructor(options: ApiRateLimitOptions = {}) {
    const { burst, perSecond } = { ...API_RATE_LIMIT_DEFAULTS, ...options };
    if (!Number.isInteger(burst) || burst < 1)
      throw new Error(`apiRateLimit.burst must be a positive integer (got ${burst})`);
    if (!(perSecond > 0 && Number.isFinite(perSecond)))
      throw new Error(`apiRateLimit.perSecond must be a positive number (got ${perSecond})`);
    this.#burst = burst;
    this.#perMs = perSecond / 1000;
  }

  /** Takes a request of `key`'s: 0 when allowed, else the ms until the next one would be. */
  take(key: string, now = Date.now()): number {
    const bucket = this.#buckets.get(key) ?? { tokens: this.#burst, at: now };
    bucket.tokens = Math.min(this.#burst, bucket.tokens + Math.max(0, now - bucket.at) * this.#perMs);
    bucket.at = now;
    this.#buckets.set(key, bucket);
    if (bucket.tokens >= 1) {
      bucket.tokens -= 1;
      return 0;
    }
    return Math.ceil((1 - bucket.tokens) / this.#perMs);
  }
}
