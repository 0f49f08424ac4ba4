import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { ID_PATTERN, LIMITS, MAX_FRAME_BYTES, MAX_ID_LENGTH, MAX_MESSAGE_LENGTH } from './limits.js';

describe('LIMITS', () => {
  it('states maxCount and the frame limit as they were written before (the literals keep bundles small)', () => {
    expect(LIMITS.maxCount).toBe(Number.MAX_SAFE_INTEGER);
    expect(LIMITS.maxFrameBytes).toBe(128 * 1024);
  });

  it('has the inlinable constants equal to its fields', () => {
    expect(MAX_ID_LENGTH).toBe(LIMITS.maxIdLength);
    expect(MAX_MESSAGE_LENGTH).toBe(LIMITS.maxMessageLength);
    expect(MAX_FRAME_BYTES).toBe(LIMITS.maxFrameBytes);
    expect(Object.isFrozen(LIMITS)).toBe(true);
  });

  it("equals the table of docs/protocol.md's Limits section, which names every limit", () => {
    const doc = readFileSync(new URL('../../../docs/protocol.md', import.meta.url), 'utf8');
    const section = doc.slice(doc.indexOf('## Limits'), doc.indexOf('## Shared types'));
    // `| \`maxJsonBytes\` | 16 384 bytes | …`: the first number of the value, digits grouped by spaces.
    const stated = new Map(
      [...section.matchAll(/^\| `(max\w+)` \| ([^|]+) \|/gm)].map(([, name, value]) => [name, value]),
    );
    const number = (value: string | undefined) =>
      value?.startsWith('2^53 − 1') ? 2 ** 53 - 1 : Number(value?.match(/^[\d ]+/)?.[0].replaceAll(' ', ''));
    expect([...stated.keys()].sort()).toEqual(Object.keys(LIMITS).sort());
    for (const [name, value] of Object.entries(LIMITS)) expect(number(stated.get(name)), name).toBe(value);
    expect(section).toContain(`| \`ID_PATTERN\` | \`${ID_PATTERN.source}\` |`);
  });
});
