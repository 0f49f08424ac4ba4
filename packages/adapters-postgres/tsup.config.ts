import { defineConfig } from 'tsup';

export default defineConfig({
  entry: { index: 'src/index.ts' },
  format: ['esm', 'cjs'],
  // The package's tsconfig is a composite project for `tsc -b`; a declaration bundle is not one.
  dts: { compilerOptions: { composite: false } },
  clean: true,
  target: 'node20',
});
