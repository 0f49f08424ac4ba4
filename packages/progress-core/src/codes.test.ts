import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { CloseCode, ERROR_CODES } from './codes.js';

/** Every code is documented in docs/errors.md (the house rule: codes live here, and are documented there). */
const errorsDoc = readFileSync(new URL('../../../docs/errors.md', import.meta.url), 'utf8');
const protocolDoc = readFileSync(new URL('../../../docs/protocol.md', import.meta.url), 'utf8');
/** The rows of the tables in `doc` between two headings: `| first cell | second cell |`. */
const rows = (doc: string, from: string, to: string) => {
  const start = doc.indexOf(from);
  // A heading renamed fails here: at -1, the slice was empty and the section's codes went unchecked.
  expect(start, `heading ${JSON.stringify(from)}`).toBeGreaterThanOrEqual(0);
  const end = doc.indexOf(to, start);
  // No heading after it: the section runs to the end of the file.
  const section = doc.slice(start, end < 0 ? undefined : end);
  return [...section.matchAll(/^\| ([^|]+?) \| ([^|]+?) \|/gm)].map(
    ([, first, second]) => [first as string, second as string] as const,
  );
};

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

  it('documents every close code in docs/protocol.md too, under the same name', () => {
    for (const [name, code] of Object.entries(CloseCode)) {
      expect(protocolDoc, name).toContain(`| ${code} | \`${name}\` |`);
    }
  });

  it('has every code the docs list in their tables of error and close codes', () => {
    const known = new Set<string>(ERROR_CODES);
    const closeCodes = new Map(Object.entries(CloseCode).map(([name, code]) => [String(code), name]));
    const errorRows = [
      ...rows(errorsDoc, '## Error codes', '## WebSocket close codes'),
      ...rows(protocolDoc, '### Validation', '### Close codes'),
    ];
    for (const [first] of errorRows) {
      const code = first.match(/^`(\w+)`$/)?.[1];
      if (code !== undefined) expect(known.has(code), `${code} is not an ErrorCode`).toBe(true);
    }
    const closeRows = [
      ...rows(errorsDoc, '## WebSocket close codes', '\n## '),
      ...rows(protocolDoc, '### Close codes', '## HTTP API'),
    ].filter(([first]) => /^\d+$/.test(first));
    expect(closeRows.length).toBeGreaterThanOrEqual(2 * closeCodes.size);
    for (const [first, second] of closeRows) {
      expect(`${first} ${second}`).toBe(`${first} \`${closeCodes.get(first)}\``);
    }
  });

  it('has the per-principal socket cap (issue 10, item 5)', () => {
    expect(ERROR_CODES).toContain('too_many_sockets');
    expect(CloseCode.TooManySockets).toBe(4009);
  });
});
