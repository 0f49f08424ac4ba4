import type { ErrorCode } from './codes.js';

/**
 * `ProgressError`, the one error class of Finishline, and its type guard.
 *
 * @module
 */

/**
 * The mark of a ProgressError, the same in every copy of the package: an app that both imports and
 * requires the packages (their ESM and CommonJS builds), or has two installed copies, runs two classes,
 * and `instanceof` one of them told the other's errors apart (a store's `task_finished` failed
 * `isProgressError(error, ErrorCode.TaskFinished)`). Test errors with {@link isProgressError}.
 */
const BRAND = Symbol.for('@finishline/core ProgressError');

/** Options for {@link ProgressError}. */
export interface ProgressErrorOptions {
  /** The error that caused this one, kept for logs. */
  cause?: unknown | undefined;
  /** The task the error is about, when there is one. */
  taskId?: string | undefined;
}

/**
 * The one error class of Finishline. `code` is stable and typed; `message` is for humans.
 *
 * @example
 * ```ts
 * try {
 *   await store.append(taskId, { type: 'progress', done: 3 });
 * } catch (error) {
 *   if (isProgressError(error, ErrorCode.TaskFinished)) return; // already ended: nothing to do
 *   throw error;
 * }
 * ```
 */
export class ProgressError extends Error {
  // Set in the constructor, not as a field: core's CommonJS build (tsup's sucrase pass) wraps a class with
  // a field initializer as `(_class = class …)`, and the class was named `_class` there: `console.log` of
  // one showed `_class [ProgressError]`, and pino logged its `type` as `_class`.
  declare readonly name: 'ProgressError';
  /** The mark {@link isProgressError} reads (see {@link BRAND}). @internal */
  get [BRAND](): true {
    return true;
  }
  readonly code: ErrorCode;
  readonly taskId: string | undefined;

  constructor(code: ErrorCode, message: string, options: ProgressErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'ProgressError';
    this.code = code;
    this.taskId = options.taskId;
  }
}

/**
 * True when `error` is a {@link ProgressError}, optionally with the given code.
 *
 * Given a code, it narrows `error.code` to that code; and since the guard names the code, a caught
 * `ProgressError | OtherError` stays that in the `else` branch (a ProgressError of another code lands there),
 * where a plain `error is ProgressError` claimed it could only be an `OtherError`.
 */
export function isProgressError<C extends ErrorCode = ErrorCode>(
  error: unknown,
  code?: C,
): error is ProgressError & { readonly code: C } {
  return (
    (error as { [BRAND]?: unknown } | null)?.[BRAND] === true &&
    (code === undefined || (error as ProgressError).code === code)
  );
}
