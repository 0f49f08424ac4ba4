import type { ErrorCode } from '../codes.js';
import type { TaskEvent, TaskView } from '../model.js';

/**
 * The wire protocol: JSON text frames over a WebSocket. Every frame is an object with a `type`.
 * `docs/protocol.md` documents each frame, field and rule; this file is its source of truth in code.
 *
 * @module
 */

/** The newest protocol version this build speaks. Bumped on any incompatible change. */
export const PROTOCOL_VERSION = 2;

/** Every version this build speaks, oldest first: a server speaks to each socket in the one it selected. */
export const PROTOCOL_VERSIONS = [1, 2] as const;

/** A protocol version this build speaks. */
export type ProtocolVersion = (typeof PROTOCOL_VERSIONS)[number];

/** The WebSocket subprotocol name of a version (`finishline.v2`). */
export function protocolName(version: ProtocolVersion): string {
  return `finishline.v${version}`;
}

/**
 * WebSocket subprotocol name carrying the newest version, offered by clients in `Sec-WebSocket-Protocol`
 * (before {@link PROTOCOL_NAME_V1}, so an older server still selects a version it speaks).
 */
export const PROTOCOL_NAME: string = `finishline.v${PROTOCOL_VERSION}`;

/**
 * The subprotocol of version 1, still spoken to older clients. (These two are written out rather than
 * made by {@link protocolName}: a call would keep that function in a page's bundle; a test checks they
 * agree.)
 */
export const PROTOCOL_NAME_V1: string = 'finishline.v1';

/** True for a version this build speaks. */
export function isProtocolVersion(value: unknown): value is ProtocolVersion {
  return value === 1 || value === 2;
}

// ── server → client ────────────────────────────────────────────────────────────────────────────

/** First frame on every connection (after authentication, if that happens in a frame). */
export interface HelloFrame {
  type: 'hello';
  /** The version the server speaks on this socket: the one of the subprotocol it selected. */
  protocol: ProtocolVersion;
  /**
   * Version 2: the store's epoch. Cursors are only meaningful within one epoch: a client holding a
   * cursor of another epoch starts that watch over from 0. Absent in version 1.
   */
  epoch?: string;
  /** Which replica this socket is connected to, for logs and metrics. */
  serverId: string;
  /** The server sends a heartbeat at least this often; a client that hears nothing for ~2× may reconnect. */
  heartbeatIntervalMs: number;
  /**
   * Optional: the spread, in milliseconds, over which clients should jitter their first retry if they
   * lose this connection. A replica with many sockets asks for a wider spread, so that when it dies its
   * whole crowd does not reconnect to the survivors in the same instant. Clients take the larger of
   * this and their own setting.
   */
  reconnectDelayMs?: number;
}

/**
 * The task's state at `task.seq`. The client moves its cursor to `task.seq` if that is ahead of it
 * (explicitly skipping the events in between: coalesced `progress`, or a backlog too long to replay,
 * whose items the snapshot's counters include), and ignores it otherwise.
 * Sent on subscribe when the watcher knows nothing (`afterSeq` 0) or its backlog is too long to replay,
 * and in place of a run of queued `progress` events when the socket is congested.
 */
export interface SnapshotFrame {
  type: 'snapshot';
  task: TaskView;
  /** Version 2: the store's epoch (as in `hello`). */
  epoch?: string;
  /**
   * Version 2: `true` when the subscriber's cursor does not belong to the task's log (ahead of it: a
   * restored store, a purged id reused). The client discards its cursor and starts over from this
   * snapshot, whatever its seq. Absent otherwise.
   */
  reset?: true;
}

/** One event of a task's log. */
export interface EventFrame {
  type: 'event';
  event: TaskEvent;
}

/**
 * Periodic liveness and catch-up signal: the latest seq of every task this socket follows, so a client
 * that is connected but behind (a lost frame) notices and resyncs.
 */
export interface HeartbeatFrame {
  type: 'heartbeat';
  /** Server time, epoch milliseconds. */
  time: number;
  /** taskId → latest committed seq, for each task the socket follows. */
  seqs: Record<string, number>;
}

/** A request failed, or the socket did something not allowed. The socket stays open unless closed separately. */
export interface ErrorFrame {
  type: 'error';
  code: ErrorCode;
  message: string;
  /** The `id` of the client frame this answers, when it had one. */
  requestId?: string;
  /** The task concerned, when there is one. */
  taskId?: string;
}

/** Answer to `ping`. */
export interface PongFrame {
  type: 'pong';
  /** The `id` of the ping. */
  requestId?: string;
  /** Server time, epoch milliseconds. */
  time: number;
}

/** Every frame a server sends. */
export type ServerFrame = HelloFrame | SnapshotFrame | EventFrame | HeartbeatFrame | ErrorFrame | PongFrame;

// ── client → server ────────────────────────────────────────────────────────────────────────────

/**
 * Authenticate in the first frame instead of at the upgrade (for browsers that cannot set headers and
 * do not share a cookie with the server). Only valid as the first frame.
 */
export interface AuthFrame {
  type: 'auth';
  /** Opaque credential handed to the server's `authenticate` hook. */
  token: string;
  /**
   * The protocol version the client speaks: one of {@link PROTOCOL_VERSIONS}; any other version is
   * refused with `unsupported_protocol`.
   */
  protocol: ProtocolVersion;
}

/**
 * Follow a task from `afterSeq` (0 = from the beginning: the server answers with a snapshot). The server
 * answers with a snapshot or the events after `afterSeq`, then pushes new events live. Subscribing again
 * to a followed task is a resync: it restarts delivery from the new `afterSeq`.
 */
export interface SubscribeFrame {
  type: 'subscribe';
  /** Optional request id, echoed in an `error` answering this frame. */
  id?: string;
  taskId: string;
  afterSeq: number;
}

/** Stop following a task. */
export interface UnsubscribeFrame {
  type: 'unsubscribe';
  id?: string;
  taskId: string;
}

/**
 * The client processed every event of `taskId` up to `seq` (cumulative). Stops terminal retries and
 * marks those events processed in the store.
 */
export interface AckFrame {
  type: 'ack';
  taskId: string;
  seq: number;
}

/** Liveness check; answered by `pong`. */
export interface PingFrame {
  type: 'ping';
  id?: string;
}

/** Every frame a client sends. */
export type ClientFrame = AuthFrame | SubscribeFrame | UnsubscribeFrame | AckFrame | PingFrame;

/** Frame `type` values a server sends. */
export const SERVER_FRAME_TYPES = ['hello', 'snapshot', 'event', 'heartbeat', 'error', 'pong'] as const;
/** Frame `type` values a client sends. */
export const CLIENT_FRAME_TYPES = ['auth', 'subscribe', 'unsubscribe', 'ack', 'ping'] as const;
