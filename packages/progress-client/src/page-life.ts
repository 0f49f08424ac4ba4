import type { Clock } from '@finishline/core';
import { Timeout, type TimerSet } from './timers.js';

/**
 * The page's life as the socket sees it: a tab shown again, the network back, a page restored from the
 * back/forward cache, a frozen page resumed, a laptop woken from sleep. In each case the socket may have
 * died without a close event, and the heartbeat timeout would take up to half a minute to notice.
 *
 * @module
 */

/** The part of an `EventTarget` the client uses (`document` and `window` fit). */
export interface PageEventTarget {
  addEventListener(type: string, listener: (event: object) => void): void;
  removeEventListener(type: string, listener: (event: object) => void): void;
}

/**
 * Where page-life events come from. `document` fires `visibilitychange` (its `visibilityState` is read)
 * and `resume` (a frozen page thawed); `window` fires `online` and `pageshow`.
 */
export interface PageEventSources {
  document?: PageEventTarget & { readonly visibilityState?: string };
  window?: PageEventTarget;
}

/** Why the client checked its connection: the event that suggested the socket may be dead. */
export type WakeReason = 'visible' | 'online' | 'pageshow' | 'resume' | 'clock jump';

/**
 * The client's options that {@link PageLife} reads (the resolved options fit): where the events come
 * from, the clock, the period of the clock-jump check (0 turns it off) and how late a tick must be to
 * count as a jump (the machine slept, or the page was frozen).
 *
 * @internal
 */
export interface PageLifeOptions {
  pageEvents: PageEventSources | undefined;
  clock: Clock;
  clockCheckIntervalMs: number;
  clockJumpMs: number;
}

/**
 * Listens to page-life events and watches for clock jumps while started.
 *
 * A jump is told by a timer's lateness, not by comparing wall clocks: a timer set for `interval` that
 * fires `interval + clockJumpMs` later means the process did not run meanwhile (asleep or frozen).
 * Background tabs throttle timers to about once a minute, which also reads as a jump: the check then
 * costs one ping, which is cheap, and a throttled tab is exactly where sockets die unseen.
 *
 * @internal
 */
export class PageLife {
  readonly #o: PageLifeOptions;
  readonly #tick: Timeout;
  readonly #onWake: (reason: WakeReason) => void;
  #started = false;
  #lastTickAt = 0;
  readonly #onVisibility = (): void => {
    if (this.#o.pageEvents?.document?.visibilityState !== 'hidden') this.#wake('visible');
  };
  readonly #onResume = (): void => this.#wake('resume');
  readonly #onOnline = (): void => this.#wake('online');
  // A normal load fires `pageshow` too; only a restore from the back/forward cache says the page slept.
  readonly #onPageShow = (event: object): void => {
    if ((event as { persisted?: unknown }).persisted === true) this.#wake('pageshow');
  };

  constructor(options: PageLifeOptions, timers: TimerSet, onWake: (reason: WakeReason) => void) {
    this.#o = options;
    this.#tick = new Timeout(timers);
    this.#onWake = onWake;
  }

  /** Starts listening (idempotent). */
  start(): void {
    if (this.#started) return;
    this.#started = true;
    this.#listen('addEventListener');
    this.#armTick();
  }

  /** Stops listening (idempotent): nothing to watch, or the client closed. */
  stop(): void {
    if (!this.#started) return;
    this.#started = false;
    this.#listen('removeEventListener');
    this.#tick.clear();
  }

  /** Adds or removes the four listeners: one list for both, so they cannot drift apart. */
  #listen(method: 'addEventListener' | 'removeEventListener'): void {
    const { document, window } = this.#o.pageEvents ?? {};
    document?.[method]('visibilitychange', this.#onVisibility);
    document?.[method]('resume', this.#onResume);
    window?.[method]('online', this.#onOnline);
    window?.[method]('pageshow', this.#onPageShow);
  }

  #armTick(): void {
    const intervalMs = this.#o.clockCheckIntervalMs;
    if (intervalMs <= 0) return;
    this.#lastTickAt = this.#o.clock();
    this.#tick.set(intervalMs, () => {
      const lateMs = this.#o.clock() - this.#lastTickAt - intervalMs;
      this.#armTick();
      if (lateMs >= this.#o.clockJumpMs) this.#wake('clock jump');
    });
  }

  #wake(reason: WakeReason): void {
    if (!this.#started) return;
    // Ticks measured across the pause would report it again.
    if (reason !== 'clock jump') this.#armTick();
    this.#onWake(reason);
  }
}

/** The global `document` and `window` in a browser page; none elsewhere (Node, workers). */
export function defaultPageEventSources(): PageEventSources | undefined {
  const scope = globalThis as { document?: PageEventSources['document']; window?: PageEventTarget };
  if (scope.document === undefined || scope.window === undefined) return undefined;
  if (typeof scope.window.addEventListener !== 'function') return undefined;
  return { document: scope.document, window: scope.window };
}
