// A client module for React Server Components (Next.js's App Router): context and hooks exist only there.
// esbuild (tsup) keeps an entry's directive at the top of its output; test/react-directive.test.ts checks it.
'use client';

import { ErrorCode, type ProgressError } from '@finishline/core';
import { WatchCursor } from '@finishline/core/internal';
import {
  createContext,
  createElement,
  type ReactNode,
  useContext,
  useMemo,
  useSyncExternalStore,
} from 'react';
import type { ProgressClient } from './progress-client.js';
import type { Watch, WatchState } from './watch.js';

/**
 * `@finishline/client/react`: a task's live state as a React hook, on `useSyncExternalStore`, so every
 * render sees one consistent state (no tearing under concurrent rendering) and server rendering works.
 *
 * React is an optional peer dependency: only this entry imports it.
 *
 * @example
 * ```tsx
 * import { ProgressClient } from '@finishline/client';
 * import { ProgressClientProvider, useTask } from '@finishline/client/react';
 *
 * // No client in server rendering (SSR): the constructor needs the page's URL and a WebSocket.
 * const client = typeof window === 'undefined' ? null : new ProgressClient({ url: '/progress' });
 *
 * function Bar({ taskId }: { taskId: string }) {
 *   const task = useTask(taskId);
 *   if (task === null) return <progress />;
 *   // `task_not_found`, `forbidden`, the client closed: not `finished`, so check it or the bar spins for ever.
 *   if (task.fatalError !== null) return <p role="alert">{task.fatalError.message}</p>;
 *   return <progress value={task.fraction ?? undefined} title={task.status} />;
 * }
 *
 * export const App = () => (
 *   <ProgressClientProvider client={client}>
 *     <Bar taskId="t-42" />
 *   </ProgressClientProvider>
 * );
 * ```
 *
 * @module
 */

const ClientContext = createContext<ProgressClient | null>(null);

/** Props of {@link ProgressClientProvider}. */
export interface ProgressClientProviderProps {
  /**
   * The client every {@link useTask} below uses (unless given its own). `null` where no client can be
   * made: in server rendering, where `new ProgressClient()` throws (a relative `url` has no page to
   * resolve against, and Node 20 has no `WebSocket`); every {@link useTask} below then returns `null`.
   */
  client: ProgressClient | null;
  children?: ReactNode;
}

/** Makes a {@link ProgressClient} available to {@link useTask} in the tree below. */
export function ProgressClientProvider(props: ProgressClientProviderProps): ReactNode {
  return createElement(ClientContext.Provider, { value: props.client }, props.children);
}

/** Options of {@link useTask}. */
export interface UseTaskOptions {
  /**
   * The client to watch with.
   * @default the client of the nearest {@link ProgressClientProvider}
   */
  client?: ProgressClient | undefined;
}

/**
 * The live state of a task: `null` while there is nothing to show (no task id: `null`, `undefined` or
 * `''`; no client; on the server and during hydration, where no socket exists), then the watch's
 * {@link WatchState}, a new object on every change. The task is watched while at least one mounted component uses it; the last to unmount
 * closes the watch.
 *
 * SSR-safe: the server snapshot is `null`, so server HTML and the first client render agree.
 *
 * A client closed before the component mounts (or before its task id or client changes) gives the state
 * a mounted component gets when its client closes: `fatalError` with the code `closed` (here at seq 0,
 * `running`, nothing known of the task).
 *
 * @throws ProgressError `invalid_input` from {@link ProgressClient.watch} for an invalid task id, to the
 *   nearest error boundary when the component mounts or its task id or client changes.
 */
export function useTask(taskId: string | null | undefined, options: UseTaskOptions = {}): WatchState | null {
  const fromContext = useContext(ClientContext);
  const client = options.client ?? fromContext;
  const store = useMemo(
    () =>
      // '' too: an id not known yet (an empty form field or query parameter) is no id, not an invalid one.
      client === null || !taskId ? EMPTY : storeOf(client, taskId),
    [client, taskId],
  );
  return useSyncExternalStore(store.subscribe, store.getSnapshot, getServerSnapshot);
}

const getServerSnapshot = (): null => null;

interface Store {
  subscribe(onChange: () => void): () => void;
  getSnapshot(): WatchState | null;
}

const EMPTY: Store = { subscribe: () => () => undefined, getSnapshot: () => null };

/**
 * The stores whose watch is open, by client and task id, filled and emptied as watches open and close
 * (never during render). A component that mounts beside others showing the task takes their store, so
 * its first render shows the task's state: with a store of its own it rendered `null` until its watch
 * opened after the commit, a flash of "nothing yet" beside the others' state in the same commit.
 */
const openStores = new WeakMap<ProgressClient, Map<string, TaskStore>>();

function storeOf(client: ProgressClient, taskId: string): Store {
  const shared = openStores.get(client)?.get(taskId);
  // Not one whose watch ended badly (the task not found, the client closed): a component that mounts
  // later tries again, as it did before stores were shared. Nor one whose task has its end: its id may
  // name a new run by now (purged and created again), and the new component's watch asks the server, as
  // the client's does after an acknowledged end. (Until 5 December 2026 it took the store of a component
  // still showing the old run, and showed that run's end.)
  return shared?.live ? shared : new TaskStore(client, taskId);
}

/**
 * One task for the components that render it: the watch opens on the first subscription (never during
 * render, which may be thrown away) and closes after the last, a microtask late, so StrictMode's
 * unmount-and-mount-again keeps the same watch instead of unsubscribing from the server and back.
 */
class TaskStore implements Store {
  readonly #client: ProgressClient;
  readonly #taskId: string;
  #watch: Watch | undefined;
  /** The state shown when the client was closed before this store could open its watch. */
  #closed: WatchState | null = null;
  /**
   * The state it showed when the last unsubscribe closed its watch: a component hidden by `<Activity>`
   * (its subscriptions are let go of) and shown again shows it still, as it would have had it stayed
   * visible. A final state for good, without a watch; any other until the new watch knows more than
   * nothing (see `#blank`). Until 7 December 2026 it showed `null`, then the `running` state at seq 0 of
   * a new watch until the server answered (the bar back at its start), and for an ended task a
   * `task_not_found` in place of its end once the task was purged.
   */
  #last: WatchState | undefined;
  /** The new watch's first state when it knew nothing (seq 0): `#last` is shown while it stays. */
  #blank: WatchState | undefined;
  #listeners = 0;

  constructor(client: ProgressClient, taskId: string) {
    this.#client = client;
    this.#taskId = taskId;
  }

  /**
   * The watch is open (neither closed after the last unsubscribe nor ended by a fatal error) and its task
   * has no end yet: a store to share.
   */
  get live(): boolean {
    return this.#watch?.closed === false && !this.#watch.getSnapshot().finished;
  }

  readonly subscribe = (onChange: () => void): (() => void) => {
    const stores = openStores.get(this.#client) ?? new Map<string, TaskStore>();
    if (this.#watch === undefined) {
      if (this.#last?.finished) return () => undefined;
      try {
        this.#watch = this.#client.watch(this.#taskId);
      } catch (error) {
        // A closed client is a state to show, as it is for a component mounted before the close (a client
        // closed on logout while a page with a progress bar mounts). Until 7 December 2026 this threw out
        // of React's commit, and without an error boundary React unmounted the whole root. An invalid id
        // still throws: a bug in the page, not a state.
        if ((error as ProgressError).code !== ErrorCode.Closed) throw error;
        // What it last showed (hidden by <Activity> while the client closed), as a component left mounted
        // shows the close: until 7 December 2026 seq 0 here, the bar back at its start beside the error.
        // Else the view a watch starts from (seq 0, `running`, nothing known), as a closed watch's state shows it.
        this.#closed ??= Object.freeze({
          ...(this.#last ?? {
            ...new WatchCursor(this.#taskId).view,
            finished: false,
            fraction: null,
            rate: null,
            eta: null,
          }),
          fatalError: error as ProgressError,
        });
        return () => undefined;
      }
      const first = this.#watch.getSnapshot();
      if (first.seq === 0) this.#blank = first;
      openStores.set(this.#client, stores);
      if (!stores.get(this.#taskId)?.live) stores.set(this.#taskId, this);
    }
    const unsubscribe = this.#watch.subscribe(onChange);
    this.#listeners++;
    return () => {
      unsubscribe();
      this.#listeners--;
      queueMicrotask(() => {
        if (this.#listeners > 0) return;
        this.#last = this.getSnapshot() ?? undefined;
        this.#watch?.close();
        this.#watch = this.#blank = undefined;
        if (stores.get(this.#taskId) === this) stores.delete(this.#taskId);
      });
    };
  };

  readonly getSnapshot = (): WatchState | null => {
    const state = this.#watch?.getSnapshot();
    if (state !== undefined && state !== this.#blank) return state;
    // A closed client's state before any kept one: the component's task is not followed any more.
    return this.#closed ?? this.#last ?? state ?? null;
  };
}
