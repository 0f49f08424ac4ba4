/**
 * The original app's three failure cases, through the UI in real Chromium: a 7-node taint completes; a
 * reload at about 80% resumes the same task and completes; a dropped completion frame still completes the
 * dialog within 3 s. Each runs on one server (SQLite) and on 3 replicas (Postgres) behind a round-robin
 * proxy without affinity. Screenshots of each final state go to test-artifacts/.
 */
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { type Browser, type BrowserContext, chromium, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnServer, startReplicaSet } from '../../src/server/replica-set.js';

const root = fileURLToPath(new URL('../../', import.meta.url));
const serverScript = path.join(root, 'dist/server.mjs');
const artifacts = path.join(root, 'test-artifacts');
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const NODES = ['worker-1', 'worker-2', 'worker-3', 'worker-4', 'worker-5', 'worker-6', 'worker-7'];
/** Per demo API call; a node takes two calls (read, patch), so a 7-node batch at concurrency 1 takes ~5.6 s. */
const LATENCY_MS = 400;

interface Target {
  url: string;
  stop(): Promise<void>;
  logs(): string;
}

async function startSingle(): Promise<Target> {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'knm-browser-'));
  const server = await spawnServer({
    script: serverScript,
    args: [
      ...['--port', '0', '--demo-port', '0', '--demo-latency-ms', String(LATENCY_MS), '--concurrency', '1'],
      ...['--demo-fail-nodes', 'spot-2', '--data-dir', dataDir],
    ],
    env: { DATABASE_URL: '', KUBECONFIG: '', SESSION_SECRET: '' },
  });
  return {
    url: server.url,
    logs: server.output,
    async stop() {
      await server.stop();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

async function startReplicas(): Promise<Target> {
  let text = '';
  const set = await startReplicaSet({
    serverScript,
    port: 0,
    demoPort: 0,
    demo: { latencyMs: LATENCY_MS, failNodes: ['spot-2'] },
    serverArgs: ['--concurrency', '1'],
    onOutput: (s) => {
      text += s;
    },
  });
  return { url: set.url, stop: set.stop, logs: () => text };
}

/**
 * Loses the first terminal `event` frame a socket receives, as a flaky network or a buggy proxy would: the
 * page's WebSocket never delivers it to the client. Records when it happened in `window.__droppedAt`.
 */
const DROP_FIRST_TERMINAL_FRAME = `(() => {
  const Native = window.WebSocket;
  const decisions = new WeakMap();
  let dropped = false;
  const drop = (event) => {
    if (decisions.has(event)) return decisions.get(event);
    let yes = false;
    try {
      const frame = JSON.parse(event.data);
      yes = !dropped && frame.type === 'event' && ['completed', 'failed', 'cancelled', 'interrupted'].includes(frame.event.type);
    } catch {}
    if (yes) { dropped = true; window.__droppedAt = Date.now(); window.__droppedSeq = JSON.parse(event.data).event.seq; }
    decisions.set(event, yes);
    return yes;
  };
  class FaultyWebSocket extends Native {
    set onmessage(listener) {
      super.onmessage = listener && ((event) => { if (!drop(event)) listener.call(this, event); });
    }
    get onmessage() { return super.onmessage; }
    addEventListener(type, listener, options) {
      if (type !== 'message' || typeof listener !== 'function') return super.addEventListener(type, listener, options);
      return super.addEventListener(type, (event) => { if (!drop(event)) listener.call(this, event); }, options);
    }
  }
  window.WebSocket = FaultyWebSocket;
})();`;

async function login(context: BrowserContext, url: string): Promise<Page> {
  const page = await context.newPage();
  await page.goto(url);
  await page.fill('#login-form input[name=username]', 'demo');
  await page.fill('#login-form input[name=password]', 'demo');
  await page.click('#login-form button[type=submit]');
  await page.waitForSelector('#nodes tbody tr[data-node="worker-7"]');
  return page;
}

/** Selects the 7 workers and starts "add taint <key>:NoSchedule"; resolves with the task id. */
async function startTaint(page: Page, key: string, nodes = NODES): Promise<string> {
  for (const name of nodes) await page.check(`tr[data-node="${name}"] input[type=checkbox]`);
  await page.click('button[data-op=taint_add]');
  await page.fill('#op-form input[name=key]', key);
  await page.click('#op-submit');
  await page.waitForSelector('#progress-dialog[open][data-task-id]');
  return (await page.getAttribute('#progress-dialog', 'data-task-id')) ?? '';
}

async function expectCompleteDialog(page: Page): Promise<void> {
  await page.waitForSelector('#progress-dialog[data-state=complete]', { timeout: 30_000 });
  expect(await page.textContent('#progress-status')).toBe('batch operation complete');
  expect(await page.textContent('#progress-count')).toBe('7 / 7');
  expect(await page.locator('#ok-list li').allTextContents()).toEqual(NODES);
  expect(await page.locator('#fail-list li').count()).toBe(0);
}

async function expectTainted(page: Page, key: string): Promise<void> {
  // The dialog closes itself 3 s after completion, and the node table shows the new taint everywhere.
  await page.waitForSelector('#progress-dialog[data-state=closed]', { state: 'attached', timeout: 10_000 });
  for (const name of NODES) {
    await page.waitForSelector(`tr[data-node="${name}"] .chip.taint:text-is("${key}:NoSchedule")`, {
      timeout: 10_000,
    });
  }
}

const modes: [string, () => Promise<Target>][] = [
  ['one server (SQLite)', startSingle],
  ['3 replicas behind a round-robin proxy (Postgres)', startReplicas],
];

describe.each(modes)('UI on %s', (mode, start) => {
  const tag = mode.startsWith('one') ? 'single' : 'replicas';
  let target: Target;
  let browser: Browser;

  beforeAll(async () => {
    mkdirSync(artifacts, { recursive: true });
    target = await start();
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
  });
  afterAll(async () => {
    await browser?.close();
    await target?.stop();
  });

  it('completes a 7-node taint', async () => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await login(context, target.url);
    await startTaint(page, `e2e-${tag}-complete`);
    await expectCompleteDialog(page);
    await page.screenshot({ path: path.join(artifacts, `${tag}-1-complete.png`) });
    await expectTainted(page, `e2e-${tag}-complete`);
    await context.close();
  });

  it('resumes the same task after a reload at about 80% and completes', async () => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await login(context, target.url);
    const taskId = await startTaint(page, `e2e-${tag}-reload`);
    await page.waitForFunction(() => {
      const done = Number(document.querySelector('#progress-count')?.textContent?.split('/')[0]);
      return done >= 5;
    });
    const before = Number((await page.textContent('#progress-count'))?.split('/')[0]);
    expect(before).toBeLessThan(7);
    const subscribes: { taskId: string; afterSeq: number }[] = [];
    page.on('websocket', (ws) => {
      ws.on('framesent', (frame) => {
        const data = JSON.parse(String(frame.payload)) as { type: string; taskId: string; afterSeq: number };
        if (data.type === 'subscribe') subscribes.push(data);
      });
    });
    await page.reload();
    await page.waitForSelector('#progress-dialog[open]');
    expect(await page.getAttribute('#progress-dialog', 'data-task-id')).toBe(taskId);
    await expectCompleteDialog(page);
    // It resumed from the cursor saved before the reload, not from the start.
    expect(subscribes[0]?.taskId).toBe(taskId);
    expect(subscribes[0]?.afterSeq).toBeGreaterThan(0);
    await page.screenshot({ path: path.join(artifacts, `${tag}-2-reload.png`) });
    await expectTainted(page, `e2e-${tag}-reload`);
    await context.close();
  });

  it('completes within 3 s when the completion frame is dropped', async () => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    await context.addInitScript(DROP_FIRST_TERMINAL_FRAME);
    const page = await login(context, target.url);
    await startTaint(page, `e2e-${tag}-drop`);
    await page.waitForFunction(
      () => (window as unknown as { __droppedAt?: number }).__droppedAt !== undefined,
      undefined,
      {
        timeout: 30_000,
      },
    );
    await expectCompleteDialog(page);
    const elapsed = await page.evaluate(
      () => Date.now() - (window as unknown as { __droppedAt: number }).__droppedAt,
    );
    process.stdout.write(`[${tag}] dialog complete ${elapsed} ms after the completion frame was dropped\n`);
    expect(elapsed).toBeLessThan(3000);
    await page.screenshot({ path: path.join(artifacts, `${tag}-3-dropped-frame.png`) });
    await expectTainted(page, `e2e-${tag}-drop`);
    await context.close();
  });

  it('stays open with the failed node and its reason when a node fails', async () => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await login(context, target.url);
    await startTaint(page, `e2e-${tag}-partial`, ['spot-2', 'worker-1']);
    await page.waitForSelector('#progress-dialog[data-state=partial]', { timeout: 30_000 });
    expect(await page.textContent('#progress-status')).toBe('completed, 1 failed');
    expect(await page.locator('#ok-list li').allTextContents()).toEqual(['worker-1']);
    expect(await page.textContent('#fail-list li[data-node="spot-2"]')).toMatch(
      /injected failure patching node "spot-2"/,
    );
    await page.screenshot({ path: path.join(artifacts, `${tag}-4-partial-failure.png`) });
    // Unlike a success, it does not close by itself (checked well past the 3 s of a success).
    await page.waitForTimeout(3500);
    expect(await page.getAttribute('#progress-dialog', 'data-state')).toBe('partial');
    expect(await page.isVisible('#progress-dialog')).toBe(true);
    await page.click('#progress-close');
    expect(await page.isVisible('#progress-dialog')).toBe(false);
    await context.close();
  });
});
