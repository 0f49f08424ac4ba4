/**
 * The task API (`server.tasks`): create, resume and look up the tasks this replica runs.
 *
 * @module
 */
import type {
  AppendInput,
  AppendResult,
  CancelledEvent,
  ProgressStore,
  Task,
  TaskEvent,
  Unsubscribe,
} from '@finishline/core';
import {
  ErrorCode,
  isProgressError,
  isTerminalEvent,
  LIMITS,
  ProgressError,
  STORE_DEFAULTS,
} from '@finishline/core';
import { nearestName } from '@finishline/core/internal';
import type { TaskHub } from '../hub/task-hub.js';
import type { ProgressLogger } from '../logger.js';
import { describeError } from '../logger.js';
import type { ServerMetrics } from '../metrics.js';
import { shuttingDown } from '../shutting-down.js';
import { waitAtMost } from '../wait.js';
import { clip } from './clip.js';
import type { LeaseKeeper } from './lease-keeper.js';
import type { TaskHandleControl, TaskHost } from './task-handle.js';
import { TaskHandle } from './task-handle.js';

/** What {@link TaskApi.create} needs. */
export interface CreateTaskOptions {
  /** The principal allowed to watch the task (by the default authorization). */
  owner: string;
  /** What the task does, e.g. `batch_taint`. */
  kind: string;
  /** Number of items, or `null`/omitted while unknown (`runBatch` sets it). */
  total?: number | null | undefined;
  /** Initial status line. */
  message?: string | null | undefined;
  /** The task id; a random UUID when omitted. */
  id?: string | undefined;
}

/** The keys of {@link CreateTaskOptions} (the compiler checks that the list is complete). */
const CREATE_TASK_KEYS: readonly string[] = Object.keys({
  owner: true,
  kind: true,
  total: true,
  message: true,
  id: true,
} satisfies Record<keyof CreateTaskOptions, true>);

/**
 * The handle an append comes from and its run (`createdAt`), which the store fences the append to, with
 * this server's id as the lease owner it writes as (`RunFence.owner`).
 */
interface HandleFence {
  handle: TaskHandle;
  run: number;
}

/** The run an append is for, and the handle writing it (fenced to this server's lease too), if any. */
type AppendFence = HandleFence | { handle?: undefined; run: number };

interface Owned {
  handle: TaskHandle;
  /**
   * The run owned (its `createdAt`). An answer about the task names its run: one about an older run (a reap
   * or append answered after that run was purged and its id created again here) must not end this one.
   */
  run: number;
  control: TaskHandleControl;
  stopFollow: Unsubscribe | undefined;
}

/**
 * The task API of a server (`server.tasks`): creates tasks leased to this server and publishes every
 * event it commits to local watchers at once. Tasks it created are *owned*: their leases are renewed
 * while they run, their handles learn when someone else ends them, and shutdown ends them honestly.
 */
export class TaskApi {
  readonly #store: ProgressStore;
  readonly #hub: TaskHub;
  readonly #leases: LeaseKeeper;
  readonly #serverId: string;
  readonly #leaseTtlMs: number;
  readonly #logger: ProgressLogger;
  readonly #metrics: ServerMetrics;
  readonly #owned = new Map<string, Owned>();
  readonly #batches = new Set<Promise<unknown>>();
  readonly #host: TaskHost;
  /** Every handle's control, for as long as the caller keeps the handle. */
  readonly #controls = new WeakMap<TaskHandle, TaskHandleControl>();
  /**
   * This server's appends in flight, per task (a batch's, a hand-driven handle's, `cancel`'s): the feed
   * listener leaves a terminal change of the task to them, and shutdown lets them settle.
   */
  readonly #appending = new Map<string, Set<Promise<TaskEvent>>>();
  /** Owned tasks whose terminal change the feed reported while one of those appends was in flight. */
  readonly #terminalWhileAppending = new Set<string>();
  #stopFeed: Unsubscribe | undefined;
  #closing = false;

  /** @internal Created by the server. */
  constructor(options: {
    store: ProgressStore;
    hub: TaskHub;
    leases: LeaseKeeper;
    serverId: string;
    leaseTtlMs: number;
    logger: ProgressLogger;
    metrics: ServerMetrics;
  }) {
    this.#store = options.store;
    this.#hub = options.hub;
    this.#leases = options.leases;
    this.#serverId = options.serverId;
    this.#leaseTtlMs = options.leaseTtlMs;
    this.#logger = options.logger;
    this.#metrics = options.metrics;
    this.#host = {
      append: (handle, run, input) => this.#append(handle.id, input, { handle, run }),
      abandon: (taskId, run) => this.#leases.remove(taskId, run),
      trackBatch: (batch) => {
        this.#batches.add(batch);
        const untrack = () => this.#batches.delete(batch);
        batch.then(untrack, untrack);
      },
      refresh: (handle) => this.#refresh(this.#controls.get(handle), handle.id),
      itemLanded: (handle, run, afterSeq, key, ok) => this.#itemLanded(handle, run, afterSeq, key, ok),
      leaseTtlMs: this.#leaseTtlMs,
    };
  }

  /** @internal Starts watching the change feed for owned tasks ended elsewhere. */
  start(): void {
    this.#stopFeed ??= this.#store.changes.subscribe((change) => {
      if (!change.terminal) return;
      const owned = this.#owned.get(change.taskId);
      if (owned === undefined) return;
      if (this.#appending.has(change.taskId)) {
        // Most often the terminal this server is appending: its result updates the handle, with no read
        // of the row (a store publishes a commit before the append resolves). Decided when it settles.
        this.#terminalWhileAppending.add(change.taskId);
        return;
      }
      void this.#endedElsewhere(owned, change.taskId);
    });
  }

  /**
   * Creates a running task leased to this server and returns its handle.
   *
   * @throws ProgressError `invalid_input` (bad fields, taken id), `closed` during shutdown, or a store error.
   */
  async create(options: CreateTaskOptions): Promise<TaskHandle> {
    if (this.#closing) throw shuttingDown();
    if (typeof options !== 'object' || options === null) {
      throw new ProgressError(ErrorCode.InvalidInput, 'tasks.create: options must be an object');
    }
    // The store checks the values; a key it does not know it ignored: `{ taskId: 'taint-42' }` created a
    // task of a random id, and watchers of `taint-42` were answered `task_not_found`.
    for (const key of Object.keys(options)) {
      if (!CREATE_TASK_KEYS.includes(key)) {
        const nearest = nearestName(key, CREATE_TASK_KEYS);
        throw new ProgressError(
          ErrorCode.InvalidInput,
          `tasks.create: unknown option "${key}"${nearest ? ` (did you mean \`${nearest}\`?)` : ''}`,
        );
      }
    }
    const task = await this.#store.createTask({
      ...(options.id === undefined ? {} : { id: options.id }),
      owner: options.owner,
      kind: options.kind,
      ...(options.total === undefined ? {} : { total: options.total }),
      ...(options.message === undefined ? {} : { message: options.message }),
      lease: { owner: this.#serverId, ttlMs: this.#leaseTtlMs },
    });
    let control: TaskHandleControl | undefined;
    const handle = new TaskHandle(task, this.#host, (attached) => {
      control = attached;
    });
    if (control === undefined) throw new ProgressError(ErrorCode.Internal, 'TaskHandle did not attach');
    this.#controls.set(handle, control);
    let stopFollow: Unsubscribe | undefined;
    try {
      // Cross-process feeds only announce followed tasks: follow ours to hear a cancel from another replica.
      stopFollow = this.#store.changes.follow?.(task.id);
    } catch (error) {
      this.#logger.warn({ err: describeError(error), taskId: task.id }, 'change feed follow() failed');
    }
    // An older run of the id still owned here ended unheard (a missed change) and was purged, as the
    // store created this one: its handle ends now, as its next append would have learnt (`task_not_found`),
    // and its follow is released. Overwritten, its signal never aborted and its follow was never undone.
    const older = this.#owned.get(task.id);
    if (older !== undefined) {
      older.control.gone();
      this.#ended(task.id, undefined, older.run);
    }
    this.#owned.set(task.id, { handle, control, stopFollow, run: task.createdAt });
    this.#leases.add(task.id, task.createdAt);
    if (this.#closing) {
      // The row came back after shutdown() listed the tasks to interrupt: nobody else will end it (the
      // lease keeper is closing too), so end it here, as shutdown ends the others, and refuse the handle.
      control.abort(shutdownReason);
      await this.#interruptAtShutdown(handle);
      this.#forget(task.id);
      throw shuttingDown();
    }
    return handle;
  }

  /** The task row, or `undefined`. Not authorization-checked: this is the server-side API. */
  get(taskId: string): Promise<Task | undefined> {
    return this.#store.getTask(taskId);
  }

  /** The handles of the running tasks this server owns. */
  get running(): TaskHandle[] {
    return [...this.#owned.values()].map((owned) => owned.handle);
  }

  /**
   * Cancels any task (owned here or not): appends `cancelled` and publishes it to local watchers. An owned
   * task's handle and batch stop. Not authorization-checked (the HTTP handler checks before calling).
   * `reason` is clipped and made storable as the handle's texts are (see `TaskHandle.cancel`). `run`: the
   * `createdAt` of the task the caller read (and authorized), to cancel that task only: when the id is
   * another task's by now (retention purged it and the id was taken again, by another owner too), the
   * cancel is refused `task_not_found` (a `RunFence` of the store).
   *
   * @throws ProgressError `task_finished` when it already ended, `task_not_found`, or a store error.
   */
  cancel(taskId: string, reason?: string | null, run?: number): Promise<CancelledEvent> {
    const text = typeof reason === 'string' ? clip(reason, LIMITS.maxKeyLength) : null;
    const elsewhere = () =>
      this.#append(
        taskId,
        { type: 'cancelled', reason: text },
        run === undefined ? undefined : { run },
      ) as Promise<CancelledEvent>;
    const owned = this.#owned.get(taskId);
    // Owned here but another run than the caller's: fenced to the caller's run, the store refuses it.
    if (owned === undefined || (run !== undefined && owned.handle.task.createdAt !== run)) return elsewhere();
    // Another worker took the lease over (before this server's lease keeper noticed): the handle's append,
    // fenced to this server's lease, is refused, and the task runs on there. Cancelled as a task owned
    // elsewhere is; the refusal reached the caller (an HTTP client) as 409 lease_held naming both servers.
    return owned.handle.cancel(reason).catch((error: unknown) => {
      if (isProgressError(error, ErrorCode.LeaseHeld)) return elsewhere();
      throw error;
    });
  }

  /** @internal Publishes an event this process obtained (a reaped lease) to local watchers. */
  published(result: AppendResult): void {
    this.#hub.publishLocal(result.event, result.task.createdAt);
    if (isTerminalEvent(result.event)) {
      const owned = this.#owned.get(result.event.taskId);
      // Not a later run owned here: a reap answered late may name a run purged since, its id created again
      // here. A later run's end means the owned one is gone (ended unheard, purged): it ends (the row, of
      // another run, ends the handle keeping its own last row).
      if (owned === undefined || owned.run > result.task.createdAt) return;
      owned.control.update(result.task);
      this.#ended(result.event.taskId, undefined, owned.run);
    }
  }

  /**
   * @internal A lease of an owned task was lost: the task ended, or (`error` is `lease_held`) another
   * worker took the lease over once it had expired: the task did not end, so the handle's signal aborts
   * with that `lease_held` error rather than with `task_finished`. `run`: the run whose lease was lost;
   * another run owned under the id (created since that run was purged) is left alone.
   */
  leaseLost(taskId: string, error?: unknown, run?: number): void {
    const owned = this.#owned.get(taskId);
    if (owned === undefined || (run !== undefined && owned.run !== run)) return;
    if (isProgressError(error, ErrorCode.LeaseHeld)) {
      const lost = leaseTakenOver(taskId);
      owned.control.leaseLost(lost);
      this.#ended(taskId, () => lost, owned.run);
    } else {
      // A renewal refused `task_not_found`: the run was purged, as an append of the handle would learn.
      if (isProgressError(error, ErrorCode.TaskNotFound)) owned.control.gone();
      this.#ended(taskId, undefined, owned.run);
    }
    void this.#refresh(owned.control, taskId);
  }

  /** @internal Stops listening to the feed ({@link start} undone: at shutdown, or by a failed construction). */
  stop(): void {
    this.#stopFeed?.();
    this.#stopFeed = undefined;
  }

  /**
   * @internal Graceful shutdown: signals every owned task, waits for batches and for this server's appends
   * in flight until `batchDeadline`, then interrupts the owned tasks still running, giving up at `deadline` (epoch ms of the real clock).
   *
   * A task that cannot be interrupted (store down) keeps its lease on purpose: releasing it would exempt
   * the task from reaping, while an expiring lease lets another replica interrupt it.
   */
  async shutdown(batchDeadline: number, deadline: number): Promise<void> {
    this.#closing = true;
    for (const owned of this.#owned.values()) owned.control.abort(shutdownReason);
    await waitAtMost(Promise.allSettled([...this.#batches]), batchDeadline - Date.now());
    // A task driven by hand has no batch to wait for, but its appends in flight (the item it was reporting,
    // its own `complete()`, or the end it wrote on seeing its signal abort) settle first. Sent beside them,
    // the interrupt could commit first: close() returned, then they were refused `task_finished` and a
    // task whose worker had completed it ended `interrupted`.
    await this.#appendsSettled(batchDeadline);
    const unanswered = new Set<string>();
    const interrupts = [...this.#owned.values()].map(({ handle }) => {
      unanswered.add(handle.id);
      return this.#interruptAtShutdown(handle).finally(() => unanswered.delete(handle.id));
    });
    await waitAtMost(Promise.all(interrupts), deadline - Date.now());
    // Said now: close() resolves next and ends the logger, so a failure the store reports later is not
    // logged (it was, after "progress server closed").
    for (const taskId of unanswered) {
      this.#logger.error(
        { taskId },
        'could not interrupt a task at shutdown: the store did not answer by the deadline; its lease will expire and a reaper will end it',
      );
    }
    this.stop();
    for (const taskId of [...this.#owned.keys()]) this.#forget(taskId);
  }

  /**
   * Resolves once no append is in flight (appends sent meanwhile included), or at `deadline` (epoch ms).
   * Leaves no timer behind, nor a loop that outlives the deadline.
   */
  async #appendsSettled(deadline: number): Promise<void> {
    while (this.#appending.size > 0 && Date.now() < deadline) {
      const appends = [...this.#appending.values()].flatMap((inFlight) => [...inFlight]);
      await waitAtMost(Promise.allSettled(appends), deadline - Date.now());
    }
  }

  /** Ends an owned task as `interrupted` at shutdown; a task that cannot be keeps its lease for a reaper. */
  async #interruptAtShutdown(handle: TaskHandle): Promise<void> {
    if (handle.finished) return;
    try {
      await handle.interrupt('server shutting down');
    } catch (error) {
      if (isProgressError(error, ErrorCode.TaskFinished)) return;
      if (isProgressError(error, ErrorCode.LeaseHeld)) {
        // Not a store failure, and no reaper will end it: the task runs on under the worker that took it.
        this.#logger.warn(
          { err: describeError(error), taskId: handle.id },
          'task not interrupted at shutdown: another worker took its lease over and runs it',
        );
        return;
      }
      this.#metrics.storeErrors.inc();
      this.#logger.error(
        { err: describeError(error), taskId: handle.id },
        'could not interrupt a task at shutdown; its lease will expire and a reaper will end it',
      );
    }
  }

  #append(taskId: string, input: AppendInput, fence?: AppendFence): Promise<TaskEvent> {
    // Listed before the store is called: a store may publish the commit before its append() returns.
    const inFlight = this.#appending.get(taskId) ?? new Set<Promise<TaskEvent>>();
    this.#appending.set(taskId, inFlight);
    const append = this.#appendOnce(taskId, input, fence).finally(() => this.#appendSettled(taskId, append));
    inFlight.add(append);
    return append;
  }

  /**
   * One of this server's appends to `taskId` settled. Once none is left, a terminal the feed reported
   * meanwhile that did not end the handle (it came from elsewhere, committed after this server's last
   * append, or that append failed) is handled as the feed listener would have.
   */
  #appendSettled(taskId: string, append: Promise<TaskEvent>): void {
    const inFlight = this.#appending.get(taskId);
    inFlight?.delete(append);
    if (inFlight !== undefined && inFlight.size > 0) return;
    this.#appending.delete(taskId);
    if (!this.#terminalWhileAppending.delete(taskId)) return;
    const owned = this.#owned.get(taskId);
    if (owned !== undefined) void this.#endedElsewhere(owned, taskId);
  }

  /**
   * The feed reported a terminal change of an owned task that no append of this server explains. A change
   * names the id, not the run: it may be an older run's, heard late (its notification still in flight when
   * this server created the run it owns under the same id). So the row decides, read once: the handle ends
   * unless the row is still its run, running. A read that fails ends nothing: the store refuses the
   * handle's next write or renewal if the run did end, and that ends it then. Never rejects.
   */
  async #endedElsewhere(owned: Owned, taskId: string): Promise<void> {
    let task: Task | undefined;
    try {
      task = await this.#store.getTask(taskId);
    } catch (error) {
      this.#logger.debug({ err: describeError(error), taskId }, 'reading a task ended elsewhere failed');
      return;
    }
    if (this.#owned.get(taskId) !== owned) return;
    if (task === undefined) owned.control.gone();
    else {
      if (task.createdAt === owned.handle.task.createdAt && task.status === 'running') return;
      owned.control.update(task);
    }
    this.#ended(taskId);
  }

  async #appendOnce(taskId: string, input: AppendInput, fence: AppendFence | undefined): Promise<TaskEvent> {
    let result: AppendResult;
    const settled = this.#hub.localAppend(taskId);
    try {
      result = await (fence === undefined
        ? this.#store.append(taskId, input)
        : this.#store.append(
            taskId,
            input,
            fence.handle === undefined ? { run: fence.run } : { run: fence.run, owner: this.#serverId },
          ));
    } catch (error) {
      settled();
      if (isProgressError(error, ErrorCode.TaskFinished)) {
        const control = this.#writer(taskId, fence, fence?.run);
        // The refused run's: answered late, the id may be a newer run's by now, created here and alive.
        this.#ended(taskId, undefined, fence?.run);
        // Not owned any more (forgotten by shutdown, its interrupt refused): its run ended all the same.
        control?.ended();
        void this.#refresh(control, taskId);
      } else if (fence?.handle !== undefined && isProgressError(error, ErrorCode.TaskNotFound)) {
        this.#runGone(taskId, fence);
      } else if (fence?.handle !== undefined && isProgressError(error, ErrorCode.LeaseHeld)) {
        // Another worker took the lease over: this handle no longer writes to the task (see leaseLost).
        if (this.#owned.get(taskId)?.handle === fence.handle) this.leaseLost(taskId, error, fence.run);
        // Not owned any more (forgotten by shutdown, its interrupt refused): the handle is told all the
        // same. Untold, it said `finished: false` for good, and a batch that outlived the shutdown took the
        // refusal for an error: it retried its end, then rejected `lease_held`, for a task running on.
        else this.#controls.get(fence.handle)?.leaseLost(leaseTakenOver(taskId));
      }
      throw error;
    }
    try {
      this.#writer(taskId, fence, result.task.createdAt)?.update(result.task);
      // Same tick as the commit: local watchers get it without waiting for the feed.
      this.#hub.publishLocal(result.event, result.task.createdAt);
    } finally {
      settled();
    }
    // The run written to: answered late, the id may be a newer run's by now, created here and alive.
    if (isTerminalEvent(result.event)) this.#ended(taskId, undefined, result.task.createdAt);
    return result.event;
  }

  /**
   * The control of the handle an append comes from, else of the owned task's handle. The writing handle's
   * own, not the owned one: shutdown forgets the tasks whose interrupt the store refused or answered past
   * the deadline, and the result of that interrupt (or of a later append of the handle) went nowhere: the
   * handle said `running` after its task ended, and refused appends left `finished` false. Without a
   * handle, the owned task's only if it is run `run` (when known): a row of another run ended its handle.
   */
  #writer(
    taskId: string,
    fence: AppendFence | undefined,
    run: number | undefined,
  ): TaskHandleControl | undefined {
    if (fence?.handle !== undefined) return this.#controls.get(fence.handle);
    const owned = this.#owned.get(taskId);
    return run === undefined || owned?.run === run ? owned?.control : undefined;
  }

  /**
   * A handle's run of the task is gone (purged; the id may be another task's now): the handle ends, and
   * the owned task with it if it is that run — not if it is a newer run this server created since.
   */
  #runGone(taskId: string, { handle, run }: HandleFence): void {
    const control = this.#controls.get(handle);
    control?.gone();
    control?.abort(() => new ProgressError(ErrorCode.TaskFinished, `Task ${taskId} ended`, { taskId }));
    if (this.#owned.get(taskId)?.handle === handle) this.#ended(taskId);
    else this.#logger.debug({ taskId, run }, 'a handle of a purged run of this task id was refused');
  }

  /**
   * The owned task ended (or its lease went to another worker): stop renewing, abort its handle's signal
   * with `reason()`, forget it. With `run`, only if that is the run owned (see {@link Owned.run}).
   */
  #ended(
    taskId: string,
    reason = () => new ProgressError(ErrorCode.TaskFinished, `Task ${taskId} ended`, { taskId }),
    run?: number,
  ): void {
    const owned = this.#owned.get(taskId);
    if (owned === undefined || (run !== undefined && owned.run !== run)) return;
    owned.control.ended();
    owned.control.abort(reason);
    this.#forget(taskId);
  }

  #forget(taskId: string): void {
    const owned = this.#owned.get(taskId);
    if (owned === undefined) return;
    this.#owned.delete(taskId);
    this.#leases.remove(taskId);
    try {
      owned.stopFollow?.();
    } catch (error) {
      this.#logger.warn({ err: describeError(error), taskId }, 'change feed unfollow failed');
    }
  }

  /**
   * Whether run `run` of the handle's task holds an `item` event of `key` with this `ok` after `afterSeq`:
   * `runBatch` asks before writing again an item whose append was refused `store_unavailable`, which may
   * have committed all the same. The row read goes into the handle. Rejects with the store's error.
   */
  async #itemLanded(
    handle: TaskHandle,
    run: number,
    afterSeq: number,
    key: string,
    ok: boolean,
  ): Promise<boolean> {
    const task = await this.#store.getTask(handle.id);
    if (task === undefined || task.createdAt !== run) return false;
    this.#controls.get(handle)?.update(task);
    for (let after = afterSeq; after < task.seq; ) {
      const events = await this.#store.readEvents(handle.id, after, STORE_DEFAULTS.readLimit);
      for (const event of events) {
        if (event.type === 'item' && event.item.key === key && event.item.ok === ok) return true;
      }
      const last = events.at(-1);
      if (last === undefined) return false;
      after = last.seq;
    }
    return false;
  }

  /** Re-reads an ended task's row into its handle, so `status` tells how it ended. Never rejects. */
  async #refresh(control: TaskHandleControl | undefined, taskId: string): Promise<void> {
    if (control === undefined) return;
    try {
      const task = await this.#store.getTask(taskId);
      // No row: the run was purged (a row of another run tells `update` so).
      if (task === undefined) control.gone();
      else control.update(task);
    } catch (error) {
      this.#logger.debug({ err: describeError(error), taskId }, 'refreshing a task failed');
    }
  }
}

/** Why a handle's appends are refused once another worker took its task's lease over. */
function leaseTakenOver(taskId: string): ProgressError {
  return new ProgressError(
    ErrorCode.LeaseHeld,
    `The lease of task ${taskId} was taken over by another worker`,
    { taskId },
  );
}

function shutdownReason(): ProgressError {
  return new ProgressError(ErrorCode.Closed, 'server shutting down');
}
