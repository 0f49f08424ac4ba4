/**
 * `@finishline/core`: the task/event model, error and close codes, the wire protocol, the
 * `ProgressStore` seam with an in-memory implementation, and the pure delivery logic that the server and
 * the client share. No drivers, no timers, no I/O.
 *
 * @packageDocumentation
 */

export type { Clock } from './clock.js';
export { systemClock } from './clock.js';
export { CloseCode, ERROR_CODES, ErrorCode, FATAL_CLOSE_CODES } from './codes.js';
// Delivery logic (pure, time injected)
export type { BackoffOptions } from './delivery/backoff.js';
export { BACKOFF_DEFAULTS, backoffDelayMs } from './delivery/backoff.js';
export type { FinishWatchdogOptions, WatchdogAction, WatchdogView } from './delivery/finish-watchdog.js';
export { FINISH_WATCHDOG_DEFAULTS, FinishWatchdog } from './delivery/finish-watchdog.js';
export type { OutgoingEntry, SendQueueOptions } from './delivery/send-queue.js';
export { SEND_QUEUE_DEFAULTS, SendQueue } from './delivery/send-queue.js';
export type { DueTerminalRetry, TerminalRetryOptions } from './delivery/terminal-retry.js';
export {
  TERMINAL_RETRY_DEFAULTS,
  TerminalRetryTracker,
  terminalRetryDelayMs,
} from './delivery/terminal-retry.js';
export type { ApplyResult, Delivery, WatchCursorOptions, WatchView } from './delivery/watch-cursor.js';
export { WATCH_CURSOR_DEFAULTS, WatchCursor, watchViewOfTask } from './delivery/watch-cursor.js';
export { ID_PATTERN, LIMITS } from './limits.js';
export type {
  CancelledEvent,
  CompletedEvent,
  EventType,
  FailedEvent,
  InterruptedEvent,
  ItemEvent,
  ItemResult,
  JsonValue,
  ProgressEvent,
  ProgressState,
  Task,
  TaskEvent,
  TaskFailure,
  TaskMeta,
  TaskStatus,
  TaskView,
  TerminalEvent,
  TerminalType,
} from './model.js';
export {
  allItemsFinished,
  EVENT_TYPES,
  isTerminalEvent,
  isTerminalType,
  Priority,
  priorityOf,
  progressOf,
  TASK_STATUSES,
  TERMINAL_TYPES,
  toTaskView,
} from './model.js';
export { exhaustive, invalidOption, stripUndefined } from './option-helpers.js';
export type { ProgressErrorOptions } from './progress-error.js';
export { isProgressError, ProgressError } from './progress-error.js';
export { decodeClientFrame } from './protocol/codec.js';
export type { DecodeOptions, DecodeResult } from './protocol/frame-text.js';
export { encodeFrame } from './protocol/frame-text.js';
// Protocol
export type {
  AckFrame,
  AuthFrame,
  ClientFrame,
  ErrorFrame,
  EventFrame,
  HeartbeatFrame,
  HelloFrame,
  PingFrame,
  PongFrame,
  ProtocolVersion,
  ServerFrame,
  SnapshotFrame,
  SubscribeFrame,
  UnsubscribeFrame,
} from './protocol/frames.js';
export {
  CLIENT_FRAME_TYPES,
  isProtocolVersion,
  PROTOCOL_NAME,
  PROTOCOL_NAME_V1,
  PROTOCOL_VERSION,
  PROTOCOL_VERSIONS,
  protocolName,
  SERVER_FRAME_TYPES,
} from './protocol/frames.js';
export { decodeServerFrame } from './protocol/server-frame-decoder.js';
// Store seam
export type { ChangeFeed, ChangeListener, TaskChange, Unsubscribe } from './store/change-feed.js';
export { LocalChangeFeed } from './store/change-feed.js';
export type {
  AppendInput,
  CancelInput,
  CompleteInput,
  CreateTaskInput,
  FailInput,
  InterruptInput,
  ItemInput,
  LeaseInput,
  ParsedListTasksQuery,
  ProgressInput,
} from './store/inputs.js';
export {
  assertCount,
  assertId,
  parseAppendInput,
  parseCreateTaskInput,
  parseLeaseInput,
  parseListTasksQuery,
  parsePurgeOptions,
  parseReadLimit,
  parseReapOptions,
  parseTaskIds,
} from './store/inputs.js';
export type { MemoryProgressStoreOptions } from './store/memory-store.js';
export { MEMORY_PROGRESS_STORE_DEFAULTS, MemoryProgressStore } from './store/memory-store.js';
export type { ListTasksQuery, ProgressStore, PurgeOptions, ReapOptions } from './store/progress-store.js';
export { STORE_DEFAULTS } from './store/progress-store.js';
export { compareIds, storeClosed, taskAlreadyExists, taskNotFound } from './store/store-errors.js';
export type { AppendResult } from './store/task-transitions.js';
export {
  isLeaseExpired,
  leaseExpiredReason,
  newTask,
  planAppend,
  planLease,
} from './store/task-transitions.js';
export { assertTaskId } from './value-checks.js';
