import type { ServerFrame } from '@finishline/core';
import { decodeServerText } from './frame-check.js';
import type { HttpCredentials } from './options.js';

/**
 * `@finishline/client/sse`: follow watches over Server-Sent Events (`GET {basePath}/tasks/:id/stream`)
 * when a proxy refuses WebSocket upgrades. A separate entry, so pages that never need it do not load
 * it: pass `sseFallback()` as the client's `fallbackTransport`.
 *
 * @module
 */

/** What a fallback transport is given to follow one task. */
export interface FallbackFollow {
  /** The HTTP API base, e.g. `https://app.example.com/progress`. */
  httpUrl: string;
  /** Extra request headers (the client's `headers`) and the bearer credential, if any. */
  headers: Record<string, string>;
  credential: () => Promise<string | undefined>;
  credentials: HttpCredentials;
  taskId: string;
  /** The watch's cursor: the stream resumes after it (`Last-Event-ID`). */
  afterSeq: number;
  /** Every frame of the stream, decoded and validated like a socket frame. */
  onFrame(frame: ServerFrame): void;
  /** Called once when the stream ends for any reason (terminal frame, cut, refusal, stop). */
  onEnd(): void;
}

/**
 * A transport the client uses for unfinished watches while WebSocket upgrades keep failing (after
 * `httpFallbackAfterAttempts` attempts, or at once with `preferFallback`).
 */
export interface FallbackTransport {
  /** Follows one task; returns the function that stops it. */
  follow(params: FallbackFollow): () => void;
  /** Acknowledges `seq` of a task (cumulative), best effort. */
  ack(params: Omit<FallbackFollow, 'afterSeq' | 'onFrame' | 'onEnd'> & { seq: number }): void;
}

/** The part of `fetch` the SSE transport uses: a streaming response body. */
export type StreamingFetch = (
  url: string,
  init: {
    method: 'GET' | 'POST';
    headers: Record<string, string>;
    credentials: HttpCredentials;
    signal?: AbortSignal;
    body?: string;
  },
) => Promise<{ ok: boolean; body: ReadableStream<Uint8Array> | null }>;

/** Options of {@link sseFallback}. */
export interface SseFallbackOptions {
  /** @default globalThis.fetch */
  fetch?: StreamingFetch;
}

/**
 * The Server-Sent Events transport. Reads the stream with `fetch` rather than `EventSource`, which can
 * send neither an `Authorization` header nor a `Last-Event-ID` of the client's choosing.
 *
 * @example
 * ```ts
 * import { ProgressClient } from '@finishline/client';
 * import { sseFallback } from '@finishline/client/sse';
 * const client = new ProgressClient({ url: '/progress', fallbackTransport: sseFallback() });
 * ```
 */
export function sseFallback(options: SseFallbackOptions = {}): FallbackTransport {
  const fetchImpl = (options.fetch ?? (globalThis as { fetch?: StreamingFetch }).fetch)?.bind(globalThis);
  const headersOf = async (params: Pick<FallbackFollow, 'headers' | 'credential'>) => {
    const headers: Record<string, string> = { ...params.headers };
    const credential = await params.credential();
    if (credential !== undefined) headers.authorization = `Bearer ${credential}`;
    return headers;
  };
  const taskUrl = (httpUrl: string, taskId: string, tail: string) =>
    `${httpUrl}/tasks/${encodeURIComponent(taskId)}/${tail}`;
  return {
    follow(params) {
      const abort = new AbortController();
      let ended = false;
      const end = () => {
        if (ended) return;
        ended = true;
        params.onEnd();
      };
      void (async () => {
        if (fetchImpl === undefined) return end();
        const headers = await headersOf(params);
        headers.accept = 'text/event-stream';
        if (params.afterSeq > 0) headers['last-event-id'] = String(params.afterSeq);
        const response = await fetchImpl(taskUrl(params.httpUrl, params.taskId, 'stream'), {
          method: 'GET',
          headers,
          credentials: params.credentials,
          signal: abort.signal,
        });
        if (!response.ok || response.body === null) return end();
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffer = '';
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let cut = buffer.indexOf('\n\n');
          while (cut >= 0) {
            const block = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            // Only `data:` lines matter: `id:` repeats the frame's seq, comments are heartbeats.
            const data = block
              .split('\n')
              .filter((line) => line.startsWith('data:'))
              .map((line) => line.slice(line.startsWith('data: ') ? 6 : 5))
              .join('\n');
            if (data !== '' && !ended) {
              const decoded = decodeServerText(data);
              if (decoded.ok) params.onFrame(decoded.frame);
            }
            cut = buffer.indexOf('\n\n');
          }
        }
      })()
        .catch(() => undefined)
        .finally(end);
      return () => {
        abort.abort();
        end();
      };
    },
    ack(params) {
      if (fetchImpl === undefined) return;
      void headersOf(params)
        .then((headers) =>
          fetchImpl(taskUrl(params.httpUrl, params.taskId, 'ack'), {
            method: 'POST',
            headers: { ...headers, 'content-type': 'application/json' },
            credentials: params.credentials,
            body: JSON.stringify({ seq: params.seq }),
          }),
        )
        .catch(() => undefined);
    },
  };
}
