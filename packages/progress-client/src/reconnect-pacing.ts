import { resolvedBackoffDelayMs } from '@finishline/core/internal';
import type { FallbackOptions } from './transport-types.js';

/**
 * The pace of reconnects: a quick first retry after the loss of a healthy connection (within the
 * server's hint), at most one backoff step after the loss of any other connection that said `hello`,
 * full-jitter exponential backoff over attempts that fail, and the reset once a connection stayed up.
 * The socket's, and each SSE stream's (`fallback-streams.ts`: a stream that delivered is a connection
 * that said `hello`).
 *
 * @module
 */

/** The options the pacing reads (a fallback transport has them too, to pace its streams). @internal */
export type PacingOptions = Pick<
  FallbackOptions,
  'clock' | 'random' | 'reconnect' | 'reconnectFirstDelayMs' | 'stableConnectionMs'
>;

/** @internal */
export class ReconnectPacing {
  readonly #o: PacingOptions;
  /** Reconnects since the last stable connection: the backoff exponent. */
  #failures = 0;
  /** The quick first retry was spent since the last stable connection (so flapping backs off). */
  #quickRetryUsed: boolean | undefined;
  /** The current socket's `hello` asked for this spread of the first retry after a loss. */
  #serverFirstDelayMs = 0;
  /** When the current socket said `hello` (clock ms); none before any (NaN below: never short-lived). */
  #readyAt: number | undefined;
  /** The server closed the client for flooding: the next delay backs off whatever was lost. */
  #slowedDown: boolean | undefined;

  constructor(options: PacingOptions) {
    this.#o = options;
  }

  /** A socket said `hello` at `now`, asking for `serverFirstDelayMs` of spread on the first retry. */
  ready(now: number, serverFirstDelayMs: number): void {
    this.#readyAt = now;
    this.#serverFirstDelayMs = serverFirstDelayMs;
  }

  /**
   * The ready socket went away. A connection that stayed up `stableConnectionMs` since its `hello` proves
   * the server healthy: the backoff starts over.
   */
  down(): void {
    if (!(this.#o.clock() - (this.#readyAt as number) < this.#o.stableConnectionMs)) {
      this.#failures = 0;
      this.#quickRetryUsed = false;
    }
  }

  /** The server closed the client for flooding: wait longer, the same pace would only get it closed again. */
  slowDown(): void {
    // Counted when the delay is taken (`nextDelayMs`), not now: the close that slows down is followed by
    // `down()`, whose reset (the socket was up `stableConnectionMs`, as a flooding one usually was) wiped
    // the two steps added here, and such a client came back within the base step however often it flooded.
    this.#slowedDown = true;
  }

  /**
   * The delay before the next attempt. The first loss of a healthy connection (`lostReady`: the socket
   * just lost had said `hello`) is retried at once, within a small jitter (the server's hint when it asks
   * for more, so a replica's whole crowd does not land in the same instant). Any later loss of a socket
   * that said `hello` waits one backoff step (`reconnect.initialDelayMs`, or the server's hint when
   * larger), never more: a server that greets is up, and a chain of cuts (a flaky network, a proxy
   * recycling connections) must cost a second each, not ever longer waits — the full chaos run showed
   * watchers waiting 3–4 s per cut, 9.9 s in all, after three short connections in a row. The
   * exponential backoff grows only over attempts that fail to reach `hello`, and after a close for
   * flooding.
   */
  nextDelayMs(lostReady: boolean): number {
    const slowedDown = this.#slowedDown;
    this.#slowedDown = false;
    if (slowedDown) this.#failures += 2;
    if (lostReady && !slowedDown) {
      const quick = this.#failures === 0 && !this.#quickRetryUsed;
      this.#quickRetryUsed = true;
      const ceiling = Math.min(
        this.#o.reconnect.maxDelayMs,
        Math.max(
          quick ? this.#o.reconnectFirstDelayMs : this.#o.reconnect.initialDelayMs,
          this.#serverFirstDelayMs,
        ),
      );
      return resolvedBackoffDelayMs(
        0,
        { initialDelayMs: ceiling, maxDelayMs: ceiling, multiplier: 1 },
        this.#o.random,
      );
    }
    return resolvedBackoffDelayMs(this.#failures++, this.#o.reconnect, this.#o.random);
  }
}
