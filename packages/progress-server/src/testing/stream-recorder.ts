import type { TaskEvent, TaskView } from '@finishline/core';
import { expect } from 'vitest';
import type { StreamSink } from '../hub/task-stream.js';

/** A sink that records the events it is handed (`type@seq`) and its other calls. */
export function recorder() {
  const events: string[] = [];
  const calls: string[] = [];
  let caughtUp = 0;
  const sink: StreamSink = {
    events: (batch: readonly TaskEvent[]) => {
      for (const event of batch) events.push(`${event.type}@${event.seq}`);
    },
    snapshot: (view: TaskView) => calls.push(`snapshot@${view.seq}:${view.status}`),
    reset: (view: TaskView) => calls.push(`reset@${view.seq}`),
    gone: () => calls.push('gone'),
    failed: () => calls.push('failed'),
    caughtUp: () => {
      caughtUp += 1;
    },
    internalError: (error) => calls.push(`internal:${String(error)}`),
    isOpen: () => true,
    restart: () => calls.push('restart'),
  };
  return { sink, events, calls, caughtUp: () => caughtUp };
}

/** Waits up to a second for `condition`, then asserts it. */
export async function until(condition: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !condition(); i++) await new Promise((resolve) => setTimeout(resolve, 5));
  expect(condition()).toBe(true);
}

/** Long enough for what a test does not expect to have happened. */
export const settle = () => new Promise((resolve) => setTimeout(resolve, 40));
