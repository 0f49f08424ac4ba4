import * as v from 'valibot';
import { ErrorCode } from '../codes.js';
import { LIMITS } from '../limits.js';
import { idSchema, utf8Length } from '../primitives.js';
import { ProgressError } from '../progress-error.js';
import { clientFrameSchemas, type FrameSchema, serverFrameSchemas } from './frame-schemas.js';
import type { ClientFrame, ServerFrame } from './frames.js';
import { CLIENT_FRAME_TYPES, PROTOCOL_VERSION, SERVER_FRAME_TYPES } from './frames.js';

/**
 * Encoding and decoding of protocol frames. Decoding is total: whatever arrives on a socket, the
 * decoder returns a {@link DecodeResult} and never throws, so one bad peer cannot crash a server or a
 * client.
 *
 * @module
 */

/** Options of {@link decodeClientFrame} and {@link decodeServerFrame}. */
export interface DecodeOptions {
  /**
   * Largest frame accepted, in UTF-8 bytes; a larger one fails with `frame_too_large` before it is
   * parsed. A positive safe integer.
   *
   * @default LIMITS.maxFrameBytes (131072)
   */
  maxBytes?: number;
}

/**
 * The outcome of decoding one frame. On failure `error` is a {@link ProgressError} with code
 * `frame_too_large`, `invalid_frame`, `unknown_frame` or `unsupported_protocol`; its message names the
 * offending field, never contains the frame's credentials, and fits in an `error` frame's `message`
 * ({@link LIMITS.maxMessageLength}). `error.taskId` is set when the frame had a valid top-level `taskId`.
 *
 * `requestId` (client frames only) is the frame's `id` when it was a string of 1 to
 * {@link LIMITS.maxRequestIdLength} characters, even if the rest of the frame was invalid: the server
 * echoes it in the `requestId` of its `error` frame so that the client can match the failure to its
 * request.
 */
export type DecodeResult<T> =
  | { ok: true; frame: T }
  | { ok: false; error: ProgressError; requestId?: string };

/** What differs between the two directions. */
interface Direction<F> {
  /** For messages: `client` or `server`. */
  readonly side: string;
  readonly schemas: ReadonlyMap<string, FrameSchema<F>>;
  readonly types: readonly string[];
  /** The frame type that carries `protocol`: a version other than ours is `unsupported_protocol`. */
  readonly versionedType: string;
  readonly exposeRequestId: boolean;
}

const CLIENT: Direction<ClientFrame> = {
  side: 'client',
  schemas: new Map<string, FrameSchema<ClientFrame>>(Object.entries(clientFrameSchemas)),
  types: CLIENT_FRAME_TYPES,
  versionedType: 'auth',
  exposeRequestId: true,
};

const SERVER: Direction<ServerFrame> = {
  side: 'server',
  schemas: new Map<string, FrameSchema<ServerFrame>>(Object.entries(serverFrameSchemas)),
  types: SERVER_FRAME_TYPES,
  versionedType: 'hello',
  exposeRequestId: false,
};

// Fatal: invalid UTF-8 is an invalid frame, not silently replaced. ignoreBOM keeps a BOM in the text so
// bytes and the equivalent string decode alike (JSON.parse refuses both). Reusable: decode() without
// `stream` carries no state from one call to the next.
const utf8Decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * abortEarly: the first issue is enough for the message and the rest of a bad frame is not worth
 * walking. `message` replaces valibot's default messages, which quote the received value (a peer's
 * string of any length, or a credential) for the schemas that have no message of their own.
 */
const PARSE_CONFIG: v.Config<v.BaseIssue<unknown>> = Object.freeze({
  abortEarly: true,
  message: issueMessage,
});

/** Longest piece of peer-controlled text (a type, a key) quoted in an error message. */
const MAX_QUOTED_LENGTH = 64;

/**
 * Decodes a frame a client sent (on the server).
 *
 * @param input A WebSocket message: a string, a `Uint8Array`/`Buffer`/`ArrayBuffer` holding UTF-8, or
 *   an array of `Buffer` fragments (what `ws` hands over for a fragmented message).
 * @returns The validated frame, or a typed error (see {@link DecodeResult}). Never throws for any
 *   `input`.
 * @throws ProgressError `invalid_input` only for invalid `options` (a programming error).
 *
 * @example
 * ```ts
 * socket.on('message', (data) => {
 *   const decoded = decodeClientFrame(data);
 *   if (!decoded.ok) {
 *     const { code, message, taskId } = decoded.error;
 *     const reply: ErrorFrame = { type: 'error', code, message };
 *     if (decoded.requestId !== undefined) reply.requestId = decoded.requestId;
 *     if (taskId !== undefined) reply.taskId = taskId;
 *     socket.send(encodeFrame(reply));
 *     return;
 *   }
 *   handle(decoded.frame);
 * });
 * ```
 */
export function decodeClientFrame(input: unknown, options?: DecodeOptions): DecodeResult<ClientFrame> {
  return decodeFrame(input, resolveMaxBytes(options), CLIENT);
}

/**
 * Decodes a frame a server sent (on the client). Same input forms and guarantees as
 * {@link decodeClientFrame}; a failure never carries a `requestId`.
 *
 * @throws ProgressError `invalid_input` only for invalid `options` (a programming error).
 */
export function decodeServerFrame(input: unknown, options?: DecodeOptions): DecodeResult<ServerFrame> {
  return decodeFrame(input, resolveMaxBytes(options), SERVER);
}

/**
 * Encodes a frame as the JSON text sent on the socket. It does not validate: frames are built by code
 * from validated data, and the receiver validates anyway. For any valid frame `f`,
 * `decode(encodeFrame(f))` returns a frame deep-equal to `f`.
 */
export function encodeFrame(frame: ServerFrame | ClientFrame): string {
  return JSON.stringify(frame);
}

function resolveMaxBytes(options: DecodeOptions | undefined): number {
  const maxBytes = options?.maxBytes;
  if (maxBytes === undefined) return LIMITS.maxFrameBytes;
  if (!Number.isSafeInteger(maxBytes) || maxBytes < 1) {
    throw new ProgressError(
      ErrorCode.InvalidInput,
      `DecodeOptions.maxBytes must be a positive safe integer, got ${String(maxBytes)}`,
    );
  }
  return maxBytes;
}

function decodeFrame<F>(input: unknown, maxBytes: number, direction: Direction<F>): DecodeResult<F> {
  try {
    const text = readText(input, maxBytes);
    if (typeof text !== 'string') return { ok: false, error: text };
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (cause) {
      // The SyntaxError quotes the input; it stays in `cause` for logs, out of the message sent back.
      return failure(ErrorCode.InvalidFrame, 'Frame is not valid JSON', { cause });
    }
    if (typeof value !== 'object' || value === null || Array.isArray(value)) {
      return failure(ErrorCode.InvalidFrame, `A frame must be a JSON object, got ${describeJson(value)}`);
    }
    return validate(value as Record<string, unknown>, direction);
  } catch (cause) {
    // Unreachable for anything JSON.parse can return; kept so that no input can ever make decoding throw.
    return failure(ErrorCode.InvalidFrame, 'Frame could not be decoded', { cause });
  }
}

/** The frame's text, or the error that stops decoding (wrong input kind, too large, not UTF-8). */
function readText(input: unknown, maxBytes: number): string | ProgressError {
  if (typeof input === 'string') {
    // A UTF-16 unit is 1 to 3 UTF-8 bytes: the exact count is only needed between the two bounds.
    if (input.length > maxBytes || (input.length * 3 > maxBytes && utf8Length(input) > maxBytes)) {
      return tooLarge(maxBytes);
    }
    return input;
  }
  let bytes: Uint8Array;
  if (input instanceof Uint8Array) {
    if (input.byteLength > maxBytes) return tooLarge(maxBytes);
    bytes = input;
  } else if (input instanceof ArrayBuffer) {
    if (input.byteLength > maxBytes) return tooLarge(maxBytes);
    bytes = new Uint8Array(input);
  } else if (Array.isArray(input)) {
    const joined = joinFragments(input, maxBytes);
    if (!(joined instanceof Uint8Array)) return joined;
    bytes = joined;
  } else {
    return new ProgressError(
      ErrorCode.InvalidFrame,
      `A frame must be a string or UTF-8 bytes, got ${input === null ? 'null' : typeof input}`,
    );
  }
  try {
    return utf8Decoder.decode(bytes);
  } catch (cause) {
    return new ProgressError(ErrorCode.InvalidFrame, 'Frame is not valid UTF-8', { cause });
  }
}

/** Concatenates `ws` fragments, checking their kinds and total size before copying anything. */
function joinFragments(fragments: readonly unknown[], maxBytes: number): Uint8Array | ProgressError {
  let total = 0;
  for (const fragment of fragments) {
    if (!(fragment instanceof Uint8Array)) {
      return new ProgressError(ErrorCode.InvalidFrame, 'A fragmented frame must be an array of byte buffers');
    }
    total += fragment.byteLength;
    if (total > maxBytes) return tooLarge(maxBytes);
  }
  const joined = new Uint8Array(total);
  let offset = 0;
  for (const fragment of fragments as readonly Uint8Array[]) {
    joined.set(fragment, offset);
    offset += fragment.byteLength;
  }
  return joined;
}

function tooLarge(maxBytes: number): ProgressError {
  return new ProgressError(ErrorCode.FrameTooLarge, `Frame is larger than ${maxBytes} bytes`);
}

function validate<F>(value: Record<string, unknown>, direction: Direction<F>): DecodeResult<F> {
  const requestId = direction.exposeRequestId ? readRequestId(value) : undefined;
  const fail = (code: ErrorCode, detail: string): DecodeResult<F> => {
    const where = requestId === undefined ? '' : ` (request ${quote(requestId)})`;
    const taskId = readTaskId(value);
    const error = new ProgressError(
      code,
      clip(`${detail}${where}`, LIMITS.maxMessageLength),
      taskId === undefined ? {} : { taskId },
    );
    return requestId === undefined ? { ok: false, error } : { ok: false, error, requestId };
  };

  if (!Object.hasOwn(value, 'type')) return fail(ErrorCode.InvalidFrame, 'Invalid frame: type: is required');
  const type = value.type;
  if (typeof type !== 'string') return fail(ErrorCode.InvalidFrame, 'Invalid frame: type: must be a string');
  const schema = direction.schemas.get(type);
  if (schema === undefined) {
    return fail(
      ErrorCode.UnknownFrame,
      `Unknown ${direction.side} frame type ${quote(type)}; expected one of ${direction.types.join(', ')}`,
    );
  }
  if (type === direction.versionedType) {
    const protocol = value.protocol;
    if (Number.isSafeInteger(protocol) && (protocol as number) >= 1 && protocol !== PROTOCOL_VERSION) {
      return fail(
        ErrorCode.UnsupportedProtocol,
        `Protocol version ${String(protocol)} is not supported; this side speaks ${PROTOCOL_VERSION}`,
      );
    }
  }
  const parsed = v.safeParse(schema, value, PARSE_CONFIG);
  if (parsed.success) return { ok: true, frame: parsed.output };
  return fail(ErrorCode.InvalidFrame, `Invalid ${type} frame: ${describeIssue(parsed.issues[0])}`);
}

function readRequestId(value: Record<string, unknown>): string | undefined {
  const id = value.id;
  return typeof id === 'string' && id.length >= 1 && id.length <= LIMITS.maxRequestIdLength ? id : undefined;
}

function readTaskId(value: Record<string, unknown>): string | undefined {
  const taskId = value.taskId;
  return typeof taskId === 'string' && v.is(idSchema, taskId) ? taskId : undefined;
}

function failure(code: ErrorCode, message: string, options: { cause: unknown } | undefined = undefined) {
  return { ok: false as const, error: new ProgressError(code, message, options) };
}

/** `path.to.field: message`, with peer-controlled keys quoted and clipped. */
function describeIssue(issue: v.BaseIssue<unknown> | undefined): string {
  if (issue === undefined) return 'does not match the schema';
  const path = (issue.path ?? []).map((segment, index) => formatKey(segment.key, index)).join('');
  return path === '' ? issue.message : `${path}: ${issue.message}`;
}

/** Keys that need no quoting in a path. A single character class: no backtracking. */
const PLAIN_KEY = /^[A-Za-z_$][A-Za-z0-9_$]*$/;

function formatKey(key: unknown, index: number): string {
  if (typeof key === 'number') return `[${key}]`;
  const text = String(key);
  if (text.length <= MAX_QUOTED_LENGTH && PLAIN_KEY.test(text)) return index === 0 ? text : `.${text}`;
  return `[${quote(text)}]`;
}

/**
 * The message of an issue whose schema has no message of its own. Built from the schema's expectation
 * only, never from the received value.
 */
function issueMessage(issue: v.BaseIssue<unknown>): string {
  if (issue.kind === 'schema') {
    const last = issue.path?.[issue.path.length - 1];
    if (issue.type === 'strict_object' && last?.origin === 'key') {
      return issue.expected === 'never' ? 'is not a known field' : 'is required';
    }
    if (issue.expected === 'Object') return 'must be an object';
    return `must be ${issue.expected ?? 'valid'}`;
  }
  return `is invalid (${issue.type})`;
}

function describeJson(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  return `a ${typeof value}`;
}

/** JSON-quoted, clipped to {@link MAX_QUOTED_LENGTH} characters. */
function quote(text: string): string {
  return JSON.stringify(clip(text, MAX_QUOTED_LENGTH));
}

function clip(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, max - 1)}…`;
}
