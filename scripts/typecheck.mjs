// Type-checks every workspace package against the sources of its siblings (tsconfig.base.json maps the
// @finishline/* names to src), so no build is needed first. Exits non-zero on the first failure.
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const { workspaces } = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
let failed = false;
for (const workspace of workspaces) {
  const config = join(root, workspace, 'tsconfig.json');
  if (!existsSync(config)) continue;
  try {
    execFileSync(join(root, 'node_modules/.bin/tsc'), ['--noEmit', '-p', config], { stdio: 'inherit' });
    console.log(`typecheck ok: ${workspace}`);
  } catch {
    console.error(`typecheck failed: ${workspace}`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);
