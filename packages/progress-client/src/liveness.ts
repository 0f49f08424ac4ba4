import type { ResolvedOptions } from './options.js';
import { Timeout, type TimerSet } from './timers.js';

/**
 * The one deadline of the client's current socket: the connect timeout, a ping's deadline, or the
 * heartbeat watchdog that every frame pushes back.
 *
 * @module
 */

/** @internal */
export class Liveness {
  readonly #timeout: Timeout;
  readonly #o: Pick<ResolvedOptions, 'clock'>;
  /** Called when the watchdog finds the socket silent for the heartbeat timeout. */
  readonly #onSilent: () => void;
  /**
   * The deadline is the heartbeat watchdog, which frames push back through `#lastFrameAt`. (Not while a
   * ready socket's ping waits for its answer: a wake's check.)
   */
  #watching = false;
  /** When the ready socket last delivered a frame (clock ms). */
  #lastFrameAt = 0;
  #heartbeatTimeoutMs = 0;

  constructor(timers: TimerSet, options: Pick<ResolvedOptions, 'clock'>, onSilent: () => void) {
    this.#timeout = new Timeout(timers);
    this.#o = options;
    this.#onSilent = onSilent;
  }

  /** Replaces the deadline (and stops the watchdog): `callback` runs after `delayMs`. */
  deadline(delayMs: number, callback: () => void): void {
    this.#watching = false;
    this.#timeout.set(delayMs, callback);
  }

  /** False while a ready socket's ping waits for its answer (a wake's check, `Connection.check`). */
  get watching(): boolean {
    return this.#watching;
  }

  /** No deadline (and no watchdog). */
  clear(): void {
    this.#watching = false;
    this.#timeout.clear();
  }

  /** The socket said `hello` at `now`: from now on, silence for `heartbeatTimeoutMs` ends it. */
  watch(now: number, heartbeatTimeoutMs: number): void {
    this.#heartbeatTimeoutMs = heartbeatTimeoutMs;
    this.#lastFrameAt = now;
    this.#watch(heartbeatTimeoutMs);
  }

  /**
   * A frame arrived on the ready socket: it pushes the heartbeat deadline back. Noted here, checked when
   * the timer fires, so a busy socket costs no timer per frame. Any frame also answers a pending ping.
   */
  frame(): void {
    this.#lastFrameAt = this.#o.clock();
    if (!this.#watching) this.#watch(this.#heartbeatTimeoutMs);
  }

  /** Fires `heartbeatTimeoutMs` after the latest frame, re-arming itself for what is left until then. */
  #watch(delayMs: number): void {
    this.#watching = true;
    this.#timeout.set(delayMs, () => {
      this.#watching = false;
      const left = this.#lastFrameAt + this.#heartbeatTimeoutMs - this.#o.clock();
      if (left > 0) this.#watch(left);
      // Silent: judged once more, on a timer of its own (delay 0), after what has arrived is read. Had this
      // process stood still past the deadline (a long synchronous task, a GC pause), this timer fired before
      // the frames that came meanwhile, waiting unread, and a live socket was torn down.
      else if (delayMs) this.#watch(0);
      else this.#onSilent();
    });
  }
}
