import * as v from 'valibot';
import { ErrorCode } from '../codes.js';
import { LIMITS } from '../limits.js';
import { clientFrameSchemas, type FrameSchema, serverFrameSchemas } from './frame-schemas.js';
import {
  type DecodeOptions,
  type DecodeResult,
  decodeFrameWith,
  type FrameObject,
  frameError,
  pathSegment,
  quote,
} from './frame-text.js';
import type { ClientFrame, ServerFrame } from './frames.js';
import { CLIENT_FRAME_TYPES, isProtocolVersion, PROTOCOL_VERSIONS, SERVER_FRAME_TYPES } from './frames.js';

export type { DecodeOptions, DecodeResult } from './frame-text.js';
// Kept here too for existing imports; it lives in frame-text.ts so that the client can skip this module.
export { encodeFrame } from './frame-text.js';

/**
 * Encoding and decoding of protocol frames. Decoding is total: whatever arrives on a socket, the
 * decoder returns a {@link DecodeResult} and never throws, so one bad peer cannot crash a server or a
 * client.
 *
 * @module
 */

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
  schemas: /* @__PURE__ */ new Map<string, FrameSchema<ClientFrame>>(
    /* @__PURE__ */ Object.entries(clientFrameSchemas),
  ),
  types: CLIENT_FRAME_TYPES,
  versionedType: 'auth',
  exposeRequestId: true,
};

const SERVER: Direction<ServerFrame> = {
  side: 'server',
  schemas: /* @__PURE__ */ new Map<string, FrameSchema<ServerFrame>>(
    /* @__PURE__ */ Object.entries(serverFrameSchemas),
  ),
  types: SERVER_FRAME_TYPES,
  versionedType: 'hello',
  exposeRequestId: false,
};

/**
 * abortEarly: the first issue is enough for the message and the rest of a bad frame is not worth
 * walking. `message` replaces valibot's default messages, which quote the received value (a peer's
 * string of any length, or a credential) for the schemas that have no message of their own.
 */
const PARSE_CONFIG: v.Config<v.BaseIssue<unknown>> = /* @__PURE__ */ Object.freeze({
  abortEarly: true,
  message: issueMessage,
});

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
  return decodeFrameWith(input, options, (value) => validate(value, CLIENT));
}

/**
 * Decodes a server frame with the valibot schemas of `frame-schemas.ts`. The public `decodeServerFrame`
 * is a hand-written decoder (`server-frame-decoder.ts`) that keeps valibot out of the browser bundle;
 * this one is the reference it is tested against (same acceptance, same codes, same messages).
 *
 * @internal
 */
export function decodeServerFrameWithSchemas(
  input: unknown,
  options?: DecodeOptions,
): DecodeResult<ServerFrame> {
  return decodeFrameWith(input, options, (value) => validate(value, SERVER));
}

function validate<F>(value: FrameObject, direction: Direction<F>): DecodeResult<F> {
  const requestId = direction.exposeRequestId ? readRequestId(value) : undefined;
  const fail = (code: ErrorCode, detail: string): DecodeResult<F> => {
    const where = requestId === undefined ? '' : ` (request ${quote(requestId)})`;
    const error = frameError(code, `${detail}${where}`, value);
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
    if (Number.isSafeInteger(protocol) && (protocol as number) >= 1 && !isProtocolVersion(protocol)) {
      return fail(
        ErrorCode.UnsupportedProtocol,
        `Protocol version ${String(protocol)} is not supported; this side speaks ${PROTOCOL_VERSIONS.join(' and ')}`,
      );
    }
  }
  const parsed = v.safeParse(schema, value, PARSE_CONFIG);
  if (parsed.success) return { ok: true, frame: parsed.output };
  return fail(ErrorCode.InvalidFrame, `Invalid ${type} frame: ${describeIssue(parsed.issues[0])}`);
}

function readRequestId(value: FrameObject): string | undefined {
  const id = value.id;
  return typeof id === 'string' && id.length >= 1 && id.length <= LIMITS.maxRequestIdLength ? id : undefined;
}

/** `path.to.field: message`, with peer-controlled keys quoted and clipped. */
function describeIssue(issue: v.BaseIssue<unknown> | undefined): string {
  if (issue === undefined) return 'does not match the schema';
  const path = (issue.path ?? []).map((segment) => formatKey(segment.key)).join('');
  return path === '' ? issue.message : `${path.startsWith('.') ? path.slice(1) : path}: ${issue.message}`;
}

function formatKey(key: unknown): string {
  return typeof key === 'number' ? `[${key}]` : pathSegment(String(key));
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
