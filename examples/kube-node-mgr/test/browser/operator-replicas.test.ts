/**
 * The operator features that depend on shared state, on 3 replicas behind the round-robin proxy without
 * affinity (embedded Postgres): node locks across replicas, partial failure and retry, a viewer following
 * another user's batch live, and logout revoking the session on every replica.
 */
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startReplicaSet } from '../../src/server/replica-set.js';
import { launchChromium, serverScript } from './launch.js';
import { loginPage } from './login.js';

let set: Awaited<ReturnType<typeof startReplicaSet>>;
let browser: Browser;
let logs = '';

beforeAll(async () => {
  set = await startReplicaSet({
    serverScript,
    port: 0,
    demoPort: 0,
    demo: { latencyMs: 300, failNodes: ['spot-2'] },
    serverArgs: ['--concurrency', '1'],
    onOutput: (s) => {
      logs += s;
    },
  });
  browser = await launchChromium();
});
afterAll(async () => {
  await browser?.close();
  await set?.stop();
});

/** The shared login, against this file's replica set. */
const login = (user: string) => loginPage(browser, set.url, user);

async function select(page: Page, names: string[]): Promise<void> {
  for (const name of names) await page.check(`tr[data-node="${name}"] input[type=checkbox]`);
}

describe('kube-node-mgr operator UI on 3 replicas (Postgres)', () => {
  it('locks nodes across replicas: a second batch gets the 409 naming the task', async () => {
    const page = await login('ops');
    await select(page, ['worker-1', 'worker-2', 'worker-3', 'worker-4']);
    await page.click('button[data-op=cordon]');
    await page.click('#op-submit');
    await page.waitForSelector('#progress-dialog[open][data-task-id]');
    const holder = (await page.getAttribute('#progress-dialog', 'data-task-id')) ?? '';
    await page.click('#progress-close');
    // Twice: the proxy sends consecutive requests to different replicas.
    for (let i = 0; i < 2; i++) {
      await page.click('button[data-op=label_add]');
      await page.fill('#op-form input[name=key]', 'second');
      await page.click('#op-submit');
      await page.waitForFunction(() => document.querySelector('#op-error')?.textContent !== '');
      expect(await page.textContent('#op-error')).toContain(`(task ${holder} by ops)`);
      // The batch in the way opens over the dialog (autoClose off); closed, the dialog beneath is back.
      await page.waitForSelector(`#progress-dialog[open][data-task-id="${holder}"]`);
      await page.click('#progress-close');
      await page.click('#op-cancel');
    }
    await page.waitForSelector(`#tasks tr[data-task="${holder}"] td.st-completed`, { timeout: 30_000 });
    await page.context().close();
  });

  it('shows a partial failure in amber, and a viewer follows it live from another replica', async () => {
    const viewer = await login('viewer');
    const page = await login('ops');
    await select(page, ['worker-5', 'spot-2']);
    await page.click('button[data-op=label_add]');
    await page.fill('#op-form input[name=key]', 'rep');
    await page.fill('#op-form input[name=value]', 'x');
    await page.click('#op-submit');
    await page.waitForSelector('#progress-dialog[open][data-task-id]');
    const taskId = (await page.getAttribute('#progress-dialog', 'data-task-id')) ?? '';
    await viewer.waitForSelector(`#tasks tr[data-task="${taskId}"]`, { timeout: 15_000 });
    await page.waitForSelector('#progress-dialog[data-state=partial]', { timeout: 30_000 });
    expect(await page.textContent('#progress-status')).toBe('completed, 1 failed');
    await viewer.waitForSelector(`#tasks tr[data-task="${taskId}"] td.st-partial`, { timeout: 15_000 });
    await page.click('#progress-retry');
    await page.waitForSelector('#progress-link:not([hidden])');
    await page.waitForSelector('#progress-dialog[data-state=failed]', { timeout: 30_000 });
    await viewer.context().close();
    await page.context().close();
  });

  it('revokes the session on every replica at logout', async () => {
    const page = await login('ops');
    const cookie = (await page.context().cookies()).find((c) => c.name === 'knm_session');
    expect(cookie).toBeDefined();
    const header = `knm_session=${cookie?.value}`;
    for (let i = 0; i < 3; i++) {
      expect((await fetch(`${set.url}/api/session`, { headers: { cookie: header } })).status).toBe(200);
    }
    await page.click('#logout');
    await page.waitForSelector('#login-form');
    // Three requests through the round-robin proxy: every replica refuses the replayed cookie.
    for (let i = 0; i < 3; i++) {
      expect((await fetch(`${set.url}/api/session`, { headers: { cookie: header } })).status).toBe(401);
    }
    await page.context().close();
  });
});

afterAll(() => {
  if (process.env.KNM_PRINT_LOGS) process.stdout.write(logs);
});
