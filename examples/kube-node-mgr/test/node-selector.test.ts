/**
 * A label selector the Kubernetes API refuses (400: the caller's syntax) was answered 502 kubernetes_error,
 * as if the API server were down: a client's mistake reported as the server's.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { type Harness, login, startHarness } from './harness.js';

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

describe('GET /api/nodes with a malformed label selector', () => {
  it('answers 400 invalid_input naming the field and the API’s reason', async () => {
    h = await startHarness();
    const alice = await login(h.base, 'alice');
    const { status, body } = await alice.get(
      `/api/nodes?labelSelector=${encodeURIComponent('pool in (gpu')}`,
    );
    expect(status).toBe(400);
    expect(body.error).toMatchObject({ code: 'invalid_input', field: 'labelSelector' });
    expect(body.error.message).toMatch(/selector/i);
  });
});
