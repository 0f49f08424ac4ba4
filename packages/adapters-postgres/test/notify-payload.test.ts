import { LIMITS, type TaskEvent } from '@finishline/core';
import { propertyParams, propertyTimeoutMs } from '@finishline/core/testing';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  type ChangeNotice,
  decodeNotice,
  encodeChangeNotices,
  MAX_CHANGE_ENTRY_BYTES,
  NOTIFY_EVENTS_PAYLOAD_BUDGET_BYTES,
  NOTIFY_PAYLOAD_BUDGET_BYTES,
  PAYLOADS_SEPARATOR,
  PG_NOTIFY_PAYLOAD_LIMIT_BYTES,
} from '../src/notify-payload.js';

const idChar = fc.constantFrom(...'abcXYZ019_.:@/-'.split(''));
// size 'max': at fast-check's default size the ids stayed at 11 characters or fewer, so no payload held an id
// near the 128-character limit that MAX_CHANGE_ENTRY_BYTES is computed from.
const taskId = fc.string({ unit: idChar, minLength: 1, maxLength: LIMITS.maxIdLength, size: 'max' });
const seq = fc.integer({ min: 1, max: LIMITS.maxCount });
// With a run (a creation time, any safe integer) or without one, as a sender of an older version wrote.
const run = fc.option(fc.integer({ min: Number.MIN_SAFE_INTEGER, max: Number.MAX_SAFE_INTEGER }), {
  nil: undefined,
});
const change: fc.Arbitrary<ChangeNotice> = fc
  .tuple(taskId, seq, seq, fc.boolean(), run)
  .map(([id, a, b, terminal, created]) => {
    const notice: ChangeNotice = { taskId: id, firstSeq: Math.min(a, b), seq: Math.max(a, b), terminal };
    if (created !== undefined) notice.run = created;
    return notice;
  });

/**
 * The project's parameters with a time limit, for the properties over long payloads: shrinking a failure of
 * the byte budget (60 changes, texts of 1,500 characters) took 87 s for the packing property and more than
 * 9 minutes, unfinished, for the events one (a budget overrun of 10 bytes planted). Stopped at the limit,
 * fast-check reports the seed, the path and the smallest counterexample found by then; a passing run takes
 * about a second, and a limit it reaches fails as interrupted.
 */
function shrinkBoundedParams(numRuns: number) {
  return {
    ...propertyParams(numRuns),
    interruptAfterTimeLimit: propertyTimeoutMs(numRuns, 20_000),
    markInterruptAsFailure: true,
  };
}

describe('NOTIFY payloads', () => {
  it("carry each task's run, and decode an entry without one as an older version wrote it", () => {
    const [payload] = encodeChangeNotices([
      { taskId: 'job-1', firstSeq: 3, seq: 5, terminal: false, run: 1700000000123 },
    ]);
    expect(payload).toBe('[["job-1",3,5,0,1700000000123]]');
    expect(decodeNotice(payload)).toEqual({
      kind: 'changes',
      changes: [{ taskId: 'job-1', firstSeq: 3, seq: 5, terminal: false, run: 1700000000123 }],
    });
    const older = decodeNotice('[["job-1",3,5,0],["job-2",1,1,1]]');
    expect(older).toEqual({
      kind: 'changes',
      changes: [
        { taskId: 'job-1', firstSeq: 3, seq: 5, terminal: false },
        { taskId: 'job-2', firstSeq: 1, seq: 1, terminal: true },
      ],
    });
    if (older.kind !== 'changes') throw new Error('not changes');
    expect(older.changes.some((change) => 'run' in change)).toBe(false);
    // With events, as an older version sent them too.
    const withEvents = decodeNotice(
      '[["job-1",1,1,0]]\n[[["progress",1700000000000,{"progress":{"total":null,"done":0,"succeeded":0,"failed":0,"current":null,"message":"m"}}]]]',
    );
    expect(withEvents).toMatchObject({
      kind: 'changes',
      changes: [{ taskId: 'job-1', seq: 1, events: [{ seq: 1 }] }],
    });
  });

  it('are malformed when an entry has a run that is not an integer, or more than five fields', () => {
    for (const payload of [
      '[["job-1",1,1,0,"1700000000000"]]',
      '[["job-1",1,1,0,1.5]]',
      '[["job-1",1,1,0,null]]',
      '[["job-1",1,1,0,1,2]]',
    ]) {
      expect(decodeNotice(payload)).toEqual({ kind: 'malformed' });
    }
  });

  it('stay far below the 8000-byte limit: the largest possible entry fits a budget of an eighth of it', () => {
    const largest = encodeChangeNotices([
      {
        taskId: 'x'.repeat(LIMITS.maxIdLength),
        firstSeq: LIMITS.maxCount,
        seq: LIMITS.maxCount,
        terminal: true,
        run: Number.MIN_SAFE_INTEGER,
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
      shrinkBoundedParams(300),
    );
  });

  /** A change of `count` events from `firstSeq`, the last terminal when `terminal`; `text` sizes them. */
  function withEvents(id: string, firstSeq: number, texts: string[], terminal: boolean): ChangeNotice {
    const seq = firstSeq + texts.length - 1;
    const events = texts.map((text, index): TaskEvent => {
      const progress = {
        total: null,
        done: index,
        succeeded: index,
        failed: 0,
        current: null,
        message: text,
      };
      return terminal && index === texts.length - 1
        ? {
            taskId: id,
            seq: firstSeq + index,
            time: 1_700_000_000_000 + index,
            type: 'completed',
            result: { text },
            progress,
          }
        : { taskId: id, seq: firstSeq + index, time: 1_700_000_000_000 + index, type: 'progress', progress };
    });
    return { taskId: id, firstSeq, seq, terminal, events };
  }
  const eventful: fc.Arbitrary<ChangeNotice> = fc
    .tuple(
      taskId,
      fc.integer({ min: 1, max: 1000 }),
      // Non-ASCII text too: the budget is in bytes, and such characters take two to four.
      // U+0001 too: it joins a statement's payloads (PAYLOADS_SEPARATOR), so it must never occur raw in one.
      fc.array(
        // size 'max' here and on the changes: at fast-check's default size, strings stay near 10 units and
        // arrays near 10 items whatever maxLength says, and 200 runs then produced no payload over 6,000 B
        // and no event too large to travel (measured); with it, 120 and 2,455.
        fc.string({
          maxLength: 1500,
          size: 'max',
          unit: fc.constantFrom('a', '"', '\\', 'é', '€', '😀', '\n', '\u0001'),
        }),
        { minLength: 1, maxLength: 4 },
      ),
      fc.boolean(),
    )
    .map(([id, firstSeq, texts, terminal]) => withEvents(id, firstSeq, texts, terminal));

  // Ids-only changes of a few seqs, so that comparing seq by seq stays small.
  const narrow: fc.Arbitrary<ChangeNotice> = fc
    .tuple(taskId, fc.integer({ min: 1, max: LIMITS.maxCount - 5 }), fc.nat({ max: 5 }), fc.boolean())
    .map(([id, firstSeq, width, terminal]) => ({ taskId: id, firstSeq, seq: firstSeq + width, terminal }));

  /** A change as the seqs it announces: `[taskId, seq, terminal, event or undefined]` each. */
  function perSeq(changes: readonly ChangeNotice[]) {
    return changes.flatMap((c) =>
      Array.from({ length: c.seq - c.firstSeq + 1 }, (_, i) => ({
        taskId: c.taskId,
        seq: c.firstSeq + i,
        terminal: c.terminal && c.firstSeq + i === c.seq,
        event: c.events?.[i],
        change: c,
      })),
    );
  }

  it('carry the events when they fit, within the byte budget, and decode to the same changes in order', () => {
    fc.assert(
      fc.property(fc.array(fc.oneof(narrow, eventful), { maxLength: 40, size: 'max' }), (changes) => {
        const payloads = encodeChangeNotices(changes);
        const decoded: ChangeNotice[] = [];
        for (const payload of payloads) {
          expect(payload.includes(PAYLOADS_SEPARATOR)).toBe(false);
          const withContent = payload.includes('\n');
          expect(Buffer.byteLength(payload)).toBeLessThanOrEqual(
            withContent ? NOTIFY_EVENTS_PAYLOAD_BUDGET_BYTES : NOTIFY_PAYLOAD_BUDGET_BYTES,
          );
          const notice = decodeNotice(payload);
          if (notice.kind !== 'changes') throw new Error(`payload ${payload} decoded as ${notice.kind}`);
          decoded.push(...notice.changes);
        }
        const sent = perSeq(changes);
        const received = perSeq(decoded);
        // The same entries, seqs, terminal flags and order.
        expect(decoded.map(({ events: _events, ...ids }) => ids)).toEqual(
          changes.map(({ events: _events, ...ids }) => ids),
        );
        sent.forEach((one, index) => {
          const got = received[index]?.event;
          if (got !== undefined) {
            expect(got).toEqual(one.event);
            expect(Object.isFrozen(got.progress)).toBe(true);
            return;
          }
          // Arrived ids-only: it had no event, or its change's events could not fit a payload on their own.
          if (one.event === undefined) return;
          const [alone] = encodeChangeNotices([one.change]);
          expect(alone?.includes('\n'), `events that fit travel with their change (seq ${one.seq})`).toBe(
            false,
          );
        });
      }),
      shrinkBoundedParams(200),
    );
  });

  it('fill payloads with events up to the byte budget, never past it', () => {
    let fullest = 0;
    for (let pad = 0; pad < 400; pad++) {
      // Events whose sizes sweep byte by byte across the budget boundary, in multi-byte characters too.
      const texts =
        pad % 2 === 0
          ? ['a'.repeat(2500 + pad), 'b'.repeat(4200)]
          : ['é'.repeat(1500 + pad), 'a'.repeat(2000 + pad * 3), '€'.repeat(400 + pad)];
      for (const payload of encodeChangeNotices([withEvents('edge', 1, texts, false)])) {
        const bytes = Buffer.byteLength(payload);
        expect(bytes, `payload with padding ${pad}`).toBeLessThanOrEqual(NOTIFY_EVENTS_PAYLOAD_BUDGET_BYTES);
        if (payload.includes('\n')) fullest = Math.max(fullest, bytes);
      }
    }
    expect(fullest).toBeGreaterThan(NOTIFY_EVENTS_PAYLOAD_BUDGET_BYTES - 100);
  });

  it('send a task whose events of one transaction exceed a payload ids-only, in one entry', () => {
    const texts = Array.from({ length: 120 }, (_, i) => `event ${i} ${'z'.repeat(150)}`);
    const big = withEvents('hot', 1, texts, true);
    expect(encodeChangeNotices([big])).toEqual(['[["hot",1,120,1]]']);
    // Fewer of the same events fit, and travel with their change.
    const fits = withEvents('hot', 1, texts.slice(0, 20), false);
    const notice = decodeNotice(encodeChangeNotices([fits])[0]);
    expect(notice.kind === 'changes' && notice.changes[0]?.events).toEqual(fits.events);
  });

  it('parse the events only when some change is wanted, and drop events that do not match their entries', () => {
    const [payload] = encodeChangeNotices([withEvents('t', 3, ['a', 'b'], true)]);
    const skipped = decodeNotice(payload, () => false);
    expect(skipped).toEqual({
      kind: 'changes',
      changes: [{ taskId: 't', firstSeq: 3, seq: 4, terminal: true }],
    });
    const full = decodeNotice(payload);
    if (full.kind !== 'changes') throw new Error('not changes');
    expect(full.changes[0]?.events?.map((event) => [event.seq, event.type])).toEqual([
      [3, 'progress'],
      [4, 'completed'],
    ]);
    const ids = '[["t",3,4,1]]';
    const progress =
      '{"progress":{"total":null,"done":0,"succeeded":0,"failed":0,"current":null,"message":null}}';
    const wrong = [
      `${ids}\nnot json`,
      `${ids}\n[]`,
      `${ids}\n[[["progress",1,${progress}]]]`, // one event for two seqs
      `${ids}\n[[["progress",1,${progress}],["progress",2,${progress}]]]`, // the terminal flag lies
      `${ids}\n[[["completed",1,${progress}],["completed",2,${progress}]]]`, // terminal before the last
      `${ids}\n[[["progress",1,${progress}],["bogus",2,${progress}]]]`,
      `${ids}\n[[["progress",1.5,${progress}],["completed",2,${progress}]]]`,
      `${ids}\n[[["progress",1,[]],["completed",2,${progress}]]]`,
      `${ids}\n[[["progress",1,null],["completed",2,${progress}]]]`,
    ];
    for (const text of wrong) {
      expect(decodeNotice(text), text).toEqual({
        kind: 'changes',
        changes: [{ taskId: 't', firstSeq: 3, seq: 4, terminal: true }],
      });
    }
    const completed = `${progress.slice(0, -1)},"result":null}`;
    expect(decodeNotice(`${ids}\n[[["progress",1,${progress}],["completed",2,${completed}]]]`)).toMatchObject(
      {
        kind: 'changes',
        changes: [
          {
            events: [
              { taskId: 't', seq: 3, time: 1 },
              { taskId: 't', seq: 4, time: 2 },
            ],
          },
        ],
      },
    );
    expect(decodeNotice('[["t",3,4,1]x\n[]')).toEqual({ kind: 'malformed' });
    expect(decodeNotice('{"barrier":"abc","xmin":"1"}\n[]')).toEqual({ kind: 'malformed' });
  });

  it("drop events whose body another writer malformed, as a store's read of their rows refuses them", () => {
    // Checked for an object only, such a body reached watchers as the event (its own fields overriding the
    // entry's task, seq or type), where the row read back (`toEvent`) fails: the feed now reads the rows.
    const [payload] = encodeChangeNotices([withEvents('t', 3, ['a', 'b'], true)]);
    const full = decodeNotice(payload);
    if (full.kind !== 'changes') throw new Error('not changes');
    const [first, last] = (full.changes[0]?.events ?? []).map(
      ({ taskId: _t, seq: _s, type, time, ...body }) => [type, time, body] as const,
    );
    if (first === undefined || last === undefined) throw new Error('no events');
    const ids = '[["t",3,4,1]]';
    const text = (body: unknown, time = first[1]) =>
      `${ids}\n${JSON.stringify([[[first[0], time, body], last]])}`;
    expect(decodeNotice(text(first[2])), 'the valid payload').toMatchObject({
      changes: [{ events: [{ seq: 3 }, { seq: 4 }] }],
    });
    const wrong = [
      text({ ...first[2], seq: 99 }), // overrides the entry's seq
      text({ ...first[2], taskId: 'other' }),
      text({ ...first[2], type: 'completed' }), // a terminal type in a change that does not end the task
      text({ ...first[2], unknown: 1 }),
      text({}), // fields missing
      text(first[2], -5), // a time before 1970
    ];
    for (const damaged of wrong) {
      expect(decodeNotice(damaged), damaged).toEqual({
        kind: 'changes',
        changes: [{ taskId: 't', firstSeq: 3, seq: 4, terminal: true }],
      });
    }
  });

  it('decode barriers, purge and epoch notices, and anything else as malformed without throwing', () => {
    expect(decodeNotice('{"barrier":"abc","xmin":"12345678901234"}')).toEqual({
      kind: 'barrier',
      listenerId: 'abc',
      xmin: 12345678901234n,
    });
    expect(decodeNotice('{"purged":["taint-42","a/b"],"xid":"4711"}')).toEqual({
      kind: 'purged',
      taskIds: ['taint-42', 'a/b'],
      xid: 4711n,
    });
    // As versions before the xid sent it: still a purge, of no known transaction.
    expect(decodeNotice('{"purged":["taint-42"]}')).toEqual({ kind: 'purged', taskIds: ['taint-42'] });
    expect(decodeNotice('{"epoch":"5d41402abc4b2a76b9719d911017c592"}')).toEqual({
      kind: 'epoch',
      epoch: '5d41402abc4b2a76b9719d911017c592',
    });
    const malformed = [
      '{"epoch":42}',
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
      '{"purged":[1]}',
      '{"purged":["bad id!"]}',
      `{"purged":["${'x'.repeat(LIMITS.maxIdLength + 1)}"]}`,
      '{"purged":"t"}',
      '{"purged":["t"],"xid":4711}',
      '{"purged":["t"],"xid":"-1"}',
      '{"purged":["t"],"xid":null}',
      'x'.repeat(PG_NOTIFY_PAYLOAD_LIMIT_BYTES + 1),
    ];
    for (const payload of malformed)
      expect(decodeNotice(payload), String(payload)).toEqual({ kind: 'malformed' });
  });

  /**
   * `root` with the value at one of its places 1–4 levels down, or `root` itself (`pick` chooses), replaced
   * by `value`. Four levels reach an event's fields: payload list → entry → event → type, time or body.
   */
  function replaceOne(root: unknown, pick: number, value: unknown): unknown {
    const places: [Record<string, unknown>, string][] = [];
    const walk = (node: unknown, level: number) => {
      if (node === null || typeof node !== 'object' || level > 4) return;
      for (const key of Object.keys(node)) {
        places.push([node as Record<string, unknown>, key]);
        walk((node as Record<string, unknown>)[key], level + 1);
      }
    };
    walk(root, 1);
    const place = places[pick % (places.length + 1)];
    if (place === undefined) return value;
    place[0][place[1]] = value;
    return root;
  }

  const shortEventful: fc.Arbitrary<ChangeNotice> = fc
    .tuple(
      taskId,
      fc.integer({ min: 1, max: 1000 }),
      fc.array(fc.string(), { minLength: 1, maxLength: 4 }),
      fc.boolean(),
    )
    .map(([id, firstSeq, texts, terminal]) => withEvents(id, firstSeq, texts, terminal));

  /**
   * A payload the encoder wrote, damaged: cut short, or one value of its ids or of its events (at any depth)
   * replaced by any JSON value. Arbitrary text alone reaches the entry and event readers almost never: a
   * decoder that threw on an event that is not an array passed 500 runs of it (measured).
   */
  const damagedPayload = fc
    .tuple(
      // Events of short texts, so that they travel in the payload (long ones often go ids-only).
      fc.array(fc.oneof(narrow, shortEventful, shortEventful), { minLength: 1, maxLength: 3 }),
      fc.nat(),
      // null often: reading a field of it throws, where a number or a string reads as undefined.
      fc.oneof(fc.constant(null), fc.jsonValue({ maxDepth: 2 })),
      fc.boolean(),
    )
    .map(([changes, pick, value, cut]) => {
      const payload = encodeChangeNotices(changes)[0] ?? '';
      if (cut) return payload.slice(0, pick % (payload.length + 1));
      const parts = payload.split('\n').map((part) => JSON.parse(part) as unknown);
      // The events list two times in three when there is one: the ids have the other readers' tests too.
      const which = parts.length === 2 && pick % 3 !== 0 ? 1 : 0;
      parts[which] = replaceOne(parts[which], Math.floor(pick / 3), value);
      return parts.map((part) => JSON.stringify(part)).join('\n');
    });

  it('never throw on arbitrary text, or on a payload damaged anywhere', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string(), fc.json(), damagedPayload, damagedPayload), (payload) => {
        expect(['changes', 'barrier', 'purged', 'malformed']).toContain(decodeNotice(payload).kind);
      }),
      propertyParams(500),
    );
  });
});
