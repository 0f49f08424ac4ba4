import { mkdirSync } from 'node:fs';
import path from 'node:path';
import type { ProgressStore } from '@finishline/core';
import { PostgresProgressStore } from '@finishline/postgres';
import { SqliteProgressStore } from '@finishline/sqlite';
import pg from 'pg';

/** An opened store and how to release it. */
export interface OpenedStore {
  store: ProgressStore;
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
    const url = new URL(options.databaseUrl);
    return {
      store,
      description: `postgres://${url.host}${url.pathname}`,
      async close() {
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
  return {
    store,
    description: `sqlite:${file}`,
    close: () => store.close(),
  };
}
