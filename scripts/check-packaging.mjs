// Checks what each published package would ship: publint (package.json fields, exports map, files) and
// Are The Types Wrong (types resolve for ESM and CJS consumers under node10, node16 and bundler resolution),
// and that every tarball carries the root LICENSE (npm adds a package's own LICENSE whatever `files` says,
// but never the repository root's, so each package keeps a copy, which must not drift from the root's).
// Run after `npm run build`: each package is packed once with `--ignore-scripts` (its `prepack` would
// rebuild it) and both tools read that tarball. Exits non-zero if any package has a problem.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const bin = (name) => join(root, 'node_modules/.bin', name);
const { workspaces } = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
const out = mkdtempSync(join(tmpdir(), 'finishline-packaging-'));
const license = readFileSync(join(root, 'LICENSE'), 'utf8');

let failed = false;
try {
  for (const workspace of workspaces) {
    const dir = join(root, workspace);
    const manifest = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
    if (manifest.private) continue;
    if (!existsSync(join(dir, 'dist'))) {
      console.error(`packaging check failed: ${manifest.name} has no dist/ (run npm run build first)`);
      failed = true;
      continue;
    }
    const [{ filename, files }] = JSON.parse(
      execFileSync('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', out], {
        cwd: dir,
        encoding: 'utf8',
      }),
    );
    const tarball = join(out, filename);
    // A CommonJS declaration that names a relative `.js` reaches an ESM `.d.ts`: TS1542 for `require`
    // users with skipLibCheck off. attw misses it when no entry reaches the file (yet).
    for (const { path } of files.filter((file) => file.path.endsWith('.d.cts'))) {
      const text = readFileSync(join(dir, path), 'utf8');
      if (/(from '|import\(")\.{1,2}\/[^'"]+\.js['"]/.test(text)) {
        console.error(`packaging check failed: ${manifest.name}'s ${path} imports an ESM .js declaration`);
        failed = true;
      }
    }
    // The MIT terms require the notice to ship with every copy: `"license": "MIT"` alone does not.
    if (!files.some((file) => file.path === 'LICENSE')) {
      console.error(`packaging check failed: ${manifest.name} ships no LICENSE`);
      failed = true;
    } else if (readFileSync(join(dir, 'LICENSE'), 'utf8') !== license) {
      console.error(`packaging check failed: ${manifest.name}'s LICENSE differs from the root LICENSE`);
      failed = true;
    }
    // `@finishline/core/testing` is ESM-only on purpose (vitest is): a `require` of it resolving to ESM
    // is expected there, and only there (every other entry has a `require` condition).
    const esmOnly = manifest.name === '@finishline/core' ? ['--ignore-rules', 'cjs-resolves-to-esm'] : [];
    for (const [tool, args] of [
      [bin('publint'), ['run', '--strict', tarball]],
      // Every resolution, node10 too: `"module": "commonjs"` in a tsconfig still means node10, and there a
      // subpath entry resolves only through `typesVersions` (the other packages' declarations import
      // `@finishline/core/internal`, so without it even their main entries lose types).
      [bin('attw'), [tarball, '--format', 'table-flipped', '--no-emoji', ...esmOnly]],
    ]) {
      try {
        execFileSync(tool, args, { stdio: 'inherit', cwd: dir });
      } catch {
        console.error(`packaging check failed: ${manifest.name} (${tool.split('/').pop()})`);
        failed = true;
      }
    }
  }
} finally {
  rmSync(out, { recursive: true, force: true });
}
console.log(failed ? 'packaging: FAILED' : 'packaging: all packages ok');
process.exit(failed ? 1 : 0);
