import { ERROR_CODES, ErrorCode } from '../codes.js';
import { LIMITS } from '../limits.js';
import { TASK_STATUSES } from '../model.js';
import { CHECK_MESSAGES, fitsJsonLimit, idProblem, isJsonValue, isStorableText } from '../value-checks.js';
import {
  type DecodeOptions,
  type DecodeResult,
  decodeFrameWith,
  decodeTextWith,
  type FrameObject,
  frameError,
  pathSegment,
  quote,
} from './frame-text.js';
import type { ServerFrame } from './frames.js';
import { isProtocolVersion, PROTOCOL_VERSIONS, SERVER_FRAME_TYPES } from './frames.js';

/**
 * The decoder of server frames for a client written against core, by hand so that a browser bundle
 * carries a few hundred bytes of checks instead of a validation library. (`@finishline/client` has a
 * smaller check of its own, `frame-check.ts`, which leaves the store's text and payload limits to the
 * server.) It enforces exactly the rules of the
 * valibot schemas in `frame-schemas.ts`, which stay the specification: a property test
 * (`server-frame-decoder.test.ts`) checks that both accept the same inputs, return the same frames and
 * fail with the same code and message, issue for issue in the schemas' order (abort early).
 *
 * A check returns `undefined` when the value is valid, else the tail of the error message: the path
 * below the checked value (`.done`, `["bad id"]`), then `: ` and what is wrong. Nothing is allocated for
 * a valid frame, which is returned as parsed (its keys are exactly the allowed ones).
 *
 * @module
 */

/** `undefined` when valid, else `<path below the value>: <message>`. */
type Check = (value: unknown) => string | undefined;

const ok: Check = () => undefined;

function nested(key: string, tail: string | undefined): string | undefined {
  return tail === undefined ? undefined : pathSegment(key) + tail;
}

function count(value: unknown): string | undefined {
  if (typeof value !== 'number' || Number.isNaN(value)) return ': must be number';
  if (!Number.isInteger(value)) return `: ${CHECK_MESSAGES.integer}`;
  if (value < 0) return `: ${CHECK_MESSAGES.negative}`;
  if (value > LIMITS.maxCount) return `: ${CHECK_MESSAGES.tooLarge}`;
  return undefined;
}

/** A count of at least 1 (seqs, intervals). */
const positive: Check = (value) =>
  count(value) ?? ((value as number) < 1 ? `: ${CHECK_MESSAGES.atLeastOne}` : undefined);

const id: Check = (value) => {
  const problem = idProblem(value);
  return problem === undefined ? undefined : `: ${problem}`;
};

/** A string without U+0000 of at most `max` UTF-16 units (`tooLong` says so). */
function text(max: number, tooLong: string, minOne = false): Check {
  return (value) => {
    if (typeof value !== 'string') return ': must be string';
    if (!isStorableText(value)) return `: ${CHECK_MESSAGES.nul}`;
    if (value.length > max) return `: ${tooLong}`;
    if (minOne && value.length < 1) return `: ${CHECK_MESSAGES.empty}`;
    return undefined;
  };
}

const shortText = text(LIMITS.maxKeyLength, CHECK_MESSAGES.keyTooLong);
const message = text(LIMITS.maxMessageLength, CHECK_MESSAGES.messageTooLong);

const json: Check = (value) => {
  if (!isJsonValue(value)) return `: ${CHECK_MESSAGES.json}`;
  return fitsJsonLimit(value) ? undefined : `: ${CHECK_MESSAGES.jsonTooLarge}`;
};

const nullable =
  (check: Check): Check =>
  (value) =>
    value === null ? undefined : check(value);

function oneOf(allowed: readonly unknown[], problem: string): Check {
  return (value) => (allowed.includes(value) ? undefined : `: ${problem}`);
}

const requestId: Check = (value) => {
  if (typeof value !== 'string') return ': must be string';
  if (value.length < 1) return `: ${CHECK_MESSAGES.empty}`;
  if (value.length > LIMITS.maxRequestIdLength) {
    return `: must be at most ${LIMITS.maxRequestIdLength} characters`;
  }
  return undefined;
};

/**
 * A strict object: each field of `fields` in order (a missing one is required unless its name starts
 * with `?`), then no other key. Arrays count as objects here, as they do for valibot's `strictObject`.
 */
function object(fields: Record<string, Check>): Check {
  // Parsed once per schema, not per frame: the check runs for every object of every frame, and building
  // `?key` strings there cost an allocation per key.
  const names = Object.keys(fields);
  const keys = names.map((name) => (name.startsWith('?') ? name.slice(1) : name));
  const optional = names.map((name) => name.startsWith('?'));
  const checks = names.map((name) => fields[name] as Check);
  const known = new Set(keys);
  return (value) => {
    if (typeof value !== 'object' || value === null) return ': must be an object';
    // Runs for every object of every frame, so one lookup per field: a value from JSON.parse is never
    // `undefined`, and no field name is one of Object.prototype's, so `undefined` means the key is absent.
    // Counting the fields found spares the unknown-key search (a Set lookup per key) for a valid object.
    let present = 0;
    for (let i = 0; i < keys.length; i++) {
      const key = keys[i] as string;
      const field = (value as FrameObject)[key];
      if (field !== undefined) {
        present++;
        const tail = (checks[i] as Check)(field);
        if (tail !== undefined) return nested(key, tail);
      } else if (!optional[i]) return nested(key, ': is required');
    }
    let keyCount = 0;
    for (const _ in value) keyCount++;
    if (keyCount === present) return undefined;
    for (const key in value) {
      if (!known.has(key)) return nested(key, ': is not a known field');
    }
    return undefined;
  };
}

/**
 * The checks of an event, of an event's body (the event without its type, task id, seq and time) and of
 * a task's progress, built from the checks of their texts and JSON payloads: the frame decoder's, with
 * the store's limits, or {@link eventBodyProblem}'s, types alone.
 */
function eventChecks(leaf: { shortText: Check; message: Check; key: Check; json: Check }) {
  const progressFields = {
    total: nullable(count),
    done: count,
    succeeded: count,
    failed: count,
    current: nullable(leaf.shortText),
    message: nullable(leaf.message),
  };
  const failure = object({ code: leaf.shortText, message: leaf.message });
  const eventBase = { type: ok, taskId: id, seq: positive, time: count };
  const progress = object(progressFields);
  const payloads: [string, Record<string, Check>][] = [
    ['progress', {}],
    [
      'item',
      {
        item: object({
          key: leaf.key,
          ok: (value) => (typeof value === 'boolean' ? undefined : ': must be boolean'),
          error: nullable(leaf.message),
          detail: nullable(leaf.json),
        }),
      },
    ],
    ['completed', { result: nullable(leaf.json) }],
    ['failed', { error: failure }],
    ['cancelled', { reason: nullable(leaf.shortText) }],
    ['interrupted', { reason: leaf.shortText }],
  ];
  const events = new Map<unknown, Check>(
    payloads.map(([type, fields]) => [type, object({ ...eventBase, progress, ...fields })]),
  );
  const bodies = new Map<unknown, Check>(
    payloads.map(([type, fields]) => [type, object({ progress, ...fields })]),
  );
  const event: Check = (value) => {
    if (typeof value !== 'object' || value === null) return EVENT_MESSAGE;
    const check = 'type' in value ? events.get((value as FrameObject).type) : undefined;
    return check === undefined ? `.type${EVENT_MESSAGE}` : check(value);
  };
  return { progressFields, failure, event, bodies };
}

const EVENT_MESSAGE =
  ': must be an event object whose type is progress, item, completed, failed, cancelled or interrupted';

const { progressFields, failure, event } = eventChecks({
  shortText,
  message,
  key: text(LIMITS.maxKeyLength, CHECK_MESSAGES.keyTooLong, true),
  json,
});

const string: Check = (value) => (typeof value === 'string' ? undefined : ': must be string');

const bodyShapes = eventChecks({
  shortText: string,
  message: string,
  key: (value) => (value === '' ? `: ${CHECK_MESSAGES.empty}` : string(value)),
  json: ok,
}).bodies;

/**
 * What is wrong with the shape of `body` as the body of an event of type `type` (the event without its
 * type, task id, seq and time, as a store keeps it), or `undefined` when it has that shape: `<path below
 * the body>: <message>` (`.progress.done: must be number`, `: must be an object`). Every field the frame
 * decoder checks there, of the type and range it checks (counts non-negative safe integers, no field
 * missing or unknown: so none of the event's own four either), but not the store's limits on texts and
 * JSON payloads (lengths, U+0000, depth and size), which the store enforces when it writes them. For a
 * store reading its events back: a row edited by hand or written by another program must not reach a
 * watcher as a malformed event. Allocates nothing for a valid body, and walks no payload.
 *
 * @internal
 */
export function eventBodyProblem(type: unknown, body: unknown): string | undefined {
  const check = bodyShapes.get(type);
  return check === undefined ? `: is not the body of an event of type ${quote(String(type))}` : check(body);
}

const SEQS_MESSAGE = ': must be an object mapping task ids to seqs';

const seqs: Check = (value) => {
  if (
    typeof value !== 'object' ||
    value === null ||
    Array.isArray(value) ||
    Object.hasOwn(value, '__proto__') ||
    Object.hasOwn(value, 'constructor') ||
    Object.hasOwn(value, 'prototype')
  ) {
    return SEQS_MESSAGE;
  }
  for (const key in value) {
    if (!Object.hasOwn(value, key)) continue;
    const tail = nested(key, id(key) ?? count((value as FrameObject)[key]));
    if (tail !== undefined) return tail;
  }
  return undefined;
};

const time = count;

const FRAMES = new Map<string, Check>([
  [
    'hello',
    object({
      type: ok,
      protocol: oneOf(PROTOCOL_VERSIONS, `must be one of ${PROTOCOL_VERSIONS.join(', ')}`),
      serverId: id,
      heartbeatIntervalMs: positive,
      '?epoch': id,
      '?reconnectDelayMs': count,
    }),
  ],
  [
    'snapshot',
    object({
      type: ok,
      task: object({
        id,
        kind: id,
        status: oneOf(TASK_STATUSES, `must be one of ${TASK_STATUSES.join(', ')}`),
        ...progressFields,
        result: nullable(json),
        error: nullable(failure),
        seq: count,
        createdAt: time,
        updatedAt: time,
        finishedAt: nullable(time),
      }),
      '?epoch': id,
      '?reset': (value) => (value === true ? undefined : ': must be true'),
    }),
  ],
  ['event', object({ type: ok, event })],
  ['heartbeat', object({ type: ok, time, seqs })],
  [
    'error',
    object({
      type: ok,
      code: oneOf(ERROR_CODES, 'must be one of the error codes of codes.ts'),
      message,
      '?requestId': requestId,
      '?taskId': id,
    }),
  ],
  ['pong', object({ type: ok, '?requestId': requestId, time })],
]);

/**
 * Decodes a frame a server sent (on the client).
 *
 * @param input A WebSocket message: a string, a `Uint8Array`/`Buffer`/`ArrayBuffer` holding UTF-8, or
 *   an array of `Buffer` fragments.
 * @returns The validated frame, or a typed error (see {@link DecodeResult}); a failure never carries a
 *   `requestId`. Never throws for any `input`.
 * @throws ProgressError `invalid_input` only for invalid `options` (a programming error).
 *
 * @example
 * ```ts
 * socket.onmessage = ({ data }) => {
 *   const decoded = decodeServerFrame(data);
 *   if (decoded.ok) handle(decoded.frame);
 *   else log.warn(decoded.error.code, decoded.error.message);
 * };
 * ```
 */
export function decodeServerFrame(input: unknown, options?: DecodeOptions): DecodeResult<ServerFrame> {
  return decodeFrameWith(input, options, validate);
}

/**
 * {@link decodeServerFrame} for text frames only: a string decodes exactly as there, anything else
 * (bytes included) fails with `invalid_frame`. For callers that only ever hold strings (HTTP bodies, SSE
 * data, stored cursors, a browser's WebSocket), so their bundles leave out the byte reader.
 *
 * @throws ProgressError `invalid_input` only for invalid `options` (a programming error).
 */
export function decodeServerText(input: unknown, options?: DecodeOptions): DecodeResult<ServerFrame> {
  return decodeTextWith(input, options, validate);
}

function validate(value: FrameObject): DecodeResult<ServerFrame> {
  const fail = (code: ErrorCode, detail: string): DecodeResult<ServerFrame> => ({
    ok: false,
    error: frameError(code, detail, value),
  });
  if (!Object.hasOwn(value, 'type')) return fail(ErrorCode.InvalidFrame, 'Invalid frame: type: is required');
  const type = value.type;
  if (typeof type !== 'string') return fail(ErrorCode.InvalidFrame, 'Invalid frame: type: must be a string');
  const check = FRAMES.get(type);
  if (check === undefined) {
    return fail(
      ErrorCode.UnknownFrame,
      `Unknown server frame type ${quote(type)}; expected one of ${SERVER_FRAME_TYPES.join(', ')}`,
    );
  }
  const protocol = value.protocol;
  if (
    type === 'hello' &&
    Number.isSafeInteger(protocol) &&
    (protocol as number) >= 1 &&
    !isProtocolVersion(protocol)
  ) {
    return fail(
      ErrorCode.UnsupportedProtocol,
      `Protocol version ${String(protocol)} is not supported; this side speaks ${PROTOCOL_VERSIONS.join(' and ')}`,
    );
  }
  const tail = check(value);
  if (tail === undefined) return { ok: true, frame: value as unknown as ServerFrame };
  return fail(ErrorCode.InvalidFrame, `Invalid ${type} frame: ${tail.slice(tail.startsWith('.') ? 1 : 0)}`);
}
