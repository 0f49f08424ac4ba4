/**
 * The `Clock` type every time-dependent part takes, and the real clock.
 *
 * @module
 */

/**
 * A source of the current time in milliseconds since the Unix epoch. Everything in Finishline that
 * depends on time takes one, so tests can drive time by hand instead of sleeping.
 */
export type Clock = () => number;

/** The real clock. */
export const systemClock: Clock = () => Date.now();
