import { configDefaults, defineConfig } from 'vitest/config';

// The projects whose tests kill the mutants of stryker.config.mjs (the other packages' tests cannot).
// `STRYKER_PROJECTS=core` keeps only core's tests (enough for core's mutants, and much faster).
// Left out: the shutdown test, whose close-code timing fails under Stryker's instrumentation on a loaded
// machine, and the Express/Fastify recipes, which exercise no mutated code.
const server = {
  extends: './packages/progress-server/vitest.config.ts',
  root: './packages/progress-server',
  test: {
    exclude: [...configDefaults.exclude, 'src/shutdown.test.ts', 'src/http/frameworks.test.ts'],
  },
};

export default defineConfig({
  test: {
    projects:
      process.env.STRYKER_PROJECTS === 'core'
        ? ['packages/progress-core']
        : ['packages/progress-core', server],
  },
});
