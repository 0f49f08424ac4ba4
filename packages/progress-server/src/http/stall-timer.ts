/**
 * The deadline on a reader that stopped reading, shared by event streams and HTTP answers.
 *
 * @module
 */

/**
 * Runs `onStall` after `delayMs`, unless the returned function cancels it first (the reader made progress).
 *
 * The deadline measures the reader's silence, but the server sees the reader's progress only when its own
 * event loop turns: after the server itself stood still past the deadline (a long synchronous hook, a GC
 * pause, a CPU-throttled or frozen container) the timer fires late, in the timers phase, before the poll
 * phase writes what a healthy reader made room for meanwhile, and every busy reader was dropped at once.
 * A fire later than a tenth of `delayMs` re-arms once for the whole delay, so the reader is judged on a
 * window the server watched; a reader that truly stopped is dropped at most one delay later.
 */
export function stallTimer(delayMs: number, onStall: () => void): () => void {
  let timer: NodeJS.Timeout | undefined;
  const arm = (rearmed: boolean) => {
    const due = performance.now() + delayMs;
    timer = setTimeout(() => {
      if (!rearmed && performance.now() - due > delayMs / 10) arm(true);
      else onStall();
    }, delayMs);
    // Never what keeps the process alive: the connection it guards does.
    timer.unref();
  };
  arm(false);
  return () => clearTimeout(timer);
}
