// Type-checks every workspace package through the root solution config (tsconfig.json): `tsc -b` checks
// the packages in the order of their project references, each against the declarations of the packages
// it imports, so no package build is needed first. Its only output is those declarations, written
// incrementally to each package's git-ignored `.tsc-out/`. Exits non-zero on any error, or when a
// workspace is missing from the root references (it would silently go unchecked).
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join, normalize } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const { workspaces } = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
const solution = join(root, 'tsconfig.json');
const referenced = new Set(
  JSON.parse(readFileSync(solution, 'utf8')).references.map((reference) => normalize(reference.path)),
);
const unreferenced = workspaces.filter(
  (workspace) => existsSync(join(root, workspace, 'tsconfig.json')) && !referenced.has(normalize(workspace)),
);
if (unreferenced.length > 0) {
  console.error(`typecheck failed: not referenced by tsconfig.json: ${unreferenced.join(', ')}`);
  process.exit(1);
}
try {
  execFileSync(join(root, 'node_modules/.bin/tsc'), ['-b', solution], { stdio: 'inherit' });
  console.log(`typecheck ok: ${workspaces.join(', ')}`);
} catch {
  console.error('typecheck failed');
  process.exit(1);
}
