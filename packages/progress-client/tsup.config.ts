import { defineConfig } from 'tsup';

export default defineConfig([
  {
    entry: {
      index: 'src/index.ts',
      react: 'src/react.ts',
      tabs: 'src/tab-sharing.ts',
      sse: 'src/sse.ts',
      http: 'src/http-fallback.ts',
      persist: 'src/persist.ts',
    },
    format: ['esm', 'cjs'],
    // The package's tsconfig is a composite project for `tsc -b`; a declaration bundle is not one.
    dts: { compilerOptions: { composite: false } },
    clean: true,
    target: 'node20',
  },
  // The `finishline` bin: ESM only (top-level await), never part of the browser entry.
  {
    entry: { cli: 'src/cli.ts' },
    format: ['esm'],
    target: 'node20',
    external: ['ws'],
  },
]);
