/**
 * The typed event emitter behind {@link ProgressClient} and {@link Watch}: the part of Node's and
 * eventemitter3's API a watcher uses, in a few hundred bytes, because a browser bundle pays for
 * every byte.
 *
 * @module
 */

type Listener<Args extends unknown[]> = (...args: Args) => void;

/**
 * A typed event emitter. Listeners run synchronously in the order they were added; one added or removed
 * while an event is being emitted takes effect from the next event. An exception in a listener reaches
 * the code that emitted.
 */
export class EventEmitter<Events extends { [E in keyof Events]: unknown[] }> {
  #listeners: { [E in keyof Events]?: Listener<Events[E]>[] } = {};

  /** Adds a listener. */
  on<E extends keyof Events>(event: E, listener: Listener<Events[E]>): this {
    this.#listeners[event] = [...(this.#listeners[event] ?? []), listener];
    return this;
  }

  /** Same as {@link on}. */
  addListener<E extends keyof Events>(event: E, listener: Listener<Events[E]>): this {
    return this.on(event, listener);
  }

  /** Adds a listener removed after its first call. */
  once<E extends keyof Events>(event: E, listener: Listener<Events[E]>): this {
    const wrapper: Listener<Events[E]> & { listener?: unknown } = (...args) => {
      this.off(event, wrapper);
      listener(...args);
    };
    wrapper.listener = listener;
    return this.on(event, wrapper);
  }

  /** Removes a listener (added by {@link on} or {@link once}). */
  off<E extends keyof Events>(event: E, listener: Listener<Events[E]>): this {
    const list = this.#listeners[event];
    if (list === undefined) return this;
    const index = list.findIndex(
      (each) => each === listener || (each as { listener?: unknown }).listener === listener,
    );
    if (index >= 0) this.#listeners[event] = list.filter((_, i) => i !== index);
    return this;
  }

  /** Same as {@link off}. */
  removeListener<E extends keyof Events>(event: E, listener: Listener<Events[E]>): this {
    return this.off(event, listener);
  }

  /** Removes every listener of `event`, or of every event. */
  removeAllListeners(event?: keyof Events): this {
    if (event === undefined) this.#listeners = {};
    else delete this.#listeners[event];
    return this;
  }

  /** Number of listeners of `event`. */
  listenerCount(event: keyof Events): number {
    return this.#listeners[event]?.length ?? 0;
  }

  /** Calls the listeners of `event`; true if there were any. */
  emit<E extends keyof Events>(event: E, ...args: Events[E]): boolean {
    const list = this.#listeners[event];
    if (list === undefined || list.length === 0) return false;
    for (const listener of list) listener(...args);
    return true;
  }
}
