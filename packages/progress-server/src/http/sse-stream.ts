import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Task, TaskEvent, TaskView } from '@finishline/core';
import {
  ErrorCode,
  isProgressError,
  isTerminalType,
  LIMITS,
  SSE_ID_SEPARATOR,
  toTaskView,
} from '@finishline/core';
import type { SseCursor } from '@finishline/core/internal';
import { encodeFrame, parseSseEventId, SSE_END_MARK, sseEventId } from '@finishline/core/internal';
import type { Principal } from '../auth.js';
import type { StoreEpoch } from '../hub/store-epoch.js';
import type { TaskHub } from '../hub/task-hub.js';
import type { StreamSink, TaskStream } from '../hub/task-stream.js';
import type { ProgressLogger } from '../logger.js';
import { describeError } from '../logger.js';
import type { ResyncReason, ServerMetrics, SseStreamEndReason } from '../metrics.js';
import type { PrincipalLimits } from '../principal-limits.js';
import { eventFrameBytes, eventFrameText } from '../socket/event-frame-text.js';
import { waitAtMost } from '../wait.js';
import { closeIfBodyComing, fromCode } from './http-request.js';
import { stallTimer } from './stall-timer.js';

/**
 * `GET {basePath}/tasks/:id/stream`: one task over Server-Sent Events, for networks whose proxies refuse
 * WebSocket upgrades. The same JSON frames as the socket (version 2: snapshots carry the epoch, and a
 * cursor ahead of the task gets a `reset` snapshot); each frame's SSE `id` is its seq and the store's
 * epoch (`<seq>~<epoch>`), so a browser's `EventSource` (or any client sending `Last-Event-ID`) resumes
 * where it was cut, and one cut before a restore of the store starts over instead of resuming in another
 * log; heartbeats are comments; the stream ends after the terminal frame. Acknowledgements go over
 * `POST …/ack`.
 *
 * The stream gets its events as a socket subscription does, from a hub {@link TaskStream}: the live
 * events the hub hands every local subscriber (committed in this process, carried by the change feed, or
 * read once for all of them), and a backlog from the hub's recent events, or, when the hub does not hold
 * it, from the store in the principal's turn. So N streams of one task cost the replica the hub's one
 * read per commit (none for a commit of this process), not N, and no frame text is encoded twice. The
 * stream starts from the handler's authorizing load, which the hub followed the task before (as a
 * socket's subscribe follows before its load: a commit after that read is noticed, never one read too
 * late), and loads the task itself only after an epoch change.
 *
 * A reader that stops reading (its TCP window full) costs one socket buffer: once `write` returns false
 * the stream writes nothing more, and its hub stream goes stale (no read starts for it, live events pass
 * it by), until 'drain'; then a new hub stream reads on from the cursor what was committed meanwhile,
 * page by page however far behind, from memory while the hub still holds it. It never skips a seq, and
 * holds no events of its own beyond the rest of the page it was writing when the buffer filled (events
 * already read, cut to `MAX_HELD_BYTES` of frame text, counted in its principal's `maxQueuedBytesPerPrincipal`:
 * past it the stream ends, `max_queued_bytes`): 'drain' writes those before anything is read again. Read
 * again from the cursor instead, each 'drain' (one socket buffer, some 16 KiB: four 4 KB frames) cost a
 * page read: a reader catching up 5,880 such frames cost 1,570 reads of 1,000 events, and, slowed to
 * some 600 frames a second by them on a loaded machine, was still behind after 10 s. One that waits
 * for 'drain' longer than `sseStallTimeoutMs` is destroyed: a reader that never reads again would
 * otherwise hold its stream slot, hub follow and connection until it left. A failed read of the task, or
 * of a resume's backlog before any of it was written, ends the stream (`read_failed`: the client resumes
 * with `Last-Event-ID`); any later one (a backlog's next page, a gap in the live events) is retried every
 * `storeRetryDelayMs`, as a socket's is. A start over whose
 * `authorize` has not answered within `upgradeTimeoutMs` ends the stream (`hook_timeout`). Every end is counted once, by reason, in
 * `sse_streams_closed_total`; resumes and resets are counted as a socket's are (`resumes_total`,
 * `resyncs_total`).
 *
 * @module
 */

/** The longest delay `setTimeout` takes (a longer one fires at once). */
const MAX_TIMER_MS = 2_147_483_647;

/**
 * Most frame text of a page a stream holds for its reader while the buffer is full (see `hold`), in UTF-8
 * bytes (weighed by the text's `length`, a page of CJK text held up to three times this). The
 * whole rest of a page was held until 7 December 2026: up to `maxReplayEvents` events read for this stream
 * alone, some 20 MB of a page of 16 KiB items, so 100 stalled streams of one principal pinned 2 GB for
 * `sseStallTimeoutMs`. A drain takes some 16 KiB: the stream still reads a page per 64 drains, not one each.
 * @internal
 */
export const MAX_HELD_BYTES = 1024 * 1024;
// What a stream holds counts in its principal's `maxQueuedBytesPerPrincipal` with its sockets' queues
// (see `hold` in `streamTask`): bounded per stream only, the principal's 100 stalled streams held 100 MiB,
// and its sockets their 64 MiB besides.

/** An open stream, as the server sees it. @internal */
export interface OpenStream {
  /**
   * Ends it (the server shuts down), and resolves once what was written has left or, at `deadline`
   * (epoch ms of the real clock), its connection is destroyed, as a socket's is.
   */
  shutdown(deadline: number): Promise<void>;
  /** The store's epoch changed: the stream starts over from a reset snapshot of the new epoch. */
  epochRenewed(): void;
}

/**
 * Resolves once what `response` was given has left, or destroys its connection at `deadline` (epoch ms of
 * the real clock): a reader that stopped reading keeps the end behind a full buffer, and left to the stall
 * wait, its connection (and the process) outlived the server's close() by up to `sseStallTimeoutMs`.
 * @internal
 */
export async function finishByDeadline(response: ServerResponse, deadline: number): Promise<void> {
  if (response.writableFinished || response.destroyed) return;
  const done = new Promise((resolve) => {
    response.once('finish', resolve);
    response.once('close', resolve);
  });
  await waitAtMost(done, deadline - Date.now());
  if (!response.writableFinished) response.destroy();
}

/** What a stream needs from its server. @internal */
export interface StreamContext {
  readonly hub: TaskHub;
  readonly epoch: StoreEpoch;
  readonly limits: PrincipalLimits;
  readonly logger: ProgressLogger;
  readonly metrics: Pick<
    ServerMetrics,
    | 'sseStreamsClosed'
    | 'resumes'
    | 'resyncs'
    | 'storeErrors'
    | 'handlerErrors'
    | 'eventsSent'
    | 'snapshotsSent'
  >;
  readonly heartbeatIntervalMs: number;
  readonly sseStallTimeoutMs: number;
  /** The server's `sseStreamLifetimeMs`: a stream ends after at most this long (0: never). */
  readonly sseStreamLifetimeMs: number;
  readonly maxReplayEvents: number;
  readonly clock: () => number;
  /** The server's `reconnectsPerSecond`: paces the reconnects of its streams' readers (see {@link sseRetryMs}). */
  readonly reconnectsPerSecond: number;
  /** Open streams, ended by the server's shutdown and restarted by an epoch change. */
  readonly open: Set<OpenStream>;
}

/** The headers of an event stream, and of the answer to a `HEAD` of one. */
const STREAM_HEADERS = Object.freeze({
  'content-type': 'text/event-stream; charset=utf-8',
  // `no-transform`: a compressing proxy or middleware (Express's `compression`, a CDN) buffers what it
  // compresses, so frames and heartbeats would arrive in bursts or only at the end; `no-transform` is
  // what they honour to pass a response through as it is.
  'cache-control': 'no-store, no-transform',
  // No `Connection` header: Node keeps an HTTP/1.1 connection alive unless the request asked it closed,
  // and one set here overrode that (a request's `Connection: close` was answered keep-alive, its
  // connection held after the stream's end until keepAliveTimeout). A request whose body is still coming
  // is answered `Connection: close` (`closeIfBodyComing`), as the JSON answers are.
  // nginx buffers proxied responses unless told not to: events would arrive in bursts.
  'x-accel-buffering': 'no',
});

/** Shortest `retry:` a stream sends, in ms: EventSource's wait before it reconnects after a cut. */
const SSE_RETRY_MIN_MS = 1000;
/** Spread of the `retry:` jitter (ms) while the replica's streams are few (see {@link sseRetryMs}). */
const SSE_RETRY_SPREAD_MS = 2000;
/** Largest spread (ms), as the socket's `reconnectDelayMs` hint is capped. */
const SSE_RETRY_MAX_SPREAD_MS = 30_000;

/**
 * The `retry:` of a new stream: {@link SSE_RETRY_MIN_MS} plus a uniform draw over a spread of
 * {@link SSE_RETRY_SPREAD_MS}, or of `streams / reconnectsPerSecond` seconds when that is longer (capped at
 * 30 s), as a socket's `hello` hint spreads its client's first retry. EventSource reconnects a fixed
 * `retry` after a cut and adds no jitter of its own: with one value for every stream, a replica that shut
 * down had every browser that read from it come back in the same instant.
 */
export function sseRetryMs(streams: number, reconnectsPerSecond: number): number {
  const paced = reconnectsPerSecond === 0 ? 0 : Math.ceil((streams * 1000) / reconnectsPerSecond);
  const spread = Math.min(Math.max(SSE_RETRY_SPREAD_MS, paced), SSE_RETRY_MAX_SPREAD_MS);
  return SSE_RETRY_MIN_MS + Math.floor(Math.random() * spread);
}

/**
 * Answers `HEAD …/stream`: the headers a `GET` would get, then the end. A `HEAD` response has no body, so
 * a stream opened for one would write nothing (not even its headers, which node sends with the first
 * body byte) while holding the principal's stream slot, a hub follow and a timer until the client left.
 */
export function answerStreamHead(response: ServerResponse): void {
  response.writeHead(200, { ...STREAM_HEADERS, ...closeIfBodyComing(response.req) });
  response.end();
}

/**
 * Where a stream starts: the `Last-Event-ID` header (what `EventSource` sends when it reconnects) unless
 * it is empty, else the `afterSeq` query parameter, else 0; either an event id as the stream writes them or a seq alone (an
 * older client, a hand-written header), taken as a seq of the current epoch. Refuses anything else with
 * `invalid_input`.
 */
export function streamCursor(lastEventId: string | string[] | undefined, afterSeq: string | null): SseCursor {
  // An empty header is no header (EventSource sends none while its last event id is empty): it left
  // `afterSeq` unread, and the stream started over from 0 whatever cursor the URL carried.
  const text = typeof lastEventId === 'string' && lastEventId !== '' ? lastEventId : afterSeq;
  if (text === null || text === '') return { seq: 0 };
  const cursor = parseSseEventId(text);
  if (cursor === undefined) {
    throw fromCode(
      ErrorCode.InvalidInput,
      `Last-Event-ID (afterSeq) must be an event id of the stream: <seq> or <seq>${SSE_ID_SEPARATOR}<epoch>, either followed by ${SSE_END_MARK} on a terminal frame's, seq an integer from 0 to ${LIMITS.maxCount} and epoch an id`,
    );
  }
  return cursor;
}

/**
 * Whether the client's cursor is at the end of a task that ended: it has the terminal frame, and nothing
 * will ever follow it. That is what `EventSource` sends when it reconnects, as it does (`retry` later)
 * whenever a stream ends, the end after a terminal frame included: answered with a stream, it got the
 * terminal snapshot again, the end again, and reconnected once a second for as long as the page stayed
 * open. The handler answers it 204 No Content instead, which makes `EventSource` stop. Only an id of a
 * terminal frame ({@link SSE_END_MARK}) says that: a seq alone at a task's end may be of a run of the id
 * that retention purged, read up to a frame that was not its end, and answered 204, that reader never
 * learned an end (its `EventSource` stopped, a Finishline client reopened for ever); it gets the task's
 * reset snapshot instead (see {@link streamTask}). A cursor of another epoch is not at this task's end
 * (it gets its reset snapshot); one without an epoch, or met by a server that knows none, is taken as of
 * the current epoch, as {@link streamTask} takes it.
 */
export function cursorAtEnd(task: Task, from: SseCursor, epoch: string | undefined): boolean {
  return (
    from.ended === true &&
    task.status !== 'running' &&
    from.seq > 0 &&
    from.seq === task.seq &&
    (from.epoch === undefined || epoch === undefined || from.epoch === epoch)
  );
}

/** One stream to start: what {@link streamTask} takes. @internal */
export interface StreamRequest {
  /**
   * The task, authorized for the principal, as read while the hub already followed it (see
   * {@link streamTask}): where the stream starts.
   */
  readonly task: Task;
  /** The client's cursor ({@link streamCursor}). */
  readonly from: SseCursor;
  /** Whose stream it is: its reads run in this principal's turn, and it ends when the credential expires. */
  readonly principal: Principal;
  /**
   * Whether the principal may watch `task` (the handler's `authorize`, refusing when it throws): asked
   * again of the task a new epoch's load reads, which may be another task of the same id.
   */
  readonly authorize: (task: Task) => Promise<boolean>;
  /**
   * Longest wait on `authorize` (the server's `upgradeTimeoutMs`, which bounds the same hook on every
   * request): past it the stream ends (`hook_timeout`).
   */
  readonly hookTimeoutMs: number;
  readonly request: IncomingMessage;
  readonly response: ServerResponse;
  /** Called once, when the stream ends. */
  readonly release: () => void;
}

/**
 * Streams a task to `response` from the client's cursor `from` until its terminal frame, the client
 * leaving, or the server's shutdown. The caller authenticated, authorized and counted the stream
 * (`limits`); `release` is called once when it ends. The caller read `task` while following it in the
 * hub (`hub.follow`, held until this returns), so no commit after that read goes unnoticed.
 */
export function streamTask(
  ctx: StreamContext,
  { task: opening, from, principal, authorize, hookTimeoutMs, request, response, release }: StreamRequest,
): void {
  const taskId = opening.id;
  // The client may have left while the request was authenticated and authorized: its 'close' events
  // fired before any listener below, so nothing would ever end the stream (its socket slot, hub follow
  // and heartbeat timer).
  if (response.destroyed || request.socket.destroyed) {
    ctx.metrics.sseStreamsClosed.inc({ reason: 'client_left' });
    release();
    return;
  }
  /** Highest seq written (event or snapshot). */
  let cursor = from.seq;
  let ended = false;
  /**
   * What the next hub stream starts from: at first the caller's load (where it starts follows from the
   * client's cursor), after an epoch change a load of its own (`reset`: a reset snapshot of the new
   * epoch). Once one answered, `undefined`: a new stream (after 'drain') reads on from the cursor.
   */
  let load: Task | 'reset' | undefined = opening;
  /** The task's seq at the latest load: where the hub's own reads of the task start. */
  let loadedSeq = 0;
  /** The `createdAt` of the task at the latest load: the run of the id the stream is of. */
  let loadedRun: number | undefined;
  /** The response's buffer is full: nothing is written until 'drain'. */
  let draining = false;
  /**
   * The rest of the page of events the full buffer refused (`events[from]` on): written at 'drain' before
   * a new hub stream reads on from the cursor. At most `MAX_HELD_BYTES` of a page the hub stream already
   * read: the events after them are read again from the cursor.
   */
  let held: { readonly events: readonly TaskEvent[]; readonly from: number } | undefined;
  /** What `held` weighs in bytes of frame text, counted in the principal's queued bytes (see `hold`). */
  let heldBytes = 0;
  /** Lets go of `held`, giving its bytes back to the principal's budget. */
  const letGo = () => {
    held = undefined;
    if (heldBytes > 0) ctx.limits.addQueuedBytes(principal.id, -heldBytes);
    heldBytes = 0;
  };
  /** Destroys the stream if 'drain' does not come in time; set while `draining`. */
  let stall: (() => void) | undefined;
  /**
   * The hub stream: replaced at each start (the first, after an epoch change, after 'drain'), so work
   * started for an older one is dropped.
   */
  let stream: TaskStream | undefined;
  /** The deadlines of the `authorize` calls under way (see {@link authorizeWithin}): cleared at the end. */
  const authorizeTimers = new Set<NodeJS.Timeout>();

  response.writeHead(200, { ...STREAM_HEADERS, ...closeIfBodyComing(request) });
  // Tells EventSource how long to wait before reconnecting after a cut (ms), and any client how often
  // heartbeats come, as a socket's `hello` does: a stream silent for about twice that is dead.
  response.write(
    `retry: ${sseRetryMs(ctx.open.size, ctx.reconnectsPerSecond)}\n: hello heartbeatIntervalMs=${ctx.heartbeatIntervalMs}\n\n`,
  );

  const end = (reason: SseStreamEndReason) => {
    if (ended) return;
    ended = true;
    ctx.metrics.sseStreamsClosed.inc({ reason });
    clearInterval(heartbeat);
    clearTimeout(expiry);
    clearTimeout(lifetime);
    for (const timer of authorizeTimers) clearTimeout(timer);
    authorizeTimers.clear();
    // A full buffer: the end below waits behind it, for ever if the reader never reads again (a stream
    // ended by a shutdown, an expiry or a terminal frame that filled the buffer), holding the connection
    // with no slot counted for it. The stall wait goes on, and destroys it; a reader that reads again lets
    // the end finish first. A connection already closed (the client left while the stream waited) has
    // nothing to drop: its 'close' came before these listeners, and the stall timer ran on regardless.
    if (draining && stall !== undefined && !response.destroyed) {
      response.once('finish', stall);
      // Destroyed meanwhile (the shutdown's deadline, the connection closed): no 'finish' comes.
      response.once('close', stall);
    } else stall?.();
    letGo();
    response.off('drain', drained);
    stream?.close();
    ctx.open.delete(opened);
    release();
    if (!response.writableEnded) response.end();
  };
  const readFailed = (error: unknown) => {
    if (isProgressError(error, ErrorCode.TaskNotFound)) {
      // Purged (retention) between the stream's load and its first read of events: the task is gone, not
      // the store failing, as a socket's subscribe is answered task_not_found then, nothing counted. The
      // client's reconnect gets the 404.
      end('task_gone');
      return;
    }
    if (isProgressError(error, ErrorCode.Closed) && ctx.hub.closed) {
      // The hub (or its reads) refused the stream: the server shuts down, as the client learns from the end.
      // Counted as a store error, logged as a failed read and ended `read_failed`, a clean shutdown showed
      // the operator a failing store.
      end('shutdown');
      return;
    }
    ctx.metrics.storeErrors.inc();
    ctx.logger.warn({ err: describeError(error), taskId }, 'SSE stream read failed; ending the stream');
    // The client reconnects with Last-Event-ID and loses nothing.
    end('read_failed');
  };
  // The cursor and the hub's seqs are of the old epoch: the task is loaded again, and a reset snapshot of
  // it replaces the cursor, as for a Last-Event-ID ahead of the task. The old epoch's hub stream closes
  // at once: its reads in flight are dropped.
  const restart = (reason: ResyncReason) => {
    if (ended) return;
    ctx.metrics.resyncs.inc({ reason });
    // Events of the old epoch: never written now, whose ids would name the new one.
    letGo();
    load = 'reset';
    begin();
  };
  const opened: OpenStream = {
    shutdown: async (deadline) => {
      end('shutdown');
      await finishByDeadline(response, deadline);
    },
    epochRenewed: () => restart('epoch'),
  };
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
    stall = stallTimer(ctx.sseStallTimeoutMs, () => {
      ctx.logger.info(
        { taskId, stalledMs: ctx.sseStallTimeoutMs },
        'SSE reader stopped reading; dropping the stream',
      );
      // Destroyed, not ended: an end would wait behind the full buffer the reader is not reading.
      response.destroy();
      end('stalled');
    });
  };
  // Each id names the epoch its seq is of: frames of an old epoch are written only before the renewal is
  // noticed, and the restart's reset snapshot, the first frame after it, already carries the new one.
  // Counted as a socket's frames are (`events_sent_total`, `snapshots_sent_total`).
  // A terminal frame's id carries the end mark: the reader's reconnect from it is answered 204 (see
  // `cursorAtEnd`).
  const write = (seq: number, data: string, sent: { inc(): void }, terminal: boolean) => {
    if (ended) return;
    sent.inc();
    send(`id: ${sseEventId(seq, ctx.epoch.current)}${terminal ? SSE_END_MARK : ''}\ndata: ${data}\n\n`);
  };
  const snapshot = (view: TaskView, reset: boolean) => {
    const epoch = ctx.epoch.current;
    write(
      view.seq,
      encodeFrame({
        type: 'snapshot',
        task: view,
        ...(epoch === undefined ? {} : { epoch }),
        ...(reset ? { reset: true as const } : {}),
      }),
      ctx.metrics.snapshotsSent,
      view.status !== 'running',
    );
    cursor = view.seq;
    if (view.status !== 'running') end('finished');
  };

  /**
   * Where the stream starts, from the client's cursor and the task as loaded once followed, as a socket's
   * subscribe decides it (and counted as one is: a cursor above 0 is a resume). A cursor of another epoch (the store was restored since the client's last frame)
   * means nothing here, whatever its seq: it starts over as one ahead of the task does. One without an
   * epoch, or met by a server that knows none (a store without epochs, or its first read not answered
   * yet), is trusted. Returns whether it resumed from the cursor (wrote nothing).
   */
  const open = (task: Task): boolean => {
    const epoch = ctx.epoch.current;
    const otherEpoch = from.epoch !== undefined && epoch !== undefined && from.epoch !== epoch;
    const backlog = task.seq - from.seq;
    if (from.seq > 0) {
      ctx.metrics.resumes.inc();
      if (otherEpoch) ctx.metrics.resyncs.inc({ reason: 'epoch' });
      else if (backlog < 0) ctx.metrics.resyncs.inc({ reason: 'cursor_ahead' });
      else if (backlog > ctx.maxReplayEvents) ctx.metrics.resyncs.inc({ reason: 'replay_limit' });
    }
    // A cursor of a terminal frame not at this task's end (`cursorAtEnd` answered that one), or any cursor
    // at the end of a task that ended without the end mark: the reader's frame at that seq may be of a run
    // of the id that retention purged (a cursor names no run), not this task's, and an unmarked snapshot
    // at its seq is stale to it (delivery rule 3). A reset is applied; to a reader of this run it restates
    // the end at the seq it had.
    const otherRun = from.ended === true || (backlog === 0 && task.status !== 'running');
    if (from.seq === 0 || otherEpoch || otherRun || backlog <= 0 || backlog > ctx.maxReplayEvents) {
      snapshot(toTaskView(task), from.seq > 0 && (otherEpoch || otherRun || backlog < 0));
      return false;
    }
    return true;
  };

  /**
   * Writes `events` from `from` on, in order, up to a terminal one; when the buffer fills, holds the rest
   * for 'drain' (see {@link held}).
   */
  const writeEvents = (events: readonly TaskEvent[], from: number) => {
    for (let index = from; index < events.length; index++) {
      const event = events[index] as TaskEvent;
      write(event.seq, eventFrameText(event), ctx.metrics.eventsSent, isTerminalType(event.type));
      cursor = event.seq;
      if (isTerminalType(event.type)) {
        end('finished');
        return;
      }
      if (draining) {
        if (index + 1 < events.length) hold(events, index + 1);
        return;
      }
    }
  };

  /**
   * Holds the rest of a page from `from` on, cut to {@link MAX_HELD_BYTES} of frame text: what is cut is
   * read again from the cursor at 'drain' (a new hub stream reads on from the last seq written). A copy, so
   * the page's events already written, and their cached frame texts, are not kept with it.
   */
  const hold = (events: readonly TaskEvent[], from: number) => {
    letGo();
    // Ended by the write that filled the buffer (the client left): nothing gives the bytes back after.
    if (ended) return;
    let to = from;
    let bytes = 0;
    // The event that would take the page past the bound is left out, with those after it: checked after
    // adding it, the page held up to MAX_HELD_BYTES and one more event (a 16 KiB frame past the 1 MiB
    // documented), and a principal whose `maxQueuedBytesPerPrincipal` was that 1 MiB had the stream end.
    while (to < events.length) {
      const size = eventFrameBytes(events[to] as TaskEvent);
      if (bytes + size > MAX_HELD_BYTES) break;
      bytes += size;
      to++;
    }
    // The principal's budget, shared with its sockets' queues (`maxQueuedBytesPerPrincipal`), and the
    // server's over all principals (`maxQueuedBytesTotal`): past either, the stream ends, as a socket whose queue takes the principal past it does, and its reader resumes from its
    // Last-Event-ID. Holding nothing instead and reading on from the cursor at each 'drain' cost a page read
    // (1,000 events of up to 16 KiB, copied) per 16 KiB the reader took: 21,000 events read in a second for
    // three such streams.
    const passed = ctx.limits.addQueuedBytes(principal.id, bytes);
    if (passed !== undefined) {
      ctx.limits.addQueuedBytes(principal.id, -bytes);
      ctx.logger.info(
        { taskId, bound: passed },
        passed === 'maxQueuedBytesTotal'
          ? 'SSE reader reads too slowly and the server holds maxQueuedBytesTotal; dropping the stream'
          : 'SSE reader reads too slowly and its principal holds maxQueuedBytesPerPrincipal; dropping the stream',
      );
      end('max_queued_bytes');
      // Destroyed too: the end waits behind the full buffer the reader is not reading.
      response.destroy();
      return;
    }
    held = { events: events.slice(from, to), from: 0 };
    heldBytes = bytes;
  };

  /** What the hub stream `own()` hands over, taken only while it is the current one. */
  const sinkOf = (own: () => TaskStream): StreamSink => {
    const current = () => !ended && stream === own();
    return {
      replaysAll: true,
      events: (events) => {
        if (current()) writeEvents(events, 0);
      },
      snapshot: (view) => {
        if (current()) snapshot(view, false);
      },
      reset: (view) => {
        if (current()) snapshot(view, true);
      },
      gone: () => {
        if (current()) end('task_gone');
      },
      // The id's task is another run, or gone: loaded again and authorized, as after an epoch change.
      restart: () => {
        if (current()) restart('run');
      },
      failed: (error) => {
        if (current()) readFailed(error);
      },
      caughtUp: () => undefined,
      // A bug, not a store failure: ended all the same, since the hub stream's position may be past what
      // was written. The client resumes from its Last-Event-ID.
      internalError: (error) => {
        if (!current()) return;
        ctx.metrics.handlerErrors.inc();
        ctx.logger.error({ err: describeError(error), taskId }, 'SSE stream failed; ending the stream');
        end('internal');
      },
      // Stale while the buffer is full: no read starts for the hub stream, and live events pass it by.
      isOpen: () => !ended && !draining,
    };
  };

  /**
   * Opens a hub stream in place of the current one, which lets go only once the new one follows the
   * task (so the hub keeps its place and its recent events), and starts it: from the cursor, or after a
   * load. A full buffer waits for 'drain', which begins again.
   */
  const begin = () => {
    if (ended || draining) return;
    const previous = stream;
    const next: TaskStream = ctx.hub.stream(
      taskId,
      principal.id,
      sinkOf(() => next),
    );
    stream = next;
    previous?.close();
    if (load === undefined) next.start(cursor, false, loadedSeq, loadedRun);
    else void loadAndStart(next, load);
  };
  /**
   * `authorize(task)`, or `'timeout'` once it has not answered within `hookTimeoutMs`: a hook that hung
   * (an auth backend down) held the stream, sending heartbeats and nothing else, until its lifetime ended
   * it (never, with `sseStreamLifetimeMs: 0`), where every request's wait on it gives up then.
   */
  const authorizeWithin = (task: Task): Promise<boolean | 'timeout'> =>
    new Promise<boolean | 'timeout'>((resolve) => {
      const settle = (answer: boolean | 'timeout') => {
        clearTimeout(timer);
        authorizeTimers.delete(timer);
        resolve(answer);
      };
      const timer = setTimeout(() => settle('timeout'), hookTimeoutMs);
      authorizeTimers.add(timer);
      authorize(task).then(settle, () => settle(false));
    });
  const loadAndStart = async (next: TaskStream, kind: Task | 'reset'): Promise<void> => {
    let task: Task | undefined | null;
    try {
      task = kind === 'reset' ? await next.load() : kind;
    } catch (error) {
      if (stream === next) readFailed(error);
      return;
    }
    // `null`: ended, superseded by an epoch change, or the buffer filled meanwhile ('drain' loads again).
    if (task === null || stream !== next || ended) return;
    if (task === undefined) {
      end('task_gone');
      return;
    }
    // A restored store's task of this id may be another one (another owner's): the stream's authorization
    // was of the old epoch's task. Refused, it ends as for a task gone, with nothing of it written: the
    // client's reconnect gets the answer of a missing task, as a socket's restarted subscription does.
    // `load` stays 'reset' meanwhile: a 'drain' (a heartbeat filled the buffer) begins with a load again.
    if (kind === 'reset') {
      const allowed = await authorizeWithin(task);
      if (stream !== next || ended) return;
      if (allowed === 'timeout') {
        ctx.metrics.handlerErrors.inc();
        ctx.logger.warn(
          { taskId, timeoutMs: hookTimeoutMs },
          'authorize hook did not answer within upgradeTimeoutMs; ending the event stream',
        );
        end('hook_timeout');
        return;
      }
      // As a load answered after the buffer filled: 'drain' begins again, with a load.
      if (draining) return;
      if (!allowed) {
        end('task_gone');
        return;
      }
    }
    load = undefined;
    loadedSeq = task.seq;
    loadedRun = task.createdAt;
    let resumed = false;
    if (kind === 'reset') snapshot(toTaskView(task), true);
    else resumed = open(task);
    // A snapshot that filled the buffer left `next` stale: 'drain' starts a new one from the cursor. A
    // resume's first catch-up writes the events after the cursor, or the task's state when the store no
    // longer holds any (restored since the load): the stream is never left silent on heartbeats.
    if (ended) return;
    if (resumed) next.resume(cursor, task.seq, task.createdAt);
    else next.start(cursor, false, task.seq, task.createdAt);
  };

  function drained(): void {
    draining = false;
    stall?.();
    // The rest of the page first: once it is written (the buffer did not fill again), a new hub stream
    // reads on from the cursor. Nothing else is written between: the hub stream was stale meanwhile.
    const rest = held;
    letGo();
    if (rest !== undefined) writeEvents(rest.events, rest.from);
    begin();
  }

  /**
   * The server's clock; `fallback` (counted and logged) when it throws, as one that returned NaN once does.
   * Thrown on as the stream opened (its expiry's read), it left the stream open with its first read never
   * started, nothing but heartbeats for as long as the reader stayed. Its expiry is taken as past instead:
   * the stream ends at once, `expired`, and the client's reconnect, with a fresh credential, opens it again.
   */
  const now = (fallback: number): number => {
    try {
      return ctx.clock();
    } catch (error) {
      ctx.metrics.handlerErrors.inc();
      ctx.logger.error({ err: describeError(error), taskId }, 'SSE stream could not read the clock');
      return fallback;
    }
  };
  const heartbeat = setInterval(() => {
    // A comment: EventSource ignores it, but proxies and the client's liveness timer see traffic. A full
    // buffer is traffic enough, and a stalled reader's buffer must not grow by one comment per interval
    // (a refused heartbeat starts the wait for 'drain' and its stall timeout, as a refused frame does).
    if (ended || draining) return;
    // The time is for whoever reads the stream: a clock that throws (one that returned NaN once) threw out
    // of this timer, an uncaught exception, which ends a Node process by default. Counted and logged as a
    // socket's failed heartbeat is; the stream goes on, this heartbeat without its time.
    const time = now(Number.NaN);
    send(Number.isNaN(time) ? ': heartbeat\n\n' : `: heartbeat ${time}\n\n`);
  }, ctx.heartbeatIntervalMs);
  heartbeat.unref();
  // The stream ends when its credential expires, as a socket is closed then (4011): the client's next
  // request, from its cursor, carries a fresh credential. (A wait beyond a timer's range ends it early.)
  const expiresAt = principal.expiresAt;
  const expiry =
    expiresAt === undefined
      ? undefined
      : setTimeout(
          () => end('expired'),
          Math.min(Math.max(0, expiresAt - now(Number.POSITIVE_INFINITY)), MAX_TIMER_MS),
        );
  expiry?.unref();
  // Ended after its lifetime, less a random tenth (streams opened together, after a restart, end apart):
  // a reader that stopped reading is dropped when the buffers it no longer empties are full, which a quiet
  // task's heartbeats take weeks to do, and an event stream, unlike a socket, has no pong to miss.
  const lifetimeMs = ctx.sseStreamLifetimeMs;
  const lifetime =
    lifetimeMs === 0
      ? undefined
      : setTimeout(() => end('lifetime'), lifetimeMs - Math.floor((Math.random() * lifetimeMs) / 10));
  lifetime?.unref();

  begin();
}
