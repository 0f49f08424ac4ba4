import { ERROR_CODES, ErrorCode, ProgressError } from '@finishline/core';
import { BACKOFF_DEFAULTS, resolvedBackoffDelayMs } from '@finishline/core/internal';

/**
 * What an HTTP error response of the server's API means to the client, shared by the HTTP fallback and the
 * SSE transport (a refused stream is answered like a refused request).
 *
 * @internal
 * @module
 */

const STATUS_CODES: Readonly<Record<number, ErrorCode>> = {
  // A 200 that is not the server's answer (a captive portal's page for an event stream): the server is out
  // of reach, as HTTP polling reports such a page.
  200: ErrorCode.StoreUnavailable,
  400: ErrorCode.InvalidInput,
  401: ErrorCode.Unauthenticated,
  403: ErrorCode.Forbidden,
  404: ErrorCode.TaskNotFound,
  429: ErrorCode.RateLimited,
  503: ErrorCode.StoreUnavailable,
};

/**
 * `body[name]` when `body` is an object; `undefined` for `null` and `undefined`, and for what else JSON
 * parses to (a string, a number, a boolean), which has none of the names read here.
 */
export function readField(body: unknown, name: string): unknown {
  return (body as Record<string, unknown> | undefined)?.[name];
}

/**
 * The error an HTTP error response stands for: the body's code when it is one of ours, else by status (a
 * body that is not JSON, or `undefined`: none was read).
 */
export function errorFromResponse(taskId: string, status: number, text?: string): ProgressError {
  let code: ErrorCode = STATUS_CODES[status] ?? ErrorCode.Internal;
  let message = `HTTP ${status} for task ${taskId}`;
  try {
    // (`?.`: `null` and what else JSON parses to, a string or a number, have no `error`; see `readField`.)
    const error = JSON.parse(text as string)?.error as { code?: unknown; message?: unknown } | undefined;
    if ((ERROR_CODES as readonly unknown[]).includes(error?.code)) code = error?.code as ErrorCode;
    if (typeof error?.message === 'string') message = error.message.slice(0, 500);
  } catch {
    // Not JSON (a proxy's error page): the status says enough.
  }
  return new ProgressError(code, message, { taskId });
}

/**
 * The wait before asking again after `failures` requests in a row failed (0 for the first): the interval,
 * then a full-jitter step growing from it, so a server that refuses for now (out of store, over a cap) is
 * not asked as often by every watch of every page. The SSE transport's, and the HTTP fallback's polls'.
 */
export function retryDelayMs(failures: number, intervalMs: number, random: () => number): number {
  return (
    intervalMs +
    resolvedBackoffDelayMs(
      failures,
      {
        initialDelayMs: intervalMs,
        // Its ceiling while the server keeps refusing (or HTTP keeps failing): 30 s, or the interval. (A
        // literal: a module constant costs bytes in the bundle, where esbuild keeps it a variable.)
        maxDelayMs: Math.max(intervalMs, 30_000),
        multiplier: BACKOFF_DEFAULTS.multiplier,
      },
      random,
    )
  );
}
