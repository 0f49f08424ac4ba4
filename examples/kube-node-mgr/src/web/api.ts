/** The page's one way to call the server: every answer handled, JSON or not. */
import { endSession, sessionMismatch } from './session.js';
import { signedIn, state } from './state.js';

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    /**
     * The error body's other fields (`taskId`, `locks`, …) and the answer's `Retry-After` in ms, when it had
     * one in seconds.
     */
    readonly more: { fields?: Record<string, unknown>; retryAfterMs?: number } = {},
  ) {
    super(message);
  }
}

/**
 * Calls the API. Every answer is handled, JSON or not: a proxy's `502 bad gateway` in plain text becomes
 * "the server is unavailable (HTTP 502: bad gateway)", never a JSON parse error. A 401 while signed in ends
 * the session on the page ({@link endSession}) before the error is thrown.
 */
export async function api<T>(
  path: string,
  init: { method?: string; body?: unknown; headers?: Record<string, string> } = {},
): Promise<T> {
  let response: Response;
  try {
    response = await fetch(path, {
      method: init.method ?? 'GET',
      credentials: 'same-origin',
      // Past the HTTP cache: Chromium lets one request per URL through its cache at a time (the cache lock),
      // so overlapping reads of the node table queued one behind the other, each waiting for the cluster's
      // list, and the read asked last reached the server only once the earlier ones had answered, showing
      // the state of seconds later than asked (a cancelled batch's held nodes shown free, once released).
      cache: 'no-store',
      headers: {
        ...init.headers,
        ...(init.body === undefined
          ? {}
          : { 'content-type': 'application/json', 'x-csrf-token': state.csrfToken }),
      },
      ...(init.body === undefined ? {} : { body: JSON.stringify(init.body) }),
    });
  } catch {
    throw new ApiError(0, 'network', 'the server cannot be reached (network error); try again');
  }
  const text = await response.text().catch(() => '');
  let body: unknown;
  try {
    body = text === '' ? {} : JSON.parse(text);
  } catch {
    body = undefined;
  }
  if (!response.ok) {
    if (response.status === 401 && signedIn()) endSession();
    const error = (body as { error?: { code?: unknown; message?: unknown } } | undefined)?.error;
    const retryAfter = response.headers.get('retry-after');
    const retryAfterS = retryAfter ? Number(retryAfter) : Number.NaN;
    const retryAfterMs = Number.isFinite(retryAfterS) && retryAfterS >= 0 ? retryAfterS * 1000 : undefined;
    // The page's token is not the cookie's session's: another tab signed in since (main.ts takes that session).
    if (response.status === 403 && error?.code === 'csrf' && signedIn()) sessionMismatch();
    if (typeof error?.message === 'string') {
      throw new ApiError(response.status, String(error.code ?? 'error'), error.message, {
        fields: error as Record<string, unknown>,
        ...(retryAfterMs === undefined ? {} : { retryAfterMs }),
      });
    }
    const snippet = text.replace(/\s+/g, ' ').trim().slice(0, 80);
    const what = response.status >= 500 ? 'the server is unavailable' : 'the request was refused';
    throw new ApiError(
      response.status,
      'http',
      `${what} (HTTP ${response.status}${snippet ? `: ${snippet}` : ''}); try again`,
    );
  }
  if (body === undefined) throw new ApiError(response.status, 'http', 'the server sent an unreadable answer');
  return body as T;
}
