/**
 * `@finishline/server`: delivers task progress to watchers over WebSocket and HTTP, with a task API,
 * `runBatch`, leases, Prometheus metrics and graceful shutdown.
 *
 * @packageDocumentation
 */

export type { ClientAddressHook, ForwardedClientAddressOptions } from './address-auth-limits.js';
export { forwardedClientAddress } from './address-auth-limits.js';
export type {
  AllowedOrigins,
  AuthenticateHook,
  AuthenticateTokenHook,
  AuthorizeHook,
  Principal,
  SameOriginOptions,
  TaskAction,
} from './auth.js';
export { ownerOnly, sameOrigin } from './auth.js';
export type { AuthAttemptVia } from './authenticator.js';
export type { ServerHealth, StoreHealth } from './http/health.js';
export type { HttpHandler, HttpHandlerOptions } from './http/http-handler.js';
export { HTTP_HANDLER_DEFAULTS, HTTP_STATUS } from './http/http-handler.js';
export type { LogMethod, ProgressLogger } from './logger.js';
export { silentLogger } from './logger.js';
export type { ResyncReason, SafetyNetStats, ServerMetrics, SseStreamEndReason } from './metrics.js';
export type { HealthDetails, ProgressServerOptions } from './options.js';
export { PROGRESS_SERVER_DEFAULTS } from './options.js';
export type { CloseOptions, ListenOptions } from './progress-server.js';
export { CLOSE_DEFAULTS, LISTEN_DEFAULTS, ProgressServer } from './progress-server.js';
export { addressGroup } from './socket/pending-connections.js';
export type { LeaseKeeper } from './tasks/lease-keeper.js';
export type { BatchResult, BatchWorker, BatchWorkerContext, RunBatchOptions } from './tasks/run-batch.js';
export { RUN_BATCH_DEFAULTS } from './tasks/run-batch.js';
export type { CreateTaskOptions, TaskApi } from './tasks/task-api.js';
export type { CompleteOptions, ItemUpdate, ProgressUpdate, TaskHandle } from './tasks/task-handle.js';
