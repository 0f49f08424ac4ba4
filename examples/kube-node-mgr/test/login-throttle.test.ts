/**
 * The login throttle's memory: `maxEntries` bounds the accounts and addresses it remembers, whatever way
 * their attempts end.
 */
import { describe, expect, it } from 'vitest';
import { LoginThrottle } from '../src/server/login-throttle.js';

describe('LoginThrottle memory', () => {
  it('forgets attempts that end undecided (login_busy) or succeed: a username spray stays within maxEntries', () => {
    const throttle = new LoginThrottle({ maxEntries: 100 });
    // A flood while the hash queue is full: each login is refused 503 `login_busy` before its hash and ends
    // undecided (`null`), each with a new username, from a few addresses (each within its own in-flight budget).
    for (let i = 0; i < 10_000; i++) {
      const address = `203.0.113.${i % 50}`;
      expect(throttle.begin(`spray-${i}-${'x'.repeat(200)}`, address)).toBe(0);
      throttle.end(`spray-${i}-${'x'.repeat(200)}`, address, null);
    }
    // Sign-ins that succeed, each from another address.
    for (let i = 0; i < 1_000; i++) {
      const address = `198.51.100.${i % 250}`;
      expect(throttle.begin('alice', `${address}:${i}`)).toBe(0);
      throttle.end('alice', `${address}:${i}`, true);
    }
    expect(throttle.size).toBeLessThanOrEqual(100);
  });

  it('still remembers failures and lock-outs', () => {
    let now = 1_000_000;
    const throttle = new LoginThrottle({ maxEntries: 100, accountFreeFailures: 2, now: () => now });
    for (let i = 0; i < 3; i++) {
      expect(throttle.begin('bob', '192.0.2.1')).toBe(0);
      throttle.end('bob', '192.0.2.1', false);
    }
    // An undecided attempt of another account from the same address forgets neither.
    expect(throttle.begin('carol', '192.0.2.9')).toBe(0);
    throttle.end('carol', '192.0.2.9', null);
    expect(throttle.begin('bob', '192.0.2.2')).toBeGreaterThan(0);
    now += 2_000;
    expect(throttle.begin('bob', '192.0.2.2')).toBe(0);
    throttle.end('bob', '192.0.2.2', true);
    // The success cleared the account: nothing is kept for it.
    expect(throttle.size).toBe(1); // 192.0.2.1's three failures
  });
});
