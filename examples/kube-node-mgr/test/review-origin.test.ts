import { afterEach, describe, expect, it } from 'vitest';
import { errorRecorder, type Harness, login, postLogin, startHarness } from './harness.js';

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

/**
 * A review on 6 December 2026: an `Origin` that is not a URL (`null`, which browsers send from sandboxed
 * frames, `file:` pages and after cross-site redirects, or garbage) made the same-origin rule throw, so the
 * app's own Origin check answered 500 `internal` (logged as an error) instead of refusing it as another
 * origin with 403, as the WebSocket upgrade and `/progress` do.
 */
describe('a malformed Origin', () => {
  it('is refused as another origin (403 forbidden_origin), at login and on state-changing routes', async () => {
    const { errors, logger } = errorRecorder();
    h = await startHarness({ app: { logger } });
    const alice = await login(h.base, 'alice');
    for (const origin of ['null', 'not a url']) {
      const signIn = await postLogin(h.base, 'alice', 'alice', { origin });
      expect({ origin, status: signIn.status, body: await signIn.json() }).toMatchObject({
        status: 403,
        body: { error: { code: 'forbidden_origin' } },
      });
      const batch = await alice.post('/api/batch', { operation: 'cordon', nodes: ['worker-1'] }, { origin });
      expect({ origin, status: batch.status, code: batch.body?.error?.code }).toEqual({
        origin,
        status: 403,
        code: 'forbidden_origin',
      });
      const cancel = await alice.post('/progress/tasks/some-task/cancel', {}, { origin });
      expect({ origin, status: cancel.status, code: cancel.body?.error?.code }).toEqual({
        origin,
        status: 403,
        code: 'forbidden_origin',
      });
    }
    expect(h.cluster.node('worker-1')?.spec.unschedulable).toBeUndefined();
    expect(errors).toEqual([]);
  });
});
