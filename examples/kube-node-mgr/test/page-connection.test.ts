// @vitest-environment happy-dom
// The page's progress client across sessions (src/web/connection.ts), with a fake ProgressClient.
import { readFileSync } from 'node:fs';
import { beforeAll, expect, it, vi } from 'vitest';

const made: FakeClient[] = [];
class FakeClient {
  closed = false;
  constructor() {
    made.push(this);
  }
  on() {
    return this;
  }
  close() {
    this.closed = true;
    return Promise.resolve();
  }
}
vi.mock('@finishline/client', () => ({ ProgressClient: FakeClient }));

beforeAll(() => {
  const html = readFileSync(`${import.meta.dirname}/../src/web/index.html`, 'utf8');
  const body = /<body>([\s\S]*)<\/body>/.exec(html)?.[1] ?? '';
  document.body.innerHTML = body.replace(/<script[\s\S]*?<\/script>/g, '');
});

// Found by a review on 3 December 2026: the socket stayed open after a 401, authenticated by the old
// session's cookie, until the server's next session check (up to 10 s); the next user's watches went
// through it with the previous user's rights.
it('the session end closes the client of the old session; the next watches get a new one', async () => {
  const connection = await import('../src/web/connection.js');
  const { endSession } = await import('../src/web/session.js');
  const first = connection.client as unknown as FakeClient;
  endSession();
  expect(first.closed).toBe(true);
  expect(connection.client).not.toBe(first);
  expect((connection.client as unknown as FakeClient).closed).toBe(false);
});
