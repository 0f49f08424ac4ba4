// Checks what each published package would ship: publint (package.json fields, exports map, files) and
// Are The Types Wrong (types resolve for ESM and CJS consumers under node16 and bundler resolution).
// Run after `npm run build`. Exits non-zero if any package has a problem.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const bin = (name) => join(root, 'node_modules/.bin', name);
const { workspaces } = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));

let failed = false;
for (const workspace of workspaces) {
  const dir = join(root, workspace);
  const manifest = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
  if (manifest.private) continue;
  for (const [tool, args] of [
    [bin('publint'), ['run', '--strict', dir]],
    [bin('attw'), ['--pack', dir, '--profile', 'node16', '--format', 'table-flipped', '--no-emoji']],
  ]) {
    try {
      execFileSync(tool, args, { stdio: 'inherit', cwd: dir });
    } catch {
      console.error(`packaging check failed: ${manifest.name} (${tool.split('/').pop()})`);
      failed = true;
    }
  }
}
console.log(failed ? 'packaging: FAILED' : 'packaging: all packages ok');
process.exit(failed ? 1 : 0);
