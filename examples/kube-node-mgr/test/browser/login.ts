/** The browser tests' one login: a fresh context, the login form, and the node table loaded. */
import type { Browser, Page } from 'playwright-core';

/** Logs `user` in (the demo users' password is their name) in a new context; resolves once nodes show. */
export async function loginPage(
  browser: Browser,
  url: string,
  user: string,
  viewport = { width: 1280, height: 900 },
): Promise<Page> {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  await page.goto(url);
  await page.fill('#login-form input[name=username]', user);
  await page.fill('#login-form input[name=password]', user);
  await page.click('#login-form button[type=submit]');
  await page.waitForSelector('#nodes tbody tr[data-node="worker-7"]');
  return page;
}
