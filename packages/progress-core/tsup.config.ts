import { defineConfig } from 'tsup';

// The contract suite runs inside the adapter's own vitest; never bundle the test tools.
const external = ['vitest', 'fast-check'];
const sources = ['src/**/*.ts', '!src/**/*.test.ts'];

export default defineConfig([
  // ESM: one file per module, not one bundle. An app's bundler can then drop what it does not import
  // (the browser client does not need the valibot schemas or the stores): 13.2 KB min+gzip for the
  // client's browser entry instead of 16.5 KB against a single-file core.
  {
    entry: sources,
    format: ['esm'],
    bundle: false,
    sourcemap: true,
    target: 'node20',
    external,
  },
  // CJS: one bundle per entry point (require() users do not tree-shake).
  {
    entry: { index: 'src/index.ts', testing: 'src/testing/index.ts' },
    format: ['cjs'],
    sourcemap: true,
    target: 'node20',
    external,
  },
  // Types for both: bundled per entry point (.d.ts for import, .d.cts for require). The package's tsconfig
  // is a composite project for `tsc -b`; a declaration bundle is not one.
  {
    entry: { index: 'src/index.ts', testing: 'src/testing/index.ts' },
    format: ['esm', 'cjs'],
    dts: { only: true, compilerOptions: { composite: false } },
    external,
  },
]);
