import type { ClientFrame } from '@finishline/core';
import type { ResolvedOptions } from './options.js';
import type { TaskSubscription } from './task-subscription.js';
import { Timeout, type TimerSet } from './timers.js';

/**
 * The client's acknowledgements: when an ack goes (a terminal one at once, others coalesced over
 * `ackDelayMs` or every `ackEvery` events), the cursor persisted with it, and the unsubscribe that
 * follows the terminal ack.
 *
 * @module
 */

/** @internal */
export class Acks {
  readonly #o: ResolvedOptions;
  readonly #timer: Timeout;
  /** Sends on the ready socket; false when there is none (the next `hello` flushes again). */
  readonly #send: (frame: ClientFrame) => boolean;
  /** Runs its argument; what that sends leaves in one write where the socket allows it. */
  readonly #batch: (run: () => void) => void;
  /**
   * The tasks whose ack (and save) waits for the coalescing delay, flushed when it is over. Only those: the
   * timer flushed every watched task, and each flush read them all to find whether the timer was still
   * needed, so every terminal frame read past each finished watch the client still held (500 reads a
   * frame for 1,000 watches finishing in the order they were watched).
   */
  readonly #owed = new Set<TaskSubscription>();

  constructor(
    options: ResolvedOptions,
    timers: TimerSet,
    send: (frame: ClientFrame) => boolean,
    batch: (run: () => void) => void,
  ) {
    this.#o = options;
    this.#timer = new Timeout(timers);
    this.#send = send;
    this.#batch = batch;
  }

  /** Terminal acks go at once (the server re-sends the terminal event until it hears one); others coalesce. */
  schedule(task: TaskSubscription): void {
    if (task.ackDue(this.#o.ackEvery)) this.flush(task);
    else {
      this.#owed.add(task);
      if (!this.#timer.pending)
        this.#timer.set(this.#o.ackDelayMs, () => {
          for (const each of this.#owed) this.flush(each);
        });
    }
  }

  /**
   * Acknowledges everything delivered and persists the cursor of an unfinished watch (a finished one's
   * entry goes); after the terminal ack, unsubscribes, in the same write as the ack where the socket
   * allows it (one send less per finished task).
   */
  flush(task: TaskSubscription): void {
    this.#owed.delete(task);
    // One that failed while owed (its entry removed, its id maybe another subscription's by now) is owed
    // nothing: the client no longer follows it.
    if (task.failed) return;
    // A watch that has its end keeps no entry, acknowledged or not: the entry names a task id, not a run,
    // so a finished one left for the next page (the ack not out when the page reloaded) was restored by
    // that page's next watch of the id and showed its end at once, the old run's for a task created again
    // under a purged id. The next page's watch asks the server instead, and acknowledges the end then.
    const storage = this.#o.storage;
    if (task.cursor.finished) {
      this.#o.storage?.remove(task.taskId);
      this.#batch(() => this.#ack(task));
    } else {
      if (storage !== undefined) task.save(storage);
      this.#ack(task);
    }
  }

  #ack(task: TaskSubscription): void {
    const seq = task.ackable();
    // An ack that found no ready socket is not recorded (the next `hello` flushes again): the task is then
    // not ready to unsubscribe, but the timer check below still runs (a watch released while the socket
    // is down leaves nothing to acknowledge either).
    if (seq !== undefined && this.#send({ type: 'ack', taskId: task.taskId, seq })) task.acked(seq);
    if (task.readyToUnsubscribe) {
      this.#send({ type: 'unsubscribe', taskId: task.taskId });
      task.done(); // (its entry went when it got its end: flush)
    }
    // The coalescing timer would fire for nothing once no task is owed its flush: a watch that ended, or
    // whose last handle closed (its last flush), was the last one with something.
    if (!this.#owed.size) this.#timer.clear();
  }
}
