/**
 * A review on 7 December 2026: saved templates were unbounded. One operator (or a script with its cookie)
 * could save them without end, and every user's operation dialog loads the whole shared list into its
 * picker each time it opens. Each user may now have MAX_TEMPLATES_PER_USER.
 */
import { afterEach, expect, it } from 'vitest';
import { MAX_TEMPLATES_PER_USER } from '../src/server/routes/template-routes.js';
import { type Harness, login, startHarness } from './harness.js';

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

it('refuses a user past its templates with 409 too_many_templates, not another user, and again after a delete', async () => {
  // Above the cap's saves plus the rest, so the request rate limit is not what refuses them.
  h = await startHarness({ app: { apiRateLimit: { burst: 200, perSecond: 100 } } });
  const alice = await login(h.base, 'alice');
  const bob = await login(h.base, 'bob');
  const label = { kind: 'label', key: 'team', value: 'infra' };
  for (let i = 0; i < MAX_TEMPLATES_PER_USER; i++) {
    expect((await alice.post('/api/templates', { ...label, name: `t${i}` })).status).toBe(201);
  }
  const over = await alice.post('/api/templates', { ...label, name: 'one-more' });
  expect({ status: over.status, error: over.body.error }).toMatchObject({
    status: 409,
    error: { code: 'too_many_templates', limit: MAX_TEMPLATES_PER_USER },
  });
  expect((await bob.post('/api/templates', { ...label, name: 'bobs' })).status).toBe(201);
  expect((await alice.post('/api/templates/t0/delete', {})).status).toBe(200);
  expect((await alice.post('/api/templates', { ...label, name: 'one-more' })).status).toBe(201);
  expect((await alice.get('/api/templates')).body.templates).toHaveLength(MAX_TEMPLATES_PER_USER + 1);
});
