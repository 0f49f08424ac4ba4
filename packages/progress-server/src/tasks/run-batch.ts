/**
 * `runBatch`: runs a worker over items with bounded concurrency, reporting through a narrow task
 * interface.
 *
 * @module
 */
import type { JsonValue, Task, TaskFailure, TaskStatus, TerminalType } from '@finishline/core';
import { ErrorCode, isProgressError, LIMITS, ProgressError } from '@finishline/core';
import { exhaustive, integer, ofType, resolveOptions } from '@finishline/core/internal';
import { delayUnlessAborted } from '../wait.js';
import { clip } from './clip.js';

/** What a batch worker receives besides its item. */
export interface BatchWorkerContext {
  /**
   * Aborted when the batch stops early: the caller's signal, `cancel()` or any other end of the task,
   * a failure of the batch machinery, or server shutdown. Honour it: an item whose worker throws after
   * the abort is not counted (it did not finish), one that returns is.
   */
  readonly signal: AbortSignal;
  /** The item's position in `items`. */
  readonly index: number;
  /** The item's key, as reported in its `item` event. */
  readonly key: string;
}

/**
 * Processes one item. Return (or resolve) normally for success: a JSON value (at most 16 KiB) becomes the
 * item's `detail`, anything else is dropped. Throw (or reject) for failure: the error's message becomes
 * the item's `error`.
 */
export type BatchWorker<T> = (item: T, context: BatchWorkerContext) => unknown;

/**
 * What the batch runner needs of a task: the part of `TaskHandle` it calls, so that the handle can offer
 * `runBatch` without the two modules importing each other.
 */
export interface BatchTaskHandle {
  readonly id: string;
  readonly task: Pick<Task, 'total'>;
  readonly status: TaskStatus;
  readonly finished: boolean;
  readonly signal: AbortSignal;
  item(result: {
    key: string;
    ok: boolean;
    error: string | null;
    detail: JsonValue | null;
  }): Promise<unknown>;
  progress(update: { total: number }): Promise<unknown>;
  complete(options: { result: JsonValue }): Promise<unknown>;
  fail(error: TaskFailure): Promise<unknown>;
  cancel(reason: string | null): Promise<unknown>;
  interrupt(reason: string): Promise<unknown>;
}

/** Options of `TaskHandle.runBatch`. */
export interface RunBatchOptions<T> {
  /**
   * Items processed at the same time (an integer from 1 to 1000).
   * @default 1
   */
  concurrency?: number | undefined;
  /**
   * Cancels the batch: no new item starts, and the task ends `cancelled` with the signal's reason
   * (unless every item had already finished).
   * @default none
   */
  signal?: AbortSignal | undefined;
  /**
   * The key of each item in its `item` event (1 to 512 characters; longer keys are clipped). A returned
   * value that is not a non-empty string is turned into a key as the default turns an item; for an item
   * it throws on, the key is `item-<index + 1>` (the item still runs). Items of equal keys have their
   * events written one after the other (their workers still run concurrently).
   * @default the item itself for strings, `String(item)` for numbers, else `item-<index + 1>`
   */
  key?: ((item: T, index: number) => string) | undefined;
}

/** The defaults of {@link RunBatchOptions}. */
export const RUN_BATCH_DEFAULTS = Object.freeze({ concurrency: 1 });

/** How a batch ended. */
export interface BatchResult {
  taskId: string;
  /**
   * The task's terminal status, or `running` when another worker took its expired lease over
   * (`endedElsewhere`): the task runs on there (the new holder's end, once read, is reported instead).
   * Until 7 December 2026 a taken-over task was reported `interrupted`, and a caller retrying an
   * interrupted batch ran its work again beside the new holder.
   */
  status: TerminalType | 'running';
  /** Items finished successfully by this batch. */
  succeeded: number;
  /** Items finished with an error by this batch. */
  failed: number;
  /** Items not finished because the batch stopped early: never started, or stopped by the abort. */
  skipped: number;
  /**
   * True when the task was ended by someone else (cancelled over HTTP, interrupted by a reaper), or its
   * expired lease was taken over by another worker, and the batch stopped because of it (no terminal
   * event written by this batch). After an attempt at its terminal event refused `store_unavailable`, a
   * terminal status of the type it was writing is taken as its own (that attempt committed unanswered).
   */
  endedElsewhere: boolean;
}

/** @internal */
export interface BatchHooks {
  /** Stop renewing the task's lease, so that reaping ends it if no terminal event can be written. */
  abandon(): void;
  /** Re-read the task's row (to learn the status it was ended with elsewhere). Never rejects. */
  refresh(): Promise<void>;
  /** The task's seq as the handle last saw it (no copy of the row). */
  seq(): number;
  /** Whether another worker took the task's lease over (an append or a renewal refused `lease_held`). */
  leaseLost(): boolean;
  /**
   * Whether the task's log holds, after `afterSeq`, an `item` event of `key` with this `ok`: an append
   * refused `store_unavailable` may still have committed (a Postgres COMMIT whose answer was lost). False
   * when the task is another run now, or gone. Rejects with the store's error.
   */
  itemLanded(afterSeq: number, key: string, ok: boolean): Promise<boolean>;
  /**
   * How long the terminal event, and each item's event, is retried while the store answers
   * `store_unavailable`, from its first failure: the server's `leaseTtlMs`, the outage a lease survives
   * (see `LeaseKeeper`).
   */
  readonly terminalRetryMs: number;
}

/**
 * Attempts at writing the terminal event before giving up on an error other than `store_unavailable`, and
 * on any error once the server is shutting down (its own `interrupted` then ends the task).
 */
const TERMINAL_ATTEMPTS = 4;
const TERMINAL_RETRY_BASE_MS = 100;
/** Longest pause between two attempts at the terminal event. */
const TERMINAL_RETRY_MAX_MS = 1000;

type StopReason = 'cancel' | 'shutdown' | 'ended' | 'error';

const ignoreRejection = (): void => {};

function describe(error: unknown): string {
  try {
    if (error instanceof Error) return String(error.message || error.name);
    return String(error);
  } catch {
    // A thrown value without a usable toString (Object.create(null), a throwing getter).
    return 'error';
  }
}

function defaultKey(item: unknown, index: number): string {
  if (typeof item === 'string' && item !== '') return item;
  if (typeof item === 'number' && Number.isFinite(item)) return String(item);
  return `item-${index + 1}`;
}

/** One description per option of {@link RunBatchOptions}: its default and its check. */
const RUN_BATCH_OPTIONS = {
  concurrency: integer(RUN_BATCH_DEFAULTS.concurrency, 1, 1000),
  signal: ofType<AbortSignal>('an AbortSignal', (value) => value instanceof AbortSignal),
  key: ofType<(item: unknown, index: number) => string>('a function', (value) => typeof value === 'function'),
} satisfies { [K in keyof Required<RunBatchOptions<unknown>>]: unknown };

/**
 * @internal Checks `runBatch`'s arguments; returns the concurrency. Unknown options are refused, naming the
 * nearest: `{ concurency: 8 }` ran the batch one item at a time without a word.
 */
export function validate<T>(items: readonly T[], worker: unknown, options: RunBatchOptions<T>): number {
  const invalid = (message: string) => new ProgressError(ErrorCode.InvalidInput, `runBatch: ${message}`);
  if (!Array.isArray(items)) throw invalid('items must be an array');
  if (typeof worker !== 'function') throw invalid('worker must be a function');
  return resolveOptions('runBatch', RUN_BATCH_OPTIONS, options).concurrency;
}

/**
 * The batch runner behind `TaskHandle.runBatch`. Counts *finished* items (one `item` event per
 * item, success or failure), stops early on cancellation, and always ends the task:
 *
 * | how it stops | terminal event |
 * |---|---|
 * | every item finished, at least one succeeded (or no items) | `completed`, result `{ succeeded, failed }` |
 * | every item finished and every one failed | `failed`, code `all_items_failed` |
 * | the caller's `signal` aborted | `cancelled` with the signal's reason |
 * | the server shuts down | `interrupted`, reason `server shutting down` |
 * | reporting an item failed (store error, or an outage longer than `terminalRetryMs`) or the runner itself broke | `failed`, code `batch_error` |
 * | the task was ended elsewhere (cancelled, reaped) | none: it already has its terminal event |
 *
 * A terminal event the store refuses as `store_unavailable` is retried for as long as the lease would
 * survive the outage (`terminalRetryMs`, the lease TTL); other errors, or any once the task's signal has
 * aborted (the server shutting down, the lease lost), 4 times. If even then it cannot be written, the
 * lease is no longer renewed, so a reaper interrupts the task within the lease timeout, and the returned
 * promise rejects with the store's error.
 *
 * @internal
 */
export async function runBatch<T>(batch: {
  handle: BatchTaskHandle;
  items: readonly T[];
  worker: BatchWorker<T>;
  options: RunBatchOptions<T>;
  hooks: BatchHooks;
}): Promise<BatchResult> {
  const { handle, items, worker, options, hooks } = batch;
  const concurrency = validate(items, worker, options);
  const keyOf = options.key ?? defaultKey;
  const controller = new AbortController();
  let stop: StopReason | undefined;
  let failure: unknown;
  let succeeded = 0;
  let failed = 0;
  let next = 0;

  const halt = (why: StopReason, reason: unknown) => {
    stop ??= why;
    if (!controller.signal.aborted) controller.abort(reason);
  };
  const onCancel = () => halt('cancel', options.signal?.reason);
  const onTaskSignal = () =>
    halt(
      isProgressError(handle.signal.reason, ErrorCode.Closed) ? 'shutdown' : 'ended',
      handle.signal.reason,
    );
  if (options.signal?.aborted) onCancel();
  else options.signal?.addEventListener('abort', onCancel, { once: true });
  if (handle.signal.aborted) onTaskSignal();
  else handle.signal.addEventListener('abort', onTaskSignal, { once: true });

  const classify = (error: unknown) => {
    // Not found: the handle's run of the task is gone (purged, maybe created again): ended elsewhere too.
    // Lease held: another worker took the task's lease over; it runs on there.
    if (
      isProgressError(error, ErrorCode.TaskFinished) ||
      isProgressError(error, ErrorCode.TaskNotFound) ||
      isProgressError(error, ErrorCode.LeaseHeld)
    )
      halt('ended', error);
    else {
      failure ??= error;
      halt('error', error);
    }
  };

  /**
   * Writes through a store outage the lease survives (`store_unavailable`, retried for `terminalRetryMs`
   * from the first refusal, as the terminal event is): a database restart in the middle of a batch failed
   * the whole batch (`batch_error`, every item not yet started skipped), though its lease kept the task
   * through it. A refused append may still have committed (a Postgres COMMIT whose answer was lost): one
   * that must not be written twice passes `landed`, asked before each new attempt.
   */
  const throughOutage = async (write: () => Promise<unknown>, landed?: () => Promise<boolean>) => {
    let retryUntil: number | undefined;
    let attempt = 0;
    for (;;) {
      try {
        await write();
        return;
      } catch (cause) {
        if (!isProgressError(cause, ErrorCode.StoreUnavailable)) throw cause;
        retryUntil ??= Date.now() + hooks.terminalRetryMs;
        let found: boolean | undefined;
        while (found === undefined) {
          if (handle.signal.aborted || Date.now() >= retryUntil) throw cause;
          attempt += 1;
          await delayUnlessAborted(
            Math.min(TERMINAL_RETRY_MAX_MS, TERMINAL_RETRY_BASE_MS * 2 ** (attempt - 1)),
            handle.signal,
          );
          if (handle.signal.aborted) throw cause;
          try {
            found = (await landed?.()) ?? false;
          } catch (failure) {
            if (!isProgressError(failure, ErrorCode.StoreUnavailable)) throw failure;
          }
        }
        if (found) return;
      }
    }
  };

  /**
   * Writes an item's event through an outage. Before each new attempt the log after the seq the handle
   * held when the first was sent is read for an event of the item's key and outcome: found, it is this
   * item's, and it is not written twice. That holds because `report` runs one item of a key at a time
   * (see `oneByKey`).
   */
  const deliver = (item: { key: string; ok: boolean; error: string | null; detail: JsonValue | null }) => {
    const before = hooks.seq();
    return throughOutage(
      () => handle.item(item),
      () => hooks.itemLanded(before, item.key, item.ok),
    );
  };

  /**
   * The report in flight of each item key. Items of one key (duplicates in `items`, or keys equal once
   * clipped) are reported one after the other, so that `deliver`'s search of the log is exact: while an
   * item is reported, no other append of its key by this batch is in flight or in doubt, and every earlier
   * one has settled (its seq, if it landed, at most the handle's seq before this one's first attempt). An
   * event of the key after that seq can then only be one of this item's attempts. Matching on key and
   * outcome alone, lanes reporting concurrently took another item's event for a refused one's: that item
   * was never written, or two refused items both took the one that had committed. Counting the matches
   * against this batch's own confirmed events is not enough: an append of the key still in flight may
   * have committed unanswered; comparing `error` and `detail` neither (duplicates are often identical); and
   * no store tells the seq an append will get. Items of distinct keys still run concurrently.
   */
  const reporting = new Map<string, Promise<void>>();
  const oneByKey = (key: string, write: () => Promise<void>): Promise<void> => {
    const previous = reporting.get(key);
    // After one of its key whose report failed (the batch fails with it), an item is not reported: that
    // report may have committed unanswered, and this one's search could take its event.
    const current = previous === undefined ? write() : previous.then(write);
    reporting.set(key, current);
    const settled = () => {
      if (reporting.get(key) === current) reporting.delete(key);
    };
    current.then(settled, settled);
    return current;
  };

  const report = (key: string, ok: boolean, error: string | null, detail: JsonValue | null) =>
    oneByKey(key, async () => {
      try {
        await deliver({ key, ok, error, detail });
      } catch (cause) {
        // A worker's return value the store refuses as `detail` must not cost the item.
        if (!isProgressError(cause, ErrorCode.InvalidInput) || detail === null) throw cause;
        await deliver({ key, ok, error, detail: null });
      }
      if (ok) succeeded += 1;
      else failed += 1;
    });

  const lane = async () => {
    try {
      while (!controller.signal.aborted) {
        const index = next++;
        if (index >= items.length) return;
        const item = items[index] as T;
        // A key that is not a non-empty string (a numeric id from JavaScript) is keyed as the default keys
        // the item: a number threw a bare TypeError in clip() and failed the whole batch (`batch_error`).
        let chosen: unknown;
        try {
          chosen = keyOf(item, index);
        } catch {
          // Thrown for one item (a malformed record): no key, as above. It failed the whole batch
          // (`batch_error`), the item and every one not yet started skipped, for want of a label.
        }
        // An `async` key is no key (the item is keyed by default), and its rejection, left unhandled,
        // ended the process.
        if (typeof (chosen as PromiseLike<unknown> | null)?.then === 'function') {
          (chosen as PromiseLike<unknown>).then(undefined, ignoreRejection);
        }
        const key = clip(
          typeof chosen === 'string' && chosen !== '' ? chosen : defaultKey(chosen, index),
          LIMITS.maxKeyLength,
        );
        let ok = true;
        let error: string | null = null;
        let detail: JsonValue | null = null;
        try {
          const value = await worker(item, { signal: controller.signal, index, key });
          detail = value === undefined ? null : (value as JsonValue);
        } catch (thrown) {
          // Thrown because the batch stopped: the item did not finish, so it is not counted.
          if (controller.signal.aborted) return;
          ok = false;
          error = clip(describe(thrown), LIMITS.maxMessageLength);
        }
        await report(key, ok, error, detail);
      }
    } catch (error) {
      classify(error);
    }
  };

  try {
    // Through an outage too: refused once, the batch failed before its first item. Written twice, the
    // total is the same absolute value: no check of the log.
    if (stop === undefined && handle.task.total !== items.length)
      await throughOutage(() => handle.progress({ total: items.length }));
    const lanes = Array.from({ length: Math.min(concurrency, items.length) }, lane);
    await Promise.all(lanes);
  } catch (error) {
    classify(error);
  } finally {
    options.signal?.removeEventListener('abort', onCancel);
    handle.signal.removeEventListener('abort', onTaskSignal);
  }

  const finished = succeeded + failed;
  const result = (status: BatchResult['status'], endedElsewhere: boolean): BatchResult => ({
    taskId: handle.id,
    status,
    succeeded,
    failed,
    skipped: items.length - finished,
    endedElsewhere,
  });

  /**
   * How the task ended elsewhere, read again if the handle still says `running`: still so after a
   * takeover, it runs on under the new holder, which is no interruption.
   */
  const endedElsewhere = async (): Promise<BatchResult['status']> => {
    if (handle.status === 'running') await hooks.refresh();
    return handle.status === 'running' && hooks.leaseLost() ? 'running' : terminalStatus(handle.status);
  };

  if (stop === 'ended' || handle.finished) return result(await endedElsewhere(), true);
  /** The terminal event this batch writes. */
  let ending: TerminalType = 'failed';
  const end = (): Promise<unknown> => {
    if (finished === items.length && stop !== 'error') {
      if (failed > 0 && failed === items.length) {
        return handle.fail({ code: 'all_items_failed', message: `All ${items.length} items failed` });
      }
      ending = 'completed';
      return handle.complete({ result: { succeeded, failed } });
    }
    switch (stop) {
      case 'error':
        return handle.fail({
          code: 'batch_error',
          message: clip(describe(failure), LIMITS.maxMessageLength),
        });
      case 'shutdown':
        ending = 'interrupted';
        return handle.interrupt('server shutting down');
      case 'cancel':
        ending = 'cancelled';
        return handle.cancel(cancelReason(options.signal?.reason));
      case 'ended':
      case undefined:
        // Unreachable: lanes only return early after a stop, and 'ended' returned above.
        return handle.fail({ code: 'batch_error', message: 'batch stopped without a reason' });
      default:
        exhaustive(stop, 'stop reason');
    }
  };
  let retryUntil: number | undefined;
  /**
   * An attempt was refused `store_unavailable`, which may have committed all the same (a Postgres COMMIT
   * whose answer was lost): a terminal of the type this batch writes found after it is taken as the batch's
   * own, not as ended elsewhere (which it reported, though its own `completed` had ended the task).
   */
  let unanswered = false;
  for (let attempt = 1; ; attempt++) {
    try {
      await end();
      return result(terminalStatus(handle.status), false);
    } catch (error) {
      // Before the check below: the change feed may have ended the handle with this very attempt's event.
      if (isProgressError(error, ErrorCode.StoreUnavailable)) unanswered = true;
      if (isProgressError(error, ErrorCode.TaskFinished) || handle.finished) {
        const status = await endedElsewhere();
        return result(status, !(unanswered && status === ending));
      }
      retryUntil ??= Date.now() + hooks.terminalRetryMs;
      // Four attempts (0.7 s) only made a database restart of a second or two at the end of a batch whose
      // every item had succeeded end `interrupted` by a reaper a lease TTL later, after watchers sat at
      // 100 % meanwhile. The lease keeps the task for that long through such an outage: so does this.
      const outage =
        isProgressError(error, ErrorCode.StoreUnavailable) &&
        !handle.signal.aborted &&
        Date.now() < retryUntil;
      if (attempt >= TERMINAL_ATTEMPTS && !outage) {
        hooks.abandon();
        throw error;
      }
      // Cut short when the task's signal aborts (the server shutting down, the lease lost): the attempts
      // left are made at once, and no pause of up to a second outlives close() (shutdown waits for
      // batches, then interrupts the task itself). So an aborted signal also ends the outage's extension
      // above: with no pause left between them, its attempts would turn into a busy loop on the store.
      await delayUnlessAborted(
        Math.min(TERMINAL_RETRY_MAX_MS, TERMINAL_RETRY_BASE_MS * 2 ** (attempt - 1)),
        handle.signal,
      );
    }
  }
}

function terminalStatus(status: TaskStatus): TerminalType {
  // A task ended elsewhere whose row was not re-read yet still reads `running`: it was ended by someone
  // else, which from this batch's point of view is an interruption.
  return status === 'running' ? 'interrupted' : status;
}

function cancelReason(reason: unknown): string {
  if (reason instanceof Error && reason.name !== 'AbortError')
    return clip(describe(reason), LIMITS.maxKeyLength);
  if (typeof reason === 'string' && reason !== '') return clip(reason, LIMITS.maxKeyLength);
  return 'cancelled';
}
