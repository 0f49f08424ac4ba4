import fc from 'fast-check';
import * as v from 'valibot';
import { describe, expect, it } from 'vitest';
import { ErrorCode } from '../codes.js';
import { LIMITS } from '../limits.js';
import { decodeServerFrame } from '../protocol/server-frame-decoder.js';
import { propertyParams, propertyRuns } from '../testing/property-config.js';
import { appendSchema, commonAppend, parseAppendInput } from './inputs.js';

const KEY_MAX = LIMITS.maxKeyLength;
const MESSAGE_MAX = LIMITS.maxMessageLength;
/** Texts at and across the limits and the storable-text rule, built outright (no size cap applies). */
const anyText = fc.constantFrom(
  '',
  'node-7',
  'a'.repeat(KEY_MAX),
  'a'.repeat(KEY_MAX + 1),
  'b'.repeat(MESSAGE_MAX),
  'b'.repeat(MESSAGE_MAX + 1),
  'nul\u0000inside',
  'lone \ud800 surrogate',
  'pair \ud83d\ude00 ok',
);
const anyCount = fc.constantFrom(
  0,
  7,
  LIMITS.maxCount,
  LIMITS.maxCount + 1,
  -1,
  -0,
  1.5,
  Number.NaN,
  Infinity,
);
const anyValue = fc.oneof(
  anyText,
  anyCount,
  fc.constantFrom(undefined, null, true, 'item', {}, [], { a: 1 }),
);

/** Optional fields: absent, undefined, null or a valid value (the record leaves optional keys out at random). */
const optional = <T>(values: fc.Arbitrary<T>) => fc.oneof(values, fc.constantFrom(undefined, null));
const key = fc.constantFrom('node-7', 'a'.repeat(KEY_MAX), 'pair \ud83d\ude00 ok');
const shortText = fc.constantFrom('', 'node-8', 'a'.repeat(KEY_MAX));
const message = fc.constantFrom('', 'halfway', 'b'.repeat(MESSAGE_MAX));
const count = fc.constantFrom(0, 7, LIMITS.maxCount);

const item = fc.record(
  {
    type: fc.constant('item'),
    key,
    ok: fc.boolean(),
    error: optional(message),
    detail: fc.constantFrom(undefined, null),
    current: optional(shortText),
  },
  { requiredKeys: ['type', 'key', 'ok'] },
);
const progress = fc.record(
  {
    type: fc.constant('progress'),
    total: optional(count),
    done: fc.oneof(count, fc.constant(undefined)),
    current: optional(shortText),
    message: optional(message),
  },
  { requiredKeys: ['type'] },
);
const fieldNames = ['type', 'key', 'ok', 'error', 'detail', 'current', 'total', 'done', 'message', 'stray'];

/** A valid common append, or one with a field set to any value (right or wrong, the other shape's, a stray key) or removed. */
const nearCommon = fc.oneof(
  fc.oneof(item, progress),
  fc
    .tuple(fc.oneof(item, progress), fc.constantFrom(...fieldNames), anyValue, fc.boolean())
    .map(([input, name, value, remove]) => {
      const changed: Record<string, unknown> = { ...input };
      if (remove) delete changed[name];
      else changed[name] = value;
      return changed;
    }),
);

describe('commonAppend (the fast path of parseAppendInput)', () => {
  it('accepts only what the schema accepts, and returns what the schema returns', () => {
    let taken = 0;
    let valid = 0;
    fc.assert(
      fc.property(nearCommon, (input) => {
        const fast = commonAppend(input);
        const parsed = v.safeParse(appendSchema, input);
        if (parsed.success) valid += 1;
        if (fast === undefined) {
          // The only valid inputs of these shapes it leaves to the schema: items with JSON in `detail`.
          if (parsed.success) expect((input as { detail?: unknown }).detail ?? null).not.toBeNull();
          return;
        }
        taken += 1;
        expect(parsed.success).toBe(true);
        // Same keys in the same order, same values (an undefined value kept as the schema keeps it).
        expect(Object.keys(fast)).toEqual(Object.keys(parsed.output as object));
        expect(fast).toStrictEqual(parsed.output);
      }),
      propertyParams(5000),
    );
    // Not vacuous: most runs take the fast path.
    expect(taken).toBeGreaterThan(propertyRuns(5000) * 0.4);
    expect(taken).toBeGreaterThan(valid * 0.95);
  });

  it('takes the appends a running task makes, and copies them', () => {
    const item = { type: 'item', key: 'node-1', ok: true, current: 'node-2' };
    expect(commonAppend(item)).toEqual(item);
    expect(commonAppend(item)).not.toBe(item);
    expect(commonAppend({ type: 'progress', done: 3, total: 10, message: 'halfway' })).toBeDefined();
    // Left to the schema: JSON, terminal events.
    expect(commonAppend({ type: 'item', key: 'k', ok: true, detail: { a: 1 } })).toBeUndefined();
    expect(commonAppend({ type: 'completed' })).toBeUndefined();
    // An object without a prototype, as the schema takes it (fast-check's records include some).
    expect(
      commonAppend(Object.assign(Object.create(null), { type: 'item', key: 'k', ok: true })),
    ).toBeDefined();
  });

  it("copies an item's detail and a result, at every depth (the stores keep them as parsed)", () => {
    const detail = { node: { taints: [{ key: 'k' }] } };
    const parsedItem = parseAppendInput({ type: 'item', key: 'k', ok: true, detail }) as { detail: unknown };
    detail.node.taints[0]!.key = 'changed';
    expect(parsedItem.detail).toEqual({ node: { taints: [{ key: 'k' }] } });
    const result = { tainted: ['node-1'] };
    const parsedEnd = parseAppendInput({ type: 'completed', result }) as { result: unknown };
    result.tainted.push('node-2');
    expect(parsedEnd.result).toEqual({ tainted: ['node-1'] });
  });

  it('leaves the refusal and its message to the schema', () => {
    expect(() => parseAppendInput({ type: 'item', key: '', ok: true })).toThrow(
      expect.objectContaining({
        code: ErrorCode.InvalidInput,
        message: 'Invalid event: key: must not be empty',
      }),
    );
    expect(() => parseAppendInput({ type: 'item', key: 'k', ok: true, stray: 1 })).toThrow(
      expect.objectContaining({ code: ErrorCode.InvalidInput }),
    );
  });
});

describe('the message of a field misspelt or left out', () => {
  // valibot's own words were `Invalid key: Expected never but received "completed"` and `Invalid key:
  // Expected "ok" but received undefined`.
  it('says the field is unknown, or required, by its name', () => {
    expect(() => parseAppendInput({ type: 'progress', completed: 1 })).toThrow(
      expect.objectContaining({
        code: ErrorCode.InvalidInput,
        message: 'Invalid event: completed: unknown field',
      }),
    );
    expect(() => parseAppendInput({ type: 'item', key: 'a' })).toThrow(
      expect.objectContaining({
        code: ErrorCode.InvalidInput,
        message: 'Invalid event: ok: required field missing',
      }),
    );
    expect(() => parseAppendInput({ type: 'failed', error: { code: 'x', messsage: 'y' } })).toThrow(
      expect.objectContaining({
        message: 'Invalid event: error.message: required field missing; error.messsage: unknown field',
      }),
    );
  });

  it("keeps the schema's message for a value of the wrong type", () => {
    expect(() => parseAppendInput({ type: 'failed', error: 'boom' })).toThrow(
      expect.objectContaining({
        message: expect.stringMatching(/^Invalid event: error: Invalid type: Expected Object/),
      }),
    );
  });
});

describe('a result or detail whose JSON is not the value checked', () => {
  const progress = { total: null, done: 0, succeeded: 0, failed: 0, current: null, message: null };
  /** What every watcher's decoder makes of `result` as the terminal event of a task. */
  const watcherSees = (result: unknown) =>
    decodeServerFrame(
      JSON.stringify({
        type: 'event',
        event: { type: 'completed', taskId: 't', seq: 1, time: 0, progress, result },
      }),
    );

  // What JSON.stringify writes in place of the value the JSON rules walk: an array's own toJSON, an Array
  // subclass's, a getter that answers differently the second time it is read.
  const disguised = (json: () => unknown): unknown[] => {
    class Rows extends Array {
      toJSON() {
        return json();
      }
    }
    let reads = 0;
    return [
      Object.assign(['ok'], { toJSON: json }),
      Rows.from(['ok']),
      {
        get rows() {
          reads += 1;
          return reads === 1 ? 'ok' : json();
        },
      },
    ];
  };
  const breaking: [string, () => unknown][] = [
    ['an own __proto__ key', () => JSON.parse('{"__proto__":{"admin":true}}')],
    ['U+0000', () => 'a\u0000b'],
    ['a lone surrogate', () => ['\ud800']],
    ['70 levels of nesting', () => JSON.parse(`${'['.repeat(70)}${']'.repeat(70)}`)],
    [
      '65 levels of nesting, one past the limit',
      () => JSON.parse(`${'{"a":'.repeat(64)}{}${'}'.repeat(64)}`),
    ],
    ['more than maxJsonBytes', () => 'x'.repeat(LIMITS.maxJsonBytes)],
  ];

  it.each(breaking)('is refused as invalid_input when its JSON has %s', (_name, json) => {
    for (const value of disguised(json)) {
      for (const input of [
        { type: 'completed', result: value },
        { type: 'item', key: 'k', ok: true, detail: value },
      ]) {
        expect(() => parseAppendInput(input)).toThrow(
          expect.objectContaining({ code: ErrorCode.InvalidInput }),
        );
      }
    }
  });

  it('is refused as invalid_input when it has no JSON at all (a toJSON returning undefined)', () => {
    const value = Object.assign(['ok'], { toJSON: () => undefined });
    expect(() => parseAppendInput({ type: 'completed', result: value })).toThrow(
      expect.objectContaining({ code: ErrorCode.InvalidInput, message: expect.stringContaining('result') }),
    );
  });

  it('is accepted exactly when what is stored is a value every watcher decodes', () => {
    // Valid JSON (fast-check's, up to its size) and the breaking ones above, through each disguise.
    const values = fc.oneof(
      fc.jsonValue({ maxDepth: 4, depthSize: 'medium' }),
      fc.constantFrom(...breaking.map(([, json]) => json())),
    );
    fc.assert(
      fc.property(values, fc.nat(2), (json, which) => {
        const value = disguised(() => json)[which];
        let stored: unknown;
        try {
          stored = (parseAppendInput({ type: 'completed', result: value }) as { result: unknown }).result;
        } catch (error) {
          expect(error).toMatchObject({ code: ErrorCode.InvalidInput });
          const text = JSON.stringify(value);
          expect(text === undefined || !watcherSees(JSON.parse(text)).ok).toBe(true);
          return;
        }
        expect(stored).toEqual(JSON.parse(JSON.stringify(value)));
        expect(watcherSees(stored).ok).toBe(true);
      }),
      propertyParams(300),
    );
  });
});
