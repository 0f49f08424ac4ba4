import {
  type Kysely,
  type QueryResult,
  type RawBuilder,
  sql,
  type Transaction,
  type TransactionBuilder,
} from 'kysely';
import { idleInTransactionTimeout } from './idle-in-transaction.js';
import { isSerializationFailure } from './pg-errors.js';

/**
 * The transactions of the store that lock task rows (appends, lease renewals and releases, the reaper) run
 * at `READ COMMITTED`, whatever the session's default. Their second try at a row another transaction held
 * waits for it (`FOR UPDATE`, bounded by a local `lock_timeout`) and then builds on the row as that
 * transaction left it, which only `READ COMMITTED` allows: at `REPEATABLE READ` or `SERIALIZABLE` (a
 * role's or database's `default_transaction_isolation`, a common hardening) such a wait ends in "could
 * not serialize access due to concurrent update", and the call failed with `store_unavailable`. The level
 * goes with the `BEGIN`: no extra round trip.
 *
 * @module
 */

/** A transaction of `db` at `READ COMMITTED` (see the module's comment). */
export function lockingTransaction<Database>(db: Kysely<Database>): TransactionBuilder<Database> {
  return db.transaction().setIsolationLevel('read committed');
}

/**
 * Runs `query`, one autocommit statement, at the session's default; at a default stricter than
 * `READ COMMITTED`, a row it writes, locks or conflicts with that changed after the statement began fails
 * it with a serialization failure (nothing written), and it runs once more in a `READ COMMITTED`
 * transaction ({@link redoneAtReadCommitted}), which builds on the newest row. No extra round trip unless it
 * failed so.
 */
export async function runStatement<Database, R>(
  db: Kysely<Database>,
  query: RawBuilder<R>,
): Promise<QueryResult<R>> {
  try {
    return await query.execute(db);
  } catch (error) {
    if (!isSerializationFailure(error)) throw error;
    return redoneAtReadCommitted(db, (trx) => query.execute(trx));
  }
}

/**
 * Runs `statement`, a single statement that failed with a serialization failure at the session's default,
 * once more in a `READ COMMITTED` transaction that first sets the store's idle timeout
 * (`idle-in-transaction.ts`), as the store's other locking transactions do: a client stopped between the
 * statement and its `COMMIT` would otherwise hold the rows it locked (a task's, the epoch's) for as long as
 * it stays stopped. The timeout is set by a statement of its own, before any row is locked: `statement`
 * is the caller's, its `WHERE` not ours to extend; a round trip on this rare path only.
 */
export function redoneAtReadCommitted<Database, T>(
  db: Kysely<Database>,
  statement: (trx: Transaction<Database>) => Promise<T>,
): Promise<T> {
  return lockingTransaction(db).execute(async (trx) => {
    await sql`SELECT ${idleInTransactionTimeout}`.execute(trx);
    return statement(trx);
  });
}
