/**
 * The store's `onError`, made safe to call from where nothing could catch what it throws.
 *
 * @module
 */
import { describeThrown, guardHook } from '@finishline/core/internal';

/** The `code` of the process warning that says the store's `onError` threw. */
export const ON_ERROR_THREW_WARNING = 'FINISHLINE_SQLITE_ON_ERROR_THREW';

/**
 * Wraps the caller's `onError` so that what it throws goes nowhere further. The store reports from timers
 * (the `data_version` poll), a worker thread's listeners (background checkpoints) and its change feed's
 * publishing, where a throw became an uncaught exception that ended the caller's process: a logging hook
 * that fails must not take the server down. The first throw is told once, as a process warning (Node
 * prints it to stderr; `process.on('warning')` receives it, `code` {@link ON_ERROR_THREW_WARNING}), with
 * the error it was reporting; later ones of the same store are dropped, so a broken logger cannot flood.
 */
export function guardOnError(onError: (error: unknown) => void): (error: unknown) => void {
  return guardHook(onError, (thrown, error) =>
    process.emitWarning(
      `@finishline/sqlite: the store's onError threw (${describeThrown(thrown)}) while reporting: ${describeThrown(
        error,
      )}. Later throws of this store's onError are ignored.`,
      { type: 'FinishlineWarning', code: ON_ERROR_THREW_WARNING },
    ),
  );
}
