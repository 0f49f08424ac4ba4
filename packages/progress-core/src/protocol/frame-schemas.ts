import * as v from 'valibot';
import { ERROR_CODES } from '../codes.js';
import { LIMITS } from '../limits.js';
import { TASK_STATUSES } from '../model.js';
import {
  countSchema,
  idSchema,
  jsonSchema,
  messageSchema,
  seqSchema,
  shortTextSchema,
  timeSchema,
} from '../primitives.js';
import type {
  AckFrame,
  AuthFrame,
  ClientFrame,
  ErrorFrame,
  EventFrame,
  HeartbeatFrame,
  HelloFrame,
  PingFrame,
  PongFrame,
  ServerFrame,
  SnapshotFrame,
  SubscribeFrame,
  UnsubscribeFrame,
} from './frames.js';
import { PROTOCOL_VERSIONS } from './frames.js';

/**
 * Valibot schemas for every frame of the wire protocol, in both directions. The codec
 * (`codec.ts`) picks one by the frame's `type`; `docs/protocol.md` documents the same rules in prose.
 *
 * Every object is strict: an unknown key is an error, in both directions.
 * - Client frames: the server must not accept junk, and a strict schema leaves nothing unvalidated
 *   reaching the server's logic.
 * - Server frames: strictness is chosen over forward compatibility (silently dropping fields a newer
 *   server added). Client and server ship from one repository and negotiate the version at the upgrade
 *   (`Sec-WebSocket-Protocol: finishline.v1`), so a new field is added with a protocol version bump, never
 *   silently: a client that accepted unknown fields could ignore one that changes the meaning of a frame.
 *
 * Fields are validated with the same primitives the stores use, so every event and snapshot a store can
 * produce is a valid frame. Cross-field invariants (such as `done >= succeeded + failed`) are the store's
 * business and are not re-checked here.
 *
 * @module
 */

/** A request `id` in a client frame: 1 to `LIMITS.maxRequestIdLength` characters, any characters. */
export const requestIdSchema = v.pipe(
  v.string(),
  v.minLength(1, 'must not be empty'),
  v.maxLength(LIMITS.maxRequestIdLength, `must be at most ${LIMITS.maxRequestIdLength} characters`),
);

/** The credential of an `auth` frame: 1 to {@link LIMITS.maxTokenLength} characters. */
export const tokenSchema = v.pipe(
  v.string(),
  v.minLength(1, 'must not be empty'),
  v.maxLength(LIMITS.maxTokenLength, `must be at most ${LIMITS.maxTokenLength} characters`),
);

/** A positive interval in milliseconds. */
const intervalMsSchema = v.pipe(countSchema, v.minValue(1, 'must be at least 1'));

/** A task status; the message lists the allowed values rather than echoing the input. */
const statusSchema = v.picklist(TASK_STATUSES, `must be one of ${TASK_STATUSES.join(', ')}`);

const errorCodeSchema = v.picklist(ERROR_CODES, 'must be one of the error codes of codes.ts');

const progressEntries = {
  total: v.nullable(countSchema),
  done: countSchema,
  succeeded: countSchema,
  failed: countSchema,
  current: v.nullable(shortTextSchema),
  message: v.nullable(messageSchema),
};

/** `ProgressState`: the progress of a task after an event. */
export const progressStateSchema = v.strictObject(progressEntries);

/** `TaskFailure`: why a task did not complete. */
export const taskFailureSchema = v.strictObject({ code: shortTextSchema, message: messageSchema });

/** `ItemResult`: one item's result. */
export const itemResultSchema = v.strictObject({
  key: v.pipe(shortTextSchema, v.minLength(1, 'must not be empty')),
  ok: v.boolean(),
  error: v.nullable(messageSchema),
  detail: v.nullable(jsonSchema),
});

const eventBaseEntries = {
  taskId: idSchema,
  seq: seqSchema,
  time: timeSchema,
  progress: progressStateSchema,
};

/** `TaskEvent`: any event of a task's log, discriminated by `type`. */
export const taskEventSchema = v.variant(
  'type',
  [
    v.strictObject({ type: v.literal('progress'), ...eventBaseEntries }),
    v.strictObject({ type: v.literal('item'), ...eventBaseEntries, item: itemResultSchema }),
    v.strictObject({ type: v.literal('completed'), ...eventBaseEntries, result: v.nullable(jsonSchema) }),
    v.strictObject({ type: v.literal('failed'), ...eventBaseEntries, error: taskFailureSchema }),
    v.strictObject({
      type: v.literal('cancelled'),
      ...eventBaseEntries,
      reason: v.nullable(shortTextSchema),
    }),
    v.strictObject({ type: v.literal('interrupted'), ...eventBaseEntries, reason: shortTextSchema }),
  ],
  'must be an event object whose type is progress, item, completed, failed, cancelled or interrupted',
);

/** `TaskView`: a task's snapshot. */
export const taskViewSchema = v.strictObject({
  id: idSchema,
  kind: idSchema,
  status: statusSchema,
  ...progressEntries,
  result: v.nullable(jsonSchema),
  error: v.nullable(taskFailureSchema),
  seq: countSchema,
  createdAt: timeSchema,
  updatedAt: timeSchema,
  finishedAt: v.nullable(timeSchema),
});

/**
 * A plain object none of whose keys is `__proto__`, `constructor` or `prototype`: valibot's `record`
 * would drop those silently, so they are refused before it runs (no valid task id is one of them).
 */
const plainRecordSchema = v.custom<Record<string, unknown>>(
  (input) =>
    typeof input === 'object' &&
    input !== null &&
    !Array.isArray(input) &&
    !Object.hasOwn(input, '__proto__') &&
    !Object.hasOwn(input, 'constructor') &&
    !Object.hasOwn(input, 'prototype'),
  'must be an object mapping task ids to seqs',
);

const versionSchema = v.picklist(PROTOCOL_VERSIONS, `must be one of ${PROTOCOL_VERSIONS.join(', ')}`);

// ── server → client ────────────────────────────────────────────────────────────────────────────

/** {@link HelloFrame}. */
export const helloFrameSchema = v.strictObject({
  type: v.literal('hello'),
  protocol: versionSchema,
  serverId: idSchema,
  heartbeatIntervalMs: intervalMsSchema,
  epoch: v.exactOptional(idSchema),
  reconnectDelayMs: v.exactOptional(countSchema),
});

/** {@link SnapshotFrame}. */
export const snapshotFrameSchema = v.strictObject({
  type: v.literal('snapshot'),
  task: taskViewSchema,
  epoch: v.exactOptional(idSchema),
  reset: v.exactOptional(v.literal(true, 'must be true')),
});

/** {@link EventFrame}. */
export const eventFrameSchema = v.strictObject({ type: v.literal('event'), event: taskEventSchema });

/** {@link HeartbeatFrame}. */
export const heartbeatFrameSchema = v.strictObject({
  type: v.literal('heartbeat'),
  time: timeSchema,
  seqs: v.pipe(plainRecordSchema, v.record(idSchema, countSchema)),
});

/** {@link ErrorFrame}. */
export const errorFrameSchema = v.strictObject({
  type: v.literal('error'),
  code: errorCodeSchema,
  message: messageSchema,
  requestId: v.exactOptional(requestIdSchema),
  taskId: v.exactOptional(idSchema),
});

/** {@link PongFrame}. */
export const pongFrameSchema = v.strictObject({
  type: v.literal('pong'),
  requestId: v.exactOptional(requestIdSchema),
  time: timeSchema,
});

// ── client → server ────────────────────────────────────────────────────────────────────────────

/** {@link AuthFrame}. */
export const authFrameSchema = v.strictObject({
  type: v.literal('auth'),
  token: tokenSchema,
  protocol: versionSchema,
});

/** {@link SubscribeFrame}. */
export const subscribeFrameSchema = v.strictObject({
  type: v.literal('subscribe'),
  id: v.exactOptional(requestIdSchema),
  taskId: idSchema,
  afterSeq: countSchema,
});

/** {@link UnsubscribeFrame}. */
export const unsubscribeFrameSchema = v.strictObject({
  type: v.literal('unsubscribe'),
  id: v.exactOptional(requestIdSchema),
  taskId: idSchema,
});

/** {@link AckFrame}. `seq` is at least 1: it names an event that exists. */
export const ackFrameSchema = v.strictObject({ type: v.literal('ack'), taskId: idSchema, seq: seqSchema });

/** {@link PingFrame}. */
export const pingFrameSchema = v.strictObject({
  type: v.literal('ping'),
  id: v.exactOptional(requestIdSchema),
});

// ── lookup tables ──────────────────────────────────────────────────────────────────────────────

/** A schema whose output is exactly the frame `F`. */
export type FrameSchema<F> = v.GenericSchema<unknown, F>;

/**
 * The schema of each server frame, by `type`. The mapped type makes the compiler check that every
 * frame type has a schema and that each schema's output is that frame.
 */
export const serverFrameSchemas: {
  readonly [K in ServerFrame['type']]: FrameSchema<Extract<ServerFrame, { type: K }>>;
} = /* @__PURE__ */ Object.freeze({
  hello: helloFrameSchema satisfies FrameSchema<HelloFrame>,
  snapshot: snapshotFrameSchema satisfies FrameSchema<SnapshotFrame>,
  event: eventFrameSchema satisfies FrameSchema<EventFrame>,
  heartbeat: heartbeatFrameSchema satisfies FrameSchema<HeartbeatFrame>,
  error: errorFrameSchema satisfies FrameSchema<ErrorFrame>,
  pong: pongFrameSchema satisfies FrameSchema<PongFrame>,
});

/** The schema of each client frame, by `type`. */
export const clientFrameSchemas: {
  readonly [K in ClientFrame['type']]: FrameSchema<Extract<ClientFrame, { type: K }>>;
} = /* @__PURE__ */ Object.freeze({
  auth: authFrameSchema satisfies FrameSchema<AuthFrame>,
  subscribe: subscribeFrameSchema satisfies FrameSchema<SubscribeFrame>,
  unsubscribe: unsubscribeFrameSchema satisfies FrameSchema<UnsubscribeFrame>,
  ack: ackFrameSchema satisfies FrameSchema<AckFrame>,
  ping: pingFrameSchema satisfies FrameSchema<PingFrame>,
});

/** Any server frame, discriminated by `type` (the codec uses {@link serverFrameSchemas} directly). */
export const serverFrameSchema = v.variant('type', [
  helloFrameSchema,
  snapshotFrameSchema,
  eventFrameSchema,
  heartbeatFrameSchema,
  errorFrameSchema,
  pongFrameSchema,
]);

/** Any client frame, discriminated by `type` (the codec uses {@link clientFrameSchemas} directly). */
export const clientFrameSchema = v.variant('type', [
  authFrameSchema,
  subscribeFrameSchema,
  unsubscribeFrameSchema,
  ackFrameSchema,
  pingFrameSchema,
]);
