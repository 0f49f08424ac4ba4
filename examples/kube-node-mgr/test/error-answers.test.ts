// biome-ignore-all lint/suspicious/noExplicitAny: JSON bodies of API responses, checked by the assertions.
import { afterEach, describe, expect, it } from 'vitest';
import { errorRecorder, type Harness, login, startHarness } from './harness.js';

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

/** `method path` as alice: answered 400 invalid_input with a message matching `message`, no error logged. */
async function expectInvalidInput(method: string, path: string, message: RegExp): Promise<void> {
  const { errors, logger } = errorRecorder();
  h = await startHarness({ app: { logger } });
  const alice = await login(h.base, 'alice');
  const { status, body } =
    method === 'GET' ? await alice.get(path) : await alice.post(path, { mode: 'retry_failed' });
  expect(status).toBe(400);
  expect(body.error.code).toBe('invalid_input');
  expect(body.error.message).toMatch(message);
  expect(errors).toEqual([]);
}

/**
 * A client's mistake that Express itself refuses (a path parameter that is not valid %-encoding) is
 * answered as the client's mistake, with a code that says so: it was `400 { code: 'internal', message:
 * 'internal error' }` and logged as a server error.
 */
describe('error answers of requests Express refuses', () => {
  it.each([
    ['GET', '/api/tasks/%ZZ'],
    ['GET', '/api/tasks/%E0%A4%A/unrecorded'],
    ['POST', '/api/tasks/%ZZ/rerun'],
    ['POST', '/api/templates/%ZZ/delete'],
  ])('%s %s with a malformed percent-encoded parameter: 400 invalid_input, not internal', (method, path) =>
    expectInvalidInput(method, path, /%-encoding/),
  );
});

/**
 * A `limit` that is not a whole number (`?limit=1.5`) reached the database as such: SQLite refused the LIMIT
 * (`datatype mismatch`) and the read was answered `500 internal`, logged as a server error. A limit is a
 * whole number of rows: the fraction is dropped, as every other unusable limit falls back to the default.
 */
describe('a fractional limit', () => {
  it.each([
    ['/api/tasks?limit=1.5', 'tasks', 1],
    ['/api/audit-events?limit=2.5', 'events', 2],
  ])('%s is answered with that many whole rows, not 500', async (path, field, most) => {
    h = await startHarness();
    const alice = await login(h.base, 'alice');
    for (let i = 0; i < 3; i++) {
      const started = await alice.post('/api/batch', { operation: 'cordon', nodes: [`worker-${i + 1}`] });
      expect(started.status).toBe(202);
    }
    await login(h.base, 'alice'); // another sign-in: a third audit event
    const { status, body } = await alice.get(path);
    expect(status).toBe(200);
    expect(body[field]).toHaveLength(most);
  });
});

/**
 * A task id no task can have (a reserved word, a character outside the ids' alphabet, over 128 characters)
 * made the store throw `invalid_input` before any read, which the app answered `500 internal` and logged as a
 * server error; `/progress/tasks/:id` answers the same id 400.
 */
describe('a task id the store refuses', () => {
  it.each([
    ['GET', '/api/tasks/constructor'],
    ['GET', '/api/tasks/__proto__/unrecorded'],
    ['GET', `/api/tasks/${'a'.repeat(200)}`],
    ['GET', '/api/tasks/a%20b'],
    ['POST', '/api/tasks/prototype/rerun'],
  ])('%s %s: 400 invalid_input, not internal', (method, path) =>
    expectInvalidInput(method, path, /task id/i),
  );
});

/**
 * The node list reads the app's own tables (cordon notes, node locks) beside the Kubernetes API's list: a
 * failure of the database was answered `502 kubernetes_error`, "the Kubernetes API cannot be reached", and
 * logged as a failed Kubernetes API call, sending whoever looked into it to a cluster that was fine. It is the
 * server's own failure: `500 internal`, logged as such.
 */
describe('a database failure under the node list', () => {
  it.each(['cordons', 'locks'] as const)(
    'of its %s is answered 500 internal, not as the Kubernetes API failing',
    async (method) => {
      const { errors, logger } = errorRecorder();
      const warnings: string[] = [];
      h = await startHarness({
        app: { logger: { ...logger, warn: (_o: unknown, m?: string) => warnings.push(m ?? '') } },
      });
      const alice = await login(h.base, 'alice');
      h.db[method] = async () => {
        throw new Error('SQLITE_IOERR: disk I/O error');
      };
      const { status, body } = await alice.get('/api/nodes');
      expect(body.error.code).toBe('internal');
      expect(status).toBe(500);
      expect(errors).toEqual(['request failed']);
      expect(warnings).not.toContain('Kubernetes API call failed');
    },
  );
});
