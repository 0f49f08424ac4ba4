// Mutation testing (npm run mutate): StrykerJS over core's delivery, store and protocol code and the server's
// socket (subscription) code and task stream, killed by the vitest projects of those packages. See
// docs/testing.md.
// CPU heavy: one worker, incremental (only mutants whose code or tests changed since the last run are redone).
// Properties run 100 times per mutant (FC_NUM_RUNS; the test runners inherit it): at their full counts a run
// over core's 1,100 mutants would take hours on two cores. Set FC_NUM_RUNS to override.
process.env.FC_NUM_RUNS ??= '100';

/** @type {import('@stryker-mutator/api/core').PartialStrykerOptions} */
export default {
  testRunner: 'vitest',
  vitest: { configFile: 'vitest.stryker.config.ts' },
  coverageAnalysis: 'perTest',
  mutate: [
    'packages/progress-core/src/delivery/**/*.ts',
    'packages/progress-core/src/store/**/*.ts',
    'packages/progress-core/src/protocol/**/*.ts',
    'packages/progress-server/src/socket/**/*.ts',
    'packages/progress-server/src/hub/task-stream.ts',
    '!**/*.test.ts',
    '!packages/progress-core/src/testing/task-log-arbitrary.ts',
  ],
  concurrency: 1,
  incremental: true,
  incrementalFile: '.tmp/stryker-incremental.json',
  tempDirName: '.tmp/stryker',
  reporters: ['clear-text', 'progress', 'json'],
  jsonReporter: { fileName: '.tmp/mutation.json' },
  clearTextReporter: { allowColor: false, logTests: false, reportMutants: true, reportScoreTable: true },
  timeoutMS: 20_000,
  timeoutFactor: 2,
  thresholds: { high: 85, low: 70, break: null },
};
