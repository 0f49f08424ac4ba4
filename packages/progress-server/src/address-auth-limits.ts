/**
 * Per-address budget of failed authentication attempts: the application's `authenticate` /
 * `authenticateToken` hooks (a database, an identity provider) run at most this often per remote address
 * for credentials that turn out invalid.
 *
 * @module
 */
import type { IncomingMessage } from 'node:http';
import { isIP } from 'node:net';
import type { Clock } from '@finishline/core';
import { integer, required, resolveOptions } from '@finishline/core/internal';
import type { ProgressLogger } from './logger.js';
import { describeError } from './logger.js';
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
 * Longest address a `clientAddress` hook may return (an IPv6 address with a zone is at most 45 + zone):
 * each one is a key of the budgets' map, so an unbounded string from a header was memory for the taking.
 */
export const MAX_CLIENT_ADDRESS_LENGTH = 256;

/**
 * The address a request's client is known by for the per-address budget of failed authentications
 * (server option `clientAddress`): a string (an IP address, whose IPv6 form counts by its /64; any other
 * string is a key as it is), or `undefined` for the connection's peer address.
 */
export type ClientAddressHook = (request: IncomingMessage) => string | undefined;

/** Options of {@link forwardedClientAddress}. */
export interface ForwardedClientAddressOptions {
  /**
   * How many reverse proxies, each appending to `X-Forwarded-For`, every request passes before reaching
   * the server (the connection's peer is the nearest of them). An integer from 1 to 32.
   */
  trustedProxies: number;
}

/** Most proxies {@link forwardedClientAddress} counts: more is a misreading of the option. */
const MAX_TRUSTED_PROXIES = 32;

const FORWARDED_OPTIONS = {
  trustedProxies: required(integer(1, 1, MAX_TRUSTED_PROXIES)),
} satisfies { [K in keyof Required<ForwardedClientAddressOptions>]: unknown };

/**
 * A `clientAddress` hook for a server behind `trustedProxies` reverse proxies that append the address
 * they were reached from to `X-Forwarded-For` (nginx `$proxy_add_x_forwarded_for`, AWS ALB, Envoy): the
 * client is the entry `trustedProxies` from the header's right end, the one the outermost proxy wrote;
 * entries to its left were written by the client and are not believed. A request with fewer entries
 * (one that came through fewer proxies) is known by its leftmost entry, one with none, or whose entry is
 * not an IP address (`unknown`, a hostname), by its peer address. Use it only when no request can reach
 * the server without passing those proxies: otherwise a client sets the header and picks its address.
 *
 * @example
 * ```ts
 * import { forwardedClientAddress } from '@finishline/server';
 * const clientAddress = forwardedClientAddress({ trustedProxies: 1 }); // one nginx in front
 * ```
 * @throws ProgressError `invalid_input` when `trustedProxies` is not an integer from 1 to 32.
 */
export function forwardedClientAddress(options: ForwardedClientAddressOptions): ClientAddressHook {
  // Unknown keys refused, naming the nearest: `{ trustedProxies: 1, trustedProxy: 2 }` took one hop.
  const { trustedProxies: hops } = resolveOptions(
    'forwardedClientAddress',
    FORWARDED_OPTIONS,
    // Left out, it is `trustedProxies` that is missing: the message names it.
    options ?? {},
  );
  return (request) => {
    const header = request.headers['x-forwarded-for'];
    const entries = (Array.isArray(header) ? header.join(',') : (header ?? ''))
      .split(',')
      .map((entry) => entry.trim())
      .filter((entry) => entry !== '');
    if (entries.length === 0) return undefined;
    return bareAddress(entries[Math.max(0, entries.length - hops)] ?? '');
  };
}

/** An IP address from an `X-Forwarded-For` entry, without a port (`1.2.3.4:80`, `[::1]:80`); else undefined. */
function bareAddress(entry: string): string | undefined {
  const bracketed = /^\[([^\]]+)\](?::\d+)?$/.exec(entry);
  const withoutPort = bracketed?.[1] ?? /^(\d{1,3}(?:\.\d{1,3}){3}):\d+$/.exec(entry)?.[1] ?? entry;
  return isIP(withoutPort) === 0 ? undefined : withoutPort;
}

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
  readonly #clientAddress: ClientAddressHook | undefined;
  readonly #logger: ProgressLogger | undefined;
  /**
   * Each request's address, asked of `clientAddress` once: an attempt and its give-back (and a socket's
   * later `auth` frames, which carry its upgrade's request) must key the same budget.
   */
  readonly #addresses = new WeakMap<IncomingMessage, string>();
  /** Whether a `clientAddress` hook's fault was logged (once per server: it is a setup error). */
  #warnedHook = false;
  #sweptAt = Number.NEGATIVE_INFINITY;

  constructor(options: {
    ratePerSecond: number;
    clock: Clock;
    /** The server's `clientAddress` option; none: the connection's peer address. */
    clientAddress?: ClientAddressHook | undefined;
    logger?: ProgressLogger | undefined;
  }) {
    this.#ratePerSecond = options.ratePerSecond;
    this.#clock = options.clock;
    this.#clientAddress = options.clientAddress;
    this.#logger = options.logger;
  }

  /**
   * Takes one attempt of the request's address: `undefined` when allowed (then {@link succeeded} gives it
   * back if a principal is established), else the seconds to wait (`Retry-After`).
   */
  take(request: IncomingMessage): number | undefined {
    if (this.#ratePerSecond === 0) return undefined;
    this.#sweep();
    const address = this.#addressOf(request);
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
    this.#buckets.get(this.#addressOf(request))?.giveBack();
  }

  /**
   * The budget's key of a request: `clientAddress`'s answer, else the connection's peer. A hook that
   * throws or answers with no usable string falls back to the peer (logged once): the request is still
   * answered as it would be without the hook, never with a 500 nor a budget of its own choosing.
   */
  #addressOf(request: IncomingMessage): string {
    const known = this.#addresses.get(request);
    if (known !== undefined) return known;
    const address = addressGroup(this.#fromHook(request) ?? request.socket?.remoteAddress ?? 'unknown');
    this.#addresses.set(request, address);
    return address;
  }

  #fromHook(request: IncomingMessage): string | undefined {
    if (this.#clientAddress === undefined) return undefined;
    let value: unknown;
    try {
      value = this.#clientAddress(request);
    } catch (error) {
      this.#warnHook({ err: describeError(error) }, 'clientAddress hook threw');
      return undefined;
    }
    if (value === undefined) return undefined;
    if (typeof (value as PromiseLike<unknown> | null)?.then === 'function') {
      // An `async` hook (one looking the address up somewhere): its rejection, left unhandled, ended the
      // process (Node's default) at the first request. The hook must answer synchronously.
      (value as PromiseLike<unknown>).then(undefined, ignoreRejection);
      this.#warnHook({}, 'clientAddress hook returned a promise; it must return the address synchronously');
      return undefined;
    }
    if (typeof value !== 'string' || value === '' || value.length > MAX_CLIENT_ADDRESS_LENGTH) {
      this.#warnHook(
        { type: typeof value },
        `clientAddress hook returned neither undefined nor a string of 1-${MAX_CLIENT_ADDRESS_LENGTH} characters`,
      );
      return undefined;
    }
    return value;
  }

  #warnHook(fields: Record<string, unknown>, message: string): void {
    if (this.#warnedHook) return;
    this.#warnedHook = true;
    this.#logger?.warn(fields, `${message}; using the connection's peer address (logged once)`);
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

const ignoreRejection = (): void => {};

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
