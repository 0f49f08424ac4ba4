import type { IncomingMessage, ServerResponse } from 'node:http';
import type { ProgressStore, ServerFrame, Task, TaskEvent, Unsubscribe } from '@finishline/core';
import { ErrorCode, isTerminalType, LIMITS, SSE_ID_SEPARATOR, toTaskView } from '@finishline/core';
import type { SseCursor } from '@finishline/core/internal';
import { encodeFrame, parseSseEventId, sseEventId } from '@finishline/core/internal';
import type { StoreEpoch } from '../hub/store-epoch.js';
import type { TaskHub } from '../hub/task-hub.js';
import type { ProgressLogger } from '../logger.js';
import { describeError } from '../logger.js';
import type { ServerMetrics, SseStreamEndReason } from '../metrics.js';
import type { PrincipalLimits } from '../principal-limits.js';
import { fromCode } from './http-request.js';

/**
 * `GET {basePath}/tasks/:id/stream`: one task over Server-Sent Events, for networks whose proxies refuse
 * WebSocket upgrades. The same JSON frames as the socket (version 2: snapshots carry the epoch, and a
 * cursor ahead of the task gets a `reset` snapshot); each frame's SSE `id` is its seq and the store's
 * epoch (`<seq>~<epoch>`), so a browser's `EventSource` (or any client sending `Last-Event-ID`) resumes
 * where it was cut, and one cut before a restore of the store starts over instead of resuming in another
 * log; heartbeats are comments; the stream ends after the terminal frame. Acknowledgements go over
 * `POST …/ack`.
 *
 * The stream reads the store: on subscribe, and whenever the hub announces a commit of the task (one
 * read per announcement, serialized), so it needs no per-stream event buffer and never skips a seq. A
 * reader that stops reading (its TCP window full) costs one socket buffer: once `write` returns false the
 * stream writes nothing more until 'drain', then reads on from its cursor what was committed meanwhile.
 * One that waits for 'drain' longer than `sseStallTimeoutMs` is destroyed: a reader that never reads
 * again would otherwise hold its stream slot, hub follow and connection until it left. Every end is
 * counted once, by reason, in `sse_streams_closed_total`.
 *
 * @module
 */

/** The longest delay `setTimeout` takes (a longer one fires at once). */
const MAX_TIMER_MS = 2_147_483_647;

/** An open stream, as the server sees it. @internal */
export interface OpenStream {
  /** Ends it (the server shuts down). */
  end(): void;
  /** The store's epoch changed: the stream starts over from a reset snapshot of the new epoch. */
  epochRenewed(): void;
}

/** What a stream needs from its server. @internal */
export interface StreamContext {
  readonly hub: TaskHub;
  readonly epoch: StoreEpoch;
  readonly limits: PrincipalLimits;
  readonly store: Pick<ProgressStore, 'readEvents' | 'getTask'>;
  readonly logger: ProgressLogger;
  readonly metrics: Pick<ServerMetrics, 'sseStreamsClosed'>;
  readonly heartbeatIntervalMs: number;
  readonly sseStallTimeoutMs: number;
  readonly maxReplayEvents: number;
  readonly clock: () => number;
  /** Open streams, ended by the server's shutdown and restarted by an epoch change. */
  readonly open: Set<OpenStream>;
}

/** The headers of an event stream, and of the answer to a `HEAD` of one. */
const STREAM_HEADERS = Object.freeze({
  'content-type': 'text/event-stream; charset=utf-8',
  'cache-control': 'no-store',
  connection: 'keep-alive',
  // nginx buffers proxied responses unless told not to: events would arrive in bursts.
  'x-accel-buffering': 'no',
});

/**
 * Answers `HEAD …/stream`: the headers a `GET` would get, then the end. A `HEAD` response has no body, so
 * a stream opened for one would write nothing (not even its headers, which node sends with the first
 * body byte) while holding the principal's stream slot, a hub follow and a timer until the client left.
 */
export function answerStreamHead(response: ServerResponse): void {
  response.writeHead(200, STREAM_HEADERS);
  response.end();
}

/**
 * Where a stream starts: the `Last-Event-ID` header (what `EventSource` sends when it reconnects), else the
 * `afterSeq` query parameter, else 0; either an event id as the stream writes them or a seq alone (an
 * older client, a hand-written header), taken as a seq of the current epoch. Refuses anything else with
 * `invalid_input`.
 */
export function streamCursor(lastEventId: string | string[] | undefined, afterSeq: string | null): SseCursor {
  const text = typeof lastEventId === 'string' ? lastEventId : afterSeq;
  if (text === null || text === '') return { seq: 0 };
  const cursor = parseSseEventId(text);
  if (cursor === undefined) {
    throw fromCode(
      ErrorCode.InvalidInput,
      `Last-Event-ID (afterSeq) must be <seq> or <seq>${SSE_ID_SEPARATOR}<epoch>, seq an integer from 0 to ${LIMITS.maxCount} and epoch an id`,
    );
  }
  return cursor;
}

/**
 * Streams `task` to `response` from the client's cursor `from` until its terminal frame, the client
 * leaving, or the server's shutdown. The caller authenticated, authorized and counted the stream
 * (`limits`); `release` is called once when it ends.
 */
export function streamTask(
  ctx: StreamContext,
  task: Task,
  from: SseCursor,
  expiresAt: number | undefined,
  request: IncomingMessage,
  response: ServerResponse,
  release: () => void,
): void {
  // The client may have left while the request was authenticated and authorized: its 'close' events
  // fired before any listener below, so nothing would ever end the stream (its socket slot, hub follow
  // and heartbeat timer).
  if (response.destroyed || request.socket.destroyed) {
    ctx.metrics.sseStreamsClosed.inc({ reason: 'client_left' });
    release();
    return;
  }
  const taskId = task.id;
  let cursor = from.seq;
  let ended = false;
  let reading = false;
  let again = false;
  /**
   * Bumped by each epoch restart: a read started before it is of the old epoch, and its answer (events
   * continuing the old cursor) must not follow the reset snapshot.
   */
  let generation = 0;
  /** An epoch restart is reading the task: the pump waits for its snapshot, which sets the cursor. */
  let restarting = false;
  /** The response's buffer is full: nothing is written until 'drain'. */
  let draining = false;
  /** Destroys the stream if 'drain' does not come in time; set while `draining`. */
  let stall: NodeJS.Timeout | undefined;
  let unfollow: Unsubscribe | undefined;

  response.writeHead(200, STREAM_HEADERS);
  // Tells EventSource how long to wait before reconnecting after a cut (ms).
  response.write('retry: 1000\n\n');

  const end = (reason: SseStreamEndReason) => {
    if (ended) return;
    ended = true;
    ctx.metrics.sseStreamsClosed.inc({ reason });
    clearInterval(heartbeat);
    clearTimeout(expiry);
    clearTimeout(stall);
    response.off('drain', drained);
    unfollow?.();
    ctx.open.delete(opened);
    release();
    if (!response.writableEnded) response.end();
  };
  // The cursor and the hub's seqs are of the old epoch: re-read the task, and a reset snapshot of it
  // replaces the cursor, as for a Last-Event-ID ahead of the task.
  const restart = async (): Promise<void> => {
    generation += 1;
    const mine = generation;
    restarting = true;
    try {
      const current = await ctx.store.getTask(taskId);
      // A later restart (another renewal) supersedes this one.
      if (ended || mine !== generation) return;
      restarting = false;
      if (current === undefined) {
        end('task_gone');
        return;
      }
      ctx.hub.observe(taskId, current.seq);
      snapshot(current, true);
      void pump();
    } catch (error) {
      if (mine !== generation) return;
      ctx.logger.warn({ err: describeError(error), taskId }, 'SSE stream restart failed; ending the stream');
      end('read_failed');
    }
  };
  const opened: OpenStream = { end: () => end('shutdown'), epochRenewed: () => void restart() };
  ctx.open.add(opened);
  // Once the stream ended itself these come too, and count nothing: `end` runs once.
  const left = () => end('client_left');
  request.on('close', left);
  response.on('close', left);
  response.on('error', left);

  /** Writes `chunk`; when the buffer is full, waits for 'drain', but only until the stall timeout. */
  const send = (chunk: string) => {
    if (response.write(chunk) || draining) return;
    draining = true;
    response.once('drain', drained);
    stall = setTimeout(() => {
      ctx.logger.info(
        { taskId, stalledMs: ctx.sseStallTimeoutMs },
        'SSE reader stopped reading; dropping the stream',
      );
      // Destroyed, not ended: an end would wait behind the full buffer the reader is not reading.
      response.destroy();
      end('stalled');
    }, ctx.sseStallTimeoutMs);
    stall.unref();
  };
  // Each id names the epoch its seq is of: frames of an old epoch are written only before the renewal is
  // noticed, and the restart's reset snapshot, the first frame after it, already carries the new one.
  const write = (seq: number, frame: ServerFrame) => {
    if (!ended) send(`id: ${sseEventId(seq, ctx.epoch.current)}\ndata: ${encodeFrame(frame)}\n\n`);
  };
  const epochField = () => {
    const epoch = ctx.epoch.current;
    return epoch === undefined ? {} : { epoch };
  };
  const snapshot = (current: Task, reset: boolean) => {
    write(current.seq, {
      type: 'snapshot',
      task: toTaskView(current),
      ...epochField(),
      ...(reset ? { reset: true as const } : {}),
    });
    cursor = current.seq;
    if (current.status !== 'running') end('finished');
  };

  const heartbeat = setInterval(() => {
    // A comment: EventSource ignores it, but proxies and the client's liveness timer see traffic. A full
    // buffer is traffic enough, and a stalled reader's buffer must not grow by one comment per interval
    // (a refused heartbeat starts the wait for 'drain' and its stall timeout, as a refused frame does).
    if (!ended && !draining) send(`: heartbeat ${ctx.clock()}\n\n`);
  }, ctx.heartbeatIntervalMs);
  heartbeat.unref();
  // The stream ends when its credential expires, as a socket is closed then (4011): the client's next
  // request, from its cursor, carries a fresh credential. (A wait beyond a timer's range ends it early.)
  const expiry =
    expiresAt === undefined
      ? undefined
      : setTimeout(() => end('expired'), Math.min(Math.max(0, expiresAt - ctx.clock()), MAX_TIMER_MS));
  expiry?.unref();

  /** Reads and writes everything after the cursor; re-runs once if a commit was announced meanwhile. */
  const pump = async (): Promise<void> => {
    if (reading) {
      again = true;
      return;
    }
    reading = true;
    try {
      do {
        again = false;
        for (;;) {
          // The restart calls the pump again once its snapshot set the cursor; 'drain' calls it again
          // once the reader caught up.
          if (ended || restarting || draining) return;
          const readIn = generation;
          const events = await ctx.store.readEvents(taskId, cursor, ctx.maxReplayEvents);
          if (ended) return;
          if (readIn !== generation) {
            again = true;
            break;
          }
          if (events.length === 0) break;
          if ((events[0] as TaskEvent).seq !== cursor + 1) {
            // Retention removed the events after the cursor: the snapshot stands for them. Then read on
            // from its seq: a commit announced while the task was read (its terminal, say) only set `again`.
            const current = await ctx.store.getTask(taskId);
            if (readIn !== generation) {
              again = true;
              break;
            }
            if (current !== undefined) snapshot(current, false);
            else end('task_gone');
            continue;
          }
          for (const event of events) {
            write(event.seq, { type: 'event', event });
            cursor = event.seq;
            if (isTerminalType(event.type)) {
              end('finished');
              return;
            }
            // The rest of this page is read again from the cursor after 'drain': holding it here would
            // be the unbounded buffer this avoids.
            if (draining) return;
          }
        }
      } while (again && !ended);
    } catch (error) {
      ctx.logger.warn({ err: describeError(error), taskId }, 'SSE stream read failed; ending the stream');
      // The client reconnects with Last-Event-ID and loses nothing.
      end('read_failed');
    } finally {
      reading = false;
    }
  };

  function drained(): void {
    draining = false;
    clearTimeout(stall);
    void pump();
  }

  // Follow before the first read, so a commit after it is announced.
  unfollow = ctx.hub.follow(taskId, { deliver: () => void pump() });
  // Where the hub's own reads of a newly followed task start (as a socket's subscribe does).
  ctx.hub.observe(taskId, task.seq);
  // A cursor of another epoch (the store was restored since the client's last frame) means nothing here,
  // whatever its seq: it starts over as one ahead of the task does. One without an epoch, or met by a
  // server that knows none (a store without epochs, or its first read not answered yet), is trusted.
  const epoch = ctx.epoch.current;
  const otherEpoch = from.epoch !== undefined && epoch !== undefined && from.epoch !== epoch;
  const backlog = task.seq - from.seq;
  if (from.seq === 0 || otherEpoch || backlog <= 0 || backlog > ctx.maxReplayEvents) {
    snapshot(task, from.seq > 0 && (otherEpoch || backlog < 0));
  }
  void pump();
}
