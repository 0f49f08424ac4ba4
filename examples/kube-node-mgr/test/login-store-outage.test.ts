/**
 * A sign-in while the session table cannot be written. It was answered `500 internal`; worse, a sign-in from a
 * browser still holding a session stored the new session, then failed revoking the old one: a 500, a stored
 * session whose cookie nobody got, and the old session left active. Now the new session and the old one's
 * revocation are one write: it lands whole (a completed login) or not at all (503 `store_unavailable` with
 * `Retry-After`, the old session still the browser's). A signed-in request whose session cannot be checked
 * gets the same 503.
 */
import { afterEach, expect, it } from 'vitest';
import { errorRecorder, type Harness, login, postLogin, startHarness } from './harness.js';

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

/** Fails every `op` (insert, update) on the session table while `down`, as a lost database fails it. */
function breakSessions(harness: Harness, op: 'insert' | 'update'): { down: boolean } {
  const outage = { down: true };
  harness.sqlite.function(`knm_test_sessions_${op}_down`, () => (outage.down ? 1 : 0));
  harness.sqlite.exec(`
    create trigger knm_test_sessions_${op} before ${op} on knm_sessions when knm_test_sessions_${op}_down()
    begin select raise(abort, 'disk I/O error'); end;`);
  return outage;
}

const sessionRows = (harness: Harness) =>
  (harness.sqlite.prepare('select count(*) as n from knm_sessions').get() as { n: number }).n;

it('answers 503 store_unavailable with Retry-After when the session cannot be stored', async () => {
  h = await startHarness();
  const outage = breakSessions(h, 'insert');
  const res = await postLogin(h.base, 'alice', 'alice');
  expect(res.status).toBe(503);
  expect(res.headers.get('retry-after')).toBe('1');
  expect(res.headers.get('set-cookie')).toBeNull();
  expect(((await res.json()) as { error: { code: string } }).error.code).toBe('store_unavailable');
  expect(sessionRows(h)).toBe(0);
  outage.down = false;
  expect((await postLogin(h.base, 'alice', 'alice')).status).toBe(200);
});

it('stores nothing when the previous session of the browser cannot be revoked, and keeps it', async () => {
  h = await startHarness();
  const alice = await login(h.base, 'alice');
  expect(sessionRows(h)).toBe(1);
  const outage = breakSessions(h, 'update');
  // The browser signs in again with its current cookie: its session is to end as the new one starts.
  const res = await postLogin(h.base, 'alice', 'alice', { cookie: alice.cookie });
  expect(res.status).toBe(503);
  expect(res.headers.get('set-cookie')).toBeNull();
  expect(((await res.json()) as { error: { code: string } }).error.code).toBe('store_unavailable');
  // No session without its cookie; the one the browser holds is still valid.
  expect(sessionRows(h)).toBe(1);
  expect((await alice.get('/api/session')).status).toBe(200);

  outage.down = false;
  const again = await postLogin(h.base, 'alice', 'alice', { cookie: alice.cookie });
  expect(again.status).toBe(200);
  expect(sessionRows(h)).toBe(2);
  expect((await alice.get('/api/session')).status).toBe(401);
});

// Every request of a signed-in user reads its session first: while the database was down each one was
// answered `500 internal` (the page said "internal error") and logged as a server error.
it('answers a signed-in request 503 store_unavailable while its session cannot be checked', async () => {
  const { errors, logger } = errorRecorder();
  h = await startHarness({ app: { logger } });
  const alice = await login(h.base, 'alice');
  const sessionActive = h.db.sessionActive.bind(h.db);
  h.db.sessionActive = async () => {
    throw new Error('connection terminated unexpectedly');
  };
  const res = await fetch(`${h.base}/api/tasks`, { headers: { cookie: alice.cookie } });
  expect(res.status).toBe(503);
  expect(res.headers.get('retry-after')).toBe('1');
  expect(((await res.json()) as { error: { code: string } }).error.code).toBe('store_unavailable');
  expect(errors).toEqual([]);
  h.db.sessionActive = sessionActive;
  expect((await alice.get('/api/tasks')).status).toBe(200);
});
