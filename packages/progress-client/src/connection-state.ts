import type { HelloFrame, ProgressError, ServerFrame } from '@finishline/core';

/**
 * What the client's connection tells: its state, the `state` event's payload, and the handler through
 * which it reports to its owner (`connection.ts` implements the lifecycle).
 *
 * @module
 */

/**
 * The client's connection state:
 * - `idle`: no socket and none needed (no unfinished watch);
 * - `connecting`: the first socket is opening;
 * - `open`: the server said `hello`; watches are subscribed;
 * - `reconnecting`: the socket was lost; waiting for the backoff delay or opening a new one;
 * - `closed`: `close()` was called, or the server refused the client for good (a fatal close code).
 */
export type ConnectionState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';

/** The payload of the client's `state` event. */
export interface StateChange {
  state: ConnectionState;
  /** Why, for logs: `watch`, `hello`, `closed by server (1001)`, `heartbeat timeout`, … */
  reason: string;
  /** The close code of the socket that was lost, if any. */
  closeCode?: number;
  /** For `reconnecting` after a loss: the backoff delay before the next attempt. */
  delayMs?: number;
  /** For a fatal `closed`: the error every watch ended with. */
  error?: ProgressError;
}

/** What the connection reports to its owner. @internal */
export interface ConnectionHandler {
  /** A socket is ready (after `hello`): subscribe. */
  onHello(hello: HelloFrame): void;
  /** Any frame but `hello`. */
  onFrame(frame: ServerFrame): void;
  /** The ready socket was lost; a reconnect follows if {@link wantsSocket}. */
  onDown(): void;
  /** The server closed with a fatal code: nothing will work with these credentials. */
  onFatal(error: ProgressError): void;
  /** Connection attempts keep failing: serve the watches over HTTP meanwhile. */
  onUnreachable(): void;
  onState(change: StateChange): void;
  /** A recoverable problem (an invalid frame, a token provider that threw), for the `error` event. */
  onError(error: ProgressError): void;
  /** True while some watch needs a socket. */
  wantsSocket(): boolean;
}
