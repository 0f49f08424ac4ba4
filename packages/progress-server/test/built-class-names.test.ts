import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Options } from 'tsup';
import { build } from 'tsup';
import { describe, expect, it } from 'vitest';

const pkg = join(import.meta.dirname, '..');
const core = join(pkg, '../progress-core/src');

describe("the server's builds", () => {
  // Built here with the package's own tsup config (not read from dist/, which a clean checkout's tests run
  // without; core bundled from its sources for the same reason). esbuild renames a class whose body names
  // it (`listen()` does `new ProgressServer(…)`) to `_ProgressServer` inside the bundle: until
  // 7 December 2026 the published class was named that, so `console.log(progress)` printed
  // `_ProgressServer {…}` and stack frames read `at _ProgressServer.close`.
  it('names every exported class as it is exported, in both formats', async () => {
    const config = (await import(join(pkg, 'tsup.config.ts'))).default as Options;
    mkdirSync(join(pkg, '.tmp'), { recursive: true });
    const out = mkdtempSync(join(pkg, '.tmp', 'names-'));
    try {
      await build({
        ...config,
        entry: { index: join(pkg, 'src/index.ts') },
        tsconfig: join(pkg, 'tsconfig.json'),
        dts: false,
        outDir: out,
        clean: false,
        silent: true,
        config: false,
        noExternal: [/^@finishline\/core/],
        esbuildPlugins: [
          {
            name: 'core-from-source',
            setup(esbuild) {
              esbuild.onResolve({ filter: /^@finishline\/core(\/internal)?$/ }, (args) => ({
                path: join(core, args.path.endsWith('/internal') ? 'internal.ts' : 'index.ts'),
              }));
            },
          },
        ],
      });
      const esm = (await import(pathToFileURL(join(out, 'index.js')).href)) as Record<string, unknown>;
      const cjs = createRequire(join(out, 'index.cjs'))(join(out, 'index.cjs')) as Record<string, unknown>;
      for (const [format, exports] of [
        ['esm', esm],
        ['cjs', cjs],
      ] as const) {
        const classes = Object.entries(exports).filter(
          ([, value]) =>
            typeof value === 'function' && /^class\b/.test(Function.prototype.toString.call(value)),
        );
        expect(classes.map(([name]) => name)).toContain('ProgressServer');
        for (const [name, value] of classes)
          expect([format, (value as { name: string }).name]).toEqual([format, name]);
      }
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  }, 120_000);
});
