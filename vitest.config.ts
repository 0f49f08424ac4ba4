import { defineConfig } from 'vitest/config';

// One root config, one project per package. Tests import `src` directly (no build needed):
// each package's vitest.config.ts maps its own name and its siblings' names to their sources.
export default defineConfig({
  test: {
    projects: ['packages/*', 'examples/*'],
  },
});
