// The chaos suite on SQLite (`node chaos/run.mjs --store sqlite`): one database file in a temp dir that
// every replica process opens with its own SqliteProgressStore (WAL; each store's change feed polls
// `PRAGMA data_version` for the others' commits), and the harness's view of that file for the checks.
//
// The harness reads the file over its own READ-ONLY better-sqlite3 connection, not through a
// SqliteProgressStore: the checks then look at the rows the replicas committed, decoded here in a few
// lines, and the harness cannot write, checkpoint or take the write lock while the replicas run.
// Imports the BUILT packages (npm run build first).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SqliteProgressStore, TABLES } from '@finishline/sqlite';
import Database from 'better-sqlite3';

/** What `readEvents` of the harness's view throws for an id the file does not hold (as the stores do). */
class TaskNotFound extends Error {
  code = 'task_not_found';
}

/**
 * Creates the database file (schema migrated by a SqliteProgressStore, closed at once) in a fresh temp
 * directory and opens the harness's read-only connection to it.
 */
export async function createSqliteChaosStore({ name, keep }) {
  const directory = mkdtempSync(join(tmpdir(), `finishline-${name}-`));
  const file = join(directory, 'progress.db');
  await new SqliteProgressStore({ database: file, dataVersionPollMs: 0, checkpoints: 'inline' }).close();
  const db = new Database(file, { readonly: true, fileMustExist: true });
  // A read never waits for a writer in WAL mode, but the WAL index may be rebuilt after a replica's
  // kill -9: wait for that rather than fail a check.
  db.pragma('busy_timeout = 5000');
  const statements = {
    task: db.prepare(`SELECT * FROM ${TABLES.tasks} WHERE id = ?`),
    events: db.prepare(
      `SELECT seq, type, time FROM ${TABLES.events} WHERE task_id = ? AND seq > ? ORDER BY seq LIMIT ?`,
    ),
    running: db.prepare(`SELECT count(*) AS n FROM ${TABLES.tasks} WHERE status = 'running'`),
    existing: db.prepare(`SELECT id FROM ${TABLES.tasks} WHERE id IN (SELECT value FROM json_each(?))`),
  };
  return {
    file,
    replicaEnv: { CHAOS_STORE: 'sqlite', CHAOS_SQLITE_FILE: file },
    /** The task's row as a Task (the fields the checks compare), or undefined. */
    async getTask(taskId) {
      const row = statements.task.get(taskId);
      return row === undefined ? undefined : toTask(row);
    },
    /** The task's events after `afterSeq` ({ seq, type, time }); `task_not_found` when it has none and no row. */
    async readEvents(taskId, afterSeq, limit) {
      const rows = statements.events.all(taskId, afterSeq, limit);
      if (rows.length === 0 && statements.task.get(taskId) === undefined) throw new TaskNotFound(taskId);
      return rows;
    },
    async countRunning() {
      return statements.running.get().n;
    },
    /** Which of `ids` the file holds a task row for. */
    existingIds(ids) {
      return new Set(statements.existing.all(JSON.stringify(ids)).map((row) => row.id));
    },
    async close() {
      db.close();
      if (!keep) rmSync(directory, { recursive: true, force: true });
    },
  };
}

function toTask(row) {
  return {
    id: row.id,
    owner: row.owner,
    kind: row.kind,
    status: row.status,
    total: row.total,
    done: row.done,
    succeeded: row.succeeded,
    failed: row.failed,
    result: row.result === null ? null : JSON.parse(row.result),
    seq: row.seq,
    ackedSeq: row.acked_seq,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
    finishedAt: row.finished_at,
  };
}
