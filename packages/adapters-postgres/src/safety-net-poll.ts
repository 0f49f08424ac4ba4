import type { ProgressError } from '@finishline/core';
import { STORE_DEFAULTS } from '@finishline/core';
import type { ChangeNotice } from './notify-payload.js';
import { toProgressError } from './pg-errors.js';
import type { ChangeFeedHub, PollStats } from './postgres-change-feed.js';

/**
 * The safety net under `LISTEN/NOTIFY`: every `intervalMs` it asks the store for the latest seq of the
 * tasks local watchers follow (and only those), in one indexed query per 1000 tasks, and publishes what
 * the notifications did not deliver. It runs whether or not the `LISTEN` connection is up, over the
 * pool, so it also covers the time a reconnect takes. A task found ended at a seq already published as
 * running tells that the store went back (see `ChangeFeedHub.wentBack`).
 *
 * @module
 */

/** The latest state of one task, as the poll needs it. */
export interface LatestState {
  seq: number;
  /** True when the task ended (its `seq` is then the terminal event). */
  terminal: boolean;
  /** The task's run (its `createdAt`). */
  run?: number;
}

/** What {@link SafetyNetPoll} needs. */
export interface SafetyNetPollOptions {
  hub: ChangeFeedHub;
  intervalMs: number;
  /** One indexed query: the latest state of each known task among `taskIds` (at most 1000). */
  readLatest: (taskIds: readonly string[]) => Promise<Map<string, LatestState>>;
  /**
   * True while the `LISTEN` connection's re-read from a mark (or a page of the one from the start) runs:
   * the poll reports nothing then (it retries next time), as its answer would be judged against a memory
   * that re-read is about to correct.
   */
  rereading: () => boolean;
  onError: (error: ProgressError) => void;
}

/** Polls the followed tasks on an unref'd timer; {@link SafetyNetPoll.stop} clears it. */
export class SafetyNetPoll {
  readonly #options: SafetyNetPollOptions;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #running: Promise<void> | undefined;
  #stopped = false;
  #errors = 0;
  /** A failure was reported and no read succeeded since: further failures of the streak are not. */
  #failing = false;

  constructor(options: SafetyNetPollOptions) {
    this.#options = options;
  }

  stats(): PollStats {
    return { pollErrors: this.#errors };
  }

  start(): void {
    this.#schedule();
  }

  /**
   * Stops the timer. A poll in progress is not waited for: what it reads is dropped. Awaited, its read
   * held the store's `close()` for as long as the database took to answer it, some 15 minutes (until TCP
   * gave up) on a host that froze, for an answer nothing needs once the store is closed.
   */
  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  /**
   * Runs one poll now (also what the timer does). Resolves when it finished; never rejects (a failure
   * is counted, and reported to `onError` once per streak: again only after a read succeeded. Reported
   * on every poll, a database down logged 2 lines a second at the default interval).
   */
  async pollOnce(): Promise<void> {
    if (this.#running !== undefined) return this.#running;
    // Not only the read may fail: the hub reads the store's clock (its sweep, a terminal's report), and a
    // clock that throws (one that returned NaN once) rejected the poll. The timer's poll then never ran
    // again, for the life of the store (whatever `NOTIFY` lost stayed lost), beside an unhandled rejection,
    // which ends a Node process by default. Counted and reported as a failed read is.
    this.#running = this.#poll()
      .catch((error: unknown) => this.#failed(error))
      .finally(() => {
        this.#running = undefined;
      });
    return this.#running;
  }

  /** Counts a failed poll; reports the first of a streak (see {@link pollOnce}). */
  #failed(error: unknown): void {
    // (Not once stopped: the caller may have ended its pool after the store closed.)
    if (this.#stopped) return;
    this.#errors += 1;
    if (!this.#failing) {
      this.#failing = true;
      this.#options.onError(toProgressError(error, 'The safety-net poll failed'));
    }
  }

  #schedule(): void {
    if (this.#stopped) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      void this.pollOnce().then(() => this.#schedule());
    }, this.#options.intervalMs);
    this.#timer.unref?.();
  }

  async #poll(): Promise<void> {
    const { hub } = this.#options;
    hub.sweep();
    const taskIds = hub.followedTaskIds();
    for (let start = 0; start < taskIds.length && !this.#stopped; start += STORE_DEFAULTS.maxLatestSeqsIds) {
      const chunk = taskIds.slice(start, start + STORE_DEFAULTS.maxLatestSeqsIds);
      let latest: Map<string, LatestState>;
      // Read before a purge and reported after it was heard, a task's state would pass for a new task's of
      // the same id (see ChangeFeedHub.forgetCount): such tasks wait for the next poll.
      const forgets = hub.forgetCount();
      try {
        latest = await this.#options.readLatest(chunk);
      } catch (error) {
        this.#failed(error);
        return;
      }
      this.#failing = false;
      if (this.#stopped || this.#options.rereading()) return;
      for (const [taskId, state] of latest) {
        if (hub.forgottenSince(taskId, forgets)) continue;
        const published = hub.publishedSeq(taskId);
        // An end at a seq already published as running: the store went back (see ChangeFeedHub.wentBack).
        if (
          published === undefined ||
          state.seq > published ||
          hub.wentBack(taskId, state.seq, state.terminal, state.run)
        ) {
          const change: ChangeNotice = {
            taskId,
            firstSeq: state.seq,
            seq: state.seq,
            terminal: state.terminal,
          };
          if (state.run !== undefined) change.run = state.run;
          hub.report(change, 'poll');
        }
      }
    }
  }
}
