/**
 * Per-address budget of failed authentication attempts: the application's `authenticate` /
 * `authenticateToken` hooks (a database, an identity provider) run at most this often per remote address
 * for credentials that turn out invalid.
 *
 * @module
 */
import type { IncomingMessage } from 'node:http';
import type { Clock } from '@finishline/core';
import { addressGroup } from './socket/pending-connections.js';
import { TokenBucket } from './socket/rate-limiter.js';

/** The burst of an address's budget, in seconds of its rate (1,000 attempts at the default 20/s). */
export const AUTH_FAILURE_BURST_SECONDS = 50;
/**
 * Most addresses whose budget is remembered: over it the oldest-created is forgotten (that address gets a
 * full budget again). Budgets that refilled are forgotten anyway, so this binds only under a storm of
 * failures from very many addresses; some 20 MB at most.
 */
export const MAX_TRACKED_ADDRESSES = 100_000;
/** How often, at most, refilled budgets are looked at for forgetting. */
const SWEEP_INTERVAL_MS = 1000;

/**
 * One token bucket per remote address ({@link addressGroup}: an IPv6 client by its /64), of
 * `ratePerSecond` and a burst of {@link AUTH_FAILURE_BURST_SECONDS} seconds of it. An attempt takes a
 * token before the hooks run and gives it back when they establish a principal, so only failures
 * (credentials refused, or none where the hook was asked) spend the budget: clients with valid
 * credentials, however many share an address, are never refused. `ratePerSecond` 0 turns it off.
 */
export class AddressAuthLimits {
  readonly #ratePerSecond: number;
  readonly #clock: Clock;
  readonly #buckets = new Map<string, TokenBucket>();
  #sweptAt = Number.NEGATIVE_INFINITY;

  constructor(options: { ratePerSecond: number; clock: Clock }) {
    this.#ratePerSecond = options.ratePerSecond;
    this.#clock = options.clock;
  }

  /**
   * Takes one attempt of the request's address: `undefined` when allowed (then {@link succeeded} gives it
   * back if a principal is established), else the seconds to wait (`Retry-After`).
   */
  take(request: IncomingMessage): number | undefined {
    if (this.#ratePerSecond === 0) return undefined;
    this.#sweep();
    const address = addressOf(request);
    let bucket = this.#buckets.get(address);
    if (bucket === undefined) {
      bucket = new TokenBucket({
        capacity: this.#ratePerSecond * AUTH_FAILURE_BURST_SECONDS,
        refillPerSecond: this.#ratePerSecond,
        clock: this.#clock,
      });
      this.#buckets.set(address, bucket);
      if (this.#buckets.size > MAX_TRACKED_ADDRESSES) {
        const oldest = this.#buckets.keys().next().value as string;
        this.#buckets.delete(oldest);
      }
    }
    if (bucket.tryTake()) return undefined;
    return Math.max(1, Math.ceil((1 - bucket.tokens) / this.#ratePerSecond));
  }

  /** The attempt {@link take} allowed established a principal: it costs nothing. */
  succeeded(request: IncomingMessage): void {
    if (this.#ratePerSecond === 0) return;
    this.#buckets.get(addressOf(request))?.giveBack();
  }

  /** Addresses whose budget is remembered (for tests). */
  get size(): number {
    return this.#buckets.size;
  }

  /** Forgets full budgets (forgetting one changes nothing), at most every {@link SWEEP_INTERVAL_MS}. */
  #sweep(): void {
    const now = this.#clock();
    if (now - this.#sweptAt < SWEEP_INTERVAL_MS) return;
    this.#sweptAt = now;
    for (const [address, bucket] of this.#buckets) {
      if (bucket.full) this.#buckets.delete(address);
    }
  }
}

function addressOf(request: IncomingMessage): string {
  return addressGroup(request.socket?.remoteAddress ?? 'unknown');
}

/** The message of the refusal. */
export const AUTH_RATE_LIMITED_MESSAGE =
  'Too many failed authentication attempts from this address; retry later';

/** Thrown by the authenticator when an address is out of attempts; answered 429 / 4008. */
export class AuthRateLimited extends Error {
  readonly retryAfterSeconds: number;

  constructor(retryAfterSeconds: number) {
    super(AUTH_RATE_LIMITED_MESSAGE);
    this.name = 'AuthRateLimited';
    this.retryAfterSeconds = retryAfterSeconds;
  }
}
