import type {
  CancelledEvent,
  CompletedEvent,
  FailedEvent,
  InterruptedEvent,
  ItemEvent,
  ProgressEvent,
  TaskView,
  TerminalEvent,
  WatchView,
} from '@finishline/core';
import { ErrorCode, ProgressError } from '@finishline/core';
import type { Delivery } from '@finishline/core/internal';
import { exhaustive, terminalEventOfView, watchViewAfter, watchViewOfTask } from '@finishline/core/internal';
import { EventEmitter } from 'eventemitter3';
import { RateEstimator } from './rate-estimator.js';
import type { TimerSet } from './timers.js';

/**
 * One watched task: the state store the UI reads, the typed events, the `done` promise, rate and ETA.
 *
 * @module
 */

/**
 * What a watch knows of its task: the cursor's {@link WatchView} plus what a progress bar derives from it.
 * Immutable; a new object after every change and only then, so it can back React's
 * `useSyncExternalStore` directly.
 */
export interface WatchState extends WatchView {
  /** The terminal state was delivered (`status` is not `running`). */
  readonly finished: boolean;
  /** `done / total` in [0, 1]; 1 once completed; `null` while the total is unknown. */
  readonly fraction: number | null;
  /** Finished items per second over the client's `rateWindowMs`; `null` until it can be measured. */
  readonly rate: number | null;
  /**
   * Estimated milliseconds until every item is finished, from `rate`; `null` when unknown (no total, no
   * rate, a stalled task, or the task is over).
   */
  readonly eta: number | null;
  /**
   * Why the watch ended without the task's final state (`forbidden`, `task_not_found`, `closed`,
   * `unauthenticated`, …), else `null`.
   */
  readonly fatalError: ProgressError | null;
}

/**
 * The events of a {@link Watch}. Each receives the event (or state) and the watch's state after the
 * frame that delivered it. Callbacks see the task's events in seq order with no gap and no duplicate;
 * a `snapshot` moves the state forward over events that were coalesced away.
 */
export interface WatchEvents {
  /** The state was set from a snapshot: the first state of a watch, a resync, or a restored cursor. */
  snapshot: [state: WatchState];
  /** A `progress` event. */
  progress: [event: ProgressEvent, state: WatchState];
  /** An item finished. */
  item: [event: ItemEvent, state: WatchState];
  /**
   * The task completed. When the terminal state came from a snapshot (the task had already ended), the
   * event is rebuilt from it.
   */
  completed: [event: CompletedEvent, state: WatchState];
  /** The task failed (same rule as `completed`). */
  failed: [event: FailedEvent, state: WatchState];
  /** The task was cancelled (same rule as `completed`). */
  cancelled: [event: CancelledEvent, state: WatchState];
  /** The task's worker went away (same rule as `completed`). */
  interrupted: [event: InterruptedEvent, state: WatchState];
  /** Once, after whichever terminal event. */
  finished: [state: WatchState];
  /**
   * Something went wrong. When `state.fatalError` is set the watch is over (`done` rejected); otherwise
   * the client recovers by itself and this is for logs.
   */
  error: [error: ProgressError];
}

/** Options of {@link ProgressClient.watch}. */
export interface WatchOptions {
  /**
   * Closes the watch when aborted (for example a React effect's cleanup, or a component unmount).
   * @default undefined
   */
  signal?: AbortSignal;
}

/** Options of a bounded wait: `await watch.done({ timeoutMs: 60_000 })`. */
export interface DoneOptions {
  /**
   * Stops waiting when aborted: the returned promise rejects with `closed` (the watch itself goes on).
   * @default undefined
   */
  signal?: AbortSignal;
  /**
   * Longest wait in milliseconds: the returned promise rejects with `timeout` (the watch goes on).
   * @default undefined (no limit)
   */
  timeoutMs?: number;
}

/**
 * {@link Watch.done}: a promise of the final state, which can also be called with {@link DoneOptions}
 * to wait with a deadline or an abort signal. Both `await watch.done` and
 * `await watch.done({ timeoutMs })` work.
 */
export interface WatchDone extends Promise<WatchState> {
  (options: DoneOptions): Promise<WatchState>;
}

/** Reports an exception thrown by application code without breaking delivery to the other listeners. */
function report(error: unknown): void {
  queueMicrotask(() => {
    throw error;
  });
}

/**
 * A handle on one watched task, returned by {@link ProgressClient.watch}. Several handles on the same
 * task share one subscription and one state; each has its own listeners and `done`.
 *
 * @example
 * ```ts
 * const watch = client.watch(taskId);
 * watch.on('item', (event) => log(event.item.key, event.item.ok));
 * const final = await watch.done; // the task's final state
 * // React: useSyncExternalStore(watch.subscribe, watch.getSnapshot)
 * ```
 */
export class Watch extends EventEmitter<WatchEvents> {
  /** The watched task. */
  readonly taskId: string;
  /**
   * Resolves with the final state when the task ends (completed, failed, cancelled or interrupted:
   * check `status`). Rejects with a {@link ProgressError} only when the watch cannot go on: `forbidden`,
   * `task_not_found`, `unauthenticated`, or `closed` (this watch or its client was closed first).
   * Call it to bound the wait: `await watch.done({ timeoutMs: 60_000, signal })` rejects with `timeout`
   * or `closed` when the deadline or the signal comes first, and leaves the watch running.
   */
  readonly done: WatchDone;
  readonly #task: WatchedTask;
  readonly #release: (watch: Watch) => void;
  readonly #listeners = new Set<() => void>();
  #settle: ((error: ProgressError | undefined) => void) | undefined;
  /** Events owed to a handle that joined after the task had state; sent before anything newer. */
  #replay: (() => void) | undefined;
  #closed = false;

  /** @internal Created by {@link ProgressClient.watch}. */
  constructor(task: WatchedTask, release: (watch: Watch) => void) {
    super();
    this.taskId = task.taskId;
    this.#task = task;
    this.#release = release;
    const done = new Promise<WatchState>((resolve, reject) => {
      this.#settle = (error) => {
        this.#settle = undefined;
        if (error === undefined) resolve(task.state);
        else reject(error);
      };
    });
    // An application that never awaits `done` must not get an unhandled rejection when the client closes.
    done.catch(() => undefined);
    this.done = bounded(done, task);
  }

  /** The current state; the same object until the state changes. Safe to pass around unbound. */
  readonly getSnapshot = (): WatchState => this.#task.state;

  /**
   * Calls `listener` (without arguments) after every state change. Returns the unsubscribe function.
   * Safe to pass around unbound, as `useSyncExternalStore` does.
   */
  readonly subscribe = (listener: () => void): (() => void) => {
    this.#listeners.add(listener);
    return () => {
      this.#listeners.delete(listener);
    };
  };

  /** True once {@link close} was called (or the client closed). */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Stops this handle: no more events, `done` rejects with `closed` if the task had not ended. The
   * subscription is dropped when the last handle on the task closes.
   */
  close(): void {
    if (this.#closed) return;
    this.#end(this.#task.closedError());
    this.#release(this);
  }

  /** @internal Ends the handle after the task ended or failed. */
  end(error: ProgressError | undefined): void {
    this.#end(error);
  }

  #end(error: ProgressError | undefined): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#replay = undefined;
    this.#settle?.(error);
    this.#listeners.clear();
    this.removeAllListeners();
  }

  /** @internal Emits one event to this handle's listeners, after anything it is still owed. */
  deliver(emit: (watch: Watch) => void): void {
    if (this.#closed) return;
    this.flushReplay();
    try {
      emit(this);
    } catch (error) {
      report(error);
    }
  }

  /**
   * @internal The per-frame path of {@link deliver}: one event with its state, without a closure per
   * event and handle.
   */
  deliverEvent(name: 'progress' | 'item', event: ProgressEvent | ItemEvent, state: WatchState): void {
    if (this.#closed) return;
    this.flushReplay();
    try {
      (this.emit as (name: string, event: unknown, state: WatchState) => boolean)(name, event, state);
    } catch (error) {
      report(error);
    }
  }

  /** @internal Tells this handle's `subscribe` listeners that the state changed. */
  notify(): void {
    // Copied only when there is someone to call: a listener may unsubscribe (or subscribe) while called.
    if (this.#listeners.size === 0) return;
    for (const listener of [...this.#listeners]) {
      try {
        listener();
      } catch (error) {
        report(error);
      }
    }
  }

  /** @internal Settles `done` when the task is over (listeners already saw the terminal event). */
  settleIfFinished(): void {
    if (this.#task.state.finished) this.#settle?.(undefined);
  }

  /** @internal Queues the catch-up events of a handle created after the task had state. */
  scheduleReplay(emit: (watch: Watch) => void): void {
    this.#replay = () => {
      this.#replay = undefined;
      try {
        emit(this);
      } catch (error) {
        report(error);
      }
    };
    // Listeners are attached right after `watch()` returns: give them that chance first.
    queueMicrotask(() => this.flushReplay());
  }

  /** @internal */
  flushReplay(): void {
    if (!this.#closed) this.#replay?.();
  }
}

/**
 * Makes `done` callable: a function that is also a thenable of the same promise, so the plain
 * `await watch.done` of earlier releases keeps working.
 */
function bounded(done: Promise<WatchState>, task: WatchedTask): WatchDone {
  const wait = (options: DoneOptions): Promise<WatchState> => {
    const { signal, timeoutMs } = options ?? {};
    if (timeoutMs !== undefined && !(typeof timeoutMs === 'number' && timeoutMs >= 0)) {
      return Promise.reject(
        new ProgressError(
          ErrorCode.InvalidInput,
          `watch.done: timeoutMs must be a number >= 0, got ${String(timeoutMs)}`,
          {
            taskId: task.taskId,
          },
        ),
      );
    }
    if (signal === undefined && timeoutMs === undefined) return done;
    return new Promise<WatchState>((resolve, reject) => {
      let cancelTimer: (() => void) | undefined;
      const onAbort = () => {
        finish();
        reject(
          new ProgressError(ErrorCode.Closed, `watch.done: the wait for task ${task.taskId} was aborted`, {
            taskId: task.taskId,
            cause: signal?.reason,
          }),
        );
      };
      const finish = () => {
        cancelTimer?.();
        signal?.removeEventListener('abort', onAbort);
      };
      if (signal?.aborted) {
        onAbort();
        return;
      }
      signal?.addEventListener('abort', onAbort, { once: true });
      if (timeoutMs !== undefined) {
        cancelTimer = task.timers.start(() => {
          finish();
          reject(
            new ProgressError(
              ErrorCode.Timeout,
              `watch.done: task ${task.taskId} did not finish within ${timeoutMs} ms`,
              { taskId: task.taskId },
            ),
          );
        }, timeoutMs);
      }
      done.then(
        (state) => {
          finish();
          resolve(state);
        },
        (error: unknown) => {
          finish();
          reject(error);
        },
      );
    });
  };
  return Object.assign(wait, {
    // biome-ignore lint/suspicious/noThenProperty: on purpose, so `await watch.done` keeps working.
    then: done.then.bind(done),
    catch: done.catch.bind(done),
    finally: done.finally.bind(done),
    [Symbol.toStringTag]: 'Promise',
  }) as unknown as WatchDone;
}

/** What a {@link WatchedTask} needs from its client. @internal */
export interface WatchedTaskOptions {
  timers: TimerSet;
  rateWindowMs: number;
  closedError: () => ProgressError;
}

/**
 * The shared part of every handle on one task: the state the application reads, its events, rate and
 * ETA. Read-only to everything but its `TaskSubscription`, which feeds it what the cursor delivered
 * (the protocol bookkeeping lives there).
 *
 * @internal
 */
export class WatchedTask {
  readonly taskId: string;
  readonly handles = new Set<Watch>();
  /** The client's timers (cleared when it closes), for the deadlines of `watch.done({ timeoutMs })`. */
  readonly timers: TimerSet;
  #state: WatchState;
  readonly #rate: RateEstimator;
  readonly #closedError: () => ProgressError;
  #terminal: TerminalEvent | undefined;

  /** `view` is the cursor's view before anything was delivered. */
  constructor(taskId: string, options: WatchedTaskOptions, view: WatchView) {
    this.taskId = taskId;
    this.timers = options.timers;
    this.#rate = new RateEstimator(options.rateWindowMs);
    this.#closedError = options.closedError;
    this.#state = this.#buildState(view, null);
  }

  /** The current state: immutable, replaced on every change. */
  get state(): WatchState {
    return this.#state;
  }

  /** Takes a state restored from storage, silently: handles get it through their replay. */
  restore(delivered: readonly Delivery[], view: WatchView): void {
    for (const delivery of delivered) this.#sample(delivery);
    this.#state = this.#buildState(view, null);
  }

  /** The error a handle closed before the end rejects with. */
  closedError(): ProgressError {
    return this.#closedError();
  }

  /** Adds a handle, owing it the state so far (and the terminal event if the task already ended). */
  attach(watch: Watch): void {
    this.handles.add(watch);
    // The state as of now: anything newer reaches the handle as its own events, after the replay.
    const state = this.state;
    if (state.progress !== null || state.finished) {
      watch.scheduleReplay((handle) => {
        handle.emit('snapshot', state);
        if (state.finished) this.#emitTerminal(handle, state);
      });
      watch.settleIfFinished();
    }
  }

  /**
   * Applies what the cursor delivered. Each delivery gets its own state (a snapshot may release buffered
   * events in the same apply), set before its listeners run; `subscribe` listeners are told once, at the
   * end.
   */
  deliver(delivered: readonly Delivery[], last: WatchView): void {
    if (delivered.length === 0) return;
    let view: WatchView = this.#state;
    for (let index = 0; index < delivered.length; index++) {
      const delivery = delivered[index] as Delivery;
      this.#sample(delivery);
      if (index === delivered.length - 1) view = last;
      else if (delivery.kind === 'snapshot') view = watchViewOfTask(delivery.task);
      // Only the last delivery can be terminal, so a middle one is progress or an item.
      else view = watchViewAfter(view, delivery.event);
      const state = this.#buildState(view, null);
      this.#state = state;
      if (delivery.kind === 'snapshot') {
        this.#emit((watch) => watch.emit('snapshot', state));
        if (state.finished) this.#emit((watch) => this.#emitTerminal(watch, state));
        continue;
      }
      const event = delivery.event;
      switch (event.type) {
        case 'progress':
        case 'item':
          this.#emitEvent(event.type, event, state);
          break;
        case 'completed':
        case 'failed':
        case 'cancelled':
        case 'interrupted':
          this.#terminal = event;
          this.#emit((watch) => this.#emitTerminal(watch, state));
          break;
        default:
          exhaustive(event);
      }
    }
    for (const watch of this.handles) watch.notify();
    if (this.#state.finished) for (const watch of this.handles) watch.settleIfFinished();
  }

  /** Ends every handle with a fatal error. */
  fail(error: ProgressError, emitError: boolean): void {
    if (!this.#state.finished) this.#state = this.#buildState(this.#state, error);
    const handles = [...this.handles];
    this.handles.clear();
    for (const watch of handles) {
      if (emitError) watch.deliver((handle) => handle.emit('error', error));
      watch.notify();
      watch.end(this.state.finished ? undefined : error);
    }
  }

  /** Emits a non-fatal error to every handle. */
  emitError(error: ProgressError): void {
    this.#emit((watch) => watch.emit('error', error));
  }

  /** The saved form of the state: a `TaskView`, or `undefined` before the task's kind is known. */
  toTaskView(): TaskView | undefined {
    const { progress, kind } = this.state;
    if (progress === null || kind === null) return undefined;
    const view = this.state;
    return {
      id: this.taskId,
      kind,
      status: view.status,
      ...progress,
      result: view.result,
      error: view.error,
      seq: view.seq,
      // Not tracked by the cursor; nothing in the client reads it back.
      createdAt: view.updatedAt ?? 0,
      updatedAt: view.updatedAt ?? 0,
      finishedAt: view.finishedAt,
    };
  }

  #sample(delivery: Delivery): void {
    if (delivery.kind === 'snapshot') this.#rate.add(delivery.task.updatedAt, delivery.task.done);
    else this.#rate.add(delivery.event.time, delivery.event.progress.done);
  }

  #emit(emit: (watch: Watch) => void): void {
    for (const watch of [...this.handles]) watch.deliver(emit);
  }

  /**
   * One progress or item event to every handle. The handles are copied first (a listener may open or
   * close one), except in the common case of a single handle.
   */
  #emitEvent(name: 'progress' | 'item', event: ProgressEvent | ItemEvent, state: WatchState): void {
    if (this.handles.size === 1) {
      // Only the first: a handle opened by its listener must not get this event after its replay.
      (this.handles.values().next().value as Watch).deliverEvent(name, event, state);
      return;
    }
    for (const watch of [...this.handles]) watch.deliverEvent(name, event, state);
  }

  #emitTerminal(watch: Watch, state: WatchState): void {
    const event = this.#terminal ?? terminalEventOfView(state);
    this.#terminal = event;
    switch (event.type) {
      case 'completed':
        watch.emit('completed', event, state);
        break;
      case 'failed':
        watch.emit('failed', event, state);
        break;
      case 'cancelled':
        watch.emit('cancelled', event, state);
        break;
      case 'interrupted':
        watch.emit('interrupted', event, state);
        break;
      default:
        exhaustive(event);
    }
    watch.emit('finished', state);
  }

  #buildState(source: WatchView, fatalError: ProgressError | null): WatchState {
    // One literal with the view's own fields (`source` may be a previous state with derived fields): it
    // runs once per delivered frame, and an intermediate view plus a spread cost a second allocation.
    const progress = source.progress;
    const status = source.status;
    const finished = status !== 'running';
    let fraction: number | null = null;
    if (status === 'completed') fraction = 1;
    else if (progress !== null && progress.total !== null) {
      fraction = progress.total === 0 ? 1 : Math.min(1, progress.done / progress.total);
    }
    return Object.freeze({
      taskId: source.taskId,
      seq: source.seq,
      status,
      kind: source.kind,
      progress,
      result: source.result,
      error: source.error,
      updatedAt: source.updatedAt,
      finishedAt: source.finishedAt,
      finished,
      fraction,
      rate: progress === null ? null : this.#rate.rate(),
      eta: finished || progress === null ? null : this.#rate.eta(progress.total, progress.done),
      fatalError,
    });
  }
}
