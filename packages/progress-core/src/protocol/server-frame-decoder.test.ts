import fc from 'fast-check';
import { describe, expect, it, vi } from 'vitest';
import { ERROR_CODES } from '../codes.js';
import { LIMITS } from '../limits.js';
import { serverFrameArbitrary, taskEventArbitrary, taskViewArbitrary } from '../testing/frame-arbitraries.js';
import { propertyParams, propertyTimeoutMs } from '../testing/property-config.js';
import { expectSameData } from '../testing/same-data.js';
import { decodeServerFrameWithSchemas } from './codec.js';
import type { DecodeResult } from './frame-text.js';
import type { ServerFrame } from './frames.js';
import { SERVER_FRAME_TYPES } from './frames.js';
import { decodeServerFrame, decodeServerText, eventBodyProblem } from './server-frame-decoder.js';

// Frames reach the size limits: room for a loaded CI machine (a timeout, never a timed assertion), scaled
// from the file's smallest count (500) by the run count in force: this setting overrides `npm run
// test:deep`'s --testTimeout, and a fixed 60 s timed out the edge-value property at FC_NUM_RUNS=12000.
vi.setConfig({ testTimeout: propertyTimeoutMs(500, 60_000) });

/**
 * The hand-written decoder against its oracle, the valibot schemas: same acceptance, same frame, same
 * code, message and taskId on failure. Messages are compared too because both follow the schemas'
 * order of checks; a mismatch there usually means a rule was checked out of order or not at all.
 */
function expectSameOutcome(input: unknown): DecodeResult<ServerFrame> {
  const lite = decodeServerFrame(input);
  const oracle = decodeServerFrameWithSchemas(input);
  if (oracle.ok) {
    expectSameData(lite, oracle);
  } else {
    expect(lite.ok).toBe(false);
    if (lite.ok) return lite;
    expect({ code: lite.error.code, message: lite.error.message, taskId: lite.error.taskId }).toEqual({
      code: oracle.error.code,
      message: oracle.error.message,
      taskId: oracle.error.taskId,
    });
    expect('requestId' in lite).toBe(false);
  }
  return lite;
}

type Json = Record<string, unknown>;

/** Every object node of a parsed frame (JSON payloads included), with a way to edit it. */
function objectNodes(root: Json): Json[] {
  const nodes: Json[] = [];
  const walk = (node: unknown, depth: number) => {
    if (typeof node !== 'object' || node === null || depth > 6) return;
    if (!Array.isArray(node)) nodes.push(node as Json);
    for (const child of Object.values(node)) walk(child, depth + 1);
  };
  walk(root, 0);
  return nodes;
}

/** The path of every field of the frame's strict objects (not inside JSON payloads). */
function fieldPaths(root: Json): string[][] {
  const paths: string[][] = [];
  const walk = (node: Json, path: string[]) => {
    for (const [key, value] of Object.entries(node)) {
      paths.push([...path, key]);
      const payload = key === 'result' || key === 'detail';
      if (!payload && typeof value === 'object' && value !== null && !Array.isArray(value)) {
        walk(value as Json, [...path, key]);
      }
    }
  };
  walk(root, []);
  return paths;
}

/** Values that sit on the edges of the rules: bounds, wrong types, reserved names, U+0000. */
const EDGE_VALUES: readonly unknown[] = [
  null,
  true,
  0,
  1,
  -1,
  0.5,
  LIMITS.maxCount,
  LIMITS.maxCount + 1,
  '',
  'a',
  'bad id',
  '__proto__',
  'constructor',
  'prototype',
  'x\u0000y',
  'x'.repeat(LIMITS.maxIdLength),
  'x'.repeat(LIMITS.maxIdLength + 1),
  'k'.repeat(LIMITS.maxKeyLength + 1),
  'r'.repeat(LIMITS.maxRequestIdLength + 1),
  'running',
  'progress',
  'item',
  'completed',
  'hello',
  ERROR_CODES[0],
  [],
  {},
  [1, 2],
  JSON.parse('{"a":{"__proto__":{}}}'),
];

/** A fresh copy, as the wire would deliver it (edits must not share objects, or cycles appear). */
const copyOf = (value: unknown): unknown => JSON.parse(JSON.stringify(value));

const edgeValue: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom(...EDGE_VALUES).map(copyOf) },
  { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 2 }) },
);

const keyArbitrary = fc.oneof(
  fc.constantFrom(
    'type',
    'taskId',
    'seq',
    'progress',
    'requestId',
    '?requestId',
    'id',
    'result',
    'error',
    'reason',
    '__proto__',
    'constructor',
    'unknown field',
    'protocol',
  ),
  fc.string({ maxLength: 8 }),
);

const mutation = fc.record({
  kind: fc.constantFrom('delete', 'replace', 'add', 'retype'),
  node: fc.nat(),
  key: fc.nat(),
  name: keyArbitrary,
  value: edgeValue,
});

/** A valid frame with up to three edits at any depth: mostly invalid, near the rules' edges. */
const mutatedFrameText: fc.Arbitrary<string> = fc
  .tuple(serverFrameArbitrary, fc.array(mutation, { minLength: 1, maxLength: 3 }))
  .map(([frame, edits]) => {
    // JSON.parse so that a `__proto__` key can be added as an own property, as on the wire.
    const root = JSON.parse(JSON.stringify(frame)) as Json;
    let text = JSON.stringify(root);
    for (const edit of edits) {
      const nodes = objectNodes(root);
      const node = nodes[edit.node % nodes.length] as Json;
      const keys = Object.keys(node);
      const key = keys[edit.key % Math.max(1, keys.length)];
      if (edit.kind === 'delete' && key !== undefined) delete node[key];
      else if (edit.kind === 'replace' && key !== undefined) node[key] = edit.value;
      else if (edit.kind === 'retype') node.type = edit.value;
      else node[edit.name] = edit.value;
      text = JSON.stringify(root);
    }
    if (text.includes('"__proto__"')) return text;
    // A `__proto__` key set by assignment is lost by JSON.stringify; write one into the text instead.
    return edits.some((edit) => edit.name === '__proto__' && edit.kind === 'add')
      ? text.replace(/^\{/, '{"__proto__":1,')
      : text;
  });

describe('decodeServerFrame agrees with the valibot schemas', () => {
  it('on every valid frame (the frame itself is returned)', () => {
    fc.assert(
      fc.property(serverFrameArbitrary, (frame) => {
        const result = expectSameOutcome(JSON.stringify(frame));
        expect(result).toStrictEqual({ ok: true, frame });
      }),
      propertyParams(1000),
    );
  });

  it('on mutated frames: deleted, replaced, added and retyped fields at any depth', () => {
    let failures = 0;
    fc.assert(
      fc.property(mutatedFrameText, (text) => {
        if (!expectSameOutcome(text).ok) failures++;
      }),
      propertyParams(2000),
    );
    // The mutations must reach the rules, or the comparison above proves little.
    expect(failures).toBeGreaterThan(0);
  });

  it('on every field of a valid frame replaced, one at a time, by an edge value', () => {
    fc.assert(
      fc.property(serverFrameArbitrary, fc.nat(), (frame, offset) => {
        const root = JSON.parse(JSON.stringify(frame)) as Json;
        let index = offset;
        for (const path of fieldPaths(root)) {
          const parent = path.slice(0, -1).reduce<Json>((node, key) => node[key] as Json, root);
          const key = path[path.length - 1] as string;
          const original = parent[key];
          // Several edge values per field, cycling through all of them across runs.
          for (let attempt = 0; attempt < 3; attempt++) {
            parent[key] = copyOf(EDGE_VALUES[index++ % EDGE_VALUES.length]);
            expectSameOutcome(JSON.stringify(root));
          }
          parent[key] = original;
        }
      }),
      // Each run decodes about 75 variants (both decoders): fewer runs, as many decodes as the others.
      propertyParams(500),
    );
  });

  it('on events and snapshots in an envelope of another frame type', () => {
    fc.assert(
      fc.property(
        fc.oneof(taskEventArbitrary, taskViewArbitrary),
        fc.constantFrom(...SERVER_FRAME_TYPES),
        fc.constantFrom('event', 'task'),
        (payload, type, field) => {
          expectSameOutcome(JSON.stringify({ type, [field]: payload }));
        },
      ),
      propertyParams(1000),
    );
  });

  it('on arbitrary JSON, with and without a frame type', () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.json(),
          fc
            .tuple(fc.constantFrom(...SERVER_FRAME_TYPES), fc.dictionary(keyArbitrary, edgeValue))
            .map(([type, fields]) => JSON.stringify({ ...fields, type })),
        ),
        (text) => {
          expectSameOutcome(text);
        },
      ),
      propertyParams(1000),
    );
  });

  it('on anything, including non-text inputs and protocol versions', () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.anything(),
          fc.string(),
          fc.uint8Array({ maxLength: 40, size: 'max' }),
          fc.jsonValue().map((protocol) => JSON.stringify({ type: 'hello', protocol })),
        ),
        (input) => {
          expectSameOutcome(input);
        },
      ),
      propertyParams(1000),
    );
  });

  it.each([
    // A field name that is the decoder's own marker for optional fields is still unknown.
    '{"type":"pong","time":1,"?requestId":"r"}',
    '{"type":"error","code":"internal","message":"m","?taskId":"t"}',
    '{"type":"pong","time":1,"__proto__":{}}',
    '{"type":"heartbeat","time":1,"seqs":{"":1}}',
    '{"type":"heartbeat","time":1,"seqs":{"t":1.5,"u":-1}}',
    '{"type":"event","event":[]}',
    '{"type":"event","event":{"type":"toString"}}',
    '{"type":"snapshot","task":[1]}',
    '{"type":"pong","time":1e400}',
    '{"type":"event","event":{"taskId":"t","seq":1,"type":"item","time":1,"progress":{"total":null,"done":0,"succeeded":0,"failed":0,"current":null,"message":null},"item":{"key":"","ok":true,"error":null,"detail":null}}}',
    '{"type":"event","event":{"taskId":"t","seq":1,"type":"interrupted","time":1,"progress":{"total":null,"done":0,"succeeded":0,"failed":0,"current":null,"message":null},"reason":null}}',
    '{"type":"hello","protocol":1,"serverId":"a","heartbeatIntervalMs":-1e400}',
    '{"type":"error","code":"internal","message":"m","taskId":"t","requestId":""}',
  ])('on %s', (text) => {
    const result = expectSameOutcome(text);
    expect(result.ok).toBe(false);
  });

  it('on a valid frame whose payload has an own constructor key (found by the deep run, seed 209451419)', () => {
    const text =
      '{"type":"snapshot","task":{"id":"A","kind":"A","status":"running","total":null,"done":0,"succeeded":0,"failed":0,"current":null,"message":null,"result":{"constructor":[]},"error":null,"seq":0,"createdAt":0,"updatedAt":0,"finishedAt":null}}';
    expect(expectSameOutcome(text).ok).toBe(true);
  });
  it('on a snapshot marked reset: false (a reset is only ever true)', () => {
    const text =
      '{"type":"snapshot","task":{"id":"A","kind":"A","status":"running","total":null,"done":0,"succeeded":0,"failed":0,"current":null,"message":null,"result":null,"error":null,"seq":0,"createdAt":0,"updatedAt":0,"finishedAt":null},"reset":false}';
    expect(expectSameOutcome(text).ok).toBe(false);
    expect(expectSameOutcome(text.replace('"reset":false', '"reset":true')).ok).toBe(true);
  });
});

describe('decodeServerText', () => {
  it('decodes every string as decodeServerFrame does, valid frames and others', () => {
    fc.assert(
      fc.property(
        fc.oneof(
          serverFrameArbitrary.map((frame) => JSON.stringify(frame)),
          fc.string(),
          fc.json(),
        ),
        (text) => {
          expect(decodeServerText(text)).toStrictEqual(decodeServerFrame(text));
        },
      ),
      propertyParams(1000),
    );
    const tooLarge = JSON.stringify({ type: 'pong', time: 1, pad: 'x'.repeat(LIMITS.maxFrameBytes) });
    expect(decodeServerText(tooLarge)).toStrictEqual(decodeServerFrame(tooLarge));
    expect(decodeServerText('{"type":"pong","time":1}', { maxBytes: 5 })).toMatchObject({
      ok: false,
      error: { code: 'frame_too_large' },
    });
  });

  it('refuses bytes, and any other input that is not a string, with invalid_frame', () => {
    const bytes = new TextEncoder().encode('{"type":"pong","time":1}');
    expect(decodeServerFrame(bytes).ok).toBe(true);
    for (const input of [bytes, bytes.buffer, [bytes], null, 42, {}]) {
      expect(decodeServerText(input)).toMatchObject({
        ok: false,
        error: {
          code: 'invalid_frame',
          message: expect.stringMatching(/^A frame must be a string or UTF-8 bytes, got /),
        },
      });
    }
  });
});

describe('eventBodyProblem (a store reading its events back) agrees with decodeServerFrame', () => {
  /** The body of an event as a store keeps it: the event without its type, task id, seq and time. */
  const split = (event: Json) => {
    const { type, taskId, seq, time, ...body } = event;
    return { base: { type, taskId, seq, time }, body };
  };

  it('on the body of every valid event', () => {
    fc.assert(
      fc.property(taskEventArbitrary, (event) => {
        const { base, body } = split(copyOf(event) as Json);
        expect(eventBodyProblem(base.type, body)).toBeUndefined();
      }),
      propertyParams(1000),
    );
  });

  it("on mutated bodies: the decoder's problem with their event, but for the store's limits on texts and payloads", () => {
    let refused = 0;
    fc.assert(
      fc.property(taskEventArbitrary, fc.array(mutation, { minLength: 1, maxLength: 3 }), (event, edits) => {
        const { base, body } = split(copyOf(event) as Json);
        for (const edit of edits) {
          // Own `__proto__` keys only come from JSON.parse (covered by the decoder's own tests).
          if (edit.name === '__proto__') continue;
          const nodes = objectNodes(body);
          const node = nodes[edit.node % nodes.length] as Json;
          const keys = Object.keys(node);
          const key = keys[edit.key % Math.max(1, keys.length)];
          if (edit.kind === 'delete' && key !== undefined) delete node[key];
          else if (edit.kind === 'replace' && key !== undefined) node[key] = copyOf(edit.value);
          else if (edit.kind === 'retype') node.type = copyOf(edit.value);
          else node[edit.name] = copyOf(edit.value);
        }
        const problem = eventBodyProblem(base.type, body);
        // A body that names a field of the event's own is refused; spread into it, it would override it.
        if (['type', 'taskId', 'seq', 'time'].some((key) => Object.hasOwn(body, key))) {
          expect(problem).toBeDefined();
          return;
        }
        const decoded = decodeServerFrame(JSON.stringify({ type: 'event', event: { ...base, ...body } }));
        // What only the decoder checks: the limits the store enforces when it writes (they may come first).
        const limit = /must be at most|must not contain|must be a plain JSON value|must serialize/;
        if (decoded.ok) expect(problem).toBeUndefined();
        else if (problem === undefined) expect(decoded.error.message).toMatch(limit);
        else {
          refused++;
          if (!limit.test(decoded.error.message)) {
            expect(decoded.error.message).toBe(`Invalid event frame: event${problem}`);
          }
        }
      }),
      propertyParams(2000),
    );
    expect(refused).toBeGreaterThan(0);
  });
});
