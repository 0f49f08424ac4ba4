/**
 * The retention runs of one replica: finished batches leave the Finishline store (`purgeFinished`) once older
 * than the task retention, and the example's audit log (sign-in, sign-out and cancel events, batch records)
 * once older than the audit retention. One run at a time (a slow database skips a tick rather than stacking
 * runs); each run deletes in bounded batches until nothing old is left, up to {@link MAX_BATCHES_PER_RUN}.
 */
import { type ProgressStore, STORE_DEFAULTS } from '@finishline/core';
import type { ProgressLogger } from '@finishline/server';
import { type AppDb, AUDIT_PURGE_LIMIT } from './app-db.js';

/**
 * Most batches of each table one run deletes: 100 × 500 finished tasks, 100 × 10,000 audit rows. One
 * `purgeFinished` of the store's default 500 per 10-minute run let at most 72,000 tasks go a day, fewer than
 * one user's batch starts can make (the API limit lets 10 requests a second through), so the store grew for
 * good once they outpaced it.
 */
export const MAX_BATCHES_PER_RUN = 100;

/** What {@link startRetention} needs. */
export interface RetentionOptions {
  store: ProgressStore;
  db: AppDb;
  taskRetentionMs: number;
  auditRetentionMs: number;
  intervalMs: number;
  logger?: ProgressLogger | undefined;
}

/** A replica's retention: its timer runs {@link Retention.run}; {@link Retention.stop} clears it. */
export interface Retention {
  /** One run (what each tick does); resolves once it has ended, its failures logged. */
  run(): Promise<void>;
  /**
   * Clears the timer: no run starts after it. Resolves once the run under way (if any) has ended, after the
   * purge it is in: the caller closes the database next, and until 7 December 2026 a run still going then
   * hit the closed database (a warning, `retention failed`, at every shutdown that fell in a run).
   */
  stop(): Promise<void>;
}

export function startRetention(options: RetentionOptions): Retention {
  const { store, db, logger } = options;
  /** Calls `purge` until it deletes fewer than `batch` rows, at most MAX_BATCHES_PER_RUN times. */
  const drain = async (purge: () => Promise<number>, batch: number, what: string) => {
    try {
      for (let i = 0; i < MAX_BATCHES_PER_RUN && !stopped; i++) if ((await purge()) < batch) return;
    } catch (error) {
      logger?.warn({ err: String(error) }, `${what} retention failed`);
    }
  };
  let running: Promise<void> | undefined;
  let stopped = false;
  const run = (): Promise<void> => {
    running ??= Promise.all([
      drain(
        () => store.purgeFinished({ olderThanMs: options.taskRetentionMs, limit: STORE_DEFAULTS.purgeLimit }),
        STORE_DEFAULTS.purgeLimit,
        'task',
      ),
      // purgeAudit deletes up to the limit of each of its two tables: fewer than one limit in all, both done.
      drain(() => db.purgeAudit(Date.now() - options.auditRetentionMs), AUDIT_PURGE_LIMIT, 'audit'),
    ]).then(() => {
      running = undefined;
    });
    return running;
  };
  const timer = setInterval(() => void run(), options.intervalMs);
  timer.unref();
  return {
    run,
    async stop() {
      stopped = true;
      clearInterval(timer);
      await running;
    },
  };
}
