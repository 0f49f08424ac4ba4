import type { ServerFrame } from '@finishline/core';
import { ERROR_CODES, ErrorCode, PROTOCOL_VERSIONS, ProgressError, TASK_STATUSES } from '@finishline/core';
import {
  type DecodeResult,
  type FrameObject,
  frameError,
  idProblem,
  MAX_FRAME_BYTES,
  pathSegment,
  quote,
} from '@finishline/core/internal';

/**
 * The client's check of server frames: what the client relies on, in fewer bytes than core's
 * `decodeServerFrame` (whose full rules are the server's, mirrored from the frame schemas). Every field
 * the client reads is checked for its type and range: frame and event types, the protocol version, ids,
 * seqs and counts (non-negative safe integers), statuses, error codes, the heartbeat's map of seqs, and
 * no field beyond the known ones. Left to the server, which enforces them when a value is stored: the
 * length limits of texts, U+0000 and unpaired surrogates in them, and the depth and size limits of JSON
 * payloads (`result`, an item's `detail`), which reach the application as `JSON.parse` made them.
 *
 * A check returns `undefined` for a valid value, else the tail of the error message (the path below the
 * checked value, then `: ` and what is wrong), as in core's decoder.
 *
 * @module
 */

/** `undefined` when valid, else `<path below the value>: <problem>`. */
type Check = (value: unknown) => string | undefined;

const any: Check = () => undefined;

const count: Check = (value) =>
  Number.isSafeInteger(value) && (value as number) >= 0 ? undefined : ': must be an integer >= 0';

/** Seqs of events and heartbeat intervals. */
const positive: Check = (value) =>
  Number.isSafeInteger(value) && (value as number) >= 1 ? undefined : ': must be an integer >= 1';

const id: Check = (value) => {
  const problem = idProblem(value);
  return problem && `: ${problem}`;
};

const text: Check = (value) => (typeof value === 'string' ? undefined : ': must be string');

/** Item keys and request ids. */
const nonEmpty: Check = (value) => (value === '' ? ': must not be empty' : text(value));

const nullable =
  (check: Check): Check =>
  (value) =>
    value === null ? undefined : check(value);

const oneOf =
  (allowed: readonly unknown[]): Check =>
  (value) =>
    allowed.includes(value) ? undefined : `: must be one of ${allowed.join(', ')}`;

/**
 * A strict object: each field in order (a missing one is required unless its name starts with `?`),
 * then no other key. Field names are parsed once per shape, not per frame; the check itself runs for
 * every object of every frame, so it allocates nothing for a valid one (indexed loops, and the keys
 * counted with `for…in` rather than listed with `Object.keys`).
 */
function object(fields: Record<string, Check>): Check {
  const names = Object.keys(fields);
  const keys = names.map((name) => name.replace('?', ''));
  const checks = Object.values(fields);
  return (value) => {
    if (typeof value !== 'object' || value === null) return ': must be an object';
    // A value from JSON.parse is never `undefined`: `undefined` means the key is absent.
    let present = 0;
    for (let i = 0; i < keys.length; i++) {
      const key = keys[i] as string;
      const field = (value as FrameObject)[key];
      if (field === undefined) {
        // An optional field's name lost its `?`.
        if (names[i] === key) return `${pathSegment(key)}: is required`;
        continue;
      }
      present++;
      const tail = (checks[i] as Check)(field);
      if (tail !== undefined) return pathSegment(key) + tail;
    }
    for (const _ in value) present--;
    if (present === 0) return undefined;
    const unknown = Object.keys(value).find((key) => !keys.includes(key));
    return unknown && `${pathSegment(unknown)}: is not a known field`;
  };
}

const progressFields = {
  total: nullable(count),
  done: count,
  succeeded: count,
  failed: count,
  current: nullable(text),
  message: nullable(text),
};

const failure = object({ code: text, message: text });

const eventBase = { type: any, taskId: id, seq: positive, time: count, progress: object(progressFields) };

const EVENTS = new Map<unknown, Check>([
  ['progress', object(eventBase)],
  [
    'item',
    object({
      ...eventBase,
      item: object({
        key: nonEmpty,
        ok: (value) => (typeof value === 'boolean' ? undefined : ': must be boolean'),
        error: nullable(text),
        detail: any,
      }),
    }),
  ],
  ['completed', object({ ...eventBase, result: any })],
  ['failed', object({ ...eventBase, error: failure })],
  ['cancelled', object({ ...eventBase, reason: nullable(text) })],
  ['interrupted', object({ ...eventBase, reason: text })],
]);

// (The types EVENTS checks, listed from it: core's EVENT_TYPES, as a test checks.)
const event: Check = (value) => {
  const check = EVENTS.get((value as FrameObject | null)?.type);
  return check === undefined
    ? `.type: must be an event of type ${[...EVENTS.keys()].join(', ')}`
    : check(value);
};

/** Task ids to seqs; ids cannot be `__proto__`, `constructor` or `prototype`, so no key misbehaves. */
const seqs: Check = (value) => {
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    return ': must be an object mapping task ids to seqs';
  for (const key of Object.keys(value)) {
    const tail = id(key) ?? count((value as FrameObject)[key]);
    if (tail !== undefined) return pathSegment(key) + tail;
  }
  return undefined;
};

const FRAMES = new Map<unknown, Check>([
  [
    'hello',
    object({
      type: any,
      protocol: oneOf(PROTOCOL_VERSIONS),
      serverId: id,
      heartbeatIntervalMs: positive,
      '?epoch': id,
      '?reconnectDelayMs': count,
    }),
  ],
  [
    'snapshot',
    object({
      type: any,
      task: object({
        id,
        kind: id,
        status: oneOf(TASK_STATUSES),
        ...progressFields,
        result: any,
        error: nullable(failure),
        seq: count,
        createdAt: count,
        updatedAt: count,
        finishedAt: nullable(count),
      }),
      '?epoch': id,
      '?reset': (value) => (value === true ? undefined : ': must be true'),
    }),
  ],
  ['event', object({ type: any, event })],
  ['heartbeat', object({ type: any, time: count, seqs })],
  [
    'error',
    object({ type: any, code: oneOf(ERROR_CODES), message: text, '?requestId': nonEmpty, '?taskId': id }),
  ],
  ['pong', object({ type: any, '?requestId': nonEmpty, time: count })],
]);

/**
 * Checks a server frame already parsed as a JSON object: the frame as parsed, or a typed error
 * (`invalid_frame`, `unknown_frame`, `unsupported_protocol`) naming the offending field.
 *
 * @internal
 */
export function checkServerFrame(value: FrameObject): DecodeResult<ServerFrame> {
  const type = value.type;
  const check = FRAMES.get(type);
  let code: ErrorCode = ErrorCode.InvalidFrame;
  let message: string;
  if (typeof type !== 'string') message = 'Invalid frame: type: must be a string';
  else if (check === undefined) {
    code = ErrorCode.UnknownFrame;
    // The types FRAMES checks, listed from it (core's SERVER_FRAME_TYPES, as a test checks).
    message = `Unknown server frame type ${quote(type)}; expected one of ${[...FRAMES.keys()].join(', ')}`;
  } else if (
    type === 'hello' &&
    Number.isSafeInteger(value.protocol) &&
    (value.protocol as number) >= 1 &&
    !(PROTOCOL_VERSIONS as readonly unknown[]).includes(value.protocol)
  ) {
    code = ErrorCode.UnsupportedProtocol;
    // The versions written out, and shorter than core's wording: bytes (a test ties them to PROTOCOL_VERSIONS).
    message = `Protocol version ${value.protocol as number} is not supported (1 and 2 are)`;
  } else {
    const tail = check(value);
    if (tail === undefined) return { ok: true, frame: value as unknown as ServerFrame };
    message = `Invalid ${type} frame: ${tail.replace(/^\./, '')}`;
  }
  // An invalid frame names the task it was about, where one can be told: the client resyncs that task (the
  // frame lost may have been one of its events). Not another refusal: a newer server's frame type, say.
  const about: { event?: FrameObject; task?: FrameObject } = code === ErrorCode.InvalidFrame ? value : {};
  return {
    ok: false,
    error: frameError(code, message, { taskId: value.taskId ?? about.event?.taskId ?? about.task?.id }),
  };
}

/**
 * Decodes a server frame handed over as text (a browser's WebSocket message, SSE data, an HTTP body, a
 * stored cursor) exactly as core's `decodeTextWith` reads text, with {@link checkServerFrame}: anything
 * but a string fails with `invalid_frame`, a text over `LIMITS.maxFrameBytes` UTF-8 bytes with
 * `frame_too_large` before it is parsed. Never throws. Written out here (the same few rules, the same
 * messages) so that a page's bundle leaves out core's reader, its options and its byte decoding.
 *
 * @internal
 */
export function decodeServerText(input: unknown): DecodeResult<ServerFrame> {
  const max = MAX_FRAME_BYTES;
  const fail = (code: ErrorCode, message: string, cause?: unknown): DecodeResult<ServerFrame> => ({
    ok: false,
    error: new ProgressError(code, message, { cause }),
  });
  if (typeof input !== 'string') {
    return fail(
      ErrorCode.InvalidFrame,
      `A frame must be a string or UTF-8 bytes, got ${input === null ? 'null' : typeof input}`,
    );
  }
  // A UTF-16 unit is 1 to 3 UTF-8 bytes: the exact count is only needed between the two bounds, rare
  // enough to encode the text for it (a lone surrogate becomes U+FFFD, 3 bytes, as core's count says).
  if (input.length > max || (input.length * 3 > max && new TextEncoder().encode(input).length > max))
    return fail(ErrorCode.FrameTooLarge, `Frame is larger than ${max} bytes`);
  let value: unknown;
  try {
    value = JSON.parse(input);
  } catch (cause) {
    // The SyntaxError quotes the input; it stays in `cause` for logs, out of the message.
    return fail(ErrorCode.InvalidFrame, 'Frame is not valid JSON', cause);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return fail(
      ErrorCode.InvalidFrame,
      `A frame must be a JSON object, got ${value === null ? 'null' : Array.isArray(value) ? 'an array' : `a ${typeof value}`}`,
    );
  }
  return checkServerFrame(value as FrameObject);
}
