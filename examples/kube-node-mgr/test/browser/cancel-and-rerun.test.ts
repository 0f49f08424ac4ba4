/**
 * A cancel and a rerun in real Chromium against the built server (one process, SQLite, the demo cluster slow
 * enough to catch a batch mid-request). Both failed before their fix (review of 7 December 2026):
 * - right after a cancel, the node table showed the batch's nodes free while the batch, finishing the
 *   request it had sent, still held their locks (a batch on them got `nodes_locked`); it shows them held by
 *   the cancelled batch until it has stopped, then free without Refresh;
 * - "Resume remaining" of a batch one of whose nodes was deleted since (`kubectl delete node`) was refused
 *   for that node, the dialog sending the user to the node table for the others; it runs on the nodes that
 *   still exist and says which it skipped.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { ServerProcess } from '../../src/server/replica-set.js';
import { launchChromium, spawnSingleServer } from './launch.js';
import { loginPage } from './login.js';

/** Each demo API call's delay: a cancelled batch holds its locks until its call in flight has answered. */
const LATENCY_MS = 2500;

let dataDir: string;
let server: ServerProcess;
let browser: Browser;

beforeAll(async () => {
  dataDir = mkdtempSync(path.join(tmpdir(), 'knm-cancel-'));
  server = await spawnSingleServer([
    ...['--port', '0', '--demo-port', '0', '--demo-latency-ms', String(LATENCY_MS)],
    ...['--concurrency', '1', '--data-dir', dataDir],
  ]);
  browser = await launchChromium();
});
afterAll(async () => {
  await browser?.close();
  await server?.stop();
  if (dataDir !== undefined) rmSync(dataDir, { recursive: true, force: true });
});

it('shows a cancelled batch’s nodes held until it has stopped, then resumes it on the nodes that still exist', async () => {
  const demoUrl = /\bdemo demo cluster at (http:\/\/\S+)/.exec(server.output())?.[1];
  expect(demoUrl).toBeDefined();
  const page = await loginPage(browser, server.url, 'ops');
  for (const name of ['worker-1', 'worker-2', 'worker-3'])
    await page.check(`tr[data-node="${name}"] input[type=checkbox]`);
  await page.click('button[data-op=label_add]');
  await page.fill('#op-form input[name=key]', 'resumed');
  await page.fill('#op-form input[name=value]', 'yes');
  await page.click('#op-submit');
  // Cancelled right after its first node: its next node's read is on its way (LATENCY_MS).
  await page.waitForFunction(
    () => Number(document.querySelector('#progress-count')?.textContent?.split('/')[0]) >= 1,
    undefined,
    { timeout: 30_000 },
  );
  const cancelled = (await page.getAttribute('#progress-dialog', 'data-task-id')) ?? '';
  await page.click('#progress-cancel');
  await page.waitForSelector('#progress-dialog[data-state=cancelled]', { timeout: 10_000 });
  // The table shows the nodes held by the cancelled batch (a batch on them is refused meanwhile)…
  await page.waitForSelector('tr[data-node="worker-2"] .lock.stopping', { timeout: 10_000 });
  expect(await page.textContent('tr[data-node="worker-2"] .lock')).toBe(
    `held by ops's cancelled task ${cancelled.slice(0, 8)} until it has stopped`,
  );
  // …then free once it has let go, without Refresh.
  await page.waitForFunction(() => document.querySelectorAll('#nodes .lock').length === 0, undefined, {
    timeout: 15_000,
  });

  // worker-3, never reached, is deleted from the cluster since.
  expect((await fetch(`${demoUrl}/api/v1/nodes/worker-3`, { method: 'DELETE' })).status).toBe(200);
  await page.waitForSelector('#progress-resume:not([hidden])');
  await page.click('#progress-resume');
  await page.waitForFunction((id) => {
    const d = document.querySelector('#progress-dialog') as HTMLElement | null;
    return d?.dataset.taskId !== undefined && d.dataset.taskId !== id;
  }, cancelled);
  expect(await page.isVisible('#progress-rerun-error')).toBe(false);
  expect(await page.textContent('#progress-rerun-note')).toBe(
    'Skipped worker-3: it no longer exists in the cluster.',
  );
  await page.waitForSelector('#progress-dialog[data-state=complete]', { timeout: 30_000 });
  expect(await page.locator('#ok-list li').allTextContents()).toEqual([expect.stringContaining('worker-2')]);
  // Kept open, the note with it (a success closes its dialog after 3 s).
  await page.waitForTimeout(3500);
  expect(await page.isVisible('#progress-rerun-note')).toBe(true);
  await page.context().close();
});
