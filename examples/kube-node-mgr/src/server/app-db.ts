/**
 * The example's own tables, beside Finishline's in the same database (SQLite file or Postgres): sessions
 * (revocable, so logout means logout on every replica), the audit record of every batch, the per-node locks
 * that keep two batches off the same node, and the reason of each cordon. Batches, locks and cordon notes
 * belong to one cluster (kubeconfig context): the same node name in two clusters is two nodes.
 */
import type BetterSqlite3 from 'better-sqlite3';
import { Kysely, PostgresDialect, SqliteDialect, sql } from 'kysely';
import type pg from 'pg';
import type { AuditEventView, TemplateView } from '../shared/api-types.js';
import { createTables, type Dialect, type Tables, type TaskRow } from './app-db-schema.js';

/** Attempts of {@link AppDb.lockNodes} at writing the locks before it gives up (then the batch gets 503). */
export const LOCK_ATTEMPTS = 3;

/** Most rows of each audit table one {@link AppDb.purgeAudit} deletes. */
export const AUDIT_PURGE_LIMIT = 10_000;

/** Key of the advisory lock under which a replica creates the tables. */
const MIGRATION_LOCK = 7_215_001;

/** A batch as the audit page shows it. */
export interface TaskRecord {
  taskId: string;
  /** The cluster (kubeconfig context) it changed. */
  cluster: string;
  username: string;
  operation: Record<string, unknown> & { type: string };
  nodes: string[];
  parentTaskId: string | null;
  relation: 'retry_failed' | 'resume_remaining' | null;
  createdAt: number;
}

/** A sign-in, sign-out or cancel, for the audit page (batches are in the task records). */
export type AuditEvent = AuditEventView;

/** Who cordoned a node, when and why. */
export interface CordonNote {
  cluster: string;
  node: string;
  reason: string;
  username: string;
  at: number;
}

/** A saved label or taint, to apply again by name. */
export type Template = TemplateView;

/** A batch start's `Idempotency-Key` as stored (see {@link AppDb.claimIdempotencyKey}). */
export interface IdempotencyClaim {
  username: string;
  key: string;
  fingerprint: string;
  taskId: string;
  createdAt: number;
}

/** A lock held on a node by a running batch. */
export interface NodeLock {
  cluster: string;
  node: string;
  taskId: string;
  username: string;
  acquiredAt: number;
}

/** The example's tables on SQLite or Postgres, through one kysely query builder. */
export class AppDb {
  readonly #db: Kysely<Tables>;
  readonly #dialect: Dialect;

  private constructor(db: Kysely<Tables>, dialect: Dialect) {
    this.#db = db;
    this.#dialect = dialect;
  }

  /** On a better-sqlite3 database (its own connection; WAL lets it share the file with the store). */
  static async sqlite(database: BetterSqlite3.Database): Promise<AppDb> {
    database.pragma('busy_timeout = 5000');
    const db = new AppDb(new Kysely<Tables>({ dialect: new SqliteDialect({ database }) }), 'sqlite');
    await db.#migrate();
    return db;
  }

  /** On a pg pool (the tables live in the pool's default schema). */
  static async postgres(pool: pg.Pool): Promise<AppDb> {
    const db = new AppDb(new Kysely<Tables>({ dialect: new PostgresDialect({ pool }) }), 'postgres');
    await db.#migrate();
    return db;
  }

  async #migrate(): Promise<void> {
    if (this.#dialect === 'sqlite') return createTables(this.#db, this.#dialect);
    // Replicas start together: concurrent CREATE TABLE IF NOT EXISTS can still collide in Postgres's
    // catalog, so they take turns under an advisory lock held on one pinned connection.
    await this.#db.connection().execute(async (conn) => {
      await sql`select pg_advisory_lock(${MIGRATION_LOCK})`.execute(conn);
      try {
        await createTables(conn, this.#dialect);
      } finally {
        await sql`select pg_advisory_unlock(${MIGRATION_LOCK})`.execute(conn);
      }
    });
  }

  // ------------------------------------------------------------ sessions

  /**
   * Stores a new session and revokes `replaces` (the browser's previous one) in one transaction: two writes
   * failed between them left a stored session whose cookie nobody got, and the old one active.
   */
  async createSession(session: {
    sid: string;
    username: string;
    expiresAt: number;
    replaces?: string;
  }): Promise<void> {
    const now = Date.now();
    await this.#db.transaction().execute(async (trx) => {
      if (session.replaces !== undefined) {
        await trx
          .updateTable('knm_sessions')
          .set({ revoked_at: now })
          .where('sid', '=', session.replaces)
          .execute();
      }
      await trx
        .insertInto('knm_sessions')
        .values({
          sid: session.sid,
          username: session.username,
          created_at: now,
          expires_at: session.expiresAt,
          revoked_at: null,
        })
        .execute();
    });
  }

  /** Whether the session exists, is not revoked and has not expired. */
  async sessionActive(sid: string, now = Date.now()): Promise<boolean> {
    const row = await this.#db
      .selectFrom('knm_sessions')
      .select(['expires_at', 'revoked_at'])
      .where('sid', '=', sid)
      .executeTakeFirst();
    return row !== undefined && row.revoked_at === null && Number(row.expires_at) > now;
  }

  async revokeSession(sid: string): Promise<void> {
    await this.#db
      .updateTable('knm_sessions')
      .set({ revoked_at: Date.now() })
      .where('sid', '=', sid)
      .execute();
  }

  /** Deletes sessions that expired (revoked ones stay until they expire: a revoked cookie stays refused). */
  async purgeSessions(now = Date.now()): Promise<void> {
    await this.#db.deleteFrom('knm_sessions').where('expires_at', '<', now).execute();
  }

  // ------------------------------------------------------------ task records (audit)

  async recordTask(record: TaskRecord): Promise<void> {
    await this.#db
      .insertInto('knm_tasks')
      .values({
        task_id: record.taskId,
        cluster: record.cluster,
        username: record.username,
        operation: JSON.stringify(record.operation),
        nodes: JSON.stringify(record.nodes),
        parent_task_id: record.parentTaskId,
        relation: record.relation,
        created_at: record.createdAt,
      })
      .execute();
  }

  async task(taskId: string): Promise<TaskRecord | undefined> {
    const row = await this.#db
      .selectFrom('knm_tasks')
      .selectAll()
      .where('task_id', '=', taskId)
      .executeTakeFirst();
    return row === undefined ? undefined : toRecord(row);
  }

  /** The batches recorded as a rerun (`relation`) of `parentTaskId`, oldest first. */
  async reruns(parentTaskId: string, relation: NonNullable<TaskRecord['relation']>): Promise<TaskRecord[]> {
    const rows = await this.#db
      .selectFrom('knm_tasks')
      .selectAll()
      .where('parent_task_id', '=', parentTaskId)
      .where('relation', '=', relation)
      .orderBy('created_at')
      .execute();
    return rows.map(toRecord);
  }

  /**
   * Newest first (then by task id); only `username`'s when given; only those of `cluster` when given; after
   * the row `(before, beforeId)` of that order when given — `beforeId`, the previous page's last task id,
   * keeps the batches recorded in the same millisecond as that row (without it: strictly older than `before`).
   */
  async tasks(options: {
    username?: string;
    cluster?: string;
    limit: number;
    before?: number;
    beforeId?: string;
  }): Promise<TaskRecord[]> {
    let query = this.#db.selectFrom('knm_tasks').selectAll();
    if (options.username !== undefined) query = query.where('username', '=', options.username);
    if (options.cluster !== undefined) query = query.where('cluster', '=', options.cluster);
    const { before, beforeId } = options;
    if (before !== undefined && beforeId !== undefined) {
      query = query.where((eb) =>
        eb.or([
          eb('created_at', '<', before),
          eb.and([eb('created_at', '=', before), eb('task_id', '>', beforeId)]),
        ]),
      );
    } else if (before !== undefined) query = query.where('created_at', '<', before);
    const rows = await query.orderBy('created_at', 'desc').orderBy('task_id').limit(options.limit).execute();
    return rows.map(toRecord);
  }

  // ------------------------------------------------------------ node locks

  /**
   * Takes the lock of every node for `taskId`, all or none. Locks held by tasks that `isStale` says have
   * ended (a replica that died mid-batch never released them) are taken over. Returns the locks that are
   * in the way, empty on success; throws when the locks could not be written after {@link LOCK_ATTEMPTS}
   * attempts (the database failing, not another batch holding a node).
   */
  async lockNodes(
    cluster: string,
    nodes: readonly string[],
    owner: { taskId: string; username: string },
    isStale: (lock: NodeLock) => Promise<boolean>,
  ): Promise<NodeLock[]> {
    // One verdict, and one DELETE, per task (a task's locks are taken at once, with one time): per lock, the
    // 5,000 locks of a batch whose replica died were 5,000 reads of its task and 5,000 DELETEs before
    // "Resume remaining" could start. Kept across attempts: an ended task stays ended, and a live one ends
    // the call.
    const verdicts = new Map<string, Promise<boolean>>();
    for (let attempt = 1; ; attempt++) {
      const held = await this.locks(cluster, nodes);
      const blocking: NodeLock[] = [];
      const stale = new Map<string, string[]>();
      // Ours already: an attempt whose COMMIT landed though its answer was lost.
      const own = new Set<string>();
      for (const lock of held) {
        if (lock.taskId === owner.taskId) {
          own.add(lock.node);
          continue;
        }
        const key = `${lock.taskId}\0${lock.acquiredAt}`;
        let verdict = verdicts.get(key);
        if (verdict === undefined) {
          verdict = isStale(lock);
          verdicts.set(key, verdict);
        }
        if (!(await verdict)) blocking.push(lock);
        else if (stale.has(lock.taskId)) stale.get(lock.taskId)?.push(lock.node);
        else stale.set(lock.taskId, [lock.node]);
      }
      if (blocking.length > 0) return blocking;
      const wanted = own.size === 0 ? nodes : nodes.filter((node) => !own.has(node));
      if (wanted.length === 0) return [];
      try {
        await this.#db.transaction().execute(async (trx) => {
          for (const [taskId, staleNodes] of stale) {
            await trx
              .deleteFrom('knm_cluster_locks')
              .where('cluster', '=', cluster)
              .where('task_id', '=', taskId)
              .where('node', 'in', staleNodes)
              .execute();
          }
          const now = Date.now();
          await trx
            .insertInto('knm_cluster_locks')
            .values(
              wanted.map((node) => ({
                cluster,
                node,
                task_id: owner.taskId,
                username: owner.username,
                acquired_at: now,
              })),
            )
            .execute();
        });
        return [];
      } catch (error) {
        // Read and judged again: a unique violation is another batch that took one of the nodes between our
        // read and our insert (its locks, live, are in the way). Any other failure (a busy database, a dropped
        // connection) rolled back the DELETE of the ended tasks' locks: those were answered as in the way,
        // a 409 naming a task that had ended (a batch started as another finished, before its unlock).
        if (attempt >= LOCK_ATTEMPTS) throw error;
      }
    }
  }

  /** The locks held in `cluster` (on `nodes` only, when given). */
  async locks(cluster: string, nodes?: readonly string[]): Promise<NodeLock[]> {
    let query = this.#db.selectFrom('knm_cluster_locks').selectAll().where('cluster', '=', cluster);
    if (nodes !== undefined) {
      if (nodes.length === 0) return [];
      query = query.where('node', 'in', [...nodes]);
    }
    const rows = await query.orderBy('node').execute();
    return rows.map((r) => ({
      cluster: r.cluster,
      node: r.node,
      taskId: r.task_id,
      username: r.username,
      acquiredAt: Number(r.acquired_at),
    }));
  }

  async unlockTask(taskId: string): Promise<void> {
    await this.#db.deleteFrom('knm_cluster_locks').where('task_id', '=', taskId).execute();
  }

  // ------------------------------------------------------------ idempotency keys

  /**
   * Claims `claim.key` of `claim.username` for `claim.taskId`, unless a claim of it is stored already: returns
   * the stored claim (this one when `taskId` is `claim.taskId`). One INSERT … ON CONFLICT DO NOTHING, then a
   * read: of two requests with one key at once, on any replicas, exactly one claims it.
   */
  async claimIdempotencyKey(claim: IdempotencyClaim): Promise<IdempotencyClaim> {
    await this.#db
      .insertInto('knm_idempotency_keys')
      .values({
        username: claim.username,
        idem_key: claim.key,
        fingerprint: claim.fingerprint,
        task_id: claim.taskId,
        created_at: claim.createdAt,
      })
      .onConflict((oc) => oc.columns(['username', 'idem_key']).doNothing())
      .execute();
    const row = await this.#db
      .selectFrom('knm_idempotency_keys')
      .selectAll()
      .where('username', '=', claim.username)
      .where('idem_key', '=', claim.key)
      .executeTakeFirst();
    // Deleted between the two (a release, the purge): the next request claims it.
    if (row === undefined) return claim;
    return {
      username: row.username,
      key: row.idem_key,
      fingerprint: row.fingerprint,
      taskId: row.task_id,
      createdAt: Number(row.created_at),
    };
  }

  /**
   * Gives the key's claim `from` (as read: its task and time) to `claim`; `false` when it changed since (another
   * took it over, or its request renewed it on going on to start its batch: see {@link renewIdempotencyKey}).
   */
  async takeOverIdempotencyKey(
    from: { taskId: string; createdAt: number },
    claim: IdempotencyClaim,
  ): Promise<boolean> {
    const result = await this.#db
      .updateTable('knm_idempotency_keys')
      .set({ fingerprint: claim.fingerprint, task_id: claim.taskId, created_at: claim.createdAt })
      .where('username', '=', claim.username)
      .where('idem_key', '=', claim.key)
      .where('task_id', '=', from.taskId)
      .where('created_at', '=', from.createdAt)
      .executeTakeFirst();
    return Number(result.numUpdatedRows) > 0;
  }

  /**
   * Whether the key is still claimed for `taskId`, renewing the claim's time to `at` if so: a request going on
   * to create its batch is not an abandoned claim, whatever it took to get there. Checked, then a takeover
   * read the claim as abandoned before the batch was recorded and started a second one later.
   */
  async renewIdempotencyKey(username: string, key: string, taskId: string, at: number): Promise<boolean> {
    const result = await this.#db
      .updateTable('knm_idempotency_keys')
      .set({ created_at: at })
      .where('username', '=', username)
      .where('idem_key', '=', key)
      .where('task_id', '=', taskId)
      .executeTakeFirst();
    return Number(result.numUpdatedRows) > 0;
  }

  /** Deletes the key's claim by `taskId` (its batch did not start), if it is still that one. */
  async releaseIdempotencyKey(username: string, key: string, taskId: string): Promise<void> {
    await this.#db
      .deleteFrom('knm_idempotency_keys')
      .where('username', '=', username)
      .where('idem_key', '=', key)
      .where('task_id', '=', taskId)
      .execute();
  }

  /** Deletes the keys claimed before `before` (ms since the epoch). */
  async purgeIdempotencyKeys(before: number): Promise<void> {
    await this.#db.deleteFrom('knm_idempotency_keys').where('created_at', '<', before).execute();
  }

  // ------------------------------------------------------------ cordon notes

  async setCordon(note: CordonNote): Promise<void> {
    await this.#db
      .insertInto('knm_cluster_cordons')
      .values({
        cluster: note.cluster,
        node: note.node,
        reason: note.reason,
        username: note.username,
        at: note.at,
      })
      .onConflict((oc) =>
        oc
          .columns(['cluster', 'node'])
          .doUpdateSet({ reason: note.reason, username: note.username, at: note.at }),
      )
      .execute();
  }

  async clearCordon(cluster: string, node: string): Promise<void> {
    await this.#db
      .deleteFrom('knm_cluster_cordons')
      .where('cluster', '=', cluster)
      .where('node', '=', node)
      .execute();
  }

  async cordons(cluster: string): Promise<CordonNote[]> {
    const rows = await this.#db
      .selectFrom('knm_cluster_cordons')
      .selectAll()
      .where('cluster', '=', cluster)
      .execute();
    return rows.map((r) => ({
      cluster: r.cluster,
      node: r.node,
      reason: r.reason,
      username: r.username,
      at: Number(r.at),
    }));
  }

  /**
   * Gives the batches, locks and cordon notes written before clusters existed (cluster '') to `cluster`,
   * the default one: an upgraded single-cluster install keeps its history where it was.
   */
  async adoptUnassigned(cluster: string): Promise<void> {
    await this.#db.updateTable('knm_tasks').set({ cluster }).where('cluster', '=', '').execute();
    await this.#db.updateTable('knm_cluster_locks').set({ cluster }).where('cluster', '=', '').execute();
    await this.#db.updateTable('knm_cluster_cordons').set({ cluster }).where('cluster', '=', '').execute();
  }

  // ------------------------------------------------------------ audit events (sign-ins, cancels)

  async recordEvent(event: AuditEvent): Promise<void> {
    await this.#db
      .insertInto('knm_audit_events')
      .values({ username: event.username, action: event.action, task_id: event.taskId, at: event.at })
      .execute();
  }

  /**
   * Deletes the audit events and batch records older than `before` (ms since the epoch), at most `limit` of
   * each: neither table was ever purged, and one user signing in again and again grew the audit events
   * without end. Returns how many rows went. Bounded per call so a first run on a large table does not hold
   * SQLite's write lock (or a long Postgres transaction) for the whole backlog: the next run takes more.
   */
  async purgeAudit(before: number, limit = AUDIT_PURGE_LIMIT): Promise<number> {
    const events = await this.#db
      .deleteFrom('knm_audit_events')
      .where('id', 'in', (eb) =>
        eb.selectFrom('knm_audit_events').select('id').where('at', '<', before).limit(limit),
      )
      .executeTakeFirst();
    const tasks = await this.#db
      .deleteFrom('knm_tasks')
      .where('task_id', 'in', (eb) =>
        eb.selectFrom('knm_tasks').select('task_id').where('created_at', '<', before).limit(limit),
      )
      .executeTakeFirst();
    return Number(events.numDeletedRows) + Number(tasks.numDeletedRows);
  }

  /** Newest first; only `username`'s when given. */
  async events(options: { username?: string; limit: number }): Promise<AuditEvent[]> {
    let query = this.#db.selectFrom('knm_audit_events').selectAll();
    if (options.username !== undefined) query = query.where('username', '=', options.username);
    const rows = await query.orderBy('at', 'desc').orderBy('id', 'desc').limit(options.limit).execute();
    return rows.map((r) => ({
      username: r.username,
      action: r.action as AuditEvent['action'],
      taskId: r.task_id,
      at: Number(r.at),
    }));
  }

  // ------------------------------------------------------------ templates

  /**
   * Saves a template; `false` when the name is taken. One INSERT … ON CONFLICT DO NOTHING: a read of the name
   * first, then the INSERT, let two saves of one name at once both read it free, and the second INSERT failed
   * on the primary key (a 500 where the name was only taken).
   */
  async addTemplate(t: Template): Promise<boolean> {
    const result = await this.#db
      .insertInto('knm_templates')
      .values({
        name: t.name,
        kind: t.kind,
        key: t.key,
        value: t.value,
        effect: t.effect,
        created_by: t.createdBy,
        created_at: t.createdAt,
      })
      .onConflict((oc) => oc.column('name').doNothing())
      .executeTakeFirst();
    return Number(result.numInsertedOrUpdatedRows ?? 0) > 0;
  }

  async templates(): Promise<Template[]> {
    const rows = await this.#db.selectFrom('knm_templates').selectAll().orderBy('name').execute();
    return rows.map((r) => ({
      name: r.name,
      kind: r.kind as Template['kind'],
      key: r.key,
      value: r.value,
      effect: r.effect,
      createdBy: r.created_by,
      createdAt: Number(r.created_at),
    }));
  }

  async deleteTemplate(name: string): Promise<void> {
    await this.#db.deleteFrom('knm_templates').where('name', '=', name).execute();
  }

  /** Closes the SQLite connection; a Postgres pool is the caller's (the store shares it). */
  async close(): Promise<void> {
    if (this.#dialect === 'sqlite') await this.#db.destroy();
  }
}

function toRecord(row: TaskRow): TaskRecord {
  return {
    taskId: row.task_id,
    cluster: row.cluster,
    username: row.username,
    operation: JSON.parse(row.operation) as TaskRecord['operation'],
    nodes: JSON.parse(row.nodes) as string[],
    parentTaskId: row.parent_task_id,
    relation: row.relation as TaskRecord['relation'],
    createdAt: Number(row.created_at),
  };
}
