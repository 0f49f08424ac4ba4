import fc from 'fast-check';
import { ERROR_CODES } from '../codes.js';
import { LIMITS } from '../limits.js';
import type {
  ItemResult,
  JsonValue,
  ProgressState,
  TaskEvent,
  TaskFailure,
  TaskStatus,
  TaskView,
} from '../model.js';
import type {
  AckFrame,
  AuthFrame,
  ClientFrame,
  ErrorFrame,
  EventFrame,
  HeartbeatFrame,
  HelloFrame,
  PingFrame,
  PongFrame,
  ServerFrame,
  SnapshotFrame,
  SubscribeFrame,
  UnsubscribeFrame,
} from '../protocol/frames.js';
import { PROTOCOL_VERSIONS } from '../protocol/frames.js';
import { isJsonValue } from '../value-checks.js';

/**
 * fast-check arbitraries for every valid protocol frame and for the events and snapshots they carry.
 * Values reach the limits of `LIMITS` (longest ids and texts, largest counts, JSON payloads of the
 * maximal size) and include characters that JSON must escape, so a codec, a store or a client tested
 * with them meets the awkward cases too. Every generated value is a plain object (no null prototype).
 *
 * @module
 */

const ID_CHARS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:@/-';
const RESERVED_IDS = new Set(['__proto__', 'constructor', 'prototype']);

/** A valid task id, owner, kind or server id, sometimes of the maximal length. */
export const idArbitrary: fc.Arbitrary<string> = fc
  .oneof(
    // size 'max': fast-check's default size stops strings near 10 characters whatever maxLength says.
    {
      weight: 8,
      arbitrary: fc.string({ unit: fc.constantFrom(...ID_CHARS), minLength: 1, maxLength: 24, size: 'max' }),
    },
    {
      weight: 1,
      arbitrary: fc.string({
        unit: fc.constantFrom(...ID_CHARS),
        minLength: LIMITS.maxIdLength,
        maxLength: LIMITS.maxIdLength,
      }),
    },
  )
  .filter((id) => !RESERVED_IDS.has(id));

/** Characters that are awkward on the wire: escaped by JSON, multi-byte in UTF-8, lone surrogates. */
// U+0000 is absent on purpose: every text schema refuses it (Postgres cannot store it).
const NASTY_UNIT = fc.constantFrom(
  '\u0001',
  '\u001b',
  '"',
  '\\',
  '\n',
  '\u2028',
  'é',
  '€',
  '😀',
  '\ud800',
  '\udfff',
);

/** `text` with U+0000 and unpaired surrogates replaced by U+0001 and U+FFFD: storable by every store. */
function storable(text: string): string {
  return text
    .replaceAll('\u0000', '\u0001')
    .replace(/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g, '\uFFFD');
}

/** A string of at most `maxLength` UTF-16 units (valibot counts those), including the awkward ones. */
function textArbitrary(maxLength: number, minLength = 0): fc.Arbitrary<string> {
  // Every text schema refuses U+0000 and unpaired surrogates (no store can keep them): swap them out,
  // after cutting to length so a cut cannot split a pair.
  const fit = (text: string) => storable(text.slice(0, maxLength));
  // Mostly short strings (fast to generate and to shrink), sometimes exactly the limit.
  const shortMax = Math.max(minLength, Math.min(maxLength, 40));
  return fc.oneof(
    {
      weight: 6,
      arbitrary: fc.string({ unit: 'binary', minLength, maxLength: shortMax, size: 'max' }).map(fit),
    },
    {
      weight: 2,
      arbitrary: fc.string({ unit: NASTY_UNIT, minLength, maxLength: shortMax, size: 'max' }).map(fit),
    },
    { weight: 1, arbitrary: fc.string({ unit: 'grapheme-ascii', minLength: maxLength, maxLength }) },
    { weight: 1, arbitrary: fc.string({ unit: NASTY_UNIT, minLength: maxLength, maxLength }).map(fit) },
  );
}

/** An item key, `current`, reason or failure code. */
const shortTextArbitrary = textArbitrary(LIMITS.maxKeyLength);
/** A message line. */
const messageArbitrary = textArbitrary(LIMITS.maxMessageLength);

/** A non-negative safe integer (count, seq, time), often small, sometimes the largest allowed. */
export const countArbitrary: fc.Arbitrary<number> = fc.oneof(
  { weight: 6, arbitrary: fc.nat({ max: 1000 }) },
  { weight: 2, arbitrary: fc.maxSafeNat() },
  { weight: 1, arbitrary: fc.constant(LIMITS.maxCount) },
);

/** A positive safe integer: the seq of an existing event. */
export const seqArbitrary: fc.Arbitrary<number> = countArbitrary.map((n) => Math.max(1, n));

const timeArbitrary = fc.oneof(
  fc.integer({ min: 0, max: Date.UTC(2100, 0, 1) }),
  fc.constant(LIMITS.maxCount),
);

function hasProtoKey(value: JsonValue): boolean {
  if (Array.isArray(value)) return value.some(hasProtoKey);
  if (value !== null && typeof value === 'object') {
    return Object.hasOwn(value, '__proto__') || Object.values(value).some(hasProtoKey);
  }
  return false;
}

function jsonBytes(value: JsonValue): number {
  return new TextEncoder().encode(JSON.stringify(value)).byteLength;
}

/**
 * A JSON payload (`result`, item `detail`) within `LIMITS.maxJsonBytes`, sometimes exactly that size.
 * Normalized through JSON (no `-0`) so it survives a round trip unchanged.
 */
export const jsonArbitrary: fc.Arbitrary<JsonValue> = fc.oneof(
  {
    weight: 9,
    arbitrary: fc
      .jsonValue({ maxDepth: 4, stringUnit: 'binary' })
      .map(
        (value) =>
          JSON.parse(JSON.stringify(value), (_key, entry) =>
            typeof entry === 'string' ? storable(entry) : entry,
          ) as JsonValue,
      )
      // Keys are not revived: drop values whose keys no store can keep.
      .filter((value) => isJsonValue(value))
      .filter((value) => !hasProtoKey(value) && jsonBytes(value) <= LIMITS.maxJsonBytes),
  },
  // A string whose serialization (two quotes included) is exactly the limit.
  { weight: 1, arbitrary: fc.constant<JsonValue>('x'.repeat(LIMITS.maxJsonBytes - 2)) },
);

/** `ProgressState`. */
export const progressStateArbitrary: fc.Arbitrary<ProgressState> = fc.record(
  {
    total: fc.option(countArbitrary),
    done: countArbitrary,
    succeeded: countArbitrary,
    failed: countArbitrary,
    current: fc.option(shortTextArbitrary),
    message: fc.option(messageArbitrary),
  },
  { noNullPrototype: true },
);

const failureArbitrary: fc.Arbitrary<TaskFailure> = fc.record(
  { code: shortTextArbitrary, message: messageArbitrary },
  { noNullPrototype: true },
);

/** `ItemResult`, consistent as the store writes it: `error` is set exactly when `ok` is false. */
export const itemResultArbitrary: fc.Arbitrary<ItemResult> = fc
  .record(
    {
      key: textArbitrary(LIMITS.maxKeyLength, 1),
      ok: fc.boolean(),
      error: messageArbitrary,
      detail: fc.option(jsonArbitrary),
    },
    { noNullPrototype: true },
  )
  .map(({ key, ok, error, detail }) => ({ key, ok, error: ok ? null : error, detail }));

/** Any `TaskEvent` (all six types), with any task id and seq; `.map` it to pin those. */
export const taskEventArbitrary: fc.Arbitrary<TaskEvent> = fc
  .record(
    {
      taskId: idArbitrary,
      seq: seqArbitrary,
      time: timeArbitrary,
      progress: progressStateArbitrary,
      payload: fc.oneof(
        fc.constant({ type: 'progress' as const }),
        itemResultArbitrary.map((item) => ({ type: 'item' as const, item })),
        fc.option(jsonArbitrary).map((result) => ({ type: 'completed' as const, result })),
        failureArbitrary.map((error) => ({ type: 'failed' as const, error })),
        fc.option(shortTextArbitrary).map((reason) => ({ type: 'cancelled' as const, reason })),
        shortTextArbitrary.map((reason) => ({ type: 'interrupted' as const, reason })),
      ),
    },
    { noNullPrototype: true },
  )
  .map(({ payload, ...base }): TaskEvent => ({ ...base, ...payload }));

/**
 * Any `TaskView`, consistent as the store writes it: a running task has no result, error or
 * `finishedAt`; a completed one has no error; the others have one (`cancelled` and `interrupted` with
 * their own code).
 */
export const taskViewArbitrary: fc.Arbitrary<TaskView> = fc
  .record(
    {
      id: idArbitrary,
      kind: idArbitrary,
      status: fc.constantFrom<TaskStatus>('running', 'completed', 'failed', 'cancelled', 'interrupted'),
      progress: progressStateArbitrary,
      result: fc.option(jsonArbitrary),
      failure: failureArbitrary,
      seq: countArbitrary,
      createdAt: timeArbitrary,
      updatedAt: timeArbitrary,
      finishedAt: timeArbitrary,
    },
    { noNullPrototype: true },
  )
  .map(({ id, kind, status, progress, result, failure, seq, createdAt, updatedAt, finishedAt }): TaskView => {
    const error =
      status === 'running' || status === 'completed'
        ? null
        : status === 'failed'
          ? failure
          : { code: status, message: failure.message };
    return {
      id,
      kind,
      status,
      ...progress,
      result: status === 'completed' ? result : null,
      error,
      seq,
      createdAt,
      updatedAt,
      finishedAt: status === 'running' ? null : finishedAt,
    };
  });

/** A request `id`: 1 to `LIMITS.maxRequestIdLength` characters. */
export const requestIdArbitrary: fc.Arbitrary<string> = textArbitrary(LIMITS.maxRequestIdLength, 1);

/** Any valid {@link HelloFrame}. */
export const helloFrameArbitrary: fc.Arbitrary<HelloFrame> = fc.record(
  {
    type: fc.constant('hello' as const),
    protocol: fc.constantFrom(...PROTOCOL_VERSIONS),
    serverId: idArbitrary,
    heartbeatIntervalMs: seqArbitrary,
    epoch: idArbitrary,
    reconnectDelayMs: fc.nat({ max: 60_000 }),
  },
  { requiredKeys: ['type', 'protocol', 'serverId', 'heartbeatIntervalMs'], noNullPrototype: true },
);

/** Any valid {@link SnapshotFrame}. */
export const snapshotFrameArbitrary: fc.Arbitrary<SnapshotFrame> = fc
  .tuple(taskViewArbitrary, fc.option(idArbitrary, { nil: undefined }), fc.boolean())
  .map(([task, epoch, reset]) => ({
    type: 'snapshot' as const,
    task,
    ...(epoch === undefined ? {} : { epoch }),
    ...(reset ? { reset: true as const } : {}),
  }));

/** Any valid {@link EventFrame}. */
export const eventFrameArbitrary: fc.Arbitrary<EventFrame> = taskEventArbitrary.map((event) => ({
  type: 'event',
  event,
}));

/** Any valid {@link HeartbeatFrame} (up to 30 tasks). */
export const heartbeatFrameArbitrary: fc.Arbitrary<HeartbeatFrame> = fc.record(
  {
    type: fc.constant('heartbeat' as const),
    time: timeArbitrary,
    seqs: fc.dictionary(idArbitrary, countArbitrary, { maxKeys: 30, size: 'max', noNullPrototype: true }),
  },
  { noNullPrototype: true },
);

/** Any valid {@link ErrorFrame}. */
export const errorFrameArbitrary: fc.Arbitrary<ErrorFrame> = fc.record(
  {
    type: fc.constant('error' as const),
    code: fc.constantFrom(...ERROR_CODES),
    message: messageArbitrary,
    requestId: requestIdArbitrary,
    taskId: idArbitrary,
  },
  { requiredKeys: ['type', 'code', 'message'], noNullPrototype: true },
);

/** Any valid {@link PongFrame}. */
export const pongFrameArbitrary: fc.Arbitrary<PongFrame> = fc.record(
  { type: fc.constant('pong' as const), requestId: requestIdArbitrary, time: timeArbitrary },
  { requiredKeys: ['type', 'time'], noNullPrototype: true },
);

/** Any valid server frame, every type. */
export const serverFrameArbitrary: fc.Arbitrary<ServerFrame> = fc.oneof(
  helloFrameArbitrary,
  snapshotFrameArbitrary,
  eventFrameArbitrary,
  heartbeatFrameArbitrary,
  errorFrameArbitrary,
  pongFrameArbitrary,
);

/** Any valid {@link AuthFrame}; the token is sometimes of the maximal length. */
export const authFrameArbitrary: fc.Arbitrary<AuthFrame> = fc.record(
  {
    type: fc.constant('auth' as const),
    token: fc.oneof(
      {
        weight: 9,
        arbitrary: fc.string({ unit: 'binary-ascii', minLength: 1, maxLength: 200, size: 'max' }),
      },
      { weight: 1, arbitrary: textArbitrary(LIMITS.maxTokenLength, LIMITS.maxTokenLength) },
    ),
    protocol: fc.constantFrom(...PROTOCOL_VERSIONS),
  },
  { noNullPrototype: true },
);

/** Any valid {@link SubscribeFrame}. */
export const subscribeFrameArbitrary: fc.Arbitrary<SubscribeFrame> = fc.record(
  {
    type: fc.constant('subscribe' as const),
    id: requestIdArbitrary,
    taskId: idArbitrary,
    afterSeq: countArbitrary,
  },
  { requiredKeys: ['type', 'taskId', 'afterSeq'], noNullPrototype: true },
);

/** Any valid {@link UnsubscribeFrame}. */
export const unsubscribeFrameArbitrary: fc.Arbitrary<UnsubscribeFrame> = fc.record(
  { type: fc.constant('unsubscribe' as const), id: requestIdArbitrary, taskId: idArbitrary },
  { requiredKeys: ['type', 'taskId'], noNullPrototype: true },
);

/** Any valid {@link AckFrame}. */
export const ackFrameArbitrary: fc.Arbitrary<AckFrame> = fc.record(
  { type: fc.constant('ack' as const), taskId: idArbitrary, seq: seqArbitrary },
  { noNullPrototype: true },
);

/** Any valid {@link PingFrame}. */
export const pingFrameArbitrary: fc.Arbitrary<PingFrame> = fc.record(
  { type: fc.constant('ping' as const), id: requestIdArbitrary },
  { requiredKeys: ['type'], noNullPrototype: true },
);

/** Any valid client frame, every type. */
export const clientFrameArbitrary: fc.Arbitrary<ClientFrame> = fc.oneof(
  authFrameArbitrary,
  subscribeFrameArbitrary,
  unsubscribeFrameArbitrary,
  ackFrameArbitrary,
  pingFrameArbitrary,
);
