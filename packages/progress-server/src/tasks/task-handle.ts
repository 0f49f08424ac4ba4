/**
 * The handle of one running task: progress, items, logs and its one terminal event.
 *
 * @module
 */
import type {
  AppendInput,
  CancelledEvent,
  CompletedEvent,
  CompleteInput,
  FailedEvent,
  InterruptedEvent,
  ItemEvent,
  ItemInput,
  JsonValue,
  ProgressEvent,
  ProgressInput,
  Task,
  TaskEvent,
  TaskFailure,
  TaskStatus,
} from '@finishline/core';
import { ErrorCode, LIMITS, ProgressError } from '@finishline/core';
import { clip } from './clip.js';
import type { BatchResult, BatchWorker, RunBatchOptions } from './run-batch.js';
import { runBatch, validate } from './run-batch.js';

/** Absolute progress values to set; omitted fields keep their value. */
export interface ProgressUpdate {
  /** Number of items, or `null` while unknown. */
  total?: number | null;
  /** Items *finished* (never items started). */
  done?: number;
  /** The item being worked on, for display. */
  current?: string | null;
  /** A status line. */
  message?: string | null;
}

/** One finished item. */
export interface ItemUpdate {
  key: string;
  ok: boolean;
  /** Why it failed (when `ok` is false). */
  error?: string | null;
  /** Application data about the item (JSON, at most 16 KiB). */
  detail?: JsonValue | null;
  /** Move `current` to the next item in the same event. */
  current?: string | null;
}

/** What `complete()` records. */
export interface CompleteOptions {
  /** The task's result (JSON, at most 16 KiB). */
  result?: JsonValue | null | undefined;
  message?: string | null | undefined;
}

/**
 * The link between a handle and the task API that created it.
 *
 * @internal
 */
export interface TaskHost {
  /**
   * Appends to the handle's run of the task (`run`, its `createdAt`): a task created again under the id
   * after this one was purged is another run, which the store refuses to write into (`task_not_found`).
   */
  append(handle: TaskHandle, run: number, input: AppendInput): Promise<TaskEvent>;
  /** Stop renewing the lease of run `run` of the task (the worker gave up; reaping will end the task). */
  abandon(taskId: string, run: number): void;
  trackBatch(batch: Promise<unknown>): void;
  /** Re-reads the task's row into the handle. Never rejects. */
  refresh(handle: TaskHandle): Promise<void>;
  /**
   * Whether run `run` of the handle's task holds an `item` event of `key` with this `ok` after `afterSeq`
   * (an append refused `store_unavailable` that committed all the same). Rejects with the store's error.
   */
  itemLanded(handle: TaskHandle, run: number, afterSeq: number, key: string, ok: boolean): Promise<boolean>;
  /** The server's `leaseTtlMs`: how long `runBatch` retries a terminal event through a store outage. */
  readonly leaseTtlMs: number;
}

/**
 * Controls the API keeps over a handle's state.
 *
 * @internal
 */
export interface TaskHandleControl {
  /**
   * The store's row after an append or a read. A row of another run (the task was purged and its id
   * taken again) is not the handle's task: its run is gone, so the handle ends, keeping its last row.
   */
  update(task: Task): void;
  /**
   * The task ended (or the server is shutting down): abort the handle's signal with `reason()` (called
   * only when something reads the signal, now or later: most handles end without anyone listening).
   */
  abort(reason: () => ProgressError): void;
  /** The task is known to have ended, whoever ended it. */
  ended(): void;
  /**
   * The handle's run is gone (purged; the id may be another run's now): the handle ends and its appends
   * reject `task_not_found`, as the store refuses a write to that run, however the server learnt it.
   */
  gone(): void;
  /**
   * Another worker took the task's lease over: the handle ends and its appends reject with `error`
   * (`lease_held`) while the task runs on, even when its signal had aborted first for another reason.
   */
  leaseLost(error: ProgressError): void;
}

/**
 * A running task owned by this server: report progress and items, then end it exactly once. Every
 * method appends one event and resolves with it once committed; local watchers receive it in the same
 * tick. After the task ended (here or elsewhere: cancelled over HTTP, interrupted by a reaper) every
 * append rejects with `task_finished`. A handle writes only to its own run of the task: if it was ended
 * elsewhere, purged and created again under the same id while this handle slept (a frozen process, a job
 * that outlived its lease), its appends reject with `task_not_found` and never reach the new task.
 *
 * `signal` aborts when the task ends for any reason or the server starts shutting down; long-running
 * work should honour it.
 *
 * A handle driven by hand must be ended by its caller: while the server that created it runs, its lease is
 * renewed and the task stays `running` (its watchers wait, at 100 % if every item was reported) until
 * `complete`, `fail`, `cancel` or `interrupt` is called — reaping ends only the tasks of a server that
 * stopped renewing. A `complete`, `fail` or `interrupt` the store refuses (an outage) stops the renewals:
 * retried within the lease TTL it still ends the task, else a reaper interrupts it. There is no deadline of
 * the server's: end the task in a `finally` (as below), bound slow work yourself (e.g.
 * `setTimeout(() => task.interrupt('deadline').catch(() => {}), ms)`, the timer cleared in the `finally`: a
 * rejection left unhandled, `task_finished` once the task ended first, ends a Node process), or `runBatch` with
 * `signal: AbortSignal.timeout(ms)`, which ends it `cancelled`), and find handles left running in
 * `server.tasks.running`. `runBatch` always ends its task.
 *
 * At `close()` the signal aborts (`closed`) and the handle's appends in flight settle (as do those it sends
 * meanwhile, up to three quarters of the timeout) before the server interrupts the task: a `complete()` sent
 * in time ends it `completed`. A worker that stops at its signal should not then complete the task (below).
 *
 * @example
 * ```ts
 * const task = await server.tasks.create({ owner: user.id, kind: 'batch_taint', total: nodes.length });
 * try {
 *   for (const node of nodes) {
 *     if (task.signal.aborted) break;
 *     try { await taint(node); await task.item({ key: node, ok: true }); }
 *     catch (error) { await task.item({ key: node, ok: false, error: String(error) }); }
 *   }
 *   // Aborted: ended elsewhere (cancelled…), or the server is shutting down and interrupts it.
 *   if (!task.signal.aborted) await task.complete();
 * } catch (error) {
 *   if (!task.finished) await task.fail(error as Error);
 * }
 * ```
 */
export class TaskHandle {
  /** The task id. */
  readonly id: string;
  /** The principal allowed to watch it. */
  readonly owner: string;
  readonly kind: string;
  readonly #host: TaskHost;
  /**
   * Made when `signal` is first read: an AbortController per task and an abort with its reason cost
   * 8–10 µs per ending (micro-benchmark), about a tenth of an ending's CPU in `bench:delivery`'s 200 at
   * once, for handles whose signal nobody reads.
   */
  #controller: AbortController | undefined;
  /** Set once the handle's signal is to be aborted; applied to a controller made later. */
  #abortReason: (() => ProgressError) | undefined;
  /**
   * Why the appends are refused once another worker took the lease over (`lease_held`). Not read from the
   * signal's reason: a takeover found at shutdown (the interrupt refused) came after the signal aborted
   * `closed`, and the appends rejected `task_finished`, "already ended (running)", for a task running on.
   */
  #leaseLost: ProgressError | undefined;
  /** Only ever a row of the handle's run: its `createdAt` names the run it writes to (see `RunFence`). */
  #task: Task;
  #ended = false;
  /**
   * The handle's run was purged. Its appends reject `task_not_found` then, not `task_finished`: only the
   * first append learnt it from the store, and the others were refused "already ended (running)" (the last
   * row of a run reaped unheard says `running`), another code for the same fact.
   */
  #gone = false;
  #batch: Promise<BatchResult> | undefined;

  /**
   * Created by `server.tasks.create`, not directly.
   *
   * @internal
   */
  constructor(task: Task, host: TaskHost, attach: (control: TaskHandleControl) => void) {
    this.id = task.id;
    this.owner = task.owner;
    this.kind = task.kind;
    this.#task = task;
    this.#host = host;
    attach({
      update: (next) => {
        if (next.createdAt !== this.#task.createdAt) {
          this.#gone = true;
          this.#ended = true;
          return;
        }
        if (next.seq >= this.#task.seq) this.#task = next;
        if (next.status !== 'running') this.#ended = true;
      },
      abort: (reason) => {
        if (this.#abortReason !== undefined) return;
        this.#abortReason = reason;
        this.#controller?.abort(reason());
      },
      ended: () => {
        this.#ended = true;
      },
      gone: () => {
        this.#gone = true;
        this.#ended = true;
      },
      leaseLost: (error) => {
        this.#leaseLost ??= error;
        this.#ended = true;
      },
    });
  }

  /** The task row as last seen by this server (a copy). */
  get task(): Task {
    return { ...this.#task };
  }

  /** The last known status. */
  get status(): TaskStatus {
    return this.#task.status;
  }

  /** True once the task is known to have ended. */
  get finished(): boolean {
    return this.#ended || this.#task.status !== 'running';
  }

  /**
   * Aborted when the task ended (reason: ProgressError `task_finished`), when another worker took its
   * lease over after it expired (reason: ProgressError `lease_held`: the task runs on there, and this
   * handle's appends reject with that error), or when the server is shutting down (reason: ProgressError
   * `closed`). The reason is the first of these: a lease taken over once the shutdown began (found by its
   * interrupt) leaves it `closed`, and the appends reject `lease_held` all the same.
   */
  get signal(): AbortSignal {
    if (this.#controller === undefined) {
      this.#controller = new AbortController();
      if (this.#abortReason !== undefined) this.#controller.abort(this.#abortReason());
    }
    return this.#controller.signal;
  }

  /** Sets absolute progress values. `current` and `message` are clipped and made storable (see `fail`). */
  progress(update: ProgressUpdate): Promise<ProgressEvent> {
    let input: ProgressInput;
    try {
      input = { type: 'progress', ...update };
      clipText(input, 'current', LIMITS.maxKeyLength);
      clipText(input, 'message', LIMITS.maxMessageLength);
    } catch (error) {
      return unreadable(error);
    }
    return this.#append(input) as Promise<ProgressEvent>;
  }

  /**
   * Records one finished item: counts it in `done` and in `succeeded` or `failed`. `key`, `error` and
   * `current` are clipped and made storable (see `fail`), as `runBatch` does with its items.
   */
  item(result: ItemUpdate): Promise<ItemEvent> {
    let input: ItemInput;
    try {
      input = { type: 'item', ...result };
      clipText(input, 'key', LIMITS.maxKeyLength);
      clipText(input, 'error', LIMITS.maxMessageLength);
      clipText(input, 'current', LIMITS.maxKeyLength);
    } catch (error) {
      return unreadable(error);
    }
    return this.#append(input) as Promise<ItemEvent>;
  }

  /**
   * Ends the task as `completed` (failed items, if any, stay counted in `failed`). `message` is clipped and
   * made storable (see `fail`); a `result` over the limits is refused (`invalid_input`).
   */
  complete(options: CompleteOptions = {}): Promise<CompletedEvent> {
    // (A field left `undefined` is the store's to read as absent, as a JavaScript caller's always was.)
    let input: CompleteInput;
    try {
      input = { type: 'completed', ...options } as CompleteInput;
      clipText(input, 'message', LIMITS.maxMessageLength);
    } catch (error) {
      return unreadable(error);
    }
    return this.#end(input) as Promise<CompletedEvent>;
  }

  /**
   * Ends the task as `failed`. Takes a `{ code, message }`, an `Error` (its string `code` if it has one,
   * else `error`) or a message; anything else thrown is recorded with code `error` and its text. Texts are
   * clipped to the limits and made storable, as everywhere on the handle.
   */
  fail(error: TaskFailure | Error | string): Promise<FailedEvent> {
    return this.#end({ type: 'failed', error: toFailure(error) }) as Promise<FailedEvent>;
  }

  /**
   * Ends the task as `cancelled`. `reason` is clipped and made storable, as every text on the handle (see
   * `fail`): U+0000 and unpaired surrogates become U+FFFD. `POST …/cancel` refuses such a reason instead
   * (400 `invalid_input`): its caller is there to be told.
   */
  cancel(reason?: string | null): Promise<CancelledEvent> {
    // Not a string (JavaScript; `tasks.cancel` passes its argument on): no reason, as `tasks.cancel` records
    // for a task owned elsewhere. clip() threw a bare TypeError and the task stayed running.
    const input: AppendInput = {
      type: 'cancelled',
      reason: typeof reason === 'string' ? clip(reason, LIMITS.maxKeyLength) : null,
    };
    return this.#append(input) as Promise<CancelledEvent>;
  }

  /**
   * Ends the task as `interrupted` (the work stopped without an outcome, e.g. shutdown). Refused by the
   * store, it stops the lease's renewals as `complete` and `fail` do.
   */
  interrupt(reason: string): Promise<InterruptedEvent> {
    return this.#end({
      type: 'interrupted',
      // A reason is required; without a string one (JavaScript) clip() threw and the task stayed running.
      reason: typeof reason === 'string' ? clip(reason, LIMITS.maxKeyLength) : 'interrupted',
    }) as Promise<InterruptedEvent>;
  }

  /**
   * Runs `worker` over `items` with bounded concurrency and always ends the task; see
   * {@link RunBatchOptions} and {@link BatchResult}. First sets the task's `total` to `items.length` (when
   * it differs). One batch per task.
   *
   * @throws ProgressError `invalid_input` for bad arguments or when a batch already runs on this task.
   */
  runBatch<T>(
    items: readonly T[],
    worker: BatchWorker<T>,
    options: RunBatchOptions<T> = {},
  ): Promise<BatchResult> {
    if (this.#batch !== undefined) {
      return Promise.reject(
        new ProgressError(ErrorCode.InvalidInput, `A batch already runs on task ${this.id}`),
      );
    }
    try {
      // Bad arguments start no batch, so they must not take the task's one batch.
      validate(items, worker, options);
    } catch (error) {
      return Promise.reject(error);
    }
    const batch = runBatch({
      handle: this,
      items,
      worker,
      options,
      hooks: {
        abandon: () => this.#host.abandon(this.id, this.#task.createdAt),
        refresh: () => this.#host.refresh(this),
        seq: () => this.#task.seq,
        leaseLost: () => this.#leaseLost !== undefined,
        itemLanded: (afterSeq, key, ok) =>
          this.#host.itemLanded(this, this.#task.createdAt, afterSeq, key, ok),
        terminalRetryMs: this.#host.leaseTtlMs,
      },
    });
    this.#batch = batch;
    this.#host.trackBatch(batch);
    return batch;
  }

  /**
   * The worker's own ending (`complete`, `fail`, `interrupt`). Refused (an outage, or any error that leaves
   * the task running), the lease is no longer renewed, as `runBatch` does once it gives its terminal up: the
   * worker has said its last word, and the handle's own example, `fail()` in the catch of a refused `complete()`,
   * refused in the same outage, left the task `running` under a lease this live server renewed for good.
   * Retried within the lease, the ending still goes in; else a reaper interrupts the task. An append that
   * committed all the same (an answer lost after COMMIT) ended the task: nothing to renew. Not `cancel`:
   * `tasks.cancel` (HTTP) goes through it while the worker runs on. `interrupt` does: a deadline timer's
   * `interrupt()` refused in an outage (fire and forget, nobody retries it) left the task `running` under
   * renewals for as long as the server ran. A batch has its own retries.
   */
  #end(input: AppendInput): Promise<TaskEvent> {
    const run = this.#task.createdAt;
    const ending = this.#append(input);
    if (this.#batch !== undefined) return ending;
    return ending.catch((error: unknown) => {
      this.#host.abandon(this.id, run);
      throw error;
    });
  }

  #append(input: AppendInput): Promise<TaskEvent> {
    if (this.#gone) {
      return Promise.reject(
        new ProgressError(
          ErrorCode.TaskNotFound,
          `No task ${this.id} created at ${this.#task.createdAt}: it was purged`,
          { taskId: this.id },
        ),
      );
    }
    if (this.finished) {
      // Its lease went to another worker: the task runs on there, it did not end.
      if (this.#leaseLost !== undefined && this.#task.status === 'running') {
        return Promise.reject(this.#leaseLost);
      }
      return Promise.reject(
        new ProgressError(ErrorCode.TaskFinished, `Task ${this.id} already ended (${this.#task.status})`, {
          taskId: this.id,
        }),
      );
    }
    return this.#host.append(this, this.#task.createdAt, input);
  }
}

/**
 * The failure to record. Never throws and always yields a storable failure: `fail()` is how a task ends,
 * and it is called from catch blocks with whatever was thrown. A value that is neither a string, an Error
 * nor a `{ code, message }` (`undefined`, a number, a library's `{ status, message }`) threw a bare
 * TypeError or was refused `invalid_input`, and a `{ code, message }` too long or with an unpaired
 * surrogate was refused while the same text as a string or an Error was clipped: the task stayed running.
 */
function toFailure(error: TaskFailure | Error | string): TaskFailure {
  if (typeof error === 'string') return { code: 'error', message: clip(error, LIMITS.maxMessageLength) };
  let code: unknown;
  let message: unknown;
  try {
    code = (error as { code?: unknown }).code;
    message = error instanceof Error ? error.message || error.name : (error as { message?: unknown }).message;
  } catch {
    // `undefined` or `null`, or a throwing getter: described below.
  }
  return {
    code: typeof code === 'string' && code !== '' ? clip(code, LIMITS.maxKeyLength) : 'error',
    message: clip(
      typeof message === 'string' && message !== '' ? message : describeValue(error),
      LIMITS.maxMessageLength,
    ),
  };
}

/**
 * The refusal of an update the handle could not read: copying it ran the caller's code (a getter, a `Proxy`)
 * and that threw. A rejection, as every other refusal of these methods: they threw it synchronously, out of a
 * call whose caller awaits a promise (`.catch()` chained on it never ran).
 */
function unreadable(error: unknown): Promise<never> {
  return Promise.reject(
    new ProgressError(ErrorCode.InvalidInput, `The update could not be read: ${describeValue(error)}`, {
      cause: error,
    }),
  );
}

/**
 * Clips `input[field]` to `max` and makes it storable when it is a string; anything else is left for the
 * store to refuse. Why: a handle's texts come from catch blocks and tools (`String(error)` of a kubectl
 * failure runs past 4,096 characters, binary output holds U+0000). Refused `invalid_input`, the call in
 * a catch block threw in turn, the loop never reached `complete()`, and the task stayed running under a
 * lease its live server kept renewing: no watcher saw it end. `runBatch` and `fail()` already clipped.
 */
function clipText<T extends object>(input: T, field: keyof T & string, max: number): void {
  const value = input[field];
  if (typeof value === 'string') (input as Record<string, unknown>)[field] = clip(value, max);
}

function describeValue(value: unknown): string {
  try {
    return String(value) || 'error';
  } catch {
    // No usable toString (Object.create(null), a throwing one).
    return 'error';
  }
}
