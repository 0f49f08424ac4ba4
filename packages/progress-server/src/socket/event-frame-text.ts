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

/** The UTF-8 size of each event's frame text, measured the first time a byte bound weighs it. */
const sizes = new WeakMap<TaskEvent, number>();

/** The JSON text of `{ type: 'event', event }`. */
export function eventFrameText(event: TaskEvent): string {
  let text = texts.get(event);
  if (text === undefined) {
    text = encodeFrame({ type: 'event', event });
    texts.set(event, text);
  }
  return text;
}

/**
 * The bytes of {@link eventFrameText} in UTF-8, as the frame goes out: what the byte bounds
 * (`maxQueuedBytes`, `maxQueuedBytesPerPrincipal`, an event stream's held page, the hub's recent events)
 * count. The text's `length` counts UTF-16 units, and a character of CJK text is one unit but three bytes,
 * so weighed by it those bounds held up to three times their bytes. Measured once per event and cached, as
 * its text is (one `Buffer.byteLength`, about a tenth of the `JSON.stringify` before it), never per socket
 * that queues or sends it; the live path that writes an event at once does not weigh it at all.
 */
export function eventFrameBytes(event: TaskEvent): number {
  let size = sizes.get(event);
  if (size === undefined) {
    size = Buffer.byteLength(eventFrameText(event), 'utf8');
    sizes.set(event, size);
  }
  return size;
}
