/**
 * The size limits shared by the protocol, the stores and the server, and the id pattern.
 *
 * @module
 */

/*
 * Four of the {@link LIMITS} as constants of their own, which a bundler inlines: the browser client uses
 * only these, so its bundle leaves the limits object out (it is built in a pure call for that).
 */
/** `LIMITS.maxIdLength`. @internal */
export const MAX_ID_LENGTH = 128;
/** `LIMITS.maxMessageLength`. @internal */
export const MAX_MESSAGE_LENGTH = 4096;
/** `LIMITS.maxFrameBytes` (128 KiB). @internal */
export const MAX_FRAME_BYTES: number = 131_072;
/** `LIMITS.maxTokenLength`. @internal */
export const MAX_TOKEN_LENGTH = 8192;

/**
 * Size limits shared by the protocol, the stores and the server. They keep one caller's input from
 * exhausting memory or storage that others share. Each value is the default; where a component lets you
 * change one, its options say so.
 */
export const LIMITS = /* @__PURE__ */ Object.freeze({
  /** Longest task id, owner, kind or server id, in characters. */
  maxIdLength: MAX_ID_LENGTH,
  /** Longest item key, `current` or `reason`, in characters. */
  maxKeyLength: 512,
  /** Longest `message` or error message, in characters. */
  maxMessageLength: MAX_MESSAGE_LENGTH,
  /** Largest JSON `result` or item `detail`, in UTF-8 bytes once serialized. */
  maxJsonBytes: 16 * 1024,
  /**
   * Largest frame accepted by the protocol decoder, in UTF-8 bytes. Sized so that the largest event or
   * snapshot the other limits allow still fits once JSON-encoded, even when every character of its texts
   * must be escaped (`\u0001` takes 6 bytes): a frame the store can produce must never be refused by a
   * client, or that client could not see the task finish.
   */
  maxFrameBytes: MAX_FRAME_BYTES,
  /** Longest request `id` in a client frame, in characters. */
  maxRequestIdLength: 64,
  /** Longest credential in an `auth` frame, in characters. */
  maxTokenLength: MAX_TOKEN_LENGTH,
  // Number.MAX_SAFE_INTEGER, written out: a property read here would keep the whole object in a bundle.
  /** Largest item count or `seq`: integers above it lose precision in JSON. */
  maxCount: 9_007_199_254_740_991 as number,
});

/**
 * Allowed characters for task ids, owners and kinds: letters, digits and `_ . : @ / -`. Anything that
 * reaches a URL path, a SQL parameter or a log line is therefore harmless.
 */
export const ID_PATTERN = /^[A-Za-z0-9_.:@/-]+$/;
