import type { TaskEvent, TaskView } from '@finishline/core';
import { ERROR_CODES, ErrorCode, ProgressError } from '@finishline/core';
import { decodeServerFrame } from '@finishline/core/internal';
import type { FetchLike, HttpCredentials, TokenSource } from './options.js';

/**
 * The client side of the server's HTTP API, used when the socket cannot deliver: by the 100% watchdog's
 * last step, and while the socket cannot connect at all.
 *
 * - `GET {httpUrl}/tasks/:id` → `200 { "task": TaskView }`
 * - `GET {httpUrl}/tasks/:id/events?afterSeq=N` → `200 { "events": TaskEvent[] }` (seq order, a page)
 * - errors: `{ "error": { "code", "message" } }` with the status of `docs/errors.md`
 *
 * Bodies are validated with the protocol's frame schemas, so HTTP data is exactly as trusted as socket
 * data.
 *
 * @internal
 * @module
 */

/** What {@link HttpFallback} needs. @internal */
export interface HttpFallbackOptions {
  baseUrl: string;
  fetch: FetchLike | undefined;
  headers: Readonly<Record<string, string>>;
  token: TokenSource | undefined;
  credentials: HttpCredentials;
  signal: AbortSignal;
}

const STATUS_CODES: Readonly<Record<number, ErrorCode>> = {
  400: ErrorCode.InvalidInput,
  401: ErrorCode.Unauthenticated,
  403: ErrorCode.Forbidden,
  404: ErrorCode.TaskNotFound,
  429: ErrorCode.RateLimited,
  503: ErrorCode.StoreUnavailable,
};

/** @internal */
export class HttpFallback {
  readonly #options: HttpFallbackOptions;

  constructor(options: HttpFallbackOptions) {
    this.#options = options;
  }

  /** The task's snapshot. */
  async getTask(taskId: string): Promise<TaskView> {
    const body = await this.#get(taskId, `/tasks/${encodeURIComponent(taskId)}`);
    const task = readField(body, 'task');
    const decoded = decodeServerFrame(JSON.stringify({ type: 'snapshot', task }));
    if (!decoded.ok) throw badBody(taskId, decoded.error);
    if (decoded.frame.type !== 'snapshot' || decoded.frame.task.id !== taskId) throw badBody(taskId);
    return decoded.frame.task;
  }

  /** One page of the task's events after `afterSeq`, in seq order. */
  async getEvents(taskId: string, afterSeq: number): Promise<TaskEvent[]> {
    const body = await this.#get(taskId, `/tasks/${encodeURIComponent(taskId)}/events?afterSeq=${afterSeq}`);
    const events = readField(body, 'events');
    if (!Array.isArray(events)) throw badBody(taskId);
    return events.map((event: unknown) => {
      const decoded = decodeServerFrame(JSON.stringify({ type: 'event', event }));
      if (!decoded.ok) throw badBody(taskId, decoded.error);
      if (decoded.frame.type !== 'event' || decoded.frame.event.taskId !== taskId) throw badBody(taskId);
      return decoded.frame.event;
    });
  }

  async #get(taskId: string, path: string): Promise<unknown> {
    const { fetch, token } = this.#options;
    if (fetch === undefined) {
      throw new ProgressError(ErrorCode.InvalidInput, 'HTTP fallback needs fetch: pass the `fetch` option', {
        taskId,
      });
    }
    const headers: Record<string, string> = { accept: 'application/json', ...this.#options.headers };
    const credential = typeof token === 'function' ? await token() : token;
    if (credential !== undefined) headers.authorization = `Bearer ${credential}`;
    let status = 0;
    let text: string;
    try {
      const response = await fetch(this.#options.baseUrl + path, {
        method: 'GET',
        headers,
        credentials: this.#options.credentials,
        signal: this.#options.signal,
      });
      status = response.status;
      text = await response.text();
      if (response.ok) return JSON.parse(text);
    } catch (cause) {
      throw new ProgressError(
        this.#options.signal.aborted ? ErrorCode.Closed : ErrorCode.StoreUnavailable,
        `HTTP request for task ${taskId} failed${status === 0 ? '' : ` (status ${status})`}`,
        { cause, taskId },
      );
    }
    throw errorFromResponse(taskId, status, text);
  }
}

function readField(body: unknown, name: string): unknown {
  return typeof body === 'object' && body !== null ? (body as Record<string, unknown>)[name] : undefined;
}

function badBody(taskId: string, cause?: unknown): ProgressError {
  return new ProgressError(ErrorCode.InvalidFrame, `HTTP response for task ${taskId} is not valid`, {
    cause,
    taskId,
  });
}

/** The error an HTTP error response stands for: the body's code when it is one of ours, else by status. */
function errorFromResponse(taskId: string, status: number, text: string): ProgressError {
  let code: ErrorCode = STATUS_CODES[status] ?? ErrorCode.Internal;
  let message = `HTTP ${status} for task ${taskId}`;
  try {
    const error = readField(JSON.parse(text), 'error') as { code?: unknown; message?: unknown } | undefined;
    if ((ERROR_CODES as readonly unknown[]).includes(error?.code)) code = error?.code as ErrorCode;
    if (typeof error?.message === 'string') message = error.message.slice(0, 500);
  } catch {
    // Not JSON (a proxy's error page): the status says enough.
  }
  return new ProgressError(code, message, { taskId });
}
