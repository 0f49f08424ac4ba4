import { defineConfig } from 'vitest/config';
import { workspaceAliases } from '../../vitest.shared.js';

// `npm run test:browser`: the UI in real Chromium (Debian `chromium`, driven by playwright-core) against the
// built server (`dist/server.mjs`), once on one server and once on 3 replicas behind a round-robin proxy.
export default defineConfig({
  resolve: { alias: workspaceAliases },
  test: {
    name: 'example-browser',
    include: ['test/browser/**/*.test.ts'],
    testTimeout: 90_000,
    hookTimeout: 120_000,
    fileParallelism: false,
  },
});
