import { ErrorCode, ProgressError } from '@finishline/core';
import { compareIds, storeClosed, taskNotFound } from '@finishline/core/internal';
import { type Kysely, type RawBuilder, sql } from 'kysely';
import { toProgressError } from './pg-errors.js';
import { int } from './row-codec.js';
import type { ProgressDatabase } from './schema.js';

/**
 * Acks come one per incoming message, from every watcher of every task; writing each in its own
 * statement would take a pool connection per ack. The batcher gathers the acks of one I/O phase and
 * writes them in one statement, one statement at a time.
 *
 * @module
 */

/** An ack waiting for (or in) an ack statement. */
interface PendingAck {
  taskId: string;
  seq: number;
  resolve: (ackedSeq: number) => void;
  reject: (error: unknown) => void;
}

/** What {@link AckBatcher} needs. */
export interface AckBatcherOptions {
  db: Kysely<ProgressDatabase>;
  tasks: RawBuilder<unknown>;
  /** Most acks per statement; the rest go in the next one. */
  maxBatchSize: number;
}

/** Batches acks into one statement per event-loop turn; see the module documentation. */
export class AckBatcher {
  readonly #options: AckBatcherOptions;
  readonly #queue: PendingAck[] = [];
  #flushTimer: ReturnType<typeof setImmediate> | undefined;
  #inFlight: Promise<void> | undefined;
  #closed = false;
  #batches = 0;

  constructor(options: AckBatcherOptions) {
    this.#options = options;
  }

  /** Ack statements run (each writes every ack of one flush). */
  get batches(): number {
    return this.#batches;
  }

  /** Queues a validated ack; resolves with the task's acked seq once its statement ran. */
  enqueue(taskId: string, seq: number): Promise<number> {
    return new Promise<number>((resolve, reject) => {
      this.#queue.push({ taskId, seq, resolve, reject });
      this.#scheduleFlush();
    });
  }

  /** Rejects the acks not yet sent with `closed` and waits for the statement in flight. */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.#flushTimer !== undefined) clearImmediate(this.#flushTimer);
    this.#flushTimer = undefined;
    const closed = storeClosed();
    for (const entry of this.#queue.splice(0)) entry.reject(closed);
    await this.#inFlight;
  }

  #scheduleFlush(): void {
    if (this.#flushTimer !== undefined || this.#inFlight !== undefined) return;
    // setImmediate rather than a microtask: acks come one per incoming message, so the ones read from
    // the sockets in the same I/O phase join one statement.
    this.#flushTimer = setImmediate(() => {
      this.#flushTimer = undefined;
      this.#flush();
    });
  }

  /** Starts the next ack statement; one at a time, so acks hold at most one pool connection. */
  #flush(): void {
    if (this.#inFlight !== undefined || this.#queue.length === 0) return;
    const batch = this.#queue.splice(0, this.#options.maxBatchSize);
    this.#inFlight = this.#write(batch).finally(() => {
      this.#inFlight = undefined;
      // Acks that arrived meanwhile go together in the next statement.
      if (!this.#closed) this.#flush();
    });
  }

  /**
   * Writes a batch of acks in one statement and settles each ack's promise. Never rejects.
   *
   * Per task, the ack moves to the highest of the batch's seqs that the task has reached, so an
   * out-of-range ack in the batch neither blocks nor spoils a valid one. Rows are locked in id order
   * first, the order append transactions lock them, so an ack statement and an append transaction never
   * wait for each other in a cycle (a plain multi-row UPDATE locks in whatever order the plan visits).
   */
  async #write(batch: PendingAck[]): Promise<void> {
    const { db, tasks } = this.#options;
    const taskIds = [...new Set(batch.map((entry) => entry.taskId))].sort(compareIds);
    const rows = new Map<string, { seq: number; ackedSeq: number }>();
    try {
      // The rows the statement did not move (acked already, by this replica or another) come back in
      // the same round trip (a second query for them was a third of the ack statements at load). They
      // are as the statement's snapshot saw them, so an ack that a concurrent statement got in first
      // reads as the batch's own seq: the task's acked seq is at least that.
      const { rows: result } = await sql<{ id: string; seq: string; acked_seq: string }>`
        WITH v AS (
          SELECT * FROM unnest(${batch.map((entry) => entry.taskId)}::text[], ${batch.map((entry) => entry.seq)}::int8[])
            AS v(id, seq)
        ), locked AS MATERIALIZED (
          SELECT t.id FROM ${tasks} t
          WHERE t.id = ANY(${taskIds}::text[])
            AND EXISTS (SELECT 1 FROM v WHERE v.id = t.id AND v.seq <= t.seq AND v.seq > t.acked_seq)
          ORDER BY t.id
          FOR UPDATE
        ), updated AS (
          UPDATE ${tasks} AS t
          SET acked_seq = (SELECT max(v.seq) FROM v WHERE v.id = t.id AND v.seq <= t.seq)
          FROM locked
          WHERE t.id = locked.id
            AND EXISTS (SELECT 1 FROM v WHERE v.id = t.id AND v.seq <= t.seq AND v.seq > t.acked_seq)
          RETURNING t.id, t.seq, t.acked_seq
        )
        SELECT id, seq, acked_seq FROM updated
        UNION ALL
        SELECT t.id, t.seq,
          GREATEST(t.acked_seq, (SELECT max(v.seq) FROM v WHERE v.id = t.id AND v.seq <= t.seq))
        FROM ${tasks} t
        WHERE t.id = ANY(${taskIds}::text[]) AND NOT EXISTS (SELECT 1 FROM updated u WHERE u.id = t.id)`.execute(
        db,
      );
      this.#batches += 1;
      for (const row of result) rows.set(row.id, { seq: int(row.seq), ackedSeq: int(row.acked_seq) });
    } catch (error) {
      const failure = toProgressError(error, 'ack', taskIds.length === 1 ? taskIds[0] : undefined);
      for (const entry of batch) entry.reject(failure);
      return;
    }
    for (const { taskId, seq, resolve, reject } of batch) {
      const task = rows.get(taskId);
      if (task === undefined) reject(taskNotFound(taskId));
      else if (seq > task.seq) {
        reject(
          new ProgressError(
            ErrorCode.InvalidInput,
            `Cannot ack seq ${seq} of task ${taskId}: its latest seq is ${task.seq}`,
            { taskId },
          ),
        );
      } else resolve(task.ackedSeq);
    }
  }
}
