/**
 * Per-principal caps across one replica: open sockets, followed tasks and a shared frame budget.
 *
 * @module
 */
import type { Clock } from '@finishline/core';
import { TokenBucket } from './socket/rate-limiter.js';

/**
 * Per-principal counts of open sockets and followed tasks across this replica, against their caps. A
 * principal that opens thousands of sockets or subscriptions costs memory and store reads for everyone;
 * these caps bound it, whatever the per-socket limits allow.
 */
export class PrincipalLimits {
  readonly #maxSockets: number;
  readonly #maxSubscriptions: number;
  readonly #ratePerSecond: number;
  readonly #clock: Clock;
  readonly #sockets = new Map<string, number>();
  readonly #subscriptions = new Map<string, number>();
  readonly #maxQueuedBytes: number;
  readonly #maxQueuedBytesTotal: number;
  /** Bytes of event frames queued over each principal's sockets (see {@link addQueuedBytes}); no entry at 0. */
  readonly #queuedBytes = new Map<string, number>();
  /** The sum of {@link #queuedBytes} over every principal. */
  #queuedBytesTotal = 0;
  /**
   * One frame budget per principal, shared by its sockets. Kept after its last socket closes until it has
   * refilled (a principal that reconnected at once would otherwise get a full budget per reconnect).
   */
  readonly #buckets = new Map<string, TokenBucket>();
  #sweptAt = Number.NEGATIVE_INFINITY;

  constructor(options: {
    maxSockets: number;
    maxSubscriptions: number;
    ratePerSecond: number;
    /** Most bytes of event frames queued over one principal's sockets (`maxQueuedBytesPerPrincipal`). */
    maxQueuedBytes?: number;
    /** Most bytes of event frames queued over every principal's sockets together (`maxQueuedBytesTotal`). */
    maxQueuedBytesTotal?: number;
    clock: Clock;
  }) {
    this.#maxQueuedBytes = options.maxQueuedBytes ?? Number.POSITIVE_INFINITY;
    this.#maxQueuedBytesTotal = options.maxQueuedBytesTotal ?? Number.POSITIVE_INFINITY;
    this.#maxSockets = options.maxSockets;
    this.#maxSubscriptions = options.maxSubscriptions;
    this.#ratePerSecond = options.ratePerSecond;
    this.#clock = options.clock;
  }

  /**
   * Takes one frame token from the principal's shared budget. Its burst is the larger of
   * `maxSubscriptionsPerPrincipal` (a principal reconnecting resubscribes to everything at once) and one
   * second of its rate (so a small subscription cap does not also starve acks, pings and unsubscribes);
   * its rate bounds what all its sockets together make the server do, however many sockets it opened.
   * Each request of the HTTP API takes one as well, a list of tasks one per page of 50 it asks for.
   * `cost` is capped at the burst, so that a request costing more than a small budget holds can still pass
   * once it is full.
   */
  takeFrame(principalId: string, cost = 1): boolean {
    // HTTP requests take tokens too, of principals that may never open (and so never close) a socket.
    this.#forgetRefilledBuckets();
    let bucket = this.#buckets.get(principalId);
    if (bucket === undefined) {
      bucket = new TokenBucket({
        capacity: this.#burst,
        refillPerSecond: this.#ratePerSecond,
        clock: this.#clock,
      });
      this.#buckets.set(principalId, bucket);
    }
    return bucket.tryTake(Math.min(cost, this.#burst));
  }

  /** The budget's burst (see {@link takeFrame}). */
  get #burst(): number {
    return Math.max(this.#maxSubscriptions, this.#ratePerSecond);
  }

  get maxSockets(): number {
    return this.#maxSockets;
  }

  get maxSubscriptions(): number {
    return this.#maxSubscriptions;
  }

  /** Counts one more socket of `principalId`, unless it is at its cap (then `false`, nothing counted). */
  openSocket(principalId: string): boolean {
    return take(this.#sockets, principalId, this.#maxSockets);
  }

  closeSocket(principalId: string): void {
    give(this.#sockets, principalId);
    this.#forgetRefilledBuckets();
  }

  /**
   * Drops the budgets of principals without a socket once they have refilled: forgetting a full budget
   * changes nothing, and the map stays bounded by the principals active within one refill time. At most
   * every `BUCKET_SWEEP_INTERVAL_MS`, so a storm of closes does not walk the map at every close.
   */
  #forgetRefilledBuckets(): void {
    let now: number;
    try {
      now = this.#clock();
    } catch {
      // A clock that throws (the server's, refusing a NaN it returned once) skips this sweep: a later one
      // sweeps. Thrown on, it failed whoever closed a socket or stream after its count was given back: an
      // event stream's end, from a timer (an uncaught exception, which ends a Node process by default),
      // stopped there, its response never ended.
      return;
    }
    if (now - this.#sweptAt < BUCKET_SWEEP_INTERVAL_MS) return;
    this.#sweptAt = now;
    for (const [principalId, bucket] of this.#buckets) {
      if (!this.#sockets.has(principalId) && bucket.full) this.#buckets.delete(principalId);
    }
  }

  /** Counts one more followed task of `principalId`, unless it is at its cap. */
  addSubscription(principalId: string): boolean {
    return take(this.#subscriptions, principalId, this.#maxSubscriptions);
  }

  removeSubscription(principalId: string): void {
    give(this.#subscriptions, principalId);
  }

  /**
   * One of `principalId`'s sockets queued `delta` more bytes of event frames (less when negative): each
   * socket reports the change of its own queue's weight, so the sum is kept in O(1) whatever the number of
   * frames. Returns the bound a growth took the principal, or all principals together, past
   * (`maxQueuedBytesPerPrincipal`, `maxQueuedBytesTotal`): that socket must end (and give its bytes back);
   * `undefined` within both. Bounded per socket only, a principal's 100 stalled sockets held 16 MiB of
   * frames each, and the events behind them; bounded per principal only, any number of principals (an
   * application where anyone may sign up) held 64 MiB each.
   */
  addQueuedBytes(principalId: string, delta: number): QueuedBytesBound | undefined {
    const held = (this.#queuedBytes.get(principalId) ?? 0) + delta;
    if (held <= 0) this.#queuedBytes.delete(principalId);
    else this.#queuedBytes.set(principalId, held);
    this.#queuedBytesTotal += delta;
    if (delta <= 0) return undefined;
    if (held > this.#maxQueuedBytes) return 'maxQueuedBytesPerPrincipal';
    if (this.#queuedBytesTotal > this.#maxQueuedBytesTotal) return 'maxQueuedBytesTotal';
    return undefined;
  }

  /** Bytes of event frames queued or held over every principal's sockets and event streams. */
  get queuedBytesTotal(): number {
    return this.#queuedBytesTotal;
  }

  /** The current counts of `principalId` (for tests and diagnostics). */
  usage(principalId: string): { sockets: number; subscriptions: number; queuedBytes: number } {
    return {
      sockets: this.#sockets.get(principalId) ?? 0,
      subscriptions: this.#subscriptions.get(principalId) ?? 0,
      queuedBytes: this.#queuedBytes.get(principalId) ?? 0,
    };
  }
}

/** The byte bound over several sockets that {@link PrincipalLimits.addQueuedBytes} found passed. */
export type QueuedBytesBound = 'maxQueuedBytesPerPrincipal' | 'maxQueuedBytesTotal';

/** How often, at most, the budgets of principals without sockets are looked at for forgetting. */
const BUCKET_SWEEP_INTERVAL_MS = 1000;

function take(counts: Map<string, number>, key: string, max: number): boolean {
  const current = counts.get(key) ?? 0;
  if (current >= max) return false;
  counts.set(key, current + 1);
  return true;
}

function give(counts: Map<string, number>, key: string): void {
  const current = counts.get(key) ?? 0;
  // Entries are removed at zero so the maps hold only principals with something open.
  if (current <= 1) counts.delete(key);
  else counts.set(key, current - 1);
}
