/**
 * The logging hook. Finishline never writes to the console; it hands structured records to a logger the
 * caller supplies. The shape is pino's (`logger.info(obj, msg)`), so a pino logger, or a child of one,
 * fits as is; any object with these four methods does.
 *
 * @module
 */

/** One log method: a structured object first (pino style), then a human-readable message. */
export type LogMethod = (obj: Record<string, unknown>, msg?: string) => void;

/**
 * A pino-compatible logger: `{ debug, info, warn, error }`, each called as `(obj, msg)`.
 *
 * @example
 * ```ts
 * import pino from 'pino';
 * const server = new ProgressServer({ store, authenticate, server: httpServer, logger: pino() });
 * ```
 */
export interface ProgressLogger {
  debug: LogMethod;
  info: LogMethod;
  warn: LogMethod;
  error: LogMethod;
}

const noop: LogMethod = () => {};
const ignore = (): void => {};

/** The default logger: drops everything. */
export const silentLogger: ProgressLogger = Object.freeze({
  debug: noop,
  info: noop,
  warn: noop,
  error: noop,
});

/**
 * Wraps a caller's logger so that a logger which throws, or returns a promise that rejects, can never break
 * delivery (a log call sits in every error path, where a second exception would escape the guard around
 * it).
 */
export function guardLogger(logger: ProgressLogger): ProgressLogger {
  const wrap =
    (method: LogMethod): LogMethod =>
    (obj, msg) => {
      try {
        const result: unknown = method.call(logger, obj, msg);
        // An async logger (one shipping lines over the network, say) fails by rejecting: left unhandled,
        // the rejection ended the process (Node's default), at the first warning of a healthy server.
        if (result !== undefined && typeof (result as PromiseLike<unknown>).then === 'function') {
          (result as PromiseLike<unknown>).then(undefined, ignore);
        }
      } catch {
        // A broken logger loses the line; it must not take the socket or the batch with it.
      }
    };
  return {
    debug: wrap(logger.debug),
    info: wrap(logger.info),
    warn: wrap(logger.warn),
    error: wrap(logger.error),
  };
}

/**
 * `logger`, silenced for good by `end()`. A server's `close()` ends its logger as it resolves: work of the
 * server still out at the deadline (a store call that answers later: an interrupt, an ack, a reap) logged
 * its outcome after `close()` had resolved, after "progress server closed", when the application may have
 * flushed and ended its logger already (pino's final flush, a test's logger checked).
 */
export function endableLogger(logger: ProgressLogger): { logger: ProgressLogger; end(): void } {
  let ended = false;
  const gate =
    (method: LogMethod): LogMethod =>
    (obj, msg) => {
      if (!ended) method(obj, msg);
    };
  return {
    logger: {
      debug: gate(logger.debug),
      info: gate(logger.info),
      warn: gate(logger.warn),
      error: gate(logger.error),
    },
    end: () => {
      ended = true;
    },
  };
}

/**
 * A loggable summary of an unknown thrown value (errors keep their code and message, not the object). Never
 * throws: it runs in error paths, after an application hook failed, where a second exception escaped the
 * guard around it. A value without a string form (`Object.create(null)`, a throwing `toString` or `message`
 * getter) thrown by an `authenticate` hook made the upgrade's error handler throw in turn: the upgrade went
 * unanswered, and the rejection left unhandled ended the process.
 */
export function describeError(error: unknown): Record<string, unknown> {
  try {
    if (error instanceof Error) {
      const code = (error as { code?: unknown }).code;
      return { name: error.name, message: error.message, ...(code === undefined ? {} : { code }) };
    }
    return { message: String(error) };
  } catch {
    return { message: 'a thrown value without a string form' };
  }
}
