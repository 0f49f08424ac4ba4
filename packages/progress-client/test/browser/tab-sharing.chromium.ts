import type { Browser, BrowserContext, Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { launchChromium, type Stack, startStack } from './harness.js';

/**
 * Item 6 of issue 14 in real Chromium: 8 tabs of one browser watch one task with `shareAcrossTabs`; the
 * server sees one socket. The leader tab (the first: it asked for the lock first) is closed mid-task;
 * another tab takes the lock and the socket, and every remaining tab reaches the end with each item shown
 * once, in order. Measured: from the leader tab's close to the first item after it shown in every tab.
 */

interface PageLog {
  seqs: { seq: number; at: number }[];
  items: number[];
  states: { state: string; reason: string; at: number }[];
  wakes: { type: string; at: number }[];
  finished: { status: string; seq: number; at: number } | null;
  errors: string[];
}

const TABS = 8;
let stack: Stack;
let browser: Browser;
/** The test's tabs: closed after it, passed or not, so a failure leaves no socket to the next test. */
let context: BrowserContext | undefined;

const readLog = (page: Page) =>
  page.evaluate(() => (globalThis as unknown as { finishline: { log: PageLog } }).finishline.log);

const waitShown = (page: Page, seq: number) =>
  page.waitForFunction(
    (target) =>
      (globalThis as unknown as { finishline: { log: PageLog } }).finishline.log.seqs.some(
        (s) => s.seq >= target,
      ),
    seq,
    { timeout: 30_000, polling: 20 },
  );

/**
 * The tabs share one socket: the server settles on one connection. Polled, not read once: a tab's client
 * may give up on the shared socket (a wake ping unanswered within its 1 s deadline on a loaded machine)
 * and every tab reconnects through the leader, with 0 sockets for a moment. Not sharing, there would be
 * one per tab. On failure, what each tab's client went through.
 */
async function expectOneSocket(pages: Page[]): Promise<void> {
  try {
    await expect.poll(() => stack.server.connectionCount, { timeout: 10_000, interval: 20 }).toBe(1);
  } catch (error) {
    const logs = await Promise.all(pages.filter((page) => !page.isClosed()).map(readLog));
    const told = logs.map(
      (log, i) => `tab ${i}: ${JSON.stringify({ states: log.states, wakes: log.wakes })}`,
    );
    throw new Error(`${(error as Error).message}\n${told.join('\n')}`);
  }
}

beforeAll(async () => {
  stack = await startStack({ heartbeatIntervalMs: 3000 });
  browser = await launchChromium();
});

afterEach(async () => {
  await context?.close();
  context = undefined;
});

afterAll(async () => {
  await browser?.close();
  await stack?.close();
});

describe('tab sharing in Chromium', () => {
  it('8 tabs, one socket; the leader closed mid-task; every tab reaches the end, nothing twice', async () => {
    const handle = await stack.server.tasks.create({ owner: 'alice', kind: 'tabs', total: 40 });
    context = await browser.newContext();
    const url = stack.pageUrl(handle.id, ['share']);
    const pages: Page[] = [];
    let item = 0;
    const next = async () => (await handle.item({ key: `k${item++}`, ok: true })).seq;

    pages.push(await context.newPage());
    await (pages[0] as Page).goto(url);
    let seq = await next();
    await waitShown(pages[0] as Page, seq);
    for (let i = 1; i < TABS; i++) {
      const page = await context.newPage();
      await page.goto(url);
      pages.push(page);
    }
    for (let i = 0; i < 5; i++) seq = await next();
    await Promise.all(pages.map((page) => waitShown(page, seq)));
    await expectOneSocket(pages);

    const [leader, ...followers] = pages as [Page, ...Page[]];
    const closedAt = Date.now();
    await leader.close();
    seq = await next();
    await Promise.all(followers.map((page) => waitShown(page, seq)));
    const logs = await Promise.all(followers.map(readLog));
    const servedAt = logs.map((log) => (log.seqs.find((s) => s.seq >= seq) as { at: number }).at);
    const first = Math.min(...servedAt) - closedAt;
    const all = Math.max(...servedAt) - closedAt;
    await expectOneSocket(followers);

    for (let i = 0; i < 10; i++) seq = await next();
    const end = (await handle.complete()).seq;
    await Promise.all(
      followers.map((page) =>
        page.waitForFunction(
          () => (globalThis as unknown as { finishline: { log: PageLog } }).finishline.log.finished !== null,
          undefined,
          { timeout: 30_000 },
        ),
      ),
    );
    for (const log of await Promise.all(followers.map(readLog))) {
      expect(log.finished).toMatchObject({ status: 'completed', seq: end });
      // Each item once, in order, none missing after the first one shown.
      const firstItem = log.items[0] as number;
      expect(log.items).toEqual(Array.from({ length: end - firstItem }, (_, i) => firstItem + i));
      expect(log.errors).toEqual([]);
    }
    process.stdout.write(
      `\nleader tab closed → follower served: first tab ${first} ms, all ${TABS - 1} tabs ${all} ms\n`,
    );
  });

  it('the leader tab frozen (its Web Lock still held): a follower goes on with a socket of its own, each item once, and comes back once the leader is thawed', async () => {
    const handle = await stack.server.tasks.create({ owner: 'alice', kind: 'tabs', total: 20 });
    context = await browser.newContext();
    const url = stack.pageUrl(handle.id, ['share']);
    let item = 0;
    const next = async () => (await handle.item({ key: `k${item++}`, ok: true })).seq;
    const leader = await context.newPage();
    await leader.goto(url);
    let seq = await next();
    await waitShown(leader, seq);
    const follower = await context.newPage();
    await follower.goto(url);
    seq = await next();
    await Promise.all([leader, follower].map((page) => waitShown(page, seq)));
    await expectOneSocket([leader, follower]);

    const lead = () =>
      follower.evaluate(async () => {
        const { held = [] } = await navigator.locks.query();
        return held.find((lock) => lock.name?.startsWith('finishline:leader:'))?.clientId;
      });
    const leaderId = await lead();
    const cdp = await context.newCDPSession(leader);
    // Headless Chromium accepts `frozen` for a visible page but keeps running it: the debugger's pause stops
    // its JavaScript as a freeze would (see page-life.chromium.ts).
    await cdp.send('Page.setWebLifecycleState', { state: 'frozen' });
    await cdp.send('Debugger.enable');
    await cdp.send('Debugger.pause');
    // The premise: a frozen page keeps its locks, so no other tab can take the lead.
    expect(await lead()).toBe(leaderId);
    seq = await next();
    // A heartbeat timeout (the server's interval is 3 s), then a connect timeout (10 s), then its own socket;
    // before 5 December 2026 it retried through the frozen leader for as long as the leader stayed frozen.
    await follower.waitForFunction(
      (target) =>
        (globalThis as unknown as { finishline: { log: PageLog } }).finishline.log.seqs.some(
          (s) => s.seq >= target,
        ),
      seq,
      { timeout: 60_000, polling: 50 },
    );
    const end = (await handle.complete()).seq;
    await follower.waitForFunction(
      () => (globalThis as unknown as { finishline: { log: PageLog } }).finishline.log.finished !== null,
      undefined,
      { timeout: 30_000 },
    );
    const log = await readLog(follower);
    expect(log.finished).toMatchObject({ status: 'completed', seq: end });
    const firstItem = log.items[0] as number;
    expect(log.items).toEqual(Array.from({ length: end - firstItem }, (_, i) => firstItem + i));
    expect(await lead()).toBe(leaderId);
    await cdp.send('Debugger.resume').catch(() => undefined);
    await cdp.send('Page.setWebLifecycleState', { state: 'active' });
    // Thawed, the leader relays its socket's frames again (the server's heartbeats): the follower's own
    // socket goes. Before 7 December 2026 it stayed open beside the shared one: two sockets for good.
    await expectOneSocket([leader, follower]);
  });

  it("the leader tab's client closed, the page open: another tab takes the lock and the socket, and every other tab reaches the end", async () => {
    const handle = await stack.server.tasks.create({ owner: 'alice', kind: 'tabs', total: 20 });
    context = await browser.newContext();
    const url = stack.pageUrl(handle.id, ['share']);
    let item = 0;
    const next = async () => (await handle.item({ key: `k${item++}`, ok: true })).seq;
    const pages: Page[] = [];
    for (let i = 0; i < 3; i++) {
      const page = await context.newPage();
      await page.goto(url);
      pages.push(page);
    }
    const [leader, ...followers] = pages as [Page, ...Page[]];
    let seq = await next();
    await Promise.all(pages.map((page) => waitShown(page, seq)));
    await expectOneSocket(pages);
    // Web Locks name the page (its clientId) that holds or waits for each lock.
    const locks = () =>
      leader.evaluate(async () => {
        const { held = [], pending = [] } = await navigator.locks.query();
        return {
          held: held.map((l) => [l.name, l.clientId]),
          pending: pending.map((l) => [l.name, l.clientId]),
        };
      });
    const leadOf = (state: Awaited<ReturnType<typeof locks>>) =>
      state.held.find(([name]) => name?.startsWith('finishline:leader:'))?.[1];
    const before = await locks();
    const leaderId = leadOf(before);
    expect(leaderId).toBeDefined();

    await leader.evaluate(() =>
      (
        globalThis as unknown as { finishline: { client: { close(): Promise<void> } } }
      ).finishline.client.close(),
    );
    for (let i = 0; i < 5; i++) seq = await next();
    await Promise.all(followers.map((page) => waitShown(page, seq)));
    const after = await locks();
    expect(leadOf(after)).toBeDefined();
    expect(leadOf(after)).not.toBe(leaderId);
    expect([...after.held, ...after.pending].filter(([, clientId]) => clientId === leaderId)).toEqual([]);
    await expectOneSocket(followers);

    const end = (await handle.complete()).seq;
    await Promise.all(
      followers.map((page) =>
        page.waitForFunction(
          () => (globalThis as unknown as { finishline: { log: PageLog } }).finishline.log.finished !== null,
          undefined,
          { timeout: 30_000 },
        ),
      ),
    );
    for (const log of await Promise.all(followers.map(readLog))) {
      expect(log.finished).toMatchObject({ status: 'completed', seq: end });
      const firstItem = log.items[0] as number;
      expect(log.items).toEqual(Array.from({ length: end - firstItem }, (_, i) => firstItem + i));
      expect(log.errors).toEqual([]);
    }
  });
});
