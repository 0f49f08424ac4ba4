import { propertyParams, propertyRuns } from '@finishline/core/testing';
import fc from 'fast-check';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { integerArrayLiteral, textArrayLiteral } from '../src/array-literal.js';
import { pgUrl } from './support.js';

// What Postgres itself reads from the literals the append statements bind: each must stand for exactly the
// array it was built from, whatever the strings hold.
const client = new pg.Client({ connectionString: pgUrl() });
const connected = client.connect();
afterAll(() => client.end());

async function readBack(literal: string, type: 'text[]' | 'int8[]'): Promise<unknown[]> {
  await connected;
  // As text, so that no type parser of pg's stands between Postgres's reading and the comparison.
  const { rows } = await client.query<{ elements: string[] }>(
    `SELECT array(SELECT x::text FROM unnest($1::${type}) AS x) AS elements`,
    [literal],
  );
  return rows[0]?.elements ?? [];
}

describe('textArrayLiteral', () => {
  it.each([
    [[]],
    [['']],
    [['NULL', 'null']],
    [['t-1', 'job:7/node@a.b_c']],
    [['a"b', 'c\\d', '\\"', '"']],
    [['{a,b}', 'x,y', ' spaced ', '\t\n']],
    [['ünïcødé', '😀', 'a\u0001b']],
  ])('stands for %j', async (values) => {
    expect(await readBack(textArrayLiteral(values), 'text[]')).toEqual(values);
  });

  it(`stands for any array of strings (${propertyRuns(200)} arrays of up to 50 strings)`, async () => {
    // Strings made of the characters an array literal treats specially, and any others.
    const special = fc.constantFrom('"', '\\', ',', '{', '}', ' ', 'N', 'U', 'L', 'a', '\u00e9');
    const text = fc.oneof(fc.string({ unit: special, maxLength: 8 }), fc.string({ maxLength: 8 }));
    await fc.assert(
      fc.asyncProperty(fc.array(text, { maxLength: 50, size: 'max' }), async (values) => {
        // Postgres text cannot hold U+0000.
        const stored = values.map((value) => value.replaceAll('\u0000', ''));
        expect(await readBack(textArrayLiteral(stored), 'text[]')).toEqual(stored);
      }),
      propertyParams(200),
    );
  });
});

describe('integerArrayLiteral', () => {
  it(`stands for any array of safe integers (${propertyRuns(200)} arrays of up to 50)`, async () => {
    const safe = fc.integer({ min: Number.MIN_SAFE_INTEGER, max: Number.MAX_SAFE_INTEGER });
    await fc.assert(
      fc.asyncProperty(fc.array(safe, { maxLength: 50, size: 'max' }), async (values) => {
        expect(await readBack(integerArrayLiteral(values), 'int8[]')).toEqual(values.map(String));
      }),
      propertyParams(200),
    );
  });

  it('is {} for no values', async () => {
    expect(await readBack(integerArrayLiteral([]), 'int8[]')).toEqual([]);
  });
});
