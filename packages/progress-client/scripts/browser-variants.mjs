// The one rule of the client's browser builds: a module `name.ts` with a `name.browser.ts` beside it is
// replaced by that file (which leaves out what only runs in Node, and types its exports from `name.ts`).
// Used by the `browser` build of tsup.config.ts (the package's `browser` export condition), by
// browser-bundle.mjs (how the size scripts measure what a page gets) and by the Chromium tests' page bundle.
import { existsSync } from 'node:fs';
import { join } from 'node:path';

/** An esbuild plugin: relative `./name.js` imports resolve to `name.browser.ts` where there is one. */
export const browserVariants = {
  name: 'finishline-browser-variants',
  setup(build) {
    build.onResolve({ filter: /^\.\.?\/.*\.js$/ }, (args) => {
      const variant = join(args.resolveDir, args.path.replace(/\.js$/, '.browser.ts'));
      return existsSync(variant) ? { path: variant } : undefined;
    });
  },
};
