import { LIMITS } from '../limits.js';
import { idProblem } from '../value-checks.js';

/**
 * The `id:` of a Server-Sent Events message, which `EventSource` sends back verbatim as `Last-Event-ID`
 * when it reconnects: the frame's seq, then {@link SSE_ID_SEPARATOR} and the store's epoch when the server
 * has one. A seq alone would resume a stream in whatever epoch the store is in by then: after a restore,
 * the events after that seq of another log, applied on top of the old one.
 *
 * @module
 */

/**
 * Separates the seq from the epoch in an SSE event id (`42~5f0c…`). Epochs are ids (`ID_PATTERN`), which
 * never contain `~`, and `~` needs no escaping in a header or a URL.
 */
export const SSE_ID_SEPARATOR = '~';

/**
 * Ends the SSE event id of a terminal frame (`42~5f0c…!`): a `Last-Event-ID` that carries it comes from a
 * reader that has the task's end at that seq. A seq alone cannot say so: a reader of a run of the task id
 * that retention purged, its id taken by a new task since, may hold a non-terminal frame at the seq the new
 * run ended at. `!` is neither a digit nor in `ID_PATTERN`. @internal
 */
export const SSE_END_MARK = '!';

/** A stream's cursor as an SSE event id carries it. @internal */
export interface SseCursor {
  readonly seq: number;
  /** Absent in an id of a seq alone (a server without epochs, an older client, a hand-written header). */
  readonly epoch?: string;
  /** The id ended with {@link SSE_END_MARK}: the reader has the terminal frame at `seq`. */
  readonly ended?: true;
}

/** The SSE event id of `seq` in `epoch` (a seq alone without an epoch). @internal */
export function sseEventId(seq: number, epoch: string | undefined): string {
  return epoch === undefined ? String(seq) : seq + SSE_ID_SEPARATOR + epoch;
}

/**
 * Reads an SSE event id (a `Last-Event-ID`): `<seq>` or `<seq>~<epoch>`, the seq a count, the epoch an id,
 * either followed by {@link SSE_END_MARK} for a terminal frame's. `undefined` when it is none of them.
 *
 * @internal
 */
export function parseSseEventId(id: string): SseCursor | undefined {
  const ended = id.endsWith(SSE_END_MARK);
  const text = ended ? id.slice(0, -SSE_END_MARK.length) : id;
  const cursor = parseCursor(text);
  return cursor !== undefined && ended ? { ...cursor, ended } : cursor;
}

function parseCursor(text: string): SseCursor | undefined {
  const cut = text.indexOf(SSE_ID_SEPARATOR);
  const digits = cut < 0 ? text : text.slice(0, cut);
  // At most 16 significant digits (a longer run is above maxCount anyway, and Number() of it would round),
  // after any leading zeros: a seq is an integer, whatever its padding (`0000000000000005` was read as 5,
  // and `00000000000000005` refused).
  if (!/^0*\d{1,16}$/.test(digits)) return undefined;
  const seq = Number(digits);
  if (seq > LIMITS.maxCount) return undefined;
  if (cut < 0) return { seq };
  const epoch = text.slice(cut + 1);
  return idProblem(epoch) === undefined ? { seq, epoch } : undefined;
}
