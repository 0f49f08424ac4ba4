/**
 * The example's tables (rows and their creation), beside Finishline's in the same database: created if
 * missing, and a database from before clusters migrated (the `cluster` column, the keyed lock and cordon
 * tables).
 */
import { type Generated, type Kysely, sql } from 'kysely';

/** The two databases the example runs on. */
export type Dialect = 'sqlite' | 'postgres';

export interface SessionRow {
  sid: string;
  username: string;
  created_at: number;
  expires_at: number;
  revoked_at: number | null;
}
export interface TaskRow {
  task_id: string;
  /** The cluster (kubeconfig context) the batch changed; '' in rows written before clusters existed. */
  cluster: string;
  username: string;
  /** The validated operation, JSON. */
  operation: string;
  /** The node names, JSON. */
  nodes: string;
  /** The task this one retries or resumes, if any. */
  parent_task_id: string | null;
  /** `retry_failed` / `resume_remaining` when it has a parent. */
  relation: string | null;
  created_at: number;
}
export interface LockRow {
  cluster: string;
  node: string;
  task_id: string;
  username: string;
  acquired_at: number;
}
export interface CordonRow {
  cluster: string;
  node: string;
  reason: string;
  username: string;
  at: number;
}
export interface TemplateRow {
  name: string;
  /** `label` or `taint`. */
  kind: string;
  key: string;
  value: string | null;
  effect: string | null;
  created_by: string;
  created_at: number;
}
/** A batch start's `Idempotency-Key`, per user: the request it was sent with and the task it starts. */
export interface IdempotencyKeyRow {
  username: string;
  idem_key: string;
  /** SHA-256 of the validated request (cluster, operation, nodes, reason), hex. */
  fingerprint: string;
  /** The task the key's request creates (or created); chosen before the batch starts. */
  task_id: string;
  created_at: number;
}
export interface Tables {
  knm_idempotency_keys: IdempotencyKeyRow;
  knm_templates: TemplateRow;
  knm_sessions: SessionRow;
  knm_tasks: TaskRow;
  knm_cluster_locks: LockRow;
  knm_cluster_cordons: CordonRow;
  /** Before clusters: locks and cordon notes keyed by node alone (copied, then dropped, by the migration). */
  knm_node_locks: Omit<LockRow, 'cluster'>;
  knm_cordons: Omit<CordonRow, 'cluster'>;
  knm_audit_events: AuditEventRow;
}
export interface AuditEventRow {
  id: Generated<number>;
  username: string;
  /** `login`, `logout` or `cancel`. */
  action: string;
  task_id: string | null;
  at: number;
}

export async function createTables(db: Kysely<Tables>, dialect: Dialect): Promise<void> {
  const big = dialect === 'postgres' ? 'bigint' : 'integer';
  const schema = db.schema;
  await schema
    .createTable('knm_sessions')
    .ifNotExists()
    .addColumn('sid', 'text', (c) => c.primaryKey())
    .addColumn('username', 'text', (c) => c.notNull())
    .addColumn('created_at', big, (c) => c.notNull())
    .addColumn('expires_at', big, (c) => c.notNull())
    .addColumn('revoked_at', big)
    .execute();
  await schema
    .createTable('knm_tasks')
    .ifNotExists()
    .addColumn('task_id', 'text', (c) => c.primaryKey())
    .addColumn('cluster', 'text', (c) => c.notNull().defaultTo(''))
    .addColumn('username', 'text', (c) => c.notNull())
    .addColumn('operation', 'text', (c) => c.notNull())
    .addColumn('nodes', 'text', (c) => c.notNull())
    .addColumn('parent_task_id', 'text')
    .addColumn('relation', 'text')
    .addColumn('created_at', big, (c) => c.notNull())
    .execute();
  await schema.createIndex('knm_tasks_created').ifNotExists().on('knm_tasks').column('created_at').execute();
  // A database from before clusters has knm_tasks without the column (CREATE … IF NOT EXISTS kept it).
  const columns = await sql<{ n: number }>`select count(*) as n from ${sql.raw(
    dialect === 'postgres'
      ? "information_schema.columns where table_schema = current_schema() and table_name = 'knm_tasks' and column_name = 'cluster'"
      : "pragma_table_info('knm_tasks') where name = 'cluster'",
  )}`.execute(db);
  if (Number(columns.rows[0]?.n ?? 0) === 0) {
    await schema
      .alterTable('knm_tasks')
      .addColumn('cluster', 'text', (c) => c.notNull().defaultTo(''))
      .execute();
  }
  await schema
    .createTable('knm_cluster_locks')
    .ifNotExists()
    .addColumn('cluster', 'text', (c) => c.notNull())
    .addColumn('node', 'text', (c) => c.notNull())
    .addColumn('task_id', 'text', (c) => c.notNull())
    .addColumn('username', 'text', (c) => c.notNull())
    .addColumn('acquired_at', big, (c) => c.notNull())
    .addPrimaryKeyConstraint('knm_cluster_locks_pk', ['cluster', 'node'])
    .execute();
  await schema
    .createTable('knm_cluster_cordons')
    .ifNotExists()
    .addColumn('cluster', 'text', (c) => c.notNull())
    .addColumn('node', 'text', (c) => c.notNull())
    .addColumn('reason', 'text', (c) => c.notNull())
    .addColumn('username', 'text', (c) => c.notNull())
    .addColumn('at', big, (c) => c.notNull())
    .addPrimaryKeyConstraint('knm_cluster_cordons_pk', ['cluster', 'node'])
    .execute();
  await schema
    .createTable('knm_audit_events')
    .ifNotExists()
    // Postgres numbers rows with its serial type; SQLite with AUTOINCREMENT.
    .addColumn('id', dialect === 'postgres' ? 'bigserial' : 'integer', (c) =>
      dialect === 'postgres' ? c.primaryKey() : c.primaryKey().autoIncrement(),
    )
    .addColumn('username', 'text', (c) => c.notNull())
    .addColumn('action', 'text', (c) => c.notNull())
    .addColumn('task_id', 'text')
    .addColumn('at', big, (c) => c.notNull())
    .execute();
  // The audit list reads newest first, and the retention deletes the oldest.
  await schema.createIndex('knm_audit_events_at').ifNotExists().on('knm_audit_events').column('at').execute();
  // Locks and cordon notes of a database from before clusters move to the keyed tables with cluster ''
  // ({@link AppDb.adoptUnassigned} gives them to the default cluster).
  const tables = new Set((await db.introspection.getTables()).map((t) => t.name));
  for (const [from, to] of [
    ['knm_node_locks', 'knm_cluster_locks'],
    ['knm_cordons', 'knm_cluster_cordons'],
  ] as const) {
    if (!tables.has(from)) continue;
    await sql`insert into ${sql.table(to)} select '' as cluster, * from ${sql.table(from)}`.execute(db);
    await schema.dropTable(from).execute();
  }
  await schema
    .createTable('knm_idempotency_keys')
    .ifNotExists()
    .addColumn('username', 'text', (c) => c.notNull())
    .addColumn('idem_key', 'text', (c) => c.notNull())
    .addColumn('fingerprint', 'text', (c) => c.notNull())
    .addColumn('task_id', 'text', (c) => c.notNull())
    .addColumn('created_at', big, (c) => c.notNull())
    .addPrimaryKeyConstraint('knm_idempotency_keys_pk', ['username', 'idem_key'])
    .execute();
  await schema
    .createIndex('knm_idempotency_keys_created')
    .ifNotExists()
    .on('knm_idempotency_keys')
    .column('created_at')
    .execute();
  await schema
    .createTable('knm_templates')
    .ifNotExists()
    .addColumn('name', 'text', (c) => c.primaryKey())
    .addColumn('kind', 'text', (c) => c.notNull())
    .addColumn('key', 'text', (c) => c.notNull())
    .addColumn('value', 'text')
    .addColumn('effect', 'text')
    .addColumn('created_by', 'text', (c) => c.notNull())
    .addColumn('created_at', big, (c) => c.notNull())
    .execute();
}
