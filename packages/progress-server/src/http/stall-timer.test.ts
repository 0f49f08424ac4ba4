import { afterEach, describe, expect, it, vi } from 'vitest';
import { stallTimer } from './stall-timer.js';

/** Blocks this thread for `ms`, as a synchronous hook or a GC pause would. */
function block(ms: number): void {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    // busy: nothing else runs on this thread
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('stallTimer', () => {
  const cancels: Array<() => void> = [];
  afterEach(() => {
    for (const cancel of cancels.splice(0)) cancel();
  });

  it('fires after its delay when the process was running', () => {
    // On fake time, its clock included: on the real one, a loaded machine turned the event loop more than
    // a tenth of the 50 ms delay late, which the timer rightly took for its own stall (it re-armed), and
    // the call expected at 90 ms had not come.
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'performance'] });
    try {
      const onStall = vi.fn();
      cancels.push(stallTimer(50, onStall));
      vi.advanceTimersByTime(49);
      expect(onStall).not.toHaveBeenCalled();
      vi.advanceTimersByTime(1);
      expect(onStall).toHaveBeenCalledTimes(1);
      // Once: it does not re-arm after firing.
      vi.advanceTimersByTime(1000);
      expect(onStall).toHaveBeenCalledTimes(1);
    } finally {
      vi.useRealTimers();
    }
  });

  it('after a fire late from its own stall, waits one more delay, then still fires', async () => {
    const onStall = vi.fn();
    cancels.push(stallTimer(100, onStall));
    await new Promise((resolve) => setImmediate(resolve));
    block(300);
    await sleep(20);
    expect(onStall).not.toHaveBeenCalled();
    await sleep(150);
    expect(onStall).toHaveBeenCalledTimes(1);
  });

  it('is cancelled by the function it returns, also while re-armed', async () => {
    const onStall = vi.fn();
    const cancel = stallTimer(50, onStall);
    await new Promise((resolve) => setImmediate(resolve));
    block(150);
    await sleep(10);
    cancel();
    await sleep(100);
    expect(onStall).not.toHaveBeenCalled();
  });
});
