// The published packages as an outside developer meets them. Packs every package, installs the tarballs
// with the docs' install lines into a fresh app in the OS temp dir (outside the repository, so nothing
// resolves to the workspace), then, in that app:
//   1. runs the README's and getting-started's server snippets (SQLite; getting-started's also on
//      Postgres) with getting-started's Node watcher and the `finishline watch` CLI: the task must reach
//      `completed` with every item done, and SIGTERM must end the server within 5 s;
//   2. type-checks the snippets and a file using every entry with `strict` and `skipLibCheck: false`,
//      under `node16` and under `bundler` resolution; then again with typescript@latest from the registry
//      (its `tsc --init` config; nodenext and bundler with the strictest flags), skipped when offline;
//   3. imports every entry point with `import` and with `require` (`@finishline/core/testing` is
//      ESM-only: `import` only), checks that every value the entry's types declare is exported, and
//      runs `npx finishline --help` (exit 0, the usage), `--version` (the installed version) and `finishline watch` into a pipe closed after the
//      first line (exit 141, stderr empty);
//   4. bundles getting-started's browser snippet for the browser with esbuild and fails if the bundle
//      holds any server code (the server, the stores, ws, pg, kysely, Node built-ins).
// docs/consumer-check.md says what this proves and what it does not. Run after `npm run build`.
//
//   node scripts/check-consumer.mjs [--keep] [--reuse <work dir>]
//   --keep leaves the temp folder for inspection; --reuse runs again in a kept folder without packing and
//   installing (for working on the check itself; CI never passes it).
import { execFileSync, spawn } from 'node:child_process';
import {
  chmodSync,
  copyFileSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { build, transform } from 'esbuild';

const root = new URL('..', import.meta.url).pathname;
const started = Date.now();
const reuse = process.argv.includes('--reuse')
  ? process.argv[process.argv.indexOf('--reuse') + 1]
  : undefined;
const keep = process.argv.includes('--keep') || reuse !== undefined;
const log = (message) =>
  process.stdout.write(`[consumer ${((Date.now() - started) / 1000).toFixed(1)}s] ${message}\n`);
const fail = (message) => {
  throw new Error(message);
};

/** The versions the repository is tested with, so the app installs what CI already proved. */
const lock = JSON.parse(readFileSync(join(root, 'package-lock.json'), 'utf8')).packages;
const pinned = (name) => {
  const version = lock[`node_modules/${name}`]?.version;
  if (version === undefined) fail(`${name} is not in package-lock.json`);
  return `${name}@${version}`;
};

const PACKAGES = [
  'progress-core',
  'adapters-sqlite',
  'adapters-postgres',
  'progress-server',
  'progress-client',
];

/** Each ```ts block of a markdown file that follows `heading`. */
function snippet(file, heading) {
  const text = readFileSync(join(root, file), 'utf8');
  const at = text.indexOf(heading);
  if (at < 0) fail(`${file}: no "${heading}"`);
  const match = /^```ts\n([\s\S]*?)^```/m.exec(text.slice(at));
  if (match === null) fail(`${file}: no ts block after "${heading}"`);
  return match[1];
}

/** The commands of a markdown file's first ```sh block, comments cut. */
function shellLines(file) {
  const match = /^```sh\n([\s\S]*?)^```/m.exec(readFileSync(join(root, file), 'utf8'));
  if (match === null) fail(`${file}: no sh block`);
  return match[1]
    .split('\n')
    .map((line) => line.replace(/#.*$/, '').trim())
    .filter((line) => line !== '');
}

/** Fills the `declare function` placeholders of the server snippets with a cookie session and a fake job. */
function runnable(source) {
  const filled = source
    .replace(
      /^declare function userFromCookie.*$/m,
      "function userFromCookie(cookie: string | undefined): { id: string } | null {\n  return cookie === 'sid=alice' ? { id: 'alice' } : null;\n}",
    )
    .replace(
      /^declare function taintNode.*$/m,
      'async function taintNode(node: string, options: { signal: AbortSignal }): Promise<void> {\n  await new Promise((resolve) => setTimeout(resolve, 20));\n  options.signal.throwIfAborted();\n}',
    );
  if (filled.includes('declare function')) fail('a server snippet declares something the check cannot fill');
  return filled;
}

/** getting-started's server on Postgres: the same code with the store line swapped (documented). */
function onPostgres(source) {
  const swapped = source
    .replace(
      "import { SqliteProgressStore } from '@finishline/sqlite';",
      "import pg from 'pg';\nimport { PostgresProgressStore } from '@finishline/postgres';",
    )
    .replace(
      /^const store = new SqliteProgressStore\(.*\);$/m,
      "const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL });\nconst store = await PostgresProgressStore.open({ pool, schema: process.env.PG_SCHEMA ?? 'finishline' });",
    )
    .replace('await store.close();', 'await store.close();\n  await pool.end();');
  if (!swapped.includes('PostgresProgressStore.open')) fail('getting-started: the store line was not found');
  return swapped;
}

/**
 * better-sqlite3's installer looks for a prebuilt addon on GitHub (unreachable here) and otherwise compiles
 * it with node-gyp: 5–15 minutes on a 2-core machine. The repository's own install already built that
 * addon for this exact version and Node ABI, so hand it to the app's installer as a local prebuild
 * (prebuild-install's `local-prebuilds` setting). The consumer still installs better-sqlite3 from the
 * registry tarball; only the compile is skipped. Without a built addon the install compiles as usual.
 */
function localPrebuildEnv(work) {
  const addon = join(root, 'node_modules/better-sqlite3/build/Release/better_sqlite3.node');
  if (!existsSync(addon)) return {};
  const version = pinned('better-sqlite3').split('@').pop();
  const dir = join(work, 'prebuilds');
  mkdirSync(join(dir, 'build/Release'), { recursive: true });
  copyFileSync(addon, join(dir, 'build/Release/better_sqlite3.node'));
  const name = `better-sqlite3-v${version}-node-v${process.versions.modules}-${process.platform}-${process.arch}.tar.gz`;
  run('tar', ['-czf', join(dir, name), '-C', dir, 'build/Release/better_sqlite3.node']);
  return { npm_config_better_sqlite3_local_prebuilds: dir };
}

function run(command, args, options = {}) {
  return execFileSync(command, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], ...options });
}

async function freePort() {
  const { createServer } = await import('node:net');
  return new Promise((resolve) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Starts `node <file>` in the app and waits until it answers HTTP. */
async function startServer(app, file, env) {
  const port = await freePort();
  const child = spawn(process.execPath, [file], {
    cwd: app,
    env: { ...process.env, ...env, PORT: String(port) },
  });
  let output = '';
  child.stdout.on('data', (chunk) => {
    output += chunk;
  });
  child.stderr.on('data', (chunk) => {
    output += chunk;
  });
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null) fail(`${file} exited at start:\n${output}`);
    try {
      // Ready once the progress routes are mounted (the Postgres variant opens its store after listen):
      // they answer 401 to a request without the session cookie.
      const response = await fetch(`http://127.0.0.1:${port}/progress/tasks/probe`);
      if (response.status === 401) break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    } catch {
      if (Date.now() > deadline) fail(`${file} did not listen within 20 s:\n${output}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
  return { port, child, exited, output: () => output };
}

/** One snippet end to end: a batch over HTTP, the Node watcher and the CLI to its end, then SIGTERM. */
async function endToEnd(app, name, file, env = {}) {
  const server = await startServer(app, file, env);
  const nodes = Array.from({ length: 12 }, (_, i) => `node-${i + 1}`);
  const response = await fetch(`http://127.0.0.1:${server.port}/api/taint`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', cookie: 'sid=alice' },
    body: JSON.stringify({ nodes }),
  });
  if (!response.ok) fail(`${name}: POST /api/taint answered ${response.status}: ${await response.text()}`);
  const { taskId } = await response.json();
  const url = `ws://127.0.0.1:${server.port}/progress`;
  const watcher = run(process.execPath, ['watcher.js', url, taskId, 'sid=alice'], {
    cwd: app,
    timeout: 30_000,
  });
  const last = watcher.trim().split('\n').at(-1);
  if (last !== `completed: ${nodes.length}/${nodes.length}`)
    fail(`${name}: the watcher ended with "${last}"`);
  // Items are printed live only: a watcher that starts after the batch ended gets the final state at once.
  const cli = run(
    'npx',
    ['--no-install', 'finishline', 'watch', url, taskId, '--header', 'cookie: sid=alice'],
    {
      cwd: app,
      timeout: 30_000,
    },
  );
  if (!cli.includes(`${nodes.length}/${nodes.length} 100%`) || !cli.trim().endsWith('completed'))
    fail(`${name}: finishline watch printed:\n${cli}`);
  const sentAt = Date.now();
  server.child.kill('SIGTERM');
  const timer = setTimeout(() => server.child.kill('SIGKILL'), 5000);
  const { code, signal } = await server.exited;
  clearTimeout(timer);
  const tookMs = Date.now() - sentAt;
  if (signal === 'SIGKILL') fail(`${name}: still running 5 s after SIGTERM:\n${server.output()}`);
  if (code !== 0) fail(`${name}: exited with ${code ?? signal} after SIGTERM:\n${server.output()}`);
  log(`${name}: ${nodes.length}/${nodes.length} completed (watcher and CLI), SIGTERM exit in ${tookMs} ms`);
}

/** A Postgres for the Postgres run: FINISHLINE_TEST_PG_URL, or an embedded one (stopped at the end). */
async function postgres() {
  const url = process.env.FINISHLINE_TEST_PG_URL;
  if (url !== undefined && url !== '') return { url, stop: async () => {} };
  const { startEmbeddedPostgres } = await import('./embedded-postgres.mjs');
  return startEmbeddedPostgres({ name: 'finishline-consumer-check' });
}

const CONSUMER_TS = `import { ErrorCode, MemoryProgressStore, ProgressError, type TaskView } from '@finishline/core';
import { assertTaskId } from '@finishline/core/internal';
import { ProgressServer, type ProgressServerOptions } from '@finishline/server';
import { SqliteProgressStore } from '@finishline/sqlite';
import { PostgresProgressStore } from '@finishline/postgres';
import { ProgressClient, type WatchState } from '@finishline/client';
import { WebSocketServer } from 'ws';

const store = new MemoryProgressStore();
const wss = new WebSocketServer({ noServer: true });
const options: ProgressServerOptions<{ id: string }> = { store, wss, authenticate: () => ({ id: 'a' }) };
export const server = new ProgressServer(options);
export const client = new ProgressClient({ url: 'ws://127.0.0.1:1/progress' });
export const state: Promise<WatchState> = client.watch('t').done({ timeoutMs: 1000 });
export const code: ErrorCode = new ProgressError(ErrorCode.Timeout, 'x').code;
export const view: TaskView | undefined = undefined;
export const stores = [SqliteProgressStore, PostgresProgressStore] as const;
assertTaskId('t');
`;

const CHECKPOINT_WORKER_CJS = `const { SqliteProgressStore } = require('@finishline/sqlite');
(async () => {
  const errors = [];
  const store = new SqliteProgressStore({ database: 'checkpoints.db', onError: (error) => errors.push(error.message) });
  for (let i = 0; i < 1100; i++) await store.createTask({ owner: 'alice', kind: 'k', total: 1 });
  await new Promise((resolve) => setTimeout(resolve, 200));
  const { worker } = store.checkpointStats();
  await store.close();
  console.log(JSON.stringify({ errors, worker }));
})();
`;

/**
 * The installed bin with its stdout a pipe whose reader goes away after the first line (`finishline watch …
 * | head -1`) while the task runs on: it crashed with an unhandled EPIPE, a stack trace and exit 1 (which
 * says "failed") until 5 December 2026. It must stop by itself, quietly, with 141. Prints the exit code
 * and the stderr as JSON.
 */
const CLOSED_PIPE_MJS = `import { spawn } from 'node:child_process';
import { MemoryProgressStore } from '@finishline/core';
import { ProgressServer } from '@finishline/server';
const server = await ProgressServer.listen(
  { store: new MemoryProgressStore(), authenticateToken: (token) => ({ id: token }) },
  { port: 0, host: '127.0.0.1' },
);
const task = await server.tasks.create({ owner: 'ops', kind: 'k', total: 400 });
const { port } = server.httpServer.address();
const child = spawn(
  process.execPath,
  ['node_modules/.bin/finishline', 'watch', \`ws://127.0.0.1:\${port}/progress\`, task.id, '--interval-ms', '0'],
  { env: { ...process.env, FINISHLINE_TOKEN: 'ops' }, stdio: ['ignore', 'pipe', 'pipe'] },
);
let stderr = '';
child.stderr.on('data', (chunk) => { stderr += chunk; });
child.stdout.once('data', () => child.stdout.destroy());
const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve(code ?? signal)));
let code;
// An item every 25 ms, each a line the bin writes, for at most 10 s.
for (let i = 0; i < 400 && code === undefined; i++) {
  await task.item({ key: \`n\${i}\`, ok: true });
  code = await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 25))]);
}
if (code === undefined) child.kill('SIGKILL');
await server.close({ timeoutMs: 1000 });
console.log(JSON.stringify({ code: code ?? 'still running after 10 s', stderr }));
`;

const CONSUMER_TESTING_TS = `import { describeProgressStoreContract, ManualClock } from '@finishline/core/testing';
export const clock = new ManualClock();
export const contract: typeof describeProgressStoreContract = describeProgressStoreContract;
`;

function tsconfig(resolution, files, lib, extra = {}) {
  return JSON.stringify({
    compilerOptions: {
      strict: true,
      skipLibCheck: false,
      noEmit: true,
      target: 'ES2022',
      lib,
      types: ['node'],
      ...(resolution === 'bundler'
        ? { module: 'esnext', moduleResolution: 'bundler' }
        : { module: resolution, moduleResolution: resolution }),
      ...extra,
    },
    files,
  });
}

/**
 * The same files with the newest TypeScript on the registry: what `npm install -D typescript` gives a user
 * today, where the lockfile pins what CI was proved with (7.0.2 was `latest` on 7 December 2026; its
 * `tsc --init` writes `types: []`, `verbatimModuleSyntax`, `exactOptionalPropertyTypes` and
 * `noUncheckedIndexedAccess`). Checked under that version's own `tsc --init` config, and under `nodenext`
 * and `bundler` with `exactOptionalPropertyTypes` and `noUncheckedIndexedAccess`, all with `skipLibCheck:
 * false`. Installed beside the app, not into it: the value check below uses the pinned compiler's API. The
 * registry is not needed for CI to pass: when the install fails (offline), the step is skipped, and says so.
 */
function newestTypeScript(work, app, nodeFiles) {
  const dir = join(work, 'ts-latest');
  const init = join(dir, 'init');
  mkdirSync(init, { recursive: true });
  try {
    // One retry, not npm's two with backoff: offline, the default spends over a minute before giving up.
    run(
      'npm',
      ['install', '--no-audit', '--no-fund', '--fetch-retries=1', '--prefix', dir, 'typescript@latest'],
      { timeout: 120_000 },
    );
  } catch (error) {
    const reason =
      `${error.stderr ?? ''}`.split('\n').find((line) => line.startsWith('npm error')) ??
      error.message.split('\n')[0];
    log(`types with typescript@latest: SKIPPED, it could not be installed (${reason.trim()})`);
    return;
  }
  const tsc = join(dir, 'node_modules/.bin/tsc');
  const { version } = JSON.parse(readFileSync(join(dir, 'node_modules/typescript/package.json'), 'utf8'));
  rmSync(join(init, 'tsconfig.json'), { force: true });
  run(tsc, ['--init'], { cwd: init });
  const strictest = { exactOptionalPropertyTypes: true, noUncheckedIndexedAccess: true };
  const configs = {
    // As `tsc --init` wrote it, `types: []` included; only the checking of libraries and the emit changed.
    'tsconfig.latest-init.json': JSON.stringify({
      extends: join(init, 'tsconfig.json'),
      compilerOptions: { skipLibCheck: false, noEmit: true },
      files: [...nodeFiles, 'browser.ts'],
    }),
  };
  for (const resolution of ['nodenext', 'bundler']) {
    configs[`tsconfig.latest-${resolution}.json`] = tsconfig(resolution, nodeFiles, ['ES2022'], strictest);
    configs[`tsconfig.latest-browser-${resolution}.json`] = tsconfig(
      resolution,
      ['browser.ts'],
      ['ES2022', 'DOM'],
      strictest,
    );
  }
  for (const [config, text] of Object.entries(configs)) {
    writeFileSync(join(app, config), text);
    try {
      run(tsc, ['-p', config], { cwd: app });
    } catch (error) {
      fail(`typescript@${version}: tsc -p ${config} failed:\n${error.stdout}${error.stderr}`);
    }
  }
  log(
    `types with typescript@${version} (latest): its tsc --init config, nodenext and bundler with exactOptionalPropertyTypes and noUncheckedIndexedAccess, skipLibCheck false: ok`,
  );
}

/**
 * The names each entry's types let `import` (a `.mts` file) and `require` (a `.cts` file) use as values:
 * the declaration bundler turns `export type { SomeClass }` into a plain `export { SomeClass }`, which
 * type-checks `new SomeClass()` and `instanceof SomeClass` against an export the code does not have.
 * A name is a value when its declaration is one and no `export type`/`import type` on the way says
 * otherwise.
 */
function valuesTheTypesPromise(app, entries) {
  const ts = createRequire(join(app, 'package.json'))('typescript');
  const probes = entries.flatMap((entry, i) => [
    { entry, mode: 'import', file: join(app, `values-${i}.mts`), text: `import * as m from '${entry}';` },
    { entry, mode: 'require', file: join(app, `values-${i}.cts`), text: `import m = require('${entry}');` },
  ]);
  for (const { file, text } of probes) writeFileSync(file, `${text}\nexport { m };\n`);
  const program = ts.createProgram(
    probes.map(({ file }) => file),
    { module: ts.ModuleKind.Node16, moduleResolution: ts.ModuleResolutionKind.Node16, noEmit: true },
  );
  const checker = program.getTypeChecker();
  const typeOnly = (symbol) =>
    symbol.declarations?.some((declaration) => ts.isTypeOnlyImportOrExportDeclaration(declaration));
  const isValue = (exported) => {
    let symbol = exported;
    while (symbol.flags & ts.SymbolFlags.Alias) {
      if (typeOnly(symbol)) return false;
      symbol = checker.getImmediateAliasedSymbol(symbol);
      if (symbol === undefined) return false;
    }
    return (symbol.flags & ts.SymbolFlags.Value) !== 0;
  };
  return probes.map(({ entry, mode, file }) => {
    const [statement] = program.getSourceFile(file).statements;
    const specifier = mode === 'import' ? statement.moduleSpecifier : statement.moduleReference.expression;
    const module = checker.getSymbolAtLocation(specifier);
    if (module === undefined) fail(`${entry}: no types for \`${mode}\``);
    const names = checker
      .getExportsOfModule(module)
      .filter(isValue)
      .map((symbol) => symbol.name);
    return { entry, mode, names };
  });
}

async function main() {
  for (const dir of PACKAGES)
    if (!existsSync(join(root, 'packages', dir, 'dist')))
      fail(`packages/${dir} has no dist/: run npm run build first`);

  const work = reuse ?? mkdtempSync(join(tmpdir(), 'finishline-consumer-'));
  chmodSync(work, 0o755);
  const tarballs = join(work, 'tarballs');
  const app = join(work, 'app');
  let pg;
  try {
    if (reuse === undefined) {
      mkdirSync(tarballs);
      mkdirSync(app);
      // 1. Pack (already built: --ignore-scripts skips the prepack rebuild).
      const packed = PACKAGES.map((dir) => {
        const [{ filename }] = JSON.parse(
          run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', tarballs], {
            cwd: join(root, 'packages', dir),
          }),
        );
        return join(tarballs, filename);
      });
      log(`packed ${packed.length} packages`);

      // 2. A fresh app as `npm init -y` writes it (CommonJS), made an ES module by getting-started's own
      // first step, run as written: without it the snippets' `import`s and top-level `await`s fail (the
      // check wrote `"type": "module"` itself until 6 December 2026, and the docs never said to), then the
      // docs' install lines (the repository's pinned versions).
      writeFileSync(
        join(app, 'package.json'),
        JSON.stringify({ name: 'consumer-app', private: true, type: 'commonjs' }),
      );
      const setup = shellLines('docs/getting-started.md').filter((line) => line.startsWith('npm pkg set '));
      if (setup.length === 0) fail('docs/getting-started.md: no `npm pkg set type=module` step');
      for (const line of setup) run('npm', line.split(/\s+/).slice(1), { cwd: app });
      if (JSON.parse(readFileSync(join(app, 'package.json'), 'utf8')).type !== 'module')
        fail(`docs/getting-started.md: ${setup.join('; ')} does not make the app an ES module`);
      run(
        'npm',
        [
          'install',
          '--no-audit',
          '--no-fund',
          '--prefer-offline',
          ...packed,
          // React only for `@finishline/client/react`, which imports it.
          ...['kysely', 'better-sqlite3', 'pg', 'ws', 'express', 'react'].map(pinned),
        ],
        { cwd: app, env: { ...process.env, ...localPrebuildEnv(work) } },
      );
      run(
        'npm',
        [
          'install',
          '-D',
          '--no-audit',
          '--no-fund',
          '--prefer-offline',
          ...[
            'typescript',
            '@types/node',
            '@types/express',
            '@types/ws',
            '@types/pg',
            'vitest',
            'fast-check',
          ].map(pinned),
        ],
        { cwd: app },
      );
      log('installed the tarballs into a fresh app');
    }

    // 3. The docs' snippets as files of the app: TypeScript as written, JavaScript by esbuild's transform.
    const files = {
      'readme-server.ts': runnable(snippet('README.md', 'An existing Express service')),
      'server.ts': runnable(snippet('docs/getting-started.md', '## Server: an Express service')),
      'watcher.ts': snippet('docs/getting-started.md', '## Node: watch a task from a script'),
      'browser.ts': snippet('docs/getting-started.md', '## Browser: a progress bar'),
      'consumer.ts': CONSUMER_TS,
      'consumer-testing.ts': CONSUMER_TESTING_TS,
    };
    files['server-postgres.ts'] = onPostgres(files['server.ts']);
    for (const [name, text] of Object.entries(files)) {
      writeFileSync(join(app, name), `${text}\nexport {};\n`);
      const { code } = await transform(text, { loader: 'ts', format: 'esm', target: 'node20' });
      writeFileSync(join(app, name.replace(/\.ts$/, '.js')), code);
    }

    // 4. Types: strict, skipLibCheck false, node16 and bundler resolution.
    const tsc = join(app, 'node_modules/.bin/tsc');
    const nodeFiles = [
      'readme-server.ts',
      'server.ts',
      'server-postgres.ts',
      'watcher.ts',
      'consumer.ts',
      'consumer-testing.ts',
    ];
    for (const resolution of ['node16', 'bundler']) {
      writeFileSync(join(app, `tsconfig.${resolution}.json`), tsconfig(resolution, nodeFiles, ['ES2022']));
      writeFileSync(
        join(app, `tsconfig.browser-${resolution}.json`),
        tsconfig(resolution, ['browser.ts'], ['ES2022', 'DOM']),
      );
      for (const config of [`tsconfig.${resolution}.json`, `tsconfig.browser-${resolution}.json`]) {
        try {
          run(tsc, ['-p', config], { cwd: app });
        } catch (error) {
          fail(`tsc -p ${config} failed:\n${error.stdout}${error.stderr}`);
        }
      }
    }
    log('types: strict, skipLibCheck false, node16 and bundler resolution: ok');
    newestTypeScript(work, app, nodeFiles);

    // 5. Every entry point, from ESM and from CommonJS.
    const entries = [
      '@finishline/core',
      '@finishline/core/internal',
      '@finishline/sqlite',
      '@finishline/postgres',
      '@finishline/server',
      '@finishline/client',
      '@finishline/client/http',
      '@finishline/client/persist',
      '@finishline/client/react',
      '@finishline/client/sse',
      '@finishline/client/tabs',
    ];
    for (const entry of entries) {
      const esm = run(
        process.execPath,
        [
          '--input-type=module',
          '-e',
          `const m = await import('${entry}'); console.log(Object.keys(m).length);`,
        ],
        { cwd: app },
      );
      const cjs = run(process.execPath, ['-e', `console.log(Object.keys(require('${entry}')).length);`], {
        cwd: app,
      });
      if (Number(esm) === 0 || Number(esm) !== Number(cjs))
        fail(`${entry}: ${esm.trim()} ESM exports, ${cjs.trim()} CJS exports`);
    }
    // An app that imports and requires the packages runs two copies of core: an error of one must pass
    // the other's isProgressError (it failed, `instanceof` alone, until 5 December 2026).
    const crossCopy = run(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        [
          "import { createRequire } from 'node:module';",
          "const esm = await import('@finishline/core');",
          "const cjs = createRequire(process.cwd() + '/')('@finishline/core');",
          "const error = new cjs.ProgressError('task_finished', 'ended');",
          "console.log(cjs.ProgressError !== esm.ProgressError && esm.isProgressError(error, 'task_finished'));",
        ].join('\n'),
      ],
      { cwd: app },
    );
    const exportedBy = (entry, mode) => {
      const load =
        mode === 'import'
          ? `import('${entry}')`
          : `import('node:module').then((m) => m.createRequire(process.cwd() + '/')('${entry}'))`;
      const code = `console.log(JSON.stringify(Object.keys(await ${load})))`;
      return JSON.parse(run(process.execPath, ['--input-type=module', '-e', code], { cwd: app }));
    };
    const lying = valuesTheTypesPromise(app, entries)
      .map(({ entry, mode, names }) => {
        const present = exportedBy(entry, mode);
        return { entry, mode, missing: names.filter((name) => !present.includes(name)) };
      })
      .filter(({ missing }) => missing.length > 0);
    if (lying.length > 0)
      fail(
        `the types declare values the code does not export (a type-only export shipped as a value):\n${lying
          .map(({ entry, mode, missing }) => `  ${entry} (${mode}): ${missing.join(', ')}`)
          .join('\n')}`,
      );
    if (crossCopy.trim() !== 'true')
      fail(`a CommonJS ProgressError failed the ESM isProgressError: ${crossCopy}`);
    const testing = run(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        "const m = await import('@finishline/core/testing'); console.log(typeof m.describeProgressStoreContract);",
      ],
      { cwd: app },
    );
    if (testing.trim() !== 'function') fail(`@finishline/core/testing: ${testing}`);
    log(
      `imports: ${entries.length} entries from ESM and CJS, @finishline/core/testing from ESM, a CJS error passing the ESM isProgressError: ok`,
    );
    // The SQLite store's CommonJS build from a folder whose path holds a `#`: its checkpoint worker loads
    // better-sqlite3 by a path resolved from the module's URL, which tsup's shim cut at the `#` (until
    // 5 December 2026). The folder is outside the app, so a cut path finds no better-sqlite3; the store's
    // dependencies are links to the app's. Enough writes to start the worker (1,000 changed rows), then
    // its state.
    const hashed = join(work, 'a#b');
    rmSync(hashed, { recursive: true, force: true });
    const sqlite = join(app, 'node_modules/@finishline/sqlite');
    cpSync(sqlite, join(hashed, 'node_modules/@finishline/sqlite'), { recursive: true });
    const manifest = JSON.parse(readFileSync(join(sqlite, 'package.json'), 'utf8'));
    for (const name of Object.keys({ ...manifest.dependencies, ...manifest.peerDependencies })) {
      mkdirSync(dirname(join(hashed, 'node_modules', name)), { recursive: true });
      symlinkSync(join(app, 'node_modules', name), join(hashed, 'node_modules', name));
    }
    const checkpoints = run(process.execPath, ['-e', CHECKPOINT_WORKER_CJS], {
      cwd: hashed,
      timeout: 60_000,
    });
    if (checkpoints.trim() !== '{"errors":[],"worker":"running"}')
      fail(`the SQLite store's CommonJS build under a path with a "#": ${checkpoints}`);
    log('SQLite CommonJS build under a path with a "#": the checkpoint worker runs');
    // The `finishline` bin as the install linked it (a bin npm found no file for is silently not linked).
    let help;
    try {
      help = run('npx', ['--no-install', 'finishline', '--help'], { cwd: app });
    } catch (error) {
      fail(`npx finishline --help exited ${error.status}:\n${error.stdout}${error.stderr}`);
    }
    if (!help.startsWith('usage: finishline watch')) fail(`npx finishline --help printed:\n${help}`);
    log('bin: npx finishline --help exits 0 with the usage');
    // The version is read from the installed package's manifest at run time (cli-main.ts): it has to be found
    // from the bin's place in node_modules, not only from a clone.
    const { version } = JSON.parse(
      readFileSync(join(app, 'node_modules/@finishline/client/package.json'), 'utf8'),
    );
    let printed;
    try {
      printed = run('npx', ['--no-install', 'finishline', '--version'], { cwd: app }).trim();
    } catch (error) {
      fail(`npx finishline --version exited ${error.status}:\n${error.stdout}${error.stderr}`);
    }
    if (printed !== version)
      fail(`npx finishline --version printed ${JSON.stringify(printed)}, not ${version}`);
    log(`bin: npx finishline --version prints ${version}`);
    writeFileSync(join(app, 'closed-pipe.mjs'), CLOSED_PIPE_MJS);
    const closedPipe = JSON.parse(run(process.execPath, ['closed-pipe.mjs'], { cwd: app, timeout: 30_000 }));
    if (closedPipe.code !== 141 || closedPipe.stderr !== '')
      fail(`finishline watch with its output closed (| head -1): ${JSON.stringify(closedPipe)}`);
    log('bin: finishline watch | head -1 stops quietly with 141');

    // 6. The browser bundle: no server code.
    const bundle = await build({
      absWorkingDir: app,
      entryPoints: ['browser.ts'],
      bundle: true,
      minify: true,
      format: 'esm',
      platform: 'browser',
      write: false,
      metafile: true,
      logLevel: 'silent',
    });
    const inputs = Object.keys(bundle.metafile.inputs);
    const server = inputs.filter((input) =>
      /node_modules\/(@finishline\/(server|sqlite|postgres)|ws|pg|kysely|better-sqlite3|prom-client|express)\/|^node:/.test(
        input,
      ),
    );
    if (server.length > 0) fail(`the browser bundle holds server code:\n${server.join('\n')}`);
    const bytes = bundle.outputFiles[0].contents;
    log(
      `browser bundle: ${inputs.length} inputs, no server code, ${bytes.byteLength} B minified, ${gzipSync(bytes).byteLength} B gzipped`,
    );

    // 7. End to end: the README on SQLite, getting-started on SQLite and on Postgres.
    await endToEnd(app, 'README (SQLite)', 'readme-server.js');
    await endToEnd(app, 'getting-started (SQLite)', 'server.js');
    pg = await postgres();
    await endToEnd(app, 'getting-started (Postgres)', 'server-postgres.js', {
      DATABASE_URL: pg.url,
      PG_SCHEMA: `consumer_${process.pid}_${Date.now()}`,
    });
    log(`consumer check: ok in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  } finally {
    await pg?.stop();
    if (keep) log(`kept ${work}`);
    else rmSync(work, { recursive: true, force: true });
  }
}

main().catch((error) => {
  process.stderr.write(`consumer check FAILED: ${error.message}\n`);
  process.exit(1);
});
