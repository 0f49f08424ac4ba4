// @vitest-environment happy-dom
// The page's progress client across sessions (src/web/connection.ts), with a fake ProgressClient.
import { beforeAll, expect, it, vi } from 'vitest';
import { renderPage } from './page-harness.js';

const made: FakeClient[] = [];
class FakeClient {
  closed = false;
  readonly listeners: ((event: { state: string }) => void)[] = [];
  constructor() {
    made.push(this);
  }
  on(_event: string, listener: (event: { state: string }) => void) {
    this.listeners.push(listener);
    return this;
  }
  emit(state: string) {
    for (const listener of this.listeners) listener({ state });
  }
  close() {
    this.closed = true;
    return Promise.resolve();
  }
}
vi.mock('@finishline/client', () => ({ ProgressClient: FakeClient }));

beforeAll(() => {
  renderPage();
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

// Found by a review on 6 December 2026: a sign-in in another tab (another user, or the same one again) ends
// this tab's session and the server closes its socket, which reconnects with the browser's new cookie: the
// page's watches then ran as the new session's user — an operator's refused, the open dialog saying "Lost
// track of the task: forbidden" — while the page still showed the old user, until the tab was hidden and
// shown again or a POST was refused. A reconnect now checks the session as those do.
it('a reconnect of the socket checks the browser session, as a refused POST does', async () => {
  const connection = await import('../src/web/connection.js');
  const { onSessionMismatch } = await import('../src/web/session.js');
  const check = vi.fn();
  onSessionMismatch(check);
  const client = connection.client as unknown as FakeClient;
  client.emit('connecting');
  client.emit('open');
  expect(check).not.toHaveBeenCalled(); // the first open: the session was just read
  client.emit('reconnecting');
  client.emit('open');
  expect(check).toHaveBeenCalledTimes(1);
});
