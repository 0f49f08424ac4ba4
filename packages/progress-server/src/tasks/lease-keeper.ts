/**
 * Leases of the tasks this replica runs: renewing its own, reaping other replicas' expired ones.
 *
 * @module
 */
import type { AppendResult, ProgressStore } from '@finishline/core';
import { ErrorCode, isProgressError } from '@finishline/core';
import type { ProgressLogger } from '../logger.js';
import { describeError } from '../logger.js';
import type { ServerMetrics } from '../metrics.js';

/** What {@link LeaseKeeper} needs. */
export interface LeaseKeeperOptions {
  store: ProgressStore;
  /** Lease owner: the server id. */
  serverId: string;
  ttlMs: number;
  renewIntervalMs: number;
  /** 0 disables periodic reaping. */
  reapIntervalMs: number;
  logger: ProgressLogger;
  metrics: ServerMetrics;
  /**
   * The lease of run `run` (its `createdAt`) of a task could not be renewed because the task ended
   * elsewhere or another worker took it, or this replica reaped it.
   */
  onLost(taskId: string, run: number, error: unknown): void;
  /** This replica reaped an expired lease: publish the `interrupted` event locally. */
  onReaped(result: AppendResult): void;
  /** A monotonic clock in milliseconds, for the age of a store call in flight. @default performance.now */
  now?: (() => number) | undefined;
}

/** A store call in flight, shared by the calls that come while it is young (see {@link LeaseKeeper}). */
interface InFlight<T> {
  promise: Promise<T>;
  startedAt: number;
}

/**
 * Keeps the leases of the tasks this server runs alive, and turns the expired leases of any replica into
 * `interrupted` events. Both run on unref'd timers; {@link renewAll} and {@link reap} can also be called
 * directly (tests drive them with a manual clock, operators may force a reap).
 *
 * A renewal that fails because the store is down is retried at the next interval; the lease lasts
 * `ttlMs`, so a store outage shorter than `ttlMs - renewIntervalMs` loses nothing. A renewal that has not
 * answered for half an interval (a query hung on a dead connection, no timeout) is no longer waited on:
 * the next interval renews again beside it, as a hung call shared by every later one let the lease expire
 * (and another replica reap the task) while its worker was alive and the store answered other calls. The
 * same holds for a reap, at half of `reapIntervalMs`. The call left behind still has its answer handled.
 */
export class LeaseKeeper {
  readonly #options: LeaseKeeperOptions;
  /**
   * The owned tasks, each with its run (`createdAt`): renewals are fenced to it, so a renewal meant for a
   * run that was purged never keeps alive the lease of a task created again under the same id.
   */
  readonly #owned = new Map<string, number>();
  #renewTimer: NodeJS.Timeout | undefined;
  #reapTimer: NodeJS.Timeout | undefined;
  /** Renewals in flight, per task: a hung one must not hold back the renewal of the others. */
  readonly #renewals = new Map<string, InFlight<void>>();
  #reaping: InFlight<AppendResult[]> | undefined;
  readonly #now: () => number;
  #closed = false;

  constructor(options: LeaseKeeperOptions) {
    this.#options = options;
    this.#now = options.now ?? (() => performance.now());
  }

  /** Starts the renewal and reaping timers. */
  start(): void {
    if (this.#closed || this.#renewTimer !== undefined) return;
    this.#renewTimer = setInterval(() => void this.renewAll(), this.#options.renewIntervalMs);
    this.#renewTimer.unref();
    if (this.#options.reapIntervalMs > 0) {
      this.#reapTimer = setInterval(() => void this.reap(), this.#options.reapIntervalMs);
      this.#reapTimer.unref();
    }
  }

  /** Ids of the tasks whose leases this server renews. */
  get owned(): ReadonlySet<string> {
    return new Set(this.#owned.keys());
  }

  /**
   * Renew the lease of run `run` (its `createdAt`) of `taskId` from now on (the task was created with a
   * lease owned by this server).
   */
  add(taskId: string, run: number): void {
    if (!this.#closed) this.#owned.set(taskId, run);
  }

  /**
   * Stop renewing `taskId` (it ended, or its worker gave up so that reaping can end it); with `run`, only
   * if that is the run renewed (a handle of an older run must not stop the renewals of a newer one).
   */
  remove(taskId: string, run?: number): void {
    if (run === undefined || this.#owned.get(taskId) === run) this.#owned.delete(taskId);
  }

  /**
   * Renews every owned lease once. Never rejects; a task's renewal still in flight is shared, not
   * repeated (unless it has been for half an interval: see {@link LeaseKeeper}), and never holds back the
   * other tasks' renewals.
   */
  async renewAll(): Promise<void> {
    const now = this.#now();
    const stale = this.#options.renewIntervalMs / 2;
    await Promise.all(
      [...this.#owned].map(([taskId, run]) => {
        const current = this.#renewals.get(taskId);
        if (current !== undefined && now - current.startedAt < stale) return current.promise;
        const renewal: InFlight<void> = {
          startedAt: now,
          promise: this.#renewOne(taskId, run).finally(() => {
            if (this.#renewals.get(taskId) === renewal) this.#renewals.delete(taskId);
          }),
        };
        this.#renewals.set(taskId, renewal);
        return renewal.promise;
      }),
    );
  }

  /**
   * Reaps expired leases (of any replica) once and publishes the resulting `interrupted` events.
   * Never rejects: returns what was reaped, `[]` on failure. Concurrent calls share one run (unless it
   * has been in flight for half of `reapIntervalMs`: see {@link LeaseKeeper}).
   */
  reap(): Promise<AppendResult[]> {
    const now = this.#now();
    const current = this.#reaping;
    if (
      current !== undefined &&
      !(this.#options.reapIntervalMs > 0 && now - current.startedAt >= this.#options.reapIntervalMs / 2)
    ) {
      return current.promise;
    }
    const reaping: InFlight<AppendResult[]> = {
      startedAt: now,
      promise: this.#reap().finally(() => {
        if (this.#reaping === reaping) this.#reaping = undefined;
      }),
    };
    this.#reaping = reaping;
    return reaping.promise;
  }

  /** Stops the timers; waits for a running renewal or reap to finish. */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.#renewTimer !== undefined) clearInterval(this.#renewTimer);
    if (this.#reapTimer !== undefined) clearInterval(this.#reapTimer);
    this.#renewTimer = undefined;
    this.#reapTimer = undefined;
    await Promise.allSettled([
      ...[...this.#renewals.values()].map((renewal) => renewal.promise),
      this.#reaping?.promise,
    ]);
  }

  async #renewOne(taskId: string, run: number): Promise<void> {
    const { store, serverId, ttlMs, logger, metrics } = this.#options;
    try {
      await store.renewLease(taskId, serverId, ttlMs, { run });
    } catch (error) {
      // Ended (or created again by this server, a run now renewed on its own) while the renewal was in flight.
      if (this.#owned.get(taskId) !== run) return;
      if (
        isProgressError(error, ErrorCode.TaskFinished) ||
        isProgressError(error, ErrorCode.LeaseHeld) ||
        isProgressError(error, ErrorCode.TaskNotFound)
      ) {
        this.#owned.delete(taskId);
        logger.warn({ err: describeError(error), taskId }, 'lease lost; the task ended or moved elsewhere');
        this.#notifyLost(taskId, run, error);
        return;
      }
      metrics.storeErrors.inc();
      logger.warn(
        { err: describeError(error), taskId },
        'lease renewal failed; retrying at the next interval',
      );
    }
  }

  async #reap(): Promise<AppendResult[]> {
    const { store, logger, metrics } = this.#options;
    let results: AppendResult[];
    try {
      results = await store.reapExpiredLeases();
    } catch (error) {
      metrics.storeErrors.inc();
      logger.warn({ err: describeError(error) }, 'reaping expired leases failed');
      return [];
    }
    for (const result of results) {
      metrics.leasesReaped.inc();
      logger.info(
        { taskId: result.event.taskId, seq: result.event.seq },
        'expired lease reaped: task interrupted',
      );
      const taskId = result.event.taskId;
      const run = result.task.createdAt;
      // Not if the run renewed is a later one: a reap answered late (its query slow, or left behind as hung)
      // may name a run purged since, its id created again here, and that run is alive. A later run reaped
      // means the one renewed is gone (ended unheard, purged): it is lost too.
      const ownedRun = this.#owned.get(taskId);
      const owned = ownedRun !== undefined && ownedRun <= run;
      if (owned) this.#owned.delete(taskId);
      // Published first: the reaped row goes into the task's handle before it learns it lost the task. Told
      // first, the handle's signal aborted while its status still said `running`, and stayed so when the
      // re-read that followed failed (a store answering the reap but not the read).
      try {
        this.#options.onReaped(result);
      } catch (error) {
        metrics.handlerErrors.inc();
        logger.error({ err: describeError(error) }, 'publishing a reaped task failed');
      }
      if (owned) this.#notifyLost(taskId, ownedRun, undefined);
    }
    return results;
  }

  #notifyLost(taskId: string, run: number, error: unknown): void {
    try {
      this.#options.onLost(taskId, run, error);
    } catch (failure) {
      this.#options.metrics.handlerErrors.inc();
      this.#options.logger.error({ err: describeError(failure), taskId }, 'lease-lost handler failed');
    }
  }
}
