import type { Clock } from '@finishline/core';
import { ErrorCode, ProgressError, systemClock } from '@finishline/core';
import type { BackoffOptions, OptionSpec, Resolved, ResolvedOptionsOf } from '@finishline/core/internal';
import {
  BACKOFF_DEFAULTS,
  backoffInOrder,
  backoffOptionSpecs,
  boolean,
  defaultsOf,
  finite,
  func,
  integer,
  invalidOption,
  MAX_TOKEN_LENGTH,
  nested,
  ofType,
  oneOf,
  option,
  refine,
  required,
  resolveOptions as resolveOptions_,
} from '@finishline/core/internal';
import type { CursorPersistence, ServerCursors } from './cursor-storage.js';
import type { FallbackTransport } from './fallback-streams.js';
import type { HttpFallback } from './http-fallback.js';
import { defaultPageEventSources, type PageEventSources } from './page-life.js';
import { headersProblem } from './socket-platform.js';
import type { TabSharing } from './tab-sharing.js';
import { systemTimers, type TimerApi } from './timers.js';
import type { FetchLike, HttpCredentials, TokenSource, WebSocketConstructorLike } from './transport-types.js';

export type {
  FetchLike,
  HttpCredentials,
  TokenSource,
  WebSocketConstructorLike,
  WebSocketLike,
} from './transport-types.js';

/**
 * Options of {@link ProgressClient}: the public interfaces carry their documentation, one table their
 * defaults and checks (the options toolkit of `@finishline/core/internal`), and the resolver derives the
 * URLs and implementations. It stays one file over 400 lines on purpose: the public interface documents
 * each of some forty options and the description table mirrors it key for key (`satisfies` checks they
 * agree), so an option is added or changed in one place, read side by side; the interfaces alone are
 * over 300 lines, so moving the resolver out would not bring this file under 400.
 *
 * @module
 */

/** The `reconnect` option of {@link ProgressClientOptions}: full-jitter exponential backoff. */
export interface ReconnectOptions {
  /**
   * Ceiling of the first retry after losing a connection that was healthy (it got `hello`, and no
   * attempt has failed since the last stable connection): the delay is uniform below it, so a watcher
   * whose socket was cut is back in milliseconds while a crowd that lost the same replica still spreads
   * out. A server may ask for a longer spread in its `hello` (`reconnectDelayMs`); the longer one wins,
   * up to `maxDelayMs`. Must not exceed `maxDelayMs`.
   * @default 100 (or `maxDelayMs` when that is smaller)
   */
  firstDelayMs?: number | undefined;
  /**
   * Ceiling of the delay after the first failed attempt (full jitter: the delay is uniform below the
   * ceiling); it grows by `multiplier` with every further failed attempt. Must not exceed `maxDelayMs`:
   * a `maxDelayMs` below 1 s needs this set too (`{ initialDelayMs: 100, maxDelayMs: 500 }`).
   * @default 1000
   */
  initialDelayMs?: number | undefined;
  /**
   * Largest reconnect delay ceiling.
   * @default 30000
   */
  maxDelayMs?: number | undefined;
  /**
   * Factor by which the ceiling grows per failed attempt. At least 1.
   * @default 2
   */
  multiplier?: number | undefined;
}

/** Options of {@link ProgressClient}. Only `url` is required. */
export interface ProgressClientOptions {
  /**
   * The server's WebSocket URL (`wss://host/progress`). `http(s)` URLs are converted to `ws(s)`; in a
   * browser a relative URL resolves against the page. A `URL` is taken as its `href`. Never put a credential
   * in it. Without a page (Node, SSR), a relative one is refused: `url is not a valid absolute URL`.
   */
  url: string | URL;
  /**
   * The WebSocket implementation. Pass `WebSocket` from `ws` in Node (required before Node 22). Node's
   * built-in WebSocket works with `token` but cannot send `headers`: the constructor refuses that pair.
   * @default globalThis.WebSocket
   */
  WebSocket?: WebSocketConstructorLike | undefined;
  /**
   * The fetch implementation of the HTTP fallback and the SSE transport.
   * @default globalThis.fetch
   */
  fetch?: FetchLike | undefined;
  /**
   * Headers sent with the upgrade (only where the WebSocket implementation accepts them: `ws` in Node;
   * browsers authenticate with cookies) and with every HTTP request. For example a `cookie` or an
   * `authorization` header in Node. Not sent on a socket shared across tabs (`shareAcrossTabs`): the leader
   * tab opens the real socket without headers (docs/client.md, Many tabs).
   * @default {}
   */
  headers?: Readonly<Record<string, string>> | undefined;
  /**
   * A credential sent as the first frame of every connection (`{ type: 'auth', token }`) and as
   * `authorization: Bearer <token>` on HTTP requests; a function is called each time (to refresh it). A
   * string must have 1 to `LIMITS.maxTokenLength` (8192) characters: the constructor refuses another.
   * A function that throws, rejects or returns no credential (not a string of 1 to `LIMITS.maxTokenLength`,
   * 8192, characters) fails the attempt, reported as `unauthenticated` on the client's `error` (with what it
   * threw or returned as `cause`; the length of an over-long string), and the client retries; in
   * `renewToken()`, the renewal fails the same way and the socket keeps its credential; a request of the
   * HTTP fallback or the SSE transport (poll, stream, ack) is not sent and is retried, as after a network
   * failure.
   * Leave unset when the upgrade carries the credential (cookie or header).
   * @default undefined
   */
  token?: TokenSource | undefined;
  /**
   * Base URL of the server's HTTP API (`GET {httpUrl}/tasks/:id`, `GET {httpUrl}/tasks/:id/events`).
   * @default derived from `url`: `ws` → `http`, `wss` → `https`, same host, path `httpPath`
   */
  httpUrl?: string | URL | undefined;
  /**
   * Path of the HTTP API when `httpUrl` is derived.
   * @default the path of `url`
   */
  httpPath?: string | undefined;
  /**
   * `credentials` of HTTP requests, so browsers send the session cookie to the API.
   * @default 'include'
   */
  httpCredentials?: HttpCredentials | undefined;
  /**
   * Cursor persistence across page reloads: a {@link CursorPersistence} from `@finishline/client/persist`
   * — in a browser `sessionCursorStorage()` (the tab's `sessionStorage`), or your own `CursorStorage`
   * bound with `persistCursors(storage)`; a separate entry, so pages that do not persist do not load it —
   * or `false`. Cursors are kept under this client's `url` (or the scope given to `persistCursors`), so the
   * clients of two servers sharing one storage keep apart tasks that share an id. Replaces the `'session'` value and `persistenceKeyPrefix` of earlier versions (now
   * `sessionCursorStorage(keyPrefix)`).
   * @default false
   */
  persistence?: CursorPersistence | false | undefined;
  /**
   * Longest wait from opening a socket to the server's `hello`; then the attempt counts as failed. Also the
   * longest wait of a Server-Sent Events stream of `fallbackTransport` for its first bytes (the opening
   * comment the server writes at once): a frozen replica or a proxy holding the request is given up on
   * then, and the open counts as failed (asked again with growing backoff), instead of waiting out
   * `heartbeatTimeoutMs`. And the longest wait for the answer to its ack (`POST …/ack`), which is then
   * aborted and sent again with backoff, as after a 503.
   * @default 10000
   */
  connectTimeoutMs?: number | undefined;
  /**
   * Longest silence on an open socket before it is considered dead (closed with 4010, then reconnected).
   * `null` derives it from the server's `hello`: 2 × `heartbeatIntervalMs` (at most 5 minutes of it, so a
   * huge one cannot disable the check) + `heartbeatMarginMs`. Also the
   * longest silence of a Server-Sent Events stream of `fallbackTransport` once it delivered anything
   * (before that, `connectTimeoutMs`; then reopened from the cursor),
   * where `null` takes the interval the stream states when it opens (at most 5 minutes of it too; 15 s,
   * the server's default, from a server too old to state it).
   * @default null
   */
  heartbeatTimeoutMs?: number | null | undefined;
  /**
   * Added to twice the heartbeat interval when `heartbeatTimeoutMs` is derived.
   * @default 2000
   */
  heartbeatMarginMs?: number | undefined;
  /**
   * When a heartbeat shows a task ahead of the cursor within this long of the task's latest subscribe,
   * how long after that subscribe to wait for the missing events before resyncing (later, a resync goes
   * at once). Also the longest a subscribe may go without an answer (the server answers every one) before
   * it is sent again: the wait is learned from how fast subscribes were answered (as TCP learns its
   * retransmission timeout; 250 ms at least unless this is less, this before any answer was timed),
   * doubling while they go unanswered; 0 turns that repeat off.
   * @default 1000
   */
  behindGraceMs?: number | undefined;
  /**
   * The 100% watchdog: how long a task may sit with every item finished and no terminal state before the
   * first escalation (resync, then reconnect, then HTTP, each this much later).
   * @default 3000
   */
  finishTimeoutMs?: number | undefined;
  /**
   * Non-terminal acks are coalesced: sent at most this long after the event (terminal acks go at once).
   * A longer window only delays the store's `ackedSeq` (the processed mark) and the cursor persisted
   * with each ack; it costs nothing in delivery. At x10 in `npm run bench` the 1 s default (200 ms
   * before) took a tenth off the CPU per delivered message (docs/benchmarks-history.md).
   * @default 1000
   */
  ackDelayMs?: number | undefined;
  /**
   * …or as soon as this many events are unacknowledged.
   * @default 32
   */
  ackEvery?: number | undefined;
  /**
   * Backoff of reconnects (and of re-subscribing after the server refused a subscription); see
   * {@link ReconnectOptions}. Replaces the flat `reconnectFirstDelayMs`, `reconnectInitialDelayMs` and
   * `reconnectMaxDelayMs` of earlier versions.
   * @default { firstDelayMs: 100, initialDelayMs: 1000, maxDelayMs: 30000, multiplier: 2 }
   */
  reconnect?: ReconnectOptions | undefined;
  /**
   * A connection that stayed up this long resets the reconnect backoff (its loss is retried within
   * `reconnect.firstDelayMs` again, and failed attempts back off from the start). The loss of a shorter
   * one that said `hello` waits one step (`reconnect.initialDelayMs`, or the server's spread), so a
   * flapping server sees each client at most about once a second, never in a tight loop. (Not a socket
   * closed with 4011 within `reconnect.maxDelayMs` of the last reconnect at once for an expiry: those are
   * paced as failed attempts, however long each stayed up.)
   * @default 1000
   */
  stableConnectionMs?: number | undefined;
  /**
   * After this many connection attempts in a row fail, unfinished watches are polled over HTTP (or
   * followed over `fallbackTransport`) until a socket opens again. 0 never falls back (but
   * `preferFallback` still uses `fallbackTransport` from the start).
   * @default 3
   */
  httpFallbackAfterAttempts?: number | undefined;
  /**
   * After this many connection attempts in a row fail, the client emits an `error` (code `unreachable`,
   * saying why: the HTTP status of a refused upgrade, a TLS or DNS failure, a refused connection, or no
   * `hello` in time) on every further failed attempt, and keeps retrying with backoff. 0 never emits it.
   * @default 3
   */
  errorAfterAttempts?: number | undefined;
  /**
   * Used instead of HTTP polling once `httpFallbackAfterAttempts` connection attempts failed in a row:
   * `sseFallback()` from `@finishline/client/sse` follows each watch over Server-Sent Events, which
   * proxies that refuse WebSocket upgrades let through. The socket keeps being retried with backoff;
   * the first `hello` ends the fallback.
   */
  fallbackTransport?: FallbackTransport | undefined;
  /**
   * Use `fallbackTransport` at once, without trying WebSocket first (a network known to block it).
   * @default false
   */
  preferFallback?: boolean | undefined;
  /**
   * Polls every unfinished watch over the HTTP API once `httpFallbackAfterAttempts` connection attempts
   * failed in a row (unless `fallbackTransport` is set), and takes the 100% watchdog's last step over
   * HTTP: pass `httpFallback()` from `@finishline/client/http` (a separate entry, so pages that do not
   * want it do not load it). Without it the client keeps retrying the socket, and that last step is one
   * more resync.
   * @default undefined
   */
  httpFallback?: HttpFallback | false | undefined;
  /**
   * Interval of that polling (longer, with backoff, while HTTP fails too).
   * @default 2000
   */
  httpPollIntervalMs?: number | undefined;
  /**
   * Window over which `rate` (finished items per second) is measured.
   * @default 10000
   */
  rateWindowMs?: number | undefined;
  /**
   * One socket for all the tabs of the browser: pass `tabSharing()` from `@finishline/client/tabs`
   * (a separate entry, so pages that do not share do not load it). Each tab keeps its own cursors.
   * @default false
   */
  shareAcrossTabs?: TabSharing | false | undefined;
  /**
   * Page-life events that make the client check its socket at once (ping with a deadline, resync every
   * watch) instead of waiting for the heartbeat timeout: `visibilitychange` to visible, `resume` (a
   * frozen page thawed), `online`, `pageshow` from the back/forward cache; with them, a clock-jump check
   * (a laptop waking). `false` turns all of it off. In Node pass `{}` to get the clock-jump check alone.
   * @default the global `document` and `window` in a browser page; off elsewhere
   */
  pageEvents?: PageEventSources | false | undefined;
  /**
   * After a page-life event, how long the open socket has to answer a ping before it is replaced (with
   * no backoff wait); further events meanwhile are the same wake. Over SSE, a stream opened less than
   * this long ago is not started over by a page-life event.
   * @default 2000
   */
  wakePingTimeoutMs?: number | undefined;
  /**
   * Period of the clock-jump check (only with page events). 0 turns the check off.
   * @default 2000
   */
  clockCheckIntervalMs?: number | undefined;
  /**
   * How much later than due that check must fire to count as a jump (the machine slept or the page was
   * frozen).
   * @default 5000
   */
  clockJumpMs?: number | undefined;
  /**
   * Timer functions; inject fakes in tests.
   * @default the global setTimeout / clearTimeout
   */
  timers?: TimerApi | undefined;
  /**
   * Time source of the watchdogs and the backoff reset.
   * @default Date.now
   */
  clock?: Clock | undefined;
  /**
   * Uniform random numbers in [0, 1) for the reconnect jitter.
   * @default Math.random
   */
  random?: (() => number) | undefined;
}

const isFunction = (value: unknown): boolean => typeof value === 'function';
const isObject = (value: unknown): boolean => typeof value === 'object' && value !== null;

/** Headers: an object of string values, each bad value named by the message. */
const HEADERS: OptionSpec<Readonly<Record<string, string>>> = {
  default: Object.freeze({}),
  read(value, where) {
    if (!isObject(value)) throw new ProgressError(ErrorCode.InvalidInput, `${where} must be an object`);
    for (const entry of Object.values(value as object))
      if (typeof entry !== 'string')
        throw new ProgressError(ErrorCode.InvalidInput, `${where}: header values must be strings`);
    return value as Readonly<Record<string, string>>;
  },
};

/** One description per option of {@link ProgressClientOptions}: its default and its check. */
const CLIENT_OPTIONS = {
  url: required(ofType<string | URL>('a URL', (value) => typeof value === 'string' || value instanceof URL)),
  // null is taken as "not given" (the global WebSocket), as before.
  WebSocket: ofType<WebSocketConstructorLike | null>(
    'a WebSocket constructor',
    (value) => value === null || isFunction(value),
  ),
  fetch: ofType<FetchLike>('a function', isFunction),
  headers: HEADERS,
  token: ofType<TokenSource>(
    'a string or a function',
    (value) => typeof value === 'string' || isFunction(value),
  ),
  httpUrl: ofType<string | URL>('a URL', (value) => typeof value === 'string' || value instanceof URL),
  httpPath: ofType<string>('a path', (value) => typeof value === 'string'),
  httpCredentials: oneOf<HttpCredentials>('include', ['include', 'same-origin', 'omit']),
  persistence: option<CursorPersistence | false>(
    false,
    'sessionCursorStorage() or persistCursors(storage) from @finishline/client/persist, or false',
    (value) => value === false || (isObject(value) && isFunction((value as CursorPersistence).forServer)),
  ),
  connectTimeoutMs: finite(10_000, 1),
  heartbeatTimeoutMs: option<number | null>(
    null,
    'null or a number >= 1',
    (value) => value === null || (typeof value === 'number' && value >= 1),
  ),
  heartbeatMarginMs: finite(2000, 0),
  behindGraceMs: finite(1000, 0),
  finishTimeoutMs: finite(3000, 1),
  ackDelayMs: finite(1000, 0),
  ackEvery: finite(32, 1),
  reconnect: refine(
    nested({ firstDelayMs: finite(100, 0), ...backoffOptionSpecs(BACKOFF_DEFAULTS) }),
    backoffInOrder,
  ),
  stableConnectionMs: finite(1000, 0),
  httpFallbackAfterAttempts: integer(3, 0),
  errorAfterAttempts: integer(3, 0),
  fallbackTransport: ofType<FallbackTransport>(
    'sseFallback() from @finishline/client/sse',
    (value) => isObject(value) && isFunction((value as FallbackTransport).attach),
  ),
  preferFallback: boolean(false),
  httpFallback: ofType<HttpFallback | false>(
    'httpFallback() from @finishline/client/http, or false',
    (value) => value === false || (isObject(value) && isFunction((value as HttpFallback).attach)),
  ),
  httpPollIntervalMs: finite(2000, 1),
  rateWindowMs: finite(10_000, 1),
  shareAcrossTabs: option<TabSharing | false>(
    false,
    'tabSharing() from @finishline/client/tabs, or false',
    (value) => value === false || (isObject(value) && isFunction((value as TabSharing).wrap)),
  ),
  pageEvents: ofType<PageEventSources | false>(
    'an object ({ document, window }) or false',
    (value) => value === false || isObject(value),
  ),
  wakePingTimeoutMs: finite(2000, 1),
  clockCheckIntervalMs: finite(2000, 0),
  clockJumpMs: finite(5000, 1),
  timers: option<TimerApi>(systemTimers, 'a timer API', (value) => isObject(value) || isFunction(value)),
  clock: func<Clock>(systemClock),
  random: func<() => number>(Math.random),
} satisfies { [K in keyof Required<ProgressClientOptions>]: unknown };

type Described = ResolvedOptionsOf<typeof CLIENT_OPTIONS>;

/** Defaults of {@link ProgressClientOptions}, merged once at construction. */
export const PROGRESS_CLIENT_DEFAULTS = Object.freeze(defaultsOf(CLIENT_OPTIONS));

/** The options after merging and validation. @internal */
export interface ResolvedOptions
  extends Omit<
    Described,
    | 'url'
    | 'httpUrl'
    | 'WebSocket'
    | 'persistence'
    | 'pageEvents'
    | 'shareAcrossTabs'
    | 'reconnect'
    | 'httpFallback'
  > {
  url: string;
  httpUrl: string;
  WebSocket: WebSocketConstructorLike;
  fetch: FetchLike | undefined;
  /** The cursors of this client (`persistence` bound to its `url`). */
  storage: ServerCursors | undefined;
  pageEvents: PageEventSources | undefined;
  httpFallback: HttpFallback | undefined;
  /** The backoff of reconnects and re-subscriptions, as `backoffDelayMs` takes it. */
  reconnect: Resolved<BackoffOptions>;
  /** `reconnect.firstDelayMs`, lowered to `reconnect.maxDelayMs` when only the default exceeds it. */
  reconnectFirstDelayMs: number;
}

/**
 * `value` as a URL, resolved against the page's (`base`) where there is one.
 *
 * @throws ProgressError `invalid_input` naming the option; without a page (Node, a worker without
 *   `location`), that it must be absolute: "not a valid URL" read as wrong for `/progress`, a valid one in a page.
 */
function parseUrl(name: string, value: unknown, base?: string): URL {
  try {
    return new URL(String(value), base);
  } catch (cause) {
    throw new ProgressError(
      ErrorCode.InvalidInput,
      `ProgressClient: ${name} is not a valid ${base ? '' : 'absolute '}URL`,
      { cause },
    );
  }
}

/**
 * Merges `options` over {@link PROGRESS_CLIENT_DEFAULTS} and validates the result. `closed`, aborted when
 * the client being built closes, is handed to `shareAcrossTabs` so its tab can leave the sharing then.
 *
 * @throws ProgressError `invalid_input` naming the offending option.
 * @internal
 */
export function resolveOptions(options: ProgressClientOptions, closed?: AbortSignal): ResolvedOptions {
  const o = resolveOptions_('ProgressClient', CLIENT_OPTIONS, options);
  const { firstDelayMs, ...reconnect } = o.reconnect;
  // Only a value the caller chose contradicts the ceiling; the default just follows a smaller one.
  if (options.reconnect?.firstDelayMs !== undefined && firstDelayMs > reconnect.maxDelayMs) {
    throw invalidOption('ProgressClient', 'reconnect.firstDelayMs must not exceed reconnect.maxDelayMs');
  }

  // Relative URLs resolve against the page, and an http(s) URL names the same server's socket.
  const base = (globalThis as { location?: { href: string } }).location?.href;
  const url = parseUrl('url', o.url, base);
  url.protocol = url.protocol.replace(/^http/, 'ws');
  if (url.protocol !== 'ws:' && url.protocol !== 'wss:')
    throw invalidOption('ProgressClient', `url must be a ws: or wss: URL, got ${url.protocol}`);
  if (url.username !== '' || url.password !== '')
    throw invalidOption('ProgressClient', 'url must not carry credentials');
  // A string no `auth` frame can carry: accepted, every attempt failed as a token function that returns no
  // credential does. (A function's `length` is its arity.) Not quoted: it is a credential.
  if (o.token === '' || (o.token?.length as number) > MAX_TOKEN_LENGTH)
    throw invalidOption('ProgressClient', `token must have 1 to ${MAX_TOKEN_LENGTH} characters`);

  let httpUrl: URL;
  if (o.httpUrl === undefined) {
    httpUrl = new URL(url.href);
    httpUrl.protocol = url.protocol === 'wss:' ? 'https:' : 'http:';
    if (o.httpPath !== undefined) httpUrl.pathname = o.httpPath;
    httpUrl.search = '';
  } else {
    httpUrl = parseUrl('httpUrl', o.httpUrl, base);
    if (httpUrl.protocol !== 'http:' && httpUrl.protocol !== 'https:')
      throw invalidOption('ProgressClient', 'httpUrl must be an http(s) URL');
  }
  httpUrl.hash = '';

  const WebSocketImpl = o.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructorLike }).WebSocket;
  if (typeof WebSocketImpl !== 'function') {
    throw invalidOption(
      'ProgressClient',
      'no WebSocket implementation: pass the `WebSocket` option (for example WebSocket from "ws")',
    );
  }
  const headersRefused = headersProblem(WebSocketImpl, Object.keys(o.headers));
  if (headersRefused !== undefined) throw invalidOption('ProgressClient', headersRefused);
  const fetchImpl = o.fetch ?? (globalThis as { fetch?: FetchLike }).fetch;
  if (fetchImpl !== undefined && typeof fetchImpl !== 'function')
    throw invalidOption('ProgressClient', 'fetch must be a function');
  if (o.preferFallback && o.fallbackTransport === undefined) {
    throw invalidOption('ProgressClient', 'preferFallback needs a fallbackTransport');
  }

  const { persistence, shareAcrossTabs: sharing, pageEvents } = o;
  // Into the object just resolved rather than `{ ...o, … }`: in a process holding thousands of clients
  // (a bench host, a fan-out service), V8 gave every spread copy a hidden class of its own, and every
  // read of an option then missed the inline caches.
  return Object.assign(o, {
    reconnect,
    reconnectFirstDelayMs: Math.min(firstDelayMs, reconnect.maxDelayMs),
    pageEvents: pageEvents === false ? undefined : (pageEvents ?? defaultPageEventSources()),
    url: url.href,
    httpUrl: httpUrl.href.replace(/\/+$/, ''),
    WebSocket: sharing ? sharing.wrap(WebSocketImpl, closed, o) : WebSocketImpl,
    fetch: fetchImpl?.bind(globalThis) as FetchLike | undefined,
    storage: persistence ? persistence.forServer(url.href) : undefined,
    httpFallback: o.httpFallback || undefined,
  });
}
