import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { CloseCode, ERROR_CODES } from './codes.js';

/** Every code is documented in docs/errors.md (the house rule: codes live here, and are documented there). */
const errorsDoc = readFileSync(new URL('../../../docs/errors.md', import.meta.url), 'utf8');

describe('codes', () => {
  it('documents every error code in docs/errors.md', () => {
    for (const code of ERROR_CODES) expect(errorsDoc, code).toContain(`| \`${code}\` |`);
  });

  it('documents every close code in docs/errors.md, and no two names share a number', () => {
    for (const [name, code] of Object.entries(CloseCode)) {
      expect(errorsDoc, name).toContain(`| ${code} | \`${name}\` |`);
    }
    expect(new Set(Object.values(CloseCode)).size).toBe(Object.keys(CloseCode).length);
  });

  it('has the per-principal socket cap (issue 10, item 5)', () => {
    expect(ERROR_CODES).toContain('too_many_sockets');
    expect(CloseCode.TooManySockets).toBe(4009);
  });
});
