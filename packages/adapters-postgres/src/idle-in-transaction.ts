import { sql } from 'kysely';

/**
 * The idle timeout of the store's own transactions: each one that locks rows sets
 * `idle_in_transaction_session_timeout` for itself (`SET LOCAL`, so the caller's sessions keep their own
 * setting), so that a client stopped between two statements of it (a process frozen, an event loop
 * blocked, a network that went silent) does not hold the rows it locked for as long: Postgres ends the
 * session, the locks go, and the store's call fails with `store_unavailable` once its client resumes
 * (nothing of the transaction was written). Other replicas skip rows another transaction holds (acks,
 * renewals, the reaper) or wait for them a bounded time (appends), then try again: without the timeout,
 * the locked tasks' appends, acks and reaping waited for as long as the hang lasted.
 *
 * @module
 */

/**
 * How long a store's transaction may sit idle between two of its statements. Its statements follow one
 * another as fast as the event loop runs, so only a hang reaches it; long enough that a replica paused for
 * a few seconds (a GC, a brief freeze) resumes its transaction rather than failing it.
 */
export const IDLE_IN_TRANSACTION_TIMEOUT_MS = 10_000;

/**
 * A condition that is always true and sets the timeout for the rest of the transaction: put in the `WHERE`
 * of the statement that locks rows, beside the id condition (so it runs before any row is locked, in the
 * statement that takes the locks, without a round trip of its own).
 */
export const idleInTransactionTimeout = sql`set_config('idle_in_transaction_session_timeout', ${sql.lit(
  `${IDLE_IN_TRANSACTION_TIMEOUT_MS}ms`,
)}, true) IS NOT NULL`;
