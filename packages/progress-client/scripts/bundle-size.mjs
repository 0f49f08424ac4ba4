// Measures what the browser entry of @finishline/client costs a page: src/index.ts bundled for the
// browser with esbuild (with @finishline/core and eventemitter3, as an app's bundler would), minified,
// then gzipped with node:zlib. Prints the bytes; exits 1 above the 8 KB budget.
//
//   node packages/progress-client/scripts/bundle-size.mjs [--meta]
//
// --meta also prints the largest inputs, to find what to trim.

import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { build } from 'esbuild';

const BUDGET_BYTES = 8 * 1024;
const here = (path) => fileURLToPath(new URL(path, import.meta.url));

const result = await build({
  entryPoints: [here('../src/index.ts')],
  bundle: true,
  minify: true,
  format: 'esm',
  platform: 'browser',
  target: 'es2022',
  write: false,
  metafile: true,
  legalComments: 'none',
  plugins: [
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
  ],
});

const code = result.outputFiles[0].contents;
const gzipped = gzipSync(code, { level: 9 }).byteLength;
process.stdout.write(
  `@finishline/client browser entry: ${code.byteLength} bytes minified, ${gzipped} bytes min+gzip (budget ${BUDGET_BYTES})\n`,
);
if (process.argv.includes('--meta')) {
  const inputs = Object.entries(result.metafile.outputs[Object.keys(result.metafile.outputs)[0]].inputs)
    .map(([path, info]) => [info.bytesInOutput, path])
    .sort((a, b) => b[0] - a[0]);
  for (const [bytes, path] of inputs)
    if (bytes > 0) process.stdout.write(`${String(bytes).padStart(7)}  ${path}\n`);
}
process.exitCode = gzipped <= BUDGET_BYTES ? 0 : 1;
