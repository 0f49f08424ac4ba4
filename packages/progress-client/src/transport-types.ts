/**
 * The types the client's transports share with its options: what a WebSocket, `fetch` and a token look
 * like to the client, and the options a fallback transport reads. A leaf module, so the transports
 * (tab sharing, the HTTP and SSE fallbacks) and `options.ts` do not import each other's types.
 *
 * @module
 */

import type { BackoffOptions, Resolved } from '@finishline/core/internal';
import type { TimerApi } from './timers.js';

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

/**
 * The part of `fetch` the client uses: `GET` requests of the HTTP API, and the `POST` of a terminal ack
 * (JSON `body`) when a watch ended over HTTP polling.
 */
export type FetchLike = (
  url: string,
  init: {
    method: 'GET' | 'POST';
    headers: Record<string, string>;
    credentials: HttpCredentials;
    signal: AbortSignal;
    body?: string;
  },
) => Promise<{
  ok: boolean;
  status: number;
  text(): Promise<string>;
  /**
   * The response headers (`fetch` has them): a terminal ack answered with something else than JSON (a
   * captive portal's HTML page) is sent again. Without them every answer below 500 is taken for the server's.
   */
  headers?: { get(name: string): string | null };
  /**
   * The body as a stream (`fetch` has it): the HTTP fallback reads its answers from it, refusing one past
   * the largest the server sends. Without it, `text()` reads the answer whole.
   */
  body?: ReadableStream<Uint8Array> | null;
}>;

/** The `credentials` mode of HTTP requests (as in `fetch`). */
export type HttpCredentials = 'include' | 'same-origin' | 'omit';

/** A credential, or a function returning one; called on every connection and HTTP request. */
export type TokenSource = string | (() => string | Promise<string>);

/**
 * The resolved options a fallback transport (HTTP polling, SSE) reads: a part of the client's resolved
 * options, described here so the transports need nothing else from `options.ts`. @internal
 */
export interface FallbackOptions {
  readonly httpUrl: string;
  readonly fetch: FetchLike | undefined;
  readonly headers: Readonly<Record<string, string>>;
  readonly token: TokenSource | undefined;
  readonly httpCredentials: HttpCredentials;
  readonly httpPollIntervalMs: number;
  /** No socket at all: the fallback transport from the start (see `ProgressClientOptions.preferFallback`). */
  readonly preferFallback: boolean;
  readonly random: () => number;
  /** The longest wait of a Server-Sent Events stream for its first bytes (then a failed open). */
  readonly connectTimeoutMs: number;
  /** The longest silence of a Server-Sent Events stream, when given (`null`: see `sse.ts`). */
  readonly heartbeatTimeoutMs: number | null;
  readonly heartbeatMarginMs: number;
  readonly clock: () => number;
  /** The timer functions (the `timers` option): for a deadline that must outlive `close()`. */
  readonly timers: TimerApi;
  /** The reconnect pacing's (`reconnect-pacing.ts`), which paces the reopening of SSE streams too. */
  readonly reconnect: Readonly<Resolved<BackoffOptions>>;
  readonly reconnectFirstDelayMs: number;
  readonly stableConnectionMs: number;
  /** How long a wake's check lasts: streams opened within it are not started over by the same wake. */
  readonly wakePingTimeoutMs: number;
}
