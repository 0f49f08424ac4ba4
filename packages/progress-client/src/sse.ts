import { ErrorCode, ProgressError } from '@finishline/core';
import { integer, ofType, resolveOptions, sseEventId } from '@finishline/core/internal';
import {
  type FallbackHost,
  FallbackStreams,
  type FallbackTransport,
  type FallbackWire,
} from './fallback-streams.js';
import { decodeServerText } from './frame-check.js';
import { sendAck, taskRequest } from './http-ack.js';
import { errorFromResponse } from './http-errors.js';
import { noop } from './timers.js';
import type { HttpCredentials } from './transport-types.js';

export type { FallbackTransport } from './fallback-streams.js';

/**
 * `@finishline/client/sse`: follow watches over Server-Sent Events (`GET {basePath}/tasks/:id/stream`)
 * when a proxy refuses WebSocket upgrades. A separate entry, so pages that never need it do not load
 * it: pass `sseFallback()` as the client's `fallbackTransport`. The streams' bookkeeping (one per
 * unfinished watch, reopened when cut) is `fallback-streams.ts`, part of this entry too.
 *
 * @module
 */

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
) => Promise<{
  ok: boolean;
  body: ReadableStream<Uint8Array> | null;
  /**
   * The HTTP status (`fetch` has it): a refused stream is then answered as the HTTP fallback answers the
   * same refusal (401, 403, 404 end the watch; others are asked again with backoff). Without it a refusal
   * is taken for a failed open (a cut before anything came), and asked again with backoff.
   */
  status?: number;
  /** The body as text (`fetch` has it): the server's error code and message in a refusal. */
  text?(): Promise<string>;
  /**
   * The response headers (`fetch` has them): a 200 that is not `text/event-stream` (a captive portal's or
   * an SPA's HTML page) is taken for a failed open, reported on the watch (`store_unavailable`), and an
   * ack's answer that is not JSON for no answer (sent again). Without them every 200 is taken for the
   * stream, and every ack's answer below 500 (but 401 and 429) for the server's.
   */
  headers?: { get(name: string): string | null };
}>;

/**
 * The comment a stream opens with to say how often its heartbeats come: a line of the opening block, after
 * its `retry:` line (protocol.md: one block, `retry:` first). A line end before it, not a multiline `^`: a
 * frame's JSON holds U+2028 and U+2029 raw, line ends to a regex and not to SSE, so a task's message
 * `\u2028: hello heartbeatIntervalMs=300000` (an application's text, a file name a user chose) set the
 * stream's silence timeout to 10 minutes until 7 December 2026.
 */
const HEARTBEAT_INTERVAL = /[\r\n]: hello heartbeatIntervalMs=(\d+)/;

/** Options of {@link sseFallback}. */
export interface SseFallbackOptions {
  /** @default globalThis.fetch */
  fetch?: StreamingFetch | undefined;
  /**
   * After this many opens in a row (of any watch) answered as an event stream (200 and its headers) whose
   * body brought not a byte within `connectTimeoutMs` (a proxy that buffers event streams until they end:
   * the server writes its opening comment at once; an open never answered, a frozen replica's, does not
   * count, nor one behind a proxy that holds the headers too, which cannot be told from it), the
   * client polls its watches over HTTP instead, for as long as it would have used the streams (the socket's
   * `hello` ends it; the next fallback polls at once). Needs the client's `httpFallback`: without it the
   * streams go on. An integer >= 0; 0 never moves to polling.
   * @default 2
   */
  pollAfterStalls?: number | undefined;
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
 *
 * @throws ProgressError `invalid_input` naming the option, for an unknown one or a bad value (see
 *   {@link SseFallbackOptions}).
 */
export function sseFallback(options?: SseFallbackOptions): FallbackTransport {
  // Checked as the client's options are: a typo (`pollAfterStall`), a negative or fractional count or a
  // `fetch` that is not a function was taken without a word (or failed later, a TypeError from deep inside).
  const o = resolveOptions('sseFallback', SSE_OPTIONS, options);
  const fetchImpl = (o.fetch ?? (globalThis as { fetch?: StreamingFetch }).fetch)?.bind(globalThis);
  return {
    attach: (host) => new FallbackStreams(host, sseWire(host, fetchImpl), o.pollAfterStalls),
  };
}

/** The defaults and checks of {@link SseFallbackOptions}. */
const SSE_OPTIONS = {
  fetch: ofType<StreamingFetch>('a function', (value) => typeof value === 'function'),
  pollAfterStalls: integer(2, 0),
} satisfies { [K in keyof Required<SseFallbackOptions>]: unknown };

/** The SSE requests about one task, with the client's `httpUrl`, `headers`, `token` and `httpCredentials`. */
function sseWire(host: FallbackHost, fetchImpl: StreamingFetch | undefined): FallbackWire {
  const o = host.options;
  return {
    follow(task, onEnd) {
      const { taskId, cursor } = task;
      // Where it resumes, as the watch stood when the stream was asked for.
      const seq = cursor.seq;
      const abort = new AbortController();
      let ended = false;
      // A stream that died without a word (a laptop's sleep, a NAT that forgot the connection) is never
      // ended by `fetch`: its read would wait for the system's TCP timeout, minutes or more, and the watch
      // with it. Like the socket, a stream silent (no frame, no heartbeat) for 2 × the heartbeat interval
      // plus the margin is dropped, as a cut: it is reopened from the cursor. Until it delivered anything
      // (the server writes its opening comment at once) it has `connectTimeoutMs`, as a socket has until
      // `hello`: an open that a frozen replica or a holding proxy never answers used to wait the whole
      // silence timeout (32 s by default); it ends as a failed open (`served` false: backed off), not a cut.
      let quiet: () => void = noop;
      // `@finishline/server`'s default `heartbeatIntervalMs`, for a stream that does not say how often its
      // heartbeats come (`: hello heartbeatIntervalMs=<ms>`, which servers older than 4 December 2026 do not
      // send). (A literal: a module constant costs bytes in the bundle, where esbuild keeps it a variable.)
      let intervalMs = 15_000;
      /** The stream brought something (its opening comment, a heartbeat, a frame): it was served. */
      let delivered = false;
      /** The open was answered as an event stream (200, its headers). */
      let answered = false;
      let reader: ReadableStreamDefaultReader<Uint8Array> | undefined;
      const heard = () => {
        quiet();
        // (Not once it ended: a read that resolved as it was stopped would leave a timer behind.)
        if (!ended)
          quiet = host.timers.start(
            // Ended here, not only aborted: an open still waiting on the token function has no `fetch` the
            // abort could end, and one that never returned held the stream (and its watch) for ever. An open
            // answered as an event stream whose body brought nothing by then stalled (see `pollAfterStalls`):
            // a buffering proxy's mark. Not one never answered at all: a frozen replica's, which moved the
            // client to polling for good (a proxy that holds the headers too goes on reopening streams).
            // Judged once more on a timer of its own (0 ms), after what arrived is read: after the client's
            // own stall past the deadline (a long synchronous task) this timer ran before the chunks that
            // came meanwhile, waiting unread, and a live stream was dropped.
            () => (quiet = host.timers.start(() => end(undefined, answered && !delivered), 0)),
            delivered ? (o.heartbeatTimeoutMs ?? 2 * intervalMs + o.heartbeatMarginMs) : o.connectTimeoutMs,
          );
      };
      const end = (refusal?: ProgressError, stalled?: boolean) => {
        // The body let go of, every time: a `fetch` of the application's that ignores its signal went on
        // reading a stream stopped (a restart, a wake, the client closed) for as long as the server kept it
        // open, each one holding a connection (six per host in HTTP/1.1: the next streams never opened).
        // Again once the body came after the stop (the loop below does not start then).
        reader?.cancel().catch(noop);
        if (ended) return;
        ended = true;
        quiet();
        // Whatever ended it: a request still out (a read, a refusal's unread body) is let go.
        abort.abort();
        onEnd(refusal, delivered, stalled);
      };
      heard();
      // Asked again with the seq alone (no `epoch`) for a server older than epochs in ids; `renewed` once
      // asked again with a fresh credential.
      const follow = async (epoch?: string, renewed?: boolean): Promise<void> => {
        // (No `fetch` at all fails here as a `fetch` that throws does: a failed open, backed off.)
        const response = await taskRequest(o, fetchImpl as StreamingFetch, taskId, 'stream', {
          method: 'GET',
          headers: {
            accept: 'text/event-stream',
            // The id of the last frame applied, as the server wrote it: `<seq>~<epoch>` when the epoch is known.
            ...(seq > 0 && { 'last-event-id': sseEventId(seq, epoch) }),
          },
          signal: abort.signal,
        });
        // A server older than epochs in ids refuses `<seq>~<epoch>` (400): asked as it wrote them, the seq
        // alone. Only a malformed id gets a 400 from a newer one, which never sends this one. (At seq 0 no id
        // is sent: nothing else gets a 400, the task id being checked by `watch()`.)
        if (response.status === 400 && epoch !== undefined) return follow(undefined, renewed);
        // Refused: for good (401, 403, 404) or for now (429, 503…), which the streams' bookkeeping tells apart.
        if (!response.ok && response.status !== undefined) {
          // (No text, or none read: the status says it, as for a body that is not JSON.)
          const refusal = errorFromResponse(taskId, response.status, await response.text?.().catch(noop));
          // An expired credential (a tab that slept past its token's lifetime) is asked again at once, once,
          // with a fresh one from the token function, as the socket reconnects at once after a 4011 and HTTP
          // polling asks again; expired again, the token function hands out expired credentials: fatal, as
          // there (see `FallbackStreams`). Until 6 December 2026 the stream was refused, reported on the watch
          // and asked again with backoff, for ever.
          return refusal.code === ErrorCode.TokenExpired && !renewed ? follow(epoch, true) : end(refusal);
        }
        // Its reader taken first, which `end` cancels: a `fetch` of the application's that ignores its signal
        // went on receiving what is no stream (a captive portal's page, below), its connection held. Until
        // 8 December 2026 that body was never cancelled. So too a refusal's without a status.
        // biome-ignore lint/suspicious/noAssignInExpressions: the SSE entry's budget (1,716 B) has no byte for more.
        if (!(reader = response.body?.getReader()) || !response.ok) return end();
        // A 200 of something else (a captive portal's or an SPA's HTML page for every path) is a failed
        // open, backed off, not a stream that was served and cut: that one is reopened within a second, for
        // ever, by every watch of the page. Reported on the watch, as HTTP polling reports such a page
        // (`store_unavailable`): until 7 December 2026 the app was told nothing, its watch stuck.
        if (response.headers?.get('content-type')?.includes('event-stream') === false)
          return end(errorFromResponse(taskId, 200));
        answered = true;
        const decoder = new TextDecoder();
        let buffer = '';
        // Until its watch's end is applied: the stream is over then, whether or not its body ends (the server
        // ends it; a proxy that held it open held the end's ack, and the watch, until the silence timeout,
        // 32 s by default).
        while (!ended && !cursor.finished) {
          const { done, value } = await reader.read();
          if (done) break;
          delivered = true;
          buffer += decoder.decode(value, { stream: true });
          // The complete blocks, each ended by a blank line; the last part waits for the rest of its block.
          // Lines end with CRLF, LF or CR (the SSE spec): a proxy may rewrite the server's LFs, and a stream
          // split on LF LF alone (until 7 December 2026) never yielded a frame, its watch stuck on heartbeats.
          // A CR followed by LF is one line's end. A CR ending what came so far ends its line (a CR-only
          // stream's block is not held until more comes); when it was half of a CRLF split across two chunks,
          // its LF opens the next part as an empty line, which ends no block (no other line end follows it).
          const blocks = buffer.split(/(?:\r\n|\n|\r(?!\n)){2}/);
          // A block still unended past 300,000 UTF-16 units, more than any frame's block holds (its data at
          // most `maxFrameBytes`, 128 KiB), is read as it stands rather than kept: its data is refused as
          // `frame_too_large` and the stream starts over (below), and what is no frame is let go of. A
          // broken proxy streaming bytes without a blank line grew the page's memory for as long as it
          // streamed (each chunk counted as life): until 7 December 2026 nothing bounded it.
          buffer = (blocks.at(-1) as string)[3e5] ? '' : (blocks.pop() as string);
          for (const block of blocks) {
            // The interval a stream states, at most 5 minutes of it, as the socket takes of its hello: a
            // misconfigured or broken server's week of interval left a dead stream, and its watch, hanging
            // for two.
            intervalMs = Math.min(+(HEARTBEAT_INTERVAL.exec(block)?.[1] ?? intervalMs), 3e5);
            // Heard from: a block ended (with the interval it states, in the first). Not bytes that end none:
            // a proxy trickling them without a blank line, its upstream gone, held the watch for as long as it
            // went on (until 7 December 2026). A frame is one block, as on the socket one message.
            heard();
            // Only `data:` lines matter: `id:` repeats the frame's seq (and the epoch, which snapshots carry
            // and the watch keeps), comments are heartbeats.
            // (`[^\r\n]`, not `.`: a frame's JSON may hold U+2028 and U+2029 raw, which `.` does not match.)
            const data = [...block.matchAll(/^data: ?([^\r\n]*)/gm)].map((line) => line[1]).join('\n');
            if (data !== '' && !ended) {
              const decoded = decodeServerText(data);
              if (decoded.ok) host.onFrame(decoded.frame);
              else {
                // Reported, as the socket reports it. A frame it rejects may have carried an event: dropped
                // without a word, the watch stalled on the gap until the stream ended. The stream starts over
                // from the cursor, backing off (an open that failed: a server repeating the frame is not
                // asked again at once, for ever). Not for a frame type it does not know (a newer server's,
                // as the socket keeps its socket then).
                task.task.emitError(decoded.error);
                if (decoded.error.code !== ErrorCode.UnknownFrame) {
                  delivered = false;
                  return end();
                }
              }
            }
          }
        }
      };
      void follow(task.epoch)
        // Not once the stream ended (stopped: the socket back, its watch's stream started over): a token
        // function that failed after that reported it on the watch, which that attempt no longer served
        // (until 8 December 2026).
        // A token function that failed (or returned no credential) is reported on the watch, as the socket
        // reports it on the client: until 6 December 2026 the stream was asked for again and again without a
        // word. Anything else (no answer, a cut) is a failed open or a cut, as a socket's is.
        .catch((error) => !ended && error instanceof ProgressError && task.task.emitError(error))
        // (`finally` passes no argument: an end with no refusal, as `end()`.)
        .finally(end);
      return end;
    },
    ack: (taskId, seq) => sendAck(o, host.timers, fetchImpl, taskId, seq),
  };
}
