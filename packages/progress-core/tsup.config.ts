import { defineConfig } from 'tsup';

export default defineConfig({
  entry: { index: 'src/index.ts', testing: 'src/testing/index.ts' },
  format: ['esm', 'cjs'],
  dts: true,
  clean: true,
  sourcemap: true,
  target: 'node20',
  // The contract suite runs inside the adapter's own vitest; never bundle the test tools.
  external: ['vitest', 'fast-check'],
});
