import type { Clock } from '../clock.js';
import { systemClock } from '../clock.js';
import { ErrorCode } from '../codes.js';
import { LIMITS } from '../limits.js';
import type { OptionSpec } from '../options.js';
import { func } from '../options.js';
import { ProgressError } from '../progress-error.js';

/**
 * The `clock` option of a store, read in whole milliseconds.
 *
 * @module
 */

/**
 * `clock` as a store reads it: whole milliseconds. Every time a store keeps (`createdAt`, event `time`,
 * lease expiry, `finishedAt`) must be an integer: frames accept only integers (a fractional `createdAt`
 * made every snapshot of the task an invalid frame for clients), a run fence is a `createdAt` and must be
 * an integer, and Postgres refuses a fraction in a `bigint` column. A clock with sub-millisecond precision
 * (`() => performance.timeOrigin + performance.now()`) is therefore rounded down, and one that returns no
 * time at all (`NaN`, a negative number, a string) or throws is refused with `internal` (the thrown error
 * as its `cause`) on the call that read it.
 *
 * @param where - names the option in the error, for example `MemoryProgressStore: clock`.
 */
export function wholeMillisecondClock(clock: Clock, where: string): Clock {
  return () => {
    let now: number;
    try {
      now = clock();
    } catch (error) {
      // Like a clock that returns no time: the store's failure, not the call's input. Bare, it reached
      // the caller without a code (and a server answered it as an unknown error).
      throw new ProgressError(
        ErrorCode.Internal,
        `${where} threw${error instanceof Error && typeof error.message === 'string' ? `: ${error.message}` : ''}`,
        { cause: error },
      );
    }
    if (Number.isSafeInteger(now) && now >= 0) return now;
    if (typeof now === 'number' && now >= 0 && now <= LIMITS.maxCount) return Math.floor(now);
    throw new ProgressError(
      ErrorCode.Internal,
      `${where} returned ${String(now)}; a clock returns milliseconds since the Unix epoch`,
    );
  };
}

/**
 * The `clock` option of a store: a function (default {@link systemClock}), resolved to
 * {@link wholeMillisecondClock} of it.
 */
export function storeClockOption(): OptionSpec<Clock> {
  const spec = func<Clock>(systemClock);
  return {
    default: systemClock,
    read: (value, where) => wholeMillisecondClock(spec.read(value, where), where),
  };
}
