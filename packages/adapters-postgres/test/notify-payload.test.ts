import { LIMITS } from '@finishline/core';
import { propertyParams } from '@finishline/core/testing';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  type ChangeNotice,
  decodeNotice,
  encodeChangeNotices,
  MAX_CHANGE_ENTRY_BYTES,
  NOTIFY_PAYLOAD_BUDGET_BYTES,
  PG_NOTIFY_PAYLOAD_LIMIT_BYTES,
} from '../src/notify-payload.js';

const idChar = fc.constantFrom(...'abcXYZ019_.:@/-'.split(''));
const taskId = fc.string({ unit: idChar, minLength: 1, maxLength: LIMITS.maxIdLength });
const seq = fc.integer({ min: 1, max: LIMITS.maxCount });
const change: fc.Arbitrary<ChangeNotice> = fc
  .tuple(taskId, seq, seq, fc.boolean())
  .map(([id, a, b, terminal]) => ({ taskId: id, firstSeq: Math.min(a, b), seq: Math.max(a, b), terminal }));

describe('NOTIFY payloads', () => {
  it('stay far below the 8000-byte limit: the largest possible entry fits a budget of an eighth of it', () => {
    const largest = encodeChangeNotices([
      {
        taskId: 'x'.repeat(LIMITS.maxIdLength),
        firstSeq: LIMITS.maxCount,
        seq: LIMITS.maxCount,
        terminal: true,
      },
    ]);
    expect(largest).toHaveLength(1);
    expect(Buffer.byteLength(largest[0] ?? '')).toBeLessThanOrEqual(MAX_CHANGE_ENTRY_BYTES + 2);
    expect(MAX_CHANGE_ENTRY_BYTES + 2).toBeLessThan(NOTIFY_PAYLOAD_BUDGET_BYTES);
    expect(NOTIFY_PAYLOAD_BUDGET_BYTES * 8).toBeLessThanOrEqual(PG_NOTIFY_PAYLOAD_LIMIT_BYTES);
  });

  it('pack changes into payloads within the budget that decode to the same changes in the same order', () => {
    fc.assert(
      fc.property(fc.array(change, { maxLength: 60, size: 'max' }), (changes) => {
        const payloads = encodeChangeNotices(changes);
        const decoded: ChangeNotice[] = [];
        for (const payload of payloads) {
          expect(Buffer.byteLength(payload)).toBeLessThanOrEqual(NOTIFY_PAYLOAD_BUDGET_BYTES);
          const notice = decodeNotice(payload);
          if (notice.kind !== 'changes') throw new Error(`payload ${payload} decoded as ${notice.kind}`);
          decoded.push(...notice.changes);
        }
        expect(decoded).toEqual(changes);
        // Packed, not one per change: each payload but the last had no room for the next one's first entry.
        for (let i = 0; i + 1 < payloads.length; i++) {
          const next = decodeNotice(payloads[i + 1]);
          if (next.kind !== 'changes' || next.changes[0] === undefined)
            throw new Error('undecodable payload');
          const entry = encodeChangeNotices([next.changes[0]])[0] ?? '';
          expect((payloads[i] ?? '').length + entry.length - 1).toBeGreaterThan(NOTIFY_PAYLOAD_BUDGET_BYTES);
        }
      }),
      propertyParams(300),
    );
  });

  it('decode barriers, and anything else as malformed without throwing', () => {
    expect(decodeNotice('{"barrier":"abc","xmin":"12345678901234"}')).toEqual({
      kind: 'barrier',
      listenerId: 'abc',
      xmin: 12345678901234n,
    });
    const malformed = [
      undefined,
      '',
      'hello',
      '[]',
      '{}',
      'null',
      '[["t",1,1]]',
      '[["t",2,1,0]]',
      '[["t",0,1,0]]',
      '[["t",1,1,true]]',
      '[["bad id!",1,1,0]]',
      `[["${'x'.repeat(LIMITS.maxIdLength + 1)}",1,1,0]]`,
      '[["t",1,1.5,0]]',
      '[["t",1,9007199254740993,0]]',
      '{"barrier":"abc","xmin":"-1"}',
      '{"barrier":"abc"}',
      'x'.repeat(PG_NOTIFY_PAYLOAD_LIMIT_BYTES + 1),
    ];
    for (const payload of malformed)
      expect(decodeNotice(payload), String(payload)).toEqual({ kind: 'malformed' });
  });

  it('never throw on arbitrary text', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string(), fc.json()), (payload) => {
        expect(['changes', 'barrier', 'malformed']).toContain(decodeNotice(payload).kind);
      }),
      propertyParams(500),
    );
  });
});
