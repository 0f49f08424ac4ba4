// biome-ignore-all lint/suspicious/noExplicitAny: JSON bodies of API responses, checked by the assertions.
import { gzipSync } from 'node:zlib';
import { afterEach, describe, expect, it } from 'vitest';
import { type Client, errorRecorder, type Harness, login, postAs, startHarness } from './harness.js';

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

/**
 * Every body the JSON parser refuses is the client's mistake, answered with a code that says which: an
 * unsupported charset or content encoding, and a compressed body that does not inflate, were answered with
 * the parser's 415 or 400 but `{ code: 'internal', message: 'internal error' }`, and logged as server errors.
 */
describe('bodies the JSON parser refuses', () => {
  const routes: [string, string][] = [
    ['sign-in (before any session)', '/api/login'],
    ['a batch (after the session check)', '/api/batch'],
    ['a template', '/api/templates'],
    ['a cancel (the Finishline HTTP API)', '/progress/tasks/some-task/cancel'],
  ];
  const bodies: [string, Record<string, string>, string | Buffer, number, string, RegExp][] = [
    [
      'an unsupported charset',
      { 'content-type': 'application/json; charset=koi8-r' },
      '{}',
      415,
      'unsupported_media_type',
      /charset "koi8-r".*UTF-8/,
    ],
    [
      'an unsupported content encoding',
      { 'content-encoding': 'zstd-x' },
      '{}',
      415,
      'unsupported_media_type',
      /content encoding "zstd-x"/,
    ],
    [
      'a gzip body that does not inflate',
      { 'content-encoding': 'gzip' },
      'not gzip at all',
      400,
      'invalid_input',
      /could not be read/,
    ],
    ['malformed JSON', {}, '{"operation":', 400, 'invalid_json', /not valid JSON/],
    ['JSON that is not an object or array', {}, '"x"', 400, 'invalid_json', /not valid JSON/],
    ['a body too large', {}, `"${'x'.repeat(1_400_000)}"`, 413, 'payload_too_large', /larger than \d+ bytes/],
    [
      'a gzip body too large once inflated',
      { 'content-encoding': 'gzip' },
      gzipSync(`"${'x'.repeat(1_400_000)}"`),
      413,
      'payload_too_large',
      /larger than/,
    ],
  ];
  it.each(routes)(
    '%s: each gets its own 4xx code, never internal, and no server error is logged',
    async (_name, path) => {
      const { errors, logger } = errorRecorder();
      h = await startHarness({ app: { logger } });
      const alice: Client = await login(h.base, 'alice');
      const seen: string[] = [];
      for (const [what, headers, body, status, code, message] of bodies) {
        const res = await postAs(alice, h.base, path, body as string, headers);
        const answer = (await res.json()) as any;
        seen.push(`${what}: ${res.status} ${answer.error?.code}`);
        expect(answer.error.code, what).toBe(code);
        expect(res.status, what).toBe(status);
        expect(answer.error.message, what).toMatch(message);
      }
      expect(errors, seen.join('\n')).toEqual([]);
    },
  );
});
