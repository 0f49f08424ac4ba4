import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ID_PATTERN, LIMITS, MAX_ID_LENGTH } from '../limits.js';
import { propertyParams } from '../testing/property-config.js';
import { parseSseEventId, SSE_END_MARK, SSE_ID_SEPARATOR, sseEventId } from './sse-event-id.js';

const seqs = fc.oneof(fc.nat(), fc.constant(LIMITS.maxCount));
/** Ids as the stores make epochs (a UUID, an md5) and anything else ID_PATTERN allows. */
const epochs = fc.oneof(
  fc.uuid(),
  fc.stringMatching(/^[0-9a-f]{32}$/),
  // size 'max': at fast-check's default size a `{1,128}` repeat stays at 12 characters or fewer (566 of
  // these in 1,000 runs, none longer), so no epoch came near the 128-character limit; with it, up to 128.
  fc
    .stringMatching(/^[A-Za-z0-9_.:@/-]{1,128}$/, { size: 'max' })
    .filter((id) => !['__proto__', 'constructor', 'prototype'].includes(id)),
);

describe('SSE event ids', () => {
  it('cannot meet its separator in an epoch', () => {
    expect(ID_PATTERN.test(`a${SSE_ID_SEPARATOR}b`)).toBe(false);
  });

  it('round-trips every seq, with and without an epoch', () => {
    fc.assert(
      fc.property(seqs, fc.option(epochs, { nil: undefined }), (seq, epoch) => {
        const id = sseEventId(seq, epoch);
        expect(parseSseEventId(id)).toEqual(epoch === undefined ? { seq } : { seq, epoch });
      }),
      propertyParams(1000),
    );
  });

  it('cannot meet its end mark in an epoch or a seq', () => {
    expect(ID_PATTERN.test(`a${SSE_END_MARK}`)).toBe(false);
    expect(/\d/.test(SSE_END_MARK)).toBe(false);
  });

  it("reads a terminal frame's id, with and without an epoch, as a cursor that has the end", () => {
    fc.assert(
      fc.property(seqs, fc.option(epochs, { nil: undefined }), (seq, epoch) => {
        const id = sseEventId(seq, epoch) + SSE_END_MARK;
        expect(parseSseEventId(id)).toEqual(
          epoch === undefined ? { seq, ended: true } : { seq, epoch, ended: true },
        );
      }),
      propertyParams(1000),
    );
  });

  it('reads an id of a seq alone (older clients, a hand-written header) as a seq without an epoch', () => {
    expect(parseSseEventId('0')).toEqual({ seq: 0 });
    expect(parseSseEventId('42')).toEqual({ seq: 42 });
  });

  it('reads a seq zero-padded past 16 characters as the integer it names, as a shorter padding is', () => {
    expect(parseSseEventId('0000000000000005')).toEqual({ seq: 5 });
    expect(parseSseEventId('00000000000000005')).toEqual({ seq: 5 });
    expect(parseSseEventId(`${'0'.repeat(40)}5~e!`)).toEqual({ seq: 5, epoch: 'e', ended: true });
    expect(parseSseEventId(`0${LIMITS.maxCount}`)).toEqual({ seq: LIMITS.maxCount });
    // The range still holds: padding adds no significant digit.
    expect(parseSseEventId('09007199254740992')).toBeUndefined();
    expect(parseSseEventId('0'.repeat(17))).toEqual({ seq: 0 });
  });

  it.each([
    ['', 'empty'],
    ['x', 'not a number'],
    ['-1', 'negative'],
    ['1.5', 'not an integer'],
    [' 5', 'a space'],
    ['9007199254740992', 'above maxCount'],
    ['12345678901234567', 'more than 16 digits'],
    ['~e', 'no seq'],
    ['5~', 'an empty epoch'],
    ['5~a b', 'an epoch that is not an id'],
    ['5~a~b', 'a second separator'],
    ['!', 'an end mark alone'],
    ['5!!', 'two end marks'],
    ['5!~e', 'an end mark before the epoch'],
    ['5~__proto__', 'a reserved id'],
    [`5~${'e'.repeat(MAX_ID_LENGTH + 1)}`, 'an epoch above the id length limit'],
  ])('refuses %j (%s)', (text) => {
    expect(parseSseEventId(text)).toBeUndefined();
  });
});
