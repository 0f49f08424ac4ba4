import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { inspect } from 'node:util';
import type { Options } from 'tsup';
import { build } from 'tsup';
import { describe, expect, it } from 'vitest';

const pkg = join(import.meta.dirname, '..');

describe("core's CommonJS build", () => {
  // Built here with the package's own tsup config (not read from dist/, which a clean checkout's tests
  // run without): its CommonJS half shares one chunk between entries, and tsup rewrites such chunks with
  // sucrase, which wrapped a class with a field initializer as `(_class = class …)`. ProgressError was named
  // `_class` there: `console.log(error)` printed `_class [ProgressError]: …`, and loggers that read
  // `error.constructor.name` (pino's `type`) logged `_class`.
  it('names every exported class as it is exported', async () => {
    // (A computed path: the config is the build's, outside this project's type-checked sources.)
    const configs = (await import(join(pkg, 'tsup.config.ts'))).default as Options[];
    // (Not its `onSuccess`: the declarations, written into dist/.)
    const { onSuccess: _declarations, ...cjs } = configs.find((config) =>
      config.format?.includes('cjs'),
    ) as Options;
    // Inside the package (its `.tmp/`, ignored by git), so that the bundle's dependencies (valibot) resolve.
    mkdirSync(join(pkg, '.tmp'), { recursive: true });
    const out = mkdtempSync(join(pkg, '.tmp', 'cjs-'));
    try {
      // (Paths from the package: the config's are relative to it, the tests run from the repository root.)
      const entry = Object.fromEntries(
        Object.entries(cjs.entry as Record<string, string>).map(([name, path]) => [name, join(pkg, path)]),
      );
      const tsconfig = join(pkg, 'tsconfig.json');
      await build({
        ...cjs,
        entry,
        tsconfig,
        outDir: out,
        clean: false,
        silent: true,
        config: false,
      });
      const require = createRequire(join(out, 'index.cjs'));
      for (const entry of ['index.cjs', 'internal.cjs']) {
        const exports = require(join(out, entry)) as Record<string, unknown>;
        const classes = Object.entries(exports).filter(
          ([, value]) =>
            typeof value === 'function' && /^class\b/.test(Function.prototype.toString.call(value)),
        );
        expect(classes.length).toBeGreaterThan(0);
        for (const [name, value] of classes)
          expect([entry, (value as { name: string }).name]).toEqual([entry, name]);
      }
      const { ProgressError } = require(join(out, 'index.cjs')) as typeof import('./index.js');
      const error = new ProgressError('closed', 'the client closed');
      expect(inspect(error).split('\n')[0]).toBe('ProgressError: the client closed');
      expect(error.constructor.name).toBe('ProgressError');
      expect(error.name).toBe('ProgressError');
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  }, 60_000);
});
