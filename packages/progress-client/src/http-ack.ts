import { credentialOf, tokenProviderFailed } from './connection.js';
import { retryDelayMs } from './http-errors.js';
import { MAX_DELAY_MS, type TimerSet } from './timers.js';
import type { FallbackOptions, HttpCredentials } from './transport-types.js';

/**
 * A request about one task to the server's HTTP API, and the terminal ack sent with it: shared by the SSE
 * transport (its streams and their acks) and HTTP polling (its acks), so both acknowledge an end alike.
 *
 * @internal
 * @module
 */

/** The `fetch` call a task request makes: the SSE transport's own `fetch`, or the client's. @internal */
export type TaskFetch<R> = (
  url: string,
  init: {
    method: 'GET' | 'POST';
    headers: Record<string, string>;
    credentials: HttpCredentials;
    signal: AbortSignal;
    body?: string;
  },
) => Promise<R>;

/**
 * `{httpUrl}/tasks/:id/{tail}`, with the client's `headers`, `token` (a fresh one from its function) and
 * `httpCredentials`; `init.headers` are added to the client's.
 */
export async function taskRequest<R>(
  o: FallbackOptions,
  fetch: TaskFetch<R>,
  taskId: string,
  tail: string,
  init: { method: 'GET' | 'POST'; headers: Record<string, string>; signal: AbortSignal; body?: string },
): Promise<R> {
  let credential = o.token;
  // What is no credential fails as a throw (see `credentialOf`), not a request the server refuses with 401;
  // thrown as the socket reports it (`unauthenticated`, with the failure as its `cause`), for the stream.
  if (typeof credential === 'function')
    try {
      credential = credentialOf(await credential());
    } catch (cause) {
      throw tokenProviderFailed(cause);
    }
  return fetch(`${o.httpUrl}/tasks/${encodeURIComponent(taskId)}/${tail}`, {
    ...init,
    headers: {
      ...o.headers,
      ...(credential !== undefined && { authorization: `Bearer ${credential}` }),
      ...init.headers,
    },
    credentials: o.httpCredentials,
  });
}

/** The response headers, where `fetch` gives them. */
type ContentHeaders = { get(name: string): string | null };

/**
 * Acknowledges `seq` of a task over HTTP (`POST {httpUrl}/tasks/:id/ack`, cumulative) with `fetch` (none
 * without one): the end of a watch followed over an SSE stream or HTTP polling. Asked again with the
 * streams' backoff until the server answers it (a 4xx is an answer: the task is gone, or the seq is not
 * its), not after a failure (5xx, a proxy's 502, no answer at all): the server re-sends a terminal frame on
 * a socket until acknowledged, but has nothing to re-send here, so an ack lost to a proxy's 502 (its
 * replica died under it) left the task's acked seq below its end. At most 8 times (a minute or two
 * of backoff: a server down longer does not get one request per finished watch for the page's life), and
 * none after the client closed (its timers start nothing then). Each is given `connectTimeoutMs` to be
 * answered, then aborted and taken for a failure: an ack a proxy held (no answer, no error) was never
 * settled, so never sent again. A 403 (the principal may no longer see the task) tells the watch nothing:
 * the ack goes only once the watch has its end and the client has let go of it (its handles closed with
 * their final state), and a handle emits nothing after `finished`; a socket's `forbidden` about a
 * finished watch ends it as quietly.
 */
export function sendAck(
  o: FallbackOptions,
  timers: TimerSet,
  fetch: TaskFetch<{ status?: number; headers?: ContentHeaders }> | undefined,
  taskId: string,
  seq: number,
): void {
  const send = (failures: number): unknown => {
    if (!fetch) return;
    const abort = new AbortController();
    const settle = (answered?: boolean) => {
      // (Once: the deadline, called with nothing, or the answer.)
      if (abort.signal.aborted) return;
      o.timers.clearTimeout(deadline);
      // Answered too: the connection is let go, its body unread.
      abort.abort();
      // Sent again 7 times at most, 8 in all. (A literal: a module constant costs bytes in the bundle, where esbuild
      // keeps it a variable.)
      if (!answered && failures < 7)
        timers.start(() => send(failures + 1), retryDelayMs(failures, o.httpPollIntervalMs, o.random));
    };
    // Settled here, not only aborted: an ack still waiting on the token function has no `fetch` the abort
    // could end. On the timer functions, not the client's timers: close() clears those, and an ack out
    // when the client closed, held by the server or a proxy, was never given up on (nor a Node process
    // with its socket, for undici's 300 s).
    // At most 2^31 - 1 ms: the timer functions fire a longer delay at once (every ack aborted as it went out).
    const deadline = o.timers.setTimeout(settle, Math.min(o.connectTimeoutMs, MAX_DELAY_MS));
    taskRequest(o, fetch, taskId, 'ack', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ seq }),
      signal: abort.signal,
    })
      // (429 is no answer either: the principal's shared rate budget ran out, retry-after 1 s. Taken for
      // one, the acks of a page whose many watches ended together were lost past the budget. Nor is 401:
      // a credential that expired as the task ended, `token_expired`, took the ack with it until
      // 6 December 2026; the next one goes with a fresh token from the token function.)
      // Nor is an answer that is not JSON, as every answer of the server's is (protocol.md, HTTP API): a
      // captive portal's HTML page, 200, was taken for the ack until 7 December 2026, and the ack lost.
      .then(({ status = 0, headers }) =>
        settle(
          status < 500 &&
            status !== 429 &&
            status !== 401 &&
            headers?.get('content-type')?.includes('json') !== false,
        ),
      )
      // A `fetch` of the application's answering no response (`undefined`) is no answer either: read in
      // the first callback, it threw there, past the second, and ended a Node process (unhandled rejection).
      .catch(() => settle());
  };
  send(0);
}
