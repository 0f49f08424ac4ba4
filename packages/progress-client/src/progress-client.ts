import type { ErrorFrame, ServerFrame } from '@finishline/core';
import { ErrorCode, isTerminalEvent, ProgressError } from '@finishline/core';
import type { ApplyResult } from '@finishline/core/internal';
import {
  assertTaskId,
  resolveOptions as readOptions,
  resolvedBackoffDelayMs,
} from '@finishline/core/internal';
import { Acks } from './acks.js';
import { AnswerWait } from './answer-wait.js';
import { Connection } from './connection.js';
import type { ConnectionHandler, ConnectionState, StateChange } from './connection-state.js';
import type { FallbackHost, FallbackRuntime } from './fallback-streams.js';
import type { HttpFallbackRuntime, HttpHost } from './http-fallback.js';
import { type ProgressClientOptions, type ResolvedOptions, resolveOptions } from './options.js';
import { PageLife, type WakeReason } from './page-life.js';
import {
  FATAL_TASK_ERRORS,
  type StuckAction,
  TaskSubscription,
  type TaskSubscriptionHost,
} from './task-subscription.js';
import { noop, TimerSet } from './timers.js';
import { SafeEmitter, WATCH_OPTIONS, Watch, type WatchOptions } from './watch.js';

/**
 * The client: one socket shared by every watch, the protocol (subscribe, resume, resync; acks in
 * `acks.ts`), and the fallbacks that make sure every watch sees its task's final state (the HTTP
 * fallback and the fallback transport, each brought by its own entry and attached here).
 *
 * @module
 */

/** The events of a {@link ProgressClient}. */
export interface ProgressClientEvents {
  /** The connection state changed (see {@link ConnectionState}); `reconnecting` repeats with each delay. */
  state: [change: StateChange];
  /**
   * A problem not tied to one watch: an invalid frame from the server, a failing token provider, an
   * `error` frame without a task, or the fatal close that ended the client (then `state` is `closed`).
   */
  error: [error: ProgressError];
}

/**
 * Watches tasks of a Finishline server and guarantees that each watch sees its task's final state:
 * resumes after reconnects from its cursor, drops duplicates, resyncs on gaps, detects silent sockets,
 * escalates a task stuck at 100% (resync, reconnect, HTTP), falls back to HTTP while the socket cannot
 * connect, and can persist cursors across page reloads.
 *
 * @example
 * ```ts
 * import { ProgressClient } from '@finishline/client';
 *
 * const client = new ProgressClient({ url: 'wss://example.com/progress' });
 * const watch = client.watch(taskId);
 * watch.on('progress', (_event, state) => render(state.fraction, state.eta));
 * watch.on('finished', (state) => console.log('ended', state.status));
 * await watch.done;
 * await client.close();
 * ```
 *
 * In Node, inject `ws` (and credentials in a header):
 * ```ts
 * import WebSocket from 'ws';
 * const client = new ProgressClient({ url, WebSocket, headers: { authorization: `Bearer ${token}` } });
 * ```
 */
export class ProgressClient extends SafeEmitter<ProgressClientEvents> {
  readonly #o: ResolvedOptions;
  readonly #timers: TimerSet;
  readonly #connection: Connection;
  /** The HTTP fallback, when the `httpFallback` option brought one. */
  readonly #http: HttpFallbackRuntime | undefined;
  readonly #abort = new AbortController();
  readonly #tasks = new Map<string, TaskSubscription>();
  /** The followed tasks not finished yet, which page life serves (see {@link #leave}). */
  readonly #running = new Set<TaskSubscription>();
  readonly #acks: Acks;
  readonly #pageLife: PageLife | undefined;
  /**
   * The fallback transport (SSE), when the `fallbackTransport` option brought one: watches follow it
   * instead of polling while the socket cannot connect.
   */
  readonly #fallback: FallbackRuntime | undefined;
  /** What every watched task shares with the client: made once, not per watch. */
  readonly #taskHost: TaskSubscriptionHost;
  /** The store epoch of the latest `hello` that carried one. */
  #epoch: string | undefined;
  #closed = false;
  #closing: Promise<void> | undefined;

  /**
   * @throws ProgressError `invalid_input` for invalid options (see {@link ProgressClientOptions}).
   */
  constructor(options: ProgressClientOptions) {
    super();
    this.#o = resolveOptions(options, this.#abort.signal);
    this.#timers = new TimerSet(this.#o.timers);
    this.#taskHost = {
      timers: this.#timers,
      answerWait: new AnswerWait(this.#o.behindGraceMs),
      onStuck: (task, action) => this.#stuck(task, action),
      resync: (task) => this.#resync(task),
    };
    this.#acks = new Acks(
      this.#o,
      this.#timers,
      (frame) => this.#connection.send(frame),
      (run) => this.#connection.batch(run),
    );
    // One host for both fallbacks, each of which reads only its own part.
    const host: HttpHost & FallbackHost = {
      options: this.#o,
      timers: this.#timers,
      signal: this.#abort.signal,
      tasks: () => this.#tasks.values(),
      current: (task) => !this.#closed && this.#tasks.get(task.taskId) === task,
      apply: (task, result) => this.#apply(task, result),
      fatal: (error) => {
        this.#closing ??= this.#shutdown(error, true);
      },
      // (Not a task the client no longer follows: its id may name another subscription by now.)
      failTask: (task, error) => host.current(task) && this.#failTask(task, error),
      onFrame: (frame) => this.#onFrame(frame),
    };
    this.#http = this.#o.httpFallback?.attach(host);
    this.#fallback = this.#o.fallbackTransport?.attach(host);
    this.#connection = new Connection(this.#o, this.#timers, this.#handler());
    this.#pageLife =
      this.#o.pageEvents === undefined
        ? undefined
        : new PageLife(this.#o, this.#timers, (reason) => this.#wake(reason));
  }

  /** The connection state. */
  get state(): ConnectionState {
    return this.#connection.state;
  }

  /** Base URL of the HTTP API in use (given, or derived from `url`). */
  get httpUrl(): string {
    return this.#o.httpUrl;
  }

  /**
   * Starts watching a task (connecting on the first watch). Watching a task that is already watched
   * shares its subscription and state, unless its end was acknowledged: the server is asked again.
   *
   * @throws ProgressError `invalid_input` for an invalid task id or options, `closed` after {@link close}.
   */
  watch(taskId: string, options?: WatchOptions): Watch {
    if (this.#closed) throw new ProgressError(ErrorCode.Closed, 'ProgressClient is closed', { taskId });
    assertTaskId(taskId);
    // Before anything starts, so a refusal leaves no subscription behind. Until 6 December 2026 `null`, or
    // an AbortController passed for its signal, threw a TypeError instead of this error.
    const { signal } = readOptions('watch', WATCH_OPTIONS, options);
    let task = this.#tasks.get(taskId);
    // A task whose end the server has acknowledged (and no longer follows for this client) is not shared
    // with a new watch: its id may name a new run by now (purged and created again), and a handle the
    // application kept open made the next watch of the id resolve at once with the old run's end. The new
    // watch asks the server. The old handles are ended as the client's close() ends them (they keep their
    // final state), since nothing reaches them once the id names the new subscription. (A task in the map
    // that wants no socket is one whose end was acknowledged, on the socket or over a fallback stream: a
    // failed one leaves the map.) Nor one kept, handle-less, only for its end's ack (owed again on the next
    // socket when the last one was lost before the heartbeat that confirms it): until 7 December 2026 the
    // new watch shared it, and showed the old run's end for a run created again under the purged id (the
    // chaos suite's re-created ids). Its owed ack goes with it: the new watch's subscribe is answered with
    // the task's end, which it acknowledges, when the id still names that run.
    const fresh = !task?.wantsSocket || (task.cursor.finished && !task.task.handles.size);
    if (fresh) {
      task?.fail(undefined, false);
      task = new TaskSubscription(taskId, this.#o, this.#taskHost);
      this.#tasks.set(taskId, task);
      task.adoptEpoch(this.#epoch);
    }
    const sub = task as TaskSubscription;
    const watch = new Watch(sub.task, (handle) => this.#release(sub, handle));
    sub.task.attach(watch);
    // Started once the handle is attached, page life before the connection: a listener of what starting
    // emits (`state` connecting, the `error` of a WebSocket constructor that throws) may close the client,
    // and that close must end this handle and stop everything started. Until 6 December 2026 the handle
    // was attached after: it was never ended, and its `done` waited for ever.
    if (fresh) {
      // (Its cursor is not finished: a saved entry that holds an end is not restored, cursor-storage.ts.)
      this.#running.add(sub);
      sub.armWatchdog();
      this.#subscribe(sub);
      this.#fallback?.open(sub);
      this.#pageLife?.start();
      // (preferFallback is refused without a fallbackTransport.)
      if (this.#o.preferFallback) this.#fallback?.start();
      else this.#connection.ensure('watch');
    }
    if (signal !== undefined) watch.closeOn(signal);
    return watch;
  }

  /**
   * Renews the socket's credential without reconnecting: calls the `token` function and sends it in an
   * `auth` frame (protocol version 2). Call it when the application's token is refreshed, before the
   * old one expires. Resolves `false` when there is nothing to renew (no open socket, a version-1
   * server, or a static token) and when the token function fails, returns no credential (see `token`) or
   * returns nothing within `connectTimeoutMs` (then an `unauthenticated` error is emitted, with the failure
   * as its `cause`, and no `auth` frame is sent: the socket keeps its credential); never rejects. A call
   * made while another is under way waits for it, then calls the token function itself: the last `auth`
   * sent carries what the last call got. A token that expires anyway closes the
   * socket with 4011; the client then fetches a fresh token and reconnects once by itself.
   *
   * @example
   * ```ts
   * auth.onTokenRefreshed(() => void client.renewToken());
   * ```
   */
  renewToken(): Promise<boolean> {
    // (A closed client's connection has no ready socket: false.)
    return this.#connection.renewToken();
  }

  /**
   * Closes the client: sends the pending acks, clears every timer, aborts HTTP requests and closes the
   * socket. Unfinished watches end with a `closed` error. Resolves once the socket is closed.
   */
  close(): Promise<void> {
    if (this.#closing === undefined) {
      for (const task of this.#tasks.values()) this.#acks.flush(task);
      this.#closing = this.#shutdown(new ProgressError(ErrorCode.Closed, 'ProgressClient was closed'), false);
    }
    return this.#closing;
  }

  #shutdown(error: ProgressError, emitError: boolean): Promise<void> {
    this.#closed = true;
    this.#pageLife?.stop();
    this.#http?.stop();
    this.#fallback?.stop();
    const tasks = [...this.#tasks.values()];
    this.#tasks.clear();
    this.#running.clear();
    this.#timers.dispose();
    this.#abort.abort();
    const closed = this.#connection.close();
    for (const task of tasks)
      task.fail(new ProgressError(error.code, error.message, { taskId: task.taskId }), emitError);
    if (emitError) this.emit('error', error);
    return closed;
  }

  #handler(): ConnectionHandler {
    return {
      onHello: (hello) => {
        this.#http?.stop();
        this.#fallback?.stop();
        // A server without epochs (version 1, or a store without them) keeps the last one known, for the
        // watches made later; the watches keep their own (a reset may have moved one to a newer epoch).
        if (hello.epoch !== undefined) this.#epoch = hello.epoch;
        // One write for all the subscribes and acks where the socket allows it.
        this.#connection.batch(() => {
          for (const task of this.#tasks.values()) {
            task.adoptEpoch(hello.epoch);
            this.#subscribe(task);
            this.#acks.flush(task);
          }
        });
      },
      onFrame: (frame) => this.#onFrame(frame),
      onDown: () => {
        for (const task of this.#tasks.values()) task.down();
      },
      onFatal: (error) => {
        this.#closing ??= this.#shutdown(error, true);
      },
      // The fallback transport when there is one, else HTTP polling (which then never starts).
      onUnreachable: () => (this.#fallback ?? this.#http)?.start(),
      onState: (change) => {
        // Nothing left to watch: no listener, no clock check keeping the page (or Node) busy, and no
        // fallback left running either (HTTP polling's timer fired for ever, with nothing to poll).
        if (change.state === 'idle') {
          this.#pageLife?.stop();
          this.#http?.stop();
          this.#fallback?.stop();
        }
        this.emit('state', change);
      },
      onError: (error) => {
        this.emit('error', error);
        // An invalid frame about a watched task may have carried one of its events: fetch it again, at once
        // the first time, then paced as a refused subscribe is until something is delivered (a server that
        // keeps sending a frame this client rejects answered each resubscribe with it again, as fast as the
        // round trip allowed).
        // (No task has the key `undefined`: ids are checked strings.)
        const task = this.#tasks.get(error.taskId as string);
        if (task !== undefined) this.#retryLater(task, 1);
      },
      wantsSocket: () => {
        for (const task of this.#tasks.values()) if (!task.socketDone) return true;
        return false;
      },
    };
  }

  /**
   * A page-life event: check the socket now and resync every unfinished watch over it, so what happened
   * while the page slept shows at once; a socket that stays silent is replaced after the ping deadline.
   * The fallback in use acts now too: SSE streams start over from their cursors, or HTTP polls. Both are
   * told (each acts only while in use): streams that made way for polling (`pollAfterStalls`) left the
   * wake to streams no longer open, and the polls waited out their backoff. (Never once closed: the
   * shutdown stops page life first, whose own check drops a later event; no check of its own here.)
   */
  #wake(reason: WakeReason): void {
    if (this.#connection.check(reason, this.#o.wakePingTimeoutMs)) {
      for (const task of this.#tasks.values()) this.#resync(task);
    }
    this.#http?.wake();
    this.#fallback?.wake();
  }

  #onFrame(frame: ServerFrame): void {
    switch (frame.type) {
      case 'hello':
      case 'pong':
        return;
      case 'snapshot': {
        const task = this.#tasks.get(frame.task.id);
        if (task === undefined) return;
        // A reset: the server found the cursor outside the task's log, so it starts over from this snapshot.
        task.snapshot(frame);
        // A terminal snapshot is re-sent until acknowledged, like a terminal event. (The first answer to
        // a subscribe takes the usual path: its ack also unsubscribes.)
        const resent = frame.task.status !== 'running' && task.answered;
        this.#onTaskFrame(
          task,
          task.cursor.applySnapshot(frame.task, frame.reset),
          resent ? frame.task.seq : undefined,
        );
        return;
      }
      case 'event': {
        const task = this.#tasks.get(frame.event.taskId);
        if (task !== undefined)
          this.#onTaskFrame(
            task,
            task.cursor.applyEvent(frame.event),
            isTerminalEvent(frame.event) ? frame.event.seq : undefined,
          );
        return;
      }
      case 'heartbeat':
        // (Each task's `resync` is its subscribe: the heartbeat is ignored for a finished cursor.)
        // Own keys only: a task id such as `toString` would otherwise read Object.prototype's.
        // A task that the heartbeat frees (its end acknowledged, and no longer followed by the server, which
        // re-sends a terminal frame to acknowledge again only while it follows the task) is let go of: a
        // new watch of its id asks the server anyway (see watch()). Its handles close as a failed task's
        // do, quietly, keeping their final state. Kept, every task a long-lived client ever watched stayed
        // here, with its handles and their listeners, unless the application closed each handle.
        for (const task of this.#tasks.values())
          if (
            task.heartbeat(
              Object.hasOwn(frame.seqs, task.taskId) ? frame.seqs[task.taskId] : undefined,
              this.#o.behindGraceMs,
            )
          )
            this.#failTask(task);
        return;
      case 'error':
        this.#onErrorFrame(frame);
        return;
      default:
        frame satisfies never;
    }
  }

  /**
   * A snapshot or event about a watched task arrived on the socket; `terminalSeq` is its seq when it is a
   * terminal frame the server re-sends until acknowledged.
   */
  #onTaskFrame(task: TaskSubscription, result: ApplyResult, terminalSeq: number | undefined): void {
    const first = task.answer();
    this.#apply(task, result);
    if (this.#tasks.get(task.taskId) !== task) return;
    if (result.duplicate && terminalSeq !== undefined && task.cursor.finished) {
      // The server re-sends a terminal frame until it hears an ack: the previous ack may have been lost.
      // Its own seq, not the cursor's: after the store's epoch was renewed, a finished cursor still holds
      // the old epoch's seq, which may stand above the task's seq now (an ack the server refuses, and
      // whose re-sends go on) or below it (an ack too low to stop them).
      this.#connection.send({ type: 'ack', taskId: task.taskId, seq: terminalSeq });
    } else if (first) this.#acks.schedule(task);
  }

  #apply(task: TaskSubscription, result: ApplyResult): void {
    task.onGap(result, this.#o.behindGraceMs);
    if (result.delivered.length === 0) return;
    task.delivered();
    task.task.deliver(result.delivered, task.cursor.view);
    if (this.#tasks.get(task.taskId) !== task) return; // a listener closed the last handle
    task.armWatchdog();
    this.#acks.schedule(task);
    if (task.cursor.finished) this.#leave(task);
  }

  #subscribe(task: TaskSubscription): void {
    if (!task.wantsSocket) return;
    if (this.#connection.send({ type: 'subscribe', taskId: task.taskId, afterSeq: task.seq }))
      task.subscribed();
  }

  /** Restarts delivery from the cursor: the server replays (or snapshots) what this watch missed. */
  #resync(task: TaskSubscription): void {
    if (task.settled) return;
    this.#subscribe(task);
  }

  /** The 100% watchdog of `task` fired: take its next step. */
  #stuck(task: TaskSubscription, action: StuckAction): void {
    switch (action) {
      case 'resync':
        this.#resync(task);
        this.#fallback?.restart(task);
        break;
      case 'reconnect':
        // preferFallback keeps off the socket altogether: the stream starts over instead.
        if (this.#o.preferFallback) this.#fallback?.restart(task);
        else this.#connection.reconnectNow('finish watchdog');
        break;
      case 'http':
        // Without the HTTP fallback the last step is one more resync (a fresh read of the store).
        if (this.#http === undefined) this.#resync(task);
        else void this.#http.catchUp(task).catch(noop);
        break;
      default:
        action satisfies never;
    }
  }

  #onErrorFrame(frame: ErrorFrame): void {
    const taskId = frame.taskId;
    if (taskId === undefined) {
      // A refused or expired credential: the close that follows says what it means, and is reported if the
      // application must act. After 4011 (expired; a version-1 server says `unauthenticated`) the client
      // reconnects with a fresh token, a second expiry being fatal and reported then: an application's error
      // handler heard of every expiry it never had to act on. After 4001 the client ends with that error:
      // until 7 December 2026 the handler heard one refusal twice, the frame's and the fatal close's.
      if (frame.code !== ErrorCode.TokenExpired && frame.code !== ErrorCode.Unauthenticated)
        this.emit('error', new ProgressError(frame.code, frame.message));
      return;
    }
    const task = this.#tasks.get(taskId);
    // Nobody here watches the task any more, or the socket is done with it (terminal acknowledged and
    // unsubscribed): what the server still says about it (the answer to the re-ack of a terminal frame
    // re-sent before the unsubscribe arrived, to a resubscribe that crossed the terminal event) concerns
    // no watch, and a retry timer would wait for nothing (a finished watch does not resubscribe).
    if (task === undefined || task.socketDone) return;
    const error = new ProgressError(frame.code, frame.message, { taskId });
    if (FATAL_TASK_ERRORS.has(frame.code)) {
      this.#failTask(task, error);
      return;
    }
    task.task.emitError(error);
    // The server may have refused the subscription (rate limit, subscription cap, store down): try again.
    this.#retryLater(task);
  }

  /**
   * Resubscribes `task` after a backoff that grows until something is delivered to it; the first `atOnce`
   * retries without waiting.
   */
  #retryLater(task: TaskSubscription, atOnce = 0): void {
    task.retryAfterError(
      (retries) =>
        retries < atOnce ? 0 : resolvedBackoffDelayMs(retries - atOnce, this.#o.reconnect, this.#o.random),
      () => this.#resync(task),
    );
  }

  /** Ends the watches of `task` with `error`, or quietly without one (a finished task let go of). */
  #failTask(task: TaskSubscription, error?: ProgressError): void {
    this.#tasks.delete(task.taskId);
    this.#o.storage?.remove(task.taskId);
    // Its stream too, if it has one (the 100% watchdog's HTTP step read `task_not_found` while it streamed):
    // until 6 December 2026 it stayed open, holding the id's place, and a new watch of the id got no stream.
    this.#fallback?.close(task);
    task.fail(error, true);
    this.#leave(task);
  }

  /**
   * `task` finished, or the client let go of it. Page life serves unfinished watches only: once none is
   * left, its listeners and clock check go (an open socket alone does not keep them; the next new watch
   * starts them again). A set of them, not a read of every task: each terminal frame read the tasks in
   * watch order up to an unfinished one, past every finished watch the client still held (500 reads a
   * frame for 1,000 watches finishing in that order). And whatever the order of the two steps: a watch
   * closed from its own `finished` listener left before its end's frame looked, and found finished when it
   * left, it never stopped page life (its listeners and 2 s clock check stayed while the socket was open).
   */
  #leave(task: TaskSubscription): void {
    this.#running.delete(task);
    if (!this.#running.size) this.#pageLife?.stop();
  }

  /** A handle closed: the last one takes the subscription with it. */
  #release(task: TaskSubscription, watch: Watch): void {
    task.task.handles.delete(watch);
    if (task.task.handles.size || this.#tasks.get(task.taskId) !== task) return;
    // (Its last flush takes it off the acks owed, and clears their timer when it was the last one.)
    this.#acks.flush(task);
    // A task that ended is kept, handle-less, until its end is acknowledged and confirmed: the heartbeat
    // that no longer lists it (a socket lost before that makes the ack owed again, `down()`), or the ack
    // of a fallback, lets go of it. Until 7 December 2026 it went at once: an ack owed to the next socket
    // (an end seen over HTTP) or lost with the socket was sent again only for a handle kept open.
    if (task.cursor.finished) return;
    this.#tasks.delete(task.taskId);
    // The application let go of it: its saved cursor goes too (a finished watch's went at its end, in
    // acks.ts). Kept, the next watch of the id in the tab resumed from it, for a task created again under a
    // purged id on top of the old run's state. (A reload, which closes no handle, keeps the entry.)
    this.#o.storage?.remove(task.taskId);
    this.#fallback?.close(task);
    task.release();
    if (!task.socketDone) this.#connection.send({ type: 'unsubscribe', taskId: task.taskId });
    this.#leave(task);
  }
}
