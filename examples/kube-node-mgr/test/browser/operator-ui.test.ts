/**
 * Issue 15 in real Chromium against the built server (one process, SQLite): the progress dialog an operator
 * needs (elapsed, rate, ETA, pending nodes, amber partial failure, retry failed, interrupted explained,
 * reconnecting…), errors that are not JSON, the blast-radius confirmation, node locks, the live task list
 * and node table, roles, cordon notes, the audit page, dialogs that hide their unused fields, and 360 /
 * 420 px screens without horizontal scrolling. Screenshots go to test-artifacts/ (and SCREENS_DIR).
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
const WORKERS = ['worker-1', 'worker-2', 'worker-3', 'worker-4', 'worker-5', 'worker-6', 'worker-7'];
const LATENCY_MS = 300;

let dataDir: string;
let server: ServerProcess;
let browser: Browser;
let port: number;

function serverArgs(portArg: number): string[] {
  return [
    ...['--port', String(portArg), '--demo-port', '0', '--demo-latency-ms', String(LATENCY_MS)],
    ...['--concurrency', '1', '--demo-fail-nodes', 'spot-2', '--lease-ttl-ms', '2000', '--data-dir', dataDir],
  ];
}

async function start(portArg: number): Promise<ServerProcess> {
  return spawnSingleServer(serverArgs(portArg));
}

async function shot(page: Page, name: string): Promise<void> {
  const file = path.join(artifacts, `ops-${name}.png`);
  await page.screenshot({ path: file });
  if (screensDir !== undefined) copyFileSync(file, path.join(screensDir, `${name}.png`));
}

/** The shared login, against this file's server. */
const login = (user: string, viewport = { width: 1280, height: 900 }) =>
  loginPage(browser, server.url, user, viewport);

async function select(page: Page, names: string[]): Promise<void> {
  for (const name of names) await page.check(`tr[data-node="${name}"] input[type=checkbox]`);
}

async function noHorizontalScroll(page: Page): Promise<void> {
  const { scroll, client } = await page.evaluate(() => ({
    scroll: document.documentElement.scrollWidth,
    client: document.documentElement.clientWidth,
  }));
  expect(scroll).toBeLessThanOrEqual(client);
}

beforeAll(async () => {
  mkdirSync(artifacts, { recursive: true });
  if (screensDir !== undefined) mkdirSync(screensDir, { recursive: true });
  dataDir = mkdtempSync(path.join(tmpdir(), 'knm-ops-'));
  server = await start(0);
  port = Number(new URL(server.url).port);
  browser = await launchChromium();
});
afterAll(async () => {
  await browser?.close();
  await server?.stop();
  rmSync(dataDir, { recursive: true, force: true });
});

describe('kube-node-mgr operator UI (one server)', () => {
  it('hides the fields an operation does not use', async () => {
    const page = await login('ops');
    await select(page, ['worker-1']);
    await page.click('button[data-op=cordon]');
    for (const field of ['key', 'value', 'effect']) {
      expect(await page.isVisible(`#op-form label[data-field=${field}]`), field).toBe(false);
    }
    expect(await page.isVisible('#op-form label[data-field=reason]')).toBe(true);
    await page.click('#op-cancel');
    await page.click('button[data-op=label_add]');
    expect(await page.isVisible('#op-form label[data-field=effect]')).toBe(false);
    expect(await page.isVisible('#op-form label[data-field=key]')).toBe(true);
    await page.click('#op-cancel');
    await page.context().close();
  });

  it('saves a taint as a template and fills the dialog from it', async () => {
    const page = await login('ops');
    await select(page, ['gpu-2']);
    await page.click('button[data-op=taint_add]');
    await page.fill('#op-form input[name=key]', 'example.com/maint');
    await page.fill('#op-form input[name=value]', 'planned');
    await page.selectOption('#op-form select[name=effect]', 'PreferNoSchedule');
    await page.fill('#op-form input[name=template-name]', 'maintenance window');
    await page.click('#template-save');
    await page.waitForSelector('#template-select option[value="maintenance window"]', { state: 'attached' });
    await page.click('#op-cancel');
    await page.click('button[data-op=taint_add]');
    await page.waitForSelector('#template-select option[value="maintenance window"]', { state: 'attached' });
    expect(await page.inputValue('#op-form input[name=key]')).toBe('');
    await page.selectOption('#template-select', 'maintenance window');
    expect(await page.inputValue('#op-form input[name=key]')).toBe('example.com/maint');
    expect(await page.inputValue('#op-form input[name=value]')).toBe('planned');
    expect(await page.inputValue('#op-form select[name=effect]')).toBe('PreferNoSchedule');
    // Label templates are not offered for taints.
    await page.click('#op-cancel');
    await page.click('button[data-op=label_add]');
    await page.waitForFunction(() => document.querySelectorAll('#template-select option').length === 1);
    await page.click('#op-cancel');
    await page.context().close();
  });

  it('shows elapsed, rate, ETA and the pending nodes mid-job, the live task row, then the new taints without Refresh', async () => {
    const page = await login('ops');
    await select(page, WORKERS);
    await page.click('button[data-op=taint_add]');
    await page.fill('#op-form input[name=key]', 'live');
    await page.click('#op-submit');
    await page.waitForSelector('#progress-dialog[open][data-task-id]');
    const taskId = (await page.getAttribute('#progress-dialog', 'data-task-id')) ?? '';
    await page.waitForFunction(
      () => Number(document.querySelector('#progress-count')?.textContent?.split('/')[0]) >= 3,
    );
    await page.waitForFunction(() => document.querySelector('#progress-rate')?.textContent !== '—');
    expect(await page.textContent('#progress-rate')).toMatch(/nodes\/s$/);
    expect(await page.textContent('#progress-eta')).toMatch(/\d+ s|min/);
    expect(await page.textContent('#progress-elapsed')).toMatch(/^\d+ s$/);
    const pending = await page.locator('#pending-list li').allTextContents();
    expect(pending.length).toBeGreaterThan(0);
    expect(pending.length).toBeLessThanOrEqual(4);
    await shot(page, 'dialog-mid-job');
    // Close the dialog mid-job: the task list shows the job moving, then its end, without a reload.
    await page.click('#progress-close');
    const row = `#tasks tr[data-task="${taskId}"]`;
    await page.waitForSelector(`${row} td.status.st-running`);
    const first = await page.textContent(`${row} td.result`);
    await page.waitForFunction(
      ([sel, before]) => document.querySelector(`${sel} td.result`)?.textContent !== before,
      [row, first] as const,
      { timeout: 10_000 },
    );
    await page.waitForSelector(`${row} td.status.st-completed`, { timeout: 20_000 });
    for (const name of WORKERS) {
      await page.waitForSelector(`tr[data-node="${name}"] .chip.taint:text-is("live:NoSchedule")`, {
        timeout: 5000,
      });
    }
    await page.context().close();
  });

  it('shows a partial failure in amber everywhere and retries the failed node as a linked task', async () => {
    const page = await login('ops');
    await select(page, ['worker-1', 'spot-2']);
    await page.click('button[data-op=label_add]');
    await page.fill('#op-form input[name=key]', 'partial');
    await page.fill('#op-form input[name=value]', 'yes');
    await page.click('#op-submit');
    await page.waitForSelector('#progress-dialog[data-state=partial]', { timeout: 30_000 });
    const firstId = (await page.getAttribute('#progress-dialog', 'data-task-id')) ?? '';
    expect(await page.textContent('#progress-status')).toBe('completed, 1 failed');
    const color = await page.$eval('#progress-status', (e) => getComputedStyle(e).color);
    expect(color).toBe('rgb(180, 83, 9)');
    expect(await page.textContent('#progress-retry')).toBe('Retry failed (1)');
    expect(await page.isVisible('#progress-resume')).toBe(false);
    await page.waitForSelector(
      `#tasks tr[data-task="${firstId}"] td.st-partial:text-is("completed, 1 failed")`,
    );
    await shot(page, 'partial-failure');
    await page.click('#progress-retry');
    await page.waitForFunction((id) => {
      const d = document.querySelector('#progress-dialog') as HTMLElement | null;
      return d?.dataset.taskId !== undefined && d.dataset.taskId !== id;
    }, firstId);
    await page.waitForSelector('#progress-link:not([hidden])');
    expect(await page.textContent('#progress-link')).toContain(
      `Retry of the failed nodes of task ${firstId.slice(0, 8)}`,
    );
    await page.waitForSelector('#progress-dialog[data-state=failed]', { timeout: 30_000 });
    expect(await page.locator('#fail-list li').allTextContents()).toEqual([
      expect.stringContaining('spot-2'),
    ]);
    await page.context().close();
  });

  it('explains an interrupted job in operator words, shows reconnecting…, and resumes the untouched nodes', async () => {
    const page = await login('ops');
    await select(page, WORKERS);
    await page.click('button[data-op=label_add]');
    await page.fill('#op-form input[name=key]', 'crash');
    await page.fill('#op-form input[name=value]', '1');
    await page.click('#op-submit');
    await page.waitForFunction(
      () => Number(document.querySelector('#progress-count')?.textContent?.split('/')[0]) >= 2,
    );
    const taskId = (await page.getAttribute('#progress-dialog', 'data-task-id')) ?? '';
    server.child.kill('SIGKILL');
    await new Promise((r) => server.child.once('exit', r));
    await page.waitForSelector('#connection:not([hidden])', { timeout: 10_000 });
    expect(await page.textContent('#connection')).toBe('reconnecting…');
    expect(await page.textContent('#progress-warning')).toMatch(/Reconnecting/);
    await shot(page, 'reconnecting');
    server = await start(port);
    await page.waitForSelector('#progress-dialog[data-state=interrupted]', { timeout: 30_000 });
    expect(await page.getAttribute('#progress-dialog', 'data-task-id')).toBe(taskId);
    expect(await page.textContent('#progress-status')).toBe(
      'interrupted: the server running this job stopped',
    );
    // The nodes without a result: those the killed server had not reached, and any it labelled just before
    // the kill, its result never recorded, which the dialog reads back and lists apart (none here: the
    // restarted server's demo cluster starts afresh).
    await page.waitForTimeout(500);
    const explain = (await page.textContent('#progress-explain')) ?? '';
    const unrecorded = await page.locator('#pending-list li').evaluateAll((lis) =>
      lis.map((li) => ({
        node: li.getAttribute('data-node') ?? '',
        changed: li.classList.contains('already-changed'),
      })),
    );
    const notChanged = unrecorded.filter((n) => !n.changed).map((n) => n.node);
    const changed = unrecorded.filter((n) => n.changed).map((n) => n.node);
    expect(notChanged.length).toBeGreaterThan(0);
    expect(explain).toContain(
      `${notChanged.length} ${notChanged.length === 1 ? 'node was' : 'nodes were'} not changed: ${notChanged.join(', ')}`,
    );
    if (changed.length > 0) expect(explain).toContain(`without a recorded result`);
    expect(explain).not.toMatch(/lease/);
    expect(await page.textContent('#pending-title')).toBe(
      changed.length > 0 ? 'Without a recorded result' : 'Not changed',
    );
    // The badge goes once the socket is back (the client's backoff may still be waiting: the final state can
    // come first, over the client's HTTP fallback).
    await page.waitForSelector('#connection', { state: 'hidden', timeout: 40_000 });
    // Back online, the node table recovers by itself (its error was from the minutes the server was down).
    await page.waitForFunction(() => document.querySelector('#nodes-error')?.textContent === '', undefined, {
      timeout: 20_000,
    });
    // …and no longer shows the interrupted task's locks.
    await page.waitForFunction(() => document.querySelectorAll('#nodes .lock').length === 0, undefined, {
      timeout: 20_000,
    });
    await shot(page, 'interrupted');
    expect(await page.textContent('#progress-resume')).toBe(`Resume remaining (${unrecorded.length})`);
    await page.click('#progress-resume');
    await page.waitForSelector('#progress-link:not([hidden])');
    await page.waitForSelector('#progress-dialog[data-state=complete]', { timeout: 30_000 });
    expect((await page.locator('#ok-list li').allTextContents()).sort()).toEqual(
      unrecorded.map((n) => n.node).sort(),
    );
    await page.context().close();
  });

  it('handles error bodies that are not JSON, and retries the per-node history', async () => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    await page.route('**/api/login', (route) =>
      route.fulfill({ status: 502, contentType: 'text/plain', body: 'bad gateway' }),
    );
    await page.goto(server.url);
    await page.fill('#login-form input[name=username]', 'ops');
    await page.fill('#login-form input[name=password]', 'ops');
    await page.click('#login-form button[type=submit]');
    await page.waitForFunction(() => document.querySelector('#login-error')?.textContent !== '');
    const message = (await page.textContent('#login-error')) ?? '';
    expect(message).toBe('the server is unavailable (HTTP 502: bad gateway); try again');
    await page.unroute('**/api/login');
    await page.click('#login-form button[type=submit]');
    await page.waitForSelector('#nodes tbody tr[data-node="worker-7"]');
    await select(page, ['worker-2', 'worker-3']);
    await page.click('button[data-op=uncordon]');
    await page.click('#op-submit');
    await page.waitForSelector('#progress-dialog[data-state=complete]', { timeout: 20_000 });
    const first = (await page.getAttribute('#progress-dialog', 'data-task-id')) ?? '';
    await page.click('#progress-close');
    // The first two reads of a task's history fail with a proxy's 502: the dialog says so, retries, and
    // ends with the true per-node results instead of "Succeeded 0 / Failed 0".
    let failures = 0;
    await page.route('**/progress/tasks/*/events*', (route) => {
      if (failures < 2) {
        failures++;
        return route.fulfill({ status: 502, contentType: 'text/html', body: '<html>bad gateway</html>' });
      }
      return route.continue();
    });
    await page.click(`#tasks tr[data-task="${first}"] button`);
    await page.waitForSelector('#progress-load-warning:not([hidden])');
    expect(await page.textContent('#progress-load-warning')).toMatch(
      /Could not load .*HTTP 502: <html>bad gateway<\/html>\); try again\. Retrying…/,
    );
    await page.waitForSelector('#progress-load-warning', { state: 'hidden', timeout: 10_000 });
    expect(failures).toBe(2);
    const ok = Number(await page.textContent('#ok-count'));
    const failed = Number(await page.textContent('#fail-count'));
    const total = Number((await page.textContent('#progress-count'))?.split('/')[0]);
    expect(ok + failed).toBe(total);
    expect(total).toBeGreaterThan(0);
    await context.close();
  });

  it('names the blast radius before cordoning control-plane nodes or adding NoExecute', async () => {
    const page = await login('ops');
    await select(page, ['cp-1', 'cp-2', 'cp-3']);
    await page.click('button[data-op=cordon]');
    await page.waitForSelector('#op-confirm:not([hidden])');
    expect(await page.textContent('#op-confirm-text')).toContain(
      'This includes 3 control-plane nodes (cp-1, cp-2, cp-3) — all of them.',
    );
    expect(await page.isDisabled('#op-submit')).toBe(true);
    await page.click('#op-cancel');
    await page.uncheck('tr[data-node="cp-2"] input[type=checkbox]');
    await page.uncheck('tr[data-node="cp-3"] input[type=checkbox]');
    await page.uncheck('tr[data-node="cp-1"] input[type=checkbox]');
    await select(page, ['worker-5', 'worker-6']);
    await page.click('button[data-op=taint_add]');
    expect(await page.isVisible('#op-confirm')).toBe(false);
    await page.selectOption('#op-form select[name=effect]', 'NoExecute');
    await page.waitForSelector('#op-confirm:not([hidden])');
    expect(await page.textContent('#op-confirm-text')).toContain(
      'NoExecute evicts every pod without a matching toleration from 2 nodes right away.',
    );
    await shot(page, 'confirm-noexecute');
    await page.check('#op-confirm-check');
    expect(await page.isDisabled('#op-submit')).toBe(false);
    await page.click('#op-cancel');
    await page.context().close();
  });

  it('refuses a second batch on a node being changed, naming the task; cordon notes show per node', async () => {
    const page = await login('ops');
    await select(page, ['worker-2', 'worker-3', 'worker-4', 'worker-5']);
    await page.click('button[data-op=cordon]');
    await page.fill('#op-form input[name=reason]', 'kernel upgrade');
    await page.click('#op-submit');
    await page.waitForSelector('#progress-dialog[open][data-task-id]');
    const holder = (await page.getAttribute('#progress-dialog', 'data-task-id')) ?? '';
    // At once, while the cordon runs: the same nodes, another batch.
    await page.click('#progress-close');
    await page.click('button[data-op=label_add]');
    await page.fill('#op-form input[name=key]', 'second');
    await page.click('#op-submit');
    await page.waitForFunction(() => document.querySelector('#op-error')?.textContent !== '');
    expect(await page.textContent('#op-error')).toBe(
      `Not started: another batch is changing worker-2, worker-3, worker-4, worker-5 (task ${holder} by ops); wait for it to finish.`,
    );
    // The batch in the way opens over the dialog, saying why nothing started; the dialog waits beneath it.
    await page.waitForSelector(`#progress-dialog[open][data-task-id="${holder}"]`);
    expect(await page.isVisible('#progress-rerun-note')).toBe(true);
    await page.click('#progress-close');
    await page.click('#op-cancel');
    await page.waitForSelector(`#tasks tr[data-task="${holder}"] td.st-completed`, { timeout: 20_000 });
    await page.waitForSelector('tr[data-node="worker-4"] .cordon-note', { timeout: 5000 });
    expect(await page.textContent('tr[data-node="worker-4"] .cordon-note')).toMatch(
      /^cordoned by ops \d+ s ago: kernel upgrade$/,
    );
    await page.context().close();
  });

  it('gives a viewer a read-only page that still follows other users’ batches live', async () => {
    const viewer = await login('viewer');
    expect(await viewer.isVisible('#actions')).toBe(false);
    expect(await viewer.isVisible('#read-only')).toBe(true);
    expect(await viewer.isDisabled('tr[data-node="worker-1"] input[type=checkbox]')).toBe(true);
    const ops = await login('ops');
    await select(ops, ['worker-6', 'worker-7']);
    await ops.click('button[data-op=uncordon]');
    await ops.click('#op-submit');
    await ops.waitForSelector('#progress-dialog[open][data-task-id]');
    const taskId = (await ops.getAttribute('#progress-dialog', 'data-task-id')) ?? '';
    // The viewer's list picks the new task up within its poll period and follows it to the end.
    await viewer.waitForSelector(`#tasks tr[data-task="${taskId}"]`, { timeout: 10_000 });
    await viewer.waitForSelector(`#tasks tr[data-task="${taskId}"] td.st-completed`, { timeout: 20_000 });
    expect(await viewer.textContent(`#tasks tr[data-task="${taskId}"]`)).toContain('— ops');
    await viewer.click(`#tasks tr[data-task="${taskId}"] button`);
    await viewer.waitForSelector('#progress-dialog[data-state=complete]');
    expect(await viewer.isVisible('#progress-cancel')).toBe(false);
    await viewer.context().close();
    await ops.context().close();
  });

  it('drains nodes with each node’s evictions in its progress', async () => {
    const page = await login('ops');
    await select(page, ['worker-1', 'worker-7']);
    await page.click('button[data-op=drain]');
    await page.waitForSelector('#op-confirm:not([hidden])');
    expect(await page.textContent('#op-confirm-text')).toContain(
      'Drain cordons 2 nodes and evicts every pod on them except DaemonSet pods',
    );
    await page.fill('#op-form input[name=reason]', 'rotate AMIs');
    await page.check('#op-confirm-check');
    await page.click('#op-submit');
    await page.waitForFunction(
      () => /evicted \d+ of \d+ pods/.test(document.querySelector('#progress-current')?.textContent ?? ''),
      undefined,
      {
        timeout: 20_000,
      },
    );
    await shot(page, 'drain');
    await page.waitForSelector('#progress-dialog[data-state=complete]', { timeout: 40_000 });
    const done = await page.locator('#ok-list li').allTextContents();
    expect(done).toEqual([
      expect.stringMatching(/^worker-1 · \d+ pods? evicted, 2 DaemonSet pods left$/),
      expect.stringMatching(/^worker-7 · \d+ pods? evicted, 2 DaemonSet pods left$/),
    ]);
    await page.context().close();
  });

  it('lists every batch on the audit page (who, what, which nodes, result, when)', async () => {
    const page = await login('demo');
    await page.click('#nav-audit');
    await page.waitForSelector('#audit tbody tr');
    const rows = await page.locator('#audit tbody tr').allTextContents();
    expect(rows.length).toBeGreaterThanOrEqual(6);
    expect(rows.some((r) => r.includes('ops') && r.includes('cordon') && r.includes('kernel upgrade'))).toBe(
      true,
    );
    expect(rows.some((r) => r.includes('completed, 1 failed'))).toBe(true);
    expect(rows.some((r) => r.includes('interrupted'))).toBe(true);
    expect(rows.some((r) => r.includes('drain on 2 nodes') && r.includes('rotate AMIs'))).toBe(true);
    await shot(page, 'audit');
    await page.context().close();
  });

  for (const width of [360, 420]) {
    it(`has no horizontal scroll at ${width} px (login, nodes, dialogs, audit)`, async () => {
      const context = await browser.newContext({ viewport: { width, height: 800 } });
      const page = await context.newPage();
      await page.goto(server.url);
      await page.waitForSelector('#login-form');
      await noHorizontalScroll(page);
      await page.fill('#login-form input[name=username]', 'ops');
      await page.fill('#login-form input[name=password]', 'ops');
      await page.click('#login-form button[type=submit]');
      await page.waitForSelector('#nodes tbody tr[data-node="worker-7"]');
      await noHorizontalScroll(page);
      await select(page, ['gpu-1']);
      await page.click('button[data-op=taint_add]');
      await noHorizontalScroll(page);
      await page.click('#op-cancel');
      await page.click('#tasks tbody tr button');
      await page.waitForSelector('#progress-dialog[open]');
      await noHorizontalScroll(page);
      if (width === 360) await shot(page, 'narrow-360');
      await page.click('#progress-close');
      await page.click('#nav-audit');
      await page.waitForSelector('#audit tbody tr');
      await noHorizontalScroll(page);
      await context.close();
    });
  }
});
