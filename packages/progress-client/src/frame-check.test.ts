import { ErrorCode, EVENT_TYPES, LIMITS, PROTOCOL_VERSIONS, SERVER_FRAME_TYPES } from '@finishline/core';
import { decodeServerText as coreDecodeServerText, idProblem } from '@finishline/core/internal';
import {
  expectSameData,
  propertyParams,
  propertyTimeoutMs,
  serverFrameArbitrary,
} from '@finishline/core/testing';
import fc from 'fast-check';
import { describe, expect, it, vi } from 'vitest';
import { decodeServerText } from './frame-check.js';

// Frames reach the size limits: room for a loaded machine (a timeout, never a timed assertion), scaled
// from the file's smallest count (1,000) by the run count in force: this setting overrides `npm run
// test:deep`'s --testTimeout, so a fixed one would cut FC_NUM_RUNS / FC_MIN_RUNS runs short.
vi.setConfig({ testTimeout: propertyTimeoutMs(1000, 60_000) });

/**
 * The rules the client leaves to the server (which enforces them when a value is stored), as core's
 * decoder words them: text lengths, U+0000 and unpaired surrogates, JSON payload depth, keys and size.
 */
const SERVER_ONLY_RULE =
  /must be at most \d+ characters|must not contain U\+0000|must be a plain JSON value|must serialize to at most/;

type Json = Record<string, unknown>;

/** Every object node of a parsed frame, JSON payloads included. */
function objectNodes(root: Json): Json[] {
  const nodes: Json[] = [];
  const walk = (node: unknown) => {
    if (typeof node !== 'object' || node === null) return;
    if (!Array.isArray(node)) nodes.push(node as Json);
    for (const child of Object.values(node)) walk(child);
  };
  walk(root);
  return nodes;
}

const EDGE_VALUES: readonly unknown[] = [
  null,
  true,
  0,
  1,
  -1,
  0.5,
  LIMITS.maxCount + 1,
  '',
  'bad id',
  'constructor',
  'x\u0000y',
  'k'.repeat(LIMITS.maxKeyLength + 1),
  'running',
  'item',
  'hello',
  3,
  [],
  {},
];

const mutatedFrameText: fc.Arbitrary<string> = fc
  .tuple(
    serverFrameArbitrary,
    fc.array(
      fc.record({
        kind: fc.constantFrom('delete', 'replace', 'add', 'retype'),
        node: fc.nat(),
        key: fc.nat(),
        name: fc.constantFrom('type', 'taskId', 'seq', 'id', 'unknown field', 'protocol', '?requestId'),
        value: fc.constantFrom(...EDGE_VALUES),
      }),
      { minLength: 1, maxLength: 3 },
    ),
  )
  .map(([frame, edits]) => {
    const root = JSON.parse(JSON.stringify(frame)) as Json;
    for (const edit of edits) {
      const nodes = objectNodes(root);
      const node = nodes[edit.node % nodes.length] as Json;
      const keys = Object.keys(node);
      const key = keys[edit.key % Math.max(1, keys.length)];
      const value = JSON.parse(JSON.stringify(edit.value)) as unknown;
      if (edit.kind === 'delete' && key !== undefined) delete node[key];
      else if (edit.kind === 'replace' && key !== undefined) node[key] = value;
      else if (edit.kind === 'retype') node.type = value;
      else node[edit.name] = value;
    }
    return JSON.stringify(root);
  });

describe("the client's frame check", () => {
  it('accepts every valid server frame, returned as parsed', () => {
    fc.assert(
      fc.property(serverFrameArbitrary, (frame) => {
        expect(decodeServerText(JSON.stringify(frame))).toStrictEqual({ ok: true, frame });
      }),
      propertyParams(1000),
    );
  });

  it("refuses what core's decoder refuses, with the same code and task, except the server's own store rules", () => {
    let refused = 0;
    fc.assert(
      fc.property(mutatedFrameText, (text) => {
        const client = decodeServerText(text);
        const core = coreDecodeServerText(text);
        if (core.ok) {
          // Not toStrictEqual: it reads a payload's own `constructor` key, which the mutations add.
          expectSameData(client, core);
          return;
        }
        if (client.ok) {
          // Accepted only when core refused it for a rule the client leaves to the server.
          expect(core.error.message).toMatch(SERVER_ONLY_RULE);
          return;
        }
        refused++;
        expect({ code: client.error.code, taskId: client.error.taskId }).toEqual({
          code: core.error.code,
          taskId: core.error.taskId ?? taskAbout(text, core.error.code),
        });
      }),
      propertyParams(2000),
    );
    // The mutations must reach the client's own rules, or the comparison above proves little. Whether they
    // also reach a store rule depends on the seed (the deep run's seed 1030506005 reached none in 2,000
    // runs): the next test covers those rules with fixed frames instead.
    expect(refused).toBeGreaterThan(0);
  });

  it('names the task an invalid event or snapshot was about, so the client can resync it', () => {
    const progress = { total: null, done: 0, succeeded: 0, failed: 0, current: null, message: null };
    const event = { type: 'progress', taskId: 't1', seq: 0, time: 1, progress };
    const invalid = [
      { type: 'event', event },
      { type: 'snapshot', task: { id: 't2', status: 'bogus' } },
      { type: 'event', event: { ...event, taskId: '' } },
    ].map((frame) => decodeServerText(JSON.stringify(frame)));
    expect(invalid.map((result) => !result.ok && [result.error.code, result.error.taskId])).toEqual([
      [ErrorCode.InvalidFrame, 't1'],
      [ErrorCode.InvalidFrame, 't2'],
      [ErrorCode.InvalidFrame, undefined],
    ]);
  });

  it("accepts what core's decoder refuses only for the server's own store rules, each of them", () => {
    const progress = { total: null, done: 0, succeeded: 0, failed: 0, current: null, message: null };
    const event = (extra: Json) => ({
      type: 'event',
      event: { type: 'progress', taskId: 't', seq: 1, time: 1, progress: { ...progress, ...extra } },
    });
    const frames = [
      event({ message: 'm'.repeat(LIMITS.maxMessageLength + 1) }),
      event({ message: 'x\u0000y' }),
      event({ current: 'k'.repeat(LIMITS.maxKeyLength + 1) }),
    ];
    for (const frame of frames) {
      const text = JSON.stringify(frame);
      const core = coreDecodeServerText(text);
      expect(core.ok, text.slice(0, 120)).toBe(false);
      if (!core.ok) expect(core.error.message).toMatch(SERVER_ONLY_RULE);
      expect(decodeServerText(text)).toStrictEqual({ ok: true, frame });
    }
  });

  it.each([
    [
      '{"type":"event","event":{"type":"progress","taskId":"t","seq":0,"time":1,"progress":{"total":null,"done":0,"succeeded":0,"failed":0,"current":null,"message":null}}}',
      ErrorCode.InvalidFrame,
      'Invalid event frame: event.seq: must be an integer >= 1',
    ],
    [
      '{"type":"heartbeat","time":1,"seqs":{"t":-1}}',
      ErrorCode.InvalidFrame,
      'Invalid heartbeat frame: seqs.t: must be an integer >= 0',
    ],
    [
      '{"type":"heartbeat","time":1,"seqs":{"bad id":1}}',
      ErrorCode.InvalidFrame,
      'Invalid heartbeat frame: seqs["bad id"]: may contain only letters, digits and _ . : @ / -',
    ],
    [
      '{"type":"heartbeat","time":1,"seqs":[]}',
      ErrorCode.InvalidFrame,
      'Invalid heartbeat frame: seqs: must be an object mapping task ids to seqs',
    ],
    [
      '{"type":"pong","time":1,"?requestId":"r"}',
      ErrorCode.InvalidFrame,
      'Invalid pong frame: ["?requestId"]: is not a known field',
    ],
    [
      '{"type":"pong","time":1,"__proto__":{}}',
      ErrorCode.InvalidFrame,
      'Invalid pong frame: __proto__: is not a known field',
    ],
    ['{"type":"pong"}', ErrorCode.InvalidFrame, 'Invalid pong frame: time: is required'],
    ['{"time":1}', ErrorCode.InvalidFrame, 'Invalid frame: type: must be a string'],
    [
      '{"type":"news"}',
      ErrorCode.UnknownFrame,
      // Listed from the client's own table of checks: core's list, so the two cannot drift apart.
      `Unknown server frame type "news"; expected one of ${SERVER_FRAME_TYPES.join(', ')}`,
    ],
    [
      '{"type":"hello","protocol":3,"serverId":"s","heartbeatIntervalMs":1}',
      ErrorCode.UnsupportedProtocol,
      `Protocol version 3 is not supported (${PROTOCOL_VERSIONS.join(' and ')} are)`,
    ],
    [
      '{"type":"hello","protocol":0,"serverId":"s","heartbeatIntervalMs":1}',
      ErrorCode.InvalidFrame,
      'Invalid hello frame: protocol: must be one of 1, 2',
    ],
    [
      '{"type":"event","event":{"type":"done","taskId":"t"}}',
      ErrorCode.InvalidFrame,
      `Invalid event frame: event.type: must be an event of type ${EVENT_TYPES.join(', ')}`,
    ],
    [
      '{"type":"error","code":"nope","message":"m","taskId":"t1"}',
      ErrorCode.InvalidFrame,
      'Invalid error frame: code: must be one of invalid_frame, frame_too_large, unknown_frame, unsupported_protocol, unauthenticated, token_expired, forbidden, rate_limited, too_many_subscriptions, too_many_sockets, invalid_input, task_not_found, task_finished, lease_held, store_unavailable, closed, unreachable, timeout, internal',
    ],
    ['not json', ErrorCode.InvalidFrame, 'Frame is not valid JSON'],
  ])('refuses %s', (text, code, message) => {
    const decoded = decodeServerText(text);
    expect(decoded.ok).toBe(false);
    if (decoded.ok) return;
    expect({ code: decoded.error.code, message: decoded.error.message }).toEqual({ code, message });
  });

  it("reads text as core's decoder does: the same outcome for anything that is not a JSON object", () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.anything(),
          fc.string(),
          fc.jsonValue().map((value) => JSON.stringify(value)),
          // size 'max': at the default size byte arrays stay near 10 bytes whatever maxLength says.
          fc.uint8Array({ maxLength: 40, size: 'max' }),
        ),
        (input) => {
          const core = coreDecodeServerText(input);
          if (core.ok || core.error.message.startsWith('Invalid')) return;
          expect(decodeServerText(input)).toStrictEqual(core);
        },
      ),
      propertyParams(1000),
    );
    const large = `"${'é'.repeat(LIMITS.maxFrameBytes / 2)}"`;
    expect(decodeServerText(large)).toStrictEqual(coreDecodeServerText(large));
  });

  it('names the task of a refused frame with a valid top-level taskId', () => {
    const decoded = decodeServerText('{"type":"error","code":"nope","message":"m","taskId":"t1"}');
    expect(decoded.ok || decoded.error.taskId).toBe('t1');
  });

  it('refuses a frame over the size limit before parsing it', () => {
    const decoded = decodeServerText(`"${'é'.repeat(LIMITS.maxFrameBytes / 2)}"`);
    expect(decoded.ok || decoded.error.code).toBe(ErrorCode.FrameTooLarge);
  });
});

/**
 * The task a refused frame was about beyond its top-level `taskId` (core's decoder names only that one):
 * the valid id of its event or task, which the client's check names too, for an invalid frame (not an
 * unknown one) it could read as an object.
 */
function taskAbout(text: string, code: string): string | undefined {
  if (code !== ErrorCode.InvalidFrame) return undefined;
  let frame: unknown;
  try {
    frame = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof frame !== 'object' || frame === null || Array.isArray(frame)) return undefined;
  const about = frame as { taskId?: unknown; event?: { taskId?: unknown }; task?: { id?: unknown } };
  const taskId = about.taskId ?? about.event?.taskId ?? about.task?.id;
  return idProblem(taskId) === undefined ? (taskId as string) : undefined;
}
