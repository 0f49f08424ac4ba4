import type { TaskEvent } from '../model.js';
import { callQuietly } from './hook-guard.js';

/**
 * The change feed a store publishes (task X is at seq N) and the in-process feed the memory and SQLite
 * stores use.
 *
 * @module
 */

/**
 * "Task X is now at seq N." Stores publish one change per committed event, once `readEvents` shows it
 * (a server that reads nothing at the announced seq a few times over takes the change for a stale one, of
 * a store restored since, and waits for the next); servers use it to wake the watchers of that task
 * instead of polling. A change always carries the ids; it may also carry the
 * committed events themselves (`events`), when the feed had them at hand — then a receiver whose cursor
 * is right before them can deliver them without reading the store. A lost or duplicated change costs at
 * most a read either way.
 */
export interface TaskChange {
  taskId: string;
  /** The seq just committed (the task's latest, at the time of the commit). */
  seq: number;
  /** True when that event is the task's terminal event. */
  terminal: boolean;
  /**
   * The committed events ending at `seq`, in seq order and without gaps (the last one has seq `seq`),
   * exactly as `readEvents` returns them; absent when the feed has only the ids (for example a change
   * found by a re-read or a poll, or one too large to travel in a notification). Frozen: shared by every
   * listener, so never mutate it.
   */
  events?: readonly TaskEvent[];
  /**
   * The store epoch (`ProgressStore.getEpoch`) the change was committed under, for feeds that know it;
   * absent otherwise (the built-in stores leave it out). A server drops a change whose epoch is not the
   * one it read last, events and all: a change of the old epoch delivered after a restore (late, or
   * re-published) names seqs and events of the old log, which would pass for the restored task's. A
   * feed that cannot stamp its changes should implement {@link ChangeFeed.forgetSeqs} so that it
   * publishes nothing committed before it.
   */
  epoch?: string;
  /**
   * The run of the task the change is of (its `createdAt`), for feeds that know it; absent otherwise.
   * An id is taken again once retention purged its task, and each run starts again at seq 1, so a
   * change names seqs of one run only: a server that follows an earlier run of the id starts over on
   * this one before it hands anything of it out, and drops a change of an earlier run than its own.
   * Without it, a server tells runs apart only by reading the task (see the server's task hub), and a
   * server that follows a run reads a change's `events` from the store rather than delivering them from
   * the change: they may be of a later run of the id.
   */
  run?: number;
}

/** Stops a listener. Calling it twice is harmless. */
export type Unsubscribe = () => void;

/**
 * Called for each change, in commit order for one task. Must not throw; errors are not propagated (the
 * built-in stores hand them, and the rejection of an `async` listener's promise, to `onListenerError`).
 */
export type ChangeListener = (change: TaskChange) => void;

/**
 * The change feed seam. Delivery is at-least-once and may be late (a Postgres listener that reconnects
 * re-reads and republishes what it missed); listeners must treat changes as hints and read the store.
 *
 * @example
 * ```ts
 * const stop = store.changes.subscribe(({ taskId, seq }) => wakeWatchers(taskId, seq));
 * // later
 * stop();
 * ```
 */
export interface ChangeFeed {
  subscribe(listener: ChangeListener): Unsubscribe;
  /**
   * Optional interest hint: a server calls it for each task its local watchers follow (and the returned
   * function when they stop). Feeds with a safety-net poll (Postgres) ask the store about exactly these
   * tasks, in one query, instead of every task; feeds that see every commit anyway may omit it.
   * Reference-counted: following a task twice needs both returned functions called.
   */
  follow?(taskId: string): Unsubscribe;
  /**
   * Optional: the store's epoch changed under the feed (restored from a backup and renewed while it
   * ran), as a server finds when it reads the epoch. A feed that skips seqs it already published (so
   * each reaches its listeners once) forgets them: the restored tasks' seqs, lower than those, are
   * published again. A feed that may deliver a change late (from another process, after a reconnect)
   * and does not stamp its changes with their {@link TaskChange.epoch} publishes nothing received or
   * committed before the call after it returns: its events would pass for the restored tasks'. Feeds
   * that remember nothing and deliver nothing late may omit it.
   */
  forgetSeqs?(): void;
  /**
   * Optional: calls `listener` when the feed hears that the store's epoch was renewed
   * (`ProgressStore.renewEpoch` in this process, or, for a feed that hears other processes, in any
   * of them), so that a server reads the epoch at once instead of at its next heartbeat tick. A hint: the
   * server reads the epoch itself, and a feed that cannot hear renewals omits it.
   */
  onEpochRenewed?(listener: () => void): Unsubscribe;
}

/**
 * An in-process change feed: a set of listeners called synchronously. Stores use it for writers in the
 * same process; adapters with a cross-process feed publish what they receive through it too.
 */
export class LocalChangeFeed implements ChangeFeed {
  readonly #listeners = new Set<(change: TaskChange) => unknown>();
  readonly #epochListeners = new Set<() => unknown>();
  readonly #onListenerError: (error: unknown) => void;
  /** A publish is delivering; what listeners publish meanwhile waits in {@link #queued}. */
  #publishing = false;
  readonly #queued: TaskChange[] = [];

  /** @param onListenerError receives what a listener throws or rejects with; by default it is ignored. */
  constructor(onListenerError: (error: unknown) => void = () => {}) {
    this.#onListenerError = onListenerError;
  }

  subscribe(listener: ChangeListener): Unsubscribe {
    // Wrap so the same function subscribed twice gets two independent subscriptions.
    // (Returning what the listener returns: a promise of an `async` one is watched, see #watch.)
    const entry = (change: TaskChange): unknown => listener(change);
    this.#listeners.add(entry);
    return () => {
      this.#listeners.delete(entry);
    };
  }

  /**
   * Calls every listener with `change`. A listener that throws does not stop the others. A change published
   * by a listener (one that writes to a store that publishes synchronously, as the memory store does) is
   * delivered once every listener had the one before it: delivered at once, the later listeners got it
   * first, out of commit order (the SQLite store's outbox keeps that order the same way).
   */
  publish(change: TaskChange): void {
    if (this.#publishing) {
      this.#queued.push(change);
      return;
    }
    this.#publishing = true;
    try {
      this.#deliver(change);
      for (let index = 0; index < this.#queued.length; index++)
        this.#deliver(this.#queued[index] as TaskChange);
    } finally {
      this.#queued.length = 0;
      this.#publishing = false;
    }
  }

  #deliver(change: TaskChange): void {
    for (const listener of this.#listeners) {
      try {
        this.#watch(listener(change));
      } catch (error) {
        this.#reportListenerError(error);
      }
    }
  }

  /**
   * Hands what a listener's promise rejects with to `onListenerError`, as what it throws: an `async`
   * listener (`ChangeListener` returns void, which TypeScript lets one be) that failed left its rejection
   * unhandled, which ended the process (Node's default) instead of reaching the hook.
   */
  #watch(result: unknown): void {
    if (typeof (result as PromiseLike<unknown> | null)?.then === 'function') {
      (result as PromiseLike<unknown>).then(undefined, (error: unknown) => this.#reportListenerError(error));
    }
  }

  /**
   * Hands what a listener threw to `onListenerError`; what that hook throws in turn is dropped: it would
   * stop the other listeners, and reach the store that publishes (an append committed but rejected, a
   * feed's loop or socket handler ended).
   */
  #reportListenerError(error: unknown): void {
    // A rejection of an `async` hook's promise too: left unhandled, it ended the process.
    callQuietly(this.#onListenerError, error);
  }

  onEpochRenewed(listener: () => void): Unsubscribe {
    const entry = (): unknown => listener();
    this.#epochListeners.add(entry);
    return () => {
      this.#epochListeners.delete(entry);
    };
  }

  /**
   * Calls every `onEpochRenewed` listener. A listener that throws does not stop the others; what it
   * throws or rejects with goes to `onListenerError`.
   */
  publishEpochRenewed(): void {
    for (const listener of this.#epochListeners) {
      try {
        this.#watch(listener());
      } catch (error) {
        this.#reportListenerError(error);
      }
    }
  }

  /** Number of active listeners. */
  get size(): number {
    return this.#listeners.size;
  }
}
