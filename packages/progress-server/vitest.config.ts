import { defineProject } from 'vitest/config';
import { workspaceAliases } from '../../vitest.shared.js';

export default defineProject({
  resolve: { alias: workspaceAliases },
  test: {
    name: 'server',
    include: ['src/**/*.test.ts', 'test/**/*.test.ts'],
    // Real sockets and timers on shared, noisy machines: waits are bounded by WAIT_MS (10 s) in the harness.
    testTimeout: 30_000,
  },
});
