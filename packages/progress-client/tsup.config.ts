import { defineConfig } from 'tsup';
import { browserVariants } from './scripts/browser-variants.mjs';

const entry = {
  index: 'src/index.ts',
  react: 'src/react.ts',
  tabs: 'src/tab-sharing.ts',
  sse: 'src/sse.ts',
  http: 'src/http-fallback.ts',
  persist: 'src/persist.ts',
};

export default defineConfig([
  {
    entry,
    format: ['esm', 'cjs'],
    // The package's tsconfig is a composite project for `tsc -b`; a declaration bundle is not one.
    dts: { compilerOptions: { composite: false } },
    // dist/browser is the next build's, which runs at the same time and cleans it itself.
    clean: ['!browser/**'],
    target: 'node20',
  },
  // What the `browser` export condition gives bundlers: the same entries with the browser variants of
  // scripts/browser-variants.mjs (no Node-only diagnostics). ESM only: every bundler that reads the
  // condition takes ESM; the types are the entries' own.
  {
    entry,
    outDir: 'dist/browser',
    clean: true,
    format: ['esm'],
    platform: 'browser',
    target: 'es2022',
    esbuildPlugins: [browserVariants],
  },
  // The `finishline` bin: ESM only (top-level await), never part of the browser entry.
  {
    entry: { cli: 'src/cli.ts' },
    format: ['esm'],
    target: 'node20',
    external: ['ws'],
  },
]);
