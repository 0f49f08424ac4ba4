/**
 * How long a subscribe may go unanswered before it is sent again, learned from how fast the server has
 * answered subscribes: TCP's retransmission timeout (RFC 6298) applied to subscribe → first frame.
 *
 * A fixed wait has to be long enough for a slow server on a slow network, so a lost subscribe (a proxy
 * that dropped the frame, a replica that died holding it) costs that long everywhere: 1 s, then 2 s if the
 * repeat is lost too. Learned from the answers, the wait on a fast path is a few hundred milliseconds,
 * and grows by itself when the server slows down.
 *
 * @internal
 * @module
 */

/**
 * The shortest wait, in ms, however fast the answers come: an answer is a store read on the server, and a
 * burst of subscribes (a reconnect storm) queues them; below this a busy server would be asked twice for
 * no loss at all. Linux uses 200 ms as TCP's minimum retransmission timeout for the same reason.
 */
const MIN_ANSWER_WAIT_MS = 250;

/**
 * How many times the wait doubles while subscribes go unanswered (16 × the first wait at most): a server
 * too busy to answer within the wait is not asked ever more often.
 */
const MAX_DOUBLINGS = 4;

/** @internal */
export class AnswerWait {
  readonly #maxMs: number;
  /** Smoothed answer time and its mean deviation (RFC 6298's SRTT and RTTVAR), ms; -1 before a sample. */
  #smoothed = -1;
  #deviation = 0;
  /**
   * Doublings every subscribe gets since one went unanswered, until one sent once is answered (Karn's
   * algorithm): without it, a server that became slower than the wait would have every subscribe
   * repeated, and, a repeat's answer being ambiguous, the wait would never learn that it is slower.
   */
  #backoff = 0;

  /** @param maxMs - the wait before any answer was measured, and the longest one (`behindGraceMs`). */
  constructor(maxMs: number) {
    this.#maxMs = maxMs;
  }

  /**
   * The doublings for a subscribe sent now, after `repeats` subscribes in a row went unanswered for its
   * task: those, or the client's backoff if larger.
   */
  doublings(repeats: number): number {
    return Math.min(MAX_DOUBLINGS, Math.max(repeats, this.#backoff));
  }

  /** The wait for the answer to a subscribe sent with `doublings` (see {@link doublings}). */
  ms(doublings: number): number {
    let wait = this.#maxMs;
    if (this.#smoothed >= 0)
      wait = Math.min(wait, Math.max(MIN_ANSWER_WAIT_MS, this.#smoothed + 4 * this.#deviation));
    return wait * 2 ** doublings;
  }

  /** A subscribe sent with `doublings` went unanswered for its whole wait: later ones wait longer. */
  unanswered(doublings: number): void {
    this.#backoff = Math.max(this.#backoff, Math.min(MAX_DOUBLINGS, doublings + 1));
  }

  /**
   * A subscribe sent once (never a repeat: which of the copies was answered is unknown) was answered
   * `ms` after it went out. The clock is the wall clock: set back meanwhile, it gives a negative time,
   * taken as 0.
   */
  answered(elapsedMs: number): void {
    const ms = Math.max(0, elapsedMs);
    this.#backoff = 0;
    if (this.#smoothed < 0) {
      this.#smoothed = ms;
      this.#deviation = ms / 2;
    } else {
      this.#deviation = 0.75 * this.#deviation + 0.25 * Math.abs(this.#smoothed - ms);
      this.#smoothed = 0.875 * this.#smoothed + 0.125 * ms;
    }
  }
}
