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
});

const BAR_WIDTH = 30;

function seconds(ms: number): string {
  if (ms >= 3_600_000) return `${Math.floor(ms / 3_600_000)}h${Math.round((ms % 3_600_000) / 60_000)}m`;
  if (ms >= 60_000) return `${Math.floor(ms / 60_000)}m${Math.round((ms % 60_000) / 1000)}s`;
  return `${Math.ceil(ms / 1000)}s`;
}

/**
 * One line for a state: `[#########.....................] 12/40 30% eta 14s taint node-7`. Without a
 * known total the bar is left out.
 */
export function progressLine(state: WatchState): string {
  const progress = state.progress;
  if (progress === null) return 'waiting for the task…';
  const parts: string[] = [];
  if (state.fraction !== null) {
    const filled = Math.round(state.fraction * BAR_WIDTH);
    parts.push(`[${'#'.repeat(filled)}${'.'.repeat(BAR_WIDTH - filled)}]`);
  }
  parts.push(progress.total === null ? `${progress.done} done` : `${progress.done}/${progress.total}`);
  if (state.fraction !== null) parts.push(`${Math.floor(state.fraction * 100)}%`);
  if (progress.failed > 0) parts.push(`${progress.failed} failed`);
  if (state.eta !== null && !state.finished) parts.push(`eta ${seconds(state.eta)}`);
  const note = progress.current ?? progress.message;
  if (note !== null && note !== undefined && note !== '') parts.push(note);
  return parts.join(' ');
}

/** The last line: the final status, and the task's error when it failed. */
export function finalLine(state: WatchState): string {
  const detail = state.error === null ? '' : `: ${state.error.message}`;
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
