import {
  type ItemEvent,
  isTerminalEvent,
  type ProgressError,
  type ProgressEvent,
  type TerminalEvent,
  type WatchView,
} from '@finishline/core';
import type { Delivery, WatchCursor } from '@finishline/core/internal';
import { terminalEventOfView, watchViewAfter, watchViewOfTask } from '@finishline/core/internal';
import { RateEstimator } from './rate-estimator.js';
import type { TimerSet } from './timers.js';
import type { Watch, WatchSource, WatchState } from './watch.js';

/**
 * The state every handle on one task shares: what the cursor delivered turned into a {@link WatchState}
 * (with fraction, rate and ETA) and into the events of each {@link Watch}.
 *
 * @module
 */

/**
 * The shared part of every handle on one task: the state the application reads, its events, rate and
 * ETA. Read-only to everything but its `TaskSubscription`, which feeds it what the cursor delivered
 * (the protocol bookkeeping lives there).
 *
 * @internal
 */
export class WatchedTask implements WatchSource {
  // `declare`: the constructor sets them; without it, the bundle defines each as a field first too.
  declare readonly taskId: string;
  readonly handles = new Set<Watch>();
  /** The client's timers (cleared when it closes), for the deadlines of `watch.done({ timeoutMs })`. */
  declare readonly timers: TimerSet;
  #state: WatchState;
  readonly #rate: RateEstimator;
  #terminal: TerminalEvent | undefined;

  /** Starts from the view of `cursor`, before anything was delivered. */
  constructor(cursor: WatchCursor, options: { rateWindowMs: number }, timers: TimerSet) {
    this.taskId = cursor.taskId;
    this.timers = timers;
    this.#rate = new RateEstimator(options.rateWindowMs);
    this.#state = this.#buildState(cursor.view, null);
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
        // One list for both: a handle opened by a snapshot listener gets the terminal from its replay.
        const handles = [...this.handles];
        for (const watch of handles) watch.deliver((handle) => handle.emit('snapshot', state));
        if (state.finished)
          for (const watch of handles) watch.deliver((handle) => this.#emitTerminal(handle, state));
        continue;
      }
      const event = delivery.event;
      if (isTerminalEvent(event)) {
        this.#terminal = event;
        this.#emit((watch) => this.#emitTerminal(watch, state));
      } else this.#emitEvent(event.type, event, state);
    }
    for (const watch of this.handles) watch.notify();
    if (this.#state.finished) for (const watch of this.handles) watch.settleIfFinished();
  }

  /**
   * Ends every handle with a fatal error; once the task is over, quietly: `done` resolved already, and
   * nothing is emitted or notified (the state does not change), for the reasons of {@link emitError}.
   * `error` may be left out only then (the client lets go of a finished task).
   */
  fail(error: ProgressError | undefined, emitError: boolean): void {
    const fatal = this.#state.finished ? undefined : error;
    if (fatal) this.#state = this.#buildState(this.#state, fatal);
    const handles = [...this.handles];
    this.handles.clear();
    for (const watch of handles) {
      if (fatal) {
        if (emitError) watch.deliver((handle) => handle.emit('error', fatal));
        watch.notify();
      }
      watch.end(fatal);
    }
  }

  /**
   * Emits a non-fatal error to every handle, unless the task is over: a handle's last event is
   * `finished`. A finished watch may still subscribe to acknowledge its terminal (after the store's
   * epoch was renewed, or when it finished over HTTP), and a fallback's request may still be on its way
   * when the end came another way; what refuses them (a `store_unavailable` retried, a `forbidden` that
   * just drops the bookkeeping, the close that stops the client, which the client's `error` reports
   * anyway) changes nothing the application showed. Nor is a refusal raised on the client's `error`
   * instead: after a store restore, every watch that finished before its ack went out subscribes again,
   * and the browsers of all its users would report a failure nobody saw; the server already counts each
   * refusal it sends (`finishline_frames_rejected_total` by code, `finishline_store_errors_total`) and
   * logs a failed subscribe, which is where an operator looks for them (docs/operations.md).
   */
  emitError(error: ProgressError): void {
    if (!this.#state.finished) this.#emit((watch) => watch.emit('error', error));
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
    // The event's type is the name of its event in WatchEvents, which pairs it with that event's type.
    (watch.emit as (name: TerminalEvent['type'], event: TerminalEvent, state: WatchState) => boolean)(
      event.type,
      event,
      state,
    );
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
