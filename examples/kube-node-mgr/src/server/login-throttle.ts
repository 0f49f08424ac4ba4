import { addressGroup } from '@finishline/server';

/** Options of {@link LoginThrottle}. */
export interface LoginThrottleOptions {
  /**
   * Failed logins of one account allowed before each further failure locks it for a growing delay.
   * @default 5
   */
  accountFreeFailures?: number;
  /**
   * Failed logins from one address allowed before it is locked out the same way (higher than the account's:
   * a shared NAT address carries many users). An IPv6 address counts by its /64 (see {@link addressGroup}).
   * @default 20
   */
  addressFreeFailures?: number;
  /**
   * The first lock-out; each further failure doubles it.
   * @default 1000
   */
  baseDelayMs?: number;
  /**
   * The longest lock-out.
   * @default 900000 (15 minutes)
   */
  maxDelayMs?: number;
  /**
   * Failures older than this are forgotten (the counter restarts).
   * @default 3600000 (1 hour)
   */
  forgetAfterMs?: number;
  /**
   * Most accounts and addresses remembered; the oldest are forgotten first (bounds memory under a spray).
   * @default 100000
   */
  maxEntries?: number;
  now?: () => number;
}

/** The defaults of {@link LoginThrottleOptions}. */
export const LOGIN_THROTTLE_DEFAULTS = Object.freeze({
  accountFreeFailures: 5,
  addressFreeFailures: 20,
  baseDelayMs: 1000,
  maxDelayMs: 900_000,
  forgetAfterMs: 3_600_000,
  maxEntries: 100_000,
});

interface Entry {
  failures: number;
  lockedUntil: number;
  lastFailure: number;
  /** Attempts begun and not yet ended: each may still turn out a failure. */
  inFlight: number;
}

/**
 * Throttles password guessing per account and per client address, in this process: past a number of free
 * failures, each failure locks the key for a delay that doubles (1 s, 2 s, 4 s … up to 15 min). A locked
 * attempt is refused before the password is hashed, so it costs no CPU either. A success clears the
 * account's counter (not the address's: one valid account must not launder guesses at others).
 *
 * Per process: behind N replicas without affinity an attacker gets at most N times the budget; a shared
 * counter (Redis, the database) would close that, at a write per failed login.
 */
export class LoginThrottle {
  readonly #options: Required<Omit<LoginThrottleOptions, 'now'>>;
  readonly #now: () => number;
  readonly #entries = new Map<string, Entry>();

  constructor(options: LoginThrottleOptions = {}) {
    const { now, ...rest } = options;
    this.#options = { ...LOGIN_THROTTLE_DEFAULTS, ...rest };
    this.#now = now ?? Date.now;
  }

  /**
   * Begins a login attempt: resolves 0 and counts it in flight when the account and the address may try
   * now, else the milliseconds until they may (nothing counted). Every attempt begun must be ended with
   * {@link end}. Attempts in flight count as possible failures, so guesses sent in parallel get no more
   * hashes than guesses sent one after another: while an account has `f` failures, at most
   * `free + 1 - f` attempts (at least one) may be in flight.
   */
  begin(account: string, address: string): number {
    const now = this.#now();
    const keys: [string, number][] = [
      [accountKey(account), this.#options.accountFreeFailures],
      [addressKey(address), this.#options.addressFreeFailures],
    ];
    let wait = 0;
    for (const [key, free] of keys) {
      const entry = this.#live(key, now);
      if (entry === undefined) continue;
      if (entry.lockedUntil > now) wait = Math.max(wait, entry.lockedUntil - now);
      // Not locked, but as many attempts in flight as could still fail freely: wait for one to end.
      else if (entry.inFlight >= Math.max(1, free + 1 - entry.failures))
        wait = Math.max(wait, IN_FLIGHT_RETRY_MS);
    }
    if (wait > 0) return wait;
    for (const [key] of keys) this.#entry(key, now).inFlight++;
    return 0;
  }

  /**
   * Ends an attempt {@link begin} let through: a failure counts (and may lock); a success clears the account;
   * `null`, an attempt that could not be decided (the database down once the password matched, the server too
   * busy to hash it), only ends it: counted as a failure, an outage locked its users out after it.
   */
  end(account: string, address: string, ok: boolean | null): void {
    const now = this.#now();
    const byAccount = this.#entry(accountKey(account), now);
    const byAddress = this.#entry(addressKey(address), now);
    byAccount.inFlight = Math.max(0, byAccount.inFlight - 1);
    byAddress.inFlight = Math.max(0, byAddress.inFlight - 1);
    if (ok === false) {
      this.#bump(accountKey(account), this.#options.accountFreeFailures, now);
      this.#bump(addressKey(address), this.#options.addressFreeFailures, now);
      return;
    }
    if (ok) {
      // Not the address's count: one valid account must not launder guesses at others.
      byAccount.failures = 0;
      byAccount.lockedUntil = 0;
    }
    this.#forgetIfBlank(accountKey(account), byAccount);
    this.#forgetIfBlank(addressKey(address), byAddress);
  }

  /**
   * Accounts and addresses remembered: at most `maxEntries`, plus those with an attempt in flight.
   */
  get size(): number {
    return this.#entries.size;
  }

  /**
   * Forgets an entry with no failure and no attempt in flight: it holds nothing {@link begin} would act on.
   * Kept, the entries of attempts that ended without a failure (a success, a login refused `login_busy`
   * before its hash) were never forgotten — only a failure's {@link #bump} trims to `maxEntries` — so a
   * flood of logins with a new username each, refused while the hash queue was full, grew the map without
   * bound (a few hundred bytes per request, no hash spent).
   */
  #forgetIfBlank(key: string, entry: Entry): void {
    if (entry.inFlight === 0 && entry.failures === 0 && this.#entries.get(key) === entry)
      this.#entries.delete(key);
  }

  #entry(key: string, now: number): Entry {
    let entry = this.#live(key, now);
    if (entry === undefined) {
      entry = { failures: 0, lockedUntil: 0, lastFailure: now, inFlight: 0 };
      this.#entries.set(key, entry);
    }
    return entry;
  }

  #live(key: string, now: number): Entry | undefined {
    const entry = this.#entries.get(key);
    if (
      entry !== undefined &&
      entry.inFlight === 0 &&
      now - entry.lastFailure > this.#options.forgetAfterMs
    ) {
      this.#entries.delete(key);
      return undefined;
    }
    return entry;
  }

  #bump(key: string, free: number, now: number): void {
    const entry = this.#entry(key, now);
    entry.failures++;
    entry.lastFailure = now;
    if (entry.failures > free) {
      const over = Math.min(entry.failures - free - 1, 30);
      entry.lockedUntil = now + Math.min(this.#options.baseDelayMs * 2 ** over, this.#options.maxDelayMs);
    }
    // Re-inserting keeps the Map in last-failure order, so the first key is the one to forget.
    this.#entries.delete(key);
    this.#entries.set(key, entry);
    for (const [oldest, candidate] of this.#entries) {
      if (this.#entries.size <= this.#options.maxEntries) break;
      if (candidate.inFlight === 0) this.#entries.delete(oldest);
    }
  }
}

/** How soon an attempt refused for attempts in flight may try again: they end within one hash. */
const IN_FLIGHT_RETRY_MS = 1000;

const accountKey = (account: string) => `u:${account.toLowerCase()}`;
const addressKey = (address: string) => `a:${addressGroup(address)}`;
