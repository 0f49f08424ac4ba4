// biome-ignore-all lint/suspicious/noExplicitAny: JSON bodies of API responses, checked by the assertions.
import { afterEach, describe, expect, it } from 'vitest';
import { type Harness, login, startHarness } from './harness.js';

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

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
  ])(
    '%s %s with a malformed percent-encoded parameter: 400 invalid_input, not internal',
    async (method, path) => {
      const errors: string[] = [];
      h = await startHarness({
        app: {
          logger: {
            debug: () => {},
            info: () => {},
            warn: () => {},
            error: (_obj: unknown, msg?: string) => errors.push(msg ?? ''),
          },
        },
      });
      const alice = await login(h.base, 'alice');
      const { status, body } =
        method === 'GET' ? await alice.get(path) : await alice.post(path, { mode: 'retry_failed' });
      expect(status).toBe(400);
      expect(body.error.code).toBe('invalid_input');
      expect(body.error.message).toMatch(/%-encoding/);
      expect(errors).toEqual([]);
    },
  );
});
