// What can stall a delivery for tens of milliseconds without being the code under test's CPU: the event
// loop of a process blocked (a long synchronous call, a GC pause) and the machine taking the CPU away
// (a shared VM's steal time). Measured per window, so that a row's p99 can be read against both.
import { readFileSync } from 'node:fs';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

/**
 * The longest event-loop delay of this process since the previous call (the first call: since it was
 * made), in ms. Sampled every 5 ms: a delay shorter than that is not seen, one longer is measured whole.
 */
export function loopDelayMeter() {
  const histogram = monitorEventLoopDelay({ resolution: 5 });
  histogram.enable();
  return () => {
    const maxMs = histogram.max / 1e6;
    histogram.reset();
    return maxMs;
  };
}

/** The machine's steal time so far (every CPU, ms), from /proc/stat; `null` where there is none. */
export function machineStealMs() {
  try {
    const fields = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0].trim().split(/\s+/);
    // cpu user nice system idle iowait irq softirq steal …, in USER_HZ (100 per second on Linux).
    return Number(fields[8]) * 10;
  } catch {
    return null;
  }
}

/**
 * A full garbage collection of this process, now. `--expose-gc` set at run time, so that `npm run bench`
 * needs no flag: a context made after it has the `gc` global.
 */
export function collectHostGarbage() {
  setFlagsFromString('--expose-gc');
  runInNewContext('gc')();
}
