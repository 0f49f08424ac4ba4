import { defineConfig } from 'tsup';

export default defineConfig({
  entry: { index: 'src/index.ts' },
  format: ['esm', 'cjs'],
  // The package's tsconfig is a composite project for `tsc -b`; a declaration bundle is not one.
  dts: { compilerOptions: { composite: false } },
  clean: true,
  target: 'node20',
  // import.meta.url in the CommonJS build too (background-checkpoints.ts resolves better-sqlite3 with it).
  shims: true,
});
