#!/usr/bin/env node
// The `finishline` bin. npm links a package's bins when it installs it and skips a bin whose file is missing;
// in a clone `npm ci` runs before the build, so a bin naming dist/cli.js was never linked and `npx finishline`
// failed. This file is in the repository (and in the package); the CLI itself is the build's dist/cli.js.
import { existsSync } from 'node:fs';

const cli = new URL('../dist/cli.js', import.meta.url);
if (!existsSync(cli)) {
  process.stderr.write('finishline: dist/cli.js is missing: run `npm run build` first\n');
  // 70 (EX_SOFTWARE): not one of the watch's exit codes, which a script may test for.
  process.exit(70);
}
await import(cli.href);
