import type { TaskEvent } from '@finishline/core';
import { ID_PATTERN, isTerminalType, LIMITS } from '@finishline/core';
import { eventBodyProblem } from '@finishline/core/internal';

/**
 * The payloads the store sends with `pg_notify` on its channel.
 *
 * - Changes: `[["<taskId>",3,5,0,1700000000000],["<taskId>",1,1,1,1700000000123]]` — per task, the seqs
 *   `firstSeq..seq` it gained in the transaction, whether `seq` is terminal (1) or not (0), and the run
 *   of the task they are of (its `created_at`): an id is taken again once retention purged its task, and
 *   a receiver following the old run tells the new run's seqs from its own by it (see `TaskChange.run`).
 *   An entry without the run (`[id,firstSeq,seq,terminal]`, as versions before it wrote them) still
 *   decodes, without a run; versions before it take an entry with one for a malformed payload, so while
 *   both versions share a channel the older ones learn those commits from their safety-net poll. A group commit that touches many tasks
 *   packs several into one payload: each notification costs Postgres and every listener far more than
 *   its bytes, so fewer, fuller ones keep the feed cheap at tens of thousands of appends per second.
 *   Ids-only payloads stay within {@link NOTIFY_PAYLOAD_BUDGET_BYTES}, an eighth of Postgres's limit.
 * - Changes with their events: the same list, a newline, then per entry the events `firstSeq..seq` as
 *   `[type,time,body]` (`body` is the event without its ids, type and time, as the events table stores
 *   it): `[["<taskId>",4,5,0]]\n[[["item",1700000000000,{…}],["progress",1700000000001,{…}]]]`. Receivers
 *   hand the events to their subscribers without reading the table. A task whose events of the
 *   transaction do not fit {@link NOTIFY_EVENTS_PAYLOAD_BUDGET_BYTES} on their own travels ids-only,
 *   and the receiver reads them. The list comes first so a receiver can tell from it alone whether it needs the events at all
 *   (a store hears its own commits, which it published already) and skip parsing them.
 * - Purged tasks: `{"purged":["<taskId>",…],"xid":"<xid8>"}` — sent by `purgeFinished` in its statement,
 *   with its transaction id: every listener forgets what it published of them, so a new task with one of
 *   those ids is published from seq 1. The xid names the purge, whose record a re-read may find again
 *   (see `listen-connection.ts`); a notice without one (an older version of this package) is still a purge.
 * - A barrier: `{"barrier":"<listener id>/<connection>","xmin":"<xid8>"}` — sent by a listener's
 *   connection to itself to advance its high-water mark (see `listen-connection.ts`).
 * - A renewed epoch: `{"epoch":"<epoch>"}` — sent by `renewEpoch` in its statement, so that every
 *   listener's server reads the epoch at once.
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
  /** The run of the task the seqs are of (its `createdAt`), when the sender knew it. */
  run?: number;
  /** The events `firstSeq..seq`, in order, when the payload carried them (or the writer has them). */
  events?: readonly TaskEvent[];
}

/** The changes of one notification. */
export interface ChangesNotice {
  kind: 'changes';
  changes: ChangeNotice[];
}

/** A listener's self-addressed marker: every commit with an xid below `xmin` was delivered before it. */
export interface BarrierNotice {
  kind: 'barrier';
  /** Who sent it: the listener and its connection (`<listener id>/<connection>`), matched as a whole. */
  listenerId: string;
  xmin: bigint;
}

/** Tasks deleted by retention: their ids may be used again by new tasks. */
export interface PurgedNotice {
  kind: 'purged';
  taskIds: string[];
  /** The purge's transaction id; absent in the notices of versions before it was sent. */
  xid?: bigint;
}

/** The store's epoch was renewed (by any store on the channel). */
export interface EpochNotice {
  kind: 'epoch';
  /** The renewed epoch. */
  epoch: string;
}

/** A payload this store did not write (another program notifying on the channel, or garbage). */
export interface MalformedNotice {
  kind: 'malformed';
}

/** What {@link decodeNotice} returns. */
export type Notice = ChangesNotice | BarrierNotice | PurgedNotice | EpochNotice | MalformedNotice;

/** The most bytes of one ids-only change payload; changes beyond it go into another notification. */
export const NOTIFY_PAYLOAD_BUDGET_BYTES = 1000;

/**
 * The most bytes (UTF-8) of one payload that carries events: well under the 8000-byte limit, so a
 * payload never fails the transaction that sends it. Events beyond it go into another notification.
 */
export const NOTIFY_EVENTS_PAYLOAD_BUDGET_BYTES = 7000;

/** Splits a payload's ids from its events. JSON text never contains a raw newline. */
const EVENTS_SEPARATOR = '\n';

/**
 * Joins the payloads of one transaction into the single text parameter its statement splits (on `chr(1)`).
 * No payload contains it: payloads are JSON text, where a control character is always escaped, and the
 * newline of {@link EVENTS_SEPARATOR}.
 */
export const PAYLOADS_SEPARATOR = '\u0001';

function encodeEntry(change: ChangeNotice): string {
  const { taskId, firstSeq, seq, terminal, run } = change;
  // Numbers and a task id (ID_PATTERN: nothing JSON escapes) written as JSON.stringify writes them.
  return run === undefined
    ? `[${JSON.stringify(taskId)},${firstSeq},${seq},${terminal ? 1 : 0}]`
    : `[${JSON.stringify(taskId)},${firstSeq},${seq},${terminal ? 1 : 0},${run}]`;
}

/**
 * The largest single entry: a task id of the maximal length (ids are ASCII, so characters are bytes),
 * seqs and run of the maximal magnitude. Every change fits in a payload on its own.
 */
export const MAX_CHANGE_ENTRY_BYTES = encodeEntry({
  taskId: 'x'.repeat(LIMITS.maxIdLength),
  firstSeq: LIMITS.maxCount,
  seq: LIMITS.maxCount,
  terminal: false,
  run: Number.MIN_SAFE_INTEGER,
}).length;

/** One event as a payload carries it: `[type,time,body]`, the ids being implied by its entry. */
export function encodeEvent(event: TaskEvent, bodyJson?: string): string {
  if (bodyJson === undefined) {
    const { taskId: _taskId, seq: _seq, type: _type, time: _time, ...body } = event;
    bodyJson = JSON.stringify(body);
  }
  return `[${JSON.stringify(event.type)},${event.time},${bodyJson}]`;
}

/** Freezes a JSON value and everything in it. */
function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    for (const inner of Object.values(value)) deepFreeze(inner);
    Object.freeze(value);
  }
  return value;
}

/**
 * An event built from its parts as the store builds one from its row (ids, type and time, then the
 * body's fields) and frozen through: a change feed hands the same object to every subscriber.
 */
export function frozenEvent(
  taskId: string,
  seq: number,
  type: string,
  time: number,
  body: Record<string, unknown>,
): TaskEvent {
  return deepFreeze({ taskId, seq, type, time, ...body }) as TaskEvent;
}

/** One task's seqs as one payload entry, with its events' text when they travel along. */
interface Unit {
  entry: string;
  /** `[event,…]` of the entry, or `undefined` for an ids-only entry. */
  events: string | undefined;
}

/**
 * A change as one entry: with its events when they fit a payload on their own, ids-only otherwise. A
 * task with more events in one transaction than one payload holds costs receivers a single read of all
 * of them, cheap per event; carrying them over several notifications would instead cost the writer and
 * every listener (measured: a hot task's group commits lost about a fifth of their rate).
 */
function unitOf(change: ChangeNotice, encode: (event: TaskEvent) => string): Unit {
  const entry = encodeEntry(change);
  const { events } = change;
  if (events === undefined || events.length !== change.seq - change.firstSeq + 1) {
    return { entry, events: undefined };
  }
  // `[entry]\n[[events]]`: three bracket pairs and the separator around the entry and the events.
  let bytes = entry.length + 7 + events.length - 1;
  const texts: string[] = [];
  for (const event of events) {
    const text = encode(event);
    bytes += Buffer.byteLength(text);
    if (bytes > NOTIFY_EVENTS_PAYLOAD_BUDGET_BYTES) return { entry, events: undefined };
    texts.push(text);
  }
  return { entry, events: `[${texts.join(',')}]` };
}

/**
 * Packs changes into as few payloads as fit their budget each, keeping their order (a receiver
 * publishes one task's changes in the order they come). Changes that carry `events` go into payloads
 * with events when they fit {@link NOTIFY_EVENTS_PAYLOAD_BUDGET_BYTES} on their own (see
 * {@link unitOf}); changes without `events`, or with too many, go ids-only within
 * {@link NOTIFY_PAYLOAD_BUDGET_BYTES}.
 */
export function encodeChangeNotices(
  changes: readonly ChangeNotice[],
  encode: (event: TaskEvent) => string = (event) => encodeEvent(event),
): string[] {
  const payloads: string[] = [];
  let entries: string[] = [];
  let eventLists: string[] | undefined;
  let bytes = 0;
  const flush = () => {
    if (entries.length === 0) return;
    const ids = `[${entries.join(',')}]`;
    payloads.push(eventLists === undefined ? ids : `${ids}${EVENTS_SEPARATOR}[${eventLists.join(',')}]`);
    entries = [];
    eventLists = undefined;
    bytes = 0;
  };
  for (const change of changes) {
    const { entry, events } = unitOf(change, encode);
    const withEvents = events !== undefined;
    // Payload bytes after adding this entry: its comma, and with events theirs and the list's comma.
    const added = entry.length + 1 + (withEvents ? Buffer.byteLength(events) + 1 : 0);
    const budget = withEvents ? NOTIFY_EVENTS_PAYLOAD_BUDGET_BYTES : NOTIFY_PAYLOAD_BUDGET_BYTES;
    if (entries.length > 0 && ((eventLists !== undefined) !== withEvents || bytes + added > budget)) flush();
    if (entries.length === 0) {
      // The opening brackets (one pair for ids, another and the separator for events), no comma yet.
      bytes = withEvents ? 4 : 1;
      if (withEvents) eventLists = [];
    }
    entries.push(entry);
    if (withEvents) eventLists?.push(events);
    bytes += added;
  }
  flush();
  return payloads;
}

const MALFORMED: MalformedNotice = Object.freeze({ kind: 'malformed' });

function isSeq(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 1;
}

/**
 * Parses a payload received on the channel; anything unexpected is `malformed`, never an exception.
 * When the payload carries events, they are parsed only if `wants` (default: always) says some change
 * of the list is needed, and attached to the changes; events that do not match their entries are
 * dropped (the changes stay, ids-only: the receiver reads the events instead).
 */
export function decodeNotice(
  payload: string | undefined,
  wants: (change: ChangeNotice) => boolean = () => true,
): Notice {
  if (payload === undefined || payload.length === 0 || payload.length > PG_NOTIFY_PAYLOAD_LIMIT_BYTES) {
    return MALFORMED;
  }
  const separator = payload.indexOf(EVENTS_SEPARATOR);
  const head = separator === -1 ? payload : payload.slice(0, separator);
  let value: unknown;
  try {
    value = JSON.parse(head);
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
    if (separator !== -1 && changes.some(wants)) attachEvents(changes, payload.slice(separator + 1));
    return { kind: 'changes', changes };
  }
  if (separator !== -1 || typeof value !== 'object' || value === null) return MALFORMED;
  const record = value as Record<string, unknown>;
  if (typeof record.barrier === 'string') {
    if (!isXid(record.xmin)) return MALFORMED;
    return { kind: 'barrier', listenerId: record.barrier, xmin: BigInt(record.xmin) };
  }
  if (Array.isArray(record.purged)) {
    const taskIds = record.purged;
    if (!taskIds.every(isTaskId)) return MALFORMED;
    if (record.xid === undefined) return { kind: 'purged', taskIds };
    if (!isXid(record.xid)) return MALFORMED;
    return { kind: 'purged', taskIds, xid: BigInt(record.xid) };
  }
  if (typeof record.epoch === 'string') return { kind: 'epoch', epoch: record.epoch };
  return MALFORMED;
}

/** Parses a payload's events and attaches each entry's to its change, if all of them check out. */
function attachEvents(changes: ChangeNotice[], text: string): void {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return;
  }
  if (!Array.isArray(value) || value.length !== changes.length) return;
  const decoded: TaskEvent[][] = [];
  for (let index = 0; index < changes.length; index++) {
    const events = decodeEvents(changes[index] as ChangeNotice, value[index]);
    if (events === undefined) return;
    decoded.push(events);
  }
  changes.forEach((change, index) => {
    change.events = Object.freeze(decoded[index] as TaskEvent[]);
  });
}

/**
 * The events `firstSeq..seq` of one entry, built as the store builds them from rows (ids, type and
 * time, then the body's fields), or `undefined` when they do not match the entry: a wrong count, an
 * unknown type, a terminal event anywhere but last (or missing there), a body not of its type's shape.
 */
function decodeEvents(change: ChangeNotice, value: unknown): TaskEvent[] | undefined {
  if (!Array.isArray(value) || value.length !== change.seq - change.firstSeq + 1) return undefined;
  const events: TaskEvent[] = [];
  for (let index = 0; index < value.length; index++) {
    const item: unknown = value[index];
    if (!Array.isArray(item) || item.length !== 3) return undefined;
    const [type, time, body] = item as unknown[];
    const last = index === value.length - 1;
    // The body checked as a row's is read back (`toEvent`): a payload of another writer's (another version,
    // a hand-written pg_notify) with a field missing or unknown reached watchers as a malformed event, and one
    // naming the event's own taskId, seq or type overrode them.
    if (
      typeof type !== 'string' ||
      eventBodyProblem(type, body) !== undefined ||
      isTerminalType(type) !== (last && change.terminal) ||
      typeof time !== 'number' ||
      !Number.isSafeInteger(time) ||
      time < 0
    ) {
      return undefined;
    }
    events.push(
      frozenEvent(change.taskId, change.firstSeq + index, type, time, body as Record<string, unknown>),
    );
  }
  return events;
}

/** An `xid8` as Postgres writes it as text. */
function isXid(value: unknown): value is string {
  return typeof value === 'string' && /^[0-9]{1,20}$/.test(value);
}

function isTaskId(value: unknown): value is string {
  return typeof value === 'string' && value.length <= LIMITS.maxIdLength && ID_PATTERN.test(value);
}

/** An entry: `[id,firstSeq,seq,terminal,run]`, or without the run as versions before it wrote it. */
function decodeEntry(entry: unknown): ChangeNotice | undefined {
  if (!Array.isArray(entry) || (entry.length !== 4 && entry.length !== 5)) return undefined;
  const [taskId, firstSeq, seq, terminal, run] = entry as unknown[];
  if (
    !isTaskId(taskId) ||
    !isSeq(firstSeq) ||
    !isSeq(seq) ||
    firstSeq > seq ||
    (terminal !== 0 && terminal !== 1)
  ) {
    return undefined;
  }
  if (entry.length === 4) return { taskId, firstSeq, seq, terminal: terminal === 1 };
  if (typeof run !== 'number' || !Number.isSafeInteger(run)) return undefined;
  return { taskId, firstSeq, seq, terminal: terminal === 1, run };
}
