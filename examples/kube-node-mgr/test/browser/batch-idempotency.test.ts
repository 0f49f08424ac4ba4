/**
 * The page's `Idempotency-Key` in real Chromium against the built server (one process, SQLite): the answer to
 * the first `POST /api/batch` is lost after the server started the batch (the connection reset on its way
 * back); Run again sends the same key, gets the same batch answered again (`Idempotent-Replayed: true`) and
 * shows it, and the server holds one batch. Until 6 December 2026 the page sent no key and started two.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { ServerProcess } from '../../src/server/replica-set.js';
import { launchChromium, spawnSingleServer } from './launch.js';
import { loginPage } from './login.js';

let dataDir: string;
let server: ServerProcess;
let browser: Browser;

beforeAll(async () => {
  dataDir = mkdtempSync(path.join(tmpdir(), 'knm-idem-'));
  server = await spawnSingleServer(['--port', '0', '--demo-port', '0', '--data-dir', dataDir]);
  browser = await launchChromium();
});
afterAll(async () => {
  await browser?.close();
  await server?.stop();
  if (dataDir !== undefined) rmSync(dataDir, { recursive: true, force: true });
});

it('Run again after a lost answer shows the batch the first request started, and the server holds one', async () => {
  const page = await loginPage(browser, server.url, 'ops');
  const keys: (string | undefined)[] = [];
  let lost: { taskId: string } | undefined;
  await page.route('**/api/batch', async (route) => {
    keys.push(route.request().headers()['idempotency-key']);
    if (lost !== undefined) return route.continue();
    // The server answers (the batch starts); the answer never reaches the page.
    const answer = await route.fetch();
    expect(answer.status()).toBe(202);
    lost = (await answer.json()) as { taskId: string };
    await route.abort('connectionreset');
  });
  for (const name of ['worker-1', 'worker-2'])
    await page.check(`tr[data-node="${name}"] input[type=checkbox]`);
  await page.click('button[data-op=cordon]');
  await page.fill('#op-form input[name=reason]', 'lost answer');
  await page.click('#op-submit');
  await page.waitForFunction(() =>
    /network error/.test(document.querySelector('#op-error')?.textContent ?? ''),
  );
  expect(await page.isVisible('#op-dialog')).toBe(true);

  const replayed = page.waitForResponse((r) => r.url().endsWith('/api/batch'));
  await page.click('#op-submit');
  expect((await replayed).headers()['idempotent-replayed']).toBe('true');
  await page.waitForSelector('#progress-dialog[open][data-task-id]');
  expect(await page.getAttribute('#progress-dialog', 'data-task-id')).toBe(lost?.taskId);
  expect(keys).toHaveLength(2);
  expect(keys[0]).toMatch(/^[0-9a-f]{32}$/);
  expect(keys[1]).toBe(keys[0]);

  const tasks = await page.evaluate(async () => {
    const res = await fetch('/api/tasks?scope=all&limit=50', { credentials: 'same-origin' });
    return ((await res.json()) as { tasks: { id: string }[] }).tasks.map((t) => t.id);
  });
  expect(tasks).toEqual([lost?.taskId]);
  await page.context().close();
});
