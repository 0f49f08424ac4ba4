import type { Clock } from '../clock.js';
import { ErrorCode } from '../codes.js';
import type { ProgressState, TaskStatus } from '../model.js';
import { allItemsFinished } from '../model.js';
import type { Resolved } from '../options.js';
import { defaultsOf, finite, resolveOptions } from '../options.js';
import { ProgressError } from '../progress-error.js';

/**
 * The client's "stuck at 100%" watchdog. The failure Finishline was born from is a bar that reaches 100%
 * and never shows completion; a watcher that has seen every item finish but no terminal state for a
 * while suspects a lost frame and escalates, each step more expensive than the last: resync over the
 * socket, then a new socket, then plain HTTP, repeated until the terminal state shows up.
 *
 * @module
 */

/** Options of {@link FinishWatchdog}. */
export interface FinishWatchdogOptions {
  /**
   * How long a running task may sit with every item finished before the first escalation, in
   * milliseconds; each further step comes this much later. Must be >= 1.
   * @default 3000
   */
  stuckAfterMs?: number | undefined;
}

const FINISH_WATCHDOG_OPTIONS = { stuckAfterMs: finite(3000, 1) };

/** Defaults of {@link FinishWatchdogOptions}. */
// Marked pure so that bundles that never read it (the browser client's) leave it out.
export const FINISH_WATCHDOG_DEFAULTS: Readonly<Resolved<FinishWatchdogOptions>> =
  /* @__PURE__ */ Object.freeze(/* @__PURE__ */ defaultsOf(FINISH_WATCHDOG_OPTIONS));

/**
 * What {@link FinishWatchdog.check} asks the client to do:
 * - `none`: nothing (not armed, or the next step is not due);
 * - `resync`: re-subscribe over the current socket from the cursor;
 * - `reconnect`: drop the socket and connect again (possibly to another replica);
 * - `http`: fetch the task's snapshot and events over HTTP.
 */
export type WatchdogAction = 'none' | 'resync' | 'reconnect' | 'http';

/** What the watchdog needs to know of a watched task: a subset of the client's `WatchView`. */
export interface WatchdogView {
  status: TaskStatus;
  progress: ProgressState | null;
}

/**
 * Watches one task for "every item finished, still running". Feed it with {@link observe} after every
 * applied delivery, keep one timer at {@link nextCheckAt}, and call {@link check} when it fires.
 *
 * Timeline, with `T = stuckAfterMs` and `anchor` the moment all items became finished: `resync` at
 * anchor + T, `reconnect` at anchor + 2T, `http` at anchor + 3T and every T after that. Each call to
 * `check` returns at most one action; when it runs late (a suspended tab), the next step is pushed to
 * T after the late one, so every step gets a full `stuckAfterMs` to work before the next escalation.
 *
 * @example
 * ```ts
 * const watchdog = new FinishWatchdog(Date.now);
 * cursor.applyEvent(event);
 * watchdog.observe(cursor.view);
 * const at = watchdog.nextCheckAt();
 * if (at !== undefined) setTimeout(() => act(watchdog.check()), at - Date.now());
 * ```
 */
export class FinishWatchdog {
  readonly #clock: Clock;
  readonly #stuckAfterMs: number;
  /** How many steps fired since all items became finished: 0 none, 1 resync, 2 reconnect, 3+ http. */
  #steps = 0;
  /** When the next step is due (clock ms), or `undefined` while disarmed. */
  #nextAt: number | undefined;

  /**
   * @param clock - the time source.
   * @param options - merged over {@link FINISH_WATCHDOG_DEFAULTS} and validated here.
   * @throws ProgressError `invalid_input` for invalid options.
   */
  constructor(clock: Clock, options?: FinishWatchdogOptions) {
    if (typeof clock !== 'function') {
      throw new ProgressError(ErrorCode.InvalidInput, 'FinishWatchdog: clock must be a function');
    }
    this.#stuckAfterMs = resolveOptions('FinishWatchdog', FINISH_WATCHDOG_OPTIONS, options).stuckAfterMs;
    this.#clock = clock;
  }

  /**
   * Reports the task's state after a delivery was applied. Arms when the task is running and every item
   * is finished; disarms when it is terminal, or when progress is unknown or below total. Staying at
   * 100% keeps the original anchor: later non-terminal events (a resync's snapshot, a progress message)
   * are exactly what a stuck task produces, so they must not postpone the escalation.
   */
  observe(view: WatchdogView): void {
    const stuckCandidate =
      view.status === 'running' && view.progress !== null && allItemsFinished(view.progress);
    if (!stuckCandidate) {
      this.reset();
      return;
    }
    // Unless armed already: the timeline runs from when all items became finished (disarmed, `#steps` is 0).
    this.#nextAt ??= this.#clock() + this.#stuckAfterMs;
  }

  /** The escalation step due now, if any; each step is returned once. */
  check(): WatchdogAction {
    if (this.#nextAt === undefined) return 'none';
    const now = this.#clock();
    if (now < this.#nextAt) return 'none';
    this.#steps += 1;
    this.#nextAt = Math.max(this.#nextAt, now) + this.#stuckAfterMs;
    if (this.#steps === 1) return 'resync';
    if (this.#steps === 2) return 'reconnect';
    return 'http';
  }

  /** When the next step is due (epoch ms), or `undefined` while disarmed. */
  nextCheckAt(): number | undefined {
    return this.#nextAt;
  }

  /** Disarms; the next {@link observe} at 100% starts a new timeline. */
  reset(): void {
    this.#steps = 0;
    this.#nextAt = undefined;
  }
}
