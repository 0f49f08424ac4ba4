/**
 * Several clusters, template delete, the audit page's sign-ins, and error bodies that are not JSON on every
 * read and write of the page — in real Chromium against the built server (one process, SQLite, the demo
 * serving its two clusters `demo` and `demo-east`). Screenshots go to test-artifacts/ (and SCREENS_DIR).
 */
import { copyFileSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ServerProcess } from '../../src/server/replica-set.js';
import { launchChromium, spawnSingleServer } from './launch.js';
import { loginPage } from './login.js';

const root = fileURLToPath(new URL('../../', import.meta.url));
const artifacts = path.join(root, 'test-artifacts');
const screensDir = process.env.SCREENS_DIR;
const UNAVAILABLE = 'the server is unavailable (HTTP 502: bad gateway); try again';

let dataDir: string;
let server: ServerProcess;
let browser: Browser;

async function shot(page: Page, name: string): Promise<void> {
  const file = path.join(artifacts, `clusters-${name}.png`);
  await page.screenshot({ path: file });
  if (screensDir !== undefined) copyFileSync(file, path.join(screensDir, `${name}.png`));
}

beforeAll(async () => {
  mkdirSync(artifacts, { recursive: true });
  if (screensDir !== undefined) mkdirSync(screensDir, { recursive: true });
  dataDir = mkdtempSync(path.join(tmpdir(), 'knm-clusters-'));
  const args = ['--port', '0', '--demo-port', '0', '--demo-latency-ms', '100', '--data-dir', dataDir];
  server = await spawnSingleServer(args);
  browser = await launchChromium();
});
afterAll(async () => {
  await browser?.close();
  await server?.stop();
  rmSync(dataDir, { recursive: true, force: true });
});

const rowNames = (page: Page) =>
  page.locator('#nodes tbody tr').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-node')));

describe('kube-node-mgr clusters and the rest of issue 15 (one server)', () => {
  it('picks a cluster: nodes, batches, task list and audit are that cluster’s', async () => {
    const page = await loginPage(browser, server.url, 'demo');
    await page.waitForSelector('#cluster-picker:not([hidden])');
    expect(await page.locator('#cluster option').allTextContents()).toEqual(['demo', 'demo-east']);
    expect(await page.inputValue('#cluster')).toBe('demo');
    await page.selectOption('#cluster', 'demo-east');
    await page.waitForSelector('#nodes tbody tr[data-node="worker-7"]', { state: 'detached' });
    await page.waitForSelector('#nodes tbody tr[data-node="worker-5"]');
    expect(await rowNames(page)).not.toContain('worker-6');
    // A cordon in demo-east.
    await page.check('tr[data-node="worker-1"] input[type=checkbox]');
    await page.click('button[data-op=cordon]');
    await page.fill('#op-form input[name=reason]', 'east rack 4');
    await page.click('#op-submit');
    await page.waitForSelector('#progress-dialog[data-state=complete]', { timeout: 20_000 });
    const taskId = (await page.getAttribute('#progress-dialog', 'data-task-id')) ?? '';
    await page.click('#progress-close');
    await page.waitForSelector('tr[data-node="worker-1"] .cordon-note:has-text("east rack 4")');
    await page.waitForSelector(`#tasks tr[data-task="${taskId}"]`);
    await shot(page, 'cluster-picker');
    // The picker is remembered across a reload.
    await page.reload();
    await page.waitForSelector('#nodes tbody tr[data-node="worker-5"]');
    expect(await page.inputValue('#cluster')).toBe('demo-east');
    // Back in demo: worker-1 is not cordoned there, and the task list and audit hold none of demo-east's.
    await page.selectOption('#cluster', 'demo');
    await page.waitForSelector('#nodes tbody tr[data-node="worker-7"]');
    expect(await page.locator('tr[data-node="worker-1"] .cordon-note').count()).toBe(0);
    expect(await page.textContent('tr[data-node="worker-1"] td.status')).toBe('Ready');
    await page.waitForSelector(`#tasks tr[data-task="${taskId}"]`, { state: 'detached' });
    await page.click('#nav-audit');
    await page.waitForFunction(() =>
      document.querySelector('#audit-scope')?.textContent?.includes('cluster demo)'),
    );
    expect(await page.locator(`#audit tr[data-task="${taskId}"]`).count()).toBe(0);
    await page.selectOption('#cluster', 'demo-east');
    await page.waitForSelector(`#audit tr[data-task="${taskId}"]`);
    expect(await page.textContent(`#audit tr[data-task="${taskId}"]`)).toContain('east rack 4');
    // The sign-ins are on the audit page too.
    await page.waitForSelector('#audit-events tr[data-action="login"]');
    expect(await page.textContent('#audit-events tbody')).toContain('signed in');
    await page.context().close();
  });

  it('deletes a template from the dialog (its author), and an operator cannot delete another’s', async () => {
    const page = await loginPage(browser, server.url, 'ops');
    await page.check('tr[data-node="worker-2"] input[type=checkbox]');
    await page.click('button[data-op=label_add]');
    await page.fill('#op-form input[name=key]', 'team');
    await page.fill('#op-form input[name=value]', 'blue');
    await page.fill('#op-form input[name=template-name]', 'team blue');
    await page.click('#template-save');
    await page.waitForFunction(
      () => (document.querySelector('#template-select') as HTMLSelectElement).value === 'team blue',
    );
    expect(await page.isEnabled('#template-delete')).toBe(true);
    await page.click('#template-delete');
    await page.waitForFunction(() => !document.querySelector('#template-select option[value="team blue"]'));
    expect(await page.isDisabled('#template-delete')).toBe(true);
    await page.click('#op-cancel');
    await page.context().close();
    // One saved by demo (an admin) is not ops's to delete: the button stays disabled for ops.
    const admin = await loginPage(browser, server.url, 'demo');
    await admin.check('tr[data-node="worker-2"] input[type=checkbox]');
    await admin.click('button[data-op=label_add]');
    await admin.fill('#op-form input[name=key]', 'owner');
    await admin.fill('#op-form input[name=value]', 'admin');
    await admin.fill('#op-form input[name=template-name]', 'admin owned');
    await admin.click('#template-save');
    await admin.waitForFunction(
      () => (document.querySelector('#template-select') as HTMLSelectElement).value === 'admin owned',
    );
    await admin.context().close();
    const ops = await loginPage(browser, server.url, 'ops');
    await ops.check('tr[data-node="worker-2"] input[type=checkbox]');
    await ops.click('button[data-op=label_add]');
    await ops.waitForSelector('#template-select option[value="admin owned"]', { state: 'attached' });
    await ops.selectOption('#template-select', 'admin owned');
    expect(await ops.isDisabled('#template-delete')).toBe(true);
    await ops.context().close();
  });

  // Review of 6 December 2026: Enter in the template's name field submitted the operation's form, so the
  // batch ran on the selected nodes (no blast radius to tick for a label) instead of the template being saved.
  it('Enter in the template name saves the template; it does not run the batch', async () => {
    const page = await loginPage(browser, server.url, 'ops');
    let batches = 0;
    page.on('request', (request) => {
      if (request.url().endsWith('/api/batch')) batches++;
    });
    await page.check('tr[data-node="worker-4"] input[type=checkbox]');
    await page.click('button[data-op=label_add]');
    await page.fill('#op-form input[name=key]', 'team');
    await page.fill('#op-form input[name=value]', 'green');
    await page.fill('#op-form input[name=template-name]', 'team green');
    await page.press('#op-form input[name=template-name]', 'Enter');
    await page.waitForFunction(
      () => (document.querySelector('#template-select') as HTMLSelectElement).value === 'team green',
    );
    expect(batches).toBe(0);
    expect(await page.getAttribute('#progress-dialog', 'open')).toBeNull();
    expect(await page.getAttribute('#op-dialog', 'open')).not.toBeNull();
    await page.click('#op-cancel');
    await page.context().close();
  });

  it('shows a proxy’s plain-text 502 readably on every read and write of the page', async () => {
    const page = await loginPage(browser, server.url, 'demo');
    // From here every API call answers as a dead replica behind the launcher's proxy does.
    await page.route('**/api/**', (route) =>
      route.fulfill({ status: 502, contentType: 'text/plain', body: 'bad gateway' }),
    );
    const expectMessage = async (selector: string, prefix: string) => {
      await page.waitForFunction((s) => (document.querySelector(s)?.textContent ?? '') !== '', selector);
      expect(await page.textContent(selector)).toBe(`${prefix}${UNAVAILABLE}`);
    };
    await page.click('#refresh');
    await expectMessage('#nodes-error', 'Could not load nodes: ');
    await page.selectOption('#cluster', 'demo-east');
    // A cluster change re-reads the task list at once.
    await expectMessage('#tasks-error', 'Could not load tasks: ');
    await page.click('#nav-audit');
    await expectMessage('#audit-error', 'Could not load the audit log: ');
    await expectMessage('#audit-events-error', 'Could not load sign-ins and cancels: ');
    await page.click('#nav-nodes');
    await page.unroute('**/api/**');
    await page.selectOption('#cluster', 'demo');
    await page.waitForSelector('#nodes tbody tr[data-node="worker-7"]');
    await page.route('**/api/**', (route) =>
      route.fulfill({ status: 502, contentType: 'text/plain', body: 'bad gateway' }),
    );
    await page.check('tr[data-node="worker-3"] input[type=checkbox]');
    await page.click('button[data-op=taint_add]');
    await expectMessage('#op-error', 'Could not load templates: ');
    await page.fill('#op-form input[name=key]', 'x');
    await page.click('#op-submit');
    await page.waitForFunction((m) => document.querySelector('#op-error')?.textContent === m, UNAVAILABLE);
    await page.click('#op-cancel');
    // A reload: the session read fails, the login page shows; the login itself says the same words, and
    // so does the cluster list once login works again.
    await page.reload();
    await page.waitForSelector('#login-form');
    await page.fill('#login-form input[name=username]', 'demo');
    await page.fill('#login-form input[name=password]', 'demo');
    await page.click('#login-form button[type=submit]');
    await expectMessage('#login-error', '');
    await page.unroute('**/api/**');
    await page.route('**/api/clusters', (route) =>
      route.fulfill({ status: 502, contentType: 'text/plain', body: 'bad gateway' }),
    );
    await page.click('#login-form button[type=submit]');
    await expectMessage('#clusters-error', 'Could not load the clusters (showing the default one): ');
    await page.waitForSelector('#nodes tbody tr[data-node="worker-7"]');
    await page.context().close();
  });
});
