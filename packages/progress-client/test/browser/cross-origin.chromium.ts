import type { Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { launchChromium, type Stack, startStack } from './harness.js';

/**
 * A page on one origin (`http://127.0.0.1:port`) watching tasks on a server it reaches as another
 * (`http://localhost:port`, a different host to the browser), listed in the server's `allowedOrigins`.
 * Found by a review: the socket worked, but every request of the HTTP API failed in the browser for want
 * of CORS headers, so the SSE fallback (what a proxy without WebSocket leaves) never showed a task.
 */

interface PageLog {
  finished: { status: string; seq: number; at: number } | null;
  errors: string[];
  streams: number[];
}

const readLog = (page: Page) =>
  page.evaluate(() => (globalThis as unknown as { finishline: { log: PageLog } }).finishline.log);

let stack: Stack;
let browser: Awaited<ReturnType<typeof launchChromium>>;

beforeAll(async () => {
  // The page's origin (its port known once the proxy listens): the server is reached as localhost.
  stack = await startStack({
    heartbeatIntervalMs: 5000,
    allowedOrigins: (origin) => origin.startsWith('http://127.0.0.1:'),
  });
  browser = await launchChromium();
});

afterAll(async () => {
  await browser?.close();
  await stack?.close();
});

async function watchToTheEnd(flags: string[]): Promise<PageLog> {
  const handle = await stack.server.tasks.create({ owner: 'alice', kind: 'cross_origin', total: 3 });
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    const api = `ws://localhost:${new URL(stack.pageUrl('x')).port}/progress`;
    await page.goto(stack.pageUrl(handle.id, [...flags, `api=${encodeURIComponent(api)}`]));
    for (let i = 0; i < 3; i += 1) await handle.item({ key: `k${i}`, ok: true });
    await handle.complete({ result: { ok: true } });
    await page.waitForFunction(
      () => (globalThis as unknown as { finishline: { log: PageLog } }).finishline.log.finished !== null,
      undefined,
      { timeout: 20_000 },
    );
    return await readLog(page);
  } finally {
    await context.close();
  }
}

describe('a page on another origin, allowed by the server', () => {
  it('sees a task to its end over the socket', async () => {
    const log = await watchToTheEnd([]);
    expect(log.finished).toMatchObject({ status: 'completed', seq: 4 });
  });

  it('sees a task to its end over Server-Sent Events, its requests answered with CORS headers', async () => {
    const log = await watchToTheEnd(['sse']);
    expect(log.finished).toMatchObject({ status: 'completed', seq: 4 });
    expect(log.streams.length).toBeGreaterThan(0);
    expect(log.errors).toEqual([]);
  });
});
