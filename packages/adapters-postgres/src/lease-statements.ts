import type { AppendResult, Clock, ProgressError, Task, TaskChange } from '@finishline/core';
import { isProgressError } from '@finishline/core';
import {
  compareIds,
  isLeaseExpired,
  leaseExpiredReason,
  planAppend,
  planLease,
  runGone,
  taskNotFound,
} from '@finishline/core/internal';
import { type Kysely, sql } from 'kysely';
import { type AppendStatements, type AppendTarget, writeAppends } from './append-pipeline.js';
import { idleInTransactionTimeout } from './idle-in-transaction.js';
import { lockingTransaction, runStatement } from './locking-transaction.js';
import { isDatabaseError, isRowRefusal, LOCK_NOT_AVAILABLE, toProgressError } from './pg-errors.js';
import { int, type TaskRow, taskColumns, tasksById, toTask } from './row-codec.js';
import type { ProgressDatabase } from './schema.js';
import type { BatchedCall } from './statement-batcher.js';

/**
 * The lease statements of the store: renew and release by the owner, and the reaper that interrupts
 * tasks whose lease expired. Inputs arrive validated; database errors propagate for the store to type.
 *
 * @module
 */

/**
 * Lease times read from the database's clock rather than the store's `clock` (see the store's `clock`
 * option): the one clock every replica sharing the database agrees on. A replica whose clock ran 10 s ahead
 * found the leases of healthy replicas' running tasks expired and interrupted them while their workers ran;
 * one whose clock ran behind wrote leases already expired for the others.
 */
export const DATABASE_CLOCK = 'database';

/** Where lease times come from: a clock of the process, or {@link DATABASE_CLOCK}. */
export type LeaseClock = Clock | typeof DATABASE_CLOCK;

/**
 * The database's time in whole milliseconds since the epoch. `clock_timestamp()`, not `now()`: the time of
 * the reading, not of the transaction's start.
 */
export const databaseNow = sql<string>`floor(extract(epoch FROM clock_timestamp()) * 1000)::int8`;

/** One renewal: `owner` takes or keeps the lease of `taskId` for `ttlMs`; resolves with the task. */
export interface LeaseCall {
  taskId: string;
  owner: string;
  ttlMs: number;
  /** The run the renewal is fenced to (see `RunFence`): another run of the id rejects, `task_not_found`. */
  run?: number | undefined;
  /** Asked again after its row was held by another transaction: the wait before the next ask, if so. */
  retryMs?: number;
}

/** The outcome of a renewal whose row another transaction held (see {@link renewLeases}). */
const SKIPPED = Symbol('skipped');

/**
 * How long the second pass of {@link renewLeases} waits for the rows the first one skipped. A row an
 * append holds is free again within a statement or two (the lock queue is first come, first served), so
 * a busy task's renewal gets through; a row held longer (a replica frozen before its COMMIT) holds back
 * the store's later renewals this long at most, and its renewal is asked again later.
 */
export const RENEWAL_LOCK_WAIT_MS = 500;

/**
 * How long {@link releaseLease} waits for its task's row when another transaction holds it, as long as a
 * renewal's second pass waits ({@link RENEWAL_LOCK_WAIT_MS}): an append's hold ends within a statement or
 * two; a longer one (another program's transaction, a replica frozen before its COMMIT) fails the release
 * with `store_unavailable` instead of holding the caller, and a pool connection, for as long as it lasts.
 */
export const RELEASE_LOCK_WAIT_MS = 500;

type RenewalOutcome = Task | ProgressError | typeof SKIPPED;

/**
 * Renews a batch of leases (each `owner`'s on a running task, or takes a free or expired one): the rows
 * locked in id order, each renewal planned by the shared transition, one statement writing them all. A
 * server renews every lease it holds at the same tick, and a transaction per lease was four round trips
 * each (at x10 in `npm run bench`, more than half of the statements of the replica running the tasks).
 * The clock is read once the rows are locked.
 *
 * A store writes few renewal batches at a time (two), so a batch waiting for a row another transaction
 * holds (an append of a replica frozen before its COMMIT) held back the renewal of every other lease of the
 * store, whose tasks were then reaped while they ran. So a first transaction skips the rows others hold
 * (`SKIP LOCKED`) and renews the rest; a second one waits for the skipped rows at most
 * {@link RENEWAL_LOCK_WAIT_MS} (a busy task's row, which appends hold most of the time, is had that way,
 * where skipping alone could miss it again and again); the renewals of rows still held then go to `locked`, to be asked again later. Settles
 * every other call; never rejects.
 */
export async function renewLeases(
  db: Kysely<ProgressDatabase>,
  target: AppendTarget,
  clock: LeaseClock,
  batch: BatchedCall<LeaseCall, Task>[],
  locked: (call: BatchedCall<LeaseCall, Task>) => void,
): Promise<void> {
  const first = await settleRenewals(batch, () => renewalPass(db, target, clock, batch, 'skip'));
  const held = batch.filter((_, index) => first?.[index] === SKIPPED);
  if (held.length === 0) return;
  const second = await settleRenewals(held, async () => {
    try {
      return await renewalPass(db, target, clock, held, 'wait');
    } catch (error) {
      if (isDatabaseError(error) && error.code === LOCK_NOT_AVAILABLE) return held.map(() => SKIPPED);
      throw error;
    }
  });
  held.forEach((call, index) => {
    if (second?.[index] === SKIPPED) locked(call);
  });
}

/**
 * Runs `pass` and settles each call of `calls` by its outcome, but a skipped one; on a failure rejects them
 * all. Returns the outcomes, or `undefined` after a failure.
 */
async function settleRenewals(
  calls: BatchedCall<LeaseCall, Task>[],
  pass: () => Promise<RenewalOutcome[]>,
): Promise<RenewalOutcome[] | undefined> {
  let outcomes: RenewalOutcome[];
  try {
    outcomes = await pass();
  } catch (error) {
    const taskIds = new Set(calls.map((call) => call.input.taskId));
    const only = taskIds.size === 1 ? calls[0]?.input.taskId : undefined;
    const failure = toProgressError(error, 'renewLease', only);
    for (const call of calls) call.reject(failure);
    return undefined;
  }
  calls.forEach((call, index) => {
    // One outcome per call, in order.
    const outcome = outcomes[index] as RenewalOutcome;
    if (outcome === SKIPPED) return;
    if (isProgressError(outcome)) call.reject(outcome);
    else call.resolve(outcome);
  });
  return outcomes;
}

/**
 * One transaction renewing `batch`: `'skip'` leaves out the rows another transaction holds (their
 * outcome is {@link SKIPPED}); `'wait'` waits for them at most {@link RENEWAL_LOCK_WAIT_MS}, then throws
 * `lock_not_available`.
 */
async function renewalPass(
  db: Kysely<ProgressDatabase>,
  target: AppendTarget,
  clock: LeaseClock,
  batch: BatchedCall<LeaseCall, Task>[],
  mode: 'skip' | 'wait',
): Promise<RenewalOutcome[]> {
  const taskIds = [...new Set(batch.map((call) => call.input.taskId))].sort(compareIds);
  return lockingTransaction(db).execute(async (trx) => {
    if (mode === 'wait') {
      await sql`SELECT set_config('lock_timeout', ${`${RENEWAL_LOCK_WAIT_MS}ms`}, true)`.execute(trx);
    }
    const lock = mode === 'skip' ? sql`FOR UPDATE SKIP LOCKED` : sql`FOR UPDATE`;
    const { rows } = await sql<TaskRow & { db_now: string }>`
      SELECT ${taskColumns}, ${databaseNow} AS db_now FROM ${target.tasks}
      WHERE id = ANY(${taskIds}::text[]) AND ${idleInTransactionTimeout}
      ORDER BY id
      ${lock}`.execute(trx);
    const tasks = tasksById(rows);
    // The ids not locked: held by another transaction if their row exists, else unknown.
    const missing = mode === 'skip' ? taskIds.filter((taskId) => !tasks.has(taskId)) : [];
    const held = new Set<string>();
    if (missing.length > 0) {
      const { rows: existing } = await sql<{ id: string }>`
        SELECT id FROM ${target.tasks} WHERE id = ANY(${missing}::text[])`.execute(trx);
      for (const row of existing) held.add(row.id);
    }
    // Without a row nothing is planned: the database's time is then not needed. (Read with the rows, before
    // a wait for their locks: a lease renewed after a wait ends that much sooner, never later.)
    const now = clock === DATABASE_CLOCK ? int(rows[0]?.db_now ?? 0) : clock();
    const renewed = new Map<string, Task>();
    const planned = batch.map(({ input: { taskId, owner, ttlMs, run } }): RenewalOutcome => {
      if (held.has(taskId)) return SKIPPED;
      const task = tasks.get(taskId);
      if (task === undefined) return taskNotFound(taskId);
      // A damaged row (see toTask): its renewals fail alone.
      if (isProgressError(task)) return task;
      if (run !== undefined && task.createdAt !== run) return runGone(taskId, run);
      try {
        const next = planLease(task, owner, ttlMs, now);
        tasks.set(taskId, next);
        renewed.set(taskId, next);
        return next;
      } catch (error) {
        if (isProgressError(error)) return error;
        throw error;
      }
    });
    if (renewed.size > 0) {
      const leases = JSON.stringify(
        [...renewed.values()].map((task) => ({
          id: task.id,
          lease_owner: task.leaseOwner,
          lease_expires_at: task.leaseExpiresAt,
        })),
      );
      await sql`
        UPDATE ${target.tasks} AS t SET lease_owner = v.lease_owner, lease_expires_at = v.lease_expires_at
        FROM json_to_recordset(${leases}::json) AS v(id text, lease_owner text, lease_expires_at int8)
        WHERE t.id = v.id AND t.id = ANY(${[...renewed.keys()]}::text[])`.execute(trx);
    }
    return planned;
  });
}

/**
 * Drops `owner`'s lease on a running task, of run `run` when given (see `RunFence`), in one statement.
 * Resolves `'not_found'` when no task has this id, `'other_run'` when its task is not of `run`.
 *
 * @throws a `lock_not_available` database error ({@link LOCK_NOT_AVAILABLE}) when another transaction held
 * the task's row for {@link RELEASE_LOCK_WAIT_MS} (nothing was written).
 */
export async function releaseLease(
  db: Kysely<ProgressDatabase>,
  target: AppendTarget,
  taskId: string,
  owner: string,
  run: number | undefined,
): Promise<'done' | 'not_found' | 'other_run'> {
  const fence = run ?? null;
  // Ended tasks already dropped their lease; another owner's lease is not ours to drop. Redone at READ
  // COMMITTED after a serialization failure (see `runStatement`): at a stricter session default, a row an
  // append or an ack changed while the release waited for it failed the release with `store_unavailable`.
  const { rows } = await runStatement(
    db,
    sql<{ released: boolean; created_at: string | number | null }>`
    WITH released AS (
      UPDATE ${target.tasks} SET lease_owner = NULL, lease_expires_at = NULL
      WHERE id = ${taskId} AND status = 'running' AND lease_owner = ${owner}
        AND (${fence}::int8 IS NULL OR created_at = ${fence}::int8)
        -- For this statement's transaction alone, set on the row before it is locked (the lock wait
        -- comes after the row passed this filter): no round trip of its own.
        AND set_config('lock_timeout', ${sql.lit(`${RELEASE_LOCK_WAIT_MS}ms`)}, true) IS NOT NULL
      RETURNING id
    )
    SELECT EXISTS (SELECT 1 FROM released) AS released,
      (SELECT created_at FROM ${target.tasks} WHERE id = ${taskId}) AS created_at`,
  );
  const row = rows[0];
  if (row === undefined || row.released) return 'done';
  if (row.created_at === null) return 'not_found';
  return run !== undefined && int(row.created_at) !== run ? 'other_run' : 'done';
}

/** A task row the reaper could not interrupt (see {@link reapExpiredLeases}), with why. */
export interface DamagedRow {
  taskId: string;
  error: unknown;
}

/** What {@link reapExpiredLeases} did: the appends it committed, their changes, and the rows it set aside. */
export interface ReapOutcome {
  results: AppendResult[];
  changes: TaskChange[];
  damaged: DamagedRow[];
}

/** A row the first pass could not plan (see {@link reapExpiredLeases}): the careful pass sets it aside. */
class UnplannableRow extends Error {}

/**
 * What a row of its own, not the database or the connection, made fail: a value Postgres refuses (class 22)
 * or a constraint the interruption breaks (class 23, e.g. an event the row's `seq` says is not there yet).
 */
function isRowDamage(error: unknown): boolean {
  return error instanceof UnplannableRow || isRowRefusal(error);
}

/** When {@link reapExpiredLeases} reaps: the time leases expire by, and the time its events are stamped with. */
export interface ReapTime {
  /** The time a lease must have expired by: the store's clock's, or {@link DATABASE_CLOCK}. */
  expiredBy: number | typeof DATABASE_CLOCK;
  /** The time of the `interrupted` events and of the tasks' end (the store's clock, as its other writes). */
  now: number;
}

/**
 * Where {@link reapExpiredLeases} takes its {@link ReapTime} from: the store's clock, read once the reap has
 * its connection (in its transaction, see there); leases expire by it, or by the database's clock.
 */
export interface ReapClock {
  clock: Clock;
  /** Leases expire by {@link DATABASE_CLOCK} rather than by the store's clock. */
  databaseExpiry: boolean;
}

/** A row {@link selectExpired} found, with the time its lease was found expired at. */
type ExpiredRow = TaskRow & { expired_by: string | number };

/** The expired leases of running tasks, oldest first, locked (skipping those another transaction holds). */
function selectExpired(target: AppendTarget, limit: number, expiredBy: ReapTime['expiredBy']) {
  // Read once for the statement (a CTE), not once a row: every row is judged at the same time.
  const by = expiredBy === DATABASE_CLOCK ? databaseNow : sql`${expiredBy}::int8`;
  // SKIP LOCKED: a task another reaper (or an append) holds is left to it; the reaper that holds
  // it either interrupts it or sees it was renewed, so each expired lease ends exactly once.
  return sql<ExpiredRow>`
      WITH reap_time AS MATERIALIZED (SELECT ${by} AS expired_by)
      SELECT ${taskColumns}, reap_time.expired_by FROM ${target.tasks} CROSS JOIN reap_time
      WHERE status = 'running' AND lease_expires_at IS NOT NULL AND lease_expires_at <= reap_time.expired_by
        AND ${idleInTransactionTimeout}
      ORDER BY lease_expires_at, id
      LIMIT ${limit}
      FOR UPDATE OF tasks SKIP LOCKED`;
}

/** The interruption of `row`, or `undefined` if its lease is not expired. */
function planInterruption(row: ExpiredRow, now: number): AppendResult | undefined {
  const task = toTask(row);
  if (!isLeaseExpired(task, int(row.expired_by))) return undefined;
  return planAppend(task, { type: 'interrupted', reason: leaseExpiredReason(task) }, now);
}

/**
 * Interrupts up to `limit` running tasks whose lease expired by `expiredBy`, in one transaction (their
 * events stamped `now`); returns the
 * appends it committed and the changes to publish once the caller is told (each with its event).
 *
 * A row damaged by hand (a partial restore, an operator's edit: a `seq` behind its log) makes the
 * interruption's statement fail, and with it the whole pass. Left so, it came first in every pass (oldest
 * expiry first) and failed each: no expired task was interrupted again. So when the pass fails on such an
 * error, a careful pass interrupts the rows one by one (a savepoint each) and sets aside each row that
 * fails: its lease is dropped (the reaper no longer finds it; the task stays running, for an operator to
 * repair or end) and it is returned in `damaged`, once. Its slot goes to the next expired task. A row that
 * is merely odd costs nothing: the careful pass runs only after such a failure.
 */
export async function reapExpiredLeases(
  db: Kysely<ProgressDatabase>,
  target: AppendTarget,
  statements: AppendStatements,
  { limit, clock, databaseExpiry }: { limit: number } & ReapClock,
): Promise<ReapOutcome> {
  // Read once, in the transaction: read before the wait for a connection, an append committed meanwhile (at
  // a later time) was followed in the task's log by an interruption stamped earlier. The careful pass reuses it.
  let time: ReapTime | undefined;
  try {
    return await lockingTransaction(db).execute(async (trx) => {
      const now = clock();
      time = { expiredBy: databaseExpiry ? DATABASE_CLOCK : now, now };
      const { expiredBy } = time;
      const { rows } = await selectExpired(target, limit, expiredBy).execute(trx);
      const planned: AppendResult[] = [];
      for (const row of rows) {
        let interruption: AppendResult | undefined;
        try {
          interruption = planInterruption(row, now);
        } catch (error) {
          throw new UnplannableRow(`Task ${row.id} could not be planned`, { cause: error });
        }
        if (interruption !== undefined) planned.push(interruption);
      }
      let changes: TaskChange[] = [];
      if (planned.length > 0) {
        changes = await writeAppends(
          trx,
          statements,
          planned.map((entry) => entry.task),
          planned.map((entry) => entry.event),
        );
      }
      return { results: planned, changes, damaged: [] };
    });
  } catch (error) {
    if (!isRowDamage(error) || time === undefined) throw error;
    return reapCarefully(db, target, statements, { limit, ...time });
  }
}

/** The careful pass of {@link reapExpiredLeases}: one savepoint per row, damaged rows set aside. */
async function reapCarefully(
  db: Kysely<ProgressDatabase>,
  target: AppendTarget,
  statements: AppendStatements,
  { limit, expiredBy, now }: { limit: number } & ReapTime,
): Promise<ReapOutcome> {
  return lockingTransaction(db).execute(async (trx) => {
    const outcome: ReapOutcome = { results: [], changes: [], damaged: [] };
    // Interrupted rows are no longer running and set-aside ones have no lease: a further query finds only
    // rows not seen yet. Another one only after rows were set aside, which took them out of it: the loop ends.
    for (let setAside = 1; setAside > 0 && outcome.results.length < limit; ) {
      setAside = 0;
      const { rows } = await selectExpired(target, limit - outcome.results.length, expiredBy).execute(trx);
      for (const row of rows) {
        let damage: { error: unknown } | undefined;
        let interruption: AppendResult | undefined;
        try {
          interruption = planInterruption(row, now);
        } catch (error) {
          damage = { error };
        }
        if (interruption !== undefined) {
          await sql`SAVEPOINT finishline_reap`.execute(trx);
          try {
            const changes = await writeAppends(trx, statements, [interruption.task], [interruption.event]);
            await sql`RELEASE SAVEPOINT finishline_reap`.execute(trx);
            outcome.changes.push(...changes);
            outcome.results.push(interruption);
          } catch (error) {
            if (!isRowDamage(error)) throw error;
            // Its notification is undone with the rest of the savepoint's work.
            await sql`ROLLBACK TO SAVEPOINT finishline_reap`.execute(trx);
            damage = { error };
          }
        }
        if (damage !== undefined) {
          await sql`
            UPDATE ${target.tasks} SET lease_owner = NULL, lease_expires_at = NULL WHERE id = ${row.id}`.execute(
            trx,
          );
          outcome.damaged.push({ taskId: row.id, error: damage.error });
          setAside += 1;
        }
      }
    }
    return outcome;
  });
}
