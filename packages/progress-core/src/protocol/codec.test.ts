import fc from 'fast-check';
import type * as v from 'valibot';
import { describe, expect, expectTypeOf, it, vi } from 'vitest';
import { ERROR_CODES, ErrorCode } from '../codes.js';
import { LIMITS } from '../limits.js';
import type { TaskEvent, TaskView } from '../model.js';
import { EVENT_TYPES, TASK_STATUSES } from '../model.js';
import { ProgressError } from '../progress-error.js';
import {
  authFrameArbitrary,
  clientFrameArbitrary,
  errorFrameArbitrary,
  idArbitrary,
  serverFrameArbitrary,
  taskEventArbitrary,
  taskViewArbitrary,
} from '../testing/frame-arbitraries.js';
import { propertyParams, propertySeed, propertyTimeoutMs } from '../testing/property-config.js';
import { type DecodeResult, decodeClientFrame, encodeFrame } from './codec.js';
import {
  type clientFrameSchema,
  clientFrameSchemas,
  type serverFrameSchema,
  serverFrameSchemas,
  type taskEventSchema,
  type taskViewSchema,
} from './frame-schemas.js';
import type { ClientFrame, ServerFrame } from './frames.js';
import { CLIENT_FRAME_TYPES, PROTOCOL_VERSION, SERVER_FRAME_TYPES } from './frames.js';
import { decodeServerFrame } from './server-frame-decoder.js';

// Property tests generate frames up to the size limits: room for a loaded CI machine (a timeout, never
// a timed assertion), scaled from the file's smallest count (500) by the run count in force: this setting
// overrides `npm run test:deep`'s --testTimeout, and a fixed 60 s cut FC_NUM_RUNS / FC_MIN_RUNS runs short.
vi.setConfig({ testTimeout: propertyTimeoutMs(500, 60_000) });

type Decoder = (input: unknown, options?: { maxBytes?: number }) => DecodeResult<ClientFrame | ServerFrame>;

const DECODERS: ReadonlyArray<{ name: string; decode: Decoder; types: readonly string[] }> = [
  { name: 'decodeClientFrame', decode: decodeClientFrame, types: CLIENT_FRAME_TYPES },
  { name: 'decodeServerFrame', decode: decodeServerFrame, types: SERVER_FRAME_TYPES },
];

const DECODE_ERROR_CODES: ReadonlySet<string> = new Set([
  ErrorCode.InvalidFrame,
  ErrorCode.FrameTooLarge,
  ErrorCode.UnknownFrame,
  ErrorCode.UnsupportedProtocol,
]);

const MAX = LIMITS.maxCount;
const encoder = new TextEncoder();
const byteLength = (text: string) => encoder.encode(text).byteLength;

/** Every decode outcome must have this shape, whatever the input. */
function expectWellFormed(result: DecodeResult<unknown>, types: readonly string[]): void {
  if (result.ok) {
    expect(types).toContain((result.frame as { type: unknown }).type);
    return;
  }
  expect(result.error).toBeInstanceOf(ProgressError);
  expect(DECODE_ERROR_CODES.has(result.error.code)).toBe(true);
  expect(result.error.message.length).toBeGreaterThan(0);
  // The server puts it straight into an error frame, whose message has this limit.
  expect(result.error.message.length).toBeLessThanOrEqual(LIMITS.maxMessageLength);
  if (result.requestId !== undefined) {
    expect(result.requestId.length).toBeGreaterThanOrEqual(1);
    expect(result.requestId.length).toBeLessThanOrEqual(LIMITS.maxRequestIdLength);
  }
}

function expectError(result: DecodeResult<unknown>, code: ErrorCode, messagePart?: string): ProgressError {
  if (result.ok) throw new Error(`expected ${code}, decoded ${JSON.stringify(result.frame)}`);
  expect(result.error.code).toBe(code);
  if (messagePart !== undefined) expect(result.error.message).toContain(messagePart);
  return result.error;
}

function expectFrame<T>(result: DecodeResult<T>): T {
  if (!result.ok) throw new Error(`expected a frame, got ${result.error.code}: ${result.error.message}`);
  return result.frame;
}

const progress = { total: 3, done: 1, succeeded: 1, failed: 0, current: 'node-2', message: 'tainting' };
const view: TaskView = {
  id: 'task-1',
  kind: 'batch_taint',
  status: 'running',
  ...progress,
  result: null,
  error: null,
  seq: 1,
  createdAt: 1_700_000_000_000,
  updatedAt: 1_700_000_000_500,
  finishedAt: null,
};
const itemEvent: TaskEvent = {
  taskId: 'task-1',
  seq: 2,
  type: 'item',
  time: 1_700_000_001_000,
  progress,
  item: { key: 'node-1', ok: true, error: null, detail: { labels: ['a'] } },
};

const CLIENT_EXAMPLES: readonly ClientFrame[] = [
  { type: 'auth', token: 'eyJhbGciOi.x.y', protocol: PROTOCOL_VERSION },
  { type: 'subscribe', id: 'r1', taskId: 'task-1', afterSeq: 0 },
  { type: 'subscribe', taskId: 'task-1', afterSeq: 7 },
  { type: 'unsubscribe', id: 'r2', taskId: 'task-1' },
  { type: 'unsubscribe', taskId: 'task-1' },
  { type: 'ack', taskId: 'task-1', seq: 7 },
  { type: 'ping', id: 'p1' },
  { type: 'ping' },
];

const SERVER_EXAMPLES: readonly ServerFrame[] = [
  { type: 'hello', protocol: PROTOCOL_VERSION, serverId: 'replica-a', heartbeatIntervalMs: 15_000 },
  { type: 'snapshot', task: view },
  {
    type: 'snapshot',
    task: {
      ...view,
      status: 'failed',
      error: { code: 'boom', message: 'it broke' },
      finishedAt: 1_700_000_002_000,
    },
  },
  { type: 'event', event: { taskId: 'task-1', seq: 1, type: 'progress', time: 1, progress } },
  { type: 'event', event: itemEvent },
  { type: 'event', event: { taskId: 't', seq: 3, type: 'completed', time: 2, progress, result: { ok: 2 } } },
  {
    type: 'event',
    event: { taskId: 't', seq: 3, type: 'failed', time: 2, progress, error: { code: 'x', message: 'y' } },
  },
  { type: 'event', event: { taskId: 't', seq: 3, type: 'cancelled', time: 2, progress, reason: null } },
  {
    type: 'event',
    event: { taskId: 't', seq: 3, type: 'interrupted', time: 2, progress, reason: 'lease expired' },
  },
  { type: 'heartbeat', time: 5, seqs: { 'task-1': 2, 'task-2': 0 } },
  { type: 'heartbeat', time: 5, seqs: {} },
  { type: 'error', code: 'forbidden', message: 'not yours', requestId: 'r1', taskId: 'task-1' },
  { type: 'error', code: 'invalid_frame', message: 'bad' },
  { type: 'pong', requestId: 'p1', time: 9 },
  { type: 'pong', time: 9 },
];

describe('frame schemas', () => {
  it('infer exactly the frame types of frames.ts', () => {
    expectTypeOf<v.InferOutput<typeof clientFrameSchema>>().toEqualTypeOf<ClientFrame>();
    expectTypeOf<v.InferOutput<typeof serverFrameSchema>>().toEqualTypeOf<ServerFrame>();
    expectTypeOf<v.InferOutput<typeof taskEventSchema>>().toEqualTypeOf<TaskEvent>();
    expectTypeOf<v.InferOutput<typeof taskViewSchema>>().toEqualTypeOf<TaskView>();
  });

  it('cover exactly the frame types of each direction', () => {
    expect(Object.keys(clientFrameSchemas).sort()).toEqual([...CLIENT_FRAME_TYPES].sort());
    expect(Object.keys(serverFrameSchemas).sort()).toEqual([...SERVER_FRAME_TYPES].sort());
  });
});

describe('decoding valid frames', () => {
  it.each(CLIENT_EXAMPLES.map((frame) => [frame.type, frame] as const))('client %s', (_type, frame) => {
    expect(decodeClientFrame(encodeFrame(frame))).toStrictEqual({ ok: true, frame });
  });

  it.each(SERVER_EXAMPLES.map((frame) => [frame.type, frame] as const))('server %s', (_type, frame) => {
    expect(decodeServerFrame(encodeFrame(frame))).toStrictEqual({ ok: true, frame });
  });

  it('accepts a Buffer, a Uint8Array, an ArrayBuffer and an array of Buffer fragments', () => {
    const frame: ClientFrame = { type: 'subscribe', id: 'é😀', taskId: 'task-1', afterSeq: 3 };
    const text = encodeFrame(frame);
    const bytes = encoder.encode(text);
    const buffer = Buffer.from(text, 'utf8');
    // Split inside the 4-byte emoji, as a fragmenting peer may.
    const cut = buffer.indexOf(0xf0) + 2;
    for (const input of [
      buffer,
      bytes,
      bytes.slice().buffer,
      [buffer.subarray(0, cut), buffer.subarray(cut)],
      [buffer],
    ]) {
      expect(decodeClientFrame(input)).toStrictEqual({ ok: true, frame });
    }
  });

  it('keeps a result with a constructor key (only __proto__ is refused in JSON payloads)', () => {
    const frame: ServerFrame = {
      type: 'event',
      event: {
        taskId: 't',
        seq: 1,
        type: 'completed',
        time: 1,
        progress,
        result: { constructor: 1, prototype: [] },
      },
    };
    expect(decodeServerFrame(encodeFrame(frame))).toStrictEqual({ ok: true, frame });
  });

  it('fits the largest event and snapshot the limits allow, even when every character is escaped', () => {
    // `\u0001` is one character that JSON writes as 6 bytes: the worst case for every text field.
    const text = (length: number) => '\u0001'.repeat(length);
    const json = text(Math.floor((LIMITS.maxJsonBytes - 2) / 6));
    const worstProgress = {
      total: MAX,
      done: MAX,
      succeeded: MAX,
      failed: MAX,
      current: text(LIMITS.maxKeyLength),
      message: text(LIMITS.maxMessageLength),
    };
    const id = 'i'.repeat(LIMITS.maxIdLength);
    const frames: ServerFrame[] = [
      {
        type: 'event',
        event: {
          taskId: id,
          seq: MAX,
          type: 'item',
          time: MAX,
          progress: worstProgress,
          item: {
            key: text(LIMITS.maxKeyLength),
            ok: false,
            error: text(LIMITS.maxMessageLength),
            detail: json,
          },
        },
      },
      {
        type: 'snapshot',
        task: {
          id,
          kind: id,
          status: 'failed',
          ...worstProgress,
          result: json,
          error: { code: text(LIMITS.maxKeyLength), message: text(LIMITS.maxMessageLength) },
          seq: MAX,
          createdAt: MAX,
          updatedAt: MAX,
          finishedAt: MAX,
        },
      },
    ];
    for (const frame of frames) {
      const encoded = encodeFrame(frame);
      expect(byteLength(encoded)).toBeGreaterThan(64 * 1024); // the case that needs the larger limit
      expect(decodeServerFrame(encoded)).toStrictEqual({ ok: true, frame });
    }
  });
});

describe('frame_too_large', () => {
  it('counts UTF-8 bytes, not characters, and accepts a frame of exactly maxBytes', () => {
    const text = encodeFrame({ type: 'subscribe', id: 'éééé', taskId: 't', afterSeq: 0 });
    const bytes = byteLength(text);
    expect(bytes).toBeGreaterThan(text.length);
    expectFrame(decodeClientFrame(text, { maxBytes: bytes }));
    expectError(
      decodeClientFrame(text, { maxBytes: bytes - 1 }),
      ErrorCode.FrameTooLarge,
      `${bytes - 1} bytes`,
    );
    expectError(decodeClientFrame(text, { maxBytes: text.length }), ErrorCode.FrameTooLarge);
  });

  it('is checked before parsing, for every input form', () => {
    const junk = `{${'x'.repeat(LIMITS.maxFrameBytes)}`; // not JSON either: size wins
    const buffer = Buffer.from(junk);
    for (const input of [
      junk,
      buffer,
      new Uint8Array(buffer).buffer,
      [buffer.subarray(0, 10), buffer.subarray(10)],
    ]) {
      expectError(decodeClientFrame(input), ErrorCode.FrameTooLarge);
      expectError(decodeServerFrame(input), ErrorCode.FrameTooLarge);
    }
  });

  it('uses LIMITS.maxFrameBytes by default', () => {
    const pad = (length: number) =>
      `{"type":"error","code":"internal","message":"${'m'.repeat(length)}"}`.padEnd(
        LIMITS.maxFrameBytes,
        ' ',
      );
    const fits = pad(100);
    expect(byteLength(fits)).toBe(LIMITS.maxFrameBytes);
    expectFrame(decodeServerFrame(fits));
    expectError(decodeServerFrame(`${fits} `), ErrorCode.FrameTooLarge);
  });

  it('rejects invalid maxBytes with invalid_input', () => {
    for (const maxBytes of [0, -1, 1.5, Number.NaN, Number.POSITIVE_INFINITY]) {
      expect(() => decodeClientFrame('{}', { maxBytes })).toThrow(
        expect.objectContaining({ code: ErrorCode.InvalidInput }),
      );
    }
  });
});

describe('invalid_frame', () => {
  it('rejects input that is neither text nor bytes', () => {
    for (const input of [
      undefined,
      null,
      42,
      true,
      {},
      { type: 'ping' },
      ['{}'],
      [new Uint8Array(1), 'x'],
      new Uint16Array(2),
    ]) {
      expectError(decodeClientFrame(input), ErrorCode.InvalidFrame, 'must be');
      expectError(decodeServerFrame(input), ErrorCode.InvalidFrame, 'must be');
    }
  });

  it('rejects bytes that are not UTF-8', () => {
    expectError(decodeClientFrame(Uint8Array.from([0x7b, 0xff, 0x7d])), ErrorCode.InvalidFrame, 'UTF-8');
  });

  it('rejects text that is not JSON without quoting it', () => {
    for (const input of [
      '',
      ' ',
      '{',
      '{"type":"ping"',
      "{'type':'ping'}",
      'SECRET-TOKEN',
      '\ufeff{"type":"ping"}',
    ]) {
      const error = expectError(decodeClientFrame(input), ErrorCode.InvalidFrame, 'not valid JSON');
      expect(error.message).not.toContain('SECRET');
    }
    // A BOM is kept in bytes as in text, so both forms agree.
    expectError(
      decodeClientFrame(encoder.encode('\ufeff{"type":"ping"}')),
      ErrorCode.InvalidFrame,
      'not valid JSON',
    );
  });

  it('rejects JSON that is not an object', () => {
    for (const [input, what] of [
      ['null', 'null'],
      ['[]', 'an array'],
      ['[{"type":"ping"}]', 'an array'],
      ['3', 'a number'],
      ['"ping"', 'a string'],
      ['true', 'a boolean'],
    ]) {
      expectError(decodeClientFrame(input), ErrorCode.InvalidFrame, `JSON object, got ${what}`);
    }
  });

  it('rejects a missing or non-string type', () => {
    expectError(decodeClientFrame('{}'), ErrorCode.InvalidFrame, 'type: is required');
    expectError(decodeClientFrame('{"type":1}'), ErrorCode.InvalidFrame, 'type: must be a string');
    expectError(decodeServerFrame('{"type":null}'), ErrorCode.InvalidFrame, 'type: must be a string');
  });

  it.each([
    ['{"type":"subscribe","taskId":"t","afterSeq":-1}', 'afterSeq: must not be negative'],
    ['{"type":"subscribe","taskId":"t","afterSeq":1.5}', 'afterSeq: must be an integer'],
    ['{"type":"subscribe","taskId":"t","afterSeq":"1"}', 'afterSeq: must be number'],
    ['{"type":"subscribe","taskId":"t"}', 'afterSeq: is required'],
    ['{"type":"subscribe","taskId":"no spaces","afterSeq":0}', 'taskId: may contain only'],
    ['{"type":"subscribe","taskId":"__proto__","afterSeq":0}', 'taskId: must not be __proto__'],
    ['{"type":"subscribe","taskId":"t","afterSeq":0,"extra":1}', 'extra: is not a known field'],
    ['{"type":"subscribe","taskId":"t","afterSeq":0,"__proto__":{}}', '__proto__: is not a known field'],
    ['{"type":"subscribe","id":"","taskId":"t","afterSeq":0}', 'id: must not be empty'],
    ['{"type":"ack","taskId":"t","seq":0}', 'seq: must be at least 1'],
    ['{"type":"ack","taskId":"t","seq":9007199254740992}', 'seq: is too large'],
    ['{"type":"ping","id":5}', 'id: must be string'],
    ['{"type":"auth","token":"","protocol":1}', 'token: must not be empty'],
    ['{"type":"auth","token":"x"}', 'protocol: is required'],
    ['{"type":"auth","token":"x","protocol":"1"}', 'protocol: must be one of 1, 2'],
    ['{"type":"unsubscribe"}', 'taskId: is required'],
  ])('client %s → %s', (input, message) => {
    expectError(decodeClientFrame(input), ErrorCode.InvalidFrame, message);
  });

  it.each([
    [
      '{"type":"hello","protocol":1,"serverId":"a","heartbeatIntervalMs":0}',
      'heartbeatIntervalMs: must be at least 1',
    ],
    ['{"type":"heartbeat","time":1,"seqs":{"t":-1}}', 'seqs.t: must not be negative'],
    ['{"type":"heartbeat","time":1,"seqs":{"bad id":1}}', 'seqs["bad id"]: may contain only'],
    ['{"type":"heartbeat","time":1,"seqs":{"__proto__":1}}', 'seqs: must be an object mapping task ids'],
    ['{"type":"heartbeat","time":1,"seqs":{"constructor":1}}', 'seqs: must be an object mapping task ids'],
    ['{"type":"heartbeat","time":1,"seqs":[1]}', 'seqs: must be an object mapping task ids'],
    ['{"type":"error","code":"nope","message":"m"}', 'code: must be one of the error codes'],
    [
      '{"type":"error","code":"internal","message":"m","requestId":"x","extra":null}',
      'extra: is not a known field',
    ],
    ['{"type":"pong"}', 'time: is required'],
    ['{"type":"snapshot","task":[]}', 'task.id: is required'],
    ['{"type":"snapshot","task":null}', 'task: must be an object'],
    ['{"type":"event","event":{"type":"progressing"}}', 'event.type: must be an event object'],
    ['{"type":"event","event":5}', 'event: must be an event object'],
  ])('server %s → %s', (input, message) => {
    expectError(decodeServerFrame(input), ErrorCode.InvalidFrame, message);
  });

  it('names nested fields of events and snapshots', () => {
    const bad = (mutate: (event: Record<string, unknown>) => void) => {
      const event = JSON.parse(JSON.stringify(itemEvent)) as Record<string, unknown>;
      mutate(event);
      return decodeServerFrame(encodeFrame({ type: 'event', event } as never));
    };
    expectError(
      bad((e) => Object.assign(e.progress as object, { done: -1 })),
      ErrorCode.InvalidFrame,
      'event.progress.done: must not be negative',
    );
    expectError(
      bad((e) => Object.assign(e.item as object, { ok: 'yes' })),
      ErrorCode.InvalidFrame,
      'event.item.ok: must be boolean',
    );
    expectError(
      bad((e) => Object.assign(e.item as object, { key: '' })),
      ErrorCode.InvalidFrame,
      'event.item.key: must not be empty',
    );
    expectError(
      bad((e) => Object.assign(e.item as object, { detail: JSON.parse('{"a":{"__proto__":{"x":1}}}') })),
      ErrorCode.InvalidFrame,
    );
    expectError(
      bad((e) => Object.assign(e, { seq: 0 })),
      ErrorCode.InvalidFrame,
      'event.seq: must be at least 1',
    );
    expectError(
      bad((e) => Object.assign(e, { taskId: 'x'.repeat(129) })),
      ErrorCode.InvalidFrame,
      'event.taskId: must be at most 128',
    );
    expectError(
      decodeServerFrame(encodeFrame({ type: 'snapshot', task: { ...view, status: 'paused' as never } })),
      ErrorCode.InvalidFrame,
      'task.status: must be one of running, completed',
    );
    expectError(
      decodeServerFrame(encodeFrame({ type: 'snapshot', task: { ...view, error: { code: 'x' } as never } })),
      ErrorCode.InvalidFrame,
      'task.error.message: is required',
    );
  });

  it('rejects a __proto__ key inside a JSON payload', () => {
    const text = `{"type":"event","event":{"taskId":"t","seq":1,"type":"completed","time":1,"progress":${JSON.stringify(progress)},"result":{"a":[{"__proto__":{"polluted":true}}]}}}`;
    expectError(decodeServerFrame(text), ErrorCode.InvalidFrame, 'event.result: must be a plain JSON value');
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  it('rejects JSON payloads nested deeper than 64 levels and survives absurd nesting', () => {
    const nested = (depth: number) => `${'['.repeat(depth)}${']'.repeat(depth)}`;
    const frame = (result: string) =>
      `{"type":"event","event":{"taskId":"t","seq":1,"type":"completed","time":1,"progress":${JSON.stringify(progress)},"result":${result}}}`;
    // At the limit exactly: 64 empty arrays pass, 65 do not (65 passed once, as 65 holding a 1 did not).
    expectFrame(decodeServerFrame(frame(nested(64))));
    expectError(decodeServerFrame(frame(nested(65))), ErrorCode.InvalidFrame, 'event.result');
    expectError(decodeServerFrame(frame(nested(100))), ErrorCode.InvalidFrame, 'event.result');
    // As deep as a frame of the default size can be.
    const absurd = Math.floor((LIMITS.maxFrameBytes - 200) / 2);
    expectError(decodeServerFrame(nested(absurd)), ErrorCode.InvalidFrame, 'got an array');
    expectError(decodeServerFrame(frame(nested(absurd))), ErrorCode.InvalidFrame, 'event.result');
  });

  it('never quotes a credential or a long received value in the message', () => {
    const secret = `SECRET${'s'.repeat(LIMITS.maxTokenLength)}`;
    const error = expectError(
      decodeClientFrame(encodeFrame({ type: 'auth', token: secret, protocol: 1 })),
      ErrorCode.InvalidFrame,
      'token: must be at most',
    );
    expect(error.message).not.toContain('SECRET');
    const tokenAsNumber = expectError(
      decodeClientFrame('{"type":"auth","token":12345678,"protocol":1}'),
      ErrorCode.InvalidFrame,
    );
    expect(tokenAsNumber.message).not.toContain('12345678');
    const longStatus = 'x'.repeat(50_000);
    const statusError = expectError(
      decodeServerFrame(encodeFrame({ type: 'snapshot', task: { ...view, status: longStatus as never } })),
      ErrorCode.InvalidFrame,
    );
    expect(statusError.message).not.toContain('xxxxxxxxxx');
    const longKey = expectError(
      decodeClientFrame(`{"type":"ping","${'k'.repeat(50_000)}":1}`),
      ErrorCode.InvalidFrame,
    );
    expect(longKey.message.length).toBeLessThan(300);
  });
});

describe('unknown_frame', () => {
  it('names the unknown type, clipped', () => {
    expectError(
      decodeClientFrame('{"type":"subscribed","taskId":"t"}'),
      ErrorCode.UnknownFrame,
      '"subscribed"',
    );
    expectError(decodeServerFrame('{"type":"Hello"}'), ErrorCode.UnknownFrame, '"Hello"');
    const long = expectError(decodeServerFrame(`{"type":"${'t'.repeat(10_000)}"}`), ErrorCode.UnknownFrame);
    expect(long.message.length).toBeLessThan(300);
  });

  it('treats a frame of the other direction as unknown', () => {
    for (const frame of SERVER_EXAMPLES)
      expectError(decodeClientFrame(encodeFrame(frame)), ErrorCode.UnknownFrame);
    for (const frame of CLIENT_EXAMPLES)
      expectError(decodeServerFrame(encodeFrame(frame)), ErrorCode.UnknownFrame);
  });

  it('does not look up inherited names', () => {
    for (const type of ['toString', 'constructor', '__proto__', 'hasOwnProperty']) {
      expectError(decodeClientFrame(JSON.stringify({ type })), ErrorCode.UnknownFrame);
      expectError(decodeServerFrame(JSON.stringify({ type })), ErrorCode.UnknownFrame);
    }
  });
});

describe('unsupported_protocol', () => {
  it('refuses another version in auth and hello, whatever else the frame holds', () => {
    // The message names every version this side accepts: it said "this side speaks 2" to a client that
    // could have spoken 1, which a server still accepts.
    const names = 'Protocol version 3 is not supported; this side speaks 1 and 2';
    expectError(
      decodeClientFrame('{"type":"auth","token":"x","protocol":3}'),
      ErrorCode.UnsupportedProtocol,
      names,
    );
    expectError(
      decodeServerFrame(
        '{"type":"hello","protocol":3,"serverId":"a","heartbeatIntervalMs":1,"newField":true}',
      ),
      ErrorCode.UnsupportedProtocol,
      names,
    );
    // Not a version at all: a schema error, not a version mismatch.
    expectError(
      decodeClientFrame('{"type":"auth","token":"x","protocol":0}'),
      ErrorCode.InvalidFrame,
      'protocol',
    );
    expectError(
      decodeClientFrame('{"type":"auth","token":"x","protocol":1.5}'),
      ErrorCode.InvalidFrame,
      'protocol',
    );
  });
});

describe('requestId and taskId of a failure', () => {
  it('exposes a valid id of a failed client frame and names it in the message', () => {
    const result = decodeClientFrame('{"type":"subscribe","id":"req-7","taskId":"task-1","afterSeq":-1}');
    expect(result).toMatchObject({ ok: false, requestId: 'req-7' });
    const error = expectError(result, ErrorCode.InvalidFrame, '"req-7"');
    expect(error.taskId).toBe('task-1');
    expect(decodeClientFrame('{"type":"nope","id":"req-8"}')).toMatchObject({
      ok: false,
      requestId: 'req-8',
    });
    // Even where `id` is not a field of the frame type, the server can still echo it.
    expect(decodeClientFrame('{"type":"ack","id":"req-9","taskId":"t","seq":1}')).toMatchObject({
      ok: false,
      requestId: 'req-9',
    });
  });

  it('omits an id that is not a short string, and never exposes one for server frames', () => {
    for (const id of ['""', '5', 'null', JSON.stringify('i'.repeat(LIMITS.maxRequestIdLength + 1))]) {
      const result = decodeClientFrame(`{"type":"subscribe","id":${id},"taskId":"t","afterSeq":0}`);
      expect(result.ok).toBe(false);
      expect('requestId' in result).toBe(false);
    }
    const result = decodeServerFrame('{"type":"pong","id":"p","requestId":"p","time":-1}');
    expect(result.ok).toBe(false);
    expect('requestId' in result).toBe(false);
  });

  it('echoes a request id of 1 and of exactly maxRequestIdLength characters with the failure', () => {
    for (const id of ['i', 'i'.repeat(LIMITS.maxRequestIdLength)]) {
      const result = decodeClientFrame(`{"type":"subscribe","id":"${id}","taskId":"t","afterSeq":-1}`);
      expect(result.ok).toBe(false);
      expect(!result.ok && result.requestId).toBe(id);
    }
  });

  it('sets taskId only when it is a valid id', () => {
    expect(
      expectError(decodeClientFrame('{"type":"ack","taskId":"t 1","seq":1}'), ErrorCode.InvalidFrame).taskId,
    ).toBeUndefined();
    expect(
      expectError(decodeClientFrame('{"type":"ack","taskId":"t1","seq":0}'), ErrorCode.InvalidFrame).taskId,
    ).toBe('t1');
  });
});

// ── properties ───────────────────────────────────────────────────────────────────────────────

/** The codec must not coerce, default or strip anything: a decoded frame is exactly the parsed JSON. */
function expectExactlyParsed(result: DecodeResult<unknown>, text: string): void {
  if (result.ok) expect(result.frame).toStrictEqual(JSON.parse(text));
}

const anyInput = fc.anything({
  withBigInt: true,
  withBoxedValues: true,
  withDate: true,
  withMap: true,
  withNullPrototype: true,
  withObjectString: true,
  withSet: true,
  withSparseArray: true,
  withTypedArray: true,
});

function isBytes(input: unknown): boolean {
  return input instanceof Uint8Array || input instanceof ArrayBuffer;
}

describe('totality (properties)', () => {
  it.each(DECODERS)('$name never throws on fc.anything()', ({ decode, types }) => {
    fc.assert(
      fc.property(anyInput, (input) => {
        const result = decode(input);
        expectWellFormed(result, types);
        const textOrBytes =
          typeof input === 'string' ||
          isBytes(input) ||
          (Array.isArray(input) && input.every((x) => x instanceof Uint8Array));
        if (!textOrBytes)
          expect(result).toMatchObject({ ok: false, error: { code: ErrorCode.InvalidFrame } });
      }),
      propertyParams(1000),
    );
  });

  it.each(DECODERS)('$name never throws on arbitrary strings', ({ decode, types }) => {
    const jsonish = fc.string({
      unit: fc.constantFrom('{', '}', '[', ']', '"', ':', ',', 'type', 'ping', '1', ' ', '\\', 'u'),
    });
    fc.assert(
      fc.property(fc.oneof(fc.string({ unit: 'binary' }), jsonish), (text) => {
        const result = decode(text);
        expectWellFormed(result, types);
        expectExactlyParsed(result, text);
      }),
      propertyParams(1000),
    );
  });

  it.each(DECODERS)('$name classifies arbitrary JSON (fc.json) as the codes say', ({ decode, types }) => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.json(),
          fc.json().map((json) => `{"type":${JSON.stringify(json)}}`),
        ),
        (text) => {
          const result = decode(text);
          expectWellFormed(result, types);
          expectExactlyParsed(result, text);
          const value: unknown = JSON.parse(text);
          if (typeof value !== 'object' || value === null || Array.isArray(value)) {
            expectError(result, ErrorCode.InvalidFrame, 'must be a JSON object');
          } else if (!('type' in value) || typeof value.type !== 'string') {
            expectError(result, ErrorCode.InvalidFrame, 'type:');
          } else if (!types.includes(value.type)) {
            expectError(result, ErrorCode.UnknownFrame);
          }
        },
      ),
      propertyParams(1000),
    );
  });

  it.each(DECODERS)('$name never throws on arbitrary bytes and fragments', ({ decode, types }) => {
    const bytes = fc.uint8Array({ maxLength: 200, size: 'max' });
    fc.assert(
      fc.property(
        fc.oneof(
          bytes,
          fc.array(bytes, { maxLength: 5 }).map((parts) => parts.map((p) => Buffer.from(p))),
        ),
        (input) => {
          const result = decode(input);
          expectWellFormed(result, types);
          if (result.ok) {
            const joined = Array.isArray(input) ? Buffer.concat(input) : input;
            expectExactlyParsed(
              result,
              new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(joined),
            );
          }
        },
      ),
      propertyParams(1000),
    );
  });
});

// ── mutated frames ───────────────────────────────────────────────────────────────────────────

type JsonObject = Record<string, unknown>;

/** The strict objects of a frame (not JSON payloads), with their paths; `record` marks heartbeat seqs. */
function strictObjects(frame: JsonObject): Array<{ path: string[]; node: JsonObject; record: boolean }> {
  const found: Array<{ path: string[]; node: JsonObject; record: boolean }> = [];
  const walk = (node: JsonObject, path: string[], record: boolean) => {
    found.push({ path, node, record });
    if (record) return;
    for (const [key, value] of Object.entries(node)) {
      if (key === 'result' || key === 'detail') continue;
      if (typeof value === 'object' && value !== null && !Array.isArray(value)) {
        walk(value as JsonObject, [...path, key], key === 'seqs');
      }
    }
  };
  walk(frame, [], false);
  return found;
}

/** Keys a frame may omit: the optional top-level fields. */
function isOptionalKey(frame: JsonObject, path: string[], key: string): boolean {
  if (path.length > 0) return false;
  if (key === 'id') return true;
  return (
    (key === 'requestId' && (frame.type === 'error' || frame.type === 'pong')) ||
    (key === 'taskId' && frame.type === 'error') ||
    (key === 'epoch' && (frame.type === 'hello' || frame.type === 'snapshot')) ||
    (key === 'reset' && frame.type === 'snapshot') ||
    (key === 'reconnectDelayMs' && frame.type === 'hello')
  );
}

const mutationArbitrary = fc.record({
  kind: fc.constantFrom('delete', 'add', 'replace'),
  pickNode: fc.nat(),
  pickKey: fc.nat(),
  value: fc.jsonValue({ maxDepth: 2 }),
});

describe.each([
  {
    name: 'client',
    decode: decodeClientFrame as Decoder,
    frames: clientFrameArbitrary as fc.Arbitrary<ClientFrame | ServerFrame>,
    types: CLIENT_FRAME_TYPES as readonly string[],
  },
  {
    name: 'server',
    decode: decodeServerFrame as Decoder,
    frames: serverFrameArbitrary as fc.Arbitrary<ClientFrame | ServerFrame>,
    types: SERVER_FRAME_TYPES as readonly string[],
  },
])('$name frames (properties)', ({ decode, frames, types }) => {
  it('round trip: decode(encode(f)) deep-equals f, as text, bytes and fragments', () => {
    fc.assert(
      fc.property(frames, fc.array(fc.nat(), { maxLength: 4 }), (frame, cuts) => {
        const text = encodeFrame(frame);
        expect(decode(text)).toStrictEqual({ ok: true, frame });
        const bytes = Buffer.from(encoder.encode(text));
        const points = [...new Set(cuts.map((cut) => cut % (bytes.length + 1)))].sort((a, b) => a - b);
        const fragments = [0, ...points].map((start, i) =>
          bytes.subarray(start, [...points, bytes.length][i]),
        );
        expect(decode(fragments)).toStrictEqual({ ok: true, frame });
      }),
      propertyParams(1000),
    );
  });

  it('mutated valid frames never throw; a removed field or an added one is named', () => {
    fc.assert(
      fc.property(frames, mutationArbitrary, (frame, mutation) => {
        const mutated = JSON.parse(encodeFrame(frame)) as JsonObject;
        const objects = strictObjects(mutated);
        const { path, node, record } = objects[mutation.pickNode % objects.length]!;
        const keys = Object.keys(node);
        const key = keys[mutation.pickKey % Math.max(1, keys.length)];
        let expected: ((result: DecodeResult<unknown>) => void) | undefined;
        if (mutation.kind === 'delete' && key !== undefined) {
          delete node[key];
          if (!record && !isOptionalKey(mutated, path, key)) {
            expected = (result) => expectError(result, ErrorCode.InvalidFrame, `${key}:`);
          }
        } else if (mutation.kind === 'replace' && key !== undefined) {
          node[key] = mutation.value;
        } else {
          node['unknown field'] = mutation.value;
          expected = (result) =>
            expectError(
              result,
              ErrorCode.InvalidFrame,
              record ? 'may contain only' : '"unknown field"]: is not a known field',
            );
        }
        const text = JSON.stringify(mutated);
        const result = decode(text);
        expectWellFormed(result, types);
        expectExactlyParsed(result, text);
        expected?.(result);
      }),
      propertyParams(1000),
    );
  });

  it('rejects a frame over maxBytes with frame_too_large, and accepts it at exactly its size', () => {
    fc.assert(
      fc.property(frames, fc.integer({ min: 1, max: 64 }), (frame, excess) => {
        const text = encodeFrame(frame);
        const size = byteLength(text);
        const maxBytes = Math.max(1, size - excess);
        expectError(decode(text, { maxBytes }), ErrorCode.FrameTooLarge);
        expectError(decode(Buffer.from(text), { maxBytes }), ErrorCode.FrameTooLarge);
        expectFrame(decode(text, { maxBytes: size }));
      }),
      propertyParams(1000),
    );
  });
});

describe('frame_too_large (property)', () => {
  it.each(DECODERS)(
    '$name: any content over maxBytes is frame_too_large, in every input form',
    ({ decode }) => {
      const content = fc.oneof(
        fc.string({ unit: 'binary', maxLength: 120, size: 'max' }),
        fc.string({ unit: 'grapheme', maxLength: 80, size: 'max' }),
        fc.json(),
      );
      fc.assert(
        fc.property(content, fc.integer({ min: 1, max: 200 }), (text, maxBytes) => {
          const bytes = Buffer.from(encoder.encode(text));
          const over = bytes.byteLength > maxBytes;
          for (const input of [text, bytes, [bytes.subarray(0, 3), bytes.subarray(3)]]) {
            const result = decode(input, { maxBytes });
            expect(!result.ok && result.error.code === ErrorCode.FrameTooLarge).toBe(over);
          }
        }),
        propertyParams(1000),
      );
    },
  );
});

describe('arbitraries', () => {
  it('taskEventArbitrary and taskViewArbitrary produce values the schemas accept', () => {
    fc.assert(
      fc.property(taskEventArbitrary, taskViewArbitrary, (event, task) => {
        expectFrame(decodeServerFrame(encodeFrame({ type: 'event', event })));
        expectFrame(decodeServerFrame(encodeFrame({ type: 'snapshot', task })));
      }),
      propertyParams(500),
    );
  });

  it('reach the lengths they declare: ids of 1–24 characters and tokens of 1–200 between the maximal ones', () => {
    // fast-check's default size stops strings near 10 characters whatever maxLength says.
    const sample = <T>(arbitrary: fc.Arbitrary<T>) =>
      fc.sample(arbitrary, { seed: propertySeed(), numRuns: 1000 });
    const idLengths = sample(idArbitrary).map((id) => id.length);
    expect(
      Math.max(...idLengths.filter((length) => length < LIMITS.maxIdLength)),
      'longest short id',
    ).toBeGreaterThan(20);
    const tokenLengths = sample(authFrameArbitrary).map((frame) => frame.token.length);
    expect(
      Math.max(...tokenLengths.filter((length) => length < LIMITS.maxTokenLength)),
      'longest short token',
    ).toBeGreaterThan(150);
  });

  it('cover every event type, status, frame type and error code', () => {
    // A fixed sample, independent of FC_NUM_RUNS: this checks the generators, not the codec.
    const sample = <T>(arbitrary: fc.Arbitrary<T>, numRuns: number) =>
      fc.sample(arbitrary, { seed: propertySeed(), numRuns });
    expect(new Set(sample(taskEventArbitrary, 200).map((event) => event.type)).size).toBe(EVENT_TYPES.length);
    expect(new Set(sample(taskViewArbitrary, 200).map((task) => task.status)).size).toBe(
      TASK_STATUSES.length,
    );
    const server = sample(serverFrameArbitrary, 1000);
    expect(new Set(server.map((frame) => frame.type))).toEqual(new Set(SERVER_FRAME_TYPES));
    const client = sample(clientFrameArbitrary, 200);
    expect(new Set(client.map((frame) => frame.type))).toEqual(new Set(CLIENT_FRAME_TYPES));
    // From the error frames themselves: the sixth of 1,000 server frames that are errors left one of the
    // 19 codes out for 1 seed in 300 measured (test:deep draws a new seed each run; FC_SEED=175133209 is
    // one); 1,000 error frames miss one with a chance under 1e-15.
    const codes = new Set(sample(errorFrameArbitrary, 1000).map((frame) => frame.code));
    expect(codes).toEqual(new Set(ERROR_CODES));
  });
});
