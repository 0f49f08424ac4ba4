/**
 * `@finishline/client`: watch a Finishline task's progress in the browser or in Node, resume across
 * reconnects and page reloads, and always see its final state.
 *
 * @packageDocumentation
 */

export type { ConnectionState, StateChange } from './connection-state.js';
export type { CursorPersistence, CursorStorage, ServerCursors, StoredTask } from './cursor-storage.js';
export type { FallbackTransport } from './fallback-streams.js';
export type { HttpFallback } from './http-fallback.js';
export type {
  FetchLike,
  HttpCredentials,
  ProgressClientOptions,
  ReconnectOptions,
  TokenSource,
  WebSocketConstructorLike,
  WebSocketLike,
} from './options.js';
export { PROGRESS_CLIENT_DEFAULTS } from './options.js';
export type { PageEventSources, PageEventTarget, WakeReason } from './page-life.js';
export type { ProgressClientEvents } from './progress-client.js';
export { ProgressClient } from './progress-client.js';
export type { TabSharing } from './tab-sharing.js';
export type { TimerApi } from './timers.js';
export type { DoneOptions, WatchDone, WatchEvents, WatchOptions, WatchState } from './watch.js';
export { Watch } from './watch.js';
