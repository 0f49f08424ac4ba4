import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { defineConfig } from 'tsup';

// The contract suite runs inside the adapter's own vitest; never bundle the test tools.
const external = ['vitest', 'fast-check'];
// The task-log arbitrary and the invalid-input check serve core's own tests only: not shipped.
const sources = [
  'src/**/*.ts',
  '!src/**/*.test.ts',
  '!src/testing/task-log-arbitrary.ts',
  '!src/testing/invalid-input.ts',
];

/**
 * Declarations, one file per module (`dist/store/progress-store.d.ts`, not a hashed chunk), so "go to
 * definition" lands on a file named after its role. tsc writes the `.d.ts`; each gets a `.d.cts` twin
 * whose relative imports name `.cjs`, which is what TypeScript resolves for `require` users.
 */
function emitDeclarations(): void {
  execFileSync(join(process.cwd(), '../../node_modules/.bin/tsc'), ['-p', 'tsconfig.build.json'], {
    stdio: 'inherit',
  });
  const walk = (dir: string): string[] =>
    readdirSync(dir).flatMap((name) => {
      const path = join(dir, name);
      return statSync(path).isDirectory() ? walk(path) : [path];
    });
  for (const file of walk('dist')) {
    // The testing entry is ESM-only (vitest is): no CommonJS twin.
    if (!file.endsWith('.d.ts') || file.startsWith(join('dist', 'testing'))) continue;
    // Both spellings tsc writes: `from './x.js'` and the inline `import("../x.js")` of an inferred type
    // (the valibot schemas). A `.d.cts` naming `.js` reaches the ESM `.d.ts`, an error (TS1542) for
    // `require` users who check the file.
    const text = readFileSync(file, 'utf8')
      .replace(/(from '\.{1,2}\/[^']+)\.js'/g, "$1.cjs'")
      .replace(/(import\("\.{1,2}\/[^"]+)\.js"\)/g, '$1.cjs")');
    writeFileSync(file.replace(/\.d\.ts$/, '.d.cts'), text);
  }
}

export default defineConfig([
  // ESM: one file per module, not one bundle. An app's bundler can then drop what it does not import
  // (the browser client does not need the valibot schemas or the stores): 13.2 KB min+gzip for the
  // client's browser entry instead of 16.5 KB against a single-file core.
  {
    entry: sources,
    format: ['esm'],
    bundle: false,
    clean: true,
    target: 'node20',
    external,
  },
  // CJS: a bundle per entry point (require() users do not tree-shake), with what both share in one chunk,
  // so `ProgressError` is one class whichever entry threw it. `testing` is ESM-only.
  {
    entry: { index: 'src/index.ts', internal: 'src/internal.ts' },
    format: ['cjs'],
    splitting: true,
    target: 'node20',
    external,
    onSuccess: async () => emitDeclarations(),
  },
]);
