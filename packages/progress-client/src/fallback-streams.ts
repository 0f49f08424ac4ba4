import type { ProgressError, ServerFrame } from '@finishline/core';
import { ErrorCode } from '@finishline/core';
import { ReconnectPacing } from './reconnect-pacing.js';
import { FATAL_TASK_ERRORS, type TaskSubscription } from './task-subscription.js';
import type { TimerSet } from './timers.js';
import type { FallbackOptions } from './transport-types.js';

/**
 * The watches followed over the fallback transport (SSE) while the socket cannot connect (or with
 * `preferFallback`): one stream per unfinished watch, resumed from its cursor when cut, and the terminal
 * seq acknowledged over the same transport. Part of the `@finishline/client/sse` entry (the transport
 * brings it to the client through {@link FallbackTransport.attach}), so pages without SSE do not load it.
 *
 * @module
 */

/** What the fallback transport is given by the client it is attached to. @internal */
export interface FallbackHost {
  readonly options: FallbackOptions;
  /** The client's timers (cleared when it closes): a stream's silence deadline. */
  readonly timers: TimerSet;
  /** Every followed task. */
  tasks(): Iterable<TaskSubscription>;
  /** True while the client is open and still follows this very subscription (no handle closed it). */
  current(task: TaskSubscription): boolean;
  /** A frame a stream delivered, handled as one from the socket. */
  onFrame(frame: ServerFrame): void;
  /** Retrying cannot help (the credentials are refused): close the client with this error. */
  fatal(error: ProgressError): void;
  /**
   * The task cannot be watched (not found, forbidden): end its watches. Without `error`, for a finished
   * task whose end was acknowledged: the client lets go of it, its handles closing with their final state.
   * Nothing for a task the client no longer follows (see {@link current}).
   */
  failTask(task: TaskSubscription, error?: ProgressError): void;
  /**
   * Polls every unfinished watch over HTTP and returns true; set by the client's `httpFallback` when it
   * attaches to the same host (none without one).
   */
  poll?: () => true;
}

/** The fallback transport bound to one client. @internal */
export interface FallbackRuntime {
  /** Follows every unfinished watch over the fallback transport, until {@link stop}. */
  start(): void;
  /** Stops every stream (a socket said `hello`, or the client closed). */
  stop(): void;
  /** A new watch: followed over a stream too while the transport is in use. */
  open(task: TaskSubscription): void;
  /** The last handle of a watch closed: its stream goes. */
  close(task: TaskSubscription): void;
  /** The watch looks stuck (the 100% watchdog): its stream, if it has one, starts over from its cursor. */
  restart(task: TaskSubscription): void;
  /** The page woke (page life): every stream starts over from its cursor. */
  wake(): void;
}

/**
 * A transport the client uses for unfinished watches while WebSocket upgrades keep failing (after
 * `httpFallbackAfterAttempts` attempts, or at once with `preferFallback`). Opaque: `sseFallback()` from
 * `@finishline/client/sse` makes one; pass it as the `fallbackTransport` option.
 */
export interface FallbackTransport {
  /** @internal Binds the transport to one client. */
  attach(host: FallbackHost): FallbackRuntime;
}

/** How a fallback transport reaches the server about one task (the SSE requests of `sse.ts`). @internal */
export interface FallbackWire {
  /**
   * Follows a task from after its cursor (with the store epoch its seq is of, when the watch knows it: from
   * a snapshot, a `hello`, or a saved cursor), handing every frame to the host's `onFrame` and reporting on
   * the watch every frame the client rejects (`invalid_frame`, `frame_too_large`, `unknown_frame`); `onEnd`
   * is called once when the stream ends for any reason (its watch's end applied, a cut, a stop), with the
   * server's error when it refused the stream (401, 403, 404, 503…), and whether it was `served`: it
   * delivered anything (its opening comment, a heartbeat, a frame), and whether it `stalled`: the open
   * brought nothing within `connectTimeoutMs`. Returns the function that stops it.
   */
  follow(
    task: TaskSubscription,
    onEnd: (refusal: ProgressError | undefined, served: boolean, stalled?: boolean) => void,
  ): () => void;
  /** Acknowledges `seq` of a task (cumulative); sent again after a failure answer, a few times at most. */
  ack(taskId: string, seq: number): void;
}

/** @internal */
export class FallbackStreams implements FallbackRuntime {
  readonly #host: FallbackHost;
  readonly #wire: FallbackWire;
  /**
   * Task id → the stop function of its stream, when it opened (clock ms) and the subscription it follows;
   * or, for a stream cut and waiting to reopen, the function that cancels the wait and 0 (opened as long ago
   * as can be: a wake opens it now).
   */
  readonly #streams = new Map<string, [stop: () => void, openedAt: number, task: TaskSubscription]>();
  #streaming = false;
  /**
   * Opens in a row (of any watch) that stalled: nothing within `connectTimeoutMs`, the mark of a proxy
   * that buffers event streams until they end. From `#stallLimit` on, the client polls over HTTP instead.
   */
  #stalls = 0;
  readonly #stallLimit: number;

  constructor(host: FallbackHost, wire: FallbackWire, pollAfterStalls: number) {
    this.#host = host;
    this.#wire = wire;
    // 0 never moves to polling.
    this.#stallLimit = pollAfterStalls || Infinity;
  }

  start(): void {
    // Each failed socket attempt calls it again: the streams it opened go on, the cut ones wait their
    // turn, the refused ones their backoff. Behind a proxy that buffers them, HTTP polling goes instead
    // (already polling: nothing changes).
    if (this.#streaming || (this.#stalls >= this.#stallLimit && this.#host.poll?.())) return;
    this.#streaming = true;
    for (const task of this.#host.tasks()) this.open(task);
  }

  stop(): void {
    this.#streaming = false;
    // Out of the map first: a stream stopped here is not one that ended by itself (no reopen).
    const entries = [...this.#streams.values()];
    this.#streams.clear();
    for (const [stop] of entries) stop();
  }

  /** Stops the stream of a watch (a finished one's end is acknowledged as the stream ends). */
  close(task: TaskSubscription): void {
    const entry = this.#streams.get(task.taskId);
    this.#streams.delete(task.taskId);
    entry?.[0]();
  }

  restart(task: TaskSubscription): void {
    if (!this.#streams.has(task.taskId)) return;
    this.close(task);
    this.open(task);
  }

  /**
   * The page woke (a tab shown again, the network back, a thawed or restored page, a clock jump): a stream
   * that lived through it is usually dead without a word, and has no ping to ask, so each open one starts
   * over from its cursor now instead of after the silence timeout. That costs what the socket's check does
   * (a task read per watch) and one request; a short deadline first would not spare a quiet stream alive
   * (its heartbeats come 15 s apart), only delay a dead one. A stream cut and waiting to reopen opens now
   * (before its backoff is over); one refused for now keeps its backoff. One wake often fires two or
   * three events (visibilitychange with pageshow or online, a clock jump seen meanwhile): a stream opened
   * less than `wakePingTimeoutMs` ago, by the first of them, is not started over again by the others.
   */
  wake(): void {
    const { clock, wakePingTimeoutMs } = this.#host.options;
    // (A watch without an entry, refused or finished, is left alone: NaN is never >=, and restart would.)
    for (const task of this.#host.tasks())
      if (clock() - (this.#streams.get(task.taskId)?.[1] as number) >= wakePingTimeoutMs) this.restart(task);
  }

  /**
   * Opens the stream of one watch, unless streams are off, it has one, or it is released; for a finished
   * one, acknowledges its end instead (as a stream's end does).
   */
  open(task: TaskSubscription): void {
    const taskId = task.taskId;
    if (!this.#streaming || !this.#host.current(task) || this.#streams.get(taskId)?.[2] === task) return;
    // The id's stream may still be an earlier subscription's: a finished watch's (its end read over HTTP
    // by the 100% watchdog) stays open until its next chunk, and a new watch of the id made meanwhile (the
    // old handle closed) found the id taken and opened none; that stream's end reopened nothing for it,
    // and it waited for ever. Stopped here (its end acknowledged as it stops), the new watch gets its own.
    this.close(task);
    const o = this.#host.options;
    // (Each watch's own, kept as long as the watch is.)
    task.pacing ??= new ReconnectPacing(o);
    const pacing = task.pacing;
    // Up from now, if it is served: one that stays up `stableConnectionMs` starts the backoff over.
    const now = o.clock();
    pacing.ready(now, 0);
    let entry: [() => void, number, TaskSubscription] | undefined;
    const ended = (refusal?: ProgressError, served = false, stalled?: boolean) => {
      // Ended by itself (cut, refused, finished), not stopped here (a restart opens the next one itself);
      // not while opening either (no `fetch`: nothing to ask again).
      // (No entry while opening: none in the map either, which `open` checked, so nothing deleted.)
      const own = this.#streams.get(taskId) === entry && this.#streams.delete(taskId);
      if (refusal && this.#host.current(task)) {
        // Answered as the HTTP fallback answers the same refusal; so is a fresh credential refused as expired
        // (the wire asked again at once with it, after the first expiry).
        if (refusal.code === ErrorCode.Unauthenticated || refusal.code === ErrorCode.TokenExpired)
          return this.#host.fatal(refusal);
        if (FATAL_TASK_ERRORS.has(refusal.code)) return this.#host.failTask(task, refusal);
        task.task.emitError(refusal); // 429, 503 and the like: tried again below
      }
      // Its end acknowledged here, the subscription is done as one whose end the socket acknowledged is:
      // the socket has nothing more to ask about it, and a new watch of the id asks the server (the id
      // may name a new run by now). Marked on the subscription, not by task id: by id, a new run's end was
      // taken as acknowledged. Before 5 December 2026 only the socket's ack marked it: with
      // `preferFallback` (or the socket down) a new watch of the id, the old run's handle still held,
      // shared the old run's end and resolved with it at once.
      // The stream is over, so nothing more comes about the task: the client lets go of it (when it still
      // follows it), as it does of one whose end the socket acknowledged at the next heartbeat; its handles
      // close, keeping their final state. Until 6 December 2026 nothing let go of it with `preferFallback`
      // (no socket, so no heartbeat), and a long-lived page kept every job it watched, with its handles,
      // their listeners and their listener on the `signal` given to `watch()`.
      if (task.cursor.finished && !task.socketDone) {
        task.done();
        this.#wire.ack(taskId, task.cursor.seq);
        this.#host.failTask(task);
      }
      // Ended before the end: reopened from the cursor at the socket's pace. A stream that delivered (cut
      // by a proxy's timeout, a server's restart) is a connection that said `hello`: its first cut is
      // reopened at once, within `reconnect.firstDelayMs` (a fixed `httpPollIntervalMs` made SSE watchers
      // the chaos run's tail); a later one after at most a step. An open that failed (refused for now:
      // 503, 429, an expired token; no answer; a stream ended with nothing) backs off, growing, until a
      // stream stays up `stableConnectionMs`: every watch of every page asking at once would keep a
      // server that is down, out of store or over its cap busy answering them.
      // A cut one waits in the map, where a wake finds it (and `close` and `stop` cancel the wait); a
      // refused one on the task's retry timer, out of a wake's reach.
      // A stream served starts the count of stalls over. Past the limit the streams make way for HTTP
      // polling, when the client has it: behind a proxy that buffers them, reopening them for ever showed
      // a watch nothing of its task before the task's end.
      if (!own) return;
      this.#stalls = served ? 0 : this.#stalls + Number(!!stalled);
      if (this.#stalls >= this.#stallLimit && this.#host.poll?.()) return this.stop();
      if (!task.cursor.finished && this.#host.current(task)) {
        if (served) pacing.down();
        const delayMs = pacing.nextDelayMs(served);
        if (refusal)
          task.retryAfterError(
            () => delayMs,
            () => this.open(task),
          );
        // (Its restart finds the wait in the map: it cancels the timer that fired, and opens the stream.)
        else this.#streams.set(taskId, [this.#host.timers.start(() => this.restart(task), delayMs), 0, task]);
      }
    };
    // Finished meanwhile (its end read over HTTP by the 100% watchdog while its stream was cut or refused):
    // no stream to open, and its end acknowledged as a stream's end acknowledges it. Until 6 December 2026
    // nothing did (nor let go of the task), short of a socket's `hello`: with `preferFallback`, never.
    // (From its cursor, with its epoch: a server whose store was restored since must not resume that seq
    // in another log.)
    if (task.cursor.finished) ended();
    else {
      entry = [this.#wire.follow(task, ended), now, task];
      this.#streams.set(taskId, entry);
    }
  }
}
