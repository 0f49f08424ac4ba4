import { defineConfig } from 'tsup';

export default defineConfig({
  entry: { index: 'src/index.ts' },
  format: ['esm', 'cjs'],
  // The package's tsconfig is a composite project for `tsc -b`; a declaration bundle is not one.
  dts: { compilerOptions: { composite: false } },
  clean: true,
  target: 'node20',
  // A class whose body names it (a static factory's `new X(…)`) is renamed `_X` inside the bundle; keep the
  // exported name on it (`console.log`, stack frames, loggers that read `constructor.name`).
  keepNames: true,
});
