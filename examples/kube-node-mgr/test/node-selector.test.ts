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

  // The API server checks each requirement's key (a qualified name) and values (label values): the demo
  // cluster matched them as given, so `pool=gpu=a` listed no node (200) where a real cluster answers 400.
  it.each([
    'pool=gpu=a',
    'Bad.Prefix/pool=gpu',
    'pool in (gpu,not valid!)',
    '!-pool',
    'pool!=a b',
    'pool in ()',
    'pool notin ( )',
  ])('answers 400 invalid_input for %s, a selector the API server refuses', async (selector) => {
    h = await startHarness();
    const alice = await login(h.base, 'alice');
    const { status, body } = await alice.get(`/api/nodes?labelSelector=${encodeURIComponent(selector)}`);
    expect(status).toBe(400);
    expect(body.error).toMatchObject({ code: 'invalid_input', field: 'labelSelector' });
  });

  it('still answers valid selectors (prefixed keys, empty values, sets)', async () => {
    h = await startHarness();
    const alice = await login(h.base, 'alice');
    for (const selector of [
      'node-role.kubernetes.io/control-plane',
      'pool in (gpu,spot)',
      'pool!=',
      'pool==gpu',
    ]) {
      const { status } = await alice.get(`/api/nodes?labelSelector=${encodeURIComponent(selector)}`);
      expect(status).toBe(200);
    }
  });
});
