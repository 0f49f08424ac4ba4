import type { Clock } from '@finishline/core';
import { ErrorCode, ProgressError, systemClock } from '@finishline/core';
import { invalidOption } from '@finishline/core/internal';
import { type CursorStorage, sessionCursorStorage } from './cursor-storage.js';
import type { HttpFallback } from './http-fallback.js';
import { defaultPageEventSources, type PageEventSources } from './page-life.js';
import type { FallbackTransport } from './sse.js';
import type { TabSharing } from './tab-sharing.js';
import { systemTimers, type TimerApi } from './timers.js';

/**
 * Options of {@link ProgressClient}, their defaults and their validation.
 *
 * @module
 */

/**
 * The part of a WebSocket the client uses: the browser's `WebSocket` and `ws` both fit. The handlers'
 * parameters are typed `never` so that any implementation's own event types are accepted; the client
 * reads `data` from a message event and `code`/`reason` from a close event.
 */
export interface WebSocketLike {
  /** 0 connecting, 1 open, 2 closing, 3 closed. */
  readonly readyState: number;
  /** The subprotocol the server selected (`''` or absent when unknown: taken as the newest version). */
  readonly protocol?: string;
  onopen: ((event: never) => void) | null;
  onmessage: ((event: never) => void) | null;
  onclose: ((event: never) => void) | null;
  onerror: ((event: never) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

/**
 * A WebSocket constructor: the global `WebSocket` of browsers, or `WebSocket` from `ws` in Node, whose
 * third argument carries the upgrade `headers`.
 */
export type WebSocketConstructorLike = new (
  url: string,
  protocols?: string | string[],
  options?: { headers: Record<string, string> },
) => WebSocketLike;

/** The part of `fetch` the client uses. */
export type FetchLike = (
  url: string,
  init: {
    method: 'GET';
    headers: Record<string, string>;
    credentials: HttpCredentials;
    signal: AbortSignal;
  },
) => Promise<{ ok: boolean; status: number; text(): Promise<string> }>;

/** The `credentials` mode of HTTP requests (as in `fetch`). */
export type HttpCredentials = 'include' | 'same-origin' | 'omit';

/** A credential, or a function returning one; called on every connection and HTTP request. */
export type TokenSource = string | (() => string | Promise<string>);

/** Options of {@link ProgressClient}. Only `url` is required. */
export interface ProgressClientOptions {
  /**
   * The server's WebSocket URL (`wss://host/progress`). `http(s)` URLs are converted to `ws(s)`; in a
   * browser a relative URL resolves against the page. Never put a credential in it.
   */
  url: string;
  /**
   * The WebSocket implementation. Pass `WebSocket` from `ws` in Node (required before Node 22). Node's
   * built-in WebSocket works with `token` but cannot send `headers`: the constructor refuses that pair.
   * @default globalThis.WebSocket
   */
  WebSocket?: WebSocketConstructorLike;
  /**
   * The fetch implementation of the HTTP fallback and the SSE transport.
   * @default globalThis.fetch
   */
  fetch?: FetchLike;
  /**
   * Headers sent with the upgrade (only where the WebSocket implementation accepts them: `ws` in Node;
   * browsers authenticate with cookies) and with every HTTP request. For example a `cookie` or an
   * `authorization` header in Node.
   * @default {}
   */
  headers?: Readonly<Record<string, string>>;
  /**
   * A credential sent as the first frame of every connection (`{ type: 'auth', token }`) and as
   * `authorization: Bearer <token>` on HTTP requests; a function is called each time (to refresh it).
   * Leave unset when the upgrade carries the credential (cookie or header).
   * @default undefined
   */
  token?: TokenSource;
  /**
   * Base URL of the server's HTTP API (`GET {httpUrl}/tasks/:id`, `GET {httpUrl}/tasks/:id/events`).
   * @default derived from `url`: `ws` → `http`, `wss` → `https`, same host, path `httpPath`
   */
  httpUrl?: string;
  /**
   * Path of the HTTP API when `httpUrl` is derived.
   * @default the path of `url`
   */
  httpPath?: string;
  /**
   * `credentials` of HTTP requests, so browsers send the session cookie to the API.
   * @default 'include'
   */
  httpCredentials?: HttpCredentials;
  /**
   * Cursor persistence across page reloads: `'session'` (the tab's `sessionStorage`), a
   * {@link CursorStorage}, or `false`.
   * @default false
   */
  persistence?: 'session' | CursorStorage | false;
  /**
   * Key prefix of the `'session'` persistence.
   * @default 'finishline:'
   */
  persistenceKeyPrefix?: string;
  /**
   * Longest wait from opening a socket to the server's `hello`; then the attempt counts as failed.
   * @default 10000
   */
  connectTimeoutMs?: number;
  /**
   * Longest silence on an open socket before it is considered dead (closed with 4010, then reconnected).
   * `null` derives it from the server's `hello`: 2 × `heartbeatIntervalMs` + `heartbeatMarginMs`.
   * @default null
   */
  heartbeatTimeoutMs?: number | null;
  /**
   * Added to twice the heartbeat interval when `heartbeatTimeoutMs` is derived.
   * @default 2000
   */
  heartbeatMarginMs?: number;
  /**
   * When a heartbeat shows a task ahead of the cursor, how long to wait for the missing events before
   * resyncing.
   * @default 1000
   */
  behindGraceMs?: number;
  /**
   * The 100% watchdog: how long a task may sit with every item finished and no terminal state before the
   * first escalation (resync, then reconnect, then HTTP, each this much later).
   * @default 3000
   */
  finishTimeoutMs?: number;
  /**
   * Non-terminal acks are coalesced: sent at most this long after the event (terminal acks go at once).
   * @default 200
   */
  ackDelayMs?: number;
  /**
   * …or as soon as this many events are unacknowledged.
   * @default 32
   */
  ackEvery?: number;
  /**
   * Ceiling of the first retry after losing a connection that was healthy (it got `hello`, and no
   * attempt has failed since the last stable connection): the delay is uniform below it, so a watcher
   * whose socket was cut is back in milliseconds while a crowd that lost the same replica still spreads
   * out. A server may ask for a longer spread in its `hello` (`reconnectDelayMs`); the longer one wins.
   * @default 100 (or `reconnectMaxDelayMs` when that is smaller)
   */
  reconnectFirstDelayMs?: number;
  /**
   * Ceiling of the delay after the first failed attempt (full jitter: the delay is uniform below the
   * ceiling); it doubles with every further failed attempt.
   * @default 1000
   */
  reconnectInitialDelayMs?: number;
  /**
   * Largest reconnect delay ceiling.
   * @default 30000
   */
  reconnectMaxDelayMs?: number;
  /**
   * A connection that stayed up this long resets the reconnect backoff (its loss is retried within
   * `reconnectFirstDelayMs` again); shorter ones keep growing it, so a flapping server is not hammered.
   * @default 1000
   */
  stableConnectionMs?: number;
  /**
   * After this many connection attempts in a row fail, unfinished watches are polled over HTTP until a
   * socket opens again. 0 disables the polling.
   * @default 3
   */
  httpFallbackAfterAttempts?: number;
  /**
   * After this many connection attempts in a row fail, the client emits an `error` (code `unreachable`,
   * saying why: the HTTP status of a refused upgrade, a TLS or DNS failure, a refused connection, or no
   * `hello` in time) on every further failed attempt, and keeps retrying with backoff. 0 never emits it.
   * @default 3
   */
  errorAfterAttempts?: number;
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
  preferFallback?: boolean;
  /**
   * Polls every unfinished watch over the HTTP API once `httpFallbackAfterAttempts` connection attempts
   * failed in a row (unless `fallbackTransport` is set), and takes the 100% watchdog's last step over
   * HTTP: pass `httpFallback()` from `@finishline/client/http` (a separate entry, so pages that do not
   * want it do not load it). Without it the client keeps retrying the socket, and that last step is one
   * more resync.
   * @default undefined
   */
  httpFallback?: HttpFallback | false;
  /**
   * Interval of that polling (longer, with backoff, while HTTP fails too).
   * @default 2000
   */
  httpPollIntervalMs?: number;
  /**
   * Window over which `rate` (finished items per second) is measured.
   * @default 10000
   */
  rateWindowMs?: number;
  /**
   * One socket for all the tabs of the browser: pass `tabSharing()` from `@finishline/client/tabs`
   * (a separate entry, so pages that do not share do not load it). Each tab keeps its own cursors.
   * @default false
   */
  shareAcrossTabs?: TabSharing | false;
  /**
   * Page-life events that make the client check its socket at once (ping with a deadline, resync every
   * watch) instead of waiting for the heartbeat timeout: `visibilitychange` to visible, `resume` (a
   * frozen page thawed), `online`, `pageshow` from the back/forward cache; with them, a clock-jump check
   * (a laptop waking). `false` turns all of it off. In Node pass `{}` to get the clock-jump check alone.
   * @default the global `document` and `window` in a browser page; off elsewhere
   */
  pageEvents?: PageEventSources | false;
  /**
   * After a page-life event, how long the open socket has to answer a ping before it is replaced (with
   * no backoff wait).
   * @default 2000
   */
  wakePingTimeoutMs?: number;
  /**
   * Period of the clock-jump check (only with page events). 0 turns the check off.
   * @default 2000
   */
  clockCheckIntervalMs?: number;
  /**
   * How much later than due that check must fire to count as a jump (the machine slept or the page was
   * frozen).
   * @default 5000
   */
  clockJumpMs?: number;
  /**
   * Timer functions; inject fakes in tests.
   * @default the global setTimeout / clearTimeout
   */
  timers?: TimerApi;
  /**
   * Time source of the watchdogs and the backoff reset.
   * @default Date.now
   */
  clock?: Clock;
  /**
   * Uniform random numbers in [0, 1) for the reconnect jitter.
   * @default Math.random
   */
  random?: () => number;
}

type Defaulted = Omit<
  Required<ProgressClientOptions>,
  | 'url'
  | 'WebSocket'
  | 'fetch'
  | 'token'
  | 'httpUrl'
  | 'httpPath'
  | 'persistence'
  | 'pageEvents'
  | 'shareAcrossTabs'
  | 'fallbackTransport'
  | 'httpFallback'
> & { persistence: false };

/** Defaults of {@link ProgressClientOptions}, merged once at construction. */
export const PROGRESS_CLIENT_DEFAULTS: Readonly<Defaulted> = Object.freeze({
  headers: Object.freeze({}),
  httpCredentials: 'include',
  persistence: false,
  persistenceKeyPrefix: 'finishline:',
  preferFallback: false,
  connectTimeoutMs: 10_000,
  heartbeatTimeoutMs: null,
  heartbeatMarginMs: 2000,
  behindGraceMs: 1000,
  finishTimeoutMs: 3000,
  ackDelayMs: 200,
  ackEvery: 32,
  reconnectFirstDelayMs: 100,
  reconnectInitialDelayMs: 1000,
  reconnectMaxDelayMs: 30_000,
  stableConnectionMs: 1000,
  httpFallbackAfterAttempts: 3,
  errorAfterAttempts: 3,
  httpPollIntervalMs: 2000,
  rateWindowMs: 10_000,
  wakePingTimeoutMs: 2000,
  clockCheckIntervalMs: 2000,
  clockJumpMs: 5000,
  timers: systemTimers,
  clock: systemClock,
  random: Math.random,
} satisfies Defaulted);

/** The options after merging and validation. @internal */
export interface ResolvedOptions extends Omit<Defaulted, 'persistence'> {
  url: string;
  httpUrl: string;
  WebSocket: WebSocketConstructorLike;
  fetch: FetchLike | undefined;
  token: TokenSource | undefined;
  storage: CursorStorage | undefined;
  pageEvents: PageEventSources | undefined;
  fallbackTransport: FallbackTransport | undefined;
  httpFallback: HttpFallback | undefined;
}

function invalid(message: string): ProgressError {
  return invalidOption('ProgressClient', message);
}

function parseUrl(name: string, value: unknown, base?: string): URL {
  try {
    return new URL(String(value), base);
  } catch (cause) {
    throw new ProgressError(ErrorCode.InvalidInput, `ProgressClient: ${name} is not a valid URL`, { cause });
  }
}

const NUMBERS: readonly [keyof Defaulted, number][] = [
  ['connectTimeoutMs', 1],
  ['heartbeatMarginMs', 0],
  ['behindGraceMs', 0],
  ['finishTimeoutMs', 1],
  ['ackDelayMs', 0],
  ['ackEvery', 1],
  ['reconnectFirstDelayMs', 0],
  ['reconnectInitialDelayMs', 0],
  ['reconnectMaxDelayMs', 0],
  ['stableConnectionMs', 0],
  ['httpFallbackAfterAttempts', 0],
  ['errorAfterAttempts', 0],
  ['httpPollIntervalMs', 1],
  ['rateWindowMs', 1],
  ['wakePingTimeoutMs', 1],
  ['clockCheckIntervalMs', 0],
  ['clockJumpMs', 1],
];

/**
 * Merges `options` over {@link PROGRESS_CLIENT_DEFAULTS} and validates the result.
 *
 * @throws ProgressError `invalid_input` naming the offending option.
 * @internal
 */
export function resolveOptions(options: ProgressClientOptions): ResolvedOptions {
  if (typeof options !== 'object' || options === null) throw invalid('options must be an object');
  const merged: Record<string, unknown> = { ...PROGRESS_CLIENT_DEFAULTS };
  for (const [key, value] of Object.entries(options)) if (value !== undefined) merged[key] = value;
  const o = merged as unknown as Defaulted & ProgressClientOptions;

  for (const [name, min] of NUMBERS) {
    const value = o[name];
    if (typeof value !== 'number' || !Number.isFinite(value) || value < min) {
      throw invalid(`${name} must be a finite number >= ${min}, got ${String(value)}`);
    }
  }
  if (
    o.heartbeatTimeoutMs !== null &&
    !(typeof o.heartbeatTimeoutMs === 'number' && o.heartbeatTimeoutMs >= 1)
  ) {
    throw invalid(`heartbeatTimeoutMs must be null or a number >= 1, got ${String(o.heartbeatTimeoutMs)}`);
  }
  if (o.reconnectInitialDelayMs > o.reconnectMaxDelayMs) {
    throw invalid('reconnectInitialDelayMs must not exceed reconnectMaxDelayMs');
  }
  if (o.reconnectFirstDelayMs > o.reconnectMaxDelayMs) {
    // Only a value the caller chose contradicts the ceiling; the default just follows a smaller one.
    if (options.reconnectFirstDelayMs !== undefined) {
      throw invalid('reconnectFirstDelayMs must not exceed reconnectMaxDelayMs');
    }
    o.reconnectFirstDelayMs = o.reconnectMaxDelayMs;
  }

  // Relative URLs resolve against the page, and an http(s) URL names the same server's socket.
  const base = (globalThis as { location?: { href: string } }).location?.href;
  const url = parseUrl('url', o.url, base);
  url.protocol = url.protocol.replace(/^http/, 'ws');
  if (url.protocol !== 'ws:' && url.protocol !== 'wss:')
    throw invalid(`url must be a ws: or wss: URL, got ${url.protocol}`);
  if (url.username !== '' || url.password !== '') throw invalid('url must not carry credentials');

  let httpUrl: URL;
  if (o.httpUrl === undefined) {
    httpUrl = new URL(url.href);
    httpUrl.protocol = url.protocol === 'wss:' ? 'https:' : 'http:';
    if (o.httpPath !== undefined) httpUrl.pathname = o.httpPath;
    httpUrl.search = '';
  } else {
    httpUrl = parseUrl('httpUrl', o.httpUrl, base);
    if (httpUrl.protocol !== 'http:' && httpUrl.protocol !== 'https:')
      throw invalid('httpUrl must be an http(s) URL');
  }
  httpUrl.hash = '';

  const WebSocketImpl = o.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructorLike }).WebSocket;
  if (typeof WebSocketImpl !== 'function') {
    throw invalid(
      'no WebSocket implementation: pass the `WebSocket` option (for example WebSocket from "ws")',
    );
  }
  if (isNodeBuiltinWebSocket(WebSocketImpl) && Object.keys(o.headers).length > 0) {
    throw invalid(
      `Node's built-in WebSocket cannot send upgrade headers (${Object.keys(o.headers).join(', ')}): ` +
        'pass `WebSocket` from the "ws" package (npm install ws), or authenticate with the `token` option ' +
        '(sent in the first frame)',
    );
  }
  const fetchImpl = o.fetch ?? (globalThis as { fetch?: FetchLike }).fetch;
  if (fetchImpl !== undefined && typeof fetchImpl !== 'function') throw invalid('fetch must be a function');
  if (o.token !== undefined && typeof o.token !== 'string' && typeof o.token !== 'function') {
    throw invalid('token must be a string or a function');
  }
  if (!['include', 'same-origin', 'omit'].includes(o.httpCredentials)) {
    throw invalid("httpCredentials must be 'include', 'same-origin' or 'omit'");
  }
  if (typeof o.headers !== 'object' || o.headers === null) throw invalid('headers must be an object');
  for (const value of Object.values(o.headers))
    if (typeof value !== 'string') throw invalid('header values must be strings');
  for (const name of ['timers', 'clock', 'random'] as const) {
    if (o[name] === null || (typeof o[name] !== 'object' && typeof o[name] !== 'function')) {
      throw invalid(`${name} is invalid`);
    }
  }

  const persistence = (o as { persistence: unknown }).persistence;
  let storage: CursorStorage | undefined;
  if (persistence === 'session') storage = sessionCursorStorage(o.persistenceKeyPrefix);
  else if (
    typeof persistence === 'object' &&
    persistence !== null &&
    typeof (persistence as CursorStorage).load === 'function'
  ) {
    storage = persistence as CursorStorage;
  } else if (persistence !== false) throw invalid("persistence must be 'session', a CursorStorage or false");

  const sharing = (o as { shareAcrossTabs?: unknown }).shareAcrossTabs;
  if (sharing !== undefined && sharing !== false && typeof (sharing as TabSharing)?.wrap !== 'function')
    throw invalid('shareAcrossTabs must be tabSharing() from @finishline/client/tabs, or false');

  const fallback = (o as { fallbackTransport?: unknown }).fallbackTransport;
  if (fallback !== undefined && typeof (fallback as FallbackTransport)?.follow !== 'function')
    throw invalid('fallbackTransport must be sseFallback() from @finishline/client/sse');
  const http = (o as { httpFallback?: unknown }).httpFallback;
  if (http !== undefined && http !== false && typeof (http as HttpFallback)?.attach !== 'function')
    throw invalid('httpFallback must be httpFallback() from @finishline/client/http, or false');
  if (typeof o.preferFallback !== 'boolean') throw invalid('preferFallback must be a boolean');
  if (o.preferFallback && fallback === undefined) throw invalid('preferFallback needs a fallbackTransport');

  const pageEvents = (o as { pageEvents?: unknown }).pageEvents;
  if (
    pageEvents !== undefined &&
    pageEvents !== false &&
    (typeof pageEvents !== 'object' || pageEvents === null)
  )
    throw invalid('pageEvents must be an object ({ document, window }) or false');

  return {
    ...o,
    pageEvents:
      pageEvents === false ? undefined : ((pageEvents as PageEventSources) ?? defaultPageEventSources()),
    url: url.href,
    httpUrl: httpUrl.href.replace(/\/+$/, ''),
    WebSocket: sharing ? (sharing as TabSharing).wrap(WebSocketImpl) : WebSocketImpl,
    fetch: fetchImpl === undefined ? undefined : (fetchImpl.bind(globalThis) as FetchLike),
    token: o.token,
    storage,
    fallbackTransport: fallback as FallbackTransport | undefined,
    httpFallback: http ? (http as HttpFallback) : undefined,
  };
}

/**
 * True for Node's own `WebSocket` (undici: global from Node 22, behind `--experimental-websocket` in Node
 * 20), which ignores the third constructor argument and so never sends `headers`. `ws` is told apart by
 * its static `Server`; a browser has a `document`.
 */
function isNodeBuiltinWebSocket(impl: WebSocketConstructorLike): boolean {
  const g = globalThis as {
    process?: { versions?: { node?: string } };
    document?: unknown;
    WebSocket?: unknown;
  };
  return (
    typeof g.process?.versions?.node === 'string' &&
    g.document === undefined &&
    impl === g.WebSocket &&
    !('Server' in impl)
  );
}
