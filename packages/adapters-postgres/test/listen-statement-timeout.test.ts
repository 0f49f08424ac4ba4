import type { ProgressError } from '@finishline/core';
import { describe, it } from 'vitest';
import { reReadBehindLock, storeFixtures } from './support.js';

/**
 * A pool configured with a per-statement timeout (`statement_timeout`, server-side, or `query_timeout`,
 * pg's client-side one), as production pools often are. The `LISTEN` client is derived from the pool's
 * options, so it inherited the timeout, and a re-read after a reconnect that took longer (a large one
 * after a long outage) was cut by it every time: the listener reconnected, re-read from the same mark,
 * was cut again, and stayed down for good. The store bounds each step of a (re)connect itself.
 *
 * The re-read is made slow here by a lock on the events table that the test holds.
 */

const { admin, migrated } = storeFixtures('stmt_timeout');

/** What cancelled a statement: Postgres's `statement_timeout` (57014), or pg's `query_timeout`. */
function cutByTimeout(error: ProgressError): boolean {
  const cause = error.cause as { code?: unknown; message?: unknown } | undefined;
  return cause?.code === '57014' || cause?.message === 'Query read timeout';
}

describe.each([
  ['statement_timeout', { statement_timeout: 100 }],
  ['query_timeout', { query_timeout: 100 }],
])("a pool's %s", (_name, timeout) => {
  it("does not cut the LISTEN connection's re-read after a reconnect", async () => {
    await reReadBehindLock(admin, await migrated(), 'stmt_timeout', timeout, cutByTimeout, 'cut');
  });
});
