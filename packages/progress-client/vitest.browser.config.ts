import { defineProject } from 'vitest/config';
import { workspaceAliases } from '../../vitest.shared.js';

// `npm run test:browser -w @finishline/client`: the client in real Chromium (Debian `chromium`, driven
// by playwright-core) against the real server started in the test. Apart from `npm test`: slow.
export default defineProject({
  resolve: { alias: workspaceAliases },
  test: {
    name: 'client-browser',
    include: ['test/browser/**/*.chromium.ts'],
    testTimeout: 120_000,
    hookTimeout: 60_000,
    fileParallelism: false,
  },
});
