import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { isAbsolute, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Options } from 'tsup';
import { build } from 'tsup';
import { describe, expect, it } from 'vitest';

const packages = join(import.meta.dirname, '../..');
const core = join(packages, 'progress-core/src');

/**
 * The Node packages' builds, each made here with its own tsup config (not read from dist/, which a clean
 * checkout's tests run without; core bundled from its sources for the same reason). esbuild renames a
 * class whose body names it (a static factory's `new ProgressServer(…)`) to `_ProgressServer` inside the
 * bundle: until 7 December 2026 `ProgressServer` and `PostgresProgressStore` were published so named, and
 * `console.log` printed `_ProgressServer {…}`, stack frames `at _PostgresProgressStore.append`. (Core's
 * CommonJS build has its own check, `cjs-build.test.ts`.)
 */
describe.each([
  { dir: 'progress-server', main: 'ProgressServer' },
  { dir: 'adapters-postgres', main: 'PostgresProgressStore' },
  { dir: 'adapters-sqlite', main: 'SqliteProgressStore' },
])('the build of $dir', ({ dir, main }) => {
  it('names every exported class as it is exported, in both formats', async () => {
    const pkg = join(packages, dir);
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
        // The config's own paths (sqlite's injected shim) are relative to the package, not to the tests' cwd.
        esbuildOptions(options, context) {
          config.esbuildOptions?.(options, context);
          if (options.inject !== undefined)
            options.inject = options.inject.map((path) => (isAbsolute(path) ? path : join(pkg, path)));
        },
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
        expect(classes.map(([name]) => name)).toContain(main);
        for (const [name, value] of classes)
          expect([format, (value as { name: string }).name]).toEqual([format, name]);
      }
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  }, 120_000);
});
