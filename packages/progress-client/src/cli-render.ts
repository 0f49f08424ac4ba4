import type { WatchState } from './watch.js';

/**
 * What `finishline watch` prints: the progress line of a state and the exit code of a final status.
 *
 * @module
 */

/**
 * Exit codes of `finishline watch`, by how the watch ended. Scripts and CI jobs branch on them.
 */
export const CLI_EXIT_CODES = Object.freeze({
  /** The task completed. */
  completed: 0,
  /** The task failed. */
  failed: 1,
  /** The task was cancelled. */
  cancelled: 2,
  /** The task's worker went away (lease expired). */
  interrupted: 3,
  /** The watch could not go on: `forbidden`, `task_not_found`, `unauthenticated`, … */
  watchFailed: 4,
  /** `--timeout-ms` ran out first. */
  timeout: 5,
  /** Bad command line. */
  usage: 64,
  /** Stopped by Ctrl-C (128 + SIGINT, as shells report it): not the server's refusal (4). */
  stopped: 130,
  /** Stopped by SIGTERM (128 + SIGTERM, as shells report it: `kill`, a CI job's or a container's stop). */
  terminated: 143,
  /**
   * The output was closed while the watch ran (`finishline watch … | head -1`): 128 + SIGPIPE, as shells
   * report a command a closed pipe ended.
   */
  outputClosed: 141,
  /**
   * The output could not be written otherwise (a full disk, `> /dev/full`, a terminal gone): EX_IOERR of
   * sysexits.h. Whatever the task's status: a script must not go on with output that was not written.
   */
  ioError: 74,
});

const BAR_WIDTH = 30;
/** The narrowest bar worth drawing: below it a narrow terminal shows the numbers alone. */
const MIN_BAR = 5;

function seconds(ms: number): string {
  // Rounded once, then split: rounding the remainder alone printed 119.6 s as "1m60s".
  const s = Math.ceil(ms / 1000);
  if (s >= 3600) {
    const m = Math.round(s / 60);
    return `${Math.floor(m / 60)}h${m % 60}m`;
  }
  if (s >= 60) return `${Math.floor(s / 60)}m${s % 60}s`;
  return `${s}s`;
}

// C0 and C1 control characters and DEL; the bidi controls (ALM, LRM, RLM, the embeddings and overrides
// U+202A–U+202E, the isolates U+2066–U+2069); the line and paragraph separators.
// biome-ignore lint/suspicious/noControlCharactersInRegex: matching them is the point.
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]/g;

/**
 * A worker's text (`current`, `message`, an error message) as one printable line: a newline would break
 * the one-line display (and the "last line is the status" scripts rely on), an escape sequence would
 * drive the terminal, a bidi override (U+202E) would show the text reordered (on a terminal that applies
 * bidi), a line separator (U+2028) splits the line in log viewers. Each becomes a space. Also for what goes
 * to stderr: the client's errors quote the server (an `error` frame's message, a close reason).
 */
export function printable(text: string): string {
  return text.replace(CONTROL, ' ');
}

// What a terminal draws two columns wide: East Asian Wide and Fullwidth ranges, and pictographs (emoji). A
// pictograph some terminal draws narrow is counted wide all the same: a line cut short is harmless, one that
// wraps is not.
const WIDE =
  /[\u1100-\u115f\u2e80-\u303e\u3041-\u33ff\u3400-\u4dbf\u4e00-\u9fff\ua000-\ua4cf\uac00-\ud7a3\uf900-\ufaff\ufe30-\ufe4f\uff00-\uff60\uffe0-\uffe6\u{20000}-\u{3fffd}]|\p{Extended_Pictographic}/u;
// What takes no column of its own: combining marks, format characters (zero-width joiner, …).
const ZERO_WIDTH = /[\p{Mn}\p{Me}\p{Cf}]/u;

function columnsOf(point: string): number {
  return ZERO_WIDTH.test(point) ? 0 : WIDE.test(point) ? 2 : 1;
}

/**
 * One line for a state: `[#########.....................] 12/40 30% eta 14s taint node-7`. Without a
 * known total the bar is left out.
 *
 * @param width - the terminal's columns: the line is cut to fewer (ending with `…`), since a line that
 *   wraps leaves rows behind that the next `\r` redraw does not clear. Not cut without a width.
 */
export function progressLine(state: WatchState, width?: number): string {
  const progress = state.progress;
  if (progress === null) return 'waiting for the task…';
  const stats: string[] = [];
  stats.push(progress.total === null ? `${progress.done} done` : `${progress.done}/${progress.total}`);
  if (state.fraction !== null) stats.push(`${Math.floor(state.fraction * 100)}%`);
  if (progress.failed > 0) stats.push(`${progress.failed} failed`);
  // Not "eta 0s": every item done, the task has not ended yet (its worker's wrap-up, or its end on its way),
  // for as long as that takes. The estimate is 0 once done >= total.
  if (state.eta !== null && state.eta > 0 && !state.finished) stats.push(`eta ${seconds(state.eta)}`);
  const counts = stats.join(' ');
  const parts: string[] = [];
  if (state.fraction !== null) {
    // On a narrow terminal the bar gives way to the numbers: cut at the end, a 30-column bar left
    // "1/5 2…" on 40 columns (20% read as 2) and no numbers at all below 33. Left out when fewer than
    // MIN_BAR columns would remain for it. A cut line keeps width - 2 columns (see below): the bar, its
    // brackets, a space and the numbers fit in those.
    const room = width === undefined || !(width > 1) ? BAR_WIDTH : width - 2 - counts.length - 3;
    const barWidth = Math.min(BAR_WIDTH, room);
    if (barWidth >= MIN_BAR) {
      const filled = Math.round(state.fraction * barWidth);
      parts.push(`[${'#'.repeat(filled)}${'.'.repeat(barWidth - filled)}]`);
    }
  }
  parts.push(counts);
  const note = progress.current ?? progress.message;
  if (note !== null && note !== undefined && note !== '') parts.push(printable(note));
  const line = parts.join(' ');
  if (width === undefined || !(width > 1)) return line;
  // By the columns each code point takes (a CJK character or an emoji two), never splitting a surrogate
  // pair; the last column is left free (some terminals wrap on writing it).
  const points = [...line];
  if (points.reduce((sum, point) => sum + columnsOf(point), 0) < width) return line;
  let kept = '';
  let used = 0;
  for (const point of points) {
    used += columnsOf(point);
    if (used > width - 2) break;
    kept += point;
  }
  return `${kept}…`;
}

/** The columns a terminal gives `line` (a line of {@link progressLine}: no control character left in it). */
export function lineColumns(line: string): number {
  let columns = 0;
  for (const point of line) columns += columnsOf(point);
  return columns;
}

/**
 * What erases the progress line drawn last, `columns` wide, before the next is drawn, the cursor still at its
 * end; the terminal is `width` columns wide now. The line was cut to the width it was drawn at, but a
 * terminal narrowed since then (most reflow their lines: VTE, iTerm2, kitty, Windows Terminal, tmux) shows
 * it on ceil(columns / width) rows: clearing only the cursor's row (`\r\x1b[2K`) left the others on the screen.
 * Up to the first of them, then clear to the end of the screen. (A terminal that cuts its lines instead of
 * reflowing them, xterm, loses as many rows above the bar as the line would have wrapped into.)
 */
export function clearDrawn(columns: number, width: number | undefined): string {
  const rows = width === undefined || !(width > 1) ? 1 : Math.max(1, Math.ceil(columns / width));
  return rows === 1 ? '\r\x1b[2K' : `\x1b[${rows - 1}A\r\x1b[J`;
}

/**
 * One line of `--json`: the state as one JSON object, the same fields at every change and at the end
 * (`finished: true`, with `result` or `error`). JSON escapes the C0 controls but leaves DEL, the C1 controls,
 * the bidi controls and U+2028/U+2029 raw: those are written as `\uXXXX` escapes too, the same string to a
 * parser, and nothing that drives a terminal (or splits the line) on its way there.
 */
export function jsonLine(state: WatchState): string {
  // Named one by one: what a script reads is this list, not whatever WatchState holds (its fatalError, an
  // Error, would print as {}).
  const { taskId, status, finished, seq, kind, progress, fraction, rate, result, error } = state;
  const { updatedAt, finishedAt } = state;
  // No eta once every item is done: the estimate's 0, nothing left to estimate while the task has not ended
  // yet (a finished state has none). The bar shows none then; `"eta": 0` read as "ends now", for as long as
  // the worker's wrap-up took.
  const eta = state.eta || null;
  const fields = { taskId, status, finished, seq, kind, progress, fraction, rate, eta, result, error };
  return JSON.stringify({ ...fields, updatedAt, finishedAt }).replace(
    CONTROL,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
  );
}

/** The last line: the final status, and the task's error when it failed. */
export function finalLine(state: WatchState): string {
  const detail = state.error === null ? '' : `: ${printable(state.error.message)}`;
  return `${state.status}${detail}`;
}

/** The exit code of a finished watch. */
export function exitCodeOf(state: WatchState): number {
  switch (state.status) {
    case 'completed':
    case 'failed':
    case 'cancelled':
    case 'interrupted':
      return CLI_EXIT_CODES[state.status];
    default:
      return CLI_EXIT_CODES.watchFailed;
  }
}
