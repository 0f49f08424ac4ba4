import { describe, expect, expectTypeOf, it } from 'vitest';
import { ErrorCode } from './codes.js';
import { isProgressError, ProgressError } from './progress-error.js';

describe('ProgressError', () => {
  it('is told apart from other errors, by code too', () => {
    const error = new ProgressError(ErrorCode.TaskFinished, 'ended', { taskId: 't1' });
    expect(isProgressError(error)).toBe(true);
    expect(isProgressError(error, ErrorCode.TaskFinished)).toBe(true);
    expect(isProgressError(error, ErrorCode.Closed)).toBe(false);
    expect(isProgressError(new Error('plain'))).toBe(false);
    expect(isProgressError({ code: ErrorCode.TaskFinished, message: 'lookalike' })).toBe(false);
    expect(isProgressError(null)).toBe(false);
    expect(isProgressError(Object.create(null))).toBe(false);
  });

  it('is recognised when it comes from another copy of the package (CommonJS beside ESM)', async () => {
    // An app that both imports and requires the packages (or depends on two installed copies) runs two
    // copies of this module: `instanceof` alone told the other copy's errors apart, and
    // `isProgressError(error, ErrorCode.TaskFinished)` was false for a store's `task_finished`.
    // A query makes the module loader evaluate the file again, as a second copy.
    const other = (await import(
      // @ts-expect-error: the query is the loader's, not a file
      './progress-error.js?another-copy'
    )) as typeof import('./progress-error.js');
    expect(other.ProgressError).not.toBe(ProgressError);
    const foreign = new other.ProgressError(ErrorCode.TaskFinished, 'ended elsewhere');
    expect(isProgressError(foreign, ErrorCode.TaskFinished)).toBe(true);
    expect(other.isProgressError(new ProgressError(ErrorCode.Closed, 'closed'), ErrorCode.Closed)).toBe(true);
    expect(isProgressError(new Error('plain'))).toBe(false);
  });

  // Type-level: checked by `npm run typecheck` (tsc reads the test files); at run time the calls are no-ops.
  it('narrows `code` to the code asked for, and keeps other ProgressErrors in the else branch', () => {
    class OtherError extends Error {
      readonly other = true;
    }
    const caught = new ProgressError(ErrorCode.RateLimited, 'slow down') as ProgressError | OtherError;
    if (isProgressError(caught, ErrorCode.RateLimited)) {
      expectTypeOf(caught.code).toEqualTypeOf<'rate_limited'>();
    } else {
      // A ProgressError of another code lands here: the else branch must not claim it is an OtherError.
      expectTypeOf(caught).toEqualTypeOf<ProgressError | OtherError>();
    }
    if (isProgressError(caught)) expectTypeOf(caught.code).toEqualTypeOf<ErrorCode>();
    else expectTypeOf(caught).toEqualTypeOf<OtherError>();
    const unknownError: unknown = caught;
    if (isProgressError(unknownError, ErrorCode.Closed)) {
      expectTypeOf(unknownError).toExtend<ProgressError>();
      expectTypeOf(unknownError.code).toEqualTypeOf<'closed'>();
    }
  });
});
