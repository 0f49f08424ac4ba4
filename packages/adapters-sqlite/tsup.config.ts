import { defineConfig } from 'tsup';

export default defineConfig({
  entry: { index: 'src/index.ts' },
  format: ['esm', 'cjs'],
  // The package's tsconfig is a composite project for `tsc -b`; a declaration bundle is not one.
  dts: { compilerOptions: { composite: false } },
  clean: true,
  target: 'node20',
  // import.meta.url in the CommonJS build too (background-checkpoints.ts resolves better-sqlite3 with it).
  // Not tsup's `shims`: it builds the URL as `file:${__filename}`, which cuts the path at a `#` and misreads
  // a `%`, so an app in such a folder could not start the checkpoint worker.
  esbuildOptions(options, { format }) {
    if (format !== 'cjs') return;
    options.inject = [...(options.inject ?? []), 'cjs-import-meta-url.js'];
    options.define = { ...options.define, 'import.meta.url': 'importMetaUrl' };
  },
});
