import { build } from 'esbuild';
import { gzipSync } from 'node:zlib';
import { writeFileSync } from 'node:fs';
const C = '/work/wt-client/packages/progress-core/src/';
const r = await build({ entryPoints: [process.argv[2] ?? 'src/index.ts'], bundle: true, minify: true, format: 'esm', platform: 'browser', target: 'es2022', write: false, legalComments: 'none', external: ['react'],
 plugins: [{ name: 'c', setup(b) { b.onResolve({ filter: /^@finishline\/core(\/internal)?$/ }, (a) => ({ path: C + (a.path.endsWith('internal') ? 'internal.ts' : 'index.ts') })); } }] });
const code = r.outputFiles[0].text;
writeFileSync('/tmp/bundle.js', code);
console.log(code.length, gzipSync(code, { level: 9 }).length);
