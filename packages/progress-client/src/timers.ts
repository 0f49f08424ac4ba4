/**
 * The client's timers. Every timer it starts goes through one {@link TimerSet}, so `close()` can clear all
 * of them at once and tests can count what is pending.
 *
 * @module
 */

/**
 * The two timer functions the client calls; inject a fake (or a manual scheduler) in tests.
 *
 * @example
 * ```ts
 * const timers: TimerApi = { setTimeout: (fn, ms) => setTimeout(fn, ms), clearTimeout: (h) => clearTimeout(h as never) };
 * ```
 */
export interface TimerApi {
  /** Calls `callback` once after `delayMs` milliseconds; returns a handle for {@link clearTimeout}. */
  setTimeout(callback: () => void, delayMs: number): unknown;
  /** Cancels a timer started by {@link setTimeout}; a handle that already fired is ignored. */
  clearTimeout(handle: unknown): void;
}

/**
 * The global timers, looked up on every call rather than captured at import, so fake timers installed
 * later (`vi.useFakeTimers()`) are honoured.
 */
export const systemTimers: TimerApi = Object.freeze({
  setTimeout: (callback: () => void, delayMs: number): unknown => globalThis.setTimeout(callback, delayMs),
  clearTimeout: (handle: unknown): void => globalThis.clearTimeout(handle as ReturnType<typeof setTimeout>),
});

/** The longest delay setTimeout takes; a longer one fires at once. */
export const MAX_DELAY_MS = 2 ** 31 - 1;

/**
 * The set of live timers of one client.
 *
 * @internal
 */
/** Does nothing: one function for every listener, handler and cancel that has nothing to do. @internal */
export const noop = (): undefined => undefined;

export class TimerSet {
  readonly #api: TimerApi;
  readonly #live = new Set<{ handle: unknown }>();
  #disposed = false;

  constructor(api: TimerApi) {
    this.#api = api;
  }

  /**
   * Starts a one-shot timer; returns its cancel function. A delay longer than `setTimeout` can hold
   * (2^31 - 1 ms, about 24.8 days: a longer one fires at once) is waited out in steps.
   */
  start(callback: () => void, delayMs: number): () => void {
    // After dispose() a late callback (a fetch settling after close) must not start anything again.
    if (this.#disposed) return noop;
    // No `handle` key until armed, just below: a smaller bundle.
    const entry = {} as { handle: unknown };
    const arm = (remainingMs: number): void => {
      entry.handle = this.#api.setTimeout(
        () => {
          if (!this.#live.has(entry)) return;
          if (remainingMs > MAX_DELAY_MS) return arm(remainingMs - MAX_DELAY_MS);
          this.#live.delete(entry);
          callback();
        },
        Math.min(MAX_DELAY_MS, remainingMs),
      );
    };
    arm(Math.max(0, delayMs));
    this.#live.add(entry);
    return () => {
      if (this.#live.delete(entry)) this.#api.clearTimeout(entry.handle);
    };
  }

  /** Cancels every live timer, and refuses to start new ones from now on. */
  dispose(): void {
    this.#disposed = true;
    for (const entry of this.#live) this.#api.clearTimeout(entry.handle);
    this.#live.clear();
  }
}

/**
 * One named, re-armable timer slot: setting it again replaces the pending callback.
 *
 * @internal
 */
export class Timeout {
  readonly #timers: TimerSet;
  #cancel: (() => void) | undefined;

  constructor(timers: TimerSet) {
    this.#timers = timers;
  }

  /** True while a callback is waiting. */
  get pending(): boolean {
    return this.#cancel !== undefined;
  }

  /** Runs `callback` after `delayMs`, replacing whatever was pending. */
  set(delayMs: number, callback: () => void): void {
    this.clear();
    this.#cancel = this.#timers.start(() => {
      this.#cancel = undefined;
      callback();
    }, delayMs);
  }

  /** Cancels the pending callback, if any. */
  clear(): void {
    const cancel = this.#cancel;
    this.#cancel = undefined;
    cancel?.();
  }
}
