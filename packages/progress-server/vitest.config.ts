import { defineProject } from 'vitest/config';
import { workspaceAliases } from '../../vitest.shared.js';

export default defineProject({
  resolve: { alias: workspaceAliases },
  test: {
    name: 'server',
    include: ['src/**/*.test.ts', 'test/**/*.test.ts'],
    // The cross-store tests' Postgres: FINISHLINE_TEST_PG_URL, or an embedded one started here as the
    // Postgres package's tests do (without it they skipped Postgres, on the bare machine CI allows).
    globalSetup: ['../adapters-postgres/test/global-setup.ts'],
    // Real sockets and timers on shared, noisy machines: waits are bounded by WAIT_MS (10 s) in the harness.
    testTimeout: 30_000,
  },
});
