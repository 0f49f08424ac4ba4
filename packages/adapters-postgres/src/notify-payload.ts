import { ID_PATTERN, LIMITS } from '@finishline/core';

/**
 * The payloads the store sends with `pg_notify` on its channel. They carry ids only, never an event's
 * content: a receiver reads the events from the table, so a payload stays small whatever the events
 * hold — at most {@link NOTIFY_PAYLOAD_BUDGET_BYTES}, an eighth of Postgres's 8000-byte limit.
 *
 * - Changes: `[["<taskId>",3,5,0],["<taskId>",1,1,1]]` — per task, the seqs `firstSeq..seq` it gained in
 *   the transaction and whether `seq` is terminal (1) or not (0). A group commit that touches many tasks
 *   packs several into one payload: each notification costs Postgres and every listener far more than
 *   its bytes, so fewer, fuller ones keep the feed cheap at tens of thousands of appends per second.
 * - A barrier: `{"barrier":"<listener id>","xmin":"<xid8>"}` — sent by a listener to itself to advance
 *   its high-water mark (see `postgres-change-feed.ts`).
 *
 * @module
 */

/** Postgres rejects a `NOTIFY` payload of 8000 bytes or more. */
export const PG_NOTIFY_PAYLOAD_LIMIT_BYTES = 8000;

/** A task that gained the committed seqs `firstSeq..seq` in one transaction. */
export interface ChangeNotice {
  taskId: string;
  firstSeq: number;
  seq: number;
  /** True when `seq` is the task's terminal event. */
  terminal: boolean;
}

/** The changes of one notification. */
export interface ChangesNotice {
  kind: 'changes';
  changes: ChangeNotice[];
}

/** A listener's self-addressed marker: every commit with an xid below `xmin` was delivered before it. */
export interface BarrierNotice {
  kind: 'barrier';
  listenerId: string;
  xmin: bigint;
}

/** A payload this store did not write (another program notifying on the channel, or garbage). */
export interface MalformedNotice {
  kind: 'malformed';
}

/** What {@link decodeNotice} returns. */
export type Notice = ChangesNotice | BarrierNotice | MalformedNotice;

/** The most bytes of one change payload; changes beyond it go into another notification. */
export const NOTIFY_PAYLOAD_BUDGET_BYTES = 1000;

function encodeEntry(change: ChangeNotice): string {
  return JSON.stringify([change.taskId, change.firstSeq, change.seq, change.terminal ? 1 : 0]);
}

/**
 * The largest single entry: a task id of the maximal length (ids are ASCII, so characters are bytes),
 * seqs of the maximal magnitude. Every change fits in a payload on its own.
 */
export const MAX_CHANGE_ENTRY_BYTES = encodeEntry({
  taskId: 'x'.repeat(LIMITS.maxIdLength),
  firstSeq: LIMITS.maxCount,
  seq: LIMITS.maxCount,
  terminal: false,
}).length;

/**
 * Packs changes into as few payloads as fit {@link NOTIFY_PAYLOAD_BUDGET_BYTES} each, keeping their
 * order (a receiver publishes one task's changes in the order they come).
 */
export function encodeChangeNotices(changes: readonly ChangeNotice[]): string[] {
  const payloads: string[] = [];
  let entries: string[] = [];
  let bytes = 2;
  for (const change of changes) {
    const entry = encodeEntry(change);
    if (entries.length > 0 && bytes + entry.length + 1 > NOTIFY_PAYLOAD_BUDGET_BYTES) {
      payloads.push(`[${entries.join(',')}]`);
      entries = [];
      bytes = 2;
    }
    entries.push(entry);
    bytes += entry.length + (entries.length > 1 ? 1 : 0);
  }
  if (entries.length > 0) payloads.push(`[${entries.join(',')}]`);
  return payloads;
}

const MALFORMED: MalformedNotice = Object.freeze({ kind: 'malformed' });

function isSeq(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 1;
}

/** Parses a payload received on the channel; anything unexpected is `malformed`, never an exception. */
export function decodeNotice(payload: string | undefined): Notice {
  if (payload === undefined || payload.length === 0 || payload.length > PG_NOTIFY_PAYLOAD_LIMIT_BYTES) {
    return MALFORMED;
  }
  let value: unknown;
  try {
    value = JSON.parse(payload);
  } catch {
    return MALFORMED;
  }
  if (Array.isArray(value)) {
    if (value.length === 0) return MALFORMED;
    const changes: ChangeNotice[] = [];
    for (const entry of value) {
      const change = decodeEntry(entry);
      if (change === undefined) return MALFORMED;
      changes.push(change);
    }
    return { kind: 'changes', changes };
  }
  if (typeof value !== 'object' || value === null) return MALFORMED;
  const record = value as Record<string, unknown>;
  if (typeof record.barrier === 'string') {
    if (typeof record.xmin !== 'string' || !/^[0-9]{1,20}$/.test(record.xmin)) return MALFORMED;
    return { kind: 'barrier', listenerId: record.barrier, xmin: BigInt(record.xmin) };
  }
  return MALFORMED;
}

function decodeEntry(entry: unknown): ChangeNotice | undefined {
  if (!Array.isArray(entry) || entry.length !== 4) return undefined;
  const [taskId, firstSeq, seq, terminal] = entry as unknown[];
  if (
    typeof taskId !== 'string' ||
    taskId.length > LIMITS.maxIdLength ||
    !ID_PATTERN.test(taskId) ||
    !isSeq(firstSeq) ||
    !isSeq(seq) ||
    firstSeq > seq ||
    (terminal !== 0 && terminal !== 1)
  ) {
    return undefined;
  }
  return { taskId, firstSeq, seq, terminal: terminal === 1 };
}
