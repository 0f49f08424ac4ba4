/** What the browser tests start: Chromium (Debian's, or CHROMIUM_PATH) and the built server on its own. */
import { fileURLToPath } from 'node:url';
import { type Browser, chromium } from 'playwright-core';
import { type ServerProcess, spawnServer } from '../../src/server/replica-set.js';

/** The built server (`npm run build`), which the tests run. */
export const serverScript = fileURLToPath(new URL('../../dist/server.mjs', import.meta.url));

/** A headless Chromium for the tests' pages. */
export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
  });
}

/**
 * The built server (`dist/server.mjs`) as one process with `args`, on SQLite and the demo cluster whatever the
 * environment says (no DATABASE_URL, KUBECONFIG or SESSION_SECRET).
 */
export function spawnSingleServer(args: string[]): Promise<ServerProcess> {
  return spawnServer({
    script: serverScript,
    args,
    env: { DATABASE_URL: '', KUBECONFIG: '', SESSION_SECRET: '' },
  });
}
