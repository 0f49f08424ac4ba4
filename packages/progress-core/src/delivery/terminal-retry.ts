import type { Clock } from '../clock.js';
import { ErrorCode } from '../codes.js';
import type { OptionSpec, Resolved } from '../options.js';
import { defaultsOf, finite, nested, refine, requireNumber, resolveOptions } from '../options.js';
import { ProgressError } from '../progress-error.js';
import { RoundTripEstimate, RoundTripPool } from './round-trip-estimate.js';

/**
 * Re-sending unacknowledged terminal events on the same connection. A terminal event is the one frame a
 * watcher must not miss, and the acknowledgement is how the server learns it arrived; until then the
 * server re-sends it after 100 ms, then 200 ms, 400 ms … capped, for as long as the connection lives.
 * With a {@link RoundTripPool}, the first delay is the round-trip timeout when that is longer than 100 ms
 * (acks are slow under load), and the later ones double from it: the timeout of this socket's own acks
 * ({@link RoundTripEstimate}), or before its first ack, the pool's (the lower median of the principals'),
 * so one client's acks, late or early, set only its own socket's delays.
 * There is deliberately no attempt limit: the connection closing (after which the client resumes from its
 * cursor) is the only other way out. The schedule is deterministic, not jittered: retries are per socket,
 * so there is no crowd to spread out.
 *
 * @module
 */

/** Options of {@link terminalRetryDelayMs} and {@link TerminalRetryTracker}. */
export interface TerminalRetryOptions {
  /**
   * Delay before the first re-send, in milliseconds. Must be >= 1 (0 would re-send in a tight loop)
   * and <= `maxDelayMs`.
   * @default 100
   */
  initialDelayMs?: number | undefined;
  /**
   * Factor by which the delay grows per re-send. Must be >= 1.
   * @default 2
   */
  multiplier?: number | undefined;
  /**
   * Longest delay between two re-sends, in milliseconds; at most 2^31 - 1 (about 24.8 days, the longest
   * a timer waits).
   * @default 5000
   */
  maxDelayMs?: number | undefined;
}

/**
 * The longest delay a timer takes (2^31 - 1 ms, about 24.8 days): asked for longer, `setTimeout` fires
 * after 1 ms, and the server's retry timer, finding nothing due yet, was set again every millisecond.
 */
const MAX_TIMER_MS = 2_147_483_647;

/** A delay of the schedule: from 1 ms (0 would re-send in a tight loop) to what a timer can wait. */
function delayMs(def: number): OptionSpec<number> {
  return { default: def, read: (value, where) => requireNumber(where, value, { min: 1, max: MAX_TIMER_MS }) };
}

/** One description per option of {@link TerminalRetryOptions}. */
const TERMINAL_RETRY_OPTIONS = {
  initialDelayMs: /* @__PURE__ */ delayMs(100),
  multiplier: /* @__PURE__ */ finite(2, 1),
  maxDelayMs: /* @__PURE__ */ delayMs(5000),
};

/** Defaults of {@link TerminalRetryOptions}: 100 ms, doubling, capped at 5 s. */
export const TERMINAL_RETRY_DEFAULTS: Readonly<Resolved<TerminalRetryOptions>> =
  /* @__PURE__ */ Object.freeze(/* @__PURE__ */ defaultsOf(TERMINAL_RETRY_OPTIONS));

function resolveTerminalRetryOptions(
  options: TerminalRetryOptions | undefined,
): Resolved<TerminalRetryOptions> {
  return inOrder(resolveOptions('TerminalRetry', TERMINAL_RETRY_OPTIONS, options), 'TerminalRetry');
}

function inOrder(options: Resolved<TerminalRetryOptions>, where: string): Resolved<TerminalRetryOptions> {
  if (options.initialDelayMs > options.maxDelayMs) {
    throw new ProgressError(
      ErrorCode.InvalidInput,
      `${where}: initialDelayMs (${options.initialDelayMs}) must not exceed maxDelayMs (${options.maxDelayMs})`,
    );
  }
  return options;
}

/**
 * The `terminalRetry: { … }` option of a component that re-sends terminal events (the server), checked
 * by the rules of {@link TerminalRetryTracker} without building one.
 */
export const TERMINAL_RETRY_OPTION: OptionSpec<Resolved<TerminalRetryOptions>> = /* @__PURE__ */ refine(
  /* @__PURE__ */ nested(TERMINAL_RETRY_OPTIONS),
  inOrder,
);

function delayFor(attempt: number, options: Resolved<TerminalRetryOptions>, firstDelayMs?: number): number {
  const first = Math.max(options.initialDelayMs, firstDelayMs ?? 0);
  // multiplier ** (attempt - 1) may overflow to Infinity; min() then yields the cap.
  return Math.min(options.maxDelayMs, first * options.multiplier ** (attempt - 1));
}

/**
 * The delay before re-send number `attempt` (1 = the first re-send):
 * `min(maxDelayMs, initialDelayMs * multiplier ** (attempt - 1))`, so 100, 200, 400 … 5000 ms with the
 * defaults.
 *
 * @throws ProgressError `invalid_input` when `attempt` is not an integer >= 1 or the options are invalid.
 */
export function terminalRetryDelayMs(attempt: number, options?: TerminalRetryOptions): number {
  requireNumber('terminalRetryDelayMs: attempt', attempt, { min: 1, integer: true });
  return delayFor(attempt, resolveTerminalRetryOptions(options));
}

/** A terminal event whose re-send is due, as returned by {@link TerminalRetryTracker.due}. */
export interface DueTerminalRetry {
  taskId: string;
  /** The terminal event's seq. */
  seq: number;
  /** Which re-send this is: 1 for the first re-send after the original send. */
  attempt: number;
}

interface PendingTerminal {
  seq: number;
  /** When it was first sent: the round-trip sample its ack gives. */
  firstSentAt: number;
  /** The re-send that comes next (1 after the original send). */
  attempt: number;
  dueAt: number;
  /** Tie-breaker so entries due at the same millisecond come out in the order they were first sent. */
  order: number;
}

/**
 * The server's record, for one socket, of the terminal events it sent and the client has not yet
 * acknowledged. Pure bookkeeping: the caller keeps one timer at {@link nextDueAt}, and when it fires
 * re-sends each entry of {@link due} and reports it with {@link sent}. Drop the tracker when the
 * connection closes.
 *
 * @example
 * ```ts
 * const retries = new TerminalRetryTracker(Date.now);
 * send(terminalEvent);
 * retries.sent(event.taskId, event.seq);
 * // on an ack frame:
 * retries.acked(frame.taskId, frame.seq);
 * // when the timer set for retries.nextDueAt() fires:
 * for (const { taskId, seq } of retries.due()) {
 *   send(await store.event(taskId, seq));
 *   retries.sent(taskId, seq);
 * }
 * ```
 */
export class TerminalRetryTracker {
  readonly #clock: Clock;
  readonly #options: Resolved<TerminalRetryOptions>;
  readonly #pool: RoundTripPool | undefined;
  /** This socket's own round trips (with a pool only). */
  readonly #own: RoundTripEstimate | undefined;
  /** Whose vote this socket's timeout is in the pool (its principal). */
  readonly #voter: (() => string) | undefined;
  /** The principal this socket voted as, once it did. */
  #votedAs: string | undefined;
  /** {@link close} was called: an ack arriving after it no longer votes. */
  #closed = false;
  readonly #pending = new Map<string, PendingTerminal>();
  // Highest cumulative ack seen per task, so a send reported after its ack does not re-arm a retry.
  readonly #ackedSeq = new Map<string, number>();
  #order = 0;

  /**
   * @param clock - the time source.
   * @param options - merged over {@link TERMINAL_RETRY_DEFAULTS} and validated here.
   * @param roundTrips - the server-wide pool: each acknowledged event's time from first send to ack feeds
   *   this tracker's own estimate, whose timeout is this tracker's vote in the pool; the first re-send's
   *   delay is that timeout (the pool's before the first ack) when longer than `initialDelayMs`. Shared by
   *   the trackers of a server; call {@link close} when the socket closes.
   * @param voter - whose vote in `roundTrips` this socket's timeout is (its principal's id, known by the
   *   time it acks); its sockets share one vote.
   * @throws ProgressError `invalid_input` for invalid options.
   */
  constructor(
    clock: Clock,
    options?: TerminalRetryOptions,
    roundTrips?: RoundTripPool,
    voter?: () => string,
  ) {
    if (typeof clock !== 'function') {
      throw new ProgressError(ErrorCode.InvalidInput, 'TerminalRetryTracker: clock must be a function');
    }
    this.#clock = clock;
    this.#options = resolveTerminalRetryOptions(options);
    this.#pool = roundTrips;
    this.#own = roundTrips === undefined ? undefined : new RoundTripEstimate();
    this.#voter = voter;
  }

  /** The round-trip timeout the first re-send waits at least (0: none learnt). */
  #roundTripMs(): number {
    if (this.#own?.sampled) return this.#own.timeoutMs;
    return this.#pool?.timeoutMs ?? 0;
  }

  /** Number of terminal events awaiting an acknowledgement. */
  get size(): number {
    return this.#pending.size;
  }

  /**
   * The terminal event `seq` of `taskId` was sent (or re-sent) just now: schedule the next re-send.
   * A repeated call for the same seq counts as the next attempt; a call with a higher seq replaces the
   * entry; a lower seq, or a seq already acknowledged, is ignored.
   *
   * @throws ProgressError `invalid_input` when `seq` is not an integer >= 1.
   */
  sent(taskId: string, seq: number): void {
    requireNumber('TerminalRetryTracker.sent: seq', seq, { min: 1, integer: true });
    if (seq <= (this.#ackedSeq.get(taskId) ?? 0)) return;
    const now = this.#clock();
    const existing = this.#pending.get(taskId);
    if (existing !== undefined && seq < existing.seq) return;
    if (existing !== undefined && seq === existing.seq) {
      existing.attempt += 1;
      existing.dueAt = now + delayFor(existing.attempt, this.#options, this.#roundTripMs());
      return;
    }
    this.#pending.set(taskId, {
      seq,
      firstSentAt: now,
      attempt: 1,
      dueAt: now + delayFor(1, this.#options, this.#roundTripMs()),
      order: this.#order++,
    });
  }

  /**
   * The client acknowledged every event of `taskId` up to `seq` (cumulative): a pending terminal event
   * with seq <= `seq` needs no more re-sends.
   */
  acked(taskId: string, seq: number): void {
    if (!Number.isFinite(seq)) return;
    if (seq > (this.#ackedSeq.get(taskId) ?? 0)) this.#ackedSeq.set(taskId, seq);
    const entry = this.#pending.get(taskId);
    if (entry !== undefined && seq >= entry.seq) {
      this.#pending.delete(taskId);
      const own = this.#own;
      if (own !== undefined) {
        own.sample(this.#clock() - entry.firstSentAt);
        if (own.sampled && !this.#closed && this.#voter !== undefined) {
          const joins = this.#votedAs === undefined;
          this.#votedAs ??= this.#voter();
          this.#pool?.vote(this.#votedAs, RoundTripPool.bucketOf(own.timeoutMs), joins);
        }
      }
    }
  }

  /** The socket closed: withdraw its vote from the pool (idempotent). */
  close(): void {
    if (this.#votedAs !== undefined && !this.#closed) this.#pool?.leave(this.#votedAs);
    this.#closed = true;
  }

  /** Stop tracking `taskId` (the socket unsubscribed from it). */
  forget(taskId: string): void {
    this.#pending.delete(taskId);
    this.#ackedSeq.delete(taskId);
  }

  /**
   * The entries whose re-send time has come, earliest due first. Does not change anything: report each
   * re-send with {@link sent}, otherwise the entry stays due.
   */
  due(): DueTerminalRetry[] {
    const now = this.#clock();
    const ready: Array<[string, PendingTerminal]> = [];
    for (const entry of this.#pending) {
      if (entry[1].dueAt <= now) ready.push(entry);
    }
    ready.sort(([, a], [, b]) => a.dueAt - b.dueAt || a.order - b.order);
    return ready.map(([taskId, { seq, attempt }]) => ({ taskId, seq, attempt }));
  }

  /** When the earliest re-send is due (epoch ms), or `undefined` when nothing is pending. */
  nextDueAt(): number | undefined {
    let next: number | undefined;
    for (const entry of this.#pending.values()) {
      if (next === undefined || entry.dueAt < next) next = entry.dueAt;
    }
    return next;
  }
}
