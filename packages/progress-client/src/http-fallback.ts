import type { SnapshotFrame, TaskEvent } from '@finishline/core';
import { ErrorCode, ProgressError } from '@finishline/core';
import type { ApplyResult } from '@finishline/core/internal';
import { credentialOf, tokenProviderFailed } from './connection.js';
import { decodeServerText } from './frame-check.js';
import { sendAck } from './http-ack.js';
import { errorFromResponse, readField, retryDelayMs } from './http-errors.js';
import { FATAL_TASK_ERRORS, type TaskSubscription } from './task-subscription.js';
import { noop, Timeout, type TimerSet } from './timers.js';
import type { FallbackOptions, FetchLike, HttpCredentials, TokenSource } from './transport-types.js';

/**
 * `@finishline/client/http`: the client side of the server's HTTP API, used when the socket cannot
 * deliver: by the 100% watchdog's last step, and while the socket cannot connect at all. A separate
 * entry, so pages that do not want it do not load it: pass `httpFallback()` as the client's
 * `httpFallback` option.
 *
 * - `GET {httpUrl}/tasks/:id` → `200 { "task": TaskView, "epoch"? }`
 * - `GET {httpUrl}/tasks/:id/events?afterSeq=N` → `200 { "task": TaskView, "events": TaskEvent[], "epoch"? }`
 *   (seq order, a page)
 * - errors: `{ "error": { "code", "message" } }` with the status of `docs/errors.md`
 *
 * Bodies are validated with the protocol's frame schemas, so HTTP data is exactly as trusted as socket
 * data.
 *
 * @internal
 * @module
 */

/**
 * The errors `HttpApi` throws for its token function's failures: `unauthenticated` as the server's 401 is,
 * which closes the client, where these are polled again with backoff (see `catchUp`).
 */
const TOKEN_FAILURES = new WeakSet<ProgressError>();

/** What {@link HttpApi} needs. @internal */
export interface HttpApiOptions {
  baseUrl: string;
  fetch: FetchLike | undefined;
  headers: Readonly<Record<string, string>>;
  token: TokenSource | undefined;
  credentials: HttpCredentials;
  signal: AbortSignal;
  timers: TimerSet;
  /** How long one request, its token function's call included, may go unanswered (`connectTimeoutMs`). */
  timeoutMs: number;
}

/** @internal */
export class HttpApi {
  readonly #options: HttpApiOptions;
  /**
   * The deadlines of the requests in flight, given up on when the client closes: one listener on its
   * signal for them all, where one per request made Node warn of a leak past ten at once.
   */
  readonly #inFlight = new Set<() => void>();

  constructor(options: HttpApiOptions) {
    this.#options = options;
    options.signal.addEventListener('abort', () => {
      for (const abort of this.#inFlight) abort();
    });
  }

  /** The task's snapshot, as a snapshot frame with the store's epoch when the server states it. */
  async getTask(taskId: string): Promise<SnapshotFrame> {
    return snapshotOf(taskId, await this.#get(taskId, `/tasks/${encodeURIComponent(taskId)}`));
  }

  /**
   * One page of the task's events after `afterSeq`, in seq order, the task's snapshot as the server read it
   * before them (none from a server that does not send it), and its `hasMore` (false: the page reached that
   * snapshot's seq; none from a server that does not send it).
   */
  async getEvents(
    taskId: string,
    afterSeq: number,
  ): Promise<{ events: TaskEvent[]; snapshot: SnapshotFrame | undefined; hasMore: unknown }> {
    const body = await this.#get(taskId, `/tasks/${encodeURIComponent(taskId)}/events?afterSeq=${afterSeq}`);
    const events = readField(body, 'events');
    if (!Array.isArray(events)) throw badBody(taskId);
    return {
      events: events.map((event: unknown) => {
        const decoded = decodeServerText(JSON.stringify({ type: 'event', event }));
        if (!decoded.ok) throw badBody(taskId, decoded.error);
        if (decoded.frame.type !== 'event' || decoded.frame.event.taskId !== taskId) throw badBody(taskId);
        return decoded.frame.event;
      }),
      snapshot: readField(body, 'task') === undefined ? undefined : snapshotOf(taskId, body),
      hasMore: readField(body, 'hasMore'),
    };
  }

  async #get(taskId: string, path: string, renewed?: boolean): Promise<unknown> {
    const { fetch, token, signal, timeoutMs } = this.#options;
    // Closed before this request (from a listener, mid catch-up): the abort below would never fire, and the
    // disposed timers start no deadline, so the request went out and was never given up on.
    if (signal.aborted) throw new ProgressError(ErrorCode.Closed, 'ProgressClient was closed', { taskId });
    if (fetch === undefined) {
      throw new ProgressError(ErrorCode.InvalidInput, 'HTTP fallback needs fetch: pass the `fetch` option', {
        taskId,
      });
    }
    // A request nobody answers (a frozen replica, a proxy holding it) or a token function that never
    // returns kept its watch busy for good, skipped by every later poll: each request has `timeoutMs`,
    // as a socket has until `hello`, and is then given up on (aborted, and not waited for even by a
    // `fetch` that ignores its signal).
    const deadline = new AbortController();
    const abort = () => deadline.abort();
    // Given up on one turn later (a 0 ms timer), after what has arrived is read: after the client's own
    // stall past the deadline (an app's synchronous task, a GC pause) this timer ran before the answer
    // that came meanwhile, waiting unread, and the poll failed with `store_unavailable`.
    let stopTimer = this.#options.timers.start(
      () => (stopTimer = this.#options.timers.start(abort, 0)),
      timeoutMs,
    );
    this.#inFlight.add(abort);
    // What the request waits for, named by the deadline's error.
    let awaited = 'the token function returned no credential';
    const given = new Promise<never>((_, reject) => {
      deadline.signal.addEventListener('abort', () =>
        reject(
          new ProgressError(
            signal.aborted ? ErrorCode.Closed : ErrorCode.StoreUnavailable,
            `HTTP request for task ${taskId}: ${awaited} within connectTimeoutMs (${timeoutMs} ms)`,
            { taskId },
          ),
        ),
      );
    });
    given.catch(() => undefined);
    const headers: Record<string, string> = { accept: 'application/json', ...this.#options.headers };
    let status = 0;
    let text: string;
    try {
      // What is no credential fails as a throw (see `credentialOf`), not a request the server refuses with
      // 401, which closes the client. A failure is thrown as the socket and the SSE stream report it
      // (`unauthenticated`, with the failure as its `cause`), marked as the token function's: polled again
      // with backoff, where the server's 401 closes the client (see `catchUp`). Until 6 December 2026 it
      // was reported as `internal`, and a function that threw a ProgressError `unauthenticated` of its own
      // was taken for the server's 401. So too one that returned nothing within the deadline, as
      // `renewToken()` reports it and the socket's connect timeout names it: until 6 December 2026 it was
      // `store_unavailable`, which sent the reader to the server. (The client's close as it is: `closed`.)
      let credential = token;
      if (typeof token === 'function')
        try {
          credential = credentialOf(await Promise.race([token(), given]));
        } catch (cause) {
          if (signal.aborted) throw cause;
          const failure = tokenProviderFailed(cause);
          TOKEN_FAILURES.add(failure);
          throw failure;
        }
      if (credential !== undefined) headers.authorization = `Bearer ${credential}`;
      awaited = 'no answer from the server';
      try {
        const response = await Promise.race([
          fetch(this.#options.baseUrl + path, {
            method: 'GET',
            headers,
            credentials: this.#options.credentials,
            signal: deadline.signal,
          }),
          given,
        ]);
        status = response.status;
        text = await Promise.race([readBody(response), given]);
        if (response.ok) return JSON.parse(text);
      } catch (cause) {
        if (deadline.signal.aborted) throw await given.catch((error: unknown) => error);
        // (An answer larger than the server sends: `store_unavailable` too, as a captive portal's page is,
        // its `cause` `frame_too_large` from `readBody`. Its own code did not fit the entry's budget.)
        throw new ProgressError(
          ErrorCode.StoreUnavailable,
          `HTTP request for task ${taskId} failed${status === 0 ? '' : ` (status ${status})`}`,
          { cause, taskId },
        );
      }
    } finally {
      stopTimer();
      this.#inFlight.delete(abort);
    }
    const error = errorFromResponse(taskId, status, text);
    // An expired credential (a tab that slept past its token's lifetime) is asked again at once, once, with
    // a fresh one from the token function, as the socket reconnects at once after a 4011; expired again, the
    // token function hands out expired credentials: fatal, as there (see `catchUp`). Until 6 December 2026
    // every poll was refused and reported on the watch, with backoff, for ever.
    if (error.code === ErrorCode.TokenExpired && !renewed) return this.#get(taskId, path, true);
    throw error;
  }
}

/**
 * The body of an answer, refused (thrown: `frame_too_large`) past the largest the server sends: a page of 100 events
 * (the route's default `limit`, which the client never changes) and its task, each at most `maxFrameBytes`
 * (protocol.md, HTTP API and Limits), 13 MB; past 16 MiB. A proxy answering 200 with an endless body (or a huge one) had
 * the page read it all, its memory growing until `connectTimeoutMs`; until 8 December 2026 nothing bounded
 * it. Counted as it arrives (its read then given up), a stated `content-length` or not.
 */
async function readBody(response: Awaited<ReturnType<FetchLike>>): Promise<string> {
  const reader = response.body?.getReader();
  if (!reader) return response.text();
  // (`BlobPart`: what a `fetch` streams is bytes of an `ArrayBuffer`.)
  const chunks: BlobPart[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return new Blob(chunks).text();
    chunks.push(value as BlobPart);
    size += value.length;
    // (16 MiB, a literal: more than 101 × 128 KiB, the largest answer. Thrown as the code alone, the cause of
    // the error `#get` makes.)
    if (size > 2 ** 24) {
      reader.cancel().catch(noop);
      throw ErrorCode.FrameTooLarge;
    }
  }
}

/** The `task` (and `epoch`) of an answer, checked as the snapshot frame they make. */
function snapshotOf(taskId: string, body: unknown): SnapshotFrame {
  const epoch = readField(body, 'epoch');
  const decoded = decodeServerText(
    JSON.stringify({
      type: 'snapshot',
      task: readField(body, 'task'),
      ...(epoch !== undefined && { epoch }),
    }),
  );
  if (!decoded.ok) throw badBody(taskId, decoded.error);
  if (decoded.frame.type !== 'snapshot' || decoded.frame.task.id !== taskId) throw badBody(taskId);
  return decoded.frame;
}

function badBody(taskId: string, cause?: unknown): ProgressError {
  return new ProgressError(ErrorCode.InvalidFrame, `HTTP response for task ${taskId} is not valid`, {
    cause,
    taskId,
  });
}

/** Most pages of events one HTTP catch-up reads before leaving the rest to the next one. */
const MAX_HTTP_PAGES = 20;

/** What the client gives its HTTP fallback. @internal */
export interface HttpHost {
  readonly options: FallbackOptions;
  readonly timers: TimerSet;
  /** Aborted when the client closes. */
  readonly signal: AbortSignal;
  /** Every followed task. */
  tasks(): Iterable<TaskSubscription>;
  /** True while the client is open and still follows this very subscription. */
  current(task: TaskSubscription): boolean;
  /** Applies a delivery result the way a socket frame's is applied. */
  apply(task: TaskSubscription, result: ApplyResult): void;
  /** Retrying cannot help (the credentials are refused): close the client with this error. */
  fatal(error: ProgressError): void;
  /**
   * The task cannot be watched (not found, forbidden): end its watches. Without `error`, for a finished
   * task whose end was acknowledged: the client lets go of it, its handles closing with their final state.
   * Nothing for a task the client no longer follows (see {@link current}).
   */
  failTask(task: TaskSubscription, error?: ProgressError): void;
  /**
   * Set by the HTTP fallback when it attaches: starts its polling, for the fallback transport that shares
   * the host (`FallbackHost.poll`), whose streams a proxy buffers.
   */
  poll?: () => true;
}

/** The HTTP fallback bound to one client. @internal */
export interface HttpFallbackRuntime {
  /** Brings a task up to date over HTTP; rejects when HTTP failed. */
  catchUp(task: TaskSubscription): Promise<void>;
  /** Starts polling every unfinished watch (no-op when already polling). */
  start(): void;
  /** Stops polling (a socket said `hello`, or the client closed). */
  stop(): void;
  /** A page-life wake-up: poll now if polling. */
  wake(): void;
}

/**
 * The HTTP fallback of a `ProgressClient`, from `httpFallback()`. Opaque: pass it as the
 * `httpFallback` option.
 */
export interface HttpFallback {
  /** @internal Binds the fallback to one client. */
  attach(host: HttpHost): HttpFallbackRuntime;
}

/**
 * The HTTP fallback: while WebSocket connection attempts keep failing (`httpFallbackAfterAttempts`), every
 * unfinished watch is polled over the server's HTTP API (`GET {httpUrl}/tasks/:id` and
 * `…/events?afterSeq=`) every `httpPollIntervalMs`, with backoff while HTTP fails too (a request left
 * hanging holds back only its own watch); and the 100% watchdog's last step reads the task over HTTP.
 * Uses the client's `fetch`, `headers`, `token` and `httpCredentials`.
 *
 * @example
 * ```ts
 * import { ProgressClient } from '@finishline/client';
 * import { httpFallback } from '@finishline/client/http';
 * const client = new ProgressClient({ url: '/progress', httpFallback: httpFallback() });
 * ```
 */
export function httpFallback(): HttpFallback {
  return { attach: (host) => new HttpPoller(host) };
}

class HttpPoller implements HttpFallbackRuntime {
  readonly #host: HttpHost;
  readonly #api: HttpApi;
  readonly #timer: Timeout;
  /**
   * While polling, a new object for each start: a catch-up started under another (before the socket came
   * back, or the watchdog's step before polling started) is superseded, and its late failure (a token
   * function that failed after the stop, a request given up on) is reported on no watch. Until 8 December
   * 2026 it reached the watch, the socket following it fine.
   */
  #polling: object | false = false;
  #failures = 0;
  /** Rounds started: a round that ends after the next one started leaves the schedule to that one. */
  #round = 0;

  constructor(host: HttpHost) {
    this.#host = host;
    const o = host.options;
    this.#api = new HttpApi({
      baseUrl: o.httpUrl,
      fetch: o.fetch,
      headers: o.headers,
      token: o.token,
      credentials: o.httpCredentials,
      signal: host.signal,
      timers: host.timers,
      timeoutMs: o.connectTimeoutMs,
    });
    this.#timer = new Timeout(host.timers);
    host.poll = () => {
      this.start();
      return true;
    };
  }

  start(): void {
    if (this.#polling) return;
    this.#polling = {};
    this.#failures = 0;
    this.wake();
  }

  stop(): void {
    this.#polling = false;
    this.#timer.clear();
  }

  wake(): void {
    if (this.#polling) this.#timer.set(0, () => void this.#poll());
  }

  /**
   * Its snapshot if nothing is known yet, then its events after the cursor, applied through the cursor
   * like socket frames.
   */
  async catchUp(task: TaskSubscription): Promise<void> {
    if (task.httpBusy || task.failed || task.cursor.finished) return;
    const host = this.#host;
    const polling = this.#polling;
    task.httpBusy = true;
    try {
      for (let page = 0; page < MAX_HTTP_PAGES && !task.cursor.finished; page++) {
        // The task first when the watch has nothing yet, or shows more than its cursor has (a `hello` of
        // another epoch set the cursor to 0 and kept what it showed): events from seq 1 applied on top of
        // that view were shown after the old epoch's, as duplicates (the socket lost before its subscribe
        // was answered). Before every page: that `hello` may come while a page is out (the socket back in
        // the middle of a poll). Until 6 December 2026 only the first page looked, and the next asked for the
        // events after 0 (the chaos run's `duplicate event`, `seen: snap:8 i:1`).
        if (task.task.state.progress === null || task.cursor.seq < task.task.state.seq) {
          const frame = await this.#api.getTask(task.taskId);
          if (!host.current(task)) return;
          this.#snapshot(task, frame);
        }
        const before = task.cursor.seq;
        const { events, snapshot, hasMore } = await this.#api.getEvents(task.taskId, before);
        if (!host.current(task)) return;
        if (snapshot !== undefined) {
          // The cursor is not in the task's log (the store was restored since: another epoch, or the task
          // behind the cursor): events after its seq would belong to another history, or never come (a
          // watch waiting for ever). As the socket's reset snapshot does: start over from the task's. So too
          // for the task ended at the cursor's seq: this unfinished watch would have applied that end, had
          // it been its run's (a cursor names no run: the id's run it watched was purged, a new one ended
          // there), and, stale at its seq, the snapshot left it polling for ever.
          const { epoch } = snapshot;
          if (
            (epoch !== undefined && task.epoch !== undefined && epoch !== task.epoch) ||
            snapshot.task.seq < before ||
            (snapshot.task.seq === before && snapshot.task.status !== 'running')
          ) {
            this.#snapshot(task, { ...snapshot, reset: true });
            continue;
          }
          task.adoptEpoch(epoch);
        }
        if (events.length === 0) {
          // None after the cursor though the task is ahead of it: the store no longer holds them (retention
          // removed a task's events and kept its row). The task stands for them, as the snapshot the socket
          // and the stream answer this with does; without it, every poll returned with nothing applied.
          if (snapshot !== undefined && snapshot.task.seq > before) this.#snapshot(task, snapshot);
          return;
        }
        for (const event of events) host.apply(task, task.cursor.applyEvent(event));
        if (task.cursor.seq === before) {
          // The log does not continue from the cursor (events removed by retention): take the snapshot.
          const frame = await this.#api.getTask(task.taskId);
          if (host.current(task)) this.#snapshot(task, frame);
          return;
        }
        // The page reached the task as the server read it, and the cursor the page's end: the next poll
        // reads on. (Not a cursor a `hello` of another epoch set to 0 meanwhile: the next page reads the
        // task first.) Until 7 December 2026 every poll that brought events asked once more, for the empty
        // page after them: twice the requests (each an authenticate hook, a task read and an events read
        // on the server) for every polled watch of a running task.
        if (hasMore === false && task.cursor.seq === events.at(-1)?.seq) return;
      }
    } catch (error) {
      const problem =
        error instanceof ProgressError
          ? error
          : new ProgressError(ErrorCode.Internal, 'HTTP catch-up failed', {
              cause: error,
              taskId: task.taskId,
            });
      if (!host.current(task) || polling !== this.#polling) return;
      if (
        (problem.code === ErrorCode.Unauthenticated && !TOKEN_FAILURES.has(problem)) ||
        problem.code === ErrorCode.TokenExpired
      ) {
        // What a browser sees of an upgrade refused for lack of credentials: retrying cannot help; nor a
        // fresh credential refused as expired again (`#get`). Not the token function's failure, reported on
        // the watch and polled again, as the socket retries a connect whose token function failed.
        host.fatal(problem);
        return;
      }
      // A task gone or forbidden ends its watch: an answer, not a failure of HTTP, which would put every
      // other watch's next poll off by the failure backoff (as it did until 7 December 2026).
      if (FATAL_TASK_ERRORS.has(problem.code)) return host.failTask(task, problem);
      task.task.emitError(problem);
      throw problem;
    } finally {
      task.httpBusy = false;
      // Its end seen while polling (the socket down), acknowledged here over HTTP, and the subscription
      // done as one whose end the socket acknowledged is, as over an SSE stream: the socket has nothing more
      // to ask about it, and a new watch of the id asks the server (the id may name a new run by now).
      // Until 5 December 2026 only the socket's ack marked it: a new watch of the id, the old run's handle
      // still held, shared the old run's end and resolved with it at once. (Not for the 100% watchdog's
      // HTTP step on a socket that is up: that socket acknowledges the end and unsubscribes.) Then the client
      // lets go of it, as of one whose end the socket acknowledged at the next heartbeat: until 6 December
      // 2026 a page whose socket never opened (no heartbeat) kept every job it watched, with its handles.
      // Acknowledged too when the client no longer follows it (a handle closed from its own `finished`
      // listener as the end was applied), as its stream's close does over SSE: until 6 December 2026 that
      // end was never acknowledged, the socket down. (`failTask` leaves alone a task no longer followed.)
      if (this.#polling && task.cursor.finished && !task.socketDone) {
        task.done();
        sendAck(host.options, host.timers, host.options.fetch, task.taskId, task.cursor.seq);
        host.failTask(task);
      }
    }
  }

  /** Applies a snapshot as a socket's is applied (its epoch learnt, a reset starting the watch over). */
  #snapshot(task: TaskSubscription, frame: SnapshotFrame): void {
    task.snapshot(frame);
    this.#host.apply(task, task.cursor.applySnapshot(frame.task, frame.reset === true));
  }

  /**
   * While no socket can be opened: catch every unfinished watch up over HTTP, again and again. The next
   * round is due `httpPollIntervalMs` after this one started, not after its last answer: a request left
   * hanging (its server frozen, a proxy holding it) would otherwise hold back every other watch's polls
   * for as long as it hangs. A watch whose request is still out is skipped (`catchUp`) until it settles.
   */
  async #poll(): Promise<void> {
    if (!this.#polling) return;
    const { httpPollIntervalMs, random, preferFallback } = this.#host.options;
    const tasks = [...this.#host.tasks()].filter((task) => !task.cursor.finished);
    // No watch left to poll: the socket's `idle` stops polling then, and with preferFallback, which opens no
    // socket, it stops here. Its timer fired every httpPollIntervalMs until close(), with nothing to poll,
    // keeping a Node process alive. A new watch polls again (`watch()` starts the streams, which start this).
    if (preferFallback && !tasks.length) return this.stop();
    const round = ++this.#round;
    this.#timer.set(httpPollIntervalMs, () => void this.#poll());
    const results = await Promise.allSettled(tasks.map((task) => this.catchUp(task)));
    if (!this.#polling || this.#host.signal.aborted || round !== this.#round) return;
    const failed = results.some((result) => result.status === 'rejected');
    this.#failures = failed ? this.#failures + 1 : 0;
    // While HTTP fails too, the same backoff as a refused SSE stream's, from the failed round's end.
    if (failed)
      this.#timer.set(retryDelayMs(this.#failures - 1, httpPollIntervalMs, random), () => void this.#poll());
  }
}
