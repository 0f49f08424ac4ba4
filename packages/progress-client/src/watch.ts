import type {
  CancelledEvent,
  CompletedEvent,
  FailedEvent,
  InterruptedEvent,
  ItemEvent,
  ProgressEvent,
  WatchView,
} from '@finishline/core';
import { ErrorCode, ProgressError } from '@finishline/core';
import { ofType, option, resolveOptions } from '@finishline/core/internal';
import { EventEmitter } from 'eventemitter3';
import { noop, type TimerSet } from './timers.js';

/**
 * The application's side of a watched task: the state it reads, the typed events, the {@link Watch}
 * handle and its `done` promise. The state shared by a task's handles is kept in `watched-task.ts`.
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
   * the client recovers by itself and this is for logs. Never after `finished`: a handle whose task
   * ended emits nothing more, whatever the client still does to acknowledge that end.
   */
  error: [error: ProgressError];
}

/** Options of {@link ProgressClient.watch}. */
export interface WatchOptions {
  /**
   * Closes the watch when aborted (for example a React effect's cleanup, or a component unmount). The
   * watch's listener leaves the signal when the watch closes, so one signal may serve many watches.
   * @default undefined
   */
  signal?: AbortSignal | undefined;
}

/**
 * The options of {@link ProgressClient.watch}, checked by core's options toolkit as the client's own are
 * (an object, no unknown key, `signal` an `AbortSignal`), before anything starts.
 *
 * @internal
 */
export const WATCH_OPTIONS = {
  signal: ofType<AbortSignal>(
    'an AbortSignal',
    (value) => typeof (value as AbortSignal | null)?.addEventListener === 'function',
  ),
};

/**
 * The options of a bounded wait ({@link Watch.done}), checked as `watch()`'s are; `Infinity` is no limit,
 * as leaving `timeoutMs` out is.
 */
const DONE_OPTIONS = {
  signal: WATCH_OPTIONS.signal,
  // Not requireNumber's "a finite number >= 0": a caller told that about -1 would not guess Infinity is taken.
  timeoutMs: option(
    undefined as number | undefined,
    'a number >= 0',
    (value) => typeof value === 'number' && value >= 0,
  ),
};

/** Options of a bounded wait: `await watch.done({ timeoutMs: 60_000 })`. */
export interface DoneOptions {
  /**
   * Stops waiting when aborted: the returned promise rejects with `closed` (the watch itself goes on).
   * @default undefined
   */
  signal?: AbortSignal | undefined;
  /**
   * Longest wait in milliseconds: the returned promise rejects with `timeout` (the watch goes on).
   * @default undefined (no limit; `Infinity` is no limit too)
   */
  timeoutMs?: number | undefined;
}

/**
 * {@link Watch.done}: a promise of the final state, which can also be called with {@link DoneOptions}
 * to wait with a deadline or an abort signal. Both `await watch.done` and
 * `await watch.done({ timeoutMs })` work.
 */
export interface WatchDone extends Promise<WatchState> {
  (options: DoneOptions): Promise<WatchState>;
}

/**
 * What a handle reads from the task it watches (a `WatchedTask`).
 *
 * @internal
 */
export interface WatchSource {
  readonly taskId: string;
  /** The current state: immutable, replaced on every change. */
  readonly state: WatchState;
  /** The client's timers (cleared when it closes), for the deadlines of `watch.done({ timeoutMs })`. */
  readonly timers: TimerSet;
}

/**
 * Calls a listener of the application's; what it throws is reported as a browser reports an event
 * handler's (thrown again in a microtask of its own), and the client's step that called it goes on.
 */
const call = (listener: (...args: never[]) => unknown, context?: unknown, args?: unknown[]): void => {
  try {
    // (`apply` takes no array as no arguments.)
    listener.apply(context, args as never[]);
  } catch (error) {
    queueMicrotask(() => {
      throw error;
    });
  }
};

/** What eventemitter3 keeps of a listener (its `_events` hold one, or an array of them, per event). */
interface Listener {
  fn: (...args: unknown[]) => unknown;
  context: unknown;
  once: boolean;
}

/**
 * An emitter whose listeners are the application's: one that throws is reported (see `call`), the event's
 * other listeners still get it, and the client's step that emitted goes on. Until 6 December 2026 it was
 * thrown into that step: a `state` listener's exception left a lost socket with no reconnect scheduled,
 * an `error` listener's a failed attempt never retried, either in `close()` left the unfinished watches
 * never ended, and a terminal event's listener kept `finished` from its handle. Later the same day the
 * step went on, but eventemitter3's `emit` stopped at the listener that threw: the ones after it (another
 * part of the page, a second `state` listener) never heard the event. Each is called as eventemitter3
 * calls it: in order, with its context, a `once` listener removed before it runs, one added meanwhile not
 * called, and `false` when the event has no listener.
 *
 * @internal
 */
export class SafeEmitter<Events extends EventEmitter.ValidEventTypes> extends EventEmitter<Events> {
  override emit<T extends EventEmitter.EventNames<Events>>(
    event: T,
    ...args: EventEmitter.EventArgs<Events, T>
  ): boolean {
    // (No prefix: eventemitter3 keys events by their names where `Object.create(null)` objects exist.)
    const found = (this as unknown as { _events: Record<T, Listener | Listener[]> })._events[event];
    for (const listener of [found ?? []].flat()) {
      if (listener.once) this.off(event, listener.fn as never, undefined, true);
      call(listener.fn, listener.context, args);
    }
    return !!found;
  }
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
export class Watch extends SafeEmitter<WatchEvents> {
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
  readonly #task: WatchSource;
  readonly #release: (watch: Watch) => void;
  readonly #listeners = new Set<() => void>();
  /** Set by the constructor (a promise's executor runs at once). */
  #settle!: (error?: ProgressError) => void;
  /**
   * Events owed to a handle that joined after the task had state; sent before anything newer. Dropped when
   * the handle ends, so a closed handle is owed nothing.
   */
  #replay: (() => void) | undefined;
  /** Removes the listener of the `signal` option, once this handle ended (see {@link closeOn}). */
  #unlisten: (() => void) | undefined;
  #closed = false;

  /** @internal Created by {@link ProgressClient.watch}. */
  constructor(task: WatchSource, release: (watch: Watch) => void) {
    super();
    this.taskId = task.taskId;
    this.#task = task;
    this.#release = release;
    const done = new Promise<WatchState>((resolve, reject) => {
      // Called again (each delivery after the end, and the handle's end) it changes nothing: a promise
      // settles once.
      this.#settle = (error) => {
        if (error === undefined) resolve(task.state);
        else reject(error);
      };
    });
    // An application that never awaits `done` must not get an unhandled rejection when the client closes.
    done.catch(noop);
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

  /**
   * True once {@link close} was called, or the client closed, or let go of the task: its end acknowledged,
   * at the first heartbeat from the server that no longer lists it, or as soon as its end is acknowledged
   * over an SSE stream or HTTP polling (the handle keeps its final state).
   */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Stops this handle: no more events, `done` rejects with `closed` if the task had not ended. The
   * subscription is dropped when the last handle on the task closes.
   */
  close(): void {
    if (this.#closed) return;
    // A task that already ended resolves `done` with its end, even when `done` is not settled yet: the
    // handle is closed from its own `finished` (or terminal) listener, which runs before `done` settles.
    this.end(
      this.#task.state.finished
        ? undefined
        : new ProgressError(ErrorCode.Closed, 'The watch was closed', { taskId: this.taskId }),
    );
    this.#release(this);
  }

  /**
   * @internal Closes this handle when `signal` aborts (the `signal` option of `watch()`). The listener
   * goes when the handle ends, however it ends: one signal shared by many watches must not keep each
   * ended watch alive.
   */
  closeOn(signal: AbortSignal): void {
    const onAbort = () => this.close();
    // A handle that already ended (a listener closed the client while `watch()` started it) adds none:
    // nothing would remove it.
    if (signal.aborted || this.#closed) onAbort();
    else {
      // (Not `once`: the handle's end removes it, the abort's included.)
      signal.addEventListener('abort', onAbort);
      this.#unlisten = () => signal.removeEventListener('abort', onAbort);
    }
  }

  /** @internal Ends the handle: closed by the application, or after the task ended or failed. */
  end(error: ProgressError | undefined): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#replay = undefined;
    this.#unlisten?.();
    this.#settle(error);
    this.#listeners.clear();
    this.removeAllListeners();
  }

  /** @internal Emits one event to this handle's listeners, after anything it is still owed. */
  deliver(emit: (watch: Watch) => void): void {
    if (this.#closed) return;
    this.#replay?.();
    emit(this);
  }

  /**
   * @internal The per-frame path of {@link deliver}: one event with its state, without a closure per
   * event and handle.
   */
  deliverEvent(name: 'progress' | 'item', event: ProgressEvent | ItemEvent, state: WatchState): void {
    if (this.#closed) return;
    this.#replay?.();
    (this.emit as (name: string, event: unknown, state: WatchState) => boolean)(name, event, state);
  }

  /** @internal Tells this handle's `subscribe` listeners that the state changed. */
  notify(): void {
    // Copied only when there is someone to call: a listener may unsubscribe (or subscribe) while called.
    if (this.#listeners.size === 0) return;
    for (const listener of [...this.#listeners]) call(listener);
  }

  /** @internal Settles `done` when the task is over (listeners already saw the terminal event). */
  settleIfFinished(): void {
    if (this.#task.state.finished) this.#settle();
  }

  /** @internal Queues the catch-up events of a handle created after the task had state. */
  scheduleReplay(emit: (watch: Watch) => void): void {
    this.#replay = () => {
      this.#replay = undefined;
      emit(this);
    };
    // Listeners are attached right after `watch()` returns: give them that chance first.
    queueMicrotask(() => this.#replay?.());
  }
}

/**
 * Makes `done` callable: a function that is also a thenable of the same promise, so the plain
 * `await watch.done` of earlier releases keeps working.
 */
function bounded(done: Promise<WatchState>, task: WatchSource): WatchDone {
  const wait = (options: DoneOptions): Promise<WatchState> =>
    new Promise<WatchState>((resolve, reject) => {
      // The options' own check, whose message quotes a string it got (`got "5"`: unquoted, a string from a
      // JavaScript caller read as the number asked for); what it throws rejects the wait. Until 7 December
      // 2026 only `timeoutMs` was checked: a signal that is not an AbortSignal rejected with a TypeError,
      // and an unknown option (`{ timeout: 5000 }`) was ignored, the wait left unbounded.
      const { signal, timeoutMs } = resolveOptions('watch.done', DONE_OPTIONS, options);
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
      // (Not `once`: `finish` removes it, the abort's included.)
      signal?.addEventListener('abort', onAbort);
      // No deadline (`Infinity`, or none given: `undefined < Infinity` is false) starts no timer. Until
      // 7 December 2026 `Infinity` started one, which the timers re-armed every 2^31 - 1 ms for as long as
      // the wait lasted.
      if ((timeoutMs as number) < Infinity) {
        cancelTimer = task.timers.start(() => {
          finish();
          reject(
            new ProgressError(
              ErrorCode.Timeout,
              `watch.done: task ${task.taskId} did not finish within ${timeoutMs} ms`,
              { taskId: task.taskId },
            ),
          );
        }, timeoutMs as number);
      }
      // (`finish` a microtask after: no timer fires in between, and an abort then finds the wait settled.)
      done.then(resolve, reject).then(finish);
    });
  return Object.assign(wait, {
    // biome-ignore lint/suspicious/noThenProperty: on purpose, so `await watch.done` keeps working.
    then: done.then.bind(done),
    catch: done.catch.bind(done),
    finally: done.finally.bind(done),
    [Symbol.toStringTag]: 'Promise',
  }) as unknown as WatchDone;
}
