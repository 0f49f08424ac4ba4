/** Options of {@link LoginThrottle}. */
export interface LoginThrottleOptions {
  /**
   * Failed logins of one account allowed before each further failure locks it for a growing delay.
   * @default 5
   */
  accountFreeFailures?: number;
  /**
   * Failed logins from one address allowed before it is locked out the same way (higher than the account's:
   * a shared NAT address carries many users).
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

  /** Milliseconds until the account or the address may try again; 0 when it may now. */
  retryAfterMs(account: string, address: string): number {
    const now = this.#now();
    let wait = 0;
    for (const key of [accountKey(account), addressKey(address)]) {
      const entry = this.#live(key, now);
      if (entry !== undefined && entry.lockedUntil > now) wait = Math.max(wait, entry.lockedUntil - now);
    }
    return wait;
  }

  /** Records a failed login. */
  failed(account: string, address: string): void {
    const now = this.#now();
    this.#bump(accountKey(account), this.#options.accountFreeFailures, now);
    this.#bump(addressKey(address), this.#options.addressFreeFailures, now);
  }

  /** Records a successful login: the account starts afresh. */
  succeeded(account: string): void {
    this.#entries.delete(accountKey(account));
  }

  #live(key: string, now: number): Entry | undefined {
    const entry = this.#entries.get(key);
    if (entry !== undefined && now - entry.lastFailure > this.#options.forgetAfterMs) {
      this.#entries.delete(key);
      return undefined;
    }
    return entry;
  }

  #bump(key: string, free: number, now: number): void {
    const entry = this.#live(key, now) ?? { failures: 0, lockedUntil: 0, lastFailure: now };
    entry.failures++;
    entry.lastFailure = now;
    if (entry.failures > free) {
      const over = Math.min(entry.failures - free - 1, 30);
      entry.lockedUntil = now + Math.min(this.#options.baseDelayMs * 2 ** over, this.#options.maxDelayMs);
    }
    // Re-inserting keeps the Map in last-failure order, so the first key is the one to forget.
    this.#entries.delete(key);
    this.#entries.set(key, entry);
    while (this.#entries.size > this.#options.maxEntries) {
      const oldest = this.#entries.keys().next().value;
      if (oldest === undefined) break;
      this.#entries.delete(oldest);
    }
  }
}

const accountKey = (account: string) => `u:${account.toLowerCase()}`;
const addressKey = (address: string) => `a:${address}`;
