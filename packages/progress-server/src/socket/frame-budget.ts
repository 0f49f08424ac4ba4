/**
 * The frame budget of one socket: its own token bucket, its principal's shared frame rate, the streak
 * of refused frames that closes a flooder, and the count of invalid frames that closes a broken
 * client.
 *
 * @module
 */
import { CloseCode, ErrorCode } from '@finishline/core';
import type { ServerMetrics } from '../metrics.js';
import type { ResolvedServerOptions } from '../options.js';
import type { PrincipalLimits } from '../principal-limits.js';
import { delay } from '../wait.js';
import { TokenBucket } from './rate-limiter.js';
import type { FrameRefs, SocketWriter } from './socket-writer.js';

/** A rate-limit violation streak ends after this long without a refused frame. */
const VIOLATION_STREAK_MS = 1000;

/**
 * Refused frames within this long of the streak's last counted violation count as that one violation. A
 * client cannot have reacted to a refusal it has not received yet: the frames it wrote in one batch (an
 * honest client's subscribes to every task it watches, after each `hello`) arrive within a round trip of
 * the first refusal, and counted one by one, a batch of `rateLimitBurst` + `maxRateLimitViolations` frames
 * closed the socket before the subscribes it accepted were answered, and the client's reconnect sent the
 * same batch again, for ever. A client that goes on flooding is still closed, after
 * `maxRateLimitViolations` windows of refusals (5 s by default).
 */
const VIOLATION_WINDOW_MS = 100;

/** What the budget needs from its socket. */
export interface FrameBudgetContext {
  readonly options: Pick<
    ResolvedServerOptions<never>,
    | 'clock'
    | 'rateLimitBurst'
    | 'rateLimitPerSecond'
    | 'rateLimitPerPrincipalPerSecond'
    | 'maxRateLimitViolations'
    | 'maxInvalidFrames'
  >;
  readonly metrics: ServerMetrics;
  readonly limits: PrincipalLimits;
  readonly writer: SocketWriter;
  /** The socket's principal id (the socket is open). */
  principalId(): string;
  close(code: number, reason: string): void;
}

/** Decides which frames of one socket are handled, and when the socket has misbehaved enough to close. */
export class FrameBudget {
  readonly #ctx: FrameBudgetContext;
  readonly #bucket: TokenBucket;
  #invalidFrames = 0;
  #violations = 0;
  #lastViolationAt = Number.NEGATIVE_INFINITY;
  #countedAt = Number.NEGATIVE_INFINITY;
  /** Frames refused in the current streak, counted or not. */
  #refused = 0;

  constructor(ctx: FrameBudgetContext) {
    this.#ctx = ctx;
    this.#bucket = new TokenBucket({
      capacity: ctx.options.rateLimitBurst,
      refillPerSecond: ctx.options.rateLimitPerSecond,
      clock: ctx.options.clock,
    });
  }

  /**
   * Takes one rate-limit token; on refusal answers every refused frame (its error carrying `refs`) and
   * closes a persistent flooder. `refs` `undefined`: a refusal is counted (towards that close) but not
   * answered, for a frame the caller does not drop (an `auth` renewal, which waits: see {@link waitForToken}).
   */
  take(refs: FrameRefs | undefined): boolean {
    const { options, metrics } = this.#ctx;
    // The socket's own budget first, then its principal's, shared with the principal's other sockets. A
    // refused frame costs neither: its own token is taken only once the principal's budget accepted it.
    // Taken before, a frame the principal's budget refused (its other sockets used it up) spent the
    // socket's token as well, and once the shared budget refilled, the socket's retry was refused by its
    // own limit, which it had not exceeded.
    const own = this.#bucket.tokens >= 1;
    if (own && this.#ctx.limits.takeFrame(this.#ctx.principalId())) {
      this.#bucket.tryTake();
      return true;
    }
    const now = options.clock();
    if (now - this.#lastViolationAt > VIOLATION_STREAK_MS) this.#violations = this.#refused = 0;
    this.#lastViolationAt = now;
    this.#refused += 1;
    // A clock stepped backwards counts at once: otherwise no refusal would count until it caught up.
    if (now - this.#countedAt >= VIOLATION_WINDOW_MS || now < this.#countedAt) {
      this.#countedAt = now;
      this.#violations += 1;
    }
    metrics.framesRejected.inc({ code: ErrorCode.RateLimited });
    // However fast they come: refusals folded into one window are bounded too. A batch of an honest client
    // is refused at most its size less the burst; a flooder's windows, each of as many frames as it can
    // send in 100 ms, were each answered frame by frame for the 5 s its windows took to add up.
    if (
      this.#violations >= options.maxRateLimitViolations ||
      this.#refused >= options.maxRateLimitViolations * options.rateLimitBurst
    ) {
      this.#ctx.close(CloseCode.RateLimited, 'rate limit exceeded');
    } else if (refs !== undefined) {
      // Every refused frame is answered, so a client never waits for the reply to a request that was
      // dropped. No amplification: one small frame per refused one, and a streak of
      // `maxRateLimitViolations` counted violations closes the socket.
      // Named after the limit that refused: a client told its socket's rate while its principal's other
      // sockets used up the shared one would look for the flood in the wrong place.
      const limit = own
        ? `${options.rateLimitPerPrincipalPerSecond} frames/s for all of this principal's sockets`
        : `${options.rateLimitPerSecond} frames/s`;
      this.#ctx.writer.sendError(
        ErrorCode.RateLimited,
        `Rate limit exceeded (${limit}); frames are being dropped`,
        refs,
      );
    }
    return false;
  }

  /**
   * Takes one token of the socket's and its principal's budgets, waiting for them to refill when either
   * is empty; `false`, taking none, once `wanted` says the frame is no longer to be handled (the socket
   * closed, or its check was given up on). Refusals while waiting are not counted: the frame's one was.
   */
  async waitForToken(wanted: () => boolean): Promise<boolean> {
    const { options, limits } = this.#ctx;
    const pollMs = Math.ceil(
      1000 / Math.min(options.rateLimitPerSecond, options.rateLimitPerPrincipalPerSecond),
    );
    for (;;) {
      if (!wanted()) return false;
      if (this.#bucket.tokens >= 1 && limits.takeFrame(this.#ctx.principalId())) {
        this.#bucket.tryTake();
        return true;
      }
      await delay(pollMs);
    }
  }

  /** An invalid frame: answered, counted, and the socket closes after `maxInvalidFrames` of them. */
  invalid(code: ErrorCode, message: string, refs: FrameRefs): void {
    this.#ctx.metrics.framesRejected.inc({ code });
    this.#invalidFrames += 1;
    this.#ctx.writer.sendError(code, message, refs);
    if (this.#invalidFrames >= this.#ctx.options.maxInvalidFrames) {
      this.#ctx.close(CloseCode.PolicyViolation, 'too many invalid frames');
    }
  }
}
