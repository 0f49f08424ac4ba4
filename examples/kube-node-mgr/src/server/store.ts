import { mkdirSync } from 'node:fs';
import path from 'node:path';
import type { ProgressStore } from '@finishline/core';
import { PostgresProgressStore } from '@finishline/postgres';
import { SqliteProgressStore } from '@finishline/sqlite';
import Database from 'better-sqlite3';
import pg from 'pg';
import { AppDb } from './app-db.js';

/** An opened store and how to release it. */
export interface OpenedStore {
  store: ProgressStore;
  /** The example's own tables in the same database. */
  db: AppDb;
  /** `sqlite:<file>` or `postgres:<host/db>`, for the banner. */
  description: string;
  close(): Promise<void>;
}

/** Postgres when `databaseUrl` is given, else SQLite in `dataDir/progress.db`. */
export async function openStore(options: {
  databaseUrl: string | undefined;
  dataDir: string;
  onError?: (error: unknown) => void;
}): Promise<OpenedStore> {
  if (options.databaseUrl !== undefined && options.databaseUrl !== '') {
    const pool = new pg.Pool({ connectionString: options.databaseUrl, max: 10 });
    pool.on('error', (error) => options.onError?.(error));
    const store = await PostgresProgressStore.open({
      pool,
      ...(options.onError === undefined ? {} : { onError: options.onError }),
    });
    const db = await AppDb.postgres(pool);
    const url = new URL(options.databaseUrl);
    return {
      store,
      db,
      description: `postgres://${url.host}${url.pathname}`,
      async close() {
        await db.close();
        await store.close();
        await pool.end();
      },
    };
  }
  mkdirSync(options.dataDir, { recursive: true });
  const file = path.join(options.dataDir, 'progress.db');
  const store = new SqliteProgressStore({
    database: file,
    ...(options.onError === undefined ? {} : { onError: options.onError }),
  });
  const db = await AppDb.sqlite(new Database(file));
  return {
    store,
    db,
    description: `sqlite:${file}`,
    async close() {
      await db.close();
      await store.close();
    },
  };
}
