import type { Browser, BrowserContext, CDPSession, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { launchChromium, type Stack, startStack } from './harness.js';

/**
 * Item 4 of issue 14 in real Chromium: a page frozen (CDP `Page.setWebLifecycleState`, with the
 * debugger's pause, see below) or offline
 * (`Network.emulateNetworkConditions`) while its socket dies silently (the proxy swallows every byte,
 * as after a laptop's sleep) and the task moves on. Measured: from the page becoming active (or online)
 * to the page showing the task's current seq. The same page without page-life checks is the baseline:
 * it waits for the heartbeat timeout (2 × 3 s + 2 s here) or a backoff.
 */

const HEARTBEAT_INTERVAL_MS = 3000;
const HEARTBEAT_TIMEOUT_MS = 2 * HEARTBEAT_INTERVAL_MS + 2000;

interface PageLog {
  wakes: { type: string; at: number }[];
  seqs: { seq: number; at: number }[];
  finished: { status: string; seq: number; at: number } | null;
  states: { state: string; reason: string; at: number }[];
  streams: number[];
}

const readLog = (page: Page) =>
  page.evaluate(() => (globalThis as unknown as { finishline: { log: PageLog } }).finishline.log);

let stack: Stack;
let browser: Browser;
const timings: string[] = [];

beforeAll(async () => {
  stack = await startStack({ heartbeatIntervalMs: HEARTBEAT_INTERVAL_MS });
  browser = await launchChromium();
});

afterAll(async () => {
  await browser?.close();
  await stack?.close();
  if (timings.length > 0) process.stdout.write(`\n${timings.join('\n')}\n`);
});

/** A page watching a fresh task, shown its first item; returns what the scenario needs. */
async function watchingPage(flags: string[]) {
  const handle = await stack.server.tasks.create({ owner: 'alice', kind: 'page_life', total: 20 });
  const context: BrowserContext = await browser.newContext();
  const page = await context.newPage();
  await page.goto(stack.pageUrl(handle.id, flags));
  const first = await handle.item({ key: 'k0', ok: true });
  await page.waitForFunction(
    (seq) =>
      (globalThis as unknown as { finishline: { log: PageLog } }).finishline.log.seqs.some(
        (s) => s.seq >= seq,
      ),
    first.seq,
    { timeout: 10_000 },
  );
  const cdp: CDPSession = await context.newCDPSession(page);
  return { handle, context, page, cdp };
}

/** Waits until the page shows `seq`; returns the wall-clock time it did. */
async function shownAt(page: Page, seq: number): Promise<number> {
  await page.waitForFunction(
    (target) =>
      (globalThis as unknown as { finishline: { log: PageLog } }).finishline.log.seqs.some(
        (s) => s.seq >= target,
      ),
    seq,
    { timeout: 30_000, polling: 20 },
  );
  const log = await readLog(page);
  return (log.seqs.find((s) => s.seq >= seq) as { at: number }).at;
}

async function frozenThenActive(flags: string[]): Promise<number> {
  const { handle, context, page, cdp } = await watchingPage(flags);
  // Headless Chromium accepts `frozen` for a visible page but mostly keeps running it (its timers tick
  // on), and offers no way to hide a page: the debugger's pause stops the page's JavaScript as a freeze
  // (or a sleep) would, so timers fire late on thaw.
  await cdp.send('Page.setWebLifecycleState', { state: 'frozen' });
  await cdp.send('Debugger.enable');
  await cdp.send('Debugger.pause');
  stack.proxy.blackhole();
  let last = 0;
  for (let i = 1; i <= 5; i++) last = (await handle.item({ key: `k${i}`, ok: true })).seq;
  await new Promise((resolve) => setTimeout(resolve, 2000));
  const activeAt = Date.now();
  // Not paused when the freeze did take (no script ran to pause at): nothing to resume then.
  await cdp.send('Debugger.resume').catch(() => undefined);
  await cdp.send('Page.setWebLifecycleState', { state: 'active' });
  const at = await shownAt(page, last);
  const log = await readLog(page);
  // Replaced after a page-life check (the clock jump, or `resume` where Chromium fires it), not a timeout.
  const replacedBecause = log.states.filter((state) => state.at >= activeAt).map((state) => state.reason);
  if (flags.includes('sse')) {
    // No socket: the stream was asked for again (once the page ran again), and nothing else moved.
    expect(log.streams.filter((at) => at >= activeAt).length).toBeGreaterThan(0);
    expect(log.states).toEqual([]);
  } else if (!flags.includes('nopagelife'))
    expect(replacedBecause).toContainEqual(expect.stringMatching(/^(clock jump|resume)$/));
  await handle.complete();
  await context.close();
  return at - activeAt;
}

async function offlineThenOnline(flags: string[]): Promise<number> {
  const { handle, context, page, cdp } = await watchingPage(flags);
  await cdp.send('Network.enable');
  const conditions = { latency: 0, downloadThroughput: -1, uploadThroughput: -1 };
  await cdp.send('Network.emulateNetworkConditions', { offline: true, ...conditions });
  stack.proxy.blackhole();
  let last = 0;
  for (let i = 1; i <= 5; i++) last = (await handle.item({ key: `k${i}`, ok: true })).seq;
  await new Promise((resolve) => setTimeout(resolve, 1000));
  const onlineAt = Date.now();
  await cdp.send('Network.emulateNetworkConditions', { offline: false, ...conditions });
  const at = await shownAt(page, last);
  const log = await readLog(page);
  const replacedBecause = log.states.filter((state) => state.at >= onlineAt).map((state) => state.reason);
  if (flags.includes('sse')) expect(log.streams.filter((at) => at >= onlineAt).length).toBeGreaterThan(0);
  else if (!flags.includes('nopagelife')) {
    expect(log.wakes.map((wake) => wake.type)).toContain('online');
    expect(replacedBecause).toContain('online');
  }
  await handle.complete();
  await context.close();
  return at - onlineAt;
}

describe('page life in Chromium', () => {
  it('frozen → active: resynced well before the heartbeat timeout', async () => {
    const withPageLife = await frozenThenActive([]);
    const baseline = await frozenThenActive(['nopagelife']);
    timings.push(
      `frozen → active → resynced: ${withPageLife} ms with page life; ${baseline} ms without (heartbeat timeout ${HEARTBEAT_TIMEOUT_MS} ms)`,
    );
    expect(withPageLife).toBeLessThan(HEARTBEAT_TIMEOUT_MS / 2);
  });

  it('offline → online: resynced at once instead of after a timeout or a backoff', async () => {
    const withPageLife = await offlineThenOnline([]);
    const baseline = await offlineThenOnline(['nopagelife']);
    timings.push(`offline → online → resynced: ${withPageLife} ms with page life; ${baseline} ms without`);
    expect(withPageLife).toBeLessThan(HEARTBEAT_TIMEOUT_MS / 2);
  });

  // The same over Server-Sent Events (sseFallback, preferFallback): a stream has no ping, so a wake
  // reopens it from its cursor. Without that, a stream that died in the sleep is noticed by its silence
  // timeout (2 × the 3 s heartbeat interval it states + 2 s), and reopened httpPollIntervalMs (2 s) later.
  it('SSE, frozen → active: the stream reopened from its cursor well before its silence timeout', async () => {
    const withPageLife = await frozenThenActive(['sse']);
    const baseline = await frozenThenActive(['sse', 'nopagelife']);
    timings.push(
      `SSE frozen → active → resynced: ${withPageLife} ms with page life; ${baseline} ms without (silence timeout ${HEARTBEAT_TIMEOUT_MS} ms)`,
    );
    expect(withPageLife).toBeLessThan(HEARTBEAT_TIMEOUT_MS / 2);
  });

  it('SSE, offline → online: the stream reopened from its cursor well before its silence timeout', async () => {
    const withPageLife = await offlineThenOnline(['sse']);
    const baseline = await offlineThenOnline(['sse', 'nopagelife']);
    timings.push(
      `SSE offline → online → resynced: ${withPageLife} ms with page life; ${baseline} ms without`,
    );
    expect(withPageLife).toBeLessThan(HEARTBEAT_TIMEOUT_MS / 2);
  });
});
