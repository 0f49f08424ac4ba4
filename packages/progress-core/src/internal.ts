/**
 * `@finishline/core/internal`: the building blocks Finishline's own packages share — the pure delivery
 * logic (send queue, watch cursor, terminal retry, 100% watchdog, backoff), the frame decoders, the input
 * parsers and the task transitions a store applies. Third-party stores may use the parsers and
 * transitions, but nothing here is covered by semver: it changes with the packages that use it.
 * Applications want `@finishline/core`.
 *
 * @packageDocumentation
 */

// Close codes as constants a bundler inlines
export {
  CLOSE_AUTH_TIMEOUT,
  CLOSE_FORBIDDEN_ORIGIN,
  CLOSE_HEARTBEAT_TIMEOUT,
  CLOSE_NORMAL,
  CLOSE_RATE_LIMITED,
  CLOSE_TOKEN_EXPIRED,
  CLOSE_UNAUTHENTICATED,
  CLOSE_UNSUPPORTED_PROTOCOL,
} from './codes.js';
// Delivery logic (pure, time injected)
export type { BackoffOptions } from './delivery/backoff.js';
export {
  BACKOFF_DEFAULTS,
  backoffDelayMs,
  backoffInOrder,
  backoffOption,
  backoffOptionSpecs,
  resolvedBackoffDelayMs,
} from './delivery/backoff.js';
// The event → view rule
export type { TerminalFields } from './delivery/event-view.js';
export {
  EMPTY_PROGRESS,
  taskViewAtProgress,
  terminalEventOfView,
  terminalFields,
  watchViewAfter,
  watchViewOfTask,
} from './delivery/event-view.js';
export type { FinishWatchdogOptions, WatchdogAction, WatchdogView } from './delivery/finish-watchdog.js';
export { FINISH_WATCHDOG_DEFAULTS, FinishWatchdog } from './delivery/finish-watchdog.js';
export { RoundTripEstimate, RoundTripPool } from './delivery/round-trip-estimate.js';
export type { OutgoingEntry, SendQueueOptions } from './delivery/send-queue.js';
export { SEND_QUEUE_DEFAULTS, SendQueue } from './delivery/send-queue.js';
export type { DueTerminalRetry, TerminalRetryOptions } from './delivery/terminal-retry.js';
export {
  TERMINAL_RETRY_DEFAULTS,
  TERMINAL_RETRY_OPTION,
  TerminalRetryTracker,
  terminalRetryDelayMs,
} from './delivery/terminal-retry.js';
export type { ApplyResult, Delivery, WatchCursorOptions } from './delivery/watch-cursor.js';
export { WATCH_CURSOR_DEFAULTS, WatchCursor } from './delivery/watch-cursor.js';
// Three limits as constants a bundler inlines
export { MAX_FRAME_BYTES, MAX_ID_LENGTH, MAX_MESSAGE_LENGTH, MAX_TOKEN_LENGTH } from './limits.js';
export { allItemsFinished, Priority, priorityOf } from './model.js';
// The options toolkit and the helpers the stores and option resolvers share
export type { OptionSpec, OptionSpecs, Resolved, ResolvedOptionsOf } from './options.js';
export {
  boolean,
  defaultsOf,
  exhaustive,
  finite,
  func,
  integer,
  invalidOption,
  nearestName,
  nested,
  ofType,
  oneOf,
  option,
  optional,
  refine,
  required,
  requireNumber,
  resolveOptions,
  stripUndefined,
} from './options.js';
// Protocol codecs
export { decodeClientFrame } from './protocol/codec.js';
export type { DecodeOptions, DecodeResult, FrameObject } from './protocol/frame-text.js';
// The reading and error helpers of both decoders, for a decoder with its own checks (the client's).
export {
  decodeFrameWith,
  decodeTextWith,
  encodeFrame,
  frameError,
  pathSegment,
  quote,
} from './protocol/frame-text.js';
export { decodeServerFrame, decodeServerText, eventBodyProblem } from './protocol/server-frame-decoder.js';
// The cursor in a Server-Sent Events id (`Last-Event-ID`)
export type { SseCursor } from './protocol/sse-event-id.js';
export { parseSseEventId, SSE_END_MARK, sseEventId } from './protocol/sse-event-id.js';
// What a store applies
export { describeThrown, guardHook } from './store/hook-guard.js';
export type { ParsedListTasksQuery } from './store/inputs.js';
export {
  assertCount,
  assertId,
  parseAppendInput,
  parseCreateTaskInput,
  parseFenceOwner,
  parseLeaseInput,
  parseListTasksQuery,
  parsePurgeOptions,
  parseReadLimit,
  parseReapOptions,
  parseRunFence,
  parseTaskIds,
} from './store/inputs.js';
export { storeClockOption, wholeMillisecondClock } from './store/store-clock.js';
export { compareIds, runGone, storeClosed, taskAlreadyExists, taskNotFound } from './store/store-errors.js';
export {
  assertLeaseOwner,
  assertRun,
  isLeaseExpired,
  leaseExpiredReason,
  newTask,
  planAppend,
  planLease,
} from './store/task-transitions.js';
export { assertTaskId, idProblem, isStorableText, utf8Length } from './value-checks.js';
