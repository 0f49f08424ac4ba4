import { ErrorCode } from '../codes.js';
import { LIMITS, MAX_MESSAGE_LENGTH } from '../limits.js';
import { ProgressError } from '../progress-error.js';
import { idProblem, utf8Length } from '../value-checks.js';
import type { ClientFrame, ServerFrame } from './frames.js';

/**
 * Frames as text: encoding, and what both frame decoders share (option checks, reading a WebSocket
 * message as text, parsing it as a JSON object, the error helpers). Nothing here depends on valibot, so the browser client's decoder
 * (`server-frame-decoder.ts`) can use it without the schemas.
 *
 * @internal
 * @module
 */

/** Options of `decodeClientFrame` and `decodeServerFrame`. */
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
 * (`LIMITS.maxMessageLength`). `error.taskId` is set when the frame had a valid top-level `taskId`.
 *
 * `requestId` (client frames only) is the frame's `id` when it was a string of 1 to
 * `LIMITS.maxRequestIdLength` characters, even if the rest of the frame was invalid: the server
 * echoes it in the `requestId` of its `error` frame so that the client can match the failure to its
 * request.
 */
export type DecodeResult<T> =
  | { ok: true; frame: T }
  | { ok: false; error: ProgressError; requestId?: string };

/**
 * Encodes a frame as the JSON text sent on the socket. It does not validate: frames are built by code
 * from validated data, and the receiver validates anyway. For any valid frame `f`,
 * `decode(encodeFrame(f))` returns a frame deep-equal to `f`.
 */
export function encodeFrame(frame: ServerFrame | ClientFrame): string {
  return JSON.stringify(frame);
}

/** A frame's fields, once it is known to be a JSON object. @internal */
export type FrameObject = Record<string, unknown>;

// Fatal: invalid UTF-8 is an invalid frame, not silently replaced. ignoreBOM keeps a BOM in the text so
// bytes and the equivalent string decode alike (JSON.parse refuses both). Reusable: decode() without
// `stream` carries no state from one call to the next.
// Pure: bundles that only read text (the browser client) leave it out.
const utf8Decoder = /* @__PURE__ */ new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** Longest piece of peer-controlled text (a type, a key) quoted in an error message. @internal */
export const MAX_QUOTED_LENGTH = 64;

/**
 * Decodes `input` up to a JSON object and hands that to `validate`. Never throws for any `input`.
 *
 * @throws ProgressError `invalid_input` only for invalid `options` (a programming error).
 * @internal
 */
export function decodeFrameWith<F>(
  input: unknown,
  options: DecodeOptions | undefined,
  validate: (value: FrameObject) => DecodeResult<F>,
): DecodeResult<F> {
  return decodeWith(readText, input, options, validate);
}

/**
 * {@link decodeFrameWith} for text alone: bytes are refused as any other input that is not a string, and
 * the byte reader (UTF-8 decoding, `ws` fragments) stays out of bundles that never get bytes (the browser
 * client: a browser hands a binary frame over as a `Blob`, which no reader takes).
 *
 * @internal
 */
export function decodeTextWith<F>(
  input: unknown,
  options: DecodeOptions | undefined,
  validate: (value: FrameObject) => DecodeResult<F>,
): DecodeResult<F> {
  return decodeWith(readString, input, options, validate);
}

function decodeWith<F>(
  read: (input: unknown, maxBytes: number) => string | ProgressError,
  input: unknown,
  options: DecodeOptions | undefined,
  validate: (value: FrameObject) => DecodeResult<F>,
): DecodeResult<F> {
  const maxBytes = resolveMaxBytes(options);
  try {
    const text = read(input, maxBytes);
    if (typeof text !== 'string') return { ok: false, error: text };
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (cause) {
      // The SyntaxError quotes the input; it stays in `cause` for logs, out of the message sent back.
      return failure(ErrorCode.InvalidFrame, 'Frame is not valid JSON', cause);
    }
    if (typeof value !== 'object' || value === null || Array.isArray(value)) {
      return failure(
        ErrorCode.InvalidFrame,
        `A frame must be a JSON object, got ${describeJson(value)}`,
        undefined,
      );
    }
    return validate(value as FrameObject);
  } catch (cause) {
    // Unreachable for anything JSON.parse can return; kept so that no input can ever make decoding throw.
    return failure(ErrorCode.InvalidFrame, 'Frame could not be decoded', cause);
  }
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

/** A string frame, or the error that stops decoding (not a string, too large). */
function readString(input: unknown, maxBytes: number): string | ProgressError {
  if (typeof input !== 'string') {
    return new ProgressError(
      ErrorCode.InvalidFrame,
      `A frame must be a string or UTF-8 bytes, got ${input === null ? 'null' : typeof input}`,
    );
  }
  // A UTF-16 unit is 1 to 3 UTF-8 bytes: the exact count is only needed between the two bounds.
  if (input.length > maxBytes || (input.length * 3 > maxBytes && utf8Length(input) > maxBytes)) {
    return tooLarge(maxBytes);
  }
  return input;
}

/** The frame's text, or the error that stops decoding (wrong input kind, too large, not UTF-8). */
function readText(input: unknown, maxBytes: number): string | ProgressError {
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
    return readString(input, maxBytes);
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

function failure(code: ErrorCode, message: string, cause: unknown) {
  return { ok: false as const, error: new ProgressError(code, message, { cause }) };
}

function describeJson(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  return `a ${typeof value}`;
}

/**
 * The error of a frame that was a JSON object but not a valid frame: the message is clipped to fit an
 * `error` frame, and `taskId` is the frame's top-level `taskId` when that is a valid id.
 *
 * @internal
 */
export function frameError(code: ErrorCode, message: string, value: FrameObject): ProgressError {
  const taskId = value.taskId;
  return new ProgressError(
    code,
    clip(message, MAX_MESSAGE_LENGTH),
    idProblem(taskId) === undefined ? { taskId: taskId as string } : {},
  );
}

/** Keys that need no quoting in a path. A single character class: no backtracking. */
const PLAIN_KEY = /^[A-Za-z_$][A-Za-z0-9_$]*$/;

/**
 * One segment of a field path in an error message: `.name` for a plain key, `["…"]` (quoted, clipped)
 * for any other; the caller drops the leading dot of the first segment.
 *
 * @internal
 */
export function pathSegment(key: string): string {
  return key.length <= MAX_QUOTED_LENGTH && PLAIN_KEY.test(key) ? `.${key}` : `[${quote(key)}]`;
}

/** JSON-quoted, clipped to {@link MAX_QUOTED_LENGTH} characters. @internal */
export function quote(text: string): string {
  return JSON.stringify(clip(text, MAX_QUOTED_LENGTH));
}

function clip(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, max - 1)}…`;
}
