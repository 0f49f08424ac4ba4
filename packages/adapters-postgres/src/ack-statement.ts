import { ErrorCode, isProgressError, ProgressError } from '@finishline/core';
import { compareIds, runGone, taskNotFound } from '@finishline/core/internal';
import { type Kysely, type RawBuilder, sql } from 'kysely';
import { redoneAtReadCommitted } from './locking-transaction.js';
import { isSerializationFailure, toProgressError } from './pg-errors.js';
import { PreparedStatement, param } from './prepared-statement.js';
import { intColumn } from './row-codec.js';
import type { ProgressDatabase } from './schema.js';
import type { BatchedCall } from './statement-batcher.js';

/**
 * The ack statement: the acks of one I/O phase, gathered by a `StatementBatcher`, in one statement.
 *
 * @module
 */

/** One ack: move `taskId`'s acked seq up to `seq`; the call resolves with the task's acked seq. */
export interface AckCall {
  taskId: string;
  seq: number;
  /**
   * The run the ack is fenced to (see `RunFence`), `undefined` for none: an ack of another run of the id
   * is not written and rejects with `task_not_found`.
   */
  run: number | undefined;
  /** Asked again after its row was held by another transaction: the wait before the next ask, if so. */
  retryMs?: number;
}

/** The ack statement of one store's tasks table (see `prepared-statement.ts`). */
export type AckStatement = PreparedStatement<
  { ackTaskIds: string[]; ackSeqs: number[]; ackRuns: (number | undefined)[]; taskIds: string[] },
  { id: string; seq: string; acked_seq: string; created_at: string; skipped: boolean }
>;

/**
 * The ack statement. The rows the statement did not move (acked already, by this replica or another) come
 * back in the same round trip (a second query for them was a third of the ack statements at load). They
 * are as the statement's snapshot saw them, so an ack that a concurrent statement got in first reads as
 * the batch's own seq: the task's acked seq is at least that.
 *
 * An ack fenced to a run (`RunFence`) counts for a row only when the row is of that run (`created_at`); a
 * NULL run (no fence) counts for any. The row's `created_at` comes back, for each fenced ack to be told
 * whether it was of the row's run. (A row deleted and its id inserted again while the statement runs is
 * another tuple: the statement's snapshot does not see the new one, and `FOR UPDATE` skips the old.)
 */
export function ackStatement(db: Kysely<ProgressDatabase>, tasks: RawBuilder<unknown>): AckStatement {
  return new PreparedStatement(
    db,
    sql<{ id: string; seq: string; acked_seq: string; created_at: string; skipped: boolean }>`
        WITH v AS (
          -- Each task's acked seqs of the batch as one array, so that a row looks at its own seqs only
          -- (a subquery over all the batch's acks for every row was quadratic: 57 ms at 1,000 acks), and
          -- their runs (NULL: not fenced) as another, element for element.
          SELECT id, array_agg(seq) AS seqs, array_agg(run) AS runs
          FROM unnest(${param('ackTaskIds')}::text[], ${param('ackSeqs')}::int8[], ${param('ackRuns')}::int8[])
            AS a(id, seq, run)
          GROUP BY id
        ), locked AS MATERIALIZED (
          SELECT t.id FROM ${tasks} t JOIN v ON v.id = t.id
          WHERE t.id = ANY(${param('taskIds')}::text[])
            AND EXISTS (
              SELECT 1 FROM unnest(v.seqs, v.runs) AS a(s, run)
              WHERE s <= t.seq AND s > t.acked_seq AND (run IS NULL OR run = t.created_at)
            )
          ORDER BY t.id
          -- A row another transaction holds (an append of a replica frozen before its COMMIT) is skipped,
          -- not waited for: this batch, and every ack of this store after it, would wait as long.
          FOR UPDATE OF t SKIP LOCKED
        ), updated AS (
          UPDATE ${tasks} AS t
          SET acked_seq = (
            SELECT max(s) FROM unnest(v.seqs, v.runs) AS a(s, run)
            WHERE s <= t.seq AND (run IS NULL OR run = t.created_at)
          )
          FROM v
          -- The count is a one-time filter: every lock is taken, in id order, before any row is touched.
          -- The rows updated are the rows locked: the same condition, checked on the same snapshot, and on
          -- the newest version of a row that changed since (as FOR UPDATE did), among the ids \`locked\` got
          -- (a row it skipped is held by another transaction: updating it would wait for that one).
          WHERE (SELECT count(*) FROM locked) >= 0
            AND t.id = ANY(${param('taskIds')}::text[]) AND v.id = t.id
            AND t.id IN (SELECT id FROM locked)
            AND EXISTS (
              SELECT 1 FROM unnest(v.seqs, v.runs) AS a(s, run)
              WHERE s <= t.seq AND s > t.acked_seq AND (run IS NULL OR run = t.created_at)
            )
          RETURNING t.id, t.seq, t.acked_seq, t.created_at
        )
        SELECT id, seq, acked_seq, created_at, false AS skipped FROM updated
        UNION ALL
        SELECT t.id, t.seq,
          GREATEST(t.acked_seq, (
            SELECT max(s) FROM unnest(v.seqs, v.runs) AS a(s, run)
            WHERE s <= t.seq AND (run IS NULL OR run = t.created_at)
          )),
          t.created_at,
          -- Skipped: it had an ack to write and another transaction held it (written in a later batch).
          t.id NOT IN (SELECT id FROM locked)
            AND EXISTS (
              SELECT 1 FROM unnest(v.seqs, v.runs) AS a(s, run)
              WHERE s <= t.seq AND s > t.acked_seq AND (run IS NULL OR run = t.created_at)
            )
        FROM ${tasks} t JOIN v ON v.id = t.id
        WHERE t.id = ANY(${param('taskIds')}::text[]) AND NOT EXISTS (SELECT 1 FROM updated u WHERE u.id = t.id)`,
  );
}

/**
 * Writes a batch of acks in one statement and settles each ack's promise. Never rejects.
 *
 * Per task, the ack moves to the highest of the batch's seqs that the task has reached, so an
 * out-of-range ack in the batch neither blocks nor spoils a valid one. Rows are locked in id order
 * first, the order append transactions lock them, so an ack statement and an append transaction never
 * wait for each other in a cycle (a plain multi-row UPDATE locks in whatever order the plan visits). A row
 * another transaction holds is skipped, not waited for: its acks go to `locked`, to be written again.
 */
export async function writeAcks(
  db: Kysely<ProgressDatabase>,
  statement: AckStatement,
  batch: BatchedCall<AckCall, number>[],
  locked: (call: BatchedCall<AckCall, number>) => void,
): Promise<void> {
  const taskIds = [...new Set(batch.map((entry) => entry.input.taskId))].sort(compareIds);
  const rows = new Map<
    string,
    { seq: number; ackedSeq: number; createdAt: number; skipped: boolean } | ProgressError
  >();
  const input = {
    ackTaskIds: batch.map((entry) => entry.input.taskId),
    ackSeqs: batch.map((entry) => entry.input.seq),
    // `undefined` goes as NULL (no fence).
    ackRuns: batch.map((entry) => entry.input.run),
    taskIds,
  };
  try {
    const { rows: result } = await statement.run(db, input).catch((error: unknown) => {
      // At a session default stricter than READ COMMITTED, a row changed since the statement began fails it
      // (nothing written): once more in a READ COMMITTED transaction, which builds on the newest row.
      if (!isSerializationFailure(error)) throw error;
      return redoneAtReadCommitted(db, (trx) => statement.run(trx, input));
    });
    for (const row of result) {
      // A row damaged by hand (an int8 above 2^53 came back rounded): its acks fail, the others' do not.
      try {
        rows.set(row.id, {
          seq: intColumn(row.id, 'seq', row.seq),
          ackedSeq: intColumn(row.id, 'acked_seq', row.acked_seq),
          createdAt: intColumn(row.id, 'created_at', row.created_at),
          skipped: row.skipped,
        });
      } catch (error) {
        if (!isProgressError(error)) throw error;
        rows.set(row.id, error);
      }
    }
  } catch (error) {
    const failure = toProgressError(error, 'ack', taskIds.length === 1 ? taskIds[0] : undefined);
    for (const entry of batch) entry.reject(failure);
    return;
  }
  for (const call of batch) {
    const {
      input: { taskId, seq, run },
      resolve,
      reject,
    } = call;
    const task = rows.get(taskId);
    if (task === undefined) reject(taskNotFound(taskId));
    else if (task instanceof ProgressError) reject(task);
    // Of another run: the statement counted none of its seqs for the row.
    else if (run !== undefined && run !== task.createdAt) reject(runGone(taskId, run));
    else if (task.skipped && seq <= task.seq) locked(call);
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
