/**
 * `@finishline/core`: the task/event model, error and close codes, the wire protocol's frame types, and
 * the `ProgressStore` seam with an in-memory implementation. No drivers, no timers, no I/O.
 *
 * This entry is the API applications and store authors use, under semver. The building blocks the
 * server, client and adapters share (delivery logic, frame decoders, input parsers, task transitions)
 * are in `@finishline/core/internal`, which may change in any release.
 *
 * @packageDocumentation
 */

export type { Clock } from './clock.js';
export { systemClock } from './clock.js';
export { CloseCode, ERROR_CODES, ErrorCode, FATAL_CLOSE_CODES } from './codes.js';
export type { WatchView } from './delivery/event-view.js';
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
  EVENT_TYPES,
  isTerminalEvent,
  isTerminalType,
  progressOf,
  TASK_STATUSES,
  TERMINAL_TYPES,
  toTaskView,
} from './model.js';
export type { ProgressErrorOptions } from './progress-error.js';
export { isProgressError, ProgressError } from './progress-error.js';
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
export { SSE_ID_SEPARATOR } from './protocol/sse-event-id.js';
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
  ProgressInput,
} from './store/inputs.js';
export type { MemoryProgressStoreOptions } from './store/memory-store.js';
export { MEMORY_PROGRESS_STORE_DEFAULTS, MemoryProgressStore } from './store/memory-store.js';
export type {
  ListTasksQuery,
  ProgressStore,
  PurgeOptions,
  ReapOptions,
  RunFence,
} from './store/progress-store.js';
export { STORE_DEFAULTS } from './store/progress-store.js';
export type { AppendResult } from './store/task-transitions.js';
