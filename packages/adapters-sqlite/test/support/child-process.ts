import type { ChildProcess } from 'node:child_process';
import { fork } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import type { ChildMessage, ChildRequest } from '../fixtures/child-store.js';

const packageDir = fileURLToPath(new URL('../../', import.meta.url));
const requireFromPackage = createRequire(join(packageDir, 'package.json'));
/** The node_modules directory better-sqlite3 is installed in. */
const modulesDir = dirname(dirname(requireFromPackage.resolve('better-sqlite3/package.json')));

/**
 * Bundles `fixtures/child-store.ts` (with core's sources) into one ESM file Node runs as it is: tsx and
 * type stripping are not available on Node 20. better-sqlite3 stays external, imported by absolute path
 * because the bundle lives in a temp directory.
 */
export async function bundleChildScript(): Promise<{ path: string; remove(): void }> {
  const directory = mkdtempSync(join(tmpdir(), 'finishline-sqlite-child-'));
  const outfile = join(directory, 'child-store.mjs');
  const betterSqlite3 = requireFromPackage.resolve('better-sqlite3');
  await build({
    entryPoints: [join(packageDir, 'test/fixtures/child-store.ts')],
    outfile,
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    logLevel: 'silent',
    alias: {
      '@finishline/core': join(packageDir, '../progress-core/src/index.ts'),
      '@finishline/core/internal': join(packageDir, '../progress-core/src/internal.ts'),
    },
    plugins: [
      {
        name: 'better-sqlite3-by-path',
        setup(plugin) {
          plugin.onResolve({ filter: /^better-sqlite3$/ }, () => ({ path: betterSqlite3, external: true }));
        },
      },
    ],
  });
  return { path: outfile, remove: () => rmSync(directory, { recursive: true, force: true }) };
}

/** A forked child running one {@link ChildRequest}, with its messages queued for the test to take. */
export class StoreChild {
  readonly process: ChildProcess;
  readonly messages: ChildMessage[] = [];
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  #waiters: (() => void)[] = [];

  constructor(script: string, request: ChildRequest) {
    this.process = fork(script, [JSON.stringify(request)], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      // The bundle lives in a temp directory, where the store's checkpoint worker could not resolve
      // better-sqlite3: the child checkpointed inline in its commits, unlike any real process.
      env: { ...process.env, NODE_PATH: modulesDir },
    });
    this.process.on('message', (message) => {
      this.messages.push(message as ChildMessage);
      for (const wake of this.#waiters.splice(0)) wake();
    });
    this.exited = new Promise((resolve) => {
      this.process.once('exit', (code, signal) => {
        resolve({ code, signal });
        for (const wake of this.#waiters.splice(0)) wake();
      });
    });
  }

  /** Waits (at most `timeoutMs`) for the first message matching `predicate`. */
  async waitFor<T extends ChildMessage>(
    predicate: (message: ChildMessage) => message is T,
    timeoutMs = 20_000,
  ): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const error = this.messages.find((message) => message.type === 'error');
      if (error) throw new Error(`child failed: ${error.type === 'error' ? error.message : ''}`);
      const found = this.messages.find(predicate);
      if (found) return found;
      if (this.process.exitCode !== null || this.process.signalCode !== null) {
        throw new Error(
          `child exited (${this.process.exitCode ?? this.process.signalCode}) before the message`,
        );
      }
      const remaining = deadline - Date.now();
      if (remaining <= 0) throw new Error(`no matching message from the child within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.min(remaining, 200));
        this.#waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  /** Kills the child if it still runs and waits for it to exit. */
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    if (this.process.exitCode === null && this.process.signalCode === null) this.process.kill(signal);
    await this.exited;
  }
}

/** Narrowing helper for {@link StoreChild.waitFor}. */
export function messageOfType<K extends ChildMessage['type']>(type: K) {
  return (message: ChildMessage): message is Extract<ChildMessage, { type: K }> => message.type === type;
}

/** Re-export for tests that build requests. */
export type { ChildMessage, ChildRequest };
