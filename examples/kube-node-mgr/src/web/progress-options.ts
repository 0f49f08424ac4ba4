/** The options of the page's progress client (src/web/connection.ts), apart from the DOM so a test can use them. */
import type { FetchLike, ProgressClientOptions } from '@finishline/client';
import { httpFallback } from '@finishline/client/http';
import { sessionCursorStorage } from '@finishline/client/persist';
import { sessionMismatch } from './session.js';
import { signedIn, state } from './state.js';

/**
 * The client's HTTP requests with the session's CSRF token. The server asks it on every `POST /progress/*`,
 * and the HTTP fallback acknowledges a watch's end with `POST /progress/tasks/:id/ack`: without the token
 * every such ack got 403, so a page without a socket (a proxy that refuses upgrades) never recorded what it
 * saw. Those routes are not let through without it instead: `/progress/*` also takes the cancel, which a
 * request from another site must never make. Read at each request, not given as the `headers` option: the
 * client is made before the sign-in (and again at each session end), and the token is the session's.
 */
const withCsrfToken: FetchLike = async (url, init) => {
  const response = await fetch(url, {
    ...init,
    headers: { ...init.headers, 'x-csrf-token': state.csrfToken },
  });
  // Refused for its token: another tab signed in and the cookie names its session. The page takes that
  // session as api.ts does for a POST refused so; until then this client's acks got 403 `csrf` without a word
  // until the tab was shown again. Taking it makes a new client, whose watches acknowledge with the new token.
  if (response.status === 403 && signedIn() && (await refusedForToken(response))) sessionMismatch();
  return response;
};

/** Whether a 403 is the app's `csrf` refusal (read from a copy: the client reads the answer itself). */
const refusedForToken = (response: Response): Promise<boolean> =>
  response
    .clone()
    .json()
    .then(
      (body: { error?: { code?: unknown } } | null) => body?.error?.code === 'csrf',
      () => false,
    );

/**
 * The session cookie authenticates the socket; the sessionStorage persistence saves the cursor with each ack,
 * so a reload resumes from where this page was instead of starting over.
 * Reconnect attempts back off to 5 s at most (the library's default is 30 s): an operator watching a server
 * restart should see the page come back within seconds.
 * The HTTP fallback polls while no socket opens (a proxy that refuses upgrades).
 */
export function progressClientOptions(url: string): ProgressClientOptions {
  return {
    url,
    persistence: sessionCursorStorage(),
    httpFallback: httpFallback(),
    fetch: withCsrfToken,
    reconnect: { maxDelayMs: 5000 },
  };
}
