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

  it('fires after its delay when the process was running', async () => {
    const onStall = vi.fn();
    cancels.push(stallTimer(50, onStall));
    await sleep(30);
    expect(onStall).not.toHaveBeenCalled();
    await sleep(60);
    expect(onStall).toHaveBeenCalledTimes(1);
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
