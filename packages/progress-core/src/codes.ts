/**
 * Every error code and WebSocket close code Finishline uses. This file is the only place they are
 * defined: server, client and adapters import them from here, and `docs/errors.md` documents each one.
 *
 * @module
 */

/**
 * Stable, machine-readable error codes. They appear as `ProgressError.code`, in `error` frames on the
 * wire and in HTTP error bodies. A code never changes meaning once published.
 */
export const ErrorCode = {
  /** A frame is not valid JSON or does not match the schema of any frame. */
  InvalidFrame: 'invalid_frame',
  /** A frame is larger than the receiver's limit. */
  FrameTooLarge: 'frame_too_large',
  /** A frame is well-formed JSON with a `type` this protocol version does not know. */
  UnknownFrame: 'unknown_frame',
  /** The peer speaks a protocol version this side does not support. */
  UnsupportedProtocol: 'unsupported_protocol',
  /** No principal could be established (missing or invalid credentials). */
  Unauthenticated: 'unauthenticated',
  /**
   * The socket's credential expired (protocol version 2). Not fatal: get a fresh credential (the
   * client calls its token function) and reconnect, or renew it in time with an `auth` frame.
   */
  TokenExpired: 'token_expired',
  /** The principal may not see or change this task (or the request's Origin is not allowed). */
  Forbidden: 'forbidden',
  /** The peer sent more frames or requests than its rate limit allows. */
  RateLimited: 'rate_limited',
  /** A socket, or a principal across its sockets, tried to follow more tasks than its cap. */
  TooManySubscriptions: 'too_many_subscriptions',
  /** A principal opened more sockets than the server's per-principal cap. */
  TooManySockets: 'too_many_sockets',
  /** An argument or field is malformed or out of range (bad id, negative count, oversized payload). */
  InvalidInput: 'invalid_input',
  /** No task has this id (it never existed or was removed by retention). */
  TaskNotFound: 'task_not_found',
  /** The task already ended with a terminal event; nothing can be appended after it. */
  TaskFinished: 'task_finished',
  /** Another owner holds an unexpired lease on the task. */
  LeaseHeld: 'lease_held',
  /** The store could not be reached or failed; the request may be retried. */
  StoreUnavailable: 'store_unavailable',
  /** The store, server or client was closed. */
  Closed: 'closed',
  /**
   * A client could not open a connection (refused upgrade, TLS failure, DNS failure, refused TCP
   * connection, no `hello` in time) for several attempts in a row; it keeps retrying.
   */
  Unreachable: 'unreachable',
  /** A wait with a deadline (`watch.done({ timeoutMs })`) ran out. */
  Timeout: 'timeout',
  /** An unexpected failure; the message says more and `cause` holds the original error. */
  Internal: 'internal',
} as const;

/** One of the {@link ErrorCode} values. */
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** All error codes, for validation and documentation. */
export const ERROR_CODES: readonly ErrorCode[] = Object.freeze(Object.values(ErrorCode));

/*
 * The close codes the client uses, as constants of their own that a bundler inlines: `CloseCode` and
 * `FATAL_CLOSE_CODES` are made of them, and a page's client, which reads only these, leaves both out of
 * its bundle (a property read of `CloseCode` would keep the object and the set). Documented at `CloseCode`.
 */
/** `CloseCode.Normal`. @internal */
export const CLOSE_NORMAL = 1000;
/** `CloseCode.Unauthenticated`. @internal */
export const CLOSE_UNAUTHENTICATED = 4001;
/** `CloseCode.UnsupportedProtocol`. @internal */
export const CLOSE_UNSUPPORTED_PROTOCOL = 4002;
/** `CloseCode.ForbiddenOrigin`. @internal */
export const CLOSE_FORBIDDEN_ORIGIN = 4003;
/** `CloseCode.AuthTimeout`. @internal */
export const CLOSE_AUTH_TIMEOUT = 4004;
/** `CloseCode.RateLimited`. @internal */
export const CLOSE_RATE_LIMITED = 4008;
/** `CloseCode.HeartbeatTimeout`. @internal */
export const CLOSE_HEARTBEAT_TIMEOUT = 4010;
/** `CloseCode.TokenExpired`. @internal */
export const CLOSE_TOKEN_EXPIRED = 4011;

/**
 * WebSocket close codes. 1000–1011 are the RFC 6455 codes Finishline uses with their standard
 * meaning; 4000–4999 is the range RFC 6455 leaves to applications.
 */
export const CloseCode = {
  /** Normal closure: the client or server closed on purpose. */
  Normal: CLOSE_NORMAL,
  /** The server is shutting down; reconnect (to another replica) and resume. */
  GoingAway: 1001,
  /** The peer broke the protocol in a way that makes continuing pointless. */
  ProtocolError: 1002,
  /** The peer violated a policy (for example repeated invalid frames). */
  PolicyViolation: 1008,
  /** A frame exceeded the server's `maxPayload`. */
  MessageTooBig: 1009,
  /** The server hit an unexpected condition. */
  InternalError: 1011,
  /** No valid credentials at the upgrade or in the first frame; do not reconnect without new ones. */
  Unauthenticated: CLOSE_UNAUTHENTICATED,
  /** The client's protocol version is not supported by this server. */
  UnsupportedProtocol: CLOSE_UNSUPPORTED_PROTOCOL,
  /** The request's Origin is not on the server's allow-list. */
  ForbiddenOrigin: CLOSE_FORBIDDEN_ORIGIN,
  /** The client did not authenticate within the server's deadline. */
  AuthTimeout: CLOSE_AUTH_TIMEOUT,
  /** The client kept exceeding its rate limit. */
  RateLimited: CLOSE_RATE_LIMITED,
  /** The principal already has as many sockets open as the server allows. */
  TooManySockets: 4009,
  /** The client saw no frame for longer than its heartbeat deadline and gave up on the socket. */
  HeartbeatTimeout: CLOSE_HEARTBEAT_TIMEOUT,
  /** The socket's credential expired; reconnect once with a fresh one (not fatal). */
  TokenExpired: CLOSE_TOKEN_EXPIRED,
} as const;

/** One of the {@link CloseCode} values. */
export type CloseCode = (typeof CloseCode)[keyof typeof CloseCode];

/**
 * Close codes after which reconnecting with the same credentials cannot succeed; a client stops
 * retrying and reports the failure instead.
 */
export const FATAL_CLOSE_CODES: ReadonlySet<number> = new Set<number>([
  CLOSE_UNAUTHENTICATED,
  CLOSE_UNSUPPORTED_PROTOCOL,
  CLOSE_FORBIDDEN_ORIGIN,
]);
