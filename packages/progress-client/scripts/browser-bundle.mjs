// How the size scripts bundle the client for a page: esbuild, with @finishline/core bundled in from its sources
// (as an app's bundler would, and as the tests resolve it, so no build is needed first), the browser variants of
// the package's `browser` export condition, minified, then gzipped with node:zlib at level 9.
// Used by bundle-size.mjs (the budgets) and size-ablation.mjs (what parts of the core entry cost).

import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { build } from 'esbuild';
import { browserVariants } from './browser-variants.mjs';

const here = (path) => fileURLToPath(new URL(path, import.meta.url));

/**
 * Bundles the exports of `sources` (paths under src/) as one page would load them. `plugins` run after the
 * package's own resolution (to patch or swap modules); `meta` asks esbuild for the inputs' sizes.
 * Resolves `{ minified, gzipped, metafile }` (bytes; `metafile` only with `meta`).
 */
export async function bundleForBrowser(sources, { meta = false, plugins = [] } = {}) {
  const contents = sources
    .map((source) => `export * from ${JSON.stringify(here(`../src/${source}`))};`)
    .join('\n');
  const result = await build({
    stdin: { contents, resolveDir: here('../src'), loader: 'ts' },
    bundle: true,
    minify: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    write: false,
    metafile: meta,
    legalComments: 'none',
    logLevel: 'error',
    // React is the app's, not ours: a page using the hook already has it.
    external: ['react', 'react-dom'],
    plugins: [
      // What the package's `browser` export condition gives a page (socket-platform.browser.ts, …).
      browserVariants,
      {
        // The workspace package is resolved to its sources, as the tests do (no build needed first).
        name: 'finishline-core-source',
        setup(b) {
          b.onResolve({ filter: /^@finishline\/core$/ }, () => ({
            path: here('../../progress-core/src/index.ts'),
          }));
          b.onResolve({ filter: /^@finishline\/core\/internal$/ }, () => ({
            path: here('../../progress-core/src/internal.ts'),
          }));
        },
      },
      ...plugins,
    ],
  });
  const code = result.outputFiles[0].contents;
  return {
    minified: code.byteLength,
    gzipped: gzipSync(code, { level: 9 }).byteLength,
    metafile: result.metafile,
  };
}
