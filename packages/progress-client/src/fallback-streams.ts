import type { ServerFrame } from '@finishline/core';
import type { ResolvedOptions } from './options.js';
import type { TaskSubscription } from './task-subscription.js';

/**
 * The watches followed over the fallback transport (SSE) while the socket cannot connect (or with
 * `preferFallback`): one stream per unfinished watch, resumed from its cursor when cut, and the terminal
 * seq acknowledged over the same transport.
 *
 * @module
 */

/** What the streams need from their client. @internal */
export interface FallbackStreamsHost {
  /** True once the client is closed: no stream opens any more. */
  closed(): boolean;
  /** True while `task` is still the client's subscription of its task (no handle closed it). */
  current(task: TaskSubscription): boolean;
  /** A frame a stream delivered, handled as one from the socket. */
  onFrame(frame: ServerFrame): void;
}

/** @internal */
export class FallbackStreams {
  readonly #o: ResolvedOptions;
  readonly #host: FallbackStreamsHost;
  /** Task id → stop function of its stream. */
  readonly #streams = new Map<string, () => void>();
  #streaming = false;
  /** Finished watches whose terminal seq was acknowledged over the fallback transport. */
  readonly #acked = new Set<string>();

  constructor(options: ResolvedOptions, host: FallbackStreamsHost) {
    this.#o = options;
    this.#host = host;
  }

  /** True between {@link start} and {@link stop}: a new watch is followed over a stream too. */
  get streaming(): boolean {
    return this.#streaming;
  }

  /** Follows every unfinished watch over the fallback transport, until {@link stop} (a `hello`). */
  start(tasks: Iterable<TaskSubscription>): void {
    this.#streaming = true;
    for (const task of tasks) this.open(task);
  }

  stop(): void {
    this.#streaming = false;
    for (const stop of [...this.#streams.values()]) stop();
    this.#streams.clear();
  }

  /** Opens the stream of one watch, unless it has one, is finished, or there is no fallback transport. */
  open(task: TaskSubscription): void {
    const transport = this.#o.fallbackTransport;
    if (
      transport === undefined ||
      this.#host.closed() ||
      task.cursor.finished ||
      this.#streams.has(task.taskId)
    )
      return;
    const common = {
      httpUrl: this.#o.httpUrl,
      headers: this.#o.headers,
      credential: async () => {
        const token = this.#o.token;
        return typeof token === 'function' ? await token() : token;
      },
      credentials: this.#o.httpCredentials,
      taskId: task.taskId,
    };
    let stop: (() => void) | undefined;
    const onEnd = () => {
      if (this.#streams.get(task.taskId) === stop) this.#streams.delete(task.taskId);
      if (task.cursor.finished && !this.#acked.has(task.taskId)) {
        this.#acked.add(task.taskId);
        transport.ack({ ...common, seq: task.cursor.seq });
      }
      // Cut before the end (a proxy timeout, a server restart): resume from the cursor shortly.
      if (this.#streaming && !task.cursor.finished && this.#host.current(task)) {
        task.retryLater(this.#o.httpPollIntervalMs, () => this.open(task));
      }
    };
    stop = transport.follow({
      ...common,
      afterSeq: task.cursor.seq,
      onFrame: (frame) => this.#host.onFrame(frame),
      onEnd,
    });
    this.#streams.set(task.taskId, stop);
  }
}
