/**
 * Persists watchers' acknowledgements to the store, batched, deduplicated and retried.
 *
 * @module
 */
import type { ProgressStore, RunFence, Task } from '@finishline/core';
import { ErrorCode, isProgressError } from '@finishline/core';
import type { ProgressLogger } from '../logger.js';
import { describeError } from '../logger.js';
import type { ServerMetrics } from '../metrics.js';
import { delayUnlessAborted, waitAtMost } from '../wait.js';

interface AckState {
  /**
   * The `createdAt` of the run of the task id these seqs belong to, once a read told it ({@link
   * AckWriter.seen}): a task id purged and taken again by a new task is another run, whose seqs start over.
   */
  run: number | undefined;
  /**
   * `run` as the store's fence (`{ run }`), made once with it: every write passes it, so that a store whose
   * id is another run by now (purged and taken again, maybe by another owner, unknown to this server)
   * records nothing and rejects with `task_not_found`, never retried.
   */
  fence: RunFence | undefined;
  /** Highest seq written to the store by this process. */
  written: number;
  /** Highest seq acknowledged by a local watcher and not yet written. */
  pending: number;
  /** The writer's count of acks taken (see {@link AckWriter.mark}) when `pending` was last raised. */
  pendingAt: number;
  inFlight: Promise<void> | undefined;
  /** The seq of the write in flight (0: none). */
  writing: number;
  /** Failed writes of `pending` in a row (store down). */
  failures: number;
  retryTimer: NodeJS.Timeout | undefined;
  /**
   * A read of another run of the id replaced this state (see {@link AckWriter.seen}): a write of it that
   * fails is checked against the store as an unvouched ack is, not dropped as one of an old epoch.
   */
  runReplaced: boolean;
  /** The writer's count of epoch changes ({@link AckWriter.forgetSeqs}) when the state was made. */
  epoch: number;
}

/** Writes of one ack retried at most this many times when the store fails. */
const MAX_ATTEMPTS = 3;
/** Dropped acks named in the log line of an epoch change (their count is always given). */
const MAX_DROPPED_LOGGED = 100;
/** Tasks whose written ack is remembered (to skip duplicate writes from several watchers). */
const MAX_REMEMBERED = 10_000;
/** Remembered states looked at per task added past `MAX_REMEMBERED`: two, to shrink back by one per task. */
const EVICTION_LOOKS = 2;

/**
 * Persists watchers' acknowledgements (`store.ack`), which is what makes events *processed* for an
 * operator. Acks of many sockets for one task are coalesced: at most one write per task is in flight,
 * and when it lands the highest seq acknowledged meanwhile is written next. Nothing waits on a timer,
 * so the ack of a terminal event is written as soon as the previous write of that task returns.
 */
export class AckWriter {
  readonly #store: ProgressStore;
  readonly #logger: ProgressLogger;
  readonly #metrics: ServerMetrics;
  readonly #retryDelayMs: number;
  readonly #tasks = new Map<string, AckState>();
  /**
   * Every write on its way to the store, whether or not its task's state is still kept: {@link flush}
   * waits for these, so a state dropped meanwhile ({@link forgetSeqs} after a restore) cannot hide one.
   */
  readonly #inFlight = new Set<Promise<void>>();
  /** The reads of {@link ackOfRun} under way, by task: the run each checks and the highest seq it will write. */
  readonly #runChecks = new Map<string, { run: number; seq: number }>();
  #closed = false;
  /** Aborted by {@link flush} and {@link close}: a read waiting to be retried ({@link #readRun}) goes at once. */
  readonly #hurry = new AbortController();
  /** Acks taken so far (see {@link mark}). */
  #taken = 0;
  /** Epoch changes so far ({@link forgetSeqs}): an ack taken before one is of the old epoch. */
  #epochs = 0;

  constructor(options: {
    store: ProgressStore;
    logger: ProgressLogger;
    metrics: ServerMetrics;
    retryDelayMs: number;
  }) {
    this.#store = options.store;
    this.#logger = options.logger;
    this.#metrics = options.metrics;
    this.#retryDelayMs = options.retryDelayMs;
  }

  /**
   * The count of acks taken so far: a reader takes it as its read of a task starts, and hands it to
   * {@link seen} with what it read, so that acks taken since (maybe of events the read did not see) are
   * not judged by that read.
   */
  mark(): number {
    return this.#taken;
  }

  /**
   * A local watcher acknowledged `taskId` up to `seq`, of `run` (the `createdAt` its authorization read)
   * when the caller knows it. Writes are fenced to the run a read gave this writer ({@link seen}); `run`
   * fences them when no read did since the task's state was made (it was evicted after `MAX_REMEMBERED`
   * other tasks, or dropped at an epoch change): without it such a write named the id only. A `run` other
   * than the one a read gave this writer is written as {@link ackOfRun} writes: once a read finds the id
   * still of `run`.
   */
  ack(taskId: string, seq: number, run?: number): void {
    if (this.#closed) return;
    let state = this.#tasks.get(taskId);
    if (state === undefined) {
      state = this.#add(taskId, run);
    } else if (state.run === undefined && run !== undefined) {
      state.run = run;
      state.fence = { run };
    } else if (run !== undefined && run !== state.run) {
      // The caller's run is not the one this writer's reads last saw: one of them is a run purged since and
      // its id taken again (a watcher still following the old run, or a state made by a read of it). Fenced
      // to the state's run, the ack of the old run went onto the new one's row (and the new run's acks up
      // to its seq were then skipped as written), or the ack of the new run was refused as of a run gone
      // and lost. A read tells which run the id is now (rare: a subscription's acks carry its own run).
      this.ackOfRun(taskId, seq, run);
      return;
    }
    if (seq <= state.written || seq <= state.pending) return;
    state.pending = seq;
    this.#taken += 1;
    state.pendingAt = this.#taken;
    state.failures = 0;
    this.#write(taskId, state);
  }

  /**
   * An ack of `run` (a `createdAt`) that no current authorization vouches for: a late one of a task the
   * socket left, or one of what an earlier stream of the socket sent while its resubscribe loads. The id
   * may be another run's by now (purged by retention and taken again, maybe by another owner), and the
   * run this writer fences its writes to is the one its reads last saw, not necessarily `run`: written
   * blindly, it marked the new task's events processed, which none of its watchers had processed. Written
   * once a read finds the task still of `run` (and fenced to it); `undefined` (no run was ever sent on the
   * socket) writes nothing. Rare (each costs the client a rate-limit token), never an
   * ack of a subscription's live events.
   */
  ackOfRun(taskId: string, seq: number, run: number | undefined): void {
    if (this.#closed || run === undefined) return;
    const state = this.#tasks.get(taskId);
    if (state?.run === run && (seq <= state.written || seq <= state.pending)) return;
    // One read per task and run at a time: after a reconnect storm every watcher of a task flushes its
    // pending ack while its resubscribe loads, and each read its own copy of the same row. The highest seq
    // asked meanwhile is the one written.
    const checking = this.#runChecks.get(taskId);
    if (checking?.run === run) {
      checking.seq = Math.max(checking.seq, seq);
      return;
    }
    const asked = { run, seq };
    this.#runChecks.set(taskId, asked);
    const mark = this.#taken;
    const epoch = this.#epochs;
    const check = this.#readRun(taskId).then(
      (task) => {
        if (this.#runChecks.get(taskId) === asked) this.#runChecks.delete(taskId);
        // The store's epoch changed while the run was read (see forgetSeqs): the ack is of the old epoch,
        // as those dropped then are. A restore keeps a run's `createdAt`, so the read, of the restored
        // store, vouched for the run, and the old epoch's seq was written onto the restored log's.
        if (epoch !== this.#epochs) {
          this.#logger.debug({ taskId, seq: asked.seq, run }, 'ack of the old epoch not recorded');
          return;
        }
        if (task === undefined || task.createdAt !== run) {
          this.#logger.debug({ taskId, seq: asked.seq, run }, 'ack of a run no longer stored not recorded');
          return;
        }
        this.seen(taskId, task.seq, task.createdAt, mark);
        this.ack(taskId, asked.seq);
      },
      (error: unknown) => {
        if (this.#runChecks.get(taskId) === asked) this.#runChecks.delete(taskId);
        this.#logger.debug(
          { err: describeError(error), taskId, seq: asked.seq },
          'ack not recorded: its run not read',
        );
      },
    );
    // Waited for by flush(), as writes are: the write it starts is in the set before the check leaves it.
    this.#inFlight.add(check);
    void check.finally(() => this.#inFlight.delete(check));
  }

  /**
   * The task, for {@link ackOfRun}: read again after `retryDelayMs` when the store is unavailable, at most
   * `MAX_ATTEMPTS` times, as a write is. Such an ack is sent once (the re-ack of a terminal frame behind
   * an unsubscribe): dropped at the first failed read, a store blip lost it for good. A shutdown's
   * {@link flush} cuts the waits short.
   */
  async #readRun(taskId: string): Promise<Task | undefined> {
    for (let attempt = 1; ; attempt += 1) {
      try {
        return await this.#store.getTask(taskId);
      } catch (error) {
        if (attempt >= MAX_ATTEMPTS || this.#closed || !isProgressError(error, ErrorCode.StoreUnavailable))
          throw error;
        this.#metrics.storeErrors.inc();
        await delayUnlessAborted(this.#retryDelayMs, this.#hurry.signal);
      }
    }
  }

  /**
   * Waits until every acknowledgement received so far is written (at most until `deadline`, epoch ms of
   * the real clock). A write in flight may have a newer ack queued behind it, which starts when it lands:
   * those are waited for too. (Waiting for the first round only let a graceful shutdown drop the queued
   * one — the full chaos run found the terminal ack of a task lost that way.)
   */
  async flush(deadline: number): Promise<void> {
    this.#hurry.abort();
    for (;;) {
      // An ack whose write failed waits on its retry timer, with nothing in flight: write it now, or the
      // shutdown's close() clears the timer and the acknowledgement is lost.
      for (const [taskId, state] of this.#tasks) {
        if (state.retryTimer === undefined) continue;
        clearTimeout(state.retryTimer);
        state.retryTimer = undefined;
        this.#write(taskId, state);
      }
      if (this.#inFlight.size === 0 || Date.now() >= deadline) return;
      await waitAtMost(Promise.allSettled([...this.#inFlight]), deadline - Date.now());
    }
  }

  /**
   * The store's epoch changed (a restore): the seqs written and waiting belong to the old epoch, and the
   * restored tasks' acks, lower, would be skipped as already written. A write in flight finishes, and
   * {@link flush} still waits for it (a shutdown right after a restore closed the writer under it, losing
   * that acknowledgement); what waited behind it is dropped, and it is not retried if it fails.
   */
  forgetSeqs(): void {
    const dropped: { taskId: string; seq: number }[] = [];
    for (const [taskId, state] of this.#tasks) {
      if (state.retryTimer !== undefined) clearTimeout(state.retryTimer);
      state.retryTimer = undefined;
      if (state.pending > state.written && state.pending > state.writing)
        dropped.push({ taskId, seq: state.pending });
      state.pending = 0;
    }
    this.#tasks.clear();
    // The acks waiting on a read of their run are of the old epoch too (see `ackOfRun`); an ack of the
    // new epoch must not join one of those reads, whose answer drops it.
    for (const [taskId, asked] of this.#runChecks) dropped.push({ taskId, seq: asked.seq });
    this.#runChecks.clear();
    this.#epochs += 1;
    // Acks carry no epoch (the known limitation, guarantees.md): said, so that an operator, and the chaos
    // suite's ack check, can tell an acknowledgement dropped here from one lost.
    if (dropped.length > 0)
      this.#logger.info(
        { droppedAcks: dropped.length, acks: dropped.slice(0, MAX_DROPPED_LOGGED) },
        'acknowledgements not written yet were dropped: the store epoch changed',
      );
  }

  /**
   * A read found the task `taskId` at `seq`, created at `run` (its `createdAt`); a socket or an HTTP ack
   * reads it before any of its acks is taken. Another run than the one its remembered seqs belong to (the
   * id was purged and taken again by a new task, whose seqs start over), or a seq below them (the store
   * restored), and what this writer remembers would pass the new run's acks for duplicates, never written:
   * its state goes, as in {@link forgetSeqs} (a write in flight finishes), and the run is remembered for
   * the acks to come. (Runs sharing a `createdAt`, after a step back of the store clock, are told apart only by their seqs.) A read
   * older than an ack written since costs at most one repeated write: the store keeps the highest ack. A
   * read older than an ack still waiting would drop it: a reader that passes `mark` ({@link mark}, taken
   * as its read started) has a read of the same run below an ack taken since ignored, and an ack of
   * another run than the one read, still waiting, is written once a read finds the id still of its run.
   */
  seen(taskId: string, seq: number, run: number, mark?: number): void {
    const state = this.#tasks.get(taskId);
    if (state === undefined) {
      if (!this.#closed) this.#add(taskId, run);
      return;
    }
    if (state.run === undefined) {
      state.run = run;
      state.fence = { run };
    }
    if (state.run === run && seq >= state.written && seq >= state.pending) return;
    // The same run, read below an ack taken since the read started (`mark`): the read may have been made
    // before that ack's event was committed, so it is no sign of a restore. Taken for one, it dropped the
    // ack waiting behind the write in flight, which the client never sends again (a second watcher's
    // subscribe whose load answered after a terminal event's ack lost that ack).
    if (state.run === run && mark !== undefined && state.pendingAt > mark) return;
    // Another run: either this read is of a run purged since (a load that read it before the purge and
    // answered after a read of the id's run now), or the state's run is. An ack of the state's run still
    // waiting is checked against the store as an unvouched one is ({@link ackOfRun}): dropped with the
    // state, a current run's ack behind a stale read was lost, and its watcher never sends it again.
    const waiting =
      state.run !== run && state.pending > state.written && state.pending > state.writing ? state.pending : 0;
    state.runReplaced = state.run !== run;
    this.#renew(taskId, state, run);
    if (waiting > 0) this.ackOfRun(taskId, waiting, state.run);
  }

  /** Drops `state` (a write in flight finishes) for a fresh one of `run`. */
  #renew(taskId: string, state: AckState, run: number): AckState {
    if (state.retryTimer !== undefined) clearTimeout(state.retryTimer);
    state.retryTimer = undefined;
    state.pending = 0;
    this.#tasks.delete(taskId);
    return this.#add(taskId, run);
  }

  #add(taskId: string, run: number | undefined): AckState {
    const state: AckState = {
      run,
      fence: run === undefined ? undefined : { run },
      written: 0,
      pending: 0,
      pendingAt: 0,
      inFlight: undefined,
      writing: 0,
      failures: 0,
      retryTimer: undefined,
      runReplaced: false,
      epoch: this.#epochs,
    };
    this.#tasks.set(taskId, state);
    this.#evictOld();
    return state;
  }

  /** Stops writing and clears retry timers. */
  close(): void {
    this.#closed = true;
    this.#hurry.abort();
    for (const state of this.#tasks.values()) {
      if (state.retryTimer !== undefined) clearTimeout(state.retryTimer);
      state.retryTimer = undefined;
    }
  }

  #write(taskId: string, state: AckState): void {
    if (state.inFlight !== undefined || state.retryTimer !== undefined || this.#closed) return;
    if (state.pending <= state.written) return;
    const seq = state.pending;
    // Fenced to the run this writer knows, if any: without it an ack of a purged run went to the task that
    // took its id (the fence object is the state's, made once: no allocation per write).
    const write = this.#store.ack(taskId, seq, state.fence).then(
      (acked) => {
        state.written = Math.max(state.written, acked, seq);
        state.failures = 0;
      },
      (error: unknown) => this.#failed(taskId, state, seq, error),
    );
    state.inFlight = write;
    state.writing = seq;
    this.#inFlight.add(write);
    void write.finally(() => {
      state.inFlight = undefined;
      state.writing = 0;
      // Before the next write starts: flush's loop then finds that one in the set, not a gap between them.
      this.#write(taskId, state);
      this.#inFlight.delete(write);
    });
  }

  #failed(taskId: string, state: AckState, seq: number, error: unknown): void {
    if (isProgressError(error, ErrorCode.TaskNotFound) || isProgressError(error, ErrorCode.InvalidInput)) {
      // Purged task (or its id now another run's: the fence refused it), or an ack the store refuses:
      // retrying cannot help.
      this.#logger.debug({ err: describeError(error), taskId, seq }, 'ack not recorded');
      state.written = Math.max(state.written, seq);
      return;
    }
    this.#metrics.storeErrors.inc();
    if (state.runReplaced && state.epoch === this.#epochs) {
      // A read of another run replaced the state while this write ran: which run the id is now, a read
      // tells (the stale one may have been that read). Not after an epoch change: its seq is of the old
      // epoch (below).
      this.ackOfRun(taskId, seq, state.run);
      return;
    }
    if (this.#tasks.get(taskId) !== state) {
      // forgetSeqs() dropped the state while this write ran: its seq is of the old epoch, a retry has
      // nothing to write (what waited was dropped too), and its timer, on a state close() no longer
      // sees, outlived the writer.
      this.#logger.debug({ err: describeError(error), taskId, seq }, 'ack of the old epoch not recorded');
      return;
    }
    state.failures += 1;
    if (state.failures >= MAX_ATTEMPTS || this.#closed) {
      this.#logger.warn({ err: describeError(error), taskId, seq }, 'ack could not be recorded; giving up');
      // Not taken as written: the store does not have it. Counted as written, every later ack up to `seq`
      // (another watcher's, a resubscribed one's re-ack of its terminal event) was skipped as a duplicate
      // for as long as the state was kept, and the mark stayed below what watchers had. Forgotten instead,
      // so that the next such ack writes it again; the state is then evictable, as a written one is.
      // A higher ack that came in meanwhile is kept: it is written next, with its own attempts.
      if (state.pending <= seq) state.pending = state.written;
      state.failures = 0;
      return;
    }
    this.#logger.debug({ err: describeError(error), taskId, seq }, 'ack write failed; retrying');
    state.retryTimer = setTimeout(() => {
      state.retryTimer = undefined;
      this.#write(taskId, state);
    }, this.#retryDelayMs);
    state.retryTimer.unref();
  }

  /**
   * Forgets the oldest states past `MAX_REMEMBERED`, looking at `EVICTION_LOOKS` of them at most. A busy
   * one (a write in flight, waiting or to be retried) cannot go: it moves to the back, so the next call
   * does not look at it again. Left in front, every busy state was looked at again for each new task: in a
   * long store outage, with every write held, that was the whole map per ack (quadratic). The map then
   * grows past `MAX_REMEMBERED` while writes are held, and shrinks back by one per task added once they land.
   */
  #evictOld(): void {
    for (let looked = 0; looked < EVICTION_LOOKS && this.#tasks.size > MAX_REMEMBERED; looked += 1) {
      const [taskId, state] = this.#tasks.entries().next().value as [string, AckState];
      this.#tasks.delete(taskId);
      if (state.inFlight !== undefined || state.retryTimer !== undefined || state.pending > state.written)
        this.#tasks.set(taskId, state);
    }
  }
}
