import { unexplainedFailure } from './connect-errors.js';
import { decodeServerText } from './frame-check.js';
import type * as Node from './socket-platform.js';

/**
 * socket-platform.ts for browser builds (the package's `browser` export condition): the same exports,
 * typed from it, without what only Node reaches. A browser's WebSocket `error` event carries no message,
 * no HTTP status and no error code, there is no Node built-in WebSocket to refuse headers to, and a
 * message is a string (a binary frame is a `Blob`, which the Node module refuses too); so for everything
 * a browser can produce these answer as the Node module does (a test checks it), in fewer bytes.
 *
 * @module
 */

/** As in socket-platform.ts, without the `ws` messages and Node error codes a browser never has. @internal */
export const describeSocketError: typeof Node.describeSocketError = (event) => {
  const error = event?.error instanceof Error ? event.error : undefined;
  return unexplainedFailure(String(event?.message ?? error?.message ?? ''), error);
};

/** A browser has no WebSocket that drops headers (it sends none: cookies authenticate). @internal */
export const headersProblem: typeof Node.headersProblem = () => undefined;

/** Text only: a browser hands a binary frame over as a `Blob`, which no decoder reads. @internal */
export const decodeSocketData: typeof Node.decodeSocketData = decodeServerText;

/** A page cannot batch a WebSocket's writes: each send is its own. @internal */
export const batchSends: typeof Node.batchSends = (_socket, run) => run();

/** A page's WebSocket bounds its own close handshake, and a tab has no process to keep alive. @internal */
export const bindClose: typeof Node.bindClose = () => undefined;
