/**
 * The encoded `event` frame of each event, computed once per process for every socket.
 *
 * @module
 */
import type { TaskEvent } from '@finishline/core';
import { encodeFrame } from '@finishline/core/internal';

/**
 * The encoded `event` frame of each event, computed once per process. The task hub hands the same
 * (immutable) event object to every local subscriber, so a task watched by a thousand sockets costs one
 * `JSON.stringify` per event instead of a thousand. A WeakMap lets the text go with the event.
 */
const texts = new WeakMap<TaskEvent, string>();

/** The JSON text of `{ type: 'event', event }`. */
export function eventFrameText(event: TaskEvent): string {
  let text = texts.get(event);
  if (text === undefined) {
    text = encodeFrame({ type: 'event', event });
    texts.set(event, text);
  }
  return text;
}
