import type { Kysely, TransactionBuilder } from 'kysely';

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
